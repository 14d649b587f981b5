"""The writer pool of ``CounterfactualDataset.save``: the serial writer's bytes, order, resume and chunk grid.

Nothing here is timed; the speed of the pool is measured by ``benchmarks/generation.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cfaug.datasets import _writer, store
from cfaug.datasets._writer import WRITER_THREADS_ENV, WriterPool, writer_threads
from cfaug.datasets.counterfactual import CounterfactualDataset

TESTS = Path(__file__).resolve().parents[1]
FORMATS = ["png", "safetensors"]


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by relative path, without the temporary files a killed write leaves."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not (path.name.startswith(".") and path.name.endswith(".tmp"))
    }


def save(root: Path, fmt: str, threads: int, monkeypatch: pytest.MonkeyPatch, **kwargs) -> bool:
    monkeypatch.setenv(WRITER_THREADS_ENV, str(threads))
    data = CounterfactualDataset("toy", size=23, seed=4, target="all")
    return data.save(root, fmt, progress=False, **kwargs)


def record_encoding_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Note the thread that encodes each file of the save."""
    names: set[str] = set()
    for name in ("_encode_pngs", "_safetensors_save"):
        original = getattr(store, name)

        def noting(*args, original=original, **kwargs):
            names.add(threading.current_thread().name)
            return original(*args, **kwargs)

        monkeypatch.setattr(store, name, noting)
    return names


@pytest.mark.parametrize("fmt", FORMATS)
def test_pool_writes_the_serial_writers_bytes_on_threads(tmp_path, monkeypatch, fmt):
    threads = record_encoding_threads(monkeypatch)
    assert save(tmp_path / "serial", fmt, 0, monkeypatch, chunk_size=4, batch_size=3) is True
    assert threads == {threading.current_thread().name}, "the serial writer encodes in the caller's thread"
    threads.clear()
    assert save(tmp_path / "pool", fmt, 3, monkeypatch, chunk_size=4, batch_size=3) is True
    assert threads and all(name.startswith("cfaug-encode") for name in threads), threads
    assert tree(tmp_path / "pool") == tree(tmp_path / "serial")


@pytest.mark.parametrize("fmt", FORMATS)
def test_pool_keeps_the_chunk_grid(tmp_path, monkeypatch, fmt):
    # A range that starts and stops off the grid: chunks are still cut on multiples of chunk_size.
    assert save(tmp_path / "pool", fmt, 2, monkeypatch, start=3, stop=21, chunk_size=5) is False
    records = sorted(path.name for path in (tmp_path / "pool" / "records").iterdir())
    assert records == [f"{lo:06d}-{hi:06d}.csv" for lo, hi in ((3, 5), (5, 10), (10, 15), (15, 20), (20, 21))]
    save(tmp_path / "serial", fmt, 0, monkeypatch, start=3, stop=21, chunk_size=5)
    assert tree(tmp_path / "pool") == tree(tmp_path / "serial")
    # Completing the other indices ([0, 3) and [21, 23)) gives what the serial writer gives.
    assert save(tmp_path / "pool", fmt, 2, monkeypatch, chunk_size=5) is True
    assert save(tmp_path / "serial", fmt, 0, monkeypatch, chunk_size=5) is True
    assert tree(tmp_path / "pool") == tree(tmp_path / "serial")


def test_pool_and_workers(tmp_path, monkeypatch):
    # DataLoader workers get a serial writer (a pool does not pickle its threads); the files are the same.
    assert save(tmp_path / "workers", "png", 2, monkeypatch, chunk_size=4, num_workers=2) is True
    assert save(tmp_path / "serial", "png", 0, monkeypatch, chunk_size=4) is True
    assert tree(tmp_path / "workers") == tree(tmp_path / "serial")


def test_an_encoding_error_stops_the_save_and_it_resumes(tmp_path, monkeypatch):
    original, calls = store._encode_pngs, []

    def failing(images):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("simulated disk error")
        return original(images)

    monkeypatch.setattr(store, "_encode_pngs", failing)
    with pytest.raises(OSError, match="simulated disk error"):
        save(tmp_path / "pool", "png", 2, monkeypatch, chunk_size=4)
    records = sorted(path.name for path in (tmp_path / "pool" / "records").iterdir())
    assert records == ["000000-000004.csv", "000004-000008.csv"], "the chunks before the error are written"
    monkeypatch.setattr(store, "_encode_pngs", original)
    assert save(tmp_path / "pool", "png", 2, monkeypatch, chunk_size=4) is True
    assert save(tmp_path / "serial", "png", 0, monkeypatch, chunk_size=4) is True
    assert tree(tmp_path / "pool") == tree(tmp_path / "serial")


