"""Losses of the MNIST CGN recipe (notes section 2.4) and our mask regularisers.

The authors' generator loss is ``LSGAN + lambda_mask * binary entropy + Gram style loss``. The two mask
regularisers ``mask_area_interval_loss`` and ``mask_border_loss`` are ours: the authors use the interval
loss only for the ImageNet CGN, and the border penalty follows the MNIST reproduction study (Bagad et al.).
All losses return scalar tensors averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "binary_entropy_loss",
    "gram_matrix",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "mask_area_interval_loss",
    "mask_border_loss",
    "mask_spread",
    "mask_spread_loss",
    "style_layer_weights",
    "style_loss",
]

#: The authors scale each perceptual weight ``w`` of the config to ``w**2 * 5000`` for the Gram term.
STYLE_WEIGHT_SCALE = 5000.0


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the generator: ``mean((D(x_gen) - 1)^2)``."""
    return F.mse_loss(fake_scores, torch.ones_like(fake_scores))


def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of the discriminator: ``(mean((D(x_real) - 1)^2) + mean(D(x_gen)^2)) / 2``."""
    return 0.5 * (
        F.mse_loss(real_scores, torch.ones_like(real_scores)) + F.mse_loss(fake_scores, torch.zeros_like(fake_scores))
    )


def binary_entropy_loss(mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean binary entropy (base 2) of mask pixels: 1 for ``m = 0.5``, 0 for a binary mask.

    Args:
        mask: masks in [0, 1], any shape.
        eps: masks are clamped to ``[eps, 1 - eps]`` so that exact 0 and 1 give a finite loss and gradient.

    Examples:
        >>> binary_entropy_loss(torch.full((1, 1, 2, 2), 0.5))
        tensor(1.)
    """
    m = mask.clamp(eps, 1 - eps)
    return (-(m * torch.log2(m)) - (1 - m) * torch.log2(1 - m)).mean()


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrices ``F F^T / (C H W)`` of features ``(B, C, H, W)`` -> ``(B, C, C)``."""
    if features.dim() != 4:
        raise ValueError(f"`features` should be (B, C, H, W), but got shape {tuple(features.shape)}.")
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def style_layer_weights(perceptual_weights: Sequence[float]) -> tuple[float, ...]:
    """The effective per-layer Gram weights ``w**2 * 5000`` of the authors' ``LAMBDAS.PERC`` values."""
    return tuple(float(w) ** 2 * STYLE_WEIGHT_SCALE for w in perceptual_weights)


def style_loss(
    fake_features: Sequence[torch.Tensor], real_features: Sequence[torch.Tensor], layer_weights: Sequence[float]
) -> torch.Tensor:
    """Gram-matrix style loss ``sum_l weight_l * L1(G(fake_l), G(real_l))``, Grams compared sample by sample.

    The pairs are unpaired in the CGN recipe (generated image ``k`` against an unrelated real image ``k``), so the
    loss matches texture statistics of the data distribution, not of particular images. Real features are treated
    as constants.

    Args:
        fake_features: one ``(B, C_l, H_l, W_l)`` tensor per layer, from generated images.
        real_features: the same layers from real images.
        layer_weights: effective weight per layer (see ``style_layer_weights``).
    """
    if not len(fake_features) == len(real_features) == len(layer_weights):
        raise ValueError(
            "`fake_features`, `real_features` and `layer_weights` should have one length, but got "
            f"{len(fake_features)}, {len(real_features)} and {len(layer_weights)}."
        )
    total = fake_features[0].new_zeros(())
    for fake, real, weight in zip(fake_features, real_features, layer_weights, strict=True):
        total = total + weight * F.l1_loss(gram_matrix(fake), gram_matrix(real.detach()))
    return total


def _mask_area(mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 4:
        raise ValueError(f"`mask` should be (B, 1, H, W), but got shape {tuple(mask.shape)}.")
    return mask.mean(dim=(1, 2, 3))


def mask_area_interval_loss(mask: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Penalise masks whose area (mean value) leaves ``[low, high]``: ``mean(max(0, low - a) + max(0, a - high))``.

    Computed per image, as the ImageNet CGN's mask-size loss, so one collapsing class cannot hide behind the others.

    Examples:
        >>> mask_area_interval_loss(torch.full((2, 1, 4, 4), 0.2), 0.1, 0.4)
        tensor(0.)
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"The mask area interval should satisfy 0 <= low <= high <= 1, but got [{low}, {high}].")
    area = _mask_area(mask)
    return (F.relu(low - area) + F.relu(area - high)).mean()


def border_band(size: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A ``(size, size)`` float map that is 1 within ``width`` pixels of the image border, 0 inside."""
    if not 0 < 2 * width <= size:
        raise ValueError(f"`width` should be in [1, {size // 2}] for {size}-pixel images, but got {width}.")
    band = torch.ones(size, size, device=device)
    band[width : size - width, width : size - width] = 0
    return band


def mask_border_loss(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Mean mask value in the band of ``width`` pixels along the image border.

    MNIST digits never touch the border of the 32x32 frame, so mask mass there is a symptom of the collapse the
    reproduction study observed (a dark disc in a white frame, i.e. an inverted mask).
    """
    band = border_band(mask.shape[-1], width, mask.device)
    return (mask * band).sum(dim=(-2, -1)).mean() / band.sum()


def _squared_radius(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    coords = torch.linspace(-1, 1, size, device=device)
    return coords[None, :] ** 2 + coords[:, None] ** 2


def mask_spread(mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image spread of the mask mass: ``sum(m * r^2) / sum(m)``, ``r`` the distance from the image centre.

    ``r`` is 1 at the middle of each edge and sqrt(2) in the corners. A mask concentrated in the centre has a small
    spread; a frame or a full mask with a hole a large one. Real MNIST digit masks (32x32): median 0.26, 99th
    percentile 0.39, maximum 0.47; a 26x26 box with a digit-shaped hole: about 0.52.

    Returns:
        ``(B,)`` spreads.
    """
    if mask.dim() != 4:
        raise ValueError(f"`mask` should be (B, 1, H, W), but got shape {tuple(mask.shape)}.")
    radius2 = _squared_radius(mask.shape[-1], mask.device)
    return (mask * radius2).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + eps)


def mask_spread_loss(mask: torch.Tensor, max_spread: float) -> torch.Tensor:
    """Penalise masks whose mass lies far from the image centre: ``mean(max(0, spread - max_spread))``.

    Against the inverted-mask failure of the MNIST CGN: the mask covers the background and the digit is drawn by
    the background mechanism through a hole. The border penalty alone turns this into a box with a hole, which
    stays inside the border band; its mass still lies far out (spread about 0.52 against at most 0.47 for real
    digits), so this hinge pushes it towards the centre, where only a digit-shaped mask can make a real-looking
    image.
    """
    if not 0.0 < max_spread:
        raise ValueError(f"`max_spread` should be positive, but got {max_spread}.")
    return F.relu(mask_spread(mask) - max_spread).mean()
