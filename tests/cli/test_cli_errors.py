"""The command line ends every error in one line: OS errors, devices, memory, bad values, broken pipes, plugins.

Exit codes: 2 for an error the user can act on, 130 for Ctrl-C, 1 for an internal error; a traceback only with
``--debug`` or ``CFAUG_DEBUG=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cfaug
from cfaug import registry
from cfaug.cli import main

REPO = Path(__file__).parents[2]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("cfaug: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _generate(out, *extra) -> list[str]:
    return ["generate", "--out", str(out), "--size", "4", "--backend", "toy", *extra]


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(_generate(afile)) == 2
    assert str(afile) in _one_line_error(capsys)
    assert afile.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root ignores permissions")
def test_a_read_only_folder_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(_generate(locked / "cf")) == 2
    finally:
        locked.chmod(0o700)
    assert "Permission denied" in _one_line_error(capsys)


def test_os_errors_name_their_file(tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "cf" / "images" / "000000.png"))

    import cfaug.demo

    monkeypatch.setattr(cfaug.demo, "run_demo", disk_full)
    assert main(["demo", "--out", str(tmp_path / "d"), "--backend", "toy"]) == 2
    assert "No space left on device: '" in _one_line_error(capsys)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "d"))

    monkeypatch.setattr(cfaug.demo, "run_demo", denied)
    assert main(["demo", "--out", str(tmp_path / "d"), "--backend", "toy"]) == 2
    assert f"Permission denied: {str(tmp_path / 'd')!r}" in _one_line_error(capsys)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(cfaug.demo, "run_demo", no_memory)
    assert main(["demo", "--out", str(tmp_path / "d"), "--backend", "toy"]) == 2
    assert "out of memory" in _one_line_error(capsys)


def test_an_unexpected_error_is_an_internal_error_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    import cfaug.demo

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cfaug.demo, "run_demo", bug)
    argv = ["demo", "--out", str(tmp_path / "d"), "--backend", "toy"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("cfaug: error: internal error: ZeroDivisionError") and err.count("\n") == 1
    assert main([*argv, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("and please report it)")
    monkeypatch.setenv("CFAUG_DEBUG", "1")
    assert main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--batch-size", "0"], "`--batch-size` should be an integer >= 1, but got 0"),
        (["--chunk-size", "0"], "`--chunk-size` should be an integer >= 1, but got 0"),
        (["--workers", "-1"], "`--workers` should be an integer >= 0"),
        (["--device", "tpu"], "`--device` should be a torch device"),
    ],
)
def test_bad_values_are_refused_under_their_flag(tmp_path, capsys, extra, flag):
    assert main(_generate(tmp_path / "cf", *extra)) == 2
    assert flag in _one_line_error(capsys)
    assert not (tmp_path / "cf").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_one_line(tmp_path, capsys):
    assert main(_generate(tmp_path / "cf", "--device", "cuda")) == 2
    assert "`--device cuda`: this machine has no CUDA GPU" in _one_line_error(capsys)
    assert main(["train", "mnist", "colored_mnist", "--run-dir", str(tmp_path / "r"), "--device", "cuda:1"]) == 2
    assert "--device cuda:1" in _one_line_error(capsys)


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--out", "", "--size", "4", "--backend", "toy"]) == 2
    assert "`--out` should not be empty" in _one_line_error(capsys)
    assert main(["generate", "--out=", "--size", "4", "--backend", "toy"]) == 2
    assert "`--out` should not be empty" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_import_weights_into_a_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    source = tmp_path / "src.pth"
    torch.save({"w": torch.ones(1)}, source)
    assert main(["import-weights", str(source), "--out", str(folder)]) == 2
    assert "`--out` should name the .safetensors file to write" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "src.pth"] and not any(folder.iterdir())


def test_a_run_dir_naming_a_file_or_foreign_folder_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    data = ["--data-root", str(tmp_path / "no-mnist")]
    assert main(["train", "mnist", "colored_mnist", "--run-dir", str(afile), *data]) == 2
    assert "is a file" in _one_line_error(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.csv").write_text("x")
    assert main(["train", "mnist", "colored_mnist", "--run-dir", str(other), *data]) == 2
    assert "labels.csv" in _one_line_error(capsys)
    assert main(["train", "mnist", "colored_mnist", "--run-dir", str(tmp_path / "run"), *data]) == 2
    assert "could not load the MNIST training set" in _one_line_error(capsys)


def _cfaug(*args: str, env: dict | None = None, shell: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    environment.update(env or {})
    command = shell if shell is not None else [sys.executable, "-m", "cfaug", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=environment, shell=shell is not None
    )


def test_python_dash_m_cfaug_and_a_closed_pipe(tmp_path):
    result = _cfaug("list", "mnist")
    assert result.returncode == 0 and result.stdout.startswith("mnist"), result.stderr
    # `true` exits without reading: every write of `cfaug list` meets a closed pipe.
    piped = _cfaug(shell=f"{sys.executable} -m cfaug list | true")
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr


def test_a_bad_device_in_a_real_process_is_one_line(tmp_path):
    result = _cfaug("generate", "--out", str(tmp_path / "cf"), "--size", "2", "--backend", "mnist", "--device", "tpu")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--device" in result.stderr


# ------------------------------------------------------------------------------------------------- plugins
@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Make a fake installed distribution (``.dist-info`` on ``sys.path``) declaring cfaug backends."""

    def make(dist: str, entries: dict[str, str], module: str, source: str) -> Path:
        from conftest import write_dist_info

        site = tmp_path / dist
        site.mkdir()
        pyproject = site / "pyproject.toml"
        points = "".join(f'"{name}" = "{value}"\n' for name, value in entries.items())
        pyproject.write_text(
            f'[project]\nname = "{dist}"\nversion = "0.1"\n[project.entry-points."cfaug.backends"]\n{points}'
        )
        write_dist_info(pyproject, site)
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(site))
        registry.refresh_backends()
        return site

    pytest.importorskip("tomllib")
    yield make
    for name in [m for m in sys.modules if m.startswith("fakecli_")]:
        del sys.modules[name]
    registry.refresh_backends()


