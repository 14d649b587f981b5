"""The documentation site: examples run, code blocks run or come from tested examples, references stay complete.

* Every example in ``examples/`` runs in ``--quick`` mode in a subprocess (the MNIST ones need ../shared's MNIST).
* Every ``python`` block of a page runs (the blocks of a page in one process, like a notebook), unless it only
  includes an example (run above) or is marked ``<!-- not-run: reason -->`` on the line before it.
* Every command line in a ``bash`` block parses: ``cfaug`` commands with cfaug's parser, examples and scripts with
  their own ``build_parser()``.
* Every snippet include points to an existing file and section, every example is included by a page, and the
  command-line reference names every command and option.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import PLUGIN, shared_path, write_dist_info, write_mnist_idx

import cfaug
from cfaug.backends.mnist import MnistBackend
from cfaug.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs"
TIMEOUT = 300  # seconds; a quick example takes about ten on a loaded 2-core CPU

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)")
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.*?)\s*-->")
_SNIPPET = re.compile(r'--8<--\s+"(?P<path>[^"]+)"')
_SECTION_MARK = "# --8<-- [{kind}:{name}]"


# ------------------------------------------------------------------------------------------------ helpers
def _run(args: list[str], *, cwd: Path, extra_path: list[Path] = ()) -> subprocess.CompletedProcess[str]:
    """Run a command like a user would, with warnings as errors and one thread (tiny workloads, shared CPU).

    DeprecationWarnings are let through, as pyproject.toml does for torch's: torchvision 0.29 deprecates its PNG
    codec, which cfaug's datasets use, and ``PYTHONWARNINGS`` cannot select modules by pattern.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="error,ignore::DeprecationWarning")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _example(name: str, *args: str | Path, cwd: Path, extra_path: list[Path] = ()) -> str:
    return _run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, extra_path=extra_path).stdout


def _import_path(path: Path) -> ModuleType:
    """Import a script by path (its folder on sys.path) without running main()."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _blocks(page: Path) -> list[tuple[str, str, str | None, int]]:
    """The fenced code blocks of a page: ``(language, code, not-run reason or None, line number)``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, start = fence.group("indent"), i
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = _NOT_RUN.search(previous)
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append((fence.group("lang"), "\n".join(body), marker.group("reason") if marker else None, start + 1))
        i += 1
    return blocks


def _is_include(code: str) -> bool:
    lines = [line for line in code.splitlines() if line.strip()]
    return bool(lines) and all(_SNIPPET.search(line) for line in lines)


# ------------------------------------------------------------------------------------------- the examples
@pytest.fixture
def mnist_root() -> Path:
    shared_path("data", "MNIST")
    return shared_path("data")


@pytest.mark.slow
def test_augment_pipeline_example(mnist_root: Path, tmp_path: Path) -> None:
    out = _example("augment_pipeline.py", "--quick", "--data-root", mnist_root, cwd=tmp_path)
    assert "dataset transforms=: a batch (64, 3, 32, 32) from 2 workers" in out
    # The default (shipped) weights hold a mask estimator, so a lone MNIST image keeps its shape; grayscale in,
    # grayscale out.
    assert re.search(r"transform= \(image only\): MNIST digit \d kept its shape, now \(1, 28, 28\), new texture", out)
    assert "collate_fn: a batch (64, 3, 32, 32)" in out
    assert "replay matches: True" in out


@pytest.mark.slow
def test_train_classifier_example_with_a_checkpoint(mnist_root: Path, tmp_path: Path) -> None:
    # --weights with a checkpoint path: the route every tutorial takes once a CGN is trained.
    checkpoint = tmp_path / "generator.safetensors"
    MnistBackend(ngf=8, latent_dim=8).save(checkpoint)
    out = _example("train_classifier.py", "--quick", "--data-root", mnist_root, "--weights", checkpoint, cwd=tmp_path)
    assert f"weights '{checkpoint}', 20 steps" in out
    accuracies = [float(value) for value in re.findall(r"(\d+\.\d) %", out)]
    assert len(accuracies) == 2 and all(0.0 <= value <= 100.0 for value in accuracies)


@pytest.mark.slow
def test_counterfactual_dataset_example(mnist_root: Path, tmp_path: Path) -> None:
    out = _example(
        "counterfactual_dataset.py", "--quick", "--data-root", mnist_root, "--out", tmp_path / "cf", cwd=tmp_path
    )
    assert "complete=True" in out
    assert "loaded 64 items" in out
    assert (tmp_path / "cf" / "manifest.json").is_file()
    difference = float(re.search(r"differs from the generated image by (\S+) ", out).group(1))
    assert difference <= 1 / 510 + 1e-6


