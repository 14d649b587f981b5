"""The counterfactual training sets of the Table 2 experiment: which CGN makes them and how they are drawn.

``generate_counterfactuals`` samples a CGN with the authors' protocol (shape class uniform, texture and background
classes uniform and independent of it, labelled by the shape class); ``real_shape_counterfactuals`` keeps the
shapes of real training digits (``CounterfactualAugment`` in image-only mode) and draws the rest. Both return 8-bit
images and do not depend on the batch size. ``real_shape_grid`` is the picture of the latter that
``run_table2`` saves.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cfaug._utils import check_positive_int
from cfaug.backends.base import Backend
from cfaug.evaluation._streams import (
    STREAM_CF_CLASSES,
    STREAM_CF_NOISE,
    STREAM_REAL_CLASSES,
    STREAM_REAL_NOISE,
    STREAM_REAL_PICK,
)
from cfaug.seeding import draw_seeds, mix_seed

__all__ = [
    "GRID_COLUMNS",
    "generate_counterfactuals",
    "load_counterfactual_backend",
    "real_shape_counterfactuals",
    "real_shape_grid",
]


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
        0, backend.num_classes, (3, num), generator=torch.Generator().manual_seed(mix_seed(seed, STREAM_CF_CLASSES))
    )
    seeds = draw_seeds(num, torch.Generator().manual_seed(mix_seed(seed, STREAM_CF_NOISE)))
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
    picker = torch.Generator().manual_seed(mix_seed(seed, STREAM_REAL_PICK))
    rounds = -(-num // len(digits))
    picks = torch.cat([torch.randperm(len(digits), generator=picker) for _ in range(rounds)])[:num]
    classes = torch.randint(
        0, backend.num_classes, (2, num), generator=torch.Generator().manual_seed(mix_seed(seed, STREAM_REAL_CLASSES))
    )
    seeds = draw_seeds(2 * num, torch.Generator().manual_seed(mix_seed(seed, STREAM_REAL_NOISE))).view(2, num)
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


#: Counterfactuals beside each real digit in ``real_shape_grid``.
GRID_COLUMNS = 9


def real_shape_grid(backend: Backend, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows of the grid PNG: a real training image, then ``GRID_COLUMNS`` counterfactuals of it.

    Args:
        backend: a CGN backend with a mask estimator.
        images: real training images float in [0, 1]; the first ``backend.num_classes`` make the rows.
        seed: seed of the counterfactuals' draws.

    Returns:
        ``(rows * (GRID_COLUMNS + 1), C, H, W)`` images, row by row, on the CPU.
    """
    from cfaug.transforms import CounterfactualAugment

    real = images[: backend.num_classes]
    augment = CounterfactualAugment(
        backend, p=1.0, labels_getter=None, generator=torch.Generator().manual_seed(mix_seed(seed, STREAM_REAL_NOISE))
    )
    with torch.no_grad():
        made = augment(real.repeat_interleave(GRID_COLUMNS, dim=0)).view(len(real), GRID_COLUMNS, *real.shape[1:])
    return torch.cat([real[:, None], made], dim=1).flatten(0, 1).cpu()
