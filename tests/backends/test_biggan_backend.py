"""The ``biggan`` backend on tiny random BigGAN-deep configs (32 px) and the tiny U2-Net."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("pytorch_pretrained_biggan")

from real_files import TINY_BIGGAN  # noqa: E402

import cfaug  # noqa: E402
from cfaug.backends.biggan import (  # noqa: E402
    MASK_CLAMP,
    BigGANBackend,
    build_biggan,
    check_biggan_config,
    imagenet_class_names,
    load_biggan,
    prepare_random_biggan,
    resolve_biggan_config,
    save_biggan,
    truncated_noise,
)
from cfaug.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from cfaug.models.u2net import U2Net  # noqa: E402

TINY = TINY_BIGGAN


def _ensure_registered() -> None:
    # The lead declares the entry point; before the package is reinstalled with it, register in-process.
    if "biggan" not in cfaug.list_backends():
        cfaug.register_backend("biggan")(BigGANBackend)


@pytest.fixture(scope="module")
def backend() -> BigGANBackend:
    torch.manual_seed(0)
    model = BigGANBackend(TINY, u2net_variant="tiny", truncation=0.5).eval()
    # Make the three mechanisms differ, as trained ones do.
    with torch.no_grad():
        for offset, network in enumerate(model.mechanism_modules().values()):
            network.embeddings.weight.add_(0.3 * offset)
    return model.requires_grad_(False)


def _seeds(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# ------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": [[False, 8, 8], [True, 8, 1]]}, "16 channel multiples"),
        ({"layers": [[False, 16, 4], [True, 4, 1]]}, "keep or exactly halve"),
        ({"layers": [[False, 16, 16], [True, 16, 8]]}, "output 1 channel"),
        ({"channel_width": 2}, "at least 3"),
        ({"colour": 1}, "Unknown BigGAN config fields"),
        ({"class_embed_dim": 8}, "should be equal"),
    ],
)
def test_config_constraints_are_checked(change, message):
    with pytest.raises(ValueError, match=message):
        check_biggan_config({**TINY, **change})


def test_named_and_file_configs(tmp_path):
    config = resolve_biggan_config("biggan-deep-256")
    assert config["num_classes"] == 1000 and len(config["layers"]) == 12
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert resolve_biggan_config(tmp_path)["layers"] == TINY["layers"]
    with pytest.raises(ValueError, match="Valid values"):
        resolve_biggan_config("biggan-deep-64")
    with pytest.raises(FileNotFoundError):
        resolve_biggan_config(tmp_path / "missing.json")


def test_prepare_random_biggan_makes_a_usable_model():
    model = build_biggan(TINY, seed=3).eval()
    bn = model.generator.bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # Every spectral-norm estimate sigma = u^T W v is positive (a never-iterated one is tiny or negative).
    for module in model.modules():
        if hasattr(module, "weight_orig"):
            matrix = module.weight_orig.detach().reshape(module.weight_orig.shape[0], -1)
            assert float(module.weight_u @ matrix @ module.weight_v) > 0
    with torch.no_grad():
        out = model(truncated_noise(_seeds(0, 1, 2, 3), 16, 0.5), torch.eye(10)[:4], 0.5)
    assert out.shape == (4, 3, 32, 32) and torch.isfinite(out).all() and float(out.std()) > 1e-3
    # Same seed, same weights; the function leaves the global RNG alone when seeded.
    state = torch.get_rng_state()
    again = build_biggan(TINY, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="power_iterations"):
        prepare_random_biggan(model, power_iterations=0)


def test_truncated_noise_distribution_and_per_sample_streams():
    from scipy.stats import truncnorm

    seeds = torch.arange(64)
    u = truncated_noise(seeds, 128, 0.5)
    assert u.shape == (64, 128) and u.dtype == torch.float32
    assert float(u.abs().max()) <= 1.0
    # truncation * TruncNormal(-2, 2): mean 0, std 0.5 * 0.8796 (scipy's value).
    assert abs(float(u.mean())) < 0.02
    assert float(u.std()) == pytest.approx(0.5 * truncnorm.std(-2, 2), rel=0.03)
    # A row depends only on its seed.
    assert torch.equal(truncated_noise(seeds[5:6], 128, 0.5), u[5:6])
    assert torch.equal(truncated_noise(seeds, 128, 1.0), 2 * u)
    with pytest.raises(ValueError, match="truncation"):
        truncated_noise(seeds, 128, 1.5)


# ------------------------------------------------------------------------------------------ generation
def test_sample_shapes_ranges_and_determinism(backend):
    parts = backend.sample([1, 2, 3], [4, 5, 6], [7, 8, 9], seeds=_seeds(10, 11, 12))
    assert parts.image.shape == (3, 3, 32, 32) and parts.mask.shape == (3, 1, 32, 32)
    assert float(parts.mask.min()) >= MASK_CLAMP and float(parts.mask.max()) <= 1 - MASK_CLAMP
    for tensor in (parts.foreground, parts.background, parts.image):
        assert torch.isfinite(tensor).all() and float(tensor.min()) >= 0 and float(tensor.max()) <= 1
    # A sample does not depend on its batch.
    single = backend.sample([2], [5], [8], seeds=_seeds(11))
    torch.testing.assert_close(single.image, parts.image[1:2], atol=1e-5, rtol=0)
    # Chunked generation gives the same images.
    backend.max_batch = 2
    try:
        chunked = backend.sample([1, 2, 3], [4, 5, 6], [7, 8, 9], seeds=_seeds(10, 11, 12))
    finally:
        backend.max_batch = None
    torch.testing.assert_close(chunked.image, parts.image, atol=1e-5, rtol=0)


def test_mechanisms_are_independent_and_share_the_noise(backend):
    base = backend.sample([3, 3], [4, 4], [5, 5], seeds=_seeds(7, 8))
    other_texture = backend.sample([3, 3], [6, 6], [5, 5], seeds=_seeds(7, 8))
    assert torch.equal(other_texture.mask, base.mask) and torch.equal(other_texture.background, base.background)
    assert not torch.allclose(other_texture.foreground, base.foreground)
    other_noise = backend.sample([3, 3], [4, 4], [5, 5], seeds=_seeds(9, 8))
    assert not torch.allclose(other_noise.mask[0], base.mask[0])
    torch.testing.assert_close(other_noise.image[1], base.image[1], atol=1e-5, rtol=0)
    # The three mechanisms read the same noise: with equal weights, equal classes give equal images.
    twin = BigGANBackend(TINY, u2net_variant="tiny").eval()
    twin.f_bg.load_state_dict(twin.f_text.state_dict())
    parts = twin.sample([1], [2], [2], seeds=_seeds(4))
    torch.testing.assert_close(parts.foreground, parts.background)


def test_forward_is_differentiable_through_the_frozen_u2net(backend):
    model = BigGANBackend(TINY, u2net_variant="tiny").train()
    noise = truncated_noise(_seeds(0, 1), 16, 1.0)
    premask, mask, foreground, background = model(
        noise, torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 6])
    )
    assert premask.shape == foreground.shape == background.shape == (2, 3, 32, 32) and mask.shape == (2, 1, 32, 32)
    mask.mean().backward()
    assert model.f_shape.generator.conv_to_rgb.weight_orig.grad is not None
    assert all(p.grad is None for p in model.u2net.parameters())
    assert not model.u2net.training  # the frozen U2-Net stays in eval mode in a training backend


def test_autocast_argument(backend):
    with pytest.raises(ValueError, match="Valid values"):
        BigGANBackend(TINY, u2net_variant="tiny", autocast="fp8")
    reference = backend.sample([1], [2], [3], seeds=_seeds(5))
    backend.autocast = "bf16"  # on the CPU generation stays float32
    try:
        again = backend.sample([1], [2], [3], seeds=_seeds(5))
    finally:
        backend.autocast = None
    assert again.image.dtype == torch.float32
    torch.testing.assert_close(again.image, reference.image, atol=0, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="truncation"):
        BigGANBackend(TINY, u2net_variant="tiny", truncation=0.0)
    with pytest.raises(ValueError, match="u2net_variant"):
        BigGANBackend(TINY, u2net_variant="u3net")
    with pytest.raises(ValueError, match="max_batch"):
        BigGANBackend(TINY, u2net_variant="tiny", max_batch=0)


def test_imagenet_class_names_offline():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[207] == "golden retriever"
    model = BigGANBackend({**TINY, "num_classes": 1000}, u2net_variant="tiny")
    assert model.class_names[207] == "golden retriever" and "class_names" not in model.arch_config()


# ----------------------------------------------------------------------------------------- weights
def test_checkpoint_round_trip(backend, tmp_path):
    _ensure_registered()
    path = tmp_path / "cgn.safetensors"
    backend.save(path, recipe={"note": "test"})
    checkpoint = load_checkpoint(path)
    assert checkpoint.meta["backend"] == "biggan" and checkpoint.meta["arch"]["u2net_variant"] == "tiny"
    assert {key.split(".")[0] for key in checkpoint.state_dict} == {"f_shape", "f_text", "f_bg", "u2net"}
    loaded = cfaug.load_backend("biggan", weights=path)
    assert isinstance(loaded, BigGANBackend) and not loaded.training
    assert loaded.truncation == 0.5 and loaded.biggan_config == backend.biggan_config
    expected = backend.sample([1, 9], [2, 8], [3, 7], seeds=_seeds(1, 2))
    got = loaded.sample([1, 9], [2, 8], [3, 7], seeds=_seeds(1, 2))
    torch.testing.assert_close(got.image, expected.image, atol=0, rtol=0)
    # cfaug generate passes --autocast to the backend (a no-op on the CPU: the same images as float32).
    from cfaug.cli import main

    out = tmp_path / "cf"
    assert main(["generate", "--backend", "biggan", "--weights", str(path), "--size", "3", "--out", str(out),
                 "--autocast", "bf16", "--batch-size", "2"]) == 0  # fmt: skip
    saved = cfaug.datasets.CounterfactualDataset.load(out)
    plain = cfaug.datasets.CounterfactualDataset("biggan", weights=str(path), size=3, target="all")
    assert all(torch.allclose(saved[i][0], plain[i][0], atol=1 / 255) for i in range(3))
    faster = cfaug.load_backend("biggan", weights=path, autocast="bf16", truncation=0.7)
    assert faster.autocast == "bf16" and faster.truncation == 0.7


def test_load_biggan_checks_every_key(tmp_path):
    model = build_biggan(TINY, seed=1)
    save_biggan(model, tmp_path / "good")
    loaded = load_biggan(tmp_path / "good")
    assert not loaded.training
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )

    # The package itself would load these silently (strict=False); cfaug names the difference.
    save_biggan(model, tmp_path / "bad")
    state = torch.load(tmp_path / "bad" / "pytorch_model.bin", weights_only=True)
    del state["generator.layers.0.conv_0.weight_orig"]
    state["generator.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing keys: \['generator.layers.0.conv_0.weight_orig'\]") as info:
        load_biggan(tmp_path / "bad")
    assert "generator.extra" in str(info.value)

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_biggan(tmp_path / "half")
    with pytest.raises(FileNotFoundError):
        load_biggan(tmp_path / "absent")
    with pytest.raises(ValueError, match="biggan-deep-256"):
        load_biggan("biggan-tiny")


def test_from_biggan_copies_the_pretrained_model(tmp_path):
    biggan = build_biggan(TINY, seed=2)
    save_biggan(biggan, tmp_path / "biggan")
    torch.manual_seed(0)
    u2net = U2Net("tiny")
    torch.save(u2net.state_dict(), tmp_path / "u2net_tiny.pth")
    model = BigGANBackend.from_biggan(
        tmp_path / "biggan", u2net_variant="tiny", u2net_weights=str(tmp_path / "u2net_tiny.pth")
    )
    reference = biggan.state_dict()
    for network in model.mechanism_modules().values():
        state = network.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items())
    state = model.u2net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in u2net.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())


def _authors_state_dict(model: BigGANBackend, ground_truth: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The key layout of the authors' CGN (imagenet/models/cgn.py), saved from DataParallel ("module.")."""
    state = {}
    for name, module in (("f_shape", model.f_shape), ("f_text", model.f_text), ("f_bg", model.f_bg)):
        state.update({f"module.{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    state.update({f"module.biggan_GT.{k}": v.clone() for k, v in ground_truth.state_dict().items()})
    state.update({f"module.u2net.{k}": v.clone() for k, v in model.u2net.state_dict().items()})
    return state


def test_import_authors_checkpoint(backend, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    state = _authors_state_dict(backend, build_biggan(TINY, seed=5))
    torch.save(state, tmp_path / "cgn.pth")
    imported = BigGANBackend.import_weights(tmp_path / "cgn.pth", config=tmp_path / "config.json")
    assert imported.u2net_variant == "tiny" and imported.provenance["dropped"] == ["biggan_GT"]
    expected = backend.sample([1, 2], [3, 4], [5, 6], seeds=_seeds(3, 4))
    got = imported.sample([1, 2], [3, 4], [5, 6], seeds=_seeds(3, 4))
    torch.testing.assert_close(got.image, expected.image, atol=0, rtol=0)
    # The converted file round-trips and remembers where it came from.
    imported.save(tmp_path / "cgn.safetensors")
    assert load_checkpoint(tmp_path / "cgn.safetensors").meta["provenance"]["sha256"] == imported.weights_sha256

    broken = dict(state)
    del broken["module.f_text.generator.gen_z.weight_orig"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"f_text: 1 missing keys: \['generator.gen_z.weight_orig'\]"):
        BigGANBackend.import_weights(tmp_path / "broken.pth", config=tmp_path / "config.json")
    alien = {**state, "module.f_extra.weight": torch.zeros(1)}
    torch.save(alien, tmp_path / "alien.pth")
    with pytest.raises(CheckpointError, match="unexpected modules"):
        BigGANBackend.import_weights(tmp_path / "alien.pth", config=tmp_path / "config.json")
    # The default config is the authors' BigGAN-deep-256: a tiny file fails with shape mismatches, not silently.
    with pytest.raises(CheckpointError, match="shape mismatches"):
        BigGANBackend.import_weights(tmp_path / "cgn.pth")
