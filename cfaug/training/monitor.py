"""Watching a CGN train: mask statistics on a fixed probe, the mask collapse detector, sample grids.

Masks of the authors' MNIST recipe collapse in some runs (reproduction study; authors' GitHub issue #3): for some
digits the mask becomes empty, full, or an inverted "frame" (a dark disc in a white border), and the
counterfactuals built from it are useless. ``detect_collapse`` flags, per shape class, on a fixed probe batch:

* **empty mask**: mean mask area below ``collapse_min_area`` (0.02; real digits: 0.05 at least, 0.18 on average);
* **full mask**: mean area above ``collapse_max_area`` (0.9);
* **frame mask**: mean mask value in the ``border_width`` (3) pixel border band above ``collapse_max_border``
  (0.2; real digits: 0.005 on average, 0.07 at most; the authors' released models: at most 0.022);
* **inverted mask**: the mask mass lies far from the centre, mean spread (``mask_spread``)
  above ``collapse_max_spread`` (0.45; real digits: 0.26 median, 0.47 at most per image). This is the failure we
  saw in short runs of both the authors' and our recipe: the mask covers the background, the background mechanism
  draws the digit through a hole, and with a border penalty the mask becomes a box with a digit-shaped hole;
* **merged classes**: the class's mean mask has a cosine similarity above ``collapse_max_similarity`` (0.97) with
  another class's (real digits: 0.92 at most with 5,000 images, 0.85 with 8 per class; the authors' models: 0.85
  at most); seen in short runs where several classes shared one blob drawn dark on a white background;
* **frozen mask**: the per-pixel standard deviation over the probe's noise draws, averaged over pixels, below
  ``collapse_min_diversity`` (0.01; the authors' models: 0.14-0.16), i.e. the shape mechanism ignores its noise;
* **wrong digit**: with a shape teacher (``training.shape_teacher``), the share of the class's probe masks that
  the teacher reads as the class is below ``collapse_min_shape_accuracy``. The other symptoms cannot see a
  well-formed mask of the wrong digit, which the discriminator of a biased variant lets through because the colour
  already names the class.

The detector is armed after ``collapse_after`` iterations: a freshly initialised mask is noise around area 0.4
that fails the border test by design.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import torch

from cfaug._utils import atomic_write
from cfaug.backends.base import Backend
from cfaug.seeding import index_seeds, mix_seed
from cfaug.training.losses import border_band, mask_spread
from cfaug.training.shape_teacher import shape_accuracy

__all__ = ["MaskCollapseError", "MaskStats", "detect_collapse", "mask_stats", "probe_inputs", "save_sample_grid"]

# Streams of the run seed for the fixed probe and grid noise; independent of the training draws.
_PROBE_STREAM = 101
_GRID_STREAM = 102


class MaskCollapseError(RuntimeError):
    """The shape mechanism's masks collapsed during training; the message names the classes and the symptom."""


@dataclass(frozen=True)
class MaskStats:
    """Mask statistics of a batch, per shape class where it matters.

    Attributes:
        area: mean mask value per class (``num_classes`` floats).
        border: mean mask value in the border band, per class.
        spread: mean spread of the mask mass around the image centre (``mask_spread``), per class.
        diversity: per-pixel standard deviation over the class's samples, averaged over pixels, per class.
        similarity: per class, the highest cosine similarity of its mean mask with another class's.
        closest: per class, that other class.
        binariness: ``mean(|2m - 1|)`` over all pixels: 1 for a binary mask, 0 for ``m = 0.5`` everywhere.
        shape_accuracy: per class, the share of masks the shape teacher reads as the class; None without one.
    """

    area: list[float]
    border: list[float]
    spread: list[float]
    diversity: list[float]
    binariness: float
    similarity: list[float]
    closest: list[int]
    shape_accuracy: list[float] | None = None

    def summary(self) -> dict[str, float | list[float]]:
        """JSON-ready numbers for ``stats.jsonl`` (means over classes plus the per-class lists)."""
        summary: dict[str, float | list[float]] = {
            "area_mean": sum(self.area) / len(self.area),
            "area_min": min(self.area),
            "area_max": max(self.area),
            "border_max": max(self.border),
            "spread_max": max(self.spread),
            "diversity_min": min(self.diversity),
            "similarity_max": max(self.similarity),
            "binariness": self.binariness,
            "area_per_class": [round(a, 4) for a in self.area],
            "border_per_class": [round(b, 4) for b in self.border],
            "spread_per_class": [round(s, 4) for s in self.spread],
        }
        if self.shape_accuracy is not None:
            summary["shape_accuracy"] = sum(self.shape_accuracy) / len(self.shape_accuracy)
            summary["shape_accuracy_min"] = min(self.shape_accuracy)
            summary["shape_accuracy_per_class"] = [round(a, 4) for a in self.shape_accuracy]
        return summary


