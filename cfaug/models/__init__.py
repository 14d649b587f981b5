"""Every network cfaug builds, apart from the backends that wrap them (``cfaug.backends`` are adapters).

* ``cfaug.models.mnist_cgn``: the MNIST CGN mechanisms (shape, texture, background), the shuffler and the
  mask estimators (``LiteMaskEstimator``, ``MaskEstimator``); ``cfaug.models.mnist_cgn_fused``: their fused,
  no-autograd inference copy;
* ``cfaug.models.biggan``: BigGAN-deep configs, build, load and save (the ImageNet CGN's mechanisms); it needs
  the ``imagenet`` extra to run, so its names stay in that module rather than here;
* ``cfaug.models.u2net``: the frozen U2-Net mask network of the ImageNet CGN;
* ``cfaug.models.classifiers``: the classifiers of the evaluations (the ImageNet ensemble, the MNIST shape
  classifier) and their save/load;
* ``cfaug.models.discriminators``, ``cfaug.models.feature_network``: the MNIST CGN's discriminators and the VGG16
  of its perceptual loss; ``cfaug.models.mask_classifier``: the classifier of the shape teacher.

This package imports nothing from ``cfaug.backends``, ``cfaug.training``, ``cfaug.evaluation`` or
``cfaug.datasets``.
"""

from __future__ import annotations

from cfaug.models.classifiers import (
    EnsembleClassifier,
    ShapeClassifier,
    TinyCNN,
    build_backbone,
    list_backbones,
    load_classifier,
    save_classifier,
)
from cfaug.models.discriminators import DISCRIMINATORS, DiscConv, DiscLin, build_discriminator
from cfaug.models.feature_network import FeatureNetwork, FeatureNetworkError, build_feature_network
from cfaug.models.mask_classifier import MaskClassifier
from cfaug.models.mnist_cgn import (
    MASK_CLAMP,
    MASK_ESTIMATOR_ARCHS,
    LiteMaskEstimator,
    MaskEstimator,
    build_mask_estimator,
    cyclic_shift,
    random_shift_offsets,
    shape_net,
    texture_net,
)
from cfaug.models.mnist_cgn_fused import FusedShapeNet, FusedTextureNet, fuse_mask_estimator
from cfaug.models.u2net import U2NET_VARIANTS, U2NET_WEIGHTS, U2Net, build_u2net, convert_u2netp_onnx

__all__ = [
    "DISCRIMINATORS",
    "MASK_CLAMP",
    "MASK_ESTIMATOR_ARCHS",
    "U2NET_VARIANTS",
    "U2NET_WEIGHTS",
    "DiscConv",
    "DiscLin",
    "EnsembleClassifier",
    "FeatureNetwork",
    "FeatureNetworkError",
    "FusedShapeNet",
    "FusedTextureNet",
    "LiteMaskEstimator",
    "MaskClassifier",
    "MaskEstimator",
    "ShapeClassifier",
    "TinyCNN",
    "U2Net",
    "build_backbone",
    "build_discriminator",
    "build_feature_network",
    "build_mask_estimator",
    "build_u2net",
    "convert_u2netp_onnx",
    "cyclic_shift",
    "fuse_mask_estimator",
    "list_backbones",
    "load_classifier",
    "random_shift_offsets",
    "save_classifier",
    "shape_net",
    "texture_net",
]
