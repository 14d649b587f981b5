"""The one place where counterfactual parameters are drawn and checked.

Both ``CounterfactualAugment`` and the kornia augmentation
``RandomCounterfactual`` draw their parameters here and hand them to
``cfaug.transforms._render.render``, the one place that turns parameters into images.

A parameter set for ``B`` samples is a dict of ``(B,)`` CPU tensors:

* ``applied`` (bool): which samples are replaced by a counterfactual;
* ``shape``, ``texture``, ``background`` (int64): the class each mechanism is conditioned on, or ``-1`` when
  that part is taken from the real image (the real object's mask for ``shape``, the real pixels for
  ``texture`` and ``background``);
* ``seed_shape``, ``seed_texture``, ``seed_background`` (int64): the per-sample seed of each mechanism
  (see ``cfaug.seeding``); ``-1`` where the part is not generated.

A *record* (what ``return_record=True`` returns) has the same keys, with ``-1`` in every class and seed of a
sample that was not applied, so that ``backend.generate(mechanism, record[mechanism][i:i+1],
record["seed_" + mechanism][i:i+1])`` regenerates each generated part of sample ``i``.
"""

from __future__ import annotations

import collections.abc
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms.v2.functional import is_pure_tensor

from cfaug._utils import verify_str_arg
from cfaug.backends.base import MECHANISMS

# One check and one name for the mechanisms a counterfactual may vary (the shape class is the label), shared with
# CounterfactualDataset; re-exported here for the transforms that import them from this module.
from cfaug.datasets.counterfactual import VARYING_MECHANISMS
from cfaug.datasets.counterfactual import check_vary as check_vary
from cfaug.seeding import draw_seeds

#: Keys of a parameter set and of a record.
RECORD_KEYS: tuple[str, ...] = ("applied", *MECHANISMS, *(f"seed_{m}" for m in MECHANISMS))
#: Class or seed value meaning "taken from the real image" (or "not applied" in a record).
FROM_REAL = -1

LabelsGetter = Callable[[Any], Any]


class _NoLabels:
    """Marker returned by a labels getter when the sample has no label (image-only mode)."""

    def __repr__(self) -> str:
        return "NO_LABELS"


NO_LABELS = _NoLabels()


# ----------------------------------------------------------------------------------------------- settings
def check_generator(generator: Any) -> torch.Generator | None:
    """Return ``generator`` after checking that it is ``None`` or a CPU ``torch.Generator``."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` should be a torch.Generator or None, but got {type(generator).__name__}.")
    if generator.device.type != "cpu":
        raise ValueError(f"`generator` should be a CPU torch.Generator, but got one on {generator.device}.")
    return generator


# ----------------------------------------------------------------------------------------------- sampling
def sample_applied(
    batch_size: int, p: float, *, same_on_batch: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw which of ``batch_size`` samples get a counterfactual: each with probability ``p``.

    ``p`` of exactly 0 or 1 draws nothing, like kornia's gate. With ``same_on_batch`` one draw decides for the
    whole batch.
    """
    if p >= 1.0:
        return torch.ones(batch_size, dtype=torch.bool)
    if p <= 0.0:
        return torch.zeros(batch_size, dtype=torch.bool)
    draws = 1 if same_on_batch else batch_size
    return (torch.rand(draws, generator=generator) < p).expand(batch_size).clone()


