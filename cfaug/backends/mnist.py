"""The ``mnist`` backend: the CGN authors' 32x32 generator for the MNIST variants.

The architecture is exactly the one of Sauer & Geiger's MNIST CGN (module and parameter names included), so the
authors' released checkpoints load into it without a single missing or unexpected key
(``MnistBackend.import_weights``):

* ``label_emb``: a learnable ``Embedding(num_classes, num_classes)``; every mechanism gets
  ``concat(u, label_emb(y))`` with ``u ~ N(0, I_latent_dim)``;
* ``f_shape``: Linear -> (2*ngf, s, s) -> InstanceNorm -> Up(2*ngf -> ngf) -> InstanceNorm -> Up(ngf -> 1)
  -> InstanceNorm, then a clamp to [1e-4, 1 - 1e-4] (there is no sigmoid);
* ``f_text1`` (foreground) and ``f_text2`` (background): Linear -> (2*ngf, s, s) -> Up(2*ngf -> 2*ngf)
  -> Up(2*ngf -> ngf) -> Conv3x3(ngf -> 3) -> BatchNorm -> Tanh, followed by the "shuffler", a random cyclic
  translation of the texture map (``cyclic_shift``);

where ``Up`` is nearest x2 upsampling, a 3x3 convolution without bias, BatchNorm and LeakyReLU(0.2), and
``s = image_size // 4``.

Generation (the ``Backend`` mechanisms) follows the authors' counterfactual mode: each
mechanism draws its own noise, here from the per-sample streams of ``cfaug.seeding``, and foregrounds and
backgrounds are mapped from the tanh range [-1, 1] to [0, 1]. Training code uses the module path instead
(``MnistBackend.forward_mechanisms``), which takes the noise, labels and shift offsets explicitly.

In eval mode without autograd the mechanisms run a fused copy of the networks, which gives the same images up to
float rounding at several times the speed: BatchNorm folded into the convolutions; "nearest x2 upsampling then
3x3 conv" rewritten as one 2x2 convolution of the low-resolution input that yields the four output phases; the
last texture convolution applied to those phases directly, with the de-interleaving merged into the shuffler's
gather; channels-last layout; and on the CPU, cache-sized micro-batches. The fused weights are rebuilt
whenever a weight changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import check_positive_int, sha256_file, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.checkpoint import Checkpoint, CheckpointError, load_torch_state_dict, state_dict_problems
from cfaug.hub import Weights
from cfaug.seeding import per_sample_normal, per_sample_randint

__all__ = [
    "MASK_CLAMP",
    "MaskEstimator",
    "MnistBackend",
    "cyclic_shift",
    "random_shift_offsets",
]

#: The shape mechanism's output is clamped to [MASK_CLAMP, 1 - MASK_CLAMP], as in the authors' code.
MASK_CLAMP = 1e-4

# Per-sample random streams (see cfaug.seeding). They are part of the output format: changing a number changes
# every image generated from a given seed, so never renumber them.
SHAPE_NOISE_STREAM = 0
TEXTURE_NOISE_STREAM = 1
BACKGROUND_NOISE_STREAM = 2
TEXTURE_SHIFT_STREAM = 3
BACKGROUND_SHIFT_STREAM = 4

#: Micro-batch size of the CPU fast path. The largest activation of a 64-sample chunk (about 10 MiB) stays in the
#: L3 cache: on a 2-core EPYC, batch 256 in chunks of 16 to 128 runs about 25% faster than in one piece, with 64
#: the best at 2 threads (fewer thread barriers than smaller chunks) and as good as any at 1 thread.
CPU_MICRO_BATCH = 64

_LEAKY_SLOPE = 0.2
_INIT_TYPES = ("orthogonal", "normal", "xavier", "kaiming", "default")


# ------------------------------------------------------------------------------------------ architecture
class _Reshape(nn.Module):
    """Reshape ``(B, channels * size * size)`` features to ``(B, channels, size, size)`` maps."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.channels = channels
        self.size = size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.view(features.shape[0], self.channels, self.size, self.size)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}"


def _upsample_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(_LEAKY_SLOPE),
    ]


def _shape_net(in_features: int, ngf: int, init_size: int) -> nn.Sequential:
    # Layer indices are those of the authors' checkpoints (f_shape.0, .4, .5, .9, .10); keep the order.
    return nn.Sequential(
        nn.Linear(in_features, 2 * ngf * init_size**2),
        _Reshape(2 * ngf, init_size),
        nn.InstanceNorm2d(2 * ngf),
        *_upsample_block(2 * ngf, ngf),
        nn.InstanceNorm2d(ngf),
        *_upsample_block(ngf, 1),
        nn.InstanceNorm2d(1),
    )


