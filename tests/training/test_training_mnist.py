"""MNIST CGN training: losses, discriminators, feature network, config, run folder, resume, export, collapse."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import shared_path, write_mnist_idx
from PIL import Image

import cfaug
from cfaug.backends.mnist import MnistBackend
from cfaug.checkpoint import load_checkpoint
from cfaug.training import (
    AUTHORS_PRESETS,
    PRESETS,
    FeatureNetworkError,
    MaskCollapseError,
    TrainConfig,
    add_train_mnist_arguments,
    build_feature_network,
    get_preset,
    losses,
    run_train_mnist,
    train_cgn_mnist,
)
from cfaug.training import features as features_module
from cfaug.training import mnist as trainer
from cfaug.training.cli import config_from_args
from cfaug.training.discriminators import DiscConv, DiscLin, build_discriminator
from cfaug.training.monitor import MaskStats, detect_collapse, mask_stats
from cfaug.training.shape_teacher import train_shape_teacher

# ------------------------------------------------------------------------------------------ fake data


def _fake_digits(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright rectangles of random size and place, well inside the 28x28 frame (as digits are)."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    for i in range(n):
        top, left = torch.randint(5, 11, (2,), generator=generator).tolist()
        height, width = torch.randint(6, 12, (2,), generator=generator).tolist()
        images[i, top : top + height, left : left + width] = 255
    return images, labels


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    write_mnist_idx(raw, "train", *_fake_digits(60, generator))  # split 5:1 -> 50 training images
    write_mnist_idx(raw, "t10k", *_fake_digits(10, generator))
    return str(root)


@pytest.fixture(autouse=True)
def _no_imagenet_vgg_in_cache(tmp_path, monkeypatch):
    """Point the torch hub cache at an empty folder, so "auto" resolves to the random VGG16 on every machine."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def tiny(mnist_root: str, **changes) -> TrainConfig:
    """A seconds-long run of the colored MNIST preset: batch 8, 2 style images, 40 training images."""
    values = dict(
        data_root=mnist_root,
        steps=4,
        batch_size=8,
        style_batch=2,
        train_images=40,
        log_every=2,
        sample_every=2,
        checkpoint_every=2,
        probe_per_class=2,
        collapse_after=10_000,
        shape_teacher_steps=5,
        progress=False,
        num_threads=1,  # tiny convolutions: a second thread only adds contention on a shared CPU
    )
    values.update(changes)
    return get_preset("colored_mnist", **values)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def _stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ losses


def test_binary_entropy_is_one_at_half_and_zero_for_binary_masks():
    assert losses.binary_entropy_loss(torch.full((2, 1, 4, 4), 0.5)).item() == pytest.approx(1.0)
    binary = torch.zeros(2, 1, 4, 4)
    binary[:, :, :2] = 1
    assert losses.binary_entropy_loss(binary).item() == pytest.approx(0.0, abs=1e-4)
    # H2(0.25) = 0.25 log2(4) + 0.75 log2(4/3) = 0.8113
    assert losses.binary_entropy_loss(torch.full((1, 1, 2, 2), 0.25)).item() == pytest.approx(0.811278, abs=1e-5)


def test_gram_matrix_of_known_features():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # C=2, H=1, W=2
    expected = torch.tensor([[1 + 4, 3 + 8], [3 + 8, 9 + 16]]) / 4.0  # F F^T / (C H W)
    assert torch.allclose(losses.gram_matrix(features)[0], expected)
    with pytest.raises(ValueError, match="`features` should be"):
        losses.gram_matrix(torch.zeros(2, 3))


def test_style_loss_is_weighted_l1_between_grams():
    fake = [torch.ones(1, 2, 2, 2)]
    real = [torch.zeros(1, 2, 2, 2)]
    # Gram of ones: every entry 4 / 8 = 0.5; L1 against zeros is 0.5; times the weight.
    assert losses.style_loss(fake, real, [3.0]).item() == pytest.approx(1.5)
    assert losses.style_loss(fake, fake, [3.0]).item() == 0.0
    assert losses.style_layer_weights([0.05, 0.1, 0.0, 1.0]) == pytest.approx((12.5, 50.0, 0.0, 5000.0))
    with pytest.raises(ValueError, match="one length"):
        losses.style_loss(fake, real, [1.0, 2.0])


