"""Writing a dataset folder at the edges: foreign folders, racing and killed writers, repairs, sizes, a full disk.

The concurrency tests run real processes (``subprocess``) on one folder. Their backend can be held inside a chosen
``sample`` call until the test creates a ``go`` file, so that the overlap the test needs happens every time, and
nothing is timed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy_backend import ToyBackend

from cfaug.cli import main
from cfaug.datasets import store
from cfaug.datasets._writer import WRITER_THREADS_ENV
from cfaug.datasets.counterfactual import CounterfactualDataset, SavedCounterfactualDataset, SavedDatasetError

TESTS = Path(__file__).resolve().parents[1]
LOCK_FILES = (".cfaug.lock", ".cfaug.claims")

# One writer process: saves ToyBackend counterfactuals, optionally held in its `hold_at`-th sample call.
WRITER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from toy_backend import ToyBackend
from cfaug.datasets.counterfactual import CounterfactualDataset, SavedDatasetError

args = json.loads(sys.argv[2])
backend = ToyBackend()
sample, calls = backend.sample, []

def held_sample(*a, **k):
    calls.append(1)
    if len(calls) == args["hold_at"]:
        open(args["ready"] + str(os.getpid()), "w").close()
        while not os.path.exists(args["go"]):
            time.sleep(0.02)
    return sample(*a, **k)

backend.sample = held_sample
data = CounterfactualDataset(backend, size=args["size"], seed=args["seed"])
try:
    complete = data.save(args["root"], args["format"], start=args["start"], stop=args["stop"],
                         chunk_size=args["chunk_size"], progress=False)
except SavedDatasetError as error:
    print(error)
    sys.exit(3)
print("complete" if complete else "partial")
"""


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes; the empty lock files left out, no temporary file allowed."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert all(files.pop(name, b"") == b"" for name in LOCK_FILES)
    assert not [name for name in files if Path(name).name.startswith(".")], "temporary or lock files left behind"
    return files


def serial(root: Path, size: int = 24, seed: int = 0, fmt: str = "png", chunk_size: int = 4) -> dict[str, bytes]:
    CounterfactualDataset(ToyBackend(), size=size, seed=seed).save(root, fmt, chunk_size=chunk_size, progress=False)
    return tree(root)


class Writers:
    """Starts writer processes on one folder and holds or releases them."""

    def __init__(self, tmp_path: Path, root: Path) -> None:
        self.tmp, self.root, self.procs = tmp_path, root, []
        self.go = tmp_path / "go"

    def start(self, hold_at: int = 0, writer_threads: int | None = None, **kwargs) -> subprocess.Popen:
        """One writer process; ``writer_threads=0`` writes each chunk before generating the next (no pool)."""
        args = {"size": 24, "seed": 0, "format": "png", "start": 0, "stop": None, "chunk_size": 4, **kwargs}
        args.update(root=str(self.root), hold_at=hold_at, ready=str(self.tmp / "ready-"), go=str(self.go))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if writer_threads is not None:
            env[WRITER_THREADS_ENV] = str(writer_threads)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(TESTS), json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.procs.append(proc)
        return proc

    def wait_ready(self, count: int) -> None:
        """Wait until ``count`` writers are held inside their backend (each one registered and writing)."""
        deadline = time.monotonic() + 120
        while len(list(self.tmp.glob("ready-*"))) < count:
            dead = [p for p in self.procs if p.poll() is not None]
            assert not dead, f"a writer ended early: {dead[0].stdout.read()}"
            assert time.monotonic() < deadline, "the writers did not start"
            time.sleep(0.05)

    def release(self) -> None:
        self.go.touch()

    def finish(self, proc: subprocess.Popen) -> tuple[int, str]:
        out, _ = proc.communicate(timeout=300)
        return proc.returncode, out

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)


@pytest.fixture
def writers(tmp_path):
    group = Writers(tmp_path, tmp_path / "race")
    yield group
    group.close()


# ------------------------------------------------------------------------------------------------- ownership


