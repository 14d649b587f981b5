"""Moved to ``cfaug.models.discriminators`` (networks live in ``cfaug.models``); the old import path still works."""

from __future__ import annotations

from cfaug.models import discriminators as _moved
from cfaug.models.discriminators import *  # noqa: F403

__all__ = _moved.__all__
