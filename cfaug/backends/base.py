"""The backend contract: three independent mechanisms behind one interface.

A backend owns the generative mechanisms of a Counterfactual Generative Network:

* the **shape** mechanism maps a class to an object mask ``m`` in [0, 1], ``(B, 1, H, W)``;
* the **texture** mechanism maps a class to a foreground image ``f`` in [0, 1], ``(B, C, H, W)``;
* the **background** mechanism maps a class to a background image ``b`` in [0, 1], ``(B, C, H, W)``.

Each mechanism draws its noise from the per-sample streams of ``cfaug.seeding``, keyed by one seed per
sample, so a counterfactual depends only on its three classes and its seed. Because the mechanisms are
independent, their outputs can be generated separately, cached and recombined with
``cfaug.functional.composite``.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cfaug.checkpoint import Checkpoint, CheckpointError, build_checked, load_checkpoint, save_checkpoint
from cfaug.functional import composite
from cfaug.hub import Weights, WeightsError, resolve_weights
from cfaug.names import MECHANISMS
from cfaug.seeding import draw_seeds

__all__ = ["MECHANISMS", "Backend", "Components"]


@dataclass(frozen=True)
class Components:
    """The parts of a batch of generated images.

    Attributes:
        mask: object masks in [0, 1], ``(B, 1, H, W)``.
        foreground: texture images in [0, 1], ``(B, C, H, W)``.
        background: background images in [0, 1], ``(B, C, H, W)``.
        image: the composite ``mask * foreground + (1 - mask) * background``, ``(B, C, H, W)``.
    """

    mask: torch.Tensor
    foreground: torch.Tensor
    background: torch.Tensor
    image: torch.Tensor

    @classmethod
    def compose(cls, mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> Components:
        """Build components from the three mechanism outputs, computing the composite image."""
        return cls(mask, foreground, background, composite(mask, foreground, background))

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str) -> Components:
        """Move every tensor to ``device``."""
        return Components(*(t.to(device) for t in (self.mask, self.foreground, self.background, self.image)))


def _check_classes(value: Any, arg: str, num_classes: int) -> torch.Tensor:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        try:
            value = torch.as_tensor(value, dtype=torch.int64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"`{arg}` should be a sequence of class indices (int): {error}") from error
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{arg}` should be a 1-D tensor of class indices, but got {type(value).__name__}.")
    if value.dim() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
        raise ValueError(
            f"`{arg}` should be a 1-D integer tensor of class indices, but got dtype {value.dtype} "
            f"and shape {tuple(value.shape)}."
        )
    if len(value) and (int(value.min()) < 0 or int(value.max()) >= num_classes):
        raise ValueError(
            f"`{arg}` should hold class indices in [0, {num_classes - 1}], but got values in "
            f"[{int(value.min())}, {int(value.max())}]."
        )
    return value.to(torch.int64)


class Backend(nn.Module, abc.ABC):
    """Base class of every mechanism backend.

    Subclasses implement the three mechanisms and, to be loadable by name, the architecture round trip
    (``arch_config`` and the constructor). Register a subclass in-process with
    ``cfaug.register_backend``, or from another package through the ``cfaug.backends`` entry-point group.

    Class attributes:
        name: the registry name, e.g. ``"mnist"``.
        named_weights: the backend's named weights (see ``cfaug.hub``).
        default_weights: the name used when ``weights=None``, or ``None`` when the backend ships none.

    Instance attributes:
        num_classes: number of classes each mechanism is conditioned on.
        class_names: one name per class.
        image_size: side of the square images the mechanisms produce.
        channels: channels of foreground, background and composite.
        provenance: for weights imported from another code base, their source; ``None`` otherwise.
        default_shape: the kind of counterfactual these weights were measured to do best with for labelled samples
            (``"real"``, ``"generated"`` or ``"mixed"``; ``CounterfactualAugment(shape="auto")`` uses it), or ``None``.
    """

    name: ClassVar[str] = ""
    named_weights: ClassVar[dict[str, Weights]] = {}
    default_weights: ClassVar[str | None] = None

    def __init__(self, num_classes: int, image_size: int, channels: int, class_names: Sequence[str] | None = None):
        super().__init__()
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.channels = int(channels)
        names = tuple(str(i) for i in range(num_classes)) if class_names is None else tuple(class_names)
        if len(names) != num_classes:
            raise ValueError(f"`class_names` should have {num_classes} entries, but got {len(names)}.")
        self.class_names = names
        #: name or path of the weights this instance was loaded from, and the file's sha256.
        self.weights_name: str | None = None
        self.weights_sha256: str | None = None
        #: where imported weights came from (source file, its sha256, the foreign config); ``save`` stores it.
        self.provenance: dict[str, Any] | None = None
        #: metadata key ``default_shape``: what ``shape="auto"`` picks for labelled samples (checked there).
        self.default_shape: str | None = None

    # ----------------------------------------------------------------------------------------- mechanisms
    @abc.abstractmethod
    def shape_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Masks in [0, 1], ``(B, 1, H, W)``, for ``classes`` (int64, ``(B,)``) and per-sample ``seeds``."""

    @abc.abstractmethod
    def texture_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Foregrounds in [0, 1], ``(B, C, H, W)``, for ``classes`` and per-sample ``seeds``."""

    @abc.abstractmethod
    def background_mechanism(self, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Backgrounds in [0, 1], ``(B, C, H, W)``, for ``classes`` and per-sample ``seeds``."""

    def generate(self, mechanism: str, classes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Run one mechanism without autograd, in eval mode, on the backend's device.

        A backend left in training mode is switched to eval mode for the call and back afterwards, so generation
        never uses batch statistics nor updates running statistics.

        Args:
            mechanism: ``"shape"``, ``"texture"`` or ``"background"``.
            classes: class indices, ``(B,)``.
            seeds: per-sample seeds, ``(B,)`` int64.
        """
        run = {
            "shape": self.shape_mechanism,
            "texture": self.texture_mechanism,
            "background": self.background_mechanism,
        }
        if mechanism not in run:
            raise ValueError(f"Unknown value {mechanism!r} for argument `mechanism`. Valid values are {list(run)}.")
        classes = _check_classes(classes, "classes", self.num_classes)
        if seeds.shape != classes.shape:
            raise ValueError(f"`seeds` should have shape {tuple(classes.shape)}, but got {tuple(seeds.shape)}.")
        # Generation is inference: a backend left in training mode would use batch statistics (so a sample would
        # depend on its batch) and update running statistics. Switch to eval for the call and back afterwards.
        was_training = self.training
        if was_training:
            self.eval()
        try:
            # no_grad rather than inference_mode: inference tensors cannot be saved for backward, and users
            # feed these images straight into a classifier that is being trained.
            with torch.no_grad():
                return run[mechanism](classes.to(self.device), seeds.cpu())
        finally:
            if was_training:
                self.train()

    def sample(
        self,
        shape: torch.Tensor | Sequence[int] | int,
        texture: torch.Tensor | Sequence[int] | int,
        background: torch.Tensor | Sequence[int] | int,
        *,
        generator: torch.Generator | None = None,
        seeds: torch.Tensor | None = None,
    ) -> Components:
        """Generate counterfactual images, one per class triple.

        Args:
            shape: shape class of each image, ``(B,)``.
            texture: texture class of each image, ``(B,)``.
            background: background class of each image, ``(B,)``.
            generator: RNG the per-sample seeds are drawn from; the global torch RNG when ``None``.
            seeds: explicit per-sample seeds, ``(B,)`` int64; overrides ``generator``. The same seed and
                classes always give the same image, whatever else is in the batch.

        Returns:
            The components and composite, on the backend's device.

        Examples:
            >>> import cfaug
            >>> backend = cfaug.load_backend("mnist")  # doctest: +SKIP
            >>> parts = backend.sample([3, 3], [7, 1], [1, 7], seeds=torch.tensor([0, 1]))  # doctest: +SKIP
            >>> parts.image.shape  # doctest: +SKIP
            torch.Size([2, 3, 32, 32])
        """
        shape = _check_classes(shape, "shape", self.num_classes)
        texture = _check_classes(texture, "texture", self.num_classes)
        background = _check_classes(background, "background", self.num_classes)
        if not len(shape) == len(texture) == len(background):
            raise ValueError(
                "`shape`, `texture` and `background` should have one length, but got "
                f"{len(shape)}, {len(texture)} and {len(background)}."
            )
        if seeds is None:
            seeds = draw_seeds(len(shape), generator)
        elif not isinstance(seeds, torch.Tensor) or seeds.shape != shape.shape or seeds.dtype != torch.int64:
            got = f"{seeds.dtype} {tuple(seeds.shape)}" if isinstance(seeds, torch.Tensor) else type(seeds).__name__
            raise ValueError(f"`seeds` should be an int64 tensor of shape {tuple(shape.shape)}, but got {got}.")
        return Components.compose(
            self.generate("shape", shape, seeds),
            self.generate("texture", texture, seeds),
            self.generate("background", background, seeds),
        )

    # ------------------------------------------------------------------------------------ real images
    @property
    def has_mask_estimator(self) -> bool:
        """Whether ``estimate_mask`` is available for real images."""
        return False

    def estimate_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Estimate object masks of real images in [0, 1], ``(B, C, H, W)`` -> ``(B, 1, H, W)``.

        Backends that can segment real images override this and ``has_mask_estimator``.
        """
        raise NotImplementedError(
            f"Backend {self.name!r} (weights {self.weights_name!r}) has no mask estimator for real images."
        )

    # ------------------------------------------------------------------------------------ persistence
    @property
    def device(self) -> torch.device:
        """The device of the backend's parameters (CPU for a backend without parameters)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @abc.abstractmethod
    def arch_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments that rebuild this architecture."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """Metadata written next to the tensors by ``save``, with the provenance of imported weights if any."""
        meta = {
            "backend": self.name,
            "arch": self.arch_config(),
            "class_names": list(self.class_names),
            "image_size": self.image_size,
            "channels": self.channels,
            "value_range": [0.0, 1.0],
        }
        if self.provenance is not None:
            meta["provenance"] = self.provenance
        if self.default_shape is not None:
            meta["default_shape"] = self.default_shape
        return meta

    def save(self, path: str | os.PathLike[str], **meta: Any) -> None:
        """Write the backend as a cfaug checkpoint; ``meta`` adds e.g. ``recipe`` and ``metrics``."""
        save_checkpoint(path, self.state_dict(), {**self.checkpoint_meta(), **meta})

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, **overrides: Any) -> Backend:
        """Build the architecture described by ``checkpoint``, load its tensors (strictly), restore its provenance.

        The tensors are checked against the architecture before it is built (``cfaug.checkpoint.build_checked``):
        an ``arch`` whose size does not match the file's tensors, missing, unexpected or mis-shaped keys, and
        non-floating or non-finite tensors are refused without allocating the model.

        Raises:
            CheckpointError: the checkpoint is of another backend, or does not fit; the message names the file.
        """
        meta = checkpoint.meta
        source = checkpoint.source
        if meta.get("backend") != cls.name:
            raise CheckpointError(
                f"{source} was written by backend {meta.get('backend')!r}, not {cls.name!r}. "
                f"Load it with cfaug.load_backend({meta.get('backend')!r}, weights=...)."
            )
        arch = meta.get("arch", {})
        if not isinstance(arch, dict):
            raise CheckpointError(f"{source}: `arch` in its metadata should be a JSON object, but got {arch!r}.")
        model = build_checked(
            lambda: cls(**{**arch, **overrides}),
            checkpoint.state_dict,
            source,
            f"the {cls.name!r} `arch` in its metadata",
        )
        model.provenance = meta.get("provenance")
        model.default_shape = meta.get("default_shape")
        return model

    @classmethod
    def from_pretrained(
        cls,
        weights: str | os.PathLike[str] | None = None,
        device: torch.device | str | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> Backend:
        """Load named weights or a checkpoint file, ready for generation (eval mode, no gradients).

        Args:
            weights: a name from ``named_weights``, a checkpoint path, or ``None`` for
                ``default_weights``.
            device: where to put the model; CPU when ``None``.
            progress: show a progress bar if weights must be downloaded.
            **overrides: constructor arguments that replace those stored in the checkpoint (e.g. speed knobs).
        """
        if weights is None:
            if cls.default_weights is None:
                raise WeightsError(
                    f"Backend {cls.name!r} ships no default weights; pass weights=<checkpoint path> "
                    f"or one of {sorted(cls.named_weights)}."
                )
            weights = cls.default_weights
        path, digest = resolve_weights(cls.name, cls.named_weights, weights, progress=progress)
        model = cls.from_checkpoint(load_checkpoint(path), **overrides)
        model.weights_name = str(weights)
        model.weights_sha256 = digest
        return model.to(device or "cpu").eval().requires_grad_(False)

    @classmethod
    def import_weights(cls, source: str | os.PathLike[str], config: str | os.PathLike[str] | None = None) -> Backend:
        """Convert a checkpoint released in another format (e.g. the CGN authors') into this backend.

        Backends that support an import override this; ``cfaug import-weights`` calls it.
        """
        raise NotImplementedError(f"Backend {cls.name!r} does not import foreign checkpoints.")

    def extra_repr(self) -> str:
        """Name, weights and geometry, shown by ``repr(backend)``."""
        return (
            f"name={self.name!r}, weights={self.weights_name!r}, num_classes={self.num_classes}, "
            f"image_size={self.image_size}, channels={self.channels}"
        )
