"""An example cfaug backend plugin: striped ellipses on gradient backgrounds, drawn in code.

Installing this package (``pip install -e examples/plugin_package``) declares the backend ``stripes`` in the
``cfaug.backends`` entry-point group; ``cfaug.load_backend("stripes")`` then imports this module and builds
:class:`StripesBackend`. Nothing in cfaug itself refers to it.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from cfaug import Backend
from cfaug.seeding import per_sample_normal

__all__ = ["StripesBackend"]

# Per-sample random streams of each mechanism (see cfaug.seeding). They fix which noise a seed gives, so
# changing a number changes every image generated from a given seed.
_SHAPE_STREAM, _TEXTURE_STREAM, _BACKGROUND_STREAM = 0, 1, 2


def _palette(num_classes: int, offset: float, brightness: float) -> torch.Tensor:
    """One RGB colour per class, spread around the colour wheel, ``(num_classes, 3)`` in [0, 1]."""
    hue = torch.arange(num_classes, dtype=torch.float32)[:, None] / num_classes + offset
    phases = torch.tensor([0.0, 1.0 / 3.0, 2.0 / 3.0])
    return brightness * (0.5 + 0.5 * torch.cos(2 * math.pi * (hue + phases)))


class StripesBackend(Backend):
    """Striped ellipses on vertical gradients: a backend whose mechanisms are drawn in code, without weights.

    For class ``k`` of ``num_classes``, the shape mechanism draws an ellipse whose aspect ratio grows with ``k``,
    the texture mechanism stripes at ``180 * k / num_classes`` degrees in colour ``k``, and the background
    mechanism a vertical gradient in a darker colour ``k``. Each sample's seed moves and resizes the ellipse,
    shifts the stripes and changes the gradient's brightness.

    Args:
        num_classes: classes of every mechanism.
        image_size: side of the square images.
        stripe_period: width of one dark and one bright stripe, in pixels.

    Examples:
        >>> backend = StripesBackend()
        >>> backend.sample([0, 3], [1, 1], [2, 0], seeds=torch.tensor([5, 6])).image.shape
        torch.Size([2, 3, 32, 32])
    """

    name = "stripes"

    def __init__(self, num_classes: int = 4, image_size: int = 32, stripe_period: float = 6.0) -> None:
        super().__init__(num_classes, image_size, channels=3, class_names=[f"stripes{k}" for k in range(num_classes)])
        if isinstance(stripe_period, bool) or not isinstance(stripe_period, (int, float)) or stripe_period <= 0:
            raise ValueError(f"`stripe_period` should be a positive number, but got {stripe_period!r}.")
        self.stripe_period = float(stripe_period)
        # Buffers, so that .to(device) moves them and the backend generates on the device it is on.
        self.register_buffer("foreground_colours", _palette(num_classes, 0.0, 1.0))
        self.register_buffer("background_colours", _palette(num_classes, 0.5, 0.6))
        coords = torch.linspace(-1.0, 1.0, image_size)
        self.register_buffer("ys", coords[:, None].expand(image_size, image_size).clone(), persistent=False)
        self.register_buffer("xs", coords[None, :].expand(image_size, image_size).clone(), persistent=False)

    def _noise(self, seeds: torch.Tensor, stream: int, size: int) -> torch.Tensor:
        return per_sample_normal(seeds, stream, (size,)).to(self.device)

    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Soft-edged ellipses, ``(B, 1, H, W)``; the aspect ratio runs from 1 (class 0) to 2 (last class)."""
        jitter = 0.1 * self._noise(seeds, _SHAPE_STREAM, 3)
        aspect = 1.0 + classes.float() / max(1, self.num_classes - 1)
        x = (self.xs - jitter[:, 0, None, None]) * aspect[:, None, None]
        y = (self.ys - jitter[:, 1, None, None]) / aspect[:, None, None]
        radius = 0.6 + jitter[:, 2, None, None]
        # A steep sigmoid of the distance to the edge: about one pixel of antialiasing.
        return torch.sigmoid((radius - torch.sqrt(x**2 + y**2)) * self.image_size)[:, None]

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Stripes in the class's colour, ``(B, 3, H, W)``, at an angle set by the class and a phase set by the seed."""
        angle = (math.pi * classes.float() / self.num_classes)[:, None, None]
        phase = math.pi * self._noise(seeds, _TEXTURE_STREAM, 1)[:, :, None]
        along = (self.xs * torch.cos(angle) + self.ys * torch.sin(angle)) * (self.image_size / 2)
        stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * along / self.stripe_period + phase)
        return self.foreground_colours[classes][:, :, None, None] * (0.35 + 0.65 * stripes[:, None])

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Vertical gradients in the class's background colour, ``(B, 3, H, W)``, brightness set by the seed."""
        brightness = 1.0 + 0.15 * self._noise(seeds, _BACKGROUND_STREAM, 1)[:, :, None, None]
        ramp = 1.0 - 0.5 * (self.ys + 1.0) / 2.0
        return (self.background_colours[classes][:, :, None, None] * ramp * brightness).clamp(0.0, 1.0)

    def arch_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this backend (stored in checkpoints written by ``save``)."""
        return {"num_classes": self.num_classes, "image_size": self.image_size, "stripe_period": self.stripe_period}

    @classmethod
    def from_pretrained(
        cls,
        weights: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> StripesBackend:
        """Build the backend; with ``weights=None`` (nothing to load: it is drawn in code) or from a checkpoint."""
        if weights is not None:
            return super().from_pretrained(weights, device=device, progress=progress, **overrides)
        backend = cls(**overrides)
        backend.weights_name = "procedural"
        return backend.to(device or "cpu").eval().requires_grad_(False)
