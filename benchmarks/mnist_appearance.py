"""Appearance of MNIST CGNs: how far generated images of a class are from the real images of that class.

For every class ``c``, images generated with shape, texture and background class ``c`` are compared with real
training images of digit ``c`` (whose colour or texture classes are ``c`` too, since the training split ties them)
by the sliced Wasserstein distance (SWD) between their 7 x 7 pixel patches, at full and at half resolution (the
measure of Karras et al., ICLR 2018, but on raw RGB values: they normalise the patches by the mean and standard
deviation of each colour channel, which would hide a shifted colour, the very error to catch here).

No network enters the measure, so it is independent of the VGG16 behind the style loss: it is how cfaug measures
what that loss (and the choice of its feature network) does to the generated colours and textures. The distance
between two disjoint sets of real images of the class is printed as the floor: a generator whose images came from
the real distribution would score it, up to sampling noise.

Usage:
    python benchmarks/mnist_appearance.py --variant wildlife_mnist --data-root ../shared/data \
        --texture-root ../shared/data/wildlife_textures --shipped \
        [--authors-dir ../shared/data/reference_cgn_mnist] [--weights NAME=PATH ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import cfaug
from cfaug._utils import atomic_write
from cfaug.backends.mnist import MnistBackend
from cfaug.cli.evaluate import parse_named_weights
from cfaug.datasets.mnist_variants import VARIANTS
from cfaug.demo import save_grid
from cfaug.evaluation.shape_classifier import make_datasets

PATCH = 7
LEVELS = (32, 16)


def patch_descriptors(images: torch.Tensor, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """``per_image`` random ``PATCH x PATCH`` patches of each image, flattened: ``(B * per_image, C * PATCH**2)``."""
    patches = F.unfold(images, PATCH)  # (B, C * PATCH**2, positions)
    picks = torch.randint(0, patches.shape[-1], (images.shape[0], per_image), generator=generator)
    chosen = patches.gather(2, picks.unsqueeze(1).expand(-1, patches.shape[1], -1))
    return chosen.transpose(1, 2).reshape(-1, patches.shape[1])


def random_directions(channels: int, count: int = 128, seed: int = 0) -> torch.Tensor:
    """``count`` random unit vectors in patch space, ``(channels * PATCH**2, count)``."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(channels * PATCH * PATCH, count, generator=generator), dim=0)


