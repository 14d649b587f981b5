"""``RandomCounterfactual``: the batched counterfactual augmentation as a kornia augmentation."""

from __future__ import annotations

import os
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from cfaug._utils import check_probability
from cfaug.backends.base import Backend
from cfaug.transforms._image import check_not_empty, check_value_range, to_unit_float
from cfaug.transforms._params import (
    FROM_REAL,
    RECORD_KEYS,
    attach_shapes,
    check_labels,
    check_shape,
    check_vary,
    make_record,
    resolve_shape,
    sample_params,
)
from cfaug.transforms._render import BackendHandle, direct_take, render


class RandomCounterfactual(IntensityAugmentationBase2D):
    """Counterfactual augmentation of float ``(B, C, H, W)`` batches, for ``kornia.augmentation`` pipelines.

    The kornia twin of ``CounterfactualAugment``'s batched path, sharing its parameter
    sampling and rendering. kornia draws the per-sample gate (``p``, ``p_batch``, ``same_on_batch``); this
    augmentation draws the varied classes and seeds in ``generate_parameters`` and runs the generator on
    the gated samples only (kornia 0.9 would otherwise compute every sample and blend), on the batch's device.

    Modes:

    * **Image-only** (the default, and the only one inside ``AugmentationSequential``, which passes the image
      alone): the real object's mask from the backend's ``estimate_mask`` is kept, and its texture and/or
      background (``vary``) are swapped for generated ones of uniformly drawn classes. Masks, boxes and
      keypoints pass through unchanged, since the object keeps its shape.
    * **Label-aware** (``aug(images, labels=labels)``, called directly): ``shape`` picks the kind, as in
      ``CounterfactualAugment``: ``"generated"`` makes each gated sample a generated counterfactual whose shape
      class is its label, ``"real"`` keeps the real shape as in the image-only mode, ``"mixed"`` picks either per
      sample (a fair coin from the global torch RNG), and ``"auto"`` (the default) the kind the backend's weights
      recommend (``"generated"`` when they name none). The labels stay true.

    A 1-channel batch into an RGB backend comes back 1-channel, the luma of the RGB counterfactual (the mask
    estimator sees the image replicated to three channels). Images more than 2x larger or smaller than the
    backend's get one ``UserWarning`` per augmentation. An empty image or NaN values are errors; an input that
    requires grad gives a detached output.

    The parameters of the last call, ``aug._params`` (kornia's convention), hold the classes and seeds
    (``shape``, ``texture``, ``background``, ``seed_<mechanism>``; ``-1`` = from the real image) and replay the
    call exactly with ``aug(images, params=aug._params)``. ``last_record`` gives them in the record format
    of ``CounterfactualAugment``.

    Args:
        backend: a backend name or a loaded ``Backend``; a name is loaded lazily in each process.
        weights: weights of a backend given by name; ``None`` for its default.
        vary: the mechanisms whose class is drawn, from ``("texture", "background")``.
        p: probability of replacing each sample.
        p_batch: probability of applying the augmentation to the batch at all.
        same_on_batch: one gate, one set of classes and one seed per mechanism for the whole batch.
        shape: the kind of counterfactual of labelled calls: ``"auto"``, ``"real"``, ``"generated"`` or
            ``"mixed"``; without labels only ``"real"`` is possible (``"generated"`` is then an error).
        keepdim: keep a ``(C, H, W)`` input's shape instead of returning ``(1, C, H, W)``.

    Shape:
        - Input: :math:`(C, H, W)` or :math:`(B, C, H, W)`, float in [0, 1], ``C`` equal to the backend's channels
          (or 1 for an RGB backend).
        - Output: :math:`(B, C, H, W)`, same dtype and device.

    Examples:
        >>> import kornia.augmentation as K
        >>> augment = RandomCounterfactual("mnist", weights="colored_mnist", p=0.5)  # doctest: +SKIP
        >>> pipeline = K.AugmentationSequential(K.RandomHorizontalFlip(), augment)  # doctest: +SKIP
        >>> out = pipeline(images.cuda())  # image-only: the real digits keep their shape  # doctest: +SKIP
        >>> out = augment(images.cuda(), labels=labels.cuda())  # label-aware, called directly  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: str | Backend = "mnist",
        weights: str | os.PathLike[str] | None = None,
        vary: tuple[str, ...] | list[str] | str = ("texture", "background"),
        p: float = 0.5,
        p_batch: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
        shape: str = "auto",
    ) -> None:
        super().__init__(
            p=check_probability(p),
            p_batch=check_probability(p_batch, "p_batch"),
            same_on_batch=same_on_batch,
            keepdim=keepdim,
        )
        self._handle = BackendHandle(backend, weights)
        self.vary = check_vary(vary)
        self.shape = check_shape(shape)
        self.flags = {"backend": self._handle.name, "vary": self.vary, "shape": self.shape}

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draw the varied classes and one seed per mechanism and sample (kornia's parameter hook)."""
        backend = self._handle.backend()
        return sample_params(batch_shape[0], backend.num_classes, self.vary, same_on_batch=self.same_on_batch)

    def forward(
        self,
        input: torch.Tensor,  # noqa: A002 (kornia's argument name)
        params: dict[str, torch.Tensor] | None = None,
        labels: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Augment a batch; ``labels`` (``(B,)`` class indices) switches to the label-aware mode.

        Raises:
            ValueError: labels of the wrong shape or out of range, an image outside [0, 1], a channel
                mismatch, or image-only use of a backend without a mask estimator.
            TypeError: labels or images of the wrong type.
        """
        # Images are data here: the generator is not differentiated through, so the output is detached.
        input = input.detach()  # noqa: A001
        backend = self._handle.backend()
        if labels is None and self.shape == "generated" and params is None:
            resolve_shape(self.shape, False, backend)  # raises: a label is never invented
        if labels is not None:
            batch = self.transform_tensor(input)
            labels = check_labels(
                labels, batch_size=batch.shape[0], batched=input.ndim == 4, num_classes=backend.num_classes
            )
            if params is None:
                params = self.forward_parameters(batch.shape)
                shape = resolve_shape(self.shape, True, backend)
                params = attach_shapes(params, labels, self.vary, shape, same_on_batch=self.same_on_batch)
        return super().forward(input, params=params, **kwargs)

    def _applied(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The samples kornia's gate selects, as a ``(B,)`` bool CPU tensor."""
        if self.p == 1.0 and self.p_batch == 1.0:
            # kornia applies every sample then, whatever `batch_prob` says.
            return torch.ones(params["shape"].shape[0], dtype=torch.bool)
        return (params["batch_prob"] > 0.5).reshape(-1).cpu()

    def apply_transform(
        self,
        input: torch.Tensor,  # noqa: A002 (kornia's argument name)
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replace the gated samples of ``input`` by counterfactuals; the others come back unchanged."""
        missing = [key for key in RECORD_KEYS[1:] if key not in params]
        if missing:
            raise ValueError(
                f"`params` lacks {missing}: pass the parameters of this augmentation (aug._params) or none."
            )
        backend = self._handle.backend(input.device)
        if input.shape[1] != backend.channels and not (input.shape[1] == 1 and backend.channels == 3):
            raise ValueError(
                f"The images have {input.shape[1]} channels, but backend {backend.name!r} generates "
                f"{backend.channels}-channel images; convert them first (e.g. kornia.color.grayscale_to_rgb)."
            )
        check_not_empty(input.shape[-2], input.shape[-1])
        self._handle.check_domain(backend, input.shape[-2], input.shape[-1], type(self).__name__)
        check_value_range(input)
        classes = {key: params[key].reshape(-1).cpu() for key in RECORD_KEYS[1:]}
        if bool((classes["shape"] == FROM_REAL).any()):
            if not backend.has_mask_estimator:
                raise ValueError(
                    f"Backend {backend.name!r} has no mask estimator for real images, so RandomCounterfactual needs "
                    "the labels (the shape classes): call it directly as aug(images, labels=labels). Inside "
                    "AugmentationSequential only the image reaches it; use cfaug.CounterfactualAugment on "
                    "(images, labels) instead."
                )
            if not self.vary:
                raise ValueError("vary=() leaves nothing to swap in image-only mode; pass labels= or a non-empty vary.")
        chosen = self._applied(params).nonzero()[:, 0]
        if len(chosen) == 0:
            return input
        chosen_params = {key: value[chosen] for key, value in classes.items()}
        index = chosen.to(input.device)
        counterfactuals, _ = render(backend, to_unit_float(input[index]), chosen_params, direct_take(backend))
        output = input.clone()
        output[index] = counterfactuals.to(input.dtype)
        return output

    @property
    def last_record(self) -> dict[str, torch.Tensor] | None:
        """What the last call applied, as ``(B,)`` tensors in the record format of ``CounterfactualAugment``."""
        if not self._params or "shape" not in self._params:
            return None
        params = {key: self._params[key].reshape(-1).cpu() for key in RECORD_KEYS[1:]}
        return make_record(params, self._applied(self._params))
