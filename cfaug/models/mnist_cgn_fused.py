"""The fused, no-autograd inference copy of the MNIST CGN networks (``cfaug.models.mnist_cgn``).

It gives the same images up to float rounding at several times the speed: BatchNorm folded into the convolutions;
"nearest x2 upsampling then 3x3 conv" rewritten as one 2x2 convolution of the low-resolution input that yields the
four output phases; the last texture convolution applied to those phases directly, with the de-interleaving merged
into the shuffler's gather; channels-last layout. The networks are read once, at construction: rebuild the fused
copy whenever a weight changes (``cfaug.backends.mnist.MnistBackend`` does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cfaug.models.mnist_cgn import _LEAKY_SLOPE, MASK_CLAMP, LiteMaskEstimator, MaskEstimator, _Reshape

__all__ = ["FusedLiteMaskEstimator", "FusedMaskEstimator", "FusedShapeNet", "FusedTextureNet", "fuse_mask_estimator"]

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

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.out_channels = weight.shape[0]
        self.weight = _phase_kernel(weight, _UPSAMPLE_TAPS)
        self.bias = bias.repeat(4).contiguous()

    @classmethod
    def folded(cls, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> _FusedUpsampleConv:
        """The fused copy of upsampling, ``conv`` and the eval BatchNorm ``norm``."""
        return cls(*_fold_batch_norm(conv, norm))

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


class FusedShapeNet:
    """``clamp(f_shape(concat(u, emb(y))))`` from fused eval-mode weights."""

    def __init__(self, net: nn.Sequential, embedding: nn.Embedding, latent_dim: int):
        self.linear = _FusedLinear(net[0], embedding, latent_dim, net[1])
        self.norm_eps = (net[2].eps, net[7].eps, net[12].eps)
        self.up1 = _FusedUpsampleConv.folded(net[4], net[5])
        self.up2 = _FusedUpsampleConv.folded(net[9], net[10])

    def __call__(self, latent: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Clamped shape maps ``(B, 1, S, S)`` of noise ``(B, latent_dim)`` and int64 classes ``(B,)``."""
        maps = F.instance_norm(self.linear(latent, classes), eps=self.norm_eps[0])
        maps = F.instance_norm(F.leaky_relu_(self.up1(maps), _LEAKY_SLOPE), eps=self.norm_eps[1])
        maps = F.instance_norm(F.leaky_relu_(self.up2(maps), _LEAKY_SLOPE), eps=self.norm_eps[2])
        # One channel: channels-last and contiguous are the same memory, contiguous() only fixes the strides.
        return maps.clamp_(MASK_CLAMP, 1 - MASK_CLAMP).contiguous()


