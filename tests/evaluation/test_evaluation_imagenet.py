"""ImageNet evaluations: shape bias on cue-conflict stimuli and the Backgrounds Challenge on IN-9.

The classifier is a fake whose every answer the test chooses: each image is a flat colour that encodes a row
number, and the model returns that row of a logits table. Shape bias, accuracies and BG-gap are then known exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cfaug.cli import main
from cfaug.evaluation.imagenet import (
    GEIRHOS_16_CATEGORIES,
    GEIRHOS_16_IMAGENET_INDICES,
    IN9_CLASSES,
    IN9_MEAN,
    IN9_STD,
    CueConflictStimuli,
    EvaluationModel,
    backgrounds_challenge,
    format_backgrounds,
    format_shape_bias,
    imagenet_to_16_categories,
    load_evaluation_model,
    load_in9_mapping,
    parse_cue_conflict_name,
    shape_bias,
)
from cfaug.training.classifier import IMAGENET_MEAN, IMAGENET_STD, EnsembleClassifier, save_classifier


# ------------------------------------------------------------------------------------------------ the fake
def _code_colour(code: int) -> tuple[int, int, int]:
    return (code // 32) * 8, (code % 32) * 8, 0


def _write_code_image(path: Path, code: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), _code_colour(code), dtype=np.uint8)).save(path)


class CodeClassifier(nn.Module):
    """Decodes the row number from the flat colour of the (normalised) input and returns that row of each table."""

    def __init__(self, tables: dict[str, torch.Tensor], mean=IMAGENET_MEAN, std=IMAGENET_STD, as_dict: bool = True):
        super().__init__()
        self.tables = tables
        self.register_buffer("mean", torch.tensor(mean).view(1, 3))
        self.register_buffer("std", torch.tensor(std).view(1, 3))
        self.as_dict = as_dict

    def forward(self, images: torch.Tensor):
        pixels = (images.mean(dim=(2, 3)) * self.std + self.mean) * 255
        codes = (pixels[:, 0] / 8).round().long() * 32 + (pixels[:, 1] / 8).round().long()
        # Images normalised with other statistics than the fake's decode to other (clamped) rows.
        out = {name: table[codes.clamp(0, len(table) - 1)] for name, table in self.tables.items()}
        return out if self.as_dict else out["logits"]


def _one_hot_logits(classes: list[int]) -> torch.Tensor:
    table = torch.zeros(len(classes), 1000)
    table[torch.arange(len(classes)), torch.tensor(classes)] = 20.0
    return table


# ---------------------------------------------------------------------------------------------- shape bias
def _stimuli(root: Path, entries: list[tuple[str, int]]) -> None:
    """Write stimuli ``(file name, code)`` into their shape's folder; every category folder exists."""
    for category in GEIRHOS_16_CATEGORIES:
        (root / category).mkdir(parents=True, exist_ok=True)
    for name, code in entries:
        shape, _ = parse_cue_conflict_name(name)
        _write_code_image(root / shape / name, code)


