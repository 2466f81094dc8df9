"""Compute only the tokens a model's outputs read: hoist a constant-index ``Gather`` above token-wise ops.

A sequence classifier with first-token pooling (BERT's pooler, RoBERTa's and DistilBERT's heads, ViT's
CLS token) reads one position of the last hidden state: ``Gather(h, 0, axis=1)``. Everything between
the last attention and that ``Gather`` (output projection, residual adds, layer norms, the whole last
feed-forward block) works on each token alone, so the ``Gather`` can move above it and those ops then
run on one token instead of all of them. This is exact: the same numbers come out, with less work.
ONNX Runtime does the same in its training builds (the compute optimizer's "upstream Gather"); its
inference builds do not.

A ``Gather`` moves above its input's producer when

- its index is a constant scalar, and every consumer of that input is a ``Gather`` with the same axis
  and index (they merge), and the input is not a graph output;
- the producer has a rule below that says how each of its inputs carries the gathered axis, and the
  producer's other outputs are unused.

Each input of the producer is gathered in turn (index 0 where it broadcasts a size-1 dimension along
the axis, nothing where it does not have the axis). Anything else (attention, reshapes, dynamic
quantization, whose scale spans the whole tensor) stops the move: the pass never changes what a model
computes. Shapes come from :func:`optimum_prune.graph.infer_shapes`; a dimension it cannot resolve also
stops the move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optimum_prune.graph import Shape, const_array, fresh_name, infer_shapes, redirect_outputs, value_names
from optimum_prune.passes.attention_query import gather_attention_queries

# ops that apply numpy broadcasting to all their inputs and compute each output element from the
# elements at the same position
_ELEMENTWISE = frozenset({
    "Abs", "Add", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Cast", "Ceil", "Clip", "Cos",
    "Div", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid",
    "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Min",
    "Mish", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "PRelu", "Reciprocal", "Relu", "Round", "Selu",
    "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tan", "Tanh", "Where",
    "Xor", "And",
})
# ONNX Runtime contrib ops that normalise or activate over the last axis, every other axis token-wise:
# (op, number of leading inputs that carry the activations' shape; the rest are per-channel vectors)
_LAST_AXIS_CONTRIB = {
    "SkipLayerNormalization": 2,
    "SkipSimplifiedLayerNormalization": 2,
    "BiasGelu": 1,
    "FastGelu": 1,
    "Gelu": 1,
    "QuickGelu": 1,
    "BiasAdd": 2,
}
_MICROSOFT = "com.microsoft"


@dataclass
class HoistReport:
    """What :func:`hoist_token_gathers` did.

    Attributes:
        moved: how many ops now run on the gathered positions only (each move is one op).
        ops: the moved ops' types with counts.
        stopped_at: for each remaining constant-index ``Gather`` fed by an op, why it stops there
            (``"<op> <node>: <reason>"``).
    """

    moved: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    stopped_at: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"moved": self.moved, "ops": dict(sorted(self.ops.items())), "stopped_at": self.stopped_at}


@dataclass(frozen=True)
class _Moved:
    op_type: str


@dataclass(frozen=True)
class _Take:
    """Gather ``index`` on ``axis`` of one input (``index`` 0 when the input broadcasts the axis)."""

    axis: int
    index: int


# a rule maps (node, gathered output axis, output rank, shape lookup) to the per-input takes (None: input
# unchanged) and the new attributes, or to a reason string when the op cannot move
_Plan = tuple[list[_Take | None], dict[str, ir.Attr]]
_Rule = Callable[[ir.Node, int, int, int, Callable[[ir.Value | None], Shape | None]], "_Plan | str"]


def hoist_token_gathers(model: ir.Model, *, max_moves: int = 10_000, attention_queries: bool = False
                        ) -> HoistReport:
    """Move every constant-index ``Gather`` of ``model`` as far up through token-wise ops as it can go.

    With ``attention_queries``, a fused ``Attention`` the moved ``Gather`` then reads is rewritten to
    compute that one position's query
    (:func:`~optimum_prune.passes.attention_query.gather_attention_queries`).

    The model is changed in place; call on a copy to keep the original. Returns what moved and where
    each ``Gather`` stopped. Outputs are unchanged up to floating-point rounding of the same operations
    (the moved ops compute the same values for the positions that are read).
    """
    graph = model.graph
    shapes = infer_shapes(model)
    indices: dict[int, ir.Value] = {}

    def shape_of(value: ir.Value | None) -> Shape | None:
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape)
        producer = value.producer()
        if producer is not None and producer.op_type in ("Constant", "Identity"):
            arr = const_array(value)
            if arr is not None:
                return tuple(arr.shape)
        if value.name in shapes:
            return shapes[value.name]
        if value.shape is not None:  # the values this pass creates carry their shape
            return tuple(d if isinstance(d, int) else getattr(d, "value", None) for d in value.shape.dims)
        return None

    def index_value(i: int) -> ir.Value:
        if i not in indices:
            name = fresh_name(value_names(graph), f"optimum_prune_token_index_{i}".replace("-", "m"))
            value = ir.Value(name=name, const_value=ir.tensor(np.array(i, dtype=np.int64), name=name))
            graph.register_initializer(value)
            indices[i] = value
        return indices[i]

    report = HoistReport()
    dropped: list[ir.Value] = []  # index constants of the Gathers that moved

    def hoist_all() -> None:
        moved_any = True
        while moved_any and report.moved < max_moves:
            moved_any = False
            report.stopped_at = []
            for gather in list(graph):
                if gather.graph is not graph:
                    continue
                outcome = _try_move(graph, gather, shape_of, index_value, dropped)
                if outcome is None:
                    continue
                if isinstance(outcome, str):
                    report.stopped_at.append(outcome)
                    continue
                report.moved += 1
                report.ops[outcome.op_type] = report.ops.get(outcome.op_type, 0) + 1
                moved_any = True
                break

    hoist_all()
    if attention_queries:
        rewritten, left_fused = gather_attention_queries(model, shapes)
        if rewritten:
            report.moved += rewritten
            report.ops["Attention (one query)"] = rewritten
            hoist_all()  # the stop reasons, after the rewrite
        report.stopped_at += [f"Attention {reason} (left fused)" for reason in left_fused]
    report.stopped_at = sorted(set(report.stopped_at))
    for value in dropped:
        if value.uses() or value.is_graph_output():
            continue
        if value.is_initializer():
            graph.initializers.pop(value.name, None)
        elif value.producer() is not None and value.producer().op_type == "Constant":
            graph.remove(value.producer(), safe=True)
    return report


def _gather_key(node: ir.Node, rank: int | None) -> tuple[int, int] | None:
    """``(axis, index)`` of a constant-scalar-index ``Gather`` with known input rank, else None."""
    if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    idx = const_array(node.inputs[1])
    if idx is None or idx.ndim != 0 or not np.issubdtype(idx.dtype, np.integer) or rank is None or rank < 2:
        return None  # rank 1 is a shape computation (Gather of Shape), not a sequence of tokens
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    return (axis % rank if rank else axis), int(idx)


def _try_move(graph: ir.Graph, gather: ir.Node, shape_of, index_value: Callable[[int], ir.Value],
              dropped: list[ir.Value]) -> _Moved | str | None:
    """Move ``gather`` above its input's producer. Returns what moved, a reason it cannot move, or None
    when ``gather`` is not a candidate at all."""
    if gather.op_type != "Gather" or not gather.inputs:
        return None
    data = gather.inputs[0]
    data_shape = shape_of(data)
    key = _gather_key(gather, len(data_shape) if data_shape is not None else None)
    if key is None or data is None:
        return None
    producer = data.producer()
    if producer is None:
        return None  # a graph input or an initializer: nothing above to move past
    where = f"{producer.op_type} {producer.name!r}"
    if data.is_graph_output():
        return f"{where}: its output is also a graph output"
    gathers = []
    for use in data.uses():
        user = use.node
        if use.idx != 0 or _gather_key(user, len(data_shape)) != key:
            return f"{where}: its output is also read by {user.op_type} {user.name!r}"
        if user not in gathers:
            gathers.append(user)
    for out in producer.outputs:
        if out is not data and (out.uses() or out.is_graph_output()):
            return f"{where}: its other output {out.name!r} is used"
    rule = _rule_for(producer)
    if rule is None:
        return f"{where}: no token-wise rule for {producer.domain or 'ai.onnx'}::{producer.op_type}"
    axis, index = key
    plan = rule(producer, axis, index, len(data_shape), shape_of)
    if isinstance(plan, str):
        return f"{where}: {plan}"
    takes, attributes = plan

    new_nodes: list[ir.Node] = []
    new_inputs: list[ir.Value | None] = []
    node_names = {n.name for n in graph}
    taken_values = value_names(graph)
    for value, take in zip(producer.inputs, takes, strict=True):
        if take is None or value is None:
            new_inputs.append(value)
            continue
        sub = ir.Node("", "Gather", [value, index_value(take.index)],
                      attributes=[ir.Attr("axis", ir.AttributeType.INT, take.axis)],
                      name=fresh_name(node_names, f"{producer.name}/token_gather"))
        in_shape = shape_of(value)
        out = sub.outputs[0]
        out.name = fresh_name(taken_values, f"{value.name or producer.name}/token_gather")
        if value.dtype is not None:
            out.dtype = value.dtype
        if in_shape is not None:
            _set_shape(out, in_shape[:take.axis] + in_shape[take.axis + 1:])
        new_nodes.append(sub)
        new_inputs.append(out)
    moved = ir.Node(producer.domain, producer.op_type, new_inputs, attributes=list(attributes.values()),
                    num_outputs=1, name=fresh_name(node_names, f"{producer.name}/on_gathered"),
                    version=producer.version)
    result = moved.outputs[0]
    dtype = gather.outputs[0].dtype or data.dtype
    if dtype is not None:
        result.dtype = dtype
    _set_shape(result, data_shape[:axis] + data_shape[axis + 1:])
    new_nodes.append(moved)
    if not result.name:
        result.name = fresh_name(taken_values, f"{producer.name}/on_gathered_output")
    graph.insert_before(producer, new_nodes)
    # each Gather's output becomes the moved op's output (graph outputs keep their names)
    olds = [g.outputs[0] for g in gathers]
    copies = redirect_outputs(olds, result,
                              lambda: fresh_name(node_names, f"{producer.name}/on_gathered_copy"))
    graph.insert_before(producer, copies)
    dropped.extend(g.inputs[1] for g in gathers)
    graph.remove(gathers, safe=True)
    graph.remove(producer, safe=True)
    return _Moved(producer.op_type)


def _set_shape(value: ir.Value, dims: Shape) -> None:
    """Declare ``value``'s shape when its type is known (onnx-ir cannot write a shape without a type; an
    unknown shape only stops later moves through this value)."""
    if value.dtype is not None:
        value.shape = ir.Shape(dims)


def _rule_for(node: ir.Node) -> _Rule | None:
    if node.domain in ("", "ai.onnx"):
        return _elementwise if node.op_type in _ELEMENTWISE else _RULES.get(node.op_type)
    if node.domain == _MICROSOFT and node.op_type in _LAST_AXIS_CONTRIB:
        return _last_axis_contrib
    return None


def _attrs(node: ir.Node) -> dict[str, ir.Attr]:
    return dict(node.attributes)


def _broadcast_take(value: ir.Value | None, axis: int, index: int, rank: int, out_dim, shape_of
                    ) -> _Take | None | str:
    """How an input of a broadcasting op carries output axis ``axis`` (of an output of rank ``rank``)."""
    if value is None:
        return None
    shape = shape_of(value)
    if shape is None:
        return f"the shape of input {value.name!r} is unknown"
    in_axis = axis - (rank - len(shape))
    if in_axis < 0:
        return None  # the input has no such axis: it is the same for every position
    dim = shape[in_axis]
    if dim == 1 and out_dim != 1:
        return _Take(in_axis, 0)
    if dim is not None and dim == out_dim:
        return _Take(in_axis, index)
    return f"input {value.name!r} has dimension {dim!r} where the output has {out_dim!r}"


def _output_dim(node: ir.Node, axis: int, shape_of):
    shape = shape_of(node.outputs[0])
    return shape[axis] if shape is not None and axis < len(shape) else None


def _elementwise(node, axis, index, rank, shape_of) -> _Plan | str:
    out_dim = _output_dim(node, axis, shape_of)
    if out_dim is None:
        return "the gathered dimension of its output is unknown"
    takes = []
    for value in node.inputs:
        take = _broadcast_take(value, axis, index, rank, out_dim, shape_of)
        if isinstance(take, str):
            return take
        takes.append(take)
    return takes, _attrs(node)


def _matmul(node, axis, index, rank, shape_of) -> _Plan | str:
    a, b = node.inputs
    sa, sb = shape_of(a), shape_of(b)
    if sa is None or sb is None:
        return "an input shape is unknown"
    if len(sb) != 2 or len(sa) != rank or rank < 2:
        return f"only (..., M, K) x (K, N) products move (shapes {sa} x {sb})"
    if axis > rank - 2:
        return "the gathered axis is the product's output-channel axis"
    return [_Take(axis, index), None], _attrs(node)


def _normalization(node, axis, index, rank, shape_of) -> _Plan | str:
    attrs = _attrs(node)
    start = attrs["axis"].as_int() if "axis" in attrs else -1
    start %= rank
    if axis >= start:
        return f"the gathered axis {axis} is normalised (axis={start})"
    takes: list[_Take | None] = [_Take(axis, index)] + [None] * (len(node.inputs) - 1)
    attrs["axis"] = ir.Attr("axis", ir.AttributeType.INT, start - 1)
    return takes, attrs


def _softmax(node, axis, index, rank, shape_of) -> _Plan | str:
    attrs = _attrs(node)
    opset = node.version
    default = -1 if opset is None or opset >= 13 else 1
    start = (attrs["axis"].as_int() if "axis" in attrs else default) % rank
    if axis >= start:  # before opset 13 every axis from `start` on is one flattened softmax axis
        return f"the gathered axis {axis} is the softmax axis (axis={start})"
    attrs["axis"] = ir.Attr("axis", ir.AttributeType.INT, start - 1)
    return [_Take(axis, index)], attrs


def _transpose(node, axis, index, rank, shape_of) -> _Plan | str:
    attrs = _attrs(node)
    perm = list(attrs["perm"].as_ints()) if "perm" in attrs else list(reversed(range(rank)))
    source = perm[axis]
    rest = [p - (p > source) for i, p in enumerate(perm) if i != axis]
    attrs["perm"] = ir.Attr("perm", ir.AttributeType.INTS, rest)
    return [_Take(source, index)], attrs


def _last_axis_contrib(node, axis, index, rank, shape_of) -> _Plan | str:
    if axis >= rank - 1:
        return "the gathered axis is the channel axis it works over"
    out_dim = _output_dim(node, axis, shape_of)
    if out_dim is None:
        return "the gathered dimension of its output is unknown"
    carried = _LAST_AXIS_CONTRIB[node.op_type]
    takes: list[_Take | None] = []
    for i, value in enumerate(node.inputs):
        if i >= carried:
            takes.append(None)
            continue
        take = _broadcast_take(value, axis, index, rank, out_dim, shape_of)
        if isinstance(take, str):
            return take
        takes.append(take)
    return takes, _attrs(node)


_RULES: dict[str, _Rule] = {
    "MatMul": _matmul, "Transpose": _transpose, "Softmax": _softmax, "LogSoftmax": _softmax,
    "LayerNormalization": _normalization, "SimplifiedLayerNormalization": _normalization,
    "RMSNormalization": _normalization,
}
