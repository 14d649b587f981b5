"""The paper's evaluations: MNIST's Table 2, and the shape bias and Backgrounds Challenge of ImageNet classifiers.

``cfaug evaluate mnist`` runs the classifier experiment of Table 2 (``cfaug.evaluation.mnist``); ``cfaug evaluate
imagenet`` the shape bias (Table 3) and the Backgrounds Challenge (Table 4) of an ImageNet classifier
(``cfaug.evaluation.imagenet``). The MNIST experiment is split into ``table2`` (orchestration), ``counterfactual_sets``
and ``shape_classifier``, with ``matched_budget`` comparing the kinds of counterfactual per batch and as a saved set
at the same training budget; ``cfaug.evaluation.mnist`` re-exports all of it under its old name.
``train_shape_classifier`` (alias ``train_classifier``) trains the MNIST experiment's small CNN; the ImageNet
classifier ensemble has its own trainer in the training package.

Examples:
    >>> from cfaug.evaluation import format_table2, run_table2
    >>> results = run_table2("colored_mnist", {"authors": "colored_mnist.pth"}, data_root="data")  # doctest: +SKIP
    >>> print(format_table2(results))  # doctest: +SKIP
    >>> from cfaug.evaluation import format_shape_bias, load_evaluation_model, shape_bias
    >>> model = load_evaluation_model(classifier="runs/ensemble/final.safetensors")  # doctest: +SKIP
    >>> stimuli = "texture-vs-shape/stimuli/style-transfer-preprocessed-512"
    >>> print(format_shape_bias(shape_bias(model, stimuli)))  # doctest: +SKIP
"""

from __future__ import annotations

from cfaug.evaluation._moved import forward_to
from cfaug.evaluation.imagenet import (
    BACKGROUND_VARIANTS,
    DEFAULT_BACKGROUND_VARIANTS,
    GEIRHOS_16_CATEGORIES,
    IN9_CLASSES,
    CueConflictStimuli,
    EvaluationModel,
    backgrounds_challenge,
    format_backgrounds,
    format_shape_bias,
    load_evaluation_model,
    load_in9_mapping,
    shape_bias,
)
from cfaug.evaluation.matched_budget import (
    KINDS,
    MODES,
    MatchedBudget,
    augment_batch,
    best_kinds,
    counterfactual_set,
    format_matched_budget,
    kind_augments,
    merge_matched_budget,
    run_matched_budget,
    train_matched,
)

# The MNIST experiment's names are exactly those of its old module, which re-exports them from their new homes.
from cfaug.evaluation.mnist import *  # noqa: F403
from cfaug.evaluation.mnist import __all__ as _mnist_names

__all__ = [
    "BACKGROUND_VARIANTS",
    "DEFAULT_BACKGROUND_VARIANTS",
    "GEIRHOS_16_CATEGORIES",
    "IN9_CLASSES",
    "KINDS",
    "MODES",
    "CueConflictStimuli",
    "EvaluationModel",
    "MatchedBudget",
    "augment_batch",
    "backgrounds_challenge",
    "best_kinds",
    "counterfactual_set",
    "format_matched_budget",
    "kind_augments",
    "merge_matched_budget",
    "run_matched_budget",
    "train_matched",
    "format_backgrounds",
    "format_shape_bias",
    "load_evaluation_model",
    "load_in9_mapping",
    "shape_bias",
    *_mnist_names,
]

# The command line moved to cfaug.cli.evaluate; its names still import from here, loaded on first use.
__getattr__ = forward_to(
    "cfaug.cli.evaluate",
    __name__,
    (
        "add_evaluate_imagenet_arguments",
        "add_evaluate_mnist_arguments",
        "add_table2_options",
        "run_evaluate_imagenet",
        "run_evaluate_mnist",
        "weights_from_args",
    ),
)
