"""The contract every cfaug transform keeps, checked by one function (as torchvision's ``check_transform``).

``check_transform(make, ...)`` runs a transform built by ``make(p=..., **kwargs)`` through the checks that the
transform tests used to repeat one by one:

* every supported input kind (PIL, uint8 / float tensors, ``tv_tensors.Image``; single images and batches) comes back
  as the same type with the same dtype, shape (mode and size for PIL) and device, and is changed when ``p=1``;
* labels and the other parts of a sample pass through untouched (the very same objects);
* ``p=0`` is the identity, bit for bit (the very input object where ``same_object_at_p0``);
* the same seed gives the same output, another seed another one, and a ``generator=`` ignores the global RNG;
* a pickled transform (what a DataLoader worker receives) has the same ``repr`` and, unused, draws what the
  original draws;
* where the transform returns a record, ``replay`` rebuilds the output from it, for a batch and for each sample.

The module sits at ``tests/`` (conftest puts that folder on ``sys.path``), so tests in any subfolder import it.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors

KINDS = (
    *("pil", "uint8", "float32", "float64", "float16", "tv_image", "batch_float", "batch_uint8", "batch_tv_image"),
    *("pil_gray", "gray_float", "batch_gray_uint8"),  # grayscale in, grayscale out (an RGB backend's luma)
)
TENSOR_KINDS = ("float32", "float64", "batch_float", "tv_image", "batch_tv_image")


def pil_rgb(size: int = 8, seed: int = 0) -> PIL.Image.Image:
    """A random RGB PIL image."""
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def make_input(kind: str, size: int = 8) -> tuple[Any, bool]:
    """One 3-channel (1-channel for the ``gray`` kinds) image of the given kind, and whether it is a batch (of 4)."""
    generator = torch.Generator().manual_seed(1)
    float_image = torch.rand(3, size, size, generator=generator)
    gray_batch = torch.rand(4, 1, size, size, generator=generator)
    return {
        "pil": lambda: (pil_rgb(size), False),
        "pil_gray": lambda: (pil_rgb(size).convert("L"), False),
        "gray_float": lambda: (gray_batch[0], False),
        "batch_gray_uint8": lambda: ((gray_batch * 255).to(torch.uint8), True),
        "batch_gray_float": lambda: (gray_batch, True),
        "uint8": lambda: ((float_image * 255).to(torch.uint8), False),
        "float32": lambda: (float_image, False),
        "float64": lambda: (float_image.double(), False),
        "float16": lambda: (float_image.half(), False),
        "tv_image": lambda: (tv_tensors.Image(float_image), False),
        "batch_float": lambda: (torch.rand(4, 3, size, size, generator=generator), True),
        "batch_uint8": lambda: ((torch.rand(4, 3, size, size, generator=generator) * 255).to(torch.uint8), True),
        "batch_tv_image": lambda: (tv_tensors.Image(torch.rand(4, 3, size, size, generator=generator)), True),
    }[kind]()


def as_tensor(image: Any) -> torch.Tensor:
    """A plain tensor view of a PIL image or a (tv_tensors) tensor, for comparisons."""
    if isinstance(image, PIL.Image.Image):
        return torch.from_numpy(np.array(image))
    return image.as_subclass(torch.Tensor)


def labels_for(image: Any, batched: bool, num_classes: int = 4) -> Any:
    """Labels for ``make_input``'s image: an int for one image, a tensor for a batch."""
    return torch.arange(image.shape[0]) % num_classes if batched else 2 % num_classes


def check_same_kind(out: Any, inpt: Any) -> None:
    """``out`` has ``inpt``'s type, and its mode and size (PIL) or dtype, shape and device (tensors)."""
    assert type(out) is type(inpt)
    if isinstance(inpt, PIL.Image.Image):
        assert out.mode == inpt.mode and out.size == inpt.size
    else:
        assert out.dtype == inpt.dtype and out.shape == inpt.shape and out.device == inpt.device


def torchvision_call(transform: Callable, image: Any, labels: Any) -> tuple[Any, Any]:
    """A torchvision-v2-style call: labels travel in the sample and come back beside the image."""
    if labels is None:
        return transform(image), None
    return transform(image, labels)


def kornia_call(transform: Callable, image: Any, labels: Any) -> tuple[Any, Any]:
    """A kornia-style call: labels are a keyword, only the image comes back."""
    return (transform(image) if labels is None else transform(image, labels=labels)), labels


