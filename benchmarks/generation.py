"""Counterfactual generation speed of the ``mnist`` backend, printed as a markdown table.

One counterfactual is a mask, a foreground and a background from three independent mechanisms plus their
composite (``backend.sample``). Rows:

* the backend's fast path (eval mode, no autograd) at batch 1, 32 and 256;
* the backend's plain module path (``fast_path=False``) at batch 256, to show what the fast path buys;
* the authors' computation at batch 256: their ``generate_data.py`` runs the CGN's standard forward for the
  mask and its counterfactual forward for foreground and background (six network passes per image), with their
  tile-and-crop shuffler, here under ``torch.no_grad()``;
* ``CounterfactualAugment`` called per sample in a 2-worker DataLoader (see :func:`dataloader_augment_row`), on
  28x28 grayscale digits with labels, and on 32x32 RGB images label-aware and image-only (no label: the real
  object's mask comes from the backend's mask estimator, texture and background from the component bank), as
  PIL images (what ``MNIST(transform=...)`` hands a transform) and as uint8 tensors;
* ``backend.estimate_mask`` at batch 1 and 256, module path against the fused path, for the backend's estimator
  and (untrained, speed only) for the other architecture (``lite`` or ``unet``);
* ``CounterfactualDataset.save`` in both formats, with the writer pool and with the serial writer
  (``CFAUG_WRITER_THREADS=0``), against the generation of the same items at the same batch size
  (:func:`save_rows`).

Each timed row runs for ``--seconds`` after a warm-up, split into five equal rounds; the table gives the median and
the best round, since other processes on a shared CPU slow single rounds down. The save rows time whole saves, in
``SAVE_ROUNDS`` repetitions alternating with the generation they are compared with. The table is printed and written to
``--output``.

Usage:
    python benchmarks/generation.py [--weights PATH_OR_NAME] [--seconds 3] [--threads N] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

import cfaug
from cfaug.backends.mnist import MASK_CLAMP, MnistBackend
from cfaug.datasets._writer import WRITER_THREADS_ENV, writer_threads
from cfaug.functional import composite
from cfaug.transforms import CounterfactualAugment

ROUNDS = 5
#: Groups of rows ``--rows`` can choose.
ROW_GROUPS = ("sample", "per-sample", "image-only", "mask", "save")
#: Repetitions of each whole save (after one warm-up): a save takes many seconds, unlike a round of a timed row.
SAVE_ROUNDS = 5


@dataclass
class Row:
    """One line of the table: what was timed, at which batch size, and img/s of each round."""

    label: str
    batch_size: int
    rates: list[float]

    def markdown(self) -> str:
        median = statistics.median(self.rates)
        return (
            f"| {self.label} | {self.batch_size} | {median:,.0f} | {max(self.rates):,.0f} | "
            f"{1000 * self.batch_size / median:,.1f} |"
        )


def measure(step: Callable[[], int], seconds: float, warmup: int = 3) -> list[float]:
    """Images per second of ``step`` (which returns how many images it made) in each of ``ROUNDS`` rounds."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(ROUNDS):
        images, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / ROUNDS:
            images += step()
        rates.append(images / elapsed)
    return rates


def backend_row(backend: MnistBackend, batch_size: int, seconds: float, label: str) -> Row:
    """``backend.sample`` on fresh random class triples and seeds, as a user calls it."""
    generator = torch.Generator().manual_seed(0)

    def step() -> int:
        shape, texture, background = torch.randint(0, backend.num_classes, (3, batch_size), generator=generator)
        backend.sample(shape, texture, background, generator=generator)
        return batch_size

    return Row(label, batch_size, measure(step, seconds))


def _authors_shuffler(textures: torch.Tensor) -> torch.Tensor:
    """The authors' shuffler as they compute it: tile 2x2, then twice pick a random window along dim 2.

    Picking a window of ``unfold`` by advanced indexing also swaps the last two axes, so two rounds crop rows and
    then columns.
    """
    size = textures.shape[-1]
    tiled = torch.cat([textures, textures], dim=-1)
    tiled = torch.cat([tiled, tiled], dim=-2)
    rows = torch.arange(len(tiled))
    for _ in range(2):
        windows = tiled.unfold(2, size, 1)
        tiled = windows[rows, :, torch.randint(0, windows.shape[2], (len(tiled),)), :]
    return tiled


