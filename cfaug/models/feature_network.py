"""The frozen feature network behind the Gram-matrix style loss.

The CGN authors compute the style loss on ImageNet-pretrained VGG16 ``features`` at relu1_2, relu2_2, relu3_3
and relu4_3 (module indices 3, 8, 15, 22). Those weights (torchvision ``VGG16_Weights.IMAGENET1K_V1``, 528 MB)
cannot be downloaded on an offline machine, so ``build_feature_network`` resolves them in this order and
never triggers a download:

1. ``source="imagenet"`` or a path: the ImageNet weights from that file, or from the torch hub cache
   (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``). Absent weights are an error that says where to put them.
2. ``source="random"``: the same VGG16 architecture with a deterministic, fixed-seed random initialisation.
3. ``source="auto"`` (the default): ImageNet weights when they are in the hub cache, otherwise the random network.

Why a random VGG is a sound offline default: the Gram matrix of a layer compares second-order statistics of
local filter responses. With random filters those responses are random projections of image patches (of
growing receptive field with depth), and their co-activation statistics still capture colour, local contrast
and stripe/blob structure -- the texture statistics the loss is meant to match. Random-weight networks have
been shown to support texture synthesis and style transfer (Ustyuzhaninov et al., "Texture synthesis using
shallow convolutional networks with random filters", 2016; He, Wang and Hopcroft, "A powerful generative model
using random weights for the deep image representation", NeurIPS 2016). We initialise with fan-in scaled
(variance preserving) He-normal weights rather than torchvision's fan-out scaling, so that activation magnitudes,
and hence Gram magnitudes, stay comparable from layer to layer instead of shrinking 5x at the first layer.

Which network was used is recorded as ``FeatureNetwork.description`` in every run's config and checkpoint.
docs/benchmarks.md ("The style loss's feature network") measures what the random network contributes on Wildlife
MNIST, against the same preset without a style loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from cfaug._utils import sha256_file, verify_str_arg

__all__ = [
    "IMAGENET_VGG16_FILENAME",
    "IMAGENET_VGG16_SHA256_PREFIX",
    "RANDOM_VGG16_SEED",
    "VGG16_LAYER_INDICES",
    "VGG16_LAYER_NAMES",
    "FeatureNetwork",
    "FeatureNetworkError",
    "build_feature_network",
    "imagenet_vgg16_cache_path",
]

#: Indices in VGG16 ``features`` of the ReLU outputs used by the style loss: relu1_2, relu2_2, relu3_3, relu4_3.
VGG16_LAYER_INDICES: tuple[int, ...] = (3, 8, 15, 22)
VGG16_LAYER_NAMES: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

#: File name torchvision uses for ``VGG16_Weights.IMAGENET1K_V1``; its sha256 starts with the suffix.
IMAGENET_VGG16_FILENAME = "vgg16-397923af.pth"
IMAGENET_VGG16_SHA256_PREFIX = "397923af"

#: Seed of the deterministic random VGG16 used offline. Changing it changes the recipe.
RANDOM_VGG16_SEED = 20210113

# VGG16 "configuration D" up to conv4_3: channel counts, "M" for 2x2 max pooling.
_VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
_SOURCES = ("auto", "imagenet", "random")


class FeatureNetworkError(FileNotFoundError):
    """Pretrained feature weights were asked for but are not available; the message says where to put them."""


def _vgg16_features(last_index: int) -> nn.Sequential:
    """VGG16 ``features`` modules ``0..last_index`` with torchvision's module indices (so state dicts match)."""
    layers: list[nn.Module] = []
    channels = 3
    for spec in _VGG16_LAYOUT:
        if spec == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(spec)
    return nn.Sequential(*layers[: last_index + 1])


