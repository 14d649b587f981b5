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
      .cfaug.lock, .cfaug.claims   empty files the writers' OS locks are taken on (``cfaug.datasets._folder``)

Every file is written atomically, so an interrupted save leaves only whole files. A second ``save`` with the
same settings checks the chunks that already have a record (every file against its sha256), generates again
those that fail and the indices without a record, so no index goes missing, appears twice or stays damaged.
A save writes only into a new or empty folder or one holding this dataset, under the locks of ``_folder``.
Disjoint ``start``/``stop`` ranges (one per process rank) write disjoint files;
whichever call completes the last range merges the records into ``labels.csv`` and ``manifest.json``
(or call ``CounterfactualDataset.finalize`` as a separate step).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import hashlib
import math
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as _safetensors_save
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cfaug._utils import atomic_write, check_positive_int
from cfaug.backends.base import Backend
from cfaug.datasets._folder import (
    Claims,
    SavedDatasetError,
    Writer,
    block_size,
    check_disk_space,
    folder_lock,
    foreign_entries,
    make_folder,
    read_inside,
    remove_temporary_files,
)
from cfaug.datasets._layout import (
    _LABEL_COLUMNS,
    _LABELS,
    _MANIFEST,
    _RANGE_NAME,
    _SHA256,
    _SHARD_NAME,
    _csv_bytes,
    _parse_rows,
    _png_relpath,
    _range_name,
    _read_json,
    _shard_relpath,
    _to_uint8,
    _width,
    _write_json,
)
from cfaug.datasets._png import encode_pngs as _encode_pngs
from cfaug.datasets._writer import ChunkFile, WriterPool
from cfaug.distributed import all_gather_objects, distributed_info, fail_together, module_digest, rank_range
from cfaug.names import VARYING_MECHANISMS

if TYPE_CHECKING:
    from cfaug.datasets.counterfactual import CounterfactualDataset, CounterfactualInfo

__all__ = [
    "DATASET_FORMAT_VERSION",
    "MAX_SIZE",
    "SAVE_FORMATS",
    "TARGETS",
    "DistributedSaveResult",
    "SavedDatasetError",
    "finalize",
    "save_counterfactuals_distributed",
    "write_range",
]

#: ``"shape"``: the target is the shape class; ``"all"``: the ``(shape, texture, background)`` classes.
TARGETS: tuple[str, ...] = ("shape", "all")

#: On-disk formats of ``CounterfactualDataset.save``.
SAVE_FORMATS: tuple[str, ...] = ("png", "safetensors")
#: Version of the on-disk layout described in this module's docstring.
DATASET_FORMAT_VERSION = 1
#: The most items a dataset may have: indices and seeds are stored as int64 (shards, tensors) and ``len()`` of a
#: Python object is bounded by the same number.
MAX_SIZE = 2**63 - 1

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


def check_size(size: Any) -> int:
    """Return ``size`` after checking that it is an integer in ``[1, MAX_SIZE]``."""
    size = check_positive_int(size, "size")
    if size > MAX_SIZE:
        raise ValueError(
            f"`size` should be at most {MAX_SIZE} (2**63 - 1, the most items a dataset can index: indices and "
            f"seeds are stored as 64-bit integers), but got {size}."
        )
    return size


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


# ------------------------------------------------------------------------------------------ checking what is read
def _expected_file(index: int, relpath: str, fmt: str, width: int) -> str | None:
    """Where cfaug puts item ``index``, when ``relpath`` is not there (``None`` when it is)."""
    if fmt == "png":
        expected = _png_relpath(index, width)
        return None if relpath == expected else expected
    match = _SHARD_NAME.match(relpath)
    if match and int(match.group(1)) <= index < int(match.group(2)):
        lo, hi = int(match.group(1)), int(match.group(2))
        if relpath == _shard_relpath(lo, hi, width):
            return None
    return f"shards/<lo>-<hi>.safetensors, {width}-digit numbers with lo <= {index} < hi"


