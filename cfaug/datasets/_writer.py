"""The writer pool of ``CounterfactualDataset.save``: encoding on threads, one committer that writes in order.

``save`` hands the making of each group of files (PNG or safetensors bytes, the sha256 of each, a chunk's record
CSV) to a thread as soon as the items are generated, and goes on generating while they are encoded. A single
committer thread writes the groups in the order they were submitted, a chunk's files before its record, as the
serial writer does: the bytes, the order of the commits and what an interrupted save leaves behind (whole chunks,
each with its record, then at most files without a record, which a resumed save writes again) are those of the
serial writer. The queue is bounded: at most ``max_pending`` groups are submitted but not yet written, and
generation waits when writing falls behind.

``$CFAUG_WRITER_THREADS`` sets the number of encoding threads (default ``min(4, CPU count - 1)``, at least 1);
``0`` gives the
serial writer, which makes and writes each group in the caller's thread before ``submit`` returns. DataLoader
workers (``save(num_workers=...)``) always write serially: they run in parallel already.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from cfaug._utils import atomic_write_bytes, check_positive_int

__all__ = ["WRITER_THREADS_ENV", "ChunkFile", "WriterPool", "commit_files", "writer_threads"]

#: Environment variable with the number of encoding threads of ``save``; 0 for the serial writer.
WRITER_THREADS_ENV = "CFAUG_WRITER_THREADS"

#: One file of a chunk: its path relative to the dataset root, its bytes, and whether to fsync it.
ChunkFile = tuple[str, bytes, bool]


def writer_threads() -> int:
    """The number of encoding threads: ``$CFAUG_WRITER_THREADS``, else ``min(4, CPU count - 1)``, at least 1.

    One core is left to the generation the threads overlap with: on a 2-core CPU, one encoding thread beside the
    generating thread measured 0.90x the generation rate for PNG and two 0.88x (``benchmarks/generation.py``, with
    Pillow's encoder at the time; see ``docs/benchmarks.md`` for today's rates).

    Raises:
        ValueError: the variable is set to something other than a non-negative integer.
    """
    value = os.environ.get(WRITER_THREADS_ENV, "").strip()
    if not value:
        return max(1, min(4, (os.cpu_count() or 1) - 1))
    if not value.isdigit():
        raise ValueError(f"${WRITER_THREADS_ENV} should be a non-negative integer (0: serial), but got {value!r}.")
    return int(value)


def commit_files(root: Path, files: Sequence[ChunkFile]) -> None:
    """Write one group of files atomically, in order."""
    folder = os.fspath(root)
    for relpath, data, fsync in files:
        atomic_write_bytes(os.path.join(folder, relpath), data, fsync=fsync)


class WriterPool:
    """Make groups of files on worker threads and write them, in submission order, from one committer thread.

    Use it as a context manager: leaving the block waits until every submitted group is written, also when the
    block raises (chunks generated before a crash are kept, as the serial writer keeps them). An error while
    making or writing a group stops further writes and is raised by the next ``submit`` or on leaving the block.

    Args:
        root: the dataset folder the relative paths are written under.
        threads: encoding threads; ``None`` reads ``writer_threads()``; 0 writes serially in ``submit``.
        max_pending: groups submitted but not yet written before ``submit`` blocks; ``2 * threads + 2`` by default.
        commit: writes one group's files (``commit_files``; replaceable for tests).

    Raises:
        TypeError, ValueError: ``threads`` or ``max_pending`` is not a valid count.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        threads: int | None = None,
        max_pending: int | None = None,
        commit: Callable[[Path, Sequence[ChunkFile]], None] = commit_files,
    ) -> None:
        self.root = Path(root)
        self.threads = writer_threads() if threads is None else check_positive_int(threads, "threads", allow_zero=True)
        # Two groups per thread plus two: enough to ride out a slow commit (an fsync) without stopping generation.
        default = 2 * self.threads + 2
        self.max_pending = default if max_pending is None else check_positive_int(max_pending, "max_pending")
        self._commit = commit
        self._pid = os.getpid()
        self._executor: ThreadPoolExecutor | None = None
        self._committer: threading.Thread | None = None
        # Each queued chunk: the future of its files, and what to call once they are written (or failed).
        self._queue: queue.SimpleQueue[tuple[Future[Sequence[ChunkFile]], Callable[[], None]] | None]
        self._queue = queue.SimpleQueue()
        self._slots = threading.Semaphore(self.max_pending)
        self._error: BaseException | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A spawned DataLoader worker gets a serial writer (threads and locks do not pickle); see submit().
        return {"root": self.root, "commit": self._commit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], threads=0, commit=state["commit"])  # type: ignore[misc]

    def submit(
        self, make_files: Callable[[], Sequence[ChunkFile]], done: Callable[[], None] = lambda: None
    ) -> Future[Sequence[ChunkFile]]:
        """Queue one group of files: ``make_files()`` runs on a worker thread, its files are then written in order.

        Blocks while ``max_pending`` groups are waiting. With ``threads=0``, or in a process forked from the one
        that made the pool (a DataLoader worker, whose item must be on disk before it is handed back), makes and
        writes the group now. ``done()`` runs once the group is written or has failed, whatever happens: ``save``
        releases a chunk's claim there, so that no other writer takes a chunk that is still being written.

        Returns:
            The future of ``make_files()``. A later group's ``make_files`` may wait for it (it was taken by a
            worker thread first), never a group submitted before it.
        """
        try:
            if self.threads == 0 or os.getpid() != self._pid:
                future: Future[Sequence[ChunkFile]] = Future()
                future.set_result(make_files())
                self._commit(self.root, future.result())
                done()
                return future
            self._raise_error()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="cfaug-encode")
                self._committer = threading.Thread(target=self._run_committer, name="cfaug-commit", daemon=True)
                self._committer.start()
            self._slots.acquire()
        except BaseException:
            done()
            raise
        future = self._executor.submit(make_files)
        self._queue.put((future, done))
        return future

    def _run_committer(self) -> None:
        while (item := self._queue.get()) is not None:
            future, done = item
            try:
                if self._error is None:
                    self._commit(self.root, future.result())
            except BaseException as error:  # raised to the caller by submit() or close()
                self._error = error
            finally:
                done()
                self._slots.release()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until every submitted chunk is written, stop the threads, and raise the first error if any."""
        if self._executor is not None and self._committer is not None:
            self._queue.put(None)
            self._committer.join()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._committer = self._executor = None
        self._raise_error()

    def __enter__(self) -> WriterPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            # The block's own error is the one to report; the chunks before it are written.
