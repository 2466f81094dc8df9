"""Private copies of computed tensors that several layers' channels run through.

BLOOM builds its ALiBi bias once, ``slopes[heads, 1] * positions``, reshaped to ``[batch*heads, 1, seq]``,
and adds that one tensor to the scores of every layer. A walk from layer 0's heads reaches the bias, and
from it every other layer's scores: all layers end up in one group and could only lose the same heads.
The bias depends on graph inputs and small constants only (no weight), so each consumer can have its own
copy of the subgraph that computes it; the layers then prune independently. The model computes the same
function; the copied constants are marked like :func:`~optimum_prune.passes.normalize.unshare_vectors`'s
copies, so they are not counted as parameters and equal copies are shared again after pruning.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from optimum_prune.association.builder import find_seeds
from optimum_prune.association.tree import PruningGroup
from optimum_prune.graph import Shape, values_by_name
from optimum_prune.passes.normalize import copy_initializer

_MAX_CONE_NODES = 256
_MAX_CONSTANT_ELEMENTS = 4096


def seed_names(model: ir.Model, shapes: dict[str, Shape]) -> set[str]:
    """Names of the constant weights that root groups (MatMul/Gemm/Conv weights, embedding tables)."""
    return {value.name for value, _ in find_seeds(model, shapes)}


def shared_computed_tensors(model: ir.Model, groups: list[PruningGroup], seeds: set[str]) -> list[str]:
    """Names of the activations a prunable group tracks that have several consumers and are computed from
    graph inputs and small constants only (no ``seeds`` weight, no table), latest in graph order first."""
    values = values_by_name(model)
    order = {name: i for i, name in enumerate(values)}
    found: set[str] = set()
    for group in groups:
        if not group.prunable:
            continue  # untying cannot make a refused group prunable
        for s in group.slices:
            value = values.get(s.name)
            if (s.constant or value is None or s.name in found or len(value.uses()) < 2
                    or value.is_graph_output() or value.is_graph_input()):
                continue
            if weightless_cone(value, seeds) is not None:
                found.add(s.name)
    return sorted(found, key=lambda n: -order[n])


def weightless_cone(value: ir.Value, seeds: set[str]) -> list[ir.Node] | None:
    """The nodes computing ``value`` back to graph inputs and constants; None when the subgraph reads a
    weight in ``seeds`` or a constant that is not small (:func:`_small_constant`), has a subgraph
    attribute, or is too large."""
    def leaf_ok(v: ir.Value) -> bool:  # a graph input, or an initializer
        return v.const_value is None or (v.name not in seeds and _small_constant(v.const_value))

    def node_ok(node: ir.Node) -> bool:
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            return False
        return node.op_type != "Constant" or (node.outputs[0].name not in seeds and _small_constant(
            node.attributes["value"].value if "value" in node.attributes else None))

    return _cone(value, leaf_ok, node_ok)


def _cone(value: ir.Value, leaf_ok: Callable[[ir.Value], bool], node_ok: Callable[[ir.Node], bool],
          reads_inputs: Callable[[ir.Node], bool] = lambda node: True) -> list[ir.Node] | None:
    """The nodes computing ``value``, walked up from it; None when a value without a producer fails
    ``leaf_ok``, a node fails ``node_ok``, or there are more than :data:`_MAX_CONE_NODES`. The inputs of a
    node for which ``reads_inputs`` is False are not walked (they stay shared)."""
    nodes: dict[int, ir.Node] = {}
    stack = [value]
    while stack:
        v = stack.pop()
        node = v.producer()
        if node is None:
            if not leaf_ok(v):
                return None
            continue
        if id(node) in nodes:
            continue
        if not node_ok(node):
            return None
        nodes[id(node)] = node
        if len(nodes) > _MAX_CONE_NODES:
            return None
        if reads_inputs(node):
            stack.extend(i for i in node.inputs if i is not None)
    return list(nodes.values())


def _small_constant(tensor) -> bool:
    """A constant the copies may duplicate: an integer or a vector of at most a few thousand elements
    (ALiBi slopes ``[heads, 1]``), never a table (position embeddings, relative-position tables)."""
    if tensor is None:
        return False
    shape = [int(d) for d in tensor.shape]
    if int(np.prod(shape)) > _MAX_CONSTANT_ELEMENTS:
        return False
    return not tensor.dtype.is_floating_point() or sum(d > 1 for d in shape) <= 1


def untie(model: ir.Model, names: list[str], seeds: set[str]) -> int:
    """Give every consumer of each tensor in ``names`` but the first its own copy of the subgraph that
    computes it (see :func:`shared_computed_tensors`). Deterministic; returns the copies made."""
    graph = model.graph
    values = values_by_name(model)
    copies = 0
    order: dict[int, int] = {}
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        cone = weightless_cone(value, seeds)
        if cone is None:
            continue
        uses = sorted(value.uses(), key=lambda u: (u.node.name or "", u.idx))
        _copy_per_use(graph, cone, value, uses[1:], [f"__untie{k}" for k in range(1, len(uses))], order)
        copies += len(uses) - 1
    return copies


def _copy_per_use(graph: ir.Graph, cone: list[ir.Node], value: ir.Value, uses: list, suffixes: list[str],
                  order: dict[int, int]) -> None:
    """Feed each of ``uses`` its own copy of ``cone`` (the nodes computing ``value``), inserted before the
    using node in graph order. ``order`` (node id -> position) is kept across calls and rebuilt only when
    the cone holds a node it has not seen: inserting copies keeps the other nodes' relative order."""
    if any(id(n) not in order for n in cone):
        order.clear()
        order.update({id(n): i for i, n in enumerate(graph)})
    cone.sort(key=lambda n: order[id(n)])
    for use, suffix in zip(uses, suffixes, strict=True):
        copy, nodes = _clone_cone(graph, cone, value, suffix)
        use.node.replace_input_with(use.idx, copy)
        graph.insert_before(use.node, nodes)


