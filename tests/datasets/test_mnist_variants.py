"""The biased MNIST variants (Colored, Double-colored, Wildlife) on fake MNIST files, plus one check on real data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path, write_mnist_idx
from PIL import Image, ImageColor
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2
from torchvision.utils import save_image

from cfaug.backends.base import Components
from cfaug.datasets.mnist_variants import (
    COLORED_MNIST_PALETTE,
    DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE,
    DOUBLE_COLORED_MNIST_OBJECT_PALETTE,
    ColoredMNIST,
    DoubleColoredMNIST,
    WildlifeMNIST,
    binarize_digits,
)
from cfaug.datasets.textures import find_texture_files, load_texture_folder, procedural_textures

NUM_TRAIN_DIGITS = 1200  # split 5:1 into 1000 train and 200 test items, like MNIST's 60k into 50k / 10k
VARIANTS = [ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST]


def palette(colors) -> torch.Tensor:
    return torch.tensor([rgb for _, rgb in colors], dtype=torch.float32) / 255


# --------------------------------------------------------------------------------------------- fake data


def fake_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a filled bar whose size depends on k, at a random place, with faint edges either side."""
    labels = np.arange(n, dtype=np.uint8) % 10
    rng.shuffle(labels)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        height, width = 8 + int(label), 4 + 2 * (int(label) % 5)
        top, left = rng.integers(1, 27 - height), rng.integers(1, 27 - width)
        image[top : top + height, left : left + width] = rng.integers(120, 256)
        # Just below and just above the 0.1 binarisation threshold (25.5 of 255).
        image[top : top + height, left - 1] = 25
        image[top : top + height, left + width] = 26
    return images, labels


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A torchvision-layout MNIST folder with tiny synthetic digits: (root, train images, train labels)."""
    root = tmp_path_factory.mktemp("mnist_root")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = fake_digits(NUM_TRAIN_DIGITS, rng)
    write_mnist_idx(raw, "train", images, labels)
    write_mnist_idx(raw, "t10k", *fake_digits(50, rng))
    return root, torch.from_numpy(images), torch.from_numpy(labels).long()


def write_textures(root: Path, make, ext: str = ".png", size: tuple[int, int] = (40, 30)) -> Path:
    """A texture folder whose class-k images are ``make(kind, k)`` (an RGB uint8 array of ``size``)."""
    for kind in ("object", "background"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for label in range(10):
            Image.fromarray(make(kind, label, size)).save(root / kind / f"{label}_test{ext}")
    return root


# Solid textures in colours that are easy to tell apart: object k and background k differ, all 20 differ.
SOLID = {
    "object": [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 128, 0),
               (128, 0, 255), (0, 128, 64), (255, 255, 255)],
    "background": [(64, 0, 0), (0, 64, 0), (0, 0, 64), (64, 64, 0), (0, 64, 64), (64, 0, 64), (128, 64, 0),
                   (64, 0, 128), (0, 128, 128), (96, 96, 96)],
}  # fmt: skip


def solid(kind: str, label: int, size: tuple[int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(SOLID[kind][label], dtype=np.uint8), (size[1], size[0], 3)).copy()


def gradient(kind: str, label: int, size: tuple[int, int]) -> np.ndarray:
    """Every pixel different: red = column, green = row, blue = class (and kind)."""
    width, height = size
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.arange(width)[None, :] * 255 // (width - 1)
    image[..., 1] = np.arange(height)[:, None] * 255 // (height - 1)
    image[..., 2] = 20 * label + (5 if kind == "object" else 0)
    return image


@pytest.fixture(scope="module")
def solid_textures(tmp_path_factory) -> Path:
    return write_textures(tmp_path_factory.mktemp("solid"), solid)


def nearest(colors: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return torch.cdist(colors, table).argmin(dim=1)


def digit_and_background_colors(dataset, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean colour of the digit pixels and of the other pixels of each item, read from the images."""
    indices = range(len(dataset)) if indices is None else indices
    parts = dataset.components(indices)
    mask = parts.mask
    inside = (parts.image * mask).sum((2, 3)) / mask.sum((2, 3))
    outside = (parts.image * (1 - mask)).sum((2, 3)) / (1 - mask).sum((2, 3))
    return inside, outside


# ------------------------------------------------------------------------------------ splits, masks, images