def _authors_cgn_forward(
    backend: MnistBackend, classes: torch.Tensor, counterfactual: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' ``CGN.forward(ys, counterfactual)`` on the backend's modules (the same layers and weights)."""

    def mechanism_input(labels: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.randn(len(labels), backend.latent_dim), backend.label_emb(labels)], dim=-1)

    if counterfactual:
        inputs = [mechanism_input(classes[torch.randperm(len(classes))] if i else classes) for i in range(3)]
    else:
        inputs = [mechanism_input(classes)] * 3
    mask = backend.f_shape(inputs[0]).clamp(MASK_CLAMP, 1 - MASK_CLAMP).repeat(1, 3, 1, 1)
    return mask, _authors_shuffler(backend.f_text1(inputs[1])), _authors_shuffler(backend.f_text2(inputs[2]))


def authors_row(backend: MnistBackend, batch_size: int, seconds: float) -> Row:
    """The authors' ``generate_cf_dataset`` loop body with one counterfactual per mask (their default)."""

    def step() -> int:
        classes = torch.randint(0, backend.num_classes, (batch_size,))
        with torch.no_grad():
            mask, _, _ = _authors_cgn_forward(backend, classes, counterfactual=False)
            _, foreground, background = _authors_cgn_forward(backend, classes, counterfactual=True)
            composite(mask, foreground, background)
        return batch_size

    return Row("authors' generate_data.py computation (standard + counterfactual forward)", batch_size,
               measure(step, seconds))  # fmt: skip


class _Digits(torch.utils.data.Dataset):
    """Random images with labels: 28x28 grayscale PIL images are what ``MNIST(transform=None)`` hands a transform.

    With ``tensors``, the images are ``(C, H, W)`` uint8 tensors instead (a dataset that decodes to tensors, or a
    pipeline with ``v2.PILToTensor()`` before the counterfactual transform).
    """

    def __init__(self, size: int, transforms: Callable, side: int = 28, rgb: bool = False, tensors: bool = False):
        generator = torch.Generator().manual_seed(0)
        shape = (size, side, side, 3) if rgb else (size, side, side)
        pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        if tensors:
            self.images = [(p.permute(2, 0, 1) if rgb else p[None]).contiguous() for p in pixels]
        else:
            self.images = [Image.fromarray(p.numpy(), mode="RGB" if rgb else "L") for p in pixels]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transforms(self.images[index], index % 10)


def dataloader_augment_row(
    checkpoint: Path,
    seconds: float,
    reuse: int,
    items: int = 1024,
    rgb32: bool = False,
    image_only: bool = False,
    tensors: bool = False,
) -> Row:
    """Per-sample ``CounterfactualAugment(p=1)`` in the workers of a ``DataLoader(num_workers=2, batch_size=256)``.

    Each worker loads the backend from ``checkpoint`` and serves samples from its component bank (see the
    transform's docstring; ``reuse`` is its diversity/speed knob). The first epoch (model loading, first bank fill)
    is a warm-up; then epochs are timed. Workers run one torch thread each, PyTorch's default. The images are 28x28
    grayscale digits, or 32x32 RGB with ``rgb32``; ``image_only`` ignores their labels (``labels_getter=None``),
    so each sample's mask is estimated from the image. With ``tensors`` the images are uint8 tensors instead of PIL
    images (and stay tensors: no ``PILToTensor`` after the transform).
    """
    augment = CounterfactualAugment(
        "mnist",
        weights=checkpoint,
        p=1.0,
        grayscale_to_rgb=not rgb32,
        reuse=reuse,
        labels_getter=None if image_only else "default",
        # Named, not "auto": weights that recommend real shapes would estimate every labelled sample's mask too.
        shape="real" if image_only else "generated",
    )
    transforms = augment if tensors else v2.Compose([augment, v2.PILToTensor()])
    dataset = _Digits(items, transforms, side=32 if rgb32 else 28, rgb=rgb32, tensors=tensors)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=2, persistent_workers=True)

    def epoch() -> int:
        return sum(len(images) for images, _ in loader)

    what = "image-only (mask estimated)" if image_only else "label-aware"
    images = ("32x32 RGB" if rgb32 else "28x28 gray") + (" uint8 tensors" if tensors else "")
    label = f"per-sample `CounterfactualAugment(p=1, reuse={reuse})`, {what}, {images}, 2-worker DataLoader"
    return Row(label, 256, measure(epoch, seconds, warmup=1))


