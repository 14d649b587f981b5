"""The batch PNG encoder of ``save``: Pillow's bytes, for every row filter and for images split into several IDATs."""

from __future__ import annotations

import io
import zlib

import numpy as np
import PIL.features
import PIL.Image
import pytest
import torch

from cfaug.datasets._png import encode_pngs

SAME_ZLIB = PIL.features.version("zlib") == zlib.ZLIB_RUNTIME_VERSION


def pillow_png(image: torch.Tensor) -> bytes:
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def images(kind: str, count: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Images that make each PNG filter win on some rows: noise, gradients, sparse strokes, flat colour."""
    rng = np.random.default_rng(seed)
    shape = (count, channels, height, width)
    if kind == "noise":
        array = rng.integers(0, 256, shape)
    elif kind == "smooth":
        rows, cols = np.mgrid[:height, :width]
        waves = 60 * np.sin(rows / 5 + rng.uniform(0, 6, (count, channels, 1, 1))) + 50 * np.cos(cols / 7)
        array = 128 + waves + rng.normal(0, rng.uniform(0, 6), shape)
    elif kind == "sparse":
        array = np.where(rng.random(shape) < 0.15, rng.integers(0, 256, shape), 0)
    else:
        array = np.full(shape, rng.integers(0, 256))
    return torch.from_numpy(np.clip(array, 0, 255).astype(np.uint8))


@pytest.mark.skipif(not SAME_ZLIB, reason="Pillow links another zlib than Python's: deflate bytes may differ")
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["noise", "smooth", "sparse", "flat"])
@pytest.mark.parametrize("size", [(32, 32), (28, 28), (1, 1), (3, 17), (40, 24)])
def test_bytes_are_pillows(channels, kind, size):
    batch = images(kind, 6, channels, *size)
    assert encode_pngs(batch) == [pillow_png(image) for image in batch]


@pytest.mark.skipif(not SAME_ZLIB, reason="Pillow links another zlib than Python's: deflate bytes may differ")
@pytest.mark.parametrize("size", [(160, 160), (4, 20000)])
def test_large_images_split_their_data_as_pillow_does(size):
    # Noise does not compress: more than 64 KiB of IDAT, cut where Pillow cuts (also past 4 * width = 80,000).
    image = images("noise", 1, 3, *size)[0]
    data = encode_pngs([image])[0]
    assert data == pillow_png(image)
    assert data.count(b"IDAT") > 1


def test_mixed_shapes_and_the_pixels_come_back():
    batch = [images("smooth", 1, 3, 9, 11, seed=1)[0], images("sparse", 1, 1, 5, 4, seed=2)[0]] * 2
    for image, data in zip(batch, encode_pngs(batch), strict=True):
        with PIL.Image.open(io.BytesIO(data)) as decoded:
            array = np.asarray(decoded)
        assert np.array_equal(array.reshape(image.shape[1], image.shape[2], -1), image.permute(1, 2, 0).numpy())


def test_bad_images_are_named():
    with pytest.raises(TypeError, match=r"uint8 tensors, but got a torch.float32 tensor"):
        encode_pngs(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"C 1 to 4, but got shape \(5, 4, 4\)"):
        encode_pngs(torch.zeros(1, 5, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"but got shape \(3, 0, 4\)"):
        encode_pngs([torch.zeros(3, 0, 4, dtype=torch.uint8)])