def _texture_net(in_features: int, ngf: int, init_size: int, channels: int) -> nn.Sequential:
    # Layer indices are those of the authors' checkpoints (f_text1.0, .3, .4, .7, .8, .10, .11); keep the order.
    return nn.Sequential(
        nn.Linear(in_features, 2 * ngf * init_size**2),
        _Reshape(2 * ngf, init_size),
        *_upsample_block(2 * ngf, 2 * ngf),
        *_upsample_block(2 * ngf, ngf),
        nn.Conv2d(ngf, channels, 3, stride=1, padding=1),
        nn.BatchNorm2d(channels),
        nn.Tanh(),
    )


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class MaskEstimator(nn.Module):
    """A small U-Net that segments the object of a real image: ``(B, 3, S, S)`` in [-1, 1] -> mask logits.

    Two pooling levels with skip connections; about 130k parameters at ``width=16``. ``S`` must be divisible by 4.

    Args:
        width: channels of the first level; the deeper levels use 2x and 4x as many.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.enc1 = nn.Sequential(*_conv_bn_relu(3, width), *_conv_bn_relu(width, width))
        self.enc2 = nn.Sequential(*_conv_bn_relu(width, 2 * width), *_conv_bn_relu(2 * width, 2 * width))
        self.bottleneck = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width), *_conv_bn_relu(4 * width, 4 * width))
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4 * width, 2 * width, 3, 1, 1))
        self.dec2 = nn.Sequential(*_conv_bn_relu(4 * width, 2 * width), *_conv_bn_relu(2 * width, 2 * width))
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * width, width, 3, 1, 1))
        self.dec1 = nn.Sequential(*_conv_bn_relu(2 * width, width), *_conv_bn_relu(width, width))
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits, ``(B, 1, S, S)``, of images in [-1, 1], ``(B, 3, S, S)``."""
        skip1 = self.enc1(images)
        skip2 = self.enc2(F.max_pool2d(skip1, 2))
        deep = self.bottleneck(F.max_pool2d(skip2, 2))
        up = self.dec2(torch.cat([self.up2(deep), skip2], dim=1))
        up = self.dec1(torch.cat([self.up1(up), skip1], dim=1))
        return self.head(up)


