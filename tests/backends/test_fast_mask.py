"""The fused mask estimators: ``MnistBackend.estimate_mask`` on the fast path gives the module path's masks.

Every test runs on both architectures (``"lite"``, the default, and ``"unet"``, cfaug's first estimator).

Tolerance: the masks (sigmoid of the logits, in [0, 1]) agree within ``MASK_ATOL = 1e-5``; folding BatchNorm and
summing the phase kernels only reorders float additions (measured: under 2e-6 on these random networks).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from cfaug.backends.mnist import MnistBackend
from cfaug.models.mnist_cgn import LiteMaskEstimator, MaskEstimator
from cfaug.models.mnist_cgn_fused import FusedLiteMaskEstimator, FusedMaskEstimator, fuse_mask_estimator

MASK_ATOL = 1e-5
ARCHS = ("lite", "unet")


def estimator_backend(seed: int = 0, arch: str = "lite", **kwargs) -> MnistBackend:
    """A small backend with a random, 'trained' estimator whose BatchNorm statistics are not the identity."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    backend = MnistBackend(
        ngf=4, latent_dim=4, mask_estimator=True, mask_estimator_width=4, mask_estimator_arch=arch, **kwargs
    )
    with torch.no_grad():
        for module in backend.mask_net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.3)
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    torch.set_rng_state(state)
    backend.mark_mask_estimator_trained()
    return backend.eval()


def module_masks(backend: MnistBackend, images: torch.Tensor) -> torch.Tensor:
    backend.fast_path = False
    try:
        return backend.estimate_mask(images)
    finally:
        backend.fast_path = True


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 32, 32), (1, 1, 32, 32), (5, 3, 28, 28), (3, 1, 28, 28), (2, 3, 64, 48), (9, 3, 32, 32)],
    ids=["rgb", "gray", "resized", "gray-resized", "upscaled", "chunked"],
)
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_masks_equal_module_masks(shape, arch):
    backend = estimator_backend(arch=arch, micro_batch=4)  # the 9-image batch runs in three chunks
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    fast = backend.estimate_mask(images)
    assert backend._fused_mask is not None, "the fused estimator ran"
    assert fast.shape == (shape[0], 1, *shape[-2:])
    torch.testing.assert_close(fast, module_masks(backend, images), rtol=0, atol=MASK_ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_estimator_logits_equal_the_module(arch):
    backend = estimator_backend(arch=arch)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fused = fuse_mask_estimator(backend.mask_net)
        assert isinstance(fused, FusedLiteMaskEstimator if arch == "lite" else FusedMaskEstimator)
        expected = backend.mask_net(images)
        torch.testing.assert_close(fused(images), expected, rtol=0, atol=1e-4)
        # A grayscale image is read by the summed first kernel instead of being repeated.
        gray = images[:, :1]
        torch.testing.assert_close(fused(gray), backend.mask_net(gray.expand(-1, 3, -1, -1)), rtol=0, atol=1e-4)


def test_module_path_in_training_mode(monkeypatch):
    backend = estimator_backend()
    images = torch.rand(4, 3, 32, 32)

    def forbidden(images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the fused estimator must not run in training mode")

    monkeypatch.setattr(backend, "_fused_mask_logits", forbidden)
    backend.mask_net.train()  # batch statistics: only the module path computes them
    assert backend.estimate_mask(images).shape == (4, 1, 32, 32)


def test_fuse_refuses_other_modules():
    with pytest.raises(TypeError, match="`net` should be a MaskEstimator or a LiteMaskEstimator, but got Conv2d"):
        fuse_mask_estimator(nn.Conv2d(3, 1, 1))


def test_architectures():
    assert isinstance(MnistBackend(mask_estimator=True).mask_net, LiteMaskEstimator)
    unet = MnistBackend(mask_estimator=True, mask_estimator_arch="unet")
    assert isinstance(unet.mask_net, MaskEstimator)
    assert unet.arch_config()["mask_estimator_arch"] == "unet"
    with pytest.raises(ValueError, match="mask_estimator_arch"):
        MnistBackend(mask_estimator=True, mask_estimator_arch="resnet")


def _modify_in_place(backend: MnistBackend) -> None:
    net = backend.mask_net
    first, norm, up = (net.fine[0], net.dec[1], net.up[0]) if backend.mask_estimator_arch == "lite" else (
        net.enc1[0], net.dec1[1], net.up2[1])  # fmt: skip
    with torch.no_grad():
        first.weight.mul_(1.5)
        norm.running_mean.add_(0.3)
        up.bias.add_(0.2)


def _modify_by_load_state_dict(backend: MnistBackend) -> None:
    backend.load_state_dict(estimator_backend(seed=1, arch=backend.mask_estimator_arch).state_dict())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("modify", [_modify_in_place, _modify_by_load_state_dict])
def test_fused_estimator_follows_weight_changes(modify, arch):
    backend = estimator_backend(arch=arch)
    images = torch.rand(3, 3, 32, 32)
    before = backend.estimate_mask(images)
    modify(backend)
    after = backend.estimate_mask(images)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, module_masks(backend, images), rtol=0, atol=MASK_ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_estimator_is_a_cache(arch):
    backend = estimator_backend(arch=arch)
    images = torch.rand(2, 3, 32, 32)
    expected = backend.estimate_mask(images)
    clone = pickle.loads(pickle.dumps(backend))
    assert clone._fused_mask is None, "the fused copy is not pickled to DataLoader workers"
    assert torch.equal(clone.estimate_mask(images), expected)
    twin = copy.deepcopy(backend)
    with torch.no_grad():
        head = twin.mask_net.head
        (head[0] if arch == "lite" else head).bias.add_(1.0)
    assert not torch.equal(twin.estimate_mask(images), expected)
    assert torch.equal(backend.estimate_mask(images), expected)
    backend.double()
    assert backend._fused_mask is None
    masks = backend.estimate_mask(images.double())
    assert masks.dtype == torch.float64
    torch.testing.assert_close(masks, expected.double(), rtol=0, atol=MASK_ATOL)


def test_shipped_estimator_fast_path():
    backend = MnistBackend.from_pretrained("colored_mnist")
    assert backend.mask_estimator_arch == "lite"
    digits = backend.sample([1, 4, 7, 8], [2, 3, 5, 0], [6, 9, 1, 4], seeds=torch.arange(4)).image
    for images in (digits, digits.mean(1, keepdim=True), torch.rand(2, 3, 28, 28)):
        torch.testing.assert_close(backend.estimate_mask(images), module_masks(backend, images), rtol=0, atol=MASK_ATOL)


def test_checkpoint_without_architecture_loads_the_unet(tmp_path):
    """Checkpoints written before the lite estimator existed name no architecture: theirs is the U-Net."""
    from cfaug.checkpoint import load_checkpoint, save_checkpoint

    backend = estimator_backend(arch="unet")
    backend.save(tmp_path / "new.safetensors")
    checkpoint = load_checkpoint(tmp_path / "new.safetensors")
    meta = {**checkpoint.meta, "arch": {k: v for k, v in checkpoint.meta["arch"].items() if k != "mask_estimator_arch"}}
    old = save_checkpoint(tmp_path / "old.safetensors", checkpoint.state_dict, meta)
    loaded = MnistBackend.from_pretrained(old)
    assert loaded.mask_estimator_arch == "unet" and isinstance(loaded.mask_net, MaskEstimator)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.estimate_mask(images), backend.estimate_mask(images), rtol=0, atol=MASK_ATOL)
