"""Table 2 at a matched budget for every variant, kind, mode and seed, as one resumable command for a lent GPU.

Issue 16 asks whether ``CounterfactualAugment`` in the training loop is as good as a saved set at the same images
seen and optimiser steps, at the paper's budget (all 50,000 biased training images plus 50,000 counterfactuals per
epoch, 10 epochs: 1.0 million images and 15,630 steps per run), over three seeds. That is 54 runs (3 variants x 3
kinds x 2 modes x 3 seeds): 17 to 45 minutes each on one thread of a 2-core CPU (a saved set is the quickest, the
real kind per batch the slowest), a minute or two on a GPU. This script starts one
``cfaug evaluate mnist`` process per run (``cfaug.evaluation.run_matched_budget``), ``--jobs`` at a time, since one
small classifier leaves most of a GPU idle; writes each run's settings (``job.json``), log and
``matched_budget.json`` into its own folder; skips a run whose folder already holds its complete result with the
same settings (so a stopped job list resumes), and refuses a folder that holds other settings or files it did not
write; and merges every finished run of each variant under ``--out-dir``, from this call or earlier ones
(``merge_matched_budget``), into one results file and a printed table (``format_matched_budget``).

Usage:
    python benchmarks/matched_budget.py --device cuda --jobs 8 --data-root data \
        --texture-root data/wildlife_textures --out-dir runs/matched_full \
        --results benchmarks/results/mnist_table2_matched_full_<card>.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cfaug._utils import atomic_write
from cfaug.evaluation.matched_budget import KINDS, MODES, RESULTS_FILE, format_matched_budget, merge_matched_budget
from cfaug.names import VARIANTS

#: The file in each run folder that records the settings the driver ran it with: its mark of ownership.
JOB_FILE = "job.json"


class RunFolderError(ValueError):
    """A run folder holds something this driver did not write for this job: other settings or other files."""


@dataclass(frozen=True)
class Job:
    """One run: a (variant, kind, mode, seed), its folder and its ``cfaug`` command line.

    ``settings`` is the part of the command line that decides the result (weights, kind, mode, seed, budget,
    textures); ``argv`` adds what does not (device, threads, data folder, progress).
    """

    variant: str
    kind: str
    mode: str
    seed: int
    folder: Path
    settings: tuple[str, ...]
    argv: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.variant} {self.kind} {self.mode} seed {self.seed}"

    def done(self) -> bool:
        """Whether the folder holds this run's complete result; ``False`` when it is new, empty or unfinished.

        Raises:
            RunFolderError: the folder holds files but no job record of this driver, or a record of other
                settings (an earlier run with another budget or weights, or someone else's files): its result is
                neither reused nor overwritten.
        """
        if not self.folder.exists() or not any(self.folder.iterdir()):
            return False
        try:
            recorded = json.loads((self.folder / JOB_FILE).read_text())
        except (OSError, ValueError):
            raise RunFolderError(
                f"{self.folder} holds files but no readable {JOB_FILE} from this script, so it was not written for "
                f"the run {self.name}; move it away or pass another --out-dir."
            ) from None
        if recorded != {"settings": list(self.settings)}:
            raise RunFolderError(
                f"{self.folder} holds the run {self.name} with other settings ({recorded.get('settings')}, now "
                f"{list(self.settings)}); pass another --out-dir for other settings."
            )
        return _complete(self.folder / RESULTS_FILE)


def _complete(path: Path) -> bool:
    """Whether ``path`` is a complete ``run_matched_budget`` result (written atomically by the run itself)."""
    try:
        return bool(json.loads(path.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--weights", default="{variant}", help="weights per variant; '{variant}' becomes its name (default: shipped)"
    )
    parser.add_argument("--device", default="cpu", help="torch device of every run (default cpu)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument(
        "--threads-per-job", type=int, default=None, help="torch CPU threads per run (default: CPU count / jobs)"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/matched_budget"))
    parser.add_argument("--results", type=Path, default=None, help="also write the merged results here (JSON)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST textures (default: procedural)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--num-counterfactuals", type=int, default=50_000)
    parser.add_argument("--max-train-images", type=int, default=None, help="the first N training images (default all)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    for name in ("jobs", "threads_per_job", "epochs", "num_counterfactuals", "max_train_images", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} should be a positive integer, but got {value}")
    if args.threads_per_job is None:
        args.threads_per_job = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def make_jobs(args: argparse.Namespace) -> list[Job]:
    """Every (variant, seed, kind, mode) as a ``cfaug evaluate mnist`` command, in that order."""
    jobs = []
    for variant in args.variants:
        for seed in args.seeds:
            for kind in args.kinds:
                for mode in args.modes:
                    folder = args.out_dir / variant / f"{kind}_{mode}_seed{seed}"
                    settings = [
                        "--weights", f"ours={args.weights.format(variant=variant)}", "--kinds", kind,
                        "--modes", mode, "--seeds", str(seed), "--epochs", str(args.epochs),
                        "--num-counterfactuals", str(args.num_counterfactuals), "--batch-size", str(args.batch_size),
                    ]  # fmt: skip
                    if args.max_train_images is not None:
                        settings += ["--max-train-images", str(args.max_train_images)]
                    if variant == "wildlife_mnist" and args.texture_root is not None:
                        # Only Wildlife MNIST has textures; the other variants' results record none.
                        settings += ["--texture-root", args.texture_root]
                    argv = [
                        sys.executable, "-m", "cfaug", "evaluate", "mnist", variant, "--out-dir", str(folder),
                        *settings, "--device", args.device, "--num-threads", str(args.threads_per_job),
                        "--data-root", args.data_root, "--no-progress",
                    ]  # fmt: skip
                    jobs.append(Job(variant, kind, mode, seed, folder, tuple(settings), tuple(argv)))
    return jobs


def run_job(job: Job) -> int:
    """Run one job, its output into ``log.txt`` in its folder; returns the exit status."""
    job.folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(job.folder / JOB_FILE, "w") as handle:
        json.dump({"settings": list(job.settings)}, handle)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(job.folder / "log.txt", "w") as log:
        return subprocess.run(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode


def merge_runs(out_dir: Path, variants: list[str]) -> dict[str, dict]:
    """Per variant, the merge of every complete run this script wrote under ``out_dir``, from this call or earlier.

    So a second call for more seeds or kinds adds to the merged results instead of replacing them. Variants
    without a finished run are left out.

    Raises:
        ValueError: the runs of a variant there were made with different budgets, weights or textures.
    """
    merged = {}
    for variant in variants:
        folders = sorted(path.parent for path in (out_dir / variant).glob(f"*/{JOB_FILE}"))
        parts = [json.loads((f / RESULTS_FILE).read_text()) for f in folders if _complete(f / RESULTS_FILE)]
        if parts:
            merged[variant] = merge_matched_budget(parts)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = make_jobs(args)
    try:
        todo = [job for job in jobs if not job.done()]
    except RunFolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already done; {len(todo)} to run, {args.jobs} at a time")
    failed = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_job, job): job for job in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc="runs"):
            job = futures[future]
            if future.result() != 0 or not job.done():
                failed.append(job)
                print(f"failed: {job.name}; see {job.folder / 'log.txt'}", file=sys.stderr)
    try:
        merged = merge_runs(args.out_dir, list(dict.fromkeys(job.variant for job in jobs)))
    except ValueError as error:
        print(f"error: the finished runs in {args.out_dir} do not merge: {error}", file=sys.stderr)
        return 1
    for variant, results in merged.items():
        with atomic_write(args.out_dir / f"matched_budget_{variant}.json", "w") as handle:
            json.dump(results, handle, indent=2)
        print(format_matched_budget(results), end="\n\n")
    if args.results is not None and merged:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.results, "w") as handle:
            json.dump(merged, handle, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
