"""CounterfactualAugment in a torchvision v2 pipeline: in each place where it sees the label, and where it does not.

A label-aware counterfactual keeps the label as its shape class, so the transform must see ``(image, label)``.
This script shows the four places where it does (the dataset's joint ``transforms=``, a ``collate_fn``, the batch
after the DataLoader, and the kornia twin on a batch), the one place where it does not (``transform=``), where
the shipped weights' mask estimator keeps the real digit's shape instead, and how to read back what was applied.

Usage:
    python examples/augment_pipeline.py --data-root data --download   # the shipped colored_mnist weights
    python examples/augment_pipeline.py --weights runs/colored_mnist/final.safetensors --data-root data
    python examples/augment_pipeline.py --quick --data-root data      # seconds
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.datasets import MNIST
from torchvision.transforms import v2

import cfaug
from cfaug.datasets import ColoredMNIST


# --8<-- [start:collate-class]
class CounterfactualCollate:
    """A ``collate_fn``: collate the samples as usual, then replace images by counterfactuals in the worker."""

    def __init__(self, augment: cfaug.CounterfactualAugment) -> None:
        self.augment = augment

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augment(*default_collate(samples))


# --8<-- [end:collate-class]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="named weights of the mnist backend or a checkpoint (default: colored_mnist)")
    parser.add_argument("--data-root", default="data", help="the folder holding torchvision's MNIST/")
    parser.add_argument("--download", action="store_true", help="download MNIST into --data-root if it is missing")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--quick", action="store_true", help="one batch per placement, seconds (the tests use it)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.manual_seed(0)
    backend = cfaug.load_backend("mnist", weights=args.weights)  # None: the shipped colored_mnist weights
    batches = 1 if args.quick else 20

    # --8<-- [start:compose]
    # The transform is label-aware: it replaces each (image, label) sample with probability p by a
    # counterfactual whose shape class is the label. The label comes out unchanged.
    augment = cfaug.CounterfactualAugment(backend, p=0.5)  # or CounterfactualAugment("mnist", weights=...)
    pipeline = v2.Compose([augment, v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])

    # Place 1: the dataset's joint transform, which receives (image, target).
    train_set = ColoredMNIST(args.data_root, train=True, transforms=pipeline, download=args.download)
    image, label = train_set[0]
    print(f"dataset transforms=: one sample {tuple(image.shape)}, label {label}")
    loader = DataLoader(train_set, batch_size=64, shuffle=True, num_workers=args.workers)
    images, labels = next(iter(loader))  # each worker loads its own backend and component bank
    print(f"dataset transforms=: a batch {tuple(images.shape)} from {args.workers} workers")
    # --8<-- [end:compose]

    # --8<-- [start:image-only]
    # MNIST(transform=...) and ImageFolder(transform=...) call the transform with the image alone. Without the
    # label the transform keeps the real digit's shape, estimated by the mask estimator that ships with the
    # weights, and swaps its texture and background for generated ones (shape="real", what "auto" means here).
    # Plain MNIST is grayscale: the counterfactual comes back grayscale too (its luma), for a 1-channel model.
    image_only = cfaug.CounterfactualAugment(backend, p=1.0)
    mnist = MNIST(args.data_root, train=True, transform=v2.Compose([v2.ToImage(), image_only]))
    try:
        image, label = mnist[0]
    except ValueError as error:  # weights without a mask estimator, e.g. a fresh train_cgn.py checkpoint
        print("transform= (image only):", str(error).splitlines()[0])
    else:
        print(f"transform= (image only): MNIST digit {label} kept its shape, now {tuple(image.shape)}, new texture")
    # --8<-- [end:image-only]

    # --8<-- [start:collate]
    # Place 2: the collate_fn. The generator runs once per batch, on the chosen samples only, inside the
    # DataLoader workers.
    plain_set = ColoredMNIST(args.data_root, train=True)  # no transform: (image, label) in [0, 1]
    loader = DataLoader(
        plain_set, batch_size=64, shuffle=True, num_workers=args.workers, collate_fn=CounterfactualCollate(augment)
    )
    images, labels = next(iter(loader))
    print(f"collate_fn: a batch {tuple(images.shape)}, labels {labels[:8].tolist()}")
    # --8<-- [end:collate]

    # --8<-- [start:after-loader]
    # Place 3: after the DataLoader, on the batch, on the GPU when there is one. The backend follows the
    # batch's device on first use.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = DataLoader(plain_set, batch_size=256, shuffle=True, num_workers=args.workers)
    for step, (images, labels) in enumerate(loader):
        images, labels = images.to(device), labels.to(device)
        images, labels = augment(images, labels)
        if step + 1 == batches:
            break
    print(f"after the DataLoader: {step + 1} batches of {tuple(images.shape)} on {images.device}")
    # --8<-- [end:after-loader]

    # --8<-- [start:kornia]
    # Place 4: the kornia augmentation, called directly with the labels (label-aware).
    random_counterfactual = cfaug.RandomCounterfactual(backend, p=0.5)
    images = random_counterfactual(images, labels=labels)
    applied = int(random_counterfactual.last_record["applied"].sum())
    print(f"RandomCounterfactual: {applied} of {len(images)} images replaced")
    # --8<-- [end:kornia]

    # --8<-- [start:record]
    # What was applied: with return_record=True the transform also returns, per sample, whether it was
    # replaced, the class of each mechanism and the seed each part was generated with (-1: not generated).
    recording = cfaug.CounterfactualAugment(backend, p=0.5, return_record=True)
    images, labels = next(iter(DataLoader(plain_set, batch_size=16)))
    (augmented, same_labels), record = recording(images, labels)
    print("applied:   ", record["applied"].int().tolist())
    print("shape:     ", record["shape"].tolist())
    print("texture:   ", record["texture"].tolist())
    print("background:", record["background"].tolist())
    # The record regenerates the output exactly: every part comes from its class and seed.
    print("replay matches:", torch.allclose(recording.replay(images, record), augmented, atol=1e-6))
    # --8<-- [end:record]


if __name__ == "__main__":
    main()