def check_rows(
    rows: Sequence[tuple[int, int, int, int, int, str, str]],
    first: int,
    fmt: str,
    width: int,
    num_classes: int,
    source: str,
) -> None:
    """Check rows read from ``labels.csv`` or a record against the layout, before any file they name is opened.

    The sha256 column catches accidents; these checks catch a rewritten CSV: indices consecutive from ``first``,
    classes among the manifest's ``num_classes``, seeds that fit 63 bits, and file names that are exactly where
    cfaug puts each item (relative, no ``..``, inside the layout's folders).

    Raises:
        SavedDatasetError: the first row that breaks a rule, by line number.
    """
    for line, (index, shape, texture, background, seed, relpath, digest) in enumerate(rows, start=2):
        where = f"{source}, line {line}"
        if index != first + line - 2:
            raise SavedDatasetError(f"{where}: index {index}, but the rows should list {first + line - 2} there.")
        for name, value in (("shape", shape), ("texture", texture), ("background", background)):
            if not 0 <= value < num_classes:
                raise SavedDatasetError(
                    f"{where}: the {name} class {value} is not one of the manifest's {num_classes} classes "
                    f"[0, {num_classes - 1}]."
                )
        if not 0 <= seed <= MAX_SIZE:
            raise SavedDatasetError(f"{where}: the seed {seed} is not a 63-bit seed.")
        expected = _expected_file(index, relpath, fmt, width)
        if expected is not None:
            raise SavedDatasetError(
                f"{where}: item {index} is in {relpath!r}, but cfaug stores it in {expected!r} (file names are "
                "relative to the dataset folder and never leave it)."
            )
        if not _SHA256.match(digest):
            raise SavedDatasetError(f"{where}: {digest!r} is not a sha256 (64 lowercase hex digits).")


