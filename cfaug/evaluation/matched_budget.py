"""Table 2 at a matched budget: each kind of counterfactual, per batch and as a saved set, for the same training.

A saved-set run trains on ``N`` real images plus ``M`` saved counterfactuals: an epoch is ``N + M`` images and
``ceil((N + M) / batch_size)`` optimiser steps. The per-batch run it is compared with trains on the ``N`` real images
only, looped so that an epoch also has ``N + M`` images (every real image once before any twice), and replaces each
image of every batch by a counterfactual with probability ``p = M / (N + M)``: the same images seen, the same
steps, and in expectation the same number of counterfactual images (``MatchedBudget``).

Three kinds of counterfactual (``KINDS``), made per batch by ``CounterfactualAugment`` with the kind as its
``shape`` setting (``kind_augments`` and ``augment_batch``), never by ``shape="auto"``, whose meaning depends on
the weights' metadata:

* ``"real"``: the real digit's shape (the backend's mask estimator), texture and background of drawn classes:
  ``CounterfactualAugment(shape="real")(images)``; as a saved set ``real_shape_counterfactuals``;
* ``"generated"``: a whole CGN sample whose shape class is the label, texture and background drawn:
  ``CounterfactualAugment(shape="generated")(images, labels)``; as a saved set ``generate_counterfactuals`` (the
  paper's kind);
* ``"mixed"``: each image one of the two, by a seeded draw with probability 1/2.

``run_matched_budget`` trains and tests every (kind, mode, seed), writes ``matched_budget.json`` atomically after
each run and a PNG of example counterfactuals per kind; ``format_matched_budget`` prints mean ± std over seeds.

Examples:
    >>> results = run_matched_budget(  # doctest: +SKIP
    ...     "colored_mnist", "colored_mnist", "runs/matched/colored", seeds=(0, 1, 2), epochs=2,
    ...     num_counterfactuals=10_000, max_train_images=10_000, data_root="../shared/data",
    ... )
    >>> print(format_matched_budget(results))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from cfaug._utils import atomic_write, check_positive_int, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.evaluation._streams import STREAM_KIND_PICK, STREAM_MIXED_SET, STREAM_ONLINE
from cfaug.evaluation.counterfactual_sets import (
    GRID_COLUMNS,
    generate_counterfactuals,
    load_counterfactual_backend,
    real_shape_counterfactuals,
)
from cfaug.evaluation.shape_classifier import evaluate_classifier, make_datasets, split_tensors, train_shape_classifier
from cfaug.evaluation.table2 import _check_seeds, _describe_weights, _merged_devices, _summary
from cfaug.names import VARIANTS
from cfaug.seeding import mix_seed

if TYPE_CHECKING:
    from cfaug.transforms import CounterfactualAugment

__all__ = [
    "KINDS",
    "MODES",
    "MatchedBudget",
    "augment_batch",
    "best_kinds",
    "counterfactual_set",
    "format_matched_budget",
    "kind_augments",
    "kind_grid",
    "merge_matched_budget",
    "run_matched_budget",
    "train_matched",
]

#: The kinds of counterfactual: the real digit's shape, the label's generated shape, or either per image.
KINDS: tuple[str, ...] = ("real", "generated", "mixed")
#: Where the counterfactuals come from: a set saved before training, or ``CounterfactualAugment`` per batch.
MODES: tuple[str, ...] = ("saved", "per-batch")
#: The results file ``run_matched_budget`` writes in its ``out_dir``.
RESULTS_FILE = "matched_budget.json"

# Each (kind, mode) draws from its own seeds, so adding a row leaves the others' runs alone.
_RUN_STREAMS = {(kind, mode): 100 + 10 * k + m for k, kind in enumerate(KINDS) for m, mode in enumerate(MODES)}


def _check_choices(values: Any, arg: str, valid: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise TypeError(f"`{arg}` should be a sequence of {list(valid)}, but got {values!r}.")
    values = tuple(values)
    for value in values:
        verify_str_arg(value, arg, valid)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"`{arg}` should be distinct values of {list(valid)}, but got {list(values)}.")
    return values


# ------------------------------------------------------------------------------------------------ the kinds


def kind_augments(
    backend: Backend, p: float, generator: torch.Generator | None = None
) -> dict[str, CounterfactualAugment]:
    """The two transforms ``augment_batch`` calls: ``"real"`` and ``"generated"`` as explicit ``shape`` settings.

    The kind is never left to ``shape="auto"``: that follows the weights' ``default_shape``, so with weights that
    recommend real shapes a label-aware call would make real-shape counterfactuals under the name "generated".
    Both transforms draw from the one ``generator``, so a mixed batch is one seeded stream.

    Args:
        backend: the CGN (with a mask estimator for ``"real"`` and ``"mixed"``).
        p: probability that an image is replaced.
        generator: the RNG of every draw (``None``: the global torch RNG).

    Returns:
        ``{"real": ..., "generated": ...}``: the image-only real-shape transform and the label-aware one.
    """
    from cfaug.transforms import CounterfactualAugment

    return {
        "real": CounterfactualAugment(backend, p=p, shape="real", labels_getter=None, generator=generator),
        "generated": CounterfactualAugment(backend, p=p, shape="generated", generator=generator),
    }


def augment_batch(
    augments: Mapping[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    kind: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Counterfactuals of one kind for a batch, with the transforms' ``p`` per image.

    Args:
        augments: ``kind_augments(...)``: a ``"real"`` transform called on images alone and a ``"generated"``
            transform called on ``(images, labels)``.
        images: ``(B, C, H, W)`` float images in [0, 1].
        labels: ``(B,)`` their classes (kept: they are the shape class of every kind).
        kind: one of ``KINDS``.
        generator: draws which images of a ``"mixed"`` batch keep their real shape (``None``: global RNG).

    Returns:
        The images, each replaced with probability ``p``.

    Raises:
        ValueError: unknown ``kind``.
    """
    verify_str_arg(kind, "kind", KINDS)
    if kind == "real":
        return augments["real"](images)
    if kind == "generated":
        return augments["generated"](images, labels)[0]
    real_shape = torch.rand(len(images), generator=generator) < 0.5
    out = images.clone()
    if real_shape.any():
        out[real_shape] = augments["real"](images[real_shape])
    if not real_shape.all():
        out[~real_shape] = augments["generated"](images[~real_shape], labels[~real_shape])[0]
    return out


