"""Hoisting constant-index Gathers above token-wise ops (optimum_prune.passes.token_gather).

Each hand-written graph ends in a first- or last-token ``Gather``; the hoisted model must give the same
outputs under ONNX Runtime and pass ``onnx.checker`` (full check), and the ops that moved (or the
reason the ``Gather`` stopped) are asserted. Then the ``optimize`` stage on exported tiny classifiers.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphs import MS, _build, make_inputs
from optimum_prune.errors import ConfigError
from optimum_prune.passes import token_gather
from optimum_prune.passes.token_gather import hoist_token_gathers
from optimum_prune.stages import ExportStage, OptimizeStage, read_report
from tiny_folders import tiny_hf_folder


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _hoisted(model: onnx.ModelProto) -> tuple[onnx.ModelProto, token_gather.HoistReport]:
    m = ir.from_proto(model)
    report = hoist_token_gathers(m)
    return ir.to_proto(m), report


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _check_same(model: onnx.ModelProto) -> tuple[onnx.ModelProto, token_gather.HoistReport]:
    feeds = make_inputs(model)
    out, report = _hoisted(model)
    onnx.checker.check_model(out, full_check=True)
    for a, b in zip(_run(model, feeds), _run(out, feeds), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(a).max())))
    return out, report


def _rng_inits(rng, **shapes) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_first_token_moves_above_an_mlp_with_broadcast_constants():
    rng = np.random.default_rng(0)
    inits = _rng_inits(rng, W1=(8, 12), b1=(12,), W2=(12, 6), pos=(1, 5, 6), scale=())
    inits["i0"] = np.array(0, dtype=np.int64)
    model = _build("""
        g (float[B, 5, 8] x) => (float[B, 6] y) {
            h = MatMul(x, W1)
            hb = Add(h, b1)
            a = Relu(hb)
            o = MatMul(a, W2)
            p = Add(o, pos)
            s = Mul(p, scale)
            t = Tanh(s)
            y = Gather<axis = 1>(t, i0)
        }""", inits)
    out, report = _check_same(model)
    assert report.ops == {"Add": 2, "MatMul": 2, "Mul": 1, "Relu": 1, "Tanh": 1}
    # the only Gathers left read the graph input and the position table, before any arithmetic
    gathered = {n.input[0] for n in out.graph.node if n.op_type == "Gather"}
    assert gathered == {"x", "pos"}
    assert _ops(out)[0] == "Gather" or _ops(out)[1] == "Gather"


def test_last_token_through_transpose_layernorm_and_softmax():
    rng = np.random.default_rng(1)
    inits = _rng_inits(rng, gamma=(8,), beta=(8,))
    inits["last"] = np.array(-1, dtype=np.int64)
    model = _build("""
        g (float[B, S, 8] x) => (float[B, 8] y) {
            t = Transpose<perm = [1, 0, 2]>(x)
            n = LayerNormalization<axis = -1>(t, gamma, beta)
            s = Softmax<axis = 2>(n)
            y = Gather<axis = 0>(s, last)
        }""", inits)
    out, report = _check_same(model)
    assert report.ops == {"LayerNormalization": 1, "Softmax": 1, "Transpose": 1}
    first = out.graph.node[0]
    assert first.op_type == "Gather" and first.input[0] == "x"
    assert onnx.helper.get_attribute_value(first.attribute[0]) == 1  # the token axis of x


def test_a_size_one_dimension_is_gathered_at_index_zero():
    model = _build("""
        g (float[B, S, 6] x, float[B, 1, 6] m) => (float[B, 6] y) {
            a = Add(x, m)
            r = Relu(a)
            y = Gather<axis = 1>(r, two)
        }""", {"two": np.array(2, dtype=np.int64)})
    out, report = _check_same(model)
    assert report.ops == {"Add": 1, "Relu": 1}
    takes = {n.input[0]: n.input[1] for n in out.graph.node if n.op_type == "Gather"}
    index = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    assert int(index[takes["x"]]) == 2 and int(index[takes["m"]]) == 0


def test_contrib_skip_layernorm_and_bias_gelu_move():
    rng = np.random.default_rng(2)
    inits = _rng_inits(rng, W=(8, 16), bg=(16,), W2=(16, 8), gamma=(8,), beta=(8,), bias=(8,))
    inits["i0"] = np.array(0, dtype=np.int64)
    model = _build(f"""
        g (float[B, S, 8] x) => (float[B, 8] y) {{
            h = MatMul(x, W)
            a = {MS}.BiasGelu(h, bg)
            f = {MS}.FastGelu(a)
            o = MatMul(f, W2)
            n = {MS}.SkipLayerNormalization(o, x, gamma, beta, bias)
            y = Gather<axis = 1>(n, i0)
        }}""", inits, domains={MS: 1})
    feeds = make_inputs(model)
    out, report = _hoisted(model)
    assert report.ops == {"BiasGelu": 1, "FastGelu": 1, "MatMul": 2, "SkipLayerNormalization": 1}
    for a, b in zip(_run(model, feeds), _run(out, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_identical_gathers_merge_and_keep_the_output_names():
    model = _build("""
        g (float[B, S, 6] x) => (float[B, 6] y, float[B, 6] z) {
            r = Relu(x)
            y = Gather<axis = 1>(r, i0)
            z = Gather<axis = 1>(r, i0b)
        }""", {"i0": np.array(0, dtype=np.int64), "i0b": np.array(0, dtype=np.int64)})
    out, report = _check_same(model)
    assert report.moved == 1
    assert [o.name for o in out.graph.output] == ["y", "z"]


@pytest.mark.parametrize("body, reason", [
    ("r = ReduceMean<keepdims = 1>(x, ax)\n y = Gather<axis = 1>(r, i0)", "no token-wise rule"),
    ("r = Softmax<axis = 1>(x)\n y = Gather<axis = 1>(r, i0)", "softmax axis"),
    ("r = LayerNormalization<axis = 1>(x, g6x6, b6x6)\n y = Gather<axis = 1>(r, i0)", "is normalised"),
    ("r = MatMul(x, W)\n y = Gather<axis = 2>(r, i0)", "output-channel axis"),
])
def test_token_mixing_ops_stop_the_gather(body, reason):
    rng = np.random.default_rng(3)
    inits = {"i0": np.array(0, dtype=np.int64), "ax": np.array([1], dtype=np.int64),
             **_rng_inits(rng, W=(6, 6), g6x6=(5, 6), b6x6=(5, 6))}
    out_type = "float[B, 6]" if "axis = 2" not in body else "float[B, 5]"
    model = _build(f"""
        g (float[B, 5, 6] x) => ({out_type} y) {{
            {body}
        }}""", inits)
    out, report = _check_same(model)
    assert report.moved == 0 and _ops(out) == _ops(model)
    assert any(reason in s for s in report.stopped_at), report.stopped_at


def test_a_value_that_is_also_a_graph_output_is_not_sliced():
    model = _build("""
        g (float[B, S, 6] x) => (float[B, S, 6] r, float[B, 6] y) {
            r = Relu(x)
            y = Gather<axis = 1>(r, i0)
        }""", {"i0": np.array(0, dtype=np.int64)})
    out, report = _check_same(model)
    assert report.moved == 0
    assert any("graph output" in s for s in report.stopped_at)


# --------------------------------------------------------------------------------------------------------
# The optimize stage on exported tiny models
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("token-gather")


def _logits(folder, feeds):
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_optimize_stage_hoists_the_pooler_gather_of_a_classifier(work, name):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    hf = tiny_hf_folder(name, work / "zoo", work)
    exported = ExportStage(task="text-classification").run(hf, work / f"{name}-export")
    plain = OptimizeStage(level="O2", hoist_gathers=False).run(exported, work / f"{name}-fused")
    hoisted = OptimizeStage(level="O2").run(exported, work / f"{name}-hoisted")
    entry = next(e for e in read_report(hoisted) if e["stage"] == "optimize")["hoisted_gathers"]
    assert entry["kept"] and entry["moved"] >= 4, entry
    assert {"SkipLayerNormalization", "LayerNormalization"} & set(entry["ops"]), entry
    tokenizer = AutoTokenizer.from_pretrained(hoisted)
    texts = ["a tiny test", "another, longer test sentence"]
    feeds = dict(tokenizer(texts, padding=True, return_tensors="np"))
    np.testing.assert_allclose(_logits(hoisted, feeds), _logits(plain, feeds), rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(str(hoisted / "model.onnx"), full_check=True)
    model = ORTModelForSequenceClassification.from_pretrained(hoisted)
    assert len(pipeline("text-classification", model=model, tokenizer=tokenizer)(["a test"])) == 1


def test_a_feature_extractor_is_left_alone(work):
    hf = tiny_hf_folder("bert", work / "zoo", work)
    exported = ExportStage(task="feature-extraction").run(hf, work / "bert-features")
    out = OptimizeStage(level="O2").run(exported, work / "bert-features-fused")
    entry = next(e for e in read_report(out) if e["stage"] == "optimize")["hoisted_gathers"]
    assert entry["moved"] == 0 and not entry["kept"]


def test_a_wrong_rewrite_is_never_written(work, monkeypatch):
    """A rule that lied (here: CumSum over the tokens called element-wise) gives a different model: the
    check against the fused model catches it and the file stays as the fusions left it."""
    from optimum_prune.stages.optimize import hoist_gathers_in_file

    inits = {"i2": np.array(2, dtype=np.int64), "ax": np.array(1, dtype=np.int64)}
    model = _build("""
        g (float[B, S, 6] x) => (float[B, 6] y) {
            r = CumSum(x, ax)
            y = Gather<axis = 1>(r, i2)
        }""", inits)
    path = work / "lying-rule" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    before = path.read_bytes()
    monkeypatch.setattr(token_gather, "_ELEMENTWISE", token_gather._ELEMENTWISE | {"CumSum"})
    result = hoist_gathers_in_file(path)
    assert result["moved"] == 1 and not result["kept"] and "changed by" in result["reason"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


def test_hoist_option_is_validated():
    with pytest.raises(ConfigError, match="hoist_gathers"):
        OptimizeStage(level="O2", hoist_gathers="yes")
