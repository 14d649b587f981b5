"""Mix counterfactuals into an existing training loop: a small CNN on Colored MNIST.

In Colored MNIST's training split every digit class has its own colour; in its test split colours are drawn at
random. A classifier trained on the training split alone can get by on colour and fails on the test split. With
counterfactuals (the digit's shape with a texture and background of random classes, labelled by the shape), colour
no longer predicts the label, so the classifier has to learn shape. The loop below is an ordinary PyTorch loop;
the counterfactuals take two lines.

Usage (the shipped colored_mnist weights unless ``--weights`` names others or a checkpoint):
    python examples/train_classifier.py --data-root data --download --counterfactual-p 0   # baseline
    python examples/train_classifier.py --data-root data --counterfactual-p 0.5            # with counterfactuals
    python examples/train_classifier.py --quick --data-root data
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2

import cfaug
from cfaug.datasets import ColoredMNIST


def small_cnn(num_classes: int = 10) -> nn.Module:
    """Conv32-Pool-Conv64-Pool-FC128-FC: a few seconds per thousand steps on a GPU, about a minute on a CPU."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@torch.no_grad()
def accuracy(model: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device) -> float:
    """Top-1 accuracy in percent on ``dataset`` (images in [0, 1], normalised here like in training)."""
    model.eval()
    normalize = v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=512):
        predictions = model(normalize(images.to(device))).argmax(dim=1)
        correct += int((predictions == labels.to(device)).sum())
        total += len(labels)
    model.train()
    return 100.0 * correct / total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="the CGN: named weights of the mnist backend or a checkpoint path")
    parser.add_argument("--data-root", default="data", help="where torchvision's MNIST/ is (or goes, with --download)")
    parser.add_argument("--download", action="store_true", help="download MNIST first if --data-root lacks it")
    parser.add_argument("--quick", action="store_true", help="20 training steps on a small test split (for the tests)")
    parser.add_argument("--counterfactual-p", type=float, default=0.5, help="share of images replaced (0: baseline)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the 50,000 training images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the data order and the draws")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = cfaug.load_backend("mnist", weights=args.weights)
    train_set = ColoredMNIST(args.data_root, train=True, download=args.download)
    test_set = ColoredMNIST(args.data_root, train=False)  # colours drawn at random: shape is all that is left
    if args.quick:
        test_set = Subset(test_set, range(512))
    max_steps = 20 if args.quick else None

    model = small_cnn().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True)
    normalize = v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)

    # --8<-- [start:loop]
    augment = cfaug.CounterfactualAugment(backend, p=args.counterfactual_p)  # added: build the transform once

    step = 0
    for epoch in range(args.epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            images, labels = augment(images, labels)  # added: replace a share p of the batch, labels kept
            loss = F.cross_entropy(model(normalize(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 200 == 0:
                print(f"epoch {epoch} step {step}: loss {loss.item():.3f}")
            if step == max_steps:
                break
    # --8<-- [end:loop]

    train_accuracy = accuracy(model, Subset(train_set, range(len(test_set))), device)
    test_accuracy = accuracy(model, test_set, device)
    print(f"counterfactual p={args.counterfactual_p}, weights {backend.weights_name!r}, {step} steps")
    print(f"accuracy on the biased training split:        {train_accuracy:5.1f} %")
    print(f"accuracy on the test split (random colours):  {test_accuracy:5.1f} %")


if __name__ == "__main__":
    main()
