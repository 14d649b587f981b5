"""BigGAN-deep generators (``pytorch_pretrained_biggan``, extra ``cfaug[imagenet]``): configs, build, load, save.

The three mechanisms of the ImageNet CGN (``cfaug.backends.biggan.BigGANBackend``) and the frozen ground-truth
generator of its training are each one of these networks. A BigGAN is kept on disk as the package's own pair of
files, ``config.json`` + ``pytorch_model.bin``, so that a folder written by ``save_biggan`` loads with
``pytorch_pretrained_biggan`` as well.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import atomic_write, check_positive_int, require, verify_str_arg
from cfaug.checkpoint import CheckpointError, load_torch_state_dict, state_dict_problems

__all__ = [
    "NAMED_BIGGANS",
    "biggan_image_size",
    "build_biggan",
    "check_biggan_config",
    "load_biggan",
    "prepare_random_biggan",
    "pytorch_pretrained_biggan",
    "resolve_biggan_config",
    "save_biggan",
]

#: BigGAN-deep checkpoints that ``pytorch_pretrained_biggan`` downloads by name (network access needed).
NAMED_BIGGANS: tuple[str, ...] = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512")

# Power iterations given to a freshly built BigGAN: near-converged spectral norms (see prepare_random_biggan).
_RANDOM_POWER_ITERATIONS = 10
_WEIGHTS_FILE = "pytorch_model.bin"
_CONFIG_FILE = "config.json"


def pytorch_pretrained_biggan() -> ModuleType:
    """``pytorch_pretrained_biggan``, or an ImportError that names the extra to install."""
    return require("pytorch_pretrained_biggan", "imagenet")


# ------------------------------------------------------------------------------------------- configs
def resolve_biggan_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """A BigGAN-deep architecture as a checked, JSON-ready dict.

    Args:
        config: a name from ``NAMED_BIGGANS`` (the package's ``BigGAN128/256/512`` configs), a dict of
            ``BigGANConfig`` fields, or the path of a ``config.json``.

    Raises:
        ValueError: unknown name, or a config that breaks the architecture's constraints.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(config, Mapping):
        return check_biggan_config(config)
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"`biggan_config` should be one of {list(NAMED_BIGGANS)}, a dict or a config.json path, "
            f"but got {type(config).__name__}."
        )
    if isinstance(config, str) and config in NAMED_BIGGANS:
        from pytorch_pretrained_biggan import convert_tf_to_pytorch as configs

        named = {"biggan-deep-128": configs.BigGAN128, "biggan-deep-256": configs.BigGAN256}
        named["biggan-deep-512"] = configs.BigGAN512
        return check_biggan_config(named[config].to_dict())
    path = Path(config)
    if path.is_dir():
        path = path / _CONFIG_FILE
    if not path.is_file():
        looks_like_path = isinstance(config, os.PathLike) or os.sep in str(config) or path.suffix
        if not looks_like_path:
            verify_str_arg(config, "biggan_config", NAMED_BIGGANS)
        raise FileNotFoundError(f"BigGAN config file not found: {str(path)!r} (given as `biggan_config`).")
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not a BigGAN config.json: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"{str(path)!r} should hold a JSON object of BigGANConfig fields.")
    return check_biggan_config(loaded)