def counterfactual_set(
    backend: Backend,
    real: tuple[torch.Tensor, torch.Tensor],
    num: int,
    seed: int,
    kind: str,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A saved set of ``num`` counterfactuals of one kind: ``(uint8 images, labels)``.

    ``"real"`` is ``real_shape_counterfactuals`` of the real images, ``"generated"`` is ``generate_counterfactuals``
    (shape classes uniform, the paper's protocol), ``"mixed"`` takes each image from one of them by a seeded draw
    with probability 1/2.

    Args:
        backend: the CGN (with a mask estimator for ``"real"`` and ``"mixed"``).
        real: ``(images, digits)`` of the training split (``split_tensors``).
        num: number of counterfactuals.
        seed: seed of every draw.
        kind: one of ``KINDS``.
        progress: show progress bars.

    Returns:
        ``images`` ``(num, C, H, W)`` uint8 and ``labels`` ``(num,)`` int64.

    Raises:
        TypeError, ValueError: a bad argument (see the two functions above).
    """
    verify_str_arg(kind, "kind", KINDS)
    check_positive_int(num, "num")
    if kind == "real":
        return real_shape_counterfactuals(backend, real, num, seed, progress=progress)
    if kind == "generated":
        return generate_counterfactuals(backend, num, seed, progress=progress)
    real_shape = torch.rand(num, generator=torch.Generator().manual_seed(mix_seed(seed, STREAM_MIXED_SET))) < 0.5
    num_real = int(real_shape.sum())
    images = torch.empty(num, backend.channels, backend.image_size, backend.image_size, dtype=torch.uint8)
    labels = torch.empty(num, dtype=torch.int64)
    for mask, count, make in (
        (real_shape, num_real, lambda n: real_shape_counterfactuals(backend, real, n, seed, progress=progress)),
        (~real_shape, num - num_real, lambda n: generate_counterfactuals(backend, n, seed, progress=progress)),
    ):
        if count:
            images[mask], labels[mask] = make(count)
    return images, labels


def kind_grid(backend: Backend, real: tuple[torch.Tensor, torch.Tensor], kind: str, seed: int) -> torch.Tensor:
    """Rows of a kind's PNG: one real image per class, then ``GRID_COLUMNS`` counterfactuals of it of that kind.

    Args:
        backend: the CGN.
        real: ``(images, digits)`` of the training split; the first image of each class makes its row.
        kind: one of ``KINDS``.
        seed: seed of the draws.

    Returns:
        ``(rows * (GRID_COLUMNS + 1), C, H, W)`` images in [0, 1], row by row, on the CPU.
    """
    images, digits = real
    firsts = [int(torch.nonzero(digits == c)[0]) for c in range(backend.num_classes) if (digits == c).any()]
    rows = images[firsts]
    augments = kind_augments(backend, 1.0, torch.Generator().manual_seed(mix_seed(seed, STREAM_ONLINE)))
    with torch.no_grad():
        made = augment_batch(
            augments,
            rows.repeat_interleave(GRID_COLUMNS, dim=0),
            digits[firsts].repeat_interleave(GRID_COLUMNS),
            kind,
            torch.Generator().manual_seed(mix_seed(seed, STREAM_KIND_PICK)),
        )
    made = made.view(len(rows), GRID_COLUMNS, *rows.shape[1:])
    return torch.cat([rows[:, None], made], dim=1).flatten(0, 1).cpu()


# ------------------------------------------------------------------------------------------------ the budget


@dataclass(frozen=True)
class MatchedBudget:
    """The training budget that a saved-set run and its per-batch counterpart share.

    Attributes:
        num_real: real training images.
        num_counterfactuals: saved counterfactuals (per batch: the expected counterfactual images per epoch).
        batch_size: images per optimiser step.
        epochs: passes.
    """

    num_real: int
    num_counterfactuals: int
    batch_size: int
    epochs: int

    @property
    def epoch_length(self) -> int:
        """Images per epoch, for both modes."""
        return self.num_real + self.num_counterfactuals

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (the last batch may be short)."""
        return math.ceil(self.epoch_length / self.batch_size)

    @property
    def images(self) -> int:
        """Images seen over the whole run."""
        return self.epochs * self.epoch_length

    @property
    def steps(self) -> int:
        """Optimiser steps over the whole run."""
        return self.epochs * self.steps_per_epoch

    @property
    def p(self) -> float:
        """The per-batch replacement probability that gives ``num_counterfactuals`` per epoch in expectation."""
        return self.num_counterfactuals / self.epoch_length

    def as_dict(self) -> dict[str, Any]:
        """The budget with its derived numbers, for the results file."""
        derived = {"epoch_length": self.epoch_length, "images": self.images, "steps": self.steps, "p": self.p}
        return {**asdict(self), **derived}


class _CountingAugment:
    """The per-batch transform of one run: ``augment_batch`` under no_grad, counting images and steps."""

    def __init__(self, augments: Mapping[str, Any], kind: str, pick: torch.Generator) -> None:
        self.augments, self.kind, self.pick = augments, kind, pick
        self.images = self.steps = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.images += len(images)
        self.steps += 1
        with torch.no_grad():
            return augment_batch(self.augments, images, labels, self.kind, self.pick)


def train_matched(
    backend: Backend,
    real: tuple[torch.Tensor, torch.Tensor],
    budget: MatchedBudget,
    kind: str,
    mode: str,
    seed: int,
    *,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[Any, dict[str, int]]:
    """Train one classifier of a (kind, mode) at ``budget``; return it and what it saw.

    Args:
        backend: the CGN.
        real: ``(images, digits)``, exactly ``budget.num_real`` of them.
        budget: the shared budget.
        kind: one of ``KINDS``.
        mode: one of ``MODES``.
        seed: the run seed.
        device: torch device.
        progress: show progress bars.

    Returns:
        The classifier (eval mode) and ``{"images": ..., "steps": ...}`` (counted per batch, from the budget for a
        saved set, whose epochs are one pass over its ``epoch_length`` images).

    Raises:
        ValueError: ``real`` does not hold ``budget.num_real`` images, or a bad kind or mode.
    """
    verify_str_arg(kind, "kind", KINDS)
    verify_str_arg(mode, "mode", MODES)
    if len(real[1]) != budget.num_real:
        raise ValueError(f"`real` should hold budget.num_real={budget.num_real} images, but holds {len(real[1])}.")
    run_seed = mix_seed(seed, _RUN_STREAMS[kind, mode])
    options = {"epochs": budget.epochs, "batch_size": budget.batch_size, "device": device, "progress": progress}
    if mode == "saved":
        saved = counterfactual_set(backend, real, budget.num_counterfactuals, seed, kind, progress=progress)
        model = train_shape_classifier(real, saved, seed=run_seed, **options)
        return model, {"images": budget.images, "steps": budget.steps}
    online = torch.Generator().manual_seed(mix_seed(run_seed, STREAM_ONLINE))
    transform = _CountingAugment(
        kind_augments(backend, budget.p, online),
        kind,
        torch.Generator().manual_seed(mix_seed(run_seed, STREAM_KIND_PICK)),
    )
    model = train_shape_classifier(
        real, None, seed=run_seed, batch_transform=transform, epoch_length=budget.epoch_length, **options
    )
    return model, {"images": transform.images, "steps": transform.steps}


# ------------------------------------------------------------------------------------------------ experiment


def run_matched_budget(
    variant: str,
    weights: str | os.PathLike[str] | Backend,
    out_dir: str | os.PathLike[str],
    *,
    kinds: Sequence[str] = KINDS,
    modes: Sequence[str] = MODES,
    seeds: Sequence[int] = (0, 1, 2),
    max_train_images: int | None = None,
    num_counterfactuals: int = 50_000,
    epochs: int = 10,
    batch_size: int = 64,
    data_root: str | os.PathLike[str] = "data",
    texture_root: str | os.PathLike[str] | None = None,
    dataset_seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train and test the Table 2 classifier for every (seed, kind, mode) at one matched budget.

    Every run trains on the first ``max_train_images`` biased training images (all when ``None``) and, per
    ``MatchedBudget``, ``num_counterfactuals`` counterfactuals per epoch: saved before training, or made per batch.
    ``matched_budget.json`` in ``out_dir`` is rewritten atomically after each run (``"complete": false`` until the
    last); ``kinds_<variant>_<kind>.png`` shows, per class, a real image and nine counterfactuals of it of that kind.

    Args:
        variant: one of ``VARIANTS``.
        weights: the CGN (see ``load_counterfactual_backend``); it needs a mask estimator for ``"real"`` and
            ``"mixed"``.
        out_dir: the folder of the results and the PNGs (created).
        kinds: a subset of ``KINDS``.
        modes: a subset of ``MODES``.
        seeds: run seeds.
        max_train_images: the real training images used (``None``: all).
        num_counterfactuals: counterfactual images per epoch.
        epochs: training epochs.
        batch_size: training batch size.
        data_root: folder holding torchvision's ``MNIST/``.
        texture_root: Wildlife MNIST textures (``None``: procedural ones).
        dataset_seed: the datasets' own seed.
        device: torch device.
        progress: show progress bars.

    Returns:
        The content of the results file: ``variant``, ``complete``, ``config`` (with the ``budget``), ``runs``
        (kind, mode, seed, accuracies in [0, 1], images and steps seen, seconds), ``summary``
        (mode -> kind -> accuracy statistics in %), ``best`` (mode -> its best kind by mean accuracy) and ``grids``.

    Raises:
        TypeError, ValueError: a bad argument (the message names it), or weights without a mask estimator for a
            real-shape kind.
    """
    from cfaug.demo import save_grid

    verify_str_arg(variant, "variant", VARIANTS)
    seeds = _check_seeds(seeds)
    kinds = _check_choices(kinds, "kinds", KINDS)
    modes = _check_choices(modes, "modes", MODES)
    for value, name in ((epochs, "epochs"), (num_counterfactuals, "num_counterfactuals"), (batch_size, "batch_size")):
        check_positive_int(value, name)
    if max_train_images is not None:
        check_positive_int(max_train_images, "max_train_images")
    backend = load_counterfactual_backend(weights, device)
    if not backend.has_mask_estimator and set(kinds) & {"real", "mixed"}:
        raise ValueError(
            f"`weights` should have a mask estimator for the kinds {sorted(set(kinds) & {'real', 'mixed'})}, but "
            f"{_describe_weights(weights)!r} has none."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = make_datasets(variant, data_root, texture_root, dataset_seed)
    real = tuple(t.to(device) for t in split_tensors(train_set, max_train_images))
    budget = MatchedBudget(len(real[1]), num_counterfactuals, batch_size, epochs)
    runs: list[dict[str, Any]] = []
    grids: dict[str, str] = {}

    def save(complete: bool) -> dict[str, Any]:
        summary = _summarise(runs, kinds, modes)
        results = {
            "variant": variant,
            "complete": complete,
            "config": {
                "kinds": list(kinds),
                "modes": list(modes),
                "seeds": list(seeds),
                "budget": budget.as_dict(),
                "max_train_images": max_train_images,
                "dataset_seed": dataset_seed,
                "num_test_images": len(test_set),
                "weights": _describe_weights(weights),
                "texture_root": None if texture_root is None else str(texture_root),
                "device": str(device),
            },
            "runs": runs,
            "summary": summary,
            "best": best_kinds({"summary": summary}),
            "grids": grids,
        }
        with atomic_write(out / RESULTS_FILE, "w") as handle:
            json.dump(results, handle, indent=2, allow_nan=True)
        return results

    for kind in kinds:
        path = out / f"kinds_{variant}_{kind}.png"
        save_grid(kind_grid(backend, real, kind, dataset_seed), path, nrow=GRID_COLUMNS + 1)
        grids[kind] = path.name
    for seed in tqdm(seeds, desc=f"{variant} seeds", disable=not progress):
        for kind in kinds:
            for mode in modes:
                started = time.perf_counter()
                model, seen = train_matched(backend, real, budget, kind, mode, seed, device=device, progress=progress)
                metrics = evaluate_classifier(model, test_set, device=device)
                seconds = round(time.perf_counter() - started, 2)
                runs.append({"kind": kind, "mode": mode, "seed": seed, **metrics, **seen, "seconds": seconds})
                save(complete=False)  # an interrupted experiment keeps every run it finished
    return save(complete=True)


_MERGED_KEYS = ("budget", "max_train_images", "dataset_seed", "num_test_images", "weights", "texture_root")


def merge_matched_budget(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One variant's ``run_matched_budget`` results from several calls (e.g. one per seed), as one.

    Args:
        parts: results (or their loaded files) of one variant and one protocol (budget, real images, dataset seed,
            test split, weights, textures).

    Returns:
        A ``run_matched_budget``-shaped result over the union of runs, kinds, modes and seeds (``complete`` only if
        every part is), which ``format_matched_budget`` prints.

    Raises:
        ValueError: no parts, or parts of different variants or protocols, or one (kind, mode, seed) twice.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("`parts` should hold at least one run_matched_budget result, but it is empty.")
    first = parts[0]
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for index, part in enumerate(parts):
        if part["variant"] != first["variant"]:
            raise ValueError(f"`parts` should all be {first['variant']!r}, but parts[{index}] is {part['variant']!r}.")
        for key in _MERGED_KEYS:
            if part["config"].get(key) != first["config"].get(key):
                raise ValueError(
                    f"`parts` should share {key!r}, but parts[0] has {first['config'].get(key)!r} and parts[{index}] "
                    f"has {part['config'].get(key)!r}."
                )
        for run in part["runs"]:
            key = (run["kind"], run["mode"], run["seed"])
            if key in runs:
                raise ValueError(f"`parts` should measure each (kind, mode, seed) once, but {key} comes twice.")
            runs[key] = dict(run)
    kinds = [kind for kind in KINDS if any(kind in part["config"]["kinds"] for part in parts)]
    modes = [mode for mode in MODES if any(mode in part["config"]["modes"] for part in parts)]
    merged = sorted(runs.values(), key=lambda run: (run["seed"], KINDS.index(run["kind"]), MODES.index(run["mode"])))
    config = {key: first["config"].get(key) for key in _MERGED_KEYS}
    config.update(
        kinds=kinds,
        modes=modes,
        seeds=sorted({run["seed"] for run in merged}),
        device=_merged_devices(part["config"].get("device") for part in parts),
    )
    summary = _summarise(merged, kinds, modes)
    return {
        "variant": first["variant"],
        "complete": all(part.get("complete", True) for part in parts),
        "config": config,
        "runs": merged,
        "summary": summary,
        "best": best_kinds({"summary": summary}),
        "grids": {kind: grid for part in parts for kind, grid in part.get("grids", {}).items()},
    }


def _summarise(runs: list[dict[str, Any]], kinds: Sequence[str], modes: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in modes:
        summary[mode] = {}
        for kind in kinds:
            chosen = [run for run in runs if run["kind"] == kind and run["mode"] == mode]
            summary[mode][kind] = {
                key: _summary([100 * run[key] for run in chosen]) for key in ("accuracy", "accuracy_visible")
            }
    return summary


def best_kinds(results: Mapping[str, Any]) -> dict[str, str | None]:
    """The kind with the highest mean test accuracy in each mode (``None`` where no run finished)."""
    best: dict[str, str | None] = {}
    for mode, kinds in results["summary"].items():
        measured = {kind: stats["accuracy"]["mean"] for kind, stats in kinds.items() if stats["accuracy"]["n"]}
        best[mode] = max(measured, key=measured.__getitem__) if measured else None
    return best


def _cell(stats: Mapping[str, Any]) -> str:
    if not stats["n"]:
        return "–"
    if stats["std"] is None:
        return f"{stats['mean']:.1f} (1 seed)"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f} ({stats['n']} seeds)"


def format_matched_budget(results: Mapping[str, Any]) -> str:
    """A markdown table of ``run_matched_budget``'s results: one row per (mode, kind), mean ± std over seeds.

    Args:
        results: what ``run_matched_budget`` returned (or its results file, loaded).

    Returns:
        A heading line with the budget, the table (Double-colored MNIST also on the visible digits), and the best
        kind per mode.

    Raises:
        ValueError: ``results`` lacks the keys ``run_matched_budget`` writes.
    """
    missing = {"variant", "config", "summary"} - set(results)
    if missing:
        raise ValueError(f"`results` should be run_matched_budget's output, but it lacks {sorted(missing)}.")
    budget = results["config"]["budget"]
    show_visible = results["variant"] == "double_colored_mnist"
    header = ["mode", "kind", "test %"] + (["visible digits %"] if show_visible else [])
    lines = [
        f"**{results['variant']}** at a matched budget: {budget['num_real']:,} real images + "
        f"{budget['num_counterfactuals']:,} counterfactuals per epoch, {budget['epochs']} epochs, "
        f"{budget['images']:,} images and {budget['steps']:,} steps per run; per batch p={budget['p']:.3g}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for mode, kinds in results["summary"].items():
        for kind, stats in kinds.items():
            row = [mode, kind, _cell(stats["accuracy"])]
            if show_visible:
                row.append(_cell(stats["accuracy_visible"]))
            lines.append("| " + " | ".join(row) + " |")
    best = best_kinds(results)
    lines.append("")
    lines.append("Best kind: " + ", ".join(f"{mode} {kind}" for mode, kind in best.items()))
    return "\n".join(lines)