def test_mask_area_interval_loss_is_zero_inside_and_linear_outside():
    inside = torch.full((3, 1, 4, 4), 0.2)
    assert losses.mask_area_interval_loss(inside, 0.1, 0.3).item() == 0.0
    below, above = torch.full((1, 1, 4, 4), 0.05), torch.full((1, 1, 4, 4), 0.5)
    assert losses.mask_area_interval_loss(below, 0.1, 0.3).item() == pytest.approx(0.05)
    assert losses.mask_area_interval_loss(above, 0.1, 0.3).item() == pytest.approx(0.2)
    # Per image, then averaged: one bad image is not hidden by a good one.
    assert losses.mask_area_interval_loss(torch.cat([inside[:1], above]), 0.1, 0.3).item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        losses.mask_area_interval_loss(inside, 0.4, 0.3)


def test_border_loss_measures_mask_mass_in_the_border_band():
    centre = torch.zeros(1, 1, 8, 8)
    centre[..., 2:6, 2:6] = 1
    assert losses.mask_border_loss(centre, 2).item() == 0.0
    assert losses.mask_border_loss(1 - centre, 2).item() == pytest.approx(1.0)
    assert losses.border_band(8, 2).sum().item() == 64 - 16
    with pytest.raises(ValueError, match="`width`"):
        losses.border_band(8, 5)


def test_spread_loss_pushes_mass_towards_the_centre():
    centre, frame = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    centre[..., 12:20, 12:20] = 1
    frame[..., 3:29, 3:29] = 1
    frame[..., 8:24, 8:24] = 0  # a box with a hole, as inverted masks look
    spreads = losses.mask_spread(torch.cat([centre, frame]))
    assert spreads[0] < 0.1 < 0.45 < spreads[1]
    # Two symmetric pixels at (row, col) = (0, 15.5 +- 0.5): r^2 = 1 + (1/31)^2.
    pair = torch.zeros(1, 1, 32, 32)
    pair[..., 0, 15:17] = 1
    assert losses.mask_spread(pair).item() == pytest.approx(1 + (1 / 31) ** 2, rel=1e-4)
    assert losses.mask_spread_loss(centre, 0.4).item() == 0.0
    assert losses.mask_spread_loss(frame, 0.4).item() == pytest.approx(spreads[1].item() - 0.4, rel=1e-5)
    frame.requires_grad_(True)
    losses.mask_spread_loss(frame, 0.4).backward()
    assert frame.grad[0, 0, 3, 3] > 0 > frame.grad[0, 0, 16, 5]  # the corner sheds mass faster than the edge


def test_lsgan_losses():
    ones, zeros = torch.ones(4), torch.zeros(4)
    assert losses.lsgan_generator_loss(ones).item() == 0.0
    assert losses.lsgan_generator_loss(zeros).item() == 1.0
    assert losses.lsgan_discriminator_loss(ones, zeros).item() == 0.0
    assert losses.lsgan_discriminator_loss(zeros, ones).item() == 1.0


# ------------------------------------------------------------------------------------ discriminators


def test_discriminators_have_the_authors_sizes_and_score_each_image():
    images, labels = torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([0, 5, 9])
    for kind, cls, params in (("linear", DiscLin, 2_104_421), ("conv", DiscConv, 413_642)):
        disc = build_discriminator(kind)
        assert isinstance(disc, cls)
        assert sum(p.numel() for p in disc.parameters()) == params
        assert disc(images, labels).shape == (3,)
    with pytest.raises(ValueError, match="Unknown value 'mlp' for argument `disc`"):
        build_discriminator("mlp")


# ------------------------------------------------------------------------------------ feature network


