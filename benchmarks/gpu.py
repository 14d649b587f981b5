"""Issue 17's GPU rows in one short run, every row naming the card, printed as markdown tables.

Sections (each prints as soon as it is measured, so a run cut short by a time limit keeps what it finished):

* ``mnist``: the ``mnist`` backend's ``sample()`` at batch 256 and 4096 in float32, TF32 and bfloat16 autocast,
  with the largest difference of its images from float32's for the same seeds;
* ``augment``: ``CounterfactualAugment(p=0.5)`` on a GPU batch of 256 32x32 RGB images (label-aware and
  image-only) against one training step of a torchvision ResNet-18 on the same batch, as a share of that step;
* ``imagenet``: the ``biggan`` backend's ``sample()`` at the ``--imagenet-batches`` in float32, TF32, bfloat16
  autocast, bfloat16 with channels-last weights and, with ``--compile MODE``, bfloat16 with the mechanisms and the
  U2-Net under ``torch.compile``; each with the difference of its images from float32's at batch 8;
* ``save``: ``CounterfactualDataset.save`` (what ``cfaug generate`` runs after parsing its arguments) in both
  formats against ``sample()`` at the same batch, for both backends.

Without ``--weights`` the ImageNet backend is the full-size architecture with random weights (speed only: the
differences between precisions of a random network say little about a trained one). ``--quick`` shrinks every
size for a smoke test on the CPU (a narrow BigGAN, small batches).

Usage:
    python benchmarks/gpu.py [--sections mnist augment imagenet save] [--compile max-autotune-no-cudagraphs]
        [--weights CGN.safetensors] [--output FILE] [--quick --device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path

import torch
import torchvision

import cfaug
from cfaug.backends.biggan import BigGANBackend
from cfaug.models.biggan import resolve_biggan_config

SECTIONS = ("mnist", "augment", "imagenet", "save")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(run: Callable[[int], object], batch: int, device: torch.device, seconds: float) -> float:
    """Images per second of ``run(offset)`` (one batch per call), after a warm-up call, over about ``seconds``.

    The GPU is synchronised after every third call, so that the clock reads finished work without stalling the
    queue after every call.
    """
    run(0)
    synchronise(device)
    calls, started = 0, time.perf_counter()
    while True:
        for _ in range(3):
            calls += 1
            run(calls * batch)
        synchronise(device)
        if time.perf_counter() - started >= seconds:
            return calls * batch / (time.perf_counter() - started)


@contextlib.contextmanager
def precision(name: str, device: torch.device) -> Generator[None, None, None]:
    """``fp32`` (TF32 off), ``tf32`` (TF32 matmuls and convolutions) or ``bf16`` (autocast, TF32 off)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        if name == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sampler(backend: cfaug.Backend, batch: int, device: torch.device) -> Callable[[int], torch.Tensor]:
    """``backend.sample`` of ``batch`` independent class triples; seeds start at the call's offset."""
    generator = torch.Generator().manual_seed(0)
    classes = torch.randint(0, backend.num_classes, (3, batch), generator=generator)

    def run(offset: int) -> torch.Tensor:
        seeds = torch.arange(offset, offset + batch, dtype=torch.int64)
        return backend.sample(classes[0], classes[1], classes[2], seeds=seeds).image

    return run


def difference(images: torch.Tensor, reference: torch.Tensor) -> str:
    diff = (images.float() - reference.float()).abs()
    return f"max {diff.max().item():.2e}, mean {diff.mean().item():.2e}"


