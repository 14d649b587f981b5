"""What the cfaug trainers share: checkpoint tensors, the resume check, the stats file, Ctrl-C and the step loop.

The classifier uses the first three; the two CGN trainers also use ``run_steps`` (the classifier steps through
its DataLoader instead).

The three trainers (``mnist``, ``imagenet``, ``classifier``) keep one run folder each, laid out alike
(``config.json``, ``stats.jsonl``, ``checkpoints/latest.safetensors``, ``final.safetensors``), and save their state
in one way: module weights under a prefix, optimiser tensors flattened beside them and the optimiser's plain
values in the checkpoint's JSON metadata, so that a training state loads without unpickling anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cfaug._utils import atomic_write
from cfaug.training.config import json_ready


# ------------------------------------------------------------------------------------------- checkpoint tensors
def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every key under ``prefix.``, to store several modules in one file."""
    return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed (the inverse of ``prefixed``)."""
    marker = prefix + "."
    return {key[len(marker) :]: value for key, value in tensors.items() if key.startswith(marker)}


def flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state into tensors (``prefix.state.<param>.<key>``) and JSON-ready metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": json_ready(state["param_groups"]), "scalars": scalars}


def unflatten_optimizer(prefix: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser state dict that ``flatten_optimizer(prefix, ...)`` split into ``tensors`` and ``meta``."""
    state: dict[int, dict[str, Any]] = {}
    marker = f"{prefix}.state."
    for name, tensor in tensors.items():
        if name.startswith(marker):
            index, key = name[len(marker) :].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON has no tuples; Adam compares ``betas`` as a tuple.
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def check_resumable(saved: Any, wanted: Any, resumable: frozenset[str]) -> None:
    """Raise ``ValueError`` when two configs (dataclasses of one type) differ in a field outside ``resumable``."""
    differing = [
        f.name
        for f in dataclasses.fields(type(saved))
        if f.name not in resumable and getattr(saved, f.name) != getattr(wanted, f.name)
    ]
    if differing:
        details = ", ".join(f"{n}: {getattr(saved, n)!r} -> {getattr(wanted, n)!r}" for n in differing)
        raise ValueError(
            f"The run folder holds a run with another recipe ({details}). Only {sorted(resumable)} may "
            "change when resuming; use a new run folder for a new recipe."
        )


# ------------------------------------------------------------------------------------------------ stats file
def truncate_stats(path: Path, last_step: int) -> None:
    """Keep the stats lines up to ``last_step``: the interrupted run may have logged past its last checkpoint."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= last_step:
            kept.append(line)
    with atomic_write(path, "w") as handle:
        handle.write("".join(line + "\n" for line in kept))


# ------------------------------------------------------------------------------------------------ the loop
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

    def train_step(self) -> dict[str, float]: ...  # one step; increments ``step``; returns the values to log

    def accumulate(self, values: dict[str, float], seconds: float) -> None: ...

    def progress_postfix(self, values: dict[str, float]) -> dict[str, str]: ...

    def log(self) -> Any: ...

    def save_samples(self) -> Any: ...

    def save_state(self) -> None: ...


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
