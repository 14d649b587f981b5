"""CounterfactualAugment on the toy backend: input kinds, modes, banks, records, pickling and workers."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms as v1
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2
from toy_backend import ToyBackend
from transform_contract import as_tensor, check_transform, labels_for, make_input, pil_rgb

import cfaug
from cfaug.functional import composite
from cfaug.transforms import CounterfactualAugment
from cfaug.transforms._render import resize_to

RECORD_KEYS = ("applied", "shape", "texture", "background", "seed_shape", "seed_texture", "seed_background")


# ------------------------------------------------------------------------------------------------ helpers
def pil_gray(size: int = 8, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")


class GenerateSpy:
    """Wraps backend.generate to record (mechanism, batch size) of each call."""

    def __init__(self, backend, monkeypatch):
        self.calls: list[tuple[str, int]] = []
        original = backend.generate

        def spy(mechanism, classes, seeds):
            self.calls.append((mechanism, len(classes)))
            return original(mechanism, classes, seeds)

        monkeypatch.setattr(backend, "generate", spy)


# ------------------------------------------------------------------------------------------------ kinds
def test_keeps_the_transform_contract(toy):
    # Input kinds keep type, dtype, shape and device; labels pass through; p=0 is the identity; seeds, pickling
    # and replay (tests/transform_contract.py). The other backends run it in test_transform_contract.py.
    check_transform(lambda **kwargs: CounterfactualAugment(toy, **kwargs))


@pytest.mark.filterwarnings("ignore:CounterfactualAugment got an image of 20x20:UserWarning")
@pytest.mark.parametrize("size", [4, 8, 12, 20])
def test_output_size_follows_input(toy, size):
    image = torch.rand(2, 3, size, size)
    out, _ = CounterfactualAugment(toy, p=1.0)(image, torch.tensor([0, 1]))
    assert out.shape == image.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    out = CounterfactualAugment(toy, p=1.0)(pil_rgb(size))
    assert out.size == (size, size)


def test_p1_changes_every_sample_and_keeps_labels(toy):
    images = torch.rand(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    augment = CounterfactualAugment(toy, p=1.0, return_record=True)
    (out, out_labels), record = augment(images, labels)
    assert out_labels is labels
    assert all(not torch.equal(out[i], images[i]) for i in range(6))
    assert record["applied"].all()
    assert torch.equal(record["shape"], labels)


def test_per_sample_p_on_a_batch(toy):
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    (out, _), record = CounterfactualAugment(toy, p=0.5, return_record=True)(images, torch.arange(64) % 4)
    changed = torch.tensor([not torch.equal(out[i], images[i]) for i in range(64)])
    assert torch.equal(changed, record["applied"])
    assert 10 < int(changed.sum()) < 54


def test_same_on_batch(toy):
    torch.manual_seed(0)
    augment = CounterfactualAugment(toy, p=0.5, same_on_batch=True, return_record=True)
    seen = set()
    for _ in range(6):
        (_, _), record = augment(torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0]))
        seen.add(bool(record["applied"][0]))
        assert record["applied"].all() or not record["applied"].any()
        if record["applied"][0]:
            for key in ("texture", "background", "seed_texture", "seed_background", "seed_shape"):
                assert (record[key] == record[key][0]).all()
    assert seen == {True, False}


# ------------------------------------------------------------------------------------------------ modes
def test_label_is_the_shape_class_and_its_mask_is_used():
    toy = ToyBackend(image_size=32)  # discs of neighbouring classes differ by several pixels at this size
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([3, 0, 2, 1])
    (out, _), record = CounterfactualAugment(toy, p=1.0, return_record=True)(images, labels)
    assert torch.equal(record["shape"], labels)
    mask = toy.generate("shape", record["shape"], record["seed_shape"])
    for i, label in enumerate(labels.tolist()):
        other = toy.generate("shape", torch.tensor([(label + 1) % 4]), record["seed_shape"][i : i + 1])
        assert not torch.equal(mask[i], other[0])  # the disc radius tells the classes apart
    expected = composite(
        mask,
        toy.generate("texture", record["texture"], record["seed_texture"]),
        toy.generate("background", record["background"], record["seed_background"]),
    )
    assert torch.equal(out, expected)


@pytest.mark.parametrize("vary", [(), ("texture",), ("background",), ("texture", "background")])
def test_vary_label_aware(toy, vary):
    torch.manual_seed(0)
    labels = torch.arange(32) % 4
    (_, _), record = CounterfactualAugment(toy, p=1.0, vary=vary, return_record=True)(torch.rand(32, 3, 8, 8), labels)
    for mechanism in ("texture", "background"):
        if mechanism in vary:
            assert not torch.equal(record[mechanism], labels)  # drawn uniformly, independent of the label
        else:
            assert torch.equal(record[mechanism], labels)


def test_image_only_keeps_real_shape(toy):
    images = torch.rand(3, 3, 8, 8)
    out, record = CounterfactualAugment(toy, p=1.0, return_record=True)(images)
    assert (record["shape"] == -1).all() and (record["seed_shape"] == -1).all()
    mask = toy.estimate_mask(images)
    expected = composite(
        mask,
        toy.generate("texture", record["texture"], record["seed_texture"]),
        toy.generate("background", record["background"], record["seed_background"]),
    )
    assert torch.equal(out, expected)


@pytest.mark.parametrize("vary", [("texture",), ("background",)])
def test_image_only_vary_keeps_the_other_part_real(toy, vary):
    images = torch.rand(3, 3, 8, 8)
    out, record = CounterfactualAugment(toy, p=1.0, vary=vary, return_record=True)(images)
    inside = toy.estimate_mask(images).bool().expand_as(images)
    kept = ~inside if vary == ("texture",) else inside  # the part not varied is the real image
    assert torch.equal(out[kept], images[kept])
    assert not torch.equal(out[~kept], images[~kept])
    missing = "background" if vary == ("texture",) else "texture"
    assert (record[missing] == -1).all() and (record[f"seed_{missing}"] == -1).all()


def test_image_only_resizes_generated_parts(toy):
    image = torch.rand(3, 12, 12)
    out, record = CounterfactualAugment(toy, p=1.0, bank_size=0, return_record=True)(image)
    part = resize_to(toy.generate("texture", record["texture"][None], record["seed_texture"][None]), (12, 12))
    mask = resize_to(toy.estimate_mask(image[None]), (12, 12))
    background = resize_to(
        toy.generate("background", record["background"][None], record["seed_background"][None]), (12, 12)
    )
    assert torch.equal(out, composite(mask, part, background)[0])


def test_image_only_without_estimator_explains_placements():
    backend = ToyBackend(mask_estimator=False)
    augment = CounterfactualAugment(backend, p=1.0)
    with pytest.raises(ValueError, match="no mask estimator") as error:
        augment(pil_rgb())
    for placement in ("transforms=", "collate_fn", "after the DataLoader"):
        assert placement in str(error.value)
    # label-aware calls still work, and p=0 does not hide the error
    out, label = augment(pil_rgb(), 1)
    assert label == 1
    with pytest.raises(ValueError, match="no mask estimator"):
        CounterfactualAugment(backend, p=0.0)(torch.rand(3, 8, 8))


def test_image_only_with_empty_vary_is_an_error(toy):
    with pytest.raises(ValueError, match="vary=()"):
        CounterfactualAugment(toy, vary=())(torch.rand(3, 8, 8))


# ------------------------------------------------------------------------------------------------ channels
def test_grayscale_to_rgb_converts_every_output(toy):
    for p in (0.0, 1.0):
        out, _ = CounterfactualAugment(toy, p=p, grayscale_to_rgb=True)(pil_gray(), 1)
        assert out.mode == "RGB" and out.size == (8, 8)
        batch, _ = CounterfactualAugment(toy, p=p, grayscale_to_rgb=True)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
        assert batch.shape == (2, 3, 8, 8)
    real = torch.rand(1, 8, 8)
    out, _ = CounterfactualAugment(toy, p=0.0, grayscale_to_rgb=True)(real, 0)
    assert torch.equal(out, real.expand(3, -1, -1))


def test_other_channel_mismatches_are_errors(toy):
    with pytest.raises(ValueError, match="mode 'L' or 'RGB'"):
        CounterfactualAugment(toy)(pil_rgb().convert("RGBA"), 1)
    with pytest.raises(ValueError, match="2 channels"):
        CounterfactualAugment(toy, grayscale_to_rgb=True)(torch.rand(2, 8, 8), 1)
    gray_backend = ToyBackend(channels=1)
    with pytest.raises(ValueError, match="3 channels"):
        CounterfactualAugment(gray_backend)(torch.rand(3, 8, 8), 1)
    with pytest.raises(ValueError, match="Leave grayscale_to_rgb=False"):
        CounterfactualAugment(gray_backend, grayscale_to_rgb=True)(torch.rand(1, 8, 8), 1)
    out, _ = CounterfactualAugment(gray_backend, p=1.0)(torch.rand(1, 8, 8), 1)
    assert out.shape == (1, 8, 8)


# ------------------------------------------------------------------------------------------------ pipelines
def test_v1_compose_image_only(toy):
    pipeline = v1.Compose([CounterfactualAugment(toy, p=1.0), v1.PILToTensor()])
    out = pipeline(pil_rgb())
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 8)


def test_v2_compose_and_random_apply(toy):
    augment = CounterfactualAugment(toy, p=1.0)
    pipeline = v2.Compose([v2.ToImage(), augment, v2.ToDtype(torch.float32, scale=True)])
    image, label = pipeline(pil_rgb(), 3)
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and label == 3
    for p in (0.0, 1.0):
        wrapped = v2.Compose([v2.RandomApply([CounterfactualAugment(toy, p=1.0)], p=p)])
        original = torch.rand(3, 8, 8)
        image, label = wrapped(original, torch.tensor(1))
        assert label == 1 and torch.equal(image, original) == (p == 0.0)


def test_dict_sample(toy):
    sample = {"image": tv_tensors.Image(torch.rand(3, 8, 8)), "label": 3, "meta": "x"}
    out, record = CounterfactualAugment(toy, p=1.0, return_record=True)(sample)
    assert set(out) == {"image", "label", "meta"} and out["label"] == 3 and out["meta"] == "x"
    assert isinstance(out["image"], tv_tensors.Image) and int(record["shape"]) == 3
    with pytest.raises(ValueError, match="labels_getter"):
        CounterfactualAugment(toy)({"image": torch.rand(3, 8, 8), "target": 1})


def test_labels_getter_callable_and_none(toy):
    sample = {"img": torch.rand(3, 8, 8), "target": {"cls": torch.tensor(2)}}
    augment = CounterfactualAugment(toy, p=1.0, labels_getter=lambda s: s["target"]["cls"], return_record=True)
    out, record = augment(sample)
    assert int(record["shape"]) == 2 and out["target"]["cls"] == 2
    # labels_getter=None: image-only even when a label is present (for an annotated sample, say)
    out, record = CounterfactualAugment(toy, p=1.0, labels_getter=None, return_record=True)(torch.rand(3, 8, 8), 1)
    assert out[1] == 1 and int(record["shape"]) == -1


def test_int_and_tensor_labels(toy):
    for label in (1, torch.tensor(1), np.int64(1), torch.tensor([1])):
        (_, out_label), record = CounterfactualAugment(toy, p=1.0, return_record=True)(pil_rgb(), label)
        assert out_label is label and int(record["shape"]) == 1


def test_extra_repr_shows_settings(toy):
    text = repr(CounterfactualAugment("toy", p=0.3, vary="texture", bank_size=8, reuse=2, grayscale_to_rgb=True))
    for part in ("backend='toy'", "p=0.3", "vary=('texture',)", "bank_size=8", "reuse=2", "grayscale_to_rgb=True"):
        assert part in text


# ------------------------------------------------------------------------------------------------ generation
def test_generator_runs_only_for_chosen_samples(toy, monkeypatch):
    spy = GenerateSpy(toy, monkeypatch)
    estimated = []
    original_estimate = toy.estimate_mask
    monkeypatch.setattr(toy, "estimate_mask", lambda images: estimated.append(len(images)) or original_estimate(images))
    torch.manual_seed(0)
    augment = CounterfactualAugment(toy, p=0.5, return_record=True)
    (_, _), record = augment(torch.rand(16, 3, 8, 8), torch.arange(16) % 4)
    chosen = int(record["applied"].sum())
    assert 0 < chosen < 16
    assert spy.calls == [("shape", chosen), ("texture", chosen), ("background", chosen)]
    spy.calls.clear()
    _, record = augment(torch.rand(16, 3, 8, 8))
    chosen = int(record["applied"].sum())
    assert spy.calls == [("texture", chosen), ("background", chosen)] and estimated == [chosen]
    spy.calls.clear()
    CounterfactualAugment(toy, p=0.0)(torch.rand(16, 3, 8, 8), torch.arange(16) % 4)
    assert spy.calls == []


def test_bank_reuse_policy(monkeypatch):
    backend = ToyBackend(num_classes=1)
    spy = GenerateSpy(backend, monkeypatch)
    augment = CounterfactualAugment(backend, p=1.0, vary=(), bank_size=2, reuse=3, return_record=True)
    records = [augment(pil_rgb(), 0)[1] for _ in range(6)]
    assert spy.calls == [("shape", 2), ("texture", 2), ("background", 2)]  # one batched call per mechanism
    for mechanism in ("shape", "texture", "background"):
        seeds = [int(r[f"seed_{mechanism}"]) for r in records]
        assert sorted(seeds.count(s) for s in set(seeds)) == [3, 3]  # each stored component used `reuse` times
        assert all(len(set(seeds[i : i + 2])) == 2 for i in (0, 2, 4))  # each round uses every component once
    seventh = augment(pil_rgb(), 0)[1]
    assert spy.calls[3:] == [("shape", 2), ("texture", 2), ("background", 2)]  # regenerated after exhaustion
    assert int(seventh["seed_texture"]) not in {int(r["seed_texture"]) for r in records}


def test_bank_reuse_1_gives_fresh_components(monkeypatch):
    backend = ToyBackend(num_classes=1)
    augment = CounterfactualAugment(backend, p=1.0, vary=(), bank_size=4, reuse=1, return_record=True)
    seeds = [int(augment(pil_rgb(), 0)[1]["seed_texture"]) for _ in range(12)]
    assert len(set(seeds)) == 12


def test_bank_size_0_generates_each_sample(toy, monkeypatch):
    spy = GenerateSpy(toy, monkeypatch)
    CounterfactualAugment(toy, p=1.0, bank_size=0)(pil_rgb(), 1)
    assert spy.calls == [("shape", 1), ("texture", 1), ("background", 1)]


@pytest.mark.parametrize("kind", ["pil", "uint8", "float32", "batch_float", "batch_uint8"])
@pytest.mark.parametrize("label_aware", [True, False])
def test_record_replays_the_output(toy, kind, label_aware):
    torch.manual_seed(3)
    image, batched = make_input(kind)
    augment = CounterfactualAugment(toy, p=0.7, return_record=True)
    if label_aware:
        (out, _), record = augment(image, labels_for(image, batched))
    else:
        out, record = augment(image)
    assert set(record) == set(RECORD_KEYS)
    assert torch.equal(as_tensor(augment.replay(image, record)), as_tensor(out))


def test_per_sample_records_collate_and_replay_a_batch(toy):
    augment = CounterfactualAugment(toy, p=1.0, return_record=True)
    images = [torch.rand(3, 8, 8) for _ in range(4)]
    results = [augment(image, label) for image, label in zip(images, [0, 1, 2, 3], strict=True)]
    (outputs, labels), record = default_collate(results)
    assert record["applied"].shape == (4,) and torch.equal(labels, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(augment.replay(torch.stack(images), record), outputs)


def test_same_seed_same_output(toy):
    def run(seed):
        torch.manual_seed(seed)
        augment = CounterfactualAugment("toy", p=0.5)
        batch, _ = augment(torch.ones(8, 3, 8, 8) * 0.5, torch.arange(8) % 4)
        single = [as_tensor(augment(pil_rgb(), 1)[0]) for _ in range(3)]
        return batch, single

    first, second = run(0), run(0)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    assert not torch.equal(first[0], run(1)[0])


def test_generator_argument_is_independent_of_global_rng(toy):
    def run(global_seed):
        torch.manual_seed(global_seed)
        augment = CounterfactualAugment("toy", p=0.5, generator=torch.Generator().manual_seed(7))
        return augment(torch.ones(8, 3, 8, 8) * 0.5, torch.arange(8) % 4)[0]

    assert torch.equal(run(0), run(1))
    augment = CounterfactualAugment("toy", p=0.5)
    augment.generator = torch.Generator().manual_seed(7)
    torch.manual_seed(2)
    assert torch.equal(augment(torch.ones(8, 3, 8, 8) * 0.5, torch.arange(8) % 4)[0], run(0))
    assert "generator=<torch.Generator>" in repr(augment)
    with pytest.raises(TypeError, match="`generator`"):
        augment.generator = 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_is_generated_on_its_device():
    augment = CounterfactualAugment("toy", p=1.0)
    images = torch.rand(4, 3, 8, 8, device="cuda")
    out, _ = augment(images, torch.tensor([0, 1, 2, 3], device="cuda"))
    assert out.device == images.device and augment.backend.device.type == "cuda"


# ------------------------------------------------------------------------------------------------ processes
def test_pickle_round_trip_leaves_model_and_bank_behind(toy):
    augment = CounterfactualAugment("toy", p=1.0, bank_size=4)
    augment(pil_rgb(), 1)  # loads the backend and fills a bank
    assert augment._handle._model is not None and augment._handle._bank is not None
    clone = pickle.loads(pickle.dumps(augment))
    assert clone._handle._model is None and clone._handle._bank is None
    assert repr(clone) == repr(augment)
    out, label = clone(pil_rgb(), 1)
    assert out.size == (8, 8) and label == 1
    # a backend given as an instance travels with the transform
    by_instance = pickle.loads(pickle.dumps(CounterfactualAugment(toy, p=1.0)))
    assert isinstance(by_instance._handle._model, ToyBackend)


@pytest.mark.slow
def test_unpickles_in_a_fresh_process_without_registration(tmp_path):
    # What a spawned DataLoader worker does: the backend class travels by reference, so the name need not be
    # registered there.
    path = tmp_path / "augment.pkl"
    path.write_bytes(pickle.dumps(CounterfactualAugment("toy", p=1.0, return_record=True)))
    script = (
        "import pickle, sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "import cfaug\n"
        "assert 'toy' not in cfaug.list_backends()\n"
        f"augment = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "(image, label), record = augment(torch.rand(3, 8, 8), 2)\n"
        "print(tuple(image.shape), label, int(record['shape']), augment.backend.weights_name)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 8, 8) 2 2 toy-random"


class PairDataset(Dataset):
    """(PIL image, label) pairs through a joint transform, like VisionDataset(transforms=...)."""

    def __init__(self, transforms, size: int = 16):
        self.transforms = transforms
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return self.transforms(pil_rgb(seed=index), index % 4)


class ImageOnlyDataset(PairDataset):
    """Like MNIST(transform=...): the transform sees the image alone."""

    def __getitem__(self, index: int):
        return self.transforms(pil_rgb(seed=index)), index % 4


def test_dataloader_workers_load_lazily_and_draw_independently():
    augment = CounterfactualAugment("toy", p=1.0, bank_size=4, reuse=1, return_record=True)
    pipeline = v2.Compose([augment, v2.PILToTensor()])

    def run():
        dataset = PairDataset(pipeline)  # returns ((image, label), record)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0))
        return list(loader)

    batches = run()
    assert augment._handle._model is None  # the main process never loaded the model
    assert len(batches) == 4
    for (images, labels), record in batches:
        assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
        assert torch.equal(record["shape"], labels) and record["applied"].all()
    seeds = torch.cat([record["seed_texture"] for _, record in batches])
    assert len(set(seeds.tolist())) == len(seeds)  # the two workers do not repeat each other
    again = run()
    assert all(torch.equal(a[1]["seed_texture"], b[1]["seed_texture"]) for a, b in zip(batches, again, strict=True))


def test_dataloader_workers_after_use_in_main_process_with_a_generator():
    # Used in the main process first: forked workers inherit its bank and generator state, and must not
    # hand out the same components as each other.
    augment = CounterfactualAugment(
        "toy", p=1.0, bank_size=4, reuse=1, return_record=True, generator=torch.Generator().manual_seed(5)
    )
    augment(pil_rgb(), 1)

    def run():
        dataset = PairDataset(v2.Compose([augment, v2.PILToTensor()]))
        loader = DataLoader(dataset, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(0))
        return torch.cat([record["seed_texture"] for _, record in loader])

    seeds = run()
    assert len(set(seeds.tolist())) == len(seeds)
    assert torch.equal(seeds, run())  # the same DataLoader seed gives the same draws


def test_dataloader_workers_image_only():
    dataset = ImageOnlyDataset(v1.Compose([CounterfactualAugment("toy", p=0.5), v1.PILToTensor()]))
    images, labels = next(iter(DataLoader(dataset, batch_size=16, num_workers=2)))
    assert images.shape == (16, 3, 8, 8) and torch.equal(labels, torch.arange(16) % 4)


def test_collate_fn_placement():
    augment = CounterfactualAugment("toy", p=1.0)
    dataset = PairDataset(lambda image, label: (v2.functional.pil_to_tensor(image), label))
    loader = DataLoader(dataset, batch_size=8, collate_fn=lambda batch: augment(*default_collate(batch)))
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 8, 8) and torch.equal(labels, torch.arange(8) % 4)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p": 1.5}, ValueError, r"`p` should be a number in \[0, 1\]"),
        ({"p": "half"}, TypeError, "`p`"),
        ({"vary": ("shape",)}, ValueError, "cannot contain 'shape'"),
        ({"vary": ("colour",)}, ValueError, "Unknown value 'colour'"),
        ({"vary": 3}, TypeError, "`vary`"),
        ({"bank_size": -1}, ValueError, "`bank_size`"),
        ({"reuse": 0}, ValueError, "`reuse`"),
        ({"reuse": 1.5}, TypeError, "`reuse`"),
        ({"labels_getter": 5}, ValueError, "`labels_getter`"),
        ({"generator": "seed"}, TypeError, "`generator`"),
        ({"grayscale_to_rgb": "yes"}, TypeError, "`grayscale_to_rgb`"),
        ({"return_record": 1}, TypeError, "`return_record`"),
        ({"backend": 3}, TypeError, "`backend`"),
        ({"backend": "no-such-backend"}, ValueError, "Unknown value 'no-such-backend' for argument `backend`"),
        ({"weights": 3}, TypeError, "`weights`"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        CounterfactualAugment(**{"backend": "toy", **kwargs})


def test_weights_with_an_instance_is_an_error(toy):
    with pytest.raises(ValueError, match="`weights`"):
        CounterfactualAugment(toy, weights="colored_mnist")


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2]), ValueError, r"should have shape \(4,\)"),
        (torch.rand(4, 3, 8, 8), 1, ValueError, r"tensor of shape \(4,\)"),
        (torch.rand(3, 8, 8), 7, ValueError, r"\[0, 3\]"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0, -1]), ValueError, r"\[0, 3\]"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0.0, 1.0]), TypeError, "integer class indices"),
        (torch.rand(2, 3, 8, 8), torch.eye(2, 4), TypeError, "integer class indices"),
        (torch.rand(3, 8, 8), True, ValueError, "second item is a bool"),
        (np.zeros((8, 8, 3), dtype=np.uint8), 1, TypeError, "found none"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), 1, TypeError, "uint8 tensor or a float tensor"),
        (torch.rand(8, 8), 1, ValueError, r"\(C, H, W\) or \(B, C, H, W\)"),
        (torch.rand(3, 8, 8) * 2 - 1, 1, ValueError, r"values in \[0, 1\]"),
    ],
)
def test_bad_inputs(toy, images, labels, error, match):
    with pytest.raises(error, match=match):
        CounterfactualAugment(toy, p=1.0)(images, labels)


def test_boxes_with_label_aware_mode_are_an_error(toy):
    boxes = tv_tensors.BoundingBoxes([[0, 0, 4, 4]], format="XYXY", canvas_size=(8, 8))
    with pytest.raises(ValueError, match="bounding boxes"):
        CounterfactualAugment(toy)(tv_tensors.Image(torch.rand(3, 8, 8)), {"boxes": boxes, "labels": 1})
    out = CounterfactualAugment(toy, p=1.0, labels_getter=None)(
        {"image": tv_tensors.Image(torch.rand(3, 8, 8)), "boxes": boxes}
    )
    assert out["boxes"] is boxes


def test_lazy_import_from_package():
    assert cfaug.CounterfactualAugment is CounterfactualAugment
