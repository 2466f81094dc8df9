"""Preparation before analysis: unique node names and private copies of shared shape constants.

Exporters deduplicate identical constants, so one ``[0, 0, 12, 64]`` initializer may feed every
Reshape of every layer. A group patches only its own layers' shape elements, so each consumer gets
its own copy (copy-on-write done up front, deterministically).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

_SMALL = 64
_COPY_OF = "optimum_prune.copy_of"  # Value.meta key: the initializer an unshared vector was copied from


def name_nodes(model: ir.Model) -> None:
    """Give every unnamed node a unique, deterministic name."""
    seen = {n.name for n in model.graph if n.name}
    for i, node in enumerate(model.graph):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def unshare_vectors(model: ir.Model) -> int:
    """Give each consumer of a shared rank-0/1 initializer (bias, norm weight) its own copy.

    Exporters deduplicate identical parameters (all the zero biases of a random model become one
    initializer behind Identity nodes), which would couple unrelated channels. Vectors are cheap to
    copy; shared matrices (ALBERT's layers, tied embeddings) stay shared and couple their groups.
    """
    graph = model.graph
    copies = 0
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        src = node.inputs[0]
        if src is None or src.const_value is None or len(src.const_value.shape) > 1:
            continue
        out = node.outputs[0]
        if out.is_graph_output():
            continue
        if any(u.node.graph is not graph for u in out.uses()):
            continue
        for use in list(out.uses()):
            use.node.replace_input_with(use.idx, copy_initializer(graph, src, out.name, copy_of=src.name))
            copies += 1
        graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or len(tensor.shape) > 1 or tensor.dtype.is_integer():
            continue
        uses = [u for u in value.uses() if u.node.graph is graph]
        for use in uses[1:]:
            copy = copy_initializer(graph, value, f"{name}__{use.node.name}", copy_of=name)
            use.node.replace_input_with(use.idx, copy)
            copies += 1
    return copies


def unshared_elements(model: ir.Model) -> int:
    """Floating-point elements that :func:`unshare_vectors` added (not parameters of the input model)."""
    return sum(v.const_value.size for v in model.graph.initializers.values()
               if v.meta.get(_COPY_OF) is not None and v.const_value.dtype.is_floating_point())


def reshare_vectors(model: ir.Model) -> int:
    """Undo :func:`unshare_vectors` where the copies still hold equal values (after pruning, the
    groups that own them removed nothing or the same positions), and drop the source vectors left
    unused, so the written model never has more parameters than the input. Returns the vectors removed.
    """
    graph = model.graph
    families: dict[str, list[ir.Value]] = {}
    for value in graph.initializers.values():
        origin = value.meta.get(_COPY_OF)
        if origin is not None:
            families.setdefault(origin, []).append(value)
    removed = 0
    for origin, copies in families.items():
        source = graph.initializers.get(origin)
        members = ([source] if source is not None else []) + copies
        distinct: list[tuple[ir.Value, np.ndarray]] = []
        for value in members:
            arr = value.const_value.numpy()
            same = next((v for v, a in distinct if a.dtype == arr.dtype and a.shape == arr.shape
                         and np.array_equal(a, arr)), None)
            if same is None:
                distinct.append((value, arr))
                continue
            for use in list(value.uses()):
                use.node.replace_input_with(use.idx, same)
        for value in members:
            if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                graph.initializers.pop(value.name)
                removed += 1
    return removed


def copy_initializer(graph: ir.Graph, src: ir.Value, name: str, copy_of: str | None = None) -> ir.Value:
    """Register a copy of the initializer ``src`` under ``name`` (made unique); ``copy_of`` marks it as a
    copy of that initializer, so it is not counted as a parameter and may be shared again."""
    new_name = name
    while new_name in graph.initializers:
        new_name += "_"
    arr = np.array(src.const_value.numpy())
    new_value = ir.Value(name=new_name, const_value=ir.tensor(arr, name=new_name), type=src.type,
                         shape=src.shape)
    if copy_of is not None:
        new_value.meta[_COPY_OF] = copy_of
    graph.register_initializer(new_value)
    return new_value


def unshare_shape_constants(model: ir.Model) -> int:
    """Give each consumer of a small shared integer constant its own copy. Returns the copies made."""
    graph = model.graph
    copies = 0
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or tensor.size > _SMALL or not tensor.dtype.is_integer():
            continue
        uses = [u for u in value.uses() if u.node.graph is graph]
        if len(uses) < 2 or value.is_graph_output():
            continue
        for k, use in enumerate(uses[1:], start=1):
            use.node.replace_input_with(use.idx, copy_initializer(graph, value, f"{name}__{k}"))
            copies += 1
    for node in list(graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        uses = [u for u in out.uses() if u.node.graph is graph]
        if len(uses) < 2 or out.is_graph_output():
            continue
        attr = node.attributes.get("value")
        if attr is None or attr.value.size > _SMALL or not attr.value.dtype.is_integer():
            continue
        for k, use in enumerate(uses[1:], start=1):
            clone = ir.Node("", "Constant", inputs=[], attributes=[ir.AttrTensor("value", ir.tensor(
                attr.value.numpy().copy()))], name=f"{node.name}__{k}", num_outputs=1)
            clone.outputs[0].name = f"{out.name}__{k}"
            clone.outputs[0].type = out.type
            clone.outputs[0].shape = out.shape
            graph.insert_before(use.node, clone)
            use.node.replace_input_with(use.idx, clone.outputs[0])
            copies += 1
    return copies


def explicit_split_sizes(model: ir.Model, shapes: dict) -> int:
    """Give Splits with implicit equal sizes an explicit ``split`` input (so a group can patch it)."""
    changed = 0
    for node in model.graph:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.inputs) > 1 and node.inputs[1] is not None or "split" in node.attributes:
            continue
        x_shape = shapes.get(node.inputs[0].name)
        if x_shape is None:
            continue
        axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
        axis = axis + len(x_shape) if axis < 0 else axis
        dims = [shapes.get(o.name, (None,) * len(x_shape))[axis] for o in node.outputs]
        if not all(isinstance(d, int) for d in dims):
            continue
        name = f"{node.name}__split_sizes"
        value = ir.Value(name=name, const_value=ir.tensor(np.array(dims, dtype=np.int64), name=name),
                         type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([len(dims)]))
        model.graph.register_initializer(value)
        node.resize_inputs(2)
        node.replace_input_with(1, value)
        node.attributes.pop("num_outputs", None)
        changed += 1
    return changed
