"""The ImageNet CGN end to end on a tiny random BigGAN and the tiny U2-Net: build it, generate, train a step.

The real ImageNet CGN is three copies of a pretrained BigGAN-deep-256 and the full U2-Net, more than a GiB of
weights that take seconds per image on a CPU (see docs/tutorials/imagenet.md for where the weights come from).
This example runs the very same code on a 32x32 BigGAN-deep with random weights and 10 classes, and the ``tiny``
U2-Net (same structure, 2-4 channels), in seconds on a CPU: the pictures are noise, the code paths are the real
ones. Each section says what changes for the real model.

Usage:
    python examples/imagenet_tiny.py --out imagenet_tiny
    python examples/imagenet_tiny.py --quick --out /tmp/imagenet_tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision.utils import save_image

import cfaug
from cfaug.backends.biggan import BigGANBackend, build_biggan, save_biggan
from cfaug.models import U2Net
from cfaug.training import get_imagenet_preset, train_cgn_imagenet

# A BigGAN-deep with the structure of biggan-deep-256 (residual blocks with bottlenecks, an attention layer,
# class-conditional BatchNorm) but 4 channels per width unit instead of 128, 10 classes and 32x32 output.
TINY_BIGGAN = {
    "channel_width": 4,
    "num_classes": 10,
    "z_dim": 16,
    "class_embed_dim": 16,
    "attention_layer_position": 3,
    "layers": [[False, 16, 16], [True, 16, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2], [False, 2, 1]],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("imagenet_tiny"), help="folder for everything written")
    parser.add_argument("--quick", action="store_true", help="fewer images and passes (used by the tests)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:weights]
    # A pretrained BigGAN is a folder holding config.json and pytorch_model.bin, the layout pytorch_pretrained_biggan
    # reads. Here the folder gets a random tiny one; for the real model it is the folder of biggan-deep-256's files.
    biggan_dir = save_biggan(build_biggan(TINY_BIGGAN, seed=0), args.out / "biggan-tiny")
    # U2-Net weights are a name ("u2net": the official file, downloaded once and checked against its sha256) or a
    # file: a .pth state dict or a cfaug checkpoint. Here a file with a random tiny U2-Net.
    torch.manual_seed(0)
    u2net_file = args.out / "u2net-tiny.pth"
    torch.save(U2Net("tiny").state_dict(), u2net_file)
    # --8<-- [end:weights]

    # --8<-- [start:backend]
    # The untrained CGN: the shape, texture and background mechanisms all start as copies of the pretrained BigGAN.
    # Real model: BigGANBackend.from_biggan("weights/biggan-deep-256", u2net_weights="u2net").
    untrained = BigGANBackend.from_biggan(biggan_dir, u2net_variant="tiny", u2net_weights=u2net_file)
    checkpoint = args.out / "cgn_untrained.safetensors"
    untrained.save(checkpoint)  # one safetensors file: three BigGANs, the U2-Net, the architecture in its metadata

    # Any biggan checkpoint loads by path: one written by `cfaug train imagenet`, or the authors' released CGN after
    # `cfaug import-weights --backend biggan`. autocast="bf16" runs the GPU forwards in bfloat16 (the CPU stays
    # float32); max_batch bounds the images per forward, hence the GPU memory.
    backend = cfaug.load_backend("biggan", weights=checkpoint, device=device, autocast="bf16", max_batch=64)
    print(f"backend: {backend.num_classes} classes, {backend.image_size}x{backend.image_size}, {backend.device}")
    # --8<-- [end:backend]

    # --8<-- [start:sample]
    # Counterfactuals: each mechanism takes its own class. Row i has the shape class i and one per-sample seed (the
    # noise, shared by the three mechanisms); along the row the texture and background classes change.
    rows = 2 if args.quick else 4
    shape = torch.arange(rows).repeat_interleave(rows)
    texture = torch.arange(rows).repeat(rows)
    background = (texture + 1) % backend.num_classes
    seeds = torch.arange(rows).repeat_interleave(rows)
    parts = backend.sample(shape, texture, background, seeds=seeds)
    save_image(parts.image, args.out / "counterfactuals.png", nrow=rows, padding=1, pad_value=1.0)
    # The mask depends only on the shape class and the seed: it stays put while texture and background change.
    change = float((parts.mask[:rows] - parts.mask[0]).abs().max())
    print(f"counterfactuals {tuple(parts.image.shape)}; mask change along a row: {change:.1e}")

    # The same backend as a dataset: item i is fixed by (seed, i); `cfaug generate --backend biggan` saves it.
    dataset = cfaug.CounterfactualDataset(backend, size=8, seed=0, target="all")
    image, (shape_class, texture_class, background_class) = dataset[0]
    print(f"dataset item 0: {tuple(image.shape)}, classes {shape_class}/{texture_class}/{background_class}")
    # --8<-- [end:sample]

    # --8<-- [start:train]
    # Training the ImageNet CGN: the authors' recipe with tiny sizes. The real run is
    # get_imagenet_preset("authors", biggan="weights/biggan-deep-256", device="cuda", amp="bf16"): 300 steps of
    # 4000 summed single-sample passes, the official U2-Net and torchvision's ImageNet VGG16 for the style losses.
    config = get_imagenet_preset(
        "authors",
        biggan=str(biggan_dir),
        u2net="tiny",
        u2net_weights=str(u2net_file),
        feature_net="random",  # a fixed-seed random VGG16 instead of the ImageNet one (offline)
        steps=1,
        batch_size=2,
        accumulation=1 if args.quick else 2,
        sample_classes=(0, 1, 2),  # rows of the sample sheets
        patch_work_size=32,  # the texture patches are cut from 32x32 images, not 128x128
        device=str(device),
        amp="bf16" if device.type == "cuda" else None,
        progress=False,
    )
    run_dir = args.out / ("run-quick" if args.quick else "run")  # a run folder holds one recipe
    final = train_cgn_imagenet(config, run_dir)  # resumes when the run folder holds a checkpoint
    stats = json.loads((run_dir / "stats.jsonl").read_text().splitlines()[-1])
    losses = ", ".join(f"{name[5:]} {value:.3g}" for name, value in stats.items() if name.startswith("loss_"))
    print(f"one training step: {losses}")
    trained = cfaug.load_backend("biggan", weights=final)
    print(f"trained CGN: {final} ({trained.num_classes} classes, truncation {trained.truncation})")
    # --8<-- [end:train]


if __name__ == "__main__":
    main()
