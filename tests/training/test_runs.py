"""The pieces every trainer shares (``cfaug.training._runs``): checkpoint tensors, resuming checks, the stats file."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from cfaug.checkpoint import load_checkpoint, save_checkpoint
from cfaug.training._runs import (
    check_resumable,
    flatten_optimizer,
    prefixed,
    run_steps,
    truncate_stats,
    unflatten_optimizer,
    unprefixed,
)


def _stepped(optimizer_class: type[torch.optim.Optimizer], **options) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = optimizer_class(model.parameters(), lr=0.1, **options)
    for _ in range(3):
        model(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


@pytest.mark.parametrize(
    ("optimizer_class", "options"),
    [(torch.optim.Adam, {"betas": (0.5, 0.999)}), (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-4})],
)
def test_a_state_saved_and_loaded_continues_exactly(tmp_path, optimizer_class, options):
    model, optimizer = _stepped(optimizer_class, **options)
    tensors, meta = flatten_optimizer("opt", optimizer)
    save_checkpoint(tmp_path / "state.safetensors", {**prefixed("model", model), **tensors}, {"opt": meta})

    loaded = load_checkpoint(tmp_path / "state.safetensors")
    twin, twin_optimizer = _stepped(optimizer_class, **options)
    for parameter in twin.parameters():  # make sure the load, not the shared seed, restores the weights
        nn.init.zeros_(parameter)
    twin.load_state_dict(unprefixed("model", loaded.state_dict), strict=True)
    twin_optimizer.load_state_dict(unflatten_optimizer("opt", loaded.state_dict, loaded.meta["opt"]))

    batch = torch.randn(8, 3)
    for net, opt in ((model, optimizer), (twin, twin_optimizer)):
        net(batch).square().mean().backward()
        opt.step()
    for ours, theirs in zip(model.state_dict().values(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_unprefixed_keeps_only_its_prefix():
    tensors = {"G.weight": torch.ones(1), "G_ema.weight": torch.zeros(1), "D.bias": torch.ones(2)}
    assert list(unprefixed("G", tensors)) == ["weight"]


@dataclasses.dataclass
class _Config:
    steps: int = 10
    lr: float = 0.1


def test_check_resumable_names_the_changed_field():
    check_resumable(_Config(), _Config(steps=20), frozenset({"steps"}))
    with pytest.raises(ValueError, match=r"lr: 0\.1 -> 0\.2.*Only \['steps'\] may change"):
        check_resumable(_Config(), _Config(steps=20, lr=0.2), frozenset({"steps"}))


def test_truncate_stats_drops_lines_past_the_checkpoint_and_a_cut_line(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 2, 4, 6)) + '{"step": 8, "lo')
    truncate_stats(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 2, 4]


@dataclasses.dataclass
class _Cadence:
    steps: int
    log_every: int
    sample_every: int
    checkpoint_every: int


class _Recorder:
    def __init__(self):
        self.step, self.train_seconds, self.events = 0, 0.0, []

    def train_step(self):
        self.step += 1
        return {"loss": 1.0 / self.step}

    def accumulate(self, values, seconds):
        self.events.append(("accumulate", self.step))

    def progress_postfix(self, values):
        return {"loss": f"{values['loss']:.2f}"}

    def log(self):
        self.events.append(("log", self.step))

    def save_samples(self):
        self.events.append(("samples", self.step))

    def save_state(self):
        self.events.append(("checkpoint", self.step))


def test_run_steps_follows_the_cadence_and_always_finishes_the_last_step():
    run = _Recorder()
    cadence = _Cadence(steps=5, log_every=2, sample_every=4, checkpoint_every=3)
    run_steps(run, cadence, desc="test", unit="it", progress=False, interrupted_message="")
    assert run.step == 5
    chosen = [event for event in run.events if event[0] != "accumulate"]
    assert chosen == [
        ("log", 2),
        ("checkpoint", 3),
        ("log", 4),
        ("samples", 4),
        ("log", 5),
        ("samples", 5),
        ("checkpoint", 5),
    ]


def test_run_steps_checkpoints_and_stops_when_asked():
    run, barriers = _Recorder(), []
    with pytest.raises(KeyboardInterrupt, match=r"stopped after 2; state in runs/\{x\}"):
        run_steps(
            run,
            _Cadence(steps=100, log_every=50, sample_every=50, checkpoint_every=50),
            desc="test",
            unit="it",
            progress=False,
            interrupted_message="stopped after {step}; state in runs/{x}",
            stop_requested=lambda flag: run.step == 2,  # as if another rank saw Ctrl-C during step 2
            after_checkpoint=lambda: barriers.append(run.step),
        )
    assert [event for event in run.events if event[0] == "checkpoint"] == [("checkpoint", 2)]
    assert barriers == [2]


# ------------------------------------------------------------------------------------ owned and locked run folders
def _folder(path, kind="test.state"):
    from cfaug.engine.folder import RunFolder

    return RunFolder(path, kind=kind, writer="the test")


def test_a_run_folder_that_is_a_file_or_holds_foreign_files_is_refused_before_writing(tmp_path):
    from cfaug.engine.folder import RunFolderError

    afile = tmp_path / "notes.txt"
    afile.write_text("precious")
    with pytest.raises(NotADirectoryError, match=r"notes.txt' is a file"):
        _folder(afile).refuse_unless_resuming(resume=True)
    assert afile.read_text() == "precious"

    other = tmp_path / "other"
    (other / "images" / "000000").mkdir(parents=True)
    (other / "images" / "000000" / "000003.png").write_text("precious")
    (other / "labels.csv").write_text("notes")
    with pytest.raises(RunFolderError, match=r"holds images, labels.csv, which a cfaug training run does not write"):
        _folder(other).refuse_unless_resuming(resume=True)
    assert sorted(p.name for p in other.iterdir()) == ["images", "labels.csv"], "nothing written, not even a lock"

    foreign_config = tmp_path / "cfg"
    foreign_config.mkdir()
    (foreign_config / "config.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="is not the config of a cfaug run"):
        _folder(foreign_config).refuse_unless_resuming(resume=True)
    (tmp_path / "odd" / "stats.jsonl").mkdir(parents=True)
    with pytest.raises(RunFolderError, match=r"stats.jsonl \(a folder\)"):
        _folder(tmp_path / "odd").refuse_unless_resuming(resume=True)


def test_a_run_folder_of_another_trainer_is_refused_and_its_own_is_resumed(tmp_path):
    from cfaug.engine.folder import RunFolderError

    first = _folder(tmp_path / "run")
    first.refuse_unless_resuming(resume=True)
    first.start_stats(0)
    first.append_stats({"step": 1})
    first.save_state({"w": torch.ones(2)}, {"step": 1})
    first.write_config({"config": {"steps": 3}})
    (first.path / ".config.json.abc.tmp").write_text("")  # left by a killed atomic write
    again = _folder(tmp_path / "run")
    again.refuse_unless_resuming(resume=True)  # the same process, the same trainer: resumes
    assert again.load_state().meta["step"] == 1
    with pytest.raises(RunFolderError, match=r"another trainer \(training state of kind 'test.state'"):
        _folder(tmp_path / "run", kind="other.state").refuse_unless_resuming(resume=True)


LOCKED = """
import sys
from cfaug.engine.folder import RunFolder, RunFolderError
try:
    RunFolder(sys.argv[1], kind="test.state", writer="the test").refuse_unless_resuming(resume=True)
except RunFolderError as error:
    print("REFUSED", error)
else:
    print("LOCKED")
"""


def test_a_second_process_cannot_train_in_a_locked_run_folder(tmp_path):
    import subprocess
    import sys

    folder = _folder(tmp_path / "run")
    folder.refuse_unless_resuming(resume=True)  # this process trains in it now

    def other() -> str:
        command = [sys.executable, "-c", LOCKED, str(tmp_path / "run")]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout

    assert other().startswith("REFUSED Another process is training in")
    del folder  # the run ends: its lock goes with it
    assert other().startswith("LOCKED")
