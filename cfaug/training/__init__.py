"""Training the CGN's mechanisms: the config-driven MNIST CGN recipe.

Examples:
    >>> from cfaug.training import get_preset, train_cgn_mnist
    >>> config = get_preset("colored_mnist", data_root="data")  # doctest: +SKIP
    >>> final = train_cgn_mnist(config, "runs/colored_mnist")  # doctest: +SKIP
"""

from __future__ import annotations

from cfaug.training.cli import add_train_mnist_arguments, run_train_mnist
from cfaug.training.config import AUTHORS_PRESETS, PRESETS, RESUMABLE_FIELDS, TrainConfig, get_preset
from cfaug.training.features import FeatureNetworkError, build_feature_network
from cfaug.training.mnist import train_cgn_mnist
from cfaug.training.monitor import MaskCollapseError

__all__ = [
    "AUTHORS_PRESETS",
    "PRESETS",
    "RESUMABLE_FIELDS",
    "FeatureNetworkError",
    "MaskCollapseError",
    "TrainConfig",
    "add_train_mnist_arguments",
    "build_feature_network",
    "get_preset",
    "run_train_mnist",
    "train_cgn_mnist",
]
