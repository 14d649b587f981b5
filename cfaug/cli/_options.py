"""Command-line pieces shared by the training commands (``cfaug train mnist | imagenet | classifier``).

Each command maps some options one-to-one onto fields of its config dataclass (``Flag`` tuples), accepts
``--set FIELD=VALUE`` for every other field, and has ``--no-progress`` and ``--no-resume``. The config is built
from the preset or defaults, then the flags, then ``--set`` (which wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

#: An option with its own flag: (flag, config field, type, help).
Flag = tuple[str, str, Any, str]


def common_flags(device_help: str = "torch device, e.g. cuda (default cpu)") -> tuple[Flag, ...]:
    """The flags of the same name, field and meaning in every training command: seed, device, CPU threads."""
    return (
        ("--seed", "seed", int, "run seed (default 0)"),
        ("--device", "device", str, device_help),
        ("--num-threads", "num_threads", int, "torch CPU threads"),
    )


def add_config_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    """Add one option per ``Flag``; an option left out stays ``None`` so the preset's value is kept."""
    for flag, field, kind, text in flags:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)


def add_run_options(parser: argparse.ArgumentParser, config_name: str, example: str) -> None:
    """Add ``--set``, ``--no-progress`` and ``--no-resume``.

    Args:
        parser: the command's parser.
        config_name: the config class named in the help of ``--set``.
        example: an example ``--set`` value for the help, e.g. ``"mask_area=[0.05,0.4]"``.
    """
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"set any {config_name} field; VALUE is JSON (e.g. --set {example}) or a string",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bar")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        default=True,
        help="fail instead of resuming when the run folder already holds a run",
    )


def parse_override(text: str, config_cls: type, *, lists_as_tuples: bool = True) -> tuple[str, Any]:
    """``"FIELD=VALUE"`` -> ``(field, value)``: VALUE is JSON, or a plain string such as a path.

    Raises:
        ValueError: no ``=``, or FIELD is not a field of ``config_cls`` (the message lists the fields).
    """
    name, sep, raw = text.partition("=")
    names = {f.name for f in dataclasses.fields(config_cls)}
    if not sep or name not in names:
        raise ValueError(f"`--set` should be FIELD=VALUE with FIELD one of {sorted(names)}, but got {text!r}.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if lists_as_tuples and isinstance(value, list):
        value = tuple(value)  # the configs hold sequences as tuples (frozen, hashable, JSON round-trip)
    return name, value


def config_changes(
    args: argparse.Namespace,
    flags: Sequence[Flag],
    config_cls: type,
    extra: Mapping[str, Any] | None = None,
    *,
    lists_as_tuples: bool = True,
) -> dict[str, Any]:
    """The config fields the parsed arguments set: the given flags, then ``extra``, ``progress``, then ``--set``."""
    changes: dict[str, Any] = {
        field: getattr(args, field) for _, field, _, _ in flags if getattr(args, field) is not None
    }
    changes.update(extra or {})
    changes["progress"] = args.progress
    changes.update(parse_override(text, config_cls, lists_as_tuples=lists_as_tuples) for text in args.overrides)
    return changes
