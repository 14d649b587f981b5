"""The paper's MNIST classifier experiment (CGN, Table 2): does training on counterfactuals remove the bias?

A small CNN (the authors' shape classifier) is trained on one of three data settings and tested on the variant's
de-biased test split, where colour or texture is independent of the digit:

* ``"original"``: the biased training split alone (colour/texture tied to the digit);
* ``"original+cf"``: the biased split plus counterfactual images (the paper's "Original + CGN" row);
* ``"cf"``: counterfactual images only (what the authors' code actually trains);
* ``"original+augment"``: the biased split plus counterfactuals of *real* training digits made by
  ``CounterfactualAugment`` without labels: each keeps its digit's real shape (the backend's mask estimator) and
  gets a generated texture and background of uniformly drawn classes;
* ``"original+augment-online"``: the biased split with ``CounterfactualAugment(p=augment_p)`` applied to every
  training batch, as a user puts it in a training loop: each epoch replaces a fresh share of the real images.

The last two are not in the paper: they measure cfaug's transform in the paper's experiment.

Counterfactuals come from a CGN backend (a cfaug checkpoint, or one of the authors' ``.pth`` files imported with
``MnistBackend.import_weights``), sampled with the authors' protocol: shape class uniform, texture and background
classes uniform and independent of it, labelled by the shape class. They are generated once per (weights, seed)
and reused by both counterfactual settings; the real-shape ones come from the same backend and its mask estimator.

``run_table2`` runs every (setting, weights, seed), writes ``results.json``, a counterfactual grid PNG per set of
weights (and, for the real-shape rows, a PNG of real digits beside their counterfactuals), and ``format_table2``
prints the result next to the paper's numbers.

Examples:
    >>> results = run_table2(  # doctest: +SKIP
    ...     "colored_mnist",
    ...     {"authors": "../shared/data/reference_cgn_mnist/colored_mnist.pth"},
    ...     seeds=(0, 1, 2), epochs=10, data_root="../shared/data", out_dir="runs/table2/colored",
    ... )
    >>> print(format_table2(results))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cfaug._utils import atomic_write, check_positive_int, check_probability, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.datasets.mnist_variants import VARIANTS
from cfaug.seeding import draw_seeds, mix_seed

__all__ = [
    "PAPER_TABLE2",
    "SETTINGS",
    "VARIANTS",
    "ShapeClassifier",
    "add_evaluate_mnist_arguments",
    "add_table2_options",
    "evaluate_classifier",
    "format_table2",
    "generate_counterfactuals",
    "load_counterfactual_backend",
    "make_datasets",
    "merge_table2",
    "parse_named_weights",
    "real_shape_counterfactuals",
    "run_evaluate_mnist",
    "run_table2",
    "split_tensors",
    "train_classifier",
    "visible_digits",
    "weights_from_args",
]

SETTINGS: tuple[str, ...] = ("original", "original+cf", "cf", "original+augment", "original+augment-online")
# The rows that cut real digits out, which needs weights with a mask estimator.
_REAL_SHAPE_SETTINGS = ("original+augment", "original+augment-online")

#: Test accuracy (%) in the paper's Table 2. The paper has no counterfactual-only row.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "colored_mnist": {"original": 35.9, "original+cf": 95.1},
    "double_colored_mnist": {"original": 10.3, "original+cf": 89.0},
    "wildlife_mnist": {"original": 10.1, "original+cf": 85.7},
}

_SETTING_LABELS = {
    "original": "Original",
    "original+cf": "Original + CF",
    "cf": "CF only",
    "original+augment": "Original + CounterfactualAugment",
    "original+augment-online": "Original, CounterfactualAugment per batch",
}
# Seed streams: each random part of a run has its own stream, so changing one leaves the others' draws alone.
(
    _STREAM_INIT,
    _STREAM_SHUFFLE,
    _STREAM_CF_CLASSES,
    _STREAM_CF_NOISE,
    _STREAM_REAL_PICK,
    _STREAM_REAL_CLASSES,
    _STREAM_REAL_NOISE,
    _STREAM_ONLINE,
) = range(1, 9)
_SETTING_STREAMS = {setting: 10 * (i + 1) for i, setting in enumerate(SETTINGS)}


class ShapeClassifier(nn.Module):
    """The authors' MNIST shape classifier (67,760 parameters): 32x32 RGB in, 10 log-probabilities out.

    BatchNorm2d(3) (so the input scale does not matter), conv 5x5 3->32 (pad 2), ReLU, max-pool 3/2/1 (16x16),
    conv 3x3 32->32, ReLU, conv 3x3 32->64 stride 2 (8x8), ReLU, conv 3x3 64->64, ReLU, average pool 7, linear
    64->10, log-softmax. The 3x3 convolutions are padded by 1: that is the only padding that gives the 8x8 map the
    architecture describes and leaves the 7x7 average pool a 1x1 output.

    Examples:
        >>> model = ShapeClassifier()
        >>> sum(p.numel() for p in model.parameters())
        67760
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        self.features = nn.Sequential(
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(7),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, num_classes)`` of images ``(B, 3, 32, 32)``."""
        return F.log_softmax(self.head(self.features(images)), dim=1)


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


def load_counterfactual_backend(weights: str | os.PathLike[str] | Backend, device: str = "cpu") -> Backend:
    """The CGN that makes counterfactuals: a loaded backend, an authors' ``.pth`` (imported) or mnist weights.

    Args:
        weights: a ``Backend``; a path ending in ``.pth`` (the CGN authors' state dict, converted with
            ``MnistBackend.import_weights``; its ``cfg.yaml`` beside it); or a cfaug checkpoint path / named
            weights of the ``mnist`` backend.
        device: where to generate.

    Returns:
        The backend in eval mode.

    Raises:
        TypeError: ``weights`` is neither a path nor a ``Backend``.
    """
    import cfaug
    from cfaug.backends.mnist import MnistBackend

    if isinstance(weights, Backend):
        return weights.to(device).eval()
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"`weights` should be a path or a Backend, but got {type(weights).__name__} {weights!r}.")
    if Path(weights).suffix == ".pth":
        return MnistBackend.import_weights(weights).to(device).eval()
    return cfaug.load_backend("mnist", weights=weights, device=device)


def generate_counterfactuals(
    backend: Backend,
    num: int,
    seed: int,
    batch_size: int = 500,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counterfactual training images with the authors' protocol, labelled by their shape class.

    Shape, texture and background classes are drawn uniformly and independently; image ``i``'s noise comes from
    its own seed, so the set does not depend on ``batch_size``.

    Args:
        backend: the CGN to sample from.
        num: number of images.
        seed: seed of the class draws and the per-image noise seeds.
        batch_size: images generated per call.
        progress: show a progress bar.

    Returns:
        ``images`` ``(num, 3, H, W)`` uint8 (stored as 8-bit images, as on disk, to keep 50,000 of them in 150 MB;
        divide by 255 for [0, 1]) and ``labels`` ``(num,)`` int64 shape classes.

    Raises:
        TypeError, ValueError: ``num``, ``seed`` or ``batch_size`` is not a valid integer.
    """
    check_positive_int(num, "num")
    check_positive_int(seed, "seed", allow_zero=True)
    check_positive_int(batch_size, "batch_size")
    classes = torch.randint(
        0, backend.num_classes, (3, num), generator=torch.Generator().manual_seed(mix_seed(seed, _STREAM_CF_CLASSES))
    )
    seeds = draw_seeds(num, torch.Generator().manual_seed(mix_seed(seed, _STREAM_CF_NOISE)))
    size = backend.image_size
    images = torch.empty(num, backend.channels, size, size, dtype=torch.uint8)
    for start in tqdm(range(0, num, batch_size), desc="counterfactuals", disable=not progress, leave=False):
        stop = min(start + batch_size, num)
        shape, texture, background = classes[:, start:stop]
        image = backend.sample(shape, texture, background, seeds=seeds[start:stop]).image
        images[start:stop] = image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return images, classes[0].clone()


