"""Evaluate a shape expression as a function of one channel dimension, vectorised over its values.

Exporters compute some Slice bounds from the tensor's own shape: ``torch.chunk(x, 2, dim=-1)`` under
the TorchScript exporter becomes ``end = ((Gather(Shape(x), -1) + 1) / 2) * 1``. Such a bound is not
a constant to patch: the graph recomputes it from the pruned shape. Whether the recomputed bound still
lands on the right position depends on the expression, so :func:`evaluate_dim_expr` evaluates it for
every candidate value ``D'`` of the channel dimension at once (each intermediate tensor carries a
leading candidate axis of size 1 or ``n``) and the rule compares the results with where the bound must
land after pruning.

The only non-constant leaf allowed is ``Shape(x)`` of the sliced tensor itself: its channel axis is the
symbol, its other axes are used only when they are known integers (the caller checks that those axes do
not shrink with the group). The ops are the shape-arithmetic ones exporters emit (Constant, Identity,
Shape, Gather, Slice, Squeeze, Unsqueeze, Concat, Cast, Reshape, Transpose, ConstantOfShape, Add,
Sub, Mul, Div, Mod, Neg, Abs, Max, Min, Floor, Ceil), with ONNX Runtime's integer semantics (``Div``
truncates towards zero).
Anything else raises :class:`ShapeExprError`. A candidate for which the expression is undefined
(division by zero, an unknown dimension used, a non-finite float cast to int) is marked unknown
rather than failing the whole evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from optimum_prune.graph import Shape, const_array

_MAX_DEPTH = 64
_MAX_NODES = 256


class ShapeExprError(Exception):
    """The expression uses an op, a leaf or a form the evaluator does not support."""


@dataclass
class DimExpr:
    """One element of a shape expression evaluated for every candidate channel dimension.

    ``values[k]`` is the element when the channel dimension is ``dims[k]``; ``known[k]`` says whether
    it is defined there. ``reads`` lists the other axes of the sliced tensor the expression may read.
    """

    dims: np.ndarray
    values: np.ndarray
    known: np.ndarray
    reads: set[int] = field(default_factory=set)


@dataclass
class _T:
    """A tensor for every candidate: ``data`` has a leading candidate axis of size 1 or n."""

    data: np.ndarray
    known: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def invariant(self, what: str) -> np.ndarray:
        """The value when it does not depend on the candidate (indices, axes, target shapes)."""
        if self.data.shape[0] != 1 and not (self.data == self.data[:1]).all():
            raise ShapeExprError(f"{what} depends on the channel dimension")
        if not self.known.all():
            raise ShapeExprError(f"{what} reads an unknown dimension")
        return self.data[0]


def evaluate_dim_expr(value: ir.Value, index: int, x: ir.Value | None, axis: int, dims: np.ndarray,
                      shape_of: Callable[[ir.Value], Shape | None], *,
                      float_shapes_unknown: bool = False) -> DimExpr:
    """Element ``index`` of the 1-D (or scalar) ``value`` for every channel dimension in ``dims``.

    ``x`` is the tensor whose ``axis`` is the channel dimension; ``shape_of`` gives inferred shapes.
    With ``x=None`` there is no channel dimension: ``Shape`` of any tensor reads its static dimensions
    (unknown where symbolic), so the result is the element's value when the graph fixes it; with
    ``float_shapes_unknown`` the dimensions of floating-point tensors (activations, which pruning may
    shrink) are all unknown, and only those of integer tensors (shape vectors) are read.
    Raises :class:`ShapeExprError` when the expression cannot be evaluated.
    """
    ev = _Evaluator(x, axis, np.asarray(dims, dtype=np.int64), shape_of, float_shapes_unknown)
    t = ev.eval(value, 0)
    flat_data = t.data.reshape(t.data.shape[0], -1)
    flat_known = np.broadcast_to(t.known, t.data.shape).reshape(t.data.shape[0], -1)
    if index >= flat_data.shape[1]:
        raise ShapeExprError(f"'{value.name}' has no element {index}")
    data = np.broadcast_to(flat_data[:, index], ev.dims.shape)
    known = np.broadcast_to(flat_known[:, index], ev.dims.shape)
    if data.dtype.kind not in "iu":
        raise ShapeExprError(f"'{value.name}' is not an integer tensor")
    return DimExpr(dims=ev.dims, values=data.astype(np.int64), known=known.copy(), reads=ev.reads)


def is_marker(value: ir.Value, index: int, shape_of: Callable[[ir.Value], Shape | None]) -> bool:
    """Whether ``value`` holds known values <= 0 (all of a constant, element ``index`` of a computed
    vector): the ``-1`` marker exporters compare a shape with in ``Where(shape == -1, 1, shape)``. A count
    of at least one never equals it, pruned or not."""
    arr = const_array(value)
    if arr is not None:
        return arr.size > 0 and bool((arr <= 0).all())
    try:
        expr = evaluate_dim_expr(value, index, None, -1, np.zeros(1, dtype=np.int64), shape_of,
                                 float_shapes_unknown=True)
    except ShapeExprError:
        return False
    return bool(expr.known.all() and (expr.values <= 0).all())


class _Evaluator:
    def __init__(self, x: ir.Value | None, axis: int, dims: np.ndarray,
                 shape_of: Callable[[ir.Value], Shape | None], float_shapes_unknown: bool = False) -> None:
        self.x = x
        self.float_shapes_unknown = float_shapes_unknown
        self.axis = axis
        self.dims = dims
        self.shape_of = shape_of
        self.memo: dict[int, _T] = {}
        self.reads: set[int] = set()

    def eval(self, value: ir.Value | None, depth: int) -> _T:
        if value is None or not value.name:
            raise ShapeExprError("missing input")
        key = id(value)
        if key in self.memo:
            return self.memo[key]
        if depth > _MAX_DEPTH or len(self.memo) > _MAX_NODES:
            raise ShapeExprError("expression too large")
        arr = const_array(value)
        if arr is not None:
            arr = np.asarray(arr)
            if arr.dtype.kind not in "iufb":
                raise ShapeExprError(f"constant '{value.name}' of type {arr.dtype}")
            out = _T(arr[None], np.ones((1,) + arr.shape, dtype=bool))
        else:
            node = value.producer()
            if node is None:
                raise ShapeExprError(f"'{value.name}' is a graph input")
            if node.domain not in ("", "ai.onnx"):
                raise ShapeExprError(f"op {node.domain}::{node.op_type}")
            handler = _OPS.get(node.op_type)
            if handler is None:
                raise ShapeExprError(f"op {node.op_type} ('{node.name}')")
            out = handler(self, node, depth + 1)
        self.memo[key] = out
        return out

    def arg(self, node: ir.Node, i: int, depth: int) -> _T | None:
        if len(node.inputs) <= i or node.inputs[i] is None or not node.inputs[i].name:
            return None
        return self.eval(node.inputs[i], depth)

    def ints(self, node: ir.Node, i: int, depth: int, what: str) -> list[int] | None:
        t = self.arg(node, i, depth)
        if t is None:
            return None
        return [int(v) for v in t.invariant(f"{node.op_type} {what}").reshape(-1)]


# ---------------------------------------------------------------------------------------------------
# helpers


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _align(*ts: _T) -> list[tuple[np.ndarray, np.ndarray]]:
    """Insert size-1 axes after the candidate axis so that the tensor parts broadcast as ONNX does."""
    rank = max(len(t.shape) for t in ts)
    out = []
    for t in ts:
        pad = rank - len(t.shape)
        shape = (t.data.shape[0],) + (1,) * pad + t.shape
        out.append((t.data.reshape(shape), np.broadcast_to(t.known, t.data.shape).reshape(shape)))
    return out


def _take(t: _T, indices: np.ndarray, axis: int) -> _T:
    known = np.broadcast_to(t.known, t.data.shape)
    return _T(np.take(t.data, indices, axis=axis + 1), np.take(known, indices, axis=axis + 1))


def _norm(axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < max(rank, 1):
        raise ShapeExprError(f"axis {axis} out of range for rank {rank}")
    return a


# ---------------------------------------------------------------------------------------------------
# ops


def _identity(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    return ev.eval(node.inputs[0], depth)


def _shape(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    src = node.inputs[0]
    if ev.x is not None and src is not ev.x:
        raise ShapeExprError(f"Shape of '{src.name}', not of the sliced tensor")
    s = ev.shape_of(src)
    if s is None:
        raise ShapeExprError(f"unknown rank of '{src.name}'")
    rank = len(s)
    start = int(_attr(node, "start", 0))
    end = _attr(node, "end", None)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else int(end)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    n = ev.dims.size
    data = np.zeros((n, max(end - start, 0)), dtype=np.int64)
    known = np.zeros_like(data, dtype=bool)
    if ev.x is None and ev.float_shapes_unknown and not _is_integer(src):
        return _T(data, known)
    for j, k in enumerate(range(start, end)):
        if ev.x is not None and k == ev.axis:
            data[:, j] = ev.dims
            known[:, j] = True
        elif isinstance(s[k], int):
            data[:, j] = s[k]
            known[:, j] = True
            ev.reads.add(k)
    return _T(data, known)


_SAME_TYPE_OPS = frozenset({"Identity", "Concat", "Unsqueeze", "Squeeze", "Gather", "Slice", "Reshape",
                            "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min"})


def _is_integer(value: ir.Value, depth: int = 0) -> bool:
    """Whether ``value`` is an integer tensor: its declared type, or traced through the shape ops that
    produce it (exports rarely annotate intermediate values). Unknown counts as not integer."""
    if value.dtype is not None:
        return value.dtype.is_integer()
    arr = const_array(value)
    if arr is not None:
        return np.asarray(arr).dtype.kind in "iu"
    node = value.producer()
    if node is None or depth > 16:
        return False
    if node.op_type in ("Shape", "Size"):
        return True
    if node.op_type == "Cast":
        to = _attr(node, "to", None)
        return to is not None and ir.DataType(int(to)).is_integer()
    if node.op_type in _SAME_TYPE_OPS and node.inputs and node.inputs[0] is not None:
        return _is_integer(node.inputs[0], depth + 1)
    return False


def _gather(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    data = ev.eval(node.inputs[0], depth)
    idx = ev.eval(node.inputs[1], depth).invariant("Gather indices").astype(np.int64)
    axis = _norm(int(_attr(node, "axis", 0)), len(data.shape))
    size = data.shape[axis]
    if ((idx < -size) | (idx >= size)).any():
        raise ShapeExprError("Gather index out of range")
    return _take(data, np.where(idx < 0, idx + size, idx), axis)


def _slice(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    data = ev.eval(node.inputs[0], depth)
    rank = len(data.shape)
    starts = ev.ints(node, 1, depth, "starts")
    ends = ev.ints(node, 2, depth, "ends")
    if starts is None or ends is None:
        raise ShapeExprError("Slice without starts/ends")
    axes = ev.ints(node, 3, depth, "axes") or list(range(len(starts)))
    steps = ev.ints(node, 4, depth, "steps") or [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = _norm(a, rank)
        d = data.shape[a]
        if st == 0:
            raise ShapeExprError("Slice step 0")
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        data = _take(data, np.arange(s, e, st, dtype=np.int64), a)
    return data


def _squeeze_axes(ev: _Evaluator, node: ir.Node, depth: int) -> list[int] | None:
    if len(node.inputs) > 1:
        return ev.ints(node, 1, depth, "axes")
    a = _attr(node, "axes", None)
    return None if a is None else [int(v) for v in a]


def _squeeze(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    t = ev.eval(node.inputs[0], depth)
    axes = _squeeze_axes(ev, node, depth)
    rank = len(t.shape)
    axes = [i for i in range(rank) if t.shape[i] == 1] if axes is None else [_norm(a, rank) for a in axes]
    if any(t.shape[a] != 1 for a in axes):
        raise ShapeExprError("Squeeze of an axis longer than 1")
    shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    c = t.data.shape[0]
    return _T(t.data.reshape((c,) + shape), np.broadcast_to(t.known, t.data.shape).reshape((c,) + shape))


def _unsqueeze(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    t = ev.eval(node.inputs[0], depth)
    axes = _squeeze_axes(ev, node, depth)
    if axes is None:
        raise ShapeExprError("Unsqueeze without axes")
    rank = len(t.shape) + len(axes)
    axes = sorted(_norm(a, rank) for a in axes)
    it = iter(t.shape)
    shape = tuple(1 if i in axes else next(it) for i in range(rank))
    c = t.data.shape[0]
    return _T(t.data.reshape((c,) + shape), np.broadcast_to(t.known, t.data.shape).reshape((c,) + shape))


def _reshape(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    t = ev.eval(node.inputs[0], depth)
    target = ev.ints(node, 1, depth, "shape")
    if target is None:
        raise ShapeExprError("Reshape without a shape")
    allowzero = bool(_attr(node, "allowzero", 0))
    shape = [t.shape[i] if d == 0 and not allowzero and i < len(t.shape) else d for i, d in enumerate(target)]
    if shape.count(-1) > 1:
        raise ShapeExprError("Reshape with two -1")
    total = int(np.prod(t.shape, dtype=np.int64))
    if -1 in shape:
        rest = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
        if rest == 0 or total % rest:
            raise ShapeExprError("Reshape -1 does not divide")
        shape[shape.index(-1)] = total // rest
    if int(np.prod(shape, dtype=np.int64)) != total:
        raise ShapeExprError("Reshape changes the element count")
    c = t.data.shape[0]
    return _T(t.data.reshape([c, *shape]), np.broadcast_to(t.known, t.data.shape).reshape([c, *shape]))


def _concat(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    parts = [ev.eval(v, depth) for v in node.inputs if v is not None and v.name]
    if not parts:
        raise ShapeExprError("empty Concat")
    rank = len(parts[0].shape)
    axis = _norm(int(_attr(node, "axis", 0)), rank)
    c = max(p.data.shape[0] for p in parts)
    data = [np.broadcast_to(p.data, (c,) + p.shape) for p in parts]
    known = [np.broadcast_to(p.known, (c,) + p.shape) for p in parts]
    return _T(np.concatenate(data, axis=axis + 1), np.concatenate(known, axis=axis + 1))


def _cast(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    t = ev.eval(node.inputs[0], depth)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(_attr(node, "to"))))
    except (KeyError, TypeError, ValueError) as e:
        raise ShapeExprError(f"Cast to {_attr(node, 'to')}") from e
    if dtype.kind not in "iufb":
        raise ShapeExprError(f"Cast to {dtype}")
    known = np.broadcast_to(t.known, t.data.shape).copy()
    src = t.data
    if src.dtype.kind == "f" and dtype.kind in "iu":
        finite = np.isfinite(src)
        known &= finite
        src = np.where(finite, src, 0)
    with np.errstate(all="ignore"):
        return _T(src.astype(dtype), known)


def _constant_of_shape(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    shape = [int(d) for d in ev.eval(node.inputs[0], depth).invariant("ConstantOfShape shape").reshape(-1)]
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) > 4096:
        raise ShapeExprError("ConstantOfShape of a negative or large shape")
    fill = _attr(node, "value", None)
    value = np.zeros(1, np.float32) if fill is None else np.asarray(fill.numpy()).reshape(-1)
    if value.dtype.kind not in "iufb":
        raise ShapeExprError(f"ConstantOfShape of type {value.dtype}")
    data = np.full([1, *shape], value[0], dtype=value.dtype)
    return _T(data, np.ones_like(data, dtype=bool))


def _transpose(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
    t = ev.eval(node.inputs[0], depth)
    rank = len(t.shape)
    perm = _attr(node, "perm", None)
    perm = list(reversed(range(rank))) if perm is None else [_norm(int(p), rank) for p in perm]
    order = [0, *(p + 1 for p in perm)]
    return _T(np.transpose(t.data, order), np.transpose(np.broadcast_to(t.known, t.data.shape), order))


def _binary(fn: Callable[[np.ndarray, np.ndarray, ir.Node], tuple[np.ndarray, np.ndarray]]):
    def op(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
        a, b = ev.eval(node.inputs[0], depth), ev.eval(node.inputs[1], depth)
        (ad, ak), (bd, bk) = _align(a, b)
        with np.errstate(all="ignore"):
            data, ok = fn(ad, bd, node)
        return _T(data, ak & bk & ok)

    return op


def _add(a, b, node):
    return a + b, np.ones((), dtype=bool)


def _sub(a, b, node):
    return a - b, np.ones((), dtype=bool)


def _mul(a, b, node):
    return a * b, np.ones((), dtype=bool)


def _div(a, b, node):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        ok = b != 0
        safe = np.where(ok, b, 1)
        q = np.abs(a) // np.abs(safe)
        return np.where((a < 0) != (safe < 0), -q, q).astype(np.result_type(a, b)), ok
    q = a / b
    return q, np.isfinite(q)


def _mod(a, b, node):
    fmod = int(_attr(node, "fmod", 0))
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        ok = b != 0
        safe = np.where(ok, b, 1)
        return (np.fmod(a, safe) if fmod else np.mod(a, safe)), ok
    if not fmod:
        raise ShapeExprError("float Mod without fmod")
    r = np.fmod(a, b)
    return r, np.isfinite(r)


def _unary(fn: Callable[[np.ndarray], np.ndarray], float_only: bool = False):
    def op(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
        t = ev.eval(node.inputs[0], depth)
        if float_only and t.data.dtype.kind != "f":
            raise ShapeExprError(f"{node.op_type} of an integer tensor")
        return _T(fn(t.data), t.known)

    return op


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def op(ev: _Evaluator, node: ir.Node, depth: int) -> _T:
        ts = [ev.eval(v, depth) for v in node.inputs if v is not None and v.name]
        pairs = _align(*ts)
        data, known = pairs[0]
        for d, k in pairs[1:]:
            data, known = fn(data, d), known & k
        return _T(data, known)

    return op


_OPS: dict[str, Callable[[_Evaluator, ir.Node, int], _T]] = {
    "Identity": _identity,
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Concat": _concat,
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Transpose": _transpose,
    "Add": _binary(_add),
    "Sub": _binary(_sub),
    "Mul": _binary(_mul),
    "Div": _binary(_div),
    "Mod": _binary(_mod),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Floor": _unary(np.floor, float_only=True),
    "Ceil": _unary(np.ceil, float_only=True),
    "Max": _variadic(np.maximum),
    "Min": _variadic(np.minimum),
}
