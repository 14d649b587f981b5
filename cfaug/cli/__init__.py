"""The ``cfaug`` command line: list, demo, generate, import-weights, train, evaluate.

Bad arguments end with exit code 2 and a one-line message on stderr, as argparse does for parse errors.

``generate``, ``train imagenet`` and ``train classifier`` also run under torchrun, one process per device
(``torchrun --nproc_per_node=4 -m cfaug.cli generate ...``): every process runs the same command and takes its
share of the work (see ``cfaug.distributed``).

Layout: ``cfaug.cli.parser`` holds the command tree (``build_parser``) and the entry point (``main``);
``cfaug.cli.commands`` the general commands (list, demo, generate, import-weights).
"""

from __future__ import annotations

from cfaug.cli.commands import GPU_GENERATION_BATCH
from cfaug.cli.parser import USER_ERRORS, build_parser, main

__all__ = ["GPU_GENERATION_BATCH", "USER_ERRORS", "build_parser", "main"]
