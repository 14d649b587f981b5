"""Moved to ``cfaug.models.discriminators`` (networks live in ``cfaug.models``); the old import path still works."""

from __future__ import annotations

from cfaug.models.discriminators import DISCRIMINATORS, DiscConv, DiscLin, build_discriminator

__all__ = ["DISCRIMINATORS", "DiscConv", "DiscLin", "build_discriminator"]
