"""A training run's folder: where each file goes, the guard against another run's folder, and rank-0 writes.

Every trainer lays its folder out alike::

    run_dir/
      config.json                     the config, what it resolved to on this machine, and the environment
      stats.jsonl                     one JSON object per log interval
      samples/step-NNNNNN.png         sample sheets
      checkpoints/latest.safetensors  the training state (``cfaug.engine.state``), rewritten atomically
      final.safetensors               the exported result

Only rank 0 writes (``is_main``); the other ranks of a torchrun job get the same paths and write nothing.

**Owned and locked.** ``refuse_unless_resuming`` (every trainer calls it before writing) refuses a path that is a
file and a folder holding anything but this layout (another program's files, another trainer's run), naming what it
found, before a byte is written. Rank 0 then takes an exclusive OS lock on ``.cfaug-run.lock`` in the folder (where
``fcntl`` exists: Linux, macOS), held while the trainer lives and released by the OS when the process ends, so a
crash leaves no stale lock and a second trainer on the same folder is refused instead of interleaving with the first.
Whether a resumed run has compatible settings is checked by each trainer against the checkpoint (``check_resumable``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import weakref
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open

from cfaug._utils import atomic_write
from cfaug.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cfaug.version import __version__

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent trainers on one folder are then not refused
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunFolder", "RunFolderError", "run_environment", "truncate_stats"]

#: The lock file in every run folder that rank 0 of a trainer holds while it runs.
LOCK_NAME = ".cfaug-run.lock"
#: The entries a run folder may hold (besides temporary files ``.NAME.*.tmp`` of an interrupted atomic write).
_RUN_ENTRIES = {
    "config.json": "file",
    "stats.jsonl": "file",
    "final.safetensors": "file",
    LOCK_NAME: "file",
    "samples": "folder",
    "checkpoints": "folder",
}


class RunFolderError(ValueError):
    """A run folder cannot be used: it holds something else, or another process is training in it."""


class _FolderLock:
    """An exclusive ``flock`` on a run folder's lock file, released when the last ``RunFolder`` using it goes."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()


# One lock per folder and process: a second trainer in the same process (a resume in a notebook) shares it.
_LOCKS: weakref.WeakValueDictionary[str, _FolderLock] = weakref.WeakValueDictionary()


def run_environment(device: str | torch.device, **extra: Any) -> dict[str, Any]:
    """Versions and hardware of a run, for its ``config.json`` and export (recorded, not checked on resume).

    Args:
        device: the run's device.
        **extra: more entries, e.g. ``world_size``.
    """
    return {
        "cfaug_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        **extra,
        "threads": torch.get_num_threads(),
    }


