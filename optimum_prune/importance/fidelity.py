"""``fidelity``: PAODING's data-free, fidelity-driven iterative pruning, kept affordable.

Units are removed greedily, per group, in ``rounds`` rounds: in each round every remaining unit is
tried (removed together with the units already chosen) and the ones whose removal changes the model's
outputs least, in squared error relative to the dense outputs, are chosen, until the group's budget is
reached. The outputs are measured on a few generated inputs (or the first calibration batch, when
calibration data is given). Scores are removal ranks: the first unit chosen has the lowest score;
units never chosen follow by their last measured effect.

Trying a unit means zeroing its leaf slices, which (the exactness oracle) is what removing it does.
Instead of rewriting weights per trial, a clone of the model gets a mask input multiplied onto each
consumer's data input (``x * m`` before ``x @ W``, the same as zeroing rows of ``W``); trials are then
stacked along the batch axis, many per ONNX Runtime run. Where a consumer input has no batch axis at
position 0 the mask goes on the weight itself and trials run one by one.

Cost: ``units`` trials in the first round, then ``pool_factor`` x (units still to remove) per round,
each trial a forward pass on ``num_inputs`` sequences of ``sequence_length`` tokens; other groups stay
dense while a group is measured. Units left out of a round's pool keep their earlier measurement.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.calibration import CalibrationData
from optimum_prune.errors import ConfigError
from optimum_prune.graph import Shape, infer_shapes
from optimum_prune.importance.activation import require_calibration
from optimum_prune.importance.base import Importance, leaf_inputs, values_by_name
from optimum_prune.passes.apply import removed_mask
from optimum_prune.runtime import complete_feeds, generate_feeds, ort_session

_ROWS = "fidelity_rows"


@dataclass
class _Mask:
    input_name: str
    owner: np.ndarray
    rank: int
    axis: int
    dtype: type


@dataclass
class _GroupMasks:
    masks: list[_Mask] = field(default_factory=list)
    batched: bool = True


@dataclass
class FidelityImportance(Importance):
    """Greedy output-fidelity ranking of each group's units (see the module docstring).

    Args:
        calibration: when given, its first batch (``num_inputs`` rows) replaces the generated inputs.
        rounds: greedy rounds per group (more: closer to PAODING's one-at-a-time iteration, slower).
        pool_factor: after the first round, only the ``pool_factor`` x (units still to remove) units
            with the smallest last effect are measured again (0: every remaining unit, every round).
        num_inputs: generated sequences (or images) the outputs are compared on.
        sequence_length: tokens per generated sequence.
        seed: seed of the generated inputs.
        default_fraction: share of a group ranked greedily when the budget is not known in advance.
        max_rows_per_run: batch rows per ONNX Runtime run (trials x ``num_inputs``).
        threads: ONNX Runtime intra-op threads (0: default).
        input_dims: symbolic input dimensions of the generated inputs fixed by name (``height``,
            ``width``, ``channels``); ``ORTPruner`` fills them from the folder's ``config.json``.
    """

    name: ClassVar[str] = "fidelity"
    uses_calibration: ClassVar[bool] = True
    calibration: CalibrationData | None = None
    rounds: int = 4
    pool_factor: float = 2.0
    num_inputs: int = 2
    sequence_length: int = 8
    seed: int = 0
    default_fraction: float = 0.5
    max_rows_per_run: int = 512
    threads: int = 0
    input_dims: dict[str, int] | None = None
    _scores: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _model: weakref.ref | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("rounds", "num_inputs", "sequence_length", "max_rows_per_run"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"FidelityImportance.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.pool_factor, bool) or not isinstance(self.pool_factor, int | float) or (
                self.pool_factor != 0 and self.pool_factor < 1):
            raise ConfigError(f"FidelityImportance.pool_factor must be 0 or >= 1, got {self.pool_factor!r}")
        if not 0.0 < float(self.default_fraction) < 1.0:
            raise ConfigError("FidelityImportance.default_fraction must be in (0, 1), got "
                              f"{self.default_fraction!r}")
        if self.calibration is not None:
            require_calibration(self.calibration, self.name)

    def prepare(self, model: ir.Model, groups: list[PruningGroup], *, shapes: dict[str, Shape] | None = None,
                n_remove: dict[int, int] | None = None) -> None:
        """Rank the units of every group in ``groups`` (one masked clone, one session)."""
        if self._model is None or self._model() is not model:
            self._scores.clear()
            self._model = weakref.ref(model)
        groups = [g for g in groups if g.units > 1 and g.id not in self._scores]
        if not groups:
            return
        shapes = shapes if shapes is not None else infer_shapes(model)
        clone, masks = _masked_clone(model, groups, shapes)
        with ort_session(clone, threads=self.threads) as session:
            mask_names = frozenset(m.input_name for gm in masks.values() for m in gm.masks)
            feeds = self._feeds(session, clone, mask_names)
            tiled = _batch_inputs(session, mask_names)
            outputs = [o.name for o in session.get_outputs()]
            ones = {m.input_name: _mask_array(m, 1, []) for gm in masks.values() for m in gm.masks}
            ref = session.run(outputs, {**feeds, **ones})
            for g in groups:
                budget = (n_remove or {}).get(g.id) or math.ceil(self.default_fraction * g.units)
                trial = _Trials(session, outputs, feeds, tiled, ref, ones, masks[g.id], self.max_rows_per_run)
                self._scores[g.id] = _greedy(g.units, min(budget, g.units - 1), self.rounds, trial,
                                             self.pool_factor)

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        if self._model is None or self._model() is not model or group.id not in self._scores:
            self.prepare(model, [group])
        if group.units <= 1:
            return np.ones(group.units)
        return self._scores[group.id].copy()

    def _feeds(self, session, model: ir.Model, skip: frozenset[str]) -> dict[str, np.ndarray]:
        if self.calibration is not None:
            batch = next(self.calibration.batches())
            batch = {k: np.asarray(v)[: self.num_inputs] for k, v in batch.items()}
            return complete_feeds(session, batch, skip=skip)
        return generate_feeds(session, model, rows=self.num_inputs, length=self.sequence_length,
                              seed=self.seed, skip=skip, dims=self.input_dims)


def _masked_clone(model: ir.Model, groups: list[PruningGroup], shapes: dict[str, Shape]
                  ) -> tuple[ir.Model, dict[int, _GroupMasks]]:
    """A clone with a mask input multiplied onto each consumer's data input (or weight) of each group."""
    clone = model.clone()
    values = values_by_name(clone)
    batch_dim = _batch_symbol(clone)
    sites = []  # (group, leaf input, masked slice, input index, shape, dtype), all found before rewiring
    for g in groups:
        for li in leaf_inputs(g, clone, values):
            target = li.activation if li.activation is not None else li.weight
            index = next((i for i, inp in enumerate(li.node.inputs) if inp is values.get(target.name)), None)
            const = values[li.weight.name].const_value
            shape = shapes.get(target.name) if li.activation is not None else (
                tuple(const.shape) if const is not None else None)
            if index is None or shape is None:
                raise ConfigError(f"fidelity: cannot mask consumer '{li.node.name}' of '{li.weight.name}' in "
                                  f"group {g.id} (unknown input or shape)")
            dtype = const.numpy().dtype.type if const is not None else np.float32
            sites.append((g, li, target, index, tuple(shape), dtype))
    out: dict[int, _GroupMasks] = {g.id: _GroupMasks() for g in groups}
    made: dict[tuple[int, str, int], tuple[_Mask, ir.Value]] = {}
    for g, li, target, index, shape, dtype in sites:
        gm = out[g.id]
        rank = len(shape)
        axis = target.axis % rank
        batched = (li.activation is not None and rank >= 2 and axis != 0 and batch_dim is not None
                   and shape[0] == batch_dim)
        gm.batched = gm.batched and batched
        key = (g.id, target.name, axis)
        if key not in made:
            mask = _Mask(f"__fidelity_mask_{g.id}_{len(gm.masks)}", target.owner, rank, axis, dtype)
            dims: list[int | str] = [1] * rank
            dims[0] = _ROWS
            dims[axis] = int(target.owner.size)
            value = ir.Value(name=mask.input_name, shape=ir.Shape(dims),
                             type=ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype))))
            clone.graph.inputs.append(value)
            made[key] = (mask, value)
            gm.masks.append(mask)
        mask, value = made[key]
        mul = ir.Node("", "Mul", [li.node.inputs[index], value], num_outputs=1,
                      name=f"{li.node.name}__fidelity_mul_{g.id}_{index}")
        mul.outputs[0].name = f"{target.name}__fidelity_{g.id}_{li.node.name}_{index}"
        clone.graph.append(mul)
        li.node.replace_input_with(index, mul.outputs[0])
    clone.graph.sort()
    return clone, out


