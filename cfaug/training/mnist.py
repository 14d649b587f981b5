"""Config-driven training of the MNIST CGN: ``train_cgn_mnist``.

One iteration follows the authors' ``train_cgn.py`` (notes sections 2.4-2.5):

1. a real batch ``(x_real, y_real)`` of the variant's training split (seeded shuffling, epoch by epoch);
2. ``y_gen`` uniform over the classes, one noise ``u`` shared by the three mechanisms (the standard forward),
   random cyclic shifts of both texture maps; ``x_gen = m * f + (1 - m) * b``;
3. a generator update on ``LSGAN(D(x_gen, y_gen)) + lambda_mask * H2(m) + style(x_gen, x_real)`` plus our mask
   regularisers (area interval, border band, spread) and our shape teacher's cross-entropy on ``m``
   (``training.shape_teacher``, trained on the split's ground-truth masks before the first iteration);
4. our generator EMA update;
5. a discriminator update on ``x_real`` and ``x_gen.detach()``.

Generator, discriminator and feature network see images in [-1, 1], as in the authors' code.

**Determinism and resuming.** Every random draw of iteration ``k`` (labels, noise, shifts, dropout) comes from the
torch RNGs reseeded with ``(seed, k)`` at the start of the iteration, and the data order of epoch ``e`` from a
permutation seeded with ``(seed, e)``. The iteration number is thus the complete RNG state, and a run resumed
from ``checkpoints/latest.safetensors`` computes bit for bit what the uninterrupted run computes. The caller's
global RNG state is saved and restored around the run.

**Run folder.**

.. code-block:: text

    run_dir/
      config.json                 the TrainConfig and what it resolved to (feature network, dataset size, versions)
      stats.jsonl                 one JSON object per log interval: losses, D outputs, mask area/binariness, img/s
      samples/step-XXXXXX.png     fixed-noise grids: a row per shape class; mask, fg, bg, composite; counterfactuals
      checkpoints/latest.safetensors  G, G_ema, D, the shape teacher, both Adam states, step (all to resume)
      final.safetensors           the exported generator (G_ema) as an ``mnist`` backend checkpoint
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cfaug.backends.mnist import MnistBackend, random_shift_offsets
from cfaug.engine import (
    RunFolder,
    check_resumable,
    flatten_optimizer,
    prefixed,
    run_environment,
    run_steps,
    training_scope,
    unflatten_optimizer,
    unprefixed,
)
from cfaug.functional import composite
from cfaug.models.discriminators import build_discriminator
from cfaug.models.feature_network import VGG16_LAYER_INDICES, VGG16_LAYER_NAMES, FeatureNetwork, build_feature_network
from cfaug.seeding import mix_seed
from cfaug.training import losses
from cfaug.training.config import TrainConfig
from cfaug.training.monitor import (
    MaskCollapseError,
    detect_collapse,
    mask_stats,
    probe_inputs,
    save_sample_grid,
)
from cfaug.training.shape_teacher import MaskClassifier, train_shape_teacher

__all__ = ["CHECKPOINT_KIND", "build_train_dataset", "train_cgn_mnist"]

#: ``kind`` in the metadata of a training-state checkpoint (not loadable as a backend; see final.safetensors).
CHECKPOINT_KIND = "cfaug.training.mnist.state"

# Streams of the run seed: each kind of randomness has its own, so changing one leaves the others untouched.
_INIT_STREAM, _STEP_STREAM, _DATA_STREAM, _TEACHER_STREAM = 1, 2, 3, 4


# ------------------------------------------------------------------------------------------------ data
def build_train_dataset(config: TrainConfig) -> Any:
    """The training split of ``config.variant`` (a ``cfaug.datasets.mnist_variants`` dataset)."""
    from cfaug.datasets.mnist_variants import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

    if config.variant == "wildlife_mnist":
        return WildlifeMNIST(config.data_root, train=True, texture_root=config.texture_root, seed=config.data_seed)
    if config.texture_root is not None:
        raise ValueError(f"`texture_root` is only used by wildlife_mnist, but the variant is {config.variant!r}.")
    cls = ColoredMNIST if config.variant == "colored_mnist" else DoubleColoredMNIST
    return cls(config.data_root, train=True, seed=config.data_seed)


class _DataOrder:
    """Batch ``k`` of the endless stream of per-epoch permutations; a function of ``(seed, k)`` only."""

    def __init__(self, num_items: int, batch_size: int, seed: int):
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = mix_seed(seed, _DATA_STREAM)
        self._cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._cache[epoch] = torch.randperm(self.num_items, generator=generator)
        return self._cache[epoch]

    def batch(self, step: int) -> torch.Tensor:
        parts = []
        position = step * self.batch_size
        wanted = self.batch_size
        while wanted:
            epoch, offset = divmod(position, self.num_items)
            take = min(wanted, self.num_items - offset)
            parts.append(self._permutation(epoch)[offset : offset + take])
            position += take
            wanted -= take
        return torch.cat(parts)


# ------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Generator[nn.Module, None, None]:
    """Eval mode (running BN statistics, no running-stat updates) for the duration of the block."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _style_layers(config: TrainConfig) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The VGG16 layers with a nonzero style weight, and their effective weights ``w**2 * 5000``."""
    effective = losses.style_layer_weights(config.style_weights)
    chosen = [(index, weight) for index, weight in zip(VGG16_LAYER_INDICES, effective, strict=True) if weight > 0]
    return tuple(i for i, _ in chosen), tuple(w for _, w in chosen)


