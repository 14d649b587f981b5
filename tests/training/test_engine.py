"""The engine's config convention and run folder (``cfaug.engine``), and configs written before the engine."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cfaug._utils import check_number
from cfaug.engine import (
    Config,
    RunFolder,
    check_resumable,
    choice,
    integer,
    number,
    setting,
    text,
    training_scope,
)
from cfaug.training import RESUMABLE_FIELDS, TrainConfig, get_preset
from cfaug.training.imagenet import IMAGENET_RESUMABLE_FIELDS, ImageNetTrainConfig, get_imagenet_preset


@dataclass(frozen=True)
class _Toy(Config):
    steps: int = setting(10, check=integer(), resumable=True)
    lr: float = setting(0.1, check=number(positive=True))
    mode: str = setting("a", check=choice(("a", "b")))
    root: str | None = setting(None, check=text(optional=True), resumable=True)
    shape: tuple[int, ...] = (1, 2)
    notes: dict[str, str] = setting(factory=dict, compare=False, resumable=True)

    def validate(self) -> None:
        if self.mode == "b" and self.steps < 2:
            raise ValueError("`mode` b needs 2 steps")


def test_config_checks_round_trip_and_resumable_fields():
    toy = _Toy(steps=3, shape=(4, 5), notes={"why": "test"})
    assert _Toy.from_dict(json.loads(json.dumps(toy.to_dict()))) == toy
    assert _Toy.from_dict(toy.to_dict()).shape == (4, 5)  # lists become tuples again
    assert _Toy.resumable_fields() == frozenset({"steps", "root", "notes"})
    with pytest.raises(ValueError, match="`steps` should be an integer >= 1, but got 0"):
        _Toy(steps=0)
    with pytest.raises(TypeError, match="`lr` should be a finite number"):
        _Toy(lr=math.nan)
    with pytest.raises(ValueError, match="Unknown value 'c' for argument `mode`"):
        _Toy(mode="c")
    with pytest.raises(TypeError, match="`root` should be a str or None"):
        _Toy(root=3)
    with pytest.raises(ValueError, match="`mode` b needs 2 steps"):
        _Toy(mode="b", steps=1)
    with pytest.raises(ValueError, match=r"Unknown _Toy fields \['colour'\]"):
        _Toy.from_dict({"colour": 1})
    check_resumable(toy, dataclasses.replace(toy, steps=20, root="elsewhere"))
    with pytest.raises(ValueError, match=r"lr: 0\.1 -> 0\.2"):
        check_resumable(toy, dataclasses.replace(toy, lr=0.2))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "1"])
def test_check_number_refuses_nan_infinities_and_non_numbers(bad):
    with pytest.raises(TypeError, match="should be a finite number"):
        check_number(bad, "x")
    for config in (TrainConfig, ImageNetTrainConfig):
        with pytest.raises(TypeError, match="should be a finite number"):
            config(lambda_mask=bad)


def test_check_number_bounds():
    assert check_number(0, "x") == 0.0
    with pytest.raises(ValueError, match="`x` should be a number > 0"):
        check_number(0, "x", positive=True)
    with pytest.raises(ValueError, match="`x` should be a number >= 0 and <= 1.0"):
        check_number(1.5, "x", upper=1.0)


def test_resumable_fields_are_unchanged():
    assert RESUMABLE_FIELDS == frozenset(
        {"steps", "log_every", "sample_every", "checkpoint_every", "collapse_action", "device", "num_threads"}
        | {"progress", "notes", "data_root", "texture_root"}
    )
    assert IMAGENET_RESUMABLE_FIELDS == frozenset(
        {"steps", "log_every", "sample_every", "checkpoint_every", "sample_classes", "export_truncation", "device"}
        | {"amp", "num_threads", "progress", "notes", "biggan", "u2net_weights"}
    )


def test_configs_written_before_the_engine_still_load_and_resume():
    # The `config` of config.json / checkpoint metadata as cfaug wrote it at ffed146, before the engine.
    saved = json.loads((Path(__file__).parent / "run_folder_configs_ffed146.json").read_text())
    expected = {
        "mnist_ours_colored": get_preset(
            "colored_mnist",
            data_root="data",
            steps=4,
            batch_size=8,
            style_batch=2,
            train_images=40,
            feature_net="random",
        ),  # fmt: skip
        "mnist_authors_wildlife": get_preset("wildlife_mnist", "authors", texture_root="textures", num_threads=2),
        "imagenet_authors": get_imagenet_preset(
            "authors", biggan="weights/biggan", u2net="tiny", u2net_weights=None, sample_classes=None
        ),
        "imagenet_paper": get_imagenet_preset("paper", amp="bf16", device="cuda"),
    }
    for name, wanted in expected.items():
        config = type(wanted).from_dict(saved[name])
        assert config == wanted and config.notes == wanted.notes, name
        assert config.to_dict() == saved[name], name  # what a resumed run writes again
        check_resumable(config, dataclasses.replace(wanted, steps=wanted.steps + 1), None)


def test_run_folder_guard_stats_and_rank_zero_writes(tmp_path):
    folder = RunFolder(tmp_path / "run", kind="test.state", writer="the test")
    folder.refuse_unless_resuming(resume=False)  # empty: nothing to refuse
    folder.start_stats(0)
    for step in (1, 2, 3):
        folder.append_stats({"step": step})
    folder.save_state({"w": torch.ones(2)}, {"step": 2})
    folder.write_config({"config": {"steps": 3}})
    assert json.loads(folder.config_path.read_text()) == {"config": {"steps": 3}}
    assert folder.load_state().meta["step"] == 2
    with pytest.raises(ValueError, match="already holds a run"):
        folder.refuse_unless_resuming(resume=False)
    folder.start_stats(2)  # resumed at step 2: the line of step 3 goes
    assert [json.loads(line)["step"] for line in folder.stats_path.read_text().splitlines()] == [1, 2]
    assert folder.sample_path(7).name == "step-000007.png"
    other = RunFolder(tmp_path / "run", kind="another.state", writer="another trainer")
    with pytest.raises(ValueError, match="not a training state written by another trainer"):
        other.load_state()
    quiet = RunFolder(tmp_path / "rank1", kind="test.state", writer="the test", is_main=False)
    quiet.start_stats(0)
    quiet.append_stats({"step": 1})
    quiet.write_config({})
    quiet.save_state({"w": torch.ones(1)}, {})
    assert not (tmp_path / "rank1").exists()


def test_training_scope_restores_threads_and_rng():
    threads = torch.get_num_threads()
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    with training_scope(1):
        assert torch.get_num_threads() == 1
        torch.rand(3)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), before)
