"""Training the mnist backend's mask estimator: generator untouched, determinism, save/load, IoU, CLI."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import write_mnist_idx
from torch import nn

import cfaug
from cfaug.backends.mnist import MnistBackend
from cfaug.checkpoint import load_checkpoint
from cfaug.cli import main
from cfaug.datasets.mnist_variants import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST
from cfaug.hub import WeightsError
from cfaug.training.mask_estimator import mask_iou, train_mask_estimator

# Tiny settings: a few seconds for the whole file on one thread.
FAST = dict(steps=2, batch_size=4, width=4, progress=False)


def tiny_backend(seed: int = 0) -> MnistBackend:
    torch.manual_seed(seed)
    return MnistBackend(latent_dim=8, ngf=8).eval().requires_grad_(False)


def estimator_state(backend: MnistBackend) -> dict[str, torch.Tensor]:
    return {k: v for k, v in backend.state_dict().items() if k.startswith("mask_net.")}


def generator_state(backend: MnistBackend) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in backend.state_dict().items() if not k.startswith("mask_net.") and k != "mask_estimator_trained"
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> str:
    """Fake MNIST: bright rectangles; 36 training images, so the variants' test split has 6."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(36, 28, 28, dtype=torch.uint8)
    for image in images:
        top, left = torch.randint(4, 12, (2,), generator=generator).tolist()
        height, width = torch.randint(6, 12, (2,), generator=generator).tolist()
        image[top : top + height, left : left + width] = 255
    write_mnist_idx(raw, "train", images, torch.arange(36) % 10)
    write_mnist_idx(raw, "t10k", images[:10], torch.arange(10))
    return str(root)


@pytest.fixture(scope="module")
def trained() -> tuple[MnistBackend, MnistBackend]:
    # Module fixtures run before conftest's per-test single-thread fixture; the thread count changes float sums,
    # so set it here too for the determinism test to compare like with like.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source = tiny_backend()
        return source, train_mask_estimator(source, seed=3, **FAST)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- training
def test_training_keeps_the_generators_default_shape():
    source = tiny_backend()
    source.default_shape = "real"
    assert train_mask_estimator(source, **FAST).default_shape == "real"


def test_training_changes_the_estimator_and_not_the_generator(trained):
    source, result = trained
    assert result is not source and source.mask_net is None  # the source is not modified
    assert_same(generator_state(result), generator_state(source))
    # One step more moves the estimator; the generator stays a copy of the source's.
    longer = train_mask_estimator(source, seed=3, **{**FAST, "steps": 3})
    assert_same(generator_state(longer), generator_state(source))
    moved = [k for k, v in estimator_state(result).items() if not torch.equal(v, estimator_state(longer)[k])]
    assert any(k.endswith(".weight") for k in moved)
    expected = {
        **source.arch_config(),
        "mask_estimator": True,
        "mask_estimator_width": 4,
        "mask_estimator_arch": "lite",
    }
    assert result.arch_config() == expected


def test_result_estimates_masks(trained):
    _, result = trained
    assert result.has_mask_estimator is True
    assert not result.training and not any(p.requires_grad for p in result.parameters())
    masks = result.estimate_mask(torch.rand(3, 3, 32, 32))
    assert masks.shape == (3, 1, 32, 32)
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1
    assert result.estimate_mask(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_training_is_deterministic_and_keeps_the_global_rng(trained):
    source, result = trained
    state = torch.get_rng_state()
    again = train_mask_estimator(source, seed=3, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same(again.state_dict(), result.state_dict())
    other = train_mask_estimator(source, seed=4, **FAST)
    assert not all(torch.equal(v, estimator_state(result)[k]) for k, v in estimator_state(other).items())


def test_augmentation_can_be_turned_off(trained):
    source, result = trained
    plain = train_mask_estimator(source, seed=3, hard_fraction=0.0, jitter=0.0, **FAST)
    assert plain.has_mask_estimator
    assert not all(torch.equal(v, estimator_state(result)[k]) for k, v in estimator_state(plain).items())


def test_saved_result_loads_back_with_a_trained_estimator(trained, tmp_path):
    source, result = trained
    path = tmp_path / "with_masks.safetensors"
    result.save(path)
    loaded = cfaug.load_backend("mnist", weights=path)
    assert loaded.has_mask_estimator
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.estimate_mask(images), result.estimate_mask(images))
    # A checkpoint path works as the source too, and the estimator is replaced by a fresh one.
    retrained = train_mask_estimator(path, seed=3, **FAST)
    assert_same(retrained.state_dict(), result.state_dict())


def test_generator_keys_must_match():
    class Extended(MnistBackend):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"`backend_or_weights` does not have the generator.*extra\.weight"):
        train_mask_estimator(Extended(latent_dim=8, ngf=8), **FAST)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"steps": 0}, ValueError, "`steps`"),
        ({"steps": 1.5}, TypeError, "`steps`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"lr": 0.0}, ValueError, "`lr`"),
        ({"lr": "fast"}, TypeError, "`lr`"),
        ({"width": 0}, ValueError, "`width`"),
        ({"seed": -1}, ValueError, "`seed`"),
        ({"hard_fraction": 1.5}, ValueError, "`hard_fraction`"),
        ({"jitter": -0.1}, ValueError, "`jitter`"),
        ({"progress": 1}, TypeError, "`progress`"),
        ({"device": 0}, TypeError, "`device`"),
        ({"device": "no-such-device"}, ValueError, "`device`"),
    ],
)
def test_bad_training_arguments(changes, error, match):
    with pytest.raises(error, match=match):
        train_mask_estimator(tiny_backend(), **{**FAST, **changes})


