"""Shared fixtures: the toy backend, ../shared lookup, RNG isolation."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # so that DataLoader workers can import toy_backend by name

from toy_backend import ToyBackend  # noqa: E402

import cfaug  # noqa: E402

SHARED = TESTS.parent.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip (fail when CFAUG_REQUIRE_SHARED=1) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"{path} is absent: ../shared (the team's reference data) is not beside this checkout"
        if os.environ.get("CFAUG_REQUIRE_SHARED") == "1":
            pytest.fail(message + " and CFAUG_REQUIRE_SHARED=1")
        pytest.skip(message)
    return path


def write_mnist_idx(folder: Path, prefix: str, images, labels) -> None:
    """Write MNIST IDX files (torchvision's layout) for ``(N, 28, 28)`` uint8 images and ``(N,)`` labels.

    ``prefix`` is ``"train"`` or ``"t10k"``; ``folder`` is ``<root>/MNIST/raw``. Accepts tensors or arrays.
    """
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.uint8)
    header = struct.pack(">IIII", 2051, len(images), 28, 28)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


cfaug.register_backend("toy", override=True)(ToyBackend)


@pytest.fixture
def toy() -> ToyBackend:
    """A fresh toy backend on the CPU."""
    return cfaug.load_backend("toy")


@pytest.fixture(autouse=True)
def _single_thread():
    """Run the tests' tiny models on one thread: with two, OpenMP's thread sync costs more than the work it
    splits, and on a shared CPU a descheduled worker thread stalls every small op (8x slower test files)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolate_rng():
    """Restore the global torch RNG after each test so tests cannot depend on each other's draws."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)
