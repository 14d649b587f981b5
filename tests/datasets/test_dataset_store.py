"""The dataset store reads, verifies and resumes datasets written before it moved to cfaug.datasets.store.

``data/`` holds two tiny datasets written by the code of commit ffed146 (before the move), with the shipped
``colored_mnist`` weights, ``size=3, seed=3, target="all", chunk_size=2``:

* ``v1-png``: a finished PNG dataset;
* ``v1-safetensors-partial``: an interrupted safetensors save (``stop=2``, so one of the two chunks is missing).

The digests below are what the old code wrote when it resumed ``v1-safetensors-partial`` itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cfaug
from cfaug.datasets import store
from cfaug.datasets.counterfactual import CounterfactualDataset, SavedCounterfactualDataset

DATA = Path(__file__).parent / "data"

# Every file of v1-safetensors-partial after the old code resumed it, by relative path.
RESUMED_BY_OLD_CODE = {
    "labels.csv": "f1b5e8ff93b4c9b156ff2ac0676cd495e4618b496158aba4b6c8b850c106137f",
    "manifest.json": "02684d8d85acefae923480c694fe777b669323274beee7c999ba55fa881a7aeb",
    "parts/000000-000002.json": "bb772285e531a6610ca7e2133ce646a857a3558f6da0f99eb3573e6d4efdcc84",
    "parts/000000-000003.json": "0d444ff7ea84fd6570e75217218394c7c88199160776763a74c4891ff674dfeb",
    "records/000000-000002.csv": "d1096513643f02e21e9cc7bb9c089030d1b49de15218cbfed14d39f6b55d01c8",
    "records/000002-000003.csv": "31bd9bb499bd14362dbcea3c0af559aa5317e87619eb4d239679e3e4341d9337",
    "shards/000000-000002.safetensors": "defbff30e115aeb696a7a9d6a34f85b64bae9c65d0efb37ed10fde0b1162e187",
    "shards/000002-000003.safetensors": "2dde274eb37e504aa0c9ac49759b34498d4d0092993385ab36c41ab9a143bf4d",
}


#: The fixtures were written with the ``colored_mnist`` weights cfaug shipped first, whose mask estimator was a
#: U-Net. Those weights were replaced by the same generator with a lite estimator: images, shards and records are
#: unchanged, and the JSON files differ only in these fields, which name the weights. The tests compare JSON files
#: with these fields set back to the fixtures' values, and resume a copy whose fields name the current weights.
FIXTURE_WEIGHTS = {
    "arch": {
        "class_names": [str(digit) for digit in range(10)],
        "image_size": 32,
        "latent_dim": 32,
        "mask_estimator": True,
        "mask_estimator_width": 16,
        "ngf": 32,
        "num_classes": 10,
    },
    "parameters_sha256": "6705d3420444cbf979234b726dc33c4713fae8919633da10993d816b3be5dd13",
    "weights_sha256": "80d9a6dea6a5bb169421cfee0ca72ec9dce8a5e35fce17de86dbc9c59ca91462",
}


def _dataset() -> CounterfactualDataset:
    return CounterfactualDataset("mnist", weights="colored_mnist", size=3, seed=3, target="all")


def _json_bytes(value: dict) -> bytes:
    """A JSON file as the store writes it."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _with_weights(path: Path, weights: dict) -> bytes:
    """The bytes of ``path``; for a JSON file that names weights, with ``weights``' fields in their place."""
    data = path.read_bytes()
    if path.suffix != ".json":
        return data
    value = json.loads(data)
    if not FIXTURE_WEIGHTS.keys() <= value.keys():
        return data
    return _json_bytes({**value, **weights})


def _tree(root: Path, weights: dict | None = None) -> dict[str, str]:
    """sha256 of every file; with ``weights``, of the JSON files as if they named those weights."""
    # The writers' lock files (empty, new since the fixtures were written) are left out.
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(
            p.read_bytes() if weights is None else _with_weights(p, weights)
        ).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (".cfaug.lock", ".cfaug.claims")
    }


def _current_weights(tmp_path: Path) -> dict:
    """The weights fields that a save with the current ``colored_mnist`` weights writes."""
    _dataset().save(tmp_path / "reference", "png", chunk_size=2, progress=False)
    manifest = json.loads((tmp_path / "reference" / "manifest.json").read_text())
    return {key: manifest[key] for key in FIXTURE_WEIGHTS}


def _same_version(root: Path) -> None:
    # A save refuses to resume a folder written by another cfaug version (the version is one of its settings);
    # these fixtures can only be resumed by the version that wrote them.
    written_by = json.loads(next((root / "parts").glob("*.json")).read_text())["cfaug_version"]
    if written_by != cfaug.__version__:
        pytest.skip(f"the fixture was written by cfaug {written_by}, this is {cfaug.__version__}")


def test_old_png_dataset_loads_verifies_and_a_new_save_gives_the_same_bytes(tmp_path):
    saved = SavedCounterfactualDataset(DATA / "v1-png")
    saved.verify()
    data = _dataset()
    for i in range(len(data)):
        image, target = saved[i]
        assert target == data.info(i).classes
        assert (image - data.image(i)).abs().max() <= 1 / 510 + 1e-6
    _same_version(DATA / "v1-png")
    assert data.save(tmp_path / "new", "png", chunk_size=2, progress=False)
    assert _tree(tmp_path / "new", FIXTURE_WEIGHTS) == _tree(DATA / "v1-png")
    # The new save names the weights it was made with.
    assert (
        json.loads((tmp_path / "new" / "manifest.json").read_text())["weights_sha256"]
        != (FIXTURE_WEIGHTS["weights_sha256"])
    )


def test_old_interrupted_save_resumes_to_the_bytes_the_old_code_wrote(tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(DATA / "v1-safetensors-partial", root)
    with pytest.raises(store.SavedDatasetError, match="unfinished save"):
        SavedCounterfactualDataset(root)
    _same_version(root)
    # Written with weights cfaug no longer ships: a save with the current ones must refuse to resume it...
    with pytest.raises(ValueError, match="weights_sha256"):
        _dataset().save(root, "safetensors", chunk_size=2, progress=False)
    # ...and resumes it once its files name the current weights (the same generator, so the same images).
    current = _current_weights(tmp_path)
    for path in root.rglob("*.json"):
        path.write_bytes(_with_weights(path, current))
    assert _dataset().save(root, "safetensors", chunk_size=2, progress=False)
    assert _tree(root, FIXTURE_WEIGHTS) == RESUMED_BY_OLD_CODE
    SavedCounterfactualDataset(root).verify()


def test_store_names_keep_their_old_homes():
    from cfaug import distributed
    from cfaug.datasets import counterfactual
    from cfaug.transforms import _params

    for name in ("DATASET_FORMAT_VERSION", "SAVE_FORMATS", "SavedDatasetError"):
        assert getattr(counterfactual, name) is getattr(store, name)
    assert distributed.save_counterfactuals_distributed is store.save_counterfactuals_distributed
    assert distributed.DistributedSaveResult is store.DistributedSaveResult
    # One check of `vary` and one name for the mechanisms it accepts, built from the backend contract's names.
    assert _params.check_vary is counterfactual.check_vary
    assert _params.VARYING_MECHANISMS is counterfactual.VARYING_MECHANISMS == cfaug.MECHANISMS[1:]


def test_distributed_imports_no_datasets():
    code = "import sys, cfaug.distributed; print(sorted(m for m in sys.modules if m.startswith('cfaug.datasets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