class FusedTextureNet:
    """``cyclic_shift((f_text(concat(u, emb(y))) + 1) / 2)`` from fused eval-mode weights."""

    def __init__(self, net: nn.Sequential, embedding: nn.Embedding, latent_dim: int):
        self.linear = _FusedLinear(net[0], embedding, latent_dim, net[1])
        self.up1 = _FusedUpsampleConv.folded(net[3], net[4])
        self.up2 = _FusedUpsampleConv.folded(net[7], net[8])
        # (tanh(z) + 1) / 2 == sigmoid(2 z): fold the factor 2 into the last convolution, skip the affine map.
        self.out = _FusedPhaseConv(net[10], net[11], scale=2.0)

    def __call__(self, latent: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Shuffled textures in [0, 1], ``(B, C, S, S)``, of noise, int64 classes and ``(B, 2)`` shift offsets."""
        maps = F.leaky_relu_(self.up1(self.linear(latent, classes)), _LEAKY_SLOPE)
        phases = F.leaky_relu_(self.up2.phases(maps), _LEAKY_SLOPE)
        texture_phases = torch.sigmoid_(self.out(phases))
        return _shifted_from_phases(texture_phases, self.out.out_channels, offsets)


def _folded_stack(stack: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Weights and biases of a ``(Conv2d, BatchNorm2d, ReLU) * n`` stack with each BatchNorm folded in."""
    folded = [_fold_batch_norm(stack[i], stack[i + 1]) for i in range(0, len(stack), 3)]
    return [(weight.contiguous(memory_format=_FAST_LAYOUT), bias) for weight, bias in folded]


def _conv_relu_stack(
    maps: torch.Tensor, stack: list[tuple[torch.Tensor, torch.Tensor]], first: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Run a folded stack (``_folded_stack``), its first convolution replaced by ``first``."""
    for weight, bias in (first, *stack[1:]):
        maps = F.conv2d(maps, weight, bias, padding=1).relu_()
    return maps


class FusedMaskEstimator:
    """``MaskEstimator`` logits from fused eval-mode weights, with the module's outputs up to float rounding.

    BatchNorm is folded into the convolutions and ReLU runs in place; each "nearest x2 upsampling then 3x3
    convolution" of the decoder is one 2x2 convolution that yields the four output phases (``_FusedUpsampleConv``:
    no upsampled copy, 16 instead of 36 multiply-adds per input pixel and channel pair); a grayscale input is read
    by the first kernel summed over its three input channels instead of being repeated; channels-last layout.
    The network is read once, at construction: rebuild the fused copy whenever a weight changes.
    """

    def __init__(self, net: MaskEstimator):
        self.enc1 = _folded_stack(net.enc1)
        self.enc2 = _folded_stack(net.enc2)
        self.bottleneck = _folded_stack(net.bottleneck)
        self.dec2 = _folded_stack(net.dec2)
        self.dec1 = _folded_stack(net.dec1)
        weight, bias = self.enc1[0]
        # The module sees a grayscale image repeated to RGB: the same as one channel through the summed kernel.
        self.gray_first = (weight.sum(1, keepdim=True).contiguous(memory_format=_FAST_LAYOUT), bias)
        self.up2 = _FusedUpsampleConv(net.up2[1].weight, net.up2[1].bias)
        self.up1 = _FusedUpsampleConv(net.up1[1].weight, net.up1[1].bias)
        self.head = (net.head.weight.detach().clone(memory_format=_FAST_LAYOUT), net.head.bias.detach().clone())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, 1, S, S)`` of images in [-1, 1], ``(B, 3, S, S)``, or ``(B, 1, S, S)`` for grayscale."""
        images = images.contiguous(memory_format=_FAST_LAYOUT)
        skip1 = _conv_relu_stack(images, self.enc1, self.gray_first if images.shape[1] == 1 else self.enc1[0])
        skip2 = _conv_relu_stack(F.max_pool2d(skip1, 2), self.enc2, self.enc2[0])
        deep = _conv_relu_stack(F.max_pool2d(skip2, 2), self.bottleneck, self.bottleneck[0])
        maps = _conv_relu_stack(torch.cat([self.up2(deep), skip2], dim=1), self.dec2, self.dec2[0])
        maps = _conv_relu_stack(torch.cat([self.up1(maps), skip1], dim=1), self.dec1, self.dec1[0])
        # One output channel: channels-last and contiguous are the same memory, contiguous() only fixes the strides.
        return F.conv2d(maps, *self.head).contiguous()


class FusedLiteMaskEstimator:
    """``LiteMaskEstimator`` logits from fused eval-mode weights, with the module's outputs up to float rounding.

    BatchNorm is folded into the convolutions, ReLU and the skip addition run in place, and the layout is
    channels-last. A grayscale image is read without being repeated: the first kernel, summed over the three
    colour channels of each unshuffled pixel, sees the unshuffled grayscale image. The network is read once, at
    construction: rebuild the fused copy whenever a weight changes.
    """

    def __init__(self, net: LiteMaskEstimator):
        self.fine = _folded_stack(net.fine)
        weight, bias = self.fine[0]
        # Unshuffled RGB channels are ordered (colour, row, column) of each 2x2 block: sum over the colour.
        gray = weight.unflatten(1, (3, 4)).sum(1)
        self.gray_first = (gray.contiguous(memory_format=_FAST_LAYOUT), bias)
        self.coarse = _folded_stack(net.coarse)
        self.up = _plain_conv(net.up[0])
        self.dec = _folded_stack(net.dec)
        self.head = _plain_conv(net.head[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(B, 1, S, S)`` of images in [-1, 1], ``(B, 3, S, S)``, or ``(B, 1, S, S)`` for grayscale."""
        cells = F.pixel_unshuffle(images, 2).contiguous(memory_format=_FAST_LAYOUT)
        fine = _conv_relu_stack(cells, self.fine, self.gray_first if images.shape[1] == 1 else self.fine[0])
        coarse = F.conv2d(fine, *self.coarse[0], stride=2, padding=1).relu_()
        coarse = _conv_relu_stack(coarse, self.coarse[1:], self.coarse[1])
        up = F.pixel_shuffle(F.conv2d(coarse, *self.up), 2).add_(fine)
        up = _conv_relu_stack(up, self.dec, self.dec[0])
        # One output channel: channels-last and contiguous are the same memory, contiguous() only fixes the strides.
        return F.pixel_shuffle(F.conv2d(up, *self.head), 2).contiguous()


def _plain_conv(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight (channels-last) and bias, detached copies."""
    return conv.weight.detach().clone(memory_format=_FAST_LAYOUT), conv.bias.detach().clone()


def fuse_mask_estimator(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fused inference copy of a mask estimator of either architecture (``MASK_ESTIMATOR_ARCHS``).

    Raises:
        TypeError: ``net`` is neither a ``MaskEstimator`` nor a ``LiteMaskEstimator``.
    """
    if isinstance(net, LiteMaskEstimator):
        return FusedLiteMaskEstimator(net)
    if isinstance(net, MaskEstimator):
        return FusedMaskEstimator(net)
    raise TypeError(f"`net` should be a MaskEstimator or a LiteMaskEstimator, but got {type(net).__name__}.")