def check_transform(
    make: Callable[..., Callable],
    *,
    kinds: tuple[str, ...] = KINDS,
    size: int = 8,
    num_classes: int = 4,
    call: Callable[[Callable, Any, Any], tuple[Any, Any]] = torchvision_call,
    image_only: bool = True,
    same_object_at_p0: bool = True,
    samples: bool = True,
    replay: bool = True,
    generator: bool = True,
) -> None:
    """Check that the transforms built by ``make(p=..., **kwargs)`` keep cfaug's transform contract.

    Args:
        make: builds a fresh transform; takes ``p`` and, for the determinism check, ``generator``.
        kinds: the input kinds (names of ``KINDS``) the transform supports.
        size: side of the test images (the backend's own size need not match: outputs follow the input).
        num_classes: labels are drawn below this.
        call: how to call the transform with an image and labels (``torchvision_call`` or ``kornia_call``).
        image_only: the backend can estimate masks, so a call without labels re-textures the image.
        same_object_at_p0: ``p=0`` returns the input object itself, not an equal copy.
        samples: the transform takes torchvision samples (dicts, tuples with extra items) and passes the rest on.
        replay: the transform has ``return_record`` and ``replay``.
        generator: the transform takes a ``generator=`` for its draws.
    """
    for kind in kinds:
        image, batched = make_input(kind, size)
        for labels in [labels_for(image, batched, num_classes)] + ([None] if image_only else []):
            out, out_labels = call(make(p=1.0), image, labels)
            check_same_kind(out, image)
            assert out_labels is labels, f"{kind}: the labels should pass through as the same object"
            assert not torch.equal(as_tensor(out), as_tensor(image)), f"{kind}: p=1 should change the image"
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0, f"{kind}: floats should stay in [0, 1]"
        out, out_labels = call(make(p=0.0), image, labels_for(image, batched, num_classes))
        if same_object_at_p0:
            assert out is image, f"{kind}: p=0 should return the input itself"
            if image_only:  # without a mask estimator an image without its label is an error, whatever p
                assert call(make(p=0.0), image, None)[0] is image, f"{kind}: p=0 should return the input itself"
        else:
            check_same_kind(out, image)
            assert torch.equal(as_tensor(out), as_tensor(image)), f"{kind}: p=0 should be the identity"

    batch = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(8) % num_classes
    for shade in (batch, torch.full_like(batch, 0.5)):  # random and flat inputs both reach every sample
        out, _ = call(make(p=1.0), shade, labels)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert all(not torch.equal(out[i], shade[i]) for i in range(len(shade))), "p=1 should change every sample"

    if samples:
        sample = {"image": tv_tensors.Image(batch[0]), "label": 3 % num_classes, "meta": "x"}
        out = make(p=1.0)(sample)
        assert set(out) == {"image", "label", "meta"} and out["label"] == sample["label"] and out["meta"] == "x"
        assert isinstance(out["image"], tv_tensors.Image)
        extra = object()
        image, label, rest = make(p=1.0)(batch[0], 1, extra)
        assert label == 1 and rest is extra and image.shape == batch[0].shape

    _check_determinism(make, batch, labels, call, generator)

    # Pickling: a DataLoader worker gets a copy that must behave as the original would.
    fresh = make(p=0.5)
    clone = pickle.loads(pickle.dumps(fresh))
    assert repr(clone) == repr(fresh)
    torch.manual_seed(11)
    expected, _ = call(fresh, batch, labels)
    torch.manual_seed(11)
    got, _ = call(clone, batch, labels)
    assert torch.equal(got, expected), "an unpickled transform should draw what the original draws"

    if replay:
        augment = make(p=0.5, return_record=True)
        (out, _), record = augment(batch, labels)
        assert torch.equal(augment.replay(batch, record), out), "replay should rebuild a batch"
        for i in range(len(batch)):
            one = {key: value[i] for key, value in record.items()}
            assert torch.allclose(augment.replay(batch[i], one), out[i], atol=1e-6), "replay should work per sample"


def _check_determinism(
    make: Callable, batch: torch.Tensor, labels: torch.Tensor, call: Callable, generator: bool
) -> None:
    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return call(make(p=0.5), batch, labels)[0]

    assert torch.equal(run(0), run(0)), "the same global seed should give the same output"
    assert not torch.equal(run(0), run(1)), "another global seed should give another output"
    if not generator:
        return

    def with_generator(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        return call(make(p=0.5, generator=torch.Generator().manual_seed(7)), batch, labels)[0]

    assert torch.equal(with_generator(0), with_generator(1)), "a generator= should make the global RNG irrelevant"
