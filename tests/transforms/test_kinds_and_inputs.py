"""The kind of counterfactual (``shape=``), grayscale in and out, the out-of-domain warning and edge inputs.

On the toy backend (RGB, 8x8, disc masks) for both transforms, and the literal one-liner on torchvision's MNIST
(with ../shared) through a 2-worker DataLoader into a 1-channel CNN.
"""

from __future__ import annotations

import warnings

import kornia.color
import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms as v1
from conftest import shared_path
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2
from toy_backend import ToyBackend

import cfaug
from cfaug.functional import composite
from cfaug.transforms import CounterfactualAugment, RandomCounterfactual
from cfaug.transforms._params import DEFAULT_LABELLED_SHAPE


def generated_composite(toy: ToyBackend, record: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    return composite(
        toy.generate("shape", record["shape"][rows], record["seed_shape"][rows]),
        toy.generate("texture", record["texture"][rows], record["seed_texture"][rows]),
        toy.generate("background", record["background"][rows], record["seed_background"][rows]),
    )


def real_shape_composite(
    toy: ToyBackend, images: torch.Tensor, record: dict[str, torch.Tensor], rows: torch.Tensor
) -> torch.Tensor:
    return composite(
        toy.estimate_mask(images[rows]),
        toy.generate("texture", record["texture"][rows], record["seed_texture"][rows]),
        toy.generate("background", record["background"][rows], record["seed_background"][rows]),
    )


def seeded(**kwargs) -> CounterfactualAugment:
    return CounterfactualAugment(generator=torch.Generator().manual_seed(0), **kwargs)


# ------------------------------------------------------------------------------------------------ shape kinds
def test_real_kind_keeps_the_estimated_mask_and_the_label(toy):
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    (out, out_labels), record = CounterfactualAugment(toy, p=1.0, shape="real", return_record=True)(images, labels)
    assert out_labels is labels
    assert (record["shape"] == -1).all() and (record["seed_shape"] == -1).all()
    assert torch.equal(out, real_shape_composite(toy, images, record, torch.arange(6)))


def test_generated_kind_follows_the_label_and_needs_it(toy):
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([3, 1, 2, 0, 0, 1])
    (out, _), record = CounterfactualAugment(toy, p=1.0, shape="generated", return_record=True)(images, labels)
    assert torch.equal(record["shape"], labels)
    assert torch.equal(out, generated_composite(toy, record, torch.arange(6)))
    with pytest.raises(ValueError, match="shape='generated'.*no label"):
        CounterfactualAugment(toy, p=1.0, shape="generated")(images)
    with pytest.raises(ValueError, match="shape='generated'.*no label"):
        CounterfactualAugment(toy, p=1.0, shape="generated", labels_getter=None)(images, labels)


def test_mixed_kind_draws_either_per_sample(toy):
    images, labels = torch.rand(64, 3, 8, 8), torch.arange(64) % 4
    (out, out_labels), record = seeded(backend=toy, p=1.0, shape="mixed", return_record=True)(images, labels)
    assert out_labels is labels
    real = record["shape"] == -1
    assert 16 < int(real.sum()) < 48  # a fair coin per sample
    assert torch.equal(record["shape"][~real], labels[~real])
    assert torch.equal(out[real], real_shape_composite(toy, images, record, real))
    torch.testing.assert_close(out[~real], generated_composite(toy, record, ~real))
    # replay rebuilds both groups; per-sample calls give both kinds too; without labels: the real kind
    augment = seeded(backend=toy, p=1.0, shape="mixed", return_record=True)
    torch.testing.assert_close(augment.replay(images, record), out)
    kinds = {bool(augment(images[i], int(labels[i]))[1]["shape"] == -1) for i in range(16)}
    assert kinds == {True, False}
    assert (augment(images)[1]["shape"] == -1).all()
    # the same seed gives the same output
    again, _ = seeded(backend=toy, p=1.0, shape="mixed", return_record=True)(images, labels)
    assert torch.equal(again[0], out)


def test_auto_resolves_to_the_recommended_kind_with_labels_and_real_without(toy):
    images, labels = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    assert DEFAULT_LABELLED_SHAPE == "generated"
    auto = seeded(backend=toy, p=1.0, return_record=True)
    assert auto.shape == "auto" and "shape='auto'" in repr(auto)
    (out, _), _ = auto(images, labels)
    (expected, _), _ = seeded(backend=toy, p=1.0, shape="generated", return_record=True)(images, labels)
    assert torch.equal(out, expected)
    assert torch.equal(seeded(backend=toy, p=1.0)(images), seeded(backend=toy, p=1.0, shape="real")(images))
    # the weights' metadata key `default_shape` (the backend attribute of that name) overrides the default
    recommends_real = ToyBackend()
    recommends_real.default_shape = "real"
    (_, _), record = CounterfactualAugment(recommends_real, p=1.0, return_record=True)(images, labels)
    assert (record["shape"] == -1).all()
    recommends_real.default_shape = "blurry"
    with pytest.raises(ValueError, match="default_shape='blurry'"):
        CounterfactualAugment(recommends_real, p=1.0)(images, labels)


def test_default_shape_travels_with_the_weights(tmp_path):
    backend = ToyBackend()
    backend.default_shape = "real"
    backend.save(tmp_path / "recommends_real.safetensors")
    loaded = cfaug.load_backend("toy", weights=tmp_path / "recommends_real.safetensors")
    assert loaded.default_shape == "real"
    (_, _), record = CounterfactualAugment(loaded, p=1.0, return_record=True)(torch.rand(4, 3, 8, 8), torch.arange(4))
    assert (record["shape"] == -1).all()  # auto picked the real shape for labelled samples
    ToyBackend().save(tmp_path / "plain.safetensors")
    assert cfaug.load_backend("toy", weights=tmp_path / "plain.safetensors").default_shape is None


@pytest.mark.parametrize("weights", ["colored_mnist", "double_colored_mnist", "wildlife_mnist"])
def test_shipped_weights_recommend_real_shapes_for_labelled_samples(weights):
    # Measured on Table 2 (docs/reproducing.md, "The default kind"): at the paper's budget real shapes lead whole CGN
    # samples as saved sets and per batch on all three variants, so `auto` keeps the real digit's shape with a label.
    backend = cfaug.load_backend("mnist", weights=weights)
    assert backend.default_shape == "real"
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    (_, out_labels), record = CounterfactualAugment(backend, p=1.0, return_record=True)(images, labels)
    assert out_labels is labels and (record["shape"] == -1).all()
    (_, _), generated = CounterfactualAugment(backend, p=1.0, shape="generated", return_record=True)(images, labels)
    assert torch.equal(generated["shape"], labels)  # the label-aware kind stays one argument away


def test_kinds_without_a_mask_estimator():
    no_estimator = ToyBackend(mask_estimator=False)
    images, labels = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    (_, _), record = CounterfactualAugment(no_estimator, p=1.0, return_record=True)(images, labels)
    assert torch.equal(record["shape"], labels)  # auto: the only kind this backend makes
    for shape in ("real", "mixed"):
        with pytest.raises(ValueError, match=f"shape='{shape}' keeps the real object's shape.*no mask estimator"):
            CounterfactualAugment(no_estimator, p=1.0, shape=shape)(images, labels)


def test_real_kind_with_labels_keeps_boxes_and_needs_vary(toy):
    boxes = tv_tensors.BoundingBoxes([[0, 0, 4, 4]], format="XYXY", canvas_size=(8, 8))
    sample = {"image": tv_tensors.Image(torch.rand(3, 8, 8)), "boxes": boxes, "labels": 1}
    out = CounterfactualAugment(toy, p=1.0, shape="real")(sample)
    assert out["boxes"] is boxes and out["labels"] == 1
    with pytest.raises(ValueError, match="shape='real'"):
        CounterfactualAugment(toy, shape="generated")(sample)
    with pytest.raises(ValueError, match="vary=()"):
        CounterfactualAugment(toy, p=1.0, shape="real", vary=())(torch.rand(3, 8, 8), 1)


@pytest.mark.parametrize(("shape", "error"), [("photo", ValueError), (1, TypeError)])
def test_bad_shape_setting(shape, error):
    with pytest.raises(error, match="`shape`"):
        CounterfactualAugment("toy", shape=shape)
    with pytest.raises(error, match="`shape`"):
        RandomCounterfactual("toy", shape=shape)


def test_kornia_twin_kinds(toy):
    images, labels = torch.rand(32, 3, 8, 8), torch.arange(32) % 4
    augment = RandomCounterfactual(toy, p=1.0, shape="real")
    out = augment(images, labels=labels)
    record = augment.last_record
    assert (record["shape"] == -1).all()
    assert torch.equal(out, real_shape_composite(toy, images, record, torch.arange(32)))
    torch.manual_seed(0)
    augment = RandomCounterfactual(toy, p=1.0, shape="mixed")
    out = augment(images, labels=labels)
    real = augment.last_record["shape"] == -1
    assert 0 < int(real.sum()) < 32
    assert torch.equal(augment(images, params=augment._params), out)
    with pytest.raises(ValueError, match="shape='generated'.*no label"):
        RandomCounterfactual(toy, p=1.0, shape="generated")(images)
    augment = RandomCounterfactual(toy, p=1.0)  # auto: generated with labels
    augment(images, labels=labels)
    assert torch.equal(augment.last_record["shape"], labels)


# ------------------------------------------------------------------------------------------------ grayscale
def pil_gray(size: int = 8) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8), mode="L")


