"""RandomCounterfactual (kornia) on the toy backend."""

from __future__ import annotations

import pickle

import kornia.augmentation as K
import pytest
import torch
from toy_backend import ToyBackend
from transform_contract import check_transform, kornia_call

from cfaug.functional import composite
from cfaug.transforms import RandomCounterfactual


def spy_generate(backend, monkeypatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    original = backend.generate

    def spy(mechanism, classes, seeds):
        calls.append((mechanism, len(classes)))
        return original(mechanism, classes, seeds)

    monkeypatch.setattr(backend, "generate", spy)
    return calls


def rows_changed(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.tensor([not torch.equal(out[i], images[i]) for i in range(len(images))])


def test_inside_augmentation_sequential_per_sample_p(toy, monkeypatch):
    calls = spy_generate(toy, monkeypatch)
    torch.manual_seed(0)
    augment = RandomCounterfactual(toy, p=0.5)
    pipeline = K.AugmentationSequential(augment)
    images = torch.rand(16, 3, 8, 8)
    out = pipeline(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    record = augment.last_record
    chosen = int(record["applied"].sum())
    assert 0 < chosen < 16
    assert torch.equal(rows_changed(out, images), record["applied"])
    # image-only (the default there): the generator runs for the chosen samples only
    assert calls == [("texture", chosen), ("background", chosen)]
    assert (record["shape"] == -1).all()
    kept = record["applied"]
    expected = composite(
        toy.estimate_mask(images[kept]),
        toy.generate("texture", record["texture"][kept], record["seed_texture"][kept]),
        toy.generate("background", record["background"][kept], record["seed_background"][kept]),
    )
    assert torch.equal(out[kept], expected)


def test_masks_pass_through_the_sequential(toy):
    pipeline = K.AugmentationSequential(RandomCounterfactual(toy, p=1.0), data_keys=["input", "mask"])
    images, masks = torch.rand(4, 3, 8, 8), (torch.rand(4, 1, 8, 8) > 0.5).float()
    out, out_masks = pipeline(images, masks)
    assert torch.equal(out_masks, masks) and rows_changed(out, images).all()


def test_same_on_batch(toy):
    torch.manual_seed(0)
    augment = RandomCounterfactual(toy, p=0.5, same_on_batch=True)
    seen = set()
    for _ in range(6):
        augment(torch.rand(5, 3, 8, 8))
        record = augment.last_record
        assert record["applied"].all() or not record["applied"].any()
        seen.add(bool(record["applied"][0]))
        if record["applied"][0]:
            for key in ("texture", "background", "seed_texture", "seed_background"):
                assert (record[key] == record[key][0]).all()
    assert seen == {True, False}


def test_label_aware_direct_call(toy, monkeypatch):
    calls = spy_generate(toy, monkeypatch)
    augment = RandomCounterfactual(toy, p=1.0)
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([3, 1, 0, 2])
    out = augment(images, labels=labels)
    record = augment.last_record
    assert torch.equal(record["shape"], labels)
    assert calls == [("shape", 4), ("texture", 4), ("background", 4)]
    expected = composite(
        toy.generate("shape", labels, record["seed_shape"]),
        toy.generate("texture", record["texture"], record["seed_texture"]),
        toy.generate("background", record["background"], record["seed_background"]),
    )
    assert torch.equal(out, expected)


def test_replay_with_params(toy):
    augment = RandomCounterfactual(toy, p=0.5)
    images = torch.rand(8, 3, 8, 8)
    first = augment(images)
    assert torch.equal(augment(images, params=augment._params), first)


def test_p0_and_keepdim(toy):
    images = torch.rand(4, 3, 8, 8)
    assert torch.equal(RandomCounterfactual(toy, p=0.0)(images), images)
    single = torch.rand(3, 8, 8)
    assert RandomCounterfactual(toy, p=1.0, keepdim=True)(single).shape == (3, 8, 8)
    assert RandomCounterfactual(toy, p=1.0)(single).shape == (1, 3, 8, 8)
    out = RandomCounterfactual(toy, p=1.0)(images.double())
    assert out.dtype == torch.float64


def test_resizes_to_the_batch_size(toy):
    images = torch.rand(2, 3, 16, 16)
    out = RandomCounterfactual(toy, p=1.0)(images, labels=torch.tensor([0, 1]))
    assert out.shape == images.shape


def test_without_estimator_needs_labels():
    augment = RandomCounterfactual(ToyBackend(mask_estimator=False), p=0.5)
    with pytest.raises(ValueError, match="labels=labels"):
        K.AugmentationSequential(augment)(torch.rand(4, 3, 8, 8))
    assert augment(torch.rand(4, 3, 8, 8), labels=torch.tensor([0, 1, 2, 3])).shape == (4, 3, 8, 8)


def test_repr_and_pickle(toy):
    augment = RandomCounterfactual("toy", p=0.3, vary=("background",))
    text = repr(augment)
    assert "p=0.3" in text and "backend=toy" in text and "('background',)" in text
    augment(torch.rand(2, 3, 8, 8))
    clone = pickle.loads(pickle.dumps(augment))
    assert clone._handle._model is None and repr(clone) == text
    assert clone(torch.rand(2, 3, 8, 8)).shape == (2, 3, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch():
    augment = RandomCounterfactual("toy", p=0.5)
    images = torch.rand(8, 3, 8, 8, device="cuda")
    out = K.AugmentationSequential(augment)(images)
    assert out.device == images.device
    assert augment._handle.backend().device.type == "cuda"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": 2.0}, ValueError, "`p`"),
        ({"p_batch": -0.1}, ValueError, "`p_batch`"),
        ({"vary": ("shape",)}, ValueError, "'shape'"),
        ({"backend": 1.0}, TypeError, "`backend`"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        RandomCounterfactual(**{"backend": "toy", **kwargs})


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (torch.rand(4, 3, 8, 8), torch.tensor([0, 1]), ValueError, r"shape \(4,\)"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0, 9]), ValueError, r"\[0, 3\]"),
        (torch.rand(2, 2, 8, 8), None, ValueError, "2 channels"),
        (torch.rand(2, 3, 8, 8) + 1, None, ValueError, r"\[0, 1\]"),
    ],
)
def test_bad_inputs(toy, images, labels, error, match):
    with pytest.raises(error, match=match):
        RandomCounterfactual(toy, p=1.0)(images, labels=labels)


def test_keeps_the_transform_contract(toy):
    # keepdim=True: kornia batches a single image otherwise (test_p0_and_keepdim checks that).
    check_transform(
        lambda **kwargs: RandomCounterfactual(toy, keepdim=True, **kwargs),
        kinds=("float32", "float64", "batch_float", "batch_gray_float"),
        call=kornia_call,
        same_object_at_p0=False,
        samples=False,
        replay=False,
        generator=False,
    )