def test_a_plugin_that_exits_on_import_is_listed_as_unavailable(fake_dist, capsys):
    fake_dist("exiting-plugin", {"aaa-exits": "fakecli_exits:Backend"}, "fakecli_exits", "import sys\nsys.exit(3)\n")
    fake_dist("raising-plugin", {"aab-raises": "fakecli_raises:B"}, "fakecli_raises", "raise BaseException('boom')\n")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "aaa-exits  unavailable:" in out and "SystemExit: 3" in out
    assert "aab-raises unavailable:" in out and "BaseException: boom" in out
    assert "mnist" in out and "toy" in out, "the other backends are still listed"
    with pytest.raises(registry.BackendImportError, match="SystemExit"):
        cfaug.load_backend("aaa-exits")


def test_a_plugin_cannot_take_a_builtin_name(fake_dist, capsys):
    source = """
        from toy_backend import ToyBackend

        class Hijack(ToyBackend):
            name = ""
    """
    with pytest.warns(RuntimeWarning, match="declares the built-in cfaug backend 'mnist'"):
        fake_dist("hijacker", {"mnist": "fakecli_hijack:Hijack"}, "fakecli_hijack", source)
        names = cfaug.list_backends()
    assert "mnist" in names
    assert cfaug.get_backend_class("mnist").__module__ == "cfaug.backends.mnist"
    assert registry.plugin_conflicts() == {"mnist": ("'fakecli_hijack:Hijack' from distribution 'hijacker'",)}
    assert main(["list", "mnist"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnist      cfaug.backends.mnist.MnistBackend")
    assert "also declared by 'fakecli_hijack:Hijack' from distribution 'hijacker': ignored" in out


# --------------------------------------------------------------------------------------------- list_weights
def test_list_weights_from_python_and_cfaug_list_prints_them(capsys):
    weights = cfaug.list_weights("mnist")
    assert [w.name for w in weights] == ["colored_mnist", "double_colored_mnist", "wildlife_mnist"]
    assert [w.default for w in weights] == [True, False, False]
    assert all(w.backend == "mnist" and w.shipped and w.description for w in weights)
    everything = cfaug.list_weights()
    assert set(weights) <= set(everything) and all(isinstance(w, cfaug.WeightsInfo) for w in everything)
    assert cfaug.list_weights("toy") == []
    with pytest.raises(ValueError, match="Unknown value 'nope'"):
        cfaug.list_weights("nope")
    assert main(["list", "mnist"]) == 0
    out = capsys.readouterr().out
    for weight in weights:
        assert f"- {weight.name}{' [default]' if weight.default else ''} (shipped) {weight.description}" in out