# -------------------------------------------------------------------------------------------- shuffler
def cyclic_shift(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The authors' texture "shuffler": tile each image 2x2 and crop an ``H x W`` window at per-sample offsets.

    Tiling and cropping is a cyclic translation, so it is computed as one gather:
    ``out[b, :, i, j] = images[b, :, (i + dy_b) % H, (j + dx_b) % W]``. It is differentiable in ``images``.

    Args:
        images: ``(B, C, H, W)``.
        offsets: integer ``(B, 2)`` row and column offsets ``(dy, dx)``; the authors draw each uniformly from
            ``0..H`` (inclusive, so offset 0 is twice as likely as the others, because ``H`` wraps to 0).

    Returns:
        The shifted images, ``(B, C, H, W)``.

    Raises:
        TypeError: ``offsets`` is not an integer tensor.
        ValueError: the shapes do not match.

    Examples:
        >>> x = torch.arange(4.0).view(1, 1, 1, 4)
        >>> cyclic_shift(x, torch.tensor([[0, 1]]))
        tensor([[[[1., 2., 3., 0.]]]])
    """
    if images.dim() != 4:
        raise ValueError(f"`images` should be a (B, C, H, W) tensor, but got shape {tuple(images.shape)}.")
    if not isinstance(offsets, torch.Tensor) or offsets.dtype.is_floating_point or offsets.dtype == torch.bool:
        got = offsets.dtype if isinstance(offsets, torch.Tensor) else type(offsets).__name__
        raise TypeError(f"`offsets` should be an integer tensor, but got {got}.")
    batch, channels, height, width = images.shape
    if offsets.shape != (batch, 2):
        raise ValueError(f"`offsets` should have shape ({batch}, 2), but got {tuple(offsets.shape)}.")
    offsets = offsets.to(device=images.device, dtype=torch.int64)
    rows = (torch.arange(height, device=images.device) + offsets[:, :1]) % height
    cols = (torch.arange(width, device=images.device) + offsets[:, 1:]) % width
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, height * width)
    flat = images.reshape(batch, channels, height * width)
    return flat.gather(2, index.expand(batch, channels, height * width)).view(batch, channels, height, width)


def random_shift_offsets(
    batch_size: int,
    image_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Offsets for ``cyclic_shift`` drawn as the authors do during training: uniform in ``0..image_size``.

    Args:
        batch_size: number of rows.
        image_size: side of the texture maps.
        generator: RNG to draw from; the global torch RNG when ``None``.
        device: where to put the result.

    Returns:
        int64 ``(batch_size, 2)`` offsets ``(dy, dx)``.
    """
    offsets = torch.randint(0, image_size + 1, (batch_size, 2), generator=generator)
    return offsets.to(device) if device is not None else offsets


# ------------------------------------------------------------------------------------------- fast path
# The fused networks run in channels-last layout: oneDNN's 2x2 convolutions are about twice as fast in it on the
# CPU (benchmarks/generation.py), and it is the preferred layout of tensor cores on GPUs.
_FAST_LAYOUT = torch.channels_last


def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the convolution that equals ``norm(conv(x))`` with ``norm`` in eval mode."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _phase_taps(read_offset: Callable[[int, int], tuple[int, int]]) -> torch.Tensor:
    """``taps[p, a, u, k] = 1`` when tap ``k`` (of 3) of output phase ``p`` reads input phase ``a`` at offset ``u``.

    Everything below works on the *phase representation* of a map at twice the resolution of its ``H x W``
    source: four ``(H + 1) x (W + 1)`` maps, one per (row parity, column parity), where the value of high-res
    pixel ``(2i + a, 2j + b)`` sits at ``(i + a, j + b)`` of phase ``(a, b)`` (the first row or column of an odd
    phase and the last of an even one lie outside the image). ``read_offset(p, k)`` gives the phase and offset
    that tap ``k`` of output phase ``p`` reads along one axis.
    """
    taps = torch.zeros(2, 2, 2, 3)
    for phase in range(2):
        for tap in range(3):
            source_phase, offset = read_offset(phase, tap)
            taps[phase, source_phase, offset, tap] = 1.0
    return taps


# Nearest x2 upsampling then a 3x3 convolution: output row 2i + p reads upsampled rows 2i + p - 1 .. 2i + p + 1,
# i.e. source rows (i - 1, i, i) for p = 0 and (i, i, i + 1) for p = 1; as offsets into the source zero-padded by
# one, that is (0, 1, 1) and (1, 1, 2), minus p for the phase representation. There is a single source "phase".
_UPSAMPLE_TAPS = _phase_taps(lambda p, k: (0, (p + k + 1) // 2 - p))[:, :1]
# A 3x3 convolution of a map held in phase representation, producing its output in phase representation (without
# the +1 offset): output row 2i + p reads high-res row R = 2i + p + k - 1, found in phase R % 2 at offset
# ceil(R / 2) - i = (p + k) // 2.
_PHASE_CONV_TAPS = _phase_taps(lambda p, k: ((p + k + 1) % 2, (p + k) // 2))


def _phase_kernel(weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Rewrite a 3x3 kernel ``(out, in, 3, 3)`` as the 2x2 kernel of all output phases, ``(4 * out, n * in, 2, 2)``.

    Output channels are ordered (row phase, column phase, out), input channels (row phase, column phase, in).
    """
    taps = taps.to(weight)
    kernel = torch.einsum("pauk,qbvl,oikl->pqoabiuv", taps, taps, weight)
    out_channels, in_channels = weight.shape[:2]
    return kernel.reshape(4 * out_channels, taps.shape[1] ** 2 * in_channels, 2, 2).contiguous(
        memory_format=_FAST_LAYOUT
    )


def _phase_view(phases: torch.Tensor, channels: int) -> torch.Tensor:
    """View ``(B, 4 * C, H + 1, W + 1)`` phase maps as ``(B, row phase, column phase, C, H + 1, W + 1)``."""
    return phases.unflatten(1, (2, 2, channels))


class _FusedUpsampleConv:
    """Nearest x2 upsampling, a 3x3 convolution (padding 1) and an eval BatchNorm as one 2x2 convolution.

    Each output phase (even/odd row, even/odd column) is a 2x2 convolution of the low-resolution input whose
    kernel sums the 3x3 taps that see the same input pixel, so one convolution with padding 1 computes the phase
    representation of the output. This skips the upsampled copy of the input and does 16 instead of 36
    multiply-adds per input pixel and channel pair.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d):
        weight, bias = _fold_batch_norm(conv, norm)
        self.out_channels = weight.shape[0]
        self.weight = _phase_kernel(weight, _UPSAMPLE_TAPS)
        self.bias = bias.repeat(4).contiguous()

    def phases(self, inputs: torch.Tensor) -> torch.Tensor:
        """The output in phase representation, ``(B, 4 * C_out, H + 1, W + 1)``."""
        return F.conv2d(inputs, self.weight, self.bias, padding=1)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The output at twice the resolution, ``(B, C_out, 2H, 2W)``, channels-last."""
        return _interleave(self.phases(inputs), self.out_channels)


def _interleave(phases: torch.Tensor, channels: int) -> torch.Tensor:
    """Phase representation ``(B, 4 * C, H + 1, W + 1)`` -> the high-res map ``(B, C, 2H, 2W)``, channels-last."""
    batch, _, height, width = phases.shape
    height, width = height - 1, width - 1
    s_batch, s_channel, s_y, s_x = phases.stride()
    # Pixel (2i + a, 2j + b), channel c, is phases[:, (a, b, c), i + a, j + b]: a strided view with dimensions
    # (B, i, a, j, b, C) reads them in channels-last order, and one copy writes the interleaved map.
    view = phases.as_strided(
        (batch, height, 2, width, 2, channels),
        (s_batch, s_y, 2 * channels * s_channel + s_y, s_x, channels * s_channel + s_x, s_channel),
        phases.storage_offset(),
    )
    return view.reshape(batch, 2 * height, 2 * width, channels).permute(0, 3, 1, 2)


class _FusedPhaseConv:
    """A 3x3 convolution (padding 1) with an eval BatchNorm, applied to a map held in phase representation.

    Returns its output in phase representation without the offset, ``(B, 4 * C_out, H, W)``, so the high-res
    input is never interleaved. It costs more multiply-adds than the plain convolution but runs much faster for
    few output channels, where the plain convolution is bound by reading its input.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d, scale: float = 1.0):
        weight, bias = _fold_batch_norm(conv, norm)
        self.in_channels = weight.shape[1]
        self.out_channels = weight.shape[0]
        self.weight = _phase_kernel(scale * weight, _PHASE_CONV_TAPS)
        self.bias = (scale * bias).repeat(4).contiguous()

    def __call__(self, phases: torch.Tensor) -> torch.Tensor:
        """``phases``: ``(B, 4 * C_in, H + 1, W + 1)``; modified in place (its out-of-image border is zeroed)."""
        height, width = phases.shape[-2] - 1, phases.shape[-1] - 1
        view = _phase_view(phases, self.in_channels)
        # The entries outside the image play the role of the convolution's zero padding.
        view[:, 1, :, :, 0, :] = 0
        view[:, 0, :, :, height, :] = 0
        view[:, :, 1, :, :, 0] = 0
        view[:, :, 0, :, :, width] = 0
        return F.conv2d(phases, self.weight, self.bias)


def _shifted_from_phases(phases: torch.Tensor, channels: int, offsets: torch.Tensor) -> torch.Tensor:
    """Interleave ``(B, 4 * C, H, W)`` output phases and apply ``cyclic_shift`` in one gather.

    Returns:
        ``(B, C, 2H, 2W)``, contiguous.
    """
    batch, _, height, width = phases.shape
    device = phases.device
    rows = (torch.arange(2 * height, device=device) + offsets[:, :1]) % (2 * height)
    cols = (torch.arange(2 * width, device=device) + offsets[:, 1:]) % (2 * width)
    # Flat position of (row, col, phase (row % 2, col % 2), channel 0) in channels-last memory (B, H, W, 4 * C).
    pixel = (rows // 2)[:, :, None] * width + (cols // 2)[:, None, :]
    phase = (rows % 2)[:, :, None] * 2 + (cols % 2)[:, None, :]
    position = pixel * (4 * channels) + phase * channels
    index = position[:, None] + torch.arange(channels, device=device).view(1, -1, 1, 1)
    flat = phases.permute(0, 2, 3, 1).reshape(batch, -1)
    return flat.gather(1, index.reshape(batch, -1)).view(batch, channels, 2 * height, 2 * width)


class _FusedLinear:
    """``Linear(concat(u, label_emb(y)))`` as ``u @ W_u^T + table[y]``, the class part precomputed per class."""

    def __init__(self, linear: nn.Linear, embedding: nn.Embedding, latent_dim: int, reshape: _Reshape):
        self.latent_weight_t = linear.weight[:, :latent_dim].t().contiguous()
        self.class_table = torch.addmm(linear.bias, embedding.weight, linear.weight[:, latent_dim:].t())
        self.map_shape = (reshape.channels, reshape.size, reshape.size)

    def __call__(self, latent: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        features = torch.addmm(self.class_table[classes], latent, self.latent_weight_t)
        return features.view(len(features), *self.map_shape).contiguous(memory_format=_FAST_LAYOUT)


class _FusedShapeNet:
    """``clamp(f_shape(concat(u, emb(y))))`` from fused eval-mode weights."""

    def __init__(self, net: nn.Sequential, embedding: nn.Embedding, latent_dim: int):
        self.linear = _FusedLinear(net[0], embedding, latent_dim, net[1])
        self.norm_eps = (net[2].eps, net[7].eps, net[12].eps)
        self.up1 = _FusedUpsampleConv(net[4], net[5])
        self.up2 = _FusedUpsampleConv(net[9], net[10])

    def __call__(self, latent: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        maps = F.instance_norm(self.linear(latent, classes), eps=self.norm_eps[0])
        maps = F.instance_norm(F.leaky_relu_(self.up1(maps), _LEAKY_SLOPE), eps=self.norm_eps[1])
        maps = F.instance_norm(F.leaky_relu_(self.up2(maps), _LEAKY_SLOPE), eps=self.norm_eps[2])
        # One channel: channels-last and contiguous are the same memory, contiguous() only fixes the strides.
        return maps.clamp_(MASK_CLAMP, 1 - MASK_CLAMP).contiguous()


class _FusedTextureNet:
    """``cyclic_shift((f_text(concat(u, emb(y))) + 1) / 2)`` from fused eval-mode weights."""

    def __init__(self, net: nn.Sequential, embedding: nn.Embedding, latent_dim: int):
        self.linear = _FusedLinear(net[0], embedding, latent_dim, net[1])
        self.up1 = _FusedUpsampleConv(net[3], net[4])
        self.up2 = _FusedUpsampleConv(net[7], net[8])
        # (tanh(z) + 1) / 2 == sigmoid(2 z): fold the factor 2 into the last convolution, skip the affine map.
        self.out = _FusedPhaseConv(net[10], net[11], scale=2.0)

    def __call__(self, latent: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        maps = F.leaky_relu_(self.up1(self.linear(latent, classes)), _LEAKY_SLOPE)
        phases = F.leaky_relu_(self.up2.phases(maps), _LEAKY_SLOPE)
        texture_phases = torch.sigmoid_(self.out(phases))
        return _shifted_from_phases(texture_phases, self.out.out_channels, offsets)


# --------------------------------------------------------------------------------------------- backend
class MnistBackend(Backend):
    """The CGN authors' MNIST generator (32x32 RGB, 10 classes) as a cfaug backend.

    Args:
        num_classes: classes every mechanism is conditioned on.
        latent_dim: size of the noise vector ``u`` of each mechanism.
        ngf: generator width; the networks use ``ngf`` and ``2 * ngf`` channels.
        image_size: side of the generated images; divisible by 4.
        mask_estimator: also build a ``MaskEstimator`` for ``estimate_mask`` on real images. It must be
            trained (and marked so with ``mark_mask_estimator_trained``) before it can be used.
        mask_estimator_width: width of the mask estimator.
        class_names: one name per class; ``"0"``, ``"1"``, ... when ``None``.
        init_type: initialisation of a freshly built model, as in the authors' code: ``"orthogonal"``,
            ``"normal"``, ``"xavier"``, ``"kaiming"`` or ``"default"`` (PyTorch's own). Conv/Linear biases start at
            0 and BatchNorm weights at ``N(1, init_gain)``. Irrelevant when weights are loaded afterwards.
        init_gain: scale of the initialisation (the authors use orthogonal 0.1 for Colored MNIST).
        fast_path: in eval mode without autograd, generate with fused weights (same images up to float rounding,
            several times faster). A speed knob, not part of the architecture.
        micro_batch: chunk size of the fast path; ``None`` picks ``CPU_MICRO_BATCH`` on the CPU and no
            chunking on accelerators.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value.

    Examples:
        >>> backend = MnistBackend().eval()
        >>> parts = backend.sample([3, 3], [7, 1], [1, 7], seeds=torch.tensor([0, 1]))
        >>> parts.image.shape, parts.mask.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]))
    """

    name = "mnist"
    # Shipped in cfaug/weights/ (url=None): trained with cfaug.training (our recipe), each with a mask estimator
    # for image-only CounterfactualAugment. Provenance, recipe and metrics are in each file's metadata.
    named_weights: ClassVar[dict[str, Weights]] = {
        "colored_mnist": Weights(
            "colored_mnist",
            "colored_mnist.safetensors",
            "80d9a6dea6a5bb169421cfee0ca72ec9dce8a5e35fce17de86dbc9c59ca91462",
            description="Colored MNIST CGN, our recipe (8,489 it), with mask estimator (test IoU 1.000)",
        ),
        "double_colored_mnist": Weights(
            "double_colored_mnist",
            "double_colored_mnist.safetensors",
            "0de096030a384a3ba3881d36deaa96377464631d3940c0257448a1fa56911de9",
            description="Double-colored MNIST CGN, our recipe (8,062 it), with mask estimator (test IoU 0.945)",
        ),
        "wildlife_mnist": Weights(
            "wildlife_mnist",
            "wildlife_mnist.safetensors",
            "65f3cf66112155a37fcdfde0a23e8cc8de262d7627bb06ee8850327458034696",
            description="Wildlife MNIST CGN (paper textures), our recipe (6,000 it), mask estimator (test IoU 0.932)",
        ),
    }
    default_weights: ClassVar[str | None] = "colored_mnist"

    def __init__(
        self,
        num_classes: int = 10,
        latent_dim: int = 32,
        ngf: int = 32,
        image_size: int = 32,
        mask_estimator: bool = False,
        mask_estimator_width: int = 16,
        class_names: Sequence[str] | None = None,
        *,
        init_type: str = "orthogonal",
        init_gain: float = 0.1,
        fast_path: bool = True,
        micro_batch: int | None = None,
    ):
        check_positive_int(num_classes, "num_classes")
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(ngf, "ngf")
        check_positive_int(image_size, "image_size")
        check_positive_int(mask_estimator_width, "mask_estimator_width")
        if image_size % 4:
            raise ValueError(f"`image_size` should be divisible by 4, but got {image_size}.")
        if not isinstance(mask_estimator, bool):
            raise TypeError(f"`mask_estimator` should be a bool, but got {type(mask_estimator).__name__}.")
        super().__init__(num_classes, image_size, channels=3, class_names=class_names)
        self.latent_dim = latent_dim
        self.ngf = ngf
        self.mask_estimator_width = mask_estimator_width
        self.fast_path = fast_path
        self.micro_batch = micro_batch
        #: where imported weights came from (source file, sha256, the authors' config); saved by ``save``.

        init_size = image_size // 4
        in_features = latent_dim + num_classes
        self.label_emb = nn.Embedding(num_classes, num_classes)
        self.f_shape = _shape_net(in_features, ngf, init_size)
        self.f_text1 = _texture_net(in_features, ngf, init_size, self.channels)
        self.f_text2 = _texture_net(in_features, ngf, init_size, self.channels)
        self.mask_net: MaskEstimator | None = None
        if mask_estimator:
            self.mask_net = MaskEstimator(mask_estimator_width)
            # A buffer, so the flag travels with the weights: random estimator weights are never used silently.
            self.register_buffer("mask_estimator_trained", torch.zeros((), dtype=torch.bool))
        self.init_weights(init_type, init_gain)
        # The generator's modules never change after construction; listing them once keeps the per-call checks of
        # the fast path cheap. (A plain tuple attribute, so nn.Module does not register the modules twice.)
        self._generator_modules: tuple[nn.Module, ...] = tuple(
            module for net in (self.label_emb, self.f_shape, self.f_text1, self.f_text2) for module in net.modules()
        )
        self._fused: tuple[tuple[tuple[int, int], ...], dict[str, Callable[..., torch.Tensor]]] | None = None

    # ---------------------------------------------------------------------------------- configuration
    @property
    def fast_path(self) -> bool:
        """Whether eval-mode, no-grad generation uses the fused networks."""
        return self._fast_path

    @fast_path.setter
    def fast_path(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"`fast_path` should be a bool, but got {type(value).__name__} {value!r}.")
        self._fast_path = value

    @property
    def micro_batch(self) -> int | None:
        """Chunk size of the fast path; ``None`` for automatic (chunks on the CPU, none on accelerators)."""
        return self._micro_batch

    @micro_batch.setter
    def micro_batch(self, value: int | None) -> None:
        self._micro_batch = None if value is None else check_positive_int(value, "micro_batch")

    def init_weights(self, init_type: str = "orthogonal", init_gain: float = 0.1) -> None:
        """(Re-)initialise the generator as the authors' training script does (the mask estimator is untouched).

        Args:
            init_type: ``"orthogonal"``, ``"normal"``, ``"xavier"``, ``"kaiming"`` or ``"default"``.
            init_gain: gain (orthogonal, xavier) or standard deviation (normal) of the weights, and standard
                deviation of the BatchNorm weights around 1.
        """
        verify_str_arg(init_type, "init_type", _INIT_TYPES)
        if isinstance(init_gain, bool) or not isinstance(init_gain, (int, float)) or init_gain <= 0:
            raise ValueError(f"`init_gain` should be a positive number, but got {init_gain!r}.")
        if init_type == "default":
            return
        with torch.no_grad():
            for module in (*self.f_shape, *self.f_text1, *self.f_text2):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    if init_type == "orthogonal":
                        nn.init.orthogonal_(module.weight, gain=init_gain)
                    elif init_type == "normal":
                        nn.init.normal_(module.weight, 0.0, init_gain)
                    elif init_type == "xavier":
                        nn.init.xavier_normal_(module.weight, gain=init_gain)
                    else:
                        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.normal_(module.weight, 1.0, init_gain)
                    nn.init.zeros_(module.bias)

    def arch_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (speed knobs and initialisation excluded)."""
        return {
            "num_classes": self.num_classes,
            "latent_dim": self.latent_dim,
            "ngf": self.ngf,
            "image_size": self.image_size,
            "mask_estimator": self.mask_net is not None,
            "mask_estimator_width": self.mask_estimator_width,
            "class_names": list(self.class_names),
        }

    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters of the three mechanisms and the class embedding (what the authors train)."""
        return [p for module in (self.label_emb, self.f_shape, self.f_text1, self.f_text2) for p in module.parameters()]

    # ------------------------------------------------------------------------------ training-time API
    def mechanism_input(self, latent: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The input of every mechanism network: ``concat(u, label_emb(y))``, ``(B, latent_dim + num_classes)``.

        Raises:
            ValueError: ``latent`` is not ``(B, latent_dim)`` or ``classes`` not ``(B,)``.
        """
        if latent.dim() != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"`latent` should have shape (B, {self.latent_dim}), but got {tuple(latent.shape)}.")
        if classes.shape != latent.shape[:1]:
            raise ValueError(
                f"`classes` should have shape ({latent.shape[0]},) to match `latent`, but got {tuple(classes.shape)}."
            )
        return torch.cat([latent, self.label_emb(classes)], dim=1)

    def forward_mechanisms(
        self,
        u_shape: torch.Tensor,
        u_fg: torch.Tensor,
        u_bg: torch.Tensor,
        y_shape: torch.Tensor,
        y_fg: torch.Tensor,
        y_bg: torch.Tensor,
        *,
        fg_offsets: torch.Tensor | None,
        bg_offsets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the three mechanism networks on explicit noise and labels, as the authors' training does.

        This is the plain module path: autograd works, BatchNorm follows the module's train/eval mode. The
        authors' standard forward passes the same ``u`` and ``y`` to all three; their counterfactual mode passes
        fresh ``u`` and other labels.

        Args:
            u_shape: noise of the shape mechanism, ``(B, latent_dim)``; likewise ``u_fg``, ``u_bg``.
            u_fg: noise of the texture (foreground) mechanism.
            u_bg: noise of the background mechanism.
            y_shape: class indices, ``(B,)``; likewise ``y_fg``, ``y_bg``.
            y_fg: foreground classes.
            y_bg: background classes.
            fg_offsets: ``(B, 2)`` shuffler offsets of the foreground (see ``random_shift_offsets``), or
                ``None`` to skip the shuffle. The authors always shuffle; passing ``None`` must be explicit.
            bg_offsets: the same for the background.

        Returns:
            ``(mask, foreground, background)``: the mask in [1e-4, 1 - 1e-4], ``(B, 1, H, W)``, and the texture
            maps in the tanh range [-1, 1], ``(B, 3, H, W)``. Compose them with ``cfaug.functional.composite``.
        """
        mask = self.f_shape(self.mechanism_input(u_shape, y_shape)).clamp(MASK_CLAMP, 1 - MASK_CLAMP)
        foreground = self.f_text1(self.mechanism_input(u_fg, y_fg))
        background = self.f_text2(self.mechanism_input(u_bg, y_bg))
        if fg_offsets is not None:
            foreground = cyclic_shift(foreground, fg_offsets)
        if bg_offsets is not None:
            background = cyclic_shift(background, bg_offsets)
        return mask, foreground, background

    # Calling the module is the same, so that wrappers such as DistributedDataParallel can run it.
    forward = forward_mechanisms

    # ------------------------------------------------------------------------------------ mechanisms
    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Masks in [1e-4, 1 - 1e-4], ``(B, 1, H, W)``, from fresh per-sample noise (stream 0)."""
        latent = self._noise(seeds, SHAPE_NOISE_STREAM)
        return self._run("shape", latent, classes, None)

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Foregrounds in [0, 1], ``(B, 3, H, W)``: ``f_text1`` and a per-sample cyclic shift (streams 1, 3)."""
        latent = self._noise(seeds, TEXTURE_NOISE_STREAM)
        offsets = per_sample_randint(seeds, TEXTURE_SHIFT_STREAM, self.image_size + 1, (2,))
        return self._run("texture", latent, classes, offsets)

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Backgrounds in [0, 1], ``(B, 3, H, W)``: ``f_text2`` and a per-sample cyclic shift (streams 2, 4)."""
        latent = self._noise(seeds, BACKGROUND_NOISE_STREAM)
        offsets = per_sample_randint(seeds, BACKGROUND_SHIFT_STREAM, self.image_size + 1, (2,))
        return self._run("background", latent, classes, offsets)

    def _noise(self, seeds: torch.Tensor, stream: int) -> torch.Tensor:
        # Drawn on the CPU from the sample's own stream, so the image does not depend on batch or device.
        weight = self.label_emb.weight
        return per_sample_normal(seeds, stream, (self.latent_dim,)).to(device=weight.device, dtype=weight.dtype)

    def _run(
        self, mechanism: str, latent: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None
    ) -> torch.Tensor:
        if offsets is not None:
            offsets = offsets.to(latent.device)
        if self.uses_fast_path():
            fused = self._fused_networks()[mechanism]
            chunk = self._chunk_size(latent.device)
            inputs = (latent, classes) if offsets is None else (latent, classes, offsets)
            outputs = [fused(*(t[i : i + chunk] for t in inputs)) for i in range(0, len(latent), chunk)]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if mechanism == "shape":
            return self.f_shape(self.mechanism_input(latent, classes)).clamp(MASK_CLAMP, 1 - MASK_CLAMP)
        net = self.f_text1 if mechanism == "texture" else self.f_text2
        return (cyclic_shift(net(self.mechanism_input(latent, classes)), offsets) + 1) / 2

    # ------------------------------------------------------------------------------------- fast path
    def uses_fast_path(self) -> bool:
        """Whether the mechanisms would run the fused networks now: ``fast_path`` on, eval mode, no autograd."""
        if not self.fast_path or torch.is_grad_enabled():
            return False
        return not any(module.training for module in self._generator_modules)

    def _chunk_size(self, device: torch.device) -> int:
        if self.micro_batch is not None:
            return self.micro_batch
        # Accelerators want one big launch; CPU caches want small chunks.
        return CPU_MICRO_BATCH if device.type == "cpu" else 2**62

    def _weights_key(self) -> tuple[tuple[int, int], ...]:
        # Every in-place update (optimizer step, load_state_dict, copy_ under no_grad) bumps a tensor's version
        # counter, and .to() or a re-assigned parameter brings new memory, so this key changes whenever the fused
        # weights go stale. Reading the modules' own dicts keeps it current and costs a few microseconds, which
        # matters at batch 1 (Module.parameters() would cost more than the 2x2 convolutions).
        return tuple(
            (tensor.data_ptr(), tensor._version)
            for module in self._generator_modules
            for tensors in (module._parameters, module._buffers)
            for tensor in tensors.values()
            if tensor is not None
        )

    def _fused_networks(self) -> dict[str, Callable[..., torch.Tensor]]:
        key = self._weights_key()
        if self._fused is None or self._fused[0] != key:
            with torch.no_grad():
                networks = {
                    "shape": _FusedShapeNet(self.f_shape, self.label_emb, self.latent_dim),
                    "texture": _FusedTextureNet(self.f_text1, self.label_emb, self.latent_dim),
                    "background": _FusedTextureNet(self.f_text2, self.label_emb, self.latent_dim),
                }
            self._fused = (key, networks)
        return self._fused[1]

    def invalidate_fast_path(self) -> None:
        """Drop the fused weights; needed only after editing ``param.data`` in place, which bypasses versioning."""
        self._fused = None

    def train(self, mode: bool = True) -> MnistBackend:
        """Set train or eval mode (see ``torch.nn.Module.train``); drops the fused weights."""
        self._fused = None
        return super().train(mode)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MnistBackend:
        self._fused = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # The fused weights are a cache: don't ship them to DataLoader workers.
        state = self.__dict__.copy()
        state["_fused"] = None
        return state

    # --------------------------------------------------------------------------------- real images
    @property
    def has_mask_estimator(self) -> bool:
        """True when the backend has a mask estimator and it has been trained."""
        return self.mask_net is not None and bool(self.mask_estimator_trained)

    def mark_mask_estimator_trained(self, trained: bool = True) -> None:
        """Record (in the state dict) that the mask estimator's weights are trained; called by training code.

        Raises:
            RuntimeError: the backend was built without a mask estimator.
        """
        if self.mask_net is None:
            raise RuntimeError("This mnist backend has no mask estimator; build it with mask_estimator=True.")
        self.mask_estimator_trained.fill_(bool(trained))

    def mask_estimator_input(self, images: torch.Tensor) -> torch.Tensor:
        """Real images in [0, 1], ``(B, 1 or 3, H, W)``, as the estimator sees them: RGB, ``image_size``, [-1, 1].

        Raises:
            TypeError: ``images`` is not a floating-point tensor.
            ValueError: ``images`` is not ``(B, 1, H, W)`` or ``(B, 3, H, W)``.
        """
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"`images` should be a floating-point tensor with values in [0, 1], but got {got}.")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"`images` should have shape (B, 1, H, W) or (B, 3, H, W), but got {tuple(images.shape)}.")
        weight = self.label_emb.weight
        images = images.to(device=weight.device, dtype=weight.dtype)
        if images.shape[1] == 1:  # plain MNIST is grayscale
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return images * 2 - 1

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits of the estimator at ``image_size``, with autograd (for training the estimator).

        Args:
            images: real images in [0, 1], ``(B, 1 or 3, H, W)`` of any size.

        Returns:
            Logits, ``(B, 1, image_size, image_size)``.

        Raises:
            RuntimeError: the backend was built without a mask estimator.
        """
        if self.mask_net is None:
            raise RuntimeError("This mnist backend has no mask estimator; build it with mask_estimator=True.")
        return self.mask_net(self.mask_estimator_input(images))

    def estimate_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Estimate object masks of real images in [0, 1], ``(B, 1 or 3, H, W)`` -> ``(B, 1, H, W)``.

        Images of any size are resized to ``image_size`` for the estimator and the mask back to ``H x W``
        (bilinear). Grayscale images are repeated to three channels.

        Raises:
            NotImplementedError: the backend has no mask estimator.
            RuntimeError: the estimator exists but has not been trained.
        """
        if self.mask_net is None:
            raise NotImplementedError(
                f"Backend {self.name!r} (weights {self.weights_name!r}) has no mask estimator for real images; "
                "build it with mask_estimator=True and train it, or load weights that include one."
            )
        if not bool(self.mask_estimator_trained):
            raise RuntimeError(
                f"The mask estimator of backend {self.name!r} (weights {self.weights_name!r}) has not been trained, "
                "so its masks would be noise. Train it (then call mark_mask_estimator_trained()) or load weights "
                "that include a trained estimator."
            )
        with torch.no_grad():
            masks = torch.sigmoid(self.mask_logits(images))
            if masks.shape[-2:] != images.shape[-2:]:
                masks = F.interpolate(
                    masks, size=images.shape[-2:], mode="bilinear", align_corners=False, antialias=True
                ).clamp_(0, 1)
        return masks.to(device=images.device, dtype=images.dtype)

    # --------------------------------------------------------------------------------- persistence
    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides: Any) -> MnistBackend:
        """Build the architecture described by ``checkpoint`` and load its tensors; skips the initialisation."""
        overrides.setdefault("init_type", "default")  # the weights are overwritten anyway
        return super().from_checkpoint(checkpoint, **overrides)

    @classmethod
    def import_weights(
        cls, source: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
    ) -> MnistBackend:
        """Convert one of the CGN authors' MNIST checkpoints (a plain ``state_dict`` ``.pth``) into this backend.

        The file is read with ``torch.load(weights_only=True)``, so nothing is unpickled beyond tensors. The
        architecture comes from the authors' yaml config (``MODEL.LATENT_SZ``, ``MODEL.NGF``,
        ``MODEL.N_CLASSES``). The authors trained on images in [-1, 1]; the backend maps its tanh outputs to
        [0, 1], so the weights are used unchanged.

        Args:
            source: the ``.pth`` file, e.g. ``mnists/experiments/cgn_colored_MNIST/weights/ckp.pth``.
            config: the authors' ``cfg.yaml``. When ``None``, the first existing of ``<stem>.cfg.yaml`` and
                ``cfg.yaml`` beside the file and ``cfg.yaml`` one folder up (the authors' layout) is used.

        Returns:
            The backend in eval mode without gradients. ``weights_name`` says where it came from and
            ``provenance`` records the source file, its sha256 and the authors' config; ``save`` stores it.

        Raises:
            FileNotFoundError: ``source`` or the config file does not exist.
            CheckpointError: ``source`` is not a state dict of tensors, or its keys or shapes do not match.
            ValueError: the config lacks a needed key or is not a yaml mapping.

        Examples:
            >>> backend = MnistBackend.import_weights("colored_mnist.pth")  # doctest: +SKIP
            >>> backend.save("colored_mnist.safetensors", recipe={"source": backend.provenance})  # doctest: +SKIP
        """
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(
                f"`source` should be the authors' .pth checkpoint, but {str(source)!r} does not exist."
            )
        config_path = _find_authors_config(source, config)
        authors_config = _read_authors_config(config_path)
        model_config = authors_config["MODEL"]
        state_dict = load_torch_state_dict(source, "the authors' MNIST CGN state dict")

        model = cls(
            num_classes=_config_int(model_config, "N_CLASSES", config_path),
            latent_dim=_config_int(model_config, "LATENT_SZ", config_path),
            ngf=_config_int(model_config, "NGF", config_path),
            image_size=32,  # the authors' MNIST CGN is fixed at 32x32 (no key in their config)
            init_type="default",
        )
        _check_state_dict(state_dict, model.state_dict(), source)
        model.load_state_dict(state_dict, strict=True)

        digest = sha256_file(source)
        train_config = authors_config.get("TRAIN")
        dataset = train_config.get("DATASET") if isinstance(train_config, dict) else None
        model.weights_name = f"imported:{source.name}"
        model.weights_sha256 = digest
        model.provenance = {
            "format": "CGN authors' MNIST state dict (autonomousvision/counterfactual_generative_networks)",
            "source": source.name,
            "sha256": digest,
            "config_file": config_path.name,
            "dataset": dataset,
            "authors_config": authors_config,
        }
        return model.eval().requires_grad_(False)

    def extra_repr(self) -> str:
        """Architecture summary shown by ``print(backend)``."""
        return (
            f"{super().extra_repr()}, latent_dim={self.latent_dim}, ngf={self.ngf}, "
            f"mask_estimator={self.mask_net is not None}, fast_path={self.fast_path}"
        )


# ------------------------------------------------------------------------------- import helpers
def _find_authors_config(source: Path, config: str | os.PathLike[str] | None) -> Path:
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"`config` should be the authors' cfg.yaml, but {str(path)!r} does not exist.")
        return path
    candidates = [
        source.with_name(f"{source.stem}.cfg.yaml"),
        source.with_name("cfg.yaml"),
        source.parent.parent / "cfg.yaml",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No config found for {str(source)!r}; looked for {[str(p) for p in candidates]}. Pass the authors' "
        "cfg.yaml (it gives MODEL.LATENT_SZ, MODEL.NGF and MODEL.N_CLASSES) as `config`."
    )


def _read_authors_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ValueError(f"`config` {str(path)!r} is not valid yaml: {error}") from error
    if not isinstance(loaded, dict) or not isinstance(loaded.get("MODEL"), dict):
        raise ValueError(
            f"`config` {str(path)!r} should be the authors' yaml with a MODEL section, but got "
            f"{type(loaded).__name__} with keys {sorted(loaded) if isinstance(loaded, dict) else []}."
        )
    return loaded


def _config_int(section: Mapping[str, Any], key: str, path: Path) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`config` {str(path)!r} should set MODEL.{key} to a positive integer, but got {value!r}.")
    return value


def _check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: Path) -> None:
    problems = state_dict_problems(state, expected)
    if not problems:
        return
    raise CheckpointError(
        f"{str(source)!r} does not match the authors' MNIST CGN architecture of the given config: "
        + "; ".join(problems)
        + ". Is it an MNIST CGN checkpoint (keys label_emb, f_shape, f_text1, f_text2) with its own cfg.yaml?"
    )
