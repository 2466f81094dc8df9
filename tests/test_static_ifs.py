"""Folding the If nodes the shapes decide (passes/static_ifs.py) and the symbolic-inference rules that
let the shapes decide them (symbolic.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphs import if_on_equal_lengths, if_on_undecided_lengths, make_inputs
from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.graph import _collect, _stub_proto, infer_shapes
from optimum_prune.passes.static_ifs import apply_if_decisions, fold_static_ifs
from optimum_prune.symbolic import symbolic_infer


def _run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def test_an_if_on_equal_lengths_folds_to_its_else_branch_and_computes_the_same():
    proto = if_on_equal_lengths()
    model = ir.serde.deserialize_model(proto)
    decisions = fold_static_ifs(model, infer_shapes(model))
    assert [taken for _, taken in decisions] == [False]
    assert "If" not in _ops(model)
    assert not {"Equal", "Not", "Cast"} & set(_ops(model))  # the dead condition went with it
    folded = ir.serde.serialize_model(model)
    onnx.checker.check_model(folded, full_check=True)
    for seed in range(3):
        feeds = make_inputs(proto, seed)
        np.testing.assert_array_equal(_run(folded, feeds)[0], _run(proto, feeds)[0])


def test_an_if_on_two_input_lengths_is_left_alone():
    """len(x) == len(xk) depends on the inputs: two different symbols are not known to differ."""
    model = ir.serde.deserialize_model(if_on_undecided_lengths())
    assert fold_static_ifs(model, infer_shapes(model)) == []
    assert "If" in _ops(model)


def test_recorded_decisions_redo_the_same_fold_without_shapes():
    """The pruner's cached path reloads the model and replays the decisions."""
    first = ir.serde.deserialize_model(if_on_equal_lengths())
    decisions = fold_static_ifs(first, infer_shapes(first))
    again = ir.serde.deserialize_model(if_on_equal_lengths())
    assert apply_if_decisions(again, decisions) == 1
    assert _ops(again) == _ops(first)


def _if_model(cond_body: str, inputs: str = "float[B, S, 4] x") -> onnx.ModelProto:
    return onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 18]>
        g ({inputs}) => (float[B, S, 4] y) <int64[1] one = {{1}}, int64[1] two = {{2}},
                                            int64 minus = {{-1}}, int64 five = {{5}}> {{
            shape = Shape(x)
            len1 = Slice(shape, one, two)
            len = Squeeze(len1)
            {cond_body}
            y = If(cond) <
                then_branch = t () => (float[B, S, 4] a) {{ a = Relu(x) }},
                else_branch = e () => (float[B, S, 4] b) {{ b = Neg(x) }}
            >
        }}
    """)


@pytest.mark.parametrize("cond_body, taken", [
    ("cond = Equal(len, minus)", False),  # a dimension is never negative
    ("eq = Equal(len, len)\n cond = And(eq, eq)", True),
    ("eq = Equal(len, minus)\n t = Equal(len, len)\n cond = Or(eq, t)", True),
    ("cond = Equal(len, five)", None),  # S may be 5
])
def test_conditions_are_decided_soundly(cond_body, taken):
    model = ir.serde.deserialize_model(_if_model(cond_body))
    decisions = fold_static_ifs(model, infer_shapes(model))
    assert [t for _, t in decisions] == ([] if taken is None else [taken])


def test_a_condition_computed_from_data_is_left_alone():
    model = ir.serde.deserialize_model(_if_model("r = ReduceMax<keepdims = 0>(x)\n cond = Cast<to = 9>(r)"))
    assert fold_static_ifs(model, infer_shapes(model)) == []


def _symbolic_shapes(proto: onnx.ModelProto) -> dict:
    stubbed, stubs = _stub_proto(ir.serde.deserialize_model(proto))
    shapes: dict = {}
    _collect(symbolic_infer(stubbed, stubs), shapes)  # raises if the inference fails
    return shapes


def test_not_carries_a_computed_flag_into_shape_arithmetic():
    """Not had no symbolic rule, so a flag it computes (DeBERTa's "lengths differ") was unknown to
    whatever read it: a Where choosing a dimension, an If choosing a branch."""
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[B, S, 4] x) => (float[S, N] y) <int64 one_i = {1}, int64[1] ax0 = {0}, int64 five = {5},
                                                 int64[1] rest = {-1}> {
            shape = Shape(x)
            len = Gather(shape, one_i)
            same = Equal(len, len)
            differ = Not(same)
            rows = Where(differ, five, len)
            rows1 = Unsqueeze(rows, ax0)
            target = Concat<axis = 0>(rows1, rest)
            t = Transpose<perm = [1, 0, 2]>(x)
            y = Reshape(t, target)
        }
    """)
    assert _symbolic_shapes(proto)["y"][0] == "S"


