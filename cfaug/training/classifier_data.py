"""The classifier's data pipeline: which items every step uses, their seeded augmentation, and the loader's workers.

Split from ``cfaug.training.classifier``: the schedule makes the data a function of ``(seed, step)`` alone, so a
resumed run repeats the uninterrupted one bit for bit whatever the number of processes or workers.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from cfaug.seeding import mix_seed

# Streams of the run seed: each kind of randomness has its own, so changing one leaves the others untouched.
_INIT_STREAM, _REAL_ORDER_STREAM, _CF_ORDER_STREAM, _REAL_AUG_STREAM, _CF_AUG_STREAM = 1, 2, 3, 4, 5


def _as_image(image: Any) -> Any:
    """Tensors from a counterfactual dataset are images; say so, so v2 transforms treat them as such."""
    if isinstance(image, torch.Tensor):
        from torchvision import tv_tensors

        return tv_tensors.Image(image)
    return image


def _image_folder(root: str, arg: str) -> Any:
    from torchvision.datasets import ImageFolder

    path = Path(root).expanduser()
    layout = f"an ImageFolder: {path}/<class>/<image>.jpg, one sub-folder per class"
    if not path.is_dir():
        raise FileNotFoundError(f"`{arg}` folder {str(path)!r} does not exist; it should be {layout}.")
    try:
        return ImageFolder(str(path))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"`{arg}` folder {str(path)!r} is not {layout} ({error}).") from error


class _Schedule:
    """Which items every step uses, and the seed of each item's augmentation: a function of (seed, step) only."""

    def __init__(self, num_real: int, num_cf: int, batch_size: int, cf_batch_size: int, seed: int) -> None:
        self.num_real, self.num_cf = num_real, num_cf
        self.batch_size, self.cf_batch_size = batch_size, cf_batch_size
        self.steps_per_epoch = num_real // batch_size
        self._seeds = {
            kind: mix_seed(seed, stream) for kind, stream in (("r", _REAL_ORDER_STREAM), ("c", _CF_ORDER_STREAM))
        }
        self._aug = {"r": mix_seed(seed, _REAL_AUG_STREAM), "c": mix_seed(seed, _CF_AUG_STREAM)}
        self._permutations: dict[tuple[str, int], torch.Tensor] = {}

    def _permutation(self, kind: str, epoch: int) -> torch.Tensor:
        key = (kind, epoch)
        if key not in self._permutations:
            while len(self._permutations) > 3:
                self._permutations.pop(next(iter(self._permutations)))
            generator = torch.Generator().manual_seed(mix_seed(self._seeds[kind], epoch))
            size = self.num_real if kind == "r" else self.num_cf
            self._permutations[key] = torch.randperm(size, generator=generator)
        return self._permutations[key]

    def real(self, step: int) -> list[int]:
        """The real items of ``step``: batch ``step % steps_per_epoch`` of epoch ``step // steps_per_epoch``."""
        epoch, j = divmod(step, self.steps_per_epoch)
        return self._permutation("r", epoch)[j * self.batch_size : (j + 1) * self.batch_size].tolist()

    def counterfactual(self, step: int) -> list[int]:
        """The counterfactual items of ``step``: the next ones of an endless stream of permutations."""
        items = []
        for position in range(step * self.cf_batch_size, (step + 1) * self.cf_batch_size):
            epoch, offset = divmod(position, self.num_cf)
            items.append(int(self._permutation("c", epoch)[offset]))
        return items

    def keys(self, step: int, rank: int, world_size: int) -> list[tuple[str, int, int]]:
        """This rank's slice of the step's items, as ``(source, index, augmentation seed)``: real ones first."""
        keys = []
        for kind, items, per_step in (
            ("r", self.real(step), self.batch_size),
            ("c", self.counterfactual(step) if self.cf_batch_size else [], self.cf_batch_size),
        ):
            share = per_step // world_size
            for j in range(rank * share, (rank + 1) * share):
                # Seeded by the position in the stream, so a repeated image gets a fresh crop in every epoch.
                keys.append((kind, items[j], mix_seed(self._aug[kind], step * per_step + j)))
        return keys


class _StepBatches(Sampler):
    """Batch sampler: one list of keys per step, from ``start`` to ``stop``."""

    def __init__(self, schedule: _Schedule, start: int, stop: int, rank: int, world_size: int) -> None:
        self.schedule, self.start, self.stop = schedule, start, stop
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        for step in range(self.start, self.stop):
            yield self.schedule.keys(step, self.rank, self.world_size)

    def __len__(self) -> int:
        return self.stop - self.start


class _TrainItems(Dataset):
    """Real and counterfactual items, each augmented with its own seed; labels as ``(shape, texture, background)``."""

    def __init__(self, real: Any, counterfactual: Any, transform: Any) -> None:
        self.real, self.counterfactual, self.transform = real, counterfactual, transform

    def __len__(self) -> int:
        return len(self.real) + (len(self.counterfactual) if self.counterfactual is not None else 0)

    def __getitem__(self, key: tuple[str, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        source, index, seed = key
        if source == "r":
            image, label = self.real[index]
            labels = (label, label, label)
        else:
            image, labels = self.counterfactual[index]
        # torchvision's v2 transforms draw from the global CPU generator; seeding it per item makes the crop and
        # flip a function of the item's key, whatever process or worker applies them.
        torch.random.default_generator.manual_seed(seed)
        return self.transform(_as_image(image)), torch.tensor(labels, dtype=torch.int64)


class _EvalItems(Dataset):
    def __init__(self, dataset: Any, indices: list[int], transform: Any) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[self.indices[k]]
        labels = label if isinstance(label, tuple) else (label, label, label)
        return self.transform(_as_image(image)), torch.tensor(labels, dtype=torch.int64)


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader worker setup: Ctrl-C reaches the whole process group, but only the main process acts on it.

    A worker killed by the signal would make the main process fail with "DataLoader worker exited unexpectedly"
    before it could finish its step and save the run.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
