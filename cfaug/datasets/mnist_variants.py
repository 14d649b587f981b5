"""The biased MNIST variants of the CGN paper: Colored, Double-colored and Wildlife MNIST.

Each image is an MNIST digit, binarised into a mask ``d``, painted with an object appearance over a background
appearance: ``image = d * object + (1 - d) * background`` (``cfaug.functional.composite``). In the training
split the appearance is tied to the digit (the bias a classifier picks up); in the test split the object and
background classes are drawn independently and uniformly, so a classifier that reads colour or texture instead
of shape fails there.

What is the same for all three:

* **Digits and splits.** The digits come from torchvision's MNIST *training* set: its first 50,000 images are
  the ``train`` split and images 50,000..59,999 the test split (``train=False``), the authors' protocol for
  Double-colored and Wildlife MNIST. Colored MNIST uses the same split (the authors loaded a pre-built file with
  50k/10k images from another project; sharing the split makes the three variants comparable). MNIST's official
  test set is not used, so it stays free for clean-MNIST evaluation. A smaller MNIST folder (a subset in the
  same format) is split in the same 5:1 ratio.
* **Mask.** The 28 x 28 digit is resized to 32 x 32 (nearest) and binarised at 0.1 of the full intensity, as
  the authors do. The masks of a split are computed once, at construction (1 KiB per image, uint8).
* **Output.** An image is a float32 tensor ``(3, 32, 32)`` in [0, 1]. It is **not** normalised: the authors
  feed ``Normalize(0.5, 0.5)`` images in [-1, 1]; add ``torchvision.transforms.v2.Normalize([0.5] * 3, [0.5] * 3)``
  as ``transform`` to match them.
* **Determinism.** Everything random about an item (its colour or texture classes in the test split, colour
  jitter, texture crops) is drawn at construction from generators seeded with ``seed`` and the split, into
  per-item tables. Item ``i`` is therefore the same in every epoch, in any access order, in any DataLoader
  worker and in every process, and a different ``seed`` gives a different draw. (The authors redraw these on
  every access and never seed; here re-drawing per epoch is left to the user's own augmentations.) The class
  draws depend only on ``seed`` and the split, so with one seed the three test splits pair up: item ``i`` has the
  same object and background classes in each.
* **Targets.** ``target="digit"`` gives the digit class as an ``int``; ``target="all"`` gives the tuple
  ``(digit, object class, background class)`` of ints: the class of the mechanism behind each part of the
  image, in the order of ``cfaug.MECHANISMS`` (shape, texture, background). Colored MNIST has no background
  factor (always black): its background class is ``-1``.
* **Fast path.** ``batch`` builds a whole batch of images and targets in one vectorised call (no per-item
  Python work), and ``components`` returns the ground-truth mask, foreground and background as well, as
  ``cfaug.Components``. ``dataset[i]`` is ``batch([i])`` plus the transforms, so both agree exactly.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torchvision.datasets import MNIST, VisionDataset

from cfaug._utils import check_positive_int, verify_str_arg
from cfaug.backends.base import Components
from cfaug.datasets.textures import NUM_TEXTURE_CLASSES, load_texture_folder, procedural_textures
from cfaug.functional import composite
from cfaug.names import VARIANTS
from cfaug.seeding import mix_seed

__all__ = [
    "COLORED_MNIST_JITTER_STD",
    "COLORED_MNIST_PALETTE",
    "DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE",
    "DOUBLE_COLORED_MNIST_JITTER_STD",
    "DOUBLE_COLORED_MNIST_OBJECT_PALETTE",
    "VARIANTS",
    "ColoredMNIST",
    "DoubleColoredMNIST",
    "MNISTNotFoundError",
    "WildlifeMNIST",
    "binarize_digits",
]

Color = tuple[str, tuple[int, int, int]]

#: Colored MNIST's class colours, ``(CSS colour name, (R, G, B))``. The original file (from Learning Not to Learn)
#: is not available and its palette is not documented, so these are our own: a greedy farthest-point selection
#: among the saturated CSS colours (HSV saturation and value >= 0.5), starting from the black background. In
#: RGB on [0, 1] every pair is >= 0.655 apart and every colour >= 0.70 from black, i.e. at least 4.6 jitter
#: standard deviations.
COLORED_MNIST_PALETTE: tuple[Color, ...] = (
    ("red", (255, 0, 0)),
    ("lime", (0, 255, 0)),
    ("blue", (0, 0, 255)),
    ("yellow", (255, 255, 0)),
    ("aqua", (0, 255, 255)),
    ("fuchsia", (255, 0, 255)),
    ("salmon", (250, 128, 114)),
    ("olive", (128, 128, 0)),
    ("purple", (128, 0, 128)),
    ("teal", (0, 128, 128)),
)
#: Standard deviation of Colored MNIST's per-image colour jitter: the original's variance 0.02.
COLORED_MNIST_JITTER_STD = math.sqrt(0.02)

#: Double-colored MNIST's background colour of each class, as in the authors' code (named colours picked there
#: with mokole.com/palette; RGB as PIL's ``ImageColor`` resolves them).
DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE: tuple[Color, ...] = (
    ("darkgreen", (0, 100, 0)),
    ("darkblue", (0, 0, 139)),
    ("#b03060", (176, 48, 96)),
    ("orangered", (255, 69, 0)),
    ("yellow", (255, 255, 0)),
    ("burlywood", (222, 184, 135)),
    ("lime", (0, 255, 0)),
    ("aqua", (0, 255, 255)),
    ("fuchsia", (255, 0, 255)),
    ("#6495ed", (100, 149, 237)),
)
#: Double-colored MNIST's object colour of each class: the background colour of class ``(i + 4) % 10``, so no class
#: has the same colour for digit and background.
DOUBLE_COLORED_MNIST_OBJECT_PALETTE: tuple[Color, ...] = tuple(
    DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE[(i + 4) % 10] for i in range(10)
)
#: Standard deviation of Double-colored MNIST's per-image, per-channel colour jitter (as the authors).
DOUBLE_COLORED_MNIST_JITTER_STD = 0.01

_IMAGE_SIZE = 32
_MNIST_SIZE = 28
# Binarisation as the authors: digit / 255 > 0.1. For uint8 pixels that is pixel > 25.5, i.e. pixel > 25.
_MASK_THRESHOLD = 25
# The authors' 50,000 / 10,000 split of MNIST's 60,000 training images, as a ratio so that subsets split alike.
_TRAIN_NUMERATOR, _TRAIN_DENOMINATOR = 5, 6

# Stream numbers of the per-item tables: each table has its own generator, so adding or changing one table
# leaves the draws of the others untouched.
_SPLIT_STREAMS = {True: 1, False: 2}
_OBJECT_CLASS, _BACKGROUND_CLASS, _OBJECT_JITTER, _BACKGROUND_JITTER, _OBJECT_CROP, _BACKGROUND_CROP = range(1, 7)


def _palette_tensor(palette: Sequence[Color]) -> torch.Tensor:
    return torch.tensor([rgb for _, rgb in palette], dtype=torch.float32) / 255


def binarize_digits(digits: torch.Tensor) -> torch.Tensor:
    """Turn 28 x 28 MNIST digits into the variants' 32 x 32 binary masks.

    Nearest-neighbour resizing commutes with a threshold, so the digits are thresholded first (in uint8, exactly
    the authors' ``digit / 255 > 0.1``) and the resize is a gather with the index map of
    ``F.interpolate(mode="nearest")``: source pixel ``floor(i * 28 / 32)``.

    Args:
        digits: ``(N, 28, 28)`` uint8 MNIST images.

    Returns:
        ``(N, 32, 32)`` uint8 masks, 1 on the digit.

    Raises:
        TypeError: ``digits`` is not a uint8 tensor.
        ValueError: ``digits`` is not ``(N, 28, 28)``.
    """
    if not isinstance(digits, torch.Tensor) or digits.dtype != torch.uint8:
        got = digits.dtype if isinstance(digits, torch.Tensor) else type(digits).__name__
        raise TypeError(f"`digits` should be a uint8 tensor, but got {got}.")
    if digits.dim() != 3 or tuple(digits.shape[1:]) != (_MNIST_SIZE, _MNIST_SIZE):
        raise ValueError(f"`digits` should be (N, 28, 28), but got {tuple(digits.shape)}.")
    source = torch.arange(_IMAGE_SIZE) * _MNIST_SIZE // _IMAGE_SIZE
    return (digits > _MASK_THRESHOLD)[:, source][:, :, source].to(torch.uint8).contiguous()


class MNISTNotFoundError(FileNotFoundError, RuntimeError):
    """MNIST is not where a dataset looked for it.

    A ``FileNotFoundError``, so that ``cfaug`` reports it in one line, and still the ``RuntimeError`` torchvision's
    ``MNIST`` raises, for callers that catch that.
    """


class _BiasedMNIST(VisionDataset):
    """The shared part of the three variants: digits, split, masks, factor classes, indexing and targets.

    Subclasses say how an item's object and background look (``_draw_appearance``, ``_foreground``,
    ``_background``).
    """

    #: Whether the background carries a class (Colored MNIST's black background does not).
    _has_background_factor: ClassVar[bool] = True
    classes: ClassVar[list[str]] = list(MNIST.classes)

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Callable[..., Any] | None = None,
        target_transform: Callable[..., Any] | None = None,
        transforms: Callable[..., Any] | None = None,
        download: bool = False,
        *,
        seed: int = 0,
        target: str = "digit",
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(
                f"`root` should be a path (the folder holding MNIST/), but got {type(root).__name__} {root!r}."
            )
        super().__init__(root, transforms=transforms, transform=transform, target_transform=target_transform)
        if not isinstance(train, bool):
            raise TypeError(f"`train` should be a bool, but got {type(train).__name__} {train!r}.")
        if not isinstance(download, bool):
            raise TypeError(f"`download` should be a bool, but got {type(download).__name__} {download!r}.")
        self.train = train
        self.seed = check_positive_int(seed, "seed", allow_zero=True)
        self.target = verify_str_arg(target, "target", ("digit", "all"))

        digits, self.targets = self._load_digits(download)
        #: ``(N, 32, 32)`` uint8 binary digit masks.
        self.masks = binarize_digits(digits)
        num_items = len(self.targets)
        if train:
            object_classes = background_classes = self.targets
        else:
            object_classes = self._randint(_OBJECT_CLASS, NUM_TEXTURE_CLASSES, (num_items,))
            background_classes = self._randint(_BACKGROUND_CLASS, NUM_TEXTURE_CLASSES, (num_items,))
        if not self._has_background_factor:
            background_classes = torch.full((num_items,), -1, dtype=torch.int64)
        #: ``(N, 3)`` int64: per item its digit, object class and background class (``-1``: no background class).
        self.factors = torch.stack([self.targets, object_classes, background_classes], dim=1)
        self._draw_appearance(num_items)

    def _load_digits(self, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            source = MNIST(self.root, train=True, download=download)
        except RuntimeError as error:
            raise MNISTNotFoundError(
                f"{type(self).__name__} could not load the MNIST training set from {os.path.join(self.root, 'MNIST')}: "
                f"{error}"
            ) from error
        num_train = len(source) * _TRAIN_NUMERATOR // _TRAIN_DENOMINATOR
        split = slice(0, num_train) if self.train else slice(num_train, None)
        # Copies, so that the 47 MB of MNIST behind the views can be freed.
        return source.data[split].clone(), source.targets[split].to(torch.int64).clone()

    def _generator(self, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(mix_seed(self.seed, _SPLIT_STREAMS[self.train]), stream))

    def _randint(self, stream: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=self._generator(stream), dtype=torch.int64)

    def _randn(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self._generator(stream))

    def _draw_appearance(self, num_items: int) -> None:
        raise NotImplementedError

    def _foreground(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _background(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def _indices(self, indices: Any) -> torch.Tensor:
        if isinstance(indices, range):
            indices = torch.arange(indices.start, indices.stop, indices.step)
        elif isinstance(indices, Sequence) and not isinstance(indices, (str, bytes)):
            indices = torch.as_tensor(indices, dtype=torch.int64) if len(indices) else torch.empty(0, dtype=torch.int64)
        if not isinstance(indices, torch.Tensor):
            raise TypeError(
                f"`indices` should be a 1-D integer tensor, a sequence of ints or a range, but got "
                f"{type(indices).__name__}."
            )
        if indices.dim() != 1 or indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(
                f"`indices` should be a 1-D integer tensor, but got dtype {indices.dtype} and shape "
                f"{tuple(indices.shape)}."
            )
        indices = indices.to(device="cpu", dtype=torch.int64)
        size = len(self)
        if len(indices) and (int(indices.min()) < -size or int(indices.max()) >= size):
            raise IndexError(
                f"`indices` should be in [{-size}, {size - 1}] for a dataset of {size} items, but got values in "
                f"[{int(indices.min())}, {int(indices.max())}]."
            )
        return indices.remainder(size) if size else indices

    def components(self, indices: torch.Tensor | Sequence[int] | range) -> Components:
        """The ground-truth parts of some items: digit mask, object appearance, background appearance, image.

        Args:
            indices: item indices (negative ones count from the end).

        Returns:
            ``cfaug.Components`` with ``mask`` ``(B, 1, 32, 32)`` in {0, 1}, ``foreground`` and ``background``
            ``(B, 3, 32, 32)`` and their composite ``image`` ``(B, 3, 32, 32)``, all float32 in [0, 1]. No
            transforms are applied.

        Raises:
            TypeError: ``indices`` is not a 1-D integer tensor, a sequence of ints or a range.
            IndexError: an index is out of range.
        """
        mask, foreground, background = self._parts(self._indices(indices))
        # The parts are broadcast views of per-item colours; hand out real tensors that can be edited in place.
        return Components.compose(mask, foreground.contiguous(), background.contiguous())

    def _parts(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.masks[indices].unsqueeze(1).to(torch.float32)
        return mask, self._foreground(indices), self._background(indices)

    def batch(self, indices: torch.Tensor | Sequence[int] | range) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of images and targets in one vectorised call, for training loops that skip the DataLoader.

        ``transform``, ``target_transform`` and ``transforms`` are **not** applied (they are written for one
        sample; apply batched augmentations to the result instead).

        Args:
            indices: item indices (negative ones count from the end).

        Returns:
            ``images`` ``(B, 3, 32, 32)`` float32 in [0, 1], and ``targets``: ``(B,)`` digit classes for
            ``target="digit"``, ``(B, 3)`` rows ``(digit, object class, background class)`` for ``target="all"``,
            int64.

        Raises:
            TypeError: ``indices`` is not a 1-D integer tensor, a sequence of ints or a range.
            IndexError: an index is out of range.

        Examples:
            >>> dataset = DoubleColoredMNIST("data", download=True)  # doctest: +SKIP
            >>> for order in torch.randperm(len(dataset)).split(256):  # doctest: +SKIP
            ...     images, digits = dataset.batch(order)
        """
        indices = self._indices(indices)
        images = composite(*self._parts(indices))
        targets = self.factors[indices] if self.target == "all" else self.targets[indices]
        return images, targets

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """Item ``index`` as ``(image, target)``, after the transforms.

        Returns:
            ``image``: float32 ``(3, 32, 32)`` in [0, 1] (before ``transform``); ``target``: the digit class, or
            ``(digit, object class, background class)`` for ``target="all"`` (before ``target_transform``).

        Raises:
            TypeError: ``index`` is not an integer.
            IndexError: ``index`` is out of range.
        """
        try:
            position = operator.index(index)  # Python, NumPy and 0-d torch integers; not floats
        except TypeError:
            raise TypeError(f"`index` should be an integer, but got {type(index).__name__} {index!r}.") from None
        if not -len(self) <= position < len(self):
            raise IndexError(f"`index` should be in [{-len(self)}, {len(self) - 1}], but got {position}.")
        images, targets = self.batch([position])
        image = images[0]
        target: Any = tuple(targets[0].tolist()) if self.target == "all" else int(targets[0])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def extra_repr(self) -> str:
        """The split, seed and target, for ``repr``."""
        split = "Train" if self.train else "Test"
        return f"Split: {split}\nSeed: {self.seed}\nTarget: {self.target}"


