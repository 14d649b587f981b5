"""The ``cfaug`` command line, run in-process through ``cfaug.cli.main`` and once as a real console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from PIL import Image

import cfaug
from cfaug.cli import main
from cfaug.datasets import CounterfactualDataset


def test_help_everywhere(capsys):
    for argv in (["--help"], ["demo", "--help"], ["generate", "--help"], ["import-weights", "--help"], ["list", "-h"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "usage: cfaug" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        (["generate", "--out", "x"], "the following arguments are required: --size"),
        (["generate", "--out", "x", "--size", "ten"], "invalid int value: 'ten'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_library_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--backend", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfaug: error: Unknown value 'nope' for argument `backend`") and err.count("\n") == 1
    assert main(["generate", "--out", str(tmp_path / "g"), "--size", "0", "--backend", "toy"]) == 2
    assert "size" in capsys.readouterr().err
    toy_in_half = ["generate", "--out", str(tmp_path / "g"), "--size", "4", "--backend", "toy", "--autocast", "fp16"]
    assert main(toy_in_half) == 2
    assert "backend 'toy' takes no autocast setting" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "needs a sub-command" in capsys.readouterr().err


def test_list_shows_backends(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "toy" in out


def test_demo_writes_pictures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--backend", "toy"]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == ["augment_example.png", "components.png", "counterfactual_grid.png"]
    with Image.open(tmp_path / "demo" / "counterfactual_grid.png") as grid:
        width = grid.size[0]
    assert width >= 96 * cfaug.load_backend("toy").num_classes, "cells are enlarged to be visible"


def test_generate_writes_a_loadable_dataset_in_two_ranges(tmp_path, capsys):
    root = tmp_path / "cf"
    common = ["generate", "--out", str(root), "--size", "12", "--backend", "toy", "--seed", "3"]
    assert main([*common, "--start", "6"]) == 0
    assert "partial" in capsys.readouterr().out
    assert main([*common, "--stop", "6", "--format", "png", "--batch-size", "4"]) == 0
    assert "complete" in capsys.readouterr().out
    saved = CounterfactualDataset.load(root)
    fresh = CounterfactualDataset("toy", size=12, seed=3)
    assert len(saved) == 12
    for i in (0, 7, 11):
        assert saved[i][1] == fresh[i][1]
        assert torch.allclose(saved[i][0], fresh[i][0], atol=1 / 255)


def test_import_weights_of_the_authors(tmp_path, capsys):
    source = shared_path("data", "reference_cgn_mnist", "colored_mnist.pth")
    out = tmp_path / "colored.safetensors"
    assert main(["import-weights", str(source), "--out", str(out)]) == 0
    backend = cfaug.load_backend("mnist", weights=out)
    assert backend.provenance["sha256"] and backend.sample([1], [2], [3]).image.shape == (1, 3, 32, 32)
    # A config that is not beside the copied file must be given explicitly.
    lone = tmp_path / "lone" / "model.pth"
    lone.parent.mkdir()
    shutil.copy(source, lone)
    assert main(["import-weights", str(lone), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "cfg" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("cfaug")
    result = subprocess.run([str(script), "list", "mnist"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mnist")


def test_readme_example_runs(tmp_path):
    """The README's ten lines run as printed, on the mnist backend's shipped default weights (no network)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Ten lines") :]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("colored_mnist torch.Size([8, 3, 32, 32]) torch.Size([3, 32, 32])")


def test_ctrl_c_in_a_trainer_exits_130_with_its_message_and_no_traceback(tmp_path, monkeypatch, capsys):
    import cfaug.training.mnist

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("Training interrupted after iteration 7; runs/c/checkpoints/latest.safetensors ...")

    monkeypatch.setattr(cfaug.training.mnist, "train_cgn_mnist", interrupted)
    assert main(["train", "mnist", "colored_mnist", "--run-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err == "cfaug: Training interrupted after iteration 7; runs/c/checkpoints/latest.safetensors ...\n"


def test_a_bare_ctrl_c_exits_130_and_says_interrupted(tmp_path, monkeypatch, capsys):
    import cfaug.training.mnist

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cfaug.training.mnist, "train_cgn_mnist", interrupted)
    assert main(["train", "mnist", "colored_mnist", "--run-dir", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "cfaug: interrupted\n"
