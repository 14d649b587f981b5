"""Small helpers shared by the whole package: argument checks, atomic writes, hashing, lazy imports."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import math
import os
import sys
from collections.abc import Generator, Iterable
from pathlib import Path
from types import ModuleType
from typing import IO, Any


def verify_str_arg(value: Any, arg: str, valid: Iterable[str]) -> str:
    """Check that ``value`` is one of ``valid`` and return it.

    Args:
        value: the value given by the user.
        arg: the argument's name, used in the error message.
        valid: the accepted values.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is not among ``valid``; the message lists the valid values.
    """
    valid = tuple(valid)
    if not isinstance(value, str):
        raise TypeError(f"`{arg}` should be a string, one of {list(valid)}, but got {type(value).__name__} {value!r}.")
    if value not in valid:
        raise ValueError(f"Unknown value {value!r} for argument `{arg}`. Valid values are {list(valid)}.")
    return value


def check_probability(p: Any, arg: str = "p") -> float:
    """Return ``p`` as a float after checking that it lies in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"`{arg}` should be a number in [0, 1], but got {type(p).__name__} {p!r}.")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"`{arg}` should be a number in [0, 1], but got {p!r}.")
    return float(p)


def check_int(value: Any, arg: str, minimum: int) -> int:
    """Return ``value`` after checking that it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{arg}` should be an integer >= {minimum}, but got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{arg}` should be an integer >= {minimum}, but got {value}.")
    return value


def check_positive_int(value: Any, arg: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` after checking that it is a positive (or non-negative) integer."""
    return check_int(value, arg, 0 if allow_zero else 1)


def check_number(value: Any, arg: str, *, positive: bool = False, upper: float | None = None) -> float:
    """Return ``value`` as a float after checking that it is a finite number >= 0 (> 0 if ``positive``).

    NaN and infinities are refused (a NaN passes every ``<`` comparison, so it must be caught by name).

    Args:
        value: the value given by the user.
        arg: the argument's name, used in the error message.
        positive: refuse 0 as well.
        upper: the largest accepted value, if any.

    Raises:
        TypeError: ``value`` is not a finite int or float (bools, NaN and infinities included).
        ValueError: ``value`` is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"`{arg}` should be a finite number, but got {type(value).__name__} {value!r}.")
    if value < 0 or (positive and value == 0) or (upper is not None and value > upper):
        bound = "> 0" if positive else ">= 0"
        limit = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"`{arg}` should be a number {bound}{limit}, but got {value!r}.")
    return float(value)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", fsync: bool = True) -> Generator[IO[Any], None, None]:
    """Write a file so that readers see either the old content or the complete new content.

    The data goes to a temporary file in the same folder, which is flushed, synced and then renamed over
    ``path``. If the block raises, the temporary file is removed and ``path`` is left untouched.

    Args:
        path: the destination.
        mode: the file mode, ``"wb"`` or ``"w"``.
        fsync: sync the data to disk before the rename. Skipping it keeps the rename atomic for other
            processes but not across a power loss; callers that skip it must commit a checksummed record later.
    """
    path = Path(path)
    if path.is_dir():  # refused before a temporary file is written beside it
        raise IsADirectoryError(f"{str(path)!r} is a folder; expected the path of a file to write.")
    fd, tmp_name = _create_temporary(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` as :func:`atomic_write` does, without a file object.

    For the many small files of a saved dataset: the buffered file object, the context manager and the folder check
    cost more than the system calls on a 2 KB file, and they hold the GIL that the generating thread waits for.
    An existing folder at ``path`` fails the final rename (``IsADirectoryError``) instead of being checked first.
    """
    path = os.fspath(path)  # strings, not Path objects: pathlib's parsing cost more than the system calls
    fd, tmp_name = _create_temporary(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _create_temporary(path: str | os.PathLike[str]) -> tuple[int, str]:
    """Create ``.<name>.<random>.tmp`` beside ``path`` (and its folder if needed); returns its descriptor and path.

    Opened with mode 0666 like an ordinary ``open()``, so the process umask gives the usual permissions. (mkstemp
    makes the file 0600, and reading the umask to widen it again means setting it: the umask is process-wide,
    so another thread creating a file meanwhile would get none.) The parent folder is made only when the first
    try finds it missing: most writes go into an existing folder, and a ``mkdir`` each time costs a system call.
    """
    folder, name = os.path.split(os.fspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for flag in ("O_BINARY", "O_NOINHERIT", "O_CLOEXEC"):  # as mkstemp: bytes as written, not inherited
        flags |= getattr(os, flag, 0)
    made_folder = False
    for _ in range(100):
        temporary = os.path.join(folder, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue  # 48 random bits already taken: another name
        except FileNotFoundError:
            if made_folder:
                raise
            os.makedirs(folder or ".", exist_ok=True)
            made_folder = True
    raise FileExistsError(f"No free temporary name beside {os.fspath(path)!r} after 100 tries.")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or raise an ImportError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module!r} is required for this feature but could not be imported ({error}). "
            f"Install it with: pip install 'cfaug[{extra}]'"
        ) from error


#: glibc's mallopt parameters (malloc.h) and the values ``keep_freed_memory`` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20  # the largest glibc accepts: tensors up to 32 MiB come from the reused heap
_TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for the next batch instead of handing it back to the kernel.

    By default glibc maps each allocation over a (growing) threshold afresh and trims the heap whenever its free
    top passes twice that threshold, so the tensors of every CPU batch are faulted in and zeroed again: 8,600 page
    faults (35 MB) per batch of 64 MNIST counterfactuals. With both thresholds raised, generation ran 1.28x and
    classifier training 1.07x faster on one thread (``benchmarks/allocator.py``, ``docs/benchmarks.md``). The
    ``cfaug`` command calls this first (``benchmarks/allocator.py`` too, in the children it compares); its
    resident memory then stays at its peak until it exits. Nothing is changed when ``GLIBC_TUNABLES`` already sets
    malloc options or ``LD_PRELOAD`` loads another allocator (jemalloc, tcmalloc: the user's choice wins), or off
    Linux and glibc. A Python program gets the same from
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824``
    in the environment it starts with (a library cannot change its host's allocator behind its back).

    Returns:
        True when the thresholds were set.
    """
    if not sys.platform.startswith("linux") or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if os.environ.get("LD_PRELOAD", "").strip():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt to speak of): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )
