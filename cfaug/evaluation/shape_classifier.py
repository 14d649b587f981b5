"""The classifier of the Table 2 experiment: its data, its training recipe and its test.

``make_datasets`` gives a variant's biased training split and de-biased test split, ``split_tensors`` composes a
split once as tensors, ``train_shape_classifier`` trains the authors' ``ShapeClassifier`` (the network lives in
:mod:`cfaug.models.classifiers`) on real images, counterfactuals or both, and ``evaluate_classifier`` measures its
digit accuracy, also on the digits that are visible at all (``visible_digits``).

Training is split into the parts it builds once (``build_shape_classifier_parts``: network, optimiser, schedule,
data on the device, shuffling) and one step on a batch of indices (``shape_classifier_step``);
``train_shape_classifier`` drives them with the engine's step loop (``cfaug.engine.run_step_function``), a run
without a folder: nothing is logged or checkpointed, Ctrl-C stops at a step boundary. ``train_classifier`` is its
old name, kept as an alias; the ImageNet ensemble's trainer is a different function of the training package.

Examples:
    >>> train, test = make_datasets("colored_mnist", "data")  # doctest: +SKIP
    >>> model = train_shape_classifier(split_tensors(train), None, epochs=1)  # doctest: +SKIP
    >>> evaluate_classifier(model, test)["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import check_positive_int, verify_str_arg
from cfaug.engine.loop import run_step_function
from cfaug.evaluation._streams import STREAM_INIT, STREAM_SHUFFLE
from cfaug.models.classifiers import ShapeClassifier
from cfaug.names import VARIANTS
from cfaug.seeding import mix_seed

__all__ = [
    "ShapeClassifier",
    "ShapeClassifierParts",
    "build_shape_classifier_parts",
    "evaluate_classifier",
    "make_datasets",
    "shape_classifier_step",
    "split_tensors",
    "train_classifier",
    "train_shape_classifier",
    "visible_digits",
]


# ------------------------------------------------------------------------------------------------ data


def make_datasets(
    variant: str,
    data_root: str | os.PathLike[str],
    texture_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """The variant's biased training split and de-biased test split (``target="all"``).

    Args:
        variant: one of ``VARIANTS``.
        data_root: folder holding torchvision's ``MNIST/``.
        texture_root: Wildlife MNIST texture folder; ``None`` for the built-in procedural textures.
        seed: the datasets' seed (colour jitter, texture crops, the test split's class draws).

    Returns:
        ``(train, test)`` datasets of ``cfaug.datasets``.

    Raises:
        ValueError: unknown ``variant``.
    """
    from cfaug.datasets import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

    verify_str_arg(variant, "variant", VARIANTS)
    if variant == "wildlife_mnist":
        return tuple(
            WildlifeMNIST(data_root, train=train, texture_root=texture_root, seed=seed, target="all")
            for train in (True, False)
        )
    cls = ColoredMNIST if variant == "colored_mnist" else DoubleColoredMNIST
    return cls(data_root, train=True, seed=seed, target="all"), cls(data_root, train=False, seed=seed, target="all")


def visible_digits(dataset: Any) -> torch.Tensor:
    """Which items of a variant dataset show their digit: ``(N,)`` bool.

    Only Double-colored MNIST hides digits: its object colour of class ``o`` is the background colour of class
    ``(o + 4) % 10``, so an item whose classes pair up that way has (up to jitter) one colour inside and outside
    the digit. The comparison uses the palettes, not a hard-coded class offset. Colored MNIST's background is
    black, which no object colour is, and Wildlife MNIST's object and background textures are different photos.

    Args:
        dataset: a ``ColoredMNIST``, ``DoubleColoredMNIST`` or ``WildlifeMNIST``.

    Returns:
        True where the digit is visible.
    """
    from cfaug.datasets import DoubleColoredMNIST
    from cfaug.datasets.mnist_variants import (
        DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE,
        DOUBLE_COLORED_MNIST_OBJECT_PALETTE,
    )

    factors = dataset.factors
    if not isinstance(dataset, DoubleColoredMNIST):
        return torch.ones(len(factors), dtype=torch.bool)
    object_rgb = torch.tensor([rgb for _, rgb in DOUBLE_COLORED_MNIST_OBJECT_PALETTE])
    background_rgb = torch.tensor([rgb for _, rgb in DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE])
    return (object_rgb[factors[:, 1]] != background_rgb[factors[:, 2]]).any(dim=1)


def split_tensors(dataset: Any, limit: int | None = None, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """A variant split as tensors: ``(images, digits)``, images float32 in [0, 1], digits int64.

    The variant datasets are deterministic per item, so the tensors equal what ``dataset.batch`` gives for any
    index. Training loops index them instead of composing every batch again (10 epochs over Wildlife MNIST
    otherwise composite each texture crop ten times), and on a GPU the whole split lives in device memory
    (60,000 images: 737 MB).

    Args:
        dataset: a ``ColoredMNIST``, ``DoubleColoredMNIST`` or ``WildlifeMNIST`` (any ``target``).
        limit: only the first ``limit`` items (``None``: all).
        batch_size: items composed per call.

    Returns:
        ``images`` ``(N, 3, 32, 32)`` and ``digits`` ``(N,)``.

    Raises:
        TypeError, ValueError: ``limit`` or ``batch_size`` is not a positive integer.
    """
    check_positive_int(batch_size, "batch_size")
    num = len(dataset) if limit is None else min(len(dataset), check_positive_int(limit, "limit"))
    images, digits = [], []
    for indices in torch.arange(num).split(batch_size):
        batch_images, targets = dataset.batch(indices)
        images.append(batch_images)
        digits.append(targets[:, 0] if targets.dim() == 2 else targets)
    if not images:
        return torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.int64)
    return torch.cat(images), torch.cat(digits)


# ------------------------------------------------------------------------------------------------ training


@dataclass
class ShapeClassifierParts:
    """What a Table 2 classifier's training builds once: network, optimiser, schedule, data and shuffling.

    The real images (float in [0, 1]) and counterfactuals (uint8) sit on ``device``; a batch is a tensor of indices
    into their union, real images first (``index < num_real``).

    Attributes:
        model: the ``ShapeClassifier`` being trained (in train mode).
        optimizer: Adadelta over its parameters.
        scheduler: the per-epoch learning-rate decay (``scheduler.step()`` after each epoch).
        shuffle: the generator of each epoch's order.
        real_images: ``(num_real, 3, 32, 32)`` float images.
        real_labels: ``(num_real,)`` digits.
        cf_images: ``(num_cf, 3, 32, 32)`` uint8 counterfactuals, or ``None``.
        cf_labels: ``(num_cf,)`` their labels, or ``None``.
        real_transform: applied to the real images of every batch, or ``None``.
        batch_size: images per step.
        device: torch device.
        batch_transform: applied to the real images and labels of every batch (returns the images), or ``None``.
        epoch_length: images per epoch; ``None`` for one pass over real images and counterfactuals. Longer than
            the real images (with no counterfactuals), the real images are looped: every one once in a fresh
            order before any twice, so a per-batch run sees as many images and steps as a saved-set run.
    """

    model: ShapeClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shuffle: torch.Generator
    real_images: torch.Tensor
    real_labels: torch.Tensor
    cf_images: torch.Tensor | None
    cf_labels: torch.Tensor | None
    real_transform: Callable[[torch.Tensor], torch.Tensor] | None
    batch_size: int
    device: str
    batch_transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    epoch_length: int | None = None

    @property
    def num_real(self) -> int:
        """Number of real training images."""
        return len(self.real_labels)

    @property
    def num_cf(self) -> int:
        """Number of counterfactual training images."""
        return 0 if self.cf_labels is None else len(self.cf_labels)

    @property
    def epoch_size(self) -> int:
        """Images per epoch: ``epoch_length``, or every real image and counterfactual once."""
        return self.num_real + self.num_cf if self.epoch_length is None else self.epoch_length

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the last batch may be short)."""
        return math.ceil(self.epoch_size / self.batch_size)

    def epoch_batches(self) -> Iterator[torch.Tensor]:
        """One epoch's batches of indices, in a fresh order drawn from ``shuffle``."""
        total = self.num_real + self.num_cf
        rounds = -(-self.epoch_size // total)
        # One permutation per pass over the data, so no image repeats before every image was seen once.
        order = torch.cat([torch.randperm(total, generator=self.shuffle) for _ in range(rounds)])
        return iter(order[: self.epoch_size].split(self.batch_size))


def build_shape_classifier_parts(
    real: Any | tuple[torch.Tensor, torch.Tensor] | None,
    counterfactuals: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1.0,
    gamma: float = 0.7,
    max_real: int | None = None,
    real_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str = "cpu",
    batch_transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    epoch_length: int | None = None,
) -> ShapeClassifierParts:
    """Build what ``train_shape_classifier`` trains with (its arguments of the same names say what each does).

    Initialisation and shuffling are seeded from ``seed`` (the global RNG is left untouched).

    Returns:
        The parts, the model in train mode.

    Raises:
        ValueError: both sources are ``None`` or empty, a number is out of range, both transforms are given, or
            ``epoch_length`` is given with counterfactuals.
    """
    check_positive_int(batch_size, "batch_size")
    if max_real is not None:
        check_positive_int(max_real, "max_real")
    if epoch_length is not None:
        check_positive_int(epoch_length, "epoch_length")
    if real_transform is not None and batch_transform is not None:
        raise ValueError("`real_transform` and `batch_transform` should not both be given, but got both.")
    if real is None:
        real_images, real_labels = torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.int64)
    elif isinstance(real, tuple):
        real_images, real_labels = real
    else:
        real_images, real_labels = split_tensors(real, max_real)
    real_images, real_labels = real_images[:max_real].to(device), real_labels[:max_real].to(device)
    cf_images, cf_labels = counterfactuals if counterfactuals is not None else (None, None)
    if cf_labels is not None and len(cf_labels):
        cf_images, cf_labels = cf_images.to(device), cf_labels.to(device)
    if len(real_labels) + (0 if cf_labels is None else len(cf_labels)) == 0:
        raise ValueError("`real` and `counterfactuals` should not both be empty, but got no training images.")
    if epoch_length is not None and cf_labels is not None and len(cf_labels):
        raise ValueError(
            f"`epoch_length` loops the real images of a run without counterfactuals, but got {epoch_length} with "
            f"{len(cf_labels)} counterfactuals."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, STREAM_INIT))
        model = ShapeClassifier().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
    shuffle = torch.Generator().manual_seed(mix_seed(seed, STREAM_SHUFFLE))
    model.train()
    return ShapeClassifierParts(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        shuffle=shuffle,
        real_images=real_images,
        real_labels=real_labels,
        cf_images=cf_images,
        cf_labels=cf_labels,
        real_transform=real_transform,
        batch_size=batch_size,
        device=device,
        batch_transform=batch_transform,
        epoch_length=epoch_length,
    )


def shape_classifier_step(parts: ShapeClassifierParts, batch: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch of indices from ``parts.epoch_batches()``; returns the (detached) loss.

    Args:
        parts: from ``build_shape_classifier_parts``.
        batch: indices into real images then counterfactuals.

    Returns:
        The batch's NLL loss.
    """
    device, num_real = parts.device, parts.num_real
    # Indices below num_real are real images, the rest counterfactuals (uint8, made float here).
    is_real = batch < num_real
    real_index = batch[is_real].to(device, non_blocking=True)
    real_batch, real_labels = parts.real_images[real_index], parts.real_labels[real_index]
    if parts.real_transform is not None and len(real_batch):
        real_batch = parts.real_transform(real_batch)
    if parts.batch_transform is not None and len(real_batch):
        real_batch = parts.batch_transform(real_batch, real_labels)
    images, labels = [real_batch], [real_labels]
    if parts.num_cf:
        cf_index = (batch[~is_real] - num_real).to(device, non_blocking=True)
        images.append(parts.cf_images[cf_index].to(torch.float32) / 255)
        labels.append(parts.cf_labels[cf_index])
    parts.optimizer.zero_grad(set_to_none=True)
    loss = F.nll_loss(parts.model(torch.cat(images)), torch.cat(labels))
    loss.backward()
    parts.optimizer.step()
    return loss.detach()


def train_shape_classifier(
    real: Any | tuple[torch.Tensor, torch.Tensor] | None,
    counterfactuals: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1.0,
    gamma: float = 0.7,
    max_real: int | None = None,
    real_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str = "cpu",
    progress: bool = False,
    batch_transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    epoch_length: int | None = None,
) -> ShapeClassifier:
    """Train a ``ShapeClassifier`` with the authors' recipe on real images, counterfactuals or both.

    Adadelta (``lr``), learning rate times ``gamma`` after every epoch, NLL loss, shuffled batches of
    ``batch_size`` drawn from the union of both sources (in a batch, its real images come first). Initialisation and
    shuffling are seeded from ``seed`` (the global RNG is left untouched), so a seed gives the same classifier on
    the same machine, whether ``real`` is a dataset or its ``split_tensors``.

    Both sources are moved to ``device`` once, and each step gathers its batch there: on a GPU no step waits for
    the CPU to compose images.

    It is ``build_shape_classifier_parts`` once, then ``shape_classifier_step`` on every batch of
    ``parts.epoch_batches()`` and ``parts.scheduler.step()`` after each epoch: a step runner that does the same
    trains the same classifier.

    Args:
        real: a variant dataset, its ``split_tensors`` (reuse them across runs), or ``None``.
        counterfactuals: ``(uint8 images, labels)`` from ``generate_counterfactuals``, or ``None``.
        epochs: passes over the data.
        seed: seed of initialisation and shuffling.
        batch_size: images per step.
        lr: Adadelta learning rate.
        gamma: learning-rate decay per epoch.
        max_real: use only the first ``max_real`` real images (``None``: all).
        real_transform: applied to the real images of every batch (float in [0, 1], on ``device``) before the
            step, e.g. ``CounterfactualAugment(backend, p=0.5, labels_getter=None)``; their labels are kept.
            Seed its own generator for a reproducible run.
        device: torch device.
        progress: show a progress bar.
        batch_transform: like ``real_transform``, but called as ``batch_transform(images, labels)`` (returns the
            images), for counterfactuals that need the labels (``cfaug.evaluation.matched_budget.augment_batch``).
        epoch_length: images per epoch, looping the real images (a run without counterfactuals only); ``None``
            for one pass. A per-batch run with ``epoch_length = num_real + num_cf`` makes as many steps as a run
            on the real images plus ``num_cf`` saved counterfactuals.

    Returns:
        The trained classifier in eval mode.

    Raises:
        ValueError: both sources are ``None`` or empty, or a number is out of range.
    """
    check_positive_int(epochs, "epochs")
    parts = build_shape_classifier_parts(
        real,
        counterfactuals,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        gamma=gamma,
        max_real=max_real,
        real_transform=real_transform,
        device=device,
        batch_transform=batch_transform,
        epoch_length=epoch_length,
    )
    steps_per_epoch = parts.steps_per_epoch
    batches: Iterator[torch.Tensor] = iter(())

    def step(index: int) -> dict[str, torch.Tensor]:
        nonlocal batches
        if index % steps_per_epoch == 0:
            batches = parts.epoch_batches()
        loss = shape_classifier_step(parts, next(batches))
        if (index + 1) % steps_per_epoch == 0:
            parts.scheduler.step()  # the learning rate decays once per epoch
        return {"loss": loss}

    run_step_function(
        step,
        epochs * steps_per_epoch,
        desc="shape classifier",
        progress=progress,
        postfix=lambda done, values: {"epoch": f"{done / steps_per_epoch:.2f}"},
    )
    return parts.model.eval()


#: The old name of ``train_shape_classifier`` (not the ImageNet ensemble's trainer of the training package).
train_classifier = train_shape_classifier


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Any, batch_size: int = 640, device: str = "cpu") -> dict[str, float]:
    """Top-1 digit accuracy of ``model`` on a variant's split, overall and on the items whose digit is visible.

    Args:
        model: a classifier of ``(B, 3, 32, 32)`` images in [0, 1].
        dataset: a variant dataset (any ``target``).
        batch_size: images per forward pass.
        device: torch device.

    Returns:
        ``accuracy``, ``accuracy_visible`` (on ``visible_digits``) and ``visible_fraction``, all in [0, 1].
    """
    check_positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    correct = []
    for batch in torch.arange(len(dataset)).split(batch_size):
        images, targets = dataset.batch(batch)
        digits = targets[:, 0] if targets.dim() == 2 else targets
        correct.append(model(images.to(device)).argmax(dim=1).cpu() == digits)
    model.train(was_training)
    hits = torch.cat(correct)
    visible = visible_digits(dataset)
    return {
        "accuracy": hits.float().mean().item(),
        "accuracy_visible": hits[visible].float().mean().item() if visible.any() else math.nan,
        "visible_fraction": visible.float().mean().item(),
    }
