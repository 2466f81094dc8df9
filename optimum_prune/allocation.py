"""Turn scores and a target into the units each group keeps.

Targets (``PruningConfig.target``): ``"units"`` removes ``sparsity`` of the units of every group (uniform)
or of every kind (global); ``"params"`` / ``"flops"`` remove ``sparsity`` of the whole model's parameters
or FLOPs (as :func:`optimum_prune.metrics.count_parameters` / ``count_flops`` count them), spending the
budget on the groups in scope. Allocation is ``"uniform"`` (one share for every group), ``"global"``
(units ranked across layers by their score normalised per kind, and per cost for params/FLOPs
targets) or ``"standardized"`` (ranked across layers by their score standardised within their
group). Removal counts are rounded so each group keeps a multiple of ``round_to`` (per kind) and at
least ``min_units`` (so every layer keeps at least one head / KV group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.errors import ConfigError
from optimum_prune.graph import Shape, values_by_name


def units_to_remove(units: int, sparsity: float, min_units: int = 1) -> int:
    """How many of ``units`` a uniform ``sparsity`` removes (floor), keeping at least ``min_units``."""
    n = int(math.floor(sparsity * units + 1e-9))
    return max(0, min(n, units - max(1, min_units)))


def round_removal(units: int, n_remove: int, multiple: int = 1, min_units: int = 1) -> int:
    """``n_remove`` adjusted so the kept count is the nearest multiple of ``multiple`` (ties keep more),
    never below ``min_units`` (rounded up to a multiple when possible) and never above ``units``."""
    if multiple <= 1:
        return max(0, min(n_remove, units - max(1, min_units)))
    kept = units - n_remove
    kept = int(math.floor(kept / multiple + 0.5)) * multiple
    floor_kept = max(1, min_units)
    floor_kept = min(int(math.ceil(floor_kept / multiple)) * multiple, units)
    kept = min(max(kept, floor_kept), units)
    return units - kept


def select_kept(scores: np.ndarray, n_remove: int) -> list[int]:
    """Indices kept after removing the ``n_remove`` lowest scores (ties remove the higher index)."""
    order = np.lexsort((-np.arange(scores.size), scores))  # ascending score, then descending index
    removed = set(order[:n_remove].tolist())
    return [i for i in range(scores.size) if i not in removed]


# ----------------------------------------------------------------------------------------------
# costs


def _numel(shape: Shape | None, sequence: int) -> int | None:
    if shape is None:
        return None
    n = 1
    for d in shape:
        if isinstance(d, int):
            n *= d
        elif d is None:
            return None
        else:
            n *= 1 if "batch" in str(d) else sequence
    return n


def unit_costs(group: PruningGroup, model: ir.Model, shapes: dict[str, Shape], measure: str, *,
               sequence: int = 128) -> np.ndarray:
    """What removing each unit of ``group`` saves: parameters, or FLOPs at batch 1 x ``sequence`` tokens
    (weights of MatMul/Gemm/Conv, as ``count_flops`` counts them), one entry per unit."""
    cost = np.zeros(group.units)
    for s, value, dims in _weight_slices(group, values_by_name(model)):
        per_position = math.prod(dims) / dims[s.axis]
        if measure == "flops":
            per_position *= _flops_per_weight(value, shapes, sequence)
        owned = s.owner >= 0
        cost += np.bincount(s.owner[owned], minlength=group.units) * per_position
    return cost


def joint_saving(groups: Sequence[PruningGroup], model: ir.Model, shapes: dict[str, Shape], measure: str, *,
                 sequence: int = 128) -> Callable[[dict[int, int]], float]:
    """What removal counts save (parameters or FLOPs, as :func:`unit_costs` counts them) when several groups
    may cut one tensor: a convolution's input channels belong to one group and its output channels to the
    next, and a tensor keeps the product of its axes' kept shares, ``1 - (1 - p)(1 - q)`` of it removed,
    not the ``p + q`` that summing each group's unit costs counts. Each group removes average units
    (``n / units`` of the positions it owns on every axis it cuts). Where no two groups cut one tensor
    this equals the sum of the groups' mean unit costs times their counts."""
    values = values_by_name(model)
    per_element: dict[str, float] = {}  # FLOPs (or 1 parameter) per element of each weight
    dims_of: dict[str, list[int]] = {}
    cuts: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}  # weight -> (group, axis) -> (owned, units)
    for g in groups:
        for sl, value, dims in _weight_slices(g, values):
            if sl.name not in per_element:
                per_element[sl.name] = (_flops_per_weight(value, shapes, sequence) if measure == "flops"
                                        else 1.0)
                dims_of[sl.name] = dims
            cuts.setdefault(sl.name, {})[(g.id, sl.axis)] = (int((sl.owner >= 0).sum()), g.units)
    table = [(math.prod(dims_of[name]) * per, dims_of[name], cuts[name]) for name, per in per_element.items()
             if per > 0]

    def saving(n_remove: dict[int, int]) -> float:
        total = 0.0
        for elements, dims, tensor_cuts in table:
            removed = [0.0] * len(dims)
            for (gid, axis), (owned, units) in tensor_cuts.items():
                removed[axis] += owned * n_remove.get(gid, 0) / max(units, 1)
            kept = 1.0
            for axis, gone in enumerate(removed):
                if gone:
                    kept *= max(dims[axis] - gone, 0.0) / dims[axis]
            total += elements * (1.0 - kept)
        return total

    return saving