def test_a_slice_with_an_undecidable_bound_keeps_the_axes_it_does_not_cut():
    """ONNX Runtime's Slice rule asserts on the bound floor(floor(S/5)/2 - 1/2) (SEW-D), which ended the whole
    inference; now only the cut axis gets a fresh symbol."""
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[B, 4, S] x) => (float[B, 4, L] y) <int64 two_i = {2}, int64 one_i = {1}, int64[1] zero = {0},
                                                     int64[1] axis = {2}, int64[1] ax0 = {0},
                                                     int64 five = {5}> {
            shape = Shape(x)
            s = Gather(shape, two_i)
            n = Div(s, five)
            m = Sub(n, one_i)
            half = Div(m, two_i)
            end = Unsqueeze(half, ax0)
            y = Slice(x, zero, end, axis)
        }
    """)
    shapes = _symbolic_shapes(proto)
    assert shapes["y"][:2] == ("B", 4)
    assert isinstance(shapes["y"][2], str)


def test_an_expand_to_a_computed_shape_keeps_the_input_dimensions():
    """Cohere's repeat_interleave expands to a shape computed with ReduceMax, whose value symbolic
    inference cannot know; its driver then asserted and the whole graph lost its symbolic shapes."""
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[B, S, 4] x) => (float[B, R, 4] y) <int64[1] zero = {0}, int64[1] one = {1},
                                                    int64[1] two = {2}, int64[1] four = {4},
                                                    int64[1] ax1 = {1}> {
            shape = Shape(x)
            batch = Slice(shape, zero, one)
            n = Slice(shape, one, two)
            c = ConstantOfShape<value = int64[1] {2}>(n)
            r = ReduceMax<keepdims = 1>(c)
            target = Concat<axis = 0>(batch, r, four)
            x1 = ReduceMean<keepdims = 1>(x, ax1)
            y = Expand(x1, target)
        }
    """)
    shapes = _symbolic_shapes(proto)
    assert shapes["y"][0] == "B" and shapes["y"][2] == 4


def test_the_pruned_folder_reports_the_folded_if_and_stays_exact(tmp_path):
    """report.json names each If replaced by a branch (the output model keeps no If), and the heads
    behind it prune exactly; a model with no decidable If reports none."""
    cases = (("equal", if_on_equal_lengths, True), ("undecided", if_on_undecided_lengths, False))
    for name, graph, folded in cases:
        src = tmp_path / name
        src.mkdir()
        proto = graph()
        onnx.save(proto, src / "model.onnx")
        before = (src / "model.onnx").read_bytes()
        out = tmp_path / f"{name}-pruned"
        config = PruningConfig(sparsity=0.5, scope=("heads", "ffn"))
        ORTPruner.from_pretrained(src).prune(config, save_dir=out)
        assert (src / "model.onnx").read_bytes() == before
        report = json.loads((out / "report.json").read_text())
        (stage,) = report["stages"]
        pruned = onnx.load(out / "model.onnx")
        if folded:
            assert [entry["branch"] for entry in stage["folded_ifs"]] == ["else"]
            assert stage["folded_ifs"][0]["node"].startswith("If")
            assert "If" not in {n.op_type for n in pruned.graph.node}
            assert stage["units_removed"]["heads"] > 0
            assert verify(src, out, inputs=make_inputs(proto)).exact_groups
        else:
            assert "folded_ifs" not in stage
            assert "If" in {n.op_type for n in pruned.graph.node}
