"""Names defined once: the CGN's mechanisms and the paper's biased MNIST variants.

A light module (it imports nothing), so that configs, command lines and checks can use these names without
loading torchvision's datasets or a backend.
"""

from __future__ import annotations

__all__ = ["MECHANISMS", "VARIANTS", "VARYING_MECHANISMS"]

#: The mechanisms a backend provides, in the order of ``(shape, texture, background)`` class triples.
MECHANISMS: tuple[str, ...] = ("shape", "texture", "background")

#: The mechanisms a counterfactual may vary around a kept shape (all but ``shape``).
VARYING_MECHANISMS: tuple[str, ...] = tuple(m for m in MECHANISMS if m != "shape")

#: The names of the paper's three biased MNIST variants: the one spelling used by datasets, presets, weights and
#: evaluation alike.
VARIANTS: tuple[str, ...] = ("colored_mnist", "double_colored_mnist", "wildlife_mnist")
