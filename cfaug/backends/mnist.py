"""The ``mnist`` backend: the CGN authors' 32x32 generator for the MNIST variants.

An adapter: the networks are in ``cfaug.models.mnist_cgn`` (architecture exactly the one of Sauer & Geiger's MNIST
CGN, module and parameter names included, so the authors' released checkpoints load without a single missing or
unexpected key, ``MnistBackend.import_weights``) and their fused inference copy in ``cfaug.models.mnist_cgn_fused``.
This module holds the weights table, the three mechanisms and the import of the authors' checkpoints; the
networks' names stay importable from here.

Generation (the ``Backend`` mechanisms) follows the authors' counterfactual mode: each
mechanism draws its own noise, here from the per-sample streams of ``cfaug.seeding``, and foregrounds and
backgrounds are mapped from the tanh range [-1, 1] to [0, 1]. Training code uses the module path instead
(``MnistBackend.forward_mechanisms``), which takes the noise, labels and shift offsets explicitly.

In eval mode without autograd the mechanisms run a fused copy of the networks, which gives the same images up to
float rounding at several times the speed: BatchNorm folded into the convolutions; "nearest x2 upsampling then
3x3 conv" rewritten as one 2x2 convolution of the low-resolution input that yields the four output phases; the
last texture convolution applied to those phases directly, with the de-interleaving merged into the shuffler's
gather; channels-last layout; and on the CPU, cache-sized micro-batches. The fused weights are rebuilt
whenever a weight changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import check_positive_int, sha256_file, verify_str_arg
from cfaug.backends.base import Backend
from cfaug.checkpoint import Checkpoint, CheckpointError, load_torch_state_dict, state_dict_problems
from cfaug.hub import Weights
from cfaug.models.mnist_cgn import (
    MASK_CLAMP,
    MASK_ESTIMATOR_ARCHS,
    MaskEstimator,
    build_mask_estimator,
    cyclic_shift,
    random_shift_offsets,
    shape_net,
    texture_net,
)
from cfaug.models.mnist_cgn_fused import FusedShapeNet, FusedTextureNet, fuse_mask_estimator
from cfaug.seeding import per_sample_normal, per_sample_randint

# MASK_CLAMP, MaskEstimator, cyclic_shift and random_shift_offsets live in cfaug.models.mnist_cgn; re-exported here.
__all__ = [
    "MASK_CLAMP",
    "MaskEstimator",
    "MnistBackend",
    "cyclic_shift",
    "random_shift_offsets",
]


# Per-sample random streams (see cfaug.seeding). They are part of the output format: changing a number changes
# every image generated from a given seed, so never renumber them.
SHAPE_NOISE_STREAM = 0
TEXTURE_NOISE_STREAM = 1
BACKGROUND_NOISE_STREAM = 2
TEXTURE_SHIFT_STREAM = 3
BACKGROUND_SHIFT_STREAM = 4

#: Micro-batch sizes of the CPU fast path, per network: a chunk runs fastest when its activations stay in the
#: caches, and the generators' are ten times the mask estimator's per image. On a 2-core AMD EPYC (AVX512,
#: 1 MiB L2 per core) at batch 256: the texture and background generators take 400 us per image in chunks of
#: 16 (about 2.5 MiB of largest activation) against 530 in chunks of 64, and ``sample()`` runs 13 % (1 thread)
#: to 14 % (2 threads) faster; the lite estimator is fastest in chunks of 64 (11,200 img/s at 1 thread against
#: 7,800 in chunks of 16 and 8,300 in one piece). ``benchmarks/generation.py`` measures both.
CPU_MICRO_BATCH = 16
CPU_MASK_MICRO_BATCH = 64

_INIT_TYPES = ("orthogonal", "normal", "xavier", "kaiming", "default")


# --------------------------------------------------------------------------------------------- backend
class MnistBackend(Backend):
    """The CGN authors' MNIST generator (32x32 RGB, 10 classes) as a cfaug backend.

    Args:
        num_classes: classes every mechanism is conditioned on.
        latent_dim: size of the noise vector ``u`` of each mechanism.
        ngf: generator width; the networks use ``ngf`` and ``2 * ngf`` channels.
        image_size: side of the generated images; divisible by 4.
        mask_estimator: also build a mask estimator for ``estimate_mask`` on real images. It must be
            trained (and marked so with ``mark_mask_estimator_trained``) before it can be used.
        mask_estimator_width: width of the mask estimator.
        mask_estimator_arch: ``"lite"`` (``LiteMaskEstimator``, fast on single images) or ``"unet"``
            (``MaskEstimator``, cfaug's first estimator; checkpoints without this setting hold one).
        class_names: one name per class; ``"0"``, ``"1"``, ... when ``None``.
        init_type: initialisation of a freshly built model, as in the authors' code: ``"orthogonal"``,
            ``"normal"``, ``"xavier"``, ``"kaiming"`` or ``"default"`` (PyTorch's own). Conv/Linear biases start at
            0 and BatchNorm weights at ``N(1, init_gain)``. Irrelevant when weights are loaded afterwards.
        init_gain: scale of the initialisation (the authors use orthogonal 0.1 for Colored MNIST).
        fast_path: in eval mode without autograd, generate with fused weights (same images up to float rounding,
            several times faster). A speed knob, not part of the architecture.
        micro_batch: chunk size of the fast path; ``None`` picks ``CPU_MICRO_BATCH`` for the generators and
            ``CPU_MASK_MICRO_BATCH`` for the mask estimator on the CPU, and no chunking on accelerators.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value.

    Examples:
        >>> backend = MnistBackend().eval()
        >>> parts = backend.sample([3, 3], [7, 1], [1, 7], seeds=torch.tensor([0, 1]))
        >>> parts.image.shape, parts.mask.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]))
    """

    name = "mnist"
    # Shipped in cfaug/weights/ (url=None): trained with cfaug.training (our recipe), each with a mask estimator
    # for image-only CounterfactualAugment. Provenance, recipe and metrics are in each file's metadata.
    named_weights: ClassVar[dict[str, Weights]] = {
        "colored_mnist": Weights(
            "colored_mnist",
            "colored_mnist.safetensors",
            "2ae6e260f61f0494c1cc0753c511cfe745c8034f7c486977b006f594cc265d73",
            description="Colored MNIST CGN, our recipe (8,489 it), with lite mask estimator (test IoU 1.000)",
        ),
        "double_colored_mnist": Weights(
            "double_colored_mnist",
            "double_colored_mnist.safetensors",
            "d6ac8e6dfe156654e78b69adaccad7a87e5050e7eb8bd895dcd172c3058718b5",
            description="Double-colored MNIST CGN, our recipe (8,062 it), with U-Net mask estimator (test IoU 0.945)",
        ),
        "wildlife_mnist": Weights(
            "wildlife_mnist",
            "wildlife_mnist.safetensors",
            "1f50a4b9209036767c89dc7d080fe1e4c079afc869bf5bfe7cc73ceb8667d33e",
            description="Wildlife MNIST CGN (paper textures), our recipe (6,000 it), U-Net mask estimator (IoU 0.932)",
        ),
    }
    default_weights: ClassVar[str | None] = "colored_mnist"

    def __init__(
        self,
        num_classes: int = 10,
        latent_dim: int = 32,
        ngf: int = 32,
        image_size: int = 32,
        mask_estimator: bool = False,
        mask_estimator_width: int = 16,
        class_names: Sequence[str] | None = None,
        mask_estimator_arch: str = "lite",
        *,
        init_type: str = "orthogonal",
        init_gain: float = 0.1,
        fast_path: bool = True,
        micro_batch: int | None = None,
    ):
        check_positive_int(num_classes, "num_classes")
        check_positive_int(latent_dim, "latent_dim")
        check_positive_int(ngf, "ngf")
        check_positive_int(image_size, "image_size")
        verify_str_arg(mask_estimator_arch, "mask_estimator_arch", tuple(MASK_ESTIMATOR_ARCHS))
        check_positive_int(mask_estimator_width, "mask_estimator_width")
        if image_size % 4:
            raise ValueError(f"`image_size` should be divisible by 4, but got {image_size}.")
        if not isinstance(mask_estimator, bool):
            raise TypeError(f"`mask_estimator` should be a bool, but got {type(mask_estimator).__name__}.")
        super().__init__(num_classes, image_size, channels=3, class_names=class_names)
        self.latent_dim = latent_dim
        self.ngf = ngf
        self.mask_estimator_width = mask_estimator_width
        self.mask_estimator_arch = mask_estimator_arch
        self.fast_path = fast_path
        self.micro_batch = micro_batch
        #: where imported weights came from (source file, sha256, the authors' config); saved by ``save``.

        init_size = image_size // 4
        in_features = latent_dim + num_classes
        self.label_emb = nn.Embedding(num_classes, num_classes)
        self.f_shape = shape_net(in_features, ngf, init_size)
        self.f_text1 = texture_net(in_features, ngf, init_size, self.channels)
        self.f_text2 = texture_net(in_features, ngf, init_size, self.channels)
        self.mask_net: nn.Module | None = None
        if mask_estimator:
            self.mask_net = build_mask_estimator(mask_estimator_arch, mask_estimator_width)
            # A buffer, so the flag travels with the weights: random estimator weights are never used silently.
            self.register_buffer("mask_estimator_trained", torch.zeros((), dtype=torch.bool))
        self.init_weights(init_type, init_gain)
        # The generator's modules never change after construction; listing them once keeps the per-call checks of
        # the fast path cheap. (A plain tuple attribute, so nn.Module does not register the modules twice.)
        self._generator_modules: tuple[nn.Module, ...] = tuple(
            module for net in (self.label_emb, self.f_shape, self.f_text1, self.f_text2) for module in net.modules()
        )
        self._fused: tuple[tuple[tuple[int, int], ...], dict[str, Callable[..., torch.Tensor]]] | None = None
        self._mask_modules: tuple[nn.Module, ...] = () if self.mask_net is None else tuple(self.mask_net.modules())
        self._fused_mask: tuple[tuple[tuple[int, int], ...], Callable[[torch.Tensor], torch.Tensor]] | None = None

    # ---------------------------------------------------------------------------------- configuration
    @property
    def fast_path(self) -> bool:
        """Whether eval-mode, no-grad generation uses the fused networks."""
        return self._fast_path

    @fast_path.setter
    def fast_path(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"`fast_path` should be a bool, but got {type(value).__name__} {value!r}.")
        self._fast_path = value

    @property
    def micro_batch(self) -> int | None:
        """Chunk size of the fast path; ``None`` for automatic (chunks on the CPU, none on accelerators)."""
        return self._micro_batch

    @micro_batch.setter
    def micro_batch(self, value: int | None) -> None:
        self._micro_batch = None if value is None else check_positive_int(value, "micro_batch")

    def init_weights(self, init_type: str = "orthogonal", init_gain: float = 0.1) -> None:
        """(Re-)initialise the generator as the authors' training script does (the mask estimator is untouched).

        Args:
            init_type: ``"orthogonal"``, ``"normal"``, ``"xavier"``, ``"kaiming"`` or ``"default"``.
            init_gain: gain (orthogonal, xavier) or standard deviation (normal) of the weights, and standard
                deviation of the BatchNorm weights around 1.
        """
        verify_str_arg(init_type, "init_type", _INIT_TYPES)
        if isinstance(init_gain, bool) or not isinstance(init_gain, (int, float)) or init_gain <= 0:
            raise ValueError(f"`init_gain` should be a positive number, but got {init_gain!r}.")
        if init_type == "default":
            return
        with torch.no_grad():
            for module in (*self.f_shape, *self.f_text1, *self.f_text2):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    if init_type == "orthogonal":
                        nn.init.orthogonal_(module.weight, gain=init_gain)
                    elif init_type == "normal":
                        nn.init.normal_(module.weight, 0.0, init_gain)
                    elif init_type == "xavier":
                        nn.init.xavier_normal_(module.weight, gain=init_gain)
                    else:
                        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.normal_(module.weight, 1.0, init_gain)
                    nn.init.zeros_(module.bias)

    def arch_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (speed knobs and initialisation excluded)."""
        return {
            "num_classes": self.num_classes,
            "latent_dim": self.latent_dim,
            "ngf": self.ngf,
            "image_size": self.image_size,
            "mask_estimator": self.mask_net is not None,
            "mask_estimator_width": self.mask_estimator_width,
            "mask_estimator_arch": self.mask_estimator_arch,
            "class_names": list(self.class_names),
        }

    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters of the three mechanisms and the class embedding (what the authors train)."""
        return [p for module in (self.label_emb, self.f_shape, self.f_text1, self.f_text2) for p in module.parameters()]

    # ------------------------------------------------------------------------------ training-time API
    def mechanism_input(self, latent: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The input of every mechanism network: ``concat(u, label_emb(y))``, ``(B, latent_dim + num_classes)``.

        Raises:
            ValueError: ``latent`` is not ``(B, latent_dim)`` or ``classes`` not ``(B,)``.
        """
        if latent.dim() != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"`latent` should have shape (B, {self.latent_dim}), but got {tuple(latent.shape)}.")
        if classes.shape != latent.shape[:1]:
            raise ValueError(
                f"`classes` should have shape ({latent.shape[0]},) to match `latent`, but got {tuple(classes.shape)}."
            )
        return torch.cat([latent, self.label_emb(classes)], dim=1)

    def forward_mechanisms(
        self,
        u_shape: torch.Tensor,
        u_fg: torch.Tensor,
        u_bg: torch.Tensor,
        y_shape: torch.Tensor,
        y_fg: torch.Tensor,
        y_bg: torch.Tensor,
        *,
        fg_offsets: torch.Tensor | None,
        bg_offsets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the three mechanism networks on explicit noise and labels, as the authors' training does.

        This is the plain module path: autograd works, BatchNorm follows the module's train/eval mode. The
        authors' standard forward passes the same ``u`` and ``y`` to all three; their counterfactual mode passes
        fresh ``u`` and other labels.

        Args:
            u_shape: noise of the shape mechanism, ``(B, latent_dim)``; likewise ``u_fg``, ``u_bg``.
            u_fg: noise of the texture (foreground) mechanism.
            u_bg: noise of the background mechanism.
            y_shape: class indices, ``(B,)``; likewise ``y_fg``, ``y_bg``.
            y_fg: foreground classes.
            y_bg: background classes.
            fg_offsets: ``(B, 2)`` shuffler offsets of the foreground (see ``random_shift_offsets``), or
                ``None`` to skip the shuffle. The authors always shuffle; passing ``None`` must be explicit.
            bg_offsets: the same for the background.

        Returns:
            ``(mask, foreground, background)``: the mask in [1e-4, 1 - 1e-4], ``(B, 1, H, W)``, and the texture
            maps in the tanh range [-1, 1], ``(B, 3, H, W)``. Compose them with ``cfaug.functional.composite``.
        """
        mask = self.f_shape(self.mechanism_input(u_shape, y_shape)).clamp(MASK_CLAMP, 1 - MASK_CLAMP)
        foreground = self.f_text1(self.mechanism_input(u_fg, y_fg))
        background = self.f_text2(self.mechanism_input(u_bg, y_bg))
        if fg_offsets is not None:
            foreground = cyclic_shift(foreground, fg_offsets)
        if bg_offsets is not None:
            background = cyclic_shift(background, bg_offsets)
        return mask, foreground, background

    # Calling the module is the same, so that wrappers such as DistributedDataParallel can run it.
    forward = forward_mechanisms

    # ------------------------------------------------------------------------------------ mechanisms
    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Masks in [1e-4, 1 - 1e-4], ``(B, 1, H, W)``, from fresh per-sample noise (stream 0)."""
        latent = self._noise(seeds, SHAPE_NOISE_STREAM)
        return self._run("shape", latent, classes, None)

    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Foregrounds in [0, 1], ``(B, 3, H, W)``: ``f_text1`` and a per-sample cyclic shift (streams 1, 3)."""
        latent = self._noise(seeds, TEXTURE_NOISE_STREAM)
        offsets = per_sample_randint(seeds, TEXTURE_SHIFT_STREAM, self.image_size + 1, (2,))
        return self._run("texture", latent, classes, offsets)

    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Backgrounds in [0, 1], ``(B, 3, H, W)``: ``f_text2`` and a per-sample cyclic shift (streams 2, 4)."""
        latent = self._noise(seeds, BACKGROUND_NOISE_STREAM)
        offsets = per_sample_randint(seeds, BACKGROUND_SHIFT_STREAM, self.image_size + 1, (2,))
        return self._run("background", latent, classes, offsets)

    def _noise(self, seeds: torch.Tensor, stream: int) -> torch.Tensor:
        # Drawn on the CPU from the sample's own stream, so the image does not depend on batch or device.
        weight = self.label_emb.weight
        return per_sample_normal(seeds, stream, (self.latent_dim,)).to(device=weight.device, dtype=weight.dtype)

    def _run(
        self, mechanism: str, latent: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None
    ) -> torch.Tensor:
        if offsets is not None:
            offsets = offsets.to(latent.device)
        if self.uses_fast_path():
            fused = self._fused_networks()[mechanism]
            chunk = self._chunk_size(latent.device)
            inputs = (latent, classes) if offsets is None else (latent, classes, offsets)
            outputs = [fused(*(t[i : i + chunk] for t in inputs)) for i in range(0, len(latent), chunk)]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if mechanism == "shape":
            return self.f_shape(self.mechanism_input(latent, classes)).clamp(MASK_CLAMP, 1 - MASK_CLAMP)
        net = self.f_text1 if mechanism == "texture" else self.f_text2
        return (cyclic_shift(net(self.mechanism_input(latent, classes)), offsets) + 1) / 2

    # ------------------------------------------------------------------------------------- fast path
    def uses_fast_path(self) -> bool:
        """Whether the mechanisms would run the fused networks now: ``fast_path`` on, eval mode, no autograd."""
        if not self.fast_path or torch.is_grad_enabled():
            return False
        return not any(module.training for module in self._generator_modules)

    def _chunk_size(self, device: torch.device, mask: bool = False) -> int:
        if self.micro_batch is not None:
            return self.micro_batch
        if device.type != "cpu":
            return 2**62  # accelerators want one big launch; CPU caches want small chunks
        return CPU_MASK_MICRO_BATCH if mask else CPU_MICRO_BATCH

    def _weights_key(self, modules: tuple[nn.Module, ...] | None = None) -> tuple[tuple[int, int], ...]:
        # Every in-place update (optimizer step, load_state_dict, copy_ under no_grad) bumps a tensor's version
        # counter, and .to() or a re-assigned parameter brings new memory, so this key changes whenever the fused
        # weights go stale. Reading the modules' own dicts keeps it current and costs a few microseconds, which
        # matters at batch 1 (Module.parameters() would cost more than the 2x2 convolutions).
        return tuple(
            (tensor.data_ptr(), tensor._version)
            for module in (self._generator_modules if modules is None else modules)
            for tensors in (module._parameters, module._buffers)
            for tensor in tensors.values()
            if tensor is not None
        )

    def _fused_networks(self) -> dict[str, Callable[..., torch.Tensor]]:
        key = self._weights_key()
        if self._fused is None or self._fused[0] != key:
            with torch.no_grad():
                networks = {
                    "shape": FusedShapeNet(self.f_shape, self.label_emb, self.latent_dim),
                    "texture": FusedTextureNet(self.f_text1, self.label_emb, self.latent_dim),
                    "background": FusedTextureNet(self.f_text2, self.label_emb, self.latent_dim),
                }
            self._fused = (key, networks)
        return self._fused[1]

    def invalidate_fast_path(self) -> None:
        """Drop the fused weights; needed only after editing ``param.data`` in place, which bypasses versioning."""
        self._fused = self._fused_mask = None

    def train(self, mode: bool = True) -> MnistBackend:
        """Set train or eval mode (see ``torch.nn.Module.train``); drops the fused weights."""
        self.invalidate_fast_path()
        return super().train(mode)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> MnistBackend:
        self.invalidate_fast_path()
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # The fused weights are a cache: don't ship them to DataLoader workers.
        state = self.__dict__.copy()
        state["_fused"] = state["_fused_mask"] = None
        return state

    # --------------------------------------------------------------------------------- real images
    @property
    def has_mask_estimator(self) -> bool:
        """True when the backend has a mask estimator and it has been trained."""
        return self.mask_net is not None and bool(self.mask_estimator_trained)

    def mark_mask_estimator_trained(self, trained: bool = True) -> None:
        """Record (in the state dict) that the mask estimator's weights are trained; called by training code.

        Raises:
            RuntimeError: the backend was built without a mask estimator.
        """
        if self.mask_net is None:
            raise RuntimeError("This mnist backend has no mask estimator; build it with mask_estimator=True.")
        self.mask_estimator_trained.fill_(bool(trained))

    def mask_estimator_input(self, images: torch.Tensor) -> torch.Tensor:
        """Real images in [0, 1], ``(B, 1 or 3, H, W)``, as the estimator sees them: RGB, ``image_size``, [-1, 1].

        Raises:
            TypeError: ``images`` is not a floating-point tensor.
            ValueError: ``images`` is not ``(B, 1, H, W)`` or ``(B, 3, H, W)``.
        """
        return self._estimator_input(images, expand_gray=True)

    def _estimator_input(self, images: torch.Tensor, expand_gray: bool) -> torch.Tensor:
        # The fused estimator reads a grayscale image as it is (expand_gray=False), the module needs it as RGB.
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
            got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"`images` should be a floating-point tensor with values in [0, 1], but got {got}.")
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"`images` should have shape (B, 1, H, W) or (B, 3, H, W), but got {tuple(images.shape)}.")
        weight = self.label_emb.weight
        images = images.to(device=weight.device, dtype=weight.dtype)
        if expand_gray and images.shape[1] == 1:  # plain MNIST is grayscale
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return images * 2 - 1

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Mask logits of the estimator at ``image_size``, with autograd (for training the estimator).

        Args:
            images: real images in [0, 1], ``(B, 1 or 3, H, W)`` of any size.

        Returns:
            Logits, ``(B, 1, image_size, image_size)``.

        Raises:
            RuntimeError: the backend was built without a mask estimator.
        """
        if self.mask_net is None:
            raise RuntimeError("This mnist backend has no mask estimator; build it with mask_estimator=True.")
        return self.mask_net(self.mask_estimator_input(images))

    def estimate_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Estimate object masks of real images in [0, 1], ``(B, 1 or 3, H, W)`` -> ``(B, 1, H, W)``.

        Images of any size are resized to ``image_size`` for the estimator and the mask back to ``H x W``
        (bilinear). Grayscale images are repeated to three channels. In eval mode with ``fast_path`` on, the
        estimator runs a fused copy of its network (``cfaug.models.mnist_cgn_fused.fuse_mask_estimator``): the
        masks of the module path within 1e-5, several times faster for single images.

        Raises:
            NotImplementedError: the backend has no mask estimator.
            RuntimeError: the estimator exists but has not been trained.
        """
        if self.mask_net is None:
            raise NotImplementedError(
                f"Backend {self.name!r} (weights {self.weights_name!r}) has no mask estimator for real images; "
                "build it with mask_estimator=True and train it, or load weights that include one."
            )
        if not bool(self.mask_estimator_trained):
            raise RuntimeError(
                f"The mask estimator of backend {self.name!r} (weights {self.weights_name!r}) has not been trained, "
                "so its masks would be noise. Train it (then call mark_mask_estimator_trained()) or load weights "
                "that include a trained estimator."
            )
        with torch.no_grad():
            if self.fast_path and not any(module.training for module in self._mask_modules):
                masks = self._fused_mask_logits(self._estimator_input(images, expand_gray=False)).sigmoid_()
            else:
                masks = torch.sigmoid(self.mask_logits(images))
            if masks.shape[-2:] != images.shape[-2:]:
                masks = F.interpolate(
                    masks, size=images.shape[-2:], mode="bilinear", align_corners=False, antialias=True
                ).clamp_(0, 1)
        return masks.to(device=images.device, dtype=images.dtype)

    def _fused_mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        key = self._weights_key(self._mask_modules)
        if self._fused_mask is None or self._fused_mask[0] != key:
            self._fused_mask = (key, fuse_mask_estimator(self.mask_net))
        fused = self._fused_mask[1]
        chunk = self._chunk_size(images.device, mask=True)
        if len(images) <= chunk:
            return fused(images)
        return torch.cat([fused(images[i : i + chunk]) for i in range(0, len(images), chunk)])

    # --------------------------------------------------------------------------------- persistence
    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides: Any) -> MnistBackend:
        """Build the architecture described by ``checkpoint`` and load its tensors; skips the initialisation."""
        overrides.setdefault("init_type", "default")  # the weights are overwritten anyway
        arch = checkpoint.meta.get("arch")
        if isinstance(arch, dict) and "mask_estimator_arch" not in arch:
            # Written before the lite estimator existed: its estimator (if any) is the U-Net.
            overrides.setdefault("mask_estimator_arch", "unet")
        return super().from_checkpoint(checkpoint, **overrides)

    @classmethod
    def import_weights(
        cls, source: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
    ) -> MnistBackend:
        """Convert one of the CGN authors' MNIST checkpoints (a plain ``state_dict`` ``.pth``) into this backend.

        The file is read with ``torch.load(weights_only=True)``, so nothing is unpickled beyond tensors. The
        architecture comes from the authors' yaml config (``MODEL.LATENT_SZ``, ``MODEL.NGF``,
        ``MODEL.N_CLASSES``). The authors trained on images in [-1, 1]; the backend maps its tanh outputs to
        [0, 1], so the weights are used unchanged.

        Args:
            source: the ``.pth`` file, e.g. ``mnists/experiments/cgn_colored_MNIST/weights/ckp.pth``.
            config: the authors' ``cfg.yaml``. When ``None``, the first existing of ``<stem>.cfg.yaml`` and
                ``cfg.yaml`` beside the file and ``cfg.yaml`` one folder up (the authors' layout) is used.

        Returns:
            The backend in eval mode without gradients. ``weights_name`` says where it came from and
            ``provenance`` records the source file, its sha256 and the authors' config; ``save`` stores it.

        Raises:
            FileNotFoundError: ``source`` or the config file does not exist.
            CheckpointError: ``source`` is not a state dict of tensors, or its keys or shapes do not match.
            ValueError: the config lacks a needed key or is not a yaml mapping.

        Examples:
            >>> backend = MnistBackend.import_weights("colored_mnist.pth")  # doctest: +SKIP
            >>> backend.save("colored_mnist.safetensors", recipe={"source": backend.provenance})  # doctest: +SKIP
        """
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(
                f"`source` should be the authors' .pth checkpoint, but {str(source)!r} does not exist."
            )
        config_path = _find_authors_config(source, config)
        authors_config = _read_authors_config(config_path)
        model_config = authors_config["MODEL"]
        state_dict = load_torch_state_dict(source, "the authors' MNIST CGN state dict")

        model = cls(
            num_classes=_config_int(model_config, "N_CLASSES", config_path),
            latent_dim=_config_int(model_config, "LATENT_SZ", config_path),
            ngf=_config_int(model_config, "NGF", config_path),
            image_size=32,  # the authors' MNIST CGN is fixed at 32x32 (no key in their config)
            init_type="default",
        )
        _check_state_dict(state_dict, model.state_dict(), source)
        model.load_state_dict(state_dict, strict=True)

        digest = sha256_file(source)
        train_config = authors_config.get("TRAIN")
        dataset = train_config.get("DATASET") if isinstance(train_config, dict) else None
        model.weights_name = f"imported:{source.name}"
        model.weights_sha256 = digest
        model.provenance = {
            "format": "CGN authors' MNIST state dict (autonomousvision/counterfactual_generative_networks)",
            "source": source.name,
            "sha256": digest,
            "config_file": config_path.name,
            "dataset": dataset,
            "authors_config": authors_config,
        }
        return model.eval().requires_grad_(False)

    def extra_repr(self) -> str:
        """Architecture summary shown by ``print(backend)``."""
        return (
            f"{super().extra_repr()}, latent_dim={self.latent_dim}, ngf={self.ngf}, "
            f"mask_estimator={self.mask_net is not None}, fast_path={self.fast_path}"
        )


