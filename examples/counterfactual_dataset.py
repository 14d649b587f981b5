"""Generate a counterfactual dataset once, save it, load it back, and mix it with real data.

Generating on the fly (``CounterfactualAugment``) costs generator time in every epoch. A saved dataset costs it
once: item ``i`` depends only on ``(seed, i)``, the files are verified by sha256 when read, and an interrupted
save resumes where it stopped.

Usage (the shipped colored_mnist weights unless ``--weights`` names others or a checkpoint):
    python examples/counterfactual_dataset.py --data-root data --download --out cf_colored_mnist --size 20000
    python examples/counterfactual_dataset.py --quick --data-root data --out /tmp/cf_quick
"""

from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

import cfaug
from cfaug.datasets import ColoredMNIST, MixedDataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="the CGN that generates: named mnist weights or a checkpoint path")
    parser.add_argument("--data-root", default="data", help="holds torchvision's MNIST/ (the real data to mix in)")
    parser.add_argument("--download", action="store_true", help="download MNIST into --data-root when absent")
    parser.add_argument("--quick", action="store_true", help="64 counterfactuals instead of --size (for the tests)")
    parser.add_argument("--out", required=True, help="folder of the saved dataset")
    parser.add_argument("--size", type=int, default=20_000, help="number of counterfactuals")
    parser.add_argument("--workers", type=int, default=2, help="processes that generate and write in parallel")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    backend = cfaug.load_backend("mnist", weights=args.weights)
    size = 64 if args.quick else args.size

    # --8<-- [start:generate]
    # Item i is (image, shape class); its classes and noise depend only on (seed, i).
    dataset = cfaug.CounterfactualDataset(backend, size=size, seed=0)  # or ("mnist", weights=..., size=...)
    image, shape_class = dataset[0]
    info = dataset.info(0)
    print(f"item 0: image {tuple(image.shape)}, shape {info.shape}, texture {info.texture}, "
          f"background {info.background}, seed {info.seed}")  # fmt: skip
    # --8<-- [end:generate]

    # --8<-- [start:save]
    # PNG files plus labels.csv (classes, seed, sha256 per item) and manifest.json. Run it again after an
    # interruption: the chunks already on disk are skipped.
    complete = dataset.save(args.out, format="png", num_workers=args.workers, progress=not args.quick)
    print(f"saved to {args.out}: complete={complete}")
    # --8<-- [end:save]

    # --8<-- [start:load]
    saved = cfaug.CounterfactualDataset.load(args.out)  # checks the manifest and labels.csv
    saved.verify()  # hashes every file (reads also check each file they open)
    image, shape_class = saved[0]
    difference = (image - dataset[0][0]).abs().max().item()
    print(f"loaded {len(saved)} items; item 0 differs from the generated image by {difference:.6f} (8 bits: <= 1/510)")
    # --8<-- [end:load]

    # --8<-- [start:mix]
    # Real and counterfactual items, half and half, in a fixed seeded arrangement. Both sides give float
    # images (3, 32, 32) in [0, 1] and the digit (shape class) as target.
    real = ColoredMNIST(args.data_root, train=True, download=args.download)
    train_set = MixedDataset(real, saved, counterfactual_fraction=0.5, seed=0)
    loader = DataLoader(train_set, batch_size=64, shuffle=True)
    images, labels = next(iter(loader))
    counterfactuals = sum(train_set.is_counterfactual(i) for i in range(1000))
    print(f"mixed dataset: {len(train_set)} items, {counterfactuals} of the first 1000 are counterfactual; "
          f"a batch {tuple(images.shape)}, labels {labels[:8].tolist()}")  # fmt: skip
    # --8<-- [end:mix]


if __name__ == "__main__":
    main()
