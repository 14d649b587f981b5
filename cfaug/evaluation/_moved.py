"""Old import paths of names that moved out of cfaug.evaluation (the command line went to cfaug.cli.evaluate)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def forward_to(target: str, module: str, names: tuple[str, ...]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that loads ``names`` from module ``target`` on first use.

    The library keeps its old names importable without importing the command line when it is imported itself.

    Args:
        target: the module the names now live in.
        module: the name of the module that forwards (for the ``AttributeError`` message).
        names: the forwarded names.

    Returns:
        The ``__getattr__`` function.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(target), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
