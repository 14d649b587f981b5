"""ImageNet CGN training on a tiny random BigGAN (32 px), the tiny U2-Net and a random VGG16."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("pytorch_pretrained_biggan")

from real_files import TINY_BIGGAN  # noqa: E402

import cfaug  # noqa: E402
from cfaug.backends.biggan import BigGANBackend, build_biggan, save_biggan  # noqa: E402
from cfaug.training.features import FeatureNetworkError, build_feature_network  # noqa: E402
from cfaug.training.imagenet import (  # noqa: E402
    ImageNetTrainConfig,
    ImageNetTrainer,
    add_train_imagenet_arguments,
    config_from_args,
    get_imagenet_preset,
    train_cgn_imagenet,
)
from cfaug.training.imagenet_losses import (  # noqa: E402
    ImageNetCGNLoss,
    background_saliency_loss,
    texture_patch_grid,
)

TINY = TINY_BIGGAN


@pytest.fixture(scope="module")
def biggan_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("biggan")
    save_biggan(build_biggan(TINY, seed=0), folder)
    return folder


def _config(biggan_dir: Path, **changes) -> ImageNetTrainConfig:
    values = dict(
        biggan=str(biggan_dir),
        u2net="tiny",
        u2net_weights=None,
        feature_net="random",
        steps=2,
        batch_size=2,
        accumulation=2,
        sample_classes=(1, 4, 7),
        patch_work_size=48,
        # Learning rates large enough that a step visibly moves the tiny networks.
        lr_shape=1e-3,
        lr_texture=1e-3,
        lr_background=1e-3,
        progress=False,
    )
    values.update(changes)
    return get_imagenet_preset("authors", **values)


def _mechanism_state(backend: BigGANBackend) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.state_dict().items() if not k.startswith("u2net.")}


# ------------------------------------------------------------------------------------------------ losses
def test_patch_grid_takes_the_most_object_like_patches():
    images = torch.zeros(2, 3, 32, 32)
    images[:, 0] = 1.0  # red everywhere ...
    images[:, :, 16:, 16:] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # ... except a blue object
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 16:, 16:] = 1.0
    seeds = torch.tensor([3, 4])
    grid = texture_patch_grid(images, masks, seeds, patch_size=5, pool_size=20, grid=4, work_size=32)
    assert grid.shape == images.shape
    torch.testing.assert_close(grid, images[:, :, 31:, 31:].expand_as(grid), atol=1e-4, rtol=0)

    # Draws follow each sample's seed: a sample's grid does not depend on its batch.
    noisy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    soft = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    both = texture_patch_grid(noisy, soft, seeds, work_size=64)
    alone = texture_patch_grid(noisy[1:], soft[1:], seeds[1:], work_size=64)
    torch.testing.assert_close(alone, both[1:])
    assert not torch.allclose(texture_patch_grid(noisy, soft, torch.tensor([5, 6]), work_size=64), both)
    with pytest.raises(ValueError, match="patch_size"):
        texture_patch_grid(noisy, soft, seeds, patch_size=80, work_size=64)


def test_loss_terms_follow_the_authors_definitions():
    features = build_feature_network((3, 8, 15, 22), "random")
    loss = ImageNetCGNLoss(features)
    generator = torch.Generator().manual_seed(0)
    ground_truth = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    composite = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    mask = torch.full((2, 1, 32, 32), 0.5)
    mask[1] = 0.05  # below the area interval by 0.05
    saliency = torch.full((2, 1, 32, 32), 0.25)
    foreground = torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1
    terms = loss(composite, ground_truth, mask, foreground, saliency, ground_truth)
    assert set(terms) == {"l1", "perceptual", "binary", "mask_area", "texture", "background", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    torch.testing.assert_close(terms["l1"], 100 * (composite - ground_truth).abs().mean())
    entropy = lambda p: -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))  # noqa: E731
    torch.testing.assert_close(terms["binary"], 300 * (entropy(torch.tensor(0.5)) + entropy(torch.tensor(0.05))) / 2)
    torch.testing.assert_close(terms["mask_area"], torch.tensor(500 * 0.05 / 2))
    torch.testing.assert_close(terms["background"], torch.tensor(2000 * 0.25))
    assert float(terms["perceptual"]) > 0 and float(terms["texture"]) > 0
    torch.testing.assert_close(terms["total"], sum(v for k, v in terms.items() if k != "total"))
    # The texture term only sees relu2_2 and relu3_3 (w = 0, 5, 5, 0): its network stops at relu3_3.
    assert loss.texture_net.layers == (8, 15) and loss.perceptual_net.layers == (3, 8, 15, 22)
    assert float(background_saliency_loss(torch.zeros(1, 1, 4, 4))) == 0.0
    with pytest.raises(ValueError, match="lacks"):
        ImageNetCGNLoss(build_feature_network((3,), "random"))


# ---------------------------------------------------------------------------------------------- config
def test_config_validation_presets_and_cli():
    paper = get_imagenet_preset("paper")
    authors = get_imagenet_preset("authors")
    assert (authors.lr_texture, paper.lr_texture) == (3e-5, 1e-5)
    assert (authors.perceptual_weights, paper.perceptual_weights) == ((4.0,) * 4, (5.0,) * 4)
    assert (authors.steps, authors.accumulation, authors.batch_size, authors.truncation) == (300, 4000, 1, 1.0)
    assert ImageNetTrainConfig.from_dict(json.loads(json.dumps(authors.to_dict()))) == authors
    for change, message in (
        ({"truncation": 0.0}, "truncation"),
        ({"u2net": "u3net"}, "u2net"),
        ({"amp": "fp16"}, "amp"),  # fp16 training would need loss scaling
        ({"accumulation": 0}, "accumulation"),
        ({"texture_weights": (1, 2)}, "texture_weights"),
        ({"mask_interval": (0.9, 0.1)}, "mask_interval"),
        ({"lr_shape": 0.0}, "lr_shape"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            get_imagenet_preset("authors", **change)
    with pytest.raises(ValueError, match="Valid values"):
        get_imagenet_preset("mine")

    parser = add_train_imagenet_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--run-dir", "r", "--preset", "paper", "--biggan", "b", "--steps", "3", "--set", "mask_interval=[0.2,0.8]"]
    )
    config = config_from_args(args)
    assert (config.steps, config.biggan, config.mask_interval, config.lr_texture) == (3, "b", (0.2, 0.8), 1e-5)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        config_from_args(parser.parse_args(["--run-dir", "r", "--set", "colour=1"]))


def test_missing_imagenet_vgg_is_a_clear_error(biggan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FeatureNetworkError, match="never downloads"):
        ImageNetTrainer(_config(biggan_dir, feature_net="imagenet"), tmp_path / "run")
    with pytest.raises(FeatureNetworkError, match="not found"):
        ImageNetTrainer(_config(biggan_dir, feature_net=str(tmp_path / "vgg16.pth")), tmp_path / "run")


# -------------------------------------------------------------------------------------------- training
def test_one_step_changes_only_the_trainable_mechanisms(biggan_dir, tmp_path):
    trainer = ImageNetTrainer(_config(biggan_dir), tmp_path / "run")
    before = _mechanism_state(trainer.backend)
    u2net_before = {k: v.clone() for k, v in trainer.backend.u2net.state_dict().items()}
    truth_before = {k: v.clone() for k, v in trainer.ground_truth.state_dict().items()}
    values = trainer.train_step()
    assert trainer.step == 1
    expected = {"l1", "perceptual", "binary", "mask_area", "texture", "background", "total"}
    assert {f"loss_{n}" for n in expected} <= set(values)
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    for name in ("f_shape", "f_text", "f_bg"):
        moved = [
            k
            for k, v in _mechanism_state(trainer.backend).items()
            if k.startswith(name) and not torch.equal(v, before[k])
        ]
        assert any(k.endswith("weight_orig") for k in moved), f"{name} did not learn"
    u2net_after, truth_after = trainer.backend.u2net.state_dict(), trainer.ground_truth.state_dict()
    assert all(torch.equal(u2net_after[k], v) for k, v in u2net_before.items())
    assert all(torch.equal(truth_after[k], v) for k, v in truth_before.items())
    assert all(p.grad is None for p in trainer.backend.parameters())  # zeroed after the step


def test_gradients_are_summed_over_accumulation(biggan_dir, tmp_path):
    """Accumulated passes give the sum of the passes' gradients (the authors sum, they do not average)."""
    trainer = ImageNetTrainer(_config(biggan_dir, batch_size=1), tmp_path / "run")
    parameter = trainer.backend.f_text.generator.conv_to_rgb.weight_orig
    trainer.backend.eval()  # no spectral-norm power iterations: every pass sees the same weights
    alone = []
    for accumulation_pass in (0, 1):
        trainer.forward_backward(trainer.sample_seeds(0, accumulation_pass))
        alone.append(parameter.grad.clone())
        parameter.grad = None
    for accumulation_pass in (0, 1):
        trainer.forward_backward(trainer.sample_seeds(0, accumulation_pass))
    assert not torch.allclose(alone[0], alone[1])
    torch.testing.assert_close(parameter.grad, alone[0] + alone[1], rtol=1e-5, atol=1e-8)


