"""Where the time of a training iteration goes: ``python benchmarks/mnist_training_speed.py --data-root data``.

Builds the run of each preset (without writing a run folder), runs a few iterations with per-phase timing, and
prints seconds per iteration, images per second, the phase breakdown and how many iterations fit in an hour.
(``python -m cfaug.training.benchmark`` runs this script too.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import torch

from cfaug.engine import RunFolder, training_scope
from cfaug.training.config import AUTHORS_PRESETS, PRESETS, TrainConfig

__all__ = ["benchmark_iterations", "main"]


def benchmark_iterations(config: TrainConfig, iterations: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Time ``iterations`` training iterations of ``config`` after ``warmup`` untimed ones.

    Returns:
        ``seconds_per_iteration``, ``images_per_second`` and ``phases`` (seconds per iteration of each phase:
        data, g_forward, g_losses, style_forward, g_backward, g_update_ema, d_step).
    """
    from cfaug.training.mnist import CHECKPOINT_KIND, _Run

    with training_scope(config.num_threads):
        # A folder that is never written: the benchmark only calls train_step.
        run = _Run(config, RunFolder(os.devnull, kind=CHECKPOINT_KIND, writer="the benchmark"))
        for _ in range(warmup):
            run.train_step()
        run.profile = True
        started = time.perf_counter()
        for _ in range(iterations):
            run.train_step()
        elapsed = time.perf_counter() - started
    return {
        "seconds_per_iteration": elapsed / iterations,
        "images_per_second": iterations * config.batch_size / elapsed,
        "phases": {name: seconds / iterations for name, seconds in run.phase_seconds.items()},
    }


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark table for the presets (ours and the authors') on this machine."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder holding torchvision's MNIST/")
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST textures (default: built-in)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--recipes", nargs="+", default=["ours", "authors"], choices=["ours", "authors"])
    parser.add_argument("--variants", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field for every row (JSON value)",
    )
    args = parser.parse_args(argv)
    from cfaug.cli._options import parse_override

    overrides = dict(parse_override(text, TrainConfig) for text in args.overrides)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}")
    header = f"{'recipe':8} {'variant':22} {'bs':>4} {'s/it':>7} {'img/s':>7} {'it/hour':>8}  phases (s/it)"
    print(header)
    print("-" * len(header))
    for recipe in args.recipes:
        for variant in args.variants:
            base = (PRESETS if recipe == "ours" else AUTHORS_PRESETS)[variant]
            texture_root = args.texture_root if variant == "wildlife_mnist" else None
            config = dataclasses.replace(
                base, data_root=args.data_root, texture_root=texture_root, num_threads=args.threads, **overrides
            )
            result = benchmark_iterations(config, args.iterations)
            phases = " ".join(f"{k}={v:.3f}" for k, v in result["phases"].items())
            seconds = result["seconds_per_iteration"]
            print(
                f"{recipe:8} {variant:22} {config.batch_size:>4} {seconds:7.3f} {result['images_per_second']:7.1f} "
                f"{3600 / seconds:8.0f}  {phases}"
            )


if __name__ == "__main__":
    main()
