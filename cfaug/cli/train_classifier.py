"""``cfaug train classifier``: its options and what it runs (``cfaug.training.classifier.train_classifier``)."""

from __future__ import annotations

import argparse
from typing import Any

from cfaug.cli._options import Flag, add_config_flags, add_run_options, common_flags, config_changes
from cfaug.training.classifier import ClassifierConfig, ClassifierTrainer

__all__ = ["add_train_classifier_arguments", "config_from_args", "run_train_classifier"]

# Options with their own flag: (flag, ClassifierConfig field, type, help).
_FLAGS: tuple[Flag, ...] = (
    ("--counterfactual-root", "counterfactual_root", str, "a counterfactual dataset saved by `cfaug generate`"),
    ("--val-root", "val_root", str, "ImageFolder of validation images (top-1/top-5 after each epoch)"),
    ("--counterfactual-val-root", "counterfactual_val_root", str, "saved counterfactuals for per-head validation"),
    ("--backbone", "backbone", str, "backbone architecture (default resnet50)"),
    ("--epochs", "epochs", int, "passes over the real images (default 45)"),
    ("--batch-size", "batch_size", int, "real images per step, all processes together (default 32)"),
    ("--cf-ratio", "cf_ratio", float, "counterfactual images per real image (default 1.0)"),
    ("--lr", "lr", float, "SGD learning rate (default 1e-3)"),
    ("--image-size", "image_size", int, "crop size (default 224)"),
    ("--num-workers", "num_workers", int, "DataLoader workers per process (default 4)"),
    *common_flags(device_help="torch device; cuda = each process's own GPU under torchrun (default cpu)"),
)


def add_train_classifier_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug train classifier`` to ``parser`` and return it.

    Examples:
        >>> parser = add_train_classifier_arguments(argparse.ArgumentParser(prog="cfaug train classifier"))
        >>> args = parser.parse_args(["--real-root", "in/train", "--run-dir", "runs/e", "--backbone-weights", "none"])
        >>> config_from_args(args).backbone_weights is None
        True
    """
    parser.add_argument("--real-root", required=True, help="ImageFolder of real training images (<root>/<class>/*)")
    parser.add_argument("--run-dir", required=True, help="run folder (created; an existing run is resumed)")
    add_config_flags(parser, _FLAGS)
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="torchvision weights name (default IMAGENET1K_V1), a weights file, or 'none' for a random backbone",
    )
    parser.add_argument("--download", action="store_true", help="download named backbone weights if not cached")
    parser.add_argument(
        "--no-frozen-bn", dest="frozen_bn", action="store_false", default=True, help="let BatchNorm statistics train"
    )
    add_run_options(parser, "ClassifierConfig", "lr_step_epochs=10")
    return parser


def config_from_args(args: argparse.Namespace) -> ClassifierConfig:
    """The ClassifierConfig that parsed ``cfaug train classifier`` arguments describe (flags, then ``--set``)."""
    extra: dict[str, Any] = {"download": args.download, "frozen_bn": args.frozen_bn}
    if args.backbone_weights is not None:
        extra["backbone_weights"] = None if args.backbone_weights.lower() == "none" else args.backbone_weights
    changes = config_changes(args, _FLAGS, ClassifierConfig, extra, lists_as_tuples=False)
    return ClassifierConfig(real_root=args.real_root, **changes)


def run_train_classifier(args: argparse.Namespace) -> int:
    """Run ``cfaug train classifier`` (in every torchrun process); rank 0 prints the exported checkpoint's path."""
    trainer = ClassifierTrainer(config_from_args(args), args.run_dir, resume=args.resume)
    final = trainer.fit()
    if trainer.info.is_main:
        print(f"Exported classifier: {final}")
        print(f"Load it with: cfaug.training.classifier.load_classifier({str(final)!r})")
    return 0