def sample_params(
    batch_size: int,
    num_classes: int,
    vary: tuple[str, ...],
    *,
    applied: torch.Tensor | None = None,
    same_on_batch: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Draw the classes of the varied mechanisms and one seed per mechanism for ``batch_size`` samples.

    The shape class and the classes of the mechanisms not in ``vary`` are left at ``-1``: they come from the
    label (``attach_labels``) or from the real image.

    Args:
        batch_size: number of samples.
        num_classes: classes of the backend; varied classes are drawn uniformly from them.
        vary: the mechanisms whose class is drawn.
        applied: the apply mask from ``sample_applied``; ``None`` when the caller gates samples itself
            (kornia's ``batch_prob``). Nothing more is drawn when no sample is applied.
        same_on_batch: draw one set of classes and seeds for the whole batch.
        generator: RNG to draw from; the global torch RNG when ``None``.

    Returns:
        A parameter set (see the module docstring); ``applied`` is included only when given.
    """
    params: dict[str, torch.Tensor] = {} if applied is None else {"applied": applied}
    # One table for all rows (the mechanisms' classes, then their seeds) and one RNG call per kind of draw:
    # per-sample calls are dominated by fixed costs per tensor operation, not by the numbers drawn.
    keys = RECORD_KEYS[1:]
    table = torch.full((len(keys), batch_size), FROM_REAL, dtype=torch.int64)
    if applied is None or bool(applied.any()):
        draws = 1 if same_on_batch else batch_size
        classes = torch.randint(0, num_classes, (len(vary), draws), generator=generator, dtype=torch.int64)
        seeds = draw_seeds(len(MECHANISMS) * draws, generator).view(len(MECHANISMS), draws)
        if vary:
            # Broadcast over the batch where drawn once.
            table[[MECHANISMS.index(mechanism) for mechanism in vary]] = classes
        table[len(MECHANISMS) :] = seeds
    # Rows of one table: each key's tensor is a view of its own row, so no two keys share an element.
    params.update(zip(keys, table.unbind(0), strict=True))
    return params


def attach_labels(params: dict[str, torch.Tensor], labels: torch.Tensor, vary: tuple[str, ...]) -> dict[str, Any]:
    """Label-aware mode: the shape class is the label, and so is the class of every mechanism not varied."""
    params = dict(params)
    params["shape"] = labels.clone()
    for mechanism in VARYING_MECHANISMS:
        if mechanism not in vary:
            params[mechanism] = labels.clone()
    return params


# ----------------------------------------------------------------------------------------------- shape kinds
#: The kinds of counterfactual, the values of ``shape=``: see ``resolve_shape``.
SHAPES: tuple[str, ...] = ("auto", "real", "generated", "mixed")
#: What ``shape="auto"`` means for labelled samples when the backend's weights recommend nothing
#: (their metadata key ``default_shape``, exposed as the backend attribute of that name).
DEFAULT_LABELLED_SHAPE = "generated"


def check_shape(shape: Any) -> str:
    """Return ``shape`` after checking that it is one of ``SHAPES``."""
    return verify_str_arg(shape, "shape", SHAPES)


def recommended_shape(backend: Any) -> str:
    """The kind ``shape="auto"`` picks for labelled samples: the weights' ``default_shape``, else the default.

    A backend without a mask estimator can only make the generated kind.
    """
    if not backend.has_mask_estimator:
        return "generated"
    value = getattr(backend, "default_shape", None)
    if value is None:
        return DEFAULT_LABELLED_SHAPE
    if value not in SHAPES[1:]:
        raise ValueError(
            f"Backend {backend.name!r} (weights {backend.weights_name!r}) recommends default_shape={value!r}, but it "
            f"should be one of {list(SHAPES[1:])}; pass shape=... explicitly."
        )
    return value


def resolve_shape(shape: str, labelled: bool, backend: Any) -> str:
    """The kind of counterfactual for a call: ``"real"``, ``"generated"`` or ``"mixed"``.

    ``"auto"`` is the backend's recommendation with labels and ``"real"`` without; ``"mixed"`` without labels is
    ``"real"`` (no label, no class to generate a shape of).

    Raises:
        ValueError: ``"generated"`` without labels (a label is never invented), or a kind that needs the real
            object's shape on a backend without a mask estimator.
    """
    if shape == "auto":
        shape = recommended_shape(backend) if labelled else "real"
    elif shape == "mixed" and not labelled:
        shape = "real"
    if shape == "generated" and not labelled:
        raise ValueError(
            "shape='generated' makes the shape of the label's class, but the sample has no label (a label is never "
            "invented). Pass (image, label) pairs, or shape='real' to keep the real object's shape."
        )
    if shape in ("real", "mixed") and not backend.has_mask_estimator:
        raise ValueError(
            f"shape={shape!r} keeps the real object's shape, but backend {backend.name!r} (weights "
            f"{backend.weights_name!r}) has no mask estimator for real images; use shape='generated' with labels."
        )
    return shape


def attach_shapes(
    params: dict[str, torch.Tensor],
    labels: torch.Tensor,
    vary: tuple[str, ...],
    shape: str,
    *,
    same_on_batch: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Give labelled samples the resolved kind: generated (``attach_labels``), real (unchanged) or mixed.

    ``"mixed"`` draws one fair coin per sample (one for the batch with ``same_on_batch``) from ``generator``:
    heads, the label's generated shape; tails, the real object's shape.
    """
    if shape == "real":
        return params
    if shape == "generated":
        return attach_labels(params, labels, vary)
    draws = 1 if same_on_batch else len(labels)
    generated = (torch.rand(draws, generator=generator) < 0.5).expand(len(labels))
    with_labels = attach_labels(params, labels, vary)
    return {
        key: torch.where(generated, with_labels[key], value) if key in MECHANISMS else value
        for key, value in params.items()
    }


# ----------------------------------------------------------------------------------------------- labels
def parse_labels_getter(labels_getter: Any) -> LabelsGetter:
    """Turn ``labels_getter`` (``"default"``, a callable or ``None``) into a callable returning labels."""
    if isinstance(labels_getter, str) and labels_getter == "default":
        return find_labels_default
    if labels_getter is None:
        return lambda sample: NO_LABELS
    if callable(labels_getter):
        return labels_getter
    raise ValueError(f"`labels_getter` should be 'default', a callable or None, but got {labels_getter!r}.")


def _is_label(value: Any) -> bool:
    return is_pure_tensor(value) or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def _label_from_mapping(mapping: collections.abc.Mapping) -> Any:
    keys = [key for key in mapping if isinstance(key, str)]
    exact = [key for key in keys if key.lower() == "labels"]
    partial = [key for key in keys if "label" in key.lower()]
    if exact or partial:
        return mapping[(exact or partial)[0]]
    raise ValueError(
        f"Could not find the label in a sample with keys {list(mapping)}: no key contains 'label'. Pass "
        "labels_getter=<callable returning the label>, or labels_getter=None for image-only mode."
    )


def find_labels_default(sample: Any) -> Any:
    """Find the label of a sample the way torchvision's MixUp/CutMix do, also accepting python ``int`` labels.

    * ``(image, label, ...)``: the second item, an ``int`` or a tensor, or a dict holding a label-like key;
    * a dict: its ``"labels"`` key (any case), else the first key containing ``"label"``;
    * anything else (a lone image): no label, so the transform runs in image-only mode.

    Raises:
        ValueError: the sample is a tuple or dict, but no label can be found in it.
    """
    if isinstance(sample, (tuple, list)):
        if len(sample) < 2:
            return NO_LABELS
        candidate = sample[1]
        if _is_label(candidate):
            return candidate
        if isinstance(candidate, collections.abc.Mapping):
            return _label_from_mapping(candidate)
        raise ValueError(
            "The default labels_getter expects (image, label) with an int or tensor label, or (image, dict) with "
            f"a label key, but the second item is a {type(candidate).__name__}. Pass "
            "labels_getter=<callable returning the label>, or labels_getter=None for image-only mode."
        )
    if isinstance(sample, collections.abc.Mapping):
        return _label_from_mapping(sample)
    return NO_LABELS


def check_labels(labels: Any, *, batch_size: int, batched: bool, num_classes: int) -> torch.Tensor:
    """Return labels as an int64 CPU tensor of shape ``(batch_size,)`` after checking type, shape and range.

    Args:
        labels: an ``int`` or 0-d tensor for one sample; a ``(B,)`` integer tensor for a batch.
        batch_size: number of images.
        batched: whether the image is a batch.
        num_classes: classes of the backend; labels must lie in ``[0, num_classes - 1]``.

    Raises:
        TypeError: the labels are not an integer or an integer tensor.
        ValueError: their shape does not match the images, or a label is out of range.
    """
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        if batched:
            raise ValueError(
                f"`labels` of a batch of {batch_size} images should be a tensor of shape ({batch_size},), "
                f"but got the int {labels}."
            )
        labels = torch.tensor([int(labels)], dtype=torch.int64)
    elif isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(
                "`labels` should hold integer class indices (shape classes), but got a tensor of dtype "
                f"{labels.dtype}. One-hot or mixed labels (e.g. after MixUp/CutMix) cannot say which shape to "
                "generate: place CounterfactualAugment before them."
            )
        expected = (batch_size,) if batched else ()
        if tuple(labels.shape) != expected and not (not batched and tuple(labels.shape) == (1,)):
            raise ValueError(
                f"`labels` should have shape {expected} to match the images, but got {tuple(labels.shape)}."
            )
        labels = labels.detach().reshape(-1).to(device="cpu", dtype=torch.int64)
    else:
        raise TypeError(
            f"`labels` should be an int or an integer tensor of class indices, but got {type(labels).__name__}."
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"`labels` should be class indices in [0, {num_classes - 1}] (the backend has {num_classes} classes), "
            f"but got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    return labels


# ----------------------------------------------------------------------------------------------- records
def make_record(params: dict[str, torch.Tensor], applied: torch.Tensor) -> dict[str, torch.Tensor]:
    """The record of a call: the parameters, with ``-1`` in every class and seed of a sample not applied.

    The seeds of a part taken from the real image are also set to ``-1``, so that a seed is given exactly
    where a mechanism ran.
    """
    record = {"applied": applied.clone()}
    seeds = {}
    for mechanism in MECHANISMS:
        unused = ~applied | (params[mechanism] == FROM_REAL)
        record[mechanism] = params[mechanism].masked_fill(unused, FROM_REAL)
        seeds[f"seed_{mechanism}"] = params[f"seed_{mechanism}"].masked_fill(unused, FROM_REAL)
    return {**record, **seeds}


def check_record(record: Any, batch_size: int) -> dict[str, torch.Tensor]:
    """Check that ``record`` is a record for ``batch_size`` samples and return it as ``(B,)`` CPU tensors."""
    if not isinstance(record, collections.abc.Mapping):
        raise TypeError(f"`record` should be a dict as returned with return_record=True, but got {type(record)}.")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"`record` should have the keys {list(RECORD_KEYS)}, but misses {missing}.")
    out = {}
    for key in RECORD_KEYS:
        value = torch.as_tensor(record[key]).reshape(-1).cpu()
        if value.shape != (batch_size,):
            raise ValueError(
                f"`record[{key!r}]` should hold {batch_size} values to match the images, but got {value.numel()}."
            )
        out[key] = value.to(torch.bool if key == "applied" else torch.int64)
    return out
