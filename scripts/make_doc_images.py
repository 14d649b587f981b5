"""Make the pictures of the documentation site from a backend's weights and from the datasets' code.

Writes into ``docs/images/`` (or ``--out``):

* ``counterfactual_grid.png``, ``components.png``, ``augment_example.png``: exactly what ``cfaug demo`` writes
  for the same weights and seed;
* ``grid_<name>.png``: the counterfactual grid of each named weight that the backend ships (for ``mnist``:
  ``colored_mnist``, ``double_colored_mnist``, ``wildlife_mnist``);
* ``mnist_variants.png`` (with ``--data-root``): the first ten training and test images of Colored,
  Double-colored and Wildlife MNIST;
* ``image_only.png`` (with ``--data-root``, for the ``mnist`` backend): the first ten test images of each MNIST
  variant, the masks the matching shipped weights estimate for them, and ``CounterfactualAugment``'s image-only
  counterfactuals of them;
* ``stripes_grid.png``: the counterfactual grid of the example plugin backend in ``examples/plugin_package``;
* ``provenance.md``: one paragraph that says which weights made the pictures; the pages include it.

Usage:
    python scripts/make_doc_images.py --data-root data --texture-root textures   # what docs/images/ holds
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
#: Pictures per row in the dataset pictures: one per digit class is enough to see each variant's rule.
COUNT = 10


def load_backend(backend_name: str, weights: str | None) -> Backend:
    """The backend with its default weights, named weights, a checkpoint, or an imported authors' ``.pth``."""
    if weights is not None and weights.endswith(".pth"):
        return cfaug.get_backend_class(backend_name).import_weights(weights)
    return cfaug.load_backend(backend_name, weights=weights)


def describe_weights(backend: Backend, weights: str | None) -> str:
    """Where the weights of ``backend`` come from, in words for the provenance paragraph."""
    if weights is None:
        return f"the default weights of the `{backend.name}` backend (`{backend.weights_name}`)"
    if weights.endswith(".pth"):
        return (
            f"the CGN authors' released checkpoint `{Path(weights).name}`, converted with "
            f"`{type(backend).__name__}.import_weights` (these weights do not ship with cfaug)"
        )
    if Path(weights).is_file():
        return f"the checkpoint `{Path(weights).name}`"
    return f"the named weights `{weights}` of the `{backend.name}` backend"


def provenance(
    backend: Backend, weights: str | None, named: dict[str, str], datasets: bool, texture_root: str | None
) -> str:
    """A paragraph for the pages: which weights made the pictures, and how to make them again.

    Args:
        backend: the backend of the demo pictures.
        weights: the ``--weights`` it was loaded with.
        named: sha256 of each named weight whose grid (and image-only picture) was made, by name.
        datasets: whether pictures of the MNIST variants were made (``--data-root``).
        texture_root: the Wildlife MNIST texture folder of those pictures, or None for the built-in textures.
    """
    text = (
        f"These pictures were made by `scripts/make_doc_images.py` with cfaug {cfaug.__version__}. The demo "
        f"pictures come from {describe_weights(backend, weights)}, sha256 `{backend.weights_sha256}`"
    )
    if named:
        listed = ", ".join(f"`{name}` (sha256 `{digest[:12]}...`)" for name, digest in named.items())
        text += f"; the per-variant pictures from the shipped named weights {listed}"
    if not datasets:
        return text + ".\n"
    textures = "the paper's textures" if texture_root is not None else "cfaug's built-in procedural textures"
    return text + f". The Wildlife MNIST images use {textures}.\n"


def demo_pictures(backend: Backend, out: Path, seed: int) -> list[Path]:
    """Run ``cfaug demo`` and copy its pictures into ``out`` unchanged."""
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in run_demo(tmp, backend=backend, seed=seed):
            written.append(out / path.name)
            with atomic_write(written[-1]) as handle:
                handle.write(path.read_bytes())
    return written


