"""Moved to ``cfaug.cli.train_mnist`` (argparse code lives in ``cfaug.cli``); the old import path still works."""

from __future__ import annotations

from typing import Any

_NAMES = ["add_train_mnist_arguments", "config_from_args", "run_train_mnist"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: cfaug.cli imports this module, so importing cfaug.cli here at once would be circular.
    if name in _NAMES:
        from cfaug.cli import train_mnist

        return getattr(train_mnist, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
