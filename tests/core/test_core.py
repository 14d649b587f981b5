"""Core pieces: composition, per-sample seeds, checkpoints, named weights, the backend registry."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from toy_backend import ToyBackend

import cfaug
from cfaug import registry
from cfaug.backends.base import Components
from cfaug.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cfaug.functional import composite
from cfaug.hub import Weights, WeightsError, resolve_weights
from cfaug.seeding import draw_seeds, index_seeds, mix_seed, per_sample_normal, per_sample_randint

# ------------------------------------------------------------------------------------------- composition


def test_composite_blends_by_mask():
    mask = torch.rand(2, 1, 4, 4)
    fg, bg = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    assert torch.allclose(composite(mask, fg, bg), mask * fg + (1 - mask) * bg, atol=1e-6)
    assert torch.equal(composite(torch.ones(2, 1, 4, 4), fg, bg), fg)
    assert torch.equal(composite(torch.zeros(2, 1, 4, 4), fg, bg), bg)


@pytest.mark.parametrize(
    ("mask_shape", "bg_shape"),
    [((2, 1, 4, 4), (2, 3, 4, 5)), ((3, 1, 4, 4), (2, 3, 4, 4)), ((2, 1, 5, 4), (2, 3, 4, 4))],
)
def test_composite_rejects_mismatched_shapes(mask_shape, bg_shape):
    fg = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="should"):
        composite(torch.rand(mask_shape), fg if bg_shape == fg.shape else fg, torch.rand(bg_shape))


def test_components_compose_and_move():
    parts = Components.compose(torch.ones(2, 1, 3, 3), torch.ones(2, 3, 3, 3), torch.zeros(2, 3, 3, 3))
    assert len(parts) == 2 and torch.equal(parts.image, parts.foreground)
    assert parts.to("cpu").image.device.type == "cpu"


# ----------------------------------------------------------------------------------------------- seeding


def test_per_sample_streams_do_not_depend_on_the_batch():
    seeds = draw_seeds(6, torch.Generator().manual_seed(0))
    full = per_sample_normal(seeds, stream=3, shape=(5,))
    alone = torch.cat([per_sample_normal(seeds[i : i + 1], 3, (5,)) for i in range(6)])
    reordered = per_sample_normal(seeds.flip(0), 3, (5,)).flip(0)
    assert torch.equal(full, alone) and torch.equal(full, reordered)
    assert not torch.equal(full, per_sample_normal(seeds, 4, (5,))), "streams must differ"
    ints = per_sample_randint(seeds, 1, 10, (4,))
    assert ints.shape == (6, 4) and int(ints.min()) >= 0 and int(ints.max()) < 10


def test_seed_mixing_spreads_and_stays_in_range():
    values = {mix_seed(0, i) for i in range(1000)} | {mix_seed(i, 0) for i in range(1, 1000)}
    assert len(values) == 1999
    assert all(0 <= v < 2**63 for v in values)
    assert index_seeds(7, [0, 1, 2]).tolist() == [mix_seed(7, 0), mix_seed(7, 1), mix_seed(7, 2)]
    assert per_sample_normal(torch.empty(0, dtype=torch.int64), 0, (3,)).shape == (0, 3)


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    state = {"w": torch.randn(3, 4), "count": torch.tensor(7)}
    path = save_checkpoint(tmp_path / "a.safetensors", state, {"backend": "toy", "metrics": {"acc": 0.5}})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.state_dict["w"], state["w"]) and loaded.state_dict["count"].item() == 7
    assert loaded.meta["backend"] == "toy" and loaded.meta["metrics"] == {"acc": 0.5}
    assert loaded.meta["format_version"] == 1 and loaded.meta["cfaug_version"] == cfaug.__version__


def test_checkpoint_refuses_pickles_and_foreign_files(tmp_path):
    pickled = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(CheckpointError, match="import-weights"):
        load_checkpoint(pickled)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without cfaug metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_checkpoint_from_the_future_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "f.safetensors", {"w": torch.zeros(1)}, {"format_version": 99})
    with pytest.raises(CheckpointError, match="pip install -U cfaug"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"backend": "toy"})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"], "no temporary file is left behind"


# ----------------------------------------------------------------------------------------- named weights


def _checkpoint_file(tmp_path: Path) -> tuple[Path, str]:
    backend = ToyBackend()
    path = tmp_path / "toy.safetensors"
    backend.save(path, recipe={"note": "test"})
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_backend_save_and_load_by_path(tmp_path):
    path, digest = _checkpoint_file(tmp_path)
    loaded = cfaug.load_backend("toy", weights=path)
    assert loaded.weights_sha256 == digest and not loaded.training
    seeds = torch.tensor([5, 6])
    a = loaded.sample([0, 1], [1, 2], [2, 3], seeds=seeds).image
    b = ToyBackend().sample([0, 1], [1, 2], [2, 3], seeds=seeds).image
    assert torch.equal(a, b)
    assert load_checkpoint(path).meta["recipe"] == {"note": "test"}


def test_named_weights_download_verify_and_cache(tmp_path, monkeypatch):
    source, digest = _checkpoint_file(tmp_path)
    monkeypatch.setenv("CFAUG_HOME", str(tmp_path / "home"))
    named = {"v1": Weights("v1", "toy-v1.safetensors", digest, url=source.as_uri())}
    path, got = resolve_weights("toy", named, "v1", progress=False)
    assert path == tmp_path / "home" / "toy" / "toy-v1.safetensors" and got == digest
    source.unlink()  # cached now: no second download
    assert resolve_weights("toy", named, "v1", progress=False)[0] == path
    path.write_bytes(b"corrupted")
    with pytest.raises(WeightsError, match="corrupted.*Delete"):
        resolve_weights("toy", named, "v1", progress=False)


def test_download_with_wrong_digest_leaves_nothing(tmp_path, monkeypatch):
    source, _ = _checkpoint_file(tmp_path)
    monkeypatch.setenv("CFAUG_HOME", str(tmp_path / "home"))
    named = {"v1": Weights("v1", "toy-v1.safetensors", "0" * 64, url=source.as_uri())}
    with pytest.raises(WeightsError, match="expected"):
        resolve_weights("toy", named, "v1", progress=False)
    assert not (tmp_path / "home" / "toy" / "toy-v1.safetensors").exists()
    named = {"v1": Weights("v1", "x.safetensors", "0" * 64, url=(tmp_path / "nowhere").as_uri())}
    with pytest.raises(WeightsError, match="Could not download"):
        resolve_weights("toy", named, "v1", progress=False)


def test_unknown_weights_list_the_valid_names(tmp_path):
    named = {"good": Weights("good", "g.safetensors", "0" * 64)}
    with pytest.raises(WeightsError, match=r"valid names: \['good'\]"):
        resolve_weights("toy", named, "bad", progress=False)
    with pytest.raises(WeightsError, match="should ship inside the cfaug package"):
        resolve_weights("toy", named, "good", progress=False)


def test_backend_without_default_weights_says_so():
    class NoDefault(ToyBackend):
        name = "nodefault"

    with pytest.raises(WeightsError, match="ships no default weights"):
        cfaug.Backend.from_pretrained.__func__(NoDefault)


def test_checkpoint_of_another_backend_is_refused(tmp_path):
    path, _ = _checkpoint_file(tmp_path)
    meta = load_checkpoint(path).meta

    class Other(ToyBackend):
        name = "other"

    with pytest.raises(CheckpointError, match="written by backend 'toy'"):
        Other.from_checkpoint(load_checkpoint(path))
    assert meta["arch"]["num_classes"] == 4


# ---------------------------------------------------------------------------------------------- sampling


def test_sample_validates_its_arguments(toy):
    with pytest.raises(ValueError, match="one length"):
        toy.sample([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        toy.sample([0, 4], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        toy.sample(torch.tensor([0.0]), [0], [0])
    with pytest.raises(TypeError, match="class indices"):
        toy.sample("3", [0], [0])
    with pytest.raises(ValueError, match="`seeds` should be an int64 tensor of shape"):
        toy.sample([0], [0], [0], seeds=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="Unknown value 'colour'"):
        toy.generate("colour", torch.tensor([0]), torch.tensor([0]))


def test_sample_is_a_function_of_classes_and_seeds(toy):
    seeds = torch.tensor([11, 12, 13])
    a = toy.sample([0, 1, 2], [3, 2, 1], [1, 1, 1], seeds=seeds)
    b = toy.sample([2], [1], [1], seeds=seeds[2:])
    assert torch.equal(a.image[2], b.image[0])
    c = toy.sample([0, 1, 2], [3, 2, 1], [1, 1, 1], generator=torch.Generator().manual_seed(0))
    d = toy.sample([0, 1, 2], [3, 2, 1], [1, 1, 1], generator=torch.Generator().manual_seed(0))
    assert torch.equal(c.image, d.image) and not torch.equal(a.image, c.image)
    assert not a.image.requires_grad


def test_no_estimator_by_default(toy):
    base = ToyBackend(mask_estimator=False)
    with pytest.raises(NotImplementedError, match="no mask estimator"):
        base.estimate_mask(torch.rand(1, 3, 8, 8))
    assert toy.has_mask_estimator and not base.has_mask_estimator


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_and_loads():
    assert {"mnist", "toy"} <= set(cfaug.list_backends())
    assert cfaug.list_backends("to*") == ["toy"]
    assert cfaug.get_backend_class("toy") is ToyBackend
    with pytest.raises(ValueError, match=r"Unknown value 'nope'.*Valid values are \[.*'toy'"):
        cfaug.load_backend("nope")
    with pytest.raises(TypeError, match="backend name"):
        cfaug.get_backend_class(3)


def test_register_rejects_non_backends_and_warns_on_replacement():
    with pytest.raises(TypeError, match="subclass of cfaug.Backend"):
        cfaug.register_backend("x")(dict)

    class First(ToyBackend):
        name = "dup-test"

    class Second(ToyBackend):
        name = "dup-test"

    cfaug.register_backend()(First)
    with pytest.warns(RuntimeWarning, match="registered before"):
        cfaug.register_backend()(Second)
    assert cfaug.get_backend_class("dup-test") is Second
    registry._registered.pop("dup-test")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A fake installed distribution on sys.path that declares backends through the entry-point group."""

    def make(dist: str, entries: str, module_source: str, module: str = "fakeplug_mod") -> Path:
        root = tmp_path / dist
        info = root / f"{dist.replace('-', '_')}-0.1.dist-info"  # wheel naming: the folder stem has no '-'
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[cfaug.backends]\n{entries}\n")
        (root / f"{module}.py").write_text(textwrap.dedent(module_source))
        monkeypatch.syspath_prepend(str(root))
        return root

    registry.refresh_backends()
    yield make
    for name in [m for m in sys.modules if m.startswith("fakeplug")]:
        del sys.modules[name]
    registry.refresh_backends()


