"""Let a pruned model take a key/value cache sized for the dense model.

Runtimes size the first, empty cache from ``config.json`` (Optimum's ``ORTModelForCausalLM`` and
``ORTModelForSeq2SeqLM`` feed zeros of shape ``(batch, heads, 0, hidden_size // num_attention_heads)``
with the model type's head counts). When pruning removes cache heads that ``config.json`` cannot
describe (multi-head attention whose head size is derived from the head count, a model type whose
runtime ignores ``num_key_value_heads``, or layers pruned by different shares), the pruned graph would
reject that first cache. :func:`narrow_cache_inputs` makes such a cache input's pruned axes symbolic and
reshapes what arrives to the kept width before any node reads it: ``Reshape(past, [0, kept, -1, 0])``,
the ``-1`` on the cache's other symbolic axis (its length). The empty first cache has no elements, so it
becomes ``(batch, kept, 0, head_dim)``; the caches the model itself returns already have the kept width
and pass unchanged, without a copy (ONNX Runtime's Reshape aliases its input). A cache of another
width with elements in it is not one this model made: its length comes out wrong (or the Reshape
fails). Where the input has no such length axis, a ``Slice`` to ``[:kept]`` narrows it instead (it
copies at every run; on a GPT-2-size decoder it cost 2-10% of a decode step, ``benchmarks/
cache_narrowing.py``). The kept widths are recorded in the model's metadata (:data:`NARROWED_DIMS_KEY`,
a JSON map from the symbolic dimension to its width) so that generated inputs give those dimensions the
width the graph computes with (see :func:`narrowed_dims`).
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from optimum_prune.errors import PruningError

NARROWED_DIMS_KEY = "optimum_prune.narrowed_dims"
NARROWING_NODE_PREFIX = "optimum_prune/narrow_cache/"  # the name of every node narrow_cache_inputs adds


def narrow_cache_inputs(model: ir.Model, kept: dict[str, dict[int, int]]) -> dict[str, int]:
    """Narrow each graph input of ``kept`` (name -> {axis: kept width}) to its kept widths, in place.

    The input's declared size on those axes becomes a symbolic dimension, so any width is accepted; a
    ``Reshape`` (or, without a symbolic length axis to absorb the rest, a ``Slice``) feeds every former
    reader, subgraphs included. Returns the symbolic dimensions made (name -> kept width), which are
    also stored in ``model.metadata_props[NARROWED_DIMS_KEY]``.

    Raises :class:`PruningError` when a name is not a graph input, or the opset is older than 10
    (``Slice`` then takes its bounds as attributes, not inputs).
    """
    opset = model.opset_imports.get("", 0)
    if opset < 10:
        raise PruningError(f"cannot narrow the cache inputs of a model with opset {opset}: Slice takes its "
                           "bounds as inputs from opset 10. Re-export with a newer opset.")
    inputs = {v.name: v for v in model.graph.inputs}
    recorded = json.loads(model.metadata_props.get(NARROWED_DIMS_KEY, "{}"))
    dims: dict[str, int] = {}
    nodes: list[ir.Node] = []
    for name, axes in sorted(kept.items()):
        value = inputs.get(name)
        if value is None:
            raise PruningError(f"'{name}' is not a graph input, so it cannot be narrowed")
        shape = list(value.shape) if value.shape is not None else None
        length = _length_axis(shape, axes) if shape is not None else None
        for axis in sorted(axes):
            # Not derived from the input's name: feed generators read "past", "batch" or "seq" in a name.
            dim = f"narrowed_{len(recorded) + len(dims)}"
            dims[dim] = int(axes[axis])
            if shape is not None:
                shape[axis] = ir.SymbolicDim(dim)
        if shape is not None:
            value.shape = ir.Shape(shape)
        narrowed = ir.Value(name=f"{name}_narrowed", type=value.type)
        users = list(value.uses())
        if length is not None:
            target = [0] * len(shape)  # 0: the input's own size on that axis
            for axis, width in axes.items():
                target[axis] = int(width)
            target[length] = -1
            node = ir.Node("", "Reshape", inputs=[value, _initializer(model, f"{name}_narrow_shape", target)],
                           outputs=[narrowed], name=NARROWING_NODE_PREFIX + name)
        else:
            order = sorted(axes)
            parts = {"starts": [0] * len(order), "ends": [int(axes[a]) for a in order], "axes": order}
            bounds = [_initializer(model, f"{name}_narrow_{part}", data) for part, data in parts.items()]
            node = ir.Node("", "Slice", inputs=[value, *bounds], outputs=[narrowed],
                           name=NARROWING_NODE_PREFIX + name)
        for user, index in users:
            user.replace_input_with(index, narrowed)
        nodes.append(node)
    if nodes:
        first = next(iter(model.graph), None)
        if first is None:
            model.graph.extend(nodes)
        else:
            model.graph.insert_before(first, nodes)
        recorded.update(dims)
        model.metadata_props[NARROWED_DIMS_KEY] = json.dumps(recorded, sort_keys=True)
    return dims


def _length_axis(shape: list, axes: dict[int, int]) -> int | None:
    """The one axis a Reshape's ``-1`` may take: symbolic, neither the first (batch) nor narrowed; None
    when there is not exactly one."""
    free = [i for i, d in enumerate(shape) if i > 0 and i not in axes and not isinstance(d, int)]
    return free[0] if len(free) == 1 else None


def narrowed_dims(session) -> dict[str, int]:
    """The symbolic dimensions :func:`narrow_cache_inputs` made in ``session``'s model, with the width the
    graph computes with (an ONNX Runtime ``InferenceSession``; empty for any other model)."""
    text = session.get_modelmeta().custom_metadata_map.get(NARROWED_DIMS_KEY)
    return {k: int(v) for k, v in json.loads(text).items()} if text else {}


def _initializer(model: ir.Model, name: str, values: list[int]) -> ir.Value:
    data = np.asarray(values, dtype=np.int64)
    value = ir.Value(name=name, shape=ir.Shape(data.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(data, name=name))
    model.graph.register_initializer(value)
    return value
