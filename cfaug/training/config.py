"""The configuration of an MNIST CGN training run, and the presets for the three MNIST variants.

A run is fully described by one ``TrainConfig``. ``PRESETS`` holds our recipe for each variant and
``AUTHORS_PRESETS`` the CGN authors' original recipe (``mnists/experiments/cgn_*/cfg.yaml`` and
``train_cgn.py``, notes sections 2.3-2.5) for comparison. Every field of our presets says whether it is the
authors' value or ours, and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cfaug._utils import verify_str_arg
from cfaug.engine.config import Config, choice, integer, json_ready, number, setting, text  # noqa: F401 (json_ready: old path)
from cfaug.names import VARIANTS

__all__ = [
    "AUTHORS_PRESETS",
    "COLLAPSE_ACTIONS",
    "PRESETS",
    "RESUMABLE_FIELDS",
    "VARIANTS",
    "TrainConfig",
    "get_preset",
]

#: What to do when the mask collapse detector fires.
COLLAPSE_ACTIONS: tuple[str, ...] = ("raise", "warn", "log")
_FEATURE_NETS = ("auto", "imagenet", "random")
# The field checks TrainConfig uses most.
_COUNT = integer(low=0)
_POSITIVE = number(positive=True)
_WEIGHT = number()
_FRACTION = number(upper=1.0)


# Field checks of the tuple fields, shared by the MNIST and ImageNet CGN configs.
def check_betas(value: Any, name: str) -> tuple[float, float]:
    """Adam's two betas, each in [0, 1)."""
    betas = tuple(value)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"`{name}` should be two numbers in [0, 1), but got {value!r}.")
    return (float(betas[0]), float(betas[1]))


def check_layer_weights(value: Any, name: str) -> tuple[float, ...]:
    """One non-negative weight per VGG16 style layer (relu1_2, relu2_2, relu3_3, relu4_3)."""
    weights = tuple(value)
    if len(weights) != 4 or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights
    ):
        raise ValueError(
            f"`{name}` should be 4 non-negative numbers (relu1_2, relu2_2, relu3_3, relu4_3), but got {value!r}."
        )
    return tuple(float(w) for w in weights)


def check_interval(value: Any, name: str) -> tuple[float, float] | None:
    """An interval ``(low, high)`` with ``0 <= low <= high <= 1``, or ``None``."""
    if value is None:
        return None
    low_high = tuple(value)
    if (
        len(low_high) != 2
        or not all(isinstance(v, (int, float)) for v in low_high)
        or not (0 <= low_high[0] <= low_high[1] <= 1)
    ):
        raise ValueError(f"`{name}` should be (low, high) with 0 <= low <= high <= 1, but got {value!r}.")
    return (float(low_high[0]), float(low_high[1]))