PLUGIN_SOURCE = """
    from toy_backend import ToyBackend

    class PluginBackend(ToyBackend):
        name = ""
"""


def test_entry_point_plugin_is_discovered_lazily_and_loaded(plugin_dir):
    plugin_dir("fakeplug", "fakeplug-backend = fakeplug_mod:PluginBackend", PLUGIN_SOURCE)
    assert "fakeplug-backend" in cfaug.list_backends()
    assert "fakeplug_mod" not in sys.modules, "listing must not import plugins"
    backend = cfaug.load_backend("fakeplug-backend")
    assert type(backend).__name__ == "PluginBackend" and backend.name == "fakeplug-backend"


def test_broken_plugin_names_itself_and_spares_the_others(plugin_dir):
    source = "raise ImportError('no torch_xyz')"
    plugin_dir("fakeplug-broken", "broken = fakeplug_broken:Nope", source, "fakeplug_broken")
    with pytest.raises(registry.BackendImportError, match=r"'broken'.*fakeplug-broken.*no torch_xyz"):
        cfaug.load_backend("broken")
    assert isinstance(cfaug.load_backend("toy"), ToyBackend)


def test_plugin_that_is_not_a_backend_is_refused(plugin_dir):
    plugin_dir("fakeplug-wrong", "wrong = fakeplug_wrong:thing", "thing = 3", "fakeplug_wrong")
    with pytest.raises(registry.BackendImportError, match="subclass of cfaug.Backend"):
        cfaug.load_backend("wrong")


