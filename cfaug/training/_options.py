"""Moved to ``cfaug.cli._options`` (argparse code lives in ``cfaug.cli``); the old import path still works."""

from __future__ import annotations

from typing import Any

_NAMES = ["Flag", "add_config_flags", "add_run_options", "config_changes", "parse_override"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: cfaug.cli's package imports the trainers, which may import this module.
    if name in _NAMES:
        from cfaug.cli import _options

        return getattr(_options, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
