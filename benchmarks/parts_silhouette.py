"""Does a filled background of the ``parts`` backend still show the object? A classifier tries to read it.

The ``parts`` backend stores real backgrounds with the object filled from the image's own background
(``cfaug.backends.parts_build.filled_background``). If the fill left a silhouette, every counterfactual would
carry a second, hidden shape: the one of the image the background came from. This benchmark trains a small CNN
to read the digit from backgrounds alone and reports its test accuracy; chance is 10%.

Images come from the de-biased test split of an MNIST variant (object and background classes independent of the
digit, so the background's own class says nothing about the digit); the first ``--train`` images train the
classifier, the next ``--test`` test it. Rows:

* ``cut out`` (control): ``(1 - m) * x``, the object blacked out: the silhouette is plain to read;
* ``flat fill`` (control): the object region (as the fill grows it) painted with the background's mean colour;
* ``parts fill, true masks``: ``filled_background`` with the dataset's true masks, as ``build_parts`` does;
* ``parts fill, estimated masks``: the same with the masks of the variant's mask estimator (the one inside the
  shipped MNIST weights), as ``cfaug build-parts --variant`` does.

Usage:
    python benchmarks/parts_silhouette.py --variant wildlife_mnist --data-root ../shared/data \
        --texture-root ../shared/data/wildlife_textures [--train 4000 --test 1000 --epochs 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import cfaug
from cfaug._utils import atomic_write
from cfaug.backends.parts_build import filled_background
from cfaug.evaluation.shape_classifier import make_datasets
from cfaug.names import VARIANTS


def _classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def read_digits(images: torch.Tensor, digits: torch.Tensor, train: int, epochs: int, seed: int) -> float:
    """Train the CNN on the first ``train`` images and return its accuracy on the rest."""
    torch.manual_seed(seed)
    model = _classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = images[:train], digits[:train]
    for _ in range(epochs):
        for batch in torch.randperm(train).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in images[train:].split(500)])
    return float((predictions == digits[train:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="wildlife_mnist")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--texture-root", default=None)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    _, test_split = make_datasets(args.variant, args.data_root, args.texture_root)
    n = args.train + args.test
    parts = test_split.components(range(n))
    _, targets = test_split.batch(range(n))
    digits = targets[:, 0] if targets.dim() == 2 else targets  # make_datasets' splits give (digit, object, bg)
    estimator = cfaug.load_backend("mnist", weights=args.variant)
    with torch.no_grad():
        estimated = torch.cat([estimator.estimate_mask(chunk) for chunk in parts.image.split(500)])

    start = time.perf_counter()
    grown = F.max_pool2d((parts.mask > 0.1).float(), 3, stride=1, padding=1)
    mean = (parts.image * (1 - grown)).sum((2, 3), keepdim=True) / (1 - grown).sum((2, 3), keepdim=True).clamp_min(1)
    rows = {
        "cut out (control)": parts.image * (1 - parts.mask),
        "flat fill (control)": parts.image * (1 - grown) + mean * grown,
        "parts fill, true masks": torch.stack(
            [filled_background(x, m) for x, m in zip(parts.image, parts.mask, strict=True)]
        ),
    }
    fill_seconds = (time.perf_counter() - start) / n
    rows["parts fill, estimated masks"] = torch.stack(
        [filled_background(x, m) for x, m in zip(parts.image, estimated, strict=True)]
    )
    results = {}
    for name, images in rows.items():
        accuracies = [read_digits(images, digits, args.train, args.epochs, seed) for seed in args.seeds]
        results[name] = accuracies
        print(f"{name:30s} " + " ".join(f"{100 * a:5.1f}" for a in accuracies), flush=True)
    table = [
        f"Digit read from backgrounds alone ({args.variant}, de-biased test split, {args.train} train / {args.test} "
        f"test images, small CNN, {args.epochs} epochs, seeds {args.seeds}; chance 10%)",
        "",
        "| backgrounds | accuracy (%) |",
        "|---|---|",
        *(f"| {name} | {' / '.join(f'{100 * a:.1f}' for a in acc)} |" for name, acc in results.items()),
        "",
        f"fill_object: {1000 * fill_seconds:.1f} ms per 32x32 image on this CPU",
    ]
    print("\n".join(table))
    if args.out is not None:
        payload = {"variant": args.variant, "train": args.train, "test": args.test, "epochs": args.epochs}
        payload.update({"seeds": args.seeds, "accuracy": results, "fill_ms_per_image": 1000 * fill_seconds})
        with atomic_write(args.out, "w") as handle:
            json.dump(payload, handle, indent=1)


if __name__ == "__main__":
    main()
