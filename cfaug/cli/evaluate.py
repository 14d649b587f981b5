"""The command lines of ``cfaug evaluate mnist`` (Table 2) and ``cfaug evaluate imagenet`` (Tables 3 and 4).

Only argument parsing and printing live here; the evaluations are :mod:`cfaug.evaluation.table2` and
:mod:`cfaug.evaluation.imagenet`. ``add_table2_options``, ``weights_from_args`` and ``run_table2_from_args`` are
shared with ``benchmarks/mnist_table2.py``, which runs several variants in one call and merges results.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from cfaug._utils import atomic_write, check_positive_int
from cfaug.evaluation.imagenet import (
    BACKGROUND_VARIANTS,
    DEFAULT_BACKGROUND_VARIANTS,
    IN9_MAPPING_FILE,
    backgrounds_challenge,
    format_backgrounds,
    format_shape_bias,
    load_evaluation_model,
    shape_bias,
)
from cfaug.evaluation.matched_budget import KINDS, MODES, RESULTS_FILE, format_matched_budget, run_matched_budget
from cfaug.evaluation.table2 import SETTINGS, format_table2, run_table2
from cfaug.models.classifiers import OUTPUTS
from cfaug.names import VARIANTS

__all__ = [
    "add_evaluate_imagenet_arguments",
    "add_evaluate_mnist_arguments",
    "add_table2_options",
    "check_evaluate_mnist_args",
    "parse_named_weights",
    "run_evaluate_imagenet",
    "run_evaluate_mnist",
    "run_table2_from_args",
    "weights_from_args",
]


# ------------------------------------------------------------------------------------------------ mnist (Table 2)


def parse_named_weights(text: str) -> tuple[str, str]:
    """Parse a ``NAME=PATH`` option value (argparse ``type``) into ``(name, path)``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"`--weights` should be NAME=PATH, but got {text!r}.")
    return name, path


