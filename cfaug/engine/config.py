"""The one config convention of cfaug's trainers: a frozen dataclass whose fields declare their own check.

A trainer's config subclasses ``Config`` and declares each field with ``setting``::

    @dataclass(frozen=True)
    class MyConfig(Config):
        steps: int = setting(100, check=integer(), resumable=True)  # more steps may be trained on resume
        lr: float = setting(1e-3, check=number(positive=True))
        notes: dict[str, str] = setting(factory=dict, compare=False, resumable=True)

        def validate(self) -> None:  # optional: checks that involve several fields
            ...

``Config`` then gives the rest once for all configs: ``__post_init__`` runs every field's check (a check may
return a normalised value, e.g. a list made a tuple) and then ``validate``; ``to_dict``/``from_dict`` round-trip
through JSON (tuples become lists and back; unknown keys are refused); ``resumable_fields()`` lists the fields
that may differ when a run is resumed, and ``check_resumable(saved, wanted)`` refuses the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from cfaug._utils import check_number, check_positive_int, verify_str_arg

__all__ = [
    "Check",
    "Config",
    "check_resumable",
    "choice",
    "integer",
    "json_ready",
    "number",
    "setting",
    "text",
]

#: A field check: ``check(value, name)`` raises ``TypeError``/``ValueError`` or returns the value to store.
Check = Callable[[Any, str], Any]
_C = TypeVar("_C", bound="Config")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    resumable: bool = False,
    factory: Callable[[], Any] | None = None,
    compare: bool = True,
) -> Any:
    """A config field: its default (or ``factory``), its check and whether it may change on resume.

    Args:
        default: the default value.
        check: validates (and may normalise) the value at construction; see ``integer``, ``number``, ``choice``.
        resumable: the field may differ between an interrupted run and its resumption (it changes how long a
            run trains, how it is observed or where it runs, not what it computes).
        factory: builds the default (for mutable defaults such as dicts), instead of ``default``.
        compare: take part in ``==`` (``False`` for bookkeeping such as notes).
    """
    metadata = {"check": check, "resumable": resumable}
    if factory is not None:
        return dataclasses.field(default_factory=factory, compare=compare, metadata=metadata)
    return dataclasses.field(default=default, compare=compare, metadata=metadata)


# ------------------------------------------------------------------------------------------------- checks
def integer(*, low: int = 1, optional: bool = False) -> Check:
    """An int >= ``low`` (0 or 1), or ``None`` when ``optional``."""

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        return check_positive_int(value, name, allow_zero=low == 0)

    return check


def number(*, positive: bool = False, upper: float | None = None, optional: bool = False) -> Check:
    """A finite number >= 0 (> 0 when ``positive``, <= ``upper`` if given), or ``None`` when ``optional``.

    The value is stored as given (an int stays an int), so configs written before round-trip unchanged.
    """

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        check_number(value, name, positive=positive, upper=upper)
        return value

    return check


def choice(valid: Iterable[str], *, optional: bool = False) -> Check:
    """One of the strings ``valid``, or ``None`` when ``optional``."""
    valid = tuple(valid)

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        return verify_str_arg(value, name, valid)

    return check


def text(*, optional: bool = False, what: str = "a str") -> Check:
    """A str (a path, a name), or ``None`` when ``optional``; ``what`` says what it should be in the error."""

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            or_none = " or None" if optional else ""
            raise TypeError(f"`{name}` should be {what}{or_none}, but got {type(value).__name__}.")
        return value

    return check


# ------------------------------------------------------------------------------------------------- the base
def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively, so that the value round-trips through JSON unchanged."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


class Config:
    """Base of the trainers' configs (frozen dataclasses); see the module documentation for the convention."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(getattr(self, f.name), f.name))
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (override); runs after every field's own check."""

    @classmethod
    def resumable_fields(cls) -> frozenset[str]:
        """The fields declared ``resumable``: they may differ between an interrupted run and its resumption."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))  # type: ignore

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-serialisable data (tuples become lists)."""
        return json_ready(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        """Rebuild a config written by ``to_dict`` (e.g. a run's ``config.json``); lists become tuples again.

        Raises:
            ValueError: ``data`` has keys that are not fields of this config.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; valid fields are {sorted(fields)}.")
        values = dict(data)
        for name, value in values.items():
            # The annotations are strings (``from __future__ import annotations``); a tuple field says so.
            if isinstance(value, list) and "tuple" in str(fields[name].type):
                values[name] = tuple(value)
        return cls(**values)


def check_resumable(saved: Any, wanted: Any, resumable: frozenset[str] | None = None) -> None:
    """Raise ``ValueError`` when two configs (dataclasses of one type) differ in a field outside ``resumable``.

    Args:
        saved: the config the run folder was trained with.
        wanted: the config of the resumption.
        resumable: the fields that may differ; ``None``: the config's own ``resumable_fields()``.
    """
    if resumable is None:
        resumable = type(saved).resumable_fields()
    differing = [
        f.name
        for f in dataclasses.fields(type(saved))
        if f.name not in resumable and getattr(saved, f.name) != getattr(wanted, f.name)
    ]
    if differing:
        details = ", ".join(f"{n}: {getattr(saved, n)!r} -> {getattr(wanted, n)!r}" for n in differing)
        raise ValueError(
            f"The run folder holds a run with another recipe ({details}). Only {sorted(resumable)} may "
            "change when resuming; use a new run folder for a new recipe."
        )