def _weight_slices(group: PruningGroup, values: dict[str, ir.Value]):
    """``(slice, value, dims)`` for each of ``group``'s floating-point constant slices whose axis the
    owner spans, once per (tensor, axis)."""
    seen: set[tuple[str, int]] = set()
    for s in group.slices:
        if not s.constant or (s.name, s.axis) in seen:
            continue
        seen.add((s.name, s.axis))
        value = values.get(s.name)
        tensor = value.const_value if value is not None else None
        if tensor is None or not tensor.dtype.is_floating_point():
            continue
        dims = [int(d) for d in tensor.shape]
        if dims and dims[s.axis] == s.owner.size:
            yield s, value, dims


def _flops_per_weight(value: ir.Value, shapes: dict[str, Shape], sequence: int) -> float:
    """FLOPs per element of a weight: ``2 x tokens`` for a MatMul/Gemm weight, ``2 x output positions``
    for a Conv filter, 0 for anything else (biases, norms)."""
    total = 0.0
    for node, idx in value.uses():
        if node.domain not in ("", "ai.onnx") or idx != 1:
            continue
        out = _numel(shapes.get(node.outputs[0].name), sequence)
        out_shape = shapes.get(node.outputs[0].name)
        if out is None or not out_shape:
            continue
        if node.op_type in ("MatMul", "Gemm") and isinstance(out_shape[-1], int) and out_shape[-1]:
            total += 2.0 * out / out_shape[-1]
        elif (node.op_type in ("Conv", "ConvTranspose") and len(out_shape) > 2
              and isinstance(out_shape[1], int)):
            total += 2.0 * out / max(out_shape[1], 1)
    return total


# ----------------------------------------------------------------------------------------------
# allocation


def uniform_for_cost(groups: Sequence[PruningGroup], costs: dict[int, np.ndarray], target: float,
                     min_units: int, multiples: dict[int, int],
                     saving: Callable[[dict[int, int]], float] | None = None, *,
                     total: float | None = None, measure: str = "cost") -> dict[int, int]:
    """One sparsity for every group, the smallest whose removal (of average-cost units) reaches
    ``target``; found by bisection. ``saving`` (removal counts -> amount saved) replaces the average
    cost when the saving is not linear in the count (latency tables). Raises :class:`ConfigError` when no
    sparsity reaches it."""

    def plan(s: float) -> tuple[dict[int, int], float]:
        n = {g.id: round_removal(g.units, units_to_remove(g.units, s, min_units), multiples.get(g.id, 1),
                                 min_units) for g in groups}
        if saving is not None:
            return n, saving(n)
        return n, sum(n[g.id] * float(costs[g.id].mean()) for g in groups)

    best, reached = plan(0.999999)
    if reached < target:
        share = (f"{reached / total:.3f} of the model's {measure} ({reached:.4g} of the {target:.4g} asked)"
                 if total else f"{reached:.4g} of the {target:.4g} asked")
        raise ConfigError(f"the groups in scope can remove at most {share}; lower sparsity, widen scope, or "
                          "lower min_units")
    lo, hi = 0.0, 0.999999
    for _ in range(40):
        mid = (lo + hi) / 2
        n, c = plan(mid)
        if c >= target:
            hi, best = mid, n
        else:
            lo = mid
    return best