# ------------------------------------------------------------------------------- import helpers
def _find_authors_config(source: Path, config: str | os.PathLike[str] | None) -> Path:
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"`config` should be the authors' cfg.yaml, but {str(path)!r} does not exist.")
        return path
    candidates = [
        source.with_name(f"{source.stem}.cfg.yaml"),
        source.with_name("cfg.yaml"),
        source.parent.parent / "cfg.yaml",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No config found for {str(source)!r}; looked for {[str(p) for p in candidates]}. Pass the authors' "
        "cfg.yaml (it gives MODEL.LATENT_SZ, MODEL.NGF and MODEL.N_CLASSES) as `config`."
    )


def _read_authors_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ValueError(f"`config` {str(path)!r} is not valid yaml: {error}") from error
    if not isinstance(loaded, dict) or not isinstance(loaded.get("MODEL"), dict):
        raise ValueError(
            f"`config` {str(path)!r} should be the authors' yaml with a MODEL section, but got "
            f"{type(loaded).__name__} with keys {sorted(loaded) if isinstance(loaded, dict) else []}."
        )
    return loaded


def _config_int(section: Mapping[str, Any], key: str, path: Path) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`config` {str(path)!r} should set MODEL.{key} to a positive integer, but got {value!r}.")
    return value


def _check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: Path) -> None:
    problems = state_dict_problems(state, expected)
    if not problems:
        return
    raise CheckpointError(
        f"{str(source)!r} does not match the authors' MNIST CGN architecture of the given config: "
        + "; ".join(problems)
        + ". Is it an MNIST CGN checkpoint (keys label_emb, f_shape, f_text1, f_text2) with its own cfg.yaml?"
    )
