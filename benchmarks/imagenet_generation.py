"""Counterfactual generation speed of the ``biggan`` backend (the ImageNet CGN) at 256 px, as a markdown table.

One counterfactual is a mask (BigGAN ``f_shape`` + U2-Net), a foreground (``f_text``) and a background (``f_bg``)
from independent classes and their composite: ``backend.sample``. Rows:

* ``cfaug``: ``backend.sample`` at batch 1 and, on a GPU, at doubling batch sizes up to ``--max-batch`` (or the
  first out-of-memory); the best batch is marked. With ``--autocast`` the GPU rows are repeated under autocast;
* ``CounterfactualDataset.save`` (with ``--save-images N``): what ``cfaug generate`` does end to end at the best
  batch, generation plus 8-bit conversion, encoding (PNG, or uint8 shards) and sha256 of every file;
* ``authors``: the work of the authors' ``generate_data.py`` per image, which runs the CGN's full forward: the
  three mechanisms plus the frozen ground-truth BigGAN and the U2-Net on the background (four BigGAN and two
  U2-Net forwards instead of three and one), at batch 1 as they generate.

Without ``--weights`` the networks are the full-size architectures with random weights (BigGAN-deep-256 from
``pytorch_pretrained_biggan``'s ``BigGAN256`` config, prepared so that its output is finite, and the full U2-Net):
the speed is that of the trained model. Each row times ``--images`` images after one warm-up batch.

Usage:
    python benchmarks/imagenet_generation.py [--device cuda] [--threads 1] [--images 2] [--max-batch 64]
        [--autocast bf16] [--weights CGN.safetensors] [--u2net u2net] [--save-images 512]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cfaug.backends.biggan import BigGANBackend, build_biggan, truncated_noise
from cfaug.datasets import CounterfactualDataset


@dataclass
class Row:
    """One line of the table."""

    label: str
    batch_size: int
    seconds_per_image: float
    peak_memory: str
    best: bool = False


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def time_batches(run: Callable[[int, int], torch.Tensor], batch_size: int, images: int, device: torch.device) -> float:
    """Seconds per image of ``run(batch_size, seed_offset)`` over at least ``images`` images, after a warm-up."""
    run(batch_size, 0)
    _synchronise(device)
    batches = max(1, -(-images // batch_size))
    started = time.perf_counter()
    for index in range(batches):
        run(batch_size, (index + 1) * batch_size)
    _synchronise(device)
    return (time.perf_counter() - started) / (batches * batch_size)


def report(row: Row) -> Row:
    """Print a measured row to stderr at once (a run stopped by a time limit keeps what it measured)."""
    print(f"measured: {row.label}, batch {row.batch_size}: {row.seconds_per_image:.4f} s/image", file=sys.stderr)
    return row


def cfaug_sample(backend: BigGANBackend) -> Callable[[int, int], torch.Tensor]:
    """``backend.sample`` with independent classes for the three mechanisms."""
    generator = torch.Generator().manual_seed(0)

    def run(batch_size: int, offset: int) -> torch.Tensor:
        classes = torch.randint(0, backend.num_classes, (3, batch_size), generator=generator)
        seeds = torch.arange(offset, offset + batch_size, dtype=torch.int64)
        return backend.sample(classes[0], classes[1], classes[2], seeds=seeds).image

    return run


def authors_forward(backend: BigGANBackend, ground_truth: torch.nn.Module) -> Callable[[int, int], torch.Tensor]:
    """The computation of the authors' generate_data.py per image: CGN forward incl. x_gt and U2Net(background)."""
    generator = torch.Generator().manual_seed(0)

    def run(batch_size: int, offset: int) -> torch.Tensor:
        classes = torch.randint(0, backend.num_classes, (3, batch_size), generator=generator).to(backend.device)
        seeds = torch.arange(offset, offset + batch_size, dtype=torch.int64)
        noise = truncated_noise(seeds, backend.latent_dim, backend.truncation).to(backend.device)
        with torch.no_grad(), backend.autocast_context():
            ground_truth(noise, backend.one_hot(classes[0]), backend.truncation)
            _, mask, foreground, background = backend(noise, classes[0], classes[1], classes[2])
            backend.u2net(background)
            return mask * foreground + (1 - mask) * background

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--images", type=int, default=None, help="images timed per row (default: 2 CPU, 256 GPU)")
    parser.add_argument("--max-batch", type=int, default=128, help="largest GPU batch tried")
    parser.add_argument("--autocast", choices=("bf16", "fp16"), default=None, help="also time GPU rows under autocast")
    parser.add_argument("--weights", default=None, help="a biggan backend checkpoint (default: random full size)")
    parser.add_argument("--u2net", default="u2net", choices=("u2net", "u2netp"), help="U2-Net of the random model")
    parser.add_argument("--no-authors", action="store_true", help="skip the authors' computation row")
    parser.add_argument(
        "--save-images", type=int, default=0, help="also time CounterfactualDataset.save of N images per format"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = args.images or (256 if device.type == "cuda" else 2)

    started = time.perf_counter()
    if args.weights is None:
        torch.manual_seed(0)
        backend = BigGANBackend("biggan-deep-256", u2net_variant=args.u2net, truncation=0.5)
        source = f"random weights (BigGAN256 config, {args.u2net})"
    else:
        backend = BigGANBackend.from_pretrained(args.weights)
        source = args.weights
    backend = backend.to(device).eval().requires_grad_(False)
    build_seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in backend.parameters())

    rows: list[Row] = []
    modes = [None] + ([args.autocast] if args.autocast and device.type == "cuda" else [])
    for mode in modes:
        backend.autocast = mode
        label = "cfaug backend.sample" + (f" ({mode} autocast)" if mode else " (fp32)")
        batch_sizes = [1]
        if device.type == "cuda":
            batch_sizes += [2**k for k in range(1, args.max_batch.bit_length()) if 2**k <= args.max_batch]
        found: list[Row] = []
        for batch_size in batch_sizes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                seconds = time_batches(cfaug_sample(backend), batch_size, max(images, batch_size), device)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            found.append(report(Row(label, batch_size, seconds, _peak_memory(device))))
        if not found:
            raise SystemExit(f"Out of GPU memory at batch 1 ({label}).")
        min(found, key=lambda row: row.seconds_per_image).best = len(found) > 1
        rows += found
    best = min(rows, key=lambda row: row.seconds_per_image)
    if args.save_images:
        backend.autocast = next((mode for mode in modes if mode and mode in best.label), None)
        for fmt in ("safetensors", "png"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            dataset = CounterfactualDataset(backend, size=args.save_images, seed=0)
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                dataset.save(folder, fmt, batch_size=best.batch_size, progress=False)
                seconds = (time.perf_counter() - started) / args.save_images
            label = f"CounterfactualDataset.save ({fmt}, {backend.autocast or 'fp32'}, {args.save_images} images)"
            rows.append(report(Row(label, best.batch_size, seconds, _peak_memory(device))))
    backend.autocast = None
    if not args.no_authors:
        ground_truth = build_biggan(backend.biggan_config, seed=1).to(device).eval().requires_grad_(False)
        seconds = time_batches(authors_forward(backend, ground_truth), 1, images, device)
        label = "authors' generate_data.py work (4 BigGAN + 2 U2-Net)"
        rows.append(report(Row(label, 1, seconds, _peak_memory(device))))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"\nImageNet CGN generation, 256 px, {source}; {parameters / 1e6:.1f} M parameters; device {device} ({name}); "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; built in {build_seconds:.1f} s; "
        f"{images} images per row after one warm-up batch.\n"
    )
    print("| computation | batch | s/image | counterfactuals/s | peak memory |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        best = " (best)" if row.best else ""
        print(
            f"| {row.label} | {row.batch_size}{best} | {row.seconds_per_image:.3f} | "
            f"{1 / row.seconds_per_image:.2f} | {row.peak_memory} |"
        )


if __name__ == "__main__":
    main()
