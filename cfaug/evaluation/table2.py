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

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cfaug._utils import atomic_write, check_positive_int, check_probability, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.evaluation._streams import STREAM_ONLINE
from cfaug.evaluation.counterfactual_sets import (
    GRID_COLUMNS,
    generate_counterfactuals,
    load_counterfactual_backend,
    real_shape_counterfactuals,
    real_shape_grid,
)
from cfaug.evaluation.shape_classifier import evaluate_classifier, make_datasets, split_tensors, train_shape_classifier
from cfaug.names import VARIANTS
from cfaug.seeding import mix_seed

__all__ = ["PAPER_TABLE2", "SETTINGS", "VARIANTS", "format_table2", "merge_table2", "run_table2"]


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
# Each setting's runs draw from their own seeds (see cfaug.evaluation._streams for the streams within a run).
_SETTING_STREAMS = {setting: 10 * (i + 1) for i, setting in enumerate(SETTINGS)}


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
        model = train_shape_classifier(
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
                save_grid(real_shape_grid(backend, real_tensors()[0], dataset_seed), path, nrow=GRID_COLUMNS + 1)
                grids[grid_name] = path.name
            if "original+augment" in settings:
                counterfactuals = real_shape_counterfactuals(
                    backend, real_tensors(), num_counterfactuals, seed, progress=progress
                )
                record("original+augment", name, seed, counterfactuals)
            if "original+augment-online" in settings:
                online = torch.Generator().manual_seed(mix_seed(seed, STREAM_ONLINE))
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
            count = config["num_counterfactuals"]
            counts[name] = count[name] if isinstance(count, Mapping) else count  # a merge maps columns to counts
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
        device=_merged_devices(part["config"].get("device") for part in parts),
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


def _merged_devices(devices: Iterable[str | list[str] | None]) -> str | list[str] | None:
    """The devices of merged parts: one name when they share it, else the sorted names (``None`` if none says).

    A part may itself be a merge (a list of names), so that results merge again as they come in. Shared by
    ``merge_matched_budget``.
    """
    names = sorted(
        {str(name) for device in devices for name in (device if isinstance(device, list) else [device]) if name}
    )
    return (names[0] if len(names) == 1 else names) if names else None


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
