"""Apply kept units to a model in memory: slice constants, patch shape elements and attributes,
resize graph inputs/outputs, and drop stale intermediate shapes.

Every tensor axis a group touches keeps the positions whose owner is -1 or a kept unit. Slices of
all groups on one tensor are combined before the tensor is rewritten, one tensor at a time.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.errors import PlanMismatchError
from optimum_prune.graph import values_by_name
from optimum_prune.storage import LAZY_MIN_BYTES


def removed_mask(owner: np.ndarray, removed: set[int]) -> np.ndarray:
    """Boolean mask of the positions of ``owner`` that belong to a removed unit."""
    if not removed:
        return np.zeros(owner.shape, dtype=bool)
    return np.isin(owner, np.fromiter(removed, dtype=np.int64))


def apply_removals(model: ir.Model, groups: list[PruningGroup], removed: dict[int, set[int]]) -> None:
    """Prune ``model`` in place: for each group id in ``removed``, drop those units everywhere."""
    keep: dict[tuple[str, int], np.ndarray] = {}
    io_dims: dict[str, dict[int, int]] = defaultdict(dict)
    deltas: dict[tuple[str, str, int, str], int] = defaultdict(int)
    sizes: dict[tuple[str, str, int, str], int] = {}
    by_id = {g.id: g for g in groups}
    for gid, units in removed.items():
        if not units:
            continue
        group = by_id[gid]
        for s in group.slices:
            mask = ~removed_mask(s.owner, units)
            key = (s.name, s.axis)
            keep[key] = keep[key] & mask if key in keep else mask
            if s.io:
                io_dims[s.name][s.axis] = int(keep[key].sum())
        for p in group.patches:
            deltas[(p.kind, p.target, p.index, p.attribute)] += int(removed_mask(p.owner, units).sum())
            sizes[(p.kind, p.target, p.index, p.attribute)] = p.owner.size
    values = values_by_name(model)
    by_tensor: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for (name, axis), mask in keep.items():
        by_tensor[name].append((axis, mask))
    for name, axes in sorted(by_tensor.items()):
        value = values[name]
        holder = _holder(value)
        if holder is None:
            continue
        axes = sorted(axes)
        if isinstance(holder, ir.Value) and holder.const_value.nbytes >= LAZY_MIN_BYTES:
            _slice_lazily(holder, axes)
            continue
        _set_const(holder, _sliced(_get_const(holder), axes, name))
    nodes = {n.name: n for n in model.graph}
    for (kind, target, index, attribute), delta in sorted(deltas.items()):
        if delta == 0:
            continue
        if kind == "constant":
            holder = _holder(values[target])
            arr = _get_const(holder).copy()
            arr.reshape(-1)[index] -= delta
            _set_const(holder, arr)
        elif kind == "input":  # a one-element shape piece read at run time: now the pruned count
            node = nodes[target]
            count = ir.Value(name=f"{target}_input{index}_pruned", shape=ir.Shape([1]),
                             type=ir.TensorType(ir.DataType.INT64),
                             const_value=ir.tensor(np.array([sizes[(kind, target, index, attribute)] - delta],
                                                            dtype=np.int64)))
            model.graph.register_initializer(count)
            node.replace_input_with(index, count)
        elif kind == "attribute":
            node = nodes[target]
            attr = node.attributes[attribute]
            if attr.type == ir.AttributeType.INTS:
                vals = list(attr.value)
                vals[index] -= delta
                node.attributes[attribute] = ir.AttrInt64s(attribute, vals)
            else:
                node.attributes[attribute] = ir.AttrInt64(attribute, int(attr.value) - delta)
    for name, dims in io_dims.items():
        value = values[name]
        shape = list(value.shape) if value.shape is not None else None
        if shape is None:
            continue
        for axis, n in dims.items():
            shape[axis] = n
        value.shape = ir.Shape(shape)
    graph_outputs = {v.name for v in model.graph.outputs}
    for node in model.graph:
        for out in node.outputs:
            if out.name not in graph_outputs:
                out.shape = None


def _sliced(arr: np.ndarray, axes: list[tuple[int, np.ndarray]], name: str) -> np.ndarray:
    for axis, mask in axes:
        if arr.shape[axis] != mask.size:
            raise PlanMismatchError(f"tensor '{name}' axis {axis} has size {arr.shape[axis]}, plan expects "
                                    f"{mask.size}: the plan was made for another model")
        arr = np.compress(mask, arr, axis=axis)
    return np.ascontiguousarray(arr)


def _slice_lazily(holder: ir.Value, axes: list[tuple[int, np.ndarray]]) -> None:
    """Replace a large initializer by a tensor that slices its source when read (at write time), so
    the pruned weights are never all in memory at once."""
    source = holder.const_value
    shape = list(source.shape)
    for axis, mask in axes:
        if shape[axis] != mask.size:
            raise PlanMismatchError(f"tensor '{holder.name}' axis {axis} has size {shape[axis]}, plan "
                                    f"expects {mask.size}: the plan was made for another model")
        shape[axis] = int(mask.sum())
    name = holder.name
    holder.const_value = ir.LazyTensor(lambda: ir.tensor(_sliced(source.numpy(), axes, name), name=name),
                                       dtype=source.dtype, shape=ir.Shape(shape), name=name)
    holder.shape = ir.Shape(shape)


def _holder(value: ir.Value):
    """The initializer value or Constant node that stores ``value``'s data, or None."""
    if value.const_value is not None:
        return value
    node = value.producer()
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return node
    return None


def _get_const(holder) -> np.ndarray:
    if isinstance(holder, ir.Node):
        return holder.attributes["value"].value.numpy()
    return holder.const_value.numpy()


def _set_const(holder, arr: np.ndarray) -> None:
    if isinstance(holder, ir.Node):
        holder.attributes["value"] = ir.AttrTensor("value", ir.tensor(arr))
        holder.outputs[0].shape = ir.Shape(arr.shape)
    else:
        holder.const_value = ir.tensor(arr, name=holder.name)
        holder.shape = ir.Shape(arr.shape)
