"""cfaug: counterfactual images from independent shape, texture and background mechanisms.

The public API lives here. The transform and dataset modules import torchvision, which is slow to import,
so they are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cfaug.backends.base import MECHANISMS, Backend, Components
from cfaug.registry import WeightsInfo, get_backend_class, list_backends, list_weights, load_backend, register_backend
from cfaug.version import __version__

if TYPE_CHECKING:
    from cfaug.datasets.counterfactual import CounterfactualDataset
    from cfaug.transforms import CounterfactualAugment, RandomCounterfactual

__all__ = [
    "MECHANISMS",
    "Backend",
    "Components",
    "CounterfactualAugment",
    "CounterfactualDataset",
    "RandomCounterfactual",
    "WeightsInfo",
    "__version__",
    "get_backend_class",
    "list_backends",
    "list_weights",
    "load_backend",
    "register_backend",
]

_LAZY = {
    "CounterfactualAugment": "cfaug.transforms",
    "RandomCounterfactual": "cfaug.transforms",
    "CounterfactualDataset": "cfaug.datasets.counterfactual",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cfaug' has no attribute {name!r}")