GRAY_INPUTS = {
    "pil": lambda: (pil_gray(), 1),
    "float": lambda: (torch.rand(1, 8, 8), 1),
    "uint8": lambda: ((torch.rand(1, 8, 8) * 255).to(torch.uint8), 2),
    "tv_image": lambda: (tv_tensors.Image(torch.rand(1, 8, 8)), 3),
    "batch_float": lambda: (torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0])),
    "batch_uint8": lambda: ((torch.rand(5, 1, 8, 8) * 255).to(torch.uint8), torch.tensor([3, 2, 1, 0, 0])),
}


@pytest.mark.parametrize("kind", list(GRAY_INPUTS))
@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_grayscale_in_grayscale_out(toy, kind, labelled, p):
    image, label = GRAY_INPUTS[kind]()
    augment = CounterfactualAugment(toy, p=p, shape="mixed", generator=torch.Generator().manual_seed(1))
    out = augment(image, label)[0] if labelled else augment(image)
    assert type(out) is type(image)
    if isinstance(image, PIL.Image.Image):
        assert out.mode == "L" and out.size == image.size
    else:
        assert out.shape == image.shape and out.dtype == image.dtype


def test_grayscale_output_is_the_luma_of_the_rgb_counterfactual(toy, monkeypatch):
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    (out, _), record = CounterfactualAugment(toy, p=1.0, return_record=True)(images, labels)
    expected = kornia.color.rgb_to_grayscale(generated_composite(toy, record, torch.arange(4)))
    assert torch.equal(out, expected)
    # image-only: the mask estimator sees the image replicated to RGB; a part kept real keeps its gray value
    seen = []
    original = toy.estimate_mask

    def spy(batch):
        seen.append(batch)
        return original(batch)

    monkeypatch.setattr(toy, "estimate_mask", spy)
    out, record = CounterfactualAugment(toy, p=1.0, vary="texture", return_record=True)(images)
    assert seen[0].shape == (4, 3, 8, 8) and torch.equal(seen[0], images.expand(-1, 3, -1, -1))
    outside = ~original(images).bool()
    torch.testing.assert_close(out[outside], images[outside])