@dataclass(frozen=True)
class TrainConfig(Config):
    """Everything that defines an MNIST CGN training run (see the field comments).

    Build one from a preset and change fields with ``dataclasses.replace``::

        config = dataclasses.replace(PRESETS["colored_mnist"], data_root="data", steps=2000)

    Fields marked resumable may change when a run is resumed (``RESUMABLE_FIELDS``): they change how long it runs,
    how it is observed or where it runs, not what it computes. (On another device the numbers differ at float
    rounding.)

    Raises:
        TypeError, ValueError: a field has the wrong type or value (checked at construction).
    """

    # ---- data
    variant: str = setting("colored_mnist", check=choice(VARIANTS))  # which MNIST variant to train on
    # folder that holds torchvision's MNIST/ (as torchvision.datasets.MNIST's root)
    data_root: str = setting("data", check=text(what="a str path"), resumable=True)
    # Wildlife MNIST texture folder ({object,background}/{k}_*.jpg); None: built-in
    texture_root: str | None = setting(None, check=text(what="a str path", optional=True), resumable=True)
    data_seed: int = setting(0, check=_COUNT)  # seed of the dataset's per-item draws (colour jitter, texture crops)
    # use only the first N images of the training split (tests, quick trials)
    train_images: int | None = setting(None, check=integer(optional=True))
    # ---- schedule
    seed: int = setting(0, check=_COUNT)  # seed of the initialisation, the data order and every per-step draw
    # iterations; each is one generator update followed by one discriminator update
    steps: int = setting(4000, check=integer(), resumable=True)
    batch_size: int = setting(64, check=integer())  # real and generated images per iteration
    lr: float = setting(2e-4, check=_POSITIVE)  # Adam learning rate of generator and discriminator
    betas: tuple[float, float] = setting((0.5, 0.999), check=check_betas)  # Adam betas of both
    # learning-rate factor for the generator's BatchNorm weights and shifts
    norm_lr_scale: float = setting(1.0, check=_POSITIVE)
    # ---- models
    # generator initialisation: orthogonal | normal | xavier | kaiming | default
    init_type: str = setting("orthogonal", check=choice(("orthogonal", "normal", "xavier", "kaiming", "default")))
    init_gain: float = setting(0.1, check=_POSITIVE)  # its gain (orthogonal) or standard deviation (normal)
    disc: str = setting("linear", check=choice(("linear", "conv")))  # discriminator: "linear" or "conv"
    ndf: int | None = setting(None, check=integer(optional=True))  # discriminator width; None: 512 linear, 32 conv
    # ---- generator losses (added to the LSGAN loss, weight 1)
    lambda_mask: float = setting(0.1, check=_WEIGHT)  # weight of the mask's binary entropy (base 2)
    # w per VGG16 layer relu1_2/2_2/3_3/4_3; the loss uses w^2*5000
    style_weights: tuple[float, ...] = setting((0.05, 0.1, 0.01, 0.0), check=check_layer_weights)
    # images per iteration in the style loss (the first ones); None: whole batch
    style_batch: int | None = setting(None, check=integer(optional=True))
    # style loss network: auto | imagenet | random | path (see training.features)
    feature_net: str = setting("auto", check=text(what=f"one of {list(_FEATURE_NETS)} or a path (str)"))
    # interval for the per-image mask area; None: no interval loss
    mask_area: tuple[float, float] | None = setting(None, check=check_interval)
    lambda_area: float = setting(0.0, check=_WEIGHT)  # weight of the mask area interval loss
    border_width: int = setting(3, check=integer())  # width in pixels of the border band (border loss, detector)
    lambda_border: float = setting(0.0, check=_WEIGHT)  # weight of the mask border penalty
    # largest spread (mass-weighted mean r^2 from the centre) without penalty
    mask_max_spread: float = setting(0.4, check=_POSITIVE)
    lambda_spread: float = setting(0.0, check=_WEIGHT)  # weight of the mask spread penalty (losses.mask_spread_loss)
    # iterations to train the shape teacher (training.shape_teacher); 0: no teacher
    shape_teacher_steps: int = setting(0, check=_COUNT)
    # weight of the teacher's cross-entropy on the generated masks (needs a teacher)
    lambda_shape: float = setting(0.0, check=_WEIGHT)
    # ---- exported generator
    # half-life of the generator EMA in thousands of images; 0: no EMA, export G itself
    ema_kimg: float = setting(0.0, check=_WEIGHT)
    # the half-life is at most this fraction of the images seen so far; None: off
    ema_rampup: float | None = setting(0.05, check=number(positive=True, optional=True))
    # ---- monitoring and output
    log_every: int = setting(100, check=integer(), resumable=True)  # iterations between stats lines, collapse checks
    sample_every: int = setting(500, check=integer(), resumable=True)  # iterations between sample grids
    # iterations between checkpoints/latest.safetensors writes
    checkpoint_every: int = setting(500, check=integer(), resumable=True)
    probe_per_class: int = setting(8, check=integer())  # fixed-noise probe samples per class for mask statistics
    # raise | warn | log when the mask collapse detector fires
    collapse_action: str = setting("raise", check=choice(COLLAPSE_ACTIONS), resumable=True)
    # iterations before the detector is armed (early masks are noise by design)
    collapse_after: int = setting(1000, check=_COUNT)
    # a class whose mean mask area is below this has collapsed (empty mask)
    collapse_min_area: float = setting(0.02, check=_FRACTION)
    collapse_max_area: float = setting(0.9, check=_FRACTION)  # ... or above this (full mask)
    # ... or whose mean mask value in the border band is above this (frame mask)
    collapse_max_border: float = setting(0.2, check=_FRACTION)
    # ... or whose mask mass lies this far out on average (inverted or frame mask)
    collapse_max_spread: float = setting(0.45, check=_POSITIVE)
    # ... or whose masks barely vary with the noise (per-pixel std below this)
    collapse_min_diversity: float = setting(0.01, check=_WEIGHT)
    # ... or whose mean mask is this similar to another class's (merged)
    collapse_max_similarity: float = setting(0.97, check=_FRACTION)
    # ... or whose masks the shape teacher reads as the class less often
    collapse_min_shape_accuracy: float = setting(0.0, check=_FRACTION)
    # ---- execution (may change when a run is resumed)
    # torch device of the run, e.g. "cuda"
    device: str = setting("cpu", check=text(what="a str such as 'cpu' or 'cuda'"), resumable=True)
    # torch.set_num_threads for the run; None: leave as is
    num_threads: int | None = setting(None, check=integer(optional=True), resumable=True)
    progress: bool = setting(True, resumable=True)  # show a tqdm progress bar
    # ---- bookkeeping
    # why each value was chosen (not used)
    notes: dict[str, str] = setting(factory=dict, compare=False, resumable=True)

    def collapse_thresholds(self) -> dict[str, float]:
        """The ``collapse_*`` thresholds as the keyword arguments of ``cfaug.training.monitor.detect_collapse``."""
        names = ("min_area", "max_area", "max_border", "max_spread", "min_diversity", "max_similarity")
        return {name: getattr(self, f"collapse_{name}") for name in (*names, "min_shape_accuracy")}

    def validate(self) -> None:
        """The checks of the fields that depend on each other."""
        if self.lambda_shape > 0 and self.shape_teacher_steps == 0:
            raise ValueError("`lambda_shape` is positive but `shape_teacher_steps` is 0; the loss needs a teacher.")
        if self.collapse_min_shape_accuracy > 0 and self.shape_teacher_steps == 0:
            raise ValueError(
                "`collapse_min_shape_accuracy` is positive but `shape_teacher_steps` is 0; the check needs a teacher."
            )
        if self.lambda_area > 0 and self.mask_area is None:
            raise ValueError("`lambda_area` is positive but `mask_area` is None; give the interval (low, high).")
        if not self.collapse_min_area < self.collapse_max_area:
            raise ValueError(
                f"`collapse_min_area` ({self.collapse_min_area}) should be below `collapse_max_area` "
                f"({self.collapse_max_area})."
            )
        if self.style_batch is not None and self.style_batch > self.batch_size:
            raise ValueError(
                f"`style_batch` should be at most `batch_size` ({self.batch_size}), but got {self.style_batch}."
            )
        if 2 * self.border_width > 32:
            raise ValueError(f"`border_width` should be at most 16 for 32x32 images, but got {self.border_width}.")


