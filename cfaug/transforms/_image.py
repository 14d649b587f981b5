"""Image kinds the transforms accept, and the round trip to a ``(B, C, H, W)`` tensor and back.

Output matches input: a PIL image comes back as a PIL image of the same mode (RGB when grayscale was
converted), a ``uint8`` tensor as ``uint8``, a float tensor as the same float dtype, a ``tv_tensors.Image`` as
a ``tv_tensors.Image``, on the same device and at the same size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

#: PIL modes whose pixels are colour values in [0, 255] with 1 or 3 channels.
PIL_MODES = {"L": 1, "RGB": 3}
#: Float images may overshoot [0, 1] by this much (e.g. after bilinear or bicubic resizing) without an error.
RANGE_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ImageKind:
    """What came in, so that what goes out is the same kind of image."""

    is_pil: bool
    batched: bool
    dtype: torch.dtype
    tv_image: bool

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


def is_image_leaf(value: Any) -> bool:
    """Whether ``value`` is something the transforms treat as an image (PIL, ``tv_tensors.Image``, tensor)."""
    return isinstance(value, (PIL.Image.Image, tv_tensors.Image)) or (
        isinstance(value, torch.Tensor) and not isinstance(value, tv_tensors.TVTensor)
    )


def inspect_image(inpt: Any, arg: str = "image") -> ImageKind:
    """Check an image and describe it.

    Raises:
        TypeError: not a PIL image or tensor, or a tensor of a dtype other than uint8 or float.
        ValueError: a PIL mode other than L or RGB, or a tensor that is not ``(C, H, W)`` or ``(B, C, H, W)``.
    """
    if isinstance(inpt, PIL.Image.Image):
        if inpt.mode not in PIL_MODES:
            raise ValueError(
                f"`{arg}` should be a PIL image of mode 'L' or 'RGB', but got mode {inpt.mode!r}. "
                "Convert it first, e.g. image.convert('RGB')."
            )
        check_not_empty(inpt.height, inpt.width, arg)
        return ImageKind(is_pil=True, batched=False, dtype=torch.uint8, tv_image=False)
    if isinstance(inpt, torch.Tensor):
        if inpt.ndim not in (3, 4):
            raise ValueError(
                f"`{arg}` should be a tensor of shape (C, H, W) or (B, C, H, W), but got shape {tuple(inpt.shape)}."
            )
        check_not_empty(inpt.shape[-2], inpt.shape[-1], arg)
        if inpt.dtype != torch.uint8 and not inpt.dtype.is_floating_point:
            raise TypeError(
                f"`{arg}` should be a uint8 tensor or a float tensor in [0, 1], but got dtype {inpt.dtype}. "
                "Convert it with v2.ToDtype(torch.float32, scale=True)."
            )
        return ImageKind(
            is_pil=False, batched=inpt.ndim == 4, dtype=inpt.dtype, tv_image=isinstance(inpt, tv_tensors.Image)
        )
    raise TypeError(f"`{arg}` should be a PIL image, a tensor or a tv_tensors.Image, but got {type(inpt).__name__}.")


def check_not_empty(height: int, width: int, arg: str = "image") -> None:
    """Raise a ValueError for an image without pixels (a height or width of 0): it has nothing to replace."""
    if height < 1 or width < 1:
        raise ValueError(f"`{arg}` should be at least 1x1 pixels, but got an empty image of {height}x{width}.")


def to_batch(inpt: Any, kind: ImageKind) -> torch.Tensor:
    """The image as a plain ``(B, C, H, W)`` tensor of its own dtype; a view of the input tensor, never a copy."""
    if kind.is_pil:
        # The pixels of TF.pil_to_tensor, read straight from PIL's buffer: per-sample calls on small images
        # spend more time in conversions than in arithmetic, and this halves that of the input.
        width, height = inpt.size
        pixels = torch.frombuffer(bytearray(inpt.tobytes()), dtype=torch.uint8)
        return pixels.view(1, height, width, PIL_MODES[inpt.mode]).permute(0, 3, 1, 2).contiguous()
    batch = inpt.as_subclass(torch.Tensor) if kind.tv_image else inpt
    return batch if kind.batched else batch.unsqueeze(0)


def from_batch(batch: torch.Tensor, kind: ImageKind, like: Any) -> Any:
    """Turn a ``(B, C, H, W)`` tensor of the input's dtype back into the kind of image ``like`` was."""
    if kind.is_pil:
        # What TF.to_pil_image makes of a uint8 (C, H, W) tensor, without its generic dispatch.
        image = batch[0]
        mode = "L" if image.shape[0] == 1 else "RGB"
        pixels = image.permute(1, 2, 0).contiguous().cpu().numpy().tobytes()
        return PIL.Image.frombytes(mode, (image.shape[2], image.shape[1]), pixels)
    out = batch if kind.batched else batch[0]
    return tv_tensors.wrap(out, like=like) if kind.tv_image else out


def check_value_range(batch: torch.Tensor, arg: str = "image") -> None:
    """Raise a ValueError when a float image lies outside [0, 1] (for instance, after Normalize) or holds NaN."""
    if batch.numel() == 0:
        return
    # min and max propagate NaN, so one pass finds both faults; detach: reading the values is no graph op.
    low, high = torch.aminmax(batch.detach())
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        raise ValueError(
            f"`{arg}` should be a float image with values in [0, 1], but it contains NaN values; a counterfactual "
            "of them would be NaN too. Check the images before the transform."
        )
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"`{arg}` should be a float image with values in [0, 1], but got values in [{low:.3g}, {high:.3g}]. "
            "Apply the counterfactual transform before Normalize (after v2.ToDtype(torch.float32, scale=True))."
        )


def to_unit_float(batch: torch.Tensor) -> torch.Tensor:
    """``uint8`` to float32 in [0, 1]; float32 and float64 pass through; half precision becomes float32."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(255.0)
    if batch.dtype in (torch.float32, torch.float64):
        return batch
    return batch.float()


def from_unit_float(batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Convert float images in [0, 1] to ``dtype`` the way ``v2.ToDtype(dtype, scale=True)`` does."""
    if dtype == torch.uint8:
        # ToDtype's own arithmetic for uint8 (scale by 255.999, then cast), without its dispatch; clamped first,
        # since a value above 1 would wrap around instead of saturating.
        return batch.clamp(0.0, 1.0).mul_(255.0 + 1.0 - 1e-3).to(torch.uint8)
    if not dtype.is_floating_point:
        batch = batch.clamp(0.0, 1.0)
    return TF.to_dtype(batch, dtype, scale=True)