_KILLED_SAVE = """
import sys, time
sys.path.insert(0, {tests!r})
import cfaug
from toy_backend import ToyBackend
cfaug.register_backend("toy", override=True)(ToyBackend)
data = cfaug.CounterfactualDataset("toy", size=160, seed=4, target="all")
sample = data.backend.sample
def slow(*args, **kwargs):  # so that the parent kills the save half way
    time.sleep(0.05)
    return sample(*args, **kwargs)
data.backend.sample = slow
data.save({root!r}, {fmt!r}, chunk_size=4, batch_size=2, progress=False)
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_kill_gives_the_serial_bytes(tmp_path, monkeypatch, fmt):
    root = tmp_path / "killed"
    script = textwrap.dedent(_KILLED_SAVE).format(tests=str(TESTS), root=str(root), fmt=fmt)
    env = {**os.environ, WRITER_THREADS_ENV: "2", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        while len(list((root / "records").glob("*.csv"))) < 3:
            assert process.poll() is None, "the save ended before it could be killed"
            threading.Event().wait(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (root / "manifest.json").exists()
    # One committer, in order: the finished chunks are the first ones of the grid, as with the serial writer.
    records = sorted(path.name for path in (root / "records").iterdir() if path.suffix == ".csv")
    assert records == [f"{4 * i:06d}-{4 * i + 4:06d}.csv" for i in range(len(records))]

    monkeypatch.setenv(WRITER_THREADS_ENV, "2")
    data = CounterfactualDataset("toy", size=160, seed=4, target="all")
    assert data.save(root, fmt, chunk_size=4, batch_size=2, progress=False) is True
    monkeypatch.setenv(WRITER_THREADS_ENV, "0")
    data.save(tmp_path / "serial", fmt, chunk_size=4, batch_size=2, progress=False)
    assert tree(root) == tree(tmp_path / "serial")


def test_committer_writes_in_submission_order_and_the_queue_is_bounded(tmp_path):
    committed: list[int] = []
    release = [threading.Event() for _ in range(4)]

    def job(i: int):
        def make_files():
            release[i].wait()
            return [(f"{i}", b"", False)]

        return make_files

    pool = WriterPool(tmp_path, threads=4, max_pending=3, commit=lambda root, files: committed.append(int(files[0][0])))
    with pool:
        for i in range(3):
            pool.submit(job(i))
        fourth = threading.Thread(target=pool.submit, args=(job(3),))
        fourth.start()
        fourth.join(0.2)
        assert fourth.is_alive(), "a fourth chunk waits while three are pending"
        # Later chunks finish encoding first; the committer still writes them in submission order.
        for i in (2, 1, 0):
            release[i].set()
        fourth.join()
        release[3].set()
    assert committed == [0, 1, 2, 3]


def test_writer_threads_setting(monkeypatch):
    monkeypatch.delenv(WRITER_THREADS_ENV, raising=False)
    # One core is left to generation, at least one thread, at most four.
    for cores, threads in ((1, 1), (2, 1), (3, 2), (16, 4), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert writer_threads() == threads
    monkeypatch.setenv(WRITER_THREADS_ENV, "0")
    assert writer_threads() == 0 and WriterPool(".").threads == 0
    monkeypatch.setenv(WRITER_THREADS_ENV, "two")
    with pytest.raises(ValueError, match="CFAUG_WRITER_THREADS should be a non-negative integer"):
        writer_threads()
    with pytest.raises(ValueError, match="max_pending"):
        WriterPool(".", threads=1, max_pending=0)
    assert _writer.commit_files is WriterPool(".", threads=0)._commit


@pytest.mark.parametrize("fmt", FORMATS)
def test_groups_cut_across_batches_and_chunks_give_the_serial_bytes(tmp_path, monkeypatch, fmt):
    # PNGs go to the pool in groups (3 items here) that straddle batches (4) and end with each chunk (10).
    monkeypatch.setattr(store, "_GROUP_ITEMS", 3)
    submitted: list[int] = []
    original = WriterPool.submit

    def counting(self, make_files, done=lambda: None):
        submitted.append(1)
        return original(self, make_files, done)

    monkeypatch.setattr(WriterPool, "submit", counting)
    assert save(tmp_path / "pool", fmt, 2, monkeypatch, start=1, chunk_size=10, batch_size=4) is False
    # Chunks [1, 10), [10, 20), [20, 23): PNG groups of 3 (a chunk's last one shorter) or one shard, then a record.
    assert len(submitted) == ((3 + 1) + (4 + 1) + (1 + 1) if fmt == "png" else 3 * (1 + 1))
    save(tmp_path / "serial", fmt, 0, monkeypatch, start=1, chunk_size=10, batch_size=4)
    assert tree(tmp_path / "pool") == tree(tmp_path / "serial")


@pytest.mark.parametrize("threads", [0, 2])
def test_a_generation_error_mid_chunk_keeps_the_queued_groups_and_the_save_resumes(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(store, "_GROUP_ITEMS", 2)
    data = CounterfactualDataset("toy", size=23, seed=4, target="all")
    sample, calls = data.backend.sample, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # item 6, the third of the second chunk: the group of items 4 and 5 is queued
            raise RuntimeError("simulated generation error")
        return sample(*args, **kwargs)

    monkeypatch.setattr(data.backend, "sample", failing)
    monkeypatch.setenv(WRITER_THREADS_ENV, str(threads))
    root = tmp_path / "cf"
    with pytest.raises(RuntimeError, match="simulated generation error"):
        data.save(root, "png", chunk_size=4, progress=False)
    assert sorted(path.name for path in (root / "records").iterdir()) == ["000000-000004.csv"]
    # The second chunk's first group was written without a record; a resumed save writes the chunk again.
    assert (root / "images" / "000000" / "000004.png").is_file()
    monkeypatch.setattr(data.backend, "sample", sample)
    assert data.save(root, "png", chunk_size=4, progress=False) is True
    assert save(tmp_path / "serial", "png", 0, monkeypatch, chunk_size=4) is True
    assert tree(root) == tree(tmp_path / "serial")


def test_a_shard_lost_after_its_record_was_synced_is_written_again(tmp_path, monkeypatch):
    # Shards, like PNGs, are renamed into place unsynced; the synced record's sha256 is the commit point. A power
    # loss can leave a shard empty under its name: the next save's check finds it and writes the chunk again.
    assert save(tmp_path / "cf", "safetensors", 2, monkeypatch, chunk_size=4) is True
    (tmp_path / "cf" / "shards" / "000004-000008.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"1 finished chunk\(s\).*\[4, 8\).*000004-000008.safetensors"):
        assert save(tmp_path / "cf", "safetensors", 2, monkeypatch, chunk_size=4) is True
    assert save(tmp_path / "serial", "safetensors", 0, monkeypatch, chunk_size=4) is True
    assert tree(tmp_path / "cf") == tree(tmp_path / "serial")


def test_finalize_refuses_a_record_whose_png_is_missing_or_a_folder(tmp_path, monkeypatch):
    root = tmp_path / "cf"
    assert save(root, "png", 2, monkeypatch, stop=12, chunk_size=4) is False
    assert save(root, "png", 2, monkeypatch, start=12, chunk_size=4) is True
    images = root / "images" / "000000"
    (images / "000013.png").unlink()
    with pytest.raises(store.SavedDatasetError, match=r"000013.png'.*is missing"):
        store.finalize(root)
    (images / "000013.png").mkdir()  # a folder where a file should be
    with pytest.raises(store.SavedDatasetError, match=r"000013.png'.*is missing"):
        store.finalize(root)


def test_commit_files_makes_missing_folders_and_leaves_ordinary_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        _writer.commit_files(tmp_path, [("images/000001/001000.png", b"png", False), ("records/a.csv", b"csv", True)])
        _writer.commit_files(tmp_path, [("images/000001/001000.png", b"again", False)])  # over an existing file
    finally:
        os.umask(umask)
    assert tree(tmp_path) == {"images/000001/001000.png": b"again", "records/a.csv": b"csv"}
    assert {path.stat().st_mode & 0o777 for path in tmp_path.rglob("*") if path.is_file()} == {0o640}
    assert not [path for path in tmp_path.rglob(".*") if path.is_file()], "no temporary file is left behind"
