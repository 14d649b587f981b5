"""Seed streams of the Table 2 experiment, in one place so no two parts of a run ever draw from the same stream.

Each random part of a run has its own stream (``cfaug.seeding.mix_seed(seed, stream)``), so changing one leaves
the others' draws alone. The numbers are part of the results: changing one changes every run that uses it.
"""

from __future__ import annotations

(
    STREAM_INIT,
    STREAM_SHUFFLE,
    STREAM_CF_CLASSES,
    STREAM_CF_NOISE,
    STREAM_REAL_PICK,
    STREAM_REAL_CLASSES,
    STREAM_REAL_NOISE,
    STREAM_ONLINE,
    STREAM_KIND_PICK,
    STREAM_MIXED_SET,
) = range(1, 11)