@pytest.mark.parametrize("cls", VARIANTS)
def test_splits_follow_the_5_to_1_protocol(mnist, cls):
    root, _, labels = mnist
    train, test = cls(root), cls(root, train=False)
    assert (len(train), len(test)) == (1000, 200)
    assert torch.equal(train.targets, labels[:1000]) and torch.equal(test.targets, labels[1000:])
    assert [train[i][1] for i in range(5)] == labels[:5].tolist()


def test_masks_match_the_authors_binarisation(mnist):
    root, images, _ = mnist
    dataset = DoubleColoredMNIST(root)
    # The authors' pipeline: scale to [0, 1], F.interpolate to 32 (nearest by default), threshold 0.1.
    reference = F.interpolate(images[:1000, None].float() / 255, (32, 32)).squeeze(1) > 0.1
    assert dataset.masks.dtype == torch.uint8 and torch.equal(dataset.masks.bool(), reference)
    digit = torch.zeros(1, 28, 28, dtype=torch.uint8)
    digit[0, 4, 4], digit[0, 10, 10] = 25, 26
    # Only the 26 survives, at the one target pixel whose nearest source is (10, 10): floor(12 * 28 / 32) = 10.
    assert binarize_digits(digit)[0].nonzero().tolist() == [[12, 12]]


