"""Running under torchrun: rank bookkeeping, work splits, and `cfaug generate` with two gloo processes.

The two-process tests start real processes (torch.multiprocessing spawn, or torchrun itself) that join a gloo
process group on this machine, so every collective is the real one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import cfaug
from cfaug.cli import main
from cfaug.datasets.counterfactual import CounterfactualDataset, SavedCounterfactualDataset
from cfaug.distributed import (
    DistributedInfo,
    all_gather_objects,
    all_reduce_sum,
    any_rank,
    check_same_across_ranks,
    device_for_rank,
    distributed_info,
    distributed_session,
    fail_together,
    rank_range,
    save_counterfactuals_distributed,
)

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _no_torchrun_environment(monkeypatch):
    """The tests decide what torchrun variables a process sees; none leak in from the machine."""
    for name in _TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------- bookkeeping
def test_rank_ranges_cover_the_range_once_on_the_grid():
    for start, stop in ((0, 1), (0, 14), (3, 1000), (5, 6), (250, 1030)):
        for world_size in (1, 2, 3, 7):
            for align in (1, 4, 256):
                shares = [rank_range(start, stop, rank, world_size, align) for rank in range(world_size)]
                assert shares[0][0] == start and shares[-1][1] == stop
                assert all(
                    a[1] == b[0] for a, b in zip(shares[:-1], shares[1:], strict=True)
                )  # contiguous, disjoint, in order
                cuts = [lo for lo, hi in shares if lo < hi][1:]
                assert all(cut % align == 0 for cut in cuts), (start, stop, world_size, align, shares)
                cells = [(hi - 1) // align - lo // align + 1 if lo < hi else 0 for lo, hi in shares]
                assert max(cells) - min(cells) <= 1  # balanced up to one cell of the grid
    assert rank_range(0, 14, 1, 2, align=4) == (8, 14)  # cells [0,4) [4,8) | [8,12) [12,14)
    assert rank_range(0, 3, 1, 2, align=4) == (3, 3)  # one cell: the second rank has nothing to do
    assert [rank_range(0, 10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="`rank` should be below `world_size` \\(2\\)"):
        rank_range(0, 10, 2, 2)
    with pytest.raises(ValueError, match="`start` should be at most `stop`"):
        rank_range(5, 4, 0, 1)
    with pytest.raises(TypeError, match="`align` should be an integer"):
        rank_range(0, 4, 0, 1, align=1.5)


def test_distributed_info_reads_torchruns_variables():
    assert distributed_info({}) == DistributedInfo(0, 1, 0)
    assert distributed_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistributedInfo(3, 4, 1)
    assert distributed_info({"RANK": "1", "WORLD_SIZE": "2"}).local_rank == 1  # one machine: local = global
    with pytest.raises(ValueError, match="WORLD_SIZE should be an integer \\(torchrun sets it\\), but it is 'two'"):
        distributed_info({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK should satisfy 0 <= RANK < WORLD_SIZE \\(2\\), but it is 2"):
        distributed_info({"RANK": "2", "WORLD_SIZE": "2"})
    info = DistributedInfo(rank=2, world_size=4, local_rank=0)
    assert info.is_distributed and not info.is_main
    assert device_for_rank("cuda", DistributedInfo(1, 2, 1)) == torch.device("cuda", 1)
    assert device_for_rank("cuda:0", DistributedInfo(1, 2, 1)) == torch.device("cuda", 0)
    assert device_for_rank("cpu", info) == torch.device("cpu")


def test_a_single_process_session_needs_no_process_group(monkeypatch):
    with distributed_session() as info:
        assert info == DistributedInfo(0, 1, 0) and not dist.is_initialized()
        assert all_reduce_sum(torch.tensor([2.0])).item() == 2.0 and all_gather_objects("x") == ["x"]
        assert any_rank(True) and not any_rank(False)
        check_same_across_ranks(nn.Linear(2, 2))
        with pytest.raises(KeyError), fail_together("a step"):
            raise KeyError("a single process re-raises its own error")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"\['MASTER_ADDR', 'MASTER_PORT'\] are not set. Start the processes with"):
        with distributed_session():
            pass


def test_saving_in_one_process_verifies_a_complete_dataset(tmp_path, toy):
    dataset = CounterfactualDataset(toy, size=6, seed=1, target="all")
    first = save_counterfactuals_distributed(dataset, tmp_path / "cf", stop=4, chunk_size=2, progress=False)
    assert (first.start, first.stop, first.complete, first.verified) == (0, 4, False, False)
    rest = save_counterfactuals_distributed(dataset, tmp_path / "cf", start=4, chunk_size=2, progress=False)
    assert (rest.start, rest.stop, rest.complete, rest.verified) == (4, 6, True, True)
    with pytest.raises(ValueError, match="0 <= start < stop <= 6"):
        save_counterfactuals_distributed(dataset, tmp_path / "cf", start=6, progress=False)


# -------------------------------------------------------------------------------------- two real processes
def _run_quietly(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def _two_rank_worker(rank: int, world_size: int, ports: list[int], out_dir: str, argv: list[str]) -> None:
    """One torchrun-like process: `cfaug generate` in both formats, then the collective helpers."""
    from toy_backend import ToyBackend

    torch.set_num_threads(1)
    cfaug.register_backend("toy", override=True)(ToyBackend)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    outcome: dict[str, object] = {}
    for fmt, port in zip(("png", "safetensors"), ports[:2], strict=True):
        os.environ["MASTER_PORT"] = str(port)  # each command opens and closes its own process group
        outcome[fmt] = _run_quietly([*argv, "--out", f"{out_dir}/two-{fmt}", "--format", fmt])
    os.environ["MASTER_PORT"] = str(ports[2])
    with distributed_session("gloo") as info:
        outcome["info"] = [info.rank, info.world_size, info.local_rank]
        outcome["sum"] = all_reduce_sum(torch.tensor([rank + 1.0])).item()
        outcome["any"] = [any_rank(rank == 1), any_rank(False)]  # Ctrl-C seen by rank 1 only, then by none
        torch.manual_seed(0)
        outcome["same"] = check_same_across_ranks(nn.Linear(3, 2))
        torch.manual_seed(rank)
        try:
            check_same_across_ranks(nn.Linear(3, 2))
        except RuntimeError as error:
            outcome["differ"] = str(error)
        try:
            with fail_together("a test step"):
                if rank == 1:
                    raise ValueError("rank one broke")
        except Exception as error:  # noqa: BLE001 - the test records what each rank raised
            outcome["failed"] = f"{type(error).__name__}: {error}"
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(outcome))


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of a saved dataset except the per-range part manifests (named by each process's range)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parent.name != "parts"
    }


def test_generate_with_two_processes_writes_what_one_process_writes(tmp_path):
    argv = ["generate", "--backend", "toy", "--size", "14", "--seed", "3", "--chunk-size", "4", "--workers", "0"]
    mp.spawn(_two_rank_worker, args=(2, [_free_port() for _ in range(3)], str(tmp_path), argv), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for fmt in ("png", "safetensors"):
        (code0, out0), (code1, out1) = ranks[0][fmt], ranks[1][fmt]
        assert code0 == code1 == 0, (out0, out1)
        # Cells of the chunk grid: [0,4) [4,8) for rank 0, [8,12) [12,14) for rank 1.
        assert "rank 0/2: wrote counterfactuals [0, 8) on cpu" in out0
        assert "rank 1/2: wrote counterfactuals [8, 14) on cpu" in out1
        assert (
            "Wrote counterfactuals [0, 14)" in out0
            and "with 2 processes (dataset complete, every file verified)" in out0
        )
        assert "Wrote counterfactuals [0, 14)" not in out1  # the summary is rank 0's
        one = tmp_path / f"one-{fmt}"
        assert main([*argv, "--out", str(one), "--format", fmt]) == 0
        two = tmp_path / f"two-{fmt}"
        assert _tree(two) == _tree(one)  # manifest, labels.csv, records and every image/shard, byte for byte
        assert sorted(p.name for p in (two / "parts").iterdir()) == ["000000-000008.json", "000008-000014.json"]
        SavedCounterfactualDataset(two).verify()
    assert [r["info"] for r in ranks] == [[0, 2, 0], [1, 2, 1]]
    assert ranks[0]["sum"] == ranks[1]["sum"] == 3.0
    assert ranks[0]["any"] == ranks[1]["any"] == [True, False]
    assert ranks[0]["same"] == ranks[1]["same"]
    assert all("The ranks hold different model weights (rank 0:" in r["differ"] for r in ranks)
    assert ranks[1]["failed"] == "ValueError: rank one broke"
    assert ranks[0]["failed"] == "RuntimeError: Rank 1 failed while a test step: ValueError: rank one broke"


@pytest.mark.slow
def test_generate_under_torchrun(tmp_path):
    """The real launcher and the plugin backend `stripes` (found through its entry point)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["generate", "--backend", "stripes", "--size", "10", "--chunk-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [*torchrun, "-m", "cfaug.cli", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "rank 1/2: wrote counterfactuals [8, 10) on cpu" in result.stdout
    assert "with 2 processes (dataset complete, every file verified)" in result.stdout
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert _tree(tmp_path / "two") == _tree(tmp_path / "one")
