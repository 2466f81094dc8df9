"""Data-free weight-magnitude criteria: ``l1`` / ``l2`` on the root weights, ``tree`` on the whole group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.errors import ConfigError
from optimum_prune.importance.base import Importance, per_unit, rows, slice_array, values_by_name


@dataclass(frozen=True)
class MagnitudeImportance(Importance):
    """Data-free magnitude of a unit's root weights: the Lp norm over all its root slices.

    ``p=2`` is the ``l2`` criterion, ``p=1`` the ``l1`` criterion.
    """

    name: ClassVar[str] = "l2"
    p: int = 2

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        scores = np.zeros(group.units, dtype=np.float64)
        values = values_by_name(model)
        roots = group.root_slices() or [s for s in group.slices if s.constant]
        for s in roots:
            arr = slice_array(s, values)
            if arr is None:
                continue
            per_pos = (np.abs(rows(arr, s.axis)) ** self.p).sum(axis=1)
            scores += per_unit(per_pos, s.owner, group.units)
        return scores ** (1.0 / self.p)


@dataclass(frozen=True)
class TreeImportance(Importance):
    """ONNXPruner's tree-level importance: every constant tensor of the group votes.

    For each float constant the group slices (root weights, biases, normalisation scales, the
    consumers' leaf slices, on every merged tree), the Lp norm of each unit's slice is divided by the
    sum of those norms over the tensor's units, so each tensor contributes shares summing to one
    whatever its scale; a unit's score is the sum of its shares over all tensors. A unit that is small
    in its producer but large in its consumers (or the reverse) is judged on the whole tree.

    Args:
        p: the norm (1 or 2).
        leaves: include the consumers' leaf slices (True) or only the producing side (False).
    """

    name: ClassVar[str] = "tree"
    p: int = 2
    leaves: bool = True

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ConfigError(f"TreeImportance.p must be 1 or 2, got {self.p!r}")

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        values = values_by_name(model)
        scores = np.zeros(group.units, dtype=np.float64)
        seen: set[tuple[str, int]] = set()
        for s in group.slices:
            if not s.constant or (s.leaf and not self.leaves) or (s.name, s.axis) in seen:
                continue
            seen.add((s.name, s.axis))
            arr = slice_array(s, values)
            if arr is None or arr.ndim == 0:
                continue
            per_pos = (np.abs(rows(arr, s.axis)) ** self.p).sum(axis=1)
            norms = per_unit(per_pos, s.owner, group.units) ** (1.0 / self.p)
            total = norms.sum()
            if total > 0:
                scores += norms / total
        return scores
