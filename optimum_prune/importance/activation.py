"""``activation``: Wanda-style, calibration-aware: weight magnitude times input activation norm."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.calibration import CalibrationData, ChannelStats, StatRequest, capture_activations
from optimum_prune.errors import CalibrationRequiredError, ConfigError
from optimum_prune.graph import Shape, const_array, infer_shapes
from optimum_prune.importance.base import Importance, leaf_inputs, per_unit, rows, values_by_name
from optimum_prune.importance.magnitude import MagnitudeImportance


def require_calibration(calibration: object, criterion: str) -> None:
    """Raise :class:`CalibrationRequiredError` naming the fix when a data-driven criterion has no calibration
    data."""
    if calibration is None:
        raise CalibrationRequiredError(
            f"importance {criterion!r} needs calibration data: pass calibration=CalibrationData.from_dataset("
            "dataset, onnx_dir) (or .from_texts / .from_feeds / .generated) to ORTPruner.plan or prune, or "
            "choose a data-free criterion ('l1', 'l2', 'tree', 'obs', 'fidelity')")
    if not isinstance(calibration, CalibrationData):
        raise ConfigError(f"calibration must be a CalibrationData, got {type(calibration).__name__}")


@dataclass
class StatsCache:
    """Channel statistics of one model, captured on demand and reused across groups."""

    calibration: CalibrationData
    max_tensors_per_run: int = 16
    stats: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    _model: weakref.ref | None = field(default=None, init=False, repr=False)
    _shapes: dict[str, Shape] | None = field(default=None, init=False, repr=False)

    def ensure(self, model: ir.Model, requests: list[StatRequest],
               shapes: dict[str, Shape] | None = None) -> None:
        """Capture whatever of ``requests`` is not cached yet (one pass over the calibration data)."""
        if self._model is None or self._model() is not model:
            self.stats.clear()
            self._shapes = None
            self._model = weakref.ref(model)
        if shapes is not None:
            self._shapes = shapes
        todo = [r for r in requests if (r.name, r.axis) not in self.stats
                or (r.gram and self.stats[(r.name, r.axis)].gram is None)]
        if todo:
            if self._shapes is None:
                self._shapes = infer_shapes(model)
            self.stats.update(capture_activations(model, self.calibration, todo, shapes=self._shapes,
                                                  max_tensors_per_run=self.max_tensors_per_run))


@dataclass
class ActivationImportance(Importance):
    """Wanda-style: for each consumer (leaf) row, ``|W|`` summed over the row times the RMS of that
    input channel's activations on the calibration data; summed per unit over every leaf of the group.

    The activations are the consumers' data inputs (``x`` of ``x @ W``), captured once for all groups
    with ONNX Runtime (padding excluded). A leaf whose data input cannot be identified contributes
    nothing; a group with none falls back to the L2 root magnitude, noted in :attr:`notes`.

    Args:
        calibration: the calibration data (required).
        max_tensors_per_run: tensors captured per ONNX Runtime run.
    """

    name: ClassVar[str] = "activation"
    uses_calibration: ClassVar[bool] = True
    requires_calibration: ClassVar[bool] = True
    calibration: CalibrationData | None = None
    max_tensors_per_run: int = 16
    notes: list[str] = field(default_factory=list)
    _cache: StatsCache | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        require_calibration(self.calibration, self.name)
        self._cache = StatsCache(self.calibration, self.max_tensors_per_run)

    def prepare(self, model: ir.Model, groups: list[PruningGroup], *, shapes: dict[str, Shape] | None = None,
                n_remove: dict[int, int] | None = None) -> None:
        """Capture the input statistics of every consumer of ``groups`` in one pass."""
        values = values_by_name(model)
        requests = {StatRequest(li.activation.name, li.activation.axis)
                    for g in groups for li in leaf_inputs(g, model, values) if li.activation is not None}
        self._cache.ensure(model, sorted(requests, key=lambda r: (r.name, r.axis)), shapes)

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        values = values_by_name(model)
        leaves = [li for li in leaf_inputs(group, model, values) if li.activation is not None]
        self._cache.ensure(model, [StatRequest(li.activation.name, li.activation.axis) for li in leaves])
        scores = np.zeros(group.units, dtype=np.float64)
        used = 0
        for li in leaves:
            w = const_array(values[li.weight.name])
            if w is None:
                continue
            st = self._cache.stats[(li.activation.name, li.activation.axis)]
            if st.sumsq.size != li.weight.owner.size:
                continue
            per_pos = self.position_scores(rows(w, li.weight.axis), st)
            scores += per_unit(per_pos, li.weight.owner, group.units)
            used += 1
        if used == 0:
            self.notes.append(f"group {group.id} ({group.seed}): no consumer input found, scored by l2 "
                              "magnitude")
            return MagnitudeImportance(p=2)(group, model)
        return scores

    def position_scores(self, weight_rows: np.ndarray, stats: ChannelStats) -> np.ndarray:
        """One score per consumer input channel: the row's ``|W|`` sum times the channel's RMS."""
        return np.abs(weight_rows).sum(axis=1) * stats.rms()


@dataclass
class FluctuationImportance(ActivationImportance):
    """FLAP's fluctuation metric (An et al., 2024): for each consumer input channel, the variance of its
    activations over the calibration positions times the squared L2 norm of its weight row; summed per
    unit over every leaf of the group.

    A channel's mean is what a bias can absorb when the channel is removed (FLAP's bias compensation,
    ``recover=True`` here), so only its fluctuation around the mean is information lost: a unit whose
    input is constant scores zero however large it is. Same capture as ``activation``.
    """

    name: ClassVar[str] = "fluctuation"

    def position_scores(self, weight_rows: np.ndarray, stats: ChannelStats) -> np.ndarray:
        """One score per consumer input channel: its activation variance times ``||W_row||^2``."""
        variance = np.maximum(stats.mean_square() - stats.mean() ** 2, 0.0)
        return np.square(weight_rows).sum(axis=1) * variance
