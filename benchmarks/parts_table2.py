"""The paper's Table 2 experiment with counterfactuals from the ``parts`` backend beside a trained CGN's.

Parts stores are built from the variant's *biased training split* itself (every class's images carry that class's
colour or texture, so recombining parts of different classes is a counterfactual):

* ``parts-est``: masks from the mask estimator inside the shipped MNIST weights of the variant, as
  ``cfaug build-parts --variant`` makes it;
* ``parts-true``: the dataset's true digit masks (what the estimator should find);

and ``cgn`` is the shipped trained CGN of the variant. Each column goes through ``cfaug.evaluation.run_table2``
(the same classifier, seeds, counterfactual protocol and test split), so the rows compare like with like; the
``original+augment`` row keeps real training digits' shapes (image-only ``CounterfactualAugment``) and takes
texture and background from the column's backend.

Usage: the defaults are the paper's protocol (all training images, 50,000 counterfactuals, 10 epochs, 3 seeds;
about 23 minutes per run on one CPU thread); a reduced one, as on the Reproducing page:
    python benchmarks/parts_table2.py --variant colored_mnist --data-root ../shared/data \
        --epochs 2 --num-counterfactuals 20000 --seeds 0 1 2 \
        --out-dir runs/parts_table2 [--max-train-images 10000] [--max-per-class 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import cfaug
from cfaug._utils import atomic_write
from cfaug.backends.parts_build import build_parts
from cfaug.evaluation import table2
from cfaug.evaluation.shape_classifier import make_datasets
from cfaug.names import VARIANTS


class _WithMasks(torch.utils.data.Dataset):
    """The first ``limit`` items of a biased split as ``(image, digit, true mask)``."""

    def __init__(self, split, limit: int | None):
        self.split = split
        self.size = len(split) if limit is None else min(limit, len(split))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        parts = self.split.components([index])
        return parts.image[0], _digit(self.split[index][1]), parts.mask[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="colored_mnist")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--texture-root", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-train-images", type=int, default=None, help="the first N training images (default: all)")
    parser.add_argument("--num-counterfactuals", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-per-class", type=int, default=100)
    parser.add_argument("--settings", nargs="+", default=["original", "original+cf", "original+augment"])
    parser.add_argument("--columns", nargs="+", default=["parts-est", "parts-true", "cgn"])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/parts_table2"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    train_split, _ = make_datasets(args.variant, args.data_root, args.texture_root)
    limit = args.max_train_images
    stores, builds = {}, {}
    for column in [c for c in args.columns if c.startswith("parts")]:
        start = time.perf_counter()
        if column == "parts-est":
            source = torch.utils.data.Subset(train_split, range(min(limit or len(train_split), len(train_split))))
            store = build_parts(
                _Digits(source), f"mnist:{args.variant}", num_classes=10, max_per_class=args.max_per_class
            )
        else:
            store = build_parts(_WithMasks(train_split, limit), None, num_classes=10, max_per_class=args.max_per_class)
        store.save(args.out_dir / f"{column}_{args.variant}.safetensors")
        builds[column] = {"seconds": round(time.perf_counter() - start, 1), "provenance": store.provenance}
        print(f"{column}: built in {builds[column]['seconds']} s, counts {store.provenance['counts']['texture']}")
        stores[column] = store
    weights = {c: stores[c] if c in stores else args.variant for c in args.columns}
    results = table2.run_table2(
        args.variant,
        weights,
        seeds=tuple(args.seeds),
        settings=tuple(args.settings),
        epochs=args.epochs,
        num_counterfactuals=args.num_counterfactuals,
        data_root=args.data_root,
        texture_root=args.texture_root,
        out_dir=args.out_dir,
        max_train_images=args.max_train_images,
        progress=False,
    )
    results["parts_builds"] = builds
    with atomic_write(args.out_dir / f"parts_table2_{args.variant}.json", "w") as handle:
        json.dump(results, handle, indent=1)
    print(table2.format_table2(results))


class _Digits(torch.utils.data.Dataset):
    """A split's items as ``(image, digit)`` (the splits of ``make_datasets`` give ``(digit, object, bg)``)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image, target = self.split[index]
        return image, _digit(target)


def _digit(target) -> int:
    """The digit of a target: ``make_datasets`` splits give ``(digit, object class, background class)``."""
    return (
        int(target[0]) if isinstance(target, tuple | list) or torch.is_tensor(target) and target.dim() else int(target)
    )


if __name__ == "__main__":
    cfaug.list_backends()  # fail early on a broken install
    main()
