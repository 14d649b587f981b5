"""Use a backend that another package provides: the ``stripes`` plugin of ``examples/plugin_package``.

After ``pip install -e examples/plugin_package``, cfaug finds the backend through the ``cfaug.backends`` entry
point of that package: it is listed, loaded by name and used by the transforms like the built-in ``mnist``.

Usage:
    pip install -e examples/plugin_package
    python examples/plugin_backend.py --out stripes_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import save_image

import cfaug
from cfaug.demo import counterfactual_grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("stripes_grid.png"), help="where to write the grid")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; this example is quick")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if "stripes" not in cfaug.list_backends():
        raise SystemExit("The stripes backend is not installed: pip install -e examples/plugin_package")

    # --8<-- [start:use]
    print("backends:", cfaug.list_backends())  # includes "stripes" once the package is installed
    backend = cfaug.load_backend("stripes")
    grid = counterfactual_grid(backend)  # row: shape class; column: texture and background class
    save_image(grid, args.out, nrow=backend.num_classes, padding=1, pad_value=1.0)

    augment = cfaug.CounterfactualAugment("stripes", p=1.0)  # by name: each DataLoader worker loads its own
    labels = torch.arange(backend.num_classes)
    images = backend.sample(labels, labels, labels).image
    augmented, same_labels = augment(images, labels)
    print(f"wrote {args.out}; augmented {tuple(augmented.shape)}, labels kept: {torch.equal(same_labels, labels)}")
    # --8<-- [end:use]

    # --8<-- [start:register]
    # A backend defined in a script or notebook needs no package: register it in this process.
    stripes_class = cfaug.get_backend_class("stripes")

    @cfaug.register_backend()
    class WideStripes(stripes_class):
        """The stripes backend with wider stripes by default."""

        name = "wide-stripes"

        def __init__(self, num_classes: int = 4, image_size: int = 32, stripe_period: float = 12.0) -> None:
            super().__init__(num_classes, image_size, stripe_period)

    wide = cfaug.load_backend("wide-stripes")
    print(f"registered in this process: {cfaug.list_backends('*stripes')}, stripe period {wide.stripe_period}")
    # --8<-- [end:register]


if __name__ == "__main__":
    main()
