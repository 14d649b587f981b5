"""The ``parts`` backend: counterfactuals of any labelled dataset from real parts, without training a generator.

A CGN's mechanisms are independent, and the backend contract does not care how a mechanism makes its output.
Here each mechanism is a *store* of real parts cut from a labelled dataset by a mask estimator
(``cfaug.backends.parts_build.build_parts``, or ``cfaug build-parts`` on the command line):

* **shape**: the real (estimated) masks of the requested class, optionally with a small random affine jitter
  (``shape_jitter = (degrees, translate, scale)``: a rotation in ``[-degrees, degrees]``, a shift of up to
  ``translate`` times the image side, a zoom in ``[1 - scale, 1 + scale]``; off by default);
* **texture**: per class and per stored image, ``patches_per_image`` square patches of ``patch_size`` pixels
  that lie *wholly* inside the object's mask (the mask eroded by the patch), tiled on a grid to the image size
  with patches drawn at random from one image's pool. This is the patch grid that the CGN paper itself uses as
  the texture mechanism's target; patches that straddle the object's edge carry background and spoil it;
* **background**: per class, real backgrounds whose object region was filled from the same image's own
  background (shifted copies, with a smooth seam correction), so no silhouette of the object is left;
  randomly mirrored left-right.

In a biased training set every image of class k carries texture k and background k, so recombining the parts of
different classes is already a counterfactual, with real textures at full fidelity and no GAN.

Every part is stored as 8-bit values in the checkpoint (the one cfaug format: safetensors plus JSON metadata),
with the provenance of the store (dataset, estimator, counts per class, settings). A mask estimator that is a
network (the mask estimator of MNIST weights, or U2-Net) is stored with the parts, so ``estimate_mask`` works on
real images after loading and ``CounterfactualAugment`` runs in image-only mode too.

Determinism: the part a sample gets depends only on its class and its seed, through the per-sample streams of
``cfaug.seeding``; generation is a lookup, identical on every batch composition, worker and device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import check_number, check_positive_int, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.models.mnist_cgn import MASK_ESTIMATOR_ARCHS, build_mask_estimator
from cfaug.models.u2net import U2NET_VARIANTS, U2Net, photo_saliency
from cfaug.seeding import per_sample_randint

__all__ = ["ESTIMATOR_KINDS", "MaskEstimatorNet", "PartsBackend"]

# Per-sample random streams (see cfaug.seeding): part of the output format, never renumber them.
SHAPE_PICK_STREAM = 0
SHAPE_JITTER_STREAM = 1
TEXTURE_PICK_STREAM = 2
TEXTURE_GRID_STREAM = 3
BACKGROUND_PICK_STREAM = 4
BACKGROUND_FLIP_STREAM = 5

#: Kinds of mask estimator networks a store can carry.
ESTIMATOR_KINDS = ("mnist", "u2net")


def _uniform(seeds: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """Uniform numbers in [0, 1), ``(B, n)``, row ``i`` from the stream of ``seeds[i]``."""
    return per_sample_randint(seeds, stream, 1 << 24, (n,)).to(torch.float32) / float(1 << 24)


class MaskEstimatorNet(nn.Module):
    """A mask estimator for real images, in the form a parts store carries it.

    Args:
        kind: ``"mnist"`` (the small U-Net inside cfaug's MNIST weights, for digit datasets) or ``"u2net"``
            (U2-Net salient-object segmentation, for photographs).
        variant: U2-Net variant (``"u2net"``, ``"u2netp"``, ``"tiny"``); ignored for ``"mnist"``.
        width: width of the MNIST estimator; ignored for ``"u2net"``.
        arch: architecture of the MNIST estimator (``cfaug.models.mnist_cgn.MASK_ESTIMATOR_ARCHS``); stores
            written before the choice existed hold a ``"unet"``, hence the default. Ignored for ``"u2net"``.
        input_size: side of the square images the network sees (32 for the MNIST estimator, 320 in U2-Net's own
            pipeline); masks are resized back to the image's size.

    The MNIST estimator sees RGB in [-1, 1] and returns ``sigmoid(logits)``; U2-Net runs U2-Net's own pipeline for
    photographs, ``cfaug.models.u2net.photo_saliency`` (ImageNet-normalised RGB, the saliency map stretched to
    [0, 1] per image).
    """

    def __init__(
        self, kind: str = "mnist", variant: str = "u2netp", width: int = 16, input_size: int = 32, arch: str = "unet"
    ):
        super().__init__()
        self.kind = verify_str_arg(kind, "kind", ESTIMATOR_KINDS)
        self.variant = verify_str_arg(variant, "variant", U2NET_VARIANTS)
        self.width = check_positive_int(width, "width")
        self.input_size = check_positive_int(input_size, "input_size")
        self.arch = verify_str_arg(arch, "arch", tuple(MASK_ESTIMATOR_ARCHS))
        self.net: nn.Module = build_mask_estimator(arch, width) if kind == "mnist" else U2Net(variant).freeze()

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this estimator."""
        return {
            "kind": self.kind,
            "variant": self.variant,
            "width": self.width,
            "input_size": self.input_size,
            "arch": self.arch,
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Masks in [0, 1], ``(B, 1, H, W)``, of images in [0, 1], ``(B, 1 or 3, H, W)``."""
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"`images` should be a floating-point tensor with values in [0, 1], but got {got}.")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"`images` should have shape (B, 1, H, W) or (B, 3, H, W), but got {tuple(images.shape)}.")
        if self.kind == "u2net":
            # U2-Net's own pipeline for photographs, the one BigGANBackend.estimate_mask uses too.
            return photo_saliency(self.net, images, self.input_size)
        size = images.shape[-2:]
        weight = next(self.net.parameters())
        x = images.to(device=weight.device, dtype=weight.dtype).expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        masks = torch.sigmoid(self.net(x * 2 - 1))
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)
        return masks.to(device=images.device, dtype=images.dtype)


class PartsBackend(Backend):
    """Counterfactuals recombined from a store of real parts (masks, texture patches, filled backgrounds).

    Build one with ``cfaug.backends.parts_build.build_parts`` (or ``cfaug build-parts``), save it with
    ``save`` and load it by path like any weights: ``cfaug.load_backend("parts", weights="store.safetensors")``
    or ``CounterfactualAugment("parts", weights="store.safetensors")``. The constructor builds an *empty* store
    of the given sizes (what loading fills in).

    Args:
        num_classes: number of classes.
        image_size: side of the square parts.
        channels: channels of textures and backgrounds (1 or 3).
        mask_counts: stored masks per class.
        texture_counts: stored texture pools (one per source image) per class.
        background_counts: stored filled backgrounds per class.
        patch_size: side of a texture patch.
        patches_per_image: patches in each texture pool.
        class_names: one name per class.
        shape_jitter: ``(degrees, translate, scale)`` of the random affine jitter of masks; ``(0, 0, 0)`` (the
            default) returns the stored masks unchanged. A behaviour knob: may be overridden at load time.
        estimator: configuration of the mask estimator network stored with the parts (see ``MaskEstimatorNet``),
            or ``None`` when the store was built with masks from elsewhere (then ``estimate_mask`` is unavailable).

    Raises:
        TypeError, ValueError: an argument has the wrong type or value.
    """

    name = "parts"
    named_weights: ClassVar[dict] = {}
    default_weights: ClassVar[str | None] = None

    def __init__(
        self,
        num_classes: int,
        image_size: int,
        channels: int = 3,
        mask_counts: Sequence[int] | None = None,
        texture_counts: Sequence[int] | None = None,
        background_counts: Sequence[int] | None = None,
        patch_size: int = 2,
        patches_per_image: int = 64,
        class_names: Sequence[str] | None = None,
        *,
        shape_jitter: Sequence[float] = (0.0, 0.0, 0.0),
        estimator: Mapping[str, Any] | None = None,
    ):
        check_positive_int(num_classes, "num_classes")
        check_positive_int(image_size, "image_size")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"`channels` should be 1 or 3, but got {channels!r}.")
        super().__init__(num_classes, image_size, channels, class_names)
        self.patch_size = check_positive_int(patch_size, "patch_size")
        if patch_size > image_size:
            raise ValueError(f"`patch_size` should be at most `image_size` ({image_size}), but got {patch_size}.")
        self.patches_per_image = check_positive_int(patches_per_image, "patches_per_image")
        self.shape_jitter = shape_jitter
        counts = {}
        for arg, value in (("mask_counts", mask_counts), ("texture_counts", texture_counts)):
            counts[arg] = _check_counts(value, arg, num_classes)
        counts["background_counts"] = _check_counts(background_counts, "background_counts", num_classes)
        size, c, p = image_size, channels, patch_size
        self._register_store("mask", counts["mask_counts"], (1, size, size))
        self._register_store("texture", counts["texture_counts"], (patches_per_image, c, p, p))
        self._register_store("background", counts["background_counts"], (c, size, size))
        self.mask_net: MaskEstimatorNet | None = None
        if estimator is not None:
            if not isinstance(estimator, Mapping):
                raise TypeError(f"`estimator` should be a mapping or None, but got {type(estimator).__name__}.")
            self.mask_net = MaskEstimatorNet(**estimator)

    def _register_store(self, mechanism: str, counts: list[int], item_shape: tuple[int, ...]) -> None:
        offsets = torch.tensor([0, *counts], dtype=torch.int64).cumsum(0)
        self.register_buffer(f"{mechanism}_offsets", offsets)
        # The total from the Python list, not the tensor: checkpoints are first built on the meta device.
        self.register_buffer(f"{mechanism}_store", torch.zeros((sum(counts), *item_shape), dtype=torch.uint8))

    # ---------------------------------------------------------------------------------- configuration
    @property
    def shape_jitter(self) -> tuple[float, float, float]:
        """``(degrees, translate, scale)`` of the masks' random affine jitter."""
        return self._shape_jitter

    @shape_jitter.setter
    def shape_jitter(self, value: Sequence[float]) -> None:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
            raise ValueError(f"`shape_jitter` should be (degrees, translate, scale), but got {value!r}.")
        degrees = check_number(value[0], "shape_jitter[0] (degrees)", upper=180)
        translate = check_number(value[1], "shape_jitter[1] (translate)", upper=1)
        scale = check_number(value[2], "shape_jitter[2] (scale)", upper=0.99)
        self._shape_jitter = (degrees, translate, scale)

    def counts(self, mechanism: str) -> list[int]:
        """Stored parts per class of ``mechanism`` (``"shape"``, ``"texture"`` or ``"background"``)."""
        key = {"shape": "mask", "texture": "texture", "background": "background"}[
            verify_str_arg(mechanism, "mechanism", ("shape", "texture", "background"))
        ]
        return getattr(self, f"{key}_offsets").diff().tolist()

    def arch_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this store's layout (the parts themselves are its tensors)."""
        return {
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "mask_counts": self.counts("shape"),
            "texture_counts": self.counts("texture"),
            "background_counts": self.counts("background"),
            "patch_size": self.patch_size,
            "patches_per_image": self.patches_per_image,
            "class_names": list(self.class_names),
            "shape_jitter": list(self.shape_jitter),
            "estimator": None if self.mask_net is None else self.mask_net.config(),
        }

    # ------------------------------------------------------------------------------------- mechanisms
    def _pick(self, mechanism: str, classes: torch.Tensor, seeds: torch.Tensor, stream: int) -> torch.Tensor:
        offsets = getattr(self, f"{mechanism}_offsets").cpu()
        classes = classes.cpu()
        start, count = offsets[classes], offsets[classes + 1] - offsets[classes]
        empty = (count == 0).nonzero().flatten()
        if len(empty):
            raise ValueError(
                f"The parts store has no {mechanism} of class {int(classes[empty[0]])} "
                f"({self.class_names[int(classes[empty[0]])]!r}); its {mechanism} counts per class are "
                f"{offsets.diff().tolist()}. Rebuild it with more images of that class."
            )
        # Modulo of a 62-bit draw: the bias is below count / 2**62, far below anything measurable.
        return start + per_sample_randint(seeds, stream, 1 << 62) % count.clamp_min(1)

    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Real masks of ``classes``, jittered per sample when ``shape_jitter`` is set."""
        index = self._pick("mask", classes, seeds, SHAPE_PICK_STREAM).to(self.mask_store.device)
        masks = self.mask_store[index].to(torch.float32) / 255
        degrees, translate, scale = self.shape_jitter
        if len(masks) and max(degrees, translate, scale) > 0:
            u = _uniform(seeds, SHAPE_JITTER_STREAM, 4).to(masks.device) * 2 - 1
            angle = u[:, 0] * math.radians(degrees)
            zoom = 1 + u[:, 1] * scale
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            theta = torch.stack(
                [
                    torch.stack([cos, -sin, u[:, 2] * 2 * translate], 1),
                    torch.stack([sin, cos, u[:, 3] * 2 * translate], 1),
                ],
                1,
            )
            grid = F.affine_grid(theta, list(masks.shape), align_corners=False)
            masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return masks

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Patch grids tiled from the pool of one stored object of each requested class."""
        index = self._pick("texture", classes, seeds, TEXTURE_PICK_STREAM).to(self.texture_store.device)
        p, size = self.patch_size, self.image_size
        cells = -(-size // p)
        picks = per_sample_randint(seeds, TEXTURE_GRID_STREAM, self.patches_per_image, (cells * cells,))
        patches = self.texture_store[index[:, None], picks.to(index.device)]  # (B, cells*cells, C, p, p)
        grid = patches.view(len(index), cells, cells, self.channels, p, p).permute(0, 3, 1, 4, 2, 5)
        grid = grid.reshape(len(index), self.channels, cells * p, cells * p)[..., :size, :size]
        return grid.to(torch.float32) / 255

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Stored filled backgrounds of ``classes``, mirrored left-right for half of the seeds."""
        index = self._pick("background", classes, seeds, BACKGROUND_PICK_STREAM).to(self.background_store.device)
        backgrounds = self.background_store[index].to(torch.float32) / 255
        flip = (per_sample_randint(seeds, BACKGROUND_FLIP_STREAM, 2) == 1).to(backgrounds.device)
        return torch.where(flip[:, None, None, None], backgrounds.flip(-1), backgrounds)

    # ------------------------------------------------------------------------------------ real images
    @property
    def has_mask_estimator(self) -> bool:
        """Whether the store carries a mask estimator network for real images."""
        return self.mask_net is not None

    def estimate_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Object masks of real images in [0, 1], ``(B, 1 or 3, H, W)`` -> ``(B, 1, H, W)``.

        Raises:
            NotImplementedError: the store was built with masks from elsewhere and carries no estimator.
        """
        if self.mask_net is None:
            raise NotImplementedError(
                f"This parts store (weights {self.weights_name!r}) carries no mask estimator for real images: it "
                "was built with masks given by the dataset or by a Python callable. Use it label-aware, or rebuild "
                "it with estimator='mnist' or 'u2netp'."
            )
        with torch.no_grad():
            return self.mask_net(images)

    def extra_repr(self) -> str:
        """Store sizes, shown by ``print(backend)``."""
        return (
            f"{super().extra_repr()}, parts={sum(self.counts('shape'))}/{sum(self.counts('texture'))}/"
            f"{sum(self.counts('background'))}, patch_size={self.patch_size}, shape_jitter={self.shape_jitter}, "
            f"estimator={None if self.mask_net is None else self.mask_net.config()}"
        )


def _check_counts(value: Any, arg: str, num_classes: int) -> list[int]:
    if value is None:
        return [0] * num_classes
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != num_classes:
        raise ValueError(f"`{arg}` should list {num_classes} counts (one per class), but got {value!r}.")
    return [check_positive_int(v, f"{arg}[{i}]", allow_zero=True) for i, v in enumerate(value)]
