"""Networks that cfaug uses as building blocks (not backends): the frozen U2-Net mask network of the ImageNet CGN."""

from __future__ import annotations

from cfaug.models.u2net import U2NET_VARIANTS, U2NET_WEIGHTS, U2Net, build_u2net, convert_u2netp_onnx

__all__ = ["U2NET_VARIANTS", "U2NET_WEIGHTS", "U2Net", "build_u2net", "convert_u2netp_onnx"]
