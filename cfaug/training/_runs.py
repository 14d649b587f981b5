"""Moved to ``cfaug.engine`` (state, folder and loop); this alias keeps the old import path working."""

from __future__ import annotations

from cfaug.engine.config import check_resumable
from cfaug.engine.folder import truncate_stats
from cfaug.engine.loop import Cadence, SteppedRun, deferred_interrupt, run_steps
from cfaug.engine.state import flatten_optimizer, prefixed, unflatten_optimizer, unprefixed

__all__ = [
    "Cadence",
    "SteppedRun",
    "check_resumable",
    "deferred_interrupt",
    "flatten_optimizer",
    "prefixed",
    "run_steps",
    "truncate_stats",
    "unflatten_optimizer",
    "unprefixed",
]
