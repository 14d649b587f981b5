"""The CGN paper's invariant classifier ensemble on ImageNet, and its config-driven training (``train_classifier``).

**Model** (notes 3.8). A backbone (torchvision ResNet-50, ImageNet-pretrained in the paper) without its final
``fc``, and three fresh linear heads on its pooled features: ``shape``, ``texture`` and ``background``. The model
returns a dict of logits: the three heads, their mean ``average`` (the ensemble's prediction on real images) and
``shape_texture``, the mean of the shape and texture heads (the prediction without the background head, used for
the Backgrounds Challenge). With ``frozen_bn`` the backbone's BatchNorm layers stay in eval mode while training, as
the authors did: the pretrained running statistics are kept (the affine weights still train).

**One training step** (the authors' ``train_classifier.py``):

1. a batch of real images ``(x, y)``: ``CE(average(x), y)``, backward;
2. a batch of counterfactual images ``(x', y_shape, y_texture, y_background)``: ``CE(shape(x'), y_shape) +
   CE(texture(x'), y_texture) + CE(background(x'), y_background)``, backward;
3. one SGD step (momentum 0.9, weight decay 1e-4) on the summed gradients; the learning rate is multiplied by
   0.1 every 15 epochs (the authors' code; its docstring says 30).

Both kinds of images get RandomResizedCrop and a horizontal flip, then ImageNet normalisation. Real images come
from an ImageFolder (``<root>/<class>/<image>``, classes in sorted folder order as torchvision numbers them);
counterfactuals from a dataset saved with ``cfaug generate`` (``target="all"`` gives the three labels).

**Determinism.** Which items step ``k`` uses is a function of ``(seed, k)`` alone: real images follow a seeded
permutation per epoch (the last partial batch is dropped), counterfactuals a continuous stream of seeded
permutations (each epoch sees fresh ones, as the authors' per-epoch resampling), and every image's random crop and
flip is drawn from a seed of its own position in that stream. So the data do not depend on the number of
processes or DataLoader workers, and a resumed run repeats the uninterrupted one bit for bit.

**Several processes** (``torchrun``). The ``batch_size`` is the global batch: each rank takes its slice of
every step's items and DistributedDataParallel averages the gradients, so with frozen BatchNorm a run on N
processes computes what one process computes (up to float rounding). Rank 0 writes the run folder.

**Run folder.**

.. code-block:: text

    run_dir/
      config.json                     the ClassifierConfig and what it resolved to (classes, steps, processes)
      stats.jsonl                     one JSON object per log interval (losses, batch accuracies, img/s) and per
                                      epoch (validation top-1/top-5 per output, when validation data is given)
      samples/first-batch.png         the first step's augmented real (top) and counterfactual (bottom) images
      checkpoints/latest.safetensors  the model, SGD state and step: what a resumed run continues from
      final.safetensors               the trained ensemble (``load_classifier``)

On Ctrl-C the run finishes its step, writes its checkpoint and raises ``KeyboardInterrupt`` (the DataLoader
workers ignore the signal and leave the stop to the main process); the same call continues it.

Examples:
    >>> config = ClassifierConfig(real_root="imagenet/train", counterfactual_root="cf_imagenet")  # doctest: +SKIP
    >>> final = train_classifier(config, "runs/ensemble")  # doctest: +SKIP
    >>> model = load_classifier(final)  # doctest: +SKIP
    >>> model(images)["shape"].shape  # doctest: +SKIP
    torch.Size([8, 1000])
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cfaug._utils import atomic_write
from cfaug.distributed import (
    all_gather_objects,
    all_reduce_sum,
    any_rank,
    barrier,
    check_same_across_ranks,
    device_for_rank,
    distributed_session,
    fail_together,
)
from cfaug.engine import (
    RunFolder,
    check_resumable,
    flatten_optimizer,
    prefixed,
    run_steps,
    training_scope,
    unflatten_optimizer,
    unprefixed,
)
from cfaug.models import classifiers as _classifiers
from cfaug.models.classifiers import *  # noqa: F403 (the networks' names, re-exported for old import paths)
from cfaug.models.classifiers import (
    HEADS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUTS,
    STATE_KIND,
    EnsembleClassifier,
    eval_transform,
    load_torchvision_weights,
    save_classifier,
    train_transform,
)
from cfaug.seeding import mix_seed
from cfaug.training.classifier_config import RESUMABLE_CLASSIFIER_FIELDS, ClassifierConfig
from cfaug.training.classifier_data import (
    _INIT_STREAM,
    _EvalItems,
    _ignore_interrupts,
    _image_folder,
    _Schedule,
    _StepBatches,
    _TrainItems,
)
from cfaug.version import __version__

# The networks' names are re-exported from cfaug.models.classifiers, where they now live (old import paths).
__all__ = [
    "RESUMABLE_CLASSIFIER_FIELDS",
    "ClassifierConfig",
    "ClassifierTrainer",
    "train_classifier",
    *_classifiers.__all__,
]


# ---------------------------------------------------------------------------------------------------- trainer
class ClassifierTrainer:
    """Trains the invariant ensemble as a ``ClassifierConfig`` says, in a run folder (see the module documentation).

    ``train_classifier(config, run_dir)`` is ``ClassifierTrainer(config, run_dir).fit()``; use the class to reach
    the trained model in memory (``trainer.model``, on every rank) after ``fit``.

    Args:
        config: the recipe.
        run_dir: the run folder (created if needed).
        resume: continue from the run folder's checkpoint; with ``False`` an existing checkpoint is an error.
    """

    def __init__(self, config: ClassifierConfig, run_dir: str | os.PathLike[str], *, resume: bool = True) -> None:
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"`config` should be a ClassifierConfig, but got {type(config).__name__}.")
        if not isinstance(resume, bool):
            raise TypeError(f"`resume` should be a bool, but got {type(resume).__name__}.")
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        #: the run folder (cfaug.engine); ``fit`` tells it whether this process writes.
        self.folder = RunFolder(self.run_dir, kind=STATE_KIND, writer="train_classifier")
        self.checkpoint_path = self.folder.checkpoint_path
        self.final_path = self.folder.final_path
        self.stats_path = self.folder.stats_path
        #: the trained ensemble (unwrapped), set by ``fit``.
        self.model: EnsembleClassifier | None = None
        self.step = 0
        self.train_seconds = 0.0
        self.last_validation: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------- entry point
    def fit(self) -> Path:
        """Train (or resume, or just export a finished run); return the path of ``final.safetensors``.

        Under torchrun, every process calls this; the process group is joined (and left) here unless the
        caller already initialised one.

        Raises:
            ValueError: the run folder holds a run with another recipe, or ``resume=False`` and it holds a run,
                or the data do not fit the recipe (too few images, class counts that differ).
            FileNotFoundError: a data folder is missing or not in the expected layout; pretrained weights are
                not on this machine.
            KeyboardInterrupt: Ctrl-C; the step in progress was finished and checkpointed.
        """
        config = self.config
        device = torch.device(config.device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        with distributed_session(backend) as info:
            self.info = info
            self.folder.is_main = info.is_main
            self.device = device_for_rank(device, info)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            with training_scope(config.num_threads, self.device):
                # Every step of the setup that can fail on one rank only (a missing folder, a bad checkpoint)
                # runs before the first collective that not all ranks would reach.
                if config.download and config.backbone_weights is not None:
                    # One download per machine; the other processes then find the file in the hub cache.
                    with fail_together("downloading the backbone weights"):
                        if info.local_rank == 0:
                            load_torchvision_weights(config.backbone, config.backbone_weights, download=True)
                with fail_together("setting up the run"):
                    self._setup()
                self.ddp: nn.Module = self.model
                if info.is_distributed:
                    device_ids = [self.device.index] if self.device.type == "cuda" else None
                    self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
                return self._train()

    # ------------------------------------------------------------------------------------------------- setup
    def _setup(self) -> None:
        config, info = self.config, self.info
        configs = all_gather_objects(config.to_dict())
        if any(other != configs[0] for other in configs):
            raise ValueError("The processes of the job were given different configs; give every rank the same.")
        self.folder.refuse_unless_resuming(self.resume)
        batch, cf_batch = config.batch_size, config.cf_batch_size
        for name, value in (("batch_size", batch), ("counterfactual images per step", cf_batch)):
            if value % info.world_size:
                raise ValueError(
                    f"The {name} ({value}) should be divisible by the number of processes ({info.world_size}): "
                    "every process takes an equal share of each step's images."
                )
        self.real = _image_folder(config.real_root, "real_root")
        self.class_names = list(self.real.classes)
        self.num_classes = len(self.class_names)
        if len(self.real) < batch:
            raise ValueError(f"`real_root` holds {len(self.real)} images, fewer than one batch (`batch_size` {batch}).")
        self.counterfactual = self._counterfactual_dataset(config.counterfactual_root, "counterfactual_root")
        num_cf = len(self.counterfactual) if self.counterfactual is not None else 0
        self.schedule = _Schedule(len(self.real), num_cf, batch, cf_batch, config.seed)
        self.total_steps = config.epochs * self.schedule.steps_per_epoch

        # The initialisation draws from the global RNG (nn.init); seed it so the run depends on config.seed only.
        torch.manual_seed(mix_seed(config.seed, _INIT_STREAM))
        model = EnsembleClassifier(config.backbone, self.num_classes, frozen_bn=config.frozen_bn)
        self.weights_description = "random init"
        if config.backbone_weights is not None:
            state, self.weights_description = load_torchvision_weights(
                config.backbone,
                config.backbone_weights,
                download=config.download,
                check_hash=config.check_hash,
                progress=config.progress and info.is_main,
            )
            model.load_backbone_state(state)
        self.model = model.to(self.device).train()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        if self.folder.has_state():
            self._load_state()
        self.folder.start_stats(self.step)
        self.folder.write_config({"config": config.to_dict(), "resolved": self.resolved()})

    def _counterfactual_dataset(self, root: str | None, arg: str) -> Any:
        if root is None:
            return None
        from cfaug.datasets.counterfactual import SavedCounterfactualDataset

        if not Path(root).expanduser().is_dir():
            raise FileNotFoundError(
                f"`{arg}` folder {root!r} does not exist; it should be a dataset saved by `cfaug generate` "
                "(manifest.json, labels.csv and images/ or shards/)."
            )
        dataset = SavedCounterfactualDataset(Path(root).expanduser(), target="all")
        if dataset.manifest["num_classes"] != self.num_classes:
            raise ValueError(
                f"The counterfactuals in {root!r} have {dataset.manifest['num_classes']} classes, but the real "
                f"images in {self.config.real_root!r} have {self.num_classes} class folders; both must use the same "
                "class indices (ImageNet: 1000 folders, sorted, as torchvision numbers them)."
            )
        return dataset

    def resolved(self) -> dict[str, Any]:
        """What the config resolved to on this machine; part of config.json and the exported checkpoint."""
        import torchvision

        return {
            "num_classes": self.num_classes,
            "real_images": len(self.real),
            "counterfactual_images": len(self.counterfactual) if self.counterfactual is not None else 0,
            "steps_per_epoch": self.schedule.steps_per_epoch,
            "total_steps": self.total_steps,
            "cf_batch_size": self.config.cf_batch_size,
            "processes": self.info.world_size,
            "backbone_weights": self.weights_description,
            "cfaug": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_state(self) -> None:
        optimizer_tensors, optimizer_meta = flatten_optimizer("optimizer", self.optimizer)
        tensors = {**prefixed("model", self.model), **optimizer_tensors}
        meta = {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "config": self.config.to_dict(),
            "optimizer": optimizer_meta,
        }
        self.folder.save_state(tensors, meta)  # rank 0 writes; the meta gets the folder's kind first

    def _load_state(self) -> None:
        checkpoint = self.folder.load_state(map_location=self.device)
        meta = checkpoint.meta
        check_resumable(ClassifierConfig.from_dict(meta["config"]), self.config, RESUMABLE_CLASSIFIER_FIELDS)
        tensors = checkpoint.state_dict
        self.model.load_state_dict(unprefixed("model", tensors), strict=True)
        self.optimizer.load_state_dict(unflatten_optimizer("optimizer", tensors, meta["optimizer"]))
        self.step = int(meta["step"])
        self.train_seconds = float(meta.get("train_seconds", 0.0))

    # ------------------------------------------------------------------------------------------------ training
    def _loader(self) -> DataLoader:
        transform = train_transform(self.config.image_size)
        items = _TrainItems(self.real, self.counterfactual, transform)
        sampler = _StepBatches(self.schedule, self.step, self.total_steps, self.info.rank, self.info.world_size)
        return DataLoader(
            items,
            batch_sampler=sampler,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_interrupts,
        )

    def _train(self) -> Path:
        config, info = self.config, self.info
        if self.step >= self.total_steps:
            return self._finish(export=not self.final_path.is_file())
        self._real_share = config.batch_size // info.world_size
        # Sums of the interval, kept on the device (no synchronisation per step): real loss, real hits, real
        # images, counterfactual loss, hits of the shape, texture and background heads.
        self._sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        self._interval_start, self._interval_steps = time.perf_counter(), 0
        self.ddp.train()
        self._batches = iter(self._loader())
        # The epochs are one run of steps to the engine; the first batch is the only sample sheet.
        cadence = SimpleNamespace(
            steps=self.total_steps,
            log_every=config.log_every,
            sample_every=self.total_steps,
            checkpoint_every=config.checkpoint_every,
        )
        try:
            run_steps(
                self,
                cadence,
                desc="classifier",
                unit="step",
                progress=config.progress and info.is_main,
                interrupted_message=f"Training interrupted after step {{step}}; {self.checkpoint_path} holds the "
                "state. Run the same command again to continue.",
                # Every rank stops at the same step, even when Ctrl-C reached only some of them.
                stop_requested=lambda flag: any_rank(flag, self.device),
                after_checkpoint=barrier,
            )
        finally:
            del self._batches  # shuts the DataLoader workers down, also after Ctrl-C
        return self._finish()

    # ---------------------------------------------------------------------------------- the engine's SteppedRun
    def train_step(self) -> dict[str, float]:
        """Train one step of the next batch; at the end of an epoch also log, validate and checkpoint."""
        fetched = time.perf_counter()
        images, labels = next(self._batches)
        # train_seconds counts the step, not the wait for the DataLoader (the engine times both).
        self.train_seconds -= time.perf_counter() - fetched
        config, real_share = self.config, self._real_share
        if self.step == 0 and self.info.is_main:
            self._save_first_batch(images[:real_share], images[real_share:])
        epoch = self.step // self.schedule.steps_per_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * config.lr_gamma ** (epoch // config.lr_step_epochs)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        self._sums += self._train_step(images, labels, real_share)
        self.step += 1
        self._interval_steps += 1
        if self.step % self.schedule.steps_per_epoch == 0:
            self.log()
            self._validate_and_log(self.step // self.schedule.steps_per_epoch)
            self.ddp.train()
            if self.step % config.checkpoint_every and self.step < self.total_steps:
                # Every epoch ends with a checkpoint (the engine writes the ones of its own cadence).
                self.save_state()
                barrier()
        return {}

    def accumulate(self, values: dict[str, float], seconds: float) -> None:
        """Nothing: ``train_step`` adds to the interval's sums on the device, without a synchronisation."""

    def progress_postfix(self, values: dict[str, float]) -> dict[str, str]:
        """Nothing: the progress bar shows steps only."""
        return {}

    def log(self) -> None:
        """Write the interval's stats line (all ranks reduce; rank 0 writes) and start a new interval."""
        if self._interval_steps == 0:  # the end of the epoch logged this step already
            return
        self._log(self._sums, self._interval_steps, time.perf_counter() - self._interval_start)
        self._sums.zero_()
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    def save_samples(self) -> None:
        """Nothing: the first step's batch is the run's one sample sheet (``samples/first-batch.png``)."""

    def save_state(self) -> None:
        """Write the training state (rank 0)."""
        self._save_state()

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor, real_share: int) -> torch.Tensor:
        """One optimiser step: the real batch, then the counterfactual batch, then SGD; return the sums to log."""
        real_x, real_y = images[:real_share], labels[:real_share, 0]
        cf_x, cf_y = images[real_share:], labels[real_share:]
        has_cf = len(cf_x) > 0
        # The first backward must not all-reduce the gradients yet: DDP sums them once, after the second.
        first = self.ddp.no_sync() if has_cf and isinstance(self.ddp, nn.parallel.DistributedDataParallel) else None
        with first if first is not None else contextlib.nullcontext():
            out = self.ddp(real_x)
            loss_real = F.cross_entropy(out["average"], real_y)
            loss_real.backward()
        stats = torch.zeros(7, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            stats[0] = loss_real.detach() * len(real_x)
            stats[1] = (out["average"].argmax(1) == real_y).sum()
            stats[2] = len(real_x)
        if has_cf:
            out_cf = self.ddp(cf_x)
            losses = [F.cross_entropy(out_cf[head], cf_y[:, k]) for k, head in enumerate(HEADS)]
            loss_cf = losses[0] + losses[1] + losses[2]
            loss_cf.backward()
            with torch.no_grad():
                stats[3] = loss_cf.detach() * len(cf_x)
                for k, head in enumerate(HEADS):
                    stats[4 + k] = (out_cf[head].argmax(1) == cf_y[:, k]).sum()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def _log(self, sums: torch.Tensor, steps: int, seconds: float) -> None:
        config = self.config
        totals = all_reduce_sum(sums.clone()).cpu()
        real_images = float(totals[2])
        cf_images = float(config.cf_batch_size * steps)
        images_per_second = (config.batch_size + config.cf_batch_size) * steps / max(seconds, 1e-9)
        record: dict[str, Any] = {
            "step": self.step,
            "epoch": round(self.step / self.schedule.steps_per_epoch, 4),
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss_real": float(totals[0]) / max(real_images, 1.0),
            "batch_top1_real_average": float(totals[1]) / max(real_images, 1.0),
            "train_seconds": round(self.train_seconds, 3),
            "img_per_s": round(images_per_second, 2),
        }
        if cf_images:
            record["loss_counterfactual"] = float(totals[3]) / cf_images
            for k, head in enumerate(HEADS):
                record[f"batch_top1_cf_{head}"] = float(totals[4 + k]) / cf_images
        self.folder.append_stats(record)

    def _save_first_batch(self, real: torch.Tensor, counterfactual: torch.Tensor) -> None:
        """A picture of what the network sees: the first step's augmented images, de-normalised."""
        from PIL import Image
        from torchvision.utils import make_grid

        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rows = [part[:8] * std + mean for part in (real, counterfactual) if len(part)]
        pictures = [make_grid(row.clamp(0, 1), nrow=8, padding=2, pad_value=1.0) for row in rows]
        width = max(p.shape[2] for p in pictures)
        canvas = torch.cat([F.pad(p, (0, width - p.shape[2]), value=1.0) for p in pictures], dim=1)
        pixels = canvas.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        with atomic_write(self.folder.samples_dir / "first-batch.png") as handle:
            handle.write(buffer.getvalue())

    # ---------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def _evaluate(self, dataset: Any, outputs: tuple[str, ...], label_column: dict[str, int]) -> torch.Tensor:
        """Top-1 and top-5 hits per output over this rank's share of ``dataset``, summed over the ranks."""
        info = self.info
        indices = list(range(info.rank, len(dataset), info.world_size))
        items = _EvalItems(dataset, indices, eval_transform(self.config.image_size))
        batch_size = max(1, 2 * self.config.batch_size // info.world_size)
        loader = DataLoader(items, batch_size=batch_size, num_workers=self.config.num_workers)
        counts = torch.zeros(len(outputs) * 2 + 1, dtype=torch.float64, device=self.device)
        self.model.eval()
        for images, labels in loader:
            logits = self.model(images.to(self.device))
            labels = labels.to(self.device)
            for k, name in enumerate(outputs):
                target = labels[:, label_column[name]]
                top = logits[name].topk(min(5, logits[name].shape[1]), dim=1).indices
                counts[2 * k] += (top[:, 0] == target).sum()
                counts[2 * k + 1] += (top == target[:, None]).any(dim=1).sum()
            counts[-1] += len(images)
        return all_reduce_sum(counts).cpu()

    def _validate_and_log(self, epoch: int) -> None:
        config = self.config
        record: dict[str, Any] = {}
        if config.val_root is not None:
            if not hasattr(self, "_val_real"):
                self._val_real = _image_folder(config.val_root, "val_root")
                if len(self._val_real.classes) != self.num_classes:
                    raise ValueError(
                        f"`val_root` has {len(self._val_real.classes)} class folders, `real_root` {self.num_classes}."
                    )
            counts = self._evaluate(self._val_real, OUTPUTS, dict.fromkeys(OUTPUTS, 0))
            total = max(float(counts[-1]), 1.0)
            for k, name in enumerate(OUTPUTS):
                record[f"val_top1_{name}"] = float(counts[2 * k]) / total
                record[f"val_top5_{name}"] = float(counts[2 * k + 1]) / total
        if config.counterfactual_val_root is not None:
            if not hasattr(self, "_val_cf"):
                self._val_cf = self._counterfactual_dataset(config.counterfactual_val_root, "counterfactual_val_root")
            counts = self._evaluate(self._val_cf, HEADS, {head: k for k, head in enumerate(HEADS)})
            total = max(float(counts[-1]), 1.0)
            for k, head in enumerate(HEADS):
                record[f"cf_val_top1_{head}"] = float(counts[2 * k]) / total
                record[f"cf_val_top5_{head}"] = float(counts[2 * k + 1]) / total
        if not record:
            return
        self.last_validation = record
        self.folder.append_stats({"step": self.step, "epoch": epoch, **record})

    # ------------------------------------------------------------------------------------------------- export
    def _finish(self, export: bool = True) -> Path:
        """Check the ranks agree, write final.safetensors (rank 0), and return its path on every rank."""
        check_same_across_ranks(self.model)
        with fail_together("exporting the classifier"):
            if self.info.is_main and export:
                exported = EnsembleClassifier(**self.model.arch_config())
                exported.load_state_dict({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                save_classifier(
                    exported,
                    self.final_path,
                    class_names=self.class_names,
                    image_size=self.config.image_size,
                    recipe={"config": self.config.to_dict(), "resolved": self.resolved()},
                    training={"steps": self.step, "train_seconds": round(self.train_seconds, 1)},
                    metrics=self.last_validation,
                )
        barrier()
        self.model.eval()
        return self.final_path


def train_classifier(config: ClassifierConfig, run_dir: str | os.PathLike[str], *, resume: bool = True) -> Path:
    """Train the invariant ensemble as ``config`` says, in ``run_dir``; return the exported checkpoint's path.

    When ``run_dir/checkpoints/latest.safetensors`` exists, training continues from it (the config may differ only
    in ``RESUMABLE_CLASSIFIER_FIELDS``, e.g. more ``epochs``) and computes bit for bit what the uninterrupted run
    computes on the same hardware. Under torchrun every process calls this function with the same config.

    Args:
        config: the recipe.
        run_dir: the run folder (see the module documentation for its layout).
        resume: continue from the run folder's checkpoint; with ``False`` an existing checkpoint is an error.

    Returns:
        The path of ``final.safetensors``: load it with ``load_classifier``.

    Raises:
        ValueError, FileNotFoundError: see ``ClassifierTrainer.fit``.
        KeyboardInterrupt: Ctrl-C; the step in progress was finished and checkpointed, and the same call
            continues the run.
    """
    return ClassifierTrainer(config, run_dir, resume=resume).fit()


# The command line lives in cfaug.cli.train_classifier; these names stay importable from here for old code, loaded
# on first use because that module imports this one.
_CLI_NAMES = ("add_train_classifier_arguments", "config_from_args", "run_train_classifier")


def __getattr__(name: str) -> Any:
    if name in _CLI_NAMES:
        from cfaug.cli import train_classifier as cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