def _shape_bias_case(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    rows = {
        # code: the ImageNet class the "shape" output predicts
        0: 281,  # cat1-elephant1: a cat class -> shape decision
        1: 440,  # cat2-bottle1: a bottle class -> texture decision
        2: 436,  # dog1-car1: a car class -> texture decision
        3: 152,  # dog2-cat3: a dog class -> shape decision
        4: 404,  # bird1-clock1: airplane -> neither
        5: 499,  # knife1-knife2: same category, left out
    }
    shape_table = _one_hot_logits([rows[k] for k in range(6)])
    # oven1-truck1: half the mass spread over dog's 109 classes, 0.1 on the oven: the mean picks the oven (shape),
    # a sum would pick the dog (neither).
    probabilities = torch.full((1000,), 1e-6)
    probabilities[list(GEIRHOS_16_IMAGENET_INDICES["dog"])] = 0.5 / 109
    probabilities[766] = 0.1
    probabilities[0:7] = (1 - probabilities.sum() + probabilities[0:7].sum()) / 7
    shape_table = torch.cat([shape_table, probabilities.log()[None]])
    # A second output that always answers the texture's category (truck/bottle/...): shape bias 0.
    texture_classes = [386, 440, 436, 281, 409, 499, 555]
    root = tmp_path / "stimuli"
    _stimuli(
        root,
        [
            ("cat1-elephant1.png", 0),
            ("cat2-bottle1.png", 1),
            ("dog1-car1.png", 2),
            ("dog2-cat3.png", 3),
            ("bird1-clock1.png", 4),
            ("knife1-knife2.png", 5),
            ("oven1-truck1.png", 6),
        ],
    )
    return root, {"shape": shape_table, "texture": _one_hot_logits(texture_classes)}


def test_shape_bias_counts_decisions_exactly(tmp_path):
    root, tables = _shape_bias_case(tmp_path)
    model = EvaluationModel(module=CodeClassifier(tables), image_size=8)
    results = shape_bias(model, root, resize=10, batch_size=4, progress=False)
    shape = results["shape"]
    # cat1, dog2 and oven1 decided by shape; cat2 and dog1 by texture; bird1 by neither; knife1 left out.
    assert (shape["shape_decisions"], shape["texture_decisions"], shape["other_decisions"]) == (3, 2, 1)
    assert shape["shape_bias"] == pytest.approx(3 / 5)
    assert shape["stimuli"] == 6 and shape["shape_accuracy"] == pytest.approx(3 / 6)
    assert shape["per_category"]["dog"] == {"shape": 1, "texture": 1, "other": 0}
    assert shape["per_category"]["oven"] == {"shape": 1, "texture": 0, "other": 0}
    assert results["texture"]["shape_bias"] == 0.0 and results["texture"]["texture_decisions"] == 6
    assert results["_data"] == {"stimuli": 6, "excluded_same_category": 1}
    # Only some outputs, and the markdown report.
    only = shape_bias(model, root, outputs=["texture"], resize=10, progress=False)
    assert set(only) == {"texture", "_data"}
    table = format_shape_bias(results)
    assert "| shape | 60.0 | 3 | 2 | 1 | 6 |" in table and "1 with one category for both cues left out" in table


def test_aggregation_is_the_mean_over_each_categorys_classes():
    probabilities = torch.zeros(2, 1000)
    probabilities[0, list(GEIRHOS_16_IMAGENET_INDICES["dog"])] = 0.5 / 109
    probabilities[0, 766] = 0.1  # oven's only class
    probabilities[1, [294, 295]] = 0.3  # two of bear's four classes
    aggregated = imagenet_to_16_categories(probabilities)
    assert aggregated.shape == (2, 16)
    oven, dog, bear = (GEIRHOS_16_CATEGORIES.index(c) for c in ("oven", "dog", "bear"))
    assert aggregated[0, oven] == pytest.approx(0.1) and aggregated[0, dog] == pytest.approx(0.5 / 109)
    assert aggregated[1, bear] == pytest.approx(0.15)
    assert int(aggregated[0].argmax()) == oven
    assert sorted(GEIRHOS_16_IMAGENET_INDICES) == list(GEIRHOS_16_CATEGORIES)
    with pytest.raises(ValueError, match=r"shape \(batch, 1000\)"):
        imagenet_to_16_categories(torch.zeros(2, 10))


def test_stimulus_names_and_layout_errors(tmp_path):
    assert parse_cue_conflict_name("knife10-elephant12.png") == ("knife", "elephant")
    for bad in ("cat1.png", "cat1-dog2-car3.png", "cats1-dog2.png", "cat-dog2.png"):
        with pytest.raises(ValueError, match="<shape><n>-<texture><m>"):
            parse_cue_conflict_name(bad)
    with pytest.raises(FileNotFoundError, match="does not exist; expected <root>/<category>/"):
        CueConflictStimuli(tmp_path / "absent")
    root = tmp_path / "stimuli"
    _stimuli(root, [("cat1-dog1.png", 0)])
    (root / "oven").rmdir()
    with pytest.raises(FileNotFoundError, match=r"lacks the category folders \['oven'\]"):
        CueConflictStimuli(root)
    (root / "oven").mkdir()
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"sub-folders \['zebra'\] that are none of the 16 categories"):
        CueConflictStimuli(root)
    (root / "zebra").rmdir()
    _write_code_image(root / "dog" / "cat2-dog3.png", 0)
    with pytest.raises(ValueError, match="has the shape 'cat' but lies in the folder 'dog'"):
        CueConflictStimuli(root)
    (root / "dog" / "cat2-dog3.png").unlink()
    (root / "cat" / "notes.txt").write_text("not an image: ignored")
    assert len(CueConflictStimuli(root)) == 1


