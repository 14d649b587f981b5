"""Shared fixtures: the toy backend, the example plugin, ../shared lookup, RNG isolation.

Test files live in subfolders that mirror the package (``tests/transforms/``, ``tests/training/``, ...); this file
stays at ``tests/`` so its fixtures reach all of them, and it puts ``tests/`` on ``sys.path`` so that any test file
(and any DataLoader worker) can ``import toy_backend``, ``import transform_contract`` and ``from conftest import``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # so that test files in subfolders and DataLoader workers import toy_backend by name

from toy_backend import ToyBackend  # noqa: E402

import cfaug  # noqa: E402

REPO = TESTS.parent
# ../shared beside the checkout; CFAUG_SHARED points elsewhere (a git worktree that is not beside it, say).
SHARED = Path(os.environ.get("CFAUG_SHARED", REPO.parent / "shared"))
PLUGIN = REPO / "examples" / "plugin_package"


def write_dist_info(pyproject: Path, site: Path) -> Path:
    """Make a package's entry points visible as an installed distribution would: a ``.dist-info`` folder in ``site``.

    ``importlib.metadata`` (which ``cfaug.registry`` reads) finds a distribution by its ``*.dist-info`` folder on
    ``sys.path``; ``METADATA`` and ``entry_points.txt`` are all it reads for names and entry points.
    """
    import tomllib  # Python 3.11+; callers on 3.10 skip (see below)

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
            for group, points in groups.items()
        )
    )
    return info


def _provide_example_plugin() -> None:
    """Make the example plugin ``stripes`` discoverable without ``pip install -e examples/plugin_package``.

    Its source and a ``.dist-info`` with its entry points go on ``sys.path`` of this process and on ``PYTHONPATH``
    of every subprocess the tests start (the ``cfaug`` console script, torchrun, spawned DataLoader workers). If the
    package is installed too, both declare the same ``module:Class``, which the registry accepts silently.
    """
    try:
        import tomllib  # noqa: F401
    except ModuleNotFoundError:  # Python 3.10: the tests that need stripes then need the package installed
        return
    site = Path(tempfile.mkdtemp(prefix="cfaug-test-plugins-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    write_dist_info(PLUGIN / "pyproject.toml", site)
    paths = [str(site), str(PLUGIN / "src")]
    sys.path[1:1] = paths  # after tests/, before site-packages
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cfaug.registry.refresh_backends()


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


_provide_example_plugin()
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
