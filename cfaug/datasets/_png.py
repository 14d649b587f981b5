"""A PNG encoder for many 8-bit images at once, byte for byte the files Pillow writes.

``CounterfactualDataset.save`` encodes its PNGs on writer threads beside the generating thread. Pillow's encoder
holds the GIL for the whole of each image (its row filtering and its deflate), so a writer thread stalled the
generation it should overlap with. This encoder picks the row filters of a whole group of images with numpy and
compresses each image with :mod:`zlib`, both of which release the GIL while they work.

The bytes are Pillow's (``PIL.Image.save(format="PNG")`` with default options, checked by the tests), so datasets
written before and after it have the same files and hashes wherever Pillow and Python link the same zlib:

* the chunks ``IHDR``, ``IDAT`` (split every ``max(65536, 4 * width)`` bytes, Pillow's buffer size) and ``IEND``;
* per row, the filter with the smallest sum of absolute values of the filtered bytes read as signed bytes, among
  None, Up, Sub and Paeth, tried in that order and replaced only by a strictly smaller sum (Average is tried by
  Pillow only with ``optimize=True``); the row above the first one is zeros;
* the rows deflated at level 6 with the ``Z_FILTERED`` strategy, in one zlib stream.

Where Pillow links another zlib than Python's :mod:`zlib`, the deflate bytes may differ (the pixels never do); the
tests say so when they see it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["encode_pngs"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG filter codes in the order Pillow tries them; ties keep the earlier one.
_FILTER_CODES = np.array([0, 2, 1, 4], dtype=np.uint8)  # None, Up, Sub, Paeth
#: Raw bytes filtered in one numpy pass: bounds the temporaries (a few int16 copies) for large images.
_FILTER_BYTES_PER_PASS = 1 << 20
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: L, LA, RGB, RGBA (Pillow's modes)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _filtered_rows(images: np.ndarray) -> np.ndarray:
    """The filtered scanlines of ``(N, H, W, C)`` uint8 images: ``(N, H, 1 + W * C)``, filter code first."""
    count, height, width, channels = images.shape
    row_bytes = width * channels
    # Zeros above the first row and left of the first pixel make the neighbours plain views.
    padded = np.zeros((count, height + 1, row_bytes + channels), dtype=np.int16)
    padded[:, 1:, channels:] = images.reshape(count, height, row_bytes)
    pixel = padded[:, 1:, channels:]
    left, up, up_left = padded[:, 1:, :-channels], padded[:, :-1, channels:], padded[:, :-1, :-channels]
    # Paeth's predictor: the neighbour closest to left + up - up_left, ties to left, then up. Masks times
    # differences rather than np.where, which is several times slower on int16.
    up_step, left_step = up - up_left, left - up_left
    dist_left, dist_up, dist_corner = np.abs(up_step), np.abs(left_step), np.abs(up_step + left_step)
    take_left = (dist_left <= dist_up) & (dist_left <= dist_corner)
    take_up = (dist_up <= dist_corner) & ~take_left
    paeth = up_left + take_left * left_step + take_up * up_step
    # Residues modulo 256 as bytes, in the order of _FILTER_CODES; a byte's cost is min(v, 256 - v).
    candidates = np.stack([pixel, pixel - up, pixel - left, pixel - paeth]).astype(np.uint8)
    costs = np.minimum(candidates, np.negative(candidates)).sum(axis=-1, dtype=np.int32)
    choice = costs.argmin(axis=0).reshape(-1)  # the first minimum: Pillow replaces only on a strictly smaller sum
    rows = np.empty((count, height, 1 + row_bytes), dtype=np.uint8)
    rows[..., 0] = _FILTER_CODES[choice].reshape(count, height)
    row_index = np.arange(choice.size)
    rows[..., 1:] = candidates.reshape(4, -1, row_bytes)[choice, row_index].reshape(count, height, row_bytes)
    return rows


def encode_pngs(images: torch.Tensor | Sequence[torch.Tensor]) -> list[bytes]:
    """Encode 8-bit images as PNG files, the bytes Pillow writes for them.

    Args:
        images: a ``(N, C, H, W)`` uint8 tensor or a sequence of ``(C, H, W)`` ones; ``C`` is 1 (grayscale), 2
            (grayscale and alpha), 3 (RGB) or 4 (RGBA).

    Returns:
        One PNG file per image, in order.

    Raises:
        TypeError: an image is not a uint8 tensor.
        ValueError: an image is not ``(C, H, W)`` with 1 to 4 channels and a non-empty size.
    """
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    for image in images:
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
            kind = f"a {image.dtype} tensor" if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"images should be uint8 tensors, but got {kind}.")
        if image.dim() != 3 or image.shape[0] not in _COLOR_TYPES or image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"images should be (C, H, W) with C 1 to 4, but got shape {tuple(image.shape)}.")
    files: list[bytes] = []
    start = 0
    while start < len(images):
        # A run of images of one shape, small enough to filter in one pass.
        shape = images[start].shape
        per_pass = max(1, _FILTER_BYTES_PER_PASS // images[start].numel())
        stop = start + 1
        while stop < len(images) and stop - start < per_pass and images[stop].shape == shape:
            stop += 1
        # numpy, not torch.stack: a torch op on a writer thread starts its own OpenMP team beside the generating
        # thread's, and on a 2-core CPU the two teams' spinning halved the save rate.
        batch = np.stack([image.numpy() for image in images[start:stop]]).transpose(0, 2, 3, 1)
        files += _encode_same_shape(batch)
        start = stop
    return files


def _encode_same_shape(images: np.ndarray) -> list[bytes]:
    _, height, width, channels = images.shape
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0))
    end = _chunk(b"IEND", b"")
    idat_bytes = max(65536, 4 * width)
    files = []
    for rows in _filtered_rows(images):
        deflate = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
        data = deflate.compress(rows.tobytes()) + deflate.flush()
        idats = [_chunk(b"IDAT", data[i : i + idat_bytes]) for i in range(0, len(data), idat_bytes)]
        files.append(b"".join([_SIGNATURE, header, *idats, end]))
    return files
