"""The ``cfaug train imagenet`` command: argument definitions and the function that runs them.

``cfaug.cli`` builds the ``train imagenet`` sub-parser, passes it to ``add_train_imagenet_arguments``, and on that
command calls ``run_train_imagenet`` with the parsed arguments (under torchrun, on every rank).
"""

from __future__ import annotations

import argparse
import os

from cfaug.backends.biggan import U2NET_VARIANTS
from cfaug.cli._options import Flag, add_config_flags, add_run_options, common_flags, config_changes
from cfaug.training.imagenet import IMAGENET_PRESETS, ImageNetTrainConfig, get_imagenet_preset, train_cgn_imagenet

__all__ = ["add_train_imagenet_arguments", "config_from_args", "run_train_imagenet"]

# Options with their own flag: (flag, config field, type, help).
_FLAGS: tuple[Flag, ...] = (
    ("--biggan", "biggan", str, "pretrained BigGAN: a folder with config.json + pytorch_model.bin, or a name"),
    ("--u2net", "u2net", str, f"U2-Net variant, one of {list(U2NET_VARIANTS)} (default u2net)"),
    ("--u2net-weights", "u2net_weights", str, "U2-Net weights: official name (u2net, u2netp) or a file"),
    ("--feature-net", "feature_net", str, "VGG16 of the style losses: imagenet, random or a weights file"),
    ("--steps", "steps", int, "optimiser steps (default: the preset's, 300)"),
    ("--batch-size", "batch_size", int, "samples per pass over all processes (default 1)"),
    ("--accumulation", "accumulation", int, "passes per optimiser step, gradients summed (default 4000)"),
    ("--truncation", "truncation", float, "truncation of the training noise (default 1.0)"),
    ("--amp", "amp", str, "bf16: autocast the forward passes on a GPU (default: float32)"),
    *common_flags(),
)


def add_train_imagenet_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug train imagenet`` to ``parser`` and return it.

    Examples:
        >>> parser = add_train_imagenet_arguments(argparse.ArgumentParser(prog="cfaug train imagenet"))
        >>> args = parser.parse_args(["--run-dir", "runs/i", "--biggan", "biggan256", "--steps", "10"])
        >>> config_from_args(args).steps
        10
    """
    parser.add_argument("--run-dir", required=True, help="run folder (created; an existing run is resumed)")
    parser.add_argument(
        "--preset",
        choices=sorted(IMAGENET_PRESETS),
        default="authors",
        help="authors: the values of the authors' code (default); paper: the paper's where they differ",
    )
    add_config_flags(parser, _FLAGS)
    add_run_options(parser, "ImageNetTrainConfig", "mask_interval=[0.1,0.9]")
    return parser


def config_from_args(args: argparse.Namespace) -> ImageNetTrainConfig:
    """The config that parsed ``cfaug train imagenet`` arguments describe (preset, flags, then ``--set``)."""
    return get_imagenet_preset(args.preset, **config_changes(args, _FLAGS, ImageNetTrainConfig))


def run_train_imagenet(args: argparse.Namespace) -> int:
    """Run ``cfaug train imagenet``: train (or resume), print the exported checkpoint's path, return 0."""
    config = config_from_args(args)
    final = train_cgn_imagenet(config, args.run_dir, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Exported CGN: {final}")
        print(f"Load it with: cfaug.load_backend('biggan', weights={str(final)!r})")
    return 0
