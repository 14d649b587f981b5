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
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _safetensors_bytes
from torch import nn

from cfaug._utils import atomic_write
from cfaug.version import __version__

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "build_checked",
    "load_checkpoint",
    "load_torch_state_dict",
    "meta_state_dict",
    "save_checkpoint",
    "state_dict_problems",
]

FORMAT_VERSION = 1
_META_KEY = "cfaug"
#: The largest integer an ``arch`` may hold: far above any real width or size, far below what overflows a shape.
MAX_ARCH_INT = 1 << 31
ModuleT = TypeVar("ModuleT", bound=nn.Module)


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
    #: the file it was read from (``load_checkpoint`` sets it), named in every refusal.
    path: Path | None = None

    @property
    def source(self) -> str:
        """How messages name this checkpoint: its file, or "the checkpoint" for one made in memory."""
        return repr(str(self.path)) if self.path is not None else "the checkpoint"


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
    """Read a checkpoint written by ``save_checkpoint``, its metadata checked before any tensor is read.

    The metadata must be a JSON object of a known ``format_version`` whose common fields have their types
    (``backend``, ``kind`` and ``model`` strings, ``arch`` an object of finite numbers and integers of sane size,
    ``class_names`` strings, ``image_size`` and ``channels`` positive integers). The tensors are checked against
    a model by ``build_checked`` (or ``state_dict_problems``) when they are used.

    Args:
        path: the ``.safetensors`` file.
        map_location: device the tensors are loaded to.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a safetensors file, carries no or malformed cfaug metadata, or has a
            newer format. The message names the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as handle:
            header = handle.metadata() or {}
            meta = _read_meta(path, header)
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            f"{str(path)!r} is not a readable cfaug checkpoint (expected a .safetensors file): {error}. "
            "Files from the CGN authors (.pth) can be converted with `cfaug import-weights`."
        ) from error
    return Checkpoint(state_dict=state_dict, meta=meta, path=path)


def _read_meta(path: Path, header: Mapping[str, str]) -> dict[str, Any]:
    """The cfaug metadata of a safetensors header, checked by type and range (see ``load_checkpoint``)."""
    name = repr(str(path))
    if _META_KEY not in header:
        raise CheckpointError(
            f"{name} is a safetensors file without cfaug metadata (header key {_META_KEY!r}); "
            "write checkpoints with cfaug.checkpoint.save_checkpoint."
        )
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{name}: the cfaug metadata is not valid JSON ({error}).") from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{name}: the cfaug metadata should be a JSON object, but is {_json_type(meta)}.")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has checkpoint format {version!r}, but this cfaug ({__version__}) reads formats "
            f"<= {FORMAT_VERSION}. Upgrade with: pip install -U cfaug"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{name} has an unknown checkpoint format_version {version!r}; this cfaug ({__version__}) reads "
            f"formats 1 to {FORMAT_VERSION}."
        )
    problems = []
    for key in ("backend", "kind", "model"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            problems.append(f"`{key}` should be a string, but is {_json_type(meta[key])}")
    for key in ("image_size", "channels"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 16):
            problems.append(f"`{key}` should be an integer in [1, 65536], but is {value!r}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        problems.append(f"`class_names` should be a list of strings, but is {_json_type(names)}")
    arch = meta.get("arch")
    if arch is not None:
        if not isinstance(arch, dict):
            problems.append(f"`arch` should be a JSON object, but is {_json_type(arch)}")
        else:
            problems += _arch_problems(arch, "arch")
    if problems:
        raise CheckpointError(f"{name} has malformed cfaug metadata: " + "; ".join(problems[:4]) + ".")
    return meta


def _arch_problems(value: Any, where: str) -> list[str]:
    """Numbers in ``arch`` that no architecture needs: NaN, infinities, integers beyond ``MAX_ARCH_INT``."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _arch_problems(item, f"{where}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _arch_problems(item, f"{where}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"`{where}` should be a finite number, but is {value!r}"]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARCH_INT:
        return [f"`{where}` = {value} is beyond any architecture's size (at most {MAX_ARCH_INT})"]
    return []


def _json_type(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def meta_state_dict(build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    """The state dict of the module ``build`` makes, on the meta device: names, shapes, dtypes, no memory or init."""
    with torch.device("meta"):
        return build().state_dict()


def build_checked(
    build: Callable[[], ModuleT],
    state: Mapping[str, torch.Tensor],
    source: str,
    what: str = "the architecture in its metadata",
) -> ModuleT:
    """Build a module and load ``state`` strictly, after checking ``state`` against it on the meta device.

    The module is first built on the meta device (shapes only, no memory), so an ``arch`` that would need
    gigabytes is refused by comparing its parameter count with the file's before anything is allocated. Then
    missing, unexpected, mis-shaped, non-floating and non-finite tensors are refused (``state_dict_problems``).
    Only then is the module built for real and loaded.

    Args:
        build: makes the module (e.g. ``lambda: MyBackend(**arch)``); called twice, first on the meta device. A
            builder that cannot run on the meta device (``NotImplementedError``) is called once, for real.
        state: the tensors read from the file.
        source: how messages name the file, e.g. ``"'weights.safetensors'"``.
        what: how messages name the architecture.

    Raises:
        CheckpointError: the architecture cannot be built from the metadata, or the tensors do not fit it. The
            message names ``source`` and every kind of mismatch in one line.
    """
    try:
        expected = meta_state_dict(build)
    except NotImplementedError:  # a builder that computes on its tensors: no meta pass, build it for real
        expected = None
    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
        raise CheckpointError(f"{source}: {what} does not build: {type(error).__name__}: {error}") from error
    model = None
    if expected is None:
        model = build()
        expected = model.state_dict()
    problems = state_dict_problems(state, expected)
    if problems:
        implied = sum(t.numel() for t in expected.values())
        held = sum(t.numel() for t in state.values())
        count = [f"it implies {implied:,} values, the file holds {held:,}"] if implied != held else []
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(count + problems) + ".")
    model = build() if model is None else model
    model.load_state_dict(dict(state), strict=True)
    return model


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
    """How ``state`` differs from ``expected``, a line per kind of problem.

    The kinds: missing keys, unexpected keys, shape mismatches, non-floating tensors where the model holds
    floating ones (or floating where it holds integers or flags: a cast would hide a wrong file), and non-finite
    values (NaN or infinity) in floating tensors. Returns an empty list when none applies, so
    ``load_state_dict(strict=True)`` will succeed and load usable numbers. Each line starts with its count and
    names at most ``shown`` keys.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = sorted(set(state) & set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in common
        if state[k].shape != expected[k].shape
    ]
    dtypes = [
        f"{k}: file {state[k].dtype}, model {expected[k].dtype}"
        for k in common
        if state[k].is_floating_point() != expected[k].is_floating_point()
    ]
    non_finite = [
        k
        for k in sorted(state)
        if state[k].is_floating_point() and not state[k].is_meta and not bool(torch.isfinite(state[k]).all())
    ]
    problems = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        ("tensors of the wrong kind of dtype", dtypes),
        ("tensors with NaN or infinite values", non_finite),
    ):
        if items:
            more = f" and {len(items) - shown} more" if len(items) > shown else ""
            problems.append(f"{len(items)} {title}: {items[:shown]}{more}")
    return problems
