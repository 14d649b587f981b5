"""The shared transform contract (tests/transform_contract.py) on real backends: the shipped MNIST CGN and the
example plugin ``stripes``, loaded by name through its entry point (conftest makes it discoverable without an
install). The toy backend runs it in test_transforms.py and test_kornia_augmentation.py."""

from __future__ import annotations

import pytest
from transform_contract import check_transform, kornia_call

import cfaug
from cfaug.transforms import CounterfactualAugment, RandomCounterfactual


@pytest.fixture(scope="module", params=["mnist", "stripes"])
def backend(request) -> cfaug.Backend:
    return cfaug.load_backend(request.param)


def test_counterfactual_augment_keeps_the_contract(backend):
    check_transform(
        lambda **kwargs: CounterfactualAugment(backend, **kwargs),
        num_classes=backend.num_classes,
        image_only=backend.has_mask_estimator,
        size=backend.image_size,
    )


def test_random_counterfactual_keeps_the_contract(backend):
    check_transform(
        lambda **kwargs: RandomCounterfactual(backend, keepdim=True, **kwargs),
        kinds=("float32", "batch_float", "batch_gray_float"),
        num_classes=backend.num_classes,
        size=backend.image_size,
        call=kornia_call,
        image_only=backend.has_mask_estimator,
        same_object_at_p0=False,
        samples=False,
        replay=False,
        generator=False,
    )


def test_stripes_is_found_by_name_without_an_install():
    assert "stripes" in cfaug.list_backends()
    assert type(cfaug.load_backend("stripes")).__module__ == "cfaug_stripes"
