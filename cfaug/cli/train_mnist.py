"""The ``cfaug train mnist`` command: argument definitions and the function that runs them.

``cfaug.cli`` owns the command tree; it builds the ``train mnist`` sub-parser, passes it to
``add_train_mnist_arguments``, and on that command calls ``run_train_mnist`` with the parsed arguments.
Bad values raise ``ValueError`` or ``TypeError`` with a message naming the option (map them to exit status 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from cfaug.cli._options import Flag, add_config_flags, add_run_options, common_flags, config_changes, parse_override
from cfaug.training.config import COLLAPSE_ACTIONS, VARIANTS, TrainConfig, get_preset

__all__ = ["add_train_mnist_arguments", "config_from_args", "run_train_mnist"]

# Options with their own flag: (flag, TrainConfig field, type, help).
_FLAGS: tuple[Flag, ...] = (
    ("--data-root", "data_root", str, "folder holding torchvision's MNIST/ (default: the preset's, 'data')"),
    ("--texture-root", "texture_root", str, "Wildlife MNIST texture folder (default: built-in procedural textures)"),
    ("--steps", "steps", int, "iterations (default: the preset's)"),
    ("--batch-size", "batch_size", int, "images per iteration (default: the preset's)"),
    ("--feature-net", "feature_net", str, "style-loss network: auto, imagenet, random or a VGG16 weights file"),
    ("--train-images", "train_images", int, "use only the first N training images"),
    *common_flags(),
)


def add_train_mnist_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug train mnist`` to ``parser`` and return it.

    Examples:
        >>> parser = add_train_mnist_arguments(argparse.ArgumentParser(prog="cfaug train mnist"))
        >>> args = parser.parse_args(["colored_mnist", "--run-dir", "runs/c", "--steps", "10"])
        >>> config_from_args(args).steps
        10
    """
    parser.add_argument("variant", choices=VARIANTS, help="the MNIST variant to train on")
    parser.add_argument("--run-dir", required=True, help="run folder (created; an existing run is resumed)")
    parser.add_argument(
        "--recipe",
        choices=("ours", "authors"),
        default="ours",
        help="our preset (default) or the CGN authors' original recipe",
    )
    add_config_flags(parser, _FLAGS)
    parser.add_argument(
        "--collapse-action",
        dest="collapse_action",
        choices=COLLAPSE_ACTIONS,
        default=None,
        help="on mask collapse: raise (stop), warn or log (default: the preset's)",
    )
    add_run_options(parser, "TrainConfig", "mask_area=[0.05,0.4]")
    return parser


def _parse_override(text: str) -> tuple[str, Any]:
    return parse_override(text, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that parsed ``cfaug train mnist`` arguments describe (preset, flags, then ``--set``)."""
    extra = {} if args.collapse_action is None else {"collapse_action": args.collapse_action}
    changes = config_changes(args, _FLAGS, TrainConfig, extra)
    return get_preset(args.variant, args.recipe, **changes)


def run_train_mnist(args: argparse.Namespace) -> int:
    """Run ``cfaug train mnist``: train (or resume), print the exported checkpoint's path, return exit status 0."""
    from cfaug.training.mnist import train_cgn_mnist

    config = config_from_args(args)
    final = train_cgn_mnist(config, args.run_dir, resume=args.resume)
    print(f"Exported generator: {final}")
    print(f"Load it with: cfaug.load_backend('mnist', weights={str(final)!r})")
    return 0
