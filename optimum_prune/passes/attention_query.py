"""Compute one query of a fused ``Attention`` when only one position of its output is read.

After :func:`~optimum_prune.passes.token_gather.hoist_token_gathers`, a first-token classifier's last
layer reads its fused ``com.microsoft::Attention`` through ``Gather(attention_output, i, axis=1)``: every
position still attends to every other, but only position ``i``'s result is used. This pass writes that
attention out in standard ops with one query:

    q = Gather(X, i, axis=1) @ Wq + bq                                  [B, Hq]    one position
    k, v = X @ Wk + bk, X @ Wv + bv                                     [B, S, Hk] all positions
    p = Softmax(scale * q_h . k_h^T + mask_bias)                        [B, heads, 1, S]
    out = p @ v_h, heads joined                                         [B, Hv]

``mask_bias`` is ``mask_filter_value`` at the masked keys and 0 elsewhere, read as ONNX Runtime's CPU
kernel reads ``mask_index``: a 2-D raw mask keeps the keys where it is > 0, a 1-D one holds each row's
key length (the fusion's form for right-padded text). The same numbers come out (up to floating-point
rounding) with about a third less projection work and 1/S of the attention work for that layer.

Only the plain encoder form moves: a constant weight and bias, no mask or a 1-D / 2-D mask, no past
state, attention bias, rotary embedding or causal mask. Anything else is left fused.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimum_prune.graph import Shape, const_array, fresh_name, infer_shapes, redirect_outputs, value_names

_MICROSOFT = "com.microsoft"
_DEFAULT_MASK_FILTER = -10000.0  # com.microsoft::Attention's default mask_filter_value


def gather_attention_queries(model: ir.Model, shapes: dict[str, Shape] | None = None
                             ) -> tuple[int, list[str]]:
    """Rewrite each fused ``Attention`` whose output is read at one constant position only.

    Changes ``model`` in place. ``shapes`` are inferred shapes (:func:`optimum_prune.graph.infer_shapes`,
    computed when not given; shapes inferred before an earlier rewrite serve as long as the attention
    inputs are unchanged). Returns how many were rewritten
    and, for each fused ``Attention`` read through a constant-index ``Gather`` that stayed fused, why
    (``"<node>: <reason>"``).
    """
    graph = model.graph
    if model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) < 13:
        return 0, []
    shapes = infer_shapes(model) if shapes is None else shapes
    done, kept = 0, []
    for node in [n for n in graph if n.domain == _MICROSOFT and n.op_type == "Attention"]:
        gathers = _single_position_reads(node)
        if gathers is None:
            continue
        reason = _why_not(node, shapes)
        if reason:
            kept.append(f"{node.name}: {reason}")
            continue
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        _rewrite(graph, node, gathers, None if mask is None else _rank(mask, shapes))
        done += 1
    return done, kept


def _single_position_reads(node: ir.Node) -> list[ir.Node] | None:
    """The Gathers that are the only readers of ``node``'s output, all at the same constant position of
    axis 1, or None."""
    out = node.outputs[0]
    if out.is_graph_output() or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return None
    gathers, key = [], None
    for user, idx in out.uses():
        if user.op_type != "Gather" or user.domain not in ("", "ai.onnx") or idx != 0:
            return None
        index = const_array(user.inputs[1])
        axis = user.attributes["axis"].as_int() if "axis" in user.attributes else 0
        if index is None or index.ndim != 0 or axis not in (1, -2):
            return None
        if key is not None and key != int(index):
            return None
        key = int(index)
        if user not in gathers:
            gathers.append(user)
    return gathers or None


def _rank(value: ir.Value, shapes: dict[str, Shape]) -> int | None:
    if value.name in shapes:
        return len(shapes[value.name])
    return len(value.shape) if value.shape is not None else None


def _why_not(node: ir.Node, shapes: dict[str, Shape]) -> str | None:
    attrs = node.attributes
    for name in ("unidirectional", "do_rotary", "past_present_share_buffer"):
        if name in attrs and attrs[name].as_int():
            return f"attribute {name} is set"
    inputs = list(node.inputs)
    if len(inputs) < 3 or inputs[1] is None or inputs[2] is None:
        return "no constant weight and bias"
    if any(v is not None for v in inputs[4:]):
        return "it has a past state, an attention bias or a past length"
    weight, bias = const_array(inputs[1]), const_array(inputs[2])
    if weight is None or bias is None or weight.ndim != 2 or bias.ndim != 1:
        return "the weight or bias is not a constant matrix / vector"
    if len(inputs) > 3 and inputs[3] is not None and _rank(inputs[3], shapes) not in (1, 2):
        return "only a 1-D (key lengths) or 2-D (batch, sequence) mask is rewritten"
    if _rank(inputs[0], shapes) != 3:
        return "the input is not (batch, sequence, hidden)"
    if len(inputs) > 3 and inputs[3] is not None and _rank(inputs[3], shapes) == 1:
        batch = shapes.get(inputs[0].name, (None,))[0]
        if batch is None or shapes.get(inputs[3].name) != (batch,):
            return "a 1-D mask is rewritten only when it is one key length per row (not end + start)"
    sizes = _sizes(node, weight)
    heads = attrs["num_heads"].as_int() if "num_heads" in attrs else 0
    if sizes is None or heads < 1 or any(s % heads for s in sizes) or sizes[0] != sizes[1]:
        return f"q/k/v sizes {sizes} do not split into {heads} heads"
    return None


def _sizes(node: ir.Node, weight: np.ndarray) -> tuple[int, int, int] | None:
    if "qkv_hidden_sizes" in node.attributes:
        sizes = tuple(int(s) for s in node.attributes["qkv_hidden_sizes"].as_ints())
        return sizes if len(sizes) == 3 and sum(sizes) == weight.shape[1] else None
    if weight.shape[1] % 3:
        return None
    return (weight.shape[1] // 3,) * 3


def _rewrite(graph: ir.Graph, node: ir.Node, gathers: list[ir.Node], mask_rank: int | None) -> None:
    attrs = node.attributes
    x, w_value, b_value, mask = (list(node.inputs) + [None])[:4]
    weight, bias = const_array(w_value), const_array(b_value)
    hq, hk, hv = _sizes(node, weight)
    heads = attrs["num_heads"].as_int()
    dq, dv = hq // heads, hv // heads
    scale = attrs["scale"].as_float() if "scale" in attrs else 0.0
    scale = scale or 1.0 / float(np.sqrt(dq))
    mask_filter = (attrs["mask_filter_value"].as_float() if "mask_filter_value" in attrs
                   else _DEFAULT_MASK_FILTER)
    dtype = weight.dtype
    nodes_taken = {n.name for n in graph}
    values_taken = value_names(graph)
    base = node.name or "attention"
    new: list[ir.Node] = []

    def const(name: str, arr: np.ndarray) -> ir.Value:
        value_name = fresh_name(values_taken, f"{base}/{name}")
        value = ir.Value(name=value_name, const_value=ir.tensor(arr, name=value_name))
        graph.register_initializer(value)
        return value

    def op(op_type: str, inputs: list[ir.Value], name: str, **attributes) -> ir.Value:
        attr_list = [_attr(k, v) for k, v in attributes.items()]
        n = ir.Node("", op_type, inputs, attributes=attr_list, name=fresh_name(nodes_taken, f"{base}/{name}"))
        n.outputs[0].name = fresh_name(values_taken, f"{base}/{name}_output")
        new.append(n)
        return n.outputs[0]

    index = gathers[0].inputs[1]
    xq = op("Gather", [x, index], "query_position", axis=1)  # [B, H]
    q = op("Add", [op("MatMul", [xq, const("q_weight", weight[:, :hq])], "q_proj"),
                   const("q_bias", bias[:hq])], "q_bias_add")  # [B, Hq]
    kv = op("Add", [op("MatMul", [x, const("kv_weight", weight[:, hq:])], "kv_proj"),
                    const("kv_bias", bias[hq:])], "kv_bias_add")  # [B, S, Hk + Hv]
    def i64(name: str, values: list[int]) -> ir.Value:
        return const(name, np.array(values, np.int64))

    last = i64("last_axis", [-1])
    k = op("Slice", [kv, i64("k_start", [0]), i64("k_end", [hk]), last], "k")
    v = op("Slice", [kv, i64("v_start", [hk]), i64("v_end", [hk + hv]), last], "v")
    q4 = op("Reshape", [q, i64("q_shape", [0, heads, 1, dq])], "q_heads")
    k_heads = op("Reshape", [k, i64("k_shape", [0, 0, heads, dq])], "k_heads")
    k4 = op("Transpose", [k_heads], "k_t", perm=[0, 2, 3, 1])  # [B, heads, dq, S]
    v_heads = op("Reshape", [v, i64("v_shape", [0, 0, heads, dv])], "v_heads")
    v4 = op("Transpose", [v_heads], "v_t", perm=[0, 2, 1, 3])  # [B, heads, S, dv]
    scores = op("Mul", [op("MatMul", [q4, k4], "scores"), const("scale", np.array(scale, dtype))], "scaled")
    if mask is not None and mask_rank == 1:  # key lengths: position j of row b is read when j < mask[b]
        length = op("Cast", [mask], "key_length", to=int(ir.DataType.INT64))
        count = op("Gather", [op("Shape", [x], "input_shape"), const("seq_axis", np.array(1, np.int64))],
                   "sequence_length")
        positions = op("Range", [const("range_start", np.array(0, np.int64)), count,
                                 const("range_step", np.array(1, np.int64))], "positions")
        column = op("Reshape", [length, i64("length_shape", [-1, 1])], "key_length_column")
        keep = op("Less", [positions, column], "mask_keep")  # [B, S]
    elif mask is not None:  # raw mask: kept where > 0
        keep = op("Greater", [mask, const("zero_mask", np.array(0, _mask_dtype(mask)))], "mask_keep")
    if mask is not None:
        bias_mask = op("Where", [keep, const("no_bias", np.array(0, dtype)),
                                 const("filter", np.array(mask_filter, dtype))], "mask_bias")
        bias4 = op("Reshape", [bias_mask, i64("mask_shape", [0, 1, 1, -1])], "mask_bias_heads")
        scores = op("Add", [scores, bias4], "masked")
    probs = op("Softmax", [scores], "probs", axis=-1)
    context = op("MatMul", [probs, v4], "context")  # [B, heads, 1, dv]
    result = op("Reshape", [context, i64("out_shape", [0, hv])], "joined")
    graph.insert_before(node, new)
    copies = redirect_outputs([g.outputs[0] for g in gathers], result,
                              lambda: fresh_name(nodes_taken, f"{base}/copy"))
    graph.insert_before(node, copies)
    graph.remove(gathers, safe=True)
    graph.remove(node, safe=True)
    for value in (w_value, b_value):
        if value is not None and not value.uses() and value.is_initializer():
            graph.initializers.pop(value.name, None)


def _mask_dtype(mask: ir.Value):
    if mask.dtype is not None:
        return mask.dtype.numpy()
    return np.int32


def _attr(name: str, value) -> ir.Attr:
    if isinstance(value, list):
        return ir.Attr(name, ir.AttributeType.INTS, value)
    return ir.Attr(name, ir.AttributeType.INT, int(value))
