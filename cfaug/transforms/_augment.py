"""``CounterfactualAugment``: a torchvision v2 transform that swaps texture and background, keeping the label."""

from __future__ import annotations

import os
from typing import Any

import kornia.color
import PIL.Image
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2.functional import is_pure_tensor

from cfaug._utils import check_positive_int, check_probability
from cfaug.backends.base import Backend
from cfaug.transforms._image import (
    ImageKind,
    check_value_range,
    from_batch,
    from_unit_float,
    inspect_image,
    to_batch,
    to_unit_float,
)
from cfaug.transforms._params import (
    NO_LABELS,
    RECORD_KEYS,
    attach_shapes,
    check_generator,
    check_labels,
    check_record,
    check_shape,
    check_vary,
    make_record,
    parse_labels_getter,
    resolve_shape,
    sample_applied,
    sample_params,
)
from cfaug.transforms._render import BackendHandle, Take, direct_take, render

# Annotations whose geometry belongs to the real object: a label-aware counterfactual replaces the object,
# so they would no longer match it.
_OBJECT_ANNOTATIONS = tuple(
    getattr(tv_tensors, name) for name in ("BoundingBoxes", "Mask", "KeyPoints") if hasattr(tv_tensors, name)
)

PLACEMENTS = """\
Use CounterfactualAugment where the label is available:
  - as the dataset's joint transform, which receives (image, target):
        VisionDataset(..., transforms=CounterfactualAugment(...)), or a dataset wrapper that calls
        augment(image, label);
  - in the DataLoader's collate_fn, on the batch (runs in the workers):
        DataLoader(..., collate_fn=lambda batch: augment(*default_collate(batch)));
  - after the DataLoader, on the batch (on the GPU if the batch is there):
        images, labels = augment(images, labels).
MNIST(transform=...) and ImageFolder(transform=...) pass the image alone, without its label."""


