"""Turn scores and a target into the units each group keeps."""

from __future__ import annotations

import math

import numpy as np


def units_to_remove(units: int, sparsity: float, min_units: int = 1) -> int:
    """How many of ``units`` a uniform ``sparsity`` removes (floor), keeping at least ``min_units``."""
    n = int(math.floor(sparsity * units + 1e-9))
    return max(0, min(n, units - max(1, min_units)))


def select_kept(scores: np.ndarray, n_remove: int) -> list[int]:
    """Indices kept after removing the ``n_remove`` lowest scores (ties remove the higher index)."""
    order = np.lexsort((-np.arange(scores.size), scores))  # ascending score, then descending index
    removed = set(order[:n_remove].tolist())
    return [i for i in range(scores.size) if i not in removed]
