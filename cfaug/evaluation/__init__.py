"""The paper's evaluations: the MNIST classifier experiment of Table 2 (``cfaug evaluate mnist``).

Examples:
    >>> from cfaug.evaluation import format_table2, run_table2
    >>> results = run_table2("colored_mnist", {"authors": "colored_mnist.pth"}, data_root="data")  # doctest: +SKIP
    >>> print(format_table2(results))  # doctest: +SKIP
"""

from __future__ import annotations

from cfaug.evaluation.mnist import (
    PAPER_TABLE2,
    SETTINGS,
    VARIANTS,
    ShapeClassifier,
    add_evaluate_mnist_arguments,
    evaluate_classifier,
    format_table2,
    generate_counterfactuals,
    load_counterfactual_backend,
    make_datasets,
    run_evaluate_mnist,
    run_table2,
    train_classifier,
    visible_digits,
    weights_from_args,
)

__all__ = [
    "PAPER_TABLE2",
    "SETTINGS",
    "VARIANTS",
    "ShapeClassifier",
    "add_evaluate_mnist_arguments",
    "evaluate_classifier",
    "format_table2",
    "generate_counterfactuals",
    "load_counterfactual_backend",
    "make_datasets",
    "run_evaluate_mnist",
    "run_table2",
    "train_classifier",
    "visible_digits",
    "weights_from_args",
]
