"""Stateless image operations on counterfactual components.

``composite`` is the only place in cfaug where the CGN composition ``m*f + (1-m)*b`` is written.
"""

from __future__ import annotations

import torch

__all__ = ["composite"]


def composite(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Compose an image from its mechanisms: ``mask * foreground + (1 - mask) * background``.

    Args:
        mask: object mask in [0, 1], ``(B, 1, H, W)`` (broadcast over channels) or ``(B, C, H, W)``.
        foreground: the texture image, ``(B, C, H, W)``.
        background: the background image, ``(B, C, H, W)``.

    Returns:
        The composite, ``(B, C, H, W)``, in the value range of ``foreground`` and ``background``.

    Raises:
        ValueError: the shapes do not line up.

    Examples:
        >>> m = torch.tensor([[[[1.0, 0.0]]]])
        >>> composite(m, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))[0, :, 0]
        tensor([[1., 0.],
                [1., 0.],
                [1., 0.]])
    """
    if foreground.shape != background.shape:
        raise ValueError(
            f"`foreground` and `background` should have the same shape, but got {tuple(foreground.shape)} "
            f"and {tuple(background.shape)}."
        )
    same_layout = mask.dim() == foreground.dim() and mask.shape[0] == foreground.shape[0]
    if not same_layout or mask.shape[-2:] != foreground.shape[-2:]:
        raise ValueError(
            f"`mask` should be (B, 1, H, W) matching the foreground {tuple(foreground.shape)}, "
            f"but got {tuple(mask.shape)}."
        )
    # lerp computes b + m * (f - b): the same blend with one multiply fewer per pixel.
    return torch.lerp(background, foreground, mask)
