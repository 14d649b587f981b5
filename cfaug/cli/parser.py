"""The ``cfaug`` command tree (``build_parser``) and the entry point that runs it (``main``).

Every command is a pair: ``add_..._arguments(parser)`` declares its options and a ``run_...(args)`` runs it and
returns the exit code. The tree below is a table of those pairs; the general commands are in
``cfaug.cli.commands``, the train and evaluate commands in ``cfaug.cli.train_*`` and ``cfaug.cli.evaluate``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cfaug.checkpoint import CheckpointError
from cfaug.cli.commands import (
    add_demo_arguments,
    add_generate_arguments,
    add_import_weights_arguments,
    add_list_arguments,
    run_demo_command,
    run_generate_command,
    run_import_weights_command,
    run_list_command,
)
from cfaug.cli.evaluate import (
    add_evaluate_imagenet_arguments,
    add_evaluate_mnist_arguments,
    run_evaluate_imagenet,
    run_evaluate_mnist,
)
from cfaug.cli.train_classifier import add_train_classifier_arguments, run_train_classifier
from cfaug.cli.train_imagenet import add_train_imagenet_arguments, run_train_imagenet
from cfaug.cli.train_mask_estimator import add_train_mask_estimator_arguments, run_train_mask_estimator
from cfaug.cli.train_mnist import add_train_mnist_arguments, run_train_mnist
from cfaug.hub import WeightsError
from cfaug.registry import BackendImportError

__all__ = ["USER_ERRORS", "build_parser", "main"]

#: Errors that mean "the user asked for something invalid"; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotImplementedError, BackendImportError, ImportError)

_AddArguments = Callable[[argparse.ArgumentParser], None]
_Run = Callable[[argparse.Namespace], int]

#: The commands, in the order of ``cfaug --help``: name, help, options, handler.
_COMMANDS: tuple[tuple[str, str, _AddArguments, _Run], ...] = (
    ("list", "list backends and their named weights", add_list_arguments, run_list_command),
    (
        "demo",
        "write a PNG grid of counterfactuals and an augmentation example",
        add_demo_arguments,
        run_demo_command,
    ),
    (
        "generate",
        "generate a counterfactual dataset on disk (resumable)",
        add_generate_arguments,
        run_generate_command,
    ),
    (
        "import-weights",
        "convert a checkpoint of the CGN authors to cfaug's format",
        add_import_weights_arguments,
        run_import_weights_command,
    ),
)

#: The command groups: name, help, and their sub-commands as in ``_COMMANDS``.
_GROUPS: tuple[tuple[str, str, tuple[tuple[str, str, _AddArguments, _Run], ...]], ...] = (
    (
        "train",
        "train mechanisms or classifiers",
        (
            ("mnist", "train an MNIST CGN (resumable run folder)", add_train_mnist_arguments, run_train_mnist),
            (
                "imagenet",
                "train the ImageNet CGN (three BigGAN copies + U2-Net; resumable, torchrun-ready)",
                add_train_imagenet_arguments,
                run_train_imagenet,
            ),
            (
                "classifier",
                "train the CGN paper's shape/texture/background classifier ensemble (torchrun-ready)",
                add_train_classifier_arguments,
                run_train_classifier,
            ),
            (
                "mask-estimator",
                "train the mask estimator of an MNIST CGN for real images (estimate_mask)",
                add_train_mask_estimator_arguments,
                run_train_mask_estimator,
            ),
        ),
    ),
    (
        "evaluate",
        "run the paper's evaluations",
        (
            ("mnist", "the paper's Table 2 classifier experiment", add_evaluate_mnist_arguments, run_evaluate_mnist),
            (
                "imagenet",
                "shape bias (Table 3) and the Backgrounds Challenge (Table 4) of an ImageNet classifier",
                add_evaluate_imagenet_arguments,
                run_evaluate_imagenet,
            ),
        ),
    ),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _missing_group(group: str) -> _Run:
    def run(args: argparse.Namespace) -> int:
        raise NotImplementedError(f"`cfaug {group}` needs a sub-command; see `cfaug {group} --help`.")

    return run


def _add_commands(
    subparsers: argparse._SubParsersAction, commands: tuple[tuple[str, str, _AddArguments, _Run], ...]
) -> None:
    for name, help_text, add_arguments, run in commands:
        command = subparsers.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``cfaug`` command."""
    parser = _Parser(prog="cfaug", description="Counterfactual image augmentation (CGN mechanisms).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_commands(commands, _COMMANDS)
    for group, help_text, sub_commands in _GROUPS:
        sub = commands.add_parser(group, help=help_text)
        sub.set_defaults(handler=_missing_group(group))
        _add_commands(sub.add_subparsers(dest=f"{group}_command", metavar="TARGET", parser_class=_Parser), sub_commands)
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
