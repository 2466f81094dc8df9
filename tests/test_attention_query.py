"""One-query attention (optimum_prune.passes.attention_query): a fused ``com.microsoft::Attention`` read at
one position through a constant-index ``Gather`` is written out with that position's query only. The
rewritten graph must give the same outputs under ONNX Runtime (masked keys included) and pass the
checker; the forms it does not handle stay fused."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphs import MS, _build
from optimum_prune.passes.attention_query import gather_attention_queries
from optimum_prune.passes.token_gather import hoist_token_gathers

B, S, H = 3, 6, 8


def _model(mask: str, index: int = 0, heads: int = 2, v_size: int = H, attrs: str = "") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"W": (rng.standard_normal((H, 2 * H + v_size)) / np.sqrt(H)).astype(np.float32),
             "bias": (0.1 * rng.standard_normal(2 * H + v_size)).astype(np.float32),
             "idx": np.array(index, dtype=np.int64)}
    sizes = f"qkv_hidden_sizes = [{H}, {H}, {v_size}], " if v_size != H else ""
    mask_input = {"none": "", "raw": ", int32[B, S] m", "lengths": ", int32[B] m"}[mask]
    mask_arg = "" if mask == "none" else ", m"
    return _build(f"""
        g (float[B, S, {H}] x{mask_input}) => (float[B, {v_size}] y) {{
            a = {MS}.Attention<{sizes}num_heads = {heads}{attrs}>(x, W, bias{mask_arg})
            y = Gather<axis = 1>(a, idx)
        }}""", inits, opset=17, domains={MS: 1})


def _feeds(mask: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((B, S, H)).astype(np.float32)}
    lengths = np.array([S, 4, 2], dtype=np.int32)
    if mask == "raw":
        feeds["m"] = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int32)
        feeds["m"][0, 3] = 0  # a hole, not only right padding
    elif mask == "lengths":
        feeds["m"] = lengths
    return feeds


def _run(model: onnx.ModelProto, feeds) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _rewritten(model: onnx.ModelProto):
    m = ir.from_proto(model)
    done, kept = gather_attention_queries(m)
    return ir.to_proto(m), done, kept


@pytest.mark.parametrize("mask", ["none", "raw", "lengths"])
@pytest.mark.parametrize("index", [0, -1, 2])
def test_one_query_attention_gives_the_same_outputs(mask, index):
    model = _model(mask, index)
    out, done, kept = _rewritten(model)
    assert done == 1 and kept == []
    assert "Attention" not in {n.op_type for n in out.graph.node}
    onnx.checker.check_model(out, full_check=True)
    feeds = _feeds(mask)
    expected = _run(model, feeds)
    atol = 1e-5 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(_run(out, feeds), expected, rtol=1e-4, atol=atol)


def test_a_smaller_value_size_and_an_explicit_scale():
    model = _model("raw", v_size=4, attrs=", scale = 0.2")
    out, done, _ = _rewritten(model)
    assert done == 1
    feeds = _feeds("raw")
    np.testing.assert_allclose(_run(out, feeds), _run(model, feeds), rtol=1e-4, atol=1e-5)


def test_a_start_and_end_mask_stays_fused():
    """A 1-D mask of 2 x batch values (key end and start positions) is not the one-length-per-row form."""
    model = _model("lengths")
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "B2"
    out, done, kept = _rewritten(model)
    assert done == 0 and "one key length per row" in kept[0]


def test_a_causal_attention_stays_fused():
    out, done, kept = _rewritten(_model("none", attrs=", unidirectional = 1"))
    assert done == 0 and "unidirectional" in kept[0]
    assert "Attention" in {n.op_type for n in out.graph.node}


def test_an_attention_read_at_every_position_is_not_touched():
    rng = np.random.default_rng(2)
    model = _build(f"""
        g (float[B, S, {H}] x) => (float[B, S, {H}] y) {{
            y = {MS}.Attention<num_heads = 2>(x, W, bias)
        }}""", {"W": rng.standard_normal((H, 3 * H)).astype(np.float32),
                "bias": rng.standard_normal(3 * H).astype(np.float32)}, opset=17, domains={MS: 1})
    _, done, kept = _rewritten(model)
    assert done == 0 and kept == []


def test_the_hoist_rewrites_the_attention_its_gather_reaches_when_asked(tmp_path):
    """Gather after a token-wise op after the attention: the hoist moves it up, then the attention
    computes one query; the report counts it."""
    rng = np.random.default_rng(3)
    inits = {"W": (rng.standard_normal((H, 3 * H)) / np.sqrt(H)).astype(np.float32),
             "bias": (0.1 * rng.standard_normal(3 * H)).astype(np.float32),
             "Wo": (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32),
             "idx": np.array(0, dtype=np.int64)}
    model = _build(f"""
        g (float[B, S, {H}] x, int32[B, S] m) => (float[B, {H}] y) {{
            a = {MS}.Attention<num_heads = 2>(x, W, bias, m)
            o = MatMul(a, Wo)
            r = Relu(o)
            y = Gather<axis = 1>(r, idx)
        }}""", inits, opset=17, domains={MS: 1})
    m = ir.from_proto(model)
    report = hoist_token_gathers(m, attention_queries=True)
    assert report.ops == {"Attention (one query)": 1, "MatMul": 1, "Relu": 1}, report
    out = ir.to_proto(m)
    onnx.checker.check_model(out, full_check=True)
    feeds = _feeds("raw")
    np.testing.assert_allclose(_run(out, feeds), _run(model, feeds), rtol=1e-4, atol=1e-5)


def test_the_optimize_option_is_validated():
    from optimum_prune.errors import ConfigError
    from optimum_prune.stages import OptimizeStage

    with pytest.raises(ConfigError, match="one_query_attention"):
        OptimizeStage(level="O2", hoist_gathers=False, one_query_attention=True)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_optimize_stage_one_query_attention_on_exported_classifiers(tmp_path, name):
    """ONNX Runtime's fusion gives the exported classifier's Attention a 1-D key-length mask; padded
    batches must give the same logits as the fused model."""
    from transformers import AutoTokenizer

    from optimum_prune.stages import ExportStage, OptimizeStage, read_report
    from tiny_folders import tiny_hf_folder

    hf = tiny_hf_folder(name, tmp_path / "zoo", tmp_path)
    exported = ExportStage(task="text-classification").run(hf, tmp_path / "export")
    plain = OptimizeStage(level="O2", hoist_gathers=False).run(exported, tmp_path / "fused")
    one = OptimizeStage(level="O2", one_query_attention=True).run(exported, tmp_path / "one-query")
    entry = next(e for e in read_report(one) if e["stage"] == "optimize")["hoisted_gathers"]
    assert entry["kept"] and entry["ops"].get("Attention (one query)") == 1, entry
    tokenizer = AutoTokenizer.from_pretrained(one)
    feeds = dict(tokenizer(["a tiny test", "another, much longer test sentence with padding"],
                           padding=True, return_tensors="np"))

    def logits(folder):
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]

    np.testing.assert_allclose(logits(one), logits(plain), rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(str(one / "model.onnx"), full_check=True)
