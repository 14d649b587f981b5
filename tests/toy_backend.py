"""A tiny, fast backend for testing transform and dataset logic without a trained model.

Masks are discs whose radius depends on the shape class, foregrounds are the class colour times a noise
pattern, backgrounds are a second palette with a gradient. Everything depends only on (class, seed), like
a real backend, and the module has parameters so that device handling is exercised.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cfaug.backends.base import Backend
from cfaug.seeding import per_sample_normal


class ToyBackend(Backend):
    """Disc masks, coloured noise foregrounds, gradient backgrounds; optional real-image mask estimator."""

    name = "toy"

    def __init__(self, num_classes: int = 4, image_size: int = 8, channels: int = 3, mask_estimator: bool = True):
        super().__init__(num_classes, image_size, channels, class_names=[f"class{i}" for i in range(num_classes)])
        self.mask_estimator = mask_estimator
        generator = torch.Generator().manual_seed(1234)
        self.palette = nn.Parameter(torch.rand(num_classes, channels, generator=generator))
        self.background_palette = nn.Parameter(torch.rand(num_classes, channels, generator=generator))
        coords = torch.linspace(-1, 1, image_size)
        self.register_buffer("radius2", coords[None, :] ** 2 + coords[:, None] ** 2, persistent=False)

    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        jitter = per_sample_normal(seeds, 0, (1,)).to(self.device) * 0.05
        radius = 0.3 + 0.6 * (classes.float() + 1) / self.num_classes + jitter[:, 0]
        return (self.radius2[None, None] < radius[:, None, None, None] ** 2).float()

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        noise = per_sample_normal(seeds, 1, (1, self.image_size, self.image_size)).to(self.device)
        return (self.palette[classes][:, :, None, None] * (0.8 + 0.2 * noise.tanh())).clamp(0, 1)

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        noise = per_sample_normal(seeds, 2, (1, 1, 1)).to(self.device)
        ramp = torch.linspace(0.5, 1.0, self.image_size, device=self.device).expand(self.image_size, -1)[None, None]
        return (self.background_palette[classes][:, :, None, None] * ramp + 0.05 * noise).clamp(0, 1)

    @property
    def has_mask_estimator(self) -> bool:
        return self.mask_estimator

    def estimate_mask(self, images: torch.Tensor) -> torch.Tensor:
        if not self.mask_estimator:
            return super().estimate_mask(images)
        # The centre disc of the image: enough to test that the real shape is kept and re-textured.
        return (self.radius2 < 0.5).float().expand(images.shape[0], 1, -1, -1).to(images.device)

    def arch_config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "mask_estimator": self.mask_estimator,
        }

    @classmethod
    def from_pretrained(cls, weights: Any = None, device: Any = None, progress: bool = True, **kwargs: Any):
        if weights is not None:
            return super().from_pretrained(weights, device=device, progress=progress, **kwargs)
        model = cls(**kwargs)
        model.weights_name = "toy-random"
        return model.to(device or "cpu").eval().requires_grad_(False)