class Report:
    """Prints each table line at once and keeps them all for ``--output``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def mnist_rows(out: Report, device: torch.device, card: str, batches: list[int], seconds: float) -> None:
    backend = cfaug.load_backend("mnist", weights="colored_mnist").to(device).eval()
    out(f"\n**mnist backend `sample()`** on {card}\n")
    out("| precision | batch | img/s | images against float32 (same seeds) |")
    out("|---|---:|---:|---|")
    for batch in batches:
        run = sampler(backend, batch, device)
        with precision("fp32", device):
            reference = run(0).clone()
        for name in ("fp32", "tf32", "bf16"):
            with precision(name, device):
                images_per_second = rate(run, batch, device, seconds)
                images = run(0)
            out(f"| {name} | {batch} | {images_per_second:,.0f} | {difference(images, reference)} |")


def augment_rows(out: Report, device: torch.device, card: str, batch: int, seconds: float) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(_: int) -> None:
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()

    steps = rate(step, batch, device, seconds)
    out(f"\n**`CounterfactualAugment(p=0.5)` on a GPU batch of {batch} 32x32 RGB images** on {card}\n")
    out("| what | img/s | share of a ResNet-18 training step on the batch |")
    out("|---|---:|---:|")
    out(f"| ResNet-18 training step (SGD, fp32) | {steps:,.0f} | 1.00 |")
    for kind, labels_getter, shape in (
        ("label-aware", "default", "generated"),
        ("image-only (mask estimated)", None, "real"),
    ):
        # The transform moves its backend to the batch's device on first use (the warm-up call). The kind is named:
        # shape="auto" follows the weights, which recommend real shapes, so "label-aware" would estimate masks too.
        augment = cfaug.CounterfactualAugment(
            "mnist", weights="colored_mnist", p=0.5, labels_getter=labels_getter, shape=shape
        )

        def apply(_: int, augment=augment) -> None:
            augment(images, labels)

        augmented = rate(apply, batch, device, seconds)
        out(f"| `CounterfactualAugment(p=0.5)`, {kind} | {augmented:,.0f} | {steps / augmented:.2f} |")


def imagenet_variants(compile_mode: str | None) -> list[tuple[str, str, bool, str | None]]:
    """(label, precision, channels-last, torch.compile mode) of each ImageNet row."""
    variants = [
        ("fp32", "fp32", False, None),
        ("tf32", "tf32", False, None),
        ("bf16 autocast", "bf16", False, None),
        ("bf16 autocast, channels-last", "bf16", True, None),
    ]
    if compile_mode:
        variants.append((f"bf16 autocast, torch.compile({compile_mode!r})", "bf16", False, compile_mode))
    return variants


def imagenet_backend(weights: str | None, quick: bool, device: torch.device) -> tuple[BigGANBackend, str]:
    torch.manual_seed(0)
    if weights:
        return BigGANBackend.from_pretrained(weights).to(device).eval(), weights
    if quick:  # biggan-deep-128's layers at 4 channels per width unit: a smoke test, not a speed
        tiny = {**resolve_biggan_config("biggan-deep-128"), "channel_width": 4, "num_classes": 10}
        return BigGANBackend(tiny, u2net_variant="tiny").to(device).eval(), "narrow random BigGAN (smoke test)"
    return BigGANBackend("biggan-deep-256").to(device).eval(), "random weights, BigGAN-deep-256 and U2-Net"


def imagenet_rows(
    out: Report, device: torch.device, card: str, args: argparse.Namespace
) -> tuple[BigGANBackend, int, str]:
    """The ImageNet rows; returns the backend, the fastest batch and the fastest variant without compile."""
    backend, source = imagenet_backend(args.weights, args.quick, device)
    backend.requires_grad_(False)
    reference_batch = min(8, min(args.imagenet_batches))
    with precision("fp32", device):
        reference = sampler(backend, reference_batch, device)(0).clone()
    out(f"\n**ImageNet counterfactuals, `biggan` backend `sample()`** ({source}) on {card}\n")
    out(f"| variant | batch | img/s | images against float32 (batch {reference_batch}, same seeds) |")
    out("|---|---:|---:|---|")
    best = (0.0, min(args.imagenet_batches), "fp32")
    for label, name, channels_last, compile_mode in imagenet_variants(args.compile):
        variant = backend
        if channels_last:
            variant = backend.to(memory_format=torch.channels_last)
        if compile_mode:
            for module in ("f_shape", "f_text", "f_bg", "u2net"):
                setattr(variant, module, torch.compile(getattr(variant, module), mode=compile_mode))
        with precision(name, device):
            images = sampler(variant, reference_batch, device)(0)
            diff = difference(images, reference)
            for batch in args.imagenet_batches:
                try:
                    images_per_second = rate(sampler(variant, batch, device), batch, device, args.seconds)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    out(f"| {label} | {batch} | out of memory | |")
                    break
                out(f"| {label} | {batch} | {images_per_second:,.1f} | {diff} |")
                if images_per_second > best[0] and not compile_mode:
                    best = (images_per_second, batch, name)
        if compile_mode:  # the compiled modules stay out of the save rows
            for module in ("f_shape", "f_text", "f_bg", "u2net"):
                setattr(backend, module, getattr(backend, module)._orig_mod)
        if channels_last:
            backend.to(memory_format=torch.contiguous_format)
    return backend, best[1], best[2]


def save_rows(
    out: Report, device: torch.device, card: str, cases: list[tuple[str, cfaug.Backend, int, str, int]], seconds: float
) -> None:
    out(f"\n**`CounterfactualDataset.save` (what `cfaug generate` runs) against `sample()`** on {card}\n")
    out("| backend | precision | batch | images | sample() img/s | format | save img/s | save / sample |")
    out("|---|---|---:|---:|---:|---|---:|---:|")
    for name, backend, batch, precision_name, images in cases:
        with precision(precision_name, device):
            generation = rate(sampler(backend, batch, device), batch, device, seconds)
            for fmt in ("safetensors", "png"):
                dataset = cfaug.CounterfactualDataset(backend, size=images, seed=0)
                with tempfile.TemporaryDirectory() as folder:
                    dataset.save(Path(folder) / "warm-up", fmt, batch_size=batch, progress=False, stop=batch)
                    synchronise(device)
                    started = time.perf_counter()
                    dataset.save(Path(folder) / "timed", fmt, batch_size=batch, progress=False)
                    saved = images / (time.perf_counter() - started)
                out(
                    f"| {name} | {precision_name} | {batch} | {images:,} | {generation:,.1f} | {fmt} | "
                    f"{saved:,.1f} | {saved / generation:.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row (after a warm-up)")
    parser.add_argument("--imagenet-batches", type=int, nargs="+", default=None, help="default: 32 64 128")
    parser.add_argument("--compile", default=None, help="also time the ImageNet mechanisms under torch.compile(mode)")
    parser.add_argument("--weights", default=None, help="a biggan checkpoint (default: random full-size weights)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test on the CPU")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here (run with --quick --device cpu for a smoke test).")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    mnist_batches, augment_batch = ([16, 64], 16) if args.quick else ([256, 4096], 256)
    args.imagenet_batches = args.imagenet_batches or ([2, 4] if args.quick else [32, 64, 128])
    if args.quick:
        args.seconds = min(args.seconds, 0.2)
    out = Report()
    out(f"GPU rows of issue 17 on {card}; torch {torch.__version__}, Python {platform.python_version()}.")
    started = time.perf_counter()
    if "mnist" in args.sections:
        mnist_rows(out, device, card, mnist_batches, args.seconds)
    if "augment" in args.sections:
        augment_rows(out, device, card, augment_batch, args.seconds)
    imagenet = None
    if "imagenet" in args.sections:
        imagenet = imagenet_rows(out, device, card, args)
    if "save" in args.sections:
        mnist = cfaug.load_backend("mnist", weights="colored_mnist").to(device).eval()
        cases = [("mnist", mnist, mnist_batches[0], "fp32", 8 * mnist_batches[0])]
        if imagenet is not None:
            backend, batch, name = imagenet
            cases.append(("biggan", backend, batch, name, 2 * batch if args.quick else 8 * batch))
        save_rows(out, device, card, cases, args.seconds)
    out(f"\n{time.perf_counter() - started:.0f} s in all. Command: python {' '.join(sys.argv)}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(out.lines) + "\n")


if __name__ == "__main__":
    main()
