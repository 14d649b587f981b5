"""The on-disk layout of a saved counterfactual dataset: file names, the PNG codec, JSON and CSV records.

Helpers of ``cfaug.datasets.store`` (which describes the layout in its docstring); kept apart so that the store
module holds the logic of saving and checking, and these the byte formats it reads and writes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from cfaug._utils import atomic_write
from cfaug.backends.base import MECHANISMS
from cfaug.datasets._folder import SavedDatasetError

_LABEL_COLUMNS = ("index", *MECHANISMS, "seed", "file", "sha256")
_RANGE_NAME = re.compile(r"^(\d+)-(\d+)\.(csv|json)$")
_SHARD_NAME = re.compile(r"^shards/(\d+)-(\d+)\.safetensors$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST = "manifest.json"
_LABELS = "labels.csv"
_IMAGES_PER_FOLDER = 1000


def _width(size: int) -> int:
    """Digits of the zero-padded numbers in file names, so that names sort like the indices they hold."""
    return max(6, len(str(size)))


def _range_name(lo: int, hi: int, width: int, suffix: str) -> str:
    return f"{lo:0{width}d}-{hi:0{width}d}.{suffix}"


def _png_relpath(index: int, width: int) -> str:
    return f"images/{index // _IMAGES_PER_FOLDER:0{width}d}/{index:0{width}d}.png"


def _shard_relpath(lo: int, hi: int, width: int) -> str:
    return "shards/" + _range_name(lo, hi, width, "safetensors")


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


def _parse_rows(data: bytes, source: str) -> list[tuple[int, int, int, int, int, str, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SavedDatasetError(f"{source} is not UTF-8 text: {error}.") from None
    reader = csv.reader(io.StringIO(text))
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
