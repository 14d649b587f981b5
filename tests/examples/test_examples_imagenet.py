"""The ImageNet example and the ImageNet and distributed pages.

* ``examples/imagenet_tiny.py --quick`` runs in a subprocess (warnings as errors, one thread) and does what it says:
  a tiny CGN built, saved and loaded, counterfactuals whose mask follows only the shape class and seed, one training
  step that moves the three mechanisms and not the frozen U2-Net.
* The ``torchrun ... -m cfaug.cli`` lines of those pages sit in ``text`` blocks, which tests/test_examples.py does
  not check (it checks ``bash`` blocks, and needs a ``.py`` script for torchrun): here both torchrun and cfaug
  parse them.
* ``import cfaug`` and the re-exports of ``cfaug.training`` and ``cfaug.evaluation`` stay light.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cfaug.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "imagenet_tiny.py"
PAGES = [REPO / "docs" / "tutorials" / "imagenet.md", REPO / "docs" / "tutorials" / "distributed.md"]
TIMEOUT = 300  # seconds; the quick example takes about 15 on a loaded 2-core CPU

_TEXT_BLOCK = re.compile(r"^```text\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run like a user would, with warnings as errors (DeprecationWarnings let through, as in test_examples.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="error,ignore::DeprecationWarning")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a plain process, whatever launched the tests
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_imagenet_tiny_example(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_pretrained_biggan")
    from PIL import Image
    from safetensors.torch import load_file

    out = tmp_path / "out"
    stdout = _run([sys.executable, str(EXAMPLE), "--quick", "--out", str(out), "--device", "cpu"], cwd=tmp_path).stdout

    assert "backend: 10 classes, 32x32, cpu" in stdout
    # A 2x2 grid; along a row only texture and background change, so the mask does not move. It is computed in one
    # batch with the other samples, and a CPU's batched kernels may round differently per row (6e-08 on an Intel
    # Xeon, 0 elsewhere): a tolerance, not bit equality.
    change = re.search(r"counterfactuals \(4, 3, 32, 32\); mask change along a row: (\S+)\n", stdout)
    assert change is not None, stdout
    assert float(change.group(1)) < 1e-5
    with Image.open(out / "counterfactuals.png") as grid:
        assert grid.size == (2 * 33 + 1, 2 * 33 + 1)
    assert re.search(r"dataset item 0: \(3, 32, 32\), classes \d/\d/\d\n", stdout)

    losses = dict(re.findall(r"(\w+) (\S+?)(?:,|$)", re.search(r"one training step: (.*)", stdout).group(1)))
    assert set(losses) == {"background", "binary", "l1", "mask_area", "perceptual", "texture", "total"}
    assert all(math.isfinite(float(value)) for value in losses.values())
    final = out / "run-quick" / "final.safetensors"
    assert f"trained CGN: {final} (10 classes, truncation 0.5)" in stdout
    written = ("biggan-tiny/config.json", "biggan-tiny/pytorch_model.bin", "u2net-tiny.pth", "run-quick/samples")
    for name in written[:-1]:
        assert (out / name).is_file(), name
    assert sorted(path.name for path in (out / written[-1]).iterdir()) == ["step-000000.png", "step-000001.png"]

    # Training started from the saved untrained CGN (same BigGAN folder, same U2-Net file); its one step moved
    # every mechanism and left the frozen U2-Net alone.
    before, after = load_file(str(out / "cgn_untrained.safetensors")), load_file(str(final))
    assert before.keys() == after.keys()
    for prefix in ("f_shape.", "f_text.", "f_bg."):
        keys = [key for key in before if key.startswith(prefix)]
        assert keys and any(not torch.equal(before[key], after[key]) for key in keys), prefix
    u2net = [key for key in before if key.startswith("u2net.")]
    assert u2net and all(torch.equal(before[key], after[key]) for key in u2net)


def _torchrun_lines() -> list[tuple[str, str]]:
    lines = []
    for page in PAGES:
        for block in _TEXT_BLOCK.finditer(page.read_text(encoding="utf-8")):
            lines += [(page.name, line) for line in block.group("body").splitlines() if line.startswith("torchrun ")]
    return lines


def test_torchrun_lines_of_the_pages_parse(capsys) -> None:
    from torch.distributed.run import get_args_parser

    commands = set()
    for page, line in _torchrun_lines():
        try:
            launch = get_args_parser().parse_args(shlex.split(line)[1:])
            assert launch.module and launch.training_script == "cfaug.cli", f"{page}: {line}"
            args = build_parser().parse_args(launch.training_script_args)
        except SystemExit as error:
            pytest.fail(f"{page}: {line!r} does not parse (exit {error.code}): {capsys.readouterr().err}")
        commands.add(" ".join(launch.training_script_args[: 2 if args.command == "train" else 1]))
    # The pages show every command that runs under torchrun.
    assert commands == {"generate", "train classifier", "train imagenet"}, commands


def test_imports_stay_light_and_reexports_resolve(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import cfaug, cfaug.training, cfaug.evaluation\n"
        "heavy = [m for m in ('torchvision.models', 'pytorch_pretrained_biggan', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import cfaug.training.imagenet as imagenet, cfaug.training.classifier as classifier\n"
        "import cfaug.evaluation.imagenet as evaluation\n"
        "assert cfaug.training.train_cgn_imagenet is imagenet.train_cgn_imagenet\n"
        "assert cfaug.training.train_classifier is classifier.train_classifier\n"
        "assert cfaug.evaluation.shape_bias is evaluation.shape_bias\n"
        "for package in (cfaug.training, cfaug.evaluation):\n"
        "    missing = [name for name in package.__all__ if not hasattr(package, name)]\n"
        "    assert not missing, (package.__name__, missing)\n"
        "print('ok')\n"
    )
    assert _run([sys.executable, "-c", code], cwd=tmp_path).stdout.strip() == "ok"


def test_the_example_parses_its_documented_command_lines() -> None:
    spec = importlib.util.spec_from_file_location("imagenet_tiny", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    usages = re.findall(r"python examples/imagenet_tiny\.py (.*)", EXAMPLE.read_text(encoding="utf-8"))
    assert len(usages) == 2
    for usage in usages:
        args = module.build_parser().parse_args(shlex.split(usage))
        assert args.out.name == "imagenet_tiny" and args.device is None
