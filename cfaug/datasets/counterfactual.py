"""Counterfactual datasets: generate on the fly, save to disk, load back, mix with real data.

``CounterfactualDataset`` turns a backend into a map-style dataset of counterfactual images. Item ``i``
depends only on ``(seed, i)``: its per-sample seed is ``cfaug.seeding.index_seeds(seed, [i])`` and its three
classes are drawn from a dedicated stream of that seed. The image is generated **alone** (a batch of one),
because on CPUs convolution results differ in the last bits between batch sizes; generating every item by
itself is what makes item ``i`` bitwise identical whatever the DataLoader batch size, worker count or order.

``CounterfactualDataset.save`` writes a dataset in a layout other tools can read (described, and written, by
``cfaug.datasets.store``), and ``SavedCounterfactualDataset`` (also returned by ``CounterfactualDataset.load``)
reads it back.

``MixedDataset`` mixes real and counterfactual items at a fixed ratio, deterministically.
"""

from __future__ import annotations

import hashlib
import math
import operator
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _safetensors_load
from torch.utils.data import Dataset
from torchvision.datasets import VisionDataset

from cfaug._utils import check_positive_int, check_probability, verify_str_arg
from cfaug.backends.base import Backend, Components
from cfaug.datasets._folder import read_inside
from cfaug.datasets._layout import _LABELS, _MANIFEST, _decode_png, _parse_rows, _read_json, _width
from cfaug.datasets.store import (
    DATASET_FORMAT_VERSION,
    SAVE_FORMATS,
    TARGETS,
    SavedDatasetError,
    SaveReport,
    _parameters_sha256,
    _read_ranges,
    check_manifest,
    check_range,
    check_rows,
    check_size,
    finalize,
    write_range,
)
from cfaug.names import VARYING_MECHANISMS
from cfaug.registry import get_backend_class
from cfaug.seeding import index_seeds, mix_seed, per_sample_randint
from cfaug.version import __version__

__all__ = [
    "DATASET_FORMAT_VERSION",
    "SAVE_FORMATS",
    "TARGETS",
    "VARYING_MECHANISMS",
    "CounterfactualDataset",
    "CounterfactualInfo",
    "MixedDataset",
    "SavedCounterfactualDataset",
    "SavedDatasetError",
    "check_vary",
]

# The classes of an item are drawn from this stream of the item's seed. Mechanisms draw their noise from small
# stream numbers (0, 1, 2, ...) of the same seed; a distant number keeps the class draw independent of them.
_CLASS_STREAM = 0xC1A55


@dataclass(frozen=True)
class CounterfactualInfo:
    """What defines one item of a counterfactual dataset.

    Attributes:
        index: the item's index in the dataset.
        shape: class of the shape mechanism (the label of the image).
        texture: class of the texture mechanism.
        background: class of the background mechanism.
        seed: the per-sample seed all the item's noise is drawn from.
    """

    index: int
    shape: int
    texture: int
    background: int
    seed: int

    @property
    def classes(self) -> tuple[int, int, int]:
        """The ``(shape, texture, background)`` classes."""
        return self.shape, self.texture, self.background


