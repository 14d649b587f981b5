"""The one training engine of cfaug: config convention, run folder, training state and step loop.

Every trainer (MNIST CGN, ImageNet CGN, classifier, mask estimator, shape teacher, the Table 2 classifier) is
built from these parts and defines only its networks, its step, its state (save/load) and its export. The engine
imports nothing from ``cfaug.training``, ``cfaug.evaluation``, ``cfaug.datasets`` or ``cfaug.backends``, so that
evaluation can train on it too.

**Config** (``cfaug.engine.config``): a trainer's config is a frozen dataclass that subclasses ``Config`` and
declares every field with ``setting(default, check=..., resumable=...)``; checks come from ``integer``,
``number``, ``choice``, ``text`` (or any ``check(value, name) -> value``). ``Config`` runs the checks, then the
subclass's ``validate()`` for checks across fields, and gives ``to_dict``/``from_dict`` (JSON round trip; unknown
keys refused), ``resumable_fields()`` and, with ``check_resumable(saved, wanted)``, the resume guard. Presets are a
plain ``dict[str, Config]`` per trainer, changed with ``dataclasses.replace``.

**Run folder** (``RunFolder``): ``config.json``, ``stats.jsonl``, ``samples/``, ``checkpoints/latest.safetensors``,
``final.safetensors``; ``refuse_unless_resuming(resume)``, ``load_state()`` (refuses another trainer's
checkpoint by its ``kind``), ``save_state(tensors, meta)``, ``start_stats(step)`` (cut back to a resumed step),
``append_stats(record)``, ``write_config(document)``, ``sample_path(step)``. Only rank 0 (``is_main``) writes.
``run_environment(device, **extra)`` is what a run records of the machine it ran on.

**Training state** (``cfaug.engine.state``): ``prefixed``/``unprefixed`` module weights and
``flatten_optimizer``/``unflatten_optimizer``: a state that loads without unpickling.

**Step loop** (``cfaug.engine.loop``): ``training_scope(num_threads, device)`` sets the thread count and forks the
RNG for a run; ``run_steps(run, cadence, ...)`` trains any ``SteppedRun`` (``step``, ``train_seconds``,
``train_step()``, ``accumulate``, ``progress_postfix``, ``log``, ``save_samples``, ``save_state``) to
``cadence.steps`` with a progress bar, logging, sampling and checkpointing every ``log_every``/``sample_every``/
``checkpoint_every`` steps and at the last one; the first Ctrl-C finishes the step, checkpoints and raises
``KeyboardInterrupt``. A run without a folder (the mask estimator, the shape teacher, the Table 2 classifier) is a step
function given to ``run_step_function(step, steps, ...)``, which runs it through ``run_steps`` with nothing to log
or save. Under torchrun, pass
``stop_requested=lambda flag: any_rank(flag, device)`` and ``after_checkpoint=barrier`` from
``cfaug.distributed`` and join the job with ``cfaug.distributed.distributed_session``.
"""

from __future__ import annotations

from cfaug.engine.config import (
    Check,
    Config,
    check_resumable,
    choice,
    integer,
    json_ready,
    number,
    setting,
    text,
)
from cfaug.engine.folder import RunFolder, run_environment, truncate_stats
from cfaug.engine.loop import Cadence, SteppedRun, deferred_interrupt, run_step_function, run_steps, training_scope
from cfaug.engine.state import flatten_optimizer, prefixed, unflatten_optimizer, unprefixed

__all__ = [
    "Cadence",
    "Check",
    "Config",
    "RunFolder",
    "SteppedRun",
    "check_resumable",
    "choice",
    "deferred_interrupt",
    "flatten_optimizer",
    "integer",
    "json_ready",
    "number",
    "prefixed",
    "run_environment",
    "run_step_function",
    "run_steps",
    "setting",
    "text",
    "training_scope",
    "truncate_stats",
    "unflatten_optimizer",
    "unprefixed",
]
