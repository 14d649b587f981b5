"""The CGN paper's ImageNet evaluations of a classifier: shape bias (Table 3) and the Backgrounds Challenge (Table 4).

**Shape bias** (Geirhos et al., ICLR 2019; notes 3.9). Cue-conflict stimuli combine the shape of one of 16
entry-level categories with the texture of another; the file ``cat/cat1-elephant2.png`` has a cat's shape and an
elephant's texture. For every stimulus, the 1000 ImageNet probabilities (softmax of the logits) are aggregated to
the 16 categories by their **mean** over each category's ImageNet classes (the WordNet mapping of the
model-vs-human toolbox, ``GEIRHOS_16_IMAGENET_INDICES``), and the decision is the category of highest mean.
Stimuli whose shape and texture categories are the same are left out. Among the remaining decisions that name
the shape or the texture category,

    shape bias = shape decisions / (shape decisions + texture decisions).

Decisions naming neither are counted but do not enter the ratio.

**Backgrounds Challenge** (Xiao et al., ICLR 2021; notes 3.9). ImageNet-9 (IN-9) has 9 coarse classes (dog,
bird, wheeled vehicle, reptile, carnivore, insect, musical instrument, primate, fish) and test variants that keep
or swap the background: ``original``, ``mixed_same`` (the foreground on the background of another image of the same
class), ``mixed_rand`` (on a random class's background), and more. A 1000-class prediction (top-1) counts as
correct when the official ``in_to_in9.json`` maps that ImageNet class to the image's IN-9 class; the 630
ImageNet classes outside IN-9 map to -1 and always count as wrong.

    BG-gap = accuracy(mixed_same) - accuracy(mixed_rand)

is the share of decisions that change only because the background belongs to another class. The authors of the
CGN paper report it on ``shape_texture``, the ensemble's output without its background head.

Both evaluations run any classifier: the ensemble of ``cfaug train classifier`` (each of its outputs is
evaluated, from one forward pass), or a plain torchvision model. They read folders the user supplies and say
precisely what is missing when the layout is wrong.

Examples:
    >>> model = load_evaluation_model(torchvision="resnet50", weights="IMAGENET1K_V1")  # doctest: +SKIP
    >>> results = shape_bias(model.module, "texture-vs-shape/stimuli/style-transfer-preprocessed-512")  # doctest: +SKIP
    >>> results["logits"]["shape_bias"]  # doctest: +SKIP
    0.22
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cfaug._utils import check_positive_int, verify_str_arg
from cfaug.evaluation._moved import forward_to
from cfaug.models.classifiers import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BACKGROUND_VARIANTS",
    "DEFAULT_BACKGROUND_VARIANTS",
    "GEIRHOS_16_CATEGORIES",
    "GEIRHOS_16_IMAGENET_INDICES",
    "IN9_CLASSES",
    "IN9_MAPPING_FILE",
    "IN9_MEAN",
    "IN9_STD",
    "CueConflictStimuli",
    "EvaluationModel",
    "backgrounds_challenge",
    "format_backgrounds",
    "format_shape_bias",
    "imagenet_to_16_categories",
    "in9_folder",
    "load_evaluation_model",
    "load_in9_mapping",
    "parse_cue_conflict_name",
    "shape_bias",
]

#: The 16 entry-level categories of Geirhos et al., in the toolbox's (alphabetical) order.
GEIRHOS_16_CATEGORIES: tuple[str, ...] = (
    "airplane",
    "bear",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "car",
    "cat",
    "chair",
    "clock",
    "dog",
    "elephant",
    "keyboard",
    "knife",
    "oven",
    "truck",
)

#: The ImageNet-1k class indices of each category (model-vs-human, ``helper/human_categories.py``; the same lists
#: are in the CGN authors' ``utils/eval_shape_bias``). Some categories have one class, dog has 109: the mean, not
#: the sum, keeps the large categories from winning by their size alone.
GEIRHOS_16_IMAGENET_INDICES: dict[str, tuple[int, ...]] = {
    "airplane": (404,),
    "bear": (294, 295, 296, 297),
    "bicycle": (444, 671),
    "bird": (
        8,
        10,
        11,
        12,
        13,
        14,
        15,
        16,
        18,
        19,
        20,
        22,
        23,
        24,
        80,
        81,
        82,
        83,
        87,
        88,
        89,
        90,
        91,
        92,
        93,
        94,
        95,
        96,
        98,
        99,
        100,
        127,
        128,
        129,
        130,
        131,
        132,
        133,
        135,
        136,
        137,
        138,
        139,
        140,
        141,
        142,
        143,
        144,
        145,
    ),  # fmt: skip
    "boat": (472, 554, 625, 814, 914),
    "bottle": (440, 720, 737, 898, 899, 901, 907),
    "car": (436, 511, 817),
    "cat": (281, 282, 283, 284, 285, 286),
    "chair": (423, 559, 765, 857),
    "clock": (409, 530, 892),
    "dog": (
        *range(152, 192),
        *range(193, 204),
        *range(205, 227),
        *range(228, 242),
        *range(243, 251),
        *range(252, 258),
        259,
        261,
        262,
        263,
        265,
        266,
        267,
        268,
    ),  # fmt: skip
    "elephant": (385, 386),
    "keyboard": (508, 878),
    "knife": (499,),
    "oven": (766,),
    "truck": (555, 569, 656, 675, 717, 734, 864, 867),
}

#: The 9 classes of ImageNet-9, in label order (the release's class folders ``00_dog`` ... ``08_fish``).
IN9_CLASSES: tuple[str, ...] = (
    "dog",
    "bird",
    "wheeled vehicle",
    "reptile",
    "carnivore",
    "insect",
    "musical instrument",
    "primate",
    "fish",
)
#: The test variants of the Backgrounds Challenge release (``bg_challenge/<variant>/val``).
BACKGROUND_VARIANTS: tuple[str, ...] = tuple(
    "original mixed_same mixed_rand mixed_next only_fg no_fg only_bg_b only_bg_t".split()
)
#: The columns of the CGN paper's Table 4: IN-9, Mixed-Same, Mixed-Rand (and from the last two, the BG-gap).
DEFAULT_BACKGROUND_VARIANTS: tuple[str, ...] = ("original", "mixed_same", "mixed_rand")
#: The official ImageNet-to-IN-9 mapping's file name (MadryLab/backgrounds_challenge).
IN9_MAPPING_FILE = "in_to_in9.json"
IN9_MAPPING_URL = "https://github.com/MadryLab/backgrounds_challenge/blob/master/in_to_in9.json"
#: IN-9's channel statistics, which the CGN authors' code normalises with (``normalization="in9"``).
IN9_MEAN: tuple[float, float, float] = (0.4717, 0.4499, 0.3837)
IN9_STD: tuple[float, float, float] = (0.2600, 0.2516, 0.2575)

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_STIMULUS_PART = re.compile(r"^([a-z]+)(\d+)$")
_STIMULI_LAYOUT = "<root>/<category>/<shape><n>-<texture><m>.png, one folder per category: " + ", ".join(
    GEIRHOS_16_CATEGORIES
)


# --------------------------------------------------------------------------------------------------- models
@dataclass
class EvaluationModel:
    """A classifier ready for evaluation, with the input statistics it expects.

    Attributes:
        module: returns ImageNet logits ``(B, 1000)``, or a dict of them (the ensemble's outputs).
        mean: the normalisation mean of its inputs.
        std: the normalisation standard deviation.
        image_size: its evaluation crop (224 for ImageNet models).
        description: what it is, for reports.
    """

    module: nn.Module
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int = 224
    description: str = ""


def load_evaluation_model(
    classifier: str | os.PathLike[str] | None = None,
    torchvision: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    device: str | torch.device = "cpu",
) -> EvaluationModel:
    """Load the classifier to evaluate: a cfaug ensemble checkpoint, or a torchvision architecture with weights.

    Args:
        classifier: a ``final.safetensors`` written by ``cfaug train classifier`` (every output is evaluated).
        torchvision: a torchvision architecture name, e.g. ``"resnet50"`` (its logits are the one output).
        weights: the torchvision model's weights: a weights name (``"IMAGENET1K_V1"``) or a file; required with
            ``torchvision`` (an untrained network's numbers mean nothing).
        download: allow downloading named torchvision weights that are not in the torch hub cache.
        device: where to run it.

    Raises:
        ValueError: neither or both of ``classifier`` and ``torchvision`` are given, or ``weights`` is missing.
        FileNotFoundError: the checkpoint or the weights are not on this machine.
    """
    from cfaug.models.classifiers import build_torchvision_classifier, load_classifier

    if (classifier is None) == (torchvision is None):
        raise ValueError("Give exactly one of `classifier` (a cfaug checkpoint) and `torchvision` (an architecture).")
    if classifier is not None:
        if weights is not None:
            raise ValueError("`weights` applies to a torchvision model; a cfaug checkpoint carries its own weights.")
        model = load_classifier(classifier, map_location=device)
        meta = model.meta
        return EvaluationModel(
            module=model,
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            image_size=int(meta["image_size"]),
            description=f"cfaug ensemble {Path(classifier).name} ({meta['arch']['backbone']})",
        )
    if weights is None:
        raise ValueError(
            f"`weights` is required with a torchvision model ({torchvision!r}): a weights name such as "
            "'IMAGENET1K_V1' or a weights file."
        )
    module = build_torchvision_classifier(torchvision, weights, download=download).to(device)
    return EvaluationModel(module=module, description=f"torchvision {torchvision} ({weights})")


def _outputs_of(module: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    out = module(images)
    if isinstance(out, torch.Tensor):
        return {"logits": out}
    if isinstance(out, Mapping) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return dict(out)
    raise TypeError(f"The model should return a logits tensor or a dict of them, but returned {type(out).__name__}.")


def _select(outputs: dict[str, torch.Tensor], wanted: Sequence[str] | None) -> dict[str, torch.Tensor]:
    if wanted is None:
        return outputs
    for name in wanted:
        verify_str_arg(name, "outputs", outputs)
    return {name: outputs[name] for name in wanted}


def _check_logits(name: str, logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] != 1000:
        raise ValueError(
            f"Output {name!r} should be ImageNet logits of shape (batch, 1000), but has shape {tuple(logits.shape)}."
        )


# ---------------------------------------------------------------------------------------------- shape bias
def imagenet_to_16_categories(probabilities: torch.Tensor) -> torch.Tensor:
    """Aggregate ImageNet probabilities ``(B, 1000)`` to the 16 categories ``(B, 16)`` by their mean.

    Columns follow ``GEIRHOS_16_CATEGORIES``.

    Examples:
        >>> p = torch.zeros(1, 1000)
        >>> p[0, 404] = 0.2  # airliner: airplane's only class
        >>> p[0, 152:192] = 0.01  # 40 of dog's classes: 0.4 in total, but a mean of 0.0037
        >>> GEIRHOS_16_CATEGORIES[int(imagenet_to_16_categories(p).argmax())]
        'airplane'
    """
    if probabilities.dim() != 2 or probabilities.shape[1] != 1000:
        raise ValueError(f"`probabilities` should have shape (batch, 1000), but got {tuple(probabilities.shape)}.")
    columns = [
        probabilities[:, list(GEIRHOS_16_IMAGENET_INDICES[category])].mean(dim=1) for category in GEIRHOS_16_CATEGORIES
    ]
    return torch.stack(columns, dim=1)


def parse_cue_conflict_name(filename: str) -> tuple[str, str]:
    """The ``(shape, texture)`` categories of a cue-conflict stimulus from its file name.

    Unlike the original evaluation (which cut the last 5 characters), any number of digits works.

    Examples:
        >>> parse_cue_conflict_name("airplane1-bicycle2.png")
        ('airplane', 'bicycle')
        >>> parse_cue_conflict_name("knife10-elephant12.png")
        ('knife', 'elephant')

    Raises:
        ValueError: the name is not ``<shape><n>-<texture><m>.<ext>`` with two of the 16 categories.
    """
    stem = Path(filename).stem
    parts = stem.split("-")
    matches = [_STIMULUS_PART.match(part) for part in parts]
    if len(parts) != 2 or not all(matches) or any(m.group(1) not in GEIRHOS_16_CATEGORIES for m in matches):
        raise ValueError(
            f"Cue-conflict stimulus {filename!r} should be named <shape><n>-<texture><m>.<ext> with two of the 16 "
            f"categories ({', '.join(GEIRHOS_16_CATEGORIES)}), e.g. 'cat1-elephant2.png'."
        )
    return matches[0].group(1), matches[1].group(1)


class CueConflictStimuli(Dataset):
    """The cue-conflict stimuli of Geirhos et al. in a folder, without the same-category ones.

    Items are ``(image, shape index, texture index)``, indices into ``GEIRHOS_16_CATEGORIES``.

    Args:
        root: the stimuli folder (``texture-vs-shape/stimuli/style-transfer-preprocessed-512``): one sub-folder
            per category holding ``<shape><n>-<texture><m>.png`` files whose shape is that category.
        transform: applied to the PIL image.

    Raises:
        FileNotFoundError: ``root`` or a category folder is missing; the message gives the expected layout.
        ValueError: an unknown sub-folder, a file named otherwise, or a file in the wrong category folder.
    """

    def __init__(self, root: str | os.PathLike[str], transform: Callable[[Any], Any] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.transform = transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"Stimuli folder {str(self.root)!r} does not exist; expected {_STIMULI_LAYOUT}.")
        folders = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        unknown = sorted(folders - set(GEIRHOS_16_CATEGORIES))
        if unknown:
            raise ValueError(
                f"{str(self.root)!r} has sub-folders {unknown} that are none of the 16 categories; "
                f"expected {_STIMULI_LAYOUT}."
            )
        missing = [c for c in GEIRHOS_16_CATEGORIES if c not in folders]
        if missing:
            raise FileNotFoundError(
                f"{str(self.root)!r} lacks the category folders {missing}; expected {_STIMULI_LAYOUT}."
            )
        self.items: list[tuple[Path, int, int]] = []
        self.excluded_same_category = 0
        for category in GEIRHOS_16_CATEGORIES:
            for path in sorted((self.root / category).iterdir()):
                if path.name.startswith(".") or path.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                shape, texture = parse_cue_conflict_name(path.name)
                if shape != category:
                    raise ValueError(
                        f"Stimulus {str(path)!r} has the shape {shape!r} but lies in the folder {category!r}; "
                        f"expected {_STIMULI_LAYOUT}."
                    )
                if shape == texture:
                    self.excluded_same_category += 1
                    continue
                self.items.append((path, GEIRHOS_16_CATEGORIES.index(shape), GEIRHOS_16_CATEGORIES.index(texture)))
        if not self.items:
            raise FileNotFoundError(f"{str(self.root)!r} holds no cue-conflict stimuli; expected {_STIMULI_LAYOUT}.")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        from PIL import Image

        path, shape, texture = self.items[index]
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, shape, texture


def _preprocess(image_size: int | None, resize: int | None, mean: Sequence[float], std: Sequence[float]) -> Any:
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToImage()]
    if resize is not None:
        steps.append(v2.Resize(resize, antialias=True))
    if image_size is not None:
        steps.append(v2.CenterCrop(image_size))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def shape_bias(
    model: EvaluationModel | nn.Module,
    root: str | os.PathLike[str],
    *,
    outputs: Sequence[str] | None = None,
    image_size: int | None = None,
    resize: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """The shape bias of a classifier on the cue-conflict stimuli in ``root``, per model output.

    Preprocessing (the authors'): resize the shorter side to ``resize`` (256), centre-crop ``image_size`` (224),
    normalise with the model's statistics.

    Args:
        model: an ``EvaluationModel`` (or a bare module, taken to expect ImageNet statistics).
        root: the stimuli folder (see ``CueConflictStimuli``).
        outputs: which of the model's outputs to evaluate (default all; a plain model's one output is ``logits``).
        image_size: the centre crop; the model's image size when ``None``.
        resize: the resize before cropping; ``image_size * 256 / 224`` when ``None``.
        batch_size: stimuli per forward pass.
        num_workers: DataLoader workers decoding images.
        device: where to run the model.
        progress: show a progress bar.

    Returns:
        For every output: ``shape_bias`` (``None`` when no decision named the shape or the texture),
        ``shape_decisions``, ``texture_decisions``, ``other_decisions``, ``stimuli``, ``shape_accuracy`` and
        ``texture_accuracy`` (shares of all stimuli), and ``per_category`` (the shape and texture decisions per
        shape category). Plus the key ``"_data"``: the number of stimuli and of same-category stimuli left out.

    Raises:
        FileNotFoundError, ValueError: the folder does not have the expected layout (see ``CueConflictStimuli``),
            or the model does not produce 1000 ImageNet logits.
    """
    model = model if isinstance(model, EvaluationModel) else EvaluationModel(module=model)
    size = model.image_size if image_size is None else check_positive_int(image_size, "image_size")
    resize = round(size * 256 / 224) if resize is None else check_positive_int(resize, "resize")
    stimuli = CueConflictStimuli(root, transform=_preprocess(size, resize, model.mean, model.std))
    loader = DataLoader(stimuli, batch_size=check_positive_int(batch_size, "batch_size"), num_workers=num_workers)
    module = model.module.to(device).eval()
    counts: dict[str, torch.Tensor] = {}  # output -> (16 shape categories, 3): shape, texture, other decisions
    with torch.no_grad():
        for images, shapes, textures in tqdm(loader, desc="shape bias", unit="batch", disable=not progress):
            for name, logits in _select(_outputs_of(module, images.to(device)), outputs).items():
                _check_logits(name, logits)
                decisions = imagenet_to_16_categories(logits.float().softmax(dim=1)).argmax(dim=1).cpu()
                kind = torch.full_like(decisions, 2)  # other
                kind[decisions == textures] = 1
                kind[decisions == shapes] = 0
                table = counts.setdefault(name, torch.zeros(len(GEIRHOS_16_CATEGORIES), 3, dtype=torch.int64))
                table.index_put_((shapes, kind), torch.ones_like(kind), accumulate=True)
    results: dict[str, dict[str, Any]] = {}
    for name, table in counts.items():
        shape_n, texture_n, other_n = (int(v) for v in table.sum(dim=0))
        total = shape_n + texture_n + other_n
        results[name] = {
            "shape_bias": shape_n / (shape_n + texture_n) if shape_n + texture_n else None,
            "shape_decisions": shape_n,
            "texture_decisions": texture_n,
            "other_decisions": other_n,
            "stimuli": total,
            "shape_accuracy": shape_n / total,
            "texture_accuracy": texture_n / total,
            "per_category": {
                category: {"shape": int(table[k, 0]), "texture": int(table[k, 1]), "other": int(table[k, 2])}
                for k, category in enumerate(GEIRHOS_16_CATEGORIES)
            },
        }
    results["_data"] = {"stimuli": len(stimuli), "excluded_same_category": stimuli.excluded_same_category}
    return results


# ------------------------------------------------------------------------------------ Backgrounds Challenge
def load_in9_mapping(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read the official ImageNet-to-IN-9 mapping: a JSON object from ``"0"``..``"999"`` to -1..8.

    Returns:
        A ``(1000,)`` int64 tensor: the IN-9 class of every ImageNet class, -1 outside IN-9.

    Raises:
        FileNotFoundError: the file does not exist; the message says where to get it.
        ValueError: the file is not such a mapping.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"The ImageNet-to-IN-9 mapping {str(path)!r} does not exist. Download {IN9_MAPPING_URL} (raw file) "
            f"into the IN-9 folder as {IN9_MAPPING_FILE}, or give its path."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}.") from error
    expected = {str(i) for i in range(1000)}
    if not isinstance(data, dict) or set(data) != expected:
        raise ValueError(f"{str(path)!r} should map every ImageNet class index '0' to '999' to an IN-9 class.")
    values = [data[str(i)] for i in range(1000)]
    if not all(isinstance(v, int) and not isinstance(v, bool) and -1 <= v < len(IN9_CLASSES) for v in values):
        raise ValueError(f"{str(path)!r} should map to IN-9 classes 0 to 8, or -1 for classes outside IN-9.")
    return torch.tensor(values, dtype=torch.int64)


def in9_folder(root: str | os.PathLike[str], variant: str) -> Path:
    """The folder of one IN-9 variant's test images: ``<root>/<variant>/val`` (or ``<root>/<variant>``).

    Raises:
        FileNotFoundError: the variant's folder is missing, or lacks the 9 class folders.
    """
    verify_str_arg(variant, "variant", BACKGROUND_VARIANTS)
    root = Path(root).expanduser()
    layout = (
        f"<root>/<variant>/val/<class>/<image>.JPEG with the 9 class folders 00_dog ... 08_fish (the release's "
        f"bg_challenge folder) and {IN9_MAPPING_FILE} in <root>"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"IN-9 folder {str(root)!r} does not exist; expected {layout}.")
    folder = root / variant / "val"
    if not folder.is_dir():
        folder = root / variant  # a variant folder holding the class folders directly
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The IN-9 variant folder {str(root / variant / 'val')!r} is missing; expected {layout}."
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != len(IN9_CLASSES):
        raise FileNotFoundError(
            f"{str(folder)!r} should hold the 9 IN-9 class folders, but holds {classes}; expected {layout}."
        )
    return folder


def backgrounds_challenge(
    model: EvaluationModel | nn.Module,
    root: str | os.PathLike[str],
    *,
    variants: Sequence[str] = DEFAULT_BACKGROUND_VARIANTS,
    mapping: str | os.PathLike[str] | torch.Tensor | None = None,
    outputs: Sequence[str] | None = None,
    normalization: str = "model",
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of a 1000-class classifier on IN-9 variants, mapped to the 9 classes, and the BG-gap.

    Preprocessing: none but normalisation, as the released evaluation (the images are 224 px already); with
    ``image_size``, a resize and centre crop to that size first.

    Args:
        model: an ``EvaluationModel`` (or a bare module, taken to expect ImageNet statistics).
        root: the IN-9 folder (the release's ``bg_challenge``), see ``in9_folder``.
        variants: the variants to evaluate; the BG-gap needs ``mixed_same`` and ``mixed_rand``.
        mapping: the ImageNet-to-IN-9 mapping: a path, a ``(1000,)`` tensor, or ``None`` for
            ``<root>/in_to_in9.json``.
        outputs: which of the model's outputs to evaluate (default all).
        normalization: ``"model"``: the model's own statistics, as the official evaluation does for ImageNet
            models; ``"in9"``: IN-9's statistics, as the CGN authors' code does.
        image_size: resize and centre-crop to this size first (``None``: feed the images as they are).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images.
        device: where to run the model.
        progress: show progress bars.

    Returns:
        ``{"accuracy": {variant: {output: accuracy}}, "images": {variant: count}, "bg_gap": {output: gap}}``
        (``bg_gap`` only with both mixed variants). Accuracies are fractions of all images of the variant.

    Raises:
        FileNotFoundError: a variant folder or the mapping is missing.
        ValueError: invalid arguments, a malformed mapping, or a model without 1000 ImageNet logits.
    """
    from torchvision.datasets import ImageFolder

    model = model if isinstance(model, EvaluationModel) else EvaluationModel(module=model)
    if isinstance(variants, str) or not variants:
        raise ValueError(f"`variants` should be a non-empty list of names from {list(BACKGROUND_VARIANTS)}.")
    variants = [verify_str_arg(v, "variants", BACKGROUND_VARIANTS) for v in variants]
    verify_str_arg(normalization, "normalization", ("model", "in9"))
    folders = {variant: in9_folder(root, variant) for variant in variants}
    if mapping is None:
        mapping = Path(root).expanduser() / IN9_MAPPING_FILE
    table = mapping if isinstance(mapping, torch.Tensor) else load_in9_mapping(mapping)
    if table.shape != (1000,):
        raise ValueError(f"`mapping` should have shape (1000,), but has {tuple(table.shape)}.")
    mean, std = (model.mean, model.std) if normalization == "model" else (IN9_MEAN, IN9_STD)
    size = None if image_size is None else check_positive_int(image_size, "image_size")
    transform = _preprocess(size, None if size is None else round(size * 256 / 224), mean, std)
    module = model.module.to(device).eval()
    accuracy: dict[str, dict[str, float]] = {}
    images: dict[str, int] = {}
    for variant, folder in folders.items():
        dataset = ImageFolder(str(folder), transform=transform, allow_empty=True)
        loader = DataLoader(dataset, batch_size=check_positive_int(batch_size, "batch_size"), num_workers=num_workers)
        correct: dict[str, int] = {}
        with torch.no_grad():
            for batch, labels in tqdm(loader, desc=variant, unit="batch", disable=not progress):
                for name, logits in _select(_outputs_of(module, batch.to(device)), outputs).items():
                    _check_logits(name, logits)
                    predicted = table[logits.argmax(dim=1).cpu()]
                    correct[name] = correct.get(name, 0) + int((predicted == labels).sum())
        if not dataset:
            raise FileNotFoundError(f"The IN-9 variant folder {str(folder)!r} holds no images.")
        # The true count of images as denominator (the CGN code's batch_size x batches under-counts a partial batch).
        accuracy[variant] = {name: hits / len(dataset) for name, hits in correct.items()}
        images[variant] = len(dataset)
    results: dict[str, Any] = {"accuracy": accuracy, "images": images}
    if "mixed_same" in accuracy and "mixed_rand" in accuracy:
        results["bg_gap"] = {
            name: accuracy["mixed_same"][name] - accuracy["mixed_rand"][name] for name in accuracy["mixed_same"]
        }
    return results


# -------------------------------------------------------------------------------------------------- reports
def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_shape_bias(results: Mapping[str, Any]) -> str:
    """A markdown table of ``shape_bias`` results, one row per output."""
    lines = [
        "| output | shape bias | shape decisions | texture decisions | other | stimuli |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if name.startswith("_"):
            continue
        lines.append(
            f"| {name} | {_percent(row['shape_bias'])} | {row['shape_decisions']} | {row['texture_decisions']} "
            f"| {row['other_decisions']} | {row['stimuli']} |"
        )
    data = results.get("_data", {})
    if data:
        lines.append(
            f"\n{data['stimuli']} stimuli; {data['excluded_same_category']} with one category for both cues left out."
        )
    return "\n".join(lines)


def format_backgrounds(results: Mapping[str, Any]) -> str:
    """A markdown table of ``backgrounds_challenge`` results (accuracy in %), one row per output."""
    variants = list(results["accuracy"])
    names = list(next(iter(results["accuracy"].values())))
    gap = results.get("bg_gap")
    header = "| output | " + " | ".join(variants) + (" | BG-gap |" if gap else " |")
    lines = [header, "|---" * (len(variants) + 1 + bool(gap)) + "|"]
    for name in names:
        cells = [_percent(results["accuracy"][v][name]) for v in variants]
        if gap:
            cells.append(_percent(gap[name]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The command line moved to cfaug.cli.evaluate; its names still import from here, loaded on first use.
__getattr__ = forward_to(
    "cfaug.cli.evaluate",
    __name__,
    ("add_evaluate_imagenet_arguments", "run_evaluate_imagenet"),
)
