"""The networks of the CGN authors' 32x32 MNIST generator, the mask estimator and the texture shuffler.

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

``cfaug.backends.mnist.MnistBackend`` assembles these networks into a cfaug backend; the fused inference copy of
them is in ``cfaug.models.mnist_cgn_fused``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MASK_CLAMP",
    "MASK_ESTIMATOR_ARCHS",
    "LiteMaskEstimator",
    "MaskEstimator",
    "build_mask_estimator",
    "cyclic_shift",
    "random_shift_offsets",
    "shape_net",
    "texture_net",
]

#: The shape mechanism's output is clamped to [MASK_CLAMP, 1 - MASK_CLAMP], as in the authors' code.
MASK_CLAMP = 1e-4

_LEAKY_SLOPE = 0.2


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


def shape_net(in_features: int, ngf: int, init_size: int) -> nn.Sequential:
    """The shape mechanism ``f_shape``: ``(B, in_features)`` -> ``(B, 1, 4 * init_size, 4 * init_size)`` maps.

    Args:
        in_features: size of the input, ``latent_dim + num_classes``.
        ngf: generator width.
        init_size: side of the first feature map (a quarter of the image side).

    Returns:
        The network, unclamped (the mechanisms clamp it to ``[MASK_CLAMP, 1 - MASK_CLAMP]``).
    """
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


def texture_net(in_features: int, ngf: int, init_size: int, channels: int) -> nn.Sequential:
    """A texture mechanism (``f_text1``, ``f_text2``): ``(B, in_features)`` -> tanh maps ``(B, channels, S, S)``.

    Args:
        in_features: size of the input, ``latent_dim + num_classes``.
        ngf: generator width.
        init_size: side of the first feature map (a quarter of the image side ``S``).
        channels: output channels.

    Returns:
        The network, before the shuffler (``cyclic_shift``).
    """
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


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
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


class LiteMaskEstimator(nn.Module):
    """A segmenter that never convolves at full resolution: ``(B, 3, S, S)`` in [-1, 1] -> mask logits.

    ``MaskEstimator`` runs five of its 3x3 convolutions at full resolution, where an image has the most pixels:
    about 30M multiply-adds for one 32x32 image, too slow for a per-sample transform. This network first folds
    each 2x2 block of pixels into channels (``pixel_unshuffle``, lossless), works at half and quarter resolution,
    comes back up by a 1x1 convolution and a pixel shuffle whose output is *added* to the half-resolution features,
    and predicts each 2x2 block of the mask from the features of its cell (a 1x1 convolution to 4 channels, then
    ``pixel_shuffle``). At ``width=16`` that is about 3.2M multiply-adds and 32k parameters, with a receptive
    field of 30 pixels, enough to see a whole digit. ``S`` must be divisible by 4.

    Args:
        width: channels at half resolution; quarter resolution uses twice as many.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.fine = nn.Sequential(*_conv_bn_relu(12, width), *_conv_bn_relu(width, width))  # half resolution
        self.coarse = nn.Sequential(  # quarter resolution
            *_conv_bn_relu(width, 2 * width, stride=2),
            *_conv_bn_relu(2 * width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
        )
        self.up = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 1), nn.PixelShuffle(2))
        self.dec = nn.Sequential(*_conv_bn_relu(width, width))
        self.head = nn.Sequential(nn.Conv2d(width, 4, 1), nn.PixelShuffle(2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits, ``(B, 1, S, S)``, of images in [-1, 1], ``(B, 3, S, S)``."""
        fine = self.fine(F.pixel_unshuffle(images, 2))
        up = self.dec(self.up(self.coarse(fine)) + fine)
        return self.head(up)


#: The mask estimator architectures by name: ``"lite"`` (the default, fast per image) and ``"unet"`` (cfaug's
#: first estimator; checkpoints written before the choice existed hold one).
MASK_ESTIMATOR_ARCHS = {"lite": LiteMaskEstimator, "unet": MaskEstimator}


def build_mask_estimator(arch: str, width: int) -> nn.Module:
    """A fresh mask estimator of architecture ``arch`` (a key of ``MASK_ESTIMATOR_ARCHS``) and ``width``.

    Raises:
        ValueError: ``arch`` is not a known architecture.
    """
    if arch not in MASK_ESTIMATOR_ARCHS:
        raise ValueError(f"`arch` should be one of {sorted(MASK_ESTIMATOR_ARCHS)}, but got {arch!r}.")
    return MASK_ESTIMATOR_ARCHS[arch](width)


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
