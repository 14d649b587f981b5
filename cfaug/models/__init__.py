"""Every network cfaug builds, apart from the backends that wrap them (``cfaug.backends`` are adapters).

* ``cfaug.models.mnist_cgn``: the MNIST CGN mechanisms (shape, texture, background), the shuffler and the
  ``MaskEstimator``; ``cfaug.models.mnist_cgn_fused``: their fused, no-autograd inference copy;
* ``cfaug.models.biggan``: BigGAN-deep configs, build, load and save (the ImageNet CGN's mechanisms);
* ``cfaug.models.u2net``: the frozen U2-Net mask network of the ImageNet CGN;
* ``cfaug.models.classifiers``: the classifiers of the evaluations.

This package imports nothing from ``cfaug.backends``, ``cfaug.training``, ``cfaug.evaluation`` or
``cfaug.datasets``.
"""

from __future__ import annotations

from cfaug.models.biggan import (
    NAMED_BIGGANS,
    biggan_image_size,
    build_biggan,
    check_biggan_config,
    load_biggan,
    prepare_random_biggan,
    resolve_biggan_config,
    save_biggan,
)
from cfaug.models.mnist_cgn import MASK_CLAMP, MaskEstimator, cyclic_shift, random_shift_offsets, shape_net, texture_net
from cfaug.models.mnist_cgn_fused import FusedShapeNet, FusedTextureNet
from cfaug.models.u2net import U2NET_VARIANTS, U2NET_WEIGHTS, U2Net, build_u2net, convert_u2netp_onnx

__all__ = [
    "MASK_CLAMP",
    "NAMED_BIGGANS",
    "U2NET_VARIANTS",
    "U2NET_WEIGHTS",
    "FusedShapeNet",
    "FusedTextureNet",
    "MaskEstimator",
    "U2Net",
    "biggan_image_size",
    "build_biggan",
    "build_u2net",
    "check_biggan_config",
    "convert_u2netp_onnx",
    "cyclic_shift",
    "load_biggan",
    "prepare_random_biggan",
    "random_shift_offsets",
    "resolve_biggan_config",
    "save_biggan",
    "shape_net",
    "texture_net",
]
