"""``python -m cfaug.cli``: the ``cfaug`` command, for launchers such as ``torchrun -m`` that take a module."""

import sys

from cfaug.cli import main

sys.exit(main())