def real_shape_counterfactuals(
    backend: Backend,
    real: tuple[torch.Tensor, torch.Tensor],
    num: int,
    seed: int,
    batch_size: int = 500,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counterfactuals of real training images: their own digit's shape, a generated texture and background.

    This is ``CounterfactualAugment(backend, p=1, labels_getter=None)`` (image-only mode) on ``num`` training
    images: the backend's mask estimator cuts the real digit out, and texture and background classes are drawn
    uniformly and independently. Each label stays the real digit, which is the shape class. The images are drawn
    without replacement while ``num`` allows (every image once before any twice). Classes and per-image seeds are
    drawn for the whole set before generating, and each batch is made with ``CounterfactualAugment.replay``, so
    the set does not depend on ``batch_size``.

    Args:
        backend: a CGN backend with a mask estimator (``backend.has_mask_estimator``).
        real: ``(images, digits)`` of the training split, images float in [0, 1] (``split_tensors``).
        num: number of counterfactuals.
        seed: seed of the image picks, the class draws and the per-image noise seeds.
        batch_size: images made per call.
        progress: show a progress bar.

    Returns:
        ``images`` ``(num, 3, H, W)`` uint8 (as ``generate_counterfactuals``) and ``labels`` ``(num,)`` int64 digits.

    Raises:
        TypeError, ValueError: an integer argument is invalid, ``real`` is empty or not a pair of tensors, or the
            backend has no mask estimator.
    """
    from cfaug.transforms import CounterfactualAugment

    check_positive_int(num, "num")
    check_positive_int(seed, "seed", allow_zero=True)
    check_positive_int(batch_size, "batch_size")
    if not (isinstance(real, tuple) and len(real) == 2 and all(isinstance(t, torch.Tensor) for t in real)):
        raise TypeError(f"`real` should be a pair of tensors (images, digits), but got {type(real).__name__}.")
    images, digits = real
    if images.dim() != 4 or len(images) == 0 or len(images) != len(digits):
        raise ValueError(
            f"`real` should hold N >= 1 images (N, C, H, W) and N digits, but got images of shape "
            f"{tuple(images.shape)} and {len(digits)} digits."
        )
    if not backend.has_mask_estimator:
        raise ValueError(
            f"`backend` should have a mask estimator to cut real digits out, but {backend.name!r} (weights "
            f"{backend.weights_name!r}) has none."
        )
    picker = torch.Generator().manual_seed(mix_seed(seed, _STREAM_REAL_PICK))
    rounds = -(-num // len(digits))
    picks = torch.cat([torch.randperm(len(digits), generator=picker) for _ in range(rounds)])[:num]
    classes = torch.randint(
        0, backend.num_classes, (2, num), generator=torch.Generator().manual_seed(mix_seed(seed, _STREAM_REAL_CLASSES))
    )
    seeds = draw_seeds(2 * num, torch.Generator().manual_seed(mix_seed(seed, _STREAM_REAL_NOISE))).view(2, num)
    from_real = torch.full((num,), -1, dtype=torch.int64)
    record = {
        "applied": torch.ones(num, dtype=torch.bool),
        "shape": from_real,
        "texture": classes[0],
        "background": classes[1],
        "seed_shape": from_real,
        "seed_texture": seeds[0],
        "seed_background": seeds[1],
    }
    augment = CounterfactualAugment(backend, p=1.0, labels_getter=None)
    out = torch.empty(num, backend.channels, *images.shape[-2:], dtype=torch.uint8)
    with torch.no_grad():
        for start in tqdm(range(0, num, batch_size), desc="real-shape counterfactuals", disable=not progress):
            chosen = picks[start : start + batch_size]
            batch_record = {key: value[start : start + batch_size] for key, value in record.items()}
            made = augment.replay(images[chosen.to(images.device)], batch_record)
            out[start : start + len(chosen)] = made.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return out, digits[picks.to(digits.device)].cpu()


_GRID_COLUMNS = 9


def _real_shape_grid(backend: Backend, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows of the grid PNG: a real training image, then ``_GRID_COLUMNS`` counterfactuals of it."""
    from cfaug.transforms import CounterfactualAugment

    real = images[: backend.num_classes]
    augment = CounterfactualAugment(
        backend, p=1.0, labels_getter=None, generator=torch.Generator().manual_seed(mix_seed(seed, _STREAM_REAL_NOISE))
    )
    with torch.no_grad():
        made = augment(real.repeat_interleave(_GRID_COLUMNS, dim=0)).view(len(real), _GRID_COLUMNS, *real.shape[1:])
    return torch.cat([real[:, None], made], dim=1).flatten(0, 1).cpu()


# ------------------------------------------------------------------------------------------------ training


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


def train_classifier(
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
) -> ShapeClassifier:
    """Train a ``ShapeClassifier`` with the authors' recipe on real images, counterfactuals or both.

    Adadelta (``lr``), learning rate times ``gamma`` after every epoch, NLL loss, shuffled batches of
    ``batch_size`` drawn from the union of both sources (in a batch, its real images come first). Initialisation and
    shuffling are seeded from ``seed`` (the global RNG is left untouched), so a seed gives the same classifier on
    the same machine, whether ``real`` is a dataset or its ``split_tensors``.

    Both sources are moved to ``device`` once, and each step gathers its batch there: on a GPU no step waits for
    the CPU to compose images.

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

    Returns:
        The trained classifier in eval mode.

    Raises:
        ValueError: both sources are ``None`` or empty, or a number is out of range.
    """
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if max_real is not None:
        check_positive_int(max_real, "max_real")
    if real is None:
        real_images, real_labels = torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.int64)
    elif isinstance(real, tuple):
        real_images, real_labels = real
    else:
        real_images, real_labels = split_tensors(real, max_real)
    real_images, real_labels = real_images[:max_real].to(device), real_labels[:max_real].to(device)
    num_real = len(real_labels)
    cf_images, cf_labels = counterfactuals if counterfactuals is not None else (None, None)
    num_cf = 0 if cf_labels is None else len(cf_labels)
    if num_cf:
        cf_images, cf_labels = cf_images.to(device), cf_labels.to(device)
    if num_real + num_cf == 0:
        raise ValueError("`real` and `counterfactuals` should not both be empty, but got no training images.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, _STREAM_INIT))
        model = ShapeClassifier().to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
    shuffle = torch.Generator().manual_seed(mix_seed(seed, _STREAM_SHUFFLE))
    model.train()
    for _ in tqdm(range(epochs), desc="epochs", disable=not progress, leave=False):
        for batch in torch.randperm(num_real + num_cf, generator=shuffle).split(batch_size):
            # Indices below num_real are real images, the rest counterfactuals (uint8, made float here).
            is_real = batch < num_real
            real_index = batch[is_real].to(device, non_blocking=True)
            real_batch = real_images[real_index]
            if real_transform is not None and len(real_batch):
                real_batch = real_transform(real_batch)
            images, labels = [real_batch], [real_labels[real_index]]
            if num_cf:
                cf_index = (batch[~is_real] - num_real).to(device, non_blocking=True)
                images.append(cf_images[cf_index].to(torch.float32) / 255)
                labels.append(cf_labels[cf_index])
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(torch.cat(images)), torch.cat(labels))
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


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