def _batch_symbol(model: ir.Model) -> str | None:
    for v in model.graph.inputs:
        if v.shape is not None and len(v.shape) >= 1:
            d = v.shape[0]
            name = d if isinstance(d, str) else getattr(d, "value", None)
            if isinstance(name, str):
                return name
    return None


def _batch_inputs(session, skip: frozenset[str]) -> set[str]:
    """Inputs whose first axis is symbolic (the batch), to be tiled when trials are stacked."""
    return {i.name for i in session.get_inputs()
            if i.name not in skip and i.shape and isinstance(i.shape[0], str)}


def _mask_array(m: _Mask, rows: int, removed: list[set[int]], block: int = 1) -> np.ndarray:
    """A mask with ``rows`` leading rows; trial ``t`` (rows ``t*block..``) zeroes ``removed[t]``."""
    shape = [1] * m.rank
    shape[0] = rows
    shape[m.axis] = m.owner.size
    arr = np.ones(shape, dtype=m.dtype)
    view = np.moveaxis(arr, m.axis, -1)
    for t, rm in enumerate(removed):
        if m.axis == 0:  # no row axis of its own: one trial per run
            view[..., removed_mask(m.owner, rm)] = 0
        else:
            view[t * block:(t + 1) * block, ..., removed_mask(m.owner, rm)] = 0
    return arr


