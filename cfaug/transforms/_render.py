"""The one place that turns counterfactual parameters into images, plus the state behind it.

* ``BackendHandle`` holds the backend: a loaded ``Backend`` or a name and weights that are
  loaded on first use, once per process, so that DataLoader workers each build their own model and nothing
  heavy is pickled. It moves the backend to the device of the images it is given.
* ``ComponentBank`` serves per-sample requests from components generated in batches.
* ``render`` composes counterfactuals from generated parts and, where a class is ``-1``, parts of the
  real image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kornia.color
import torch
from kornia.geometry.transform import resize

from cfaug.backends.base import MECHANISMS, Backend
from cfaug.functional import composite
from cfaug.registry import get_backend_class
from cfaug.seeding import draw_seeds, mix_seed
from cfaug.transforms._params import FROM_REAL

#: Images more than this factor larger or smaller than the backend's (either side) get a warning.
OUT_OF_DOMAIN_FACTOR = 2

#: ``take(mechanism, classes, seeds) -> (components, seeds actually used)``: where generated parts come from.
Take = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BackendHandle:
    """A backend that is loaded lazily in each process and follows the device of the images.

    Args:
        backend: a backend name from ``cfaug.list_backends``, or a loaded backend.
        weights: the weights of a backend given by name (``None`` for its default).
        generator: optional RNG for the transform's draws; see ``generator``.

    Pickling keeps the name, weights and generator; a model loaded from a name and the component bank are
    left behind and rebuilt in the process that unpickles. A backend given as an instance pickles with it.
    """

    def __init__(
        self,
        backend: str | Backend,
        weights: str | os.PathLike[str] | None = None,
        generator: torch.Generator | None = None,
    ):
        if isinstance(backend, Backend):
            if weights is not None:
                raise ValueError(
                    "`weights` selects the weights of a backend given by name, but `backend` is an already loaded "
                    f"{type(backend).__name__}; pass weights=None, or backend={backend.name!r} with the weights."
                )
            self.name = backend.name
            self.weights = backend.weights_name
            self._instance: Backend | None = backend
            self._backend_cls: type[Backend] | None = None
        elif isinstance(backend, str):
            # Resolving the class now reports an unknown name at construction. Keeping the class (pickled by
            # reference) lets a spawned worker rebuild the backend even if its registry lacks the name.
            self._backend_cls = get_backend_class(backend)
            self.name = backend
            self.weights = weights
            self._instance = None
        else:
            raise TypeError(
                f"`backend` should be a backend name (str) or a cfaug.Backend, but got {type(backend).__name__}."
            )
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise TypeError(f"`weights` should be a name, a path or None, but got {type(weights).__name__}.")
        self._base_generator: torch.Generator | None = generator
        self._warned_domain = False
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._model: Backend | None = self._instance
        self._device: torch.device | None = None if self._instance is None else self._instance.device
        self._bank: ComponentBank | None = None
        self._generator: torch.Generator | None = self._base_generator

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A model loaded from a name is rebuilt where it is used; a bank is per process by design.
        state.update(_pid=None, _model=self._instance, _bank=None, _generator=None)
        if self._instance is None:
            state["_device"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._generator = self._base_generator

    def _enter_process(self) -> None:
        """Start fresh state in a new process (a forked or spawned DataLoader worker)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._pid is not None:
            # A fork copied this handle: the model may hold another process's CUDA state and the bank would
            # hand every worker the same components, so both are rebuilt here.
            self._reset_process_state()
        self._pid = pid
        worker = torch.utils.data.get_worker_info()
        if self._base_generator is not None and worker is not None:
            # Every worker inherits the same generator state; mixing in the worker's seed (which the DataLoader
            # derives from its own seed, afresh for each epoch's workers unless they persist) gives each worker
            # its own stream, reproducible when the DataLoader is seeded.
            inherited = int(torch.randint(0, 2**62, (1,), generator=self._base_generator))
            self._generator = torch.Generator().manual_seed(mix_seed(inherited, worker.seed))

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Replace the RNG of the draws, in this process as it is."""
        self._base_generator = generator
        self._generator = generator

    @property
    def generator(self) -> torch.Generator | None:
        """The RNG of this process: the given generator (per-worker streams in workers), or ``None`` (global)."""
        self._enter_process()
        return self._generator

    def backend(self, device: torch.device | None = None) -> Backend:
        """The backend, loaded on first use in this process and moved to ``device`` when given."""
        self._enter_process()
        if self._model is None:
            # Only a handle built from a name has no model yet, so the class is known.
            backend_cls: Any = self._backend_cls
            self._model = backend_cls.from_pretrained(self.weights)
            self._device = self._model.device
        if device is not None and device != self._device:
            self._model.to(device)
            self._device = device
            self._bank = None
        # Generation must not depend on the batch (BatchNorm statistics), so the backend runs in eval mode.
        if self._model.training:
            self._model.eval()
        return self._model

    def check_domain(self, backend: Backend, height: int, width: int, owner: str) -> None:
        """Warn, once per transform, when images are more than 2x larger or smaller than the backend's.

        A generator trained at one size gives blurry or aliased parts far from it, and a mask estimator sees
        objects at a scale it never learnt; the output is still made, so this is a warning, not an error.
        """
        if self._warned_domain:
            return
        size = backend.image_size
        if max(height, width) <= OUT_OF_DOMAIN_FACTOR * size and OUT_OF_DOMAIN_FACTOR * min(height, width) >= size:
            return
        self._warned_domain = True
        warnings.warn(
            f"{owner} got an image of {height}x{width} pixels, but backend {backend.name!r} (weights "
            f"{backend.weights_name!r}) makes {size}x{size} images: more than {OUT_OF_DOMAIN_FACTOR}x away, so its "
            "parts are resized that far and may look blurry or wrong. Use weights made for images of this size "
            "(see the Backends page of the documentation, docs/api/backends.md) or resize the images first. "
            "This warning is shown once per transform.",
            UserWarning,
            stacklevel=4,
        )

    def bank(self, size: int, reuse: int) -> ComponentBank:
        """The component bank of this process, rebuilt when its settings change."""
        self._enter_process()
        if self._bank is None or (self._bank.size, self._bank.reuse) != (size, reuse):
            self._bank = ComponentBank(size, reuse)
        return self._bank


@dataclass
class _Pool:
    components: torch.Tensor  # (size, C, H, W) parts of one mechanism and class
    seeds: torch.Tensor  # (size,) the seed each component was generated with
    order: list[int]  # entries still to hand out in this round, a random permutation
    rounds_left: int  # further rounds (fresh permutations) before the pool is regenerated


class ComponentBank:
    """Per-mechanism, per-class stores of generated components for per-sample requests.

    A request for a part of class ``c`` takes a random stored component of class ``c``. Each class's store holds
    ``size`` components generated in one batched ``backend.generate`` call with fresh seeds. The store is handed
    out in ``reuse`` rounds, each a fresh random permutation of its components, so every component is used
    exactly ``reuse`` times (never twice in a row within a round); then the store is regenerated.
    The mechanisms are independent, so a counterfactual combines parts from different stores; with
    ``reuse=1`` every part of every counterfactual is fresh.

    Memory: ``size * C * H * W * 4`` bytes per (mechanism, class) that has been requested.
    """

    def __init__(self, size: int, reuse: int):
        self.size = size
        self.reuse = reuse
        self._pools: dict[tuple[str, int], _Pool] = {}
        #: number of batched generate calls made so far (one per store refill).
        self.refills = 0

    def _permutation(self, generator: torch.Generator | None) -> list[int]:
        return torch.randperm(self.size, generator=generator).tolist()

    def _refill(self, backend: Backend, mechanism: str, cls: int, generator: torch.Generator | None) -> _Pool:
        seeds = draw_seeds(self.size, generator)
        classes = torch.full((self.size,), cls, dtype=torch.int64)
        components = backend.generate(mechanism, classes, seeds)
        pool = _Pool(components, seeds, self._permutation(generator), self.reuse - 1)
        self._pools[(mechanism, cls)] = pool
        self.refills += 1
        return pool

    def take(
        self, backend: Backend, mechanism: str, classes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hand out one stored component per class in ``classes``, and the seed each was generated with."""
        parts, seeds = [], []
        for cls in classes.tolist():
            pool = self._pools.get((mechanism, cls))
            if pool is None or (not pool.order and pool.rounds_left == 0):
                pool = self._refill(backend, mechanism, cls, generator)
            elif not pool.order:
                pool.order = self._permutation(generator)
                pool.rounds_left -= 1
            index = pool.order.pop()
            parts.append(pool.components[index : index + 1])
            seeds.append(pool.seeds[index : index + 1])
        if len(parts) == 1:
            return parts[0], seeds[0]
        return torch.cat(parts), torch.cat(seeds)