# ------------------------------------------------------------------------------------------------ experiment


def _check_weights(weights: Any) -> dict[str, str | os.PathLike[str] | Backend]:
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"`weights` should be a mapping from a column name to weights (path or Backend), but got "
            f"{type(weights).__name__} {weights!r}."
        )
    for name, value in weights.items():
        if not isinstance(name, str) or not name or "|" in name:
            raise ValueError(f"`weights` names should be non-empty strings without '|', but got {name!r}.")
        if not isinstance(value, (str, os.PathLike, Backend)):
            raise TypeError(f"`weights[{name!r}]` should be a path or a Backend, but got {type(value).__name__}.")
        if isinstance(value, (str, os.PathLike)) and Path(value).suffix == ".pth" and not Path(value).is_file():
            raise ValueError(f"`weights[{name!r}]` should be an existing .pth file, but {str(value)!r} does not exist.")
    return dict(weights)


def _check_settings(settings: Any, weights: Mapping[str, Any]) -> tuple[str, ...]:
    if isinstance(settings, str) or not isinstance(settings, Iterable):
        raise TypeError(f"`settings` should be a sequence of {list(SETTINGS)}, but got {settings!r}.")
    settings = tuple(settings)
    for setting in settings:
        verify_str_arg(setting, "settings", SETTINGS)
    if not settings or len(set(settings)) != len(settings):
        raise ValueError(f"`settings` should be distinct values of {list(SETTINGS)}, but got {list(settings)}.")
    if not weights and any(setting != "original" for setting in settings):
        raise ValueError(
            f"`weights` should name at least one CGN for the counterfactual settings {list(settings)}, but got none."
        )
    return settings