def test_a_folder_with_foreign_files_is_refused_before_a_byte_is_written(tmp_path):
    other = tmp_path / "other"
    (other / "images" / "000000").mkdir(parents=True)
    (other / "images" / "000000" / "000003.png").write_text("precious\n")
    (other / "labels.csv").write_text("notes\n")
    before = tree(other)
    with pytest.raises(SavedDatasetError, match=r"did not write \(images/000000/000003.png, labels.csv\)"):
        CounterfactualDataset(ToyBackend(), size=20).save(other, progress=False)
    assert tree(other) == before and sorted(p.name for p in other.iterdir()) == ["images", "labels.csv"]
    # The same through the command line: one line, exit code 2, nothing replaced.
    assert main(["generate", "--out", str(other), "--size", "20", "--backend", "toy"]) == 2
    assert tree(other) == before and not (other / ".cfaug.lock").exists()


def test_ownership_rules(tmp_path):
    data = CounterfactualDataset(ToyBackend(), size=6)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README").write_text("mine")
    with pytest.raises(SavedDatasetError, match="README"):
        data.save(tmp_path / "notes", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SavedDatasetError, match="is a file, not a folder"):
        data.save(tmp_path / "file", progress=False)
    # Empty, or holding only what a killed writer leaves before its first data (locks, temporary files): cfaug's.
    (tmp_path / "empty" / "parts").mkdir(parents=True)
    (tmp_path / "empty" / ".cfaug.lock").touch()
    (tmp_path / "empty" / "parts" / ".000000-000006.json.x1y2.tmp").write_text("{")
    assert data.save(tmp_path / "empty", progress=False)
    assert tree(tmp_path / "empty") == serial(tmp_path / "fresh", size=6, chunk_size=256)


def test_a_writer_that_registers_during_the_ownership_scan_is_not_taken_for_a_stranger(tmp_path, monkeypatch):
    # The first look at an existing folder runs before its lock is taken: another writer may register and write
    # between the look for cfaug's markers and the scan for foreign files (CI once refused a twin writer so).
    # Here a whole save runs in that gap.
    root = tmp_path / "race"
    root.mkdir()
    scan = store.foreign_entries

    def save_meanwhile(folder, *args, **kwargs):
        monkeypatch.setattr(store, "foreign_entries", scan)
        assert CounterfactualDataset(ToyBackend(), size=24).save(root, chunk_size=4, progress=False)
        return scan(folder, *args, **kwargs)

    monkeypatch.setattr(store, "foreign_entries", save_meanwhile)
    assert CounterfactualDataset(ToyBackend(), size=24).save(root, chunk_size=4, progress=False)
    assert store.foreign_entries is scan  # the gap was reached
    assert tree(root) == serial(tmp_path / "serial")


def test_a_manifest_removed_during_the_settings_check_is_written_again(tmp_path, monkeypatch):
    # A repair in another process removes manifest.json (under the lock) while this writer's first, unlocked look
    # has listed it and not yet read it.
    root = tmp_path / "data"
    reference = serial(root)
    read, removed = store._read_json, []

    def repair_meanwhile(path):
        if path.name == "manifest.json" and not removed:
            removed.append(path)
            path.unlink()
        return read(path)

    monkeypatch.setattr(store, "_read_json", repair_meanwhile)
    assert CounterfactualDataset(ToyBackend(), size=24).save(root, chunk_size=4, progress=False)
    assert removed and tree(root) == reference


# ----------------------------------------------------------------------------------------------- concurrency


def test_a_writer_with_another_seed_is_refused_while_one_writes(tmp_path, writers):
    first = writers.start(hold_at=6, seed=1)  # held inside its second chunk, its partial manifest written
    writers.wait_ready(1)
    code, out = writers.finish(writers.start(seed=2))
    assert code == 3 and "other settings" in out and "seed: 1 (requested 2)" in out
    writers.release()
    assert writers.finish(first) == (0, "complete\n")
    SavedCounterfactualDataset(writers.root).verify()
    assert tree(writers.root) == serial(tmp_path / "serial", seed=1)


def test_two_writers_with_other_seeds_started_together(tmp_path, writers):
    first, second = writers.start(seed=1), writers.start(seed=2)
    results = [writers.finish(first), writers.finish(second)]
    assert sorted(code for code, _ in results) == [0, 3], results
    winner = 1 if results[0][0] == 0 else 2
    # The loser is refused for its settings, never taken for a stranger to a folder the winner is filling.
    assert "other settings" in results[2 - winner][1], results
    assert tree(writers.root) == serial(tmp_path / "serial", seed=winner)


