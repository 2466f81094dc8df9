"""Latency budgets (``target="latency"``): the per-block latency table, its interpolation, and budgets met
within one rounding step. Tests inject hand-made tables (fast, deterministic); one test measures a tiny
table to check the measurement's shape, not its numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optimum_prune import ConfigError, ORTPruner, PruningConfig, verify
from optimum_prune.allocation import global_allocation, uniform_for_cost
from optimum_prune.association.tree import PruningGroup
from optimum_prune.configuration import DEFAULT_IO_PATTERNS
from optimum_prune.latency import (
    LatencyModel,
    LatencyTable,
    block_signature,
    measure_latency_table,
    width_grid,
)
from test_criteria import tiny_bert  # noqa: F401  (session fixture)


def _ffn_ms(w):
    """A step-like curve (tile effects): cost grows in blocks of 8 channels."""
    return 0.5 + 0.04 * np.ceil(np.asarray(w, dtype=float) / 8) * 8


def _heads_ms(w):
    return 0.2 + 0.3 * np.asarray(w, dtype=float) ** 1.3


def _fake_table(prep, total_ms=None) -> LatencyTable:
    curves = {}
    for g in prep.groups:
        if g.kind in ("ffn", "heads") and g.prunable:
            widths = width_grid(g.units, 9)
            fn = _ffn_ms if g.kind == "ffn" else _heads_ms
            curves[block_signature(g, prep.model)] = [widths, fn(widths).tolist()]
    return LatencyTable(curves=curves, total_ms=total_ms)


def test_table_interpolates_validates_and_round_trips(tmp_path):
    group = PruningGroup(id=0, seed="w", seed_axis=1, kind="ffn", units=32)
    table = LatencyTable(curves={"ffn": [[1, 16, 32], [1.0, 4.0, 10.0]]}, total_ms=20.0)
    assert table.ms(group, 16) == pytest.approx(4.0)
    assert table.ms(group, 24) == pytest.approx(7.0)  # linear between grid points
    assert table.ms(group, 0) == pytest.approx(0.8)  # extrapolated from the two narrowest widths
    assert table.ms(group, 40) == pytest.approx(10.0)  # clamped at the widest
    path = table.save(tmp_path / "table.json")
    again = LatencyTable.coerce(str(path))
    assert again.to_dict() == table.to_dict()
    assert PruningConfig(target="latency", latency_table=table.to_dict()).latency_table.curves == table.curves
    with pytest.raises(ConfigError, match="widths must increase"):
        LatencyTable(curves={"ffn": [[4, 2], [1.0, 2.0]]})
    with pytest.raises(ConfigError, match="no curve"):
        table.curve(PruningGroup(id=1, seed="h", seed_axis=1, kind="heads", units=4))
    with pytest.raises(ConfigError, match="target must be one of"):
        PruningConfig(target="latencies")


def test_marginal_savings_drive_the_greedy_and_the_bisection():
    groups = [PruningGroup(id=i, seed=f"g{i}", seed_axis=1, kind="ffn", units=16) for i in range(2)]
    table = LatencyTable(curves={"ffn": [[1, 8, 16], [1.0, 2.0, 10.0]]})  # the last 8 units are expensive
    lat = LatencyModel(table, groups, model=_NoModel())
    assert lat.saving(0, 8) == pytest.approx(8.0) and lat.marginal(0, 0) == pytest.approx(1.0)
    scores = {0: np.linspace(0.1, 1.0, 16), 1: np.linspace(0.1, 1.0, 16)}
    costs = lat.unit_costs(min_units=1)
    n = global_allocation(groups, scores, costs, 9.0, min_units=1, multiples={},
                          marginal=lat.marginal)
    saved = lat.total_saving(n)
    assert 9.0 <= saved <= 9.0 + max(lat.marginal(g.id, n[g.id] - 1) for g in groups if n[g.id])
    n = uniform_for_cost(groups, costs, 9.0, min_units=1, multiples={}, saving=lat.total_saving)
    assert n[0] == n[1] and lat.total_saving(n) >= 9.0
    smaller = {g.id: n[g.id] - 1 for g in groups}
    assert lat.total_saving(smaller) < 9.0  # the smallest common share that reaches the budget


class _NoModel:
    """Stands in for an ir.Model when groups have no root weights (signatures are then None)."""

    class graph:  # noqa: N801
        initializers: dict = {}


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("whole", [None, 1.5])
def test_latency_budget_is_met_within_one_rounding_step(tiny_bert, tmp_path, allocation,  # noqa: F811
                                                         whole):
    pruner = ORTPruner.from_pretrained(tiny_bert)
    prep = pruner._prepare(DEFAULT_IO_PATTERNS)
    table = _fake_table(prep)
    blocks = sum(float(table.ms(g, g.units, block_signature(g, prep.model))) for g in prep.groups
                 if g.kind in ("ffn", "heads") and g.prunable)
    total_ms = whole * blocks if whole else None  # the whole model: the blocks plus 50% of other ops
    table = _fake_table(prep, total_ms)
    multiple = {"ffn": 4, "heads": 1}
    sparsity = 0.25
    config = PruningConfig(sparsity=sparsity, scope=("ffn", "heads"), importance="l2", allocation=allocation,
                           target="latency", latency_table=table, round_to=multiple)
    plan = pruner.plan(config)
    groups = {g.id: g for g in prep.groups}
    eligible = [g for g in prep.groups if g.kind in ("ffn", "heads") and g.prunable]
    lat = LatencyModel(table, eligible, prep.model)
    removed = {p.id: p.units - len(p.kept) for p in plan.groups if groups[p.id] in eligible}
    for gid, n in removed.items():
        kept = groups[gid].units - n
        assert kept >= 1 and (kept % multiple[groups[gid].kind] == 0 or kept == groups[gid].units)
    budget = sparsity * (total_ms if total_ms else lat.blocks_ms())
    saved = lat.total_saving(removed)
    # one rounding step per group: the largest saving of `multiple` units anywhere on the group's curve
    step = sum(max(lat.saving(g.id, k + multiple[g.kind]) - lat.saving(g.id, k)
                   for k in range(0, g.units - multiple[g.kind])) for g in eligible)
    assert abs(saved - budget) <= step, (saved, budget, step)
    estimate = plan.config["latency_estimate_ms"]
    assert estimate["saved"] == pytest.approx(saved) and estimate["budget"] == pytest.approx(budget)
    out = pruner.prune(config, tmp_path / "pruned")
    assert json.loads((out / "pruning_plan.json").read_text())["config"]["target"] == "latency"
    assert verify(tiny_bert, out).exact


def test_unreachable_latency_budget_is_a_config_error(tiny_bert):  # noqa: F811
    pruner = ORTPruner.from_pretrained(tiny_bert)
    table = _fake_table(pruner._prepare(DEFAULT_IO_PATTERNS), total_ms=1e6)  # blocks are a tiny share
    with pytest.raises(ConfigError, match="at most"):
        pruner.plan(PruningConfig(sparsity=0.5, target="latency", latency_table=table))


def test_measured_table_covers_every_block(tiny_bert):  # noqa: F811
    pruner = ORTPruner.from_pretrained(tiny_bert)
    prep = pruner._prepare(DEFAULT_IO_PATTERNS)
    eligible = [g for g in prep.groups if g.kind in ("ffn", "heads") and g.prunable]
    table = measure_latency_table(prep.model, eligible, model_path=pruner.model_path, batch=2, sequence=8,
                                  points=3, repeat=1)
    assert table.source == "measured" and table.total_ms is not None and table.total_ms > 0
    signatures = {block_signature(g, prep.model) for g in eligible}
    assert set(table.curves) == signatures and all(s.split(":")[0] in ("ffn", "heads") for s in signatures)
    for g in eligible:
        widths, ms = table.curve(g, block_signature(g, prep.model))
        assert widths[0] == 1 and widths[-1] == g.units and len(widths) == 3
        assert np.all(ms > 0) and np.all(np.diff(ms) >= 0)  # made monotone against timing noise