# --------------------------------------------------------------------------------------------- argument checks
def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` should be a non-negative integer, but got {type(seed).__name__} {seed!r}.")
    if seed < 0:
        raise ValueError(f"`seed` should be a non-negative integer, but got {seed}.")
    return seed


def check_vary(vary: Any) -> tuple[str, ...]:
    """Return ``vary`` as a tuple of ``VARYING_MECHANISMS`` in canonical order after checking its names.

    Raises:
        TypeError: ``vary`` is not a string or an iterable of strings.
        ValueError: a name is unknown, or is ``"shape"`` (the shape class is the label and never varies).
    """
    if isinstance(vary, str):
        vary = (vary,)
    if not isinstance(vary, Iterable):
        raise TypeError(
            f"`vary` should be a collection of mechanism names from {list(VARYING_MECHANISMS)}, "
            f"but got {type(vary).__name__} {vary!r}."
        )
    names = tuple(vary)
    for name in names:
        if name == "shape":
            raise ValueError(
                "`vary` cannot contain 'shape': it names the mechanisms that get a class of their own, independent "
                "of the shape class (the label), so it should be a subset of "
                f"{list(VARYING_MECHANISMS)}, but got 'shape' (the shape class is always drawn)."
            )
        verify_str_arg(name, "vary", VARYING_MECHANISMS)
    # Canonical order, so that ("background", "texture") and ("texture", "background") are one setting.
    return tuple(m for m in VARYING_MECHANISMS if m in names)


def _check_callable(value: Any, arg: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"`{arg}` should be a callable or None, but got {type(value).__name__} {value!r}.")
    return value


def _check_index(index: Any, size: int) -> int:
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(f"`index` should be an integer, but got {type(index).__name__} {index!r}.") from None
    if not -size <= i < size:
        # IndexError, not ValueError: `for item in dataset` and other sequence protocols stop on it.
        raise IndexError(f"`index` should be in [{-size}, {size - 1}] for a dataset of {size} items, but got {i}.")
    return i % size


def _target_of(info: CounterfactualInfo, target: str) -> int | tuple[int, int, int]:
    return info.shape if target == "shape" else info.classes


# ---------------------------------------------------------------------------------------- the generated dataset
class CounterfactualDataset(VisionDataset):
    """Counterfactual images generated on the fly by a backend, the same for the same seed everywhere.

    Item ``i`` is ``(image, target)``: the image is a float tensor ``(C, H, W)`` in [0, 1] (before
    ``transform``), made from the classes and per-sample seed that ``(seed, i)`` alone determine. Shape,
    texture and background classes are drawn uniformly; mechanisms not in ``vary`` take the shape class
    (the three classes are always drawn, so changing ``vary`` leaves the shape classes as they were).

    Every item is generated alone, not in a batch: on CPUs, convolution results differ in the last bits
    between batch sizes, so this is what makes item ``i`` bitwise identical whatever the DataLoader batch
    size, number of workers, index order or process. It also means a DataLoader with workers is the way to
    generate fast. A backend given by name is loaded lazily, once per process (each DataLoader worker loads
    its own copy; the loaded model is never pickled); a backend given as an object is used, and pickled, as is.

    Args:
        backend: a backend name from ``cfaug.list_backends``, or a loaded ``Backend``.
        weights: the backend's named weights or a checkpoint path (``None``: its default). Only with a name.
        size: number of items.
        seed: the dataset seed; a non-negative integer.
        vary: the mechanisms that get a class of their own, a subset of ``("texture", "background")``.
        target: ``"shape"`` for the shape class (an int), ``"all"`` for ``(shape, texture, background)``.
        transform: applied to the image tensor.
        target_transform: applied to the target.
        device: where to generate with a backend loaded by name (CPU when ``None``). Items are returned on
            the CPU. A backend object is used on its own device. With a GPU, generate in the main process
            (DataLoader ``num_workers=0``): CUDA does not work in forked DataLoader workers.
        backend_kwargs: extra arguments for the backend's ``from_pretrained`` (only with a name).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument has an invalid value, or the backend name is unknown.

    Examples:
        >>> import cfaug
        >>> data = cfaug.CounterfactualDataset("mnist", weights="colored_mnist", size=50_000)  # doctest: +SKIP
        >>> image, label = data[0]  # doctest: +SKIP
        >>> image.shape, label  # doctest: +SKIP
        (torch.Size([3, 32, 32]), 7)
        >>> data.save("cf_colored_mnist", format="png", num_workers=4)  # doctest: +SKIP
        True
        >>> saved = cfaug.CounterfactualDataset.load("cf_colored_mnist")  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: str | Backend = "mnist",
        weights: str | os.PathLike[str] | None = None,
        size: int = 10_000,
        seed: int = 0,
        vary: Sequence[str] | str = VARYING_MECHANISMS,
        target: str = "shape",
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        device: torch.device | str | None = None,
        backend_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            root=None,
            transform=_check_callable(transform, "transform"),
            target_transform=_check_callable(target_transform, "target_transform"),
        )
        self.size = check_size(size)
        self.seed = _check_seed(seed)
        self.vary = check_vary(vary)
        self.target = verify_str_arg(target, "target", TARGETS)
        if backend_kwargs is not None and not isinstance(backend_kwargs, Mapping):
            raise TypeError(f"`backend_kwargs` should be a mapping or None, but got {type(backend_kwargs).__name__}.")
        self.backend_kwargs = dict(backend_kwargs or {})
        if isinstance(backend, Backend):
            for arg, value in (("weights", weights), ("device", device), ("backend_kwargs", backend_kwargs)):
                if value is not None:
                    raise ValueError(
                        f"`{arg}` applies to a backend given by name; the backend object given is already "
                        f"loaded (weights {backend.weights_name!r} on {backend.device}), but got {arg}={value!r}."
                    )
            self._backend_class: type[Backend] = type(backend)
            self._backend: Backend | None = backend
            self._loaded_by_name = False
            self.backend_name = backend.name
            self.weights = backend.weights_name
            self._device: torch.device | None = None  # the backend object's own device
        elif isinstance(backend, str):
            if weights is not None and not isinstance(weights, (str, os.PathLike)):
                raise TypeError(
                    f"`weights` should be a weights name, a checkpoint path or None, but got {type(weights).__name__}."
                )
            # Resolving the class now reports an unknown name at once, without reading any weights.
            self._backend_class = get_backend_class(backend)
            self._backend = None
            self._loaded_by_name = True
            self.backend_name = backend
            self.weights = None if weights is None else os.fspath(weights)
            self._device = torch.device(device if device is not None else "cpu")
        else:
            raise TypeError(
                f"`backend` should be a backend name (str) or a cfaug.Backend, but got {type(backend).__name__}."
            )

    # ------------------------------------------------------------------------------------------------ backend
    @property
    def backend(self) -> Backend:
        """The backend, loaded on first use in each process when it was given by name."""
        if self._backend is None:
            self._backend = self._backend_class.from_pretrained(
                weights=self.weights, device=self._device, **self.backend_kwargs
            )
        return self._backend

    @property
    def device(self) -> torch.device:
        """Where images are generated (they are returned on the CPU)."""
        if self._device is None:
            return self.backend.device
        return self._device

    @property
    def num_classes(self) -> int:
        """Number of classes of each mechanism (loads the backend)."""
        return self.backend.num_classes

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._loaded_by_name:
            # A worker or another process reloads it by name instead of receiving a pickled model.
            state["_backend"] = None
        return state

    # ---------------------------------------------------------------------------------------------- items
    def __len__(self) -> int:
        return self.size

    def info(self, index: int) -> CounterfactualInfo:
        """The classes and per-sample seed of item ``index``, without generating its image.

        Raises:
            TypeError: ``index`` is not an integer.
            IndexError: ``index`` is out of range.
        """
        i = _check_index(index, self.size)
        seeds = index_seeds(self.seed, [i])
        shape, texture, background = per_sample_randint(seeds, _CLASS_STREAM, self.num_classes, (3,))[0].tolist()
        return CounterfactualInfo(
            index=i,
            shape=shape,
            texture=texture if "texture" in self.vary else shape,
            background=background if "background" in self.vary else shape,
            seed=int(seeds[0]),
        )

    def _generate(self, info: CounterfactualInfo) -> Components:
        return self._generate_batch([info])

    def _generate_batch(self, infos: Sequence[CounterfactualInfo]) -> Components:
        return self.backend.sample(
            [info.shape for info in infos],
            [info.texture for info in infos],
            [info.background for info in infos],
            seeds=torch.tensor([info.seed for info in infos], dtype=torch.int64),
        )

    def components(self, index: int) -> Components:
        """The mask, foreground, background and image of item ``index``, as a batch of one, on the CPU."""
        return self._generate(self.info(index)).to("cpu")

    def image(self, index: int) -> torch.Tensor:
        """The image of item ``index``, ``(C, H, W)`` in [0, 1] on the CPU, before ``transform``."""
        return self._generate(self.info(index)).image[0].cpu()

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        info = self.info(index)
        image: Any = self._generate(info).image[0].cpu()
        target: Any = _target_of(info, self.target)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        lines = [
            f"Backend: {self.backend_name} (weights {'default' if self.weights is None else repr(self.weights)})",
            f"Seed: {self.seed}",
            f"Vary: {self.vary}",
            f"Target: {self.target}",
            f"Device: {self.device}",
        ]
        if self.backend_kwargs:
            lines.append(f"Backend kwargs: {self.backend_kwargs}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------------ saving
    def settings(self, format: str = "png") -> dict[str, Any]:
        """The settings that define this dataset on disk, as written to ``manifest.json`` (loads the backend)."""
        verify_str_arg(format, "format", SAVE_FORMATS)
        backend = self.backend
        return {
            "dataset_format_version": DATASET_FORMAT_VERSION,
            "cfaug_version": __version__,
            "backend": backend.name,
            "weights": backend.weights_name,
            "weights_sha256": backend.weights_sha256,
            "parameters_sha256": _parameters_sha256(backend),
            "arch": backend.arch_config(),
            "num_classes": backend.num_classes,
            "class_names": list(backend.class_names),
            "image_size": backend.image_size,
            "channels": backend.channels,
            "seed": self.seed,
            "size": self.size,
            "vary": list(self.vary),
            "target": self.target,
            "format": format,
        }

    def save(
        self,
        root: str | os.PathLike[str],
        format: str = "png",
        *,
        start: int = 0,
        stop: int | None = None,
        chunk_size: int = 256,
        num_workers: int = 0,
        batch_size: int = 1,
        progress: bool = True,
    ) -> bool:
        """Write items ``[start, stop)`` to ``root``, resuming whatever an earlier call left unfinished.

        Images are stored as 8-bit values (``round(255 * x)``), so loading them back gives the generated
        images within 1/510. ``format="png"`` writes one PNG per item (1 or 3 channels), readable by any image
        tool; ``format="safetensors"`` writes one uint8 tensor shard per chunk, better for millions of small
        images. Both come with ``labels.csv`` (index, classes, seed, file, sha256) and ``manifest.json``.

        Calling ``save`` again with the same settings checks the finished chunks (every file against its
        sha256), writes again the ones that fail (with a ``UserWarning`` naming them) and the ones missing, so
        an interrupted or damaged save is resumed and repaired by repeating the call. ``root`` must be new,
        empty, or hold this dataset: a folder with other files or other settings is refused before anything is
        written. An OS lock on ``root`` lets processes save identical or disjoint ``[start, stop)`` ranges into
        it at the same time (with one ``chunk_size``); the call that completes the last range writes the
        manifest. The disk space needed is estimated first (as uncompressed pixels) and a save that cannot
        fit is refused; a disk that fills up anyway ends the save with everything finished kept. Encoding and
        hashing run on writer threads while the next chunk is generated, with the serial writer's bytes and
        order; ``$CFAUG_WRITER_THREADS`` sets their number (0: write serially).

        Args:
            root: the output folder (created if needed).
            format: ``"png"`` or ``"safetensors"``.
            start: first index to write.
            stop: one past the last index to write; ``len(self)`` when ``None``.
            chunk_size: items per chunk: the unit of resuming, and the shard size of ``"safetensors"``.
                Chunks lie on multiples of ``chunk_size``, so the files do not depend on interruptions
                (shards of ``"safetensors"`` also start at each range's ``start``; their items do not change).
            num_workers: DataLoader workers that generate and write chunks in parallel (0: this process).
            batch_size: items generated per backend call. On a GPU a batch of 32-64 is many times faster than 1.
                Batches lie on multiples of ``batch_size`` inside each chunk, so ranges, ranks and interruptions
                do not change them. Each item keeps its own seed, but convolutions sum in another order for
                another batch size: a pixel may then differ by one 8-bit level from what ``dataset[i]`` gives.
            progress: show a progress bar.

        Returns:
            Whether the whole dataset is now on disk and ``manifest.json`` written.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: an argument has an invalid value, or the channels cannot be stored as PNG.
            SavedDatasetError: ``root`` holds other files or a dataset saved with other settings, another
                process saves into it with another chunk grid, or the disk is (or gets) too full.
        """
        report = self._save(root, format, start, stop, chunk_size, num_workers, batch_size, progress)
        if report.repaired:
            warnings.warn(
                f"{len(report.repaired)} finished chunk(s) of {os.fspath(root)!r} failed their check and were "
                "written again: " + "; ".join(report.repaired),
                UserWarning,
                stacklevel=2,
            )
        return report.complete

    def _save(
        self,
        root: str | os.PathLike[str],
        format: str,
        start: int,
        stop: int | None,
        chunk_size: int,
        num_workers: int,
        batch_size: int,
        progress: bool,
    ) -> SaveReport:
        """``save``, returning what it did (the distributed save reports repairs from every rank)."""
        fmt = verify_str_arg(format, "format", SAVE_FORMATS)
        start = check_positive_int(start, "start", allow_zero=True)
        start, stop = check_range(start, stop, self.size)
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        num_workers = check_positive_int(num_workers, "num_workers", allow_zero=True)
        batch_size = check_positive_int(batch_size, "batch_size")
        if fmt == "png" and self.backend.channels not in (1, 3):
            raise ValueError(
                f"format='png' stores 1 or 3 channels, but backend {self.backend_name!r} makes "
                f"{self.backend.channels}-channel images; use format='safetensors'."
            )
        return write_range(self, Path(root), fmt, start, stop, chunk_size, num_workers, batch_size, progress)

    @staticmethod
    def finalize(root: str | os.PathLike[str]) -> Path:
        """Merge the chunks of a dataset saved in several ranges into ``labels.csv`` and ``manifest.json``.

        ``save`` calls this itself when it completes the last missing range; call it as a separate
        step after distributed saves, e.g. on rank 0 after a barrier. Merging twice gives the same files.

        Returns:
            The path of ``manifest.json``.

        Raises:
            SavedDatasetError: indices are missing, chunks overlap, a file is missing, or the ranges were
                saved with different settings.
        """
        return finalize(root)

    @staticmethod
    def load(root: str | os.PathLike[str], **kwargs: Any) -> SavedCounterfactualDataset:
        """Read a dataset written by ``save``; ``kwargs`` go to ``SavedCounterfactualDataset``."""
        return SavedCounterfactualDataset(root, **kwargs)


# ------------------------------------------------------------------------------------------- the saved dataset
class SavedCounterfactualDataset(VisionDataset):
    """A counterfactual dataset read from the files ``CounterfactualDataset.save`` wrote.

    Items have the interface of ``CounterfactualDataset``: a float image ``(C, H, W)`` in [0, 1] (the
    stored 8-bit values divided by 255) and the shape class or the three classes as target.

    Args:
        root: the folder given to ``CounterfactualDataset.save``.
        target: ``"shape"`` or ``"all"``; the target the dataset was saved with when ``None``.
        transform: applied to the image tensor.
        target_transform: applied to the target.
        verify: check on opening that the manifest is complete, ``labels.csv`` matches its digest and every
            file exists, and check each file's sha256 when it is read (PNGs on every read, shards once per
            process). ``verify`` hashes everything at once.

    Raises:
        SavedDatasetError: the folder holds no finished dataset, or a file is missing or corrupted.

    Examples:
        >>> saved = SavedCounterfactualDataset("cf_colored_mnist", target="all")  # doctest: +SKIP
        >>> image, (shape, texture, background) = saved[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        target: str | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        verify: bool = True,
    ) -> None:
        super().__init__(
            root=Path(root),
            transform=_check_callable(transform, "transform"),
            target_transform=_check_callable(target_transform, "target_transform"),
        )
        if not isinstance(verify, bool):
            raise TypeError(f"`verify` should be a bool, but got {type(verify).__name__} {verify!r}.")
        self.verify_reads = verify
        self.manifest = self._read_manifest()
        self.target = verify_str_arg(self.manifest["target"] if target is None else target, "target", TARGETS)
        self.format = self.manifest["format"]
        size = self.manifest["size"]
        labels_path = self.root / _LABELS
        labels = read_inside(self.root, _LABELS, _MANIFEST)
        if verify and hashlib.sha256(labels).hexdigest() != self.manifest["labels_sha256"]:
            raise SavedDatasetError(
                f"{str(labels_path)!r} does not match the sha256 in {_MANIFEST}; the file was changed or is corrupted."
            )
        rows = _parse_rows(labels, repr(str(labels_path)))
        if len(rows) != size:
            raise SavedDatasetError(f"{str(labels_path)!r} should list the indices 0 to {size - 1} in order.")
        # Paths, classes and indices are checked whatever `verify` says: the sha256 values catch accidents, these
        # checks a rewritten CSV (a path leaving the folder, a label outside the classes).
        check_rows(rows, 0, self.format, _width(size), self.manifest["num_classes"], repr(str(labels_path)))
        # Compact per-row storage: a million items cost ~70 MB as tensors, several times that as Python tuples.
        self._labels = torch.tensor([row[1:5] for row in rows], dtype=torch.int64).reshape(-1, 4)
        self._files = sorted({row[5] for row in rows})
        file_ids = {name: k for k, name in enumerate(self._files)}
        self._file_of = torch.tensor([file_ids[row[5]] for row in rows], dtype=torch.int64)
        # Row of each item within its file (always 0 for PNGs): items of one shard are consecutive.
        first_row: dict[str, int] = {}
        self._offset_of = torch.tensor([row[0] - first_row.setdefault(row[5], row[0]) for row in rows])
        self._first_row_of_file = [first_row[name] for name in self._files]
        self._sha = torch.frombuffer(bytearray(bytes.fromhex("".join(row[6] for row in rows))), dtype=torch.uint8)
        self._sha = self._sha.reshape(-1, 32)
        if verify:
            for name in self._files:
                if not (self.root / name).is_file():
                    raise SavedDatasetError(f"{str(self.root / name)!r}, listed in {_LABELS}, is missing.")
        self._shards: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / _MANIFEST
        if not path.is_file():
            parts = _read_ranges(self.root / "parts", "json")
            if parts:
                size = _read_json(parts[0][2]).get("size")
                done = sum(hi - lo for lo, hi, _ in _read_ranges(self.root / "records", "csv"))
                raise SavedDatasetError(
                    f"{str(self.root)!r} holds an unfinished save ({done} of {size} items, no {_MANIFEST}). "
                    "Finish it by calling CounterfactualDataset.save() again with the same settings, or "
                    "CounterfactualDataset.finalize() once every range is saved."
                )
            raise SavedDatasetError(
                f"{str(self.root)!r} holds no saved counterfactual dataset ({_MANIFEST} not found)."
            )
        return check_manifest(_read_json(path), path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = OrderedDict()  # each process reads (and verifies) the shards it needs itself
        return state

    def __len__(self) -> int:
        return len(self._labels)

    def info(self, index: int) -> CounterfactualInfo:
        """The classes and per-sample seed of item ``index``, as saved."""
        i = _check_index(index, len(self))
        shape, texture, background, seed = self._labels[i].tolist()
        return CounterfactualInfo(index=i, shape=shape, texture=texture, background=background, seed=seed)

    def _read_checked(self, relpath: str, expected: bytes, check: bool) -> bytes:
        # read_inside refuses a path leading outside the folder and anything but a regular file (/dev/zero).
        data = read_inside(self.root, relpath, _LABELS)
        if check and hashlib.sha256(data).digest() != expected:
            raise SavedDatasetError(
                f"{str(self.root / relpath)!r} does not match its sha256 in {_LABELS} ({expected.hex()}); "
                "it is corrupted."
            )
        return data

    def _shard(self, k: int) -> dict[str, torch.Tensor]:
        relpath = self._files[k]
        if relpath not in self._shards:
            first = self._first_row_of_file[k]
            data = self._read_checked(relpath, bytes(self._sha[first].tolist()), self.verify_reads)
            try:
                shard = _safetensors_load(data)
            except Exception as error:  # safetensors raises its own error types for a damaged header
                raise SavedDatasetError(f"{str(self.root / relpath)!r} is not a safetensors file: {error}") from None
            self._check_shard(relpath, shard, first, int((self._file_of == k).sum()))
            self._shards[relpath] = shard
            while len(self._shards) > 2:  # a DataLoader reads mostly sequentially within a worker
                self._shards.popitem(last=False)
        return self._shards[relpath]

    def _check_shard(self, relpath: str, shard: dict[str, torch.Tensor], first: int, count: int) -> None:
        """The labels stored in a shard must be those of ``labels.csv``, and its images of the manifest's shape."""
        m = self.manifest
        images = shard.get("images")
        expected = (count, m["channels"], m["image_size"], m["image_size"])
        problem = None
        if images is None or images.dtype != torch.uint8 or tuple(images.shape) != expected:
            problem = f"its images should be uint8 {expected}"
        else:
            stored = [shard.get(name) for name in ("index", "shape", "texture", "background", "seed")]
            wanted = torch.cat([torch.arange(first, first + count)[:, None], self._labels[first : first + count]], 1)
            if any(t is None or t.shape != (count,) for t in stored) or not torch.equal(torch.stack(stored, 1), wanted):
                problem = f"its labels differ from those of {_LABELS}"
        if problem:
            raise SavedDatasetError(f"{str(self.root / relpath)!r} does not match the dataset: {problem}.")

    def image(self, index: int) -> torch.Tensor:
        """The stored image of item ``index`` as floats ``(C, H, W)`` in [0, 1], before ``transform``."""
        i = _check_index(index, len(self))
        k = int(self._file_of[i])
        if self.format == "png":
            relpath = self._files[k]
            pixels = _decode_png(self._read_checked(relpath, bytes(self._sha[i].tolist()), self.verify_reads))
            side, channels = self.manifest["image_size"], self.manifest["channels"]
            if tuple(pixels.shape) != (channels, side, side):
                raise SavedDatasetError(
                    f"{str(self.root / relpath)!r} holds a {tuple(pixels.shape)} image, but the dataset's images "
                    f"are {(channels, side, side)}."
                )
        else:
            pixels = self._shard(k)["images"][int(self._offset_of[i])]
        return pixels.float().div_(255)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        info = self.info(index)
        image: Any = self.image(info.index)
        target: Any = _target_of(info, self.target)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def verify(self) -> None:
        """Hash every file and compare it with ``labels.csv``; every bad file is listed, not only the first.

        Raises:
            SavedDatasetError: files are missing, lead outside the folder, are not regular files or do not match
                their sha256; the message names each one (the list is also in the error's ``problems``).
        """
        problems = []
        for k, relpath in enumerate(self._files):
            try:
                self._read_checked(relpath, bytes(self._sha[self._first_row_of_file[k]].tolist()), True)
            except SavedDatasetError as error:
                problems.append(str(error))
        if problems:
            error = SavedDatasetError(
                f"{len(problems)} of the {len(self._files)} files of {str(self.root)!r} failed their check: "
                + " | ".join(problems)
                + " Run CounterfactualDataset.save() (or cfaug generate) again with the same settings to repair them."
            )
            error.problems = problems  # type: ignore[attr-defined]
            raise error

    def extra_repr(self) -> str:
        """The saved settings shown by ``repr``."""
        m = self.manifest
        return "\n".join(
            [
                f"Backend: {m['backend']} (weights {m['weights']!r})",
                f"Seed: {m['seed']}",
                f"Vary: {tuple(m['vary'])}",
                f"Target: {self.target}",
                f"Format: {self.format}",
            ]
        )


# ------------------------------------------------------------------------------------------------- mixing
class MixedDataset(Dataset):
    """Real and counterfactual items mixed at a fixed ratio, the same for the same seed.

    A fixed, seeded choice of ``round(counterfactual_fraction * size)`` positions holds counterfactual items
    (taken in order, cycling if needed); the other positions hold real items, in a seeded order that uses
    every real item once before any repeats. With ``size=None`` the dataset is just large enough to hold
    every real item once. Shuffle it with the DataLoader as usual.

    Both datasets must return items of one format. Counterfactual items are float tensors ``(C, H, W)`` in
    [0, 1] and the shape class as target, so give the real dataset transforms that produce the same, e.g.
    for MNIST with a 3-channel 32x32 backend::

        from torchvision.transforms import v2
        to_cf_format = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((32, 32)), v2.RGB()])
        real = torchvision.datasets.MNIST(root, train=True, transform=to_cf_format)
        cf = CounterfactualDataset("mnist", weights="colored_mnist", size=60_000)
        train = MixedDataset(real, cf, counterfactual_fraction=0.5)

    Apply the training augmentation and normalisation after mixing (e.g. on the batch), or give both
    datasets the same ``transform``. With ``target="all"`` on the counterfactual side, give the real dataset a
    ``target_transform`` that returns ``(label, label, label)``.

    Args:
        real: a map-style dataset of real items.
        counterfactual: a map-style dataset of counterfactual items (any sized dataset works).
        counterfactual_fraction: the share of counterfactual items, in [0, 1].
        size: number of items; ``None`` for ``ceil(len(real) / (1 - counterfactual_fraction))``, or
            ``len(counterfactual)`` when the fraction is 1.
        seed: seeds the choice of positions and the order of real items; a non-negative integer.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument has an invalid value, or a dataset that must supply items is empty.
    """

    def __init__(
        self,
        real: Dataset,
        counterfactual: Dataset,
        counterfactual_fraction: float = 0.5,
        size: int | None = None,
        seed: int = 0,
    ) -> None:
        for arg, value in (("real", real), ("counterfactual", counterfactual)):
            if not (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
                raise TypeError(
                    f"`{arg}` should be a map-style dataset (with __getitem__ and __len__), but got "
                    f"{type(value).__name__}."
                )
        self.real, self.counterfactual = real, counterfactual
        self.counterfactual_fraction = check_probability(counterfactual_fraction, "counterfactual_fraction")
        self.seed = _check_seed(seed)
        # Exact rational arithmetic: 0.3 must give 7 real items out of 10, not 11 items from 7 / 0.7000000000000001.
        fraction = Fraction(self.counterfactual_fraction).limit_denominator(1_000_000)
        if size is None:
            if fraction == 1:
                size = len(counterfactual)
                num_cf = size
            else:
                size = math.ceil(len(real) / (1 - fraction))
                num_cf = size - len(real)
        else:
            size = check_positive_int(size, "size")
            num_cf = math.floor(size * fraction + Fraction(1, 2))
        if size <= 0:
            raise ValueError(f"`size` should be positive, but the datasets give {size} items; pass `size`.")
        self.size, self.num_counterfactual = size, num_cf
        for arg, value, needed in (("real", real, size - num_cf), ("counterfactual", counterfactual, num_cf)):
            if needed and len(value) == 0:
                raise ValueError(f"`{arg}` is empty, but {needed} of the {size} items should come from it.")
        positions = torch.Generator().manual_seed(mix_seed(seed, 0))
        is_cf = torch.zeros(size, dtype=torch.bool)
        is_cf[torch.randperm(size, generator=positions)[:num_cf]] = True
        # Rank of each position among the positions of its own source.
        rank = torch.where(is_cf, is_cf.cumsum(0) - 1, (~is_cf).cumsum(0) - 1)
        self._is_cf = is_cf
        self._source_index = rank.clone()
        if num_cf:
            self._source_index[is_cf] = rank[is_cf] % len(counterfactual)
        if size - num_cf:
            real_order = torch.randperm(len(real), generator=torch.Generator().manual_seed(mix_seed(seed, 1)))
            self._source_index[~is_cf] = real_order[rank[~is_cf] % len(real)]

    def __len__(self) -> int:
        return self.size

    def is_counterfactual(self, index: int) -> bool:
        """Whether item ``index`` comes from the counterfactual dataset."""
        return bool(self._is_cf[_check_index(index, self.size)])

    def source(self, index: int) -> tuple[str, int]:
        """Which dataset item ``index`` comes from (``"real"`` or ``"counterfactual"``) and its index there."""
        i = _check_index(index, self.size)
        return ("counterfactual" if self._is_cf[i] else "real"), int(self._source_index[i])

    def __getitem__(self, index: int) -> Any:
        name, inner = self.source(index)
        return (self.counterfactual if name == "counterfactual" else self.real)[inner]

    def __repr__(self) -> str:
        lines = [
            f"Number of datapoints: {self.size}",
            f"Counterfactual fraction: {self.counterfactual_fraction} ({self.num_counterfactual} items)",
            f"Seed: {self.seed}",
        ]
        for name, value in (("Real", self.real), ("Counterfactual", self.counterfactual)):
            inner = repr(value).splitlines()
            lines += [f"{name}: {inner[0]}", *("  " + line for line in inner[1:])]
        return "\n".join([f"Dataset {type(self).__name__}", *("    " + line for line in lines)])
