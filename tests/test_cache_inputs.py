"""Narrowed cache inputs (optimum_prune.passes.cache_inputs): a pruned graph that takes the empty first
cache a runtime sizes for the dense model, and its own caches unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphs import _build
from optimum_prune.errors import PruningError
from optimum_prune.passes.cache_inputs import NARROWED_DIMS_KEY, narrow_cache_inputs, narrowed_dims
from optimum_prune.runtime import complete_feeds


def _cache_graph(opset: int = 18) -> onnx.ModelProto:
    """A two-head cache appended to, and read again inside an If branch (an outer-scope use)."""
    return _build("""
        g (int64[B, S] input_ids, float[B, 2, P, 4] past_key_values_0_key, float[B, 2, S, 4] k, bool cond)
            => (float[B, 2, T, 4] present_0_key, float[B, 2, P, 4] seen) {
            present_0_key = Concat<axis=2>(past_key_values_0_key, k)
            seen = If(cond) <
                then_branch = g1 () => (float[B, 2, P, 4] a) { a = Identity(past_key_values_0_key) },
                else_branch = g2 () => (float[B, 2, P, 4] b) { b = Neg(past_key_values_0_key) }
            >
        }""", {}, opset=opset)


def _narrowed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    m = ir.from_proto(model)
    dims = narrow_cache_inputs(m, {"past_key_values_0_key": {1: 2}})
    return ir.to_proto(m), dims


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_narrowed_cache_input_takes_a_dense_sized_empty_cache_and_its_own_caches_unchanged():
    model, dims = _narrowed(_cache_graph())
    onnx.checker.check_model(model, full_check=True)
    assert dims == {"narrowed_0": 2}
    declared = [d.dim_param or d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert declared == ["B", "narrowed_0", "P", 4]
    assert model.graph.node[0].op_type == "Reshape"  # no copy of the cache at each step
    session = _session(model)
    assert narrowed_dims(session) == {"narrowed_0": 2}
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 2, 5, 4)).astype(np.float32)
    ids = np.zeros((3, 5), np.int64)
    # The first step of a runtime that sizes the cache for 4 heads: empty, narrowed to the graph's 2.
    dense_sized = np.zeros((3, 4, 0, 4), np.float32)
    present, seen = session.run(None, {"input_ids": ids, "past_key_values_0_key": dense_sized, "k": k,
                                       "cond": np.array(True)})
    np.testing.assert_array_equal(present, k)
    assert seen.shape == (3, 2, 0, 4)
    # Later steps feed the graph's own cache back: the slice keeps it whole, subgraph uses included.
    past = rng.standard_normal((3, 2, 6, 4)).astype(np.float32)
    for cond, sign in ((True, 1.0), (False, -1.0)):
        present, seen = session.run(None, {"input_ids": ids, "past_key_values_0_key": past, "k": k,
                                           "cond": np.array(cond)})
        np.testing.assert_array_equal(present, np.concatenate([past, k], axis=2))
        np.testing.assert_array_equal(seen, sign * past)


def test_an_input_without_a_length_axis_is_sliced_to_the_kept_width():
    model = _build("""
        g (float[B, 4, 3] past) => (float[B, 2, 3] y) { y = Identity(past) }""", {})
    m = ir.from_proto(model)
    narrow_cache_inputs(m, {"past": {1: 2}})
    model = ir.to_proto(m)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.node[0].op_type == "Slice"
    x = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    np.testing.assert_array_equal(_session(model).run(None, {"past": x})[0], x[:, :2])
    np.testing.assert_array_equal(_session(model).run(None, {"past": x[:, :2]})[0], x[:, :2])


def test_generated_first_caches_have_the_narrowed_width():
    session = _session(_narrowed(_cache_graph())[0])
    feeds = complete_feeds(session, {"input_ids": np.zeros((2, 3), np.int64),
                                     "k": np.zeros((2, 2, 3, 4), np.float32), "cond": np.array(True)})
    assert feeds["past_key_values_0_key"].shape == (2, 2, 0, 4)


def test_narrowing_twice_records_both_dims():
    m = ir.from_proto(_cache_graph())
    narrow_cache_inputs(m, {"past_key_values_0_key": {1: 2}})
    narrow_cache_inputs(m, {"k": {1: 2}})
    assert m.metadata_props[NARROWED_DIMS_KEY] == '{"narrowed_0": 2, "narrowed_1": 2}'


def test_narrowing_refuses_a_name_that_is_not_a_graph_input_and_an_old_opset():
    m = ir.from_proto(_cache_graph())
    with pytest.raises(PruningError, match="'present_0_key' is not a graph input"):
        narrow_cache_inputs(m, {"present_0_key": {1: 2}})
    old = ir.from_proto(_build("""
        g (float[B, 2, P, 4] past) => (float[B, 2, P, 4] y) { y = Identity(past) }""", {}, opset=9))
    with pytest.raises(PruningError, match="opset 9"):
        narrow_cache_inputs(old, {"past": {1: 2}})
