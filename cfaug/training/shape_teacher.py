"""The shape teacher: a small digit classifier on binary masks that tells whether a generated mask shows its class.

In the biased MNIST variants the colour (or texture) of a training image already identifies its class, so a
label-conditioned discriminator can be satisfied by the right colour on a wrong shape. We measured exactly that in
runs of both recipes: after 3,000 iterations some classes drew a well-formed but wrong digit (a 1 shaped like a 6,
an 8 like a 0) that the discriminator did not punish, and the mask statistics of the collapse detector could not see
it. The teacher closes that gap twice:

* as a **monitor**: the share of a run's probe masks that the teacher reads as their class (``shape accuracy``),
  logged per class and checked by the collapse detector;
* as a **loss**: ``lambda_shape * cross_entropy(teacher(mask), class)`` pulls each mask towards a digit of its
  own class.

It is trained at the start of a run, in seconds, on the ground-truth masks of the variant's training split (the
thresholded MNIST digits, which carry no colour or texture), and its weights are saved in the run's checkpoints so a
resumed run uses the same teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cfaug._utils import check_positive_int
from cfaug.engine import run_step_function, training_scope
from cfaug.models.mask_classifier import MaskClassifier
from cfaug.seeding import mix_seed

__all__ = ["MaskClassifier", "shape_accuracy", "train_shape_teacher"]

_SHIFT = 2  # the teacher sees masks shifted by up to this many pixels, so it reads shape rather than position


def _random_shift(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each mask by up to ``_SHIFT`` pixels in each direction, filling with zeros (background)."""
    size = masks.shape[-1]
    padded = F.pad(masks, (_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * _SHIFT + 1, (masks.shape[0], 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(size)).to(masks.device)  # (B, size)
    cols = (offsets[:, 1:2] + torch.arange(size)).to(masks.device)
    batch = torch.arange(masks.shape[0], device=masks.device)[:, None, None]
    return padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_shape_teacher(
    masks: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int = 10,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    held_out: int = 2000,
) -> tuple[MaskClassifier, float]:
    """Train a ``MaskClassifier`` on ground-truth masks; return it (frozen, eval mode) and its held-out accuracy.

    The last ``held_out`` masks are kept apart to measure the accuracy, so that a run records how far the teacher
    itself can be trusted. Every random draw (initialisation, batch order, shifts) follows from ``seed``.

    Args:
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` masks, uint8 or float, 1 on the object.
        labels: ``(N,)`` integer classes.
        num_classes: number of classes.
        steps: Adam iterations.
        batch_size: masks per iteration.
        lr: Adam learning rate.
        seed: seed of every random draw.
        device: where to train.
        held_out: masks kept for the accuracy (at most half the data).

    Returns:
        ``(teacher, held_out_accuracy)``; the teacher has ``requires_grad=False`` and is in eval mode.

    Raises:
        TypeError, ValueError: the arguments have the wrong type, shape or value (the message names which).
    """
    if not isinstance(masks, torch.Tensor) or masks.dim() not in (3, 4):
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"`masks` should be a (N, H, W) or (N, 1, H, W) tensor, but got {shape}.")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != len(masks):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`labels` should be a ({len(masks)},) tensor matching `masks`, but got {shape}.")
    for name, value in (("num_classes", num_classes), ("steps", steps), ("batch_size", batch_size)):
        check_positive_int(value, name)
    check_positive_int(held_out, "held_out", allow_zero=True)
    if len(masks) < 2:
        raise ValueError(f"`masks` should hold at least 2 masks, but got {len(masks)}.")
    masks = masks.reshape(len(masks), 1, *masks.shape[-2:]).float()
    labels = labels.long()
    held_out = min(held_out, len(masks) // 2)
    train_masks, train_labels = masks[: len(masks) - held_out], labels[: len(masks) - held_out]

    generator = torch.Generator().manual_seed(mix_seed(seed, 1))
    with training_scope():  # the caller's CPU RNG state is left as it was
        torch.manual_seed(mix_seed(seed, 2))
        teacher = MaskClassifier(num_classes).to(device)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr)
    teacher.train()

    def step(index: int) -> dict[str, torch.Tensor]:
        chosen = torch.randint(0, len(train_masks), (batch_size,), generator=generator)
        batch = _random_shift(train_masks[chosen], generator).to(device)
        loss = F.cross_entropy(teacher(batch), train_labels[chosen].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    run_step_function(step, steps, desc="shape teacher")  # seconds: no progress bar
    teacher.eval().requires_grad_(False)
    accuracy = float("nan")
    if held_out:
        accuracy = shape_accuracy(teacher, masks[-held_out:].to(device), labels[-held_out:].to(device)).mean().item()
    return teacher, accuracy


@torch.no_grad()
def shape_accuracy(teacher: nn.Module, masks: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per mask, 1.0 where ``teacher`` reads the mask as its class and 0.0 elsewhere, ``(B,)`` float."""
    return (teacher(masks.float()).argmax(dim=1) == classes).float()
