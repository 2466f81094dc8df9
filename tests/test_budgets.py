"""Budgets and allocation: uniform or global ranking, targets in units, params or FLOPs, rounding to
multiples, at least one unit kept per group; every budget met within one rounding step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optimum_prune import ConfigError, ORTPruner, PruningConfig, verify
from optimum_prune.allocation import (
    global_allocation,
    normalise_per_kind,
    round_removal,
    standardise_per_group,
    unit_costs,
)
from optimum_prune.association.tree import PruningGroup
from optimum_prune.configuration import DEFAULT_IO_PATTERNS
from test_criteria import tiny_bert  # noqa: F401  (session fixture)


def _plan_removed(plan):
    return {g.id: g.units - len(g.kept) for g in plan.groups}


def test_round_removal_keeps_multiples_and_minimums():
    assert round_removal(48, 14, 8) == 16  # 34 kept -> 32
    assert round_removal(48, 11, 8) == 8  # 37 kept -> 40 (nearest)
    assert round_removal(48, 47, 8) == 40  # at least one multiple kept
    assert round_removal(12, 11, 1, min_units=2) == 10
    assert round_removal(10, 9, 4) == 6  # 1 kept -> 4 (min rounded up to a multiple)
    assert round_removal(3, 2, 8) == 0  # the whole group is below one multiple: keep it all


def test_global_ranking_moves_the_budget_to_the_least_important_layer():
    groups = [PruningGroup(id=i, seed=f"g{i}", seed_axis=1, kind="ffn", units=10) for i in range(3)]
    scores = {0: np.full(10, 1.0), 1: np.linspace(0.01, 0.1, 10), 2: np.full(10, 2.0)}
    costs = {g.id: np.ones(10) for g in groups}
    n = global_allocation(groups, scores, costs, {"ffn": 9.0}, min_units=1, multiples={})
    assert n == {0: 0, 1: 9, 2: 0}
    n = global_allocation(groups, scores, costs, {"ffn": 12.0}, min_units=1, multiples={})
    assert n[1] == 9 and n[0] == 3 and n[2] == 0  # one unit always kept, then the next layer
    norm = normalise_per_kind(groups, scores)
    assert np.isclose(np.mean(np.concatenate(list(norm.values()))), 1.0)


def test_standardized_ranking_cuts_the_layer_whose_scores_are_tight():
    """FLAP's standardisation: group 0 has one strong unit among weak ones, group 1 five similar units.
    By raw score the weak units of group 0 go first; standardised within their group, they sit only
    half a deviation below their mean, while group 1's lowest sits 1.4 deviations below its own."""
    groups = [PruningGroup(id=i, seed=f"g{i}", seed_axis=1, kind="ffn", units=5) for i in range(2)]
    scores = {0: np.array([1.0, 1.0, 1.0, 1.0, 10.0]), 1: np.array([2.5, 2.6, 2.7, 2.8, 2.9])}
    costs = {g.id: np.ones(5) for g in groups}
    assert global_allocation(groups, scores, costs, {"ffn": 2.0}, min_units=1, multiples={}) == {0: 2, 1: 0}
    n = global_allocation(groups, scores, costs, {"ffn": 2.0}, min_units=1, multiples={},
                          normalise=standardise_per_group)
    assert n == {0: 0, 1: 2}
    z = standardise_per_group(groups, scores)
    assert min(float(v.min()) for v in z.values()) == pytest.approx(1.0)
    assert np.allclose(z[1] - z[1].mean(), (scores[1] - 2.7) / scores[1].std())
    flat = standardise_per_group(groups[:1], {0: np.full(5, 3.0)})
    assert np.all(flat[0] == flat[0][0])


