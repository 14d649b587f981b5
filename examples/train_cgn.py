"""Train a CGN on an MNIST variant, add a mask estimator, and use the result as the ``mnist`` backend's weights.

This is how the weights that ship with cfaug were made (``cfaug train mnist`` and ``cfaug train mask-estimator``
do the same from the command line). The run folder gets the config, a stats line per log interval, sample grids, a
resumable checkpoint and ``final.safetensors``: the trained generator. A mask estimator trained on the
generator's own images then lets ``CounterfactualAugment`` work on lone real images (image-only mode);
``with_mask_estimator.safetensors`` holds both, and every other example takes it as ``--weights``.

Our presets run 10,000 iterations at batch 64 for Colored and Double-colored MNIST and 6,000 for Wildlife MNIST
(about an hour each on an idle 2-core CPU, minutes on a GPU). Interrupting a run (Ctrl-C) and running the same
command again continues where it stopped and gives the same weights as an uninterrupted run.

Usage:
    python examples/train_cgn.py --data-root data --download --run-dir runs/colored_mnist
    python examples/train_cgn.py --variant wildlife_mnist --data-root data --texture-root textures --run-dir runs/w
    python examples/train_cgn.py --quick --data-root data --run-dir /tmp/cgn_quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torchvision.datasets import MNIST
from torchvision.utils import save_image

import cfaug
from cfaug.demo import counterfactual_grid
from cfaug.training import get_preset, train_cgn_mnist
from cfaug.training.config import VARIANTS
from cfaug.training.mask_estimator import train_mask_estimator

# A seconds-long run that goes through every stage (training, logging, samples, checkpoint, export).
QUICK = dict(
    steps=4,
    batch_size=8,
    style_batch=2,
    train_images=40,
    log_every=2,
    sample_every=2,
    checkpoint_every=2,
    probe_per_class=2,
    collapse_after=10_000,
    shape_teacher_steps=5,
    progress=False,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="data", help="the folder of torchvision's MNIST/ training data")
    parser.add_argument("--download", action="store_true", help="fetch MNIST into --data-root before training")
    parser.add_argument("--quick", action="store_true", help="4 steps through every stage, seconds (for the tests)")
    parser.add_argument("--variant", choices=VARIANTS, default="colored_mnist", help="the MNIST variant")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/colored_mnist"), help="the run folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--texture-root", default=None, help="Wildlife MNIST textures (default: built-in)")
    parser.add_argument("--mask-steps", type=int, default=1000, help="mask estimator steps (the shipped ones: 1000)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.download:
        MNIST(args.data_root, train=True, download=True)

    # --8<-- [start:train]
    config = get_preset(
        args.variant,  # "colored_mnist", "double_colored_mnist" or "wildlife_mnist"
        data_root=args.data_root,  # a folder holding torchvision's MNIST/
        texture_root=args.texture_root,  # Wildlife MNIST only; None: the built-in procedural textures
        device=args.device,
        **(QUICK if args.quick else {}),
    )
    final = train_cgn_mnist(config, args.run_dir)  # resumes when the run folder holds a checkpoint
    print(f"trained generator: {final}")
    # --8<-- [end:train]

    # --8<-- [start:mask]
    # A mask estimator for real images, trained on the generator's own (image, mask) pairs in a few minutes;
    # the generator itself is left unchanged. The shipped weights were made this way (1,000 steps).
    backend = train_mask_estimator(final, steps=2 if args.quick else args.mask_steps, progress=not args.quick)
    weights = args.run_dir / "with_mask_estimator.safetensors"
    backend.save(weights)
    print(f"generator with mask estimator: {weights}")
    # --8<-- [end:mask]

    # --8<-- [start:use]
    backend = cfaug.load_backend("mnist", weights=weights)
    # Row i: the shape of class i; column j: the texture and background of class j (diagonal: no swap).
    grid = counterfactual_grid(backend)
    save_image(grid, args.run_dir / "counterfactual_grid.png", nrow=backend.num_classes, padding=1, pad_value=1.0)
    augment = cfaug.CounterfactualAugment("mnist", weights=weights, p=0.5)
    print(f"{args.run_dir / 'counterfactual_grid.png'}; ready to augment: {augment}")
    # --8<-- [end:use]


if __name__ == "__main__":
    main()