def sorted_projections(
    images: torch.Tensor, directions: torch.Tensor, *, per_image: int = 32, seed: int = 0
) -> dict[int, torch.Tensor]:
    """Per resolution in ``LEVELS``: the images' patches projected on ``directions``, sorted, ``(count, patches)``.

    Two such results of equally many images give their sliced Wasserstein distance with ``sliced_wasserstein``.
    """
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for size in LEVELS:
        scaled = images if images.shape[-1] == size else F.adaptive_avg_pool2d(images, size)
        projected = directions.t() @ patch_descriptors(scaled, per_image, generator).t()
        result[size] = projected.sort(dim=1).values
    return result


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor) -> float:
    """The 1-Wasserstein distance between two sorted projections of equal size, averaged over directions, x 100."""
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` should have one shape, but got {tuple(a.shape)} and {tuple(b.shape)}.")
    return 100 * float((a - b).abs().mean())


def class_images(dataset: Any, per_class: int) -> dict[int, torch.Tensor]:
    """The first ``2 * per_class`` training images of every digit class (two disjoint sets of ``per_class``)."""
    images = {}
    for c in range(10):
        indices = torch.nonzero(dataset.targets == c).flatten()[: 2 * per_class]
        if len(indices) < 2 * per_class:
            raise ValueError(
                f"`per_class` {per_class} needs {2 * per_class} training images of class {c}, but it has "
                f"{len(indices)}."
            )
        images[c] = dataset.batch(indices)[0]
    return images


def measure(
    real: dict[int, torch.Tensor], generators: dict[str, Any], per_class: int, show: int = 4
) -> tuple[dict[str, dict[str, dict[str, Any]]], torch.Tensor]:
    """Per generator (and the real floor), level and class: the SWD to the first real set of the class.

    Every generator draws ``per_class`` images of class ``c`` with shape, texture and background class ``c``,
    with the same seeds.

    Returns:
        The summaries (see ``summarise``) by name, and the first ``show`` images of each class and source
        (the second real set, then the generators), row-major with one row per class, for a picture.
    """
    directions = random_directions(3)
    shown: list[torch.Tensor] = []
    values: dict[str, dict[int, list[float]]] = {
        name: {s: [] for s in LEVELS} for name in ["real (floor)", *generators]
    }
    for c, images in real.items():
        reference = sorted_projections(images[:per_class], directions, seed=c)
        candidates = {"real (floor)": images[per_class:]}
        classes = torch.full((per_class,), c, dtype=torch.int64)
        seeds = torch.arange(per_class, dtype=torch.int64) + 1000 * c + 777
        for name, backend in generators.items():
            candidates[name] = backend.sample(classes, classes, classes, seeds=seeds).image.cpu().clamp(0, 1)
        for name, candidate in candidates.items():
            projections = sorted_projections(candidate, directions, seed=c + 100)
            for size in LEVELS:
                values[name][size].append(sliced_wasserstein(projections[size], reference[size]))
            shown.append(candidate[:show])
    return {name: summarise(levels) for name, levels in values.items()}, torch.cat(shown)


def summarise(per_level: dict[int, list[float]]) -> dict[str, dict[str, Any]]:
    """Mean over classes, worst class and the per-class values of each level."""
    return {
        f"{size}px": {
            "mean": sum(values) / len(values),
            "worst_class": max(range(len(values)), key=values.__getitem__),
            "worst": max(values),
            "per_class": [round(v, 3) for v in values],
        }
        for size, values in per_level.items()
    }


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--data-root", default="../shared/data", help="folder holding MNIST/")
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST textures (default: procedural)")
    parser.add_argument("--shipped", action="store_true", help="add cfaug's shipped weights of the variant")
    parser.add_argument("--authors-dir", default=None, help="folder with the CGN authors' <variant>.pth files")
    parser.add_argument("--weights", type=parse_named_weights, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--per-class", type=int, default=500, help="images per class and set (default 500)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--grid", default=None, help="also save a PNG: per class, 4 real images, then 4 of each generator"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure every generator given and print one row each, under the real-vs-real floor."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class should be a positive number of images, but got {args.per_class}")
    torch.set_num_threads(args.threads)
    models = {}
    if args.shipped:
        models[f"cfaug {args.variant}"] = cfaug.load_backend("mnist", weights=args.variant)
    if args.authors_dir is not None:
        models[f"authors {args.variant}"] = MnistBackend.import_weights(Path(args.authors_dir) / f"{args.variant}.pth")
    for name, path in args.weights:
        models[name] = cfaug.load_backend("mnist", weights=path)
    if not models:
        raise SystemExit("Nothing to measure: give --shipped, --authors-dir or --weights.")

    started = time.perf_counter()
    train, _ = make_datasets(args.variant, args.data_root, texture_root=args.texture_root)
    real = class_images(train, args.per_class)
    results, shown = measure(real, {name: backend.eval() for name, backend in models.items()}, args.per_class)

    header = " | ".join(f"SWD {size}px (worst class)" for size in LEVELS)
    seconds = time.perf_counter() - started
    print(f"{args.variant}: {args.per_class} images per class and set, 7x7 patches, SWD x 100 ({seconds:.0f} s)\n")
    print(f"| images | {header} |")
    print("|---|" + "---:|" * len(LEVELS))
    for name, result in results.items():
        levels = [result[f"{size}px"] for size in LEVELS]
        cells = " | ".join(f"{v['mean']:.2f} ({v['worst_class']}: {v['worst']:.2f})" for v in levels)
        print(f"| {name} | {cells} |")
    if args.grid:
        path = save_grid(shown, args.grid, 4 * len(results))
        print(f"\nPicture (a row per class; 4 columns each: {', '.join(results)}): {path}")
    if args.json:
        with atomic_write(args.json, "w") as handle:
            handle.write(json.dumps({"variant": args.variant, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