@pytest.mark.parametrize("allocation", ["uniform", "global", "standardized"])
@pytest.mark.parametrize("target", ["units", "params", "flops"])
def test_budgets_are_met_within_one_rounding_step(tiny_bert, tmp_path, allocation, target):  # noqa: F811
    pruner = ORTPruner.from_pretrained(tiny_bert)
    multiple = {"ffn": 4, "heads": 1}
    sparsity = 0.3 if target == "units" else 0.1
    config = PruningConfig(sparsity=sparsity, scope=("ffn", "heads"), importance="l2", allocation=allocation,
                           target=target, round_to=multiple)
    prep = pruner._prepare(DEFAULT_IO_PATTERNS)
    plan = pruner.plan(config)
    removed = _plan_removed(plan)
    groups = {g.id: g for g in prep.groups}
    pruned = [groups[gid] for gid in removed if groups[gid].kind in ("ffn", "heads") and groups[gid].prunable]
    for g in pruned:
        kept = g.units - removed[g.id]
        assert kept >= 1
        assert kept % multiple[g.kind] == 0 or kept == g.units
    if target == "units":
        for kind in ("ffn", "heads"):
            gs = [g for g in pruned if g.kind == kind]
            total = sum(removed[g.id] for g in gs)
            goal = sparsity * sum(g.units for g in gs)
            assert abs(total - goal) <= len(gs) * multiple[kind], (kind, total, goal)
        return
    out = pruner.prune(config, tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    before, after = report[f"{target}_before"], report[f"{target}_after"]
    costs = {g.id: unit_costs(g, prep.model, prep.shapes, target) for g in pruned}
    step = sum(multiple[g.kind] * float(costs[g.id].max()) for g in pruned)
    assert abs((before - after) - sparsity * before) <= step, (before - after, sparsity * before, step)
    assert verify(tiny_bert, out).exact


@pytest.mark.parametrize("target", ["params", "flops"])
@pytest.mark.parametrize("sparsity", [0.2, 0.5])
def test_a_budget_on_convolutions_between_two_groups_is_met(tmp_path, target, sparsity):
    """conv1 -> Relu -> conv2 -> Relu -> conv3: conv2's kernel loses input channels to one group and output
    channels to the other, so it keeps ``(1 - p)(1 - q)`` of itself; summing the two groups' unit costs
    counted ``p + q`` and stopped short (a 50% FLOPs budget on a CNN cut 45%)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # wide enough that one unit per group (the rounding step) is finer than the error of summing costs
    arrays = {"W1": rng.standard_normal((128, 3, 3, 3)), "W2": rng.standard_normal((128, 128, 3, 3)),
              "W3": rng.standard_normal((8, 128, 3, 3))}
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Conv", ["h", "W2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["k"]),
             helper.make_node("Conv", ["k", "W3"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, 16, 16])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    src = tmp_path / "dense"
    src.mkdir()
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              src / "model.onnx")
    config = PruningConfig(sparsity=sparsity, scope=("conv",), target=target)
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    before, after = report[f"{target}_before"], report[f"{target}_after"]
    prep = ORTPruner.from_pretrained(src)._prepare(DEFAULT_IO_PATTERNS)
    step = sum(float(unit_costs(g, prep.model, prep.shapes, target).max()) for g in prep.groups if g.prunable)
    assert report["units_removed"]["conv"] > 0
    assert abs((before - after) - sparsity * before) <= step, (1 - after / before, sparsity)
    assert verify(src, out).exact


def test_global_allocation_is_uneven_and_exact(tiny_bert, tmp_path):  # noqa: F811
    config = PruningConfig(sparsity=0.5, scope=("ffn",), importance="l2", allocation="global")
    out = ORTPruner.from_pretrained(tiny_bert).prune(config, tmp_path / "pruned")
    plan = json.loads((out / "pruning_plan.json").read_text())
    kept = [len(g["kept"]) for g in plan["groups"] if g["kind"] == "ffn"]
    units = [g["units"] for g in plan["groups"] if g["kind"] == "ffn"]
    assert abs((sum(units) - sum(kept)) - 0.5 * sum(units)) <= 1
    assert verify(tiny_bert, out).exact


def test_unreachable_budget_is_an_error(tiny_bert):  # noqa: F811
    config = PruningConfig(sparsity=0.95, scope=("heads",), target="params")
    with pytest.raises(ConfigError, match=r"at most 0\.\d{3} of the model's params \("):
        ORTPruner.from_pretrained(tiny_bert).plan(config)


@pytest.mark.parametrize("bad", [dict(allocation="local"), dict(target="latencies"), dict(round_to=0),
                                 dict(round_to={"ffn": 0}), dict(round_to={"mlp": 8}), dict(round_to=True),
                                 dict(latency_table=3), dict(latency_table={"curves": {}, "speed": 1})])
def test_budget_options_are_validated(bad):
    with pytest.raises(ConfigError):
        PruningConfig(**bad)


def test_importance_options_reach_the_criterion_and_are_validated(tiny_bert, tmp_path):  # noqa: F811
    from optimum_prune.importance import FidelityImportance, get_importance

    assert get_importance("fidelity", rounds=1).rounds == 1
    with pytest.raises(ConfigError, match="bad importance_options"):
        get_importance("l2", rounds=1)
    with pytest.raises(ConfigError, match="cannot set"):
        get_importance("l2", p=1)
    config = PruningConfig(sparsity=0.3, importance="fidelity", importance_options={"rounds": 1})
    assert config.to_dict()["importance_options"] == {"rounds": 1}
    plan = ORTPruner.from_pretrained(tiny_bert).plan(config)
    assert plan.config["importance_options"] == {"rounds": 1}
    assert isinstance(get_importance("fidelity"), FidelityImportance)
    with pytest.raises(ConfigError):
        PruningConfig(importance_options=[("rounds", 1)])


def test_flops_are_counted_at_the_image_size_of_the_folder_config(tmp_path):
    """Symbolic image sides count as 128 each unless config.json gives the image size (and channel count):
    a FLOPs budget then weighs the layers as the images the model runs on do."""
    import onnx
    from onnx import numpy_helper

    model = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[batch_size, num_channels, height, width] pixel_values) => (float[batch_size, 6, h2, w2] y) {
            a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (pixel_values, w1)
            r = Relu(a)
            y = Conv <kernel_shape = [1, 1], strides = [2, 2]> (r, w2)
        }
    """)
    rng = np.random.default_rng(0)
    for name, shape in {"w1": (8, 1, 3, 3), "w2": (6, 8, 1, 1)}.items():
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32),
                                                               name))
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    # every symbolic dimension counts as 128, the strided output's floor((height - 1) / 2) + 1 too
    assert ORTPruner.from_pretrained(src).analyze().flops == 2 * 128 * 128 * 9 * 8 + 2 * 128 * 128 * 8 * 6
    (src / "config.json").write_text('{"image_size": [28, 20], "num_channels": 1}')
    assert ORTPruner.from_pretrained(src).analyze().flops == 2 * 28 * 20 * 9 * 8 + 2 * 14 * 10 * 8 * 6
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("conv",), target="flops"),
                                               tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["flops_before"] == 2 * 28 * 20 * 9 * 8 + 2 * 14 * 10 * 8 * 6
    assert report["flops_after"] == 2 * 28 * 20 * 9 * 4 + 2 * 14 * 10 * 4 * 6