def test_run_folder_resume_and_export(biggan_dir, tmp_path):
    config = _config(biggan_dir, batch_size=1, accumulation=1, sample_classes=(2, 5), checkpoint_every=1)
    final = train_cgn_imagenet(config, tmp_path / "straight")
    run = tmp_path / "straight"
    assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step-00000{i}.png" for i in range(3)]
    from PIL import Image

    with Image.open(run / "samples" / "step-000002.png") as sheet:  # 2 rows of 7 tiles of 32 px, 2 px apart
        assert sheet.size == (7 * 34 + 2, 2 * 34 + 2)
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in stats] == [1, 2] and all(r["loss_total"] > 0 for r in stats)
    document = json.loads((run / "config.json").read_text())
    assert document["config"]["steps"] == 2 and "random" in document["resolved"]["feature_net"]

    # Interrupted after one step and resumed: the same weights as the uninterrupted run, bit for bit.
    train_cgn_imagenet(dataclasses.replace(config, steps=1), tmp_path / "resumed")
    resumed = train_cgn_imagenet(config, tmp_path / "resumed")
    if "biggan" not in cfaug.list_backends():  # before the entry point is installed
        cfaug.register_backend("biggan")(BigGANBackend)
    exported = cfaug.load_backend("biggan", weights=final)
    again = cfaug.load_backend("biggan", weights=resumed)
    resumed_state = again.state_dict()
    for key, value in exported.state_dict().items():
        assert torch.equal(resumed_state[key], value), key
    assert exported.truncation == config.export_truncation
    parts = exported.sample([1, 2], [3, 4], [5, 6], seeds=torch.tensor([0, 1]))
    assert torch.isfinite(parts.image).all()

    with pytest.raises(ValueError, match="another recipe"):
        train_cgn_imagenet(dataclasses.replace(config, lr_shape=2e-3), tmp_path / "resumed")
    with pytest.raises(ValueError, match="already holds a run"):
        train_cgn_imagenet(config, tmp_path / "resumed", resume=False)