def test_bad_source():
    with pytest.raises(TypeError, match="`backend_or_weights` should be an MnistBackend"):
        train_mask_estimator(42, **FAST)
    with pytest.raises(WeightsError):
        train_mask_estimator("no/such/file.safetensors", **FAST)


# --------------------------------------------------------------------------------------------- mask_iou
def _oracle(dataset) -> Callable[[torch.Tensor], torch.Tensor]:
    """An estimate_mask that returns the dataset's true masks, batch after batch (mask_iou reads in order)."""
    position = 0

    def estimate(images: torch.Tensor) -> torch.Tensor:
        nonlocal position
        masks = dataset.masks[position : position + len(images), None].to(images.dtype)
        position += len(images)
        return masks

    return estimate


@pytest.mark.parametrize("variant", [ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST])
def test_mask_iou_is_one_for_a_perfect_estimator(variant, mnist_root, trained, monkeypatch):
    _, result = trained
    dataset = variant(mnist_root, train=False)
    monkeypatch.setattr(result, "estimate_mask", _oracle(dataset))
    metrics = mask_iou(result, dataset, batch_size=4)  # two batches, the last one short
    assert metrics == {
        "mean_iou": 1.0,
        "pooled_iou": 1.0,
        "pixel_accuracy": 1.0,
        "num_images": len(dataset),
        "threshold": 0.5,
    }