#: Fields that may differ between an interrupted run and its resumption (declared ``resumable`` in ``TrainConfig``).
RESUMABLE_FIELDS: frozenset[str] = TrainConfig.resumable_fields()


# ------------------------------------------------------------------------------------------- presets
# The authors' per-variant values (mnists/experiments/cgn_*/cfg.yaml): binary-entropy weight, perceptual weights,
# discriminator and generator initialisation.
_AUTHORS_VARIANT = {
    "colored_mnist": dict(
        lambda_mask=0.1, style_weights=(0.05, 0.1, 0.01, 0.0), disc="linear", init_type="orthogonal", init_gain=0.1
    ),
    "double_colored_mnist": dict(
        lambda_mask=0.3, style_weights=(0.0, 0.05, 0.0, 0.05), disc="linear", init_type="orthogonal", init_gain=0.2
    ),
    "wildlife_mnist": dict(
        lambda_mask=0.3, style_weights=(0.01, 0.05, 0.0, 0.01), disc="conv", init_type="normal", init_gain=0.03
    ),
}

#: The authors' original recipe per variant: batch 16, 15 epochs of 50,000 images (46,875 iterations), Adam
#: 2e-4 (0.5, 0.999), LSGAN + binary entropy + Gram style loss, no mask regulariser, no EMA. ImageNet VGG16
#: when cached (``feature_net="auto"``). The collapse detector only warns, as these runs are for comparison.
AUTHORS_PRESETS: dict[str, TrainConfig] = {
    variant: TrainConfig(
        variant=variant,
        batch_size=16,
        steps=46_875,
        lr=2e-4,
        betas=(0.5, 0.999),
        **values,
        feature_net="auto",
        mask_area=None,
        lambda_area=0.0,
        lambda_border=0.0,
        lambda_spread=0.0,
        shape_teacher_steps=600,  # ours, for monitoring only: lambda_shape stays 0
        ema_kimg=0.0,
        collapse_action="warn",
        log_every=250,
        sample_every=2000,
        checkpoint_every=1000,
        notes={"recipe": "authors (mnists/experiments/cgn_*/cfg.yaml, train_cgn.py), unchanged"},
    )
    for variant, values in _AUTHORS_VARIANT.items()
}

