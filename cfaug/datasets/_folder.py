"""Who may write into a dataset folder, and when: ownership, OS locks, temporary files, disk space, safe reads.

A dataset folder is written by one or several processes (``save`` calls, ``cfaug generate`` runs, torchrun ranks).
Three kinds of OS lock keep them apart; the OS releases every one of them when a process ends, even by ``kill -9``,
so an interrupted writer never leaves a stale lock behind:

* ``.cfaug.lock``, an exclusive ``flock`` held for short steps only: checking that the folder is cfaug's own
  with the same settings, registering a writer, removing temporary files, merging the manifest.
* ``.cfaug.writer-<chunk size>-<start>-<stop>``, one file per writer, held shared for the whole save. Under the
  folder lock a new writer tries each other writer's file: a file still held belongs to a live writer. Live writers
  must use one chunk grid and identical or disjoint ranges, so that their chunks never overlap.
* ``.cfaug.claims``, byte ranges locked with ``lockf``: bytes ``[lo, hi)`` are held while chunk ``[lo, hi)`` is
  written, so two writers never write the same chunk at once.

The lock files are empty; they stay in the folder (removing a lock file that another process may be waiting on
would let two processes lock two different files). On systems without POSIX locks (Windows) the locks are no-ops:
one writer per folder at a time is then the user's responsibility.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Generator, Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; saves work, but concurrent writers are not kept apart there
    fcntl = None  # type: ignore[assignment]

__all__ = ["SavedDatasetError"]

LOCK_NAME = ".cfaug.lock"
CLAIMS_NAME = ".cfaug.claims"
_WRITER = re.compile(r"^\.cfaug\.writer-(\d+)-(\d+)-(\d+)$")
# atomic_write's temporary files: ".<final name>.<random>.tmp" beside the final file.
_TEMPORARY = re.compile(r"^\..+\.tmp$")
# What a dataset folder may hold at its top level; everything else is someone else's.
_LAYOUT_FILES = ("manifest.json", "labels.csv")
_LAYOUT_FOLDERS = ("images", "shards", "records", "parts")


class SavedDatasetError(ValueError):
    """A saved counterfactual dataset is missing, unfinished, corrupted, or was made with other settings."""


def _is_bookkeeping(name: str) -> bool:
    """Lock files and temporary files: what a writer may leave in a folder before it holds any data."""
    return name.startswith(".cfaug.") or bool(_TEMPORARY.match(name))


def foreign_entries(root: Path, limit: int = 5) -> list[str]:
    """Up to ``limit`` paths in ``root`` that no cfaug writer made, for a folder without a cfaug marker.

    A folder without ``manifest.json`` or ``parts/*.json`` is cfaug's only when it holds nothing but lock files,
    temporary files and empty layout folders (a writer killed before it wrote its partial manifest).
    """
    found: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _is_bookkeeping(entry.name):
            continue
        if entry.name in _LAYOUT_FOLDERS and entry.is_dir(follow_symlinks=False):
            for folder, _, files in os.walk(entry.path):
                found += [os.path.relpath(os.path.join(folder, f), root) for f in files if not _is_bookkeeping(f)]
                if len(found) >= limit:
                    return found[:limit]
            continue
        found.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
        if len(found) >= limit:
            break
    return found[:limit]


def make_folder(root: Path) -> None:
    """Create ``root`` (and its parents), with a clear error when it names a file."""
    if root.exists() and not root.is_dir():
        raise SavedDatasetError(f"The output folder {str(root)!r} is a file, not a folder; choose another path.")
    root.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def folder_lock(root: Path) -> Generator[None, None, None]:
    """Hold the folder's exclusive lock (waiting for it); creates ``root`` if needed."""
    make_folder(root)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _writer_name(chunk_size: int, start: int, stop: int) -> str:
    return f".cfaug.writer-{chunk_size}-{start}-{stop}"


def _held(path: Path) -> bool:
    """Whether a live process holds a writer file (it is stale, and removed, otherwise). Under the folder lock."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)  # a writer that ended without removing its file (killed): nobody holds it
    return False


def live_writers(root: Path) -> list[tuple[int, int, int]]:
    """``(chunk_size, start, stop)`` of every other writer now saving into ``root``. Under the folder lock."""
    writers = []
    for entry in os.scandir(root):
        match = _WRITER.match(entry.name)
        if match and _held(Path(entry.path)):
            writers.append(tuple(int(v) for v in match.groups()))
    return sorted(writers)  # type: ignore[arg-type]


class Writer:
    """A writer's registration: the shared lock on its writer file, held until ``close``."""

    def __init__(self, root: Path, chunk_size: int, start: int, stop: int) -> None:
        """Register a writer of ``[start, stop)`` on the ``chunk_size`` grid; call it under the folder lock.

        Raises:
            SavedDatasetError: a live writer uses another chunk size, or a range that overlaps this one without
                being the same (their chunks would overlap).
        """
        self.others = live_writers(root)
        for size, lo, hi in self.others:
            same_range = (lo, hi) == (start, stop)
            if size != chunk_size or (not same_range and lo < stop and start < hi):
                raise SavedDatasetError(
                    f"Another process is saving [{lo}, {hi}) with chunk_size={size} into {str(root)!r}; this save "
                    f"([{start}, {stop}), chunk_size={chunk_size}) would write chunks overlapping its chunks. Wait "
                    "for it to finish, or use the same chunk size and the same or a disjoint range."
                )
        self.path = root / _writer_name(chunk_size, start, stop)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # shared: identical writers each hold the same file

    def close(self) -> None:
        """Release the registration, removing the file unless an identical writer still holds it.

        Call it under the folder lock, as every other step that opens writer files.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            _held(self.path)


class Claims:
    """Byte-range locks on ``.cfaug.claims``: a chunk ``[lo, hi)`` is written only by the process holding it.

    POSIX record locks belong to a process and are dropped when the process closes *any* descriptor of the file, so
    each process opens the file once and keeps it open (DataLoader workers open their own after the fork).
    """

    _fds: dict[tuple[int, str], int] = {}

    def __init__(self, root: Path) -> None:
        self.path = str(root / CLAIMS_NAME)

    def __getstate__(self) -> dict[str, str]:
        return {"path": self.path}

    def _fd(self) -> int:
        key = (os.getpid(), self.path)
        fd = self._fds.get(key)
        # A folder deleted and made again has a new claims file: a descriptor of the old one would lock nothing.
        if fd is not None and os.fstat(fd).st_ino != _inode(self.path):
            os.close(fd)
            fd = None
        if fd is None:
            fd = self._fds[key] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        return fd

    def acquire(self, lo: int, hi: int, wait: bool) -> bool:
        """Take bytes ``[lo, hi)``; False (without waiting) when another process holds some of them."""
        if fcntl is None:
            return True
        try:
            fcntl.lockf(self._fd(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB), hi - lo, lo)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return False
        return True

    def release(self, lo: int, hi: int) -> None:
        """Give bytes ``[lo, hi)`` back (any thread of the holding process may: the lock is the process's)."""
        if fcntl is not None:
            fcntl.lockf(self._fd(), fcntl.LOCK_UN, hi - lo, lo)

    @contextlib.contextmanager
    def claim(self, lo: int, hi: int, wait: bool) -> Generator[bool, None, None]:
        """Hold bytes ``[lo, hi)`` for the block; yields False when another process holds some of them."""
        claimed = self.acquire(lo, hi, wait)
        try:
            yield claimed
        finally:
            if claimed:
                self.release(lo, hi)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def remove_temporary_files(root: Path, folders: Iterable[str] = ("", *_LAYOUT_FOLDERS)) -> int:
    """Delete the temporary files that killed writers left (only while no other writer is live); returns the count."""
    removed = 0
    for name in folders:
        base = root / name
        if not base.is_dir():
            continue
        for folder, subfolders, files in os.walk(base):
            if not name:
                subfolders.clear()  # the top level only; the layout folders are walked on their own
            for file in files:
                if _TEMPORARY.match(file):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, file))
                    removed += 1
    return removed


def free_bytes(root: Path) -> int:
    """Bytes free for an unprivileged user on the file system that holds (or will hold) ``root``."""
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = os.statvfs(path)
    return usage.f_bavail * usage.f_frsize


def block_size(root: Path) -> int:
    """The file system's allocation unit: the least disk space a small file takes."""
    path = root
    while not path.exists() and path != path.parent:
        path = path.parent
    return max(512, os.statvfs(path).f_frsize)


def check_disk_space(root: Path, needed: int, items: int) -> None:
    """Refuse, with both figures, a save of ``items`` items estimated at ``needed`` bytes that cannot fit."""
    free = free_bytes(root)
    if needed > free:
        raise SavedDatasetError(
            f"Saving {items} more items into {str(root)!r} needs about {_human(needed)} ({needed} bytes), but the "
            f"file system has {_human(free)} ({free} bytes) free. Free some space, save fewer items (`size`, or "
            "`start`/`stop` to split the work), or choose another folder."
        )


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1000
    raise AssertionError("unreachable")


def read_inside(root: Path, relpath: str, listed_in: str) -> bytes:
    """Read the regular file ``root/relpath``, refusing paths that leave ``root`` and files that are not regular.

    ``relpath`` must already be a relative path without ``..`` (the row checks make sure of it); symbolic links
    are resolved here, so a link inside the folder cannot point outside it. Device files, FIFOs and sockets are
    refused before a byte is read: reading ``/dev/zero`` would never end.

    Raises:
        SavedDatasetError: the file is missing, outside the folder, or not a regular file.
    """
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, relpath))
    shown = str(root / relpath)
    if os.path.commonpath([base, path]) != base:
        raise SavedDatasetError(f"{shown!r}, listed in {listed_in}, leads outside the dataset folder (to {path!r}).")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat below refuses it anyway.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SavedDatasetError(f"{shown!r}, listed in {listed_in}, is missing.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SavedDatasetError(f"{shown!r}, listed in {listed_in}, is not a regular file; it is not read.")
        return handle.read(info.st_size)