# ----------------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: ImageNetTrainConfig, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    trainer = ImageNetTrainer(config, Path(out) / "run")
    try:
        # One pass through DDP, as the last pass of a step runs it: the gradients come back averaged over ranks.
        trainer.forward_backward(trainer.sample_seeds(0, 0))
        gradients = {n: p.grad for n, p in trainer.backend.named_parameters() if p.grad is not None}
        save_file(gradients, str(Path(out) / f"gradients{rank}.safetensors"))
        trainer.backend.zero_grad(set_to_none=True)
        trainer.run()
        state = {k: v.contiguous() for k, v in trainer.backend.state_dict().items()}
        save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        trainer.close()


def test_ddp_two_gloo_processes(biggan_dir, tmp_path):
    from safetensors.torch import load_file

    config = _config(biggan_dir, steps=2, batch_size=2, accumulation=2, sample_every=100, checkpoint_every=100)
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    # Both ranks end with the same networks, bit for bit.
    rank0 = load_file(str(tmp_path / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # Rank 0 alone wrote the run folder; its stats hold the losses averaged over the ranks.
    run = tmp_path / "run"
    assert (run / "final.safetensors").is_file() and len((run / "stats.jsonl").read_text().splitlines()) == 2

    # Each rank took half of the pass: the averaged gradient is that of one process with the whole batch.
    distributed = load_file(str(tmp_path / "gradients0.safetensors"))
    single = ImageNetTrainer(config, tmp_path / "single")
    single.forward_backward(single.sample_seeds(0, 0))
    reference = {n: p.grad for n, p in single.backend.named_parameters() if p.grad is not None}
    assert distributed.keys() == reference.keys() and len(reference) > 100
    for name, gradient in reference.items():
        # Float32 summation order differs (the Gram matrices of the texture term, weighted 125,000, show it most:
        # up to 5e-4 of a tensor's largest entry); wrong samples or a wrong average would differ at order 1.
        scale = float(gradient.abs().max())
        torch.testing.assert_close(distributed[name], gradient, rtol=1e-3, atol=2e-3 * scale + 1e-12, msg=name)


def test_cuda_without_an_index_becomes_this_processs_gpu(monkeypatch):
    # torch.cuda.set_device refuses a bare "cuda" (found on a GPU run): the trainer resolves the index first.
    from cfaug.training import imagenet

    chosen = []

    def set_device(device):
        if torch.device(device).index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        chosen.append(torch.device(device))

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    config = ImageNetTrainConfig(device="cuda")
    assert imagenet._resolve_device(config) == torch.device("cuda", 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert imagenet._resolve_device(config) == torch.device("cuda", 1)
    assert imagenet._resolve_device(dataclasses.replace(config, device="cuda:2")) == torch.device("cuda", 2)
    assert imagenet._resolve_device(dataclasses.replace(config, device="cpu")) == torch.device("cpu")
    assert chosen == [torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 2)]
