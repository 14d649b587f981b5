"""The paper's Table 2 on the three biased MNIST variants, printed as markdown tables.

For each variant a small CNN (the authors' shape classifier) is trained on the biased originals, on originals plus
counterfactuals and on counterfactuals only (the paper's rows), and on originals plus ``CounterfactualAugment``'s
counterfactuals of real digits, made once or per batch (cfaug's rows), over several seeds, and tested on the
de-biased test split (``cfaug.evaluation.run_table2``). Each table gives mean ± standard deviation of the test
accuracy per set of CGN weights (``--weights NAME=PATH``; ``--authors-dir`` adds the CGN authors' released
checkpoints, imported), the paper's number beside them, and for Double-colored MNIST the accuracy on the test
digits that are visible (about one in ten has the same colour inside and out). Results and counterfactual grids go
to ``--out-dir/<variant>/``.

This is ``cfaug evaluate mnist`` (its options come from ``cfaug.cli.evaluate``) over several variants in one call,
with the machine printed first and ``--merge`` to join results run apart.

On the CPU one epoch over 50,000 images takes one to two minutes per thread; the paper's protocol (3 seeds,
10 epochs, 50,000 counterfactuals, five settings) is hours. Quick look:

    python benchmarks/mnist_table2.py --authors-dir ../shared/data/reference_cgn_mnist --data-root ../shared/data \
        --texture-root ../shared/data/wildlife_textures --seeds 0 --epochs 2 --num-counterfactuals 10000

Seeds and columns can run in separate processes (or machines) and be merged afterwards: ``--merge`` reads their
``results.json`` files, prints one table per variant and, with ``--merged-out``, saves the merged results.

Usage:
    python benchmarks/mnist_table2.py [--variants V ...] [--weights NAME=PATH_TEMPLATE ...] [--authors-dir DIR]
        [--seeds 0 1 2] [--epochs 10] [--num-counterfactuals 50000] [--data-root DIR] [--texture-root DIR]
    python benchmarks/mnist_table2.py --merge runs/*/*/results.json [--merged-out merged.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cfaug._utils import atomic_write
from cfaug.cli.evaluate import add_table2_options, run_table2_from_args
from cfaug.datasets.mnist_variants import VARIANTS
from cfaug.evaluation.table2 import format_table2, merge_table2


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="variants to run")
    add_table2_options(parser, data_root="../shared/data")
    parser.add_argument("--out-dir", default="runs/mnist_table2", help="results folder (default runs/mnist_table2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, metavar="RESULTS", help="merge these results.json files instead"
    )
    parser.add_argument("--merged-out", type=Path, default=None, help="with --merge: save {variant: merged results}")
    return parser


def merge(paths: list[Path], out: Path | None) -> int:
    """Print one merged table per variant of the ``results.json`` files (in the order given); optionally save."""
    by_variant: dict[str, list[dict]] = {}
    for path in paths:
        part = json.loads(path.read_text(encoding="utf-8"))
        by_variant.setdefault(part["variant"], []).append(part)
    merged = {variant: merge_table2(parts) for variant, parts in by_variant.items()}
    for variant in VARIANTS:
        if variant in merged:
            print(format_table2(merged[variant]) + "\n")
    if out is not None:
        with atomic_write(out, "w") as handle:
            json.dump(merged, handle, indent=2, allow_nan=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the experiment for every chosen variant and print one table each."""
    args = build_parser().parse_args(argv)
    if args.merge is not None:
        return merge(args.merge, args.merged_out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {machine}, {torch.get_num_threads()} threads, device {args.device}\n")
    for variant in args.variants:
        started = time.perf_counter()
        texture_root = args.texture_root if variant == "wildlife_mnist" else None
        results = run_table2_from_args(args, variant, Path(args.out_dir) / variant, texture_root)
        print(format_table2(results))
        print(f"\n({time.perf_counter() - started:.0f} s; {Path(args.out_dir) / variant / 'results.json'})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
