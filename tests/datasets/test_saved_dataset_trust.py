"""A saved dataset trusts nothing it reads: rewritten CSVs, links, device files, labels, shards and manifests.

Each tampering below keeps the sha256 values consistent (the way someone editing the files on purpose would), so
that only the structural checks can catch it. And saved datasets drop into a plain training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from cfaug.cli import main
from cfaug.datasets.counterfactual import CounterfactualDataset, SavedCounterfactualDataset, SavedDatasetError


def rewrite_labels(root: Path, old: str, new: str) -> None:
    """Replace text in labels.csv and update the manifest's digest, as a deliberate edit would."""
    labels = root / "labels.csv"
    text = labels.read_text()
    assert old in text
    labels.write_text(text.replace(old, new))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["labels_sha256"] = hashlib.sha256(labels.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def row_of(root: Path, index: int) -> str:
    return (root / "labels.csv").read_text().splitlines()[index + 1]


@pytest.fixture
def saved(tmp_path) -> Path:
    root = tmp_path / "cf"
    CounterfactualDataset("toy", size=6, seed=4).save(root, chunk_size=3, progress=False)
    return root


@pytest.mark.parametrize("path", ["../outside.png", "/etc/hostname", "images/000000/../../outside.png"])
@pytest.mark.parametrize("verify", [True, False])
def test_a_path_leaving_the_folder_is_refused(saved, path, verify):
    outside = saved.parent / "outside.png"
    outside.write_bytes((saved / "images" / "000000" / "000002.png").read_bytes())  # same bytes, same sha256
    rewrite_labels(saved, "images/000000/000002.png", path)
    with pytest.raises(SavedDatasetError, match=rf"line 4: item 2 is in '{path}', but cfaug stores it in"):
        SavedCounterfactualDataset(saved, verify=verify)


@pytest.mark.parametrize("verify", [True, False])
def test_a_link_leaving_the_folder_is_not_followed(saved, verify):
    image = saved / "images" / "000000" / "000002.png"
    outside = saved.parent / "outside.png"
    outside.write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(outside)
    dataset = SavedCounterfactualDataset(saved, verify=verify)
    with pytest.raises(SavedDatasetError, match="000002.png'.*leads outside the dataset folder"):
        dataset[2]
    with pytest.raises(SavedDatasetError, match="000002.png'.*leads outside"):
        dataset.verify()


@contextlib.contextmanager
def bounded(extra_bytes: int = 1 << 29, seconds: int = 60) -> Generator[None, None, None]:
    """Turn an endless read into a MemoryError and a blocked open into a TimeoutError, instead of a dead machine.

    A guard for code that gets it wrong, not a timing: the code under test reads nothing at all.
    """
    size_kb = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size_kb * 1024 + extra_bytes, hard))

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError("the read blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_an_endless_device_file_is_never_read(saved):
    image = saved / "images" / "000000" / "000002.png"
    image.unlink()
    image.symlink_to("/dev/zero")
    with bounded(), pytest.raises(SavedDatasetError, match="leads outside"):
        SavedCounterfactualDataset(saved, verify=False)[2]
    # A FIFO inside the folder: opening it must not wait for a writer, reading it must not start.
    image.unlink()
    os.mkfifo(image)
    with bounded(), pytest.raises(SavedDatasetError, match="000002.png'.*is not a regular file"):
        SavedCounterfactualDataset(saved, verify=False)[2]


@pytest.mark.parametrize(("column", "value"), [(1, "99"), (1, "-5"), (2, "4"), (3, "-1")])
def test_labels_outside_the_classes_are_refused(saved, column, value):
    fields = row_of(saved, 3).split(",")
    name = ("index", "shape", "texture", "background")[column]
    rewrite_labels(saved, ",".join(fields), ",".join([*fields[:column], value, *fields[column + 1 :]]))
    with pytest.raises(SavedDatasetError, match=rf"line 5: the {name} class {value} is not one of .* 4 classes"):
        SavedCounterfactualDataset(saved, verify=False)


def test_shard_labels_must_agree_with_the_csv(tmp_path):
    root = tmp_path / "cf"
    CounterfactualDataset("toy", size=6, seed=4).save(root, "safetensors", chunk_size=3, progress=False)
    shard = root / "shards" / "000003-000006.safetensors"
    tensors = load_file(shard)
    tensors["shape"] = (tensors["shape"] + 1) % 4
    save_file(tensors, shard)
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    text = (root / "labels.csv").read_text()
    old = next(line.split(",")[-1] for line in text.splitlines() if "000003-000006" in line)
    rewrite_labels(root, old, digest)
    dataset = SavedCounterfactualDataset(root)
    dataset[0]
    with pytest.raises(SavedDatasetError, match="000003-000006.safetensors'.*its labels differ from those of labels"):
        dataset[4]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", "6"),
        ("size", True),
        ("num_classes", 0),
        ("class_names", "abcd"),
        ("image_size", -8),
        ("vary", ["colour"]),
        ("format", "jpeg"),
        ("target", 3),
        ("labels_sha256", None),
    ],
)
def test_manifest_fields_of_the_wrong_type_are_refused(saved, field, value):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(SavedDatasetError, match=rf"fields of the wrong type or value: {field}="):
        SavedCounterfactualDataset(saved)


@pytest.mark.parametrize("name", ["labels.csv", "manifest.json"])
def test_a_missing_file_is_a_saved_dataset_error(saved, name):
    (saved / name).unlink()
    with pytest.raises(SavedDatasetError, match=name):
        SavedCounterfactualDataset(saved)


def test_a_tampered_record_is_refused_when_merging(saved):
    (saved / "manifest.json").unlink()
    record = saved / "records" / "000003-000006.csv"
    record.write_text(record.read_text().replace("images/000000/000004.png", "/etc/hostname"))
    with pytest.raises(SavedDatasetError, match="item 4 is in '/etc/hostname'"):
        CounterfactualDataset.finalize(saved)


# ---------------------------------------------------------------------------------------- the default target


def test_a_generated_dataset_trains_in_a_plain_cross_entropy_loop(tmp_path):
    root = tmp_path / "cf"
    assert main(["generate", "--out", str(root), "--size", "16", "--backend", "toy", "--chunk-size", "8"]) == 0
    assert json.loads((root / "manifest.json").read_text())["target"] == "shape"
    dataset = CounterfactualDataset.load(root)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for images, labels in DataLoader(dataset, batch_size=8, shuffle=True):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert labels.dtype == torch.int64 and labels.shape == (8,)


def test_target_all_is_opt_in_and_recorded(tmp_path):
    root = tmp_path / "all"
    assert main(["generate", "--out", str(root), "--size", "4", "--backend", "toy", "--target", "all"]) == 0
    assert json.loads((root / "manifest.json").read_text())["target"] == "all"
    image, (shape, texture, background) = CounterfactualDataset.load(root)[1]
    assert CounterfactualDataset.load(root, target="shape")[1][1] == shape


def test_a_manifest_from_before_the_target_field_loads_with_all_targets(saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["target"]
    path.write_text(json.dumps(manifest))
    dataset = SavedCounterfactualDataset(saved)
    assert dataset.target == "all" and dataset[0][1] == dataset.info(0).classes