def test_shape_bias_needs_imagenet_logits(tmp_path):
    root = tmp_path / "stimuli"
    _stimuli(root, [("cat1-dog1.png", 0)])
    model = CodeClassifier({"logits": torch.zeros(1, 10)}, as_dict=False)
    with pytest.raises(ValueError, match=r"'logits' should be ImageNet logits of shape \(batch, 1000\)"):
        shape_bias(model, root, image_size=8, progress=False)
    with pytest.raises(ValueError, match="Unknown value 'shape' for argument `outputs`"):
        shape_bias(CodeClassifier({"logits": torch.zeros(1, 1000)}), root, outputs=["shape"], progress=False)


# ------------------------------------------------------------------------------------ Backgrounds Challenge
def _mapping(tmp_path: Path) -> Path:
    """IN-9 class k <- ImageNet classes 10k and 10k + 1; everything else -1."""
    data = {str(i): -1 for i in range(1000)}
    for k in range(9):
        data[str(10 * k)] = data[str(10 * k + 1)] = k
    path = tmp_path / "in9" / "in_to_in9.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _in9(tmp_path: Path, variants: dict[str, list[tuple[int, int]]]) -> Path:
    """Write each variant's images as (true IN-9 class, code); codes index the test's logits table."""
    root = tmp_path / "in9"
    for variant, images in variants.items():
        for k, name in enumerate(IN9_CLASSES):
            (root / variant / "val" / f"{k:02d}_{name}").mkdir(parents=True, exist_ok=True)
        for n, (label, code) in enumerate(images):
            _write_code_image(root / variant / "val" / f"{label:02d}_{IN9_CLASSES[label]}" / f"{n}.JPEG", code, 8)
    return root


# Rows of the logits table: the ImageNet class each code predicts.
_IN9_PREDICTIONS = [0, 11, 20, 500, 81, 1, 30]  # IN-9 classes 0, 1, 2, none (-1), 8, 0, 3


def test_backgrounds_challenge_accuracy_and_gap(tmp_path):
    _mapping(tmp_path)
    root = _in9(
        tmp_path,
        {
            "original": [(0, 0), (1, 1), (2, 2), (8, 4), (3, 6)],  # 5 of 5 right
            "mixed_same": [(0, 0), (1, 1), (2, 2), (3, 3)],  # 3 of 4: class 3's image predicts an outside class
            "mixed_rand": [(0, 0), (1, 5), (2, 3), (3, 1)],  # 1 of 4
        },
    )
    tables = {"logits": _one_hot_logits(_IN9_PREDICTIONS)}
    # batch_size 3: each variant ends with a partial batch, which must still count once.
    results = backgrounds_challenge(CodeClassifier(tables, as_dict=False), root, batch_size=3, progress=False)
    assert results["images"] == {"original": 5, "mixed_same": 4, "mixed_rand": 4}
    assert results["accuracy"]["original"]["logits"] == 1.0
    assert results["accuracy"]["mixed_same"]["logits"] == 0.75
    assert results["accuracy"]["mixed_rand"]["logits"] == 0.25
    assert results["bg_gap"]["logits"] == pytest.approx(0.5)
    assert "| logits | 100.0 | 75.0 | 25.0 | 50.0 |" in format_backgrounds(results)
    # One variant alone: no gap. IN-9 statistics: the fake decodes correctly only if the images were so normalised.
    fake = CodeClassifier(tables, mean=IN9_MEAN, std=IN9_STD, as_dict=False)
    alone = backgrounds_challenge(fake, root, variants=["mixed_same"], normalization="in9", progress=False)
    assert alone["accuracy"] == {"mixed_same": {"logits": 0.75}} and "bg_gap" not in alone
    assert backgrounds_challenge(fake, root, variants=["mixed_same"], progress=False)["accuracy"] != alone["accuracy"]


