"""The invariant classifier ensemble: model, pretrained weights offline, training, resuming, DDP, the CLI.

Training runs on tiny synthetic folders: real images whose flat colour names their class, and counterfactuals of
the toy backend saved in cfaug's format. The counterfactuals carry the constant labels shape 0, texture 1 and
background 2, so after a few steps each head must answer its own label on them: a head trained with another
head's label would answer another class.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file

from cfaug.checkpoint import CheckpointError
from cfaug.cli import main
from cfaug.datasets.counterfactual import CounterfactualDataset
from cfaug.training.classifier import (
    HEADS,
    OUTPUTS,
    ClassifierConfig,
    ClassifierTrainer,
    EnsembleClassifier,
    WeightsUnavailableError,
    build_torchvision_classifier,
    load_classifier,
    load_torchvision_weights,
    save_classifier,
    train_classifier,
)

_COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20]])


class _FixedClasses(CounterfactualDataset):
    """Counterfactuals whose every item has the classes shape 0, texture 1, background 2."""

    def info(self, index):
        return dataclasses.replace(super().info(index), shape=0, texture=1, background=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(_COLOURS):
        (root / "real" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(colour + rng.normal(0, 20, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "real" / f"c{c}" / f"{i}.png")
    from toy_backend import ToyBackend

    _FixedClasses(ToyBackend.from_pretrained(), size=32, seed=5, target="all").save(root / "cf", progress=False)
    return {"real": str(root / "real"), "cf": str(root / "cf")}


def _config(data: dict[str, str], **changes) -> ClassifierConfig:
    values = dict(
        real_root=data["real"],
        counterfactual_root=data["cf"],
        backbone="tiny_cnn",
        backbone_weights=None,
        image_size=8,
        batch_size=8,
        epochs=2,
        lr=0.1,
        num_workers=0,
        log_every=2,
        progress=False,
    )
    values.update(changes)
    return ClassifierConfig(**values)


def _without_timing(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("train_seconds", "img_per_s")} for line in lines]


# ---------------------------------------------------------------------------------------------------- model
def test_the_papers_resnet50_ensemble_is_constructible():
    torch.manual_seed(0)
    model = EnsembleClassifier("resnet50", num_classes=1000)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == 23_508_032  # torchvision ResNet-50 without its fc
    assert sum(p.numel() for p in model.heads.parameters()) == 3 * (2048 * 1000 + 1000)
    out = model.eval()(torch.rand(2, 3, 64, 64))
    assert sorted(out) == sorted(OUTPUTS) and all(v.shape == (2, 1000) for v in out.values())
    assert torch.allclose(out["average"], (out["shape"] + out["texture"] + out["background"]) / 3)
    assert torch.allclose(out["shape_texture"], (out["shape"] + out["texture"]) / 2)


def test_frozen_batch_norm_keeps_the_statistics_and_trains_the_affine_weights():
    torch.manual_seed(0)
    frozen = EnsembleClassifier("tiny_cnn", num_classes=3, frozen_bn=True).train()
    norms = [m for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen.training and norms and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    frozen(torch.rand(4, 3, 8, 8) * 5)["average"].sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))
    assert all(m.weight.grad is not None for m in norms)
    live = EnsembleClassifier("tiny_cnn", num_classes=3, frozen_bn=False).train()
    live(torch.rand(4, 3, 8, 8) * 5)
    assert not torch.equal(
        next(m for m in live.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean, before[0]
    )
    with pytest.raises(ValueError, match="Unknown value 'resnet5' for argument `backbone`"):
        EnsembleClassifier("resnet5")


def test_backbone_weights_load_from_a_file_and_the_hub_cache_never_downloading(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("cfaug must not download unless asked")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(1)
    donor = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save(donor, path)
    state, description = load_torchvision_weights("resnet18", path)
    model = EnsembleClassifier("resnet18", num_classes=10)
    model.load_backbone_state(state)  # the donor's fc is ignored; the heads stay fresh
    assert torch.equal(model.backbone.layer4[1].conv2.weight, donor["layer4.1.conv2.weight"])
    assert description == "weights file r18.pth"

    with pytest.raises(WeightsUnavailableError, match=r"ResNet18_Weights.IMAGENET1K_V1 are not in the torch hub cache"):
        load_torchvision_weights("resnet18", "IMAGENET1K_V1")
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(donor, cached)
    with pytest.raises(ValueError, match="does not have the sha256 of torchvision ResNet18_Weights.IMAGENET1K_V1"):
        load_torchvision_weights("resnet18", "DEFAULT")
    state, description = load_torchvision_weights("resnet18", "ResNet18_Weights.DEFAULT", check_hash=False)
    assert description == "torchvision ResNet18_Weights.IMAGENET1K_V1" and torch.equal(
        state["fc.bias"], donor["fc.bias"]
    )
    plain = build_torchvision_classifier("resnet18", path)
    assert torch.equal(plain.fc.weight, donor["fc.weight"]) and not plain.training

    with pytest.raises(ValueError, match="Unknown value 'IMAGENET9K' for argument `weights`. Valid values are"):
        load_torchvision_weights("resnet18", "IMAGENET9K")
    with pytest.raises(ValueError, match="are not weights of resnet18; its weights are ResNet18_Weights"):
        load_torchvision_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(WeightsUnavailableError, match="Weights file not found"):
        load_torchvision_weights("resnet18", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="do not fit the tiny_cnn backbone"):
        EnsembleClassifier("tiny_cnn").load_backbone_state(donor)
    # Loading never unpickles arbitrary objects.
    torch.save({"conv1.weight": torch.zeros(1), "trap": argparse.Namespace(run="code")}, tmp_path / "x.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        load_torchvision_weights("resnet18", tmp_path / "x.pth")


def test_config_checks_its_fields(data):
    with pytest.raises(ValueError, match="Unknown value 'vgg' for argument `backbone`"):
        _config(data, backbone="vgg")
    with pytest.raises(ValueError, match="`lr` should be a number > 0, but got 0"):
        _config(data, lr=0)
    with pytest.raises(ValueError, match="`batch_size` should be an integer >= 1, but got 0"):
        _config(data, batch_size=0)
    with pytest.raises(TypeError, match="`real_root` should be a non-empty str"):
        _config(data, real_root="")
    with pytest.raises(ValueError, match=r"Unknown ClassifierConfig fields \['steps'\]"):
        ClassifierConfig.from_dict({**_config(data).to_dict(), "steps": 3})
    config = _config(data, cf_ratio=0.5)
    assert config.cf_batch_size == 4 and ClassifierConfig.from_dict(config.to_dict()) == config
    assert dataclasses.replace(config, counterfactual_root=None).cf_batch_size == 0


# ------------------------------------------------------------------------------------------------- training
def test_training_teaches_each_head_its_own_label(data, tmp_path):
    run = tmp_path / "run"
    config = _config(data, epochs=4, val_root=data["real"], counterfactual_val_root=data["cf"])
    trainer = ClassifierTrainer(config, run)
    final = trainer.fit()
    assert final == run / "final.safetensors"
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    validation = [r for r in records if "val_top1_average" in r]
    assert [r["epoch"] for r in validation] == [1, 2, 3, 4]
    # Real images: the average of the heads learns the colours. Counterfactuals: each head answers its own label
    # (shape 0, texture 1, background 2); a swapped label would make its accuracy 0.
    assert validation[-1]["val_top1_average"] == 1.0
    assert [validation[-1][f"cf_val_top1_{head}"] for head in HEADS] == [1.0, 1.0, 1.0]
    steps = [r for r in records if "loss_real" in r]
    assert [r["step"] for r in steps] == [2, 3, 4, 6, 8, 9, 10, 12]  # every 2 steps and at each epoch's end
    assert steps[-1]["loss_counterfactual"] < steps[0]["loss_counterfactual"]
    assert steps[-1]["lr"] == 0.1 and steps[0]["img_per_s"] > 0

    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert (resolved["steps_per_epoch"], resolved["total_steps"], resolved["cf_batch_size"]) == (3, 12, 8)
    assert resolved["num_classes"] == 4 and resolved["processes"] == 1
    with Image.open(run / "samples" / "first-batch.png") as picture:
        assert picture.size == (8 * 10 + 2, 2 * (10 + 2))  # 8 real over 8 counterfactual crops of 8 px
    loaded = load_classifier(final)
    assert loaded.meta["class_names"] == ["c0", "c1", "c2", "c3"] and loaded.meta["image_size"] == 8
    assert loaded.meta["metrics"]["cf_val_top1_texture"] == 1.0
    images = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(images)["shape"], trainer.model(images)["shape"])
    with pytest.raises(CheckpointError, match="It is a training state; load the run's final.safetensors"):
        load_classifier(run / "checkpoints" / "latest.safetensors")


def test_a_resumed_run_repeats_the_uninterrupted_one_bit_for_bit(data, tmp_path):
    config = _config(data, epochs=3, checkpoint_every=100)
    train_classifier(config, tmp_path / "straight")
    train_classifier(dataclasses.replace(config, epochs=1), tmp_path / "resumed")
    # Resumed with DataLoader workers: every item's crop depends on its seed, not on who computes it.
    train_classifier(dataclasses.replace(config, num_workers=2), tmp_path / "resumed")
    straight = load_file(str(tmp_path / "straight" / "final.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "final.safetensors"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _without_timing(tmp_path / "straight" / "stats.jsonl") == _without_timing(
        tmp_path / "resumed" / "stats.jsonl"
    )

    with pytest.raises(ValueError, match=r"another recipe \(lr: 0.1 -> 0.2\)"):
        train_classifier(dataclasses.replace(config, lr=0.2, epochs=4), tmp_path / "resumed")
    with pytest.raises(ValueError, match="already holds a run"):
        train_classifier(config, tmp_path / "resumed", resume=False)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_ctrl_c_finishes_the_step_checkpoints_it_and_the_run_resumes_bit_for_bit(
    data, tmp_path, monkeypatch, num_workers
):
    from cfaug.checkpoint import load_checkpoint
    from cfaug.training import classifier

    config = _config(data, epochs=3, checkpoint_every=100, num_workers=num_workers)  # 3 epochs of 3 steps
    straight = train_classifier(dataclasses.replace(config, num_workers=0), tmp_path / "straight")

    fetch = classifier._TrainItems.__getitem__
    calls = []

    def interrupting_fetch(self, key):
        calls.append(key)  # counts in the process that fetches: the main one, or the worker
        if len(calls) == 20:  # an item of the second step (16 items per step)
            # Ctrl-C in a terminal reaches every process of the group: the main process and its workers. (A forked
            # worker inherits the handler; the spawned ones of macOS are checked in the next test.)
            if num_workers:
                os.kill(os.getppid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return fetch(self, key)

    monkeypatch.setattr(classifier._TrainItems, "__getitem__", interrupting_fetch)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted after step (\d+); .*latest.safetensors") as caught:
        train_classifier(config, tmp_path / "resumed")
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    step = int(re.search(r"after step (\d+)", str(caught.value)).group(1))
    if num_workers == 0:
        assert step == 2  # the signal came while fetching step 2's items: that step is finished, then the stop
    else:
        assert 1 <= step < 9  # the worker prefetches, so the main process hears it a step or two apart
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "latest.safetensors").meta["step"] == step
    assert not (tmp_path / "resumed" / "final.safetensors").exists()

    monkeypatch.undo()
    resumed = train_classifier(config, tmp_path / "resumed")
    expected, got = load_file(str(straight)), load_file(str(resumed))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


class _SelfInterruptingItems(torch.utils.data.Dataset):
    """Each item sends Ctrl-C to the process that fetches it (module level, so that spawned workers can load it)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        os.kill(os.getpid(), signal.SIGINT)
        return index


