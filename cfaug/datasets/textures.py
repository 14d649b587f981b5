"""Texture sets for Wildlife MNIST: a folder of images, or the built-in procedural set.

A texture set is two tensors of 10 RGB images each, one per class: the **object** textures (painted inside the
digit) and the **background** textures. The paper's set is 20 photographs (striped animal coats for objects,
leaf veins for backgrounds) that the authors ship with their code; point ``load_texture_folder`` at a copy.

For a fresh machine without network, ``procedural_textures`` draws a stand-in set in code, deterministically
(no files; the only random numbers are the Voronoi points of a fixed-seed Python generator): ten two-tone wavy
stripe patterns (an "animal coat" per class: its own pair of colours, stripe angle, stripe period and waviness)
as objects, and ten leaf-like vein networks (cell walls of a Voronoi diagram over a fixed point set, in a shaded
base colour per class, with cell counts that grow with the class) as backgrounds. The object hues run round the
colour wheel in steps of 36 degrees; each background hue is the complementary hue of the object of the same
class shifted by 18 degrees, so that in the training split, where object and background share the class, the
digit stands out from its background.
"""

from __future__ import annotations

import colorsys
import functools
import math
import os
import random
import re
from pathlib import Path

import torch

from cfaug._utils import check_int

__all__ = [
    "NUM_TEXTURE_CLASSES",
    "TEXTURE_EXTENSIONS",
    "TEXTURE_KINDS",
    "find_texture_files",
    "load_texture_folder",
    "procedural_textures",
]

#: Classes in a texture set; texture ``k`` goes with class ``k``.
NUM_TEXTURE_CLASSES = 10
#: The two subfolders of a texture folder, and the two halves of a texture set.
TEXTURE_KINDS: tuple[str, ...] = ("object", "background")
#: File endings accepted in a texture folder (case-insensitive).
TEXTURE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

# "{class}_{anything}.{ext}", e.g. "3_striped_0043.jpg" is the object texture of class 3.
_TEXTURE_NAME = re.compile(r"^(\d+)_.*$")


