"""``ClassifierConfig``: the recipe of a ``train_classifier`` run, and the fields a resumed run may change.

Split from ``cfaug.training.classifier`` (which re-exports both names); see that module for the training itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cfaug._utils import check_positive_int, verify_str_arg
from cfaug.models.classifiers import list_backbones
from cfaug.training.config import json_ready

__all__ = ["RESUMABLE_CLASSIFIER_FIELDS", "ClassifierConfig"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that defines a training run of the invariant ensemble (see the field comments).

    The defaults are the authors' recipe (notes 3.8) apart from the data paths. Build one and change fields with
    ``dataclasses.replace``.

    Raises:
        TypeError, ValueError: a field has the wrong type or value (checked at construction).
    """

    # ---- data
    real_root: str  # ImageFolder of real training images: <real_root>/<class>/<image>
    counterfactual_root: str | None = None  # a dataset saved by `cfaug generate`; None: real images only
    val_root: str | None = None  # ImageFolder of real validation images: top-1/top-5 after each epoch
    counterfactual_val_root: str | None = None  # a saved counterfactual dataset: each head's accuracy per epoch
    cf_ratio: float = 1.0  # counterfactual images per real image in a step (the authors' cf_ratio)
    image_size: int = 224  # side of the random crops (training) and centre crops (validation)
    # ---- model
    backbone: str = "resnet50"  # see list_backbones(); "tiny_cnn" for tests and smoke runs
    backbone_weights: str | None = "IMAGENET1K_V1"  # torchvision weights name, a file path, or None (random init)
    download: bool = False  # allow downloading named backbone weights that are not in the torch hub cache
    check_hash: bool = True  # check cached torchvision weights against the digest in their file name
    frozen_bn: bool = True  # BatchNorm layers of the backbone stay in eval mode (the authors' setting)
    # ---- optimisation
    seed: int = 0  # seed of the head initialisation, the data order and every augmentation
    epochs: int = 45  # passes over the real images
    batch_size: int = 32  # real images per step, all processes together (the authors: 32 on 1 GPU)
    lr: float = 1e-3  # SGD learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay
    lr_step_epochs: int = 15  # the learning rate is multiplied by lr_gamma every this many epochs
    lr_gamma: float = 0.1
    # ---- monitoring and output
    log_every: int = 100  # steps between stats.jsonl lines
    checkpoint_every: int = 1000  # steps between checkpoints (one is also written after every epoch)
    # ---- execution (may change when a run is resumed)
    device: str = "cpu"  # torch device; "cuda" means each process's own GPU (LOCAL_RANK) under torchrun
    num_workers: int = 4  # DataLoader workers per process (image decoding and augmentation)
    num_threads: int | None = None  # torch.set_num_threads for the run; None: leave as is
    progress: bool = True  # show a progress bar (rank 0)

    def __post_init__(self) -> None:
        for name in ("real_root", "device", "backbone"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"`{name}` should be a non-empty str, but got {getattr(self, name)!r}.")
        for name in ("counterfactual_root", "val_root", "counterfactual_val_root", "backbone_weights"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"`{name}` should be a non-empty str or None, but got {value!r}.")
        verify_str_arg(self.backbone, "backbone", list_backbones())
        for name in ("download", "check_hash", "frozen_bn", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` should be a bool, but got {getattr(self, name)!r}.")
        for name in ("image_size", "epochs", "batch_size", "lr_step_epochs", "log_every", "checkpoint_every"):
            check_positive_int(getattr(self, name), name)
        for name in ("seed", "num_workers"):
            check_positive_int(getattr(self, name), name, allow_zero=True)
        if self.num_threads is not None:
            check_positive_int(self.num_threads, "num_threads")
        for name, positive in (("lr", True), ("cf_ratio", True), ("lr_gamma", True)):
            _check_number(getattr(self, name), name, positive=positive)
        for name in ("momentum", "weight_decay"):
            _check_number(getattr(self, name), name, positive=False)

    @property
    def cf_batch_size(self) -> int:
        """Counterfactual images per step, all processes together (0 without counterfactuals)."""
        if self.counterfactual_root is None:
            return 0
        return max(1, round(self.cf_ratio * self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-serialisable data."""
        return json_ready(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        """Rebuild a config written by ``to_dict`` (e.g. a run's ``config.json``).

        Raises:
            ValueError: ``data`` has keys that are not fields of this config.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown ClassifierConfig fields {unknown}; valid fields are {sorted(names)}.")
        return cls(**dict(data))


#: Fields that may differ between an interrupted run and its resumption: they change how long it runs, how it is
#: observed or where it runs and reads from, not what it computes.
RESUMABLE_CLASSIFIER_FIELDS: frozenset[str] = frozenset(
    {
        "epochs",
        "log_every",
        "checkpoint_every",
        "device",
        "num_workers",
        "num_threads",
        "progress",
        "real_root",
        "counterfactual_root",
        "val_root",
        "counterfactual_val_root",
        "download",
        "check_hash",
    }
)


def _check_number(value: Any, name: str, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"`{name}` should be a finite number, but got {type(value).__name__} {value!r}.")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"`{name}` should be a number {'> 0' if positive else '>= 0'}, but got {value!r}.")
