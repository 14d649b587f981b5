"""The step loop of every trainer: Ctrl-C deferred to the end of a step, cadence of logs, samples and checkpoints.

``run_steps(run, cadence, ...)`` drives any object with the ``SteppedRun`` methods, ``run_step_function`` a plain
step function (a run without a folder); ``training_scope`` sets the
thread count and forks the RNG for the duration of a run, restoring both afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol

import torch

__all__ = ["Cadence", "SteppedRun", "deferred_interrupt", "run_step_function", "run_steps", "training_scope"]


@contextlib.contextmanager
def training_scope(
    num_threads: int | None = None, device: str | torch.device | None = None, *, fork_rng: bool = True
) -> Generator[None, None, None]:
    """Set ``torch.set_num_threads(num_threads)`` and fork the global RNG (CPU and ``device``'s GPU) for a block.

    The caller's thread count and RNG state are restored afterwards, also when the block raises, so a training
    run leaves no trace on the process that called it.

    Args:
        num_threads: the thread count of the block; ``None`` leaves it as it is.
        device: the run's device; on a CUDA device its generator is forked too. ``None``: only the CPU one.
        fork_rng: fork the RNG; ``False`` for trainers whose every draw comes from their own seeded generators.
    """
    previous_threads = torch.get_num_threads()
    devices: list[int] = []
    if device is not None and torch.device(device).type == "cuda":
        devices = [torch.device(device).index or 0]
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=devices, enabled=fork_rng):
            yield
    finally:
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def deferred_interrupt() -> Generator[Callable[[], bool], None, None]:
    """Turn the first Ctrl-C into a flag checked between steps, so the run stops at a consistent state.

    A second Ctrl-C interrupts at once (the default behaviour). Outside the main thread signals cannot be caught,
    and Ctrl-C interrupts at once as usual (the last periodic checkpoint then holds the state).
    """
    requested = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal requested
        requested = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C: stop now

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


class SteppedRun(Protocol):
    """What ``run_steps`` drives: a run that trains one step at a time and keeps its own counters."""

    step: int
    train_seconds: float

    def train_step(self) -> dict[str, float]:
        """Train one step, increment ``step`` and return the values to log."""

    def accumulate(self, values: dict[str, float], seconds: float) -> None:
        """Add one step's values and duration to the current log interval."""

    def progress_postfix(self, values: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after a step."""

    def log(self) -> Any:
        """Write the log interval (e.g. a stats line) and start a new one."""

    def save_samples(self) -> Any:
        """Write the sample sheet of the current step (or nothing)."""

    def save_state(self) -> None:
        """Write the checkpoint (or nothing, for a run without a folder)."""


class Cadence(Protocol):
    """How many steps to train, and every how many steps to log, save a sample grid and save a checkpoint.

    The trainers' configs have these fields.
    """

    steps: int
    log_every: int
    sample_every: int
    checkpoint_every: int


def run_steps(
    run: SteppedRun,
    cadence: Cadence,
    *,
    desc: str,
    unit: str,
    progress: bool,
    interrupted_message: str,
    stop_requested: Callable[[bool], bool] = bool,
    after_checkpoint: Callable[[], None] = lambda: None,
) -> None:
    """Train ``run`` to ``cadence.steps``, logging, sampling and checkpointing on the way, with a progress bar.

    The last step always logs, samples and checkpoints. On Ctrl-C (see ``deferred_interrupt``) the step in
    progress finishes, a checkpoint is written and ``KeyboardInterrupt`` is raised.

    Args:
        run: the run to train, from its current ``step``.
        cadence: the number of steps and the intervals (the trainer's config).
        desc: the progress bar's label.
        unit: the progress bar's unit.
        progress: show the progress bar.
        interrupted_message: the ``KeyboardInterrupt``'s message; ``{step}`` becomes the last step trained.
        stop_requested: maps this process's Ctrl-C flag to the decision to stop; under ``torchrun`` it asks
            every rank, so that all stop at the same step.
        after_checkpoint: called after every checkpoint (e.g. a barrier, so no rank runs ahead of the file).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=cadence.steps, initial=run.step, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    with bar, deferred_interrupt() as interrupted:
        while run.step < cadence.steps:
            started = time.perf_counter()
            values = run.train_step()
            seconds = time.perf_counter() - started
            run.train_seconds += seconds
            run.accumulate(values, seconds)
            bar.update(1)
            bar.set_postfix(run.progress_postfix(values), refresh=False)
            final = run.step == cadence.steps
            stop = stop_requested(interrupted())
            if run.step % cadence.log_every == 0 or final:
                run.log()
            if run.step % cadence.sample_every == 0 or final:
                run.save_samples()
            if run.step % cadence.checkpoint_every == 0 or final or stop:
                run.save_state()
                after_checkpoint()
            if stop:
                # replace, not format: the message may hold a user path with braces
                raise KeyboardInterrupt(interrupted_message.replace("{step}", str(run.step)))


class _FunctionRun:
    """``run_steps``'s view of a run without a folder: a step function, no logs, samples or checkpoints.

    It is also its own cadence: every interval is the whole run, and the last step's log, sample and checkpoint
    calls do nothing.
    """

    def __init__(
        self,
        step: Callable[[int], dict[str, Any]],
        steps: int,
        postfix: Callable[[int, dict[str, Any]], dict[str, str]],
    ):
        self._step_function = step
        self._postfix = postfix
        self.steps = self.log_every = self.sample_every = self.checkpoint_every = steps
        self.step = 0
        self.train_seconds = 0.0

    def train_step(self) -> dict[str, Any]:
        values = self._step_function(self.step)
        self.step += 1
        return values

    def accumulate(self, values: dict[str, Any], seconds: float) -> None:
        pass

    def progress_postfix(self, values: dict[str, Any]) -> dict[str, str]:
        return self._postfix(self.step, values)

    def log(self) -> None:
        pass

    def save_samples(self) -> None:
        pass

    def save_state(self) -> None:
        pass


def run_step_function(
    step: Callable[[int], dict[str, Any]],
    steps: int,
    *,
    desc: str,
    unit: str = "step",
    progress: bool = False,
    postfix: Callable[[int, dict[str, Any]], dict[str, str]] = lambda done, values: {},
) -> None:
    """Call ``step(i)`` for ``i`` in ``range(steps)`` through ``run_steps``: a training run without a folder.

    The trainers that keep no checkpoint (the mask estimator, the shape teacher, the Table 2 classifier) get the
    same loop as the others: a progress bar, and a first Ctrl-C that finishes the step in progress and raises
    ``KeyboardInterrupt`` saying where it stopped.

    Args:
        step: trains step ``i`` (counted from 0) and returns the values of that step (unused by the loop).
        steps: how many steps to run.
        desc: the progress bar's label, also named in the interruption's message.
        unit: the progress bar's unit.
        progress: show the progress bar.
        postfix: what the progress bar shows, from the number of finished steps and the last step's values.
    """
    run = _FunctionRun(step, steps, postfix)
    run_steps(
        run,
        run,
        desc=desc,
        unit=unit,
        progress=progress,
        interrupted_message=f"{desc} stopped after step {{step}}; it keeps no checkpoint.",
    )
