"""Table 2 at a matched budget: the kinds of counterfactual, the matched per-batch loop and its command line."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from test_evaluation_mnist import cgn_with_estimator, mnist_root  # noqa: F401 (fixtures, shared)
from toy_backend import ToyBackend

from cfaug.cli.evaluate import add_evaluate_mnist_arguments, check_evaluate_mnist_args, run_evaluate_mnist
from cfaug.evaluation.matched_budget import (
    KINDS,
    MatchedBudget,
    augment_batch,
    best_kinds,
    counterfactual_set,
    format_matched_budget,
    kind_augments,
    merge_matched_budget,
    train_matched,
)
from cfaug.evaluation.shape_classifier import build_shape_classifier_parts


class MaskBackend(ToyBackend):
    """The toy backend with a white texture and a black background: every counterfactual *is* its mask."""

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(classes), self.channels, self.image_size, self.image_size)

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(classes), self.channels, self.image_size, self.image_size)


def _kind_outputs(
    kind: str, labels: torch.Tensor, default_shape: str | None = None
) -> tuple[MaskBackend, torch.Tensor]:
    backend = MaskBackend(num_classes=2, image_size=32)
    backend.default_shape = default_shape  # what the weights recommend must not change what a kind makes
    images = torch.rand(len(labels), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    augments = kind_augments(backend, 1.0, torch.Generator().manual_seed(1))
    made = augment_batch(augments, images, labels, kind, torch.Generator().manual_seed(2))
    return backend, made


def _is_estimated_mask(backend: MaskBackend, made: torch.Tensor) -> torch.Tensor:
    estimated = (backend.radius2 < 0.5).float()
    return (made - estimated).abs().amax(dim=(1, 2, 3)) < 1e-6


def _generated_class(made: torch.Tensor) -> torch.Tensor:
    # The toy disc's radius is 0.3 + 0.3 (c + 1) for two classes (0.6 or 0.9, jittered by 0.05): read it back
    # from the disc's share of the [-1, 1] square.
    radius = (made[:, 0].mean(dim=(1, 2)) * 4 / torch.pi).sqrt()
    return (radius > 0.75).long()


RECOMMENDATIONS = [None, "real", "generated", "mixed"]


@pytest.mark.parametrize("default_shape", RECOMMENDATIONS)
def test_the_real_kind_keeps_the_estimated_mask(default_shape):
    labels = torch.arange(12) % 2
    backend, made = _kind_outputs("real", labels, default_shape)
    assert _is_estimated_mask(backend, made).all()


@pytest.mark.parametrize("default_shape", RECOMMENDATIONS)
def test_the_generated_kind_follows_the_label_class(default_shape):
    # With weights that recommend real shapes (the shipped MNIST weights), a label-aware call with shape="auto"
    # keeps the real shape: the generated kind must name its shape, or its runs measure real shapes twice.
    labels = torch.arange(12) % 2
    backend, made = _kind_outputs("generated", labels, default_shape)
    assert not _is_estimated_mask(backend, made).any()
    assert torch.equal(_generated_class(made), labels)


@pytest.mark.parametrize("default_shape", RECOMMENDATIONS)
def test_the_mixed_kind_gives_each_image_one_of_both(default_shape):
    labels = torch.ones(40, dtype=torch.int64)  # the larger disc, far from the estimated one
    backend, made = _kind_outputs("mixed", labels, default_shape)
    real_shape = _is_estimated_mask(backend, made)
    assert 8 <= int(real_shape.sum()) <= 32  # a draw of probability 1/2 per image
    assert (_generated_class(made[~real_shape]) == 1).all()
    _, again = _kind_outputs("mixed", labels, default_shape)
    assert torch.equal(made, again)  # seeded


def test_augment_batch_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        augment_batch({}, torch.rand(2, 3, 4, 4), torch.zeros(2), "shape")


def test_saved_sets_of_each_kind():
    backend = MaskBackend(num_classes=2, image_size=32)
    real = (torch.rand(10, 3, 32, 32), torch.arange(10) % 2)
    for kind in KINDS:
        images, labels = counterfactual_set(backend, real, 16, seed=0, kind=kind)
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and labels.shape == (16,)
        real_shape = _is_estimated_mask(backend, images.float() / 255)
        expected = {"real": 16, "generated": 0}.get(kind)
        if expected is None:
            assert 0 < int(real_shape.sum()) < 16
        else:
            assert int(real_shape.sum()) == expected
        assert torch.equal(_generated_class(images[~real_shape].float() / 255), labels[~real_shape])


# ------------------------------------------------------------------------------------------ the budget


def test_budget_matches_images_steps_and_expected_counterfactuals():
    budget = MatchedBudget(num_real=50, num_counterfactuals=30, batch_size=16, epochs=2)
    assert (budget.epoch_length, budget.steps_per_epoch, budget.images, budget.steps) == (80, 5, 160, 10)
    assert budget.p * budget.epoch_length == pytest.approx(30)


@pytest.mark.parametrize("kind", KINDS)
def test_per_batch_runs_see_the_saved_runs_images_and_steps(kind):
    backend = ToyBackend(num_classes=10, image_size=32)
    real = (torch.rand(50, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(50) % 10)
    budget = MatchedBudget(num_real=50, num_counterfactuals=30, batch_size=16, epochs=2)
    _, per_batch = train_matched(backend, real, budget, kind, "per-batch", seed=0)
    _, saved = train_matched(backend, real, budget, kind, "saved", seed=0)
    assert per_batch == saved == {"images": 160, "steps": 10}


def test_a_looped_epoch_shows_every_real_image_before_any_twice():
    real = (torch.rand(20, 3, 32, 32), torch.arange(20) % 10)
    seen: list[torch.Tensor] = []

    def record(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return images

    parts = build_shape_classifier_parts(real, None, batch_size=8, batch_transform=record, epoch_length=50)
    batches = list(parts.epoch_batches())
    assert [len(batch) for batch in batches] == [8] * 6 + [2] and parts.steps_per_epoch == 7
    order = torch.cat(batches)
    for start in (0, 20):
        assert torch.equal(order[start : start + 20].sort().values, torch.arange(20))
    assert len(set(order[40:].tolist())) == 10


def test_epoch_length_and_transform_combinations_are_checked():
    real = (torch.rand(4, 3, 32, 32), torch.arange(4))
    saved = (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.arange(2))
    with pytest.raises(ValueError, match="`epoch_length`"):
        build_shape_classifier_parts(real, saved, epoch_length=8)
    with pytest.raises(ValueError, match="`real_transform` and `batch_transform`"):
        build_shape_classifier_parts(real, None, real_transform=lambda x: x, batch_transform=lambda x, y: x)


def test_format_names_the_budget_and_the_best_kind():
    stats = lambda mean, n: {"mean": mean, "std": None if n < 2 else 0.5, "n": n}  # noqa: E731
    summary = {
        mode: {kind: {"accuracy": stats(m, n), "accuracy_visible": stats(m, n)} for kind, m, n in rows}
        for mode, rows in {
            "saved": [("real", 90.0, 3), ("generated", 80.0, 3)],
            "per-batch": [("real", 85.0, 1), ("generated", 88.0, 2)],
        }.items()
    }
    budget = MatchedBudget(100, 100, 64, 2).as_dict()
    results = {"variant": "colored_mnist", "config": {"budget": budget}, "summary": summary}
    assert best_kinds(results) == {"saved": "real", "per-batch": "generated"}
    table = format_matched_budget(results)
    assert "400 images and 8 steps" in table and "p=0.5" in table
    assert "| saved | real | 90.0 ± 0.5 (3 seeds) |" in table and "| per-batch | real | 85.0 (1 seed) |" in table
    assert "Best kind: saved real, per-batch generated" in table


# ------------------------------------------------------------------------------------------ command line


def _parse(*argv: str) -> argparse.Namespace:
    parser = add_evaluate_mnist_arguments(argparse.ArgumentParser(prog="cfaug evaluate mnist"))
    return parser.parse_args(["colored_mnist", "--out-dir", "out", *argv])


def test_cli_parses_the_matched_budget_flags():
    args = _parse(
        "--weights", "ours=cgn.safetensors", "--kinds", "real", "mixed", "--modes", "per-batch",
        "--seeds", "0", "1", "--epochs", "2", "--num-counterfactuals", "100", "--max-train-images", "100",
    )  # fmt: skip
    assert check_evaluate_mnist_args(args) is args
    assert (args.kinds, args.modes, args.seeds, args.epochs) == (["real", "mixed"], ["per-batch"], [0, 1], 2)
    assert (args.num_counterfactuals, args.max_train_images, args.settings) == (100, 100, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "saved"], "`--modes` should come with `--kinds`"),
        (["--kinds", "real", "--settings", "original"], "should not be combined"),
        (["--kinds", "real", "--augment-p", "0.3"], "`--augment-p` should not be given"),
        (["--kinds", "real", "--weights", "b=other.safetensors"], "exactly one CGN"),
        (["--kinds", "real", "--epochs", "0"], "`--epochs`"),
        (["--kinds", "real", "--max-train-images", "-5"], "`--max-train-images`"),
    ],
)
def test_cli_rejects_bad_combinations(argv, message):
    args = _parse("--weights", "a=cgn.safetensors", *argv)
    with pytest.raises(ValueError, match=message):
        check_evaluate_mnist_args(args)


def test_cli_rejects_an_unknown_kind(capsys):
    with pytest.raises(SystemExit):
        _parse("--kinds", "painted")
    assert "invalid choice" in capsys.readouterr().err


def test_cli_runs_the_matched_comparison_and_writes_results(
    mnist_root,  # noqa: F811 (the shared fixtures)
    cgn_with_estimator,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "run"
    args = _parse(
        "--weights", f"ours={cgn_with_estimator}", "--kinds", "real", "generated", "mixed",
        "--seeds", "0", "--epochs", "1", "--num-counterfactuals", "10", "--max-train-images", "20",
        "--batch-size", "8", "--data-root", mnist_root, "--no-progress",
    )  # fmt: skip
    args.out_dir = str(out)
    assert run_evaluate_mnist(args) == 0
    printed = capsys.readouterr().out
    assert "| per-batch | mixed |" in printed and "Best kind:" in printed
    results = json.loads((out / "matched_budget.json").read_text())
    assert results["complete"] and results["config"]["budget"]["steps"] == 4
    assert {(run["kind"], run["mode"]) for run in results["runs"]} == {
        (kind, mode) for kind in KINDS for mode in ("saved", "per-batch")
    }
    assert all(run["images"] == 30 and run["steps"] == 4 for run in results["runs"])
    assert sorted(results["grids"].values()) == [f"kinds_colored_mnist_{kind}.png" for kind in sorted(KINDS)]
    assert all((out / name).is_file() for name in results["grids"].values())


def _part(seed: int, accuracy: float, **config) -> dict:
    run = {"kind": "real", "mode": "per-batch", "seed": seed, "accuracy": accuracy, "accuracy_visible": accuracy}
    base = {"kinds": ["real"], "modes": ["per-batch"], "budget": MatchedBudget(10, 10, 4, 1).as_dict()}
    return {"variant": "colored_mnist", "complete": True, "config": {**base, **config}, "runs": [run]}


def test_merge_joins_seeds_and_refuses_other_protocols():
    merged = merge_matched_budget([_part(0, 0.8), _part(1, 0.9)])
    assert merged["config"]["seeds"] == [0, 1] and merged["best"] == {"per-batch": "real"}
    stats = merged["summary"]["per-batch"]["real"]["accuracy"]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(85.0)
    # A merge merges again with a later part (seeds run apart); the devices stay a flat list of names.
    again = merge_matched_budget([merged, _part(2, 0.7, device="cuda"), _part(3, 0.7, device="cpu")])
    assert again["config"]["seeds"] == [0, 1, 2, 3] and again["config"]["device"] == ["cpu", "cuda"]
    assert merge_matched_budget([again, _part(4, 0.7, device="cpu")])["config"]["device"] == ["cpu", "cuda"]
    with pytest.raises(ValueError, match="'budget'"):
        merge_matched_budget([_part(0, 0.8), _part(1, 0.9, budget=MatchedBudget(10, 20, 4, 1).as_dict())])
    with pytest.raises(ValueError, match="once"):
        merge_matched_budget([_part(0, 0.8), _part(0, 0.9)])
    with pytest.raises(ValueError, match="at least one"):
        merge_matched_budget([])


def test_the_benchmark_driver_runs_merges_and_resumes(
    mnist_root,  # noqa: F811 (the shared fixtures)
    cgn_with_estimator,  # noqa: F811
    tmp_path,
    capsys,
):
    """benchmarks/matched_budget.py: one process per run, two at a time, merged per variant; a rerun runs nothing."""
    from test_evaluation_mnist import _load_benchmark

    module = _load_benchmark("matched_budget")
    options = [
        "--variants", "colored_mnist", "--kinds", "real", "generated", "--modes", "per-batch", "--seeds", "0",
        "--epochs", "1",
        "--num-counterfactuals", "10", "--max-train-images", "20", "--batch-size", "8", "--data-root", mnist_root,
        "--jobs", "2", "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "merged.json"),
    ]  # fmt: skip
    assert module.main([*options, "--weights", cgn_with_estimator]) == 0
    printed = capsys.readouterr().out
    assert "2 runs, 0 already done; 2 to run, 2 at a time" in printed and "| per-batch | generated |" in printed
    merged = json.loads((tmp_path / "merged.json").read_text())["colored_mnist"]
    assert merged["complete"] and merged["config"]["seeds"] == [0]
    assert {(run["kind"], run["mode"]) for run in merged["runs"]} == {
        ("real", "per-batch"),
        ("generated", "per-batch"),
    }
    assert json.loads((tmp_path / "runs" / "matched_budget_colored_mnist.json").read_text()) == merged
    # Finished runs are not run again; a run that fails is named with its log, and the command exits with 1.
    assert module.main([*options, "--weights", cgn_with_estimator]) == 0
    assert "2 runs, 2 already done; 0 to run" in capsys.readouterr().out
    # A later call for fewer kinds still merges every finished run of the folder, so nothing drops out of the file.
    fewer = [*options[:4], *options[5:]]  # --kinds real
    assert fewer[2:5] == ["--kinds", "real", "--modes"]
    assert module.main([*fewer, "--weights", cgn_with_estimator]) == 0
    assert "1 runs, 1 already done; 0 to run" in capsys.readouterr().out
    assert json.loads((tmp_path / "merged.json").read_text())["colored_mnist"] == merged
    # Other settings into the same folders are refused, not mixed in: the earlier results stay as they were.
    other = [*options[:10], "2", *options[11:]]  # --epochs 2
    assert other[9:11] == ["--epochs", "2"]
    assert module.main([*other, "--weights", cgn_with_estimator]) == 2
    assert "with other settings" in capsys.readouterr().err
    assert json.loads((tmp_path / "runs" / "matched_budget_colored_mnist.json").read_text()) == merged
    # So is a folder this script did not write.
    stranger = tmp_path / "stranger" / "colored_mnist" / "real_per-batch_seed0"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("someone else's")
    assert module.main([*options[:-4], "--out-dir", str(tmp_path / "stranger"), "--weights", cgn_with_estimator]) == 2
    assert "no readable job.json" in capsys.readouterr().err
    assert (stranger / "notes.txt").read_text() == "someone else's"
    assert module.main([*options[:-4], "--out-dir", str(tmp_path / "bad"), "--weights", str(tmp_path / "none")]) == 1
    assert "failed: colored_mnist real per-batch seed 0; see" in capsys.readouterr().err
    assert (tmp_path / "bad" / "colored_mnist" / "real_per-batch_seed0" / "log.txt").read_text().strip()
