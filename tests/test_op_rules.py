"""Every op rule, on its own hand-written graph, under the exactness oracle and the ONNX checker."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphs import (
    EXPECTED_KIND,
    EXPECTED_REASON,
    EXPECTED_UNPRUNABLE,
    OP_GRAPHS,
    make_inputs,
    rotary_table_shared,
)
from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.association.rules import _align_tail
from optimum_prune.verify import RELATIVE_TOLERANCE

PRUNABLE = sorted(k for k in OP_GRAPHS if k not in EXPECTED_UNPRUNABLE)


def _write(tmp_path, key):
    model = OP_GRAPHS[key]()
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    return model, src


@pytest.mark.parametrize("key", PRUNABLE)
def test_rule_prunes_exactly(tmp_path, key):
    model, src = _write(tmp_path, key)
    before = (src / "model.onnx").read_bytes()
    kind = EXPECTED_KIND[key]
    pruner = ORTPruner.from_pretrained(src)
    groups = [g for g in pruner.analyze().groups if g.kind == kind and g.prunable]
    assert groups, f"no prunable {kind} group in {key}: {pruner.analyze()}"
    out = pruner.prune(PruningConfig(sparsity=0.5, scope=(kind,)), tmp_path / "pruned")
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["params_after"] < report["params_before"]
    assert report["units_removed"][kind] > 0
    result = verify(src, out, inputs=make_inputs(model))
    if kind == "hidden":
        assert not result.exact_groups  # normalised over the channel axis: runs, shrinks, never "exact"
        assert np.isfinite(result.max_abs_error)
    else:
        assert result.exact_groups
        assert result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    assert (src / "model.onnx").read_bytes() == before  # the input is never modified


@pytest.mark.parametrize("key", sorted(EXPECTED_UNPRUNABLE))
def test_rule_refuses_unsafe_group(tmp_path, key):
    _, src = _write(tmp_path, key)
    report = ORTPruner.from_pretrained(src).analyze()
    refused = [g for g in report.groups if not g.prunable and g.kind == EXPECTED_KIND[key]]
    assert refused, str(report)
    assert all(g.reason for g in refused)
    if key in EXPECTED_REASON:
        assert any(EXPECTED_REASON[key] in g.reason for g in refused), [g.reason for g in refused]


def test_oracle_detects_a_missed_consumer(tmp_path):
    """The oracle is not vacuous: un-zeroing a consumer slice of a removed channel breaks equality."""
    model, src = _write(tmp_path, "relu")
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("ffn",)), tmp_path / "p")
    pruned = onnx.load(out / "model.onnx")
    # corrupt the pruned consumer: scale its first kept row, as a wrong index map would
    consumer = [i for i in pruned.graph.initializer if len(i.dims) == 2][-1]
    arr = onnx.numpy_helper.to_array(consumer).copy()
    arr[0] += 1.0
    consumer.CopyFrom(onnx.numpy_helper.from_array(arr, consumer.name))
    onnx.save(pruned, out / "model.onnx")
    result = verify(src, out, inputs=make_inputs(model))
    assert result.max_rel_error > RELATIVE_TOLERANCE


def test_groups_counted_by_one_shape_element_both_prune(tmp_path):
    """Two groups' heads concatenated, then one Reshape whose target counts both: the element shrinks by
    the sum of their removals, so neither group is refused for sharing it."""
    model, src = _write(tmp_path, "concat_groups_one_reshape")
    heads = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable for g in heads), [(g.seed, g.reason) for g in heads]
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 2  # one of two heads in each group
    assert verify(src, out, inputs=make_inputs(model)).exact_groups


def test_heads_merged_inside_batch_times_sequence_are_tracked_per_period(tmp_path):
    _, src = _write(tmp_path, "batch_seq_merged_heads")
    heads = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.kind == "heads"]
    merged = {s.merged_with for g in heads for s in g.slices if s.merged_with}
    assert merged == {"B*S"}, merged


@pytest.mark.parametrize(("key", "units", "kept"), [
    ("fused_qkv_mqa_slices", 4, 6),  # 4 query heads; k and v (3 channels each) counted from the end
    ("fused_qkv_mqa_split", 4, 6),  # k summed with every head's channels, v each head's head_dim
    ("slice_negative_bounds", 8, 4),  # the last four channels, counted from the end
    ("gather_channel_index", 10, 2),  # channels 0 and 1, counted by the Gather index
    ("strided_slice_tail", 11, 2),  # the last position, counted from the end, and its block of two
])
def test_channels_a_refusal_names_are_kept_whole(tmp_path, key, units, kept):
    """A root whose walk is refused only for some of its channels keeps those whole and prunes the rest."""
    model, src = _write(tmp_path, key)
    root = next(i for i in model.graph.initializer if len(i.dims) == 2)
    group = next(g for g in ORTPruner.from_pretrained(src).analyze().groups if g.seed == root.name)
    assert group.prunable, group.reason
    assert (group.units, group.kept_whole.split(" of ")[0]) == (units, str(kept)), group.kept_whole
    seed_owner = next(s.owner for s in group.slices if (s.name, s.axis) == (group.seed, group.seed_axis))
    assert int((seed_owner < 0).sum()) == kept
    assert group.kept_whole in str(ORTPruner.from_pretrained(src).analyze())  # the analysis says so
    out = ORTPruner.from_pretrained(src).prune(
        PruningConfig(sparsity=0.5, scope=(EXPECTED_KIND[key],)), tmp_path / "p")
    pruned = {i.name: tuple(i.dims) for i in onnx.load(out / "model.onnx").graph.initializer}
    width = root.dims[1]
    per_unit = (width - kept) // units
    assert pruned[root.name][1] == width - per_unit * (units // 2)  # half the units, none of the kept ones
    assert verify(src, out, inputs=make_inputs(model)).exact_groups


def _groups_of(tmp_path, model, name):
    src = tmp_path / name
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    return src, {g.seed: g for g in ORTPruner.from_pretrained(src).analyze().groups}


def test_a_refused_walk_does_not_hide_the_seeds_it_reached(tmp_path):
    """The rotary table's walk reaches the query projection with one unit per head_dim position and is
    refused; the projection, walked from its own seed, still has its three heads (before, it was skipped
    as already walked and its heads were never pruned)."""
    model = rotary_table_shared()
    src, groups = _groups_of(tmp_path, model, "dense")
    assert not groups["T"].prunable and "graph output 't'" in groups["T"].reason
    assert groups["Wq"].prunable and (groups["Wq"].units, groups["Wq"].unit_size) == (3, 4)
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.34, scope=("heads",)), tmp_path / "p")
    pruned = {i.name: tuple(i.dims) for i in onnx.load(out / "model.onnx").graph.initializer}
    assert pruned["Wq"] == (8, 8) and pruned["T"] == (16, 2)  # one head of three; the table is whole
    assert verify(src, out, inputs=make_inputs(model)).exact_groups


def test_a_table_walked_after_the_projection_is_refused_for_its_shape_element(tmp_path):
    """Walked first, the projection's heads group is prunable; the table's group then reaches the same
    weights with other units and would patch the merge Reshape's element the heads group patches: it is
    refused. Walked first, the table's group prunes (one head_dim position of every head, exactly) and
    the projection is part of it."""
    src, groups = _groups_of(tmp_path, rotary_table_shared(table_output=False, table_first=False), "late")
    assert groups["Wq"].prunable
    assert not groups["T"].prunable and groups["T"].reason.startswith("shares ")
    model = rotary_table_shared(table_output=False)
    src, groups = _groups_of(tmp_path, model, "early")
    assert groups["T"].prunable and "Wq" not in groups
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    pruned = {i.name: tuple(i.dims) for i in onnx.load(out / "model.onnx").graph.initializer}
    assert pruned["T"] == (16, 1) and pruned["Wq"] == (8, 9)
    result = verify(src, out, inputs=make_inputs(model))
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE


def test_heads_are_carried_past_an_axis_that_is_split_off(tmp_path):
    """[B, S, 3, heads, head_dim] unbound into q, k, v: the walk through the size-3 axis is refused, the
    walk again with the heads axis carrying the units succeeds: three heads, each with its q, k and v."""
    _, src = _write(tmp_path, "fused_qkv_unbind")
    (group,) = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.seed == "Wqkv"]
    assert group.prunable and group.kind == "heads", group.reason
    assert (group.units, group.unit_size) == (3, 12)


def test_unknown_dimensions_never_pair_in_a_reshape():
    """The trailing-axis alignment pairs equal dimensions only: two unknown ones are not known equal."""
    assert _align_tail(["B*P", 12], ["B", 4, 12], 0, 0) == [([1], [2])]
    assert _align_tail(["B", None], ["B", 4, None], 0, 0) == []


def test_trailing_integer_axes_align_by_their_products():
    """From the right, runs of integer axes with equal products form blocks ([n, 5, 4, 8] -> [S, 32]:
    [4, 8] with [32]); a symbol or an unknown dimension ends the alignment, and so do runs whose products
    never meet."""
    assert _align_tail(["B", "n", 5, 4, 8], ["B", "S", 32], 0, 0) == [([3, 4], [2])]
    assert _align_tail(["B", 2, 3, 4], ["C", 6, 4], 0, 0) == [([3], [2]), ([1, 2], [1])]
    assert _align_tail(["B", 3, 4], ["B", "S", 8], 0, 0) == []
    assert _align_tail(["B", None, 4], ["B", None, 8], 0, 0) == []
    assert _align_tail(["B", None, 4], ["B", 2, 2], 0, 0) == [([2], [1, 2])]


def test_layers_reading_one_computed_target_prune_their_heads_apart(tmp_path):
    """Two layers' head splits read one computed target shape: before the analysis each Reshape gets its
    own copy of the arithmetic, so the second layer is not refused for sharing the head count and the
    first layer's patch does not resize the second layer's Reshape (which made the pruned model fail
    validation). Both lose one head of three, exactly."""
    model, src = _write(tmp_path, "shared_computed_reshape_target")
    groups = {g.seed: g for g in ORTPruner.from_pretrained(src).analyze().groups}
    assert groups["Wa"].prunable and groups["Wc"].prunable, groups["Wc"].reason
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.34, scope=("heads",)), tmp_path / "p")
    pruned = {i.name: tuple(i.dims) for i in onnx.load(out / "model.onnx").graph.initializer}
    assert pruned["Wa"] == (8, 8) and pruned["Wc"] == (8, 8)
    assert verify(src, out, inputs=make_inputs(model)).exact_groups