@pytest.mark.slow
def test_train_cgn_example(mnist_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out = _example("train_cgn.py", "--quick", "--data-root", mnist_root, "--run-dir", run_dir, cwd=tmp_path)
    assert f"trained generator: {run_dir / 'final.safetensors'}" in out
    assert f"generator with mask estimator: {run_dir / 'with_mask_estimator.safetensors'}" in out
    assert (run_dir / "counterfactual_grid.png").is_file()
    backend = cfaug.load_backend("mnist", weights=run_dir / "with_mask_estimator.safetensors")
    assert backend.has_mask_estimator


@pytest.mark.slow
def test_distributed_example_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = str(EXAMPLES / "distributed_generate.py")
    out = _run([*torchrun, script, "--quick", "--out", str(tmp_path / "two")], cwd=tmp_path).stdout
    assert "rank 0: 96 items" in out and "rank 1/2: saved items [48, 96)" in out
    _example("distributed_generate.py", "--quick", "--out", tmp_path / "one", cwd=tmp_path)
    # Same items, same files, same digests: labels.csv lists each item's classes, seed, file and sha256.
    labels = [(tmp_path / name / "labels.csv").read_text() for name in ("two", "one")]
    assert labels[0] == labels[1] and labels[0].count("\n") == 97


@pytest.mark.slow
def test_plugin_example_is_found_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    write_dist_info(PLUGIN / "pyproject.toml", site)
    out = _example("plugin_backend.py", "--out", tmp_path / "grid.png", cwd=tmp_path, extra_path=[site, PLUGIN / "src"])
    # cfaug's own backends (mnist, biggan) and the plugin, found through its entry point.
    assert re.search(r"backends: \[.*'mnist',.*'stripes'\]", out)
    assert "labels kept: True" in out
    assert "registered in this process: ['stripes', 'wide-stripes'], stripe period 12.0" in out
    assert (tmp_path / "grid.png").is_file()


def test_plugin_backend_round_trips_and_keeps_per_sample_seeds(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    from cfaug_stripes import StripesBackend

    backend = StripesBackend.from_pretrained()
    shape, texture, background = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0]), torch.tensor([1, 1, 2, 2])
    seeds = torch.tensor([4, 5, 6, 7])
    parts = backend.sample(shape, texture, background, seeds=seeds)
    assert parts.image.shape == (4, 3, 32, 32) and parts.mask.shape == (4, 1, 32, 32)
    assert float(parts.image.min()) >= 0.0 and float(parts.image.max()) <= 1.0
    alone = backend.sample(shape[2:3], texture[2:3], background[2:3], seeds=seeds[2:3])
    assert torch.equal(alone.image, parts.image[2:3])
    assert not torch.equal(backend.sample(shape, texture, background, seeds=seeds + 1).image, parts.image)

    path = tmp_path / "stripes.safetensors"
    StripesBackend(stripe_period=9.0).save(path)
    loaded = StripesBackend.from_pretrained(path)
    assert loaded.stripe_period == 9.0 and loaded.weights_name == str(path)
    with pytest.raises(ValueError, match="stripe_period"):
        StripesBackend(stripe_period=0)


def test_examples_default_to_the_shipped_weights() -> None:
    # The pages and examples run without --weights and rely on the default weights being shipped (no download)
    # and holding a mask estimator (the image-only placement of augment_pipeline.py).
    for script in ("augment_pipeline.py", "train_classifier.py"):
        assert _import_path(EXAMPLES / script).build_parser().parse_args([]).weights is None
    backend = cfaug.load_backend("mnist")
    assert backend.weights_name == MnistBackend.default_weights == "colored_mnist"
    assert MnistBackend.named_weights[backend.weights_name].url is None
    assert backend.has_mask_estimator