def _check_seeds(seeds: Any) -> tuple[int, ...]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(f"`seeds` should be a sequence of integers >= 0, but got {seeds!r}.")
    seeds = tuple(check_positive_int(seed, "seeds", allow_zero=True) for seed in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` should be one or more distinct integers >= 0, but got {list(seeds)}.")
    return seeds


def _summary(values: Sequence[float]) -> dict[str, Any]:
    finite = [value for value in values if not math.isnan(value)]
    return {
        "mean": statistics.fmean(finite) if finite else math.nan,
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
    }


def run_table2(
    variant: str,
    weights: Mapping[str, str | os.PathLike[str] | Backend],
    seeds: Sequence[int] = (0, 1, 2),
    settings: Sequence[str] = SETTINGS,
    epochs: int = 10,
    num_counterfactuals: int = 50_000,
    data_root: str | os.PathLike[str] = "data",
    texture_root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "table2",
    *,
    batch_size: int = 64,
    max_train_images: int | None = None,
    dataset_seed: int = 0,
    augment_p: float = 0.5,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train and test the shape classifier on every (setting, weights, seed) of one variant; save the results.

    The ``"original"`` setting does not use a CGN: it runs once per seed and is shared by all weights columns.
    Each set of weights generates its counterfactuals once per seed (``num_counterfactuals`` images), used by both
    ``"original+cf"`` and ``"cf"``; ``"original+augment"`` makes as many from real training images
    (``real_shape_counterfactuals``), and ``"original+augment-online"`` makes them per batch with probability
    ``augment_p``. Weights without a mask estimator (the authors' imported ones) cannot cut real digits out: their
    runs of these two settings are skipped and listed, with the reason, in ``skipped``.

    Accuracies are on the de-biased test split. ``results.json`` is rewritten after every finished run
    (``"complete": false`` until the last), so an interrupted experiment keeps what it measured.

    Args:
        variant: one of ``VARIANTS``.
        weights: column name -> CGN weights (see ``load_counterfactual_backend``), e.g.
            ``{"ours": "cgn.safetensors", "authors": "colored_mnist.pth"}``. May be empty for ``("original",)``.
        seeds: run seeds (classifier init, shuffling, counterfactual draws); the paper asks for >= 3.
        settings: a subset of ``SETTINGS``.
        epochs: training epochs (the paper: 10).
        num_counterfactuals: counterfactual images per (weights, seed) (the paper: about the dataset size).
        data_root: folder holding torchvision's ``MNIST/``.
        texture_root: Wildlife MNIST textures (``None``: procedural ones).
        out_dir: where ``results.json`` and ``counterfactual_grid_<variant>_<name>.png`` go (created).
        batch_size: training batch size (the authors: 64).
        max_train_images: use only the first N real training images (quick runs); ``None`` for all.
        dataset_seed: seed of the datasets' own draws (fixed across run seeds, so every run sees one test set).
        augment_p: ``CounterfactualAugment``'s ``p`` in ``"original+augment-online"``.
        device: torch device.
        progress: show progress bars.

    Returns:
        The content of ``results.json``: ``variant``, ``complete``, ``config`` (with the ``device``), ``runs``
        (one record per setting, weights and seed; ``weights`` is ``None`` for ``"original"``), ``summary``
        (setting -> column -> accuracy statistics in %), ``skipped`` (runs that cannot be made, with the reason),
        ``paper`` and ``grids``.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value (the message names it).
    """
    from cfaug.demo import counterfactual_grid, save_grid
    from cfaug.transforms import CounterfactualAugment

    verify_str_arg(variant, "variant", VARIANTS)
    weights = _check_weights(weights)
    settings = _check_settings(settings, weights)
    seeds = _check_seeds(seeds)
    check_positive_int(epochs, "epochs")
    check_positive_int(num_counterfactuals, "num_counterfactuals")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(dataset_seed, "dataset_seed", allow_zero=True)
    check_probability(augment_p, "augment_p")
    if max_train_images is not None:
        check_positive_int(max_train_images, "max_train_images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_set, test_set = make_datasets(variant, data_root, texture_root, dataset_seed)
    train_options = {"epochs": epochs, "batch_size": batch_size, "max_real": max_train_images, "device": device}
    runs: list[dict[str, Any]] = []

    grids: dict[str, str] = {}
    skipped: list[dict[str, str]] = []

    def save(complete: bool) -> dict[str, Any]:
        results = {
            "variant": variant,
            "complete": complete,
            "config": {
                "settings": list(settings),
                "seeds": list(seeds),
                "epochs": epochs,
                "num_counterfactuals": num_counterfactuals,
                "batch_size": batch_size,
                "max_train_images": max_train_images,
                "dataset_seed": dataset_seed,
                "augment_p": augment_p,
                "num_test_images": len(test_set),
                "weights": {name: _describe_weights(source) for name, source in weights.items()},
                "texture_root": None if texture_root is None else str(texture_root),
                "device": str(device),
            },
            "runs": runs,
            "summary": _summarise(runs, settings, list(weights)),
            "skipped": skipped,
            "paper": PAPER_TABLE2[variant],
            "grids": grids,
        }
        with atomic_write(out / "results.json", "w") as handle:
            json.dump(results, handle, indent=2, allow_nan=True)
        return results

    train_tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def real_tensors() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal train_tensors
        if train_tensors is None:  # composed once, shared by every run that trains on it
            train_tensors = tuple(t.to(device) for t in split_tensors(train_set, max_train_images))
        return train_tensors

    def record(
        setting: str,
        name: str | None,
        seed: int,
        counterfactuals: tuple[torch.Tensor, torch.Tensor] | None = None,
        real_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        started = time.perf_counter()
        model = train_classifier(
            None if setting == "cf" else real_tensors(),
            counterfactuals,
            seed=mix_seed(seed, _SETTING_STREAMS[setting]),
            real_transform=real_transform,
            **train_options,
        )
        metrics = evaluate_classifier(model, test_set, device=device)
        seconds = round(time.perf_counter() - started, 2)
        runs.append({"setting": setting, "weights": name, "seed": seed, **metrics, "seconds": seconds})
        save(complete=False)  # an interrupted experiment keeps every run it finished

    backends: dict[str, Backend] = {}
    for seed in tqdm(seeds, desc=f"{variant} seeds", disable=not progress):
        if "original" in settings:
            record("original", None, seed)
        for name, source in weights.items():
            if settings == ("original",):
                break
            if name not in backends:
                backends[name] = load_counterfactual_backend(source, device)
            backend = backends[name]
            if name not in grids:
                path = out / f"counterfactual_grid_{variant}_{name}.png"
                save_grid(counterfactual_grid(backend, seed=dataset_seed), path, nrow=backend.num_classes)
                grids[name] = path.name
            if "original+cf" in settings or "cf" in settings:
                counterfactuals = generate_counterfactuals(backend, num_counterfactuals, seed, progress=progress)
                for setting in ("original+cf", "cf"):
                    if setting in settings:
                        record(setting, name, seed, counterfactuals)
            real_shape_settings = [setting for setting in _REAL_SHAPE_SETTINGS if setting in settings]
            if not real_shape_settings:
                continue
            if not backend.has_mask_estimator:
                reason = f"weights {_describe_weights(source)!r} have no mask estimator to cut real digits out"
                if not any(entry["weights"] == name for entry in skipped):
                    skipped += [
                        {"setting": setting, "weights": name, "reason": reason} for setting in real_shape_settings
                    ]
                    save(complete=False)
                continue
            grid_name = f"{name} (real shapes)"
            if grid_name not in grids:
                path = out / f"real_shape_grid_{variant}_{name}.png"
                save_grid(_real_shape_grid(backend, real_tensors()[0], dataset_seed), path, nrow=_GRID_COLUMNS + 1)
                grids[grid_name] = path.name
            if "original+augment" in settings:
                counterfactuals = real_shape_counterfactuals(
                    backend, real_tensors(), num_counterfactuals, seed, progress=progress
                )
                record("original+augment", name, seed, counterfactuals)
            if "original+augment-online" in settings:
                online = torch.Generator().manual_seed(mix_seed(seed, _STREAM_ONLINE))
                augment = CounterfactualAugment(backend, p=augment_p, labels_getter=None, generator=online)
                record("original+augment-online", name, seed, real_transform=augment)

    return save(complete=True)


_MERGED_CONFIG_KEYS = ("epochs", "batch_size", "max_train_images", "dataset_seed", "num_test_images", "texture_root")


def merge_table2(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One variant's results from several ``run_table2`` calls (seeds or columns run in parallel), as one.

    The parts must share the protocol (epochs, batch size, real images, dataset seed, test split, textures) and
    give each weights name the same weights; a (setting, weights, seed) measured twice must agree. Columns may use
    different numbers of counterfactuals: ``config["num_counterfactuals"]`` then maps each column to its number.

    Args:
        parts: ``run_table2`` results (or their ``results.json``, loaded), all of one variant.

    Returns:
        A ``run_table2``-shaped result over the union of seeds, settings, columns and runs (``complete`` only if
        every part is), which ``format_table2`` prints.

    Raises:
        ValueError: no parts, parts of different variants or protocols, or conflicting runs (the message says which).

    Examples:
        >>> seeds = [json.loads(Path(f"t2/s{seed}/colored_mnist/results.json").read_text()) for seed in range(3)]
        ... # doctest: +SKIP
        >>> print(format_table2(merge_table2(seeds)))  # doctest: +SKIP
    """
    parts = list(parts)
    if not parts:
        raise ValueError("`parts` should hold at least one run_table2 result, but it is empty.")
    for index, part in enumerate(parts):
        missing = {"variant", "config", "runs"} - set(part)
        if missing:
            raise ValueError(f"`parts[{index}]` should be run_table2's output, but it lacks {sorted(missing)}.")
    first = parts[0]
    variant = first["variant"]
    runs: dict[tuple[str, str | None, int], dict[str, Any]] = {}
    weights: dict[str, str] = {}
    counts: dict[str, int] = {}
    settings: list[str] = []
    all_skipped: list[dict[str, str]] = []
    for index, part in enumerate(parts):
        config = part["config"]
        if part["variant"] != variant:
            raise ValueError(f"`parts` should all be {variant!r}, but parts[{index}] is {part['variant']!r}.")
        for key in _MERGED_CONFIG_KEYS:
            if config.get(key) != first["config"].get(key):
                raise ValueError(
                    f"`parts` should share {key!r}, but parts[0] has {first['config'].get(key)!r} and parts[{index}] "
                    f"has {config.get(key)!r}."
                )
        for name, description in config["weights"].items():
            if weights.setdefault(name, description) != description:
                raise ValueError(
                    f"`parts` should give column {name!r} one set of weights, but parts[{index}] uses {description!r} "
                    f"and an earlier part {weights[name]!r}."
                )
            counts[name] = config["num_counterfactuals"]
        settings += [setting for setting in config["settings"] if setting not in settings]
        all_skipped += [dict(entry) for entry in part.get("skipped", [])]
        for run in part["runs"]:
            key = (run["setting"], run["weights"], run["seed"])
            if key in runs and runs[key]["accuracy"] != run["accuracy"]:
                raise ValueError(
                    f"`parts` should agree on every run, but {key} has accuracy {runs[key]['accuracy']} and "
                    f"{run['accuracy']} (parts[{index}])."
                )
            runs[key] = dict(run)
    skipped = [entry for index, entry in enumerate(all_skipped) if entry not in all_skipped[:index]]
    # augment_p only matters to the per-batch row, so only the parts that ran it must agree on it.
    online_ps = {
        part["config"].get("augment_p") for part in parts if "original+augment-online" in part["config"]["settings"]
    }
    if len(online_ps) > 1:
        raise ValueError(f"`parts` should share 'augment_p' for the per-batch row, but have {sorted(online_ps)}.")
    merged_runs = sorted(runs.values(), key=lambda run: (run["seed"], SETTINGS.index(run["setting"])))
    settings = [setting for setting in SETTINGS if setting in settings]
    config = {key: first["config"].get(key) for key in _MERGED_CONFIG_KEYS}
    config.update(
        settings=settings,
        seeds=sorted({run["seed"] for run in merged_runs}),
        num_counterfactuals=next(iter(counts.values())) if len(set(counts.values())) == 1 else counts,
        weights=weights,
        device=sorted({str(part["config"].get("device")) for part in parts}),
        augment_p=next(iter(online_ps)) if online_ps else None,
    )
    return {
        "variant": variant,
        "complete": all(part.get("complete", True) for part in parts),
        "config": config,
        "runs": merged_runs,
        "summary": _summarise(merged_runs, settings, list(weights)),
        "skipped": skipped,
        "paper": PAPER_TABLE2[variant],
        "grids": {name: grid for part in parts for name, grid in part.get("grids", {}).items()},
    }


def _describe_weights(source: Any) -> str:
    return f"{type(source).__name__}:{source.weights_name}" if isinstance(source, Backend) else str(source)


def _summarise(runs: list[dict[str, Any]], settings: Sequence[str], names: list[str]) -> dict[str, Any]:
    # Accuracies in %; "original" is shared by every weights column (it trains without counterfactuals).
    summary: dict[str, Any] = {}
    for setting in settings:
        columns = {}
        for name in names or ["ours"]:
            chosen = [run for run in runs if run["setting"] == setting and run["weights"] in (name, None)]
            columns[name] = {
                "accuracy": _summary([100 * run["accuracy"] for run in chosen]),
                "accuracy_visible": _summary([100 * run["accuracy_visible"] for run in chosen]),
            }
        summary[setting] = columns
    return summary


def _cell(stats: Mapping[str, Any]) -> str:
    if not stats["n"]:
        return "–"
    return f"{stats['mean']:.1f}" if stats["std"] is None else f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def _counterfactual_counts(counts: int | Mapping[str, int]) -> str:
    if isinstance(counts, Mapping):
        return ", ".join(f"{name}: {count:,} counterfactuals" for name, count in counts.items())
    return f"{counts:,} counterfactuals"


def format_table2(results: Mapping[str, Any]) -> str:
    """A markdown table shaped like the paper's Table 2 for one variant's ``run_table2`` results.

    Rows are the settings; columns: each set of weights (mean ± sample standard deviation over seeds of the test
    accuracy in %, the mean alone for one seed), for Double-colored MNIST also the accuracy on visible digits, and
    the paper's number ("–" where the paper has none).

    Args:
        results: what ``run_table2`` returned (or its ``results.json``, loaded).

    Returns:
        The table, with a heading line naming the variant, epochs, seeds and counterfactual count.

    Raises:
        ValueError: ``results`` lacks the keys ``run_table2`` writes.
    """
    missing = {"variant", "config", "summary", "paper"} - set(results)
    if missing:
        raise ValueError(f"`results` should be run_table2's output, but it lacks {sorted(missing)}.")
    summary, config = results["summary"], results["config"]
    names = list(next(iter(summary.values())))
    show_visible = results["variant"] == "double_colored_mnist"
    header = ["Setting"]
    for name in names:
        header.append(f"{name} (test %)")
        if show_visible:
            header.append(f"{name} (visible digits %)")
    header.append("paper (test %)")
    lines = [
        f"**{results['variant']}**: {config['epochs']} epochs, seeds {config['seeds']}, "
        f"{_counterfactual_counts(config['num_counterfactuals'])}, {config['num_test_images']} test images"
        + (f", p={config['augment_p']} per batch" if "original+augment-online" in summary else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for setting, columns in summary.items():
        row = [_SETTING_LABELS.get(setting, setting)]
        for name in names:
            row.append(_cell(columns[name]["accuracy"]))
            if show_visible:
                row.append(_cell(columns[name]["accuracy_visible"]))
        paper = results["paper"].get(setting)
        row.append("–" if paper is None else f"{paper:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    for entry in results.get("skipped", []):
        label = _SETTING_LABELS.get(entry["setting"], entry["setting"])
        lines.append(f"\n{label}, {entry['weights']}: not run, {entry['reason']}.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line


def parse_named_weights(text: str) -> tuple[str, str]:
    """Parse a ``NAME=PATH`` option value (argparse ``type``) into ``(name, path)``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"`--weights` should be NAME=PATH, but got {text!r}.")
    return name, path


def add_table2_options(parser: argparse.ArgumentParser, *, data_root: str = "data") -> argparse.ArgumentParser:
    """Add the experiment's options, shared by ``cfaug evaluate mnist`` and ``benchmarks/mnist_table2.py``.

    Args:
        parser: the parser to extend.
        data_root: the default of ``--data-root``.

    Returns:
        ``parser``.
    """
    parser.add_argument(
        "--weights",
        type=parse_named_weights,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a CGN to make counterfactuals with (cfaug checkpoint, or the authors' .pth); repeat for more columns; "
        "'{variant}' in PATH becomes the variant (e.g. runs/{variant}/final.safetensors)",
    )
    parser.add_argument(
        "--authors-dir",
        default=None,
        help="folder with the authors' <variant>.pth and .cfg.yaml; adds an 'authors' column (imported weights)",
    )
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="rows to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="run seeds (default 0 1 2)")
    parser.add_argument(
        "--augment-p", type=float, default=0.5, help="CounterfactualAugment's p per batch (original+augment-online)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="classifier epochs (default 10, as the paper)")
    parser.add_argument(
        "--num-counterfactuals", type=int, default=50_000, help="counterfactuals per weights and seed (default 50000)"
    )
    parser.add_argument(
        "--data-root", default=data_root, help=f"folder holding torchvision's MNIST/ (default: {data_root})"
    )
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST textures (default: procedural)")
    parser.add_argument("--max-train-images", type=int, default=None, help="use only the first N real images")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True, help="no progress bars")
    return parser


def add_evaluate_mnist_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``cfaug evaluate mnist`` to ``parser`` and return it.

    Examples:
        >>> parser = add_evaluate_mnist_arguments(argparse.ArgumentParser(prog="cfaug evaluate mnist"))
        >>> args = parser.parse_args(["colored_mnist", "--out-dir", "t2", "--weights", "ours=cgn.safetensors"])
        >>> args.weights, args.seeds
        ([('ours', 'cgn.safetensors')], [0, 1, 2])
    """
    parser.add_argument("variant", choices=VARIANTS, help="the MNIST variant")
    parser.add_argument("--out-dir", required=True, help="folder for results.json and the counterfactual grids")
    add_table2_options(parser)
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    return parser


def weights_from_args(args: argparse.Namespace, variant: str | None = None) -> dict[str, str]:
    """The weights columns that ``--weights`` and ``--authors-dir`` name for ``variant`` (default: ``args.variant``).

    ``{variant}`` in a ``--weights`` path becomes the variant, and ``--authors-dir`` gives the variant's ``.pth``.

    Raises:
        ValueError: a name is given twice, or ``--authors-dir`` lacks the variant's ``.pth``.
    """
    variant = variant or args.variant
    weights: dict[str, str] = {}
    for name, path in args.weights:
        if name in weights:
            raise ValueError(f"`--weights` should name each column once, but {name!r} came twice.")
        weights[name] = path.replace("{variant}", variant)
    if args.authors_dir is not None:
        path = Path(args.authors_dir) / f"{variant}.pth"
        if not path.is_file():
            raise ValueError(f"`--authors-dir` should hold {path.name}, but {str(path)!r} does not exist.")
        if "authors" in weights:
            raise ValueError("`--weights` should not use the name 'authors' together with `--authors-dir`.")
        weights["authors"] = str(path)
    return weights


def run_evaluate_mnist(args: argparse.Namespace) -> int:
    """Run ``cfaug evaluate mnist``: the Table 2 experiment for one variant; print the table, return 0."""
    if args.num_threads is not None:
        torch.set_num_threads(check_positive_int(args.num_threads, "--num-threads"))
    results = run_table2(
        args.variant,
        weights_from_args(args),
        seeds=args.seeds,
        settings=args.settings,
        epochs=args.epochs,
        num_counterfactuals=args.num_counterfactuals,
        data_root=args.data_root,
        texture_root=args.texture_root,
        out_dir=args.out_dir,
        batch_size=args.batch_size,
        max_train_images=args.max_train_images,
        augment_p=args.augment_p,
        device=args.device,
        progress=args.progress,
    )
    print(format_table2(results))
    print(f"\nResults: {Path(args.out_dir) / 'results.json'}")
    return 0