def test_binarize_digits_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        binarize_digits(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        binarize_digits(torch.zeros(2, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("cls", VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_items_are_32px_rgb_composites_in_unit_range(mnist, cls, train):
    dataset = cls(mnist[0], train=train)
    image, target = dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(target, int)
    parts = dataset.components(range(20))
    assert isinstance(parts, Components) and len(parts) == 20
    assert parts.mask.shape == (20, 1, 32, 32) and set(parts.mask.unique().tolist()) <= {0.0, 1.0}
    for tensor in (parts.foreground, parts.background, parts.image):
        assert tensor.shape == (20, 3, 32, 32) and 0 <= float(tensor.min()) and float(tensor.max()) <= 1
    expected = torch.where(parts.mask.bool(), parts.foreground, parts.background)
    assert torch.equal(parts.image, expected)
    parts.foreground.add_(0)  # real tensors, not broadcast views
    images, targets = dataset.batch(range(20))
    assert torch.equal(images, parts.image) and torch.equal(targets, dataset.targets[:20])
    assert torch.equal(torch.stack([dataset[i][0] for i in range(20)]), images)


# ------------------------------------------------------------------------------------------- Colored MNIST


def test_colored_train_colours_follow_the_digit(mnist):
    dataset = ColoredMNIST(mnist[0])
    inside, outside = digit_and_background_colors(dataset)
    assert float(outside.abs().max()) == 0.0, "the background should be black"
    table = palette(COLORED_MNIST_PALETTE)
    for label in range(10):
        class_mean = inside[dataset.targets == label].mean(0)
        # Clamping to [0, 1] pulls saturated channels in by ~0.06, far less than the gaps between colours.
        assert int(nearest(class_mean[None], table)) == label
        assert float((class_mean - table[label]).abs().max()) < 0.1
    assert float((nearest(inside, table) == dataset.targets).float().mean()) > 0.9
    # Jitter of variance 0.02 per image and channel, seen on channels far from the clamp (128 of 255).
    mid = [(label, c) for label, (_, rgb) in enumerate(COLORED_MNIST_PALETTE) for c in range(3) if rgb[c] == 128]
    stds = [float(inside[dataset.targets == label, c].std()) for label, c in mid]
    assert len(stds) >= 6 and abs(float(np.mean(stds)) - 0.02**0.5) < 0.03  # variance 0.02
    parts = dataset.components([0])
    digit_pixels = parts.image[0][:, parts.mask[0, 0].bool()]
    assert torch.equal(digit_pixels, digit_pixels[:, :1].expand_as(digit_pixels)), "one colour per image"


def test_colored_palette_is_well_separated_and_named_right():
    table = palette(COLORED_MNIST_PALETTE)
    gaps = torch.cdist(table, table) + 10 * torch.eye(10)
    assert float(gaps.min()) > 0.65 and float(table.norm(dim=1).min()) > 0.7
    for name, rgb in COLORED_MNIST_PALETTE:
        assert ImageColor.getrgb(name) == rgb


# ------------------------------------------------------------------------------------ Double-colored MNIST


def test_double_colored_palettes_are_the_authors():
    background, objects = DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE, DOUBLE_COLORED_MNIST_OBJECT_PALETTE
    for name, rgb in background + objects:
        assert ImageColor.getrgb(name) == rgb
    assert [rgb for _, rgb in background][:3] == [(0, 100, 0), (0, 0, 139), (176, 48, 96)]
    assert all(objects[i] == background[(i + 4) % 10] for i in range(10))
    assert objects[0][0] == "yellow" and objects[9][0] == "orangered"


def test_double_colored_train_colours_follow_the_digit(mnist):
    dataset = DoubleColoredMNIST(mnist[0])
    inside, outside = digit_and_background_colors(dataset)
    objects, backgrounds = (
        palette(DOUBLE_COLORED_MNIST_OBJECT_PALETTE),
        palette(DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE),
    )
    assert float((inside - objects[dataset.targets]).abs().max()) < 0.05
    assert float((outside - backgrounds[dataset.targets]).abs().max()) < 0.05
    # Jitter std 0.01, measured on channels away from 0 and 1 (#b03060's and burlywood's).
    for label in (2, 5):
        spread = float(outside[dataset.targets == label].std(0).mean())
        assert 0.005 < spread < 0.02


@pytest.mark.parametrize("cls", VARIANTS)
def test_test_split_draws_factors_independently_and_uniformly(mnist, solid_textures, cls):
    kwargs = {"texture_root": solid_textures} if cls is WildlifeMNIST else {}
    dataset = cls(mnist[0], train=False, target="all", **kwargs)
    digits, objects, backgrounds = dataset.factors.T
    factors = [objects] if cls is ColoredMNIST else [objects, backgrounds]
    for factor in factors:
        counts = torch.bincount(factor, minlength=10)
        assert len(counts) == 10 and int(counts.min()) >= 8 and int(counts.max()) <= 36  # 200 draws, 20 expected
        assert float((factor == digits).float().mean()) < 0.25
        for label in range(10):  # the factor varies inside a class
            assert len(factor[digits == label].unique()) >= min(4, int((digits == label).sum()))
    if cls is not ColoredMNIST:
        assert float((objects == backgrounds).float().mean()) < 0.25
    else:
        assert bool((backgrounds == -1).all())
    # The factor labels say what the image shows.
    inside, outside = digit_and_background_colors(dataset)
    if cls is DoubleColoredMNIST:
        assert torch.equal(nearest(inside, palette(DOUBLE_COLORED_MNIST_OBJECT_PALETTE)), objects)
        assert torch.equal(nearest(outside, palette(DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE)), backgrounds)
    elif cls is WildlifeMNIST:
        assert torch.equal(nearest(inside, palette([("", c) for c in SOLID["object"]])), objects)
        assert torch.equal(nearest(outside, palette([("", c) for c in SOLID["background"]])), backgrounds)
    else:
        assert float((nearest(inside, palette(COLORED_MNIST_PALETTE)) == objects).float().mean()) > 0.9


# ---------------------------------------------------------------------------------------- Wildlife MNIST


def test_wildlife_train_textures_follow_the_digit(mnist, solid_textures):
    dataset = WildlifeMNIST(mnist[0], texture_root=solid_textures)
    inside, outside = digit_and_background_colors(dataset)
    objects = palette([("", c) for c in SOLID["object"]])
    backgrounds = palette([("", c) for c in SOLID["background"]])
    assert float((inside - objects[dataset.targets]).abs().max()) < 1e-6
    assert float((outside - backgrounds[dataset.targets]).abs().max()) < 1e-6


def test_wildlife_crops_are_windows_of_the_resized_reflect_padded_texture(mnist, tmp_path):
    textures = write_textures(tmp_path / "gradient", gradient, size=(200, 170))
    # The authors' texture pipeline, rebuilt here: resize 150 x 150 (nearest), reflect-pad 3, 32 x 32 window.
    padded = {}
    for kind in ("object", "background"):
        for label in range(10):
            resized = Image.open(textures / kind / f"{label}_test.png").resize((150, 150), Image.Resampling.NEAREST)
            texture = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255
            padded[kind, label] = F.pad(texture[None], (3, 3, 3, 3), mode="reflect")[0]

    # In a gradient texture a pixel's colour gives its place (up to the mirror copies in the padding), and the blue
    # channel tells the 20 textures apart: look window corners up by the colour of their top-left pixel.
    def color_codes(pixels: torch.Tensor) -> torch.Tensor:  # (3, ...) in [0, 1] -> one int per pixel
        rgb = (pixels * 255).round().long()
        return rgb[0] * 65536 + rgb[1] * 256 + rgb[2]

    keys = list(padded)
    table = torch.stack([color_codes(padded[key][:, :125, :125]).flatten() for key in keys]).flatten()
    sorted_codes, order = table.sort()
    dataset = WildlifeMNIST(mnist[0], texture_root=textures, target="all")
    parts = dataset.components(range(len(dataset)))
    corners = []
    for kind, crops, classes in (("object", parts.foreground, dataset.factors[:, 1]),
                                 ("background", parts.background, dataset.factors[:, 2])):  # fmt: skip
        queries = color_codes(crops[:, :, 0, 0].T)
        starts = torch.searchsorted(sorted_codes, queries).tolist()
        stops = torch.searchsorted(sorted_codes, queries, right=True).tolist()
        for item, (label, start, stop) in enumerate(zip(classes.tolist(), starts, stops, strict=True)):
            reference, hits = padded[kind, label], []
            for entry in order[start:stop].tolist():
                texture, (r, c) = keys[entry // 125**2], divmod(entry % 125**2, 125)
                if texture == (kind, label) and torch.equal(reference[:, r : r + 32, c : c + 32], crops[item]):
                    hits.append((r, c))
            assert len(hits) == 1, f"{kind} crop of item {item} is not a window of its texture"
            corners.append(hits[0])
    # Windows start anywhere in [0, 124]: 2000 draws reach into the reflected border on every side.
    rows, cols = torch.tensor(corners).T
    assert int(rows.min()) <= 2 and int(cols.min()) <= 2 and int(rows.max()) >= 122 and int(cols.max()) >= 122
    # Two items of the same class get different windows.
    same = (dataset.targets == dataset.targets[0]).nonzero().flatten()[:2]
    assert not torch.equal(parts.foreground[same[0]], parts.foreground[same[1]])


def test_wildlife_works_without_any_texture_folder(mnist):
    dataset = WildlifeMNIST(mnist[0], train=False)
    assert dataset.texture_root is None and "procedural" in repr(dataset)
    images, _ = dataset.batch(range(len(dataset)))
    assert images.shape == (200, 3, 32, 32) and float(images.std()) > 0.1


def test_procedural_textures_are_deterministic_distinct_copies():
    objects, backgrounds = procedural_textures("object"), procedural_textures("background")
    assert objects.shape == backgrounds.shape == (10, 3, 150, 150) and objects.dtype == torch.float32
    assert (
        0 <= float(torch.stack([objects, backgrounds]).min()) and float(torch.stack([objects, backgrounds]).max()) <= 1
    )
    objects.zero_()
    assert torch.equal(procedural_textures("background"), backgrounds)
    assert float(procedural_textures("object").mean()) > 0.1, "callers get copies, not the cached tensor"
    for textures in (procedural_textures("object"), backgrounds):
        flat = textures.flatten(1)
        gaps = (flat[:, None] - flat[None]).abs().mean(-1) + torch.eye(10)
        assert float(gaps.min()) > 0.05, "every class should look different"
        assert float(textures.std((2, 3)).mean()) > 0.05, "textures, not flat colours"
    assert procedural_textures("object", size=40).shape == (10, 3, 40, 40)
    with pytest.raises(ValueError, match="kind"):
        procedural_textures("foreground")
    with pytest.raises(TypeError, match="size"):
        procedural_textures("object", size=32.0)


# -------------------------------------------------------------------------------------- texture folders


def test_texture_folder_accepts_one_file_per_class_and_ignores_others(tmp_path):
    root = write_textures(tmp_path / "t", solid, ext=".jpg")
    (root / "object" / "README.txt").write_text("not a texture")
    (root / "background" / "notes.jpg").write_bytes(b"no class prefix, ignored")
    files = find_texture_files(root)
    assert [p.name for p in files["object"]] == [f"{k}_test.jpg" for k in range(10)]
    textures = load_texture_folder(root, size=20)
    assert textures["object"].shape == (10, 3, 20, 20)
    # JPEG keeps solid colours within a few levels.
    assert float((textures["object"][:, :, 5, 5] - palette([("", c) for c in SOLID["object"]])).abs().max()) < 0.03


def test_texture_folder_errors_name_what_is_wrong(tmp_path, mnist):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        find_texture_files(tmp_path / "absent")
    with pytest.raises(TypeError, match="texture_root"):
        find_texture_files(3)
    root = write_textures(tmp_path / "t", solid)
    (root / "object" / "3_test.png").unlink()
    (root / "background" / "7_test.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"3_\*\.jpg.*7_\*\.jpg"):
        WildlifeMNIST(mnist[0], texture_root=root)
    solid_three = Image.fromarray(solid("object", 3, (8, 8)))
    solid_three.save(root / "object" / "3_test.png")
    solid_three.save(root / "background" / "7_a.png")
    solid_three.save(root / "background" / "7_b.jpeg")
    with pytest.raises(ValueError, match=r"Class 7 should have exactly one background texture.*7_a\.png.*7_b\.jpeg"):
        find_texture_files(root)
    (root / "background" / "7_b.jpeg").unlink()
    solid_three.save(root / "object" / "12_extra.png")
    with pytest.raises(ValueError, match="names class 12"):
        find_texture_files(root)
    (root / "object" / "12_extra.png").unlink()
    for kind in ("object", "background"):
        for path in (root / kind).iterdir():
            path.unlink()
        (root / kind).rmdir()
    with pytest.raises(FileNotFoundError, match="object/.*background/"):
        find_texture_files(root)


# -------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("cls", VARIANTS)
@pytest.mark.parametrize("train", [True, False])
def test_same_seed_same_items_other_seed_other_items(mnist, cls, train):
    root = mnist[0]
    first = cls(root, train=train, seed=5, target="all").batch(range(100))
    again = cls(root, train=train, seed=5, target="all").batch(range(100))
    other = cls(root, train=train, seed=6, target="all").batch(range(100))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    if not train:  # test-split classes are drawn from the seed; train classes are the digit
        assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize("cls", VARIANTS)
def test_items_do_not_depend_on_access_order(mnist, cls):
    dataset = cls(mnist[0], train=False, seed=3)
    forward = [dataset[i][0] for i in (5, 17, 3)]
    fresh = cls(mnist[0], train=False, seed=3)
    backward = [fresh[i][0] for i in (3, 17, 5)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert torch.equal(dataset.batch([17, 5])[0], torch.stack([forward[1], forward[0]]))
    assert torch.equal(dataset[-1][0], dataset[len(dataset) - 1][0])
    assert torch.equal(dataset[np.int64(17)][0], forward[1]) and torch.equal(dataset[torch.tensor(5)][0], forward[0])
    copy = pickle.loads(pickle.dumps(dataset))  # what DataLoader workers get under the spawn start method
    assert torch.equal(copy.batch(range(30))[0], dataset.batch(range(30))[0])


def test_dataloader_workers_give_the_same_items(mnist):
    dataset = Subset(WildlifeMNIST(mnist[0], train=False, seed=2, target="all"), range(48))
    alone = list(DataLoader(dataset, batch_size=16))
    workers = list(DataLoader(dataset, batch_size=16, num_workers=2))
    for (images, targets), (worker_images, worker_targets) in zip(alone, workers, strict=True):
        assert torch.equal(images, worker_images)
        assert all(torch.equal(a, b) for a, b in zip(targets, worker_targets, strict=True))


# ------------------------------------------------------------------------------- transforms and targets


def test_transform_and_target_transform_are_applied(mnist):
    root = mnist[0]
    plain = DoubleColoredMNIST(root)
    normalised = DoubleColoredMNIST(
        root, transform=v2.Normalize([0.5] * 3, [0.5] * 3), target_transform=lambda digit: digit + 100
    )
    image, target = normalised[4]
    assert torch.allclose(image, plain[4][0] * 2 - 1) and target == plain[4][1] + 100
    both = DoubleColoredMNIST(root, transforms=lambda image, target: (image.flip(-1), (target, "seen")))
    image, target = both[4]
    assert torch.equal(image, plain[4][0].flip(-1)) and target == (plain[4][1], "seen")
    with pytest.raises(ValueError, match="Only transforms or transform/target_transform"):
        DoubleColoredMNIST(root, transform=v2.Identity(), transforms=lambda image, target: (image, target))


@pytest.mark.parametrize("cls", VARIANTS)
def test_target_all_gives_digit_object_and_background_classes(mnist, cls):
    dataset = cls(mnist[0], train=False, target="all", target_transform=lambda t: t)
    image, target = dataset[7]
    assert isinstance(target, tuple) and len(target) == 3 and all(isinstance(t, int) for t in target)
    assert list(target) == dataset.factors[7].tolist() and target[0] == int(dataset.targets[7])
    images, targets = dataset.batch(torch.tensor([7, 8]))
    assert targets.shape == (2, 3) and targets.dtype == torch.int64 and targets[0].tolist() == list(target)
    train = cls(mnist[0], target="all")
    digit, object_class, background_class = train[0][1]
    assert object_class == digit and background_class == (-1 if cls is ColoredMNIST else digit)


# --------------------------------------------------------------------------------------- argument checks


def test_bad_arguments_are_rejected_with_clear_messages(mnist, tmp_path):
    root = mnist[0]
    with pytest.raises(ValueError, match="Unknown value 'colour' for argument `target`"):
        ColoredMNIST(root, target="colour")
    with pytest.raises(TypeError, match="`train` should be a bool"):
        ColoredMNIST(root, train="yes")
    with pytest.raises(ValueError, match="`seed`"):
        ColoredMNIST(root, seed=-1)
    with pytest.raises(TypeError, match="`seed`"):
        ColoredMNIST(root, seed=1.5)
    with pytest.raises(TypeError, match="`root`"):
        ColoredMNIST(None)
    with pytest.raises(RuntimeError, match="Dataset not found. You can use download=True") as missing:
        DoubleColoredMNIST(tmp_path / "empty")
    assert isinstance(missing.value, FileNotFoundError)  # so that `cfaug` reports it in one line
    dataset = ColoredMNIST(root, train=False)
    with pytest.raises(IndexError, match="200"):
        dataset[200]
    with pytest.raises(TypeError, match="`index` should be an integer, but got float 1.0"):
        dataset[1.0]
    with pytest.raises(IndexError, match=r"\[-200, 199\]"):
        dataset.batch([0, 250])
    with pytest.raises(TypeError, match="integer"):
        dataset.batch(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="indices"):
        dataset.batch("01")
    assert dataset.batch([])[0].shape == (0, 3, 32, 32)
    assert "Split: Test" in repr(dataset) and "Seed: 0" in repr(dataset)


# ---------------------------------------------------------------------------------------- visual check


@pytest.mark.parametrize("cls", VARIANTS)
def test_png_grid_of_train_and_test_items(mnist, cls, tmp_path):
    """A grid to look at: row 1 train items, row 2 test items (e.g. pytest --basetemp=out, then open the PNGs)."""
    images = torch.cat([cls(mnist[0], train=train).batch(range(8))[0] for train in (True, False)])
    path = tmp_path / f"{cls.__name__}.png"
    save_image(images, path, nrow=8, padding=2)
    grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert grid.shape == (3, 2 * 34 + 2, 8 * 34 + 2)
    assert float((grid[:, 2:34, 2:34] - images[0]).abs().max()) <= 1 / 255 + 1e-6


# -------------------------------------------------------------------------------------------- real data


@pytest.mark.shared
def test_real_mnist_and_the_papers_texture_folder():
    root = shared_path("data", "MNIST").parent
    textures = shared_path("data", "wildlife_textures")
    files = find_texture_files(textures)
    assert files["object"][3].name == "3_striped_0043.jpg" and files["background"][0].name == "0_veined_0066.jpg"
    train = WildlifeMNIST(root, texture_root=textures, target="all")
    test = DoubleColoredMNIST(root, train=False)
    assert (len(train), len(test)) == (50_000, 10_000)
    image, (digit, object_class, background_class) = train[0]
    assert digit == object_class == background_class == 5  # MNIST's first training digit
    assert image.shape == (3, 32, 32) and float(image.std()) > 0.05
    images, digits = test.batch(range(64))
    assert images.shape == (64, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    assert int(test.targets[0]) == 3  # MNIST training image 50,000
