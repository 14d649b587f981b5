"""Losses of the ImageNet CGN (cgn-reference sections 3.4 and 3.5).

The ImageNet CGN is not trained adversarially: a frozen BigGAN draws a pseudo ground truth ``x_gt`` from the same
noise and class as the mechanisms, and six terms, averaged over the batch and summed, shape the mechanisms:

==================  =======================================================================  ================
term                what it computes                                                          authors' weight
==================  =======================================================================  ================
``l1``              ``mean|x_gen - x_gt|``                                                   100
``perceptual``      Gram style loss of ``x_gen`` against ``x_gt`` on relu1_2..relu4_3          w = (4, 4, 4, 4)
``binary``          binary entropy (base 2) of the mask                                       300
``mask_area``       ``max(0, 0.1 - area) + max(0, area - 0.9)`` per image                      500
``texture``         Gram style loss of ``f`` against the patch grid of ``x_gt`` (relu2_2, 3_3)  w = (0, 5, 5, 0)
``background``      mean U2-Net saliency of the background image                              2000
==================  =======================================================================  ================

A style weight ``w`` of a layer counts ``w**2 * 5000`` (the authors' scaling; ``losses.style_layer_weights``). The
feature network sees the raw [-1, 1] images without normalisation, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cfaug.models.feature_network import VGG16_LAYER_INDICES, FeatureNetwork
from cfaug.seeding import per_sample_randint
from cfaug.training import losses

__all__ = ["PATCH_STREAM", "ImageNetCGNLoss", "background_saliency_loss", "texture_patch_grid"]

#: The per-sample stream (see ``cfaug.seeding``) the patch-grid draws come from. Renumbering it changes training.
PATCH_STREAM = 7


def texture_patch_grid(
    images: torch.Tensor,
    masks: torch.Tensor,
    seeds: torch.Tensor,
    *,
    patch_size: int = 15,
    pool_size: int = 100,
    grid: int = 6,
    work_size: int = 128,
    stream: int = PATCH_STREAM,
) -> torch.Tensor:
    """The texture target of the ImageNet CGN: a grid of the most object-like patches of each image.

    Per image: resize image and mask to ``work_size`` (bicubic); score every ``patch_size`` window (stride 1, no
    padding) by its mean mask value; keep the ``pool_size`` best windows; draw ``grid * grid`` of them uniformly
    with replacement; tile the image's windows row by row into a ``grid x grid`` mosaic; resize the mosaic to the
    image size (bicubic). The texture mechanism learns to fill the frame with the object's texture, not the scene's.

    The draws come from each sample's own stream, so the grid of a sample does not depend on its batch. Ties
    between equally scored windows are broken by position (a stable sort), deterministically.

    Args:
        images: ``(B, C, H, W)``, e.g. the pseudo ground truth in [-1, 1].
        masks: ``(B, 1, H', W')`` object masks in [0, 1].
        seeds: per-sample seeds, ``(B,)`` int64.
        patch_size: side of a window at ``work_size``.
        pool_size: how many of the best windows are kept to draw from.
        grid: the mosaic has ``grid x grid`` windows.
        work_size: side the image and mask are resized to before cutting windows.
        stream: the seeds' stream the window draws come from.

    Returns:
        The mosaics, ``(B, C, H, W)``, without gradient.

    Raises:
        ValueError: the shapes do not line up, or a window does not fit ``work_size``.

    Examples:
        >>> grid = texture_patch_grid(torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
        >>> grid.shape
        torch.Size([2, 3, 32, 32])
    """
    if images.dim() != 4 or masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[0] != images.shape[0]:
        raise ValueError(
            f"`images` should be (B, C, H, W) and `masks` (B, 1, H, W), but got {tuple(images.shape)} and "
            f"{tuple(masks.shape)}."
        )
    if seeds.shape != (images.shape[0],):
        raise ValueError(f"`seeds` should have shape ({images.shape[0]},), but got {tuple(seeds.shape)}.")
    for name, value in (("patch_size", patch_size), ("pool_size", pool_size), ("grid", grid), ("work_size", work_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` should be a positive integer, but got {value!r}.")
    if patch_size > work_size:
        raise ValueError(f"`patch_size` ({patch_size}) should be at most `work_size` ({work_size}).")
    batch, channels, height, width = images.shape
    with torch.no_grad():
        size = (work_size, work_size)
        work_masks = F.interpolate(masks.float(), size, mode="bicubic", align_corners=False)
        work_images = F.interpolate(images.float(), size, mode="bicubic", align_corners=False)
        # The mean of every window, as a stride-1 average pool: (B, 1, n, n) with n = work_size - patch_size + 1.
        scores = F.avg_pool2d(work_masks, patch_size, stride=1).flatten(1)
        windows_per_row = work_size - patch_size + 1
        pool = min(pool_size, scores.shape[1])
        best = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :pool]
        picks = per_sample_randint(seeds, stream, pool, (grid * grid,)).to(best.device)
        chosen = best.gather(1, picks)  # (B, grid^2) window indices, row-major over the window positions
        offsets = torch.arange(patch_size, device=best.device)
        rows = (chosen // windows_per_row)[..., None] + offsets  # (B, grid^2, P)
        cols = (chosen % windows_per_row)[..., None] + offsets
        sample = torch.arange(batch, device=best.device)[:, None, None, None]
        # Advanced indices around a slice: the result puts the indexed dimensions first, (B, grid^2, P, P, C).
        patches = work_images[sample, :, rows[:, :, :, None], cols[:, :, None, :]]
        mosaic = patches.reshape(batch, grid, grid, patch_size, patch_size, channels)
        mosaic = mosaic.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid * patch_size, grid * patch_size)
        mosaic = F.interpolate(mosaic, (height, width), mode="bicubic", align_corners=False)
    return mosaic.to(images.dtype)


def background_saliency_loss(saliency: torch.Tensor) -> torch.Tensor:
    """Mean saliency of the background images, per image then over the batch: salient objects are penalised.

    Args:
        saliency: the U2-Net's output on the background images, ``(B, 1, H, W)`` in (0, 1).
    """
    if saliency.dim() != 4:
        raise ValueError(f"`saliency` should be (B, 1, H, W), but got shape {tuple(saliency.shape)}.")
    return saliency.flatten(1).mean(dim=1).clamp_min(0).mean()


class ImageNetCGNLoss(nn.Module):
    """The six weighted terms of the ImageNet CGN and their sum.

    Args:
        features: a frozen VGG16 feature network returning (at least) every layer with a nonzero weight; its
            layers must be a subset of ``VGG16_LAYER_INDICES``. Built once and shared by both style terms.
        lambda_l1: weight of ``mean|x_gen - x_gt|``.
        perceptual_weights: per-layer ``w`` of the reconstruction style loss (relu1_2, relu2_2, relu3_3, relu4_3).
        lambda_binary: weight of the mask's binary entropy.
        lambda_mask: weight of the mask-area interval loss.
        mask_interval: ``(low, high)`` area interval.
        texture_weights: per-layer ``w`` of the texture style loss.
        lambda_background: weight of the background saliency.
    """

    #: The keyword arguments after ``features``: ``ImageNetTrainConfig`` has fields of the same names.
    SETTINGS: tuple[str, ...] = (
        "lambda_l1",
        "perceptual_weights",
        "lambda_binary",
        "lambda_mask",
        "mask_interval",
        "texture_weights",
        "lambda_background",
    )

    def __init__(
        self,
        features: FeatureNetwork,
        *,
        lambda_l1: float = 100.0,
        perceptual_weights: Sequence[float] = (4.0, 4.0, 4.0, 4.0),
        lambda_binary: float = 300.0,
        lambda_mask: float = 500.0,
        mask_interval: tuple[float, float] = (0.1, 0.9),
        texture_weights: Sequence[float] = (0.0, 5.0, 5.0, 0.0),
        lambda_background: float = 2000.0,
    ):
        super().__init__()
        self.lambda_l1 = float(lambda_l1)
        self.lambda_binary = float(lambda_binary)
        self.lambda_mask = float(lambda_mask)
        self.mask_interval = (float(mask_interval[0]), float(mask_interval[1]))
        self.lambda_background = float(lambda_background)
        self.perceptual = self._layer_plan(perceptual_weights, "perceptual_weights")
        self.texture = self._layer_plan(texture_weights, "texture_weights")
        needed = sorted({index for plan in (self.perceptual, self.texture) for index, _ in plan})
        missing = [index for index in needed if index not in features.layers]
        if missing:
            raise ValueError(
                f"`features` should return the VGG16 layers {needed}, but it lacks {missing} "
                f"(it has {features.layers})."
            )
        self.description = features.description
        # One truncated copy per term, sharing the weights' values: the texture term stops at relu3_3 instead of
        # running the deepest layer the reconstruction term needs.
        state = features.features.state_dict()
        self.perceptual_net = self._subnetwork(self.perceptual, state, features.description)
        self.texture_net = self._subnetwork(self.texture, state, features.description)

    @staticmethod
    def _layer_plan(weights: Sequence[float], name: str) -> tuple[tuple[int, float], ...]:
        weights = tuple(float(w) for w in weights)
        if len(weights) != len(VGG16_LAYER_INDICES) or any(w < 0 for w in weights):
            raise ValueError(f"`{name}` should be 4 non-negative numbers, but got {weights!r}.")
        effective = losses.style_layer_weights(weights)
        return tuple((i, w) for i, w in zip(VGG16_LAYER_INDICES, effective, strict=True) if w > 0)

    @staticmethod
    def _subnetwork(
        plan: tuple[tuple[int, float], ...], state: dict[str, torch.Tensor], description: str
    ) -> FeatureNetwork | None:
        if not plan:
            return None
        return FeatureNetwork([index for index, _ in plan], state, description)

    def train(self, mode: bool = True) -> ImageNetCGNLoss:
        """The feature networks are frozen measuring devices: they stay in eval mode."""
        return super().train(False)

    def forward(
        self,
        composite: torch.Tensor,
        ground_truth: torch.Tensor,
        mask: torch.Tensor,
        foreground: torch.Tensor,
        background_saliency: torch.Tensor,
        patch_grid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """All terms, weighted, plus ``"total"``; each a scalar averaged over the batch.

        Args:
            composite: ``x_gen = m * f + (1 - m) * b`` in [-1, 1], ``(B, 3, H, W)``.
            ground_truth: the frozen BigGAN's ``x_gt`` (treated as a constant).
            mask: ``m`` in (0, 1), ``(B, 1, H, W)``.
            foreground: ``f`` in [-1, 1].
            background_saliency: ``U2Net(b)``, ``(B, 1, H, W)``.
            patch_grid: ``texture_patch_grid(x_gt, m)`` (a constant).
        """
        ground_truth = ground_truth.detach()
        terms = {
            "l1": self.lambda_l1 * F.l1_loss(composite, ground_truth),
            "binary": self.lambda_binary * losses.binary_entropy_loss(mask),
            "mask_area": self.lambda_mask * losses.mask_area_interval_loss(mask, *self.mask_interval),
            "background": self.lambda_background * background_saliency_loss(background_saliency),
        }
        zero = composite.new_zeros(())
        terms["perceptual"] = self._style(self.perceptual_net, self.perceptual, composite, ground_truth, zero)
        terms["texture"] = self._style(self.texture_net, self.texture, foreground, patch_grid.detach(), zero)
        terms["total"] = sum(terms.values(), zero)
        return terms

    @staticmethod
    def _style(
        network: FeatureNetwork | None,
        plan: tuple[tuple[int, float], ...],
        inputs: torch.Tensor,
        target: torch.Tensor,
        zero: torch.Tensor,
    ) -> torch.Tensor:
        if network is None:
            return zero
        with torch.no_grad():
            target_features = network(target)
        fake = [f.float() for f in network(inputs)]
        real = [f.float() for f in target_features]
        # Gram matrices in float32 even under autocast: in bf16 their sums of squares lose most of their digits.
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            return losses.style_loss(fake, real, [weight for _, weight in plan])
