"""``MaskClassifier``: the MNIST shape teacher's network, a small digit classifier on binary object masks.

It is trained by ``cfaug.training.shape_teacher.train_shape_teacher`` (which also re-exports it).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskClassifier"]


class MaskClassifier(nn.Module):
    """A LeNet-style CNN from a mask ``(B, 1, 32, 32)`` in [0, 1] to class logits (about 0.28M parameters).

    Args:
        num_classes: number of classes.
        width: channels of the first convolution; the second uses twice as many.
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(2 * width * 8 * 8, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of masks ``(B, 1, 32, 32)`` in [0, 1]."""
        return self.head(self.features(masks * 2 - 1))
