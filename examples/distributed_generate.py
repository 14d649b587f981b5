"""Generate one counterfactual dataset with several processes: a disjoint index range per torchrun rank.

Item ``i`` of a ``CounterfactualDataset`` depends only on ``(seed, i)``, so the ranks need no coordination
to agree on the data: each saves its own range into the same folder, and the ranges together make exactly the
dataset a single process would have saved. Rank 0 merges the ranges once all are written and checks the result.

Usage (the shipped colored_mnist weights unless ``--weights`` names others or a checkpoint):
    torchrun --nproc_per_node=4 examples/distributed_generate.py --out cf_colored_mnist --size 100000
    torchrun --nproc_per_node=2 examples/distributed_generate.py --quick --out /tmp/cf_distributed
    python examples/distributed_generate.py --quick --out /tmp/cf_single   # one process works too
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist

import cfaug


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="named weights of the mnist backend or a checkpoint path, on every rank")
    parser.add_argument("--quick", action="store_true", help="96 items in small chunks, seconds (for the tests)")
    parser.add_argument("--out", required=True, help="folder of the saved dataset (shared by all ranks)")
    parser.add_argument("--size", type=int, default=100_000, help="number of counterfactuals")
    parser.add_argument("--workers", type=int, default=2, help="generating processes per rank on a CPU")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    size = 96 if args.quick else args.size

    # --8<-- [start:ranks]
    # torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without torchrun this is one process of rank 0.
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1:
        dist.init_process_group("gloo")  # only for the barrier below: no tensors are exchanged
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        workers = 0  # CUDA does not work in forked DataLoader workers; the GPU is fast enough alone
    else:
        device, workers = torch.device("cpu"), args.workers

    backend = cfaug.load_backend("mnist", weights=args.weights).to(device)
    dataset = cfaug.CounterfactualDataset(backend, size=size, seed=0)  # the same on every rank
    per_rank = math.ceil(size / world_size)
    start, stop = rank * per_rank, min(size, (rank + 1) * per_rank)
    if start < stop:
        dataset.save(args.out, format="png", start=start, stop=stop, num_workers=workers, progress=False)
        print(f"rank {rank}/{world_size}: saved items [{start}, {stop}) on {device}")

    if world_size > 1:
        dist.barrier()  # every range is on disk
    if rank == 0:
        cfaug.CounterfactualDataset.finalize(args.out)  # merge the ranges (a no-op if already merged)
        saved = cfaug.CounterfactualDataset.load(args.out)
        saved.verify()
        print(f"rank 0: {len(saved)} items in {args.out}, verified")
    if world_size > 1:
        dist.destroy_process_group()
    # --8<-- [end:ranks]


if __name__ == "__main__":
    main()