def test_grayscale_in_the_kornia_twin(toy):
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    for call in (lambda aug: aug(images), lambda aug: aug(images, labels=labels)):
        out = call(RandomCounterfactual(toy, p=1.0))
        assert out.shape == images.shape and not torch.equal(out, images)


def test_mnist_one_liner_shapes_without_data():
    # The literal line's transform, with the real MNIST backend, on a PIL image of MNIST's mode and size.
    augment = v1.Compose([v1.ToTensor(), CounterfactualAugment(p=1.0)])
    out = augment(pil_gray(28))
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32


class OneChannelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@pytest.mark.parametrize("form", ["v2", "ToTensor"])
def test_literal_line_on_mnist_trains_a_one_channel_model(form):
    root = shared_path("data")
    if form == "v2":
        to_float = v2.ToDtype(torch.float32, scale=True)
        transform = v2.Compose([v2.ToImage(), to_float, cfaug.CounterfactualAugment(p=0.5)])
    else:
        transform = v1.Compose([v1.ToTensor(), cfaug.CounterfactualAugment(p=0.5)])
    dataset = Subset(datasets.MNIST(root, train=False, transform=transform), range(64))
    loader = DataLoader(dataset, batch_size=32, num_workers=2, shuffle=True)
    model = OneChannelNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for images, labels in loader:
        assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ domain warning
