"""Checkpoints are checked before use: their metadata by type and range, their tensors against the architecture.

Every refusal is a ``CheckpointError`` that names the file and what is wrong, in one line, before a module is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from toy_backend import ToyBackend

import cfaug
from cfaug.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).parents[2]


def _rewrite(source: Path, target: Path, meta: str | None = None, change=None) -> Path:
    """Copy a checkpoint, replacing its raw metadata text and/or changing its tensors (``change(tensors)``)."""
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    if meta is not None:
        header["cfaug"] = meta
    if change is not None:
        change(tensors)
    save_file(tensors, str(target), metadata=header)
    return target


@pytest.fixture
def toy_file(tmp_path) -> Path:
    path = tmp_path / "toy.safetensors"
    ToyBackend().save(path)
    return path


def _meta(path: Path) -> dict:
    return load_checkpoint(path).meta


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[1, 2]", "should be a JSON object, but is a list"),
        ("null", "should be a JSON object, but is null"),
        ('{"format_version": 1, "backend": "toy"', "not valid JSON"),
        ('{"format_version": "1", "backend": "toy"}', "unknown checkpoint format_version '1'"),
        ('{"format_version": 0, "backend": "toy"}', "unknown checkpoint format_version 0"),
        ('{"format_version": 99, "backend": "toy"}', "reads formats <= 1"),
        ('{"format_version": 1, "backend": "toy", "arch": [4, 8]}', "`arch` should be a JSON object, but is a list"),
        ('{"format_version": 1, "backend": 3}', "`backend` should be a string"),
        ('{"format_version": 1, "backend": "toy", "image_size": -8}', "`image_size` should be an integer"),
        ('{"format_version": 1, "backend": "toy", "class_names": "abc"}', "`class_names` should be a list"),
        (
            '{"format_version": 1, "backend": "toy", "arch": {"num_classes": 99999999999999999999}}',
            "`arch.num_classes` = 99999999999999999999 is beyond",
        ),
        ('{"format_version": 1, "backend": "toy", "arch": {"x": NaN}}', "`arch.x` should be a finite number"),
    ],
)
def test_malformed_metadata_is_refused_naming_the_file(toy_file, tmp_path, raw, message):
    bad = _rewrite(toy_file, tmp_path / "bad.safetensors", meta=raw)
    with pytest.raises(CheckpointError, match=message) as info:
        cfaug.load_backend("toy", weights=bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_an_arch_that_does_not_build_is_a_checkpoint_error(toy_file, tmp_path):
    meta = _meta(toy_file)
    for arch, message in (({**meta["arch"], "num_classes": "four"}, "does not build"), ({"nope": 1}, "nope")):
        bad = _rewrite(toy_file, tmp_path / "bad.safetensors", meta=json.dumps({**meta, "arch": arch}))
        with pytest.raises(CheckpointError, match=message) as info:
            cfaug.load_backend("toy", weights=bad)
        assert str(bad) in str(info.value)


def _drop(name):
    return lambda tensors: tensors.pop(name)


def _add(tensors):
    tensors["extra.weight"] = torch.ones(2)


def _reshape(tensors):
    tensors["palette"] = torch.rand(5, 3)


def _int32(tensors):
    tensors["palette"] = (tensors["palette"] * 100).to(torch.int32)


def _nan(tensors):
    tensors["palette"][1, 2] = float("nan")


def _inf(tensors):
    tensors["background_palette"][0, 0] = float("inf")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("palette"), r"1 missing keys: \['palette'\]"),
        (_add, r"1 unexpected keys: \['extra.weight'\]"),
        (_reshape, r"palette: file \(5, 3\), model \(4, 3\)"),
        (_int32, r"wrong kind of dtype: \['palette: file torch.int32, model torch.float32'\]"),
        (_nan, r"NaN or infinite values: \['palette'\]"),
        (_inf, r"NaN or infinite values: \['background_palette'\]"),
    ],
)
def test_tensors_that_do_not_fit_are_refused_in_one_line(toy_file, tmp_path, change, message):
    bad = _rewrite(toy_file, tmp_path / "bad.safetensors", change=change)
    with pytest.raises(CheckpointError, match=message) as info:
        cfaug.load_backend("toy", weights=bad)
    assert str(info.value).startswith(f"{str(bad)!r} does not fit") and "\n" not in str(info.value)


def test_the_parameter_count_is_compared_before_building(toy_file, tmp_path, monkeypatch):
    meta = _meta(toy_file)
    built = []
    original = ToyBackend.__init__

    def counting_init(self, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # where the constructor's tensors go
        original(self, *args, **kwargs)

    monkeypatch.setattr(ToyBackend, "__init__", counting_init)
    tampered = json.dumps({**meta, "arch": {**meta["arch"], "num_classes": 400}, "class_names": None})
    bad = _rewrite(toy_file, tmp_path / "big.safetensors", meta=tampered)
    with pytest.raises(CheckpointError, match=r"implies 2,400 values, the file holds 24"):
        cfaug.load_backend("toy", weights=bad)
    assert built == ["meta"], "only the shape-only build on the meta device may run"


MEMORY_LIMITED = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    import cfaug
    from cfaug.checkpoint import CheckpointError

    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    meta = json.loads(header["cfaug"])
    meta["arch"]["ngf"] = 200000  # 5e12 parameters: 20 TB as float32
    header["cfaug"] = json.dumps(meta)
    save_file(tensors, str(target), metadata=header)
    del tensors
    # What this process uses now, plus 1 GiB: far below what the tampered arch would allocate.
    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))
    try:
        cfaug.load_backend("mnist", weights=target)
    except CheckpointError as error:
        print("REFUSED", error)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc (Linux)")
def test_a_huge_arch_is_refused_under_a_memory_limit(tmp_path):
    source = REPO / "cfaug" / "weights" / "colored_mnist.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_LIMITED, str(source), str(tmp_path / "huge.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("REFUSED"), result.stdout
    assert "huge.safetensors" in result.stdout and "implies" in result.stdout


def test_a_classifier_checkpoint_is_checked_too(tmp_path):
    from cfaug.models.classifiers import EnsembleClassifier, load_classifier, save_classifier

    model = EnsembleClassifier("resnet18", num_classes=3)
    path = save_classifier(model, tmp_path / "clf.safetensors", class_names=["a", "b", "c"])
    assert isinstance(load_classifier(path), EnsembleClassifier)
    meta = _meta(path)
    tampered = _rewrite(
        path, tmp_path / "t.safetensors", meta=json.dumps({**meta, "arch": {**meta["arch"], "num_classes": 7}})
    )
    with pytest.raises(CheckpointError, match=r"t.safetensors.*shape mismatches"):
        load_classifier(tampered)
    nan = _rewrite(path, tmp_path / "nan.safetensors", change=lambda t: t["heads.shape.bias"].fill_(float("nan")))
    with pytest.raises(CheckpointError, match=r"nan.safetensors.*NaN or infinite values: \['heads.shape.bias'\]"):
        load_classifier(nan)


def test_a_u2net_checkpoint_with_nan_is_refused(tmp_path):
    from cfaug.models.u2net import CHECKPOINT_MODEL, U2Net, build_u2net

    state = U2Net("tiny").state_dict()
    first = next(k for k, t in state.items() if t.is_floating_point())
    state[first] = state[first].clone().fill_(float("nan"))
    path = save_checkpoint(tmp_path / "u.safetensors", state, {"model": CHECKPOINT_MODEL, "arch": {"variant": "tiny"}})
    with pytest.raises(CheckpointError, match=r"u.safetensors.*NaN or infinite values"):
        build_u2net("tiny", weights=path)
