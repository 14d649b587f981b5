"""The backend registry: register, list and load backends by name.

Backends come from two places:

* the ``cfaug.backends`` entry-point group, read with ``importlib.metadata.entry_points``. cfaug's own
  backends (``mnist``, ``biggan``) are declared there too, so discovery is exercised on every install. An
  entry point names a ``Backend`` subclass and is imported only when that backend
  is loaded, so ``list_backends()`` stays cheap and a broken plugin never breaks the others;
* ``register_backend``, for backends defined in a script, a notebook or a test. An explicit
  registration wins over an entry point of the same name.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

import torch

from cfaug.backends.base import Backend

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendImportError",
    "get_backend_class",
    "list_backends",
    "load_backend",
    "refresh_backends",
    "register_backend",
]

ENTRY_POINT_GROUP = "cfaug.backends"

_registered: dict[str, type[Backend]] = {}
BackendT = TypeVar("BackendT", bound=type[Backend])


class BackendImportError(ImportError):
    """A backend plugin could not be imported; the message names the plugin and its distribution."""


@functools.lru_cache(maxsize=1)
def _discovered() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in found and found[point.name].value != point.value:
            warnings.warn(
                f"Two plugins declare the cfaug backend {point.name!r}: {_describe(found[point.name])} and "
                f"{_describe(point)}. Using the first; call cfaug.register_backend to choose explicitly.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        found[point.name] = point
    return found


def _describe(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    origin = f"distribution {dist.name!r}" if dist is not None else "an unnamed distribution"
    return f"{point.value!r} from {origin}"


def refresh_backends() -> None:
    """Forget the cached entry-point listing, e.g. after installing a plugin in a running process."""
    _discovered.cache_clear()


def register_backend(name: str | None = None, *, override: bool = False) -> Callable[[BackendT], BackendT]:
    """Class decorator that registers a backend in this process.

    Args:
        name: the registry name; defaults to the class's ``name`` attribute.
        override: replace an earlier in-process registration of the same name silently. Without it,
            re-registering warns (the newer class still wins, as in a re-run notebook cell).

    Examples:
        >>> from cfaug.backends.base import Backend
        >>> @register_backend("my-backend")  # doctest: +SKIP
        ... class MyBackend(Backend): ...
    """

    def decorator(cls: BackendT) -> BackendT:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"register_backend expects a subclass of cfaug.Backend, but got {cls!r}.")
        key = name or cls.name
        if not key:
            raise ValueError(f"Backend class {cls.__qualname__} has no `name`; pass one to register_backend(name).")
        if key in _registered and _registered[key] is not cls and not override:
            warnings.warn(
                f"Backend {key!r} was registered before by {_registered[key].__module__}."
                f"{_registered[key].__qualname__}; {cls.__module__}.{cls.__qualname__} replaces it.",
                RuntimeWarning,
                stacklevel=2,
            )
        elif key in _discovered() and key not in _registered:
            warnings.warn(
                f"Backend {key!r} is also declared by the plugin {_describe(_discovered()[key])}; "
                f"the explicit registration of {cls.__module__}.{cls.__qualname__} wins.",
                RuntimeWarning,
                stacklevel=2,
            )
        # The class records its registry name (checkpoints carry it); a subclass must not keep its parent's.
        cls.name = key
        _registered[key] = cls
        return cls

    return decorator


def list_backends(pattern: str = "*") -> list[str]:
    """Names of the available backends matching the glob ``pattern``, sorted. Imports no plugin."""
    names = set(_registered) | set(_discovered())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def get_backend_class(name: str) -> type[Backend]:
    """Return the backend class registered under ``name``, importing its plugin if needed.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no backend has that name; the message lists the valid ones.
        BackendImportError: the plugin that declares it fails to import.
    """
    if not isinstance(name, str):
        raise TypeError(f"`backend` should be a backend name (str), but got {type(name).__name__}.")
    if name in _registered:
        return _registered[name]
    point = _discovered().get(name)
    if point is None:
        raise ValueError(f"Unknown value {name!r} for argument `backend`. Valid values are {list_backends()}.")
    try:
        cls = point.load()
    except Exception as error:
        raise BackendImportError(
            f"The cfaug backend {name!r} (entry point {_describe(point)}) failed to import: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendImportError(
            f"The cfaug backend {name!r} (entry point {_describe(point)}) should name a subclass of "
            f"cfaug.Backend, but it names {cls!r}."
        )
    if not cls.__dict__.get("name"):
        cls.name = name
    return cls


def load_backend(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> Backend:
    """Build a backend by name with its weights, ready for generation.

    Args:
        name: a name from ``list_backends``.
        weights: a named weight of that backend, a checkpoint path, or ``None`` for its default.
        device: device to put the model on (CPU when ``None``).
        **kwargs: passed to the backend's ``from_pretrained``.

    Examples:
        >>> import cfaug
        >>> backend = cfaug.load_backend("mnist", weights="colored_mnist")  # doctest: +SKIP
    """
    return get_backend_class(name).from_pretrained(weights=weights, device=device, **kwargs)
