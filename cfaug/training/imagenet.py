"""Config-driven training of the ImageNet CGN: ``train_cgn_imagenet`` and ``cfaug train imagenet``.

One optimiser step follows the authors' ``imagenet/train_cgn.py`` (cgn-reference sections 3.4-3.6): for each of
``accumulation`` passes, draw a class ``y`` and a noise ``u`` per sample (shared by every network), compute the
pseudo ground truth ``x_gt`` with the frozen BigGAN, the pre-mask, mask, foreground and background with the three
mechanisms and the frozen U2-Net, the composite ``x_gen``, the six losses (``imagenet_losses``) and their
gradients; gradients are **summed** over the passes, then one Adam per mechanism steps at its own learning rate.

There is no data: every sample is synthetic. Sample ``i`` of the run (counting over steps, passes and the batch)
draws its class, noise and texture patches from its own seed ``mix(mix(seed, stream), i)``, so a run depends
only on its config: not on the number of processes, and a resumed run repeats what the uninterrupted run does.

**Distributed.** Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from the environment
(``env://``; NCCL on GPUs, Gloo on the CPU) and the backend is wrapped in ``DistributedDataParallel``. The global
``batch_size`` of a pass is split evenly across the ranks, each rank taking its slice of the sample indices, and
DDP's gradient average makes the step the same as on one process (up to float summation order). Only rank 0
writes files.

**Run folder.**

.. code-block:: text

    run_dir/
      config.json                     the config, what it resolved to, and the environment
      stats.jsonl                     one JSON object per log interval: the six losses, mask statistics, img/s
      samples/step-XXXXXX.png         fixed-noise sheets: a row per sample class; mask, pre-mask, foreground,
                                      background, composite, pseudo ground truth, a counterfactual
      checkpoints/latest.safetensors  mechanisms, ground-truth BigGAN, U2-Net, the three Adam states, step
      final.safetensors               the trained CGN as a ``biggan`` backend checkpoint
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cfaug._utils import atomic_write, verify_str_arg
from cfaug.backends.biggan import (
    AUTOCAST_DTYPES,
    U2NET_VARIANTS,
    BigGANBackend,
    build_biggan,
    check_biggan_config,
    load_biggan,
    truncated_noise,
)
from cfaug.distributed import any_rank, barrier, device_for_rank, distributed_session
from cfaug.engine import (
    Config,
    RunFolder,
    check_resumable,
    choice,
    flatten_optimizer,
    integer,
    number,
    prefixed,
    run_environment,
    run_steps,
    setting,
    text,
    training_scope,
    unflatten_optimizer,
    unprefixed,
)
from cfaug.functional import composite
from cfaug.models.feature_network import VGG16_LAYER_INDICES, build_feature_network
from cfaug.seeding import index_seeds, mix_seed, per_sample_randint
from cfaug.training.config import check_betas, check_interval, check_layer_weights
from cfaug.training.imagenet_losses import ImageNetCGNLoss, texture_patch_grid

__all__ = [
    "AUTHORS_SAMPLE_CLASSES",
    "CHECKPOINT_KIND",
    "IMAGENET_PRESETS",
    "IMAGENET_RESUMABLE_FIELDS",
    "ImageNetTrainConfig",
    "ImageNetTrainer",
    "get_imagenet_preset",
    "train_cgn_imagenet",
]

#: ``kind`` in the metadata of a training-state checkpoint (not loadable as a backend; see final.safetensors).
CHECKPOINT_KIND = "cfaug.training.imagenet.state"
#: The classes of the authors' sample sheets.
AUTHORS_SAMPLE_CLASSES: tuple[int, ...] = (15, 251, 330, 382, 385, 483, 559, 751, 938, 947, 999)
#: The mechanisms, in the order of the optimisers and their learning rates.
_MECHANISMS = ("shape", "texture", "background")

# Streams of the run seed and of the per-sample seeds; each kind of randomness has its own. Renumbering one
# changes every run.
_SAMPLE_STREAM = 11  # run seed -> per-sample seeds of the training samples
_SHEET_STREAM = 12  # run seed -> per-sample seeds of the fixed sample-sheet noise
_INIT_STREAM = 13  # run seed -> the global RNG while networks are built
_CLASS_STREAM = 5  # per-sample seed -> the sample's class
_NOISE_STREAM = 0  # per-sample seed -> the sample's noise u (the backend's own noise stream)


# ------------------------------------------------------------------------------------------------ config
def _interval(value: Any, name: str) -> tuple[float, float]:
    if value is None:  # unlike the MNIST mask area, the interval loss is always on
        raise ValueError(f"`{name}` should be (low, high) with 0 <= low <= high <= 1, but got None.")
    return check_interval(value, name)


def _truncation(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"`{name}` should be a number in (0, 1], but got {value!r}.")
    return value


@dataclass(frozen=True)
class ImageNetTrainConfig(Config):
    """Everything that defines an ImageNet CGN training run (see the field comments).

    Start from a preset (``get_imagenet_preset("authors", ...)``) and change fields with ``dataclasses.replace``.
    Fields marked resumable may change when a run is resumed (``IMAGENET_RESUMABLE_FIELDS``): they change how long
    it runs, how it is observed or where it runs, not what it computes. The pretrained networks are read only when a
    run starts (a resumed run takes them from its checkpoint), so their location may change too.

    Raises:
        TypeError, ValueError: a field has the wrong type or value (checked at construction).
    """

    # ---- networks
    # pretrained BigGAN: a folder (config.json + pytorch_model.bin) or a name
    biggan: str = setting("biggan-deep-256", check=text(), resumable=True)
    u2net: str = setting("u2net", check=choice(U2NET_VARIANTS))  # U2-Net variant: u2net (the authors') | u2netp | tiny
    # build_u2net weights: official name, file path, or None (random: tests)
    u2net_weights: str | None = setting("u2net", check=text(optional=True), resumable=True)
    # VGG16 of the style losses: imagenet (error when absent) | random | path | auto
    feature_net: str = setting("imagenet", check=text())
    # ---- schedule
    seed: int = setting(0, check=integer(low=0))  # seed of every per-sample draw (classes, noise, texture patches)
    steps: int = setting(300, check=integer(), resumable=True)  # optimiser steps (the authors' episodes)
    # samples per forward pass, over all processes (divisible by the world size)
    batch_size: int = setting(1, check=integer())
    # forward/backward passes per optimiser step; gradients are summed over them
    accumulation: int = setting(4000, check=integer())
    # truncation of the training noise (also selects BigGAN's BatchNorm statistics)
    truncation: float = setting(1.0, check=_truncation)
    # ---- losses (the authors' imagenet/config.py)
    lambda_l1: float = setting(100.0, check=number())  # weight of mean|x_gen - x_gt|
    # reconstruction style w per relu1_2..relu4_3
    perceptual_weights: tuple[float, ...] = setting((4.0, 4.0, 4.0, 4.0), check=check_layer_weights)
    lambda_binary: float = setting(300.0, check=number())  # weight of the mask's binary entropy
    lambda_mask: float = setting(500.0, check=number())  # weight of the mask-area interval loss
    mask_interval: tuple[float, float] = setting((0.1, 0.9), check=_interval)  # the mask area interval (tau, tau')
    # texture style w per relu1_2..relu4_3
    texture_weights: tuple[float, ...] = setting((0.0, 5.0, 5.0, 0.0), check=check_layer_weights)
    lambda_background: float = setting(2000.0, check=number())  # weight of the background's mean U2-Net saliency
    patch_size: int = setting(15, check=integer())  # texture patch grid: window side at patch_work_size
    patch_pool: int = setting(100, check=integer())  # ... windows with the highest mask mean to draw from
    patch_grid: int = setting(6, check=integer())  # ... grid x grid windows per mosaic
    patch_work_size: int = setting(128, check=integer())  # ... side image and mask are resized to before cutting
    # ---- optimisers (one Adam per mechanism)
    lr_shape: float = setting(8e-6, check=number(positive=True))  # learning rate of f_shape
    lr_texture: float = setting(3e-5, check=number(positive=True))  # learning rate of f_text (the paper: 1e-5)
    lr_background: float = setting(1e-5, check=number(positive=True))  # learning rate of f_bg
    betas: tuple[float, float] = setting((0.9, 0.999), check=check_betas)  # Adam betas of all three
    # ---- monitoring and output
    log_every: int = setting(1, check=integer(), resumable=True)  # optimiser steps between stats.jsonl lines
    sample_every: int = setting(1, check=integer(), resumable=True)  # optimiser steps between sample sheets
    # optimiser steps between checkpoints/latest.safetensors writes
    checkpoint_every: int = setting(1, check=integer(), resumable=True)
    # rows of the sheets; None: first 11 classes
    sample_classes: tuple[int, ...] | None = setting(AUTHORS_SAMPLE_CLASSES, resumable=True)
    # truncation stored in final.safetensors (the authors generate at 0.5)
    export_truncation: float = setting(0.5, check=_truncation, resumable=True)
    # ---- execution (may change when a run is resumed)
    # torch device, e.g. "cuda" (each torchrun rank takes cuda:LOCAL_RANK)
    device: str = setting("cpu", check=text(), resumable=True)
    # "bf16": autocast the forward passes on a GPU (the CPU stays float32); None: float32. fp16 training would need
    # loss scaling against underflowing gradients; bf16 has float32's range.
    amp: str | None = setting(None, check=choice(("bf16",), optional=True), resumable=True)
    # torch.set_num_threads for the run; None: leave as is
    num_threads: int | None = setting(None, check=integer(optional=True), resumable=True)
    progress: bool = setting(True, resumable=True)  # show a tqdm progress bar (rank 0)
    # ---- bookkeeping
    # why values were chosen (not used)
    notes: dict[str, str] = setting(factory=dict, compare=False, resumable=True)

    def validate(self) -> None:
        """The checks of the fields that depend on each other, and of the sample classes."""
        if self.patch_size > self.patch_work_size:
            raise ValueError(
                f"`patch_size` ({self.patch_size}) should be at most `patch_work_size` ({self.patch_work_size})."
            )
        if self.sample_classes is not None:
            classes = tuple(self.sample_classes)
            if not classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
                raise ValueError(
                    f"`sample_classes` should be a non-empty sequence of class indices or None, but got "
                    f"{self.sample_classes!r}."
                )
            object.__setattr__(self, "sample_classes", classes)


#: Fields that may differ between an interrupted run and its resumption (declared ``resumable`` in the config).
IMAGENET_RESUMABLE_FIELDS: frozenset[str] = ImageNetTrainConfig.resumable_fields()


#: ``authors``: the values of the authors' code (imagenet/config.py for losses and learning rates, the CLI defaults
#: of train_cgn.py for the schedule: 300 steps of 4000 summed single-sample passes). ``paper``: the same with the
#: paper's values where they differ (cgn-reference 3.4, 3.6): perceptual weight 5 per layer, texture lr 1e-5.
IMAGENET_PRESETS: dict[str, ImageNetTrainConfig] = {
    "authors": ImageNetTrainConfig(
        notes={"recipe": "authors' code: imagenet/config.py losses and lrs, train_cgn.py CLI schedule"}
    ),
    "paper": ImageNetTrainConfig(
        perceptual_weights=(5.0, 5.0, 5.0, 5.0),
        lr_texture=1e-5,
        notes={
            "recipe": "authors' code with the paper's values where they differ",
            "perceptual_weights": "paper: lambda_2 = 5 (code: 4 per layer)",
            "lr_texture": "paper: 1e-5 (code: 3e-5)",
        },
    ),
}


def get_imagenet_preset(name: str = "authors", **changes: Any) -> ImageNetTrainConfig:
    """A preset from ``IMAGENET_PRESETS`` with ``changes`` applied (validated).

    Examples:
        >>> get_imagenet_preset("paper", steps=10).lr_texture
        1e-05
    """
    verify_str_arg(name, "preset", IMAGENET_PRESETS)
    return dataclasses.replace(IMAGENET_PRESETS[name], **changes)


# ------------------------------------------------------------------------------------------- distributed
def _resolve_device(config: ImageNetTrainConfig) -> torch.device:
    # "cuda" without an index is this process's GPU: LOCAL_RANK under torchrun, else GPU 0. set_device needs the
    # index (torch refuses a bare "cuda"; seen on a GPU run, which the CPU tests cannot reach).
    device = device_for_rank(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# ------------------------------------------------------------------------------------------------ helpers
def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """BigGAN's [-1, 1] images to [0, 1] (a fixed map, not the authors' per-image min-max normalisation)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ trainer
class ImageNetTrainer:
    """One ImageNet CGN training run: networks, optimisers, counters; ``run()`` trains to ``config.steps``.

    Most users call ``train_cgn_imagenet``; the trainer is public so that tools (and the tests) can inspect
    ``backend`` and ``ground_truth`` or drive ``train_step`` themselves.

    Args:
        config: the recipe.
        run_dir: the run folder; when it holds ``checkpoints/latest.safetensors`` the run continues from it.
        resume: continue from the run folder's checkpoint; with ``False`` an existing checkpoint is an error.

    Attributes:
        backend: the CGN being trained (``BigGANBackend``), in training mode.
        ground_truth: the frozen BigGAN that draws the pseudo ground truth.
        step: optimiser steps done.
    """

    def __init__(self, config: ImageNetTrainConfig, run_dir: str | os.PathLike[str], *, resume: bool = True):
        if not isinstance(config, ImageNetTrainConfig):
            raise TypeError(f"`config` should be an ImageNetTrainConfig, but got {type(config).__name__}.")
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = _resolve_device(config)
        # The torchrun session lasts as long as the trainer: ``close`` leaves a process group created here.
        self._session = contextlib.ExitStack()
        self.world = self._session.enter_context(
            distributed_session(backend="nccl" if self.device.type == "cuda" else "gloo")
        )
        self.folder = RunFolder(
            self.run_dir, kind=CHECKPOINT_KIND, writer="train_cgn_imagenet", is_main=self.world.is_main
        )
        self.checkpoint_path = self.folder.checkpoint_path
        self.final_path = self.folder.final_path
        self.stats_path = self.folder.stats_path
        try:
            self._setup(resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool) -> None:
        config = self.config
        if config.batch_size % self.world.world_size:
            raise ValueError(
                f"`batch_size` ({config.batch_size}) should be divisible by the number of processes "
                f"({self.world.world_size}): each takes an equal share of every pass."
            )
        self.folder.refuse_unless_resuming(resume)
        self.local_batch = config.batch_size // self.world.world_size
        self._resume_state = self.folder.load_state() if self.folder.has_state() else None
        # Whatever is initialised at random (a U2-Net without weights, in tests) follows from the run seed alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(config.seed, _INIT_STREAM))
            self._build_networks()
        self.model: nn.Module = self.backend
        if self.world.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            # DDP broadcasts rank 0's parameters and buffers now and its buffers (spectral-norm vectors) before each
            # forward, and averages the gradients: every rank holds the same networks at every step.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.backend, device_ids=device_ids)
        self.optimizers = {
            name: torch.optim.Adam(module.parameters(), lr=lr, betas=config.betas)
            for (name, module), lr in zip(
                self.backend.mechanism_modules().items(),
                (config.lr_shape, config.lr_texture, config.lr_background),
                strict=True,
            )
        }
        self.step = 0
        self.train_seconds = 0.0
        self._interval: dict[str, float] = {}
        self._interval_passes = 0
        self._interval_seconds = 0.0
        self.last_record: dict[str, Any] = {}
        if self._resume_state is not None:
            self._load_state(self._resume_state)
        self._resume_state = None
        self.sample_classes = self._sample_classes()

    # ---------------------------------------------------------------------------------------- building
    def _build_networks(self) -> None:
        config = self.config
        state = self._resume_state
        if state is not None:
            meta = state.meta
            check_resumable(ImageNetTrainConfig.from_dict(meta["config"]), config)
            # A resumed run takes every network from its checkpoint: the pretrained files need not be at hand.
            biggan_config = check_biggan_config(meta["biggan_config"])
            self.ground_truth = build_biggan(biggan_config, seed=0)
            backend = BigGANBackend(biggan_config, u2net_variant=config.u2net, truncation=config.truncation)
            self.biggan_source = meta["biggan_source"]
            self.u2net_source = meta["u2net_source"]
        else:
            self.ground_truth = load_biggan(config.biggan)
            backend = BigGANBackend.from_biggan(
                self.ground_truth,
                u2net_variant=config.u2net,
                u2net_weights=config.u2net_weights,
                truncation=config.truncation,
            )
            self.biggan_source = config.biggan
            self.u2net_source = config.u2net_weights
        self.ground_truth = self.ground_truth.to(self.device).eval().requires_grad_(False)
        self.backend: BigGANBackend = backend.to(self.device).train()
        for module in self.backend.mechanism_modules().values():
            module.requires_grad_(True)
        needed = sorted(
            {
                index
                for weights in (config.perceptual_weights, config.texture_weights)
                for index, w in zip(VGG16_LAYER_INDICES, weights, strict=True)
                if w > 0
            }
        )
        features = build_feature_network(needed or [VGG16_LAYER_INDICES[0]], config.feature_net)
        weights = {name: getattr(config, name) for name in ImageNetCGNLoss.SETTINGS}
        self.loss = ImageNetCGNLoss(features, **weights).to(self.device)
        self.feature_description = features.description

    def _sample_classes(self) -> list[int]:
        classes = self.config.sample_classes
        num_classes = self.backend.num_classes
        if classes is None:
            return list(range(min(num_classes, len(AUTHORS_SAMPLE_CLASSES))))
        too_large = [c for c in classes if c >= num_classes]
        if too_large:
            raise ValueError(
                f"`sample_classes` should be class indices below {num_classes} (the BigGAN's classes), but got "
                f"{too_large}; set sample_classes=None for the first classes."
            )
        return list(classes)

    # ------------------------------------------------------------------------------------ bookkeeping
    def resolved(self) -> dict[str, Any]:
        """What the config resolved to on this machine; part of config.json and every checkpoint."""
        return {
            "feature_net": self.feature_description,
            "biggan_config": self.backend.biggan_config,
            "image_size": self.backend.image_size,
            "num_classes": self.backend.num_classes,
            "parameters_per_mechanism": sum(p.numel() for p in self.backend.f_shape.parameters()),
        }

    def environment(self) -> dict[str, Any]:
        """Versions and hardware of this run (recorded, not checked on resume)."""
        return run_environment(self.device, world_size=self.world.world_size)

    def write_config(self) -> None:
        """Write ``config.json`` (rank 0)."""
        self.folder.write_config(
            {
                "config": self.config.to_dict(),
                "resolved": self.resolved(),
                "environment": self.environment(),
                "biggan_source": self.biggan_source,
                "u2net_source": self.u2net_source,
            }
        )

    def save_state(self) -> None:
        """Write ``checkpoints/latest.safetensors``: everything needed to continue the run (rank 0)."""
        if not self.world.is_main:
            return
        tensors = {**prefixed("model", self.backend), **prefixed("ground_truth", self.ground_truth)}
        optimizer_meta = {}
        for name, optimizer in self.optimizers.items():
            flat, meta = flatten_optimizer(f"opt_{name}", optimizer)
            tensors.update(flat)
            optimizer_meta[name] = meta
        meta = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "config": self.config.to_dict(),
            "resolved": self.resolved(),
            "biggan_config": self.backend.biggan_config,
            "biggan_source": self.biggan_source,
            "u2net_source": self.u2net_source,
            "optimizers": optimizer_meta,
            "rng": "every draw comes from the per-sample seeds of (seed, sample index): the step is the whole state",
        }
        self.folder.save_state(tensors, meta)

    def _load_state(self, checkpoint: Any) -> None:
        meta, tensors = checkpoint.meta, checkpoint.state_dict
        if meta["resolved"]["feature_net"] != self.feature_description:
            raise ValueError(
                f"The run was trained with the feature network {meta['resolved']['feature_net']!r}, but this machine "
                f"resolves `feature_net` to {self.feature_description!r}; pass the original one to resume."
            )
        self.backend.load_state_dict(unprefixed("model", tensors), strict=True)
        self.ground_truth.load_state_dict(unprefixed("ground_truth", tensors), strict=True)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(unflatten_optimizer(f"opt_{name}", tensors, meta["optimizers"][name]))
        self.step = int(meta["step"])
        self.train_seconds = float(meta["train_seconds"])

    # ----------------------------------------------------------------------------------- training
    def sample_seeds(self, step: int, accumulation_pass: int) -> torch.Tensor:
        """This rank's per-sample seeds for pass ``accumulation_pass`` of optimiser step ``step``."""
        config = self.config
        first = (
            step * config.accumulation + accumulation_pass
        ) * config.batch_size + self.world.rank * self.local_batch
        return index_seeds(mix_seed(config.seed, _SAMPLE_STREAM), range(first, first + self.local_batch))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.amp is None or self.device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.config.amp])

    def forward_backward(self, seeds: torch.Tensor) -> dict[str, float]:
        """One pass: draws from ``seeds``, forward, losses, backward (gradients add to those already there)."""
        config = self.config
        backend = self.backend
        classes = per_sample_randint(seeds, _CLASS_STREAM, backend.num_classes).to(self.device)
        noise = truncated_noise(seeds, backend.latent_dim, config.truncation, stream=_NOISE_STREAM).to(self.device)
        with self._autocast():
            with torch.no_grad():
                ground_truth = self.ground_truth(noise, backend.one_hot(classes), config.truncation).float()
            _, mask, foreground, background = self.model(noise, classes, classes, classes, config.truncation)
            mask, foreground, background = mask.float(), foreground.float(), background.float()
            saliency = backend.u2net(background).float()
            generated = composite(mask, foreground, background)
            grid = texture_patch_grid(
                ground_truth,
                mask.detach(),
                seeds,
                patch_size=config.patch_size,
                pool_size=config.patch_pool,
                grid=config.patch_grid,
                work_size=config.patch_work_size,
            )
            terms = self.loss(generated, ground_truth, mask, foreground, saliency, grid)
        terms["total"].backward()
        mask = mask.detach()
        values = {f"loss_{name}": float(value.detach()) for name, value in terms.items()}
        values["mask_area"] = float(mask.mean())
        values["mask_binariness"] = float((2 * mask - 1).abs().mean())
        return values

    def train_step(self) -> dict[str, float]:
        """One optimiser step: ``accumulation`` passes with summed gradients, then the three Adam steps."""
        config = self.config
        sums: dict[str, float] = {}
        for accumulation_pass in range(config.accumulation):
            last = accumulation_pass == config.accumulation - 1
            # Gradients are all-reduced once per step, on the last pass; earlier passes accumulate locally.
            sync = contextlib.nullcontext() if last or not self.world.is_distributed else self.model.no_sync()
            with sync:
                values = self.forward_backward(self.sample_seeds(self.step, accumulation_pass))
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
        for optimizer in self.optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {name: value / config.accumulation for name, value in sums.items()}

    # --------------------------------------------------------------------------------- monitoring
    def accumulate(self, values: dict[str, float], seconds: float) -> None:
        """Add one step's mean values to the current log interval."""
        for name, value in values.items():
            self._interval[name] = self._interval.get(name, 0.0) + value
        self._interval_passes += 1
        self._interval_seconds += seconds

    def log(self) -> dict[str, Any]:
        """Append the interval's means (over all ranks) to ``stats.jsonl`` (rank 0) and start a new interval."""
        names = sorted(self._interval)
        steps = max(self._interval_passes, 1)
        values = torch.tensor([self._interval[n] / steps for n in names], dtype=torch.float64)
        if self.world.is_distributed and names:
            gathered = values.to(self.device)
            dist.all_reduce(gathered)
            values = gathered.cpu() / self.world.world_size
        images = self._interval_passes * self.config.batch_size * self.config.accumulation
        record: dict[str, Any] = {
            "step": self.step,
            "images": self.step * self.config.batch_size * self.config.accumulation,
            "train_seconds": round(self.train_seconds, 3),
            "img_per_s": round(images / max(self._interval_seconds, 1e-9), 3),
            **{name: float(value) for name, value in zip(names, values.tolist(), strict=True)},
        }
        self.folder.append_stats(record)
        self._interval.clear()
        self._interval_passes = 0
        self._interval_seconds = 0.0
        self.last_record = record
        return record

    @contextlib.contextmanager
    def _evaluating(self) -> Generator[None, None, None]:
        was_training = self.backend.training
        self.backend.eval()
        try:
            with torch.no_grad(), self._autocast():
                yield
        finally:
            self.backend.train(was_training)

    def save_samples(self) -> Path | None:
        """Write the sample sheet of the current step on fixed noise (rank 0); return its path.

        One row per sample class: mask, pre-mask, foreground, background, composite, pseudo ground truth, and a
        counterfactual with the row's shape and the next rows' texture and background.
        """
        if not self.world.is_main:
            return None
        from torchvision.utils import make_grid, save_image

        backend = self.backend
        classes = torch.tensor(self.sample_classes, device=self.device)
        seeds = index_seeds(mix_seed(self.config.seed, _SHEET_STREAM), range(len(classes)))
        noise = truncated_noise(seeds, backend.latent_dim, self.config.truncation).to(self.device)
        truncation = self.config.truncation
        with self._evaluating():
            premask, mask, foreground, background = backend(noise, classes, classes, classes, truncation)
            ground_truth = self.ground_truth(noise, backend.one_hot(classes), truncation)
            texture, background_classes = classes.roll(-1), classes.roll(-2)
            counterfactual = composite(*backend(noise, classes, texture, background_classes, truncation)[1:])
            columns = [
                mask.float().expand(-1, 3, -1, -1),
                _to_unit(premask),
                _to_unit(foreground),
                _to_unit(background),
                _to_unit(composite(mask.float(), foreground.float(), background.float())),
                _to_unit(ground_truth),
                _to_unit(counterfactual.float()),
            ]
        tiles = torch.stack([c.float().cpu() for c in columns], dim=1).flatten(0, 1)
        sheet = make_grid(tiles, nrow=len(columns), padding=2, pad_value=1.0)
        path = self.folder.sample_path(self.step)
        buffer = io.BytesIO()
        save_image(sheet, buffer, format="png")
        with atomic_write(path) as handle:
            handle.write(buffer.getvalue())
        return path

    def export(self) -> Path:
        """Write ``final.safetensors``: the trained CGN as a ``biggan`` backend checkpoint (rank 0)."""
        if self.world.is_main:
            exported = copy.deepcopy(self.backend).cpu().eval()
            exported.truncation = self.config.export_truncation
            metrics = {k: v for k, v in self.last_record.items() if k.startswith(("loss_", "mask_"))}
            recipe = {
                "config": self.config.to_dict(),
                "resolved": self.resolved(),
                "trainer": "cfaug.training.imagenet",
                "biggan_source": self.biggan_source,
                "u2net_source": self.u2net_source,
            }
            training = {
                "steps": self.step,
                "images": self.step * self.config.batch_size * self.config.accumulation,
                "train_seconds": round(self.train_seconds, 1),
                **self.environment(),
            }
            exported.save(self.final_path, recipe=recipe, training=training, metrics=metrics)
        barrier()
        return self.final_path

    def progress_postfix(self, values: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after each step."""
        return {"loss": f"{values['loss_total']:.3f}", "area": f"{values['mask_area']:.2f}"}

    def close(self) -> None:
        """Leave the process group if this run created it."""
        self._session.close()

    # ---------------------------------------------------------------------------------------- run
    def run(self) -> Path:
        """Train to ``config.steps`` (logging, sheets, checkpoints as configured); return ``final.safetensors``.

        On Ctrl-C the run finishes its step, writes its checkpoint and raises ``KeyboardInterrupt``.
        """
        config = self.config
        self.folder.start_stats(self.step)
        self.write_config()
        if self.step >= config.steps:
            if self.final_path.exists():
                return self.final_path
            return self.export()
        if self.step == 0:
            self.save_samples()
        run_steps(
            self,
            config,
            desc="cgn imagenet",
            unit="step",
            progress=config.progress and self.world.is_main,
            interrupted_message=(
                f"Training interrupted after step {{step}}; {self.checkpoint_path} holds the state. "
                "Run the same command again to continue."
            ),
            stop_requested=lambda flag: any_rank(flag, self.device),
            after_checkpoint=barrier,
        )
        return self.export()


def train_cgn_imagenet(config: ImageNetTrainConfig, run_dir: str | os.PathLike[str], *, resume: bool = True) -> Path:
    """Train an ImageNet CGN as ``config`` says, writing everything into ``run_dir``; return the exported backend.

    When ``run_dir/checkpoints/latest.safetensors`` exists, training continues from it (the config may differ only
    in ``IMAGENET_RESUMABLE_FIELDS``, e.g. more ``steps``). Under ``torchrun`` every rank calls this function; rank 0
    writes the files.

    Args:
        config: the recipe, e.g. ``get_imagenet_preset("authors", biggan="weights/biggan-deep-256")``.
        run_dir: the run folder, created if needed and laid out as the module documentation shows.
        resume: continue from the checkpoint in the run folder; with ``False``, finding one is an error.

    Returns:
        ``final.safetensors``, the trained CGN for ``cfaug.load_backend("biggan", weights=path)``.

    Raises:
        ValueError: the run folder holds a run with another recipe, or ``resume=False`` and it holds a run.
        FeatureNetworkError: ``config.feature_net`` names ImageNet VGG16 weights that are not available.
        FileNotFoundError: the BigGAN folder or the U2-Net weights file does not exist.

    Examples:
        >>> config = get_imagenet_preset("authors", biggan="weights/biggan-deep-256", device="cuda")  # doctest: +SKIP
        >>> path = train_cgn_imagenet(config, "runs/imagenet")  # doctest: +SKIP
        >>> backend = cfaug.load_backend("biggan", weights=path)  # doctest: +SKIP
    """
    if not isinstance(config, ImageNetTrainConfig):
        raise TypeError(f"`config` should be an ImageNetTrainConfig, but got {type(config).__name__}.")
    with training_scope(config.num_threads, fork_rng=False):
        trainer = ImageNetTrainer(config, run_dir, resume=resume)
        try:
            return trainer.run()
        finally:
            trainer.close()


# The argparse code of ``cfaug train imagenet`` lives in ``cfaug.cli.train_imagenet``; its names stay importable
# from here (loaded on first use: cfaug.cli imports this module).
_CLI_NAMES = ("add_train_imagenet_arguments", "config_from_args", "run_train_imagenet")


def __getattr__(name: str) -> Any:
    if name in _CLI_NAMES:
        from cfaug.cli import train_imagenet

        return getattr(train_imagenet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