def find_texture_files(texture_root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """List the texture files of a folder, one object and one background image per class.

    The folder holds ``object/`` and ``background/`` subfolders; in each, the file for class ``k`` is named
    ``{k}_*.jpg`` (``.jpeg`` and ``.png`` are accepted too). Other files (no class prefix, other endings) are
    ignored.

    Args:
        texture_root: the folder.

    Returns:
        ``{"object": [path of class 0, ..., class 9], "background": [...]}``.

    Raises:
        TypeError: ``texture_root`` is not a path.
        FileNotFoundError: the folder, a subfolder or the file of some class is missing (the message lists every
            missing one).
        ValueError: a class has more than one file, or a file names a class outside 0..9.

    Examples:
        >>> files = find_texture_files("../shared/data/wildlife_textures")  # doctest: +SKIP
        >>> files["object"][3].name  # doctest: +SKIP
        '3_striped_0043.jpg'
    """
    if not isinstance(texture_root, (str, os.PathLike)):
        raise TypeError(
            f"`texture_root` should be a path to a folder with object/ and background/ subfolders, "
            f"but got {type(texture_root).__name__} {texture_root!r}."
        )
    root = Path(texture_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"`texture_root` should be a folder with object/ and background/ subfolders, but {root} is not a folder."
        )
    found: dict[str, list[Path]] = {}
    missing: list[str] = []
    for kind in TEXTURE_KINDS:
        folder = root / kind
        if not folder.is_dir():
            missing.append(f"{folder}/ (the {kind} textures)")
            continue
        by_class: dict[int, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            match = _TEXTURE_NAME.match(path.name)
            if not path.is_file() or path.suffix.lower() not in TEXTURE_EXTENSIONS or match is None:
                continue
            label = int(match.group(1))
            if label >= NUM_TEXTURE_CLASSES:
                raise ValueError(
                    f"Texture file {path} names class {label}, but texture classes should be in "
                    f"[0, {NUM_TEXTURE_CLASSES - 1}]."
                )
            by_class.setdefault(label, []).append(path)
        for label, paths in sorted(by_class.items()):
            if len(paths) > 1:
                raise ValueError(
                    f"Class {label} should have exactly one {kind} texture, but {folder} has {len(paths)}: "
                    f"{[p.name for p in paths]}."
                )
        missing += [f"{folder / f'{label}_*.jpg'}" for label in range(NUM_TEXTURE_CLASSES) if label not in by_class]
        found[kind] = [by_class[label][0] for label in sorted(by_class)]
    if missing:
        raise FileNotFoundError(
            f"The texture folder {root} is incomplete: every class 0..{NUM_TEXTURE_CLASSES - 1} needs one object and "
            f"one background image. Missing: {', '.join(missing)}."
        )
    return found


def load_texture_folder(texture_root: str | os.PathLike[str], size: int = 150) -> dict[str, torch.Tensor]:
    """Load a texture folder (see ``find_texture_files``) as float images resized to ``size`` x ``size``.

    The resize is nearest-neighbour, like the authors' Wildlife MNIST (150 x 150 there), which keeps the
    textures' hard edges at the 32-pixel crop scale.

    Args:
        texture_root: the folder.
        size: side of the resized textures.

    Returns:
        ``{"object": (10, 3, size, size), "background": (10, 3, size, size)}``, float32 in [0, 1].

    Raises:
        TypeError, FileNotFoundError, ValueError: as ``find_texture_files``, or ``size`` is not an int >= 8.
        PIL.UnidentifiedImageError: a file is not a readable image.
    """
    from PIL import Image  # only this path decodes files; the procedural set does not need PIL

    size = _check_size(size)
    textures: dict[str, torch.Tensor] = {}
    for kind, paths in find_texture_files(texture_root).items():
        images = []
        for path in paths:
            with Image.open(path) as image:
                resized = image.convert("RGB").resize((size, size), Image.Resampling.NEAREST)
                images.append(torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(size, size, 3))
        textures[kind] = torch.stack(images).permute(0, 3, 1, 2).float().div_(255).contiguous()
    return textures


def procedural_textures(kind: str, size: int = 150) -> torch.Tensor:
    """The built-in texture set, drawn in code: no files, no network, the same on every call.

    ``"object"`` gives wavy two-tone stripes, ``"background"`` leaf-like vein networks; see the module docstring
    for what distinguishes the classes. The result depends only on ``kind`` and ``size``; it is computed once per
    process and copied on every call.

    Args:
        kind: ``"object"`` or ``"background"``.
        size: side of the square textures, in pixels.

    Returns:
        ``(10, 3, size, size)`` float32 in [0, 1].

    Raises:
        ValueError: unknown ``kind``, or ``size`` < 8.
        TypeError: ``kind`` is not a string or ``size`` not an int.

    Examples:
        >>> procedural_textures("object").shape
        torch.Size([10, 3, 150, 150])
    """
    from cfaug._utils import verify_str_arg

    verify_str_arg(kind, "kind", TEXTURE_KINDS)
    return _procedural_textures(kind, _check_size(size)).clone()


def _check_size(size: object) -> int:
    return check_int(size, "size", 8)  # below 8 pixels a texture has no structure left


@functools.lru_cache(maxsize=4)
def _procedural_textures(kind: str, size: int) -> torch.Tensor:
    draw = _striped_texture if kind == "object" else _veined_texture
    return torch.stack([draw(label, size) for label in range(NUM_TEXTURE_CLASSES)]).float().clamp_(0, 1)


def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # float64 so that the patterns do not depend on float32 rounding of the large stripe phases.
    # Coordinates in [0, 1) on the pattern's own scale: periods below are in units of the whole texture, so a
    # texture at another size shows the same picture.
    coords = torch.arange(size, dtype=torch.float64) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x, y


def _hsv(hue: float, saturation: float, value: float) -> torch.Tensor:
    return torch.tensor(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=torch.float64).view(3, 1, 1)


def _striped_texture(label: int, size: int) -> torch.Tensor:
    x, y = _pixel_grid(size)
    angle = math.pi * (label * 0.1 + 0.05)  # 18 degrees apart, none axis-aligned
    # 7..16 stripe periods across the 150 px texture: a stripe is 5..11 px wide, so a 32 px crop shows a few.
    stripes = 7 + label
    waves = 1.5 + 0.5 * (label % 4)  # how many bends a stripe makes across the texture
    along = x * math.cos(angle) + y * math.sin(angle)
    across = -x * math.sin(angle) + y * math.cos(angle)
    phase = 2 * math.pi * stripes * along + 2.2 * torch.sin(2 * math.pi * waves * across + label)
    # A steep sigmoid of a sine: stripes with soft, one-pixel edges instead of a smooth sine ramp.
    stripe = torch.sigmoid(6.0 * torch.sin(phase))
    bright = _hsv(label / NUM_TEXTURE_CLASSES, 0.85, 1.0)
    dark = _hsv(label / NUM_TEXTURE_CLASSES + 0.5, 0.7, 0.25)
    return dark + (bright - dark) * stripe


def _veined_texture(label: int, size: int) -> torch.Tensor:
    x, y = _pixel_grid(size)
    # A fixed point set per class: Python's Mersenne Twister is reproducible across versions and platforms for a
    # given integer seed, unlike some vectorised torch sampling paths.
    rng = random.Random(7919 * (label + 1))
    num_cells = 10 + 4 * label
    points = torch.tensor([[rng.random(), rng.random()] for _ in range(num_cells)], dtype=torch.float64)
    # Cells on the last axis, so that topk runs along contiguous memory.
    squared = (x[..., None] - points[:, 0]) ** 2 + (y[..., None] - points[:, 1]) ** 2
    nearest = torch.topk(squared, 2, dim=-1, largest=False)
    first, second = points[nearest.indices[..., 0]], points[nearest.indices[..., 1]]
    # Distance to the cell wall (the bisector of the two nearest points): (d2^2 - d1^2) / (2 |p2 - p1|). Unlike
    # d2 - d1 it grows at the same rate everywhere, so every vein has the same width, also where three cells meet.
    gap = torch.linalg.vector_norm(second - first, dim=-1).clamp_min(1e-9)
    wall = (nearest.values[..., 1] - nearest.values[..., 0]) / (2 * gap)
    vein = torch.exp(-((wall / 0.007) ** 2))
    # Cells are lighter in the middle and darker towards their walls, like leaf tissue between veins.
    brightness = 0.55 + 0.45 * torch.clamp(wall / 0.08, 0, 1)
    hue = label / NUM_TEXTURE_CLASSES + 0.55
    base = _hsv(hue, 0.6, 0.85) * brightness
    vein_colour = _hsv(hue + 0.08, 0.25, 0.98) if label % 2 == 0 else _hsv(hue, 0.8, 0.25)
    return base + (vein_colour - base) * vein