def probe_inputs(seed: int, num_classes: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe batch of a run: classes ``0,0,..,1,1,..`` (``per_class`` each) and their seeds."""
    classes = torch.arange(num_classes).repeat_interleave(per_class)
    return classes, index_seeds(mix_seed(seed, _PROBE_STREAM), range(len(classes)))


def mask_stats(
    masks: torch.Tensor,
    classes: torch.Tensor,
    num_classes: int,
    border_width: int,
    teacher: torch.nn.Module | None = None,
) -> MaskStats:
    """Statistics of ``masks`` ``(B, 1, H, W)`` grouped by shape class ``classes`` ``(B,)``.

    Classes absent from the batch get NaN entries. With a shape ``teacher`` (``training.shape_teacher``) the
    per-class shape accuracy is measured too.
    """
    spread = mask_spread(masks.detach().float())
    masks = masks.detach().float()[:, 0]
    band = border_band(masks.shape[-1], border_width, masks.device)
    area = masks.mean(dim=(1, 2))
    border = (masks * band).sum(dim=(1, 2)) / band.sum()
    per_class: tuple[list[float], ...] = ([], [], [], [])
    for c in range(num_classes):
        chosen = classes.to(masks.device) == c
        if not bool(chosen.any()):
            for values in per_class:
                values.append(float("nan"))
            continue
        per_class[0].append(float(area[chosen].mean()))
        per_class[1].append(float(border[chosen].mean()))
        per_class[2].append(float(spread[chosen].mean()))
        variation = masks[chosen].std(dim=0, unbiased=False).mean() if int(chosen.sum()) > 1 else torch.tensor(0.0)
        per_class[3].append(float(variation))
    binariness = float((2 * masks - 1).abs().mean())
    similarity, closest = _class_similarity(masks, classes.to(masks.device), num_classes)
    accuracy = None
    if teacher is not None:
        correct = shape_accuracy(teacher, masks.unsqueeze(1), classes.to(masks.device))
        accuracy = [float(correct[classes.to(masks.device) == c].mean()) for c in range(num_classes)]
    return MaskStats(
        area=per_class[0],
        border=per_class[1],
        spread=per_class[2],
        diversity=per_class[3],
        binariness=binariness,
        similarity=similarity,
        closest=closest,
        shape_accuracy=accuracy,
    )


def _class_similarity(masks: torch.Tensor, classes: torch.Tensor, num_classes: int) -> tuple[list[float], list[int]]:
    """Per class, the highest cosine similarity of its mean mask with another class's mean mask, and that class."""
    present = [c for c in range(num_classes) if bool((classes == c).any())]
    similarity, closest = [float("nan")] * num_classes, [-1] * num_classes
    if len(present) < 2:
        return similarity, closest
    means = torch.stack([masks[classes == c].mean(dim=0).flatten() for c in present])
    cosine = torch.nn.functional.normalize(means, dim=1) @ torch.nn.functional.normalize(means, dim=1).T
    cosine.fill_diagonal_(-1.0)
    best, index = cosine.max(dim=1)
    for row, c in enumerate(present):
        similarity[c], closest[c] = float(best[row]), present[int(index[row])]
    return similarity, closest


def detect_collapse(
    stats: MaskStats,
    *,
    min_area: float,
    max_area: float,
    max_border: float,
    max_spread: float,
    min_diversity: float,
    max_similarity: float,
    min_shape_accuracy: float = 0.0,
) -> list[str]:
    """The collapse symptoms in ``stats``, one line per symptom and class; empty when the masks are healthy."""
    problems = []
    rows = zip(stats.area, stats.border, stats.spread, stats.diversity, stats.similarity, stats.closest, strict=True)
    for c, (area, border, spread, diversity, similarity, closest) in enumerate(rows):
        if area != area:  # NaN: class not in the probe
            continue
        if area < min_area:
            problems.append(f"class {c}: empty mask (mean area {area:.4f} < {min_area})")
        elif area > max_area:
            problems.append(f"class {c}: full mask (mean area {area:.4f} > {max_area})")
        if border > max_border:
            problems.append(f"class {c}: frame mask (mean value {border:.4f} in the border band > {max_border})")
        if spread > max_spread and area >= min_area:
            problems.append(f"class {c}: inverted mask (mass spread {spread:.4f} from the centre > {max_spread})")
        if similarity > max_similarity:
            problems.append(
                f"class {c}: merged with class {closest} (mean masks {similarity:.3f} similar > {max_similarity})"
            )
        if diversity < min_diversity:
            problems.append(f"class {c}: frozen mask (noise changes it by {diversity:.4f} < {min_diversity})")
        if stats.shape_accuracy is not None and stats.shape_accuracy[c] < min_shape_accuracy:
            problems.append(
                f"class {c}: wrong digit (the shape teacher reads {stats.shape_accuracy[c]:.0%} of its masks as "
                f"{c} < {min_shape_accuracy:.0%})"
            )
    return problems


def save_sample_grid(
    backend: Backend, path: str | os.PathLike[str], seed: int, seeds_per_class: int = 2, counterfactuals: int = 2
) -> None:
    """Write a PNG grid of fixed-noise samples: one row per shape class.

    Each row shows, for ``seeds_per_class`` fixed seeds, the mask, foreground, background and composite of the
    class, then ``counterfactuals`` composites with the row's shape and other classes' texture and background.
    The noise depends only on ``seed``, so grids of successive steps are comparable.
    """
    from torchvision.utils import make_grid, save_image

    n = backend.num_classes
    columns = []
    for j in range(seeds_per_class):
        classes = torch.arange(n)
        seeds = index_seeds(mix_seed(seed, _GRID_STREAM), range(j * n, (j + 1) * n))
        parts = backend.sample(classes, classes, classes, seeds=seeds)
        columns += [parts.mask.expand(-1, 3, -1, -1), parts.foreground, parts.background, parts.image]
    for j in range(counterfactuals):
        shape = torch.arange(n)
        seeds = index_seeds(
            mix_seed(seed, _GRID_STREAM), range((seeds_per_class + j) * n, (seeds_per_class + j + 1) * n)
        )
        texture, background = (shape + 1 + 2 * j) % n, (shape + 5 + 2 * j) % n
        columns.append(backend.sample(shape, texture, background, seeds=seeds).image)
    # (rows = classes, columns) -> row-major list of images.
    tiles = torch.stack(columns, dim=1).flatten(0, 1).float().cpu().clamp(0, 1)
    grid = make_grid(tiles, nrow=len(columns), padding=2, pad_value=1.0)
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png")
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())
