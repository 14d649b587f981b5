"""The package's layering (docs/architecture.md): what each layer may import, checked on the source text."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cfaug"

# layer -> the cfaug sub-packages it must never import, eagerly or lazily
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("backends", "datasets", "training", "evaluation", "cli", "transforms", "engine"),
    "engine": ("backends", "datasets", "training", "evaluation", "cli", "transforms", "models"),
    "evaluation": ("training", "cli"),
    "backends": ("datasets", "training", "evaluation", "cli", "transforms", "engine"),
    "transforms": ("training", "evaluation", "cli", "engine"),
    "datasets": ("training", "evaluation", "cli", "engine"),
}


def _imported_cfaug_packages(path: Path) -> set[str]:
    """The first component after ``cfaug.`` of every import in ``path`` (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cfaug" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    problems = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = _imported_cfaug_packages(path) & set(FORBIDDEN[layer])
        if bad:
            problems.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not problems, problems


def test_argparse_lives_in_the_cli_only() -> None:
    users = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "argparse" in _imported_modules(path) and path.parent.name != "cli"
    ]
    assert not users, users


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_no_module_is_over_900_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 900
    }
    assert not long, long