def truncate_stats(path: Path, last_step: int) -> None:
    """Keep the stats lines up to ``last_step``: the interrupted run may have logged past its last checkpoint."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= last_step:
            kept.append(line)
    with atomic_write(path, "w") as handle:
        handle.write("".join(line + "\n" for line in kept))


class RunFolder:
    """The files of one training run (see the module documentation for the layout).

    Args:
        path: the run folder (created by ``claim``).
        kind: the ``kind`` every training state of this trainer carries in its metadata; a checkpoint of another
            kind is refused (the folder holds some other run).
        writer: the trainer's name, for the error messages (e.g. ``"train_cgn_mnist"``).
        is_main: this process writes the files (rank 0 of a torchrun job, or a single process).

    Attributes:
        path, config_path, stats_path, samples_dir, checkpoint_path, final_path: where each file goes.
    """

    def __init__(self, path: str | os.PathLike[str], *, kind: str, writer: str, is_main: bool = True) -> None:
        self.path = Path(path)
        self.kind = kind
        self.writer = writer
        self.is_main = is_main
        self.config_path = self.path / "config.json"
        self.stats_path = self.path / "stats.jsonl"
        self.samples_dir = self.path / "samples"
        self.checkpoint_path = self.path / "checkpoints" / "latest.safetensors"
        self.final_path = self.path / "final.safetensors"
        self._lock: _FolderLock | None = None

    def check_owned(self) -> None:
        """Refuse a path that is a file, or a folder holding anything but a run of this trainer (writes nothing).

        Raises:
            NotADirectoryError: the path is a file.
            RunFolderError: the folder holds entries that are not part of a run folder (named in the message),
                one of its entries has the wrong type, ``config.json`` is not a JSON object, or the training state
                is of another trainer.
        """
        path = self.path
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"The run folder {str(path)!r} is a file; choose a folder (new or empty).")
        if not path.exists():
            return
        entries = sorted(os.listdir(path))
        foreign = [n for n in entries if n not in _RUN_ENTRIES and not (n.startswith(".") and n.endswith(".tmp"))]
        wrong = [
            f"{name} (a {'folder' if (path / name).is_dir() else 'file'})"
            for name, kind in _RUN_ENTRIES.items()
            if (path / name).exists() and (path / name).is_dir() != (kind == "folder")
        ]
        if foreign or wrong:
            found = foreign[:6] + ([f"... {len(foreign) - 6} more"] if len(foreign) > 6 else []) + wrong
            raise RunFolderError(
                f"{str(path)!r} holds {', '.join(found)}, which a cfaug training run does not write; refusing to "
                f"write into it. Choose a new or empty run folder ({self.writer} writes config.json, stats.jsonl, "
                "samples/, checkpoints/ and final.safetensors)."
            )
        if self.config_path.exists():
            try:
                document = json.loads(self.config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                document = None
            if not isinstance(document, dict):
                raise RunFolderError(
                    f"{str(self.config_path)!r} is not the config of a cfaug run (a JSON object); refusing to "
                    "overwrite it. Choose a new or empty run folder."
                )
        kind = _state_kind(self.checkpoint_path)
        if kind is not None and kind != self.kind:
            raise RunFolderError(
                f"{str(self.path)!r} holds the run of another trainer (training state of kind {kind!r}; "
                f"{self.writer} writes {self.kind!r}). Choose another run folder."
            )

    def lock(self) -> None:
        """Take the folder's exclusive lock (rank 0; where ``fcntl`` exists), creating the folder.

        Raises:
            RunFolderError: another process holds the lock: it is training in this folder now.
        """
        if not self.is_main or fcntl is None or self._lock is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        held = _LOCKS.get(key)
        if held is None:
            handle = open(self.path / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held while the run lives
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                handle.close()
                raise RunFolderError(
                    f"Another process is training in {str(self.path)!r} now (it holds {LOCK_NAME}); wait for it to "
                    "finish or choose another run folder."
                ) from error
            held = _LOCKS[key] = _FolderLock(handle)
        self._lock = held

    def has_state(self) -> bool:
        """Whether the folder holds a training state to resume from."""
        return self.checkpoint_path.exists()

    def refuse_unless_resuming(self, resume: bool) -> None:
        """Check the folder (``check_owned``), lock it (``lock``), and refuse a run to resume unless ``resume``.

        Raises:
            NotADirectoryError: the path is a file.
            RunFolderError: the folder holds something else, or another process is training in it.
            ValueError: the folder holds a run and ``resume`` is false.
        """
        self.check_owned()
        self.lock()
        self.check_owned()  # again under the lock: what another writer did meanwhile counts too
        if self.has_state() and not resume:
            raise ValueError(
                f"{str(self.path)!r} already holds a run (checkpoints/latest.safetensors); pass resume=True "
                "to continue it or choose a new run folder."
            )

    def load_state(self, map_location: str | torch.device = "cpu") -> Checkpoint:
        """The folder's training state, after checking that this trainer wrote it.

        Raises:
            ValueError: the checkpoint is of another kind (the folder holds something else).
        """
        checkpoint = load_checkpoint(self.checkpoint_path, map_location=map_location)
        kind = checkpoint.meta.get("kind")
        if kind != self.kind:
            raise ValueError(
                f"{str(self.checkpoint_path)!r} is not a training state written by {self.writer} "
                f"(kind {kind!r}, expected {self.kind!r})."
            )
        return checkpoint

    def save_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Write ``checkpoints/latest.safetensors`` atomically (rank 0); ``meta`` gets this folder's ``kind``."""
        if self.is_main:
            save_checkpoint(self.checkpoint_path, tensors, {"kind": self.kind, **meta})

    def start_stats(self, step: int) -> None:
        """Prepare ``stats.jsonl`` for a run starting at ``step``: cut it back to ``step``, or start it afresh."""
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if step > 0:
            truncate_stats(self.stats_path, step)
        else:
            self.stats_path.unlink(missing_ok=True)

    def append_stats(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``stats.jsonl`` (rank 0)."""
        if self.is_main:
            with open(self.stats_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def write_config(self, document: dict[str, Any]) -> None:
        """Write ``config.json`` atomically (rank 0), sorted and indented for people to read."""
        if self.is_main:
            with atomic_write(self.config_path, "w") as handle:
                json.dump(document, handle, indent=2, sort_keys=True)
                handle.write("\n")

    def sample_path(self, step: int, suffix: str = ".png") -> Path:
        """Where the sample sheet of ``step`` goes."""
        return self.samples_dir / f"step-{step:06d}{suffix}"


def _state_kind(path: Path) -> str | None:
    """The ``kind`` in a training state's metadata, read from the header alone; ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("cfaug", "{}"))
    except Exception:  # noqa: BLE001 - a damaged state is reported by load_state, with its own message
        return None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return kind if isinstance(kind, str) else None