def normalise_per_kind(groups: Sequence[PruningGroup], scores: dict[int, np.ndarray]
                       ) -> dict[int, np.ndarray]:
    """Scores divided by the mean score of their kind (over every unit of every group of that kind), so
    units of different layers and kinds can be ranked together; non-positive means fall back to ranks."""
    out: dict[int, np.ndarray] = {}
    kinds = sorted({g.kind for g in groups})
    for kind in kinds:
        gs = [g for g in groups if g.kind == kind]
        allv = np.concatenate([np.asarray(scores[g.id], dtype=np.float64) for g in gs])
        mean = float(np.mean(allv)) if allv.size else 0.0
        if not np.all(np.isfinite(allv)) or mean <= 0 or np.any(allv < 0):
            ranks = np.argsort(np.argsort(allv, kind="stable"), kind="stable").astype(np.float64) + 1.0
            allv, mean = ranks, float(ranks.mean())
        start = 0
        for g in gs:
            out[g.id] = allv[start:start + g.units] / mean
            start += g.units
    return out


def standardise_per_group(groups: Sequence[PruningGroup], scores: dict[int, np.ndarray]
                          ) -> dict[int, np.ndarray]:
    """Each group's scores as z-scores within the group (FLAP's standardisation per layer), shifted by
    one common constant so that the smallest is 1: units of different layers rank by how far below
    their own layer's mean they fall, and dividing by a cost stays meaningful. A group whose scores
    are all equal gets z-scores of 0."""
    z: dict[int, np.ndarray] = {}
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        std = float(s.std())
        z[g.id] = (s - s.mean()) / std if std > 0 and np.all(np.isfinite(s)) else np.zeros_like(s)
    if not z:
        return z
    shift = 1.0 - min(float(v.min()) for v in z.values() if v.size)
    return {gid: v + shift for gid, v in z.items()}


def global_allocation(groups: Sequence[PruningGroup], scores: dict[int, np.ndarray],
                      costs: dict[int, np.ndarray], target: float | dict[str, float], min_units: int,
                      multiples: dict[int, int],
                      marginal: Callable[[int, int], float] | None = None,
                      normalise: Callable[[Sequence[PruningGroup], dict[int, np.ndarray]],
                                          dict[int, np.ndarray]] = normalise_per_kind) -> dict[int, int]:
    """Units removed per group by ranking every unit of ``groups`` together.

    Units are taken in ascending order of (normalised score) / (cost / mean cost of the kind) until the
    removed cost reaches ``target`` (a number, over all kinds; or per kind, a dict), never leaving a
    group with fewer than ``min_units``; each group's count is then rounded to its multiple.
    ``marginal(group id, removed so far)``, when given, is what the next removal of that group saves
    (the costs then only rank the units): for savings that are not linear in the count (latency).
    ``normalise`` makes the scores of different groups comparable: :func:`normalise_per_kind`
    (``allocation="global"``) or :func:`standardise_per_group` (``"standardized"``).
    """
    norm = normalise(groups, scores)
    keys, gids, costs_flat = [], [], []
    mean_cost = {k: float(np.mean(np.concatenate([costs[g.id] for g in groups if g.kind == k])))
                 for k in {g.kind for g in groups}}
    for g in groups:
        c = np.maximum(costs[g.id], 1e-30)
        keys.append(norm[g.id] / (c / max(mean_cost[g.kind], 1e-30)))
        gids.append(np.full(g.units, g.id))
        costs_flat.append(costs[g.id])
    key, gid, cost = np.concatenate(keys), np.concatenate(gids), np.concatenate(costs_flat)
    kind_of = {g.id: g.kind for g in groups}
    cap = {g.id: g.units - max(1, min_units) for g in groups}
    n_remove = {g.id: 0 for g in groups}
    per_kind = isinstance(target, dict)
    spent: dict[str, float] = {k: 0.0 for k in mean_cost}
    total = 0.0
    for i in np.argsort(key, kind="stable"):
        g = int(gid[i])
        kind = kind_of[g]
        if n_remove[g] >= cap[g]:
            continue
        if per_kind:
            if spent[kind] >= target.get(kind, 0.0):
                continue
        elif total >= target:
            break
        step = float(cost[i]) if marginal is None else marginal(g, n_remove[g])
        n_remove[g] += 1
        spent[kind] += step
        total += step
    return {g.id: round_removal(g.units, n_remove[g.id], multiples.get(g.id, 1), min_units) for g in groups}