def _generator_groups(generator: MnistBackend, config: TrainConfig) -> list[dict[str, Any]]:
    """Adam parameter groups: BatchNorm weights and shifts at ``lr * norm_lr_scale``, the rest at ``lr``.

    The last BatchNorm of a texture network sets the mean and contrast of its colours. Adam moves a parameter by
    about ``lr`` per step, so at 2e-4 a shift needs ~10k steps to reach a saturated colour such as MNIST's black
    background; until then BatchNorm's unit variance over the batch pushes some classes to the opposite colour.
    """
    norms = {id(p) for m in generator.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    params = generator.generator_parameters()
    groups = [
        {"params": [p for p in params if id(p) not in norms], "lr": config.lr},
        {"params": [p for p in params if id(p) in norms], "lr": config.lr * config.norm_lr_scale},
    ]
    return [group for group in groups if group["params"]]


def _ema_beta(config: TrainConfig, images_seen: int) -> float:
    """Per-iteration EMA decay for a half-life of ``ema_kimg`` thousand images (stylegan2-ada's schedule)."""
    half_life = config.ema_kimg * 1000
    if config.ema_rampup is not None:
        half_life = min(half_life, images_seen * config.ema_rampup)
    return 0.5 ** (config.batch_size / max(half_life, 1e-8))


class _Run:
    """The state of one training run: models, optimisers, data, counters; one method per phase."""

    def __init__(self, config: TrainConfig, folder: RunFolder):
        self.config = config
        self.folder = folder
        self.run_dir = folder.path
        self.device = torch.device(config.device)
        self.checkpoint_path = folder.checkpoint_path
        self.final_path = folder.final_path

        dataset = build_train_dataset(config)
        self.dataset = dataset
        self.num_items = len(dataset) if config.train_images is None else min(config.train_images, len(dataset))
        if self.num_items == 0:
            raise ValueError(f"The {config.variant} training split in {config.data_root!r} is empty.")
        self.order = _DataOrder(self.num_items, config.batch_size, config.seed)

        # The initialisation draws from the global RNG (nn.init); seed it so the run depends on config.seed only.
        torch.manual_seed(mix_seed(config.seed, _INIT_STREAM))
        self.generator = MnistBackend(init_type=config.init_type, init_gain=config.init_gain).to(self.device).train()
        self.discriminator = build_discriminator(config.disc, ndf=config.ndf).to(self.device).train()
        self.generator_ema: MnistBackend | None = None
        if config.ema_kimg > 0:
            self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        self.style_indices, self.style_weights = _style_layers(config)
        self.features: FeatureNetwork | None = None
        if self.style_indices:
            self.features = build_feature_network(self.style_indices, config.feature_net).to(self.device)
        self.optimizer_g = torch.optim.Adam(_generator_groups(self.generator, config), betas=config.betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=config.betas)
        #: the frozen shape teacher (``prepare_teacher`` trains it, ``load_state`` restores it); None without one.
        self.teacher: MaskClassifier | None = None
        self.teacher_info: dict[str, Any] = {}
        self.probe_classes, self.probe_seeds = probe_inputs(
            config.seed, self.generator.num_classes, config.probe_per_class
        )
        self.step = 0
        self.train_seconds = 0.0
        self._interval: dict[str, float] = {}
        self._interval_steps = 0
        self._interval_seconds = 0.0
        #: time the phases of each iteration (``phase_seconds``); off in training runs (it synchronises GPUs).
        self.profile = False
        self.phase_seconds: dict[str, float] = {}
        self._lap_start = 0.0

    # ------------------------------------------------------------------------------------ bookkeeping
    def prepare_teacher(self) -> None:
        """Train the shape teacher on the ground-truth masks of the run's training images (if the config has one)."""
        config = self.config
        if config.shape_teacher_steps == 0:
            return
        started = time.perf_counter()
        self.teacher, accuracy = train_shape_teacher(
            self.dataset.masks[: self.num_items],
            self.dataset.targets[: self.num_items],
            num_classes=self.generator.num_classes,
            steps=config.shape_teacher_steps,
            seed=mix_seed(config.seed, _TEACHER_STREAM),
            device=self.device,
        )
        self.teacher_info = {
            "held_out_accuracy": round(accuracy, 4),
            "steps": config.shape_teacher_steps,
            "train_seconds": round(time.perf_counter() - started, 1),
        }

    @property
    def exported(self) -> MnistBackend:
        """The generator that is monitored and exported: the EMA when there is one."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    def resolved(self) -> dict[str, Any]:
        """What the config resolved to on this machine; part of config.json and every checkpoint."""
        return {
            "feature_net": None if self.features is None else self.features.description,
            "style_layers": [VGG16_LAYER_NAMES[VGG16_LAYER_INDICES.index(i)] for i in self.style_indices],
            "style_layer_weights": list(self.style_weights),
            "train_images": self.num_items,
            "generator_parameters": sum(p.numel() for p in self.generator.generator_parameters()),
            "discriminator_parameters": sum(p.numel() for p in self.discriminator.parameters()),
        }

    def environment(self) -> dict[str, Any]:
        return run_environment(self.device)

    def save_state(self) -> None:
        tensors = {**prefixed("G", self.generator), **prefixed("D", self.discriminator)}
        if self.generator_ema is not None:
            tensors.update(prefixed("G_ema", self.generator_ema))
        if self.teacher is not None:
            tensors.update(prefixed("S", self.teacher))
        opt_g_tensors, opt_g_meta = flatten_optimizer("opt_g", self.optimizer_g)
        opt_d_tensors, opt_d_meta = flatten_optimizer("opt_d", self.optimizer_d)
        tensors.update(opt_g_tensors)
        tensors.update(opt_d_tensors)
        meta = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "config": self.config.to_dict(),
            "resolved": self.resolved(),
            "opt_g": opt_g_meta,
            "opt_d": opt_d_meta,
            "shape_teacher": self.teacher_info,
            "rng": "reseeded from (seed, step) at every iteration: the step is the whole RNG state",
        }
        self.folder.save_state(tensors, meta)

    def load_state(self) -> None:
        checkpoint = self.folder.load_state(map_location=self.device)
        meta = checkpoint.meta
        check_resumable(TrainConfig.from_dict(meta["config"]), self.config)
        if meta["resolved"] != self.resolved():
            raise ValueError(
                f"The run was trained with {meta['resolved']}, but this machine resolves the config to "
                f"{self.resolved()} (e.g. ImageNet VGG16 weights appeared in the cache); pass the original "
                "feature_net explicitly to resume."
            )
        tensors = checkpoint.state_dict
        self.generator.load_state_dict(unprefixed("G", tensors), strict=True)
        self.discriminator.load_state_dict(unprefixed("D", tensors), strict=True)
        if self.generator_ema is not None:
            self.generator_ema.load_state_dict(unprefixed("G_ema", tensors), strict=True)
        if self.config.shape_teacher_steps:
            self.teacher = MaskClassifier(self.generator.num_classes).to(self.device)
            self.teacher.load_state_dict(unprefixed("S", tensors), strict=True)
            self.teacher.eval().requires_grad_(False)
            self.teacher_info = dict(meta.get("shape_teacher", {}))
        self.optimizer_g.load_state_dict(unflatten_optimizer("opt_g", tensors, meta["opt_g"]))
        self.optimizer_d.load_state_dict(unflatten_optimizer("opt_d", tensors, meta["opt_d"]))
        self.step = int(meta["step"])
        self.train_seconds = float(meta["train_seconds"])

    def write_config(self) -> None:
        self.folder.write_config(
            {
                "config": self.config.to_dict(),
                "resolved": self.resolved(),
                "environment": self.environment(),
                "shape_teacher": self.teacher_info or None,
            }
        )

    # ----------------------------------------------------------------------------------- one iteration
    def train_step(self) -> dict[str, float]:
        config = self.config
        device = self.device
        batch_size = config.batch_size
        # Every draw of this iteration (labels, noise, shifts here; dropout in D) follows from (seed, step).
        torch.manual_seed(mix_seed(mix_seed(config.seed, _STEP_STREAM), self.step))
        self._lap(None)
        real_images, real_labels = self.dataset.batch(self.order.batch(self.step))
        real_images = (real_images * 2 - 1).to(device)
        real_labels = real_labels.to(device)
        num_classes = self.generator.num_classes
        # Drawn on the CPU and moved, so that the draws do not depend on the device.
        labels = torch.randint(0, num_classes, (batch_size,)).to(device)
        latent = torch.randn(batch_size, self.generator.latent_dim).to(device)
        fg_offsets = random_shift_offsets(batch_size, self.generator.image_size, device=device)
        bg_offsets = random_shift_offsets(batch_size, self.generator.image_size, device=device)
        self._lap("data")

        # ---- generator update: the standard forward, one noise and one label for all three mechanisms
        mask, foreground, background = self.generator(
            latent, latent, latent, labels, labels, labels, fg_offsets=fg_offsets, bg_offsets=bg_offsets
        )
        fake_images = composite(mask, foreground, background)
        self._lap("g_forward")
        self.discriminator.requires_grad_(False)  # no D gradients from the G loss: saves their computation
        fake_scores = self.discriminator(fake_images, labels)
        terms = {"g_adv": losses.lsgan_generator_loss(fake_scores)}
        terms["g_mask"] = losses.binary_entropy_loss(mask)
        total = terms["g_adv"] + config.lambda_mask * terms["g_mask"]
        self._lap("g_losses")
        if self.features is not None:
            count = config.style_batch or batch_size
            with torch.no_grad():
                real_features = self.features(real_images[:count])
            terms["g_style"] = losses.style_loss(self.features(fake_images[:count]), real_features, self.style_weights)
            total = total + terms["g_style"]
            self._lap("style_forward")
        if config.mask_area is not None:
            terms["g_area"] = losses.mask_area_interval_loss(mask, *config.mask_area)
            total = total + config.lambda_area * terms["g_area"]
        if config.lambda_border > 0:
            terms["g_border"] = losses.mask_border_loss(mask, config.border_width)
            total = total + config.lambda_border * terms["g_border"]
        if config.lambda_spread > 0:
            terms["g_spread"] = losses.mask_spread_loss(mask, config.mask_max_spread)
            total = total + config.lambda_spread * terms["g_spread"]
        if config.lambda_shape > 0 and self.teacher is not None:
            terms["g_shape"] = F.cross_entropy(self.teacher(mask), labels)
            total = total + config.lambda_shape * terms["g_shape"]
        terms["g_total"] = total
        self.optimizer_g.zero_grad(set_to_none=True)
        self._lap("g_losses")
        total.backward()
        self._lap("g_backward")
        self.optimizer_g.step()
        self.discriminator.requires_grad_(True)

        images_seen = (self.step + 1) * batch_size
        if self.generator_ema is not None:
            beta = _ema_beta(config, images_seen)
            with torch.no_grad():
                for ema, live in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
                    ema.lerp_(live, 1 - beta)
                # BatchNorm statistics are not averaged (as in stylegan2-ada): the EMA takes the live ones.
                for ema, live in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
                    ema.copy_(live)
        self._lap("g_update_ema")

        # ---- discriminator update (the authors' order: after the generator, on the same generated batch)
        real_scores = self.discriminator(real_images, real_labels)
        fake_scores_d = self.discriminator(fake_images.detach(), labels)
        d_loss = losses.lsgan_discriminator_loss(real_scores, fake_scores_d)
        self.optimizer_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizer_d.step()
        self._lap("d_step")

        self.step += 1
        with torch.no_grad():
            values = {name: float(value) for name, value in terms.items()}
            values.update(
                d_loss=float(d_loss),
                d_real=float(real_scores.mean()),
                d_fake=float(fake_scores_d.mean()),
                batch_mask_area=float(mask.mean()),
                batch_mask_binariness=float((2 * mask - 1).abs().mean()),
            )
        return values

    def _lap(self, phase: str | None) -> None:
        """With ``profile`` on, add the time since the previous lap to ``phase_seconds[phase]``."""
        if not self.profile:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously; wait to attribute their time
        now = time.perf_counter()
        if phase is not None:
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + now - self._lap_start
        self._lap_start = now

    # ------------------------------------------------------------------------------------- monitoring
    def accumulate(self, values: dict[str, float], seconds: float) -> None:
        for name, value in values.items():
            self._interval[name] = self._interval.get(name, 0.0) + value
        self._interval_steps += 1
        self._interval_seconds += seconds

    def probe(self) -> Any:
        monitored = self.exported
        with _eval_mode(monitored), torch.no_grad():
            masks = monitored.generate("shape", self.probe_classes, self.probe_seeds)
        return mask_stats(
            masks, self.probe_classes, monitored.num_classes, self.config.border_width, teacher=self.teacher
        )

    def progress_postfix(self, values: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows after each iteration."""
        return {
            "g": f"{values['g_total']:.3f}",
            "d": f"{values['d_loss']:.3f}",
            "area": f"{values['batch_mask_area']:.2f}",
        }

    def log(self) -> None:
        """Append a stats line and act on collapse as ``config.collapse_action`` says.

        Raises:
            MaskCollapseError: the masks collapsed and ``collapse_action == "raise"`` (after a sample grid and a
                checkpoint of the collapsed state are written).
        """
        problems = self.write_stats()
        if not problems:
            return
        message = _collapse_message(self.config, self.step, problems, self.run_dir)
        if self.config.collapse_action == "raise":
            self.save_samples()
            self.save_state()
            raise MaskCollapseError(message)
        if self.config.collapse_action == "warn":
            # stacklevel 4: log, run_steps, train_cgn_mnist, then the caller of train_cgn_mnist
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def write_stats(self) -> list[str]:
        """Append a stats line; return the collapse symptoms (empty when healthy or not armed yet)."""
        config = self.config
        stats = self.probe()
        problems = detect_collapse(stats, **config.collapse_thresholds())
        armed = self.step >= config.collapse_after
        steps = max(self._interval_steps, 1)
        record: dict[str, Any] = {
            "step": self.step,
            "kimg": self.step * config.batch_size / 1000,
            "train_seconds": round(self.train_seconds, 3),
            "img_per_s": round(self._interval_steps * config.batch_size / max(self._interval_seconds, 1e-9), 2),
            **{name: value / steps for name, value in sorted(self._interval.items())},
            **{f"probe_{name}": value for name, value in stats.summary().items()},
            "collapse": problems if armed else [],
        }
        if self.generator_ema is not None:
            record["ema_beta"] = _ema_beta(config, self.step * config.batch_size)
        self.folder.append_stats(record)
        self._interval.clear()
        self._interval_steps = 0
        self._interval_seconds = 0.0
        self.last_record = record
        return problems if armed else []

    def save_samples(self) -> Path:
        path = self.folder.sample_path(self.step)
        monitored = self.exported
        with _eval_mode(monitored):
            save_sample_grid(monitored, path, self.config.seed)
        return path

    def export(self) -> Path:
        """Write final.safetensors: the exported generator as an ``mnist`` backend checkpoint."""
        record = getattr(self, "last_record", None)
        if record is None or record.get("step") != self.step:
            # Exported without a log line at this step (e.g. a resumed run that had already reached its steps):
            # probe now, so the file always carries the mask statistics of the weights it holds.
            record = {f"probe_{name}": value for name, value in self.probe().summary().items()}
        metrics = {k: v for k, v in record.items() if k.startswith(("probe_", "g_", "d_", "batch_"))}
        if self.teacher_info:
            metrics["shape_teacher"] = self.teacher_info
        recipe = {"config": self.config.to_dict(), "resolved": self.resolved(), "trainer": "cfaug.training.mnist"}
        training = {
            "steps": self.step,
            "images": self.step * self.config.batch_size,
            "train_seconds": round(self.train_seconds, 1),
            "exported": "G_ema" if self.generator_ema is not None else "G",
            **self.environment(),
        }
        exported = copy.deepcopy(self.exported).cpu().eval()
        exported.save(self.final_path, recipe=recipe, training=training, metrics=metrics)
        return self.final_path


def _collapse_message(config: TrainConfig, step: int, problems: list[str], run_dir: Path) -> str:
    return (
        f"Mask collapse detected at iteration {step} of the {config.variant} CGN: "
        + "; ".join(problems)
        + f". See {run_dir / 'samples'} and {run_dir / 'stats.jsonl'}. Remedies: enable or raise the mask "
        "regularisers (lambda_area with mask_area, lambda_border, lambda_spread), raise norm_lr_scale, or change "
        "the seed; collapse_action='warn' continues anyway."
    )


def train_cgn_mnist(config: TrainConfig, run_dir: str | os.PathLike[str], *, resume: bool = True) -> Path:
    """Train an MNIST CGN as ``config`` says, writing everything into ``run_dir``; return the exported checkpoint.

    When ``run_dir/checkpoints/latest.safetensors`` exists, training continues from it (the config may differ
    only in ``RESUMABLE_FIELDS``, e.g. more ``steps``) and gives bit for bit the same
    weights as an uninterrupted run. On Ctrl-C the run finishes its iteration, writes that checkpoint and raises
    ``KeyboardInterrupt``.

    Args:
        config: the recipe, e.g. ``get_preset("colored_mnist", data_root="data")``.
        run_dir: the run folder (created if needed); see the module documentation for its layout.
        resume: continue from the run folder's checkpoint. With ``False`` an existing checkpoint is an error.

    Returns:
        The path of ``final.safetensors``: load it with ``cfaug.load_backend("mnist", weights=path)``.

    Raises:
        MaskCollapseError: the masks collapsed and ``config.collapse_action == "raise"`` (after the stats line,
            a sample grid and a checkpoint of the collapsed state are written).
        ValueError: the run folder holds a run with another recipe, or ``resume=False`` and it holds a run.
        FeatureNetworkError: ``config.feature_net`` names ImageNet weights that are not available.

    Examples:
        >>> from cfaug.training import get_preset, train_cgn_mnist
        >>> config = get_preset("colored_mnist", data_root="data", steps=4000)  # doctest: +SKIP
        >>> path = train_cgn_mnist(config, "runs/colored")  # doctest: +SKIP
        >>> backend = cfaug.load_backend("mnist", weights=path)  # doctest: +SKIP
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` should be a TrainConfig, but got {type(config).__name__}.")
    folder = RunFolder(run_dir, kind=CHECKPOINT_KIND, writer="train_cgn_mnist")
    folder.refuse_unless_resuming(resume)
    folder.path.mkdir(parents=True, exist_ok=True)
    with training_scope(config.num_threads, config.device):
        run = _Run(config, folder)
        if folder.has_state():
            run.load_state()
        else:
            run.prepare_teacher()
        folder.start_stats(run.step)
        run.write_config()
        if run.step >= config.steps:
            return run.final_path if run.final_path.exists() else run.export()
        if run.step == 0:
            run.write_stats()  # the initial state, so that the stats start at step 0
            run.save_samples()
        run_steps(
            run,
            config,
            desc=f"cgn {config.variant}",
            unit="it",
            progress=config.progress,
            interrupted_message=(
                f"Training interrupted after iteration {{step}}; {folder.checkpoint_path} holds the state. "
                "Run the same command again to continue."
            ),
        )
        return run.export()
