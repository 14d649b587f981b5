"""Shape accuracy of MNIST CGNs: how often a digit classifier on masks reads a generated mask as its class.

A ``MaskClassifier`` (``cfaug.training.shape_teacher``) is trained on the ground-truth masks of Colored MNIST's
training split, with a seed of its own (not the one any training run used), and reads ``--per-class`` masks per
class from every CGN given. A CGN whose shape mechanism draws the wrong digit for some class, or a digit that
is hard to read, scores low for that class. It complements the collapse detector's mask statistics, which cannot
see a well-formed wrong digit.

Caveat: CGNs trained with cfaug's shape teacher were optimised against a classifier of the same family, so their
score here is an upper bound; the Table 2 experiment (``benchmarks/mnist_table2.py``) is the independent check.

Usage:
    python benchmarks/mnist_shape_accuracy.py --data-root ../shared/data --shipped \
        --authors-dir ../shared/data/reference_cgn_mnist [--weights NAME=PATH ...] [--run NAME=RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import cfaug
from cfaug._utils import atomic_write
from cfaug.backends.mnist import MnistBackend
from cfaug.checkpoint import load_checkpoint
from cfaug.cli.evaluate import parse_named_weights
from cfaug.datasets.mnist_variants import VARIANTS, ColoredMNIST
from cfaug.training.shape_teacher import shape_accuracy, train_shape_teacher

_TEACHER_SEED = 12345  # differs from every training run's teacher stream


def from_run_folder(run_dir: Path) -> tuple[MnistBackend, int]:
    """The monitored generator (EMA when there is one) of a ``train_cgn_mnist`` run folder's latest checkpoint."""
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "latest.safetensors")
    tensors = checkpoint.state_dict
    prefix = "G_ema." if any(name.startswith("G_ema.") for name in tensors) else "G."
    generator = MnistBackend()
    generator.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    return generator.eval(), int(checkpoint.meta["step"])


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data", help="folder holding MNIST/ (for the teacher)")
    parser.add_argument("--shipped", action="store_true", help="add cfaug's shipped named weights")
    parser.add_argument("--authors-dir", default=None, help="folder with the CGN authors' <variant>.pth files")
    parser.add_argument("--weights", type=parse_named_weights, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--run", type=parse_named_weights, action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--per-class", type=int, default=100, help="masks per class (default 100)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train the teacher, read every CGN's masks, print one row per CGN."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    models: dict[str, MnistBackend] = {}
    for name, run_dir in args.run:
        generator, step = from_run_folder(Path(run_dir))
        models[f"{name} (step {step})"] = generator
    if args.authors_dir is not None:
        for variant in VARIANTS:
            models[f"authors {variant}"] = MnistBackend.import_weights(Path(args.authors_dir) / f"{variant}.pth")
    if args.shipped:
        for variant in VARIANTS:
            models[f"cfaug {variant}"] = cfaug.load_backend("mnist", weights=variant)
    for name, path in args.weights:
        models[name] = cfaug.load_backend("mnist", weights=path)
    if not models:
        raise SystemExit("Nothing to measure: give --shipped, --authors-dir, --weights or --run.")

    started = time.perf_counter()
    dataset = ColoredMNIST(args.data_root, train=True, seed=0)
    teacher, held_out = train_shape_teacher(dataset.masks, dataset.targets, seed=_TEACHER_SEED)
    print(f"teacher: held-out accuracy {held_out:.3f} on real masks ({time.perf_counter() - started:.0f} s)\n")

    classes = torch.arange(10).repeat_interleave(args.per_class)
    seeds = torch.arange(len(classes)) + 777
    results = {}
    print("| CGN | shape accuracy | per class 0..9 |")
    print("|---|---:|---|")
    for name, generator in models.items():
        correct = shape_accuracy(teacher, generator.generate("shape", classes, seeds), classes)
        per_class = [round(float(correct[classes == c].mean()), 2) for c in range(10)]
        results[name] = {"shape_accuracy": float(correct.mean()), "per_class": per_class}
        print(f"| {name} | {float(correct.mean()):.1%} | {' '.join(f'{a:.2f}' for a in per_class)} |")
    if args.json:
        with atomic_write(args.json, "w") as handle:
            handle.write(json.dumps({"teacher_held_out": held_out, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