def test_feature_network_is_offline_random_by_default_and_never_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the feature network must never download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = build_feature_network((3, 8, 15), "auto")
    assert "random" in net.description
    assert len(net.features) == 16  # truncated after relu3_3 (index 15): relu4_3's block is never built
    outputs = net(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert [tuple(o.shape[1:]) for o in outputs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert not any(p.requires_grad for p in net.parameters())
    # Deterministic: the same weights in every process.
    again = build_feature_network((3,), "random")
    assert torch.equal(again.features[0].weight, net.features[0].weight)


def test_feature_network_errors_are_clear(tmp_path):
    with pytest.raises(FeatureNetworkError, match="not in the torch hub cache .* never downloads"):
        build_feature_network((3,), "imagenet")
    with pytest.raises(FeatureNetworkError, match="weights file not found"):
        build_feature_network((3,), str(tmp_path / "vgg16.pth"))
    with pytest.raises(ValueError, match="Unknown value 'imagnet' for argument `feature_net`"):
        build_feature_network((3,), "imagnet")
    with pytest.raises(ValueError, match="`layers` should be increasing"):
        build_feature_network((8, 3), "random")


def test_feature_network_loads_weights_from_a_file_and_the_hub_cache(tmp_path):
    donor = build_feature_network((3, 8, 15, 22), "random")
    state = {f"features.{k}": v.clone() + 1 for k, v in donor.features.state_dict().items()}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loaded = build_feature_network((3, 8), path)
    assert torch.equal(loaded.features[2].weight, state["features.2.weight"])
    # A file in the hub cache with the wrong digest is refused, not silently used.
    cached = features_module.imagenet_vgg16_cache_path()
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    with pytest.raises(ValueError, match="sha256"):
        build_feature_network((3,), "auto")
    assert "imagenet" in build_feature_network((3,), "imagenet", check_hash=False).description


# --------------------------------------------------------------------------------------------- config


def test_presets_follow_the_authors_table():
    for variant, (mask, style, disc, init) in {
        "colored_mnist": (0.1, (0.05, 0.1, 0.01, 0.0), "linear", ("orthogonal", 0.1)),
        "double_colored_mnist": (0.3, (0.0, 0.05, 0.0, 0.05), "linear", ("orthogonal", 0.2)),
        "wildlife_mnist": (0.3, (0.01, 0.05, 0.0, 0.01), "conv", ("normal", 0.03)),
    }.items():
        for preset in (PRESETS[variant], AUTHORS_PRESETS[variant]):
            assert (preset.lambda_mask, preset.style_weights, preset.disc) == (mask, style, disc)
            assert (preset.init_type, preset.init_gain) == init
        authors = AUTHORS_PRESETS[variant]
        assert (authors.batch_size, authors.steps, authors.lr, authors.betas) == (16, 46_875, 2e-4, (0.5, 0.999))
        assert authors.mask_area is None and authors.lambda_border == 0 and authors.ema_kimg == 0
        ours = PRESETS[variant]
        assert ours.mask_area is not None and ours.lambda_border > 0 and ours.ema_kimg > 0


def test_config_rejects_bad_values_with_clear_messages():
    with pytest.raises(ValueError, match="Unknown value 'svhn' for argument `variant`"):
        TrainConfig(variant="svhn")
    with pytest.raises(ValueError, match="`batch_size` should be an integer >= 1, but got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(TypeError, match="`lr` should be a finite number"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match="`mask_area` should be"):
        TrainConfig(mask_area=(0.5, 0.1), lambda_area=1.0)
    with pytest.raises(ValueError, match="`style_weights` should be 4"):
        TrainConfig(style_weights=(1.0,))
    with pytest.raises(ValueError, match="`style_batch` should be at most"):
        TrainConfig(batch_size=8, style_batch=9)
    with pytest.raises(ValueError, match="Unknown TrainConfig fields \\['colour'\\]"):
        TrainConfig.from_dict({"colour": "red"})
    config = PRESETS["wildlife_mnist"]
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ------------------------------------------------------------------------------------------- training


def test_a_run_writes_its_folder_and_changes_the_weights(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    final = train_cgn_mnist(tiny(mnist_root), run_dir)
    assert final == run_dir / "final.safetensors"

    document = json.loads((run_dir / "config.json").read_text())
    assert TrainConfig.from_dict(document["config"]) == tiny(mnist_root)
    assert "random" in document["resolved"]["feature_net"]
    assert document["resolved"]["style_layers"] == ["relu1_2", "relu2_2", "relu3_3"]
    assert document["resolved"]["train_images"] == 40

    records = _stats(run_dir)
    assert [r["step"] for r in records] == [0, 2, 4]
    for key in (
        "g_adv",
        "g_mask",
        "g_style",
        "g_area",
        "g_border",
        "g_spread",
        "d_loss",
        "d_real",
        "d_fake",
        "img_per_s",
        "batch_mask_area",
        "batch_mask_binariness",
        "probe_area_mean",
        "probe_binariness",
        "g_shape",
        "probe_shape_accuracy",
    ):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in records[1:]), key
    assert len(records[1]["probe_area_per_class"]) == 10
    assert len(records[1]["probe_shape_accuracy_per_class"]) == 10
    assert 0 <= document["shape_teacher"]["held_out_accuracy"] <= 1

    grids = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert grids == ["step-000000.png", "step-000002.png", "step-000004.png"]
    with Image.open(run_dir / "samples" / "step-000004.png") as grid:
        assert grid.size == (2 + 10 * 34, 2 + 10 * 34)  # 10 columns (2 x mask/fg/bg/image + 2 counterfactuals)

    state = load_checkpoint(run_dir / "checkpoints" / "latest.safetensors")
    assert state.meta["step"] == 4 and state.meta["kind"] == trainer.CHECKPOINT_KIND
    prefixes = {name.split(".")[0] for name in state.state_dict}
    assert prefixes == {"G", "G_ema", "D", "S", "opt_g", "opt_d"}

    # Resume from step 2 in another folder, to see the weights move between steps 2 and 4.
    early = tmp_path / "early"
    train_cgn_mnist(tiny(mnist_root, steps=2), early)
    before, after = _tensors(early / "checkpoints" / "latest.safetensors"), state.state_dict
    for name in (n for n in after if n.startswith(("G.f_", "G.label_emb", "D."))):
        if name.endswith(("num_batches_tracked",)):
            continue
        assert not torch.equal(before[name], after[name]), f"{name} did not change"
    assert not torch.equal(after["G.f_shape.0.weight"], after["G_ema.f_shape.0.weight"])  # the EMA lags


def test_an_export_after_the_last_step_still_records_mask_metrics(mnist_root, tmp_path):
    # A run stopped by a wall clock is exported by calling again with steps = its checkpoint's step: no training
    # step and no log line happen then, but the file must still describe the weights it holds.
    config = tiny(mnist_root, steps=2)
    final = train_cgn_mnist(config, tmp_path)
    final.unlink()
    meta = load_checkpoint(train_cgn_mnist(config, tmp_path)).meta
    assert meta["training"]["steps"] == 2
    assert 0 < meta["metrics"]["probe_area_mean"] < 1 and len(meta["metrics"]["probe_shape_accuracy_per_class"]) == 10


def test_resume_continues_bit_for_bit(mnist_root, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_cgn_mnist(tiny(mnist_root, steps=4), straight)
    train_cgn_mnist(tiny(mnist_root, steps=2), resumed)
    # The interrupted run logged a line past its checkpoint: it must not appear twice after resuming.
    with open(resumed / "stats.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 3, "g_total": -1.0}) + '\n{"step": 4, "trunc')
    train_cgn_mnist(tiny(mnist_root, steps=4), resumed)

    a, b = (
        _tensors(straight / "checkpoints" / "latest.safetensors"),
        _tensors(resumed / "checkpoints" / "latest.safetensors"),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _tensors(straight / "final.safetensors").keys() == _tensors(resumed / "final.safetensors").keys()
    for name, tensor in _tensors(straight / "final.safetensors").items():
        assert torch.equal(tensor, _tensors(resumed / "final.safetensors")[name]), name
    drop = ("train_seconds", "img_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _stats(straight)] == [
        {k: v for k, v in r.items() if k not in drop} for r in _stats(resumed)
    ]


def test_resume_refuses_another_recipe_and_resume_false_refuses_an_existing_run(mnist_root, tmp_path):
    train_cgn_mnist(tiny(mnist_root, steps=2), tmp_path)
    with pytest.raises(ValueError, match="another recipe \\(lr: 0.0002 -> 0.001\\)"):
        train_cgn_mnist(tiny(mnist_root, steps=4, lr=1e-3), tmp_path)
    with pytest.raises(ValueError, match="already holds a run"):
        train_cgn_mnist(tiny(mnist_root, steps=4), tmp_path, resume=False)


def test_ctrl_c_finishes_the_iteration_saves_and_stops(mnist_root, tmp_path, monkeypatch):
    original = trainer._Run.train_step

    def step_with_ctrl_c(self):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of iteration 2
        return original(self)

    monkeypatch.setattr(trainer._Run, "train_step", step_with_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="interrupted after iteration 2"):
        train_cgn_mnist(tiny(mnist_root, steps=4, checkpoint_every=100), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.safetensors").meta["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_exported_generator_loads_by_path_and_generates(mnist_root, tmp_path):
    final = train_cgn_mnist(tiny(mnist_root, steps=2), tmp_path)
    backend = cfaug.load_backend("mnist", weights=final)
    assert isinstance(backend, MnistBackend)
    parts = backend.sample([1, 2, 3], [4, 5, 6], [7, 8, 9], seeds=torch.tensor([0, 1, 2]))
    assert parts.image.shape == (3, 3, 32, 32)
    assert float(parts.image.min()) >= 0 and float(parts.image.max()) <= 1
    meta = load_checkpoint(final).meta
    assert meta["recipe"]["config"]["variant"] == "colored_mnist"
    assert meta["training"]["exported"] == "G_ema" and meta["training"]["steps"] == 2
    assert meta["training"]["train_seconds"] >= 0
    assert "probe_area_mean" in meta["metrics"]
    # The exported weights are the EMA of the training state.
    ema = {
        k[len("G_ema.") :]: v
        for k, v in _tensors(tmp_path / "checkpoints" / "latest.safetensors").items()
        if k.startswith("G_ema.")
    }
    assert all(torch.equal(ema[k], v) for k, v in backend.state_dict().items())


# ------------------------------------------------------------------------------------- collapse monitor


#: The detector's default thresholds (TrainConfig's collapse_* fields).
THRESHOLDS = dict(min_area=0.02, max_area=0.9, max_border=0.2, max_spread=0.45, min_diversity=0.01, max_similarity=0.97)


def _disc_masks(classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Healthy stand-in masks: discs placed round the centre by class, their radius set by the seed."""
    coords = torch.linspace(-1, 1, 32)
    angle = classes.float() * 2 * torch.pi / 10
    dx, dy = (0.35 * angle.cos())[:, None, None], (0.35 * angle.sin())[:, None, None]
    radius2 = (coords[None, None, :] - dx) ** 2 + (coords[None, :, None] - dy) ** 2
    radius = (0.2 + 0.25 * (seeds % 97).float() / 97)[:, None, None]
    return (radius2 < radius**2).float().clamp(1e-4, 1 - 1e-4)[:, None]


def test_detector_flags_each_kind_of_collapse():
    others = dict(binariness=0.95, similarity=[0.8] * 10, closest=[1, 0] + [0] * 8)
    healthy = MaskStats(area=[0.2] * 10, border=[0.0] * 10, spread=[0.3] * 10, diversity=[0.1] * 10, **others)
    assert detect_collapse(healthy, **THRESHOLDS) == []
    broken = MaskStats(
        area=[0.001, 0.95, 0.5, 0.2, 0.3] + [0.2] * 5,
        border=[0.0, 0.9, 0.6, 0.0, 0.0] + [0.0] * 5,
        spread=[0.3, 0.3, 0.3, 0.3, 0.6] + [0.3] * 5,
        diversity=[0.1, 0.1, 0.1, 0.0, 0.1] + [0.1] * 5,
        binariness=0.9,
        similarity=[0.8] * 5 + [0.99, 0.8, 0.8, 0.8, 0.99],
        closest=[1, 0, 0, 0, 0, 9, 0, 0, 0, 5],
    )
    problems = detect_collapse(broken, **THRESHOLDS)
    assert any(p.startswith("class 0: empty mask") for p in problems)
    assert any(p.startswith("class 1: full mask") for p in problems)
    assert any(p.startswith("class 2: frame mask") for p in problems)
    assert any(p.startswith("class 3: frozen mask") for p in problems)
    assert any(p.startswith("class 4: inverted mask") for p in problems)
    assert "class 5: merged with class 9 (mean masks 0.990 similar > 0.97)" in problems
    assert "class 9: merged with class 5 (mean masks 0.990 similar > 0.97)" in problems
    assert not any(p.startswith(f"class {c}") for p in problems for c in range(6, 9))


def test_detector_flags_a_wrong_digit_read_by_the_shape_teacher():
    healthy = dict(area=[0.2] * 10, border=[0.0] * 10, spread=[0.3] * 10, diversity=[0.1] * 10, binariness=0.95)
    others = dict(similarity=[0.8] * 10, closest=[1, 0] + [0] * 8)
    stats = MaskStats(**healthy, **others, shape_accuracy=[1.0] * 9 + [0.25])
    problems = detect_collapse(stats, **THRESHOLDS, min_shape_accuracy=0.5)
    assert problems == ["class 9: wrong digit (the shape teacher reads 25% of its masks as 9 < 50%)"]
    assert detect_collapse(stats, **THRESHOLDS) == []  # the check is off by default
    assert stats.summary()["shape_accuracy_min"] == 0.25


def test_shape_teacher_learns_shapes_and_measures_accuracy():
    generator = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 10, (1200,), generator=generator)
    masks = _disc_masks(classes, torch.randint(0, 10_000, (1200,), generator=generator))
    teacher, accuracy = train_shape_teacher(masks, classes, steps=60, batch_size=64, held_out=300)
    assert accuracy > 0.9  # chance: 0.1
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    again, _ = train_shape_teacher(masks, classes, steps=60, batch_size=64, held_out=300)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), again.state_dict().values(), strict=True)
    )
    stats = mask_stats(masks[:200], classes[:200], 10, border_width=3, teacher=teacher)
    assert min(stats.shape_accuracy) > 0.5
    wrong = mask_stats(masks[:200], (classes[:200] + 1) % 10, 10, border_width=3, teacher=teacher)
    assert max(wrong.shape_accuracy) < 0.5
    with pytest.raises(ValueError, match="`labels` should be a \\(1200,\\) tensor"):
        train_shape_teacher(masks, classes[:5])
    with pytest.raises(ValueError, match="`steps`"):
        train_shape_teacher(masks, classes, steps=0)
    with pytest.raises(ValueError, match="`lambda_shape` is positive but `shape_teacher_steps` is 0"):
        TrainConfig(lambda_shape=1.0)


@pytest.mark.shared
def test_detector_passes_real_digit_masks():
    from cfaug.datasets.mnist_variants import ColoredMNIST

    dataset = ColoredMNIST(str(shared_path("data")))
    for count in (2000, 80):  # many images per class, and as few as the probe has
        masks, classes = dataset.masks[:count, None].float(), dataset.targets[:count]
        assert detect_collapse(mask_stats(masks, classes, 10, border_width=3), **THRESHOLDS) == [], count


@pytest.mark.shared
def test_detector_passes_the_authors_released_generators():
    for variant in ("colored", "double_colored", "wildlife"):
        backend = MnistBackend.import_weights(shared_path("data", "reference_cgn_mnist", f"{variant}_mnist.pth"))
        classes = torch.arange(10).repeat_interleave(16)
        masks = backend.generate("shape", classes, torch.arange(len(classes)))
        stats = mask_stats(masks, classes, 10, border_width=3)
        assert detect_collapse(stats, **THRESHOLDS) == [], variant
        assert stats.binariness > 0.9


def test_forced_collapse_raises_and_is_logged(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setattr(
        MnistBackend, "shape_mechanism", lambda self, classes, seeds: torch.full((len(classes), 1, 32, 32), 1e-4)
    )
    config = tiny(mnist_root, collapse_after=0, collapse_action="raise")
    with pytest.raises(MaskCollapseError, match="class 0: empty mask .*class 9: empty mask"):
        train_cgn_mnist(config, tmp_path)
    last = _stats(tmp_path)[-1]
    assert last["step"] == 2
    assert [p for p in last["collapse"] if "empty mask" in p] == [
        f"class {c}: empty mask (mean area 0.0001 < 0.02)" for c in range(10)
    ]
    assert (tmp_path / "samples" / "step-000002.png").exists()  # the evidence is saved
    assert not (tmp_path / "final.safetensors").exists()  # nothing is exported

    with pytest.warns(RuntimeWarning, match="Mask collapse detected") as warned:
        train_cgn_mnist(dataclasses.replace(config, collapse_action="warn"), tmp_path / "warn")
    assert (tmp_path / "warn" / "final.safetensors").exists()
    assert {Path(w.filename).name for w in warned} == {Path(__file__).name}  # points at the caller's line


def test_healthy_masks_do_not_trigger_the_detector(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setattr(MnistBackend, "shape_mechanism", lambda self, classes, seeds: _disc_masks(classes, seeds))
    # Discs are healthy masks but no digits: the shape teacher's check is tested on its own above.
    config = tiny(
        mnist_root, collapse_after=0, collapse_action="raise", probe_per_class=4, collapse_min_shape_accuracy=0.0
    )
    final = train_cgn_mnist(config, tmp_path)
    assert final.exists()
    assert all(record["collapse"] == [] for record in _stats(tmp_path))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_arguments_build_the_config_and_train(mnist_root, tmp_path, capsys):
    parser = add_train_mnist_arguments(argparse.ArgumentParser(prog="cfaug train mnist"))
    argv = [
        "double_colored_mnist",
        "--run-dir",
        str(tmp_path),
        "--data-root",
        mnist_root,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--no-progress",
        "--num-threads",
        "1",
        "--set",
        "style_batch=2",
        "--set",
        "train_images=20",
        "--set",
        "mask_area=[0.05,0.4]",
        "--set",
        "probe_per_class=1",
        "--set",
        "shape_teacher_steps=5",
    ]
    args = parser.parse_args(argv)
    config = config_from_args(args)
    assert config == get_preset(
        "double_colored_mnist",
        data_root=mnist_root,
        steps=2,
        batch_size=4,
        progress=False,
        num_threads=1,
        style_batch=2,
        train_images=20,
        mask_area=(0.05, 0.4),
        probe_per_class=1,
        shape_teacher_steps=5,
    )
    assert run_train_mnist(args) == 0
    assert "final.safetensors" in capsys.readouterr().out
    with pytest.raises(ValueError, match="`--set` should be FIELD=VALUE"):
        config_from_args(parser.parse_args([*argv, "--set", "colour=red"]))
    assert (
        config_from_args(parser.parse_args(["wildlife_mnist", "--run-dir", "x", "--recipe", "authors"])).disc == "conv"
    )


def test_data_order_visits_every_item_once_per_epoch():
    order = trainer._DataOrder(num_items=10, batch_size=4, seed=3)
    stream = torch.cat([order.batch(step) for step in range(5)])  # 20 items = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # a new permutation each epoch
    assert torch.equal(trainer._DataOrder(10, 4, 3).batch(3), order.batch(3))  # a function of (seed, step)
