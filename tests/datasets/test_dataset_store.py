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


def _dataset() -> CounterfactualDataset:
    return CounterfactualDataset("mnist", weights="colored_mnist", size=3, seed=3, target="all")


def _tree(root: Path) -> dict[str, str]:
    # The writers' lock files (empty, new since the fixtures were written) are left out.
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (".cfaug.lock", ".cfaug.claims")
    }


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
    assert _tree(tmp_path / "new") == _tree(DATA / "v1-png")


def test_old_interrupted_save_resumes_to_the_bytes_the_old_code_wrote(tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(DATA / "v1-safetensors-partial", root)
    with pytest.raises(store.SavedDatasetError, match="unfinished save"):
        SavedCounterfactualDataset(root)
    _same_version(root)
    assert _dataset().save(root, "safetensors", chunk_size=2, progress=False)
    assert _tree(root) == RESUMED_BY_OLD_CODE
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