def test_a_writer_with_another_chunk_size_is_refused_while_one_writes(tmp_path, writers):
    first = writers.start(hold_at=6, chunk_size=4)  # held inside its second chunk
    writers.wait_ready(1)
    code, out = writers.finish(writers.start(chunk_size=6))
    assert code == 3 and "Another process is saving [0, 24) with chunk_size=4" in out
    writers.release()
    assert writers.finish(first) == (0, "complete\n")
    assert tree(writers.root) == serial(tmp_path / "serial")


@pytest.mark.parametrize("fmt", ["png", "safetensors"])
def test_identical_concurrent_writers_give_the_bytes_of_one(tmp_path, writers, fmt):
    first, second = writers.start(hold_at=2, format=fmt), writers.start(hold_at=2, format=fmt)
    writers.wait_ready(2)  # both registered and generating, each in a chunk of its own
    writers.release()
    assert writers.finish(first) == (0, "complete\n") and writers.finish(second) == (0, "complete\n")
    assert tree(writers.root) == serial(tmp_path / "serial", fmt=fmt)


def test_ranks_writing_disjoint_ranges_at_once(tmp_path, writers):
    low, high = writers.start(hold_at=1, stop=12), writers.start(hold_at=1, start=12)
    writers.wait_ready(2)
    writers.release()
    outputs = {writers.finish(low), writers.finish(high)}
    # The range that ends last completes the dataset (both do when they end together).
    assert (0, "complete\n") in outputs and outputs <= {(0, "complete\n"), (0, "partial\n")}
    whole = tree(writers.root)
    reference = serial(tmp_path / "serial")
    # parts/ records which ranges were saved; everything else is the serial run's.
    assert {k: v for k, v in whole.items() if not k.startswith("parts/")} == {
        k: v for k, v in reference.items() if not k.startswith("parts/")
    }


