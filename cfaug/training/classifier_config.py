"""``ClassifierConfig``: the recipe of a ``train_classifier`` run, and the fields a resumed run may change.

Split from ``cfaug.training.classifier`` (which re-exports both names); see that module for the training itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cfaug._utils import verify_str_arg
from cfaug.engine.config import Check, Config, integer, number, setting
from cfaug.models.classifiers import list_backbones

__all__ = ["RESUMABLE_CLASSIFIER_FIELDS", "ClassifierConfig"]


def _path(*, optional: bool = False) -> Check:
    """A non-empty str (a path, a device, a weights name), or ``None`` when ``optional``."""

    def check(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            or_none = " or None" if optional else ""
            raise TypeError(f"`{name}` should be a non-empty str{or_none}, but got {value!r}.")
        return value

    return check


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` should be a bool, but got {value!r}.")
    return value


def _backbone(value: Any, name: str) -> str:
    _path()(value, name)
    return verify_str_arg(value, name, list_backbones())


@dataclass(frozen=True)
class ClassifierConfig(Config):
    """Everything that defines a training run of the invariant ensemble (see the field comments).

    The defaults are the authors' recipe (notes 3.8) apart from the data paths. Build one and change fields with
    ``dataclasses.replace``.

    Raises:
        TypeError, ValueError: a field has the wrong type or value (checked at construction).
    """

    # ---- data
    # ImageFolder of real training images: <real_root>/<class>/<image>
    real_root: str = setting(check=_path(), resumable=True)
    # a dataset saved by `cfaug generate`; None: real images only
    counterfactual_root: str | None = setting(None, check=_path(optional=True), resumable=True)
    # ImageFolder of real validation images: top-1/top-5 after each epoch
    val_root: str | None = setting(None, check=_path(optional=True), resumable=True)
    # a saved counterfactual dataset: each head's accuracy per epoch
    counterfactual_val_root: str | None = setting(None, check=_path(optional=True), resumable=True)
    # counterfactual images per real image in a step (the authors' cf_ratio)
    cf_ratio: float = setting(1.0, check=number(positive=True))
    # side of the random crops (training) and centre crops (validation)
    image_size: int = setting(224, check=integer())
    # ---- model
    # see list_backbones(); "tiny_cnn" for tests and smoke runs
    backbone: str = setting("resnet50", check=_backbone)
    # torchvision weights name, a file path, or None (random init)
    backbone_weights: str | None = setting("IMAGENET1K_V1", check=_path(optional=True))
    # allow downloading named backbone weights that are not in the torch hub cache
    download: bool = setting(False, check=_flag, resumable=True)
    # check cached torchvision weights against the digest in their file name
    check_hash: bool = setting(True, check=_flag, resumable=True)
    # BatchNorm layers of the backbone stay in eval mode (the authors' setting)
    frozen_bn: bool = setting(True, check=_flag)
    # ---- optimisation
    seed: int = setting(
        0, check=integer(low=0)
    )  # seed of the head initialisation, the data order and every augmentation
    epochs: int = setting(45, check=integer(), resumable=True)  # passes over the real images
    # real images per step, all processes together (the authors: 32 on 1 GPU)
    batch_size: int = setting(32, check=integer())
    lr: float = setting(1e-3, check=number(positive=True))  # SGD learning rate
    momentum: float = setting(0.9, check=number())  # SGD momentum
    weight_decay: float = setting(1e-4, check=number())  # SGD weight decay
    # the learning rate is multiplied by lr_gamma every this many epochs
    lr_step_epochs: int = setting(15, check=integer())
    lr_gamma: float = setting(0.1, check=number(positive=True))
    # ---- monitoring and output
    log_every: int = setting(100, check=integer(), resumable=True)  # steps between stats.jsonl lines
    # steps between checkpoints (one is also written after every epoch)
    checkpoint_every: int = setting(1000, check=integer(), resumable=True)
    # ---- execution (may change when a run is resumed)
    # torch device; "cuda" means each process's own GPU (LOCAL_RANK) under torchrun
    device: str = setting("cpu", check=_path(), resumable=True)
    # DataLoader workers per process (image decoding and augmentation)
    num_workers: int = setting(4, check=integer(low=0), resumable=True)
    # torch.set_num_threads for the run; None: leave as is
    num_threads: int | None = setting(None, check=integer(optional=True), resumable=True)
    progress: bool = setting(True, check=_flag, resumable=True)  # show a progress bar (rank 0)

    @property
    def cf_batch_size(self) -> int:
        """Counterfactual images per step, all processes together (0 without counterfactuals)."""
        if self.counterfactual_root is None:
            return 0
        return max(1, round(self.cf_ratio * self.batch_size))


#: Fields that may differ between an interrupted run and its resumption: they change how long it runs, how it is
#: observed or where it runs and reads from, not what it computes.
RESUMABLE_CLASSIFIER_FIELDS: frozenset[str] = ClassifierConfig.resumable_fields()