class ColoredMNIST(_BiasedMNIST):
    """Colored MNIST: a coloured digit on black, the colour tied to the digit class in the training split.

    Rebuilt from MNIST with the protocol of the pre-built file the paper used (from Learning Not to Learn,
    Kim et al., CVPR 2019), which is not available: the digit gets one colour per image, its class's mean colour
    from ``COLORED_MNIST_PALETTE`` plus Gaussian jitter of variance 0.02 per channel, clamped to [0, 1]; the
    background stays black. Training split: colour class = digit class. Test split: colour class uniform and
    independent of the digit. The digit is the binarised mask (every digit pixel has the item's colour).

    See the module documentation for the split, the masks, the output, determinism and ``target``; with
    ``target="all"`` the background class is ``-1`` (the background is always black).

    Args:
        root: the folder holding torchvision's ``MNIST/`` (the same ``root`` as ``torchvision.datasets.MNIST``).
        train: the training split (first 50,000 MNIST training images) or, if False, the test split (the rest).
        transform: applied to the image tensor.
        target_transform: applied to the target.
        transforms: applied to ``(image, target)``; excludes ``transform`` and ``target_transform``.
        download: download MNIST into ``root`` if it is not there (torchvision's download).
        seed: seed of every random choice of the split.
        target: ``"digit"`` or ``"all"``.

    Raises:
        MNISTNotFoundError: MNIST is not in ``root`` ("Dataset not found. You can use download=True to download it")
            or could not be downloaded.
        TypeError, ValueError: an argument has the wrong type or value.

    Examples:
        >>> from torchvision.transforms import v2
        >>> dataset = ColoredMNIST("data", train=False, download=True, seed=1,  # doctest: +SKIP
        ...                        transform=v2.Normalize([0.5] * 3, [0.5] * 3))
        >>> image, digit = dataset[0]  # doctest: +SKIP
    """

    _has_background_factor = False

    def _draw_appearance(self, num_items: int) -> None:
        jitter = COLORED_MNIST_JITTER_STD * self._randn(_OBJECT_JITTER, (num_items, 3))
        self._object_colors = (_palette_tensor(COLORED_MNIST_PALETTE)[self.factors[:, 1]] + jitter).clamp_(0, 1)

    def _foreground(self, indices: torch.Tensor) -> torch.Tensor:
        return self._object_colors[indices, :, None, None].expand(-1, -1, _IMAGE_SIZE, _IMAGE_SIZE)

    def _background(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.zeros(()).expand(len(indices), 3, _IMAGE_SIZE, _IMAGE_SIZE)


class DoubleColoredMNIST(_BiasedMNIST):
    """Double-colored MNIST: a coloured digit on a coloured background, both tied to the digit in training.

    As the authors' variant: the object colour of class ``i`` is ``DOUBLE_COLORED_MNIST_OBJECT_PALETTE``
    ``[i]`` (the background colour of class ``(i + 4) % 10``) and the background colour is
    ``DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE`` ``[i]``; each gets independent per-image, per-channel Gaussian
    jitter with standard deviation 0.01. Unlike the authors, the jittered colours are clamped to [0, 1] (their
    code leaves values up to a few hundredths outside), so that every image is a valid [0, 1] image. Training
    split: both classes = digit class. Test split: object and background classes uniform and independent of each
    other and of the digit. Hence, as in the authors' test set, about one test image in ten pairs object class
    ``(j + 6) % 10`` with background class ``j``: the same colour inside and outside the digit. Only the
    independent 0.01 jitter of object and background tells such a digit apart, so a classifier that cannot read
    that faint edge guesses these images and tops out near 91% on the test split.

    See the module documentation for the split, the masks, the output, determinism and ``target``.

    Args:
        root: the folder holding torchvision's ``MNIST/`` (the same ``root`` as ``torchvision.datasets.MNIST``).
        train: the training split (first 50,000 MNIST training images) or, if False, the test split (the rest).
        transform: applied to the image tensor.
        target_transform: applied to the target.
        transforms: applied to ``(image, target)``; excludes ``transform`` and ``target_transform``.
        download: download MNIST into ``root`` if it is not there (torchvision's download).
        seed: seed of every random choice of the split.
        target: ``"digit"`` or ``"all"``.

    Raises:
        MNISTNotFoundError: MNIST is not in ``root`` or could not be downloaded.
        TypeError, ValueError: an argument has the wrong type or value.

    Examples:
        >>> dataset = DoubleColoredMNIST("data", train=False, download=True, target="all")  # doctest: +SKIP
        >>> image, (digit, object_class, background_class) = dataset[0]  # doctest: +SKIP
    """

    def _draw_appearance(self, num_items: int) -> None:
        std = DOUBLE_COLORED_MNIST_JITTER_STD
        object_palette = _palette_tensor(DOUBLE_COLORED_MNIST_OBJECT_PALETTE)
        background_palette = _palette_tensor(DOUBLE_COLORED_MNIST_BACKGROUND_PALETTE)
        object_jitter = std * self._randn(_OBJECT_JITTER, (num_items, 3))
        background_jitter = std * self._randn(_BACKGROUND_JITTER, (num_items, 3))
        self._object_colors = (object_palette[self.factors[:, 1]] + object_jitter).clamp_(0, 1)
        self._background_colors = (background_palette[self.factors[:, 2]] + background_jitter).clamp_(0, 1)

    def _foreground(self, indices: torch.Tensor) -> torch.Tensor:
        return self._object_colors[indices, :, None, None].expand(-1, -1, _IMAGE_SIZE, _IMAGE_SIZE)

    def _background(self, indices: torch.Tensor) -> torch.Tensor:
        return self._background_colors[indices, :, None, None].expand(-1, -1, _IMAGE_SIZE, _IMAGE_SIZE)


class WildlifeMNIST(_BiasedMNIST):
    """Wildlife MNIST: a digit cut out of an object texture, over a background texture.

    As the authors' variant: texture ``k`` of each kind belongs to class ``k``; every item shows a 32 x 32 crop
    of its object texture inside the digit and a crop of its background texture outside. A crop is taken as
    the authors do (texture resized to 150 x 150, nearest; reflect-padded by 3; a random 32 x 32 window), but
    its position is drawn once per item from ``seed`` (see the module documentation). Training split: both
    texture classes = digit class. Test split: object and background classes uniform and independent.

    Textures come from ``texture_root``, a folder with ``object/{k}_*.jpg`` and ``background/{k}_*.jpg`` for
    every class ``k`` in 0..9 (the paper's 20 photographs ship with the authors' code under
    ``mnists/data/textures``); see ``cfaug.datasets.textures.find_texture_files``. Without ``texture_root``
    the built-in procedural set is used (``cfaug.datasets.textures.procedural_textures``: wavy two-tone
    stripes as objects, vein networks as backgrounds), which needs no files and no network but is **not** the
    paper's texture set: results on it are not comparable with the paper's numbers.

    Args:
        root: the folder holding torchvision's ``MNIST/`` (the same ``root`` as ``torchvision.datasets.MNIST``).
        train: the training split (first 50,000 MNIST training images) or, if False, the test split (the rest).
        transform: applied to the image tensor.
        target_transform: applied to the target.
        transforms: applied to ``(image, target)``; excludes ``transform`` and ``target_transform``.
        download: download MNIST into ``root`` if it is not there (torchvision's download; textures are never
            downloaded).
        texture_root: the texture folder, or None for the built-in procedural textures.
        seed: seed of every random choice of the split.
        target: ``"digit"`` or ``"all"``.

    Raises:
        MNISTNotFoundError: MNIST is not in ``root`` or could not be downloaded.
        FileNotFoundError: ``texture_root`` or the texture of some class is missing (the message names them).
        TypeError, ValueError: an argument has the wrong type or value, or a class has two textures.

    Examples:
        >>> dataset = WildlifeMNIST("data", download=True, texture_root="textures")  # doctest: +SKIP
        >>> images, digits = dataset.batch(range(64))  # doctest: +SKIP
    """

    #: Side of the textures before padding and cropping (the authors' intermediate size).
    texture_size: ClassVar[int] = 150
    #: Reflect padding around a texture before the crop (the authors' ``RandomCrop(padding=3)``).
    texture_padding: ClassVar[int] = 3

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Callable[..., Any] | None = None,
        target_transform: Callable[..., Any] | None = None,
        transforms: Callable[..., Any] | None = None,
        download: bool = False,
        *,
        texture_root: str | os.PathLike[str] | None = None,
        seed: int = 0,
        target: str = "digit",
    ) -> None:
        # Textures first: a bad folder should fail before the seconds spent loading MNIST.
        if texture_root is None:
            textures = {kind: procedural_textures(kind, self.texture_size) for kind in ("object", "background")}
        else:
            textures = load_texture_folder(texture_root, self.texture_size)
        self.texture_root = texture_root
        pad = (self.texture_padding,) * 4
        self._object_textures = torch.nn.functional.pad(textures["object"], pad, mode="reflect")
        self._background_textures = torch.nn.functional.pad(textures["background"], pad, mode="reflect")
        super().__init__(
            root,
            train,
            transform=transform,
            target_transform=target_transform,
            transforms=transforms,
            download=download,
            seed=seed,
            target=target,
        )

    def _draw_appearance(self, num_items: int) -> None:
        # Top-left corners of the crops: every 32 x 32 window of the padded texture is equally likely.
        positions = self._object_textures.shape[-1] - _IMAGE_SIZE + 1
        self._object_crops = self._randint(_OBJECT_CROP, positions, (num_items, 2))
        self._background_crops = self._randint(_BACKGROUND_CROP, positions, (num_items, 2))

    @staticmethod
    def _crop(textures: torch.Tensor, classes: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        # A view of every 32 x 32 window, (class, top, left, channel, 32, 32), costs no copy; indexing it copies
        # just the B windows, in rows of 32 pixels: 3x faster than gathering single pixels with broadcast indices.
        windows = textures.unfold(2, _IMAGE_SIZE, 1).unfold(3, _IMAGE_SIZE, 1).permute(0, 2, 3, 1, 4, 5)
        return windows[classes, corners[:, 0], corners[:, 1]]

    def _foreground(self, indices: torch.Tensor) -> torch.Tensor:
        return self._crop(self._object_textures, self.factors[indices, 1], self._object_crops[indices])

    def _background(self, indices: torch.Tensor) -> torch.Tensor:
        return self._crop(self._background_textures, self.factors[indices, 2], self._background_crops[indices])

    def extra_repr(self) -> str:
        """The split, seed, target and texture source, for ``repr``."""
        textures = "built-in procedural" if self.texture_root is None else str(self.texture_root)
        return f"{super().extra_repr()}\nTextures: {textures}"
