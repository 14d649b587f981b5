"""The on-disk store of counterfactual datasets: layout, manifest, chunk writer, resume, merge and distributed save.

``cfaug.datasets.counterfactual.CounterfactualDataset.save`` writes through this module, and
``SavedCounterfactualDataset`` reads what it wrote. The layout, readable by other tools::

    root/
      manifest.json            settings + "complete": true, written last, once every index is on disk
      labels.csv               index,shape,texture,background,seed,file,sha256 (one row per item, sorted)
      images/000000/000000.png   (format="png": one lossless 8-bit PNG per item, 1000 per folder)
      shards/000000-000256.safetensors   (format="safetensors": uint8 images plus labels, one file per chunk)
      records/000000-000256.csv  rows of one finished chunk; a chunk is done exactly when its record exists
      parts/000000-001000.json   partial manifest of one ``save(start=..., stop=...)`` call, with its own
                                 "complete" flag

Every file is written atomically, so an interrupted save leaves only whole files. A second ``save`` with the
same settings skips the indices that already have a record and generates the others, so no index goes
missing or appears twice. Disjoint ``start``/``stop`` ranges (one per process rank) write disjoint files;
whichever call completes the last range merges the records into ``labels.csv`` and ``manifest.json``
(or call ``CounterfactualDataset.finalize`` as a separate step).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save as _safetensors_save
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cfaug._utils import atomic_write, check_positive_int
from cfaug.backends.base import MECHANISMS, Backend
from cfaug.datasets._writer import ChunkFile, WriterPool
from cfaug.distributed import all_gather_objects, distributed_info, fail_together, module_digest, rank_range

if TYPE_CHECKING:
    from cfaug.datasets.counterfactual import CounterfactualDataset, CounterfactualInfo

__all__ = [
    "DATASET_FORMAT_VERSION",
    "SAVE_FORMATS",
    "DistributedSaveResult",
    "SavedDatasetError",
    "finalize",
    "save_counterfactuals_distributed",
    "write_range",
]

#: On-disk formats of ``CounterfactualDataset.save``.
SAVE_FORMATS: tuple[str, ...] = ("png", "safetensors")
#: Version of the on-disk layout described in this module's docstring.
DATASET_FORMAT_VERSION = 1

_LABEL_COLUMNS = ("index", *MECHANISMS, "seed", "file", "sha256")
_RANGE_NAME = re.compile(r"^(\d+)-(\d+)\.(csv|json)$")
_MANIFEST = "manifest.json"
_LABELS = "labels.csv"
_IMAGES_PER_FOLDER = 1000
# The settings that define the data: a resumed or merged save must agree on all of them.
_SETTING_KEYS = (
    "dataset_format_version",
    "cfaug_version",
    "backend",
    "weights",
    "weights_sha256",
    "parameters_sha256",
    "arch",
    "num_classes",
    "class_names",
    "image_size",
    "channels",
    "seed",
    "size",
    "vary",
    "target",
    "format",
)


class SavedDatasetError(ValueError):
    """A saved counterfactual dataset is missing, unfinished, corrupted, or was made with other settings."""


def check_range(start: Any, stop: Any, size: int) -> tuple[int, int]:
    """Return ``(start, stop)``, ``stop`` defaulting to ``size``, after checking ``0 <= start < stop <= size``."""
    start = check_positive_int(start, "start", allow_zero=True)
    stop = size if stop is None else check_positive_int(stop, "stop")
    if not start < stop <= size:
        raise ValueError(
            f"`start` and `stop` should satisfy 0 <= start < stop <= {size} (the dataset size), "
            f"but got start={start} and stop={stop}."
        )
    return start, stop


# ----------------------------------------------------------------------------------------------- on-disk layout
def _width(size: int) -> int:
    """Digits of the zero-padded numbers in file names, so that names sort like the indices they hold."""
    return max(6, len(str(size)))


def _range_name(lo: int, hi: int, width: int, suffix: str) -> str:
    return f"{lo:0{width}d}-{hi:0{width}d}.{suffix}"


def _png_relpath(index: int, width: int) -> str:
    return f"images/{index // _IMAGES_PER_FOLDER:0{width}d}/{index:0{width}d}.png"


def _shard_relpath(lo: int, hi: int, width: int) -> str:
    return "shards/" + _range_name(lo, hi, width, "safetensors")


def _encode_png(pixels: torch.Tensor) -> bytes:
    # PIL rather than torchvision.io, whose image codecs are deprecated since torchvision 0.29.
    array = pixels.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_png(data: bytes) -> torch.Tensor:
    with PIL.Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    pixels = torch.from_numpy(array.copy())
    return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    # Round to nearest: loading back as x / 255 is then within 1/510 of the generated float image.
    return image.detach().cpu().mul(255).round_().clamp_(0, 255).to(torch.uint8).contiguous()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as error:
        raise SavedDatasetError(f"{str(path)!r} is not valid JSON: {error}.") from error
    if not isinstance(value, dict):
        raise SavedDatasetError(f"{str(path)!r} should hold a JSON object, but holds {type(value).__name__}.")
    return value


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _csv_bytes(rows: Iterable[Sequence[Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(_LABEL_COLUMNS)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _settings_difference(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}: {found.get(key)!r} (requested {expected.get(key)!r})"
        for key in _SETTING_KEYS
        if expected.get(key) != found.get(key)
    ]


def _parameters_sha256(backend: Backend) -> str:
    """A digest of the backend's tensors, so that a resumed save cannot mix two different models."""
    return module_digest(backend)


