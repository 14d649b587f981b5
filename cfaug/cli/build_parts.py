"""``cfaug build-parts``: turn a labelled dataset into a ``parts`` store (``cfaug.backends.parts_build``).

Registered in the command tree by ``cfaug.cli.parser`` as the pair ``add_build_parts_arguments`` /
``run_build_parts``; ``add_parser(subparsers)`` adds the command to any ``argparse`` sub-parser group.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from cfaug._utils import verify_str_arg
from cfaug.names import VARIANTS

__all__ = ["HELP", "add_build_parts_arguments", "add_parser", "run", "run_build_parts"]

HELP = "build a parts store (real shapes, textures, backgrounds) from a labelled dataset, no training"


def add_build_parts_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug build-parts`` to ``parser`` and return it.

    Examples:
        >>> parser = add_build_parts_arguments(argparse.ArgumentParser())
        >>> args = parser.parse_args(["--image-folder", "photos", "--estimator", "u2netp", "--out", "p.safetensors"])
        >>> args.max_per_class, args.image_size
        (100, None)
    """
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image-folder", type=Path, help="a torchvision ImageFolder: one sub-folder per class")
    source.add_argument("--variant", choices=VARIANTS, help="the biased training split of an MNIST variant")
    parser.add_argument("--data-root", default="data", help="folder holding torchvision's MNIST/ (default: data)")
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST texture folder (default: built-in)")
    parser.add_argument(
        "--estimator",
        default=None,
        help="mask estimator: mnist[:WEIGHTS] (digits), u2netp[:FILE] or u2net[:FILE] (photographs); "
        "default: mnist:<variant> with --variant, u2netp with --image-folder",
    )
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors store to write")
    parser.add_argument("--image-size", type=int, default=None, help="side of the stored parts (default: data's)")
    parser.add_argument("--max-per-class", type=int, default=100, help="images kept per class (default: 100)")
    parser.add_argument("--patch-size", type=int, default=None, help="texture patch side (default: size // 16, >= 2)")
    parser.add_argument("--patches-per-image", type=int, default=64, help="patches per texture pool (default: 64)")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask value of object pixels (default: 0.5)")
    parser.add_argument("--min-area", type=float, default=0.01, help="skip smaller objects (default: 0.01)")
    parser.add_argument("--max-area", type=float, default=0.6, help="skip larger objects (default: 0.6)")
    parser.add_argument(
        "--shape-jitter",
        type=float,
        nargs=3,
        default=(0.0, 0.0, 0.0),
        metavar=("DEGREES", "TRANSLATE", "SCALE"),
        help="random affine jitter of the masks (default: 0 0 0, none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the reading order and patch draws (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per estimator call (default: 64)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bar")
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build-parts`` to an ``argparse`` sub-parser group, with ``run`` as its handler."""
    parser = subparsers.add_parser("build-parts", help=HELP)
    add_build_parts_arguments(parser)
    parser.set_defaults(handler=run_build_parts)
    return parser


def _dataset(args: argparse.Namespace) -> tuple[Any, str, str]:
    """The dataset, how the provenance names it, and the default estimator for it."""
    if args.image_folder is not None:
        from torchvision.datasets import ImageFolder

        if not args.image_folder.is_dir():
            raise FileNotFoundError(f"`--image-folder` {str(args.image_folder)!r} is not a folder.")
        return ImageFolder(str(args.image_folder)), f"ImageFolder {args.image_folder.name}", "u2netp"
    from cfaug.datasets.mnist_variants import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

    variant = verify_str_arg(args.variant, "variant", VARIANTS)
    try:
        if variant == "wildlife_mnist":
            dataset = WildlifeMNIST(args.data_root, train=True, texture_root=args.texture_root)
        else:
            dataset = (ColoredMNIST if variant == "colored_mnist" else DoubleColoredMNIST)(args.data_root, train=True)
    except RuntimeError as error:  # the datasets' "MNIST not found": a user error, not a bug
        raise FileNotFoundError(f"`--data-root` {args.data_root!r}: {error}") from error
    return dataset, f"{variant} (biased training split)", f"mnist:{variant}"


def run_build_parts(args: argparse.Namespace) -> int:
    """Run ``cfaug build-parts``: build the store, write it, print a summary; returns the exit code."""
    from cfaug.backends.parts_build import build_parts

    dataset, name, default_estimator = _dataset(args)
    start = time.perf_counter()
    store = build_parts(
        dataset,
        args.estimator or default_estimator,
        image_size=args.image_size,
        max_per_class=args.max_per_class,
        patch_size=args.patch_size,
        patches_per_image=args.patches_per_image,
        threshold=args.threshold,
        min_area=args.min_area,
        max_area=args.max_area,
        shape_jitter=tuple(args.shape_jitter),
        seed=args.seed,
        batch_size=args.batch_size,
        dataset_name=name,
        progress=args.progress,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    store.save(args.out)
    counts = store.provenance["counts"]
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s: "
        f"{store.num_classes} classes, {store.image_size}x{store.image_size}, parts per class "
        f"(shape/texture/background) min {min(counts['shape'])}/{min(counts['texture'])}/{min(counts['background'])}, "
        f"{store.provenance['images_read']} images read, skipped {store.provenance['skipped']}"
    )
    print(f'use it: CounterfactualAugment("parts", weights="{args.out}")')
    return 0


#: The brief's names for the pair.
run = run_build_parts
