"""The ``cfaug`` command tree (``build_parser``) and the entry point that runs it (``main``).

Every command is a pair: ``add_..._arguments(parser)`` declares its options and a ``run_...(args)`` runs it and
returns the exit code. The tree below is a table of those pairs; the general commands are in
``cfaug.cli.commands``, the train and evaluate commands in ``cfaug.cli.train_*`` and ``cfaug.cli.evaluate``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cfaug._utils import keep_freed_memory
from cfaug.checkpoint import CheckpointError
from cfaug.cli.build_parts import HELP as BUILD_PARTS_HELP
from cfaug.cli.build_parts import add_build_parts_arguments, run_build_parts
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

__all__ = ["DEBUG_ENV", "USER_ERRORS", "build_parser", "main"]

#: Errors that mean "the user asked for something invalid": one line, exit code 2. An ``OSError``, a
#: ``MemoryError``, a device error and any error class of cfaug are reported alike; anything else is an internal
#: error (exit code 1). ``--debug`` or ``CFAUG_DEBUG=1`` adds the traceback.
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    NotImplementedError,
    BackendImportError,
    ImportError,
    OverflowError,
)
#: The environment variable that, set to anything but ``""`` or ``"0"``, makes every error print its traceback.
DEBUG_ENV = "CFAUG_DEBUG"
#: Integer options checked under their own flag before a command runs: dest -> smallest valid value. (Without
#: this, ``--batch-size 0`` fell back to the default and ``--chunk-size 0`` was refused under another name.)
_INT_MINIMUMS = {
    "size": 1,
    "batch_size": 1,
    "chunk_size": 1,
    "workers": 0,
    "num_workers": 0,
    "num_threads": 1,
    "threads": 1,
    "start": 0,
    "stop": 0,
    "epochs": 1,
    "image_size": 1,
    "accumulation": 1,
}

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
    ("build-parts", BUILD_PARTS_HELP, add_build_parts_arguments, run_build_parts),
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
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of an error (also: {DEBUG_ENV}=1); accepted anywhere on the line",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_commands(commands, _COMMANDS)
    for group, help_text, sub_commands in _GROUPS:
        sub = commands.add_parser(group, help=help_text)
        sub.set_defaults(handler=_missing_group(group))
        _add_commands(sub.add_subparsers(dest=f"{group}_command", metavar="TARGET", parser_class=_Parser), sub_commands)
    return parser


class _FlagError(ValueError):
    """A command-line value refused under its flag's name before the command runs."""


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_argv(argv: Sequence[str]) -> None:
    """Refuse empty values: ``--out ""`` would otherwise mean the current folder."""
    for i, item in enumerate(argv):
        option, equals, value = item.partition("=")
        if item == "" or (item.startswith("--") and equals and value == ""):
            named = option if equals else (argv[i - 1] if i and argv[i - 1].startswith("-") else "an argument")
            raise _FlagError(f"`{named}` should not be empty; give a value (for the current folder, write '.').")


def _check_values(args: argparse.Namespace) -> None:
    """Check integer options and the device under their flags' names."""
    for dest, minimum in _INT_MINIMUMS.items():
        value = getattr(args, dest, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < minimum:
            raise _FlagError(f"`{_flag(dest)}` should be an integer >= {minimum}, but got {value}.")
    device = getattr(args, "device", None)
    if isinstance(device, str):
        _check_device(device)


def _check_device(value: str) -> None:
    """Refuse a device torch does not know or this machine does not have, naming ``--device``."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise _FlagError(
            f"`--device` should be a torch device such as cpu, cuda, cuda:1 or mps, but got {value!r}."
        ) from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _FlagError(f"`--device {value}`: this machine has no CUDA GPU that torch can use; use --device cpu.")
        if device.index is not None and device.index >= count:
            raise _FlagError(f"`--device {value}`: this machine has {count} CUDA GPU(s), numbered from 0.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise _FlagError(f"`--device {value}`: MPS is not available on this machine; use --device cpu.")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _is_cfaug_error(error: BaseException) -> bool:
    return any(cls.__module__.split(".")[0] == "cfaug" for cls in type(error).__mro__)


def _describe_error(error: BaseException) -> tuple[str, int]:
    """The one line and exit code for an error a command raised."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        # The OS's words plus the file: "Permission denied: 'out/labels.csv'".
        files = repr(str(error.filename)) + (f" -> {str(error.filename2)!r}" if error.filename2 is not None else "")
        return f"{error.strerror}: {files}", 2
    if isinstance(error, MemoryError):
        return f"out of memory{': ' + str(error) if str(error) else ''}; try a smaller size or batch.", 2
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return f"out of GPU memory: {str(error).splitlines()[0]}; try a smaller batch.", 2
    if isinstance(error, (*USER_ERRORS, OSError, WeightsError, CheckpointError)) or _is_cfaug_error(error):
        return str(error) or type(error).__name__, 2
    if isinstance(error, RuntimeError) and any(word in str(error) for word in ("CUDA", "cuda", "device", "MPS")):
        return f"device error: {error}", 2
    return (
        f"internal error: {type(error).__name__}: {error} (run again with --debug for the traceback, and please "
        "report it)",
        1,
    )


def _silence_stdout() -> None:
    """After a broken pipe (``cfaug list | head -1``), send what is left to /dev/null so exit does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced (e.g. by pytest): nothing to silence
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cfaug`` command; returns the process exit code.

    Exit codes: 0 success; 2 a bad argument or an error the user can act on (a file that is missing, unreadable
    or not writable, a full disk, a device this machine lacks, not enough memory, a refused checkpoint or folder),
    as one line on stderr; 130 Ctrl-C; 141 stdout closed early (a broken pipe); 1 an internal error. With
    ``--debug`` (anywhere on the line) or ``CFAUG_DEBUG=1`` the traceback is printed before the line.
    """
    if argv is None:  # run as the cfaug command: the process is ours to tune (not when called from Python)
        keep_freed_memory()
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    arguments = [item for item in arguments if item != "--debug"]
    parser = build_parser()
    args: Any = None
    try:
        _check_argv(arguments)
        args = parser.parse_args(arguments)
        _check_values(args)
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except SystemExit:
        raise
    except KeyboardInterrupt as interrupt:
        # A trainer stopped on Ctrl-C at a step boundary and says where its state is: a message, not a traceback.
        # A bare Ctrl-C (outside a trainer's step boundary) carries no message; an exception object is always truthy.
        if debug:
            traceback.print_exc()
        print(f"cfaug: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return 130  # the shell's code for a process ended by SIGINT
    except BrokenPipeError:
        _silence_stdout()
        return 141  # the shell's code for a process ended by SIGPIPE
    except BaseException as error:  # noqa: BLE001 - every error ends in one line; only --debug shows the traceback
        if debug:
            traceback.print_exc()
        message, code = _describe_error(error)
        print(f"cfaug: error: {_one_line(message)}", file=sys.stderr)
        return code
