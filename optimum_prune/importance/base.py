"""What every criterion shares: the ``Importance`` interface and helpers that read a group's tensors.

A criterion is a small callable object configured by its constructor: ``criterion(group, model)``
returns one score per unit of ``group`` (higher means keep). Criteria that need a pass over the model
(calibration statistics, output fidelity) do it once for all groups in :meth:`Importance.prepare`,
which the pruner calls before scoring; called without it they prepare the one group they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup, TensorSlice
from optimum_prune.graph import Shape, const_array, is_constant, values_by_name  # noqa: F401 (re-exported)


class Importance:
    """Base class of the importance criteria."""

    name: ClassVar[str] = ""
    uses_calibration: ClassVar[bool] = False  # takes calibration data when given
    requires_calibration: ClassVar[bool] = False  # cannot score without it

    def prepare(self, model: ir.Model, groups: list[PruningGroup], *, shapes: dict[str, Shape] | None = None,
                n_remove: dict[int, int] | None = None) -> None:
        """Do the work shared by ``groups`` before they are scored (default: nothing).

        Args:
            model: the model the groups were built on (never modified).
            groups: the groups that will be scored.
            shapes: inferred shapes of ``model``'s values, when known.
            n_remove: units each group will lose, for criteria that iterate towards the budget.
        """

    def __call__(self, group: PruningGroup, model: ir.Model) -> np.ndarray:
        """One score per unit of ``group`` (higher is more important)."""
        raise NotImplementedError


def rows(arr: np.ndarray, axis: int) -> np.ndarray:
    """``arr`` as a float64 matrix with one row per position of ``axis``."""
    arr = np.asarray(arr, dtype=np.float64)
    return np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)


def per_unit(per_position: np.ndarray, owner: np.ndarray, units: int) -> np.ndarray:
    """Sum ``per_position`` into the units of ``owner`` (unowned positions, -1, are left out)."""
    owned = owner >= 0
    return np.bincount(owner[owned], weights=per_position[owned], minlength=units).astype(np.float64)


def slice_array(s: TensorSlice, values: dict[str, ir.Value]) -> np.ndarray | None:
    """The constant content of a constant slice's tensor (None when it is not constant or not float)."""
    arr = const_array(values.get(s.name))
    if arr is None or not np.issubdtype(np.asarray(arr).dtype, np.floating):
        return None
    return np.asarray(arr)


@dataclass
class LeafInput:
    """A consumer of the group: its weight slice (the leaf), the node, and its data input on the same
    channel positions (``activation``; None when no tracked input matches)."""

    weight: TensorSlice
    node: ir.Node
    activation: TensorSlice | None


def leaf_inputs(group: PruningGroup, model: ir.Model,
                values: dict[str, ir.Value] | None = None) -> list[LeafInput]:
    """Every (leaf weight, consumer node) pair of ``group`` with the consumer's matching data input.

    For ``y = x @ W`` with the leaf on the rows of ``W``, the data input is ``x`` on its last axis; for a
    Conv, ``x`` on axis 1. It is found among the group's tracked tensors, so every op rule that marks a
    leaf (MatMul, Gemm, Conv, ConvTranspose, Attention, ...) is covered without a table here.
    """
    values = values if values is not None else values_by_name(model)
    tracked: dict[str, list[TensorSlice]] = {}
    for s in group.slices:
        if not s.constant and s.merged_with is None:  # a batch-merged axis is longer than its owner
            tracked.setdefault(s.name, []).append(s)
    out: list[LeafInput] = []
    for s in group.leaf_slices():
        value = values.get(s.name)
        if value is None:
            continue
        for node, _ in sorted(value.uses(), key=lambda u: (u[0].name or "", u[1])):
            act = None
            for inp in node.inputs:
                if inp is None or inp is value or is_constant(inp):
                    continue
                candidates = [t for t in tracked.get(inp.name, []) if t.owner.size == s.owner.size]
                same = [t for t in candidates if np.array_equal(t.owner, s.owner)]
                if same or candidates:
                    act = (same or candidates)[0]
                    break
            out.append(LeafInput(s, node, act))
    return out


_LINEAR_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Reshape", "Transpose", "Identity", "Cast", "Squeeze", "Unsqueeze",
    "Flatten", "MatMul", "FusedMatMul", "Gemm", "Conv", "ConvTranspose", "Concat", "Split", "Slice", "Gather",
    "Expand", "Pad", "BiasAdd",
})


def producer_root(group: PruningGroup, value: ir.Value, *,
                  max_values: int = 256) -> tuple[TensorSlice, bool] | None:
    """The one root slice that produces ``value``'s channels, and whether a non-linearity lies between.

    Walks producers backwards through the group's tracked tensors until root weights are met. At a
    product of two activations (attention ``P @ V``) only the right operand, which carries the channels,
    is followed. Returns None when no root or several roots are found (a residual stream, packed QKV
    weights whose channel count differs, a graph input on the way).
    """
    roots = set(group.roots)
    root_names = {n for n, _ in roots}
    by_key = {(s.name, s.axis): s for s in group.slices}
    tracked = {s.name for s in group.slices}
    found: set[tuple[str, int]] = set()
    nonlinear = False
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v.name in seen:
            continue
        seen.add(v.name)
        if len(seen) > max_values:
            return None
        node = v.producer()
        if node is None:
            return None
        inputs = [i for i in node.inputs if i is not None and i.name]
        hits = {(i.name, a) for i in inputs if i.name in root_names for (n, a) in roots if n == i.name}
        if hits:
            found |= hits
            continue
        nexts = [i for i in inputs if i.name in tracked and not is_constant(i)]
        if node.op_type in ("MatMul", "FusedMatMul") and len(nexts) == 2:
            nexts = [node.inputs[1]]
        elif len(nexts) >= 2 and node.op_type not in ("Add", "Sub", "Concat"):
            nonlinear = True
        if node.op_type not in _LINEAR_OPS:
            nonlinear = True
        stack.extend(nexts)
    if len(found) != 1:
        return None
    key = found.pop()
    return (by_key[key], nonlinear) if key in by_key else None
