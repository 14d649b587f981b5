"""Moved to ``cfaug.models.feature_network`` (networks live in ``cfaug.models``); the old import path still works."""

from __future__ import annotations

from cfaug.models import feature_network as _moved
from cfaug.models.feature_network import *  # noqa: F403

__all__ = _moved.__all__
