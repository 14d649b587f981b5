"""The label-conditioned discriminators of the MNIST CGN recipe (notes section 2.3).

Both take images in [-1, 1] (the range the authors train in) and integer labels, and return one score per image.
"""

from __future__ import annotations

import torch
from torch import nn

from cfaug._utils import verify_str_arg

__all__ = ["DISCRIMINATORS", "DiscConv", "DiscLin", "build_discriminator"]


class DiscLin(nn.Module):
    """MLP discriminator: the flattened image concatenated with a label embedding, three hidden layers.

    ``Linear(3*32*32 + 10 -> 512) -> LReLU -> Linear(512) -> Dropout(0.4) -> LReLU -> Linear(512) -> Dropout(0.4)
    -> LReLU -> Linear(1)``, PyTorch's default initialisation (2,104,421 parameters for 32x32 RGB, ``ndf=512``).

    Shape:
        images ``(B, C, H, W)``, labels ``(B,)`` -> scores ``(B,)``.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, channels: int = 3, ndf: int = 512):
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, num_classes)
        self.model = nn.Sequential(
            nn.Linear(channels * image_size * image_size + num_classes, ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, ndf),
            nn.Dropout(0.4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, ndf),
            nn.Dropout(0.4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, 1),
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score ``images`` given their ``labels``."""
        inputs = torch.cat([images.flatten(1), self.label_embedding(labels)], dim=1)
        return self.model(inputs).squeeze(1)


def _conv_block(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=0, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    ]


class DiscConv(nn.Module):
    """Convolutional discriminator: the label enters as a constant fourth image plane.

    Four unpadded conv blocks (k3s1, k3s1, k4s2, k4s2; ``ndf, 2 ndf, 4 ndf, 4 ndf`` channels; no bias, BN,
    LReLU 0.2), average pooling over the 5x5 map, a 1x1 conv to one score. Weights N(0, 0.02), BN weights
    N(1, 0.02) (413,642 parameters for 32x32 RGB, ``ndf=32``).

    Shape:
        images ``(B, C, 32, 32)``, labels ``(B,)`` -> scores ``(B,)``.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, channels: int = 3, ndf: int = 32):
        super().__init__()
        if image_size != 32:
            raise ValueError(f"DiscConv is laid out for 32x32 images, but `image_size` is {image_size}.")
        self.label_embedding = nn.Embedding(num_classes, 1)
        self.model = nn.Sequential(
            *_conv_block(channels + 1, ndf, 3, 1),
            *_conv_block(ndf, ndf * 2, 3, 1),
            *_conv_block(ndf * 2, ndf * 4, 4, 2),
            *_conv_block(ndf * 4, ndf * 4, 4, 2),
            nn.AvgPool2d(3),
            nn.Conv2d(ndf * 4, 1, kernel_size=1, bias=False),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score ``images`` given their ``labels``."""
        plane = self.label_embedding(labels)[:, :, None, None].expand(-1, 1, *images.shape[-2:])
        return self.model(torch.cat([images, plane], dim=1)).flatten(1).squeeze(1)


DISCRIMINATORS: dict[str, type[nn.Module]] = {"linear": DiscLin, "conv": DiscConv}


def build_discriminator(
    kind: str, num_classes: int = 10, image_size: int = 32, channels: int = 3, ndf: int | None = None
) -> nn.Module:
    """Build the discriminator named ``kind`` (``"linear"`` or ``"conv"``); ``ndf`` defaults to 512 / 32."""
    kind = verify_str_arg(kind, "disc", DISCRIMINATORS)
    width = ndf if ndf is not None else {"linear": 512, "conv": 32}[kind]
    return DISCRIMINATORS[kind](num_classes=num_classes, image_size=image_size, channels=channels, ndf=width)