def test_a_killed_writer_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, writers):
    # Serial writes, so the kill finds exactly two chunks of 4 on disk and the third in progress: the writer pool
    # commits behind generation (on a loaded CPU, CI once found none on disk); a kill inside the pool is
    # tests/datasets/test_writer_pool.py's test_resume_after_kill_gives_the_serial_bytes.
    victim = writers.start(hold_at=10, writer_threads=0)
    writers.wait_ready(1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    root = writers.root
    assert len(list((root / "records").iterdir())) == 2 and not (root / "manifest.json").exists()
    # What atomic_write leaves when a process dies between creating its temporary file and the rename.
    (root / "images" / "000000" / ".000009.png.k1ll.tmp").write_bytes(b"half a png")
    (root / "records" / ".000008-000012.csv.k1ll.tmp").write_bytes(b"index")
    assert CounterfactualDataset(ToyBackend(), size=24).save(root, chunk_size=4, progress=False)
    assert tree(root) == serial(tmp_path / "serial")


# ------------------------------------------------------------------------------------------------- repairs


def test_a_repeated_save_repairs_a_damaged_finished_dataset(tmp_path, capsys):
    root = tmp_path / "cf"
    CounterfactualDataset("toy", size=24).save(tmp_path / "serial", chunk_size=4, progress=False)
    reference = tree(tmp_path / "serial")
    assert main(["generate", "--out", str(root), "--size", "24", "--backend", "toy", "--chunk-size", "4"]) == 0
    capsys.readouterr()
    images = root / "images" / "000000"
    (images / "000003.png").write_bytes(b"")
    (images / "000017.png").write_bytes((images / "000016.png").read_bytes())
    with pytest.raises(SavedDatasetError) as caught:
        SavedCounterfactualDataset(root).verify()
    assert "2 of the 24 files" in str(caught.value) and len(caught.value.problems) == 2
    assert "000003.png" in str(caught.value) and "000017.png" in str(caught.value)
    assert main(["generate", "--out", str(root), "--size", "24", "--backend", "toy", "--chunk-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "Repaired 2 finished chunk(s)" in out and "[0, 4): " in out and "000017.png" in out
    assert tree(root) == reference
    SavedCounterfactualDataset(root).verify()


def test_a_resume_repairs_a_finished_chunk_and_a_tampered_record(tmp_path):
    data = CounterfactualDataset(ToyBackend(), size=24)
    root = tmp_path / "cf"
    assert data.save(root, stop=12, chunk_size=4, progress=False) is False
    (root / "images" / "000000" / "000005.png").write_bytes(b"")
    record = root / "records" / "000008-000012.csv"
    record.write_text(record.read_text().replace("images/000000/000009.png", "../../outside.png"))
    with pytest.warns(UserWarning, match=r"2 finished chunk\(s\).*\[4, 8\).*000005.png.*\[8, 12\).*outside"):
        assert data.save(root, chunk_size=4, progress=False) is True

    def without_parts(files: dict[str, bytes]) -> dict[str, bytes]:
        return {name: data for name, data in files.items() if not name.startswith("parts/")}

    assert without_parts(tree(root)) == without_parts(serial(tmp_path / "whole"))


# ---------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size", [2**63, 10**23])
def test_a_size_the_format_cannot_index_is_a_clear_error(size, tmp_path):
    with pytest.raises(ValueError, match=r"`size` should be at most 9223372036854775807"):
        CounterfactualDataset(ToyBackend(), size=size)
    assert main(["generate", "--out", str(tmp_path / "x"), "--size", str(size), "--backend", "toy"]) == 2
    assert not (tmp_path / "x").exists()


HUGE = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
import torch
from toy_backend import ToyBackend
from cfaug.datasets.counterfactual import CounterfactualDataset, SavedDatasetError

# Allow 1 GiB more than what the imports took: listing 4e8 chunks would need many times that.
size_kb = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0])
limit = size_kb * 1024 + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    CounterfactualDataset(ToyBackend(), size=10**11).save(sys.argv[2], progress=False)
except SavedDatasetError as error:
    print(error)
"""


def test_a_huge_dataset_is_refused_with_both_figures_without_growing_memory(tmp_path):
    root = tmp_path / "huge"
    out = subprocess.run(
        [sys.executable, "-c", HUGE, str(TESTS), str(root)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Saving 100000000000 more items" in out.stdout and "needs about" in out.stdout and "free" in out.stdout
    assert not root.exists(), "a refused save writes nothing"


def test_the_disk_estimate_counts_only_missing_items(tmp_path, monkeypatch):
    data = CounterfactualDataset(ToyBackend(), size=24)
    data.save(tmp_path, stop=20, chunk_size=4, progress=False)
    needed = 4 * store._bytes_per_item(data.settings(), tmp_path, 4)
    monkeypatch.setattr("cfaug.datasets._folder.free_bytes", lambda root: needed - 1)
    with pytest.raises(SavedDatasetError, match=rf"Saving 4 more items .* needs about .*\({needed} bytes\).*\("):
        data.save(tmp_path, chunk_size=4, progress=False)
    # The refused save left no writer registered: another chunk size is welcome now.
    monkeypatch.setattr("cfaug.datasets._folder.free_bytes", lambda root: needed + 4 * 4096)
    assert data.save(tmp_path, chunk_size=2, progress=False)
    assert sorted(p.name for p in (tmp_path / "records").iterdir())[-2:] == ["000020-000022.csv", "000022-000024.csv"]


def test_the_estimate_bounds_what_is_written(tmp_path):
    for fmt in ("png", "safetensors"):
        data = CounterfactualDataset(ToyBackend(), size=40)
        estimate = 40 * store._bytes_per_item(data.settings(fmt), tmp_path, 8)
        data.save(tmp_path / fmt, fmt, chunk_size=8, progress=False)
        files = [p.stat() for p in (tmp_path / fmt).rglob("*") if p.is_file()]
        written = sum(max(info.st_size, info.st_blocks * 512) for info in files)
        assert written <= estimate


def test_a_full_disk_mid_run_ends_in_one_error_and_keeps_what_is_finished(tmp_path, monkeypatch):
    encode, calls = store._encode_pngs, []

    def filling(images):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return encode(images)

    monkeypatch.setattr(store, "_encode_pngs", filling)
    root = tmp_path / "cf"
    with pytest.raises(SavedDatasetError, match=r"is full \(no space left on device\): 8 of 24 items are saved"):
        CounterfactualDataset(ToyBackend(), size=24).save(root, chunk_size=4, progress=False)
    assert len(list((root / "records").iterdir())) == 2
    monkeypatch.setattr(store, "_encode_pngs", encode)
    assert CounterfactualDataset(ToyBackend(), size=24).save(root, chunk_size=4, progress=False)
    assert tree(root) == serial(tmp_path / "serial")


@pytest.mark.parametrize("flag", ["--batch-size", "--chunk-size"])
def test_generate_refuses_zero_sizes_under_their_own_names(tmp_path, capsys, flag):
    assert main(["generate", "--out", str(tmp_path / "x"), "--size", "4", "--backend", "toy", flag, "0"]) == 2
    assert f"`{flag}` should be an integer >= 1, but got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
