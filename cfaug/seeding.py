"""Per-sample random streams.

Every random number behind a counterfactual (the noise of each mechanism, the texture shift, ...) is drawn
from a stream keyed by the sample's own 63-bit seed and a small stream number. A sample therefore comes out
the same whatever batch it is generated in, whichever DataLoader worker or process rank generates it, and
in whatever order: the property the whole library's determinism rests on.

Streams are plain ``torch.Generator`` objects seeded with a SplitMix64 mix of ``(seed, stream)``; making one
costs microseconds, negligible next to a generator forward pass.
"""

from __future__ import annotations

import torch

__all__ = ["SEED_BITS", "draw_seeds", "index_seeds", "mix_seed", "per_sample_normal", "per_sample_randint"]

SEED_BITS = 63
_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, stream: int) -> int:
    """Mix a seed and a stream number into a new, well spread 63-bit seed (SplitMix64 finaliser)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> (64 - SEED_BITS)


def draw_seeds(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` fresh per-sample seeds (int64, CPU) from ``generator`` or the global torch RNG."""
    return torch.randint(0, 2**SEED_BITS - 1, (n,), generator=generator, dtype=torch.int64)


def index_seeds(seed: int, indices: torch.Tensor | list[int] | range) -> torch.Tensor:
    """Per-sample seeds for dataset indices: sample ``i`` of a dataset seeded with ``seed`` gets ``mix(seed, i)``."""
    return torch.tensor([mix_seed(seed, int(i)) for i in indices], dtype=torch.int64)


def _generators(seeds: torch.Tensor, stream: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(mix_seed(int(s), stream)) for s in seeds.tolist()]


def per_sample_normal(seeds: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise of ``(len(seeds), *shape)``, row ``i`` drawn from the stream of ``seeds[i]``.

    The result is on the CPU; move it to the model's device (a few hundred bytes per sample).
    """
    if len(seeds) == 0:
        return torch.empty((0, *shape))
    return torch.stack([torch.randn(shape, generator=g) for g in _generators(seeds, stream)])


def per_sample_randint(seeds: torch.Tensor, stream: int, high: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    """Integers in ``[0, high)`` of ``(len(seeds), *shape)``, row ``i`` drawn from the stream of ``seeds[i]``."""
    if len(seeds) == 0:
        return torch.empty((0, *shape), dtype=torch.int64)
    return torch.stack([torch.randint(0, high, shape, generator=g) for g in _generators(seeds, stream)])
