"""Command-line plumbing shared by the examples: which weights to load, where the data is, quick mode.

Every example takes ``--weights``: a named weight of the ``mnist`` backend (``colored_mnist``, the default,
``double_colored_mnist`` or ``wildlife_mnist``, all shipped with cfaug) or a checkpoint path, such as the
``final.safetensors`` that ``examples/train_cgn.py`` writes. ``--quick`` does a few seconds of work (the tests
use it) on the same weights.
"""

from __future__ import annotations

import argparse

import torch

from cfaug.backends.mnist import MnistBackend

__all__ = ["add_common_arguments", "pick_device"]


def add_common_arguments(
    parser: argparse.ArgumentParser, *, weights: bool = True, data: bool = True
) -> argparse.ArgumentParser:
    """Add ``--quick``, and ``--weights`` and ``--data-root``/``--download`` unless told not to, to ``parser``."""
    if weights:
        parser.add_argument(
            "--weights",
            default=None,
            help=f"named weights of the mnist backend or a checkpoint path (default: {MnistBackend.default_weights})",
        )
    parser.add_argument("--quick", action="store_true", help="a few seconds of work (used by the tests)")
    if data:
        parser.add_argument("--data-root", default="data", help="folder that holds torchvision's MNIST/")
        parser.add_argument("--download", action="store_true", help="download MNIST into --data-root if missing")
    return parser


def pick_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
