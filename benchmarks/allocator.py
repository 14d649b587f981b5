"""What glibc's malloc thresholds cost CPU generation and training, printed as a markdown table.

glibc maps allocations over a (growing) threshold afresh and trims the heap when its free top grows large, so the
tensors of each CPU batch are faulted in and zeroed again, batch after batch. ``cfaug._utils.keep_freed_memory``
(which the ``cfaug`` command calls first) raises both thresholds so that freed memory is reused. This script runs
each workload in fresh child processes, alternately with glibc's defaults and after ``keep_freed_memory()``:

* ``generate``: the items of ``CounterfactualDataset.save`` at batch 64 (``backend.sample`` on the shipped
  ``colored_mnist`` weights, uint8 images), 2,048 per round;
* ``train``: the Table 2 classifier (``train_shape_classifier``), one epoch of 6,400 random 32x32 RGB images at
  batch 64.

Each child times ``--rounds`` rounds after one warm-up round and reports the median, with the page faults and the
kernel time per round (``getrusage``). One torch thread, as in the other CPU benchmarks. The table is printed and
written to ``--output``.

Usage:
    python benchmarks/allocator.py [--repeats 2] [--rounds 3] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

WORKLOADS = ("generate", "train")


def child(workload: str, tuned: bool, rounds: int) -> dict[str, float]:
    """Run ``workload`` ``rounds + 1`` times in this process (the first is a warm-up); median seconds and faults."""
    import resource
    import time

    import torch

    from cfaug._utils import keep_freed_memory

    torch.set_num_threads(1)
    if tuned and not keep_freed_memory():
        raise RuntimeError("keep_freed_memory() changed nothing here (not glibc, or GLIBC_TUNABLES/LD_PRELOAD set).")
    if workload == "generate":
        import cfaug
        from cfaug.datasets.store import _to_uint8

        dataset = cfaug.CounterfactualDataset("mnist", weights="colored_mnist", size=2048, seed=0)
        infos = [dataset.info(i) for i in range(len(dataset))]

        def run() -> None:
            for begin in range(0, len(infos), 64):
                _to_uint8(dataset._generate_batch(infos[begin : begin + 64]).image)

    else:
        from cfaug.evaluation.shape_classifier import train_shape_classifier

        generator = torch.Generator().manual_seed(0)
        images = torch.rand(6400, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 10, (6400,), generator=generator)

        def run() -> None:
            train_shape_classifier((images, labels), None, epochs=1, seed=0)

    seconds, faults, kernel = [], [], []
    for round_ in range(rounds + 1):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        if round_:
            seconds.append(elapsed)
            faults.append(after.ru_minflt - before.ru_minflt)
            kernel.append(after.ru_stime - before.ru_stime)
    return {
        "seconds": statistics.median(seconds),
        "faults": statistics.median(faults),
        "kernel": statistics.median(kernel),
    }


def measure(workload: str, tuned: bool, rounds: int) -> dict[str, float]:
    """``child`` in a fresh process whose environment leaves glibc's malloc at its defaults."""
    environment = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    environment["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, __file__, "--child", workload, "--rounds", str(rounds)] + (["--tuned"] if tuned else [])
    output = subprocess.run(command, env=environment, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="child processes per workload and setting")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per child (after one warm-up)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "allocator_cpu.txt")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tuned, args.rounds)))
        return

    from tqdm import tqdm

    results: dict[tuple[str, bool], list[dict[str, float]]] = {}
    runs = [(w, t) for _ in range(args.repeats) for w in WORKLOADS for t in (False, True)]  # alternating
    for workload, tuned in tqdm(runs, desc="child processes"):
        results.setdefault((workload, tuned), []).append(measure(workload, tuned, args.rounds))
    what = {
        "generate": "generate 2,048 counterfactuals at batch 64 (mnist, colored_mnist)",
        "train": "train the Table 2 classifier, 1 epoch of 6,400 images at batch 64",
    }
    lines = [
        f"glibc malloc thresholds, defaults against `keep_freed_memory()`; Python {platform.python_version()}, "
        f"1 torch thread, {args.repeats} processes x {args.rounds} rounds per cell (medians).",
        "",
        "| workload | malloc | seconds | page faults | kernel s | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        default = statistics.median(r["seconds"] for r in results[(workload, False)])
        for tuned in (False, True):
            cells = results[(workload, tuned)]
            seconds = statistics.median(r["seconds"] for r in cells)
            faults = statistics.median(r["faults"] for r in cells)
            kernel = statistics.median(r["kernel"] for r in cells)
            setting = "`keep_freed_memory()`" if tuned else "glibc defaults"
            lines.append(
                f"| {what[workload]} | {setting} | {seconds:.2f} | {faults:,.0f} | {kernel:.2f} | "
                f"{default / seconds:.2f}x |"
            )
    table = "\n".join(lines)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table + "\n")


if __name__ == "__main__":
    main()
