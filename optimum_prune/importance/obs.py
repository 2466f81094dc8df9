"""``obs``: Optimal-Brain-Surgeon group saliency of a unit's consumer rows, with compensation assumed.

For a consumer ``y = x @ W`` whose input rows ``Q`` (the unit's positions) are removed and the surviving
rows updated optimally, the increase of the layer's squared output error is

    S(Q) = tr( W_Q^T [(H^-1)_QQ]^-1 W_Q ),   H = E[x x^T] + damping

(Hassibi & Stork's OBS for a row group; the update itself, ``dW = -H^-1[:, Q] [(H^-1)_QQ]^-1 W_Q``, is
left to the repair step). A unit whose input the other units can reproduce has a small saliency even
when its weights are large. Each leaf's saliency is divided by the layer's output energy
``tr(W^T H W)`` so consumers of different scale can be summed over the group.

``H`` comes from the calibration data (the Gram matrix of the consumer's input) when it is given.
Data-free (as OBSPA in the SPA paper), ``H`` is a proxy built from weights: the consumer input is traced
back to the root weight ``R`` that produces it and ``H ~ R R^T`` (the covariance of ``x`` if the root's own
input were white). A non-linearity on the way (GELU, ReLU) decorrelates channels; ``nonlinear_diag``
adds that much of ``diag(R R^T)`` there (0 by default: on all-MiniLM-L6-v2 the pure proxy ranked
better). Where no single root produces the input (a residual stream, packed QKV weights), ``H = I``
and the saliency is the leaf rows' energy. ``CalibrationData.generated`` gives another data-free
option: the Gram matrices of random token inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.calibration import CalibrationData, StatRequest
from optimum_prune.errors import ConfigError
from optimum_prune.graph import Shape, const_array
from optimum_prune.importance.activation import StatsCache, require_calibration
from optimum_prune.importance.base import (
    Importance,
    LeafInput,
    leaf_inputs,
    per_unit,
    producer_root,
    rows,
    values_by_name,
)


@dataclass
class OBSImportance(Importance):
    """OBS group saliency of each unit's consumer rows (see the module docstring).

    Args:
        calibration: calibration data; when None the data-free weight proxy is used.
        damp: ridge damping added to ``H``, relative to its mean diagonal.
        nonlinear_diag: data-free only: share of ``diag(R R^T)`` added across a non-linearity.
        max_tensors_per_run: tensors captured per ONNX Runtime run (with calibration).
        iterative: when the budget is known (the pruner passes it to :meth:`prepare`), remove units one
            at a time, each time updating ``H^-1`` and the surviving rows as OBS compensation would
            (ZipLM-style greedy OBS), so units made redundant by an earlier removal are seen as such.
            Removed units then score below every kept unit, in removal order.
    """

    name: ClassVar[str] = "obs"
    uses_calibration: ClassVar[bool] = True
    budget_aware: ClassVar[bool] = True  # the ranking depends on the budget (iterative): rescore after it
    calibration: CalibrationData | None = None
    damp: float = 0.01
    nonlinear_diag: float = 0.0
    max_tensors_per_run: int = 16
    iterative: bool = True
    notes: list[str] = field(default_factory=list)
    _cache: StatsCache | None = field(default=None, init=False, repr=False)
    _budget: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.damp, int | float) and self.damp > 0):
            raise ConfigError(f"OBSImportance.damp must be a number > 0, got {self.damp!r}")
        if not (isinstance(self.nonlinear_diag, int | float) and self.nonlinear_diag >= 0):
            raise ConfigError("OBSImportance.nonlinear_diag must be a number >= 0, got "
                              f"{self.nonlinear_diag!r}")
        if self.calibration is not None:
            require_calibration(self.calibration, self.name)
            self._cache = StatsCache(self.calibration, self.max_tensors_per_run)

    def prepare(self, model: ir.Model, groups: list[PruningGroup], *, shapes: dict[str, Shape] | None = None,
                n_remove: dict[int, int] | None = None) -> None:
        """With calibration: capture the Gram matrices of every consumer input of ``groups`` in one pass.
        Records the budgets for the iterative ranking."""
        self._budget = dict(n_remove or {})
        if self._cache is None:
            return
        values = values_by_name(model)
        requests = {_request(li) for g in groups for li in leaf_inputs(g, model, values)
                    if li.activation is not None}
        self._cache.ensure(model, sorted(requests, key=lambda r: (r.name, r.axis)), shapes)

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        values = values_by_name(model)
        leaves = leaf_inputs(group, model, values)
        if self._cache is not None:
            self._cache.ensure(model, [_request(li) for li in leaves if li.activation is not None])
        scores = np.zeros(group.units, dtype=np.float64)
        layers = []
        for li in leaves:
            w = const_array(values[li.weight.name])
            if w is None:
                continue
            wm = rows(w, li.weight.axis)
            h = self._hessian(group, li, wm.shape[0], values)
            layers.append((wm, h, li.weight.owner))
            scores += obs_saliency(wm, h, li.weight.owner, group.units, self.damp)
        budget = self._budget.get(group.id, 0)
        if self.iterative and budget and layers:
            order = greedy_obs_order(layers, group.units, budget, self.damp)
            ranked = np.full(group.units, np.inf)
            ranked[order] = np.arange(len(order)) - len(order) - 1.0  # below every (>= 0) saliency
            scores = np.where(np.isfinite(ranked), ranked, scores)
        return scores

    def _hessian(self, group: PruningGroup, li: LeafInput, k: int, values: dict[str, ir.Value]) -> np.ndarray:
        if self._cache is not None and li.activation is not None:
            st = self._cache.stats[(li.activation.name, li.activation.axis)]
            if st.gram is not None and st.gram.shape[0] == k:
                return st.second_moment()
        if li.activation is not None:
            traced = producer_root(group, values[li.activation.name])
            if traced is not None:
                root, nonlinear = traced
                r = const_array(values[root.name])
                aligned = np.array_equal(root.owner, li.activation.owner)
                if r is not None and r.shape[root.axis] == k and aligned:
                    rm = rows(r, root.axis)
                    h = rm @ rm.T
                    if nonlinear and self.nonlinear_diag:
                        h[np.diag_indices(k)] *= 1.0 + self.nonlinear_diag
                    return h
        self.notes.append(f"group {group.id}: '{li.weight.name}' scored with H = I (no single producing "
                          "root)")
        return np.eye(k)


def _request(li: LeafInput) -> StatRequest:
    return StatRequest(li.activation.name, li.activation.axis, gram=True)


def greedy_obs_order(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]], units: int, n_remove: int,
                     damp: float) -> list[int]:
    """The first ``n_remove`` units removed by greedy OBS over the consumer ``layers`` (rows, H, owner).

    Each step removes the unit with the least summed saliency (each layer's normalised by its output
    energy), then applies the OBS update to that layer's inverse Hessian and surviving rows.
    """
    state = []
    for w, h, owner in layers:
        k = w.shape[0]
        mean_diag = float(np.trace(h)) / max(k, 1)
        hd = h + (damp * mean_diag if mean_diag > 0 else damp) * np.eye(k)
        try:
            hinv = np.linalg.inv(hd)
        except np.linalg.LinAlgError:
            hinv = np.linalg.pinv(hd)
        energy = float(np.sum(w * (h @ w)))
        positions = [np.flatnonzero(owner == u) for u in range(units)]
        state.append([np.array(w, dtype=np.float64), hinv, 1.0 / energy if energy > 0 else 1.0, positions,
                      owner])
    alive = np.ones(units, dtype=bool)
    order: list[int] = []
    for _ in range(min(n_remove, units - 1)):
        sal = np.zeros(units)
        for w, hinv, scale, positions, owner in state:
            if all(p.size <= 1 for p in positions):
                per = (w * w).sum(axis=1) / np.maximum(np.diag(hinv), 1e-300)
                sal += per_unit(per, owner, units) * scale
            else:
                for u in np.flatnonzero(alive):
                    q = positions[u]
                    if q.size:
                        sal[u] += float(np.sum(w[q] * np.linalg.solve(hinv[np.ix_(q, q)], w[q]))) * scale
        sal[~alive] = np.inf
        u = int(np.argmin(sal))
        order.append(u)
        alive[u] = False
        for st in state:
            w, hinv, _, positions, _ = st
            q = positions[u]
            if not q.size:
                continue
            block_inv = np.linalg.inv(hinv[np.ix_(q, q)])
            cols = hinv[:, q] @ block_inv
            w -= cols @ w[q]
            hinv -= cols @ hinv[q, :]
            w[q] = 0.0
            hinv[q, :] = 0.0
            hinv[:, q] = 0.0
            hinv[q, q] = 1.0  # a removed position: unit diagonal keeps the saliency formula finite
    return order


def obs_saliency(w: np.ndarray, h: np.ndarray, owner: np.ndarray, units: int, damp: float) -> np.ndarray:
    """Per unit, ``tr(W_Q^T [(H^-1)_QQ]^-1 W_Q) / tr(W^T H W)`` for the rows ``Q`` the unit owns.

    Args:
        w: the consumer weight as rows (positions x everything else).
        h: the input second moment (positions x positions), undamped.
        owner: position -> unit (-1: never removed).
        units: number of units.
        damp: ridge damping relative to the mean diagonal of ``h``.
    """
    k = w.shape[0]
    mean_diag = float(np.trace(h)) / max(k, 1)
    ridge = damp * mean_diag if mean_diag > 0 else damp
    hd = h + ridge * np.eye(k)
    try:
        hinv = np.linalg.inv(hd)
    except np.linalg.LinAlgError:
        hinv = np.linalg.pinv(hd)
    energy = float(np.sum(w * (h @ w)))
    scale = 1.0 / energy if energy > 0 else 1.0
    owned = owner >= 0
    counts = np.bincount(owner[owned], minlength=units)
    if counts.max(initial=0) <= 1:
        per_pos = (w * w).sum(axis=1) / np.maximum(np.diag(hinv), 1e-300)
        return per_unit(per_pos, owner, units) * scale
    out = np.zeros(units, dtype=np.float64)
    for u in np.flatnonzero(counts):
        q = np.flatnonzero(owner == u)
        block = hinv[np.ix_(q, q)]
        wq = w[q]
        out[u] = float(np.sum(wq * np.linalg.solve(block, wq)))
    return out * scale
