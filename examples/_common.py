"""Command-line plumbing shared by the examples: which weights to load, where the data is, quick mode.

Every example takes ``--weights`` (a named weight of the ``mnist`` backend or a checkpoint path, such as the
``final.safetensors`` that ``examples/train_cgn.py`` writes) and ``--quick`` (a few seconds of work, used by the
tests). When no weights are given, the backend's default weights are used; when the backend ships none, quick
mode falls back to a randomly initialised backend so that the code path still runs (its images are noise),
and normal mode stops with a message that says how to get weights.
"""

from __future__ import annotations

import argparse
import sys

import torch

import cfaug
from cfaug.backends.mnist import MnistBackend

__all__ = ["add_common_arguments", "load_mnist_backend", "pick_device"]


def add_common_arguments(
    parser: argparse.ArgumentParser, *, weights: bool = True, data: bool = True
) -> argparse.ArgumentParser:
    """Add ``--quick``, and ``--weights`` and ``--data-root``/``--download`` unless told not to, to ``parser``."""
    if weights:
        parser.add_argument(
            "--weights",
            default=None,
            help="named weights of the mnist backend or a checkpoint path (default: the backend's default weights)",
        )
    parser.add_argument("--quick", action="store_true", help="a few seconds of work (used by the tests)")
    if data:
        parser.add_argument("--data-root", default="data", help="folder that holds torchvision's MNIST/")
        parser.add_argument("--download", action="store_true", help="download MNIST into --data-root if missing")
    return parser


def load_mnist_backend(weights: str | None, quick: bool) -> MnistBackend:
    """The ``mnist`` backend with ``weights``, its default weights, or (quick mode only) random weights."""
    if weights is not None or MnistBackend.default_weights is not None:
        return cfaug.load_backend("mnist", weights=weights)
    if not quick:
        sys.exit(
            "The mnist backend ships no trained weights in this version of cfaug. Train a CGN first "
            "(python examples/train_cgn.py --data-root data --download) and pass the checkpoint it prints "
            "with --weights, or run with --quick to try the code path on random weights."
        )
    print("note: no trained weights available; --quick uses a randomly initialised generator (noise images)")
    # A fixed seed: every process (DataLoader workers, torchrun ranks) must build the very same random model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backend = MnistBackend()
    backend.weights_name = "random init (--quick)"
    return backend.eval().requires_grad_(False)


def pick_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
