"""The general commands of ``cfaug``: list, demo, generate, import-weights (options and what each runs).

Each command has an ``add_<command>_arguments(parser)`` and a ``run_<command>_command(args) -> exit code``, as
the train and evaluate commands have; ``cfaug.cli.parser`` puts them into the command tree.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from cfaug.registry import BackendImportError, get_backend_class, list_backends, list_weights, plugin_conflicts

__all__ = [
    "GPU_GENERATION_BATCH",
    "add_demo_arguments",
    "add_generate_arguments",
    "add_import_weights_arguments",
    "add_list_arguments",
    "run_demo_command",
    "run_generate_command",
    "run_import_weights_command",
    "run_list_command",
]

#: ``cfaug generate``'s batch on a GPU when ``--batch-size`` is not given (one item per call keeps a GPU idle).
GPU_GENERATION_BATCH = 32


# -------------------------------------------------------------------------------------------------- list
def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``cfaug list`` to ``parser``."""
    parser.add_argument("pattern", nargs="?", default="*", help="glob over backend names (default: all)")


def run_list_command(args: argparse.Namespace) -> int:
    """Run ``cfaug list`` with parsed ``args``; returns the exit code (0, even when a plugin is unavailable)."""
    conflicts = plugin_conflicts()
    for name in list_backends(args.pattern):
        try:
            cls = get_backend_class(name)
        except BackendImportError as error:
            print(f"{name:10s} unavailable: {error}")
            continue
        print(f"{name:10s} {cls.__module__}.{cls.__qualname__}")
        for other in conflicts.get(name, ()):
            print(f"           ! also declared by {other}: ignored (the name is taken)")
        weights = list_weights(name)
        if not weights:
            print("           (no named weights)")
        for weight in weights:
            default = " [default]" if weight.default else ""
            where = "shipped" if weight.shipped else "download"
            print(f"           - {weight.name}{default} ({where}) {weight.description}")
    return 0


# -------------------------------------------------------------------------------------------------- demo
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``cfaug demo`` to ``parser``."""
    parser.add_argument("--out", type=Path, default=Path("cfaug-demo"), help="output folder (default: cfaug-demo)")
    parser.add_argument("--backend", default="mnist", help="backend name (default: mnist)")
    parser.add_argument("--weights", default=None, help="named weights or checkpoint path (default: the backend's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``cfaug demo`` with parsed ``args``; returns the exit code."""
    from cfaug.demo import run_demo

    for path in run_demo(args.out, backend=args.backend, weights=args.weights, seed=args.seed):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------- generate