def test_spawned_dataloader_workers_leave_ctrl_c_to_the_main_process():
    from cfaug.training.classifier import _ignore_interrupts

    # A spawned worker (macOS, and Linux from Python 3.14) starts with Python's default handler, which would end
    # it on Ctrl-C; the main process would then fail with "DataLoader worker exited unexpectedly".
    loader = torch.utils.data.DataLoader(
        _SelfInterruptingItems(),
        batch_size=2,
        num_workers=1,
        multiprocessing_context="spawn",
        worker_init_fn=_ignore_interrupts,
    )
    assert [batch.tolist() for batch in loader] == [[0, 1], [2, 3]]


def test_a_torchvision_backbone_trains_with_its_pretrained_statistics_frozen(data, tmp_path):
    torch.manual_seed(2)
    donor = torchvision.models.resnet18().state_dict()
    donor["bn1.running_mean"] += 0.5  # statistics a training step in train mode would change
    weights = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in donor.items()}, str(weights))
    config = _config(data, backbone="resnet18", backbone_weights=str(weights), image_size=32, batch_size=12, epochs=1)
    final = train_classifier(config, tmp_path / "run")
    trained = load_file(str(final))
    assert torch.equal(trained["backbone.bn1.running_mean"], donor["bn1.running_mean"])
    assert torch.equal(trained["backbone.layer1.0.bn1.running_var"], donor["layer1.0.bn1.running_var"])
    assert not torch.equal(trained["backbone.conv1.weight"], donor["conv1.weight"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["backbone_weights"] == (
        "weights file r18.safetensors"
    )


def test_data_that_do_not_fit_the_recipe_are_refused(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; it should be an ImageFolder"):
        train_classifier(_config(data, real_root=str(tmp_path / "absent")), tmp_path / "a")
    for c in ("a", "b", "c"):
        (tmp_path / "three" / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "three" / c / "0.png")
    with pytest.raises(ValueError, match="have 4 classes, but the real images .* have 3 class folders"):
        train_classifier(_config(data, real_root=str(tmp_path / "three"), batch_size=2), tmp_path / "b")
    with pytest.raises(ValueError, match="holds 24 images, fewer than one batch"):
        train_classifier(_config(data, batch_size=32), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="should be a dataset saved by `cfaug generate`"):
        train_classifier(_config(data, counterfactual_root=str(tmp_path / "nocf")), tmp_path / "d")


# --------------------------------------------------------------------------------------- two processes (DDP)
def _ddp_worker(rank: int, world_size: int, port: int, config: dict, run_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    trainer = ClassifierTrainer(ClassifierConfig.from_dict(config), run_dir)
    trainer.fit()  # joins the gloo process group from the environment, and leaves it
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, f"{out_dir}/rank{rank}.safetensors")


def test_two_ddp_processes_train_what_one_process_trains(data, tmp_path):
    config = _config(data, epochs=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, config.to_dict(), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # the replicas never drifted apart
    exported = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    assert all(torch.equal(exported[k], ranks[0][k]) for k in exported)
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["resolved"]["processes"] == 2
    # Each rank took half of every step's images: with frozen BatchNorm, the averaged gradients are those of the
    # whole batch, so one process computes the same weights up to float rounding.
    single = load_file(str(train_classifier(config, tmp_path / "single")))
    assert max(float((single[k].float() - ranks[0][k].float()).abs().max()) for k in single) < 1e-5
    losses = [r["loss_real"] for r in _without_timing(tmp_path / "ddp" / "stats.jsonl") if "loss_real" in r]
    single_losses = [r["loss_real"] for r in _without_timing(tmp_path / "single" / "stats.jsonl") if "loss_real" in r]
    assert losses == pytest.approx(single_losses, rel=1e-4)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_trains_and_resumes(data, tmp_path, capsys):
    argv = ["train", "classifier", "--real-root", data["real"], "--counterfactual-root", data["cf"]]
    argv += ["--run-dir", str(tmp_path / "run"), "--backbone", "tiny_cnn", "--backbone-weights", "none"]
    argv += ["--image-size", "8", "--batch-size", "8", "--epochs", "1", "--num-workers", "0", "--no-progress"]
    assert main([*argv, "--set", "log_every=1"]) == 0
    out = capsys.readouterr().out
    assert f"Exported classifier: {tmp_path / 'run' / 'final.safetensors'}" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["backbone_weights"], config["log_every"], config["frozen_bn"]) == (None, 1, True)
    first = (tmp_path / "run" / "final.safetensors").read_bytes()
    assert main([*argv, "--set", "log_every=1"]) == 0  # a finished run: nothing to do, the export is kept
    assert (tmp_path / "run" / "final.safetensors").read_bytes() == first
    assert main([*argv, "--no-resume"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv[:3], "/nowhere", *argv[4:], "--run-dir", str(tmp_path / "x")]) == 2
    assert "does not exist; it should be an ImageFolder" in capsys.readouterr().err


def test_save_and_load_classifier_round_trip(tmp_path):
    torch.manual_seed(3)
    model = EnsembleClassifier("tiny_cnn", num_classes=7, frozen_bn=False)
    path = save_classifier(model, tmp_path / "m.safetensors", class_names=list("abcdefg"), image_size=16)
    loaded = load_classifier(path)
    assert loaded.arch_config() == {"backbone": "tiny_cnn", "num_classes": 7, "frozen_bn": False}
    assert loaded.meta["class_names"] == list("abcdefg") and not loaded.training
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(images)["average"], model.eval()(images)["average"])


def test_a_run_folder_written_before_the_engine_resumes(data, tmp_path):
    # classifier_run_ffed146/ is epoch 1 of this recipe, checkpointed by the trainer at ffed146 (before the run
    # folder moved to cfaug.engine); resumed to epoch 3 it must give what a run of 3 epochs gives today. The folder
    # was written on another CPU, whose float rounding differs in the last bits (an AMD EPYC against the Intel Xeon
    # that wrote it: weights 2.4e-7 apart), so the comparison has a tolerance; resumes on one machine are compared bit
    # for bit by the engine's own tests.
    config = _config(data, epochs=3, checkpoint_every=100)
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "classifier_run_ffed146", old)
    train_classifier(config, old)
    train_classifier(config, tmp_path / "straight")
    straight = load_file(str(tmp_path / "straight" / "final.safetensors"))
    resumed = load_file(str(old / "final.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-5, msg=key)
    straight_stats = _without_timing(tmp_path / "straight" / "stats.jsonl")
    resumed_stats = _without_timing(old / "stats.jsonl")
    assert [line.keys() for line in straight_stats] == [line.keys() for line in resumed_stats]
    for here, there in zip(straight_stats, resumed_stats, strict=True):
        assert here == pytest.approx(there, rel=1e-4, abs=1e-6)