def test_out_of_domain_warning_once_and_only_once(toy):
    augment = CounterfactualAugment(toy, p=1.0)
    with pytest.warns(UserWarning, match=r"20x20 pixels.*'toy'.*8x8 images.*Backends page") as caught:
        augment(torch.rand(3, 20, 20), 1)
        augment(torch.rand(3, 20, 20), 1)
        augment(torch.rand(2, 3, 3, 3), torch.tensor([0, 1]))
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        augment(torch.rand(3, 40, 40))
        # within 2x, either way, gives none
        for size in ((4, 4), (16, 16), (4, 16)):
            CounterfactualAugment(toy, p=1.0)(torch.rand(3, *size), 1)
            RandomCounterfactual(toy, p=1.0)(torch.rand(1, 3, *size))
    for size in ((3, 8), (8, 17)):  # either side
        with pytest.warns(UserWarning, match=f"{size[0]}x{size[1]} pixels"):
            CounterfactualAugment(toy, p=0.0)(torch.rand(3, *size), 1)
    kornia_augment = RandomCounterfactual(toy, p=1.0)
    with pytest.warns(UserWarning, match="RandomCounterfactual got an image of 20x20") as caught:
        kornia_augment(torch.rand(2, 3, 20, 20))
        kornia_augment(torch.rand(2, 3, 20, 20))
    assert len(caught) == 1


# ------------------------------------------------------------------------------------------------ edge inputs
@pytest.mark.parametrize(
    "image", [torch.rand(3, 0, 0), torch.rand(3, 0, 8), torch.rand(2, 3, 8, 0), PIL.Image.new("RGB", (0, 0))]
)
def test_empty_images_are_refused(toy, image):
    for call in (lambda: CounterfactualAugment(toy, p=1.0)(image, 1), lambda: CounterfactualAugment(toy)(image)):
        with pytest.raises(ValueError, match="at least 1x1 pixels"):
            call()
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        with pytest.raises(ValueError, match="at least 1x1 pixels"):
            RandomCounterfactual(toy, p=1.0)(image)