def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``cfaug generate`` to ``parser``."""
    parser.add_argument("--out", type=Path, required=True, help="dataset folder")
    parser.add_argument("--size", type=int, required=True, help="number of counterfactuals")
    parser.add_argument("--backend", default="mnist", help="backend name (default: mnist)")
    parser.add_argument("--weights", default=None, help="named weights or checkpoint path")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument(
        "--vary", nargs="+", default=["texture", "background"], help="mechanisms drawn apart from the shape class"
    )
    parser.add_argument(
        "--format", choices=["png", "safetensors"], default="png", help="PNG files or uint8 tensor shards"
    )
    parser.add_argument(
        "--target",
        choices=["shape", "all"],
        default="shape",
        help="what the saved dataset yields as target: the shape class (default) or (shape, texture, background)",
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers generating in parallel")
    parser.add_argument("--start", type=int, default=0, help="first index to write (for splitting the work)")
    parser.add_argument("--stop", type=int, default=None, help="index after the last to write (default: size)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="items per chunk, the unit of resuming and of splitting (default 256)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"items per generator call (default: {GPU_GENERATION_BATCH} on a GPU, 1 on the CPU)",
    )
    parser.add_argument(
        "--autocast",
        choices=["bf16", "fp16"],
        default=None,
        help="compute the generators in this precision on a GPU (biggan; default float32)",
    )
    parser.add_argument(
        "--device", default="cpu", help="where to generate; cuda = each process's own GPU under torchrun (default cpu)"
    )


def run_generate_command(args: argparse.Namespace) -> int:
    """Run ``cfaug generate`` with parsed ``args``; returns the exit code."""
    from cfaug.datasets.counterfactual import CounterfactualDataset
    from cfaug.distributed import LONG_TIMEOUT, device_for_rank, distributed_session, save_counterfactuals_distributed

    # Under torchrun the process group only serves barriers (no tensors are exchanged), so gloo works everywhere;
    # the long timeout lets a rank that finishes early wait for the slowest.
    with distributed_session("gloo", timeout=LONG_TIMEOUT) as info:
        device = device_for_rank(args.device, info)
        if device.type == "cuda" and args.workers:
            raise ValueError(
                f"`--workers` should be 0 with a GPU (CUDA does not work in forked DataLoader workers), but got "
                f"{args.workers} with --device {args.device}."
            )
        backend_kwargs = {}
        if args.autocast is not None:
            if "autocast" not in inspect.signature(get_backend_class(args.backend)).parameters:
                raise ValueError(
                    f"`--autocast` applies to backends that compute in reduced precision (biggan), but backend "
                    f"{args.backend!r} takes no autocast setting."
                )
            backend_kwargs["autocast"] = args.autocast
        dataset = CounterfactualDataset(
            args.backend,
            weights=args.weights,
            size=args.size,
            seed=args.seed,
            vary=tuple(args.vary),
            target=args.target,
            device=device,
            backend_kwargs=backend_kwargs,
        )
        result = save_counterfactuals_distributed(
            dataset,
            args.out,
            format=args.format,
            start=args.start,
            stop=args.stop,
            chunk_size=args.chunk_size,
            num_workers=args.workers,
            batch_size=(GPU_GENERATION_BATCH if device.type == "cuda" else 1)
            if args.batch_size is None
            else args.batch_size,
            verify=info.is_distributed,
        )
    stop = args.size if args.stop is None else args.stop
    state = "complete" if result.complete else "partial: other ranges are still missing"
    if result.repaired and info.is_main:
        print(f"Repaired {len(result.repaired)} finished chunk(s) that failed their check:")
        print("\n".join(f"  {line}" for line in result.repaired))
    if not info.is_distributed:
        print(f"Wrote counterfactuals [{args.start}, {stop}) to {args.out} (dataset {state})")
        return 0
    share = f"[{result.start}, {result.stop})" if result.start < result.stop else "nothing (no chunk left for it)"
    print(f"rank {info.rank}/{info.world_size}: wrote counterfactuals {share} on {device}")
    if info.is_main:
        checked = ", every file verified" if result.verified else ""
        print(
            f"Wrote counterfactuals [{args.start}, {stop}) to {args.out} with {info.world_size} processes "
            f"(dataset {state}{checked})"
        )
    return 0


# ---------------------------------------------------------------------------------------- import-weights
def add_import_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``cfaug import-weights`` to ``parser``."""
    parser.add_argument("source", type=Path, help="the authors' checkpoint (.pth state dict)")
    parser.add_argument("--out", type=Path, required=True, help="destination .safetensors file")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="mnist: the authors' cfg.yaml (default: beside SRC); biggan: a BigGAN config.json (default: deep-256)",
    )
    parser.add_argument("--backend", default="mnist", help="backend whose format SRC is in (default: mnist)")


def run_import_weights_command(args: argparse.Namespace) -> int:
    """Run ``cfaug import-weights`` with parsed ``args``; returns the exit code."""
    cls = get_backend_class(args.backend)
    # Refused before the (long) conversion and before any temporary file is written beside it.
    if args.out.is_dir():
        raise IsADirectoryError(
            f"`--out` should name the .safetensors file to write, but {str(args.out)!r} is a folder."
        )
    if args.out.exists() and not args.out.is_file():
        raise ValueError(f"`--out` should name a regular file to write, but {str(args.out)!r} is not one.")
    backend = cls.import_weights(args.source, config=args.config)
    backend.save(args.out)
    print(f"Wrote {args.out} ({cls.name} backend, from {args.source})")
    return 0
