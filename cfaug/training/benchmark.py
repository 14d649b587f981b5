"""Moved to ``benchmarks/mnist_training_speed.py`` (a script, not library); ``python -m`` of this module runs it."""

from __future__ import annotations

import runpy
from pathlib import Path

# The script lives in the source checkout, beside the package (benchmarks/ is not installed).
_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mnist_training_speed.py"

if __name__ == "__main__":
    if not _SCRIPT.is_file():
        raise SystemExit(f"The training benchmark is a script of the source checkout: {_SCRIPT} is absent.")
    runpy.run_path(str(_SCRIPT), run_name="__main__")
