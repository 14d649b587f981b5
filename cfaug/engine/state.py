"""A training state as safetensors: module weights under a prefix, optimiser tensors beside them, plain values as JSON.

A training state saved this way loads without unpickling anything: ``prefixed``/``unprefixed`` store several
modules in one file, ``flatten_optimizer``/``unflatten_optimizer`` split an optimiser's state into tensors and the
JSON-ready metadata that goes into the checkpoint's header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cfaug.engine.config import json_ready

__all__ = ["flatten_optimizer", "prefixed", "unflatten_optimizer", "unprefixed"]


# ------------------------------------------------------------------------------------------- checkpoint tensors
def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every key under ``prefix.``, to store several modules in one file."""
    return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed (the inverse of ``prefixed``)."""
    marker = prefix + "."
    return {key[len(marker) :]: value for key, value in tensors.items() if key.startswith(marker)}


def flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state into tensors (``prefix.state.<param>.<key>``) and JSON-ready metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": json_ready(state["param_groups"]), "scalars": scalars}


def unflatten_optimizer(prefix: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser state dict that ``flatten_optimizer(prefix, ...)`` split into ``tensors`` and ``meta``."""
    state: dict[int, dict[str, Any]] = {}
    marker = f"{prefix}.state."
    for name, tensor in tensors.items():
        if name.startswith(marker):
            index, key = name[len(marker) :].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    # JSON has no tuples; Adam compares ``betas`` as a tuple.
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
