"""Counterfactual generation speed of the ``mnist`` backend, printed as a markdown table.

One counterfactual is a mask, a foreground and a background from three independent mechanisms plus their
composite (``backend.sample``). Rows:

* the backend's fast path (eval mode, no autograd) at batch 1, 32 and 256;
* the backend's plain module path (``fast_path=False``) at batch 256, to show what the fast path buys;
* the authors' computation at batch 256: their ``generate_data.py`` runs the CGN's standard forward for the
  mask and its counterfactual forward for foreground and background (six network passes per image), with their
  tile-and-crop shuffler, here under ``torch.no_grad()``;
* ``CounterfactualAugment`` called per sample in a 2-worker DataLoader (see :func:`dataloader_augment_row`).

Each row runs for ``--seconds`` after a warm-up, split into five equal rounds; the table gives the median and the
best round, since other processes on a shared CPU slow single rounds down.

Usage:
    python benchmarks/generation.py [--weights PATH_OR_NAME] [--seconds 3] [--threads N]
"""

from __future__ import annotations

import argparse
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
from cfaug.functional import composite
from cfaug.transforms import CounterfactualAugment

ROUNDS = 5


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
    """Random 28x28 grayscale PIL images with labels: what ``MNIST(transform=None)`` hands a transform."""

    def __init__(self, size: int, transforms: Callable):
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (size, 28, 28), dtype=torch.uint8, generator=generator)
        self.images = [Image.fromarray(p.numpy(), mode="L") for p in pixels]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transforms(self.images[index], index % 10)


def dataloader_augment_row(checkpoint: Path, seconds: float, reuse: int, items: int = 1024) -> Row:
    """Per-sample ``CounterfactualAugment(p=1)`` in the workers of a ``DataLoader(num_workers=2, batch_size=256)``.

    Each worker loads the backend from ``checkpoint`` and serves samples from its component bank (see the
    transform's docstring; ``reuse`` is its diversity/speed knob). The first epoch (model loading, first bank fill)
    is a warm-up; then epochs are timed. Workers run one torch thread each, PyTorch's default.
    """
    augment = CounterfactualAugment("mnist", weights=checkpoint, p=1.0, grayscale_to_rgb=True, reuse=reuse)
    dataset = _Digits(items, v2.Compose([augment, v2.PILToTensor()]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=2, persistent_workers=True)

    def epoch() -> int:
        return sum(len(images) for images, _ in loader)

    label = f"per-sample `CounterfactualAugment(p=1, reuse={reuse})`, 2-worker DataLoader"
    return Row(label, 256, measure(epoch, seconds, warmup=1))


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
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    backend = load(args.weights)
    rows = [backend_row(backend, b, args.seconds, "mnist backend `sample()`, fast path") for b in (1, 32, 256)]
    backend.fast_path = False
    rows.append(backend_row(backend, 256, args.seconds, "mnist backend `sample()`, module path (`fast_path=False`)"))
    backend.fast_path = True
    rows.append(authors_row(backend, 256, args.seconds))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "mnist.safetensors"
        backend.save(checkpoint)
        rows += [dataloader_augment_row(checkpoint, args.seconds, reuse) for reuse in args.reuse]

    print(f"Counterfactual generation, weights {backend.weights_name!r}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), "
          f"{args.seconds:g} s per row in {ROUNDS} rounds.\n")  # fmt: skip
    print("| what | batch | img/s (median) | img/s (best round) | ms / batch (median) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(row.markdown())
    batched = statistics.median(rows[2].rates)
    print("\nPer-sample path relative to batched `sample()` at 256 (target >= 0.80):")
    for row in rows[5:]:
        print(f"- {row.label}: {statistics.median(row.rates) / batched:.2f}")


if __name__ == "__main__":
    main()