def check_biggan_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a BigGAN-deep config against the constraints of ``pytorch_pretrained_biggan``'s generator.

    The package builds any config without complaint but crashes (or silently misbehaves) at the first forward
    when: the first block does not take 16 channel multiples (``gen_z`` outputs ``4*4*16*channel_width``); a
    block more than halves its channels (the skip path keeps the first half); the last block does not end at
    multiple 1 (``conv_to_rgb`` has ``channel_width`` channels); ``channel_width < 3``; a bottleneck or the
    attention layer rounds to zero channels.

    Returns:
        The config as a JSON-ready dict (``layers`` as lists), with the package's defaults filled in.

    Raises:
        ValueError: the config breaks a constraint; the message names it.
    """
    defaults = pytorch_pretrained_biggan().BigGANConfig().to_dict()
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown BigGAN config fields {unknown}; valid fields are {sorted(defaults)}.")
    merged = {**defaults, **dict(config)}
    for key in ("z_dim", "class_embed_dim", "channel_width", "num_classes", "n_stats"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"BigGAN config field `{key}` should be a positive integer, but got {value!r}.")
    if merged["class_embed_dim"] != merged["z_dim"]:
        raise ValueError(
            "BigGAN config fields `class_embed_dim` and `z_dim` should be equal (the generator embeds classes to "
            f"z_dim), but got {merged['class_embed_dim']} and {merged['z_dim']}."
        )
    if merged["n_stats"] < 2:
        raise ValueError(f"BigGAN config field `n_stats` should be at least 2, but got {merged['n_stats']}.")
    width = merged["channel_width"]
    if width < 3:
        raise ValueError(f"BigGAN config field `channel_width` should be at least 3 (RGB output), but got {width}.")
    try:
        layers = [(bool(up), int(c_in), int(c_out)) for up, c_in, c_out in merged["layers"]]
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"BigGAN config field `layers` should be a list of (upsample, in, out) triples, but got "
            f"{merged['layers']!r}."
        ) from error
    if not layers:
        raise ValueError("BigGAN config field `layers` should not be empty.")
    if layers[0][1] != 16:
        raise ValueError(
            f"The first BigGAN block should take 16 channel multiples (gen_z outputs 4*4*16*channel_width), but "
            f"layers[0] is {list(layers[0])}."
        )
    previous_out = 16
    for index, (_, c_in, c_out) in enumerate(layers):
        if c_in != previous_out:
            raise ValueError(
                f"BigGAN block {index} should take the {previous_out} channel multiples the block before it gives, "
                f"but layers[{index}] is {list(layers[index])}."
            )
        if c_out != c_in and 2 * c_out != c_in:
            raise ValueError(
                f"BigGAN block {index} should keep or exactly halve its channels (the skip path keeps the first "
                f"half), but layers[{index}] is {list(layers[index])}."
            )
        if width * c_in // 4 < 1:
            raise ValueError(f"BigGAN block {index} has a bottleneck of 0 channels; raise `channel_width`.")
        previous_out = c_out
    if layers[-1][2] != 1:
        raise ValueError(
            f"The last BigGAN block should output 1 channel multiple, but layers[-1] is {list(layers[-1])}."
        )
    position = merged["attention_layer_position"]
    if isinstance(position, bool) or not isinstance(position, int):
        raise ValueError(f"BigGAN config field `attention_layer_position` should be an integer, but got {position!r}.")
    if 0 <= position < len(layers) and width * layers[position][1] // 8 < 1:
        raise ValueError(
            f"The BigGAN attention layer (before block {position}) would have 0 channels; raise `channel_width`."
        )
    eps = merged["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"BigGAN config field `eps` should be a positive number, but got {eps!r}.")
    merged["layers"] = [list(layer) for layer in layers]
    return merged


def biggan_image_size(config: Mapping[str, Any]) -> int:
    """Side of the images a BigGAN config draws: 4 doubled once per upsampling block (``output_dim`` is unused)."""
    return 4 * 2 ** sum(1 for up, _, _ in config["layers"] if up)


# ------------------------------------------------------------------------------------------- BigGAN
def _spectral_norm_hooks(model: nn.Module) -> Iterator[tuple[nn.Module, Any]]:
    from torch.nn.utils.spectral_norm import SpectralNorm

    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                yield module, hook


@torch.no_grad()
def prepare_random_biggan(model: nn.Module, power_iterations: int = 1) -> nn.Module:
    """Make a randomly initialised BigGAN produce finite images (in place); returns ``model``.

    Two things are left undefined by ``pytorch_pretrained_biggan``'s constructor, and each makes an eval-mode
    forward overflow to NaN: the unconditional BatchNorm's weight and bias are *uninitialised memory*, and the
    spectral-norm vectors ``u``, ``v`` were never power-iterated, so the estimated singular value is tiny or even
    negative. This sets the BatchNorm to the identity affine map and runs power iterations, the same two steps
    the package's TF converter applies to the released weights (with one iteration). Pretrained weights need
    neither.

    Args:
        model: a ``pytorch_pretrained_biggan.BigGAN``.
        power_iterations: spectral-norm power iterations. One makes the output finite; more bring the estimates
            close to the true singular values, so that the few iterations of a training step (one per train-mode
            forward) barely move them, as with pretrained weights.
    """
    check_positive_int(power_iterations, "power_iterations")
    module_class = pytorch_pretrained_biggan().model.BigGANBatchNorm
    for module in model.modules():
        if isinstance(module, module_class) and not module.conditional:
            module.weight.fill_(1.0)
            module.bias.zero_()
    for module, hook in _spectral_norm_hooks(model):
        weight = getattr(module, hook.name + "_orig")
        if hook.dim != 0:
            weight = weight.transpose(0, hook.dim)
        matrix = weight.reshape(weight.shape[0], -1)
        u = getattr(module, hook.name + "_u")
        for _ in range(power_iterations):
            v = F.normalize(matrix.t() @ u, dim=0, eps=hook.eps)
            getattr(module, hook.name + "_v").copy_(v)
            u.copy_(F.normalize(matrix @ v, dim=0, eps=hook.eps))
    return model


def build_biggan(config: str | Mapping[str, Any], seed: int | None = None) -> nn.Module:
    """A randomly initialised BigGAN-deep of ``config``, ready to run (``prepare_random_biggan``, 10 iterations).

    Args:
        config: see ``resolve_biggan_config``.
        seed: seed of the initialisation; ``None`` draws from the global torch RNG.

    Returns:
        A ``pytorch_pretrained_biggan.BigGAN`` in training mode, as the package returns it.

    Examples:
        >>> tiny = {"channel_width": 4, "num_classes": 10, "z_dim": 16, "class_embed_dim": 16,
        ...         "attention_layer_position": 3, "layers": [[False, 16, 16], [True, 16, 8], [True, 8, 4],
        ...         [False, 4, 4], [True, 4, 2], [False, 2, 1]]}
        >>> model = build_biggan(tiny, seed=0).eval()
        >>> model(torch.zeros(1, 16), torch.eye(10)[:1], 0.5).shape
        torch.Size([1, 3, 32, 32])
    """
    ppb = pytorch_pretrained_biggan()
    config = resolve_biggan_config(config)
    # With a seed, the global RNG is left as it was; without one, the draws advance it like any nn.Module init (a
    # forked and restored RNG would give every unseeded model the same weights).
    context = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with context:
        if seed is not None:
            torch.manual_seed(seed)
        model = ppb.BigGAN(ppb.BigGANConfig.from_dict(copy.deepcopy(config)))
        prepare_random_biggan(model, power_iterations=_RANDOM_POWER_ITERATIONS)
    return model


def load_biggan(source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """Load a pretrained BigGAN-deep, checking every tensor (the package itself loads with ``strict=False``).

    Args:
        source: a folder holding ``config.json`` and ``pytorch_model.bin`` (the layout
            ``BigGAN.from_pretrained`` reads, and ``save_biggan`` writes), or a name from ``NAMED_BIGGANS``,
            which ``pytorch_pretrained_biggan`` downloads from its S3 bucket (network access needed).
        cache_dir: the package's download cache (``$PYTORCH_PRETRAINED_BIGGAN_CACHE`` when ``None``).

    Returns:
        The BigGAN in eval mode; the weights are read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: the folder or one of its two files does not exist.
        CheckpointError: the weights do not match the config key by key; the message lists the differences.
        OSError: a named model could not be downloaded.
    """
    ppb = pytorch_pretrained_biggan()
    if isinstance(source, str) and source in NAMED_BIGGANS:
        from pytorch_pretrained_biggan import model as ppb_model

        try:
            weights_file = Path(ppb.cached_path(ppb_model.PRETRAINED_MODEL_ARCHIVE_MAP[source], cache_dir=cache_dir))
            config_file = Path(ppb.cached_path(ppb_model.PRETRAINED_CONFIG_ARCHIVE_MAP[source], cache_dir=cache_dir))
        except Exception as error:  # requests raises its own ConnectionError family
            raise OSError(
                f"Could not download the BigGAN {source!r} ({type(error).__name__}: {error}). Without network access, "
                f"put config.json and pytorch_model.bin of the model in a folder and pass that folder instead."
            ) from error
    else:
        folder = Path(source)
        if not folder.is_dir():
            looks_like_path = isinstance(source, os.PathLike) or os.sep in str(source) or folder.suffix
            if not looks_like_path:
                raise ValueError(
                    f"Unknown BigGAN {str(source)!r}: it is neither a name in {list(NAMED_BIGGANS)} nor a folder "
                    f"holding {_CONFIG_FILE} and {_WEIGHTS_FILE}."
                )
            raise FileNotFoundError(f"BigGAN folder not found: {str(folder)!r}.")
        weights_file, config_file = folder / _WEIGHTS_FILE, folder / _CONFIG_FILE
        for path in (weights_file, config_file):
            if not path.is_file():
                raise FileNotFoundError(
                    f"The BigGAN folder {str(folder)!r} lacks {path.name}; it should hold {_CONFIG_FILE} and "
                    f"{_WEIGHTS_FILE} (as written by save_biggan or downloaded from the package's S3 bucket)."
                )
    config = resolve_biggan_config(config_file)
    model = ppb.BigGAN(ppb.BigGANConfig.from_dict(copy.deepcopy(config)))
    state = load_torch_state_dict(weights_file, "a BigGAN state dict")
    problems = state_dict_problems(state, model.state_dict())
    if problems:
        raise CheckpointError(
            f"The BigGAN weights {str(weights_file)!r} do not match their config {str(config_file)!r}: "
            + "; ".join(problems)
            + "."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_biggan(model: nn.Module, folder: str | os.PathLike[str]) -> Path:
    """Write a BigGAN as ``config.json`` + ``pytorch_model.bin`` (what ``load_biggan`` and the package read).

    Both files are written atomically; the weights as a plain state dict of tensors.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / _WEIGHTS_FILE) as handle:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, handle)
    with atomic_write(folder / _CONFIG_FILE, "w") as handle:
        handle.write(json.dumps(check_biggan_config(model.config.to_dict()), indent=2, sort_keys=True) + "\n")
    return folder