def test_duplicate_plugins_warn_and_explicit_registration_wins(plugin_dir):
    plugin_dir("fakeplug-a", "twin = fakeplug_a:PluginBackend", PLUGIN_SOURCE, "fakeplug_a")
    plugin_dir("fakeplug-b", "twin = fakeplug_b:PluginBackend", PLUGIN_SOURCE, "fakeplug_b")
    with pytest.warns(RuntimeWarning, match="Two plugins declare the cfaug backend 'twin'"):
        cfaug.list_backends()

    class Explicit(ToyBackend):
        name = "twin"

    with pytest.warns(RuntimeWarning, match="explicit registration"):
        cfaug.register_backend()(Explicit)
    assert cfaug.get_backend_class("twin") is Explicit
    registry._registered.pop("twin")


def test_checkpoint_meta_is_json(tmp_path):
    path, _ = _checkpoint_file(tmp_path)
    meta = load_checkpoint(path).meta
    json.dumps(meta)
    assert meta["class_names"] == ["class0", "class1", "class2", "class3"] and meta["value_range"] == [0.0, 1.0]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    from cfaug._utils import atomic_write

    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "f.bin") as handle:
            handle.write(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_write_bytes_replaces_whole_and_leaves_nothing_on_failure(tmp_path):
    from cfaug._utils import atomic_write_bytes

    target = tmp_path / "new" / "f.png"  # the folder is made on the way
    atomic_write_bytes(target, b"first", fsync=False)
    atomic_write_bytes(target, b"second" * 1000)
    assert target.read_bytes() == b"second" * 1000
    atomic_write_bytes(str(tmp_path / "deeper" / "g.png"), b"as a string")  # the writer pool passes strings
    assert (tmp_path / "deeper" / "g.png").read_bytes() == b"as a string"
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path / "folder", b"data")
    leftovers = [path.name for path in tmp_path.rglob("*") if path.name.endswith(".tmp")]
    assert leftovers == [] and list((tmp_path / "folder").iterdir()) == []


