"""Let a pruned model take a key/value cache sized for the dense model.

Runtimes size the first, empty cache from ``config.json`` (Optimum's ``ORTModelForCausalLM`` and
``ORTModelForSeq2SeqLM`` feed zeros of shape ``(batch, heads, 0, hidden_size // num_attention_heads)``
with the model type's head counts). When pruning removes cache heads that ``config.json`` cannot
describe (multi-head attention whose head size is derived from the head count, a model type whose
runtime ignores ``num_key_value_heads``, or layers pruned by different shares), the pruned graph would
reject that first cache. :func:`narrow_cache_inputs` makes such a cache input's pruned axes symbolic and
slices what arrives to the kept width (``[:kept]``) before any node reads it: the empty first cache
narrows to the pruned shape, and the caches the model itself returns already have it, so the slice
keeps them whole. The kept widths are recorded in the model's metadata (:data:`NARROWED_DIMS_KEY`, a
JSON map from the symbolic dimension to its width) so that generated inputs give those dimensions the
width the graph computes with (see :func:`narrowed_dims`).
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from optimum_prune.errors import PruningError

NARROWED_DIMS_KEY = "optimum_prune.narrowed_dims"
_NODE_PREFIX = "optimum_prune/narrow_cache/"


def narrow_cache_inputs(model: ir.Model, kept: dict[str, dict[int, int]]) -> dict[str, int]:
    """Slice each graph input of ``kept`` (name -> {axis: kept width}) to its kept widths, in place.

    The input's declared size on those axes becomes a symbolic dimension, so any width is accepted;
    a ``Slice`` node (``starts`` 0, ``ends`` the kept widths) feeds every former reader, subgraphs
    included. Returns the symbolic dimensions made (name -> kept width), which are also stored in
    ``model.metadata_props[NARROWED_DIMS_KEY]``.

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
        order = sorted(axes)
        widths = [int(axes[a]) for a in order]
        shape = list(value.shape) if value.shape is not None else None
        for axis, width in zip(order, widths, strict=True):
            # Not derived from the input's name: feed generators read "past", "batch" or "seq" in a name.
            dim = f"narrowed_{len(recorded) + len(dims)}"
            dims[dim] = width
            if shape is not None:
                shape[axis] = ir.SymbolicDim(dim)
        if shape is not None:
            value.shape = ir.Shape(shape)
        bounds = [_initializer(model, f"{name}_narrow_{part}", np.asarray(data, dtype=np.int64))
                  for part, data in (("starts", [0] * len(order)), ("ends", widths), ("axes", order))]
        narrowed = ir.Value(name=f"{name}_narrowed", type=value.type)
        users = list(value.uses())
        node = ir.Node("", "Slice", inputs=[value, *bounds], outputs=[narrowed], name=_NODE_PREFIX + name)
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


def narrowed_dims(session) -> dict[str, int]:
    """The symbolic dimensions :func:`narrow_cache_inputs` made in ``session``'s model, with the width the
    graph computes with (an ONNX Runtime ``InferenceSession``; empty for any other model)."""
    text = session.get_modelmeta().custom_metadata_map.get(NARROWED_DIMS_KEY)
    return {k: int(v) for k, v in json.loads(text).items()} if text else {}


def _initializer(model: ir.Model, name: str, data: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(data.shape), type=ir.TensorType(ir.DataType.INT64),
                     const_value=ir.tensor(data, name=name))
    model.graph.register_initializer(value)
    return value
