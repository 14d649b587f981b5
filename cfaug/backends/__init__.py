"""Mechanism backends. Each concrete backend lives in its own module and is found through the registry."""

from cfaug.backends.base import MECHANISMS, Backend, Components

__all__ = ["MECHANISMS", "Backend", "Components"]
