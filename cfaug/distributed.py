"""Running cfaug with several processes under ``torchrun``: ranks, process groups, work splits, checks.

``torchrun`` starts one process per device and tells each its place through environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). This module reads them, opens and closes the
process group, and provides the few collective steps cfaug needs:

* ``distributed_session``: a context manager that joins the process group when the process was started by
  torchrun (and leaves it on exit), and does nothing in a plain single process, so the same code runs both ways;
* ``rank_range``: a contiguous, balanced share of an index range for one rank, cut on a grid (the chunk grid of
  ``CounterfactualDataset.save``, so that the files written are the very files a single process writes);
* ``save_counterfactuals_distributed`` (compatibility alias; it lives in ``cfaug.datasets.store``): every rank
  saves its share of a counterfactual dataset into one folder, then rank 0 checks the merged manifest and every
  file's digest;
* ``barrier``, ``all_reduce_sum``, ``any_rank``, ``all_gather_objects`` and ``check_same_across_ranks`` (a digest of a
  module's tensors compared between ranks: the cheap proof that DistributedDataParallel kept them identical).

Every helper works without a process group (one process, rank 0 of 1), where the collectives do nothing.

Examples:
    >>> rank_range(0, 10, rank=1, world_size=3)
    (4, 7)
    >>> rank_range(0, 1000, rank=0, world_size=2, align=256)  # whole chunks of 256 per rank
    (0, 512)
    >>> with distributed_session() as info:  # a plain process: no process group is created
    ...     info.rank, info.world_size, info.is_main
    (0, 1, True)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from cfaug._utils import check_positive_int

if TYPE_CHECKING:
    from cfaug.datasets.store import DistributedSaveResult, save_counterfactuals_distributed

__all__ = [
    "DistributedInfo",
    "DistributedSaveResult",
    "all_gather_objects",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "check_same_across_ranks",
    "device_for_rank",
    "distributed_info",
    "distributed_session",
    "fail_together",
    "module_digest",
    "rank_range",
    "save_counterfactuals_distributed",
]

#: How long a rank waits in a collective for the others. torch's default (30 minutes) is too short for
#: generation, where a rank that finishes its share early waits at the barrier until the slowest is done.
LONG_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands among the processes of one job.

    Attributes:
        rank: the process's index among all processes, ``0 <= rank < world_size``.
        world_size: the number of processes.
        local_rank: the process's index on its machine (which GPU it uses).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """Whether the job has more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes shared files and prints summaries."""
        return self.rank == 0


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"The environment variable {name} should be an integer (torchrun sets it), but it is {raw!r}."
        ) from None


def distributed_info(environ: Mapping[str, str] | None = None) -> DistributedInfo:
    """This process's rank, world size and local rank.

    Taken from the process group when one is initialised, otherwise from torchrun's environment variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a process started without them is rank 0 of 1.

    Args:
        environ: the environment to read (``os.environ`` when ``None``).

    Raises:
        ValueError: the variables are not integers or are inconsistent (e.g. ``RANK >= WORLD_SIZE``).
    """
    environ = os.environ if environ is None else environ
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        world_size = _env_int(environ, "WORLD_SIZE", 1)
        rank = _env_int(environ, "RANK", 0)
    # One machine is the common case; torchrun always sets LOCAL_RANK on several.
    local_rank = _env_int(environ, "LOCAL_RANK", rank)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE should be at least 1, but it is {world_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK should satisfy 0 <= RANK < WORLD_SIZE ({world_size}), but it is {rank}.")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK should be non-negative, but it is {local_rank}.")
    return DistributedInfo(rank=rank, world_size=world_size, local_rank=local_rank)


@contextlib.contextmanager
def distributed_session(
    backend: str | None = None, timeout: datetime.timedelta | None = None
) -> Generator[DistributedInfo, None, None]:
    """Join the torchrun job's process group for the duration of the block; a no-op in a single process.

    A process group that is already initialised (by the caller's own script) is used as it is and left open.
    One created here is destroyed on exit, also when the block raises.

    Args:
        backend: ``"gloo"`` (CPU tensors, any machine) or ``"nccl"`` (CUDA tensors); ``None`` picks nccl when
            CUDA is available and gloo otherwise.
        timeout: how long collectives wait for the other ranks (torch's default when ``None``).

    Yields:
        This process's ``DistributedInfo``.

    Raises:
        ValueError: the environment says several processes but lacks ``MASTER_ADDR``/``MASTER_PORT``.
        RuntimeError: torch was built without distributed support.
    """
    info = distributed_info()
    created = False
    if info.is_distributed and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1, but this torch build has no torch.distributed support.")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise ValueError(
                f"WORLD_SIZE is {info.world_size}, but {missing} are not set. Start the processes with torchrun "
                "(e.g. `torchrun --nproc_per_node=2 -m cfaug.cli ...`), which sets them."
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size, **kwargs)
        created = True
    try:
        yield info
    finally:
        if created:
            dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank reaches this point (nothing to wait for in a single process)."""
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place, and return it (unchanged in a single process).

    The tensor must live where the process group's backend expects it: CPU for gloo, the rank's GPU for nccl.
    """
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is set on any rank (``flag`` itself in a single process).

    Every rank must call it at the same point, e.g. to agree to stop at the same step when Ctrl-C reached only
    some of the processes. ``device`` is where the backend reduces (CPU for gloo, the rank's GPU for nccl).
    """
    if not _active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in a single process."""
    if not _active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def module_digest(module: nn.Module) -> str:
    """The sha256 of a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_same_across_ranks(module: nn.Module, what: str = "model weights") -> str:
    """Check that every rank holds bitwise the same tensors in ``module``; return their digest.

    DistributedDataParallel keeps replicas identical by averaging gradients; a rank that silently drifted
    (a forgotten collective, rank-dependent code) would otherwise only show up as a worse model.

    Raises:
        RuntimeError: the digests differ; the message lists them per rank.
    """
    mine = module_digest(module)
    digests = all_gather_objects(mine)
    if len(set(digests)) > 1:
        listing = ", ".join(f"rank {rank}: {value[:12]}" for rank, value in enumerate(digests))
        raise RuntimeError(f"The ranks hold different {what} ({listing}); the distributed run is inconsistent.")
    return mine


def device_for_rank(device: str | torch.device, info: DistributedInfo | None = None) -> torch.device:
    """The device this rank should use: ``"cuda"`` without an index means the rank's own GPU (``LOCAL_RANK``).

    Examples:
        >>> device_for_rank("cuda", DistributedInfo(rank=3, world_size=4, local_rank=1))
        device(type='cuda', index=1)
        >>> device_for_rank("cpu", DistributedInfo(rank=3, world_size=4, local_rank=1))
        device(type='cpu')
    """
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"`device` should be a str or torch.device, but got {type(device).__name__} {device!r}.")
    resolved = torch.device(device)
    info = distributed_info() if info is None else info
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", info.local_rank)
    return resolved


def rank_range(start: int, stop: int, rank: int, world_size: int, align: int = 1) -> tuple[int, int]:
    """The contiguous share of ``[start, stop)`` that ``rank`` of ``world_size`` processes handles.

    The range is cut into cells on the grid of multiples of ``align`` (the first and last cells may be partial)
    and the cells are dealt out in order, as evenly as possible (lower ranks get one more when they do not divide
    evenly): the shares are disjoint, cover the range, and each starts and ends on the grid or at
    ``start``/``stop``. The last ranks get empty shares (``lo == hi``) when there are fewer cells than ranks.

    Args:
        start: first index of the range.
        stop: one past the last index.
        rank: the rank, ``0 <= rank < world_size``.
        world_size: the number of processes.
        align: the grid; ``CounterfactualDataset.save``'s ``chunk_size`` makes each rank write whole chunks.

    Returns:
        ``(lo, hi)``, the rank's share.
    """
    start = check_positive_int(start, "start", allow_zero=True)
    stop = check_positive_int(stop, "stop", allow_zero=True)
    world_size = check_positive_int(world_size, "world_size")
    rank = check_positive_int(rank, "rank", allow_zero=True)
    align = check_positive_int(align, "align")
    if start > stop:
        raise ValueError(f"`start` should be at most `stop`, but got start={start} and stop={stop}.")
    if rank >= world_size:
        raise ValueError(f"`rank` should be below `world_size` ({world_size}), but got {rank}.")
    if start == stop:
        return start, stop
    first_cut = (start // align + 1) * align
    cells = 1 if first_cut >= stop else 1 + -(-(stop - first_cut) // align)

    def boundary(k: int) -> int:
        if k == 0:
            return start
        if k == cells:
            return stop
        return first_cut + (k - 1) * align

    # Ceiling division: when the cells do not divide evenly, the lower ranks get the extra ones (rank 0 works).
    return boundary(-(-rank * cells // world_size)), boundary(-(-(rank + 1) * cells // world_size))


@contextlib.contextmanager
def fail_together(step: str) -> Generator[None, None, None]:
    """Run a block that may fail on some ranks only; if it fails on any rank, it fails on every rank.

    Without this, a rank that raises leaves the others waiting in their next collective until the timeout. The
    block ends with a collective (an all-gather of the errors), so it also acts as a barrier. The failing rank
    re-raises its own exception; the others raise a RuntimeError naming the rank and its error.

    Args:
        step: what the block does, for the other ranks' error message.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as caught:  # re-raised below, after the other ranks have heard of it
        error = caught
    errors = all_gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, text) for rank, text in enumerate(errors) if text is not None]
    if failed:
        rank, text = failed[0]
        raise RuntimeError(f"Rank {rank} failed while {step}: {text}")


# The distributed save belongs with the dataset store it writes; it lives in cfaug.datasets.store. These names stay
# importable from here for compatibility, resolved on first access so that this infrastructure module imports no
# datasets when it is imported.
_MOVED_TO_STORE = ("DistributedSaveResult", "save_counterfactuals_distributed")


def __getattr__(name: str) -> Any:
    """Compatibility aliases: ``save_counterfactuals_distributed`` and ``DistributedSaveResult`` (now in the store)."""
    if name in _MOVED_TO_STORE:
        from cfaug.datasets import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
