"""The ``biggan`` backend: the ImageNet CGN of Sauer & Geiger (ICLR 2021) on BigGAN-deep.

Three independent mechanisms, each a full copy of a BigGAN-deep generator (``pytorch_pretrained_biggan``, extra
``cfaug[imagenet]``), fine-tuned separately:

* **shape** ``f_shape(u, y_s)`` draws a *pre-mask* image; a frozen U2-Net turns it into the object mask
  ``m = clamp(U2Net(pre-mask), 1e-4, 1 - 1e-4)``, ``(B, 1, H, W)``. Gradients flow through the frozen U2-Net;
* **texture** ``f_text(u, y_t)`` draws the foreground texture;
* **background** ``f_bg(u, y_b)`` draws the background.

All three share the noise ``u = truncation * TruncNormal(-2, 2)^z_dim`` of a sample (as the authors do, in
training and in counterfactual mode) and take their own class, so ``(y_s, y_t, y_b)`` can be chosen
independently. ``u`` comes from the per-sample stream of ``cfaug.seeding``: an image depends only on its three
classes, its seed and the truncation, never on the batch it is generated in. BigGAN works in [-1, 1]; the backend
returns foregrounds and backgrounds mapped to [0, 1], and the U2-Net sees the raw [-1, 1] pre-mask, as in the
authors' code (no resizing to 320 and no ImageNet normalisation).

Real photographs: with real U2-Net weights (official, converted, or inside a trained or imported CGN) the same
U2-Net cuts the object out of a photograph (``estimate_mask``), so ``CounterfactualAugment`` also works without
labels, keeping the photograph's object (``shape="real"``). A photograph goes through U2-Net's own pipeline
(``cfaug.models.u2net.photo_saliency``: 320 px, ImageNet normalisation, min-max stretch), not the pre-mask
convention above. A randomly initialised U2-Net is not an estimator: ``has_mask_estimator`` is then False.

Training needs two things generation does not: a fourth, frozen BigGAN that draws the pseudo ground truth, and
the U2-Net's saliency of the background (``cfaug.training.imagenet``). Neither is part of this backend, so
generating an image costs three BigGAN forwards and one U2-Net forward, against four and two in the authors'
``generate_data.py``.

An adapter: the BigGAN networks (configs, ``build_biggan``, ``load_biggan``, ``save_biggan``) live in
``cfaug.models.biggan`` and the U2-Net in ``cfaug.models.u2net``; this module holds the weights, the three
mechanisms and the import of the authors' checkpoint, and re-exports the BigGAN names from their old place here.

Weights:

* ``BigGANBackend.from_biggan("biggan-deep-256", u2net_weights=...)`` builds the untrained CGN (all three copies
  equal to the pretrained BigGAN), the starting point of training. BigGAN comes from a local folder holding
  ``config.json`` and ``pytorch_model.bin`` (``load_biggan``) or, with network access, by name;
* ``BigGANBackend.import_weights("cgn.pth")`` converts the authors' released ImageNet CGN (module names
  ``f_shape``, ``f_text``, ``f_bg``, ``biggan_GT``, ``u2net``), checked key by key;
* ``cfaug.load_backend("biggan", weights="cgn.safetensors")`` loads cfaug's checkpoint of it: the three BigGAN
  copies and the U2-Net in one safetensors file, the architecture in its metadata, and where the U2-Net's weights
  came from (meta key ``u2net_weights``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import check_positive_int, sha256_file, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_torch_state_dict,
    meta_state_dict,
    state_dict_problems,
)
from cfaug.hub import Weights
from cfaug.models.biggan import (
    NAMED_BIGGANS,
    biggan_image_size,
    build_biggan,
    check_biggan_config,
    load_biggan,
    prepare_random_biggan,
    resolve_biggan_config,
    save_biggan,
)
from cfaug.models.biggan import pytorch_pretrained_biggan as _ppb
from cfaug.models.u2net import U2NET_VARIANTS, U2Net, build_u2net, photo_saliency
from cfaug.seeding import mix_seed

__all__ = [
    "AUTOCAST_DTYPES",
    "MASK_CLAMP",
    "NAMED_BIGGANS",
    "U2NET_VARIANTS",
    "BigGANBackend",
    "biggan_image_size",
    "build_biggan",
    "check_biggan_config",
    "imagenet_class_names",
    "load_biggan",
    "prepare_random_biggan",
    "resolve_biggan_config",
    "save_biggan",
    "truncated_noise",
]

#: The mask is clamped to [MASK_CLAMP, 1 - MASK_CLAMP], as in the authors' code (keeps the binary entropy finite).
MASK_CLAMP = 1e-4
#: Values of the ``autocast`` argument and the dtype each runs the GPU forward in.
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: The truncated normal of the noise is cut at +-TRUNCNORM_BOUND before scaling by the truncation.
TRUNCNORM_BOUND = 2.0

# Per-sample random stream of the noise u (see cfaug.seeding). Part of the output format: renumbering it changes
# every image generated from a given seed. One stream for all three mechanisms: they share u.
NOISE_STREAM = 0

_MECHANISM_MODULES = ("f_shape", "f_text", "f_bg")
# What the authors' CGN state dict holds besides the mechanisms: the frozen ground-truth BigGAN (training only).
_AUTHORS_GT_MODULE = "biggan_GT"


# ------------------------------------------------------------------------------------------------ noise
def truncated_noise(
    seeds: torch.Tensor, dim: int, truncation: float, stream: int = NOISE_STREAM, bound: float = TRUNCNORM_BOUND
) -> torch.Tensor:
    """BigGAN noise ``truncation * TruncNormal(-bound, bound)``, ``(len(seeds), dim)``, one row per seed's stream.

    The authors draw it with ``scipy.stats.truncnorm``; here it is the inverse normal CDF of a uniform on
    ``[Phi(-bound), Phi(bound)]`` (computed in float64), which has the same distribution and depends only on the
    sample's seed.

    Args:
        seeds: per-sample seeds, ``(B,)`` int64.
        dim: noise dimension (BigGAN's ``z_dim``).
        truncation: scale in (0, 1].
        stream: the seeds' stream to draw from.
        bound: the truncation of the standard normal.

    Returns:
        float32 noise on the CPU.

    Examples:
        >>> u = truncated_noise(torch.tensor([0, 1]), 128, 0.5)
        >>> u.shape, bool(u.abs().max() <= 1.0)
        (torch.Size([2, 128]), True)
    """
    check_positive_int(dim, "dim")
    _check_truncation(truncation)
    if len(seeds) == 0:
        return torch.empty(0, dim)
    uniform = torch.stack(
        [
            torch.rand(dim, generator=torch.Generator().manual_seed(mix_seed(int(s), stream)), dtype=torch.float64)
            for s in seeds.tolist()
        ]
    )
    low = torch.special.ndtr(torch.tensor(-bound, dtype=torch.float64))
    high = torch.special.ndtr(torch.tensor(bound, dtype=torch.float64))
    values = torch.special.ndtri(low + uniform * (high - low)).clamp(-bound, bound)
    return (truncation * values).float()


def _check_truncation(truncation: Any) -> float:
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)):
        raise TypeError(f"`truncation` should be a number in (0, 1], but got {type(truncation).__name__}.")
    if not 0.0 < float(truncation) <= 1.0:
        raise ValueError(f"`truncation` should be in (0, 1], but got {truncation!r}.")
    return float(truncation)


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, offline (torchvision's ``ResNet50_Weights.IMAGENET1K_V2`` metadata).

    Examples:
        >>> imagenet_class_names()[207]  # doctest: +SKIP
        'golden retriever'
    """
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


# ------------------------------------------------------------------------------------------- backend
class BigGANBackend(Backend):
    """The ImageNet CGN: three BigGAN-deep mechanisms and a frozen U2-Net (see the module documentation).

    Args:
        biggan_config: the BigGAN-deep architecture of all three mechanisms (``resolve_biggan_config``):
            ``"biggan-deep-256"`` (the authors'), another name, a dict or a ``config.json`` path.
        u2net_variant: the U2-Net that turns pre-masks into masks: ``"u2net"`` (the authors'), ``"u2netp"`` or
            ``"tiny"`` (tests).
        truncation: the truncation of the noise, in (0, 1]; it also selects BigGAN's BatchNorm statistics. The
            authors train at 1.0 and generate their counterfactual ImageNet at 0.5.
        class_names: one name per class; the ImageNet names for 1000 classes, ``"0"``, ``"1"``, ... otherwise.
        autocast: ``"bf16"`` or ``"fp16"`` runs generation on a GPU under ``torch.autocast`` in that dtype;
            ``None`` runs in float32. On the CPU generation always runs in float32. Outputs are float32.
        max_batch: generate at most this many images per forward (bounds GPU memory); ``None``: all at once.

    The mechanisms and the U2-Net are randomly initialised (``build_biggan``, ``U2Net``): load weights with
    ``from_pretrained``, ``from_biggan`` or ``import_weights``, or the U2-Net alone with ``load_u2net``. Only a
    U2-Net with loaded weights estimates masks of real photographs (``has_mask_estimator``).

    Examples:
        >>> tiny = {"channel_width": 4, "num_classes": 10, "z_dim": 16, "class_embed_dim": 16,
        ...         "attention_layer_position": 3, "layers": [[False, 16, 16], [True, 16, 8], [True, 8, 4],
        ...         [False, 4, 4], [True, 4, 2], [False, 2, 1]]}
        >>> backend = BigGANBackend(tiny, u2net_variant="tiny").eval()
        >>> parts = backend.sample([1, 2], [3, 4], [5, 6], seeds=torch.tensor([0, 1]))
        >>> parts.image.shape, parts.mask.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]))
    """

    name = "biggan"
    # The authors' ImageNet CGN is released on Google Drive, which gives no stable download URL; convert it with
    # BigGANBackend.import_weights (cfaug import-weights --backend biggan cgn.pth) and load the result by path.
    named_weights: ClassVar[dict[str, Weights]] = {}
    default_weights: ClassVar[str | None] = None

    def __init__(
        self,
        biggan_config: str | Mapping[str, Any] = "biggan-deep-256",
        u2net_variant: str = "u2net",
        truncation: float = 0.5,
        class_names: Sequence[str] | None = None,
        *,
        autocast: str | None = None,
        max_batch: int | None = None,
    ):
        config = resolve_biggan_config(biggan_config)
        verify_str_arg(u2net_variant, "u2net_variant", U2NET_VARIANTS)
        num_classes = config["num_classes"]
        custom_class_names = class_names is not None
        if class_names is None and num_classes == 1000:
            class_names = imagenet_class_names()
        super().__init__(num_classes, biggan_image_size(config), channels=3, class_names=class_names)
        # Only names that differ from the defaults travel in the checkpoint's architecture.
        self._custom_class_names = custom_class_names
        self.biggan_config = config
        self.u2net_variant = u2net_variant
        self.latent_dim = int(config["z_dim"])
        self.truncation = truncation
        self.autocast = autocast
        self.max_batch = max_batch
        self.f_shape = build_biggan(config)
        self.f_text = build_biggan(config)
        self.f_bg = build_biggan(config)
        # Frozen: pinned to eval mode (its BatchNorm keeps its statistics) and without parameter gradients.
        self.u2net = U2Net(u2net_variant).freeze()

    # ---------------------------------------------------------------------------------- configuration
    @property
    def truncation(self) -> float:
        """Truncation of the noise in (0, 1]; also selects BigGAN's BatchNorm statistics."""
        return self._truncation

    @truncation.setter
    def truncation(self, value: float) -> None:
        self._truncation = _check_truncation(value)

    @property
    def autocast(self) -> str | None:
        """``"bf16"``, ``"fp16"`` or ``None``: the dtype of GPU generation (the CPU always runs float32)."""
        return self._autocast

    @autocast.setter
    def autocast(self, value: str | None) -> None:
        self._autocast = None if value is None else verify_str_arg(value, "autocast", AUTOCAST_DTYPES)

    @property
    def max_batch(self) -> int | None:
        """Images per forward during generation; ``None`` for the whole batch at once."""
        return self._max_batch

    @max_batch.setter
    def max_batch(self, value: int | None) -> None:
        self._max_batch = None if value is None else check_positive_int(value, "max_batch")

    def train(self, mode: bool = True) -> BigGANBackend:
        """Set train or eval mode of the mechanisms; the frozen U2-Net always stays in eval mode.

        Train mode differs from eval mode only in spectral normalisation, which then runs a power iteration per
        forward (BigGAN's BatchNorm always uses its stored statistics).
        """
        super().train(mode)
        self.u2net.eval()
        return self

    def mechanism_modules(self) -> dict[str, nn.Module]:
        """The trainable mechanisms by name: ``{"shape": f_shape, "texture": f_text, "background": f_bg}``."""
        return {"shape": self.f_shape, "texture": self.f_text, "background": self.f_bg}

    # -------------------------------------------------------------------------------------- forward
    def one_hot(self, classes: torch.Tensor) -> torch.Tensor:
        """Class indices ``(B,)`` as the one-hot vectors BigGAN embeds, on the backend's device and dtype."""
        weight = self.f_shape.embeddings.weight
        return F.one_hot(classes.to(weight.device), self.num_classes).to(weight.dtype)

    def premask_to_mask(self, premask: torch.Tensor) -> torch.Tensor:
        """The mask of a pre-mask: ``clamp(U2Net(premask), MASK_CLAMP, 1 - MASK_CLAMP)``; differentiable."""
        return self.u2net(premask).clamp(MASK_CLAMP, 1 - MASK_CLAMP)

    def forward(
        self,
        noise: torch.Tensor,
        shape: torch.Tensor,
        texture: torch.Tensor,
        background: torch.Tensor,
        truncation: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mechanisms with autograd, as training uses them (images in BigGAN's [-1, 1]).

        Args:
            noise: ``u``, ``(B, latent_dim)``, shared by the three mechanisms.
            shape: shape classes, ``(B,)``.
            texture: texture classes, ``(B,)``.
            background: background classes, ``(B,)``.
            truncation: selects BigGAN's BatchNorm statistics; the backend's ``truncation`` when ``None``. It does
                not scale ``noise``.

        Returns:
            ``(premask, mask, foreground, background)``: the shape mechanism's raw image and its mask in [0, 1],
            ``(B, 1, H, W)``, and the texture and background images in [-1, 1].
        """
        truncation = self.truncation if truncation is None else _check_truncation(truncation)
        premask = self.f_shape(noise, self.one_hot(shape), truncation)
        foreground = self.f_text(noise, self.one_hot(texture), truncation)
        background_image = self.f_bg(noise, self.one_hot(background), truncation)
        return premask, self.premask_to_mask(premask), foreground, background_image

    def autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` in the ``autocast`` dtype on a GPU; a no-op on the CPU or when ``autocast`` is None."""
        device = self.device
        if self.autocast is None or device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[self.autocast])

    def _generate(self, mechanism: str, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        network = self.mechanism_modules()[mechanism]
        noise = truncated_noise(seeds, self.latent_dim, self.truncation)
        step = self.max_batch or max(len(classes), 1)
        outputs = []
        with self.autocast_context():
            for start in range(0, len(classes), step):
                chunk = slice(start, start + step)
                image = network(noise[chunk].to(self.device), self.one_hot(classes[chunk]), self.truncation)
                if mechanism == "shape":
                    outputs.append(self.premask_to_mask(image).float())
                else:
                    outputs.append(((image.float() + 1) / 2).clamp(0, 1))
        if not outputs:
            channels = 1 if mechanism == "shape" else self.channels
            return torch.empty(0, channels, self.image_size, self.image_size, device=self.device)
        return torch.cat(outputs)

    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Masks in [1e-4, 1 - 1e-4], ``(B, 1, H, W)``: the U2-Net's saliency of ``f_shape``'s pre-mask."""
        return self._generate("shape", classes, seeds)

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Foregrounds in [0, 1], ``(B, 3, H, W)``, from ``f_text``."""
        return self._generate("texture", classes, seeds)

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Backgrounds in [0, 1], ``(B, 3, H, W)``, from ``f_bg``."""
        return self._generate("background", classes, seeds)

    # ----------------------------------------------------------------------------- real photographs
    @property
    def u2net_weights(self) -> dict[str, Any] | None:
        """Where the U2-Net's weights came from, or ``None`` when they are its random initialisation.

        ``{"name": ..., "sha256": ..., "provenance": ...}``: the weights name or path given to ``build_u2net``
        (``from_biggan``, ``load_u2net``), ``"imported:<file>"`` for the U2-Net inside the authors' CGN
        (``import_weights``), or what a checkpoint recorded (``from_pretrained``). ``save`` writes it into the
        checkpoint's metadata (key ``u2net_weights``).
        """
        if self.u2net.weights_name is None:
            return None
        return {
            "name": self.u2net.weights_name,
            "sha256": self.u2net.weights_sha256,
            "provenance": copy.deepcopy(self.u2net.provenance),
        }

    def load_u2net(self, weights: str | os.PathLike[str], *, progress: bool = True) -> BigGANBackend:
        """Replace the U2-Net by one of the same variant with real weights (``cfaug.models.u2net.build_u2net``).

        For a checkpoint whose U2-Net has random weights (e.g. the tiny example's), or one written before cfaug
        recorded where the U2-Net came from; it also makes ``estimate_mask`` available.

        Args:
            weights: ``"u2net"`` or ``"u2netp"`` (the official files, downloaded and checked), a ``.pth`` state
                dict or a cfaug checkpoint such as ``convert_u2netp_onnx`` writes; its variant must be the
                backend's ``u2net_variant``.
            progress: show a progress bar while downloading.

        Returns:
            The backend itself, its U2-Net frozen on the backend's device.

        Raises:
            ValueError, cfaug.hub.WeightsError, cfaug.checkpoint.CheckpointError: as ``build_u2net``.
        """
        self.u2net = build_u2net(self.u2net_variant, weights=weights, device=self.device, progress=progress)
        return self

    @property
    def has_mask_estimator(self) -> bool:
        """True when the U2-Net has loaded weights (``u2net_weights`` is not ``None``), not a random init."""
        return self.u2net_weights is not None

    def estimate_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Object masks of real photographs with the backend's U2-Net, in U2-Net's own pipeline for photographs.

        The photograph is resized to 320x320, normalised with the ImageNet mean and standard deviation, and the
        saliency map stretched to [0, 1] per image, then resized back (``cfaug.models.u2net.photo_saliency``, the
        same function as the ``parts`` backend's U2-Net estimator). The network runs in float32 without autograd,
        on the backend's device; the masks come back on the images' device and in their dtype.

        Args:
            images: photographs in [0, 1] of any size: a batch ``(B, 3, H, W)`` or ``(B, 1, H, W)`` (grey,
                repeated to RGB), or one image ``(3, H, W)`` / ``(1, H, W)``.

        Returns:
            Masks in [0, 1] at the images' size: ``(B, 1, H, W)``, or ``(1, H, W)`` for one image.

        Raises:
            RuntimeError: the U2-Net has random weights (``has_mask_estimator`` is False).
            TypeError: ``images`` is not a floating-point tensor.
            ValueError: ``images`` does not have one of the shapes above.
        """
        if not self.has_mask_estimator:
            raise RuntimeError(
                f"The U2-Net of backend {self.name!r} (weights {self.weights_name!r}) has random weights (none were "
                "loaded), so its masks of real photographs would be noise. Load real ones with "
                "backend.load_u2net('u2net') (official file, downloaded) or backend.load_u2net(path) (a .pth, or a "
                "checkpoint from cfaug.models.u2net.convert_u2netp_onnx), or load a trained or imported CGN."
            )
        single = isinstance(images, torch.Tensor) and images.dim() == 3
        with torch.no_grad():
            masks = photo_saliency(self.u2net, images[None] if single else images)
        return masks[0] if single else masks

    # ---------------------------------------------------------------------------------- persistence
    def arch_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (speed knobs excluded)."""
        arch: dict[str, Any] = {
            "biggan_config": copy.deepcopy(self.biggan_config),
            "u2net_variant": self.u2net_variant,
            "truncation": self.truncation,
        }
        if self._custom_class_names:
            arch["class_names"] = list(self.class_names)
        return arch

    def checkpoint_meta(self) -> dict[str, Any]:
        """The base metadata plus ``u2net_weights`` (where the U2-Net came from) when it has loaded weights."""
        meta = super().checkpoint_meta()
        if self.u2net_weights is not None:
            meta["u2net_weights"] = self.u2net_weights
        return meta

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides: Any) -> BigGANBackend:
        """Build and load the checkpoint's backend (``Backend.from_checkpoint``) and restore ``u2net_weights``.

        Checkpoints written before the key ``u2net_weights`` existed still say where their U2-Net came from: an
        imported authors' CGN by its ``provenance``, a training run's ``final.safetensors`` by its recipe's
        ``u2net_source``. Without any of these the U2-Net counts as random (``has_mask_estimator`` False).

        Raises:
            CheckpointError: as ``Backend.from_checkpoint``, or a malformed ``u2net_weights`` entry.
        """
        model = super().from_checkpoint(checkpoint, **overrides)
        record = _u2net_record(checkpoint.meta, checkpoint.source)
        if record is not None:
            model.u2net.weights_name = record["name"]
            model.u2net.weights_sha256 = record.get("sha256")
            model.u2net.provenance = record.get("provenance")
        return model

    @classmethod
    def from_biggan(
        cls,
        biggan: str | os.PathLike[str] | nn.Module = "biggan-deep-256",
        u2net_variant: str = "u2net",
        u2net_weights: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> BigGANBackend:
        """The untrained CGN: all three mechanisms start as copies of one pretrained BigGAN (training's start).

        Args:
            biggan: a BigGAN folder or name (``load_biggan``), or a loaded ``pytorch_pretrained_biggan.BigGAN``.
            u2net_variant: the U2-Net variant.
            u2net_weights: the U2-Net weights, passed to ``cfaug.models.u2net.build_u2net``; ``None`` keeps its
                random initialisation (tests): its masks are noise, and it is no mask estimator for real
                photographs (``has_mask_estimator`` False).
            device: where to put the model; CPU when ``None``.
            **kwargs: further constructor arguments (``truncation``, ``autocast``, ...).

        Returns:
            The backend in eval mode without gradients.
        """
        model = biggan if isinstance(biggan, nn.Module) else load_biggan(biggan)
        config = check_biggan_config(model.config.to_dict())
        backend = cls(config, u2net_variant=u2net_variant, **kwargs)
        state = model.state_dict()
        for network in backend.mechanism_modules().values():
            network.load_state_dict(state, strict=True)
        # build_u2net returns the network frozen and records where its weights came from.
        backend.u2net = build_u2net(variant=u2net_variant, weights=u2net_weights, device="cpu")
        backend.weights_name = f"untrained:{biggan if not isinstance(biggan, nn.Module) else 'module'}"
        return backend.to(device or "cpu").eval().requires_grad_(False)

    @classmethod
    def import_weights(
        cls, source: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
    ) -> BigGANBackend:
        """Convert the CGN authors' released ImageNet CGN (``cgn.pth``, a plain state dict) into this backend.

        The authors' model holds ``f_shape``, ``f_text`` and ``f_bg`` (three BigGAN-deep-256 copies),
        ``biggan_GT`` (the frozen pretrained BigGAN, used only in training; dropped here) and ``u2net`` (the full
        U2-Net). The file is read with ``torch.load(weights_only=True)``; ``module.`` prefixes are stripped. Every
        tensor is checked against the architecture, key by key and shape by shape, before anything is loaded. The
        U2-Net variant is recognised from the tensors.

        Args:
            source: the ``.pth`` file.
            config: the BigGAN ``config.json`` of the mechanisms (a file or a folder holding one);
                ``biggan-deep-256`` when ``None``.

        Returns:
            The backend in eval mode without gradients, ``provenance`` recording the source and its sha256.

        Raises:
            FileNotFoundError: ``source`` or ``config`` does not exist.
            CheckpointError: the file is not a state dict of tensors, or it does not match the architecture; the
                message lists missing and unexpected keys and shape mismatches per module.
        """
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"`source` should be the authors' cgn.pth, but {str(source)!r} does not exist.")
        biggan_config = resolve_biggan_config("biggan-deep-256" if config is None else config)
        state = load_torch_state_dict(source, "the authors' ImageNet CGN state dict")
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            prefix, _, rest = key.partition(".")
            groups.setdefault(prefix, {})[rest] = tensor
        known = (*_MECHANISM_MODULES, _AUTHORS_GT_MODULE, "u2net")
        problems = [f"unexpected modules {sorted(set(groups) - set(known))}"] if set(groups) - set(known) else []
        problems += [f"missing module {name!r}" for name in (*_MECHANISM_MODULES, "u2net") if name not in groups]
        if problems:
            raise CheckpointError(
                f"{str(source)!r} is not the authors' ImageNet CGN: {'; '.join(problems)}. Expected the modules "
                f"{list(known)} (biggan_GT optional)."
            )
        variant, u2net_problems = _recognise_u2net(groups["u2net"])
        reference = meta_state_dict(lambda: _ppb().BigGAN(_ppb().BigGANConfig.from_dict(copy.deepcopy(biggan_config))))
        report = []
        for name in (*_MECHANISM_MODULES, _AUTHORS_GT_MODULE):
            if name in groups:
                report += [f"{name}: {p}" for p in state_dict_problems(groups[name], reference)]
        report += [f"u2net: {p}" for p in u2net_problems]
        if report:
            raise CheckpointError(
                f"{str(source)!r} does not match the ImageNet CGN architecture (BigGAN config "
                f"{'biggan-deep-256' if config is None else str(config)!r}; U2-Net variants {list(U2NET_VARIANTS)}): "
                + "; ".join(report)
                + ". Pass the BigGAN config.json the model was trained with as `config`."
            )
        model = cls(biggan_config, u2net_variant=variant)
        for name in _MECHANISM_MODULES:
            getattr(model, name).load_state_dict(groups[name], strict=True)
        model.u2net.load_state_dict(groups["u2net"], strict=True)
        digest = sha256_file(source)
        # The authors' U2-Net is the official pretrained one, frozen through training: a real mask estimator.
        model.u2net.weights_name = f"imported:{source.name}"
        model.u2net.weights_sha256 = digest
        model.u2net.provenance = {"from": "module 'u2net' of the CGN authors' ImageNet CGN", "variant": variant}
        model.weights_name = f"imported:{source.name}"
        model.weights_sha256 = digest
        model.provenance = {
            "format": "CGN authors' ImageNet CGN state dict (autonomousvision/counterfactual_generative_networks)",
            "source": source.name,
            "sha256": digest,
            "u2net_variant": variant,
            "dropped": [_AUTHORS_GT_MODULE] if _AUTHORS_GT_MODULE in groups else [],
        }
        return model.eval().requires_grad_(False)

    def extra_repr(self) -> str:
        """Architecture summary shown by ``print(backend)``."""
        return (
            f"{super().extra_repr()}, latent_dim={self.latent_dim}, u2net={self.u2net_variant!r}, "
            f"u2net_weights={self.u2net.weights_name!r}, truncation={self.truncation}, autocast={self.autocast!r}"
        )


def _recognise_u2net(state: Mapping[str, torch.Tensor]) -> tuple[str | None, list[str]]:
    """The U2-Net variant whose tensors match ``state`` exactly, or ``None`` and the closest variant's problems."""
    candidates = []
    for variant in U2NET_VARIANTS:
        problems = state_dict_problems(state, meta_state_dict(lambda v=variant: U2Net(v)))
        if not problems:
            return variant, []
        # Each problem line starts with its count; the variant with the fewest differences is the likeliest intent.
        candidates.append((sum(int(p.split(" ", 1)[0]) for p in problems), variant, problems))
    _, variant, problems = min(candidates)
    return None, [f"closest variant {variant!r} has {p}" for p in problems]


def _u2net_record(meta: Mapping[str, Any], source: str) -> dict[str, Any] | None:
    """Where a checkpoint's U2-Net came from (see ``BigGANBackend.from_checkpoint``), or ``None`` for random."""
    record = meta.get("u2net_weights")
    if record is not None:
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise CheckpointError(
                f"{source}: `u2net_weights` in its metadata should be an object with a string 'name', but got "
                f"{record!r}."
            )
        return record
    provenance = meta.get("provenance")
    if isinstance(provenance, dict) and str(provenance.get("format", "")).startswith("CGN authors'"):
        return {
            "name": f"imported:{provenance.get('source')}",
            "sha256": provenance.get("sha256"),
            "provenance": {"from": "module 'u2net' of the CGN authors' ImageNet CGN"},
        }
    recipe = meta.get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("u2net_source"), str):
        return {
            "name": recipe["u2net_source"],
            "sha256": None,
            "provenance": {"from": "recipe 'u2net_source' of the training run (frozen U2-Net)"},
        }
    return None