def named_grids(backend_name: str, out: Path, seed: int) -> tuple[list[Path], dict[str, str]]:
    """The counterfactual grid of every named weight of the backend, and each one's sha256."""
    paths, digests = [], {}
    for name in cfaug.get_backend_class(backend_name).named_weights:
        backend = cfaug.load_backend(backend_name, weights=name)
        grid = counterfactual_grid(backend, classes=min(backend.num_classes, 10), seed=seed)
        paths.append(save_grid(grid, out / f"grid_{name}.png", nrow=min(backend.num_classes, 10)))
        digests[name] = backend.weights_sha256
    return paths, digests


def _variants(data_root: str, texture_root: str | None, train: bool) -> list[tuple[str, torch.utils.data.Dataset]]:
    from cfaug.datasets import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

    return [
        ("colored_mnist", ColoredMNIST(data_root, train=train)),
        ("double_colored_mnist", DoubleColoredMNIST(data_root, train=train)),
        ("wildlife_mnist", WildlifeMNIST(data_root, train=train, texture_root=texture_root)),
    ]


def variant_pictures(data_root: str, texture_root: str | None, out: Path) -> Path:
    """Rows: Colored, Double-colored and Wildlife MNIST, each its training split then its test split."""
    rows = []
    for (_, train_set), (_, test_set) in zip(
        _variants(data_root, texture_root, True), _variants(data_root, texture_root, False), strict=True
    ):
        rows += [train_set.batch(range(COUNT))[0], test_set.batch(range(COUNT))[0]]
    return save_grid(torch.cat(rows), out / "mnist_variants.png", nrow=COUNT)


def image_only_picture(data_root: str, texture_root: str | None, out: Path, seed: int) -> Path:
    """Per variant, three rows: real test images, their estimated masks, their image-only counterfactuals.

    Each variant uses the shipped weights trained on it (generator and mask estimator), as a user would.
    """
    rows = []
    for name, dataset in _variants(data_root, texture_root, False):
        images, _ = dataset.batch(range(COUNT))
        backend = cfaug.load_backend("mnist", weights=name)
        # labels_getter=None: image-only mode even for a batch, the mode a dataset's transform= runs in.
        augment = cfaug.CounterfactualAugment(
            backend, p=1.0, labels_getter=None, generator=torch.Generator().manual_seed(seed)
        )
        rows += [images, backend.estimate_mask(images).expand_as(images), augment(images)]
    return save_grid(torch.cat(rows), out / "image_only.png", nrow=COUNT)


def stripes_picture(out: Path, seed: int) -> Path:
    """The counterfactual grid of the example plugin backend (imported from its source folder)."""
    sys.path.insert(0, str(REPO / "examples" / "plugin_package" / "src"))
    from cfaug_stripes import StripesBackend

    backend = StripesBackend().eval()
    return save_grid(counterfactual_grid(backend, seed=seed), out / "stripes_grid.png", nrow=backend.num_classes)


def build_parser() -> argparse.ArgumentParser:
    """The script's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="mnist", help="backend name (default: mnist)")
    parser.add_argument("--weights", default=None, help="named weights, checkpoint path or authors' .pth")
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/ (for the dataset pictures)")
    parser.add_argument(
        "--texture-root", default=None, help="Wildlife MNIST texture folder (default: built-in procedural textures)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pictures (default: 0, as cfaug demo)")
    return parser


def main() -> None:
    """Write every picture and the provenance paragraph, and print their paths."""
    args = build_parser().parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and leaves the other cores alone

    args.out.mkdir(parents=True, exist_ok=True)
    backend = load_backend(args.backend, args.weights)
    paths = demo_pictures(backend, args.out, args.seed)
    grids, digests = named_grids(args.backend, args.out, args.seed)
    paths += grids
    paths.append(stripes_picture(args.out, args.seed))
    if args.data_root is not None:
        paths.append(variant_pictures(args.data_root, args.texture_root, args.out))
        if args.backend == "mnist":
            paths.append(image_only_picture(args.data_root, args.texture_root, args.out, args.seed))
    paths.append(args.out / "provenance.md")
    with atomic_write(paths[-1], "w") as handle:
        handle.write(provenance(backend, args.weights, digests, args.data_root is not None, args.texture_root))
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