def mask_rows(backend: MnistBackend, seconds: float) -> list[Row]:
    """``estimate_mask`` on 32x32 RGB images: module and fused path of the backend's estimator and of the other one."""
    arch = backend.mask_estimator_arch
    other_arch = "unet" if arch == "lite" else "lite"
    other = MnistBackend(mask_estimator=True, mask_estimator_arch=other_arch).eval().requires_grad_(False)
    other.mark_mask_estimator_trained()  # random weights: only the speed is measured
    rows = []
    for batch_size in (1, 256):
        images = torch.rand(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        for model, fast, what in (
            (backend, False, f"module path, {arch} width {backend.mask_estimator_width}"),
            (backend, True, f"fused path, {arch} width {backend.mask_estimator_width}"),
            (other, False, f"module path, {other_arch} width {other.mask_estimator_width} (untrained, speed only)"),
            (other, True, f"fused path, {other_arch} width {other.mask_estimator_width} (untrained, speed only)"),
        ):
            model.fast_path = fast

            def step(model: MnistBackend = model, images: torch.Tensor = images) -> int:
                model.estimate_mask(images)
                return len(images)

            rows.append(Row(f"mnist backend `estimate_mask()`, {what}", batch_size, measure(step, seconds)))
        backend.fast_path = other.fast_path = True
    return rows


def save_rows(checkpoint: Path, images: int, batch_size: int, save_dir: Path | None = None) -> list[Row]:
    """``CounterfactualDataset.save`` (pool and serial writer, both formats) against generating the same items.

    Each round generates the ``images`` items in batches of ``batch_size`` as ``save`` does (uint8 on the CPU,
    nothing written), then saves them into a fresh folder with each writer and format; ``SAVE_ROUNDS`` rounds, so that
    every row sees the same load. ``chunk_size`` is 256 (the default). The saves go to a temporary folder in
    ``save_dir`` (``None``: the system's temporary folder); creating small files costs very different times on
    different folders and file systems.
    """
    from cfaug.datasets.store import _to_uint8

    dataset = cfaug.CounterfactualDataset("mnist", weights=checkpoint, size=images, seed=0)
    runs: dict[str, list[float]] = {}
    labels = {"generate": f"generation of the saved items (`backend.sample`, {images} images)"}
    os.environ.pop(WRITER_THREADS_ENV, None)  # the pool rows run with the default number of threads
    pool = writer_threads()
    for fmt in ("png", "safetensors"):
        for threads in ("pool", "0"):
            writer = f"writer pool, {pool} thread{'s' if pool > 1 else ''}" if threads == "pool" else "serial writer"
            labels[f"{fmt}-{threads}"] = f"`CounterfactualDataset.save`, {fmt}, {writer} ({images} images)"

    def generate() -> None:
        infos = [dataset.info(i) for i in range(images)]
        for begin in range(0, images, batch_size):
            _to_uint8(dataset._generate_batch(infos[begin : begin + batch_size]).image)

    with tempfile.TemporaryDirectory(dir=save_dir) as folder:
        for round_ in range(-1, SAVE_ROUNDS):  # round -1 is a warm-up
            for key in labels:
                start = time.perf_counter()
                if key == "generate":
                    generate()
                else:
                    fmt, threads = key.split("-")
                    if threads == "pool":
                        os.environ.pop(WRITER_THREADS_ENV, None)
                    else:
                        os.environ[WRITER_THREADS_ENV] = threads
                    dataset.save(Path(folder) / f"{key}-{round_}", fmt, batch_size=batch_size, progress=False)
                if round_ >= 0:
                    runs.setdefault(key, []).append(images / (time.perf_counter() - start))
    os.environ.pop(WRITER_THREADS_ENV, None)
    return [Row(labels[key], batch_size, rates) for key, rates in runs.items()]


def load(weights: str | None) -> MnistBackend:
    """A random-init backend (speed does not depend on the values), a cfaug checkpoint, or an authors' .pth."""
    if weights is None:
        backend = MnistBackend()
        backend.weights_name = "random init"
        return backend.eval().requires_grad_(False)
    if weights.endswith(".pth") and Path(weights).is_file():
        return MnistBackend.import_weights(weights)
    return cfaug.load_backend("mnist", weights=weights)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="checkpoint path, named weights or authors' .pth")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row (after warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--reuse", type=int, nargs="*", default=[1, 4], help="bank reuse values of the DataLoader rows")
    parser.add_argument("--save-images", type=int, default=2048, help="images per save in the save rows")
    parser.add_argument("--save-batch", type=int, default=64, help="batch size of the save rows")
    parser.add_argument(
        "--save-dir", type=Path, default=None, help="where the save rows write (default: the system's temporary folder)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "generation_cpu.txt")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ROW_GROUPS,
        default=list(ROW_GROUPS),
        help="which groups of rows to run (default: all)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    backend = load(args.weights)
    if backend.mask_net is None:
        backend = cfaug.load_backend("mnist", weights="colored_mnist")  # the image-only rows need an estimator
    groups = set(args.rows)
    rows: list[Row] = []
    per_sample: list[Row] = []
    pairs: list[tuple[str, Row, Row]] = []
    saves: list[Row] = []
    if "sample" in groups:
        rows += [backend_row(backend, b, args.seconds, "mnist backend `sample()`, fast path") for b in (1, 32, 256)]
        backend.fast_path = False
        rows.append(
            backend_row(backend, 256, args.seconds, "mnist backend `sample()`, module path (`fast_path=False`)")
        )
        backend.fast_path = True
        rows.append(authors_row(backend, 256, args.seconds))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "mnist.safetensors"
        backend.save(checkpoint)
        if "per-sample" in groups:
            per_sample = [dataloader_augment_row(checkpoint, args.seconds, reuse) for reuse in args.reuse]
            rows += per_sample
        if "image-only" in groups:
            # The image-only comparison: the same 32x32 RGB images and default reuse, with and without labels.
            for tensors, what in ((False, "PIL images"), (True, "uint8 tensors")):
                label_aware = dataloader_augment_row(checkpoint, args.seconds, 4, rgb32=True, tensors=tensors)
                image_only = dataloader_augment_row(
                    checkpoint, args.seconds, 4, rgb32=True, image_only=True, tensors=tensors
                )
                pairs.append((what, label_aware, image_only))
                rows += [label_aware, image_only]
        if "mask" in groups:
            rows += mask_rows(backend, args.seconds)
        if "save" in groups:
            saves = save_rows(checkpoint, args.save_images, args.save_batch, args.save_dir)
            rows += saves

    def median(row: Row) -> float:
        return statistics.median(row.rates)

    lines = [
        f"Counterfactual generation, weights {backend.weights_name!r} (mask estimator: "
        f"{backend.mask_estimator_arch}, width {backend.mask_estimator_width}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), "
        f"{args.seconds:g} s per row in {ROUNDS} rounds; load average before/after "
        f"{LOAD_BEFORE} / {tuple(round(x, 2) for x in os.getloadavg())}.",
        "",
        "| what | batch | img/s (median) | img/s (best round) | ms / batch (median) |",
        "|---|---:|---:|---:|---:|",
        *(row.markdown() for row in rows),
    ]
    if per_sample and "sample" in groups:
        lines += [
            "",
            "Per-sample path relative to batched `sample()` at 256 (target >= 0.80):",
            *(f"- {row.label}: {median(row) / median(rows[2]):.2f}" for row in per_sample),
        ]
    for what, label_aware, image_only in pairs:
        lines += [
            "",
            f"Image-only per sample, {what}: {median(image_only):,.0f} img/s (target >= 2,000), "
            f"{median(image_only) / median(label_aware):.2f}x label-aware (target >= 0.5).",
        ]
    if saves:
        lines += [
            "",
            f"Save against generation at batch {args.save_batch}, into "
            f"{args.save_dir if args.save_dir is not None else tempfile.gettempdir()} (target >= 0.9):",
            *(f"- {row.label}: {median(row) / median(saves[0]):.2f}" for row in saves[1:]),
        ]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n", encoding="utf-8")


LOAD_BEFORE = tuple(round(x, 2) for x in os.getloadavg())

if __name__ == "__main__":
    main()
