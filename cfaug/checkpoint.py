"""cfaug's one checkpoint format: a safetensors file whose header carries JSON metadata.

A checkpoint holds tensors only (the ``state_dict``) plus a JSON document under the header key ``"cfaug"``:

.. code-block:: json

    {"format_version": 1, "cfaug_version": "0.1.0", "backend": "mnist",
     "arch": {...constructor arguments...}, "class_names": [...], "image_size": 32, "channels": 3,
     "value_range": [0, 1], "recipe": {...}, "metrics": {...}}

Loading never unpickles anything: safetensors stores raw tensor bytes and a JSON header.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes

from cfaug._utils import atomic_write
from cfaug.version import __version__

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "load_torch_state_dict",
    "save_checkpoint",
    "state_dict_problems",
]

FORMAT_VERSION = 1
_META_KEY = "cfaug"


class CheckpointError(ValueError):
    """A file is not a readable cfaug checkpoint; the message says why and what was expected."""


@dataclass
class Checkpoint:
    """Tensors plus JSON-serialisable metadata, as stored on disk.

    Attributes:
        state_dict: the model's tensors by name.
        meta: backend name, architecture arguments, classes, image size, value range, cfaug version,
            training recipe and metrics.
    """

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write a checkpoint atomically: a crash mid-write leaves any earlier file at ``path`` intact.

    Args:
        path: destination, conventionally ending in ``.safetensors``.
        state_dict: tensors to store; they are copied to contiguous CPU memory first.
        meta: JSON-serialisable metadata. ``format_version`` and ``cfaug_version`` are filled in.

    Returns:
        The path written.
    """
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "cfaug_version": __version__, **meta}
    try:
        header = json.dumps(meta, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"`meta` should be JSON-serialisable: {error}") from error
    # safetensors refuses tensors that share storage; clone so every entry owns its bytes.
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state_dict.items()}
    payload = _safetensors_bytes(tensors, metadata={_META_KEY: header})
    with atomic_write(path) as handle:
        handle.write(payload)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``.

    Args:
        path: the ``.safetensors`` file.
        map_location: device the tensors are loaded to.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a safetensors file, carries no cfaug metadata, or has a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            header = handle.metadata() or {}
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{str(path)!r} is not a readable cfaug checkpoint (expected a .safetensors file): {error}. "
            "Files from the CGN authors (.pth) can be converted with `cfaug import-weights`."
        ) from error
    if _META_KEY not in header:
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file without cfaug metadata (header key {_META_KEY!r}); "
            "write checkpoints with cfaug.checkpoint.save_checkpoint."
        )
    meta = json.loads(header[_META_KEY])
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format {version!r}, but this cfaug ({__version__}) reads formats "
            f"<= {FORMAT_VERSION}. Upgrade with: pip install -U cfaug"
        )
    return Checkpoint(state_dict=state_dict, meta=meta)


# ------------------------------------------------------------------------------ other projects' state dicts
def load_torch_state_dict(path: str | os.PathLike[str], what: str = "a PyTorch state dict") -> dict[str, torch.Tensor]:
    """Read another project's ``.pth`` state dict without unpickling arbitrary objects.

    ``torch.load(weights_only=True)`` refuses anything but tensors and plain containers. A ``module.`` prefix on
    every key (files saved from ``nn.DataParallel`` or DDP) is removed.

    Args:
        path: the file.
        what: how the messages name the expected content, e.g. ``"the authors' MNIST CGN state dict"``.

    Raises:
        CheckpointError: the file does not load that way, or does not hold a mapping of names to tensors.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or unsafe pickle can fail anywhere in the unpickler; report all alike
        raise CheckpointError(
            f"{str(path)!r} is not {what} that loads with torch.load(weights_only=True): "
            f"{type(error).__name__}: {error}"
        ) from error
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(
            f"{str(path)!r} should hold {what} (names to tensors), but holds {type(loaded).__name__}."
        )
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def state_dict_problems(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], shown: int = 8
) -> list[str]:
    """How ``state`` differs from ``expected``: missing keys, unexpected keys and shape mismatches, a line each.

    Returns an empty list when the keys and shapes match, so ``load_state_dict(strict=True)`` will succeed.
    Each line names at most ``shown`` keys and counts the rest.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            problems.append(f"{len(items)} {title}: {items[:shown]}{more}")
    return problems
