"""``cfaug demo``: pictures of what a backend's counterfactuals look like, made from embedded defaults.

Writes three PNG files into the output folder:

* ``counterfactual_grid.png``: row ``i`` has the shape of class ``i``; column ``j`` the texture and background of
  class ``j``. The diagonal holds the ordinary (factual) images, everything else is a counterfactual.
* ``components.png``: for a few counterfactuals, the mask, foreground, background and composite side by side.
* ``augment_example.png``: a batch before (top row) and after (bottom row) ``CounterfactualAugment(p=1)``; the
  labels (the shape classes) are unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from cfaug._utils import atomic_write
from cfaug.backends.base import Backend
from cfaug.registry import load_backend
from cfaug.transforms import CounterfactualAugment

__all__ = ["counterfactual_grid", "run_demo", "save_grid"]

#: Smallest side of one picture in the saved grids; 32-pixel images are enlarged (nearest) so they can be seen.
MIN_CELL = 96


def save_grid(images: torch.Tensor, path: str | os.PathLike[str], nrow: int) -> Path:
    """Save ``(B, C, H, W)`` images in [0, 1] as one PNG grid, atomically, enlarging small images to be seen.

    Args:
        images: the pictures, row-major.
        path: the PNG file to write.
        nrow: pictures per row.

    Returns:
        ``path``.
    """
    path = Path(path)
    scale = max(1, -(-MIN_CELL // images.shape[-1]))
    enlarged = F.interpolate(images.detach().float().cpu(), scale_factor=scale, mode="nearest")
    with atomic_write(path) as handle:
        save_image(enlarged, handle, format="png", nrow=nrow, padding=2, pad_value=1.0)
    return path


def counterfactual_grid(backend: Backend, classes: int | None = None, seed: int = 0) -> torch.Tensor:
    """Images of every (shape, appearance) pair: row = shape class, column = texture and background class.

    Args:
        backend: the backend to sample from.
        classes: how many classes to show (the first ones); all of them when ``None``.
        seed: seed of the per-sample noise; each cell has its own seed derived from it.

    Returns:
        ``(classes * classes, C, H, W)`` images in row-major order, ready for ``torchvision.utils.make_grid``.
    """
    n = backend.num_classes if classes is None else min(classes, backend.num_classes)
    shape = torch.arange(n).repeat_interleave(n)
    appearance = torch.arange(n).repeat(n)
    seeds = torch.arange(n * n, dtype=torch.int64) + seed * n * n
    return backend.sample(shape, appearance, appearance, seeds=seeds).image


def run_demo(
    out: str | os.PathLike[str],
    backend: str | Backend = "mnist",
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write the demo pictures into ``out`` and return their paths.

    Args:
        out: output folder, created if needed.
        backend: backend name or a loaded backend.
        weights: named weights or checkpoint path of a backend given by name; ``None`` for its default.
        seed: seed of everything random in the pictures.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_backend(backend, weights=weights) if isinstance(backend, str) else backend
    n = min(model.num_classes, 10)
    paths = []

    grid = counterfactual_grid(model, classes=n, seed=seed)
    paths.append(save_grid(grid, out / "counterfactual_grid.png", nrow=n))

    generator = torch.Generator().manual_seed(seed)
    shape = torch.arange(n)
    texture = torch.randint(0, model.num_classes, (n,), generator=generator)
    background = torch.randint(0, model.num_classes, (n,), generator=generator)
    parts = model.sample(shape, texture, background, generator=generator)
    columns = [parts.mask.expand_as(parts.image), parts.foreground, parts.background, parts.image]
    paths.append(save_grid(torch.stack(columns, dim=1).flatten(0, 1), out / "components.png", nrow=4))

    # "Real" inputs for the augmentation example: factual images (all mechanisms of the label's class), since a
    # fresh machine has no dataset on disk.
    labels = torch.arange(n)
    originals = model.sample(labels, labels, labels, generator=generator).image
    augment = CounterfactualAugment(model, p=1.0, generator=generator)
    augmented, same_labels = augment(originals, labels)
    if not torch.equal(same_labels, labels):
        raise RuntimeError("CounterfactualAugment changed the labels; it must keep the shape class.")
    paths.append(save_grid(torch.cat([originals, augmented]), out / "augment_example.png", nrow=n))
    return paths
