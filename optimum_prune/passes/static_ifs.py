"""Fold the ``If`` nodes whose condition the shapes decide: the taken branch replaces the node.

Exporters turn a Python ``if`` on tensor sizes into an ``If`` when tracing cannot tell the sizes
apart: DeBERTa's attention asks "do the query and key lengths differ?" with
``If(Cast(Not(Equal(Shape(q)[-2], Shape(k)[-2]))))``. In a self-attention both lengths are the same
input's ``sequence_length``, so the answer is the same for every input, but the association rules
cannot look inside an ``If`` and the branch output (the attention scores, with their head axis)
leaves the head group without a rule.

The condition is evaluated on the inferred shapes, soundly: a dimension is equal to another only if
both are the same integer or the same symbol (symbols that shape inference merged were already proven
equal by a broadcast the model runs); anything not decided (two different symbols, a value computed
from data) leaves the ``If`` alone. Only shape arithmetic is followed: ``Shape``, constants, ``Gather``,
``Slice``, ``Squeeze``, ``Unsqueeze``, ``Concat``, ``Reshape``, ``Identity``, ``Cast``, ``Equal``,
``Not``, ``And``, ``Or``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from optimum_prune.graph import Shape

_UNKNOWN = None
_MAX_ELEMENTS = 64  # shape vectors and flags, not tensors
_DEFAULT_DOMAINS = ("", "ai.onnx")

IfDecision = tuple[str, bool]  # (node name, condition)


def fold_static_ifs(model: ir.Model, shapes: dict[str, Shape]) -> list[IfDecision]:
    """Replace every main-graph ``If`` whose condition ``shapes`` decide by its taken branch.

    Returns the decisions made, in order, so that :func:`apply_if_decisions` can redo them on a fresh
    copy of the same model without shape inference.
    """
    decisions: list[IfDecision] = []
    memo: dict[ir.Value, np.ndarray | None] = {}
    for node in list(model.graph):
        if node.op_type != "If" or node.domain not in _DEFAULT_DOMAINS or node.graph is not model.graph:
            continue
        cond = _static_value(node.inputs[0], shapes, memo)
        if cond is None or cond.size != 1 or cond.flat[0] is _UNKNOWN:
            continue
        taken = bool(cond.flat[0])
        if _inline_branch(model.graph, node, taken):
            decisions.append((node.name, taken))
    return decisions


def apply_if_decisions(model: ir.Model, decisions: Iterable[IfDecision]) -> int:
    """Fold the named ``If`` nodes to the recorded branches (the model must be the one decided on)."""
    by_name = {n.name: n for n in model.graph if n.op_type == "If"}
    folded = 0
    for name, taken in decisions:
        node = by_name.get(name)
        if node is not None and _inline_branch(model.graph, node, taken):
            folded += 1
    return folded


# ------------------------------------------------------------------------------------------------
def _inline_branch(graph: ir.Graph, node: ir.Node, taken: bool) -> bool:
    """Move the taken branch's nodes before ``node``, route its outputs, remove ``node`` and the
    condition's now dead computation. False (nothing changed) if a branch name clashes."""
    branch = node.attributes["then_branch" if taken else "else_branch"].as_graph()
    if len(branch.outputs) != len(node.outputs) or branch.initializers and any(
            name in graph.initializers for name in branch.initializers):
        return False
    for name, value in list(branch.initializers.items()):
        branch.initializers.pop(name)
        graph.register_initializer(value)
    inner_outputs = list(branch.outputs)
    branch.outputs.clear()
    moved = list(branch)
    branch.remove(moved)
    graph.insert_before(node, moved)
    cond_value = node.inputs[0]
    for out, inner in zip(node.outputs, inner_outputs, strict=True):
        name = out.name
        identity = ir.Node("", "Identity", [inner], name=f"{node.name}/{'then' if taken else 'else'}/{name}")
        graph.insert_before(node, identity)
        ir.convenience.replace_all_uses_with(out, identity.outputs[0], replace_graph_outputs=True)
        out.name = None
        identity.outputs[0].name = name
        identity.outputs[0].shape, identity.outputs[0].type = out.shape, out.type
    graph.remove(node, safe=True)
    _detach(node.attributes["else_branch" if taken else "then_branch"].as_graph())
    _remove_dead(graph, cond_value)
    return True


def _detach(subgraph: ir.Graph) -> None:
    """Drop the dropped branch's uses of outer values (onnx_ir lists them among the values' uses)."""
    for inner in ir.traversal.RecursiveGraphIterator(subgraph):
        for i in range(len(inner.inputs)):
            inner.replace_input_with(i, None)


