"""The Table 2 classifier experiment: classifier, counterfactual generation, run_table2, table, CLI."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path, write_mnist_idx
from PIL import Image
from toy_backend import ToyBackend

from cfaug.backends.mnist import MnistBackend
from cfaug.datasets import ColoredMNIST, DoubleColoredMNIST
from cfaug.evaluation import (
    PAPER_TABLE2,
    ShapeClassifier,
    add_evaluate_mnist_arguments,
    evaluate_classifier,
    format_table2,
    generate_counterfactuals,
    load_counterfactual_backend,
    merge_table2,
    real_shape_counterfactuals,
    run_evaluate_mnist,
    run_table2,
    split_tensors,
    train_classifier,
    visible_digits,
)

# ------------------------------------------------------------------------------------------ fake data


def _fake_digits(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright rectangles whose width grows with the label (a shape a classifier can learn), placed at random."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    for i in range(n):
        top, left = torch.randint(4, 8, (2,), generator=generator).tolist()
        images[i, top : top + 14, left : left + 3 + int(labels[i])] = 255
    return images, labels


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    write_mnist_idx(raw, "train", *_fake_digits(120, generator))  # split 5:1 -> 100 training, 20 test images
    write_mnist_idx(raw, "t10k", *_fake_digits(10, generator))
    return str(root)


@pytest.fixture(scope="module")
def cgn_checkpoint(tmp_path_factory) -> str:
    """A small random-init MNIST CGN saved as a cfaug checkpoint (32x32, fast to sample)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backend = MnistBackend(latent_dim=8, ngf=8)
    path = tmp_path_factory.mktemp("cgn") / "tiny_cgn.safetensors"
    backend.save(path)
    return str(path)