def _is_int(value: Any, low: int, high: int = MAX_SIZE) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_manifest(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check the fields of a finished dataset's manifest by type and range; returns it.

    A manifest written before ``target`` was recorded is read with ``target="all"``, what it was saved with.

    Raises:
        SavedDatasetError: a field is missing or has the wrong type or value; the message names the field.
    """
    if manifest.get("complete") is not True:
        raise SavedDatasetError(f"{str(path)!r} is not marked complete; the dataset was not finished.")
    manifest.setdefault("target", "all")
    missing = [key for key in (*_SETTING_KEYS, "labels_sha256") if key not in manifest]
    if missing:
        raise SavedDatasetError(f"{str(path)!r} lacks the fields {missing}.")
    if manifest["dataset_format_version"] != DATASET_FORMAT_VERSION:
        raise SavedDatasetError(
            f"{str(path)!r} has dataset_format_version {manifest['dataset_format_version']!r}; this cfaug reads "
            f"version {DATASET_FORMAT_VERSION}."
        )
    num_classes = manifest["num_classes"]
    names = manifest["class_names"]
    vary = manifest["vary"]
    checks = {
        "format": manifest["format"] in SAVE_FORMATS,
        "target": manifest["target"] in TARGETS,
        "size": _is_int(manifest["size"], 1),
        "seed": _is_int(manifest["seed"], 0),
        "num_classes": _is_int(num_classes, 1, 1 << 31),
        "image_size": _is_int(manifest["image_size"], 1, 1 << 20),
        "channels": _is_int(manifest["channels"], 1, 1 << 16),
        "class_names": isinstance(names, list)
        and all(isinstance(name, str) for name in names)
        and len(names) == num_classes,
        "vary": isinstance(vary, list) and all(isinstance(m, str) and m in VARYING_MECHANISMS for m in vary),
        "backend": isinstance(manifest["backend"], str),
        "labels_sha256": isinstance(manifest["labels_sha256"], str) and bool(_SHA256.match(manifest["labels_sha256"])),
    }
    wrong = [key for key, ok in checks.items() if not ok]
    if wrong:
        shown = ", ".join(f"{key}={manifest[key]!r}" for key in wrong)
        raise SavedDatasetError(f"{str(path)!r} has fields of the wrong type or value: {shown}.")
    return manifest


def _chunk_problem(root: Path, lo: int, hi: int, record: Path, settings: Mapping[str, Any]) -> str | None:
    """What is wrong with the finished chunk ``[lo, hi)``: its record and every file it names, sha256 included."""
    fmt, width = settings["format"], _width(settings["size"])
    source = f"records/{record.name}"
    try:
        rows = _parse_rows(read_inside(root, source, "the chunk's record"), source)
        if len(rows) != hi - lo:
            raise SavedDatasetError(f"{source} lists {len(rows)} items instead of {hi - lo}.")
        check_rows(rows, lo, fmt, width, settings["num_classes"], source)
        for relpath, digest in dict((row[5], row[6]) for row in rows).items():
            if hashlib.sha256(read_inside(root, relpath, source)).hexdigest() != digest:
                raise SavedDatasetError(f"{relpath} does not match its sha256 in {source}.")
    except SavedDatasetError as error:
        return str(error)
    return None


# ------------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class SaveReport:
    """What one save did: whether the dataset is now complete, and the finished chunks it found bad and rewrote.

    Attributes:
        complete: whether the whole dataset is on disk with its ``manifest.json``.
        repaired: one line per finished chunk that failed its check and was generated again.
    """

    complete: bool
    repaired: tuple[str, ...] = ()


class _ChunkPlan(Sequence[tuple[int, int]]):
    """The chunks still to write in ``[start, stop)``, on the ``chunk_size`` grid, computed on demand.

    Memory grows with the number of gaps between finished chunks, never with ``size``: a plan of 10**11 items
    is a few integers.
    """

    def __init__(self, covered: Sequence[tuple[int, int, Path]], start: int, stop: int, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.gaps: list[tuple[int, int]] = []
        cursor = start
        for lo, hi, _ in covered:
            if hi <= cursor or lo >= stop:
                continue
            if lo > cursor:
                self.gaps.append((cursor, lo))
            cursor = max(cursor, hi)
        if cursor < stop:
            self.gaps.append((cursor, stop))
        self.items = sum(hi - lo for lo, hi in self.gaps)
        # Chunks before each gap: chunk k lies in gap bisect_right(self.ends, k).
        self.ends: list[int] = []
        total = 0
        for lo, hi in self.gaps:
            total += (hi - 1) // chunk_size - lo // chunk_size + 1
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, k: int) -> tuple[int, int]:  # type: ignore[override]
        if not 0 <= k < len(self):
            raise IndexError(k)
        g = bisect.bisect_right(self.ends, k)
        lo, hi = self.gaps[g]
        j = k - (self.ends[g - 1] if g else 0)
        # Cut on absolute multiples of chunk_size, so that the files do not depend on where a run was interrupted.
        cell = lo // self.chunk_size + j
        return max(lo, cell * self.chunk_size), min(hi, (cell + 1) * self.chunk_size)


def _bytes_per_item(settings: Mapping[str, Any], root: Path, chunk_size: int) -> int:
    """An upper bound of the disk space one item takes.

    The uncompressed pixels, its two CSV rows, its share of the file system blocks (a PNG takes at least one
    block) and of its chunk's record.
    """
    size, side, channels = settings["size"], settings["image_size"], settings["channels"]
    pixels = channels * side * side
    block = block_size(root)
    rows = 2 * (6 * len(str(size)) + 2 * len(str(MAX_SIZE)) + 64 + 40)
    per_chunk = 2 * block + 512  # the record, plus a shard's header and last block
    if settings["format"] == "png":
        # Row filter bytes, stored-block overhead of zlib and the PNG chunks, rounded up to whole blocks.
        png = pixels + side + 5 * math.ceil(pixels / 65535) + 128
        return math.ceil(png / block) * block + rows + math.ceil(per_chunk / chunk_size) + 8
    return pixels + 5 * 8 + rows + math.ceil(per_chunk / chunk_size)


def _holds_dataset(root: Path) -> bool:
    """Whether ``root`` holds a cfaug marker: a finished save's ``manifest.json`` or a save's ``parts/*.json``."""
    return (root / _MANIFEST).is_file() or bool(_read_ranges(root / "parts", "json"))


def _check_owned(root: Path, settings: Mapping[str, Any]) -> None:
    """Refuse a folder that is not empty and does not hold cfaug's own dataset with the same settings.

    Safe without the folder's lock: a writer writes its ``parts/*.json`` before any data file and never removes
    it, so a file the scan finds was either there before any marker (foreign) or has a marker by the time the
    scan ends. Looking for the markers again after the scan keeps a writer that registered during it from being
    taken for a stranger.
    """
    make_folder(root)
    if not _holds_dataset(root):
        found = foreign_entries(root)
        if found and not _holds_dataset(root):
            raise SavedDatasetError(
                f"{str(root)!r} holds files that cfaug did not write ({', '.join(found)}"
                f"{', ...' if len(found) == 5 else ''}) and no cfaug dataset. cfaug saves only into a new or empty "
                "folder, or one that holds its own dataset with the same settings; choose another folder. "
                "Nothing was written."
            )
    _check_existing_settings(root, settings)


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
) -> SaveReport:
    """Write items ``[start, stop)`` of ``dataset`` (arguments already checked); see ``CounterfactualDataset.save``.

    Raises:
        SavedDatasetError: the folder is not cfaug's, holds other settings, is being written with another chunk
            grid, the disk cannot hold the items, or the disk filled up (everything finished is kept).
    """
    root = Path(root)
    settings = dataset.settings(fmt)
    per_item = _bytes_per_item(settings, root, chunk_size)
    # Before the folder or its lock file is created: a foreign folder or a full disk is refused untouched.
    if root.exists():
        _check_owned(root, settings)
    else:
        check_disk_space(root, (stop - start) * per_item, stop - start)
    with _full_disk_is_one_error(root, dataset.size):
        size, fmt = dataset.size, settings["format"]
        width = _width(size)
        part = root / "parts" / _range_name(start, stop, width, "json")
        part_info = {**settings, "start": start, "stop": stop, "device": str(dataset.device)}
        with folder_lock(root):
            # The settings check, the registration and the partial manifest form one step: a second writer with
            # other settings sees this one's partial manifest and is refused before it writes.
            _check_owned(root, settings)
            writer = Writer(root, chunk_size, start, stop)
            try:
                if not writer.others:
                    remove_temporary_files(root)  # left by a killed writer; nobody else is writing now
                complete = (root / _MANIFEST).is_file()
                covered = _covered(root, size)
                if not complete:
                    plan = _ChunkPlan(covered, start, stop, chunk_size)
                    check_disk_space(root, plan.items * _bytes_per_item(settings, root, chunk_size), plan.items)
                    _write_json(part, {**part_info, "complete": False})
            except BaseException:
                writer.close()  # a refused save leaves no registration behind in this process
                raise
        try:
            claims = Claims(root)
            repaired = _repair(root, covered, start, stop, settings, claims)
            if complete and not repaired and _labels_match(root):
                return SaveReport(True)
            chunk_writer = _ChunkWriter(dataset, root, fmt, width, batch_size, claims)
            bar = tqdm(total=stop - start, unit="img", desc=f"Saving {root.name or root}", disable=not progress)
            with bar:
                bar.update(stop - start - _ChunkPlan(_covered(root, size), start, stop, chunk_size).items)
                # First pass: skip the chunks another writer holds; then wait for those (its writer may have died).
                for wait in (False, True):
                    chunk_writer.plan = _ChunkPlan(_covered(root, size), start, stop, chunk_size)
                    chunk_writer.wait = wait
                    workers = 0 if wait else min(num_workers, len(chunk_writer.plan))
                    loader = DataLoader(chunk_writer, batch_size=None, shuffle=False, num_workers=workers)
                    # Leaving the pool's block waits until every chunk is written: the next plan sees their records.
                    with chunk_writer.pool:
                        for status in loader:
                            if status == _DISK_FULL:
                                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                            bar.update(max(0, int(status)))
            with folder_lock(root):
                _write_json(part, {**part_info, "complete": True})
                covered = _covered(root, size)
                if sum(hi - lo for lo, hi, _ in covered) < size:
                    return SaveReport(False, repaired)  # other ranges are still missing (another process, a later call)
                _finalize(root)
                return SaveReport(True, repaired)
        finally:
            with folder_lock(root):
                writer.close()


@contextlib.contextmanager
def _full_disk_is_one_error(root: Path, size: int) -> Generator[None, None, None]:
    """Turn running out of disk space (ENOSPC, from any write) into one ``SavedDatasetError``."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        done = sum(hi - lo for lo, hi, _ in _covered(root, size))
        raise SavedDatasetError(
            f"The disk holding {str(root)!r} is full (no space left on device): {done} of {size} items are "
            "saved and kept. Free some space and run the same save again to write the rest."
        ) from None


def _labels_match(root: Path) -> bool:
    manifest = _read_json(root / _MANIFEST)
    labels = root / _LABELS
    return labels.is_file() and hashlib.sha256(labels.read_bytes()).hexdigest() == manifest.get("labels_sha256")


def _repair(
    root: Path,
    covered: Sequence[tuple[int, int, Path]],
    start: int,
    stop: int,
    settings: Mapping[str, Any],
    claims: Claims,
) -> tuple[str, ...]:
    """Check every finished chunk of ``[start, stop)``; delete the record of each bad one to have it written again.

    Each check holds the chunk's claim, so that no writer rewrites the chunk meanwhile.
    """
    repaired = []
    for lo, hi, record in covered:
        if hi <= start or lo >= stop:
            continue
        with claims.claim(lo, hi, wait=True):
            if not record.is_file():
                continue  # another writer found it bad first
            problem = _chunk_problem(root, lo, hi, record, settings)
            if problem is not None:
                record.unlink()
                repaired.append(f"[{lo}, {hi}): {problem}")
    if repaired:
        with folder_lock(root):
            # The dataset is incomplete until the chunks are written again.
            (root / _MANIFEST).unlink(missing_ok=True)
    return tuple(repaired)


#: Data files (PNGs, shards) are renamed into place without an fsync of their own. The chunk's record is synced
#: and carries every file's sha256, which loading, ``verify`` and the repair pass of the next save check, so the
#: record is the commit point: a file that a power loss left incomplete fails its sha256 and is written again.
#: An fsync per small PNG costs 3x its encoding; one per shard stalls the committer (and the end of every save)
#: for a disk round trip, which on a busy disk takes far longer than making the shard.
_DATA_FILES_SYNCED = False
#: PNG items per group handed to the writer pool (see ``_ChunkWriter._write_chunk``).
_GROUP_ITEMS = 32
#: One row of a record or of ``labels.csv``: index, shape, texture, background, seed, file, sha256.
_Row = tuple[int, int, int, int, int, str, str]

_DISK_FULL = -1  # what a chunk writer in a DataLoader worker returns for ENOSPC (errno is lost on the way back)


class _ChunkWriter(Dataset):
    """Generates and writes whole chunks; a DataLoader runs it in workers. Item ``k`` writes chunk ``plan[k]``."""

    def __init__(
        self, dataset: CounterfactualDataset, root: Path, fmt: str, width: int, batch_size: int, claims: Claims
    ) -> None:
        self.dataset, self.root, self.fmt, self.width = dataset, root, fmt, width
        self.batch_size, self.claims = batch_size, claims
        self.plan: Sequence[tuple[int, int]] = ()
        self.wait = False
        self.pool = WriterPool(root)  # encodes on threads while the next chunk is generated (cfaug.datasets._writer)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> int:
        """Write chunk ``plan[k]`` unless another writer holds or finished it; returns the items written."""
        lo, hi = self.plan[k]
        if not self.claims.acquire(lo, hi, wait=self.wait):
            return 0  # another writer is writing it; the second pass waits for it
        if self._record(lo, hi).is_file():
            self.claims.release(lo, hi)
            return hi - lo  # another writer finished it
        try:
            # The claim is held until the writer pool has written the chunk's record, not only until it is queued.
            self._write_chunk(lo, hi, release=functools.partial(self.claims.release, lo, hi))
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            return _DISK_FULL
        return hi - lo

    def _record(self, lo: int, hi: int) -> Path:
        return self.root / "records" / _range_name(lo, hi, self.width, "csv")

    def _batches(self, infos: list[CounterfactualInfo]) -> Iterator[tuple[list[CounterfactualInfo], torch.Tensor]]:
        """The chunk's items and their uint8 images, one backend batch at a time.

        Batches are cut on absolute multiples of batch_size: the same items share a batch however the work is split.
        """
        begin = 0
        while begin < len(infos):
            cut = (infos[begin].index // self.batch_size + 1) * self.batch_size
            end = begin + min(len(infos) - begin, cut - infos[begin].index)
            yield infos[begin:end], _to_uint8(self.dataset._generate_batch(infos[begin:end]).image)
            begin = end

    def _write_chunk(self, lo: int, hi: int, release: Callable[[], None]) -> None:
        """Generate items ``[lo, hi)`` and hand their files, then their record, to the pool; ``release()`` after.

        PNG files go to the pool in groups of ``_GROUP_ITEMS`` as soon as they are generated, so that they are
        encoded and written while the rest of the chunk is generated, and a save's last chunk leaves little to
        do once generation ends; a shard needs the whole chunk. The record follows the chunk's last group.
        """
        # Each group's rows, filled by its task on a writer thread; read by the record's task once they are done.
        groups: list[tuple[Future[Sequence[ChunkFile]], list[_Row]]] = []

        def submit(make: Callable[[list[_Row]], Sequence[ChunkFile]]) -> None:
            rows: list[_Row] = []
            groups.append((self.pool.submit(functools.partial(make, rows)), rows))

        try:
            infos = [self.dataset.info(i) for i in range(lo, hi)]
            pending: list[tuple[CounterfactualInfo, torch.Tensor]] = []
            for batch_infos, images in self._batches(infos):
                pending += zip(batch_infos, images, strict=True)
                while self.fmt == "png" and len(pending) >= _GROUP_ITEMS:
                    submit(functools.partial(self._png_files, pending[:_GROUP_ITEMS]))
                    del pending[:_GROUP_ITEMS]
            if self.fmt == "png":
                if pending:
                    submit(functools.partial(self._png_files, pending))
            else:
                submit(functools.partial(self._shard_files, lo, hi, pending))
        except BaseException:
            # Released after the groups already queued are written (their files wait for a later save's record);
            # a pool that failed releases at once and raises its error here, but the first error is the one to tell.
            with contextlib.suppress(Exception):
                self.pool.submit(_no_files, done=release)
            raise
        self.pool.submit(functools.partial(self._record_files, lo, hi, groups), done=release)

    def _png_files(self, items: list[tuple[CounterfactualInfo, torch.Tensor]], rows: list[_Row]) -> list[ChunkFile]:
        """One PNG per item, in index order, with their rows (runs on a writer thread)."""
        files = []
        for (info, _), data in zip(items, _encode_pngs([image for _, image in items]), strict=True):
            relpath = _png_relpath(info.index, self.width)
            files.append((relpath, data, _DATA_FILES_SYNCED))
            rows.append((*_info_row(info), relpath, hashlib.sha256(data).hexdigest()))
        return files

    def _shard_files(
        self, lo: int, hi: int, items: list[tuple[CounterfactualInfo, torch.Tensor]], rows: list[_Row]
    ) -> list[ChunkFile]:
        """The chunk's safetensors shard and its rows (runs on a writer thread)."""
        infos = [info for info, _ in items]

        def column(name: str) -> torch.Tensor:
            return torch.tensor([getattr(info, name) for info in infos], dtype=torch.int64)

        tensors = {"images": torch.stack([image for _, image in items]), **{n: column(n) for n in _LABEL_COLUMNS[:5]}}
        # No metadata dict: the header, hence the file's bytes and sha256, depend only on the tensors.
        data = _safetensors_save(tensors)
        relpath = _shard_relpath(lo, hi, self.width)
        digest = hashlib.sha256(data).hexdigest()
        rows += [(*_info_row(info), relpath, digest) for info in infos]
        return [(relpath, data, _DATA_FILES_SYNCED)]

    def _record_files(
        self, lo: int, hi: int, groups: list[tuple[Future[Sequence[ChunkFile]], list[_Row]]]
    ) -> list[ChunkFile]:
        """The chunk's record, made once every group is: it goes last, as a chunk is done only once all its files are.

        Runs on a writer thread.
        """
        for future, _ in groups:
            future.result()  # submitted before this task: taken by a writer thread first, never waiting behind it
        rows = [row for _, group in groups for row in group]
        return [(str(self._record(lo, hi).relative_to(self.root)), _csv_bytes(rows), True)]


def _no_files() -> Sequence[ChunkFile]:
    return ()


def _info_row(info: CounterfactualInfo) -> tuple[int, int, int, int, int]:
    return info.index, info.shape, info.texture, info.background, info.seed


def _check_existing_settings(root: Path, settings: Mapping[str, Any]) -> None:
    existing = [root / _MANIFEST] if (root / _MANIFEST).is_file() else []
    existing += [path for _, _, path in _read_ranges(root / "parts", "json")]
    for path in existing:
        try:
            recorded = _read_json(path)
        except FileNotFoundError:
            continue  # a repair removed the manifest after it was listed; the parts still hold the settings
        differences = _settings_difference(settings, recorded)
        if differences:
            raise SavedDatasetError(
                f"{str(root)!r} holds a dataset saved with other settings ({path.relative_to(root)}): "
                + "; ".join(differences)
                + ". Save into another folder, or delete this one to start again."
            )


class _FolderListing:
    """Which files exist, from one directory listing per folder: a stat per PNG costs several times more.

    Only the last folder's listing is kept: rows come in index order, so each folder is listed once, and memory
    does not grow with the dataset (a PNG folder holds at most 1000 items).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder: str | None = None
        self.names: frozenset[str] = frozenset()

    def is_file(self, relpath: str) -> bool:
        """Whether ``root/relpath`` is a file (or a link to one), as ``Path.is_file``; ``relpath`` uses ``/``."""
        folder, _, name = relpath.rpartition("/")
        if folder != self.folder:
            try:
                with os.scandir(self.root / folder) as entries:
                    self.names = frozenset(entry.name for entry in entries if entry.is_file())
            except (FileNotFoundError, NotADirectoryError):
                self.names = frozenset()
            self.folder = folder
        return name in self.names


def _finalize(root: Path) -> Path:
    parts = _read_ranges(root / "parts", "json")
    if not parts:
        raise SavedDatasetError(f"{str(root)!r} holds no partial manifest (parts/*.json): nothing was saved there.")
    settings = {key: _read_json(parts[0][2]).get(key) for key in _SETTING_KEYS}
    _check_existing_settings(root, settings)
    size, num_classes = settings["size"], settings["num_classes"]
    if not _is_int(size, 1) or not _is_int(num_classes, 1) or settings["format"] not in SAVE_FORMATS:
        raise SavedDatasetError(f"{str(parts[0][2])!r} has an invalid size, num_classes or format.")
    covered = _covered(root, size)
    done = sum(hi - lo for lo, hi, _ in covered)
    if done < size:
        raise SavedDatasetError(
            f"{str(root)!r} is incomplete: {done} of {size} items are saved. Finish it by calling save() again "
            "with the same settings (for every missing range)."
        )
    body = bytearray(",".join(_LABEL_COLUMNS).encode() + b"\n")
    # PNGs: one listing per folder of 1000; shards: one stat each (a listing of all shards would grow with size).
    is_file = (
        _FolderListing(root).is_file if settings["format"] == "png" else lambda relpath: (root / relpath).is_file()
    )
    for lo, hi, path in covered:
        data = path.read_bytes()
        rows = _parse_rows(data, repr(str(path)))
        if len(rows) != hi - lo:
            raise SavedDatasetError(f"{str(path)!r} should list the indices {lo} to {hi - 1} in order, but does not.")
        check_rows(rows, lo, settings["format"], _width(size), num_classes, repr(str(path)))
        for relpath in sorted({row[5] for row in rows}):
            if not is_file(relpath):
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
    root = Path(root)
    if not root.is_dir():
        raise SavedDatasetError(f"{str(root)!r} is not a folder holding a saved counterfactual dataset.")
    with folder_lock(root):
        return _finalize(root)


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
        repaired: the finished chunks of any rank that failed their check (file sizes and sha256) and were written
            again, one line each (the same on all ranks).
    """

    rank: int
    world_size: int
    start: int
    stop: int
    complete: bool
    verified: bool
    repaired: tuple[str, ...] = ()


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
    chunk_size = check_positive_int(chunk_size, "chunk_size")  # before rank_range, which calls it `align`
    lo, hi = rank_range(start, stop, info.rank, info.world_size, align=chunk_size)
    repaired: tuple[str, ...] = ()
    with fail_together("saving its share of the counterfactual dataset"):
        if lo < hi:
            progress = progress and info.is_main
            repaired = dataset._save(root, format, lo, hi, chunk_size, num_workers, batch_size, progress).repaired
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
    gathered = all_gather_objects((complete, verified, repaired))
    complete, verified = gathered[0][:2]
    return DistributedSaveResult(
        rank=info.rank,
        world_size=info.world_size,
        start=lo,
        stop=hi,
        complete=complete,
        verified=verified,
        repaired=tuple(line for _, _, lines in gathered for line in lines),
    )