def _read_ranges(folder: Path, suffix: str) -> list[tuple[int, int, Path]]:
    """The ``lo-hi.<suffix>`` files of a folder as sorted ``(lo, hi, path)``; temporary files are skipped."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _RANGE_NAME.match(path.name)
        if match and match.group(3) == suffix:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def _covered(root: Path, size: int) -> list[tuple[int, int, Path]]:
    """The finished chunks of a save in progress, checked to lie in ``[0, size)`` without overlapping."""
    records = _read_ranges(root / "records", "csv")
    end = 0
    for lo, hi, path in records:
        if not 0 <= lo < hi <= size:
            raise SavedDatasetError(f"Record {str(path)!r} covers [{lo}, {hi}), outside [0, {size}).")
        if lo < end:
            raise SavedDatasetError(
                f"Record {str(path)!r} overlaps an earlier record (it starts at {lo}, another ends at {end}). "
                "Two saves with overlapping index ranges wrote into this folder; ranges given to "
                "save(start=..., stop=...) in different processes must be disjoint."
            )
        end = hi
    return records


def _missing_chunks(
    covered: Sequence[tuple[int, int, Path]], start: int, stop: int, chunk_size: int
) -> list[tuple[int, int]]:
    """Split the indices of ``[start, stop)`` that no record covers into chunks on the ``chunk_size`` grid."""
    gaps, cursor = [], start
    for lo, hi, _ in covered:
        if hi <= cursor or lo >= stop:
            continue
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < stop:
        gaps.append((cursor, stop))
    chunks = []
    for lo, hi in gaps:
        # Cut on absolute multiples of chunk_size, so that the files do not depend on where a run was interrupted.
        while lo < hi:
            cut = min(hi, (lo // chunk_size + 1) * chunk_size)
            chunks.append((lo, cut))
            lo = cut
    return chunks


# ------------------------------------------------------------------------------------------------- writing
def write_range(
    dataset: CounterfactualDataset,
    root: Path,
    fmt: str,
    start: int,
    stop: int,
    chunk_size: int,
    num_workers: int,
    batch_size: int,
    progress: bool,
) -> bool:
    """Write items ``[start, stop)`` of ``dataset`` (arguments already checked); see ``CounterfactualDataset.save``.

    Returns:
        Whether the whole dataset is now on disk and ``manifest.json`` written.
    """
    root = Path(root)
    settings = dataset.settings(fmt)
    _check_existing_settings(root, settings)
    if (root / _MANIFEST).is_file():
        return True  # finished earlier, with the same settings
    width = _width(dataset.size)
    part = root / "parts" / _range_name(start, stop, width, "json")
    part_info = {**settings, "start": start, "stop": stop, "device": str(dataset.device)}
    _write_json(part, {**part_info, "complete": False})

    chunks = _missing_chunks(_covered(root, dataset.size), start, stop, chunk_size)
    if chunks:
        writer = _ChunkWriter(dataset, root, fmt, chunks, width, batch_size)
        # batch_size=None: each loader item is one whole chunk, generated and written inside the worker.
        loader = DataLoader(writer, batch_size=None, shuffle=False, num_workers=min(num_workers, len(chunks)))
        total = sum(hi - lo for lo, hi in chunks)
        bar = tqdm(total=total, unit="img", desc=f"Saving {root.name or root}", disable=not progress)
        with bar, writer.pool:
            for written in loader:
                bar.update(int(written))
    _write_json(part, {**part_info, "complete": True})

    covered = _covered(root, dataset.size)
    if sum(hi - lo for lo, hi, _ in covered) < dataset.size:
        return False  # other ranges are still missing (another process, or a later call)
    _finalize(root)
    return True


class _ChunkWriter(Dataset):
    """Generates and writes whole chunks; a DataLoader runs it in workers. Item ``k`` writes chunk ``k``."""

    def __init__(
        self,
        dataset: CounterfactualDataset,
        root: Path,
        fmt: str,
        chunks: list[tuple[int, int]],
        width: int,
        batch_size: int,
    ) -> None:
        self.dataset, self.root, self.fmt, self.chunks, self.width = dataset, root, fmt, chunks, width
        self.batch_size = batch_size
        self.pool = WriterPool(root)  # encodes on threads while the next chunk is generated (cfaug.datasets._writer)

    def __len__(self) -> int:
        return len(self.chunks)

    def _images(self, infos: list[CounterfactualInfo]) -> list[torch.Tensor]:
        # Batches cut on absolute multiples of batch_size: the same items share a batch however the work is split.
        images: list[torch.Tensor] = []
        begin = 0
        while begin < len(infos):
            cut = (infos[begin].index // self.batch_size + 1) * self.batch_size
            end = begin + min(len(infos) - begin, cut - infos[begin].index)
            images += list(_to_uint8(self.dataset._generate_batch(infos[begin:end]).image))
            begin = end
        return images

    def __getitem__(self, k: int) -> int:
        lo, hi = self.chunks[k]
        infos = [self.dataset.info(i) for i in range(lo, hi)]
        images = self._images(infos)
        self.pool.submit(lambda: self._files(lo, hi, infos, images))
        return hi - lo

    def _files(self, lo: int, hi: int, infos: list[CounterfactualInfo], images: list[torch.Tensor]) -> list[ChunkFile]:
        """The chunk's files in the order they are written, its record last (runs on a writer thread)."""
        rows, files = [], []
        if self.fmt == "png":
            for info, image in zip(infos, images, strict=True):
                data = _encode_png(image)
                relpath = _png_relpath(info.index, self.width)
                # fsync per small file costs 3x the encoding; the chunk's record below is synced and carries
                # every file's sha256, which loading verifies, so it is the commit point.
                files.append((relpath, data, False))
                rows.append((*_info_row(info), relpath, hashlib.sha256(data).hexdigest()))
        else:

            def column(name: str) -> torch.Tensor:
                return torch.tensor([getattr(info, name) for info in infos], dtype=torch.int64)

            tensors = {"images": torch.stack(images), **{name: column(name) for name in _LABEL_COLUMNS[:5]}}
            # No metadata dict: the header, hence the file's bytes and sha256, depend only on the tensors.
            data = _safetensors_save(tensors)
            relpath = _shard_relpath(lo, hi, self.width)
            files.append((relpath, data, True))
            digest = hashlib.sha256(data).hexdigest()
            rows = [(*_info_row(info), relpath, digest) for info in infos]
        # The record goes last: a chunk counts as done only once all its files are complete on disk.
        return [*files, ("records/" + _range_name(lo, hi, self.width, "csv"), _csv_bytes(rows), True)]