@dataclass
class _Trials:
    """Measures the output change of trial removals of one group's units."""

    session: object
    outputs: list[str]
    feeds: dict[str, np.ndarray]
    tiled: set[str]
    ref: list[np.ndarray]
    ones: dict[str, np.ndarray]
    group: _GroupMasks
    max_rows: int

    def distances(self, trials: list[set[int]]) -> np.ndarray:
        rows = max((np.asarray(v).shape[0] for k, v in self.feeds.items() if k in self.tiled), default=1)
        usable = [i for i, r in enumerate(self.ref)
                  if np.issubdtype(r.dtype, np.floating) and r.ndim >= 1 and r.shape[0] == rows]
        if self.group.batched and usable and self.tiled:
            per_run = max(1, self.max_rows // max(rows, 1))
            out = []
            for start in range(0, len(trials), per_run):
                chunk = trials[start:start + per_run]
                feeds = {k: (np.concatenate([v] * len(chunk), axis=0) if k in self.tiled else v)
                         for k, v in self.feeds.items()}
                masks = {m.input_name: _mask_array(m, len(chunk) * rows, chunk, rows)
                         for m in self.group.masks}
                got = self.session.run(self.outputs, {**feeds, **self.ones, **masks})
                if any(got[i].shape != (len(chunk) * rows, *self.ref[i].shape[1:]) for i in usable):
                    # stacked trials do not stay apart in the outputs (CLIP's logits_per_image pairs
                    # every image with every text, both batch axes grow): run them one by one
                    self.group.batched = False
                    return self.distances(trials)
                out.append(self._compare(got, usable, len(chunk), rows))
            return np.concatenate(out)
        usable = [i for i, r in enumerate(self.ref) if np.issubdtype(r.dtype, np.floating)]
        result = np.zeros(len(trials))
        for t, rm in enumerate(trials):
            masks = {m.input_name: _mask_array(m, 1, [rm]) for m in self.group.masks}
            got = self.session.run(self.outputs, {**self.feeds, **self.ones, **masks})
            result[t] = self._compare(got, usable, 1, None)[0]
        return result

    def _compare(self, got: list[np.ndarray], usable: list[int], trials: int, rows: int | None) -> np.ndarray:
        d = np.zeros(trials)
        for i in usable:
            ref = self.ref[i].astype(np.float64)
            y = got[i].astype(np.float64)
            y = y.reshape(trials, *ref.shape) if rows is not None else y[None]
            err = ((y - ref[None]) ** 2).reshape(trials, -1).sum(axis=1)
            d += err / max(float((ref ** 2).sum()), 1e-30)
        return d


def _greedy(units: int, budget: int, rounds: int, trials: _Trials, pool_factor: float = 0.0) -> np.ndarray:
    """Greedy removal order over ``rounds`` rounds; returns removal ranks (lowest removed first)."""
    removed: list[int] = []
    chosen: set[int] = set()
    last = np.zeros(units)
    for r in range(rounds):
        left = budget - len(removed)
        if left <= 0:
            break
        take = math.ceil(left / (rounds - r))
        candidates = sorted((u for u in range(units) if u not in chosen), key=lambda u: (last[u], u))
        if r and pool_factor:
            candidates = candidates[:max(take, math.ceil(pool_factor * left))]
        d = trials.distances([chosen | {u} for u in candidates])
        last[candidates] = d
        for i in np.argsort(d, kind="stable")[:take]:
            removed.append(candidates[i])
            chosen.add(candidates[i])
    scores = np.empty(units, dtype=np.float64)
    scores[removed] = np.arange(len(removed), dtype=np.float64)
    rest = sorted((u for u in range(units) if u not in chosen), key=lambda u: (last[u], u))
    scores[rest] = len(removed) + np.arange(len(rest), dtype=np.float64)
    return scores
