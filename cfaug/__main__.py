"""``python -m cfaug``: the ``cfaug`` command."""

import sys

from cfaug.cli import main

if __name__ == "__main__":
    sys.exit(main())
