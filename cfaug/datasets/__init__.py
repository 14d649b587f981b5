"""Datasets: counterfactuals as a dataset, and the biased MNIST variants of the CGN paper."""

from cfaug.datasets.counterfactual import (
    CounterfactualDataset,
    MixedDataset,
    SavedCounterfactualDataset,
    SavedDatasetError,
)
from cfaug.datasets.mnist_variants import ColoredMNIST, DoubleColoredMNIST, WildlifeMNIST

__all__ = [
    "ColoredMNIST",
    "CounterfactualDataset",
    "DoubleColoredMNIST",
    "MixedDataset",
    "SavedCounterfactualDataset",
    "SavedDatasetError",
    "WildlifeMNIST",
]
