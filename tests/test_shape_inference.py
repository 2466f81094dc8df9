"""Shape inference on stubbed weights resolves what real-size models need, without importing torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir

import optimum_prune.graph as graph_module
from optimum_prune import ORTPruner
from optimum_prune.graph import load_model
from optimum_prune.symbolic import symbolic_infer
from zoo import export_zoo_model


def test_heads_found_when_every_bias_is_stubbed(tmp_path, monkeypatch):
    """At real size biases exceed the stub threshold; symbolic inference used to fail on them, which
    left the attention-mask Expand unresolved and refused every head group (BERT-base: 0 of 12)."""
    folder = export_zoo_model("bert", tmp_path)
    monkeypatch.setattr(graph_module, "_STUB_THRESHOLD", 0)
    summary = ORTPruner.from_pretrained(folder).analyze().summary()
    assert summary["heads"]["prunable"] == summary["heads"]["groups"] >= 2
    assert summary["ffn"]["prunable"] == summary["ffn"]["groups"] >= 2


def test_stubbed_initializer_feeding_arithmetic_is_unknown_not_fatal():
    """ONNX Runtime's symbolic inference reads every initializer feeding an Add; a stubbed one must
    count as unknown rather than abort inference for the whole graph."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[B, S, 128] x) => (float[B, S, 2, 64] y) <int64[4] target = {0, 0, 2, 64}> {
            a = Add(x, bias)
            y = Reshape(a, target)
        }
    """)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(128, np.float32), "bias"))
    proto, stubs = graph_module._stub_proto(ir.serde.deserialize_model(model))
    assert "bias" in stubs
    shapes: dict = {}
    graph_module._collect(symbolic_infer(proto, stubs), shapes)  # raised before the stub-aware subclass
    assert shapes["a"] == ("B", "S", 128)


def test_shape_inference_does_not_import_torch(tmp_path):
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    code = ("import sys; from optimum_prune.graph import infer_shapes, load_model; "
            f"s = infer_shapes(load_model({str(path)!r})); assert s['y'] == ('N', 4), s; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert load_model(path) is not None


def test_weight_normalised_conv_keeps_symbolic_inference_alive(monkeypatch):
    """wav2vec2 / HuBERT export their weight-normalised positional conv as ``g * v / ReduceL2(v, axes)``
    with axes as an input (opset 18). ONNX Runtime's symbolic inference read such axes for ReduceSum and
    ReduceMean only, lost the rank of the ReduceL2, and then failed on the next broadcasting op: the
    whole graph fell back to ONNX inference, whose fresh symbols hid every head count (0 heads pruned)."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[B, S, 16] x) => (float[B, S, 4, 4] y) <int64[1] minus = {-1}, int64[1] four = {4}> {
            axes = Constant <value = int64[2] {0, 1}> ()
            n = ReduceL2 <keepdims = 1> (v, axes)
            d = Div(v, n)
            w = Mul(d, gain)
            h = MatMul(x, w)
            shape = Shape(h)
            b = Slice(shape, zero, one)
            s = Slice(shape, one, two)
            target = Concat <axis = 0> (b, s, minus, four)
            y = Reshape(h, target)
        }
    """)
    rng = np.random.default_rng(0)
    for name, arr in {"v": rng.standard_normal((16, 16)), "gain": rng.standard_normal((1, 16)),
                      "zero": np.array([0]), "one": np.array([1]), "two": np.array([2])}.items():
        dtype = np.int64 if arr.dtype.kind == "i" else np.float32
        model.graph.initializer.append(onnx.numpy_helper.from_array(arr.astype(dtype), name))
    monkeypatch.setattr(graph_module, "_STUB_THRESHOLD", 100)  # v (256 values) becomes a shape-only stub
    proto, stubs = graph_module._stub_proto(ir.serde.deserialize_model(model))
    assert "v" in stubs
    shapes: dict = {}
    graph_module._collect(symbolic_infer(proto, stubs), shapes)  # raised TypeError before
    assert shapes["n"] == (1, 1)
    assert shapes["y"] == ("B", "S", 4, 4)  # the head count, resolved symbolically


def test_flatten_keeps_symbolic_products_and_accepts_axis_equal_to_rank():
    """Flatten's output is (product before axis, product from axis), symbolic products included; axis may
    equal the rank (the output is then [everything, 1]), which fused GPT-2 exports contain."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[B, 4, 8] x) => (float[A, C] y, float[D, E] z) {
            y = Flatten <axis = 2> (x)
            z = Flatten <axis = 3> (x)
        }
    """)
    proto, stubs = graph_module._stub_proto(ir.serde.deserialize_model(model))
    shapes: dict = {}
    graph_module._collect(symbolic_infer(proto, stubs), shapes)
    assert shapes["y"] == ("4*B", 8)
    assert shapes["z"] == ("32*B", 1)


def test_full_reduction_of_a_known_shape_value_is_a_value():
    """``repeat_interleave`` exports its repeat count as ReduceMax(ConstantOfShape(...)); with that value
    the Expand it shapes has known dimensions, and a broadcast axis of 1 stays 1 (it used to become a
    fresh symbol that the next broadcast merged with the head count). A partial reduction of a 2-D value,
    or one whose input value is unknown, gives no value."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[B, 1, 3] x, int64[2, 2] m, int64[4] u) => (float[B, P, 3] y, float[B, Q, 3] z,
                                                        float[B, R, 3] w) {
            fill = ConstantOfShape <value = int64[1] {2}> (four)
            big = ReduceMax <keepdims = 0> (fill)
            small = ReduceMin <keepdims = 1> (fill)
            one = Constant <value = int64[1] {1}> ()
            big1 = Unsqueeze (big, zero)
            ty = Concat <axis = 0> (one, big1, one)
            y = Expand (x, ty)
            tz = Concat <axis = 0> (one, small, one)
            z = Expand (x, tz)
            rows = ReduceMax <keepdims = 0> (m, one)
            unknown = ReduceMax <keepdims = 1> (u)
            tw = Concat <axis = 0> (one, unknown, one)
            w = Expand (x, tw)
        }
    """)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([4], np.int64), "four"),
                                    onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")])
    proto, stubs = graph_module._stub_proto(ir.serde.deserialize_model(model))
    shapes: dict = {}
    graph_module._collect(symbolic_infer(proto, stubs), shapes)
    assert shapes["y"] == ("B", 2, 3)
    assert shapes["z"] == ("B", 2, 3)
    assert shapes["rows"] == (2,)
    assert not isinstance(shapes["w"][1], int), shapes["w"]


def test_integer_mod_of_shape_values_is_a_value():
    """Window padding computes its pads as ``(4 - H % 4) % 4``; with Mod's value the Pad's output keeps
    its unpadded dimensions (the channels stay 8) and the padded one is an expression in H, instead of
    every dimension a fresh symbol. C's fmod (``fmod=1``) gives no value."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[B, H, 8] x) => (float[B, P, 8] y, float[B, Q, R] z) {
            s = Shape (x)
            h = Slice (s, one, two)
            rem = Mod (h, four)
            need = Sub (four, rem)
            p = Mod (need, four)
            pads = Concat <axis = 0> (zeros, p, zero)
            y = Pad (x, pads)
            c = Mod <fmod = 1> (need, four)
            cpads = Concat <axis = 0> (zeros, c, zero)
            z = Pad (x, cpads)
        }
    """)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
        (("one", [1]), ("two", [2]), ("four", [4]), ("zero", [0]), ("zeros", [0, 0, 0, 0]))])
    proto, stubs = graph_module._stub_proto(ir.serde.deserialize_model(model))
    shapes: dict = {}
    graph_module._collect(symbolic_infer(proto, stubs), shapes)
    batch, padded, channels = shapes["y"]
    assert (batch, channels) == ("B", 8)
    assert "H" in str(padded) and "Mod" in str(padded), padded
    assert not isinstance(shapes["z"][2], int), shapes["z"]