# ops that compute shape vectors from shapes and small integer constants
_SHAPE_ARITHMETIC = frozenset({
    "Shape", "Size", "Constant", "Identity", "Concat", "Gather", "Slice", "Unsqueeze", "Squeeze", "Cast",
    "Reshape", "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Max", "Min", "Equal",
    "Where", "Not", "ConstantOfShape", "ReduceMax", "ReduceMin", "ReduceProd", "Range",
})
# (op, input index) that read a shape vector: the elements a group patches live in their cones
_SHAPE_SLOTS = frozenset({("Reshape", 1), ("Expand", 1), ("Tile", 1), ("ConstantOfShape", 0)})


def unshare_shape_tensors(model: ir.Model) -> int:
    """Give every Reshape/Expand/Tile/ConstantOfShape that reads a shared computed shape vector its own copy
    of the arithmetic computing it, back to (and including) the ``Shape`` reads. The PyTorch dynamo
    exporter computes ``[batch, -1, heads, head_dim]`` once and feeds it to every layer's q/k/v Reshapes;
    a group patching the head count there would resize the other layers' Reshapes too. The model computes
    the same function; the copied constants are marked as copies (not counted as parameters)."""
    graph = model.graph
    copies = 0
    order: dict[int, int] = {}
    for node in list(graph):
        for value in node.outputs:
            uses = sorted((u for u in value.uses() if (u.node.op_type, u.idx) in _SHAPE_SLOTS
                           and u.node.graph is graph), key=lambda u: (u.node.name or "", u.idx))
            if len(uses) < 2 or value.is_graph_output():
                continue
            cone = _shape_cone(value)
            if cone is None:
                continue
            # the suffixes number every copy of the pass: copies of two cones never clash
            suffixes = [f"__shape{copies + k}" for k in range(1, len(uses))]
            _copy_per_use(graph, cone, value, uses[1:], suffixes, order)
            copies += len(uses) - 1
    return copies


def _shape_cone(value: ir.Value) -> list[ir.Node] | None:
    """The shape-arithmetic nodes computing ``value``, stopping at ``Shape``/``Size`` (whose inputs are
    read, not copied); None if anything else, or a constant that is not a small integer, feeds it."""
    def leaf_ok(v: ir.Value) -> bool:
        tensor = v.const_value
        small_integer = tensor is not None and tensor.dtype.is_integer() and tensor.size <= 64
        return small_integer and not v.is_graph_input()

    def node_ok(node: ir.Node) -> bool:
        return node.domain in ("", "ai.onnx") and node.op_type in _SHAPE_ARITHMETIC

    return _cone(value, leaf_ok, node_ok, reads_inputs=lambda node: node.op_type not in ("Shape", "Size"))


def _clone_cone(graph: ir.Graph, cone: list[ir.Node], value: ir.Value,
                suffix: str) -> tuple[ir.Value, list[ir.Node]]:
    mapped: dict[int, ir.Value] = {}

    def source(v: ir.Value | None) -> ir.Value | None:
        if v is None:
            return None
        if id(v) in mapped:
            return mapped[id(v)]
        if v.producer() is None and v.const_value is not None and not v.is_graph_input():
            copy = copy_initializer(graph, v, f"{v.name}{suffix}", copy_of=v.name)
            mapped[id(v)] = copy
            return copy
        return v  # a graph input: shared

    new_nodes: list[ir.Node] = []
    for node in cone:
        inputs = [source(i) for i in node.inputs]
        attributes = [_copy_attribute(a) for a in node.attributes.values()]
        clone = ir.Node(node.domain, node.op_type, inputs=inputs, attributes=attributes,
                        name=f"{node.name}{suffix}", num_outputs=len(node.outputs), version=node.version,
                        overload=node.overload)
        for old, new in zip(node.outputs, clone.outputs, strict=True):
            new.name = f"{old.name}{suffix}" if old.name else ""
            new.type = old.type
            new.shape = old.shape
            mapped[id(old)] = new
        new_nodes.append(clone)
    return mapped[id(value)], new_nodes


def _copy_attribute(attr: ir.Attr) -> ir.Attr:
    if attr.type == ir.AttributeType.TENSOR:
        return ir.AttrTensor(attr.name, ir.tensor(np.array(attr.value.numpy())))
    return attr

