"""The MNIST classifier experiment (CGN, Table 2), by its old module name: every name it had still imports here.

The code now lives by concern: :mod:`cfaug.evaluation.table2` (the experiment: ``run_table2``, ``merge_table2``,
``format_table2``), :mod:`cfaug.evaluation.counterfactual_sets` (the counterfactual training sets),
:mod:`cfaug.evaluation.shape_classifier` (data, training and test of the classifier), the network in
:mod:`cfaug.models.classifiers` and the command line in :mod:`cfaug.cli.evaluate`.
"""

from __future__ import annotations

from cfaug.evaluation._moved import forward_to
from cfaug.evaluation.counterfactual_sets import (
    generate_counterfactuals,
    load_counterfactual_backend,
    real_shape_counterfactuals,
)
from cfaug.evaluation.shape_classifier import (
    ShapeClassifier,
    evaluate_classifier,
    make_datasets,
    split_tensors,
    train_classifier,
    train_shape_classifier,
    visible_digits,
)
from cfaug.evaluation.table2 import PAPER_TABLE2, SETTINGS, VARIANTS, format_table2, merge_table2, run_table2

__all__ = [
    "PAPER_TABLE2",
    "SETTINGS",
    "VARIANTS",
    "ShapeClassifier",
    "evaluate_classifier",
    "format_table2",
    "generate_counterfactuals",
    "load_counterfactual_backend",
    "make_datasets",
    "merge_table2",
    "real_shape_counterfactuals",
    "run_table2",
    "split_tensors",
    "train_classifier",
    "train_shape_classifier",
    "visible_digits",
]

# The command line moved to cfaug.cli.evaluate; its names still import from here, loaded on first use (the library
# does not import the command line).
__getattr__ = forward_to(
    "cfaug.cli.evaluate",
    __name__,
    (
        "add_evaluate_mnist_arguments",
        "add_table2_options",
        "parse_named_weights",
        "run_evaluate_mnist",
        "weights_from_args",
    ),
)