def test_backgrounds_layout_and_mapping_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected <root>/<variant>/val/<class>"):
        backgrounds_challenge(CodeClassifier({}), tmp_path / "absent", progress=False)
    root = _in9(tmp_path, {"original": [(0, 0)], "mixed_same": [(0, 0)]})
    with pytest.raises(FileNotFoundError, match=r"variant folder .*mixed_rand/val' is missing"):
        backgrounds_challenge(CodeClassifier({}), root, progress=False)
    with pytest.raises(FileNotFoundError, match="in_to_in9.json.*does not exist. Download https://github.com/MadryLab"):
        backgrounds_challenge(CodeClassifier({}), root, variants=["original"], progress=False)
    (root / "mixed_same" / "val" / "08_fish").rmdir()
    with pytest.raises(FileNotFoundError, match="should hold the 9 IN-9 class folders"):
        backgrounds_challenge(CodeClassifier({}), root, variants=["mixed_same"], progress=False)
    with pytest.raises(ValueError, match="Unknown value 'mixed' for argument `variants`"):
        backgrounds_challenge(CodeClassifier({}), root, variants=["mixed"], progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": 1}))
    with pytest.raises(ValueError, match="should map every ImageNet class index"):
        load_in9_mapping(bad)
    bad.write_text(json.dumps({str(i): 9 for i in range(1000)}))
    with pytest.raises(ValueError, match="IN-9 classes 0 to 8, or -1"):
        load_in9_mapping(bad)
    assert int((load_in9_mapping(_mapping(tmp_path)) >= 0).sum()) == 18


# --------------------------------------------------------------------------------------- models and the CLI
def test_cli_evaluates_a_cfaug_ensemble_and_a_torchvision_model(tmp_path, capsys):
    torch.manual_seed(0)
    ensemble = EnsembleClassifier("tiny_cnn", num_classes=1000)
    checkpoint = save_classifier(ensemble, tmp_path / "final.safetensors", image_size=8)
    root, _ = _shape_bias_case(tmp_path)
    out = tmp_path / "bias.json"
    argv = ["evaluate", "imagenet", "shape-bias", "--data", str(root), "--classifier", str(checkpoint)]
    assert main([*argv, "--resize", "10", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "shape-bias of cfaug ensemble final.safetensors (tiny_cnn)" in printed
    written = json.loads(out.read_text())["results"]
    assert set(written) == {"shape", "texture", "background", "average", "shape_texture", "_data"}
    direct = shape_bias(load_evaluation_model(classifier=checkpoint), root, resize=10, progress=False)
    assert written["average"] == direct["average"]
    for row in (r for name, r in written.items() if not name.startswith("_")):
        assert row["shape_decisions"] + row["texture_decisions"] + row["other_decisions"] == 6

    # A plain torchvision model with weights from a file; the IN-9 data of the previous test.
    torch.manual_seed(0)
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    _mapping(tmp_path)
    in9 = _in9(tmp_path, {v: [(0, 0), (1, 1)] for v in ("original", "mixed_same", "mixed_rand")})
    argv = ["evaluate", "imagenet", "backgrounds", "--data", str(in9), "--torchvision", "resnet18"]
    assert main([*argv, "--weights", str(weights), "--image-size", "32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "backgrounds of torchvision resnet18" in printed and "| logits |" in printed and "BG-gap" in printed

    assert main([*argv]) == 2
    assert "`weights` is required with a torchvision model" in capsys.readouterr().err
    assert (
        main(["evaluate", "imagenet", "shape-bias", "--data", str(tmp_path / "none"), "--classifier", str(checkpoint)])
        == 2
    )
    assert "does not exist; expected <root>/<category>/" in capsys.readouterr().err


def test_load_evaluation_model_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of `classifier`"):
        load_evaluation_model()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_evaluation_model(classifier=tmp_path / "missing.safetensors")
    model = load_evaluation_model(torchvision="resnet18", weights=_random_weights(tmp_path))
    assert isinstance(model.module, nn.Module) and model.mean == IMAGENET_MEAN and not model.module.training
    assert math.isclose(sum(model.std), sum(IMAGENET_STD))


def _random_weights(tmp_path: Path) -> Path:
    import torchvision

    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, str(path))
    return path
