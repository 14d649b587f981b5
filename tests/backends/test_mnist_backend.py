"""Tests of the ``mnist`` backend: the authors' MNIST CGN architecture, its fast path, import and persistence."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import shared_path
from torch import nn

import cfaug
from cfaug.backends.mnist import (
    BACKGROUND_NOISE_STREAM,
    BACKGROUND_SHIFT_STREAM,
    CPU_MICRO_BATCH,
    MASK_CLAMP,
    SHAPE_NOISE_STREAM,
    TEXTURE_NOISE_STREAM,
    TEXTURE_SHIFT_STREAM,
    MnistBackend,
    cyclic_shift,
    random_shift_offsets,
)
from cfaug.checkpoint import CheckpointError, load_checkpoint
from cfaug.seeding import per_sample_normal, per_sample_randint

AUTHORS_CHECKPOINTS = ("colored_mnist", "double_colored_mnist", "wildlife_mnist")
# The state-dict layout of the authors' released MNIST CGNs (checked against their files).
_BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
AUTHORS_KEYS = {
    "label_emb.weight",
    *("f_shape.0.weight", "f_shape.0.bias", "f_shape.4.weight", "f_shape.9.weight"),
    *(f"f_shape.{i}.{p}" for i in (5, 10) for p in _BATCH_NORM),
    *(f"f_text{n}.{k}" for n in (1, 2) for k in ("0.weight", "0.bias", "3.weight", "7.weight", "10.weight", "10.bias")),
    *(f"f_text{n}.{i}.{p}" for n in (1, 2) for i in (4, 8, 11) for p in _BATCH_NORM),
}

# Three instance norms in a row amplify float rounding in the mask; textures stay much closer.
MASK_ATOL = 2e-5
TEXTURE_ATOL = 1e-5


def random_backend(**kwargs) -> MnistBackend:
    """A random-init backend in eval mode whose outputs vary visibly (the authors' init gives grey textures)."""
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    backend = MnistBackend(init_type="orthogonal", init_gain=1.0, **kwargs)
    with torch.no_grad():
        for module in backend.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    torch.set_rng_state(generator_state)
    return backend.eval()


def generate_all(backend: MnistBackend, classes: torch.Tensor, seeds: torch.Tensor) -> list[torch.Tensor]:
    return [backend.generate(m, classes, seeds) for m in cfaug.MECHANISMS]


def assert_mechanisms_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for got, want, atol in zip(actual, expected, (MASK_ATOL, TEXTURE_ATOL, TEXTURE_ATOL), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------- architecture
def test_architecture_matches_the_authors_layout():
    backend = MnistBackend()
    assert set(backend.state_dict()) == AUTHORS_KEYS
    assert sum(p.numel() for p in backend.parameters() if p.requires_grad) == 659_992
    assert sum(p.numel() for p in backend.generator_parameters()) == 659_992
    assert backend.f_shape[0].in_features == 42 and backend.f_shape[0].out_features == 4096
    assert backend.f_text1[10].bias is not None and backend.f_text1[3].bias is None


def test_mask_estimator_is_separate_from_the_generator():
    backend = MnistBackend(mask_estimator=True)
    assert sum(p.numel() for p in backend.generator_parameters()) == 659_992
    assert sum(p.numel() for p in backend.mask_net.parameters()) == 31_844  # the lite estimator, width 16
    unet = MnistBackend(mask_estimator=True, mask_estimator_arch="unet")
    assert sum(p.numel() for p in unet.mask_net.parameters()) == 130_161
    assert "mask_estimator_trained" in backend.state_dict()
    assert backend.arch_config()["mask_estimator"] is True


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_size": 30}, ValueError, "`image_size` should be divisible by 4, but got 30"),
        ({"num_classes": 0}, ValueError, "`num_classes`"),
        ({"latent_dim": 2.5}, TypeError, "`latent_dim`"),
        ({"mask_estimator": "yes"}, TypeError, "`mask_estimator` should be a bool"),
        ({"init_type": "uniform"}, ValueError, "argument `init_type`"),
        ({"init_gain": -1.0}, ValueError, "`init_gain` should be a positive number"),
        ({"fast_path": 1}, TypeError, "`fast_path` should be a bool"),
        ({"micro_batch": 0}, ValueError, "`micro_batch`"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MnistBackend(**kwargs)


# -------------------------------------------------------------------------------------------- generation
def test_sample_shapes_and_value_ranges():
    backend = random_backend()
    parts = backend.sample([0, 3, 9, 9, 5], [1, 1, 2, 8, 0], [7, 4, 4, 0, 9], seeds=torch.arange(5))
    assert parts.image.shape == parts.foreground.shape == parts.background.shape == (5, 3, 32, 32)
    assert parts.mask.shape == (5, 1, 32, 32)
    for tensor in (parts.image, parts.foreground, parts.background):
        assert tensor.dtype == torch.float32 and 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert parts.mask.min() >= MASK_CLAMP and parts.mask.max() <= 1 - MASK_CLAMP
    # The outputs are real images, not constants.
    assert parts.mask.std() > 0.1 and parts.foreground.std() > 0.02 and parts.background.std() > 0.02


def test_same_seed_same_images_whatever_the_batch():
    backend = random_backend()
    classes = torch.tensor([2, 7, 7, 0, 5])
    seeds = torch.tensor([11, 12, 13, 14, 2**62])
    alone = [generate_all(backend, classes[i : i + 1], seeds[i : i + 1]) for i in range(5)]
    # 67 samples: the five cross a CPU micro-batch boundary (at 64, a multiple of the chunk size) and sit at other
    # positions.
    filler = 62
    big_classes = torch.cat([torch.randint(0, 10, (filler,)), classes])
    big = generate_all(backend, big_classes, torch.cat([torch.arange(1000, 1000 + filler), seeds]))
    assert CPU_MICRO_BATCH < len(big_classes) and 64 % CPU_MICRO_BATCH == 0
    for i in range(5):
        assert_mechanisms_close([t[filler + i : filler + i + 1] for t in big], alone[i])
    again = generate_all(backend, classes, seeds)
    assert all(torch.equal(a, b) for a, b in zip(again, generate_all(backend, classes, seeds), strict=True))


def test_different_seeds_give_different_images():
    backend = random_backend()
    classes = torch.tensor([4, 4])
    mask, foreground, background = generate_all(backend, classes, torch.tensor([1, 2]))
    assert (mask[0] - mask[1]).abs().max() > 0.1
    assert (foreground[0] - foreground[1]).abs().max() > 0.05
    assert (background[0] - background[1]).abs().max() > 0.05


def test_mechanisms_are_independent():
    backend = random_backend()
    seeds = torch.tensor([5, 5])
    parts = backend.sample([3, 3], [1, 8], [6, 6], seeds=seeds)
    # Changing the texture class changes only the foreground.
    assert torch.equal(parts.mask[0], parts.mask[1])
    assert torch.equal(parts.background[0], parts.background[1])
    assert (parts.foreground[0] - parts.foreground[1]).abs().max() > 0.05
    # Texture and background of the same class and seed use their own networks and streams.
    same = backend.sample([3], [6], [6], seeds=seeds[:1])
    assert (same.foreground - same.background).abs().max() > 0.05


def test_mechanisms_use_documented_streams():
    backend = random_backend()
    classes, seeds = torch.tensor([1, 8, 3]), torch.tensor([3, 99, 12345])
    mask, foreground, background = generate_all(backend, classes, seeds)
    with torch.no_grad():
        streams = (SHAPE_NOISE_STREAM, TEXTURE_NOISE_STREAM, BACKGROUND_NOISE_STREAM)
        u = {stream: per_sample_normal(seeds, stream, (32,)) for stream in streams}
        fg_offsets = per_sample_randint(seeds, TEXTURE_SHIFT_STREAM, 33, (2,))
        bg_offsets = per_sample_randint(seeds, BACKGROUND_SHIFT_STREAM, 33, (2,))
        raw = backend.forward_mechanisms(
            u[SHAPE_NOISE_STREAM],
            u[TEXTURE_NOISE_STREAM],
            u[BACKGROUND_NOISE_STREAM],
            classes,
            classes,
            classes,
            fg_offsets=fg_offsets,
            bg_offsets=bg_offsets,
        )
    assert_mechanisms_close([mask, foreground, background], [raw[0], (raw[1] + 1) / 2, (raw[2] + 1) / 2])


# -------------------------------------------------------------------------------------------- shuffler
def tile_and_crop(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The authors' shuffler, spelled out: tile 2x2, then crop an H x W window at each sample's offsets."""
    height, width = images.shape[-2:]
    tiled = torch.cat([torch.cat([images, images], dim=-1)] * 2, dim=-2)
    return torch.stack([tiled[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())])


def test_cyclic_shift_is_tile_and_crop():
    images = torch.randn(5, 3, 8, 6, requires_grad=True)
    offsets = torch.tensor([[0, 0], [8, 6], [3, 1], [7, 5], [1, 4]])
    shifted = cyclic_shift(images, offsets)
    torch.testing.assert_close(shifted, tile_and_crop(images, offsets), rtol=0, atol=0)
    torch.testing.assert_close(shifted[3], torch.roll(images[3], shifts=(-7, -5), dims=(-2, -1)), rtol=0, atol=0)
    # A cyclic shift moves pixels around: it keeps their multiset and lets gradients through.
    torch.testing.assert_close(shifted.sum(dim=(-2, -1)), images.sum(dim=(-2, -1)))
    shifted.sum().backward()
    torch.testing.assert_close(images.grad, torch.ones_like(images))


def test_random_shift_offsets_cover_the_authors_range():
    offsets = random_shift_offsets(4000, 32, generator=torch.Generator().manual_seed(0))
    assert offsets.shape == (4000, 2) and offsets.dtype == torch.int64
    assert offsets.min() == 0 and offsets.max() == 32


@pytest.mark.parametrize(
    ("images", "offsets", "error", "match"),
    [
        (torch.zeros(2, 8, 8), torch.zeros(2, 2, dtype=torch.long), ValueError, r"`images` should be a \(B, C, H, W\)"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(2, 2), TypeError, "`offsets` should be an integer tensor"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(3, 2, dtype=torch.long), ValueError, r"shape \(2, 2\), but got \(3, 2\)"),
    ],
)
def test_cyclic_shift_rejects_bad_input(images, offsets, error, match):
    with pytest.raises(error, match=match):
        cyclic_shift(images, offsets)


# ------------------------------------------------------------------------------------------- fast path
@pytest.mark.parametrize("micro_batch", [None, 7, 16])
def test_fast_path_equals_module_path(micro_batch):
    backend = random_backend(micro_batch=micro_batch)
    classes, seeds = torch.randint(0, 10, (40,)), torch.arange(40) * 7919
    assert backend.uses_fast_path() is False  # grad mode outside generate()
    with torch.no_grad():
        assert backend.uses_fast_path() is True
    fast = generate_all(backend, classes, seeds)
    backend.fast_path = False
    reference = generate_all(backend, classes, seeds)
    assert_mechanisms_close(fast, reference)
    assert all(t.is_contiguous() for t in fast)


def test_fast_path_not_used_in_training_mode_or_with_grad(monkeypatch):
    backend = random_backend()

    def forbidden() -> None:
        raise AssertionError("the fused networks must not be used here")

    monkeypatch.setattr(backend, "_fused_networks", forbidden)
    classes, seeds = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    # Autograd on: the module path runs and builds a graph.
    with torch.enable_grad():
        mask = backend.shape_mechanism(classes, seeds)
    assert mask.requires_grad
    # One submodule in training mode is enough to leave the fast path.
    backend.f_text1[4].train()
    with torch.no_grad():
        assert backend.uses_fast_path() is False
    backend.generate("texture", classes, seeds)
    backend.eval()
    backend.fast_path = False
    backend.sample(classes, classes, classes, seeds=seeds)


def test_generation_from_a_training_mode_backend_is_inference():
    backend = random_backend()
    classes, seeds = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    expected = backend.sample(classes, classes, classes, seeds=seeds).image
    backend.train()
    stats = {k: v.clone() for k, v in backend.state_dict().items() if "running" in k}
    image = backend.sample(classes, classes, classes, seeds=seeds).image
    assert backend.training, "the caller's training mode is restored"
    assert torch.equal(image, expected), "running statistics, not batch statistics, are used"
    assert all(torch.equal(v, backend.state_dict()[k]) for k, v in stats.items()), "running stats untouched"


def _modify_by_load_state_dict(backend: MnistBackend) -> None:
    backend.load_state_dict(random_backend_with_seed(1).state_dict())


def _modify_in_place(backend: MnistBackend) -> None:
    with torch.no_grad():
        backend.f_text1[3].weight.mul_(1.5)
        backend.f_shape[4].weight.add_(0.1)
        backend.f_text2[11].running_mean.add_(0.2)


def _modify_by_optimizer_step(backend: MnistBackend) -> None:
    backend.train()
    optimizer = torch.optim.SGD(backend.generator_parameters(), lr=0.5)
    u = torch.randn(8, 32)
    y = torch.randint(0, 10, (8,))
    mask, fg, bg = backend.forward_mechanisms(u, u, u, y, y, y, fg_offsets=None, bg_offsets=None)
    (mask.mean() + fg.mean() - bg.mean()).backward()
    optimizer.step()  # also updates the BatchNorm running statistics through the training forward
    backend.eval()


def random_backend_with_seed(seed: int) -> MnistBackend:
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    backend = MnistBackend(init_type="orthogonal", init_gain=1.0)
    torch.set_rng_state(state)
    return backend.eval()


@pytest.mark.parametrize("modify", [_modify_by_load_state_dict, _modify_in_place, _modify_by_optimizer_step])
def test_fused_weights_follow_weight_changes(modify):
    backend = random_backend()
    classes, seeds = torch.tensor([0, 4, 9]), torch.tensor([1, 2, 3])
    before = generate_all(backend, classes, seeds)
    modify(backend)
    after = generate_all(backend, classes, seeds)
    backend.fast_path = False
    assert_mechanisms_close(after, generate_all(backend, classes, seeds))
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, after, strict=True))


def test_fused_weights_follow_dtype_changes():
    backend = random_backend()
    classes, seeds = torch.tensor([0, 4, 9]), torch.tensor([1, 2, 3])
    generate_all(backend, classes, seeds)  # builds the float32 fused weights
    backend.double()
    fast = generate_all(backend, classes, seeds)
    assert all(t.dtype == torch.float64 for t in fast)
    backend.fast_path = False
    assert_mechanisms_close(fast, generate_all(backend, classes, seeds))


def test_backend_pickles_without_the_fused_cache():
    backend = random_backend()
    classes, seeds = torch.tensor([3]), torch.tensor([8])
    expected = generate_all(backend, classes, seeds)
    assert backend._fused is not None
    clone = pickle.loads(pickle.dumps(backend))
    assert clone._fused is None
    assert all(torch.equal(a, b) for a, b in zip(generate_all(clone, classes, seeds), expected, strict=True))


def test_deep_copy_has_its_own_fast_path_state():
    # The training loop keeps an EMA copy in eval mode next to the live generator in training mode.
    live = random_backend().train()
    ema = copy.deepcopy(live).eval().requires_grad_(False)
    with torch.no_grad():
        assert ema.uses_fast_path() and not live.uses_fast_path()
    classes, seeds = torch.tensor([2, 9]), torch.tensor([4, 5])
    before = generate_all(ema, classes, seeds)
    with torch.no_grad():
        for target, source in zip(ema.parameters(), random_backend_with_seed(3).parameters(), strict=True):
            target.lerp_(source, 0.5)
    after = generate_all(ema, classes, seeds)
    ema.fast_path = False
    assert_mechanisms_close(after, generate_all(ema, classes, seeds))
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, after, strict=True))


# ---------------------------------------------------------------------------------------- training API
def test_forward_mechanisms_is_differentiable_and_raw():
    backend = random_backend().train()
    u = torch.randn(6, 32)
    y = torch.randint(0, 10, (6,))
    offsets = random_shift_offsets(6, 32)
    mask, fg, bg = backend(u, u, u, y, y, y, fg_offsets=offsets, bg_offsets=offsets)
    assert mask.shape == (6, 1, 32, 32) and fg.shape == bg.shape == (6, 3, 32, 32)
    assert mask.min() >= MASK_CLAMP and mask.max() <= 1 - MASK_CLAMP
    assert fg.min() < 0 and -1 <= fg.min() and fg.max() <= 1  # tanh range, as the authors train
    cfaug.functional.composite(mask, fg, bg).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backend.generator_parameters())


def test_forward_mechanisms_rejects_mismatched_inputs():
    backend = random_backend()
    with pytest.raises(ValueError, match=r"`latent` should have shape \(B, 32\), but got \(2, 31\)"):
        backend.forward_mechanisms(*[torch.zeros(2, 31)] * 3, *[torch.zeros(2, dtype=torch.long)] * 3,
                                   fg_offsets=None, bg_offsets=None)  # fmt: skip
    with pytest.raises(ValueError, match=r"`classes` should have shape \(2,\)"):
        backend.mechanism_input(torch.zeros(2, 32), torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    backend = random_backend()
    path = tmp_path / "mnist.safetensors"
    backend.save(path, recipe={"note": "test"})
    loaded = cfaug.load_backend("mnist", weights=path)
    assert isinstance(loaded, MnistBackend) and not loaded.training
    assert loaded.arch_config() == backend.arch_config()
    assert loaded.weights_name == str(path) and len(loaded.weights_sha256) == 64
    assert not any(p.requires_grad for p in loaded.parameters())
    classes, seeds = torch.tensor([1, 5, 8]), torch.tensor([10, 20, 30])
    for a, b in zip(generate_all(loaded, classes, seeds), generate_all(backend, classes, seeds), strict=True):
        assert torch.equal(a, b)
    # Speed knobs are constructor overrides, not part of the checkpoint.
    assert cfaug.load_backend("mnist", weights=path, micro_batch=8, fast_path=False).micro_batch == 8


def test_entry_point_discovery():
    assert "mnist" in cfaug.list_backends()
    assert cfaug.list_backends("mni*") == ["mnist"]
    assert cfaug.get_backend_class("mnist") is MnistBackend
    assert MnistBackend.default_weights == "colored_mnist"


# ------------------------------------------------------------------------------------------ shipped weights
@pytest.mark.parametrize("name", ["colored_mnist", "double_colored_mnist", "wildlife_mnist"])
def test_shipped_weights_load_offline_and_generate(name, monkeypatch, tmp_path):
    monkeypatch.setenv("CFAUG_HOME", str(tmp_path))  # nothing cached: the file must come from the package
    backend = cfaug.load_backend("mnist", weights=name)
    assert backend.weights_name == name and backend.weights_sha256 == MnistBackend.named_weights[name].sha256
    parts = backend.sample([3, 7], [1, 1], [5, 0], seeds=torch.tensor([0, 1]))
    assert parts.image.shape == (2, 3, 32, 32) and parts.mask.shape == (2, 1, 32, 32)
    assert 0 <= parts.image.min() and parts.image.max() <= 1
    # Each file carries a trained mask estimator for image-only CounterfactualAugment.
    assert backend.has_mask_estimator
    masks = backend.estimate_mask(parts.image)
    iou = ((masks > 0.5) & (parts.mask > 0.5)).sum() / ((masks > 0.5) | (parts.mask > 0.5)).sum()
    assert iou > 0.8
    meta = load_checkpoint(backend_file(name)).meta
    generator = meta["recipe"]["generator"]
    assert generator["recipe"]["config"]["variant"] == name
    assert generator["training"]["train_seconds"] > 0 and generator["training"]["steps"] > 0
    if name == "wildlife_mnist":  # the other two were exported by a release without the export-time probe
        assert generator["metrics"]["probe_shape_accuracy"] == 1.0
    assert meta["metrics"]["mask_iou"]["mean_iou"] > 0.9


def backend_file(name: str):
    """The shipped file of named weights, inside the installed package."""
    from cfaug.hub import _packaged_path

    return _packaged_path("cfaug", MnistBackend.named_weights[name].filename)


def test_default_weights_serve_the_transform_and_the_dataset():
    assert cfaug.load_backend("mnist").weights_name == "colored_mnist"
    augment = cfaug.CounterfactualAugment(p=1.0)
    images = torch.rand(4, 3, 32, 32)
    out, labels = augment(images, torch.tensor([0, 1, 2, 3]))
    assert out.shape == images.shape and torch.equal(labels, torch.tensor([0, 1, 2, 3]))
    # Image-only: the shipped mask estimator keeps each real image's shape.
    assert cfaug.CounterfactualAugment(p=1.0)(images).shape == images.shape
    image, label = cfaug.CounterfactualDataset(size=3, seed=0)[0]
    assert tuple(image.shape) == (3, 32, 32) and 0 <= label < 10


# ---------------------------------------------------------------------------------------- mask estimator
def test_mask_estimator_requires_training():
    backend = random_backend(mask_estimator=True)
    images = torch.rand(2, 1, 28, 28)
    assert backend.has_mask_estimator is False
    with pytest.raises(RuntimeError, match="has not been trained"):
        backend.estimate_mask(images)
    backend.mark_mask_estimator_trained()
    assert backend.has_mask_estimator is True
    assert backend.estimate_mask(images).shape == (2, 1, 28, 28)


def test_estimate_mask_handles_any_size_and_grayscale():
    backend = random_backend(mask_estimator=True)
    backend.mark_mask_estimator_trained()
    for shape in [(3, 1, 28, 28), (3, 3, 32, 32), (2, 3, 64, 48)]:
        images = torch.rand(shape)
        masks = backend.estimate_mask(images)
        assert masks.shape == (shape[0], 1, *shape[-2:])
        assert masks.dtype == images.dtype and 0 <= masks.min() and masks.max() <= 1
    gray = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(backend.estimate_mask(gray), backend.estimate_mask(gray.expand(-1, 3, -1, -1)))


def test_mask_logits_train_the_estimator():
    backend = random_backend(mask_estimator=True).train()
    logits = backend.mask_logits(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 1, 32, 32)
    F.binary_cross_entropy_with_logits(logits, torch.rand_like(logits)).backward()
    assert all(p.grad is not None for p in backend.mask_net.parameters())
    assert all(p.grad is None for p in backend.generator_parameters())


def test_trained_flag_survives_save_and_load(tmp_path):
    backend = random_backend(mask_estimator=True)
    backend.mark_mask_estimator_trained()
    backend.save(tmp_path / "with_estimator.safetensors")
    loaded = cfaug.load_backend("mnist", weights=tmp_path / "with_estimator.safetensors")
    assert loaded.has_mask_estimator
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.estimate_mask(images), backend.estimate_mask(images), rtol=0, atol=0)


def test_estimate_mask_errors():
    without = random_backend()
    assert without.has_mask_estimator is False
    with pytest.raises(NotImplementedError, match="build it with mask_estimator=True"):
        without.estimate_mask(torch.rand(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no mask estimator"):
        without.mark_mask_estimator_trained()
    backend = random_backend(mask_estimator=True)
    backend.mark_mask_estimator_trained()
    with pytest.raises(TypeError, match="`images` should be a floating-point tensor"):
        backend.estimate_mask(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"`images` should have shape \(B, 1, H, W\) or \(B, 3, H, W\)"):
        backend.estimate_mask(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"but got \(3, 32, 32\)"):
        backend.estimate_mask(torch.rand(3, 32, 32))


# ------------------------------------------------------------------------------------ authors' import
def write_authors_files(folder: Path, state_dict: dict, config: dict | None, name: str = "model") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, folder / f"{name}.pth")
    if config is not None:
        (folder / f"{name}.cfg.yaml").write_text(yaml.safe_dump(config))
    return folder / f"{name}.pth"


AUTHORS_CONFIG = {
    "MODEL": {"LATENT_SZ": 32, "NGF": 32, "N_CLASSES": 10, "DISC": "linear"},
    "TRAIN": {"DATASET": "colored_MNIST"},
    "LAMBDAS": {"MASK": 0.1},
}


def test_import_of_a_file_in_the_authors_format(tmp_path):
    source_model = random_backend()
    source = write_authors_files(tmp_path, source_model.state_dict(), AUTHORS_CONFIG)
    imported = MnistBackend.import_weights(source)
    assert imported.weights_name == "imported:model.pth" and not imported.training
    assert imported.provenance["dataset"] == "colored_MNIST"
    assert imported.provenance["authors_config"] == AUTHORS_CONFIG
    assert imported.provenance["sha256"] == imported.weights_sha256
    classes, seeds = torch.tensor([2, 6]), torch.tensor([0, 1])
    for a, b in zip(generate_all(imported, classes, seeds), generate_all(source_model, classes, seeds), strict=True):
        assert torch.equal(a, b)


def test_import_finds_the_config_in_the_authors_layout(tmp_path):
    # mnists/experiments/cgn_X/{cfg.yaml, weights/ckp.pth}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(AUTHORS_CONFIG))
    source = write_authors_files(tmp_path / "weights", MnistBackend().state_dict(), None, name="ckp")
    assert MnistBackend.import_weights(source).provenance["config_file"] == "cfg.yaml"
    # A DataParallel checkpoint ("module." prefixes) imports too.
    prefixed = {f"module.{k}": v for k, v in MnistBackend().state_dict().items()}
    source = write_authors_files(tmp_path / "dp", prefixed, AUTHORS_CONFIG)
    assert MnistBackend.import_weights(source).weights_name == "imported:model.pth"


class NotATensor:
    pass


def test_import_rejects_files_that_are_not_state_dicts(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint")
    (tmp_path / "garbage.cfg.yaml").write_text(yaml.safe_dump(AUTHORS_CONFIG))
    with pytest.raises(CheckpointError, match="is not the authors' MNIST CGN state dict that loads"):
        MnistBackend.import_weights(tmp_path / "garbage.pth")
    source = write_authors_files(tmp_path, [torch.zeros(1)], AUTHORS_CONFIG, name="list")
    with pytest.raises(CheckpointError, match=r"MNIST CGN state dict \(names to tensors\), but holds list"):
        MnistBackend.import_weights(source)
    source = write_authors_files(tmp_path, {"label_emb.weight": 3}, AUTHORS_CONFIG, name="ints")
    with pytest.raises(CheckpointError, match="should hold the authors' MNIST CGN state dict"):
        MnistBackend.import_weights(source)
    # weights_only=True refuses arbitrary pickled objects instead of running their code.
    source = write_authors_files(tmp_path, {"model": NotATensor()}, AUTHORS_CONFIG, name="pickle")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        MnistBackend.import_weights(source)


def test_import_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    state = MnistBackend().state_dict()
    state["f_shape.99.weight"] = state.pop("f_shape.4.weight")
    source = write_authors_files(tmp_path, state, AUTHORS_CONFIG)
    with pytest.raises(CheckpointError, match=r"1 missing keys: \['f_shape.4.weight'\]; 1 unexpected keys: "):
        MnistBackend.import_weights(source)
    wrong_latent = {**AUTHORS_CONFIG, "MODEL": {**AUTHORS_CONFIG["MODEL"], "LATENT_SZ": 12}}
    source = write_authors_files(tmp_path, MnistBackend().state_dict(), wrong_latent, name="latent")
    with pytest.raises(CheckpointError, match=r"3 shape mismatches: \['f_shape.0.weight: file \(4096, 42\), model"):
        MnistBackend.import_weights(source)


def test_import_config_errors(tmp_path):
    source = write_authors_files(tmp_path, MnistBackend().state_dict(), None)
    with pytest.raises(FileNotFoundError, match="No config found .* Pass the authors' cfg.yaml"):
        MnistBackend.import_weights(source)
    with pytest.raises(FileNotFoundError, match="`config` should be the authors' cfg.yaml"):
        MnistBackend.import_weights(source, config=tmp_path / "absent.yaml")
    with pytest.raises(FileNotFoundError, match="`source` should be the authors' .pth checkpoint"):
        MnistBackend.import_weights(tmp_path / "absent.pth")
    (tmp_path / "no_model.yaml").write_text(yaml.safe_dump({"TRAIN": {}}))
    with pytest.raises(ValueError, match="with a MODEL section"):
        MnistBackend.import_weights(source, config=tmp_path / "no_model.yaml")
    (tmp_path / "no_ngf.yaml").write_text(yaml.safe_dump({"MODEL": {"LATENT_SZ": 32, "N_CLASSES": 10}}))
    with pytest.raises(ValueError, match="MODEL.NGF to a positive integer, but got None"):
        MnistBackend.import_weights(source, config=tmp_path / "no_ngf.yaml")


# ---------------------------------------------------------------------- the authors' released checkpoints
def authors_forward(
    state: dict[str, torch.Tensor],
    latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    classes: torch.Tensor,
    offsets: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' MNIST CGN forward, written independently with torch.nn.functional on their raw tensors.

    Returns the mask and the shuffled foreground and background in the tanh range, like their ``CGN.forward``.
    """

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
            state[f"{name}.bias"], training=False, eps=1e-5,
        )  # fmt: skip

    def up(x: torch.Tensor, conv: str, bn: str) -> torch.Tensor:
        x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), state[f"{conv}.weight"], padding=1)
        return F.leaky_relu(norm(x, bn), 0.2)

    def first(net: str, latent: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([latent, state["label_emb.weight"][classes]], dim=1)
        return F.linear(inputs, state[f"{net}.0.weight"], state[f"{net}.0.bias"]).view(-1, 64, 8, 8)

    h = F.instance_norm(first("f_shape", latents[0]))
    h = F.instance_norm(up(h, "f_shape.4", "f_shape.5"))
    mask = F.instance_norm(up(h, "f_shape.9", "f_shape.10")).clamp(1e-4, 1 - 1e-4)
    textures = []
    for net, latent, offset in (("f_text1", latents[1], offsets[0]), ("f_text2", latents[2], offsets[1])):
        h = up(up(first(net, latent), f"{net}.3", f"{net}.4"), f"{net}.7", f"{net}.8")
        h = torch.tanh(norm(F.conv2d(h, state[f"{net}.10.weight"], state[f"{net}.10.bias"], padding=1), f"{net}.11"))
        textures.append(tile_and_crop(h, offset))
    return mask, textures[0], textures[1]


@pytest.mark.shared
@pytest.mark.parametrize("name", AUTHORS_CHECKPOINTS)
def test_authors_checkpoints_import_exactly(name):
    source = shared_path("data", "reference_cgn_mnist", f"{name}.pth")
    state = torch.load(source, map_location="cpu", weights_only=True)
    backend = MnistBackend.import_weights(source)
    assert set(state) == set(backend.state_dict()) == AUTHORS_KEYS
    for key, tensor in backend.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    assert backend.weights_name == f"imported:{name}.pth" and not backend.training
    assert backend.provenance["source"] == f"{name}.pth"
    assert backend.provenance["config_file"] == f"{name}.cfg.yaml"
    assert backend.provenance["dataset"].lower() == name


@pytest.mark.shared
@pytest.mark.parametrize("name", AUTHORS_CHECKPOINTS)
def test_authors_checkpoints_generate_what_their_code_generates(name):
    source = shared_path("data", "reference_cgn_mnist", f"{name}.pth")
    state = torch.load(source, map_location="cpu", weights_only=True)
    backend = MnistBackend.import_weights(source)
    classes, seeds = torch.arange(10).repeat(4), torch.arange(40) + 1000
    latents = tuple(
        per_sample_normal(seeds, s, (32,)) for s in (SHAPE_NOISE_STREAM, TEXTURE_NOISE_STREAM, BACKGROUND_NOISE_STREAM)
    )
    offsets = tuple(per_sample_randint(seeds, s, 33, (2,)) for s in (TEXTURE_SHIFT_STREAM, BACKGROUND_SHIFT_STREAM))
    with torch.no_grad():
        mask, fg, bg = authors_forward(state, latents, classes, offsets)
        # The module path with the authors' shared noise (their standard forward) ...
        standard = backend.forward_mechanisms(*[latents[0]] * 3, classes, classes, classes, fg_offsets=offsets[0],
                                              bg_offsets=offsets[0])  # fmt: skip
        expected_standard = authors_forward(state, (latents[0],) * 3, classes, (offsets[0], offsets[0]))
    assert_mechanisms_close(list(standard), list(expected_standard))
    # ... and the mechanisms with their own noise per mechanism (their counterfactual mode), fast and plain.
    expected = [mask, (fg + 1) / 2, (bg + 1) / 2]
    assert_mechanisms_close(generate_all(backend, classes, seeds), expected)
    backend.fast_path = False
    assert_mechanisms_close(generate_all(backend, classes, seeds), expected)


@pytest.mark.shared
@pytest.mark.parametrize("name", AUTHORS_CHECKPOINTS)
def test_authors_checkpoints_give_digit_masks(name):
    backend = MnistBackend.import_weights(shared_path("data", "reference_cgn_mnist", f"{name}.pth"))
    classes = torch.arange(10).repeat(10)
    masks = backend.generate("shape", classes, torch.arange(100))
    per_class = masks.view(10, 10, -1).transpose(0, 1).reshape(10, -1).mean(dim=1)
    # Digits cover a sixth or so of the image; every class has its own shape, not a blank or a full mask.
    assert 0.05 < masks.mean() < 0.35
    assert per_class.min() > 0.03 and per_class.max() < 0.5
    assert ((masks > 0.9).float().mean(dim=(1, 2, 3)) > 0.02).all()
    assert ((masks < 0.1).float().mean() > 0.5).all()
    assert (per_class.max() - per_class.min()) > 0.02  # a "1" is thinner than an "8"


@pytest.mark.shared
def test_authors_checkpoint_save_load_round_trip(tmp_path):
    backend = MnistBackend.import_weights(shared_path("data", "reference_cgn_mnist", "wildlife_mnist.pth"))
    path = tmp_path / "wildlife.safetensors"
    backend.save(path, recipe={"imported_from": backend.provenance["source"]})
    loaded = cfaug.load_backend("mnist", weights=path)
    assert loaded.provenance == backend.provenance
    assert loaded.provenance["authors_config"]["MODEL"]["DISC"] == "conv"
    parts, expected = (b.sample([1, 7], [7, 1], [3, 3], seeds=torch.tensor([1, 2])) for b in (loaded, backend))
    for a, b in zip(
        (parts.mask, parts.foreground, parts.background, parts.image),
        (expected.mask, expected.foreground, expected.background, expected.image),
        strict=True,
    ):
        assert torch.equal(a, b)