@pytest.fixture(scope="module")
def cgn_with_estimator(tmp_path_factory) -> str:
    """The tiny CGN with a (random, but marked trained) mask estimator, so real digits can be cut out."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        backend = MnistBackend(latent_dim=8, ngf=8, mask_estimator=True, mask_estimator_width=4)
    backend.mark_mask_estimator_trained()
    path = tmp_path_factory.mktemp("cgn") / "tiny_cgn_estimator.safetensors"
    backend.save(path)
    return str(path)


def _run(mnist_root: str, cgn_checkpoint: str, out: Path, **changes) -> dict:
    options = dict(
        weights={"ours": cgn_checkpoint},
        seeds=(0,),
        epochs=1,
        num_counterfactuals=30,
        data_root=mnist_root,
        out_dir=out,
        progress=False,
    )
    options.update(changes)
    return run_table2("colored_mnist", **options)


# ------------------------------------------------------------------------------------------ classifier


def test_classifier_has_the_authors_size_and_output():
    model = ShapeClassifier()
    assert sum(p.numel() for p in model.parameters()) == 67_760
    log_probs = model(torch.rand(4, 3, 32, 32))
    assert log_probs.shape == (4, 10)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(4))


def test_visible_digits_follow_the_palettes(mnist_root):
    double = DoubleColoredMNIST(mnist_root, train=False, target="all")
    object_class, background_class = double.factors[:, 1], double.factors[:, 2]
    hidden = background_class == (object_class + 4) % 10
    assert torch.equal(visible_digits(double), ~hidden)
    assert visible_digits(ColoredMNIST(mnist_root, train=False)).all()


# ------------------------------------------------------------------------------------------ counterfactuals


def test_counterfactuals_are_seeded_labelled_by_shape_and_batch_independent(cgn_checkpoint):
    backend = load_counterfactual_backend(cgn_checkpoint)
    images, labels = generate_counterfactuals(backend, 12, seed=3, batch_size=12)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and 0 <= int(labels.min()) and int(labels.max()) < 10
    again, again_labels = generate_counterfactuals(backend, 12, seed=3, batch_size=5)
    assert torch.equal(labels, again_labels)
    # Conv outputs differ at ~1e-7 between batch sizes on the CPU: at most one 8-bit level apart.
    assert (images.int() - again.int()).abs().max() <= 1
    other, _ = generate_counterfactuals(backend, 12, seed=4, batch_size=12)
    assert not torch.equal(images, other)


def test_authors_checkpoint_is_imported_for_counterfactuals():
    path = shared_path("data", "reference_cgn_mnist", "colored_mnist.pth")
    backend = load_counterfactual_backend(path)
    assert backend.weights_name == "imported:colored_mnist.pth"
    images, labels = generate_counterfactuals(backend, 4, seed=0)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)


def _toy_real(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n)), torch.arange(n) % 10


def test_real_shape_counterfactuals_keep_the_real_shape_and_label():
    backend = ToyBackend(num_classes=10, image_size=32)
    images, digits = _toy_real(25)
    made, labels = real_shape_counterfactuals(backend, (images, digits), 25, seed=2, batch_size=25)
    assert made.shape == (25, 3, 32, 32) and made.dtype == torch.uint8 and labels.dtype == torch.int64
    # num equal to the split: every real image once, so the labels are the digits, reordered.
    assert torch.equal(labels.sort().values, digits.sort().values)
    # The toy estimator cuts out a centre disc: inside it is the texture, outside the background; both generated,
    # so nothing of the real pixels survives, and other real images with the same seed give the same output.
    blank, _ = real_shape_counterfactuals(backend, (torch.zeros_like(images), digits), 25, seed=2)
    assert torch.equal(made, blank)
    disc = (backend.radius2 < 0.5).expand(3, -1, -1)
    inside = made.float()[:, disc].view(25, 3, -1).mean(dim=2) / 255
    outside = made.float()[:, ~disc].view(25, 3, -1).mean(dim=2) / 255
    texture_distance = (inside[:, None] - 0.8 * backend.palette[None]).abs().sum(dim=2).min(dim=1).values
    # The toy background adds one noise offset to every channel of an image: compare around the channel mean.
    expected = 0.75 * backend.background_palette
    offsets = (outside - outside.mean(dim=1, keepdim=True))[:, None] - (expected - expected.mean(dim=1, keepdim=True))
    background_distance = offsets.abs().sum(dim=2).min(dim=1).values
    # (the toy clamps to [0, 1] after the offset, which bends a few channels: hence the looser bound)
    assert texture_distance.max() < 0.05 and background_distance.max() < 0.15


def test_real_shape_counterfactuals_are_seeded_and_batch_independent():
    backend = ToyBackend(num_classes=10, image_size=32)
    real = _toy_real(12)
    made, labels = real_shape_counterfactuals(backend, real, 30, seed=5, batch_size=30)
    again, again_labels = real_shape_counterfactuals(backend, real, 30, seed=5, batch_size=7)
    assert torch.equal(labels, again_labels) and (made.int() - again.int()).abs().max() <= 1
    # 30 from 12 images: each image twice, then 6 of them a third time.
    counts = torch.bincount(labels, minlength=10)
    assert int(counts.sum()) == 30 and int(counts.max()) <= 2 * 3
    # With one label per image the picks show: every image twice before any a third time.
    _, per_image = real_shape_counterfactuals(backend, (real[0], torch.arange(12)), 30, seed=5)
    per_image_counts = torch.bincount(per_image, minlength=12)
    assert int(per_image_counts.min()) == 2 and int(per_image_counts.max()) == 3
    other, _ = real_shape_counterfactuals(backend, real, 30, seed=6)
    assert not torch.equal(made, other)


def test_real_shape_counterfactuals_reject_bad_input():
    real = _toy_real(4)
    with pytest.raises(ValueError, match="`backend` should have a mask estimator"):
        real_shape_counterfactuals(ToyBackend(num_classes=10, image_size=32, mask_estimator=False), real, 4, seed=0)
    backend = ToyBackend(num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="`num`"):
        real_shape_counterfactuals(backend, real, 0, seed=0)
    with pytest.raises(TypeError, match="`real` should be a pair of tensors"):
        real_shape_counterfactuals(backend, [real[0]], 4, seed=0)
    with pytest.raises(ValueError, match="`real` should hold N >= 1 images"):
        real_shape_counterfactuals(backend, (real[0], real[1][:2]), 4, seed=0)


# ------------------------------------------------------------------------------------------ training


def test_training_is_deterministic_per_seed_and_learns(mnist_root):
    train, test = ColoredMNIST(mnist_root, train=True), ColoredMNIST(mnist_root, train=False, target="all")
    first = evaluate_classifier(train_classifier(train, None, epochs=1, seed=5), test)
    second = evaluate_classifier(train_classifier(train, None, epochs=1, seed=5), test)
    assert first == second
    other = train_classifier(train, None, epochs=1, seed=6).state_dict()
    same = train_classifier(train, None, epochs=1, seed=5).state_dict()
    assert not all(torch.equal(other[key], same[key]) for key in same)
    assert 0.0 <= first["accuracy"] <= 1.0 and first["visible_fraction"] == 1.0
    # On the biased training split the colour gives the label away: 100 small steps already beat chance (10%).
    learnt = train_classifier(train, None, epochs=10, batch_size=10, seed=5)
    assert evaluate_classifier(learnt, train)["accuracy"] > 0.4


def test_split_tensors_match_the_dataset(mnist_root):
    dataset = DoubleColoredMNIST(mnist_root, train=True, target="all")
    images, digits = split_tensors(dataset, batch_size=7)
    expected_images, expected_targets = dataset.batch(range(len(dataset)))
    assert torch.equal(images, expected_images) and torch.equal(digits, expected_targets[:, 0])
    first_images, first_digits = split_tensors(dataset, limit=9)
    assert torch.equal(first_images, images[:9]) and torch.equal(first_digits, digits[:9])
    with pytest.raises(ValueError, match="`limit`"):
        split_tensors(dataset, limit=0)


def test_training_on_a_dataset_equals_training_on_its_tensors(mnist_root, cgn_checkpoint):
    # run_table2 composes the split once and reuses its tensors; that must not change a single weight.
    train = ColoredMNIST(mnist_root, train=True)
    counterfactuals = generate_counterfactuals(load_counterfactual_backend(cgn_checkpoint), 30, seed=1)
    options = dict(epochs=2, seed=4, batch_size=16, max_real=70)
    from_dataset = train_classifier(train, counterfactuals, **options).state_dict()
    from_tensors = train_classifier(split_tensors(train), counterfactuals, **options).state_dict()
    assert all(torch.equal(from_dataset[key], from_tensors[key]) for key in from_dataset)
    fewer = train_classifier(split_tensors(train), counterfactuals, **{**options, "max_real": 60}).state_dict()
    assert not all(torch.equal(fewer[key], from_tensors[key]) for key in fewer)


def test_real_transform_sees_every_real_batch_and_only_real_images(mnist_root, cgn_checkpoint):
    train = split_tensors(ColoredMNIST(mnist_root, train=True))
    counterfactuals = generate_counterfactuals(load_counterfactual_backend(cgn_checkpoint), 30, seed=1)
    seen = []

    def blank(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        return torch.zeros_like(images)

    options = dict(epochs=2, seed=4, batch_size=16)
    blanked = train_classifier(train, counterfactuals, real_transform=blank, **options).state_dict()
    # Every real image passes once per epoch; no counterfactual does (they are uint8, made float after it).
    assert sum(len(batch) for batch in seen) == 2 * len(train[1])
    assert all(batch.dtype == torch.float32 and float(batch.max()) <= 1.0 for batch in seen)
    plain = train_classifier(train, counterfactuals, **options).state_dict()
    assert not all(torch.equal(blanked[key], plain[key]) for key in plain)


def test_training_rejects_no_data():
    with pytest.raises(ValueError, match="`real` and `counterfactuals`"):
        train_classifier(None, None)


def test_training_is_its_parts_and_steps(mnist_root, cgn_checkpoint):
    # A step runner that builds the parts and calls one step per batch trains the very same classifier.
    from cfaug.evaluation.shape_classifier import (
        build_shape_classifier_parts,
        shape_classifier_step,
        train_shape_classifier,
    )

    train = split_tensors(ColoredMNIST(mnist_root, train=True))
    counterfactuals = generate_counterfactuals(load_counterfactual_backend(cgn_checkpoint), 30, seed=1)
    options = dict(seed=4, batch_size=16, max_real=70)
    parts = build_shape_classifier_parts(train, counterfactuals, **options)
    assert (parts.num_real, parts.num_cf) == (70, 30)
    losses = []
    for _ in range(2):
        losses += [shape_classifier_step(parts, batch) for batch in parts.epoch_batches()]
        parts.scheduler.step()
    assert len(losses) == 2 * -(-100 // 16) and all(loss.requires_grad is False for loss in losses)
    trained = train_shape_classifier(train, counterfactuals, epochs=2, **options).state_dict()
    stepped = parts.model.state_dict()
    assert all(torch.equal(trained[key], stepped[key]) for key in trained)
    assert train_classifier is train_shape_classifier


def test_old_import_paths_reach_the_moved_names():
    import cfaug.cli.evaluate as cli
    import cfaug.evaluation as evaluation
    import cfaug.evaluation.imagenet as imagenet
    import cfaug.evaluation.mnist as mnist
    import cfaug.evaluation.table2 as table2
    from cfaug.models.classifiers import ShapeClassifier as network

    assert mnist.ShapeClassifier is network and mnist.run_table2 is table2.run_table2
    for module, names in (
        (mnist, ("add_evaluate_mnist_arguments", "add_table2_options", "parse_named_weights", "weights_from_args")),
        (imagenet, ("add_evaluate_imagenet_arguments", "run_evaluate_imagenet")),
        (evaluation, ("add_evaluate_mnist_arguments", "run_evaluate_mnist", "run_evaluate_imagenet")),
    ):
        assert all(getattr(module, name) is getattr(cli, name) for name in names)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mnist.nothing  # noqa: B018


# ------------------------------------------------------------------------------------------ run_table2


def test_run_table2_writes_results_and_grid(mnist_root, cgn_checkpoint, tmp_path):
    results = _run(mnist_root, cgn_checkpoint, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert {(run["setting"], run["weights"]) for run in results["runs"]} == {
        ("original", None),
        ("original+cf", "ours"),
        ("cf", "ours"),
    }
    for run in results["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["accuracy_visible"] <= 1.0
    assert results["summary"]["original+cf"]["ours"]["accuracy"]["n"] == 1
    # This CGN has no mask estimator, so it cannot make real-shape counterfactuals: said, not silently dropped.
    assert results["summary"]["original+augment"]["ours"]["accuracy"]["n"] == 0
    assert [(entry["setting"], entry["weights"]) for entry in results["skipped"]] == [
        ("original+augment", "ours"),
        ("original+augment-online", "ours"),
    ]
    assert "no mask estimator" in results["skipped"][0]["reason"]
    assert "Original + CounterfactualAugment, ours: not run" in format_table2(results)
    assert results["paper"] == PAPER_TABLE2["colored_mnist"]
    with Image.open(tmp_path / "counterfactual_grid_colored_mnist_ours.png") as grid:
        assert grid.size[0] > 10 * 32 and grid.mode == "RGB"


def test_run_table2_trains_on_real_shape_counterfactuals(mnist_root, cgn_checkpoint, cgn_with_estimator, tmp_path):
    weights = {"estimator": cgn_with_estimator, "plain": cgn_checkpoint}
    results = _run(mnist_root, cgn_checkpoint, tmp_path / "a", weights=weights, settings=("original+augment",))
    assert [(run["setting"], run["weights"]) for run in results["runs"]] == [("original+augment", "estimator")]
    assert [entry["weights"] for entry in results["skipped"]] == ["plain"]
    again = _run(mnist_root, cgn_checkpoint, tmp_path / "b", weights=weights, settings=("original+augment",))
    assert again["runs"][0]["accuracy"] == results["runs"][0]["accuracy"]
    merged = merge_table2([results, again])
    assert merged["skipped"] == results["skipped"] and merged["config"]["settings"] == ["original+augment"]
    assert "| Original + CounterfactualAugment |" in format_table2(merged)
    # The grid shows real training images, each followed by counterfactuals of it.
    assert results["grids"]["estimator (real shapes)"] == "real_shape_grid_colored_mnist_estimator.png"
    with Image.open(tmp_path / "a" / results["grids"]["estimator (real shapes)"]) as grid:
        assert grid.mode == "RGB" and grid.size[0] > 10 * 32


def test_run_table2_augments_every_batch_online(mnist_root, cgn_checkpoint, cgn_with_estimator, tmp_path):
    weights = {"estimator": cgn_with_estimator, "plain": cgn_checkpoint}
    options = dict(weights=weights, settings=("original", "original+augment-online"), augment_p=0.75)
    results = _run(mnist_root, cgn_checkpoint, tmp_path / "a", **options)
    runs = {(run["setting"], run["weights"]): run["accuracy"] for run in results["runs"]}
    assert set(runs) == {("original", None), ("original+augment-online", "estimator")}
    assert [(entry["setting"], entry["weights"]) for entry in results["skipped"]] == [
        ("original+augment-online", "plain")
    ]
    assert results["config"]["augment_p"] == 0.75 and ", p=0.75 per batch" in format_table2(results)
    again = _run(mnist_root, cgn_checkpoint, tmp_path / "b", **options)
    assert again["runs"] == [{**run, "seconds": again["runs"][i]["seconds"]} for i, run in enumerate(results["runs"])]
    other_p = _run(mnist_root, cgn_checkpoint, tmp_path / "c", **{**options, "augment_p": 0.25})
    with pytest.raises(ValueError, match="'augment_p'"):
        merge_table2([results, other_p])
    with pytest.raises(ValueError, match="`augment_p`"):
        _run(mnist_root, cgn_checkpoint, tmp_path / "d", **{**options, "augment_p": 1.5})


def test_run_table2_keeps_finished_runs_when_interrupted(mnist_root, cgn_checkpoint, tmp_path, monkeypatch):
    import cfaug.evaluation.table2 as module  # run_table2 looks evaluate_classifier up there

    evaluate = module.evaluate_classifier
    calls = []

    def evaluate_then_stop(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the second run is stopped, as a wall-clock limit would
        calls.append(1)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate_classifier", evaluate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _run(mnist_root, cgn_checkpoint, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False and saved["config"]["device"] == "cpu"
    assert [(run["setting"], run["weights"]) for run in saved["runs"]] == [("original", None)]
    assert saved["summary"]["original"]["ours"]["accuracy"]["n"] == 1
    monkeypatch.setattr(module, "evaluate_classifier", evaluate)
    assert _run(mnist_root, cgn_checkpoint, tmp_path)["complete"] is True


def test_merge_table2_joins_seeds_and_columns_run_apart(mnist_root, cgn_checkpoint, tmp_path):
    options = dict(settings=("original", "cf"), num_counterfactuals=20)
    both = _run(mnist_root, cgn_checkpoint, tmp_path / "both", seeds=(0, 1), **options)
    seed0 = _run(mnist_root, cgn_checkpoint, tmp_path / "s0", seeds=(0,), **options)
    seed1 = json.loads(json.dumps(_run(mnist_root, cgn_checkpoint, tmp_path / "s1", seeds=(1,), **options)))
    merged = merge_table2([seed0, seed1])
    assert merged["runs"] == [{**run, "seconds": merged["runs"][i]["seconds"]} for i, run in enumerate(both["runs"])]
    assert merged["summary"] == both["summary"] and merged["config"]["seeds"] == [0, 1] and merged["complete"]
    assert merged["config"]["device"] == "cpu"
    # A merge merges again as results come in: the same runs, and the devices stay a flat list of names.
    assert merge_table2([merged, seed1])["runs"] == merged["runs"]
    on_gpu = json.loads(json.dumps(seed1))
    on_gpu["config"]["device"] = "cuda"
    twice = merge_table2([merge_table2([seed0, on_gpu]), seed0])
    assert twice["config"]["device"] == ["cpu", "cuda"]
    # A column with another number of counterfactuals (run apart) joins as its own column.
    more = _run(
        mnist_root,
        cgn_checkpoint,
        tmp_path / "more",
        settings=("cf",),
        num_counterfactuals=40,
        weights={"ours-40": cgn_checkpoint},
    )
    merged = merge_table2([seed0, seed1, more])
    assert merged["config"]["num_counterfactuals"] == {"ours": 20, "ours-40": 40}
    assert merged["summary"]["cf"]["ours-40"]["accuracy"]["n"] == 1
    assert merged["summary"]["cf"]["ours"]["accuracy"]["n"] == 2
    assert "ours: 20 counterfactuals, ours-40: 40 counterfactuals" in format_table2(merged)
    # Merged again with a later part, the per-column counts survive.
    again = merge_table2([merged, seed0])
    assert again["config"]["num_counterfactuals"] == {"ours": 20, "ours-40": 40} and again["runs"] == merged["runs"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda part: part.update(variant="wildlife_mnist"), "should all be 'colored_mnist'"),
        (lambda part: part["config"].update(epochs=3), "should share 'epochs'"),
        (lambda part: part["config"]["weights"].update(ours="other.safetensors"), "one set of weights"),
        (lambda part: part["runs"][0].update(accuracy=0.5), "should agree on every run"),
        (lambda part: part.pop("runs"), "lacks \\['runs'\\]"),
    ],
)
def test_merge_table2_rejects_parts_that_do_not_fit(mnist_root, cgn_checkpoint, tmp_path, change, message):
    part = _run(mnist_root, cgn_checkpoint, tmp_path, settings=("original",))
    other = json.loads(json.dumps(part))
    change(other)
    with pytest.raises(ValueError, match=message):
        merge_table2([part, other])
    with pytest.raises(ValueError, match="at least one"):
        merge_table2([])


def test_run_table2_same_seed_same_accuracy(mnist_root, cgn_checkpoint, tmp_path):
    options = dict(settings=("cf",), num_counterfactuals=20)
    first = _run(mnist_root, cgn_checkpoint, tmp_path / "a", **options)["runs"]
    second = _run(mnist_root, cgn_checkpoint, tmp_path / "b", **options)["runs"]
    assert [run["accuracy"] for run in first] == [run["accuracy"] for run in second]


@pytest.mark.parametrize(
    ("changes", "argument"),
    [
        ({"variant": "fashion_mnist"}, "variant"),
        ({"settings": ("original", "cgn")}, "settings"),
        ({"settings": ("original", "original")}, "settings"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (-1,)}, "seeds"),
        ({"epochs": 0}, "epochs"),
        ({"num_counterfactuals": 0}, "num_counterfactuals"),
        ({"dataset_seed": -2}, "dataset_seed"),
        ({"max_train_images": 0}, "max_train_images"),
        ({"weights": {}}, "weights"),
        ({"weights": {"authors": "missing/colored_mnist.pth"}}, "weights"),
    ],
)
def test_run_table2_rejects_bad_arguments(mnist_root, cgn_checkpoint, tmp_path, changes, argument):
    options = dict(
        variant="colored_mnist",
        weights={"ours": cgn_checkpoint},
        seeds=(0,),
        epochs=1,
        data_root=mnist_root,
        out_dir=tmp_path,
        progress=False,
    )
    options.update(changes)
    with pytest.raises(ValueError, match=f"`{argument}"):
        run_table2(**options)
    assert not (tmp_path / "results.json").exists()


# ------------------------------------------------------------------------------------------ table


def _stats(values: list[float]) -> dict:
    import statistics

    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def test_format_table2_shows_mean_std_paper_and_visible_column():
    summary = {
        "original": {
            name: {"accuracy": _stats([10.0, 12.0, 14.0]), "accuracy_visible": _stats([11.0, 11.0, 11.0])}
            for name in ("ours", "authors")
        },
        "original+cf": {
            "ours": {"accuracy": _stats([80.0, 90.0]), "accuracy_visible": _stats([88.0, 98.0])},
            "authors": {"accuracy": _stats([85.0]), "accuracy_visible": _stats([94.0])},
        },
    }
    results = {
        "variant": "double_colored_mnist",
        "config": {"epochs": 2, "seeds": [0, 1, 2], "num_counterfactuals": 100, "num_test_images": 10_000},
        "summary": summary,
        "paper": PAPER_TABLE2["double_colored_mnist"],
    }
    table = format_table2(results).splitlines()
    assert table[2] == (
        "| Setting | ours (test %) | ours (visible digits %) | authors (test %) | authors (visible digits %) "
        "| paper (test %) |"
    )
    assert table[4] == "| Original | 12.0 ± 2.0 | 11.0 ± 0.0 | 12.0 ± 2.0 | 11.0 ± 0.0 | 10.3 |"
    assert table[5] == "| Original + CF | 85.0 ± 7.1 | 93.0 ± 7.1 | 85.0 | 94.0 | 89.0 |"
    results["variant"] = "colored_mnist"
    results["paper"] = PAPER_TABLE2["colored_mnist"]
    results["summary"] = {"cf": {"ours": {"accuracy": _stats([50.0]), "accuracy_visible": _stats([50.0])}}}
    assert format_table2(results).splitlines()[-1] == "| CF only | 50.0 | – |"
    with pytest.raises(ValueError, match="`results`"):
        format_table2({"variant": "colored_mnist"})


# ------------------------------------------------------------------------------------------ command line


def test_cli_runs_and_prints_the_table(mnist_root, cgn_checkpoint, tmp_path, capsys):
    parser = add_evaluate_mnist_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "colored_mnist",
            "--out-dir",
            str(tmp_path),
            "--weights",
            f"ours={cgn_checkpoint}",
            "--seeds",
            "0",
            "1",
            "--epochs",
            "1",
            "--num-counterfactuals",
            "20",
            "--settings",
            "original",
            "cf",
            "--data-root",
            mnist_root,
            "--no-progress",
        ]
    )
    assert run_evaluate_mnist(args) == 0
    printed = capsys.readouterr().out
    assert "| Original |" in printed and "| CF only |" in printed and "35.9" in printed
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["cf"]["ours"]["accuracy"]["n"] == 2 and not math.isnan(summary["cf"]["ours"]["accuracy"]["mean"])


def test_cli_rejects_authors_dir_without_the_file(mnist_root, tmp_path):
    parser = add_evaluate_mnist_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["wildlife_mnist", "--out-dir", str(tmp_path), "--authors-dir", str(tmp_path), "--data-root", mnist_root]
    )
    with pytest.raises(ValueError, match="`--authors-dir`"):
        run_evaluate_mnist(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["colored_mnist", "--out-dir", "x", "--weights", "no-equals-sign"])


def test_benchmark_script_merges_results_files(mnist_root, cgn_checkpoint, tmp_path, capsys):
    module = _load_benchmark("mnist_table2")
    weights = shutil.copy(cgn_checkpoint, tmp_path / "colored_mnist.safetensors")
    _run(mnist_root, str(weights), tmp_path / "s0", seeds=(0,), settings=("original",), batch_size=32)
    # Seed 1 through the script itself, its weights named by a {variant} template.
    template = str(tmp_path / "{variant}.safetensors")
    options = ["--variants", "colored_mnist", "--settings", "original", "--seeds", "1", "--epochs", "1"]
    options += ["--data-root", mnist_root, "--batch-size", "32", "--no-progress", "--out-dir", str(tmp_path / "s1")]
    assert module.main([*options, "--weights", f"ours={template}"]) == 0
    part = json.loads((tmp_path / "s1" / "colored_mnist" / "results.json").read_text())
    assert part["config"]["batch_size"] == 32
    assert part["config"]["weights"] == {"ours": str(tmp_path / "colored_mnist.safetensors")}
    with pytest.raises(ValueError, match="`--weights` should name each column once"):
        module.main([*options, "--weights", f"ours={template}", "--weights", f"ours={template}"])

    files = [str(tmp_path / "s0" / "results.json"), str(tmp_path / "s1" / "colored_mnist" / "results.json")]
    assert module.main(["--merge", *files, "--merged-out", str(tmp_path / "merged.json")]) == 0
    assert "**colored_mnist**: 1 epochs, seeds [0, 1]" in capsys.readouterr().out
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["colored_mnist"]["summary"]["original"]["ours"]["accuracy"]["n"] == 2


def _load_benchmark(name: str):
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_appearance_benchmark_separates_a_random_generator_from_real_images(
    mnist_root, cgn_checkpoint, tmp_path, capsys
):
    module = _load_benchmark("mnist_appearance")
    out = tmp_path / "appearance.json"
    options = ["--variant", "colored_mnist", "--data-root", mnist_root, "--per-class", "4", "--json", str(out)]
    grid = tmp_path / "appearance.png"
    assert module.main([*options, "--weights", f"untrained={cgn_checkpoint}", "--grid", str(grid)]) == 0
    with Image.open(grid) as picture:  # a row per class; 4 real images, then 4 generated ones
        assert picture.size == (2 + 8 * (96 + 2), 2 + 10 * (96 + 2))
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["real (floor)", "untrained"]
    for level in ("32px", "16px"):
        floor, untrained = results["real (floor)"][level], results["untrained"][level]
        assert len(untrained["per_class"]) == 10
        # An untrained generator paints grey noise, real digits are coloured strokes on black.
        assert untrained["mean"] > 3 * floor["mean"] > 0
    with pytest.raises(ValueError, match="`per_class` 6 needs 12 training images of class 0, but it has 10"):
        module.main([*options[:-4], "--per-class", "6", "--weights", f"untrained={cgn_checkpoint}"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        module.main([*options[:-4], "--per-class", "0", "--weights", f"untrained={cgn_checkpoint}"])
    assert "--per-class should be a positive number of images, but got 0" in capsys.readouterr().err


def test_sliced_wasserstein_is_zero_for_one_set_and_grows_with_a_colour_shift():
    module = _load_benchmark("mnist_appearance")
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    directions = module.random_directions(3, count=16)
    same = module.sorted_projections(images, directions, seed=1)
    assert module.sliced_wasserstein(same[32], same[32]) == 0.0
    distances = []
    for shift in (0.0, 0.1, 0.2):
        shifted = module.sorted_projections((images + shift).clamp(0, 1), directions, seed=1)
        distances.append(module.sliced_wasserstein(shifted[32], same[32]))
    assert distances[0] == 0.0 < distances[1] < distances[2]
    with pytest.raises(ValueError, match="`a` and `b` should have one shape"):
        module.sliced_wasserstein(same[32], same[16][:, :10])
