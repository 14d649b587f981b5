"""The backend registry: register, list and load backends by name.

Backends come from two places:

* the ``cfaug.backends`` entry-point group, read with ``importlib.metadata.entry_points``. cfaug's own
  backends (``mnist``, ``biggan``) are declared there too, so discovery is exercised on every install. An
  entry point names a ``Backend`` subclass and is imported only when that backend
  is loaded, so ``list_backends()`` stays cheap and a broken plugin never breaks the others: any exception its
  import raises (``SystemExit`` included; only ``KeyboardInterrupt`` passes) becomes a ``BackendImportError``;
* ``register_backend``, for backends defined in a script, a notebook or a test. An explicit
  registration wins over an entry point of the same name.

**Names.** The built-in names (those the ``cfaug`` distribution declares: ``mnist``, ``biggan``) stay cfaug's: a
third-party plugin that declares one of them is ignored, with a ``RuntimeWarning``, and ``plugin_conflicts()``
(shown by ``cfaug list``) names both distributions. Between two third-party plugins of one name, the first on
``sys.path`` wins, with a warning.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple, TypeVar

import torch

from cfaug.backends.base import Backend

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendImportError",
    "WeightsInfo",
    "get_backend_class",
    "list_backends",
    "list_weights",
    "load_backend",
    "plugin_conflicts",
    "refresh_backends",
    "register_backend",
]

ENTRY_POINT_GROUP = "cfaug.backends"
#: The distribution whose entry points are the built-in backends; their names cannot be taken by a plugin.
BUILTIN_DISTRIBUTION = "cfaug"

_registered: dict[str, type[Backend]] = {}
BackendT = TypeVar("BackendT", bound=type[Backend])


class BackendImportError(ImportError):
    """A backend plugin could not be imported; the message names the plugin and its distribution."""


@functools.lru_cache(maxsize=1)
def _discovery() -> tuple[dict[str, EntryPoint], dict[str, tuple[str, ...]]]:
    """The entry point used for each name, and for each contested name the declarations that were set aside."""
    declared: dict[str, list[EntryPoint]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        declared.setdefault(point.name, []).append(point)
    found: dict[str, EntryPoint] = {}
    conflicts: dict[str, tuple[str, ...]] = {}
    for name, points in declared.items():
        builtin = [p for p in points if _distribution(p) == BUILTIN_DISTRIBUTION]
        chosen = (builtin or points)[0]
        others = [p for p in points if p.value != chosen.value]  # one package seen twice on sys.path is no conflict
        found[name] = chosen
        if not others:
            continue
        conflicts[name] = tuple(_describe(p) for p in others)
        if builtin:
            message = (
                f"The plugin {', '.join(conflicts[name])} declares the built-in cfaug backend {name!r}; built-in "
                f"names stay cfaug's, so {_describe(chosen)} is used. Rename the plugin's backend."
            )
        else:
            message = (
                f"Two plugins declare the cfaug backend {name!r}: {_describe(chosen)} and "
                f"{', '.join(conflicts[name])}. Using the first; call cfaug.register_backend to choose explicitly."
            )
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    return found, conflicts


def _discovered() -> dict[str, EntryPoint]:
    return _discovery()[0]


def _distribution(point: EntryPoint) -> str | None:
    dist = getattr(point, "dist", None)
    return None if dist is None else dist.name.lower().replace("_", "-")


def _describe(point: EntryPoint) -> str:
    name = _distribution(point)
    origin = f"distribution {name!r}" if name is not None else "an unnamed distribution"
    return f"{point.value!r} from {origin}"


def plugin_conflicts() -> dict[str, tuple[str, ...]]:
    """Backend names declared by more than one distribution: for each, the declarations that are not used.

    A built-in name (declared by the ``cfaug`` distribution) always keeps cfaug's backend; between plugins, the
    first on ``sys.path`` is used. ``cfaug list`` shows these.
    """
    return dict(_discovery()[1])


def refresh_backends() -> None:
    """Forget the cached entry-point listing, e.g. after installing a plugin in a running process."""
    _discovery.cache_clear()


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
        BackendImportError: the plugin that declares it fails to import, whatever it raises (``SystemExit``
            included; only ``KeyboardInterrupt`` passes through).
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
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - a plugin's sys.exit() or any error must not end the caller
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


class WeightsInfo(NamedTuple):
    """One named weight of a backend, as ``list_weights`` returns it.

    Attributes:
        backend: the backend's name.
        name: the name to pass as ``weights=``.
        description: one line: what the weights were trained on and how well they do.
        default: whether ``weights=None`` loads these.
        shipped: whether the file ships inside the package (``False``: downloaded on first use).
    """

    backend: str
    name: str
    description: str
    default: bool
    shipped: bool


def list_weights(backend: str | None = None) -> list[WeightsInfo]:
    """The named weights of one backend, or of every available backend, with a one-line description each.

    Args:
        backend: a name from ``list_backends``; ``None`` lists every backend whose plugin imports (a plugin that
            fails to import is skipped here; ``get_backend_class`` says why).

    Returns:
        One ``WeightsInfo`` per named weight, by backend then in the backend's order.

    Raises:
        ValueError: unknown ``backend``.
        BackendImportError: the named ``backend``'s plugin fails to import.

    Examples:
        >>> import cfaug
        >>> [w.name for w in cfaug.list_weights("mnist")]  # doctest: +SKIP
        ['colored_mnist', 'double_colored_mnist', 'wildlife_mnist']
    """
    if backend is None:
        classes = []
        for name in list_backends():
            try:
                classes.append(get_backend_class(name))
            except BackendImportError:
                continue
    else:
        classes = [get_backend_class(backend)]
    return [
        WeightsInfo(cls.name, weight.name, weight.description, weight.name == cls.default_weights, weight.url is None)
        for cls in classes
        for weight in cls.named_weights.values()
    ]