def _info_row(info: CounterfactualInfo) -> tuple[int, int, int, int, int]:
    return info.index, info.shape, info.texture, info.background, info.seed


def _check_existing_settings(root: Path, settings: Mapping[str, Any]) -> None:
    existing = [root / _MANIFEST] if (root / _MANIFEST).is_file() else []
    existing += [path for _, _, path in _read_ranges(root / "parts", "json")]
    for path in existing:
        differences = _settings_difference(settings, _read_json(path))
        if differences:
            raise SavedDatasetError(
                f"{str(root)!r} holds a dataset saved with other settings ({path.relative_to(root)}): "
                + "; ".join(differences)
                + ". Save into another folder, or delete this one to start again."
            )


def _parse_rows(data: bytes, source: str) -> list[tuple[int, int, int, int, int, str, str]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header is None or tuple(header) != _LABEL_COLUMNS:
        raise SavedDatasetError(f"{source} should start with the header {','.join(_LABEL_COLUMNS)}, but got {header}.")
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            if len(row) != len(_LABEL_COLUMNS):
                raise ValueError(f"{len(row)} fields instead of {len(_LABEL_COLUMNS)}")
            rows.append((*(int(v) for v in row[:5]), row[5], row[6]))
        except ValueError as error:
            raise SavedDatasetError(f"{source}, line {line}: {error}.") from error
    return rows  # type: ignore[return-value]


def _finalize(root: Path) -> Path:
    parts = _read_ranges(root / "parts", "json")
    if not parts:
        raise SavedDatasetError(f"{str(root)!r} holds no partial manifest (parts/*.json): nothing was saved there.")
    settings = {key: _read_json(parts[0][2]).get(key) for key in _SETTING_KEYS}
    _check_existing_settings(root, settings)
    size = settings["size"]
    if not isinstance(size, int) or size <= 0:
        raise SavedDatasetError(f"{str(parts[0][2])!r} has an invalid size {size!r}.")
    covered = _covered(root, size)
    done = sum(hi - lo for lo, hi, _ in covered)
    if done < size:
        raise SavedDatasetError(
            f"{str(root)!r} is incomplete: {done} of {size} items are saved. Finish it by calling save() again "
            "with the same settings (for every missing range)."
        )
    body = bytearray(",".join(_LABEL_COLUMNS).encode() + b"\n")
    for lo, hi, path in covered:
        data = path.read_bytes()
        rows = _parse_rows(data, repr(str(path)))
        if [row[0] for row in rows] != list(range(lo, hi)):
            raise SavedDatasetError(f"{str(path)!r} should list the indices {lo} to {hi - 1} in order, but does not.")
        for relpath in sorted({row[5] for row in rows}):
            if not (root / relpath).is_file():
                raise SavedDatasetError(f"{str(root / relpath)!r}, listed in {str(path)!r}, is missing.")
        body += data.split(b"\n", 1)[1]
    with atomic_write(root / _LABELS) as handle:
        handle.write(bytes(body))
    manifest = {
        **settings,
        "complete": True,
        "labels": _LABELS,
        "labels_sha256": hashlib.sha256(body).hexdigest(),
    }
    # The manifest is written last: its presence means every file it describes is in place.
    _write_json(root / _MANIFEST, manifest)
    return root / _MANIFEST


def finalize(root: str | os.PathLike[str]) -> Path:
    """Merge the chunks of a dataset saved in several ranges; see ``CounterfactualDataset.finalize``."""
    return _finalize(Path(root))


# ---------------------------------------------------------------------------------------- the distributed save
@dataclass(frozen=True)
class DistributedSaveResult:
    """What ``save_counterfactuals_distributed`` did.

    Attributes:
        rank: this process's rank.
        world_size: the number of processes that saved.
        start: first index of this rank's share.
        stop: one past the last index of this rank's share (``start == stop``: the rank had nothing to do).
        complete: whether the whole dataset is on disk with its merged ``manifest.json`` (the same on all ranks).
        verified: whether rank 0 checked the manifest, ``labels.csv`` and every file's sha256 (same on all ranks).
    """

    rank: int
    world_size: int
    start: int
    stop: int
    complete: bool
    verified: bool


def save_counterfactuals_distributed(
    dataset: CounterfactualDataset,
    root: str | os.PathLike[str],
    format: str = "png",
    *,
    start: int = 0,
    stop: int | None = None,
    chunk_size: int = 256,
    num_workers: int = 0,
    batch_size: int = 1,
    progress: bool = True,
    verify: bool = True,
) -> DistributedSaveResult:
    """Save ``[start, stop)`` of a counterfactual dataset with every rank of the job writing its own share.

    Each rank calls this with the same dataset (same backend, weights, seed, size) and root. The range is split
    with ``rank_range`` on the ``chunk_size`` grid, so each rank writes whole chunks: the files, ``labels.csv``
    and ``manifest.json`` are byte for byte those of a single process saving the same range. After a barrier,
    rank 0 checks the merged dataset (``verify``: the manifest, the digest of ``labels.csv`` and the sha256 of
    every file) and tells the other ranks the outcome. In a single process this is ``dataset.save`` plus the check.

    Args:
        dataset: the dataset to save; identical on every rank (``save`` refuses mixed settings).
        root: the output folder, on a file system every rank sees.
        format: ``"png"`` or ``"safetensors"``.
        start: first index of the range all ranks save together.
        stop: one past the last index; ``len(dataset)`` when ``None``.
        chunk_size: items per chunk (see ``CounterfactualDataset.save``).
        num_workers: DataLoader workers per rank (0 with a GPU).
        batch_size: items generated per backend call (see ``CounterfactualDataset.save``; 32-64 on a GPU).
        progress: show rank 0's progress bar.
        verify: hash every file once the dataset is complete (rank 0).

    Returns:
        This rank's ``DistributedSaveResult``.

    Raises:
        ValueError: the range is invalid.
        SavedDatasetError: ``root`` holds a dataset with other settings, or the merged dataset fails its check.
    """
    from cfaug.datasets.counterfactual import SavedCounterfactualDataset

    info = distributed_info()
    start, stop = check_range(start, stop, len(dataset))
    lo, hi = rank_range(start, stop, info.rank, info.world_size, align=chunk_size)
    with fail_together("saving its share of the counterfactual dataset"):
        if lo < hi:
            dataset.save(
                root,
                format,
                start=lo,
                stop=hi,
                chunk_size=chunk_size,
                num_workers=num_workers,
                batch_size=batch_size,
                progress=progress and info.is_main,
            )
    # Whichever save completes the last missing range merges the manifest; after the step above (a collective,
    # hence a barrier) every range of this job is on disk, so the manifest exists exactly when the whole
    # dataset does.
    complete = verified = False
    with fail_together("checking the merged dataset"):
        if info.is_main:
            complete = (Path(root) / "manifest.json").is_file()
            if complete and verify:
                SavedCounterfactualDataset(root).verify()
                verified = True
    complete, verified = all_gather_objects((complete, verified))[0]
    return DistributedSaveResult(
        rank=info.rank, world_size=info.world_size, start=lo, stop=hi, complete=complete, verified=verified
    )
