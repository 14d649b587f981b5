"""A training run's folder: where each file goes, the guard against another run's folder, and rank-0 writes.

Every trainer lays its folder out alike::

    run_dir/
      config.json                     the config, what it resolved to on this machine, and the environment
      stats.jsonl                     one JSON object per log interval
      samples/step-NNNNNN.png         sample sheets
      checkpoints/latest.safetensors  the training state (``cfaug.engine.state``), rewritten atomically
      final.safetensors               the exported result

Only rank 0 writes (``is_main``); the other ranks of a torchrun job get the same paths and write nothing.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from cfaug._utils import atomic_write
from cfaug.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cfaug.version import __version__

__all__ = ["RunFolder", "run_environment", "truncate_stats"]


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

    def has_state(self) -> bool:
        """Whether the folder holds a training state to resume from."""
        return self.checkpoint_path.exists()

    def refuse_unless_resuming(self, resume: bool) -> None:
        """Raise ``ValueError`` when the folder holds a run and ``resume`` is false."""
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