def test_mask_iou_of_a_trained_estimator_is_sensible(mnist_root, trained):
    _, result = trained
    dataset = ColoredMNIST(mnist_root, train=False)
    metrics = mask_iou(result, dataset, batch_size=4)
    assert metrics["num_images"] == len(dataset) == 6
    for key in ("mean_iou", "pooled_iou", "pixel_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    # At threshold 0 every pixel counts as object (a sigmoid of finite logits is > 0): the pooled IoU and the
    # accuracy are then the digits' share of the pixels.
    everything = mask_iou(result, dataset, threshold=0.0)
    share = float(dataset.masks.float().mean())
    assert everything["pooled_iou"] == pytest.approx(share)
    assert everything["pixel_accuracy"] == pytest.approx(share)


def test_mask_iou_counts_empty_images_as_exact(mnist_root, trained, monkeypatch):
    _, result = trained
    dataset = ColoredMNIST(mnist_root, train=False)
    dataset.masks = torch.zeros_like(dataset.masks)
    monkeypatch.setattr(result, "estimate_mask", lambda images: torch.zeros(len(images), 1, 32, 32))
    metrics = mask_iou(result, dataset)
    assert metrics["mean_iou"] == metrics["pooled_iou"] == metrics["pixel_accuracy"] == 1.0
    # Half the images all wrong: an object everywhere where there is none.
    monkeypatch.setattr(result, "estimate_mask", lambda images: torch.ones(len(images), 1, 32, 32))
    assert mask_iou(result, dataset)["mean_iou"] == 0.0


def test_mask_iou_keeps_the_backend_modes(mnist_root, trained):
    _, result = trained
    result.mask_net.train()
    try:
        mask_iou(result, ColoredMNIST(mnist_root, train=False))
        assert result.mask_net.training and not result.f_shape.training
    finally:
        result.eval()


def test_bad_mask_iou_arguments(mnist_root, trained):
    _, result = trained
    dataset = ColoredMNIST(mnist_root, train=False)
    with pytest.raises(TypeError, match="`backend`"):
        mask_iou("mnist", dataset)
    with pytest.raises(TypeError, match="`dataset`"):
        mask_iou(result, [torch.rand(3, 32, 32)])
    with pytest.raises(ValueError, match="`batch_size`"):
        mask_iou(result, dataset, batch_size=0)
    with pytest.raises(ValueError, match="`threshold`"):
        mask_iou(result, dataset, threshold=1.5)
    with pytest.raises(NotImplementedError, match="no mask estimator"):
        mask_iou(tiny_backend(), dataset)


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_trains_measures_and_saves(mnist_root, tmp_path, capsys):
    weights = tmp_path / "cgn.safetensors"
    tiny_backend().save(weights, recipe={"trainer": "test"})
    out = tmp_path / "masks" / "colored.safetensors"
    argv = ["train", "mask-estimator", "--weights", str(weights), "--variant", "colored_mnist"]
    argv += ["--data-root", mnist_root, "--out", str(out), "--steps", "2", "--batch-size", "4", "--width", "4"]
    assert main([*argv, "--seed", "1", "--threads", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mean IoU" in printed and "pooled IoU" in printed and "pixel accuracy" in printed
    assert out.is_file() and out.with_suffix(".png").is_file()
    meta = load_checkpoint(out).meta
    measured = meta["metrics"]["mask_iou"]
    assert measured["variant"] == "colored_mnist" and measured["split"] == "test" and measured["num_images"] == 6
    assert 0 <= measured["mean_iou"] <= 1
    assert meta["recipe"]["steps"] == 2 and meta["recipe"]["generator"]["recipe"] == {"trainer": "test"}
    assert meta["training"]["steps"] == 2 and meta["training"]["seconds"] >= 0
    loaded = cfaug.load_backend("mnist", weights=out)
    assert loaded.has_mask_estimator
    # The same seed through the Python function gives the same estimator.
    direct = train_mask_estimator(weights, seed=1, **FAST)
    assert_same(estimator_state(loaded), estimator_state(direct))
    assert loaded.mask_estimator_arch == "lite" and meta["recipe"]["arch"] == "lite"
    # Replacing that estimator (here by a U-Net) keeps the generator's own record, and notes what it replaced.
    again = tmp_path / "masks" / "unet.safetensors"
    argv = ["train", "mask-estimator", "--weights", str(out), "--variant", "colored_mnist", "--data-root", mnist_root]
    argv += ["--out", str(again), "--steps", "2", "--batch-size", "4", "--width", "4", "--arch", "unet"]
    assert main([*argv, "--threads", "1", "--no-progress"]) == 0
    replaced = load_checkpoint(again).meta["recipe"]
    assert replaced["arch"] == "unet" and replaced["generator"]["recipe"] == {"trainer": "test"}
    assert replaced["generator"]["replaces_estimator"]["arch"] == "lite"
    assert cfaug.load_backend("mnist", weights=again).mask_estimator_arch == "unet"


def test_cli_errors(mnist_root, tmp_path, capsys):
    weights = tmp_path / "cgn.safetensors"
    tiny_backend().save(weights)
    base = ["train", "mask-estimator", "--weights", str(weights), "--out", str(tmp_path / "o.safetensors")]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--variant", "mnist"])
    assert exit_info.value.code == 2
    assert main([*base, "--variant", "colored_mnist", "--data-root", str(tmp_path / "none")]) == 2
    assert "`--data-root`" in capsys.readouterr().err
    assert main([*base, "--variant", "colored_mnist", "--data-root", mnist_root, "--texture-root", "t"]) == 2
    assert "`--texture-root`" in capsys.readouterr().err
    assert main([*base, "--variant", "colored_mnist", "--data-root", mnist_root, "--steps", "0"]) == 2
    assert "`steps`" in capsys.readouterr().err
    assert main([*base, "--variant", "colored_mnist", "--data-root", mnist_root, "--threads", "0"]) == 2
    assert not (tmp_path / "o.safetensors").exists()
