"""The ``cfaug`` command line: list, demo, generate, import-weights, train, evaluate.

Every error ends in one line on stderr naming the argument or file: exit code 2 for bad arguments, OS errors
(missing, unreadable or unwritable files, a full disk), devices this machine lacks, memory and cfaug's own errors;
130 for Ctrl-C; 1 for an internal error. ``--debug`` or ``CFAUG_DEBUG=1`` adds the traceback.

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