def test_nan_images_are_refused(toy):
    image = torch.rand(3, 8, 8)
    image[0, 1, 1] = float("nan")
    for p in (0.0, 1.0):
        with pytest.raises(ValueError, match="NaN"):
            CounterfactualAugment(toy, p=p)(image, 1)
        with pytest.raises(ValueError, match="NaN"):
            CounterfactualAugment(toy, p=p)(image)
    with pytest.raises(ValueError, match="NaN"):
        RandomCounterfactual(toy, p=1.0)(image[None])


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_inputs_that_require_grad_give_a_detached_output_without_warning(toy, p):
    image = torch.rand(3, 8, 8)
    expected = seeded(backend=toy, p=p)(image, 1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = seeded(backend=toy, p=p)(image.clone().requires_grad_(), 1)[0]
        alone = seeded(backend=toy, p=p)(image.clone().requires_grad_())
        batch = RandomCounterfactual(toy, p=p)(image[None].clone().requires_grad_())
    assert torch.equal(out, expected) and not out.requires_grad
    assert not alone.requires_grad and not batch.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grayscale_mixed_kinds_on_a_cuda_batch():
    toy = ToyBackend()
    images, labels = torch.rand(16, 1, 8, 8, device="cuda"), (torch.arange(16) % 4).cuda()
    (out, out_labels), record = seeded(backend=toy, p=1.0, shape="mixed", return_record=True)(images, labels)
    assert out.device.type == "cuda" and out.shape == images.shape and out_labels is labels
    assert 0 < int((record["shape"] == -1).sum()) < 16
    out = RandomCounterfactual(toy, p=1.0, shape="mixed")(images, labels=labels)
    assert out.device.type == "cuda" and out.shape == images.shape


# ------------------------------------------------------------------------------------------------ conversions
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (32, 32)])
def test_pil_round_trip_matches_torchvision(mode, size):
    """The PIL fast paths give exactly torchvision's pixels and images (odd sizes: no row padding assumed)."""
    from torchvision.transforms.v2 import functional as TF

    from cfaug.transforms._image import from_batch, inspect_image, to_batch

    channels = {"L": 1, "RGB": 3}[mode]
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    kind = inspect_image(image)
    batch = to_batch(image, kind)
    assert batch.dtype == torch.uint8 and torch.equal(batch[0], TF.pil_to_tensor(image))
    batch[0, 0, 0, 0] ^= 1  # the batch is writable and owns its memory: the PIL image is not changed
    assert image.tobytes() == pixels.tobytes()
    out = from_batch(batch, kind, image)
    expected = TF.to_pil_image(batch[0], mode=mode)
    assert out.mode == expected.mode == mode and out.size == image.size and out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32])
def test_from_unit_float_is_to_dtype_with_saturation(dtype):
    from torchvision.transforms.v2 import functional as TF

    from cfaug.transforms._image import from_unit_float

    values = torch.cat([torch.rand(1000, generator=torch.Generator().manual_seed(0)), torch.tensor([0.0, 1.0])])
    assert torch.equal(from_unit_float(values, dtype), TF.to_dtype(values, dtype, scale=True))
    if dtype == torch.uint8:  # out of range saturates instead of wrapping around
        assert from_unit_float(torch.tensor([-0.5, 1.5]), dtype).tolist() == [0, 255]


@pytest.mark.parametrize("same_on_batch", [False, True])
@pytest.mark.parametrize("vary", [(), ("texture",), ("background",), ("background", "texture")])
def test_sample_params_rows(vary, same_on_batch):
    """Each key its own (B,) int64 tensor: varied classes drawn, the rest -1, seeds for every mechanism."""
    from cfaug.transforms._params import FROM_REAL, RECORD_KEYS, sample_params

    params = sample_params(
        6, 10, vary, applied=torch.ones(6, dtype=torch.bool), same_on_batch=same_on_batch,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert list(params) == list(RECORD_KEYS)
    for key in RECORD_KEYS[1:]:
        value = params[key]
        assert value.shape == (6,) and value.dtype == torch.int64
        mechanism = key.removeprefix("seed_")
        if key.startswith("seed_"):
            assert bool((value >= 0).all())
        elif mechanism in vary:
            assert bool(((value >= 0) & (value < 10)).all())
        else:
            assert bool((value == FROM_REAL).all())
        if same_on_batch:
            assert len(set(value.tolist())) == 1
    # Changing one key's tensor in place leaves every other key alone.
    before = {key: value.clone() for key, value in params.items()}
    params["seed_texture"].fill_(7)
    assert all(torch.equal(params[key], before[key]) for key in RECORD_KEYS if key != "seed_texture")
    if not same_on_batch:
        # The classes drawn for a mechanism are its own: with both varied, texture and background differ somewhere.
        many = sample_params(256, 10, vary, applied=torch.ones(256, dtype=torch.bool))
        if len(vary) == 2:
            assert not torch.equal(many["texture"], many["background"])
