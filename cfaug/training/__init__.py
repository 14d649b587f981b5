"""Training the CGN's mechanisms and the paper's classifiers, each as one config-driven, resumable function.

* ``train_cgn_mnist`` (``TrainConfig``, ``get_preset``): the MNIST CGN of the ``mnist`` backend;
* ``train_cgn_imagenet`` (``ImageNetTrainConfig``, ``get_imagenet_preset``): the ImageNet CGN of the ``biggan``
  backend, three fine-tuned BigGAN copies and a frozen U2-Net (``cfaug.training.imagenet``);
* ``train_classifier`` (``ClassifierConfig``): the invariant shape/texture/background classifier ensemble on
  ImageNet and counterfactuals (``cfaug.training.classifier``).

The ImageNet and classifier trainings also run under ``torchrun`` (one process per device).

Examples:
    >>> from cfaug.training import get_preset, train_cgn_mnist
    >>> config = get_preset("colored_mnist", data_root="data")  # doctest: +SKIP
    >>> final = train_cgn_mnist(config, "runs/colored_mnist")  # doctest: +SKIP
    >>> from cfaug.training import get_imagenet_preset, train_cgn_imagenet
    >>> config = get_imagenet_preset("authors", biggan="weights/biggan-deep-256", device="cuda")  # doctest: +SKIP
    >>> final = train_cgn_imagenet(config, "runs/imagenet")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from cfaug.models.feature_network import FeatureNetworkError, build_feature_network

# None of these modules imports torchvision or pytorch_pretrained_biggan when it is imported (only when a network is
# built), so importing cfaug.training stays cheap.
from cfaug.training.classifier import (
    RESUMABLE_CLASSIFIER_FIELDS,
    ClassifierConfig,
    ClassifierTrainer,
    EnsembleClassifier,
    WeightsUnavailableError,
    list_backbones,
    load_classifier,
    save_classifier,
    train_classifier,
)
from cfaug.training.config import AUTHORS_PRESETS, PRESETS, RESUMABLE_FIELDS, TrainConfig, get_preset
from cfaug.training.imagenet import (
    IMAGENET_PRESETS,
    IMAGENET_RESUMABLE_FIELDS,
    ImageNetTrainConfig,
    ImageNetTrainer,
    get_imagenet_preset,
    train_cgn_imagenet,
)
from cfaug.training.imagenet_losses import ImageNetCGNLoss
from cfaug.training.mnist import train_cgn_mnist
from cfaug.training.monitor import MaskCollapseError

__all__ = [
    "AUTHORS_PRESETS",
    "IMAGENET_PRESETS",
    "IMAGENET_RESUMABLE_FIELDS",
    "PRESETS",
    "RESUMABLE_CLASSIFIER_FIELDS",
    "RESUMABLE_FIELDS",
    "ClassifierConfig",
    "ClassifierTrainer",
    "EnsembleClassifier",
    "FeatureNetworkError",
    "ImageNetCGNLoss",
    "ImageNetTrainConfig",
    "ImageNetTrainer",
    "MaskCollapseError",
    "TrainConfig",
    "WeightsUnavailableError",
    "build_feature_network",
    "get_imagenet_preset",
    "get_preset",
    "list_backbones",
    "load_classifier",
    "save_classifier",
    "train_cgn_imagenet",
    "train_cgn_mnist",
    "train_classifier",
]

# The argparse code of ``cfaug train mnist | imagenet | classifier`` moved to ``cfaug.cli.train_*``; these names
# stay importable from here, loaded on first use (cfaug.cli imports this package, so importing it here at once would
# be circular, and it would load the whole command tree: evaluation, datasets, torchvision's models).
_CLI_NAMES = {
    "add_train_classifier_arguments": "train_classifier",
    "run_train_classifier": "train_classifier",
    "add_train_mnist_arguments": "train_mnist",
    "run_train_mnist": "train_mnist",
    "add_train_imagenet_arguments": "train_imagenet",
    "run_train_imagenet": "train_imagenet",
}


def __getattr__(name: str) -> Any:
    if name in _CLI_NAMES:
        import importlib

        return getattr(importlib.import_module(f"cfaug.cli.{_CLI_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
