"""CounterfactualDataset, its on-disk format (save, resume, ranges, load, verification) and MixedDataset."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2
from toy_backend import ToyBackend

import cfaug
from cfaug.datasets.counterfactual import (
    CounterfactualDataset,
    CounterfactualInfo,
    MixedDataset,
    SavedCounterfactualDataset,
    SavedDatasetError,
)
from cfaug.seeding import index_seeds, per_sample_normal


class ConvToyBackend(ToyBackend):
    """The toy backend with a convolution in its texture mechanism.

    On CPUs a convolution gives results that differ in the last bits between batch sizes, so this backend
    catches any change that would generate dataset items in batches instead of alone.
    """

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(99)
        self.conv = nn.Conv2d(16, self.channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.3)
            self.conv.bias.zero_()

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        noise = per_sample_normal(seeds, 1, (16, self.image_size, self.image_size))
        return torch.sigmoid(self.conv(noise) + classes.float()[:, None, None, None])


# The writers' OS locks are taken on these files; they stay in the folder, empty.
LOCK_FILES = (".cfaug.lock", ".cfaug.claims")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes, the (empty) lock files left out."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert all(files.pop(name, b"") == b"" for name in LOCK_FILES)
    assert not [name for name in files if Path(name).name.startswith(".")], "temporary files were left behind"
    return files


def stack_items(dataset, indices) -> tuple[torch.Tensor, list[Any]]:
    items = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in items]), [target for _, target in items]


# ------------------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 0}, ValueError, "`size` should be an integer >= 1, but got 0"),
        ({"size": -3}, ValueError, "`size`"),
        ({"size": 2.5}, TypeError, "`size`"),
        ({"seed": -1}, ValueError, "`seed` should be a non-negative integer, but got -1"),
        ({"seed": True}, TypeError, "`seed`"),
        ({"seed": "0"}, TypeError, "`seed`"),
        ({"target": "texture"}, ValueError, "Unknown value 'texture' for argument `target`"),
        ({"vary": ("texture", "colour")}, ValueError, "Unknown value 'colour' for argument `vary`"),
        ({"vary": ("shape",)}, ValueError, "always drawn"),
        ({"vary": 3}, TypeError, "`vary`"),
        ({"transform": "resize"}, TypeError, "`transform` should be a callable"),
        ({"target_transform": 1}, TypeError, "`target_transform`"),
        ({"backend": "no-such-backend"}, ValueError, "Unknown value 'no-such-backend' for argument `backend`"),
        ({"backend": 3}, TypeError, "`backend` should be a backend name"),
        ({"backend_kwargs": [1]}, TypeError, "`backend_kwargs`"),
        ({"weights": 3}, TypeError, "`weights` should be a weights name"),
    ],
)
def test_bad_arguments_are_rejected_with_clear_messages(kwargs, error, match):
    with pytest.raises(error, match=match):
        CounterfactualDataset(**{"backend": "toy", "size": 4, **kwargs})


@pytest.mark.parametrize("arg", ["weights", "device", "backend_kwargs"])
def test_loading_arguments_conflict_with_a_loaded_backend(toy, arg):
    value = {"weights": "x.safetensors", "device": "cpu", "backend_kwargs": {}}[arg]
    with pytest.raises(ValueError, match=f"`{arg}` applies to a backend given by name"):
        CounterfactualDataset(toy, size=4, **{arg: value})


def test_index_checks():
    data = CounterfactualDataset("toy", size=5)
    assert torch.equal(data[-1][0], data[4][0]) and data.info(-5).index == 0
    for bad in (5, -6, 100):
        with pytest.raises(IndexError, match=r"`index` should be in \[-5, 4\].*but got"):
            data[bad]
    with pytest.raises(TypeError, match="`index` should be an integer, but got float"):
        data[1.0]
    assert len(list(data)) == 5, "iteration stops at the end through IndexError"


# ---------------------------------------------------------------------------------------------------- items


def test_items_are_float_images_with_shape_targets(toy):
    data = CounterfactualDataset("toy", size=30, seed=4)
    assert len(data) == 30
    for i in range(30):
        image, target = data[i]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and image.device.type == "cpu"
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        assert isinstance(target, int) and target == data.info(i).shape
    assert len({data[i][1] for i in range(30)}) > 1, "shape classes are drawn, not constant"


def test_item_is_the_backend_sample_of_its_index_seed_and_classes(toy):
    data = CounterfactualDataset("toy", size=10, seed=7, target="all")
    for i in (0, 3, 9):
        image, (shape, texture, background) = data[i]
        seed = index_seeds(7, [i])
        info = data.info(i)
        assert info == CounterfactualInfo(i, shape, texture, background, int(seed[0]))
        expected = toy.sample([shape], [texture], [background], seeds=seed).image[0]
        assert torch.equal(image, expected)
        parts = data.components(i)
        assert torch.equal(parts.image[0], image) and parts.mask.shape == (1, 1, 8, 8)
        assert torch.equal(data.image(i), image)


def test_classes_depend_only_on_seed_and_index():
    a = CounterfactualDataset("toy", size=40, seed=1)
    b = CounterfactualDataset("toy", size=80, seed=1)  # another size: same items where both exist
    c = CounterfactualDataset("toy", size=40, seed=2)
    assert [a.info(i) for i in range(40)] == [b.info(i) for i in range(40)]
    assert [a.info(i).classes for i in range(40)] != [c.info(i).classes for i in range(40)]
    assert torch.equal(a[17][0], b[17][0])


def test_vary_controls_which_mechanisms_get_their_own_class():
    size = 60
    both = CounterfactualDataset("toy", size=size, seed=5, target="all")
    texture_only = CounterfactualDataset("toy", size=size, seed=5, target="all", vary="texture")
    none = CounterfactualDataset("toy", size=size, seed=5, target="all", vary=())
    assert both.vary == ("texture", "background")
    assert CounterfactualDataset("toy", size=1, vary=["background", "texture"]).vary == both.vary
    infos = [(both.info(i), texture_only.info(i), none.info(i)) for i in range(size)]
    # The shape class and the seed stay put whatever `vary` says; only the non-varying classes change.
    assert all(b.shape == t.shape == n.shape and b.seed == t.seed == n.seed for b, t, n in infos)
    assert all(t.texture == b.texture and t.background == t.shape for b, t, n in infos)
    assert all(n.classes == (n.shape,) * 3 for _, _, n in infos)
    assert any(b.texture != b.shape for b, _, _ in infos) and any(b.background != b.shape for b, _, _ in infos)
    assert none[0][1] == (none.info(0).shape,) * 3


def test_transform_and_target_transform_are_applied():
    data = CounterfactualDataset(
        "toy", size=4, transform=lambda x: x.mean(0, keepdim=True), target_transform=lambda y: y + 100
    )
    plain = CounterfactualDataset("toy", size=4)
    image, target = data[2]
    assert torch.equal(image, plain[2][0].mean(0, keepdim=True)) and target == plain[2][1] + 100


def test_repr_shows_the_settings(toy):
    text = repr(CounterfactualDataset("toy", size=12, seed=3, vary="background", target="all"))
    for part in ("CounterfactualDataset", "Number of datapoints: 12", "Backend: toy", "Seed: 3", "background"):
        assert part in text
    assert "Target: all" in text and "texture" not in text
    assert "weights 'toy-random'" in repr(CounterfactualDataset(toy, size=2))
    assert cfaug.CounterfactualDataset is CounterfactualDataset, "exported lazily from the package"


def test_a_backend_loaded_by_name_is_loaded_lazily_and_never_pickled():
    data = CounterfactualDataset("toy", size=6, seed=2)
    assert data._backend is None, "nothing is loaded before the first item"
    first = data[3][0]
    assert data._backend is not None
    copy = pickle.loads(pickle.dumps(data))
    assert copy._backend is None and b"palette" not in pickle.dumps(data)
    assert torch.equal(copy[3][0], first) and copy._backend is not None


def test_a_backend_object_is_pickled_with_the_dataset():
    data = CounterfactualDataset(ConvToyBackend(), size=6)
    copy = pickle.loads(pickle.dumps(data))
    assert isinstance(copy._backend, ConvToyBackend) and torch.equal(copy[1][0], data[1][0])


@pytest.mark.parametrize("by_name", [True, False], ids=["by-name", "conv-object"])
def test_items_are_bitwise_identical_across_batch_sizes_workers_and_order(by_name):
    size = 14
    data = CounterfactualDataset("toy" if by_name else ConvToyBackend(), size=size, seed=11, target="all")
    reference, targets = stack_items(data, range(size))
    if not by_name:
        # The point of generating alone: batched generation would not be bitwise equal on this backend.
        seeds = index_seeds(11, range(size))
        batched = data.backend.sample(*zip(*targets, strict=True), seeds=seeds).image
        assert torch.allclose(batched, reference, atol=1e-5)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()
    for batch_size, num_workers in ((1, 0), (7, 0), (1, 2), (7, 2)):
        loader = DataLoader(Subset(data, order), batch_size=batch_size, num_workers=num_workers)
        images = torch.cat([batch[0] for batch in loader])
        assert torch.equal(images, reference[order]), (batch_size, num_workers)


# ---------------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("fmt", ["png", "safetensors"])
def test_save_and_load_round_trip(tmp_path, fmt):
    data = CounterfactualDataset("toy", size=13, seed=9, vary="texture", target="all")
    assert data.save(tmp_path, fmt, chunk_size=5, progress=False) is True
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["format"] == fmt
    assert manifest["backend"] == "toy" and manifest["weights"] == "toy-random" and manifest["weights_sha256"] is None
    assert manifest["cfaug_version"] == cfaug.__version__
    assert (manifest["seed"], manifest["size"], manifest["vary"], manifest["target"]) == (9, 13, ["texture"], "all")
    assert manifest["labels_sha256"] == hashlib.sha256((tmp_path / "labels.csv").read_bytes()).hexdigest()

    # labels.csv is plain CSV whose sha256 column matches the files it names.
    with open(tmp_path / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == list(range(13))
    for row in rows:
        info = data.info(int(row["index"]))
        assert (int(row["shape"]), int(row["texture"]), int(row["background"]), int(row["seed"])) == (
            info.shape,
            info.texture,
            info.background,
            info.seed,
        )
        assert hashlib.sha256((tmp_path / row["file"]).read_bytes()).hexdigest() == row["sha256"]

    saved = CounterfactualDataset.load(tmp_path)
    assert isinstance(saved, SavedCounterfactualDataset) and len(saved) == 13 and saved.target == "all"
    for i in range(13):
        (image, target), (generated, expected_target) = saved[i], data[i]
        assert image.shape == generated.shape and image.dtype == torch.float32
        assert torch.equal(image, torch.round(generated * 255) / 255) and target == expected_target
        assert saved.info(i) == data.info(i)
    assert SavedCounterfactualDataset(tmp_path, target="shape")[4][1] == data.info(4).shape
    saved.verify()
    text = repr(saved)
    assert "Root location" in text and f"Format: {fmt}" in text and "Seed: 9" in text


def test_files_are_readable_without_cfaug(tmp_path):
    data = CounterfactualDataset("toy", size=6, seed=1)
    data.save(tmp_path / "png", progress=False)
    data.save(tmp_path / "st", "safetensors", chunk_size=4, progress=False)
    with open(tmp_path / "png" / "labels.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    with Image.open(tmp_path / "png" / row["file"]) as picture:
        assert picture.mode == "RGB" and picture.size == (8, 8)
        pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1)
    assert torch.equal(pixels, torch.round(data[0][0] * 255).to(torch.uint8))
    shards = sorted((tmp_path / "st" / "shards").iterdir())
    assert [p.name for p in shards] == ["000000-000004.safetensors", "000004-000006.safetensors"]
    with safe_open(str(shards[1]), "pt") as shard:
        assert shard.get_tensor("images").dtype == torch.uint8
        assert shard.get_tensor("index").tolist() == [4, 5]
        assert shard.get_tensor("shape").tolist() == [data.info(4).shape, data.info(5).shape]


def test_save_with_workers_writes_the_same_files(tmp_path):
    data = CounterfactualDataset("toy", size=11, seed=3)
    data.save(tmp_path / "a", chunk_size=3, progress=False)
    data.save(tmp_path / "b", chunk_size=3, num_workers=2, progress=False)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_batched_save_cuts_batches_on_a_fixed_grid(tmp_path):
    data = CounterfactualDataset(ConvToyBackend(), size=13, seed=6, target="all")
    calls = []
    sample = data.backend.sample

    def counted(shape, *args, **kwargs):
        calls.append(len(shape))
        return sample(shape, *args, **kwargs)

    data.backend.sample = counted
    data.save(tmp_path / "whole", "safetensors", chunk_size=5, batch_size=4, progress=False)
    # Chunks [0,5) [5,10) [10,13), cut again at multiples of 4.
    assert calls == [4, 1, 3, 2, 2, 1]
    # Two ranges split on the chunk grid give the very same batches, hence the very same bytes.
    data.save(tmp_path / "split", "safetensors", chunk_size=5, batch_size=4, stop=5, progress=False)
    data.save(tmp_path / "split", "safetensors", chunk_size=5, batch_size=4, start=5, progress=False)
    # parts/ is the bookkeeping of the ranges saved; everything else must be equal.
    whole, split = tree(tmp_path / "whole"), tree(tmp_path / "split")
    assert {name: data for name, data in whole.items() if not name.startswith("parts/")} == {
        name: data for name, data in split.items() if not name.startswith("parts/")
    }
    # Against one item per call, only the summation order of the convolutions differs: one 8-bit level at most.
    data.save(tmp_path / "single", "safetensors", chunk_size=5, progress=False)
    batched, single = SavedCounterfactualDataset(tmp_path / "whole"), SavedCounterfactualDataset(tmp_path / "single")
    for i in range(13):
        assert (batched[i][0] - single[i][0]).abs().max() <= 1 / 255 + 1e-6
        assert batched[i][1] == single[i][1]


def test_save_shows_progress(tmp_path, capsys):
    CounterfactualDataset("toy", size=9).save(tmp_path, chunk_size=4, progress=True)
    assert "9/9" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["png", "safetensors"])
def test_interrupted_save_resumes_without_missing_or_duplicated_items(tmp_path, monkeypatch, fmt):
    size, chunk_size, fail_after = 13, 4, 6
    CounterfactualDataset("toy", size=size, seed=2).save(tmp_path / "whole", fmt, chunk_size=chunk_size, progress=False)

    interrupted = CounterfactualDataset("toy", size=size, seed=2)
    backend = interrupted.backend
    original, calls = backend.sample, []

    def failing_sample(*args, **kwargs):
        if len(calls) == fail_after:
            raise RuntimeError("simulated crash")
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(backend, "sample", failing_sample)
    with pytest.raises(RuntimeError, match="simulated crash"):
        interrupted.save(tmp_path / "resumed", fmt, chunk_size=chunk_size, progress=False)
    partial = tmp_path / "resumed"
    assert not (partial / "manifest.json").exists()
    assert [p.name for p in (partial / "records").iterdir()] == ["000000-000004.csv"]
    with pytest.raises(SavedDatasetError, match=f"unfinished save \\(4 of {size} items"):
        CounterfactualDataset.load(partial)

    resumed = CounterfactualDataset("toy", size=size, seed=2)  # a fresh process would rebuild it like this
    generated = []
    original_resumed = resumed.backend.sample
    monkeypatch.setattr(resumed.backend, "sample", lambda *a, **k: generated.append(1) or original_resumed(*a, **k))
    assert resumed.save(partial, fmt, chunk_size=chunk_size, progress=False) is True
    assert len(generated) == size - chunk_size, "finished chunks are not generated again"
    assert tree(partial) == tree(tmp_path / "whole")
    assert resumed.save(partial, fmt, chunk_size=chunk_size, progress=False) is True
    assert len(generated) == size - chunk_size, "a finished dataset is left alone"


def test_resuming_with_another_chunk_size_still_covers_every_index_once(tmp_path):
    data = CounterfactualDataset("toy", size=10, seed=6)
    assert data.save(tmp_path, start=0, stop=3, chunk_size=2, progress=False) is False
    assert data.save(tmp_path, chunk_size=4, progress=False) is True
    records = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert records == [
        "000000-000002.csv",
        "000002-000003.csv",
        "000003-000004.csv",
        "000004-000008.csv",
        "000008-000010.csv",
    ]
    whole = tmp_path.parent / (tmp_path.name + "-whole")
    data.save(whole, progress=False)
    assert (tmp_path / "labels.csv").read_bytes() == (whole / "labels.csv").read_bytes()
    assert (tmp_path / "manifest.json").read_bytes() == (whole / "manifest.json").read_bytes()


@pytest.mark.parametrize("fmt", ["png", "safetensors"])
def test_disjoint_ranges_merge_into_the_whole_dataset(tmp_path, fmt):
    data = CounterfactualDataset("toy", size=12, seed=8, target="all")
    data.save(tmp_path / "whole", fmt, chunk_size=4, progress=False)
    root = tmp_path / "ranks"
    # Two "ranks", unaligned ranges, the later range first.
    assert data.save(root, fmt, start=5, stop=12, chunk_size=4, progress=False) is False
    parts = sorted((root / "parts").iterdir())
    assert [p.name for p in parts] == ["000005-000012.json"]
    assert json.loads(parts[0].read_text())["complete"] is True
    with pytest.raises(SavedDatasetError, match="incomplete: 7 of 12"):
        CounterfactualDataset.finalize(root)
    assert data.save(root, fmt, start=0, stop=5, chunk_size=4, progress=False) is True
    assert sorted(p.name for p in (root / "parts").iterdir()) == ["000000-000005.json", "000005-000012.json"]
    if fmt == "png":
        assert (root / "labels.csv").read_bytes() == (tmp_path / "whole" / "labels.csv").read_bytes()
        assert (root / "manifest.json").read_bytes() == (tmp_path / "whole" / "manifest.json").read_bytes()
    else:
        # Shards follow the ranges ([4, 5) and [5, 8) here, not [4, 8)); the items in them do not.
        def item_columns(folder: Path) -> list[list[str]]:
            return [line.split(",")[:5] for line in (folder / "labels.csv").read_text().splitlines()]

        assert item_columns(root) == item_columns(tmp_path / "whole")
        assert "000004-000005.safetensors" in (root / "labels.csv").read_text()
    first, second = SavedCounterfactualDataset(root), SavedCounterfactualDataset(tmp_path / "whole")
    assert all(torch.equal(first[i][0], second[i][0]) and first[i][1] == second[i][1] for i in range(12))
    before = tree(root)
    CounterfactualDataset.finalize(root)  # the separate merge step is idempotent
    assert tree(root) == before


def test_overlapping_ranges_are_detected(tmp_path):
    data = CounterfactualDataset("toy", size=8)
    data.save(tmp_path, start=0, stop=4, chunk_size=4, progress=False)
    records = tmp_path / "records"
    (records / "000002-000006.csv").write_bytes((records / "000000-000004.csv").read_bytes())
    with pytest.raises(SavedDatasetError, match="overlaps an earlier record"):
        data.save(tmp_path, progress=False)


@pytest.mark.parametrize(
    ("other", "field"),
    [
        ({"seed": 1}, "seed"),
        ({"size": 9}, "size"),
        ({"vary": "texture"}, "vary"),
        ({"target": "all"}, "target"),
        ({"backend": ConvToyBackend()}, "parameters_sha256"),
    ],
)
def test_resuming_with_other_settings_is_refused(tmp_path, other, field):
    CounterfactualDataset("toy", size=8, seed=0).save(tmp_path, start=0, stop=4, progress=False)
    different = CounterfactualDataset(**{"backend": "toy", "size": 8, "seed": 0, **other})
    with pytest.raises(SavedDatasetError, match=f"other settings .*{field}"):
        different.save(tmp_path, progress=False)
    CounterfactualDataset("toy", size=8, seed=0).save(tmp_path, progress=False)  # finish it
    with pytest.raises(SavedDatasetError, match=f"manifest.json\\): .*{field}"):
        different.save(tmp_path, progress=False)


def test_resuming_in_another_format_is_refused(tmp_path):
    data = CounterfactualDataset("toy", size=8)
    data.save(tmp_path, "png", start=0, stop=4, progress=False)
    with pytest.raises(SavedDatasetError, match="format: 'png' \\(requested 'safetensors'\\)"):
        data.save(tmp_path, "safetensors", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"format": "jpeg"}, ValueError, "Unknown value 'jpeg' for argument `format`"),
        ({"start": 5, "stop": 5}, ValueError, "0 <= start < stop <= 8"),
        ({"stop": 9}, ValueError, "but got start=0 and stop=9"),
        ({"start": -1}, ValueError, "`start`"),
        ({"chunk_size": 0}, ValueError, "`chunk_size`"),
        ({"num_workers": -1}, ValueError, "`num_workers`"),
        ({"num_workers": 1.5}, TypeError, "`num_workers`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
    ],
)
def test_bad_save_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        CounterfactualDataset("toy", size=8).save(tmp_path, **kwargs)


def test_png_needs_one_or_three_channels(tmp_path):
    data = CounterfactualDataset(cfaug.load_backend("toy", channels=2), size=3)
    with pytest.raises(ValueError, match="format='png' stores 1 or 3 channels.*use format='safetensors'"):
        data.save(tmp_path / "png", progress=False)
    data.save(tmp_path / "st", "safetensors", progress=False)
    assert SavedCounterfactualDataset(tmp_path / "st")[2][0].shape == (2, 8, 8)
    one = CounterfactualDataset(cfaug.load_backend("toy", channels=1), size=3)
    one.save(tmp_path / "gray", progress=False)
    assert SavedCounterfactualDataset(tmp_path / "gray")[0][0].shape == (1, 8, 8)


# ------------------------------------------------------------------------------------------- verification


@pytest.fixture
def saved_png(tmp_path) -> Path:
    CounterfactualDataset("toy", size=6, seed=4).save(tmp_path, chunk_size=3, progress=False)
    return tmp_path


def test_load_reports_a_missing_file(saved_png):
    (saved_png / "images" / "000000" / "000004.png").unlink()
    with pytest.raises(SavedDatasetError, match="000004.png'.*is missing"):
        SavedCounterfactualDataset(saved_png)
    unchecked = SavedCounterfactualDataset(saved_png, verify=False)
    with pytest.raises(SavedDatasetError, match="000004.png'.*is missing"):
        unchecked[4]


def test_load_reports_a_corrupted_file(saved_png):
    images = saved_png / "images" / "000000"
    (images / "000002.png").write_bytes((images / "000003.png").read_bytes())  # a valid PNG, but not item 2's
    saved = SavedCounterfactualDataset(saved_png)
    saved[1]
    with pytest.raises(SavedDatasetError, match="000002.png'.*does not match its sha256"):
        saved[2]
    with pytest.raises(SavedDatasetError, match="000002.png'.*does not match its sha256"):
        saved.verify()
    unchecked = SavedCounterfactualDataset(saved_png, verify=False)
    assert torch.equal(unchecked[2][0], unchecked[3][0])


def test_load_reports_a_corrupted_shard(tmp_path):
    CounterfactualDataset("toy", size=6).save(tmp_path, "safetensors", chunk_size=3, progress=False)
    shard = tmp_path / "shards" / "000003-000006.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    saved = SavedCounterfactualDataset(tmp_path)
    saved[0]
    with pytest.raises(SavedDatasetError, match="000003-000006.safetensors'.*sha256"):
        saved[4]


def test_load_reports_a_changed_label_file(saved_png):
    labels = saved_png / "labels.csv"
    labels.write_text(labels.read_text().replace("\n1,", "\n1,9", 1))
    with pytest.raises(SavedDatasetError, match="labels.csv'.*does not match the sha256"):
        SavedCounterfactualDataset(saved_png)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(complete=False), "not marked complete"),
        (lambda m: m.pop("seed"), r"lacks the fields \['seed'\]"),
        (lambda m: m.update(dataset_format_version=99), "dataset_format_version 99"),
    ],
)
def test_load_reports_a_bad_manifest(saved_png, edit, match):
    path = saved_png / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(SavedDatasetError, match=match):
        SavedCounterfactualDataset(saved_png)


def test_load_reports_a_folder_without_a_dataset(tmp_path):
    with pytest.raises(SavedDatasetError, match="holds no saved counterfactual dataset"):
        SavedCounterfactualDataset(tmp_path)
    with pytest.raises(TypeError, match="`verify` should be a bool"):
        SavedCounterfactualDataset(tmp_path, verify="yes")


def test_saved_dataset_works_in_dataloader_workers(tmp_path):
    data = CounterfactualDataset("toy", size=9, seed=5)
    data.save(tmp_path, "safetensors", chunk_size=4, progress=False)
    saved = SavedCounterfactualDataset(tmp_path)
    saved[0]
    assert pickle.loads(pickle.dumps(saved))._shards == {}, "loaded shards are not pickled"
    images, targets = next(iter(DataLoader(saved, batch_size=9, num_workers=2)))
    assert torch.equal(images, torch.stack([saved[i][0] for i in range(9)]))
    assert targets.tolist() == [data.info(i).shape for i in range(9)]


# -------------------------------------------------------------------------------------------------- mixing


def tagged(name: str, n: int) -> list[tuple[str, int]]:
    return [(name, i) for i in range(n)]


def test_mixed_default_size_uses_every_real_item_once():
    mixed = MixedDataset(tagged("real", 7), tagged("cf", 50), counterfactual_fraction=0.3)
    assert len(mixed) == 10 and mixed.num_counterfactual == 3
    items = [mixed[i] for i in range(10)]
    assert sorted(i for name, i in items if name == "real") == list(range(7))
    assert [i for name, i in items if name == "cf"] == [0, 1, 2]
    assert [mixed.is_counterfactual(i) for i in range(10)] == [name == "cf" for name, _ in items]
    assert MixedDataset(tagged("real", 7), tagged("cf", 50), 0.5).size == 14


def test_mixed_explicit_size_cycles_and_is_deterministic():
    real, cf = tagged("real", 7), tagged("cf", 3)
    mixed = MixedDataset(real, cf, counterfactual_fraction=0.25, size=20, seed=3)
    items = [mixed[i] for i in range(20)]
    assert sum(name == "cf" for name, _ in items) == 5
    real_counts = np.bincount([i for name, i in items if name == "real"], minlength=7)
    assert real_counts.min() == 2 and real_counts.max() == 3, "real items repeat evenly"
    assert [i for name, i in items if name == "cf"] == [0, 1, 2, 0, 1]
    assert [MixedDataset(real, cf, 0.25, size=20, seed=3)[i] for i in range(20)] == items
    assert [MixedDataset(real, cf, 0.25, size=20, seed=4)[i] for i in range(20)] != items
    assert mixed.source(-1) == (("counterfactual" if items[-1][0] == "cf" else "real"), items[-1][1])


def test_mixed_extreme_fractions():
    only_real = MixedDataset(tagged("real", 5), [], counterfactual_fraction=0)
    assert len(only_real) == 5 and all(only_real[i][0] == "real" for i in range(5))
    only_cf = MixedDataset([], tagged("cf", 4), counterfactual_fraction=1)
    assert len(only_cf) == 4 and [only_cf[i] for i in range(4)] == tagged("cf", 4)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((tagged("r", 3), tagged("c", 3)), {"counterfactual_fraction": 1.5}, ValueError, "in \\[0, 1\\]"),
        ((tagged("r", 3), tagged("c", 3)), {"counterfactual_fraction": "half"}, TypeError, "`counterfactual_fraction`"),
        ((tagged("r", 3), tagged("c", 3)), {"size": 0}, ValueError, "`size`"),
        ((tagged("r", 3), tagged("c", 3)), {"seed": -2}, ValueError, "`seed`"),
        ((5, tagged("c", 3)), {}, TypeError, "`real` should be a map-style dataset"),
        ((tagged("r", 3), []), {}, ValueError, "`counterfactual` is empty, but 3 of the 6 items"),
        (([], tagged("c", 3)), {"size": 4}, ValueError, "`real` is empty"),
    ],
)
def test_mixed_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        MixedDataset(*args, **kwargs)


def test_mixed_with_real_images_made_to_match_the_documented_way():
    # Fake MNIST: 28x28 grey PIL images with int labels, as torchvision.datasets.MNIST returns them.
    generator = torch.Generator().manual_seed(0)
    pictures = torch.randint(0, 256, (6, 28, 28), generator=generator, dtype=torch.uint8)
    to_cf_format = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((8, 8)), v2.RGB()])
    real = [(to_cf_format(Image.fromarray(p.numpy(), mode="L")), i % 4) for i, p in enumerate(pictures)]
    counterfactual = CounterfactualDataset("toy", size=6, seed=1)
    mixed = MixedDataset(real, counterfactual, counterfactual_fraction=0.5)
    images, labels = next(iter(DataLoader(mixed, batch_size=len(mixed))))
    assert images.shape == (12, 3, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert "MixedDataset" in repr(mixed) and "Counterfactual fraction: 0.5 (6 items)" in repr(mixed)


def test_saved_item_decodes_like_any_png(saved_png):
    saved = SavedCounterfactualDataset(saved_png)
    raw = (saved_png / "images" / "000000" / "000001.png").read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        decoded = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(saved[1][0], decoded.float() / 255)