class CounterfactualAugment(Transform):
    """Replace images by counterfactuals of a Counterfactual Generative Network, keeping labels true.

    Each sample is replaced with probability ``p``. The label, when known (``(image, label)``, a dict with a
    label key, or a batch ``(B, C, H, W)`` with labels ``(B,)``), is always kept. ``shape`` sets the kind of
    counterfactual:

    * ``"real"``: the real object's shape is kept through the backend's ``estimate_mask``, and its texture
      and/or background are swapped for generated ones of uniformly drawn classes:
      ``composite(mask_real, f, b)`` with ``f`` generated if ``"texture" in vary`` else the real image, and
      ``b`` generated if ``"background" in vary`` else the real image. Needs no label, only a backend with a
      mask estimator; boxes, masks and keypoints of the sample stay true.
    * ``"generated"``: a whole generated counterfactual whose shape class is the label and whose texture and
      background classes are drawn uniformly (for the mechanisms in ``vary``; the others take the label's
      class). Needs the label; without one it is an error (a label is never invented).
    * ``"mixed"``: per sample, either kind with equal probability (one fair coin per sample from the same RNG
      as the other draws); a sample without a label gets ``"real"``.
    * ``"auto"`` (default): with a label, the kind the backend's weights recommend (their metadata key
      ``default_shape``; ``DEFAULT_LABELLED_SHAPE``, ``"generated"``, when they name none, and always
      ``"generated"`` for a backend without a mask estimator); without a label (a lone image, as
      ``ImageFolder(transform=...)`` and ``MNIST(transform=...)`` pass it), ``"real"``.

    Which to pick: ``"generated"`` changes the shape too, so it covers shapes the data lacks, but its shapes are
    only as good as the generator's; ``"real"`` keeps every real object exactly, so it is right when the
    generator's shapes are poor, when annotations must stay true, or when the bias lies in texture and
    background only; ``"mixed"`` hedges between the two. On the biased MNIST variants of the CGN paper real
    shapes de-biased better as saved sets and per batch on all three (docs: Reproducing the paper), so
    the shipped ``mnist`` weights recommend ``"real"``. A backend without a mask estimator supports only
    ``"generated"``, and an unlabelled image there is an error listing the label-aware placements.

    The output matches the input: PIL in, PIL out; ``uint8`` in, ``uint8`` out; float in [0, 1] in, the same
    float dtype out; ``tv_tensors.Image`` kept; same device and same height and width (generated parts are
    resized bilinearly). **Grayscale in, grayscale out**: a 1-channel image into an RGB backend is rendered in
    RGB (the real image replicated to three channels, which is also what the mask estimator sees) and comes
    back as the luma of the composite (weights 0.299, 0.587, 0.114, as PIL's ``convert("L")``), so a
    1-channel model keeps working; ``grayscale_to_rgb=True`` instead converts every output, real pass-through
    images included, to RGB. Any other channel mismatch (e.g. RGB into a grayscale backend, or RGBA) is an
    error: convert such images before the transform. An image more than 2x larger or smaller than the
    backend's ``image_size`` (either side) gets a ``UserWarning``, once per transform: the generated parts are
    resized that far. Images are data: an empty (0-pixel) image and a float image with NaN or values outside
    [0, 1] are errors, and an image that requires grad gives a detached output (the transform is not
    differentiable), without a warning.

    **Where generation runs.** For a batch, the generator runs once, batched, on the samples chosen by ``p``
    only, on the batch's device (the backend is moved there on first use). A single sample (DataLoader
    workers) is served from a *component bank* instead of running the generator at batch size 1: per
    mechanism and class, ``bank_size`` components are generated in one batched call with fresh seeds; each
    request takes a random stored component of the class it needs, and each component is handed out
    ``reuse`` times before its store is regenerated. Since the mechanisms are independent, parts of different
    stores combine into new counterfactuals. ``reuse=1`` makes every part fresh (most diverse, generation cost
    of one counterfactual per sample, in batches); larger ``reuse`` divides the generation cost by ``reuse``
    at the price of repeating each texture, background or shape in ``reuse`` counterfactuals (combined with
    different other parts). ``bank_size=0`` disables the bank: each sample is generated alone. The bank
    holds ``bank_size * C * H * W * 4`` bytes per requested (mechanism, class) in each process.

    **Processes.** The transform pickles without its model when the backend is given by name: each DataLoader
    worker loads the backend on first use, and gets its own bank and random stream.

    **Randomness.** Which samples are replaced, the drawn classes and the seeds come from the global torch RNG,
    like every torchvision transform (so DataLoader worker seeding applies), or from ``generator``. With a
    generator, each DataLoader worker derives its own stream from it and the worker's seed.

    Args:
        backend: a backend name (see ``cfaug.list_backends``) or a loaded ``Backend``.
        weights: weights of a backend given by name: a named weight or a checkpoint path; ``None`` for its
            default.
        p: probability that a sample is replaced, drawn per sample.
        vary: the mechanisms whose class is drawn at random, from ``("texture", "background")``.
        labels_getter: how to find the label: ``"default"`` (like torchvision's MixUp/CutMix: the second item
            of a tuple, an ``int`` or a tensor, or the ``"label(s)"`` key of a dict; a lone image has none), a
            callable ``sample -> label`` (returning ``None`` for no label), or ``None`` (never look for one).
        shape: the kind of counterfactual: ``"auto"``, ``"real"``, ``"generated"`` or ``"mixed"`` (see above).
        grayscale_to_rgb: convert 1-channel images to RGB for an RGB backend, on every output (by default a
            1-channel image gives a 1-channel output).
        same_on_batch: one draw of ``p``, classes and seeds for a whole batch.
        bank_size: components stored per mechanism and class for single-sample calls; 0 disables the bank.
        reuse: how many counterfactuals each stored component is used in before it is regenerated.
        return_record: also return a record of what was applied (see below).
        generator: a CPU ``torch.Generator`` for all draws instead of the global torch RNG.

    Returns:
        The sample with its image replaced; with ``return_record=True``, the pair ``(sample, record)``. The
        record is a dict of tensors, ``(B,)`` for a batch and scalars for one sample: ``applied`` (bool),
        ``shape``, ``texture``, ``background`` (classes) and ``seed_shape``, ``seed_texture``,
        ``seed_background``. A class and seed of ``-1`` mean the part came from the real image (or the sample
        was not replaced). ``backend.generate(m, record[m], record["seed_" + m])`` regenerates part ``m``
        exactly (bitwise for the same batch composition; parts served by the bank were generated in batches
        of ``bank_size``, so a convolutional backend may differ at the 1e-7 level), and ``replay`` rebuilds
        the whole output. Per-sample records collate into batch records with the DataLoader's default collate.

    Raises:
        ValueError: bad settings, labels of the wrong shape or out of range, an empty image, a float image with
            NaN or values outside [0, 1], a channel mismatch, ``shape="generated"`` without a label, or a kind
            keeping the real shape on a backend without a mask estimator.
        TypeError: settings, images or labels of the wrong type.

    Examples:
        >>> import torch
        >>> from torchvision.transforms import v2
        >>> augment = CounterfactualAugment("mnist", weights="colored_mnist", p=0.5)  # doctest: +SKIP
        >>> images, labels = augment(images, labels)  # a batch after the DataLoader  # doctest: +SKIP
        >>> pipeline = v2.Compose([v2.ToImage(), augment, v2.ToDtype(torch.float32, scale=True)])  # doctest: +SKIP
        >>> image, label = pipeline(pil_image, 3)  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: str | Backend = "mnist",
        weights: str | os.PathLike[str] | None = None,
        p: float = 0.5,
        vary: tuple[str, ...] | list[str] | str = ("texture", "background"),
        *,
        labels_getter: Any = "default",
        shape: str = "auto",
        grayscale_to_rgb: bool = False,
        same_on_batch: bool = False,
        bank_size: int = 64,
        reuse: int = 4,
        return_record: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = check_probability(p)
        self.vary = check_vary(vary)
        self.shape = check_shape(shape)
        self._labels_getter = parse_labels_getter(labels_getter)
        self.labels_getter = labels_getter if labels_getter is None or isinstance(labels_getter, str) else "callable"
        for name, value in (("grayscale_to_rgb", grayscale_to_rgb), ("same_on_batch", same_on_batch)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` should be a bool, but got {type(value).__name__} {value!r}.")
        if not isinstance(return_record, bool):
            raise TypeError(f"`return_record` should be a bool, but got {type(return_record).__name__}.")
        self.grayscale_to_rgb = grayscale_to_rgb
        self.same_on_batch = same_on_batch
        self.bank_size = check_positive_int(bank_size, "bank_size", allow_zero=True)
        self.reuse = check_positive_int(reuse, "reuse")
        self.return_record = return_record
        self._handle = BackendHandle(backend, weights, check_generator(generator))

    # ---------------------------------------------------------------------------------------------- public
    @property
    def backend(self) -> Backend:
        """The backend, loaded in this process on first access."""
        return self._handle.backend()

    @property
    def generator(self) -> torch.Generator | None:
        """The RNG of all draws (``None``: the global torch RNG); may be replaced, e.g. to reseed a pipeline."""
        return self._handle._base_generator

    @generator.setter
    def generator(self, value: torch.Generator | None) -> None:
        self._handle.set_generator(check_generator(value))

    @property
    def backend_name(self) -> str:
        """The registry name of the backend."""
        return self._handle.name

    def extra_repr(self) -> str:
        weights = None if self._handle.weights is None else str(self._handle.weights)
        text = (
            f"backend={self._handle.name!r}, weights={weights!r}, p={self.p}, vary={self.vary}, "
            f"labels_getter={self.labels_getter!r}, shape={self.shape!r}, grayscale_to_rgb={self.grayscale_to_rgb}, "
            f"same_on_batch={self.same_on_batch}, bank_size={self.bank_size}, reuse={self.reuse}, "
            f"return_record={self.return_record}"
        )
        return text + (", generator=<torch.Generator>" if self.generator is not None else "")

    def forward(self, *inputs: Any) -> Any:
        """Replace the image of a sample or batch with probability ``p`` per sample; see the class docstring."""
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat, spec = tree_flatten(sample)
        labels = self._labels_getter(sample)
        if labels is None:
            labels = NO_LABELS
        backend = self._handle.backend()
        shape = self._resolve_shape(backend, labelled=labels is not NO_LABELS)
        position = self._find_image(flat, labels, shape)
        image = flat[position]
        kind = inspect_image(image)
        if labels is not NO_LABELS:
            labels = check_labels(
                labels, batch_size=self._batch_size(image, kind), batched=kind.batched, num_classes=backend.num_classes
            )
        params = self.make_params([image])
        if labels is not NO_LABELS:
            generator = self._handle.generator
            params = attach_shapes(
                params, labels, self.vary, shape, same_on_batch=self.same_on_batch, generator=generator
            )
        flat[position], record = self._apply(image, kind, params, want_record=self.return_record)
        output = tree_unflatten(flat, spec)
        return (output, record) if self.return_record else output

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw the apply mask, the varied classes and the seeds for the image in ``flat_inputs``.

        The label-determined classes are filled in by ``forward`` (labels never reach this hook).
        """
        image = flat_inputs[0]
        batch_size = self._batch_size(image, inspect_image(image))
        generator = self._handle.generator
        applied = sample_applied(batch_size, self.p, same_on_batch=self.same_on_batch, generator=generator)
        return sample_params(
            batch_size,
            self._handle.backend().num_classes,
            self.vary,
            applied=applied,
            same_on_batch=self.same_on_batch,
            generator=generator,
        )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply drawn parameters to one image (the torchvision v2 hook)."""
        return self._apply(inpt, inspect_image(inpt), params, want_record=False)[0]

    def replay(self, inpt: Any, record: dict[str, Any]) -> Any:
        """Rebuild the output of a call from its input and record, generating every part from the record's seeds.

        Parts served by the bank were generated in a batch; a convolutional backend may differ from them at
        the 1e-7 level when regenerated alone.

        Args:
            inpt: the image (or batch) that was transformed.
            record: the record returned with ``return_record=True`` (for a batch, or collated per-sample records).

        Returns:
            The transformed image, of the same kind as ``inpt``.
        """
        kind = inspect_image(inpt)
        params = check_record(record, self._batch_size(inpt, kind))
        return self._apply(inpt, kind, params, use_bank=False, want_record=False)[0]

    # ---------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _batch_size(image: Any, kind: ImageKind) -> int:
        return int(image.shape[0]) if kind.batched else 1

    @staticmethod
    def _find_image(flat: list[Any], labels: Any, shape: str) -> int:
        """The position of the one image among the flattened sample, never the label."""
        if any(isinstance(leaf, tv_tensors.Video) for leaf in flat):
            raise TypeError("CounterfactualAugment does not support videos (tv_tensors.Video).")
        if shape != "real" and any(isinstance(leaf, _OBJECT_ANNOTATIONS) for leaf in flat):
            raise ValueError(
                f"A counterfactual of shape={shape!r} replaces the whole object (with a generated shape of the label's "
                "class), so bounding boxes, masks or keypoints of the sample would no longer match it. Pass "
                "shape='real' to keep the real object's shape instead."
            )
        explicit = [i for i, leaf in enumerate(flat) if isinstance(leaf, (PIL.Image.Image, tv_tensors.Image))]
        # As in torchvision: without a PIL image or tv_tensors.Image, the first plain tensor is the image.
        candidates = explicit or [i for i, leaf in enumerate(flat) if is_pure_tensor(leaf) and leaf is not labels][:1]
        if not candidates:
            raise TypeError(
                "CounterfactualAugment expects a PIL image or an image tensor in the sample, but found none among "
                f"{[type(leaf).__name__ for leaf in flat]}."
            )
        if len(candidates) > 1:
            raise ValueError(f"CounterfactualAugment expects one image per sample, but found {len(candidates)}.")
        return candidates[0]

    def _resolve_shape(self, backend: Backend, labelled: bool) -> str:
        """The kind of this call's counterfactuals (``resolve_shape``), checking what keeping the real shape needs."""
        if not labelled and self.shape != "generated" and not backend.has_mask_estimator:
            raise ValueError(
                f"CounterfactualAugment got an image without its label, and backend {backend.name!r} (weights "
                f"{backend.weights_name!r}) has no mask estimator for real images: it can only generate whole "
                "counterfactuals, which need the label as their shape class. A label is never invented.\n" + PLACEMENTS
            )
        shape = resolve_shape(self.shape, labelled, backend)
        if shape != "generated" and not self.vary:
            raise ValueError(
                f"vary=() leaves nothing to swap where the real object's shape is kept (shape={shape!r}: its texture "
                "and background would be kept too). Pass vary=('texture', 'background') or a subset, or "
                "shape='generated' with labels."
            )
        return shape

    def _match_channels(self, batch: torch.Tensor, backend: Backend) -> tuple[torch.Tensor, bool]:
        """Bring the images to the backend's channels, or raise; also say whether a new tensor was made."""
        channels = batch.shape[1]
        if self.grayscale_to_rgb and backend.channels != 3:
            raise ValueError(
                f"grayscale_to_rgb=True converts images to RGB, but backend {backend.name!r} generates "
                f"{backend.channels}-channel images. Leave grayscale_to_rgb=False."
            )
        if channels == backend.channels:
            return batch, False
        if channels == 1 and backend.channels == 3:
            # Grayscale in, grayscale out: ``render`` makes the luma of an RGB counterfactual.
            return (kornia.color.grayscale_to_rgb(batch), True) if self.grayscale_to_rgb else (batch, False)
        raise ValueError(
            f"The image has {channels} channels, but backend {backend.name!r} generates {backend.channels}-channel "
            "images. Only grayscale images are accepted by an RGB backend (grayscale out, or RGB with "
            "grayscale_to_rgb=True); convert other images before CounterfactualAugment, e.g. PIL "
            "image.convert('RGB') or v2.Grayscale(num_output_channels=...)."
        )

    def _take(self, backend: Backend, kind: ImageKind, use_bank: bool) -> Take:
        if not use_bank or kind.batched or self.bank_size == 0:
            return direct_take(backend)
        bank = self._handle.bank(self.bank_size, self.reuse)
        generator = self._handle.generator
        return lambda mechanism, classes, seeds: bank.take(backend, mechanism, classes, generator)

    def _apply(
        self,
        image: Any,
        kind: ImageKind,
        params: dict[str, torch.Tensor],
        use_bank: bool = True,
        want_record: bool = True,
    ) -> tuple[Any, dict[str, torch.Tensor] | None]:
        """The one place CounterfactualAugment applies parameters: returns the output and (if wanted) its record."""
        if not kind.is_pil and image.requires_grad:
            # Images are data here: the generator is not differentiated through, so the output is detached.
            image = image.detach()
        batch = to_batch(image, kind)
        backend = self._handle.backend(batch.device)
        self._handle.check_domain(backend, batch.shape[-2], batch.shape[-1], type(self).__name__)
        batch, converted = self._match_channels(batch, backend)
        if kind.is_float:
            check_value_range(batch)
        applied = params["applied"]
        chosen = applied.nonzero()[:, 0]
        everything = len(chosen) == len(batch)
        if len(chosen) == 0:
            # Nothing to change: hand back the very input, bit for bit (unless grayscale was converted).
            out = from_batch(batch, kind, image) if converted else image
            return out, _finish_record(params, applied, kind) if want_record else None
        # Per-sample calls choose everything or nothing, so they skip the indexing.
        real = to_unit_float(batch if everything else batch[chosen.to(batch.device)])
        chosen_params = params if everything else {key: params[key][chosen] for key in RECORD_KEYS[1:]}
        counterfactuals, seeds_used = render(backend, real, chosen_params, self._take(backend, kind, use_bank))
        if everything:
            out = from_unit_float(counterfactuals, batch.dtype)
        else:
            # A PIL image or a converted batch is already a fresh tensor; a tensor input must not be modified.
            out = batch if (converted or kind.is_pil) else batch.clone()
            out[chosen.to(out.device)] = from_unit_float(counterfactuals, out.dtype)
        if not want_record:
            return from_batch(out, kind, image), None
        used = dict(params)
        for mechanism, seeds in seeds_used.items():
            key = f"seed_{mechanism}"
            if everything:
                used[key] = seeds
            else:
                used[key] = params[key].clone()
                used[key][chosen] = seeds
        return from_batch(out, kind, image), _finish_record(used, applied, kind)


def _finish_record(params: dict[str, torch.Tensor], applied: torch.Tensor, kind: ImageKind) -> dict[str, torch.Tensor]:
    record = make_record(params, applied)
    return record if kind.batched else {key: value[0] for key, value in record.items()}
