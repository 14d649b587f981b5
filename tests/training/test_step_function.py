"""``run_step_function``: the engine's loop for the trainers without a run folder."""

from __future__ import annotations

import os
import signal

import pytest

from cfaug.engine import run_step_function


def test_every_step_runs_once_in_order() -> None:
    seen: list[int] = []
    shown: list[tuple[int, float]] = []
    run_step_function(
        lambda i: seen.append(i) or {"value": float(i)},
        5,
        desc="toy",
        postfix=lambda done, values: shown.append((done, values["value"])) or {},
    )
    assert seen == [0, 1, 2, 3, 4]
    assert shown == [(1, 0.0), (2, 1.0), (3, 2.0), (4, 3.0), (5, 4.0)]


def test_ctrl_c_finishes_the_step_and_says_where_it_stopped() -> None:
    seen: list[int] = []

    def step(i: int) -> dict[str, float]:
        if i == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the deferred handler records it; the step still completes
        seen.append(i)
        return {}

    # Whatever handler the test starts with is restored: Python's default, or SIG_IGN when the test process was
    # started in the background of a non-interactive shell.
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="toy stopped after step 3; it keeps no checkpoint"):
        run_step_function(step, 10, desc="toy")
    assert seen == [0, 1, 2]
    assert signal.getsignal(signal.SIGINT) is handler
