"""Make the pictures of the documentation site from a backend's weights and from the datasets' code.

Writes into ``docs/images/`` (or ``--out``):

* ``counterfactual_grid.png``, ``components.png``, ``augment_example.png``: exactly what ``cfaug demo`` writes
  for the same weights and seed;
* ``mnist_variants.png`` (with ``--data-root``): the first ten training and test images of Colored,
  Double-colored and Wildlife MNIST;
* ``stripes_grid.png``: the counterfactual grid of the example plugin backend in ``examples/plugin_package``;
* ``provenance.md``: one paragraph that says which weights made the pictures; the pages include it.

Usage:
    python scripts/make_doc_images.py                          # the mnist backend's default weights
    python scripts/make_doc_images.py --weights runs/colored_mnist/final.safetensors --data-root data
    python scripts/make_doc_images.py --weights colored_mnist.pth   # a CGN authors' checkpoint, imported
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import cfaug
from cfaug._utils import atomic_write
from cfaug.backends.base import Backend
from cfaug.demo import counterfactual_grid, run_demo, save_grid

REPO = Path(__file__).resolve().parent.parent


def load_backend(backend_name: str, weights: str | None) -> Backend:
    """The backend with its default weights, named weights, a checkpoint, or an imported authors' ``.pth``."""
    if weights is not None and weights.endswith(".pth"):
        return cfaug.get_backend_class(backend_name).import_weights(weights)
    return cfaug.load_backend(backend_name, weights=weights)


def provenance(backend: Backend, weights: str | None) -> str:
    """A paragraph for the pages: which weights made the pictures, and how to make them again."""
    if weights is None:
        source = f"the default weights of the `{backend.name}` backend (`{backend.weights_name}`)"
    elif weights.endswith(".pth"):
        source = (
            f"the CGN authors' released checkpoint `{Path(weights).name}`, converted with "
            f"`{type(backend).__name__}.import_weights` (these weights do not ship with cfaug)"
        )
    elif Path(weights).is_file():
        source = f"the checkpoint `{Path(weights).name}`"
    else:
        source = f"the named weights `{weights}` of the `{backend.name}` backend"
    return (
        f"These pictures were made by `scripts/make_doc_images.py` with cfaug {cfaug.__version__} from {source}, "
        f"sha256 `{backend.weights_sha256}`.\n"
    )


def demo_pictures(backend: Backend, out: Path, seed: int) -> list[Path]:
    """Run ``cfaug demo`` and copy its pictures into ``out`` unchanged."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in run_demo(tmp, backend=backend, seed=seed):
            written.append(out / path.name)
            with atomic_write(written[-1]) as handle:
                handle.write(path.read_bytes())
    return written


def variant_pictures(data_root: str, out: Path, count: int = 10) -> Path:
    """Rows: Colored, Double-colored and Wildlife MNIST, each its training split then its test split."""
    from cfaug.datasets import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

    rows = []
    for cls in (ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST):
        for train in (True, False):
            images, _ = cls(data_root, train=train).batch(range(count))
            rows.append(images)
    path = out / "mnist_variants.png"
    save_grid(torch.cat(rows), path, nrow=count)
    return path


def stripes_picture(out: Path, seed: int) -> Path:
    """The counterfactual grid of the example plugin backend (imported from its source folder)."""
    sys.path.insert(0, str(REPO / "examples" / "plugin_package" / "src"))
    from cfaug_stripes import StripesBackend

    backend = StripesBackend().eval()
    path = out / "stripes_grid.png"
    save_grid(counterfactual_grid(backend, seed=seed), path, nrow=backend.num_classes)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The script's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="mnist", help="backend name (default: mnist)")
    parser.add_argument("--weights", default=None, help="named weights, checkpoint path or authors' .pth")
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/ (for mnist_variants.png)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo pictures (default: 0, as cfaug demo)")
    return parser


def main() -> None:
    """Write every picture and the provenance paragraph, and print their paths."""
    args = build_parser().parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    backend = load_backend(args.backend, args.weights)
    paths = demo_pictures(backend, args.out, args.seed)
    paths.append(args.out / "provenance.md")
    with atomic_write(paths[-1], "w") as handle:
        handle.write(provenance(backend, args.weights))
    paths.append(stripes_picture(args.out, args.seed))
    if args.data_root is not None:
        paths.append(variant_pictures(args.data_root, args.out))
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
