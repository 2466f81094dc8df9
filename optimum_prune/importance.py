"""Importance criteria: a callable per criterion that scores each unit of a group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.errors import ConfigError
from optimum_prune.graph import const_array


@dataclass(frozen=True)
class MagnitudeImportance:
    """Data-free magnitude of a unit's root weights: the Lp norm over all its root slices.

    ``p=2`` is the ``l2`` criterion, ``p=1`` the ``l1`` criterion.
    """

    p: int = 2

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        scores = np.zeros(group.units, dtype=np.float64)
        values = _values_by_name(model)
        roots = group.root_slices() or [s for s in group.slices if s.constant]
        for s in roots:
            arr = const_array(values[s.name])
            if arr is None:
                continue
            arr = np.moveaxis(np.asarray(arr, dtype=np.float64), s.axis, 0).reshape(arr.shape[s.axis], -1)
            per_pos = (np.abs(arr) ** self.p).sum(axis=1)
            owned = s.owner >= 0
            scores += np.bincount(s.owner[owned], weights=per_pos[owned], minlength=group.units)
        return scores ** (1.0 / self.p)


def _values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    values = dict(model.graph.initializers)
    for node in model.graph:
        for out in node.outputs:
            values[out.name] = out
    return values


def get_importance(name: str):
    """The importance callable for a criterion name."""
    if name == "l2":
        return MagnitudeImportance(p=2)
    if name == "l1":
        return MagnitudeImportance(p=1)
    raise ConfigError(f"unknown importance criterion {name!r}; allowed: 'l1', 'l2'")
