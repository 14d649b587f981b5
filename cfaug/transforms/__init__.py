"""Counterfactual augmentation transforms.

* ``CounterfactualAugment``: a torchvision v2 transform for samples, ``(image, label)`` pairs, dict
  samples and batches; works in ``v2.Compose``, ``v2.RandomApply``, v1 ``Compose`` and DataLoader workers.
* ``RandomCounterfactual``: the batched path as a kornia augmentation, for
  ``kornia.augmentation.AugmentationSequential`` on (GPU) batches.
"""

from cfaug.transforms._augment import PLACEMENTS, CounterfactualAugment
from cfaug.transforms._kornia import RandomCounterfactual
from cfaug.transforms._params import DEFAULT_LABELLED_SHAPE, SHAPES

__all__ = ["DEFAULT_LABELLED_SHAPE", "PLACEMENTS", "SHAPES", "CounterfactualAugment", "RandomCounterfactual"]
