"""The ``cfaug`` command line: list, demo, generate, import-weights, train, evaluate.

Bad arguments end with exit code 2 and a one-line message on stderr, as argparse does for parse errors.

``generate``, ``train imagenet`` and ``train classifier`` also run under torchrun, one process per device
(``torchrun --nproc_per_node=4 -m cfaug.cli generate ...``): every process runs the same command and takes its
share of the work (see ``cfaug.distributed``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cfaug.checkpoint import CheckpointError
from cfaug.evaluation.imagenet import add_evaluate_imagenet_arguments, run_evaluate_imagenet
from cfaug.evaluation.mnist import add_evaluate_mnist_arguments, run_evaluate_mnist
from cfaug.hub import WeightsError
from cfaug.registry import BackendImportError, get_backend_class, list_backends
from cfaug.training.classifier import add_train_classifier_arguments, run_train_classifier
from cfaug.training.cli import add_train_mnist_arguments, run_train_mnist
from cfaug.training.imagenet import add_train_imagenet_arguments, run_train_imagenet
from cfaug.training.mask_estimator import add_train_mask_estimator_arguments, run_train_mask_estimator

__all__ = ["build_parser", "main"]

#: Errors that mean "the user asked for something invalid"; anything else is a bug and keeps its traceback.
#: ``cfaug generate``'s batch on a GPU when ``--batch-size`` is not given (one item per call keeps a GPU idle).
GPU_GENERATION_BATCH = 32
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotImplementedError, BackendImportError, ImportError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------------------------- commands


def _cmd_list(args: argparse.Namespace) -> int:
    for name in list_backends(args.pattern):
        try:
            cls = get_backend_class(name)
        except BackendImportError as error:
            print(f"{name:10s} unavailable: {error}")
            continue
        print(f"{name:10s} {cls.__module__}.{cls.__qualname__}")
        if not cls.named_weights:
            print("           (no named weights)")
        for weight in cls.named_weights.values():
            default = " [default]" if weight.name == cls.default_weights else ""
            where = "shipped" if weight.url is None else "download"
            print(f"           - {weight.name}{default} ({where}) {weight.description}")
    return 0


def _cmd_import_weights(args: argparse.Namespace) -> int:
    cls = get_backend_class(args.backend)
    backend = cls.import_weights(args.source, config=args.config)
    backend.save(args.out)
    print(f"Wrote {args.out} ({cls.name} backend, from {args.source})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from cfaug.demo import run_demo

    for path in run_demo(args.out, backend=args.backend, weights=args.weights, seed=args.seed):
        print(path)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
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
            target="all",
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
            batch_size=args.batch_size or (GPU_GENERATION_BATCH if device.type == "cuda" else 1),
            verify=info.is_distributed,
        )
    stop = args.size if args.stop is None else args.stop
    state = "complete" if result.complete else "partial: other ranges are still missing"
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


# ------------------------------------------------------------------------------------------------ parser


def _missing_group(group: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise NotImplementedError(f"`cfaug {group}` needs a sub-command; see `cfaug {group} --help`.")

    return run


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``cfaug`` command."""
    parser = _Parser(prog="cfaug", description="Counterfactual image augmentation (CGN mechanisms).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    listing = commands.add_parser("list", help="list backends and their named weights")
    listing.add_argument("pattern", nargs="?", default="*", help="glob over backend names (default: all)")
    listing.set_defaults(handler=_cmd_list)

    demo = commands.add_parser("demo", help="write a PNG grid of counterfactuals and an augmentation example")
    demo.add_argument("--out", type=Path, default=Path("cfaug-demo"), help="output folder (default: cfaug-demo)")
    demo.add_argument("--backend", default="mnist", help="backend name (default: mnist)")
    demo.add_argument("--weights", default=None, help="named weights or checkpoint path (default: the backend's)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(handler=_cmd_demo)

    generate = commands.add_parser("generate", help="generate a counterfactual dataset on disk (resumable)")
    generate.add_argument("--out", type=Path, required=True, help="dataset folder")
    generate.add_argument("--size", type=int, required=True, help="number of counterfactuals")
    generate.add_argument("--backend", default="mnist", help="backend name (default: mnist)")
    generate.add_argument("--weights", default=None, help="named weights or checkpoint path")
    generate.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    generate.add_argument(
        "--vary", nargs="+", default=["texture", "background"], help="mechanisms drawn apart from the shape class"
    )
    generate.add_argument(
        "--format", choices=["png", "safetensors"], default="png", help="PNG files or uint8 tensor shards"
    )
    generate.add_argument("--workers", type=int, default=0, help="DataLoader workers generating in parallel")
    generate.add_argument("--start", type=int, default=0, help="first index to write (for splitting the work)")
    generate.add_argument("--stop", type=int, default=None, help="index after the last to write (default: size)")
    generate.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="items per chunk, the unit of resuming and of splitting (default 256)",
    )
    generate.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"items per generator call (default: {GPU_GENERATION_BATCH} on a GPU, 1 on the CPU)",
    )
    generate.add_argument(
        "--autocast",
        choices=["bf16", "fp16"],
        default=None,
        help="compute the generators in this precision on a GPU (biggan; default float32)",
    )
    generate.add_argument(
        "--device", default="cpu", help="where to generate; cuda = each process's own GPU under torchrun (default cpu)"
    )
    generate.set_defaults(handler=_cmd_generate)

    importer = commands.add_parser("import-weights", help="convert a checkpoint of the CGN authors to cfaug's format")
    importer.add_argument("source", type=Path, help="the authors' checkpoint (.pth state dict)")
    importer.add_argument("--out", type=Path, required=True, help="destination .safetensors file")
    importer.add_argument(
        "--config",
        type=Path,
        default=None,
        help="mnist: the authors' cfg.yaml (default: beside SRC); biggan: a BigGAN config.json (default: deep-256)",
    )
    importer.add_argument("--backend", default="mnist", help="backend whose format SRC is in (default: mnist)")
    importer.set_defaults(handler=_cmd_import_weights)

    groups = {}
    for group, help_text in (("train", "train mechanisms or classifiers"), ("evaluate", "run the paper's evaluations")):
        sub = commands.add_parser(group, help=help_text)
        sub.set_defaults(handler=_missing_group(group))
        groups[group] = sub.add_subparsers(dest=f"{group}_command", metavar="TARGET", parser_class=_Parser)

    train_mnist = groups["train"].add_parser("mnist", help="train an MNIST CGN (resumable run folder)")
    add_train_mnist_arguments(train_mnist)
    train_mnist.set_defaults(handler=run_train_mnist)

    train_imagenet = groups["train"].add_parser(
        "imagenet", help="train the ImageNet CGN (three BigGAN copies + U2-Net; resumable, torchrun-ready)"
    )
    add_train_imagenet_arguments(train_imagenet)
    train_imagenet.set_defaults(handler=run_train_imagenet)

    train_classifier = groups["train"].add_parser(
        "classifier", help="train the CGN paper's shape/texture/background classifier ensemble (torchrun-ready)"
    )
    add_train_classifier_arguments(train_classifier)
    train_classifier.set_defaults(handler=run_train_classifier)

    train_masks = groups["train"].add_parser(
        "mask-estimator", help="train the mask estimator of an MNIST CGN for real images (estimate_mask)"
    )
    add_train_mask_estimator_arguments(train_masks)
    train_masks.set_defaults(handler=run_train_mask_estimator)

    evaluate_mnist = groups["evaluate"].add_parser("mnist", help="the paper's Table 2 classifier experiment")
    add_evaluate_mnist_arguments(evaluate_mnist)
    evaluate_mnist.set_defaults(handler=run_evaluate_mnist)

    evaluate_imagenet = groups["evaluate"].add_parser(
        "imagenet", help="shape bias (Table 3) and the Backgrounds Challenge (Table 4) of an ImageNet classifier"
    )
    add_evaluate_imagenet_arguments(evaluate_imagenet)
    evaluate_imagenet.set_defaults(handler=run_evaluate_imagenet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cfaug`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (*USER_ERRORS, WeightsError, CheckpointError) as error:
        print(f"cfaug: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        # A trainer stopped on Ctrl-C at a step boundary and says where its state is: a message, not a traceback.
        # A bare Ctrl-C (outside a trainer's step boundary) carries no message; an exception object is always truthy.
        print(f"cfaug: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return 130  # the shell's code for a process ended by SIGINT