def imagenet_vgg16_cache_path() -> Path:
    """Where torchvision caches the ImageNet VGG16 weights: ``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_VGG16_FILENAME


class FeatureNetwork(nn.Module):
    """Frozen VGG16 features, returning the activations of the requested ReLU layers.

    The network is truncated after the deepest requested layer, so unused layers cost nothing.

    Args:
        layers: indices into VGG16 ``features`` (a subset of ``VGG16_LAYER_INDICES``, increasing).
        state_dict: ``features.*`` (or bare ``N.weight``) tensors of a VGG16; ``None`` for the random network.
        description: what the weights are, recorded in run configs and checkpoints.

    Shape:
        Input ``(B, 3, H, W)`` images in the range the weights expect (the CGN recipe feeds [-1, 1]);
        output a list with one ``(B, C_l, H_l, W_l)`` tensor per requested layer.
    """

    def __init__(self, layers: Sequence[int], state_dict: dict[str, torch.Tensor] | None, description: str):
        super().__init__()
        layers = tuple(int(i) for i in layers)
        if not layers or any(i not in VGG16_LAYER_INDICES for i in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(
                f"`layers` should be increasing indices among {list(VGG16_LAYER_INDICES)}, but got {list(layers)}."
            )
        self.layers = layers
        self.description = description
        self.features = _vgg16_features(layers[-1])
        if state_dict is None:
            generator = torch.Generator().manual_seed(RANDOM_VGG16_SEED)
            for module in self.features:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                    with torch.no_grad():
                        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
                        module.bias.zero_()
        else:
            wanted = {key for key in self.features.state_dict()}
            cleaned = {k.removeprefix("features."): v for k, v in state_dict.items()}
            missing = sorted(wanted - set(cleaned))
            if missing:
                raise ValueError(f"The VGG16 weights lack the tensors {missing[:4]}; is this a VGG16 state dict?")
            self.features.load_state_dict({k: cleaned[k] for k in wanted}, strict=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureNetwork:
        """Stay in eval mode: the network is a frozen measuring device (it has no dropout or BN, but be explicit)."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the activations of ``layers`` for ``images``."""
        outputs = []
        hidden = images
        wanted = set(self.layers)
        for index, module in enumerate(self.features):
            # ReLU(inplace=True) would overwrite the stored activation of the previous module; run out of place.
            hidden = torch.relu(hidden) if isinstance(module, nn.ReLU) else module(hidden)
            if index in wanted:
                outputs.append(hidden)
        return outputs


def _load_vgg16_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # torchvision ships a plain state dict; weights_only=True refuses anything but tensors and containers.
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(f"{str(path)!r} should hold a VGG16 state dict, but holds a {type(loaded).__name__}.")
    return loaded


def build_feature_network(
    layers: Sequence[int], source: str | os.PathLike[str] = "auto", check_hash: bool = True
) -> FeatureNetwork:
    """Build the frozen style-loss feature network without ever downloading anything.

    Args:
        layers: VGG16 ``features`` indices whose ReLU outputs are returned, e.g. ``(3, 8, 15)``.
        source: ``"auto"`` (ImageNet weights if cached, else random), ``"imagenet"`` (cached ImageNet weights,
            error if absent), ``"random"`` (fixed-seed random VGG16), or a path to a VGG16 state dict
            (``.pth`` loaded with ``weights_only=True``, or ``.safetensors``).
        check_hash: verify that the cached torchvision file's sha256 starts with ``397923af``.

    Returns:
        The network, in eval mode with gradients disabled; its ``description`` says which weights it has.

    Raises:
        FeatureNetworkError: ImageNet weights were requested (by name or path) but the file does not exist.
        ValueError: ``source`` is an unknown name, or the file is not a VGG16 state dict.

    Examples:
        >>> net = build_feature_network((3, 8), source="random")
        >>> [f.shape[1] for f in net(torch.zeros(1, 3, 32, 32))]
        [64, 128]
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"`feature_net` should be one of {list(_SOURCES)} or a path, but got {type(source).__name__}.")
    if isinstance(source, os.PathLike) or source not in _SOURCES:
        path = Path(source).expanduser()
        if not path.is_file():
            looks_like_path = isinstance(source, os.PathLike) or os.sep in source or path.suffix != ""
            if not looks_like_path:  # a misspelt name: list the valid ones
                verify_str_arg(source, "feature_net", _SOURCES)
            raise FeatureNetworkError(f"VGG16 weights file not found: {str(path)!r} (given as `feature_net`).")
        return FeatureNetwork(layers, _load_vgg16_file(path), f"vgg16 weights from {path.name}")
    source = verify_str_arg(source, "feature_net", _SOURCES)
    if source == "random":
        return FeatureNetwork(layers, None, f"vgg16 random init (he-normal fan_in, seed {RANDOM_VGG16_SEED})")
    cached = imagenet_vgg16_cache_path()
    if not cached.is_file():
        if source == "imagenet":
            raise FeatureNetworkError(
                f"ImageNet VGG16 weights are not in the torch hub cache ({str(cached)!r}) and cfaug never downloads "
                "them during training. Download https://download.pytorch.org/models/vgg16-397923af.pth on a "
                "machine with network access and put it there, pass its path as `feature_net`, or use "
                "feature_net='random' (the offline default)."
            )
        return build_feature_network(layers, "random")
    if check_hash and not sha256_file(cached).startswith(IMAGENET_VGG16_SHA256_PREFIX):
        raise ValueError(
            f"{str(cached)!r} does not have the sha256 of torchvision's VGG16_Weights.IMAGENET1K_V1 "
            f"(it should start with {IMAGENET_VGG16_SHA256_PREFIX}); delete it or pass another `feature_net`."
        )
    return FeatureNetwork(layers, _load_vgg16_file(cached), "vgg16 imagenet (torchvision IMAGENET1K_V1)")