@pytest.mark.slow
def test_make_doc_images_writes_every_picture_the_pages_use(mnist_root: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "generator.safetensors"
    MnistBackend(ngf=8, latent_dim=8).save(checkpoint)
    args = ["--weights", str(checkpoint), "--data-root", str(mnist_root), "--out", str(tmp_path / "images")]
    out = _run([sys.executable, str(REPO / "scripts" / "make_doc_images.py"), *args], cwd=tmp_path).stdout
    written = {Path(line).name for line in out.split()}
    assert written == {path.name for path in (tmp_path / "images").iterdir()}
    provenance = (tmp_path / "images" / "provenance.md").read_text()
    assert "The demo pictures come from the checkpoint `generator.safetensors`" in provenance
    assert {f"grid_{name}.png" for name in MnistBackend.named_weights} | {"image_only.png"} <= written
    # The committed pictures are a complete set made by this script.
    assert written <= {path.name for path in (DOCS / "images").iterdir()}


# ---------------------------------------------------------------------------------------------- the pages
def _python_pages() -> list[Path]:
    return [
        page
        for page in _pages()
        if any(lang == "python" and reason is None and not _is_include(code) for lang, code, reason, _ in _blocks(page))
    ]


def _fake_mnist(root: Path, size: int = 64) -> None:
    """torchvision's MNIST files with ``size`` random digits per split, so ``MNIST("data", download=True)`` in a
    page finds them and downloads nothing."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix in ("train", "t10k"):
        images = torch.randint(0, 256, (size, 28, 28), generator=generator, dtype=torch.uint8)
        write_mnist_idx(raw, prefix, images.numpy(), (torch.arange(size) % 10).numpy())


@pytest.mark.parametrize("page", _python_pages(), ids=lambda page: str(page.relative_to(DOCS)))
def test_python_blocks_of_page_run(page: Path, tmp_path: Path) -> None:
    # Pages use torchvision's MNIST in "data" (with download=True): a few fake digits stand in for it.
    _fake_mnist(tmp_path / "data")
    blocks = [
        code for lang, code, reason, _ in _blocks(page) if lang == "python" and reason is None and not _is_include(code)
    ]
    (tmp_path / "page.py").write_text("\n\n".join(blocks) + "\n")
    _run([sys.executable, str(tmp_path / "page.py")], cwd=tmp_path)


def _python_code(page: Path) -> str:
    """The first python block of ``page`` (README.md or a docs page)."""
    return next(code for lang, code, _, _ in _blocks(page) if lang == "python")


def test_readme_shows_the_getting_started_one_liner() -> None:
    # The README's first example is the one Getting started runs (test_python_blocks_of_page_run), word for word:
    # the literal line on torchvision's MNIST into a 1-channel model.
    code = _python_code(REPO / "README.md")
    assert "cfaug.CounterfactualAugment(p=0.5)" in code and "datasets.MNIST(" in code and "nn.Conv2d(1," in code
    assert code in [code for lang, code, _, _ in _blocks(DOCS / "getting-started.md") if lang == "python"]


#: Pages a user who installed the wheel follows; their code must be complete on the page.
TUTORIALS = [
    "getting-started.md",
    "concepts.md",
    *(f"tutorials/{name}.md" for name in ("augment-pipeline", "training-loop", "counterfactual-dataset", "plugin")),
    *(f"tutorials/{name}.md" for name in ("imagenet", "train-cgn", "distributed")),
]


def _top_modules(code: str) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_code_is_complete_on_its_page(name: str) -> None:
    # A wheel ships cfaug, not examples/: whatever a page's code needs is on the page. A page that shows a section of
    # a script shows the whole script too, and the scripts import only installed packages and what the page shows.
    page = DOCS / name
    text = page.read_text(encoding="utf-8")
    assert "_common" not in text, f"{name} refers to the examples' helpers, which a wheel does not ship"
    included = [match.group("path").partition(":") for match in _SNIPPET.finditer(text)]
    whole = {path for path, _, section in included if not section}
    for path, _, section in included:
        assert not section or path in whole, f"{name} shows a part of {path} but not the whole file"
    shown = {Path(path).parent.name for path in whole} | {Path(path).stem for path in whole}
    codes = [code for lang, code, _, _ in _blocks(page) if lang == "python" and not _is_include(code)]
    codes += [(REPO / path).read_text(encoding="utf-8") for path in whole if path.endswith(".py")]
    for code in codes:
        for module in _top_modules(code) - shown:
            assert module in sys.stdlib_module_names or module in {"torch", "torchvision", "kornia", "cfaug"}, (
                f"{name}: its code imports {module!r}, which neither cfaug's requirements nor the page provide"
            )


def test_not_run_blocks_are_rare_and_say_why() -> None:
    skipped = [(page, line, reason) for page in _pages() for _, _, reason, line in _blocks(page) if reason is not None]
    assert all(len(reason) > 10 for _, _, reason in skipped), skipped
    assert len(skipped) <= 3, f"keep not-run blocks rare; found {skipped}"


def test_snippets_point_to_existing_files_and_sections() -> None:
    for page in _pages():
        for match in _SNIPPET.finditer(page.read_text(encoding="utf-8")):
            path, _, section = match.group("path").partition(":")
            assert (REPO / path).is_file(), f"{page.relative_to(REPO)} includes missing {path}"
            if section:
                text = (REPO / path).read_text(encoding="utf-8")
                for kind in ("start", "end"):
                    mark = _SECTION_MARK.format(kind=kind, name=section)
                    assert text.count(mark) == 1, f"{page.relative_to(REPO)}: {path} lacks one `{mark}`"


def test_every_example_is_included_by_a_page() -> None:
    included = {
        match.group("path").partition(":")[0]
        for page in _pages()
        for match in _SNIPPET.finditer(page.read_text(encoding="utf-8"))
    }
    examples = {str(path.relative_to(REPO)) for path in EXAMPLES.rglob("*.py")}
    assert examples <= included, f"examples no page includes: {sorted(examples - included)}"


def _command_lines() -> list[tuple[Path, int, list[str]]]:
    found = []
    for page in _pages():
        for lang, code, _, line in _blocks(page):
            if lang != "bash":
                continue
            for command in code.replace("\\\n", " ").splitlines():
                argv = shlex.split(command, comments=True)
                if argv:
                    found.append((page, line, argv))
    return found


def _script_parser(path: str) -> argparse.ArgumentParser | None:
    """The parser of a script in the repository, or None for one without ``build_parser`` (only its path is checked)."""
    script = REPO / path
    assert script.is_file(), f"{path} does not exist"
    if "def build_parser(" not in script.read_text(encoding="utf-8"):
        return None
    return _import_path(script).build_parser()


def _check_parses(parser: argparse.ArgumentParser | None, args: list[str], where: str) -> None:
    if parser is None:
        return
    try:
        parser.parse_args(args)
    except SystemExit as error:
        pytest.fail(f"{where}: {shlex.join(args)} does not parse (exit {error.code})")


def test_command_lines_in_pages_parse(capsys) -> None:
    setup = ("pip", "python3")  # installation lines: they need the network, and CI runs its own set-up
    for page, line, argv in _command_lines():
        where = f"{page.relative_to(REPO)}:{line}"
        program = argv[0].removeprefix(".venv/bin/")
        if program == "cfaug":
            _check_parses(build_parser(), argv[1:], where)
        elif program == "python" and argv[1].endswith(".py"):
            _check_parses(_script_parser(argv[1]), argv[2:], where)
        elif program == "python" and argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"{where}: no module {argv[2]}"
        elif program == "torchrun":
            script = next(i for i, arg in enumerate(argv) if arg.endswith(".py"))
            _check_parses(_script_parser(argv[script]), argv[script + 1 :], where)
        else:
            assert program in setup, f"{where}: no check for the command {shlex.join(argv)}"
    capsys.readouterr()


def test_cli_reference_names_every_command_and_option() -> None:
    reference = (DOCS / "cli.md").read_text(encoding="utf-8")

    def commands_of(parser: argparse.ArgumentParser, prefix: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield f"{prefix} {name}", sub
                    yield from commands_of(sub, f"{prefix} {name}")

    for name, parser in commands_of(build_parser(), ""):
        name = name.strip()
        assert f"cfaug {name}" in reference, f"docs/cli.md does not describe `cfaug {name}`"
        for action in parser._actions:
            names = [option for option in action.option_strings if option.startswith("--") and option != "--help"]
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                names = [action.dest]
            for option in names:
                assert f"`{option}`" in reference, f"docs/cli.md does not describe `{option}` of `cfaug {name}`"


def test_getting_started_shows_what_cfaug_list_prints(capsys) -> None:
    from cfaug.cli import main

    blocks = _blocks(DOCS / "getting-started.md")
    command = next(i for i, (lang, code, _, _) in enumerate(blocks) if lang == "bash" and code.strip() == "cfaug list")
    shown = blocks[command + 1]
    assert shown[0] == "text", "the `cfaug list` block should be followed by its output"
    # What cfaug alone installs: its own entry points, not plugins installed here (stripes) or registered by the
    # tests in this process (conftest's "toy").
    own = sorted(
        point.name for point in importlib.metadata.distribution("cfaug").entry_points if point.group == "cfaug.backends"
    )
    for name in own:
        assert main(["list", name]) == 0
    assert capsys.readouterr().out.rstrip() == shown[1].rstrip()