def direct_take(backend: Backend) -> Take:
    """Generate each part with the seeds of the parameters, at the size of the request."""

    def take(mechanism: str, classes: torch.Tensor, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return backend.generate(mechanism, classes, seeds), seeds

    return take


def resize_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(B, C, h, w)`` images to ``size`` bilinearly (a no-op at the same size)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    factor = max(images.shape[-2] / size[0], images.shape[-1] / size[1])
    # Bilinear sampling reads every source pixel while it shrinks by less than 2, so it needs no prefilter
    # there; beyond that it would alias, and kornia's (slower) Gaussian antialiasing is worth its cost.
    return resize(images, size, interpolation="bilinear", align_corners=False, antialias=factor >= 2)


def render(
    backend: Backend, real: torch.Tensor, params: dict[str, torch.Tensor], take: Take
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Compose counterfactuals ``m * f + (1 - m) * b`` from generated parts and parts of the real images.

    For each mechanism, a class ``>= 0`` generates that part (through ``take``); ``-1`` takes it from the real
    image: the mask from ``backend.estimate_mask``, the foreground or background from the real pixels. When all
    three parts are generated, the composite is made at the backend's size and then resized (the backend's own
    image); otherwise the generated parts are resized to the real image's size first.

    Samples whose shape is generated and samples that keep the real shape (``shape="mixed"``) are rendered as
    two groups. Grayscale images for an RGB backend are rendered in RGB (the real image replicated to three
    channels, which is also what the mask estimator sees) and come back as the luma of the composite.

    Args:
        backend: the backend, on the device of ``real``.
        real: the real images of the samples to replace, ``(n, C, H, W)`` float in [0, 1], with ``C`` the
            backend's channels, or 1 for an RGB backend.
        params: ``(n,)`` CPU tensors ``shape``, ``texture``, ``background`` and ``seed_<mechanism>``.
        take: where generated parts come from (``direct_take`` or a bank).

    Returns:
        The counterfactuals, ``(n, C, H, W)`` in the dtype of ``real``, and the seed each generated part
        was made with, per mechanism.

    Raises:
        ValueError: within one kind of shape, a mechanism mixes generated and real parts across samples, or a
            part must come from the real image's mask and the backend has no mask estimator.
    """
    if real.shape[1] == 1 and backend.channels == 3:
        # ITU-R 601 luma (0.299, 0.587, 0.114), as PIL's convert("L"): a gray pixel kept real stays the same.
        rgb, seeds_used = render(backend, real.expand(-1, 3, -1, -1), params, take)
        return kornia.color.rgb_to_grayscale(rgb), seeds_used
    real_shape = params["shape"] == FROM_REAL
    if bool(real_shape.any()) and not bool(real_shape.all()):
        return _render_groups(backend, real, params, take, real_shape)
    size = (real.shape[-2], real.shape[-1])
    generated: dict[str, torch.Tensor] = {}
    seeds_used: dict[str, torch.Tensor] = {}
    for mechanism in MECHANISMS:
        from_real = int((params[mechanism] == FROM_REAL).sum())
        if from_real == len(real):
            continue
        if from_real:
            raise ValueError(
                f"The {mechanism} class should be -1 (from the real image) for all replaced samples or for none, "
                f"but got {params[mechanism].tolist()}."
            )
        part, seeds_used[mechanism] = take(mechanism, params[mechanism], params[f"seed_{mechanism}"])
        generated[mechanism] = part.to(real.dtype)
    if len(generated) == len(MECHANISMS):
        image = composite(generated["shape"], generated["texture"], generated["background"])
        return resize_to(image, size), seeds_used
    if "shape" in generated:
        mask = resize_to(generated["shape"], size)
    else:
        if not backend.has_mask_estimator:
            raise ValueError(f"Backend {backend.name!r} has no mask estimator, so the real object's shape is unknown.")
        with torch.no_grad():
            mask = resize_to(backend.estimate_mask(real).to(real.dtype), size)
    foreground = resize_to(generated["texture"], size) if "texture" in generated else real
    background = resize_to(generated["background"], size) if "background" in generated else real
    return composite(mask, foreground, background), seeds_used


def _render_groups(
    backend: Backend, real: torch.Tensor, params: dict[str, torch.Tensor], take: Take, real_shape: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``render`` the samples that keep the real shape and those whose shape is generated apart, then merge."""
    out = torch.empty_like(real)
    seeds_used: dict[str, torch.Tensor] = {}
    for rows in (real_shape.nonzero()[:, 0], (~real_shape).nonzero()[:, 0]):
        images, seeds = render(backend, real[rows.to(real.device)], {k: v[rows] for k, v in params.items()}, take)
        out[rows.to(real.device)] = images
        for mechanism, used in seeds.items():
            # Rows of the other group keep their drawn seed; the record hides it where the part is real.
            seeds_used.setdefault(mechanism, params[f"seed_{mechanism}"].clone())[rows] = used
    return out, seeds_used
