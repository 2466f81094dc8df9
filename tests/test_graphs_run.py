"""Sanity checks for the hand-written op graphs in tests/graphs.py.

Every graph must pass the full ONNX checker and run under onnxruntime (CPU EP) with finite
outputs of the declared shape. The contrib-op graphs are additionally compared against numpy
references, which pins down the input layouts the pruner relies on (packed QKV order, bias order,
KV-head sharing in GQA, rotate-half RoPE, the Skip*/Embed* LayerNorm formulas).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from graphs import (
    EXPECTED_KIND,
    EXPECTED_UNPRUNABLE,
    OP_GRAPHS,
    make_inputs,
    output_shapes,
)

KINDS = {"ffn", "heads", "conv", "hidden"}
ROOT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Attention", "EmbedLayerNormalization",
            "Einsum"}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, seed: int = 0) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    feeds = make_inputs(model, seed)
    return feeds, _session(model).run(None, feeds)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_registry_consistent():
    assert set(EXPECTED_KIND) == set(OP_GRAPHS)
    assert set(EXPECTED_KIND.values()) <= KINDS
    assert set(OP_GRAPHS) >= EXPECTED_UNPRUNABLE
    assert len(OP_GRAPHS) >= 60


@pytest.mark.parametrize("key", sorted(OP_GRAPHS))
def test_graph_checks_and_runs(key):
    model = OP_GRAPHS[key]()
    assert isinstance(model, onnx.ModelProto)
    onnx.checker.check_model(model, full_check=True)
    # at least one root candidate carrying an initializer, and at least one other weighted consumer
    inits = {i.name for i in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in ROOT_OPS and any(i in inits for i in n.input)]
    assert len(weighted) >= 2, key
    _, outs = _run(model)
    expected = output_shapes(model)
    assert len(outs) == len(expected)
    for (name, shape), out in zip(expected.items(), outs, strict=True):
        assert out.shape == shape, (key, name, out.shape, shape)
        assert out.dtype == np.float32, (key, name, out.dtype)
        assert np.isfinite(out).all(), (key, name)
        assert np.abs(out).max() > 0, (key, name)


@pytest.mark.parametrize("key", sorted(OP_GRAPHS))
def test_graph_deterministic(key):
    assert OP_GRAPHS[key]().SerializeToString() == OP_GRAPHS[key]().SerializeToString()
    model = OP_GRAPHS[key]()
    a, b = make_inputs(model, 3), make_inputs(model, 3)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_make_inputs_index_ranges():
    model = OP_GRAPHS["gather_embedding"]()
    ids = make_inputs(model, 1)["ids"]
    assert ids.dtype == np.int64 and ids.shape == (2, 5) and ids.min() >= 0 and ids.max() < 20
    feeds = make_inputs(OP_GRAPHS["ms_embed_layernorm"](), 1)
    assert feeds["input_ids"].dtype == np.int32 and feeds["input_ids"].max() < 20
    assert feeds["segment_ids"].max() < 3
    pos = make_inputs(OP_GRAPHS["ms_rotary_embedding"](), 1)["position_ids"]
    assert pos.dtype == np.int64 and pos.max() < 16


# ------------------------------------------------------------------------------------------------
# numpy references for the contrib ops
# ------------------------------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _heads(t: np.ndarray, n: int) -> np.ndarray:
    b, s, c = t.shape
    return t.reshape(b, s, n, c // n).transpose(0, 2, 1, 3)


def _merge(t: np.ndarray) -> np.ndarray:
    b, n, s, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, s, n * d)


def _sdpa(q, k, v, n_q, n_kv, causal=False):
    qh, kh, vh = _heads(q, n_q), _heads(k, n_kv), _heads(v, n_kv)
    rep = n_q // n_kv
    kh, vh = np.repeat(kh, rep, axis=1), np.repeat(vh, rep, axis=1)  # query head h -> kv head h // rep
    scores = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(qh.shape[-1])
    if causal:
        s = scores.shape[-1]
        scores = np.where(np.tril(np.ones((s, s), dtype=bool)), scores, -np.inf)
    return _merge(_softmax(scores) @ vh)


def _layernorm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _rmsnorm(x, g, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * g


def _gelu_erf(x):
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / math.sqrt(2.0)))


def _rope(t, pos, cos, sin, n_heads):
    """Non-interleaved (rotate-half) RoPE per head on t[B,S,H*D]."""
    b, s, c = t.shape
    d = c // n_heads
    th = t.reshape(b, s, n_heads, d)
    x1, x2 = th[..., : d // 2], th[..., d // 2 :]
    cc, ss = cos[pos][:, :, None, :], sin[pos][:, :, None, :]
    out = np.concatenate([x1 * cc - x2 * ss, x2 * cc + x1 * ss], axis=-1)
    return out.reshape(b, s, c)


def _assert_matches_reference(key: str, reference) -> None:
    model = OP_GRAPHS[key]()
    feeds, outs = _run(model, seed=7)
    ref = reference(feeds, _inits(model))
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4)


def test_ref_ms_attention():
    def ref(f, w):
        qkv = f["x"] @ w["Wqkv"] + w["bqkv"]
        q, k, v = qkv[..., :12], qkv[..., 12:24], qkv[..., 24:]
        return _sdpa(q, k, v, 3, 3) @ w["Wo"]

    _assert_matches_reference("ms_attention", ref)


def test_ref_ms_multihead_attention():
    def ref(f, w):
        x, bias = f["x"], w["bias"]
        q, k, v = x @ w["Wq"] + bias[:12], x @ w["Wk"] + bias[12:24], x @ w["Wv"] + bias[24:]
        return _sdpa(q, k, v, 3, 3) @ w["Wo"]

    _assert_matches_reference("ms_multihead_attention", ref)


def test_ref_ms_group_query_attention():
    def ref(f, w):
        x = f["x"]
        return _sdpa(x @ w["Wq"], x @ w["Wk"], x @ w["Wv"], 4, 2, causal=True) @ w["Wo"]

    _assert_matches_reference("ms_group_query_attention", ref)


def test_ref_ms_rotary_embedding():
    def ref(f, w):
        x, pos = f["x"], f["position_ids"]
        q = _rope(x @ w["Wq"] + w["bq"], pos, w["cos_cache"], w["sin_cache"], 3)
        k = _rope(x @ w["Wk"] + w["bk"], pos, w["cos_cache"], w["sin_cache"], 3)
        return _sdpa(q, k, x @ w["Wv"] + w["bv"], 3, 3) @ w["Wo"]

    _assert_matches_reference("ms_rotary_embedding", ref)


def _residual(f, w):
    h = f["x"] @ w["Win"]
    return h, np.maximum(h @ w["W1"], 0) @ w["W2"]


def test_ref_ms_skip_layernorm():
    def ref(f, w):
        h, ff = _residual(f, w)
        return _layernorm(ff + h + w["bias"], w["g"], w["b"], 1e-5) @ w["Wout"]

    _assert_matches_reference("ms_skip_layernorm", ref)


def test_ref_ms_skip_simplified_layernorm():
    def ref(f, w):
        h, ff = _residual(f, w)
        return _rmsnorm(ff + h + w["bias"], w["g"], 1e-6) @ w["Wout"]

    _assert_matches_reference("ms_skip_simplified_layernorm", ref)


def test_ref_ms_embed_layernorm():
    def ref(f, w):
        ids, seg = f["input_ids"], f["segment_ids"]
        s = ids.shape[1]
        e = w["word"][ids] + w["pos"][np.arange(s)][None] + w["seg"][seg]
        return _layernorm(e, w["g"], w["b"], 1e-5) @ w["W"]

    _assert_matches_reference("ms_embed_layernorm", ref)


def test_ref_ms_gelus():
    def bias_gelu(f, w):
        return _gelu_erf(f["x"] @ w["W1"] + w["b1"]) @ w["W2"]

    def fast_gelu(f, w):
        t = f["x"] @ w["W1"] + w["b1"]
        return (0.5 * t * (1 + np.tanh(0.7978845608 * (t + 0.044715 * t**3)))) @ w["W2"]

    def gelu(f, w):
        return _gelu_erf(f["x"] @ w["W1"] + w["b1"]) @ w["W2"]

    _assert_matches_reference("ms_bias_gelu", bias_gelu)
    _assert_matches_reference("ms_fast_gelu", fast_gelu)
    _assert_matches_reference("ms_gelu", gelu)


def test_ref_decomposed_attention_matches_numpy():
    """The hand-built attention/GQA blocks compute what their diagrams say."""

    def mha(f, w):
        x = f["x"]
        q, k, v = x @ w["Wq"] + w["bq"], x @ w["Wk"] + w["bk"], x @ w["Wv"] + w["bv"]
        return _sdpa(q, k, v, 3, 3) @ w["Wo"] + w["bo"]

    def gqa(f, w):
        x = f["x"]
        return _sdpa(x @ w["Wq"], x @ w["Wk"], x @ w["Wv"], 4, 2) @ w["Wo"]

    _assert_matches_reference("attention_block", mha)
    _assert_matches_reference("gqa_block", gqa)
