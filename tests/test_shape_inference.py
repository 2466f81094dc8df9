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
