"""Moved to ``cfaug.models.feature_network`` (networks live in ``cfaug.models``); the old import path still works."""

from __future__ import annotations

from cfaug.models.feature_network import (
    IMAGENET_VGG16_FILENAME,
    IMAGENET_VGG16_SHA256_PREFIX,
    RANDOM_VGG16_SEED,
    VGG16_LAYER_INDICES,
    VGG16_LAYER_NAMES,
    FeatureNetwork,
    FeatureNetworkError,
    build_feature_network,
    imagenet_vgg16_cache_path,
)

__all__ = [
    "IMAGENET_VGG16_FILENAME",
    "IMAGENET_VGG16_SHA256_PREFIX",
    "RANDOM_VGG16_SEED",
    "VGG16_LAYER_INDICES",
    "VGG16_LAYER_NAMES",
    "FeatureNetwork",
    "FeatureNetworkError",
    "build_feature_network",
    "imagenet_vgg16_cache_path",
]