def add_table2_options(parser: argparse.ArgumentParser, *, data_root: str = "data") -> argparse.ArgumentParser:
    """Add the experiment's options, shared by ``cfaug evaluate mnist`` and ``benchmarks/mnist_table2.py``.

    Args:
        parser: the parser to extend.
        data_root: the default of ``--data-root``.

    Returns:
        ``parser``.
    """
    parser.add_argument(
        "--weights",
        type=parse_named_weights,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a CGN to make counterfactuals with (cfaug checkpoint, or the authors' .pth); repeat for more columns; "
        "'{variant}' in PATH becomes the variant (e.g. runs/{variant}/final.safetensors)",
    )
    parser.add_argument(
        "--authors-dir",
        default=None,
        help="folder with the authors' <variant>.pth and .cfg.yaml; adds an 'authors' column (imported weights)",
    )
    parser.add_argument(
        "--settings", nargs="+", choices=SETTINGS, default=None, help="rows to run (default: all of them)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="run seeds (default 0 1 2)")
    parser.add_argument(
        "--augment-p", type=float, default=0.5, help="CounterfactualAugment's p per batch (original+augment-online)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="classifier epochs (default 10, as the paper)")
    parser.add_argument(
        "--num-counterfactuals", type=int, default=50_000, help="counterfactuals per weights and seed (default 50000)"
    )
    parser.add_argument(
        "--data-root", default=data_root, help=f"folder holding torchvision's MNIST/ (default: {data_root})"
    )
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST textures (default: procedural)")
    parser.add_argument("--max-train-images", type=int, default=None, help="use only the first N real images")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bars")
    return parser


def add_evaluate_mnist_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug evaluate mnist`` to ``parser`` and return it.

    Examples:
        >>> parser = add_evaluate_mnist_arguments(argparse.ArgumentParser(prog="cfaug evaluate mnist"))
        >>> args = parser.parse_args(["colored_mnist", "--out-dir", "t2", "--weights", "ours=cgn.safetensors"])
        >>> args.weights, args.seeds
        ([('ours', 'cgn.safetensors')], [0, 1, 2])
    """
    parser.add_argument("variant", choices=VARIANTS, help="the MNIST variant")
    parser.add_argument("--out-dir", required=True, help="folder for results.json and the counterfactual grids")
    add_table2_options(parser)
    matched = parser.add_argument_group(
        "matched budget",
        "compare kinds of counterfactual per batch and as a saved set at the same images seen and optimiser steps "
        "(instead of --settings); needs one --weights",
    )
    matched.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=None,
        help="kinds to compare: real (the real digit's shape), generated (a CGN sample of the label's class), "
        "mixed (either, per image)",
    )
    matched.add_argument(
        "--modes", nargs="+", choices=MODES, default=None, help="saved set and/or per batch (default: both)"
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    return parser


def check_evaluate_mnist_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check the combination of ``cfaug evaluate mnist`` options that argparse cannot; return ``args``.

    Raises:
        ValueError: ``--modes`` without ``--kinds``, ``--kinds`` with ``--settings`` or ``--augment-p`` (the
            matched budget sets ``p``), or not exactly one weights column for ``--kinds``; a number out of range.
    """
    for name in ("epochs", "num_counterfactuals", "batch_size", "max_train_images", "num_threads"):
        if getattr(args, name, None) is not None:
            check_positive_int(getattr(args, name), "--" + name.replace("_", "-"))
    if getattr(args, "kinds", None) is None:
        if getattr(args, "modes", None) is not None:
            raise ValueError(f"`--modes` should come with `--kinds`, but got --modes {' '.join(args.modes)} alone.")
        return args
    if args.settings is not None:
        raise ValueError("`--kinds` (the matched-budget comparison) and `--settings` should not be combined.")
    if args.augment_p != 0.5:
        raise ValueError(
            f"`--augment-p` should not be given with `--kinds`: the matched budget sets p = counterfactuals / "
            f"(real + counterfactuals), but got --augment-p {args.augment_p}."
        )
    columns = weights_from_args(args)
    if len(columns) != 1:
        raise ValueError(
            f"`--kinds` should come with exactly one CGN (--weights NAME=PATH), but got {len(columns)}: "
            f"{sorted(columns)}."
        )
    return args


def weights_from_args(args: argparse.Namespace, variant: str | None = None) -> dict[str, str]:
    """The weights columns that ``--weights`` and ``--authors-dir`` name for ``variant`` (default: ``args.variant``).

    ``{variant}`` in a ``--weights`` path becomes the variant, and ``--authors-dir`` gives the variant's ``.pth``.

    Raises:
        ValueError: a name is given twice, or ``--authors-dir`` lacks the variant's ``.pth``.
    """
    variant = variant or args.variant
    weights: dict[str, str] = {}
    for name, path in args.weights:
        if name in weights:
            raise ValueError(f"`--weights` should name each column once, but {name!r} came twice.")
        weights[name] = path.replace("{variant}", variant)
    if args.authors_dir is not None:
        path = Path(args.authors_dir) / f"{variant}.pth"
        if not path.is_file():
            raise ValueError(f"`--authors-dir` should hold {path.name}, but {str(path)!r} does not exist.")
        if "authors" in weights:
            raise ValueError("`--weights` should not use the name 'authors' together with `--authors-dir`.")
        weights["authors"] = str(path)
    return weights


def run_table2_from_args(
    args: argparse.Namespace,
    variant: str,
    out_dir: str | os.PathLike[str],
    texture_root: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """``run_table2`` for one variant with the options of ``add_table2_options``.

    Args:
        args: parsed options of ``add_table2_options``.
        variant: the variant to run.
        out_dir: the folder of its ``results.json`` and grids.
        texture_root: Wildlife MNIST textures (``None``: procedural ones).

    Returns:
        ``run_table2``'s results.
    """
    return run_table2(
        variant,
        weights_from_args(args, variant),
        seeds=args.seeds,
        settings=args.settings or SETTINGS,
        epochs=args.epochs,
        num_counterfactuals=args.num_counterfactuals,
        data_root=args.data_root,
        texture_root=texture_root,
        out_dir=out_dir,
        batch_size=args.batch_size,
        max_train_images=args.max_train_images,
        augment_p=args.augment_p,
        device=args.device,
        progress=args.progress,
    )


def run_evaluate_mnist(args: argparse.Namespace) -> int:
    """Run ``cfaug evaluate mnist``: the Table 2 experiment for one variant; print the table, return 0."""
    check_evaluate_mnist_args(args)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    if args.kinds is not None:
        (weights,) = weights_from_args(args).values()
        options = ("seeds", "kinds", "epochs", "num_counterfactuals", "max_train_images", "batch_size")
        results = run_matched_budget(
            args.variant,
            weights,
            args.out_dir,
            modes=args.modes or MODES,
            data_root=args.data_root,
            texture_root=args.texture_root,
            device=args.device,
            progress=args.progress,
            **{name: getattr(args, name) for name in options},
        )
        print(format_matched_budget(results))
        print(f"\nResults: {Path(args.out_dir) / RESULTS_FILE}")
        return 0
    results = run_table2_from_args(args, args.variant, args.out_dir, args.texture_root)
    print(format_table2(results))
    print(f"\nResults: {Path(args.out_dir) / 'results.json'}")
    return 0


# ------------------------------------------------------------------------------------------------ imagenet


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--classifier", help="a cfaug ensemble checkpoint (final.safetensors of `cfaug train classifier`)"
    )
    which.add_argument("--torchvision", help="a torchvision architecture, e.g. resnet50 (needs --weights)")
    parser.add_argument(
        "--weights", default=None, help="the torchvision model's weights: a name (IMAGENET1K_V1) or a file"
    )
    parser.add_argument("--download", action="store_true", help="download named torchvision weights if not cached")
    parser.add_argument(
        "--outputs", nargs="+", default=None, help=f"outputs to evaluate (default all: {', '.join(OUTPUTS)}, or logits)"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bars")


def add_evaluate_imagenet_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the sub-commands ``shape-bias`` and ``backgrounds`` of ``cfaug evaluate imagenet`` to ``parser``.

    Examples:
        >>> parser = add_evaluate_imagenet_arguments(argparse.ArgumentParser(prog="cfaug evaluate imagenet"))
        >>> args = parser.parse_args(["shape-bias", "--data", "stimuli", "--classifier", "final.safetensors"])
        >>> args.imagenet_evaluation, args.outputs
        ('shape-bias', None)
    """
    commands = parser.add_subparsers(dest="imagenet_evaluation", metavar="EVALUATION", parser_class=type(parser))
    bias = commands.add_parser("shape-bias", help="shape bias on Geirhos' cue-conflict stimuli (the paper's Table 3)")
    bias.add_argument("--data", required=True, help="the stimuli folder: <data>/<category>/<shape>N-<texture>M.png")
    _add_model_arguments(bias)
    bias.add_argument("--image-size", type=int, default=None, help="centre crop (default: the model's, 224)")
    bias.add_argument("--resize", type=int, default=None, help="resize before cropping (default: crop * 256 / 224)")
    bias.set_defaults(handler=run_evaluate_imagenet)

    backgrounds = commands.add_parser("backgrounds", help="the Backgrounds Challenge on IN-9 (the paper's Table 4)")
    backgrounds.add_argument("--data", required=True, help="the IN-9 folder: <data>/<variant>/val/<class>/*")
    _add_model_arguments(backgrounds)
    backgrounds.add_argument(
        "--variants",
        nargs="+",
        choices=BACKGROUND_VARIANTS,
        default=list(DEFAULT_BACKGROUND_VARIANTS),
        help="IN-9 variants (default: original mixed_same mixed_rand)",
    )
    backgrounds.add_argument(
        "--mapping", default=None, help=f"the ImageNet-to-IN-9 mapping (default <data>/{IN9_MAPPING_FILE})"
    )
    backgrounds.add_argument(
        "--normalization",
        choices=("model", "in9"),
        default="model",
        help="normalise with the model's statistics (official evaluation) or IN-9's (the CGN authors' code)",
    )
    backgrounds.add_argument("--image-size", type=int, default=None, help="resize and centre-crop first (default: no)")
    backgrounds.set_defaults(handler=run_evaluate_imagenet)
    return parser


def run_evaluate_imagenet(args: argparse.Namespace) -> int:
    """Run ``cfaug evaluate imagenet shape-bias|backgrounds``: print a markdown table, optionally write JSON."""
    evaluation = getattr(args, "imagenet_evaluation", None)
    if evaluation is None:
        raise NotImplementedError("`cfaug evaluate imagenet` needs an evaluation: shape-bias or backgrounds.")
    model = load_evaluation_model(
        classifier=args.classifier,
        torchvision=args.torchvision,
        weights=args.weights,
        download=args.download,
        device=args.device,
    )
    # The options both evaluations take, under the same names as their parameters.
    common = {
        name: getattr(args, name)
        for name in ("outputs", "image_size", "batch_size", "num_workers", "device", "progress")
    }
    if evaluation == "shape-bias":
        results = shape_bias(model, args.data, resize=args.resize, **common)
        table = format_shape_bias(results)
    else:
        results = backgrounds_challenge(
            model, args.data, variants=args.variants, mapping=args.mapping, normalization=args.normalization, **common
        )
        table = format_backgrounds(results)
    print(f"{evaluation} of {model.description}\n")
    print(table)
    if args.out is not None:
        with atomic_write(args.out, "w") as handle:
            json.dump({"evaluation": evaluation, "model": model.description, "results": results}, handle, indent=2)
            handle.write("\n")
        print(f"\nResults: {args.out}")
    return 0
