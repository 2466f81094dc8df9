"""Union-find over a group's channel units, vectorised with numpy.

A group starts with one unit per channel of its seed axis. When a rule finds that one tensor position
belongs to several units (a Reshape that splits a hidden axis into heads, a KV head shared by query
heads), those units are merged: granularity (head_dim, KV groups) emerges from the graph itself.
"""

from __future__ import annotations

import numpy as np


class UnitSets:
    """Disjoint sets of unit ids ``0..n-1``."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Canonical representative of each id; ``-1`` (no owner) maps to ``-1``."""
        ids = np.asarray(ids, dtype=np.int64)
        out = ids.copy()
        mask = out >= 0
        start = cur = out[mask]
        while True:
            nxt = self.parent[cur]
            if np.array_equal(nxt, cur):
                break
            cur = nxt
        if cur is not start:
            self.parent[start] = cur  # path compression: the next find is one step
        out[mask] = cur
        return out

    def union_rows(self, rows: np.ndarray) -> bool:
        """Merge the units in each row of a 2-D id array (``-1`` entries ignored). True if anything merged."""
        changed = False
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return False
        while True:
            roots = self.find(rows)
            big = np.where(roots < 0, np.iinfo(np.int64).max, roots)
            target = big.min(axis=1, keepdims=True)
            target = np.broadcast_to(target, roots.shape)
            mask = (roots >= 0) & (roots != target)
            if not mask.any():
                return changed
            changed = True
            src, dst = roots[mask], target[mask]
            # point each larger root at its row's smallest root; repeat until every row agrees
            np.minimum.at(self.parent, src, dst)

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Merge ``a[i]`` with ``b[i]`` for every i where both are owned."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        mask = (a >= 0) & (b >= 0)
        if not mask.any():
            return False
        return self.union_rows(np.stack([a[mask], b[mask]], axis=1))

    def canonical(self, owner: np.ndarray) -> np.ndarray:
        """``owner`` with every id replaced by its representative."""
        return self.find(owner)
