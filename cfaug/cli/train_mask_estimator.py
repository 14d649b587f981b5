"""``cfaug train mask-estimator``: its options, and the run that trains, measures and saves the estimator.

The training itself is ``cfaug.training.mask_estimator.train_mask_estimator``; its IoU is ``mask_iou``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from cfaug._utils import check_positive_int, verify_str_arg
from cfaug.backends.mnist import MnistBackend
from cfaug.engine import run_environment, training_scope
from cfaug.names import VARIANTS
from cfaug.training.mask_estimator import (
    DEFAULT_HARD_FRACTION,
    DEFAULT_JITTER,
    mask_iou,
    train_mask_estimator,
)

__all__ = ["add_train_mask_estimator_arguments", "run_train_mask_estimator"]

#: The ``trainer`` of the recipes this command writes.
_TRAINER = "cfaug.training.mask_estimator"


def add_train_mask_estimator_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug train mask-estimator`` to ``parser`` and return it.

    Examples:
        >>> parser = add_train_mask_estimator_arguments(argparse.ArgumentParser())
        >>> args = parser.parse_args(["--weights", "c.safetensors", "--variant", "colored_mnist", "--out", "o"])
        >>> args.steps, args.batch_size
        (1500, 64)
    """
    parser.add_argument("--weights", required=True, help="the MNIST CGN: checkpoint path or named mnist weights")
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="variant whose test split is measured")
    parser.add_argument("--data-root", default="data", help="folder holding torchvision's MNIST/ (default: data)")
    parser.add_argument(
        "--texture-root", default=None, help="Wildlife MNIST texture folder (default: built-in procedural textures)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write (a .png beside it)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: 1500)")
    parser.add_argument("--batch-size", type=int, default=64, help="generated images per step (default: 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument(
        "--arch", choices=("lite", "unet"), default="lite", help="estimator architecture (default: lite)"
    )
    parser.add_argument("--width", type=int, default=16, help="estimator width (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bar")
    return parser


def _test_split(variant: str, data_root: str, texture_root: str | None) -> Any:
    from cfaug.datasets.mnist_variants import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

    verify_str_arg(variant, "variant", VARIANTS)
    if variant != "wildlife_mnist" and texture_root is not None:
        raise ValueError(f"`--texture-root` is only used by wildlife_mnist, but the variant is {variant!r}.")
    try:
        if variant == "wildlife_mnist":
            return WildlifeMNIST(data_root, train=False, texture_root=texture_root)
        cls = ColoredMNIST if variant == "colored_mnist" else DoubleColoredMNIST
        return cls(data_root, train=False)
    except RuntimeError as error:  # the datasets' "MNIST not found": a user error, not a bug
        raise FileNotFoundError(f"`--data-root` {data_root!r}: {error}") from error


def _generator_record(weights: str, source: MnistBackend) -> dict[str, Any]:
    """Where the generator came from, with its own recipe and metrics when it is a cfaug checkpoint file."""
    # Imported weights keep their provenance in the checkpoint's own metadata (MnistBackend.checkpoint_meta).
    record: dict[str, Any] = {"weights": weights, "sha256": source.weights_sha256}
    if Path(weights).is_file():
        from cfaug.checkpoint import load_checkpoint

        meta = load_checkpoint(weights).meta
        recipe = meta.get("recipe")
        if isinstance(recipe, dict) and recipe.get("trainer") == _TRAINER and isinstance(recipe.get("generator"), dict):
            # The source already carries an estimator (being replaced here): its generator's own record is the
            # one to keep, with the estimator it replaces noted, rather than a record nested one level deeper.
            # Recipes from before the lite estimator existed name no architecture: theirs was the U-Net.
            replaced = {
                "arch": recipe.get("arch", "unet"),
                **{key: recipe[key] for key in ("width", "steps") if key in recipe},
            }
            return {**recipe["generator"], "replaces_estimator": {**replaced, "sha256": source.weights_sha256}}
        record.update({key: meta[key] for key in ("recipe", "metrics", "training") if key in meta})
    return record


def run_train_mask_estimator(args: argparse.Namespace) -> int:
    """Run ``cfaug train mask-estimator``: train, measure on the variant's test split, save; return exit status 0.

    Raises:
        ValueError, TypeError: an option has a bad value (the message names it).
    """
    from cfaug.demo import save_grid
    from cfaug.registry import load_backend

    if args.threads is not None:
        check_positive_int(args.threads, "threads")
    out = Path(args.out)
    with training_scope(args.threads, fork_rng=False):
        # Load the data first: a wrong --data-root should fail before minutes of training.
        dataset = _test_split(args.variant, args.data_root, args.texture_root)
        source = load_backend("mnist", weights=args.weights)
        started = time.perf_counter()
        options = (
            "steps",
            "batch_size",
            "lr",
            "seed",
            "width",
            "arch",
            "device",
            "progress",
        )  # flags named as the arguments
        backend = train_mask_estimator(source, **{name: getattr(args, name) for name in options})
        seconds = time.perf_counter() - started
        metrics = mask_iou(backend, dataset)

        count = min(8, len(dataset))
        images, _ = dataset.batch(range(count))
        estimated = backend.estimate_mask(images).cpu()
        truth = dataset.masks[:count, None].to(torch.float32)
        picture = out.with_suffix(".png")
        save_grid(torch.cat([images, estimated.expand_as(images), truth.expand_as(images)]), picture, nrow=count)

        recipe = {
            "trainer": _TRAINER,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "arch": args.arch,
            "width": args.width,
            "seed": args.seed,
            "hard_fraction": DEFAULT_HARD_FRACTION,
            "jitter": DEFAULT_JITTER,
            "target": "soft",
            "generator": _generator_record(str(args.weights), source),
        }
        training = {
            "steps": args.steps,
            "images": args.steps * args.batch_size,
            "seconds": round(seconds, 1),
            **run_environment(args.device),
        }
        measured = {"variant": args.variant, "split": "test", **metrics}
        backend.cpu().save(out, metrics={"mask_iou": measured}, recipe=recipe, training=training)

    print(f"mask estimator on the {args.variant} test split ({metrics['num_images']} images, threshold 0.5)")
    print(f"  {'mean IoU':<16}{metrics['mean_iou']:.4f}")
    print(f"  {'pooled IoU':<16}{metrics['pooled_iou']:.4f}")
    print(f"  {'pixel accuracy':<16}{metrics['pixel_accuracy']:.4f}")
    print(f"  {'training':<16}{args.steps} steps in {seconds:.1f} s")
    print(f"Wrote {out} and {picture} (rows: test images, estimated masks, true masks)")
    return 0