# What we change, and why (the same for the three variants unless a preset says otherwise):
_OURS_NOTES = {
    "batch_size": "ours: 64 instead of 16; the most images per second on a 2-core CPU (per-call overheads dominate "
    "at 16)",
    "steps": "ours: sized to about 70 minutes on an otherwise idle 2-core CPU with 2 threads (measured with "
    "python -m cfaug.training.benchmark); the authors' 46,875 iterations at batch 16 take 6-14 hours there",
    "style_batch": "ours: the style loss sees 16 of the 64 images; on all 64 the VGG passes would take ~2/3 of the "
    "iteration, and the loss is a batch mean, so a subset keeps its expectation at a quarter of the cost",
    "feature_net": "ours: ImageNet VGG16 when cached, else a fixed-seed random VGG16 (training.features)",
    "mask_area": "ours: the ImageNet CGN's per-image mask-size interval loss, with an interval that holds 99.8% "
    "of the real binarised digits (area 0.06..0.35; mean 0.18); stops empty and full masks",
    "lambda_border": "ours: the reproduction study's border penalty (3-pixel band; real digits put 0.5% of the band "
    "on), against the inverted-mask collapse (dark disc in a white frame)",
    "lambda_spread": "ours: penalise masks whose mass lies far from the centre (spread > 0.4; real digits: median "
    "0.26, 99th percentile 0.39). In short runs of both the authors' recipe and ours without it, 3-4 of 10 classes "
    "inverted within the first 300 iterations (mask over the background, digit drawn by the background mechanism "
    "through a hole) and never recovered; the spread penalty acts from the first iteration (initial masks: 0.67)",
    "norm_lr_scale": "ours: the generator's BatchNorm weights and shifts learn at 10x lr (provisional). The last "
    "BatchNorm of a texture net sets its mean colour; at lr 2e-4 Adam needs ~10k steps to shift it to black, and "
    "meanwhile its unit variance over the batch makes some classes' backgrounds white (measured: shifts -0.03..-0.1 "
    "after 500 steps; 3 of 10 classes with white backgrounds). At 10x the backgrounds turn black within 300 steps; "
    "2 classes still white at step 400",
    "ema_kimg": "ours: stylegan-style EMA of the generator (half-life 10k images); the EMA is what is exported",
    "collapse_action": "ours: a collapsed run fails loudly instead of shipping",
    "lambda_shape": "ours: the shape teacher's cross-entropy on the generated masks (training.shape_teacher). In the "
    "biased variants the colour names the class, so the label-conditioned discriminator accepts a wrong digit in the "
    "right colour; at 3,000 iterations without it 2-4 of 10 classes drew another digit",
    "shape_teacher_steps": "ours: 600 Adam steps on the split's ground-truth masks, ~97% held-out accuracy in ~30 s "
    "on one CPU thread",
    "collapse_min_shape_accuracy": "ours: a class whose masks the teacher reads as the class less than half the time "
    "draws the wrong digit; the run fails instead of shipping it",
}


def _ours(variant: str, **changes: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        variant=variant,
        batch_size=64,
        steps=4000,
        lr=2e-4,  # authors
        betas=(0.5, 0.999),  # authors
        **_AUTHORS_VARIANT[variant],  # authors: mask weight, style weights, discriminator, init
        style_batch=16,
        feature_net="auto",
        mask_area=(0.06, 0.35),
        lambda_area=1.0,
        border_width=3,
        lambda_border=1.0,
        mask_max_spread=0.4,
        lambda_spread=10.0,
        norm_lr_scale=10.0,
        shape_teacher_steps=600,
        lambda_shape=1.0,
        collapse_min_shape_accuracy=0.5,
        ema_kimg=10.0,
        ema_rampup=0.05,
        collapse_action="raise",
        log_every=100,
        sample_every=500,
        checkpoint_every=250,
        notes=dict(_OURS_NOTES),
    )
    values.update(changes)
    return TrainConfig(**values)


#: Our recipe per variant (see the notes of each preset for what differs from the authors and why).
PRESETS: dict[str, TrainConfig] = {
    # Iterations from the measured cost per iteration with 2 threads on an idle 2-core CPU: 0.41 s colored (155
    # img/s in a training run), ~0.43 s double-colored and ~0.76 s wildlife (scaled from 1-thread measurements:
    # 0.78, 0.82, 1.44 s); about 70 minutes each. With one thread, or with another job on the CPU, double it.
    "colored_mnist": _ours("colored_mnist", steps=10_000),
    "double_colored_mnist": _ours("double_colored_mnist", steps=10_000),
    "wildlife_mnist": _ours("wildlife_mnist", steps=6_000),
}


def get_preset(variant: str, recipe: str = "ours", **changes: Any) -> TrainConfig:
    """The preset of ``variant`` for ``recipe`` (``"ours"`` or ``"authors"``), with ``changes`` applied.

    Examples:
        >>> get_preset("wildlife_mnist", "authors").disc
        'conv'
        >>> get_preset("colored_mnist", steps=10).steps
        10
    """
    verify_str_arg(variant, "variant", VARIANTS)
    recipe = verify_str_arg(recipe, "recipe", ("ours", "authors"))
    base = (PRESETS if recipe == "ours" else AUTHORS_PRESETS)[variant]
    return dataclasses.replace(base, **changes)