def test_registering_a_subclass_gives_it_its_own_name():
    class Child(ToyBackend):
        pass

    cfaug.register_backend("child-test")(Child)
    try:
        assert Child.name == "child-test" and ToyBackend.name == "toy"
        assert load_checkpoint_meta_backend(Child()) == "child-test"
    finally:
        registry._registered.pop("child-test")


def load_checkpoint_meta_backend(backend: cfaug.Backend) -> str:
    return backend.checkpoint_meta()["backend"]


def test_plugin_weights_ship_in_the_plugin_package(tmp_path, monkeypatch):
    source, digest = _checkpoint_file(tmp_path)
    package = tmp_path / "site" / "myplugin"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "weights" / "v1.safetensors").write_bytes(source.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    named = {"v1": Weights("v1", "v1.safetensors", digest, package="myplugin")}
    path, got = resolve_weights("toy", named, "v1")
    assert path == package / "weights" / "v1.safetensors" and got == digest
    sys.modules.pop("myplugin", None)


class _FakeLibc:
    """Records ``mallopt`` calls instead of changing this test process's allocator."""

    def __init__(self, result: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.result = result
        self.mallopt = self  # a ctypes function: callable, with argtypes and restype to set

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


def test_keep_freed_memory_raises_both_thresholds_unless_the_user_chose(monkeypatch):
    import ctypes

    from cfaug import _utils

    libc = _FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert _utils.keep_freed_memory() is True
    assert libc.calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
    for name, value in (("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"), ("LD_PRELOAD", "libjemalloc.so.2")):
        libc.calls.clear()
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            assert _utils.keep_freed_memory() is False and libc.calls == []
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _utils.keep_freed_memory() is False and libc.calls == []
    monkeypatch.setattr(sys, "platform", "linux")
    libc.result = 0  # a libc that refuses the option (musl's stub)
    assert _utils.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_keep_freed_memory_takes_effect_in_a_real_glibc_process():
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    code = "from cfaug._utils import keep_freed_memory; print(keep_freed_memory())"
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()})")
    assert output.stdout.strip() == "True"


def test_the_cfaug_command_tunes_malloc_but_a_call_from_python_does_not(monkeypatch, capsys):
    from cfaug.cli import parser

    calls = []
    monkeypatch.setattr(parser, "keep_freed_memory", lambda: calls.append(True) or True)
    assert parser.main(["list"]) == 0 and calls == []
    monkeypatch.setattr(sys, "argv", ["cfaug", "list"])
    assert parser.main() == 0 and calls == [True]
    capsys.readouterr()