def _remove_dead(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove the producers of ``value`` (and theirs) that nothing uses any more."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None or v.is_graph_output() or v.is_graph_input():
            continue
        producer = v.producer()
        if producer is None or producer.graph is not graph:
            continue
        if any(o.uses() or o.is_graph_output() for o in producer.outputs):
            continue
        inputs = list(producer.inputs)
        graph.remove(producer, safe=True)
        stack.extend(inputs)


# ------------------------------------------------------------------------------------------------
def _static_value(value: ir.Value | None, shapes: dict[str, Shape],
                  memo: dict[ir.Value, np.ndarray | None]) -> np.ndarray | None:
    """The value as an object array of ints / bools / symbol names / None (unknown element), or None
    when not even its shape is known."""
    if value is None:
        return None
    if value in memo:
        return memo[value]
    memo[value] = None  # cycles cannot occur in a valid graph; this also bounds the recursion on errors
    result = _compute(value, shapes, memo)
    if result is not None and result.size > _MAX_ELEMENTS:
        result = None
    memo[value] = result
    return result


def _constant(value: ir.Value) -> np.ndarray | None:
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is None or producer.op_type != "Constant" or "value" not in producer.attributes:
            return None
        tensor = producer.attributes["value"].as_tensor()
    if not (tensor.dtype.is_integer() or tensor.dtype == ir.DataType.BOOL):
        return None
    if int(np.prod(tensor.shape.numpy())) > _MAX_ELEMENTS:
        return None
    array = tensor.numpy()
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [bool(x) if array.dtype == np.bool_ else int(x) for x in array.flat]
    return out


def _ints(array: np.ndarray | None) -> list[int] | None:
    if array is None or not all(isinstance(x, int) and not isinstance(x, bool) for x in array.flat):
        return None
    return [int(x) for x in array.flat]


def _attr_int(node: ir.Node, name: str, default: int | None) -> int | None:
    return int(node.attributes[name].value) if name in node.attributes else default


def _compute(value: ir.Value, shapes: dict[str, Shape],
             memo: dict[ir.Value, np.ndarray | None]) -> np.ndarray | None:
    constant = _constant(value)
    if constant is not None:
        return constant
    node = value.producer()
    if node is None or node.domain not in _DEFAULT_DOMAINS or len(node.outputs) != 1:
        return None

    def arg(i: int) -> np.ndarray | None:
        return _static_value(node.inputs[i], shapes, memo) if i < len(node.inputs) else None

    op = node.op_type
    if op == "Shape":
        dims = shapes.get(node.inputs[0].name)
        if dims is None:
            return None
        rank = len(dims)
        start, end = _attr_int(node, "start", 0), _attr_int(node, "end", rank)
        out = np.empty(len(dims[slice(start, end)]), dtype=object)
        out.flat[:] = [d if isinstance(d, int | str) else _UNKNOWN for d in dims[slice(start, end)]]
        return out
    if op in ("Identity", "Cast"):
        x = arg(0)
        if x is None or op == "Identity":
            return x
        return _cast(x, ir.DataType(int(node.attributes["to"].value)))
    if op == "Gather":
        x, idx = arg(0), _ints(arg(1))
        if x is None or idx is None or x.ndim != 1 or _attr_int(node, "axis", 0) not in (0, -1):
            return None
        indices = arg(1)
        picked = [x[i] for i in idx if -len(x) <= i < len(x)]
        if len(picked) != len(idx):
            return None
        return np.array(picked, dtype=object).reshape(indices.shape)
    if op == "Slice":
        x, starts, ends = arg(0), _ints(arg(1)), _ints(arg(2))
        axes = _ints(arg(3)) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
        steps = _ints(arg(4)) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if x is None or x.ndim != 1 or None in (starts, ends, axes, steps) or axes not in ([0], [-1]):
            return None
        if len(starts) != 1 or len(ends) != 1 or len(steps) != 1 or steps[0] == 0:
            return None
        return x[slice(starts[0], ends[0], steps[0])]
    if op in ("Squeeze", "Unsqueeze"):
        x = arg(0)
        axes = _ints(arg(1)) if len(node.inputs) > 1 else (
            list(node.attributes["axes"].value) if "axes" in node.attributes else None)
        if x is None:
            return None
        try:
            return np.squeeze(x, axis=None if axes is None else tuple(axes)) if op == "Squeeze" else (
                np.expand_dims(x, tuple(axes)) if axes is not None else None)
        except (ValueError, np.exceptions.AxisError):
            return None
    if op == "Concat":
        parts = [_static_value(v, shapes, memo) for v in node.inputs]
        if any(p is None or p.ndim != 1 for p in parts):
            return None
        return np.concatenate(parts)
    if op == "Reshape":
        x, target = arg(0), _ints(arg(1))
        if x is None or target is None or any(t < -1 for t in target):
            return None
        try:
            return x.reshape([x.shape[i] if t == 0 and i < x.ndim else t for i, t in enumerate(target)])
        except ValueError:
            return None
    if op in ("Equal", "And", "Or"):
        a, b = arg(0), arg(1)
        if a is None or b is None:
            return None
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:
            return None
        fn: Callable[[object, object], object] = {"Equal": _equal, "And": _and, "Or": _or}[op]
        out = np.empty(a.shape, dtype=object)
        out.flat[:] = [fn(x, y) for x, y in zip(a.flat, b.flat, strict=True)]
        return out
    if op == "Not":
        x = arg(0)
        if x is None:
            return None
        out = np.empty(x.shape, dtype=object)
        out.flat[:] = [(not v) if isinstance(v, bool) else _UNKNOWN for v in x.flat]
        return out
    return None


def _cast(x: np.ndarray, to: ir.DataType) -> np.ndarray | None:
    out = np.empty(x.shape, dtype=object)
    if to == ir.DataType.BOOL:
        out.flat[:] = [bool(v) if isinstance(v, int) else _UNKNOWN for v in x.flat]
    elif to.is_integer():
        out.flat[:] = [int(v) if isinstance(v, int) else v for v in x.flat]  # symbols stay symbols
    else:
        return None
    return out


def _equal(x: object, y: object) -> object:
    if x is _UNKNOWN or y is _UNKNOWN:
        return _UNKNOWN
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    if isinstance(x, str) and isinstance(y, str) and x == y:
        return True
    if isinstance(x, str) != isinstance(y, str):
        number = x if isinstance(x, int) else y
        return False if number < 0 else _UNKNOWN  # a dimension is never negative
    return _UNKNOWN


def _and(x: object, y: object) -> object:
    if x is False or y is False:
        return False
    return True if x is True and y is True else _UNKNOWN


def _or(x: object, y: object) -> object:
    if x is True or y is True:
        return True
    return False if x is False and y is False else _UNKNOWN
