"""Axes where the batch and a channel axis are merged into one: ``[batch*heads, seq, head_dim]``.

BLOOM, DeBERTa-v2 and ``torch.nn.functional.multi_head_attention_forward`` (WavLM, ``nn.MultiheadAttention``)
fold the heads into the batch before a batched MatMul (``x.reshape(batch * num_heads, seq, head_dim)``);
ConvBERT's span-based convolution folds them into ``batch * sequence``. Position
``b * P + p`` of such an axis belongs to channel position ``p`` of batch item ``b``: the axis repeats
one period of ``P`` positions an unknown number of times. A walk tracks it like any other axis with the
owner of one period and remembers the symbolic dimension repeated outside it (the batch, the *period
symbol*; a product of names such as ``batch_size*sequence_length`` for ConvBERT). Only ops that treat the
axis position by position may touch it (:data:`MERGED_AXIS_OPS`); a
constant, a static dimension or a graph input/output on it refuses the group.

Two shape forms count the merged axis and are patched: the factor ``c`` of ``batch * c`` in a target
shape (:func:`read_source` finds where ``batch`` is read), and the divisor ``c`` of ``Shape(x)[k] / c``
where ``x``'s axis ``k`` is merged (:func:`follow_merged_read`), which recovers the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from optimum_prune.association.shape_expr import is_marker
from optimum_prune.graph import const_array

if TYPE_CHECKING:
    from optimum_prune.association.builder import Walk

MERGED_AXIS_OPS = frozenset({
    # position-wise along the axis: unary and broadcasting element-wise ops, batched MatMul, softmax over
    # another axis, layout ops, and Shape (whose reads are followed)
    "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Cast", "CastLike", "Identity", "Dropout", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Reciprocal", "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Equal", "Less",
    "Greater", "Not", "And", "Or", "MatMul", "Softmax", "LogSoftmax", "Transpose", "Reshape", "Unsqueeze",
    "Squeeze", "Shape", "Expand", "Tile", "GatherElements",
    # along other axes only (their rules refuse padding or slicing the merged axis itself)
    "Pad", "Slice",
})
"""ai.onnx ops a walk may cross on a merged axis; any other op there refuses the group."""

_PASS_THROUGH = ("Cast", "Identity", "Unsqueeze", "Squeeze")


def is_product(merged, a, b) -> bool:
    """Whether the symbolic dimension ``merged`` (as symbolic shape inference writes it, e.g.
    ``4*batch_size``) is the product of the dimensions ``a`` and ``b``, one of them symbolic."""
    if isinstance(merged, int) or (isinstance(a, int) and isinstance(b, int)):
        return False
    if a == 1 or b == 1:  # decided without building sympy terms, as are products printed without "*"
        return str(merged) == str(b if a == 1 else a)
    if "*" not in str(merged):
        return False
    flat = str(merged).replace(" ", "")
    if not (isinstance(a, int) or isinstance(b, int)):
        # two symbols, one of them compound ("batch_size*(floor(sequence_length/5) - 1)"): as printed
        pa, pb = (_factor_text(d) for d in (a, b))
        if flat in (f"{pa}*{pb}", f"{pb}*{pa}"):
            return True
    import sympy

    # printed, never parsed: dimension names come from the model file and are not evaluated
    def term(d):
        return sympy.Integer(d) if isinstance(d, int) else sympy.Symbol(str(d))

    return flat == str(term(a) * term(b)).replace(" ", "")


def _factor_text(d) -> str:
    """A symbolic dimension as a factor of a printed product: compound expressions in parentheses."""
    text = str(d).replace(" ", "")
    return text if text.isidentifier() else f"({text})"


def split_symbol(merged, symbol, factor: int) -> bool:
    """Whether the symbolic dimension ``merged`` prints as ``factor * symbol`` (``4*batch_size``)."""
    return not isinstance(symbol, int) and factor > 1 and is_product(merged, symbol, factor)


def symbol_product(dims: list) -> str | None:
    """The period symbol of a run of symbolic dimensions merged together: the dimension itself, or the
    product of plain names as sympy prints it (``batch_size*sequence_length``); None for compound names,
    which are never parsed."""
    if len(dims) == 1:
        return str(dims[0])
    if not all(isinstance(d, str) and d.isidentifier() for d in dims):
        return None
    import sympy

    return str(sympy.Mul(*(sympy.Symbol(d) for d in dims)))


def _leading_symbols(dims: list) -> int:
    n = 0
    while n < len(dims) and not isinstance(dims[n], int):
        n += 1
    return n


def find_merged_block(outer: list, merged: list, i: int, j: int) -> tuple[int, int] | None:
    """A block ``outer[i : i+r+k]`` = ``[S1..Sr, a1..ak]`` against ``merged[j : j+1+l]`` =
    ``[c*S1*..*Sr, b1..bl]`` with static ``a``, ``b`` and ``c * prod(b) == prod(a)`` (``[B, 32]`` against
    ``[4*B, 8]``; ConvBERT's ``[B, S, 16, 3]`` against ``[2*B*S, 8, 3]``): the lengths of both sides of the
    shortest such block, or None."""
    m = merged[j] if j < len(merged) else None
    if m is None or isinstance(m, int):
        return None
    for r in range(1, _leading_symbols(outer[i:]) + 1):
        symbol = symbol_product(outer[i:i + r])
        if symbol is None or symbol == str(m):
            continue
        for k in range(1, len(outer) - i - r + 1):
            a_dims = outer[i + r:i + r + k]
            if not all(isinstance(d, int) for d in a_dims):
                break
            a = int(np.prod(a_dims))
            for l_ in range(0, len(merged) - j):
                b_dims = merged[j + 1:j + 1 + l_]
                if not all(isinstance(d, int) for d in b_dims):
                    break
                b = int(np.prod(b_dims)) if b_dims else 1
                if b and a % b == 0 and split_symbol(m, symbol, a // b):
                    return r + k, 1 + l_
    return None


def static_block(src: list, dst: list, entry_period: str | None, owner_size: int,
                 walk: Walk) -> tuple[list[int], list[int], str | None, str | None]:
    """A Reshape block's dimensions with its merged axis made static, for the channel mapping.

    Returns ``(src, dst, src_period, dst_period)``: each side's dimensions with the symbols ``S..`` of the
    period replaced by 1 and the merged dimension ``c*S..`` by ``c``, and the period symbol of each side
    whose first axis is the merged one (None for a side without it). A block without symbols comes back as
    is; any other symbolic form refuses the group.
    """
    if all(isinstance(d, int) for d in src + dst):
        return list(src), list(dst), None, None
    if entry_period is not None and len(src) == len(dst) == 1 and src[0] == dst[0]:
        return [owner_size], [owner_size], entry_period, entry_period  # [c*B, ...] -> [c*B, ...]
    for outer, merged, outer_is_src in ((src, dst, True), (dst, src, False)):
        r = _leading_symbols(outer)
        static_rest = all(isinstance(d, int) for d in outer[r:] + merged[1:])
        if not r or _leading_symbols(merged) != 1 or not static_rest:
            continue
        symbol = symbol_product(outer[:r])
        rest_outer = int(np.prod(outer[r:])) if len(outer) > r else 1
        rest_merged = int(np.prod(merged[1:])) if len(merged) > 1 else 1
        if symbol is None or not rest_merged or rest_outer % rest_merged:
            continue
        factor = rest_outer // rest_merged
        if not split_symbol(merged[0], symbol, factor):
            continue
        new_outer = [1] * r + list(outer[r:])
        new_merged = [factor] + list(merged[1:])
        if outer_is_src:
            return new_outer, new_merged, None, symbol
        return new_merged, new_outer, symbol, None
    walk.fail("Reshape: symbolic dimension next to the channel axis")
    raise AssertionError("unreachable")


def element_producer(walk: Walk, value: ir.Value, index: int) -> tuple[ir.Node, int] | None:
    """The node computing element ``index`` of the shape vector ``value`` and the element's index in its
    output, through Concat pieces, Cast, Identity, Unsqueeze and Squeeze; None for a constant, a graph
    input or a piece of unknown length."""
    for _ in range(16):
        if const_array(value) is not None:
            return None
        node = value.producer()
        if node is None:
            return None
        if node.op_type in _PASS_THROUGH:
            value = node.inputs[0]
            continue
        if node.op_type != "Concat":
            return node, index
        offset = 0
        for inp in node.inputs:
            n = _length(walk, inp)
            if n is None:
                return None
            if index < offset + n:
                value, index = inp, index - offset
                break
            offset += n
        else:
            return None
    return None


def read_source(walk: Walk, value: ir.Value, index: int) -> tuple[ir.Value, int] | None:
    """The (tensor, axis) whose dimension element ``index`` of the shape value ``value`` reads, through
    Shape, Gather and :func:`element_producer`'s pieces; None for any other form."""
    for _ in range(16):
        found = element_producer(walk, value, index)
        if found is None:
            return None
        node, index = found
        if node.op_type == "Shape":
            axis = shape_read_axis(walk, node, index)
            return None if axis is None else (node.inputs[0], axis)
        if node.op_type != "Gather" or _attr(node, "axis", 0) != 0:
            return None
        idx = const_array(node.inputs[1])
        if idx is None:
            return None
        flat = idx.reshape(-1)
        j = int(flat[index if flat.size > 1 else 0])
        if j < 0:
            n = _length(walk, node.inputs[0])
            if n is None:
                return None
            j += n
        value, index = node.inputs[0], j
    return None


def shape_read_axis(walk: Walk, shape_node: ir.Node, index: int) -> int | None:
    """The axis of ``Shape(x)``'s input that output element ``index`` reads (its ``start`` applied), or
    None when a negative ``start`` meets an input of unknown rank."""
    start = int(_attr(shape_node, "start", 0))
    if start < 0:
        shape = walk.shape(shape_node.inputs[0])
        if shape is None:
            return None
        start += len(shape)
    return start + index


def reads_kept_dimension(walk: Walk, value: ir.Value, index: int, symbol: str, node: ir.Node) -> bool:
    """Whether element ``index`` of ``value`` reads a dimension named ``symbol`` from an axis that keeps
    its size; the axis is checked to stay outside the group when the walk ends (as if at ``node``)."""
    source = read_source(walk, value, index)
    if source is None or walk.dim(source[0], source[1]) != symbol:
        return False
    tensor, axis = source

    def kept() -> None:
        if (tensor.name, axis) in walk.owners:
            walk.fail(f"'{node.name}' reads {symbol} from a dimension that shrinks with the group")

    walk.check_at_end(("kept dimension", tensor.name, axis), node, kept)
    return True


def follow_merged_read(walk: Walk, shape_node: ir.Node, axis: int, owner: np.ndarray, period: str) -> None:
    """Check every use of ``Shape(x)`` where ``x``'s ``axis`` is merged (it reads ``period * c``).

    Reads of the other axes are free. The merged element may flow through Cast / Identity / Unsqueeze /
    Squeeze / Concat into the target shape of a Reshape or Expand whose output axis at that element is
    the same merged axis (checked when the walk ends), or be divided by the constant ``c`` (which gives
    back the batch, and is patched); anything else refuses the group.
    """
    rank = walk.rank(shape_node.inputs[0])
    start = _norm(int(_attr(shape_node, "start", 0)), rank)
    end = _norm(int(_attr(shape_node, "end", rank)), rank) if "end" in shape_node.attributes else rank
    if not start <= axis < min(end, rank):
        return
    _follow(walk, shape_node.outputs[0], axis - start, owner, period, (shape_node.inputs[0].name, axis), 0)


def _follow(walk: Walk, vec: ir.Value, index: int | None, owner: np.ndarray, period: str,
            read: tuple[str, int], depth: int) -> None:
    """``index``: the element of ``vec`` holding the merged dimension (None: ``vec`` is that scalar);
    ``read``: the (tensor, axis) it was read from."""
    if depth > 16:
        walk.fail("the merged batch*channel dimension is read through too many ops")
    for use in vec.uses():
        node, slot = use.node, use.idx
        op = node.op_type
        if op == "Gather" and slot == 0:
            idx = const_array(node.inputs[1])
            if idx is None:
                walk.fail(f"the merged batch*channel dimension is read by '{node.name}' with a computed "
                          "index")
            n = _length(walk, vec)
            flat = [int(i) + (n if i < 0 and n is not None else 0) for i in idx.reshape(-1)]
            if any(i < 0 for i in flat):
                walk.fail(f"the merged batch*channel dimension is read by '{node.name}' with a negative "
                          "index")
            for hit in (k for k, i in enumerate(flat) if i == index):
                element = None if idx.ndim == 0 else hit
                _follow(walk, node.outputs[0], element, owner, period, read, depth + 1)
            continue
        if op == "Slice" and slot == 0 and index is not None:
            bounds = _slice_range(walk, node, vec)
            if bounds is None:
                walk.fail(f"the merged batch*channel dimension is read by Slice '{node.name}' with computed "
                          "bounds")
            if bounds[0] <= index < bounds[1]:
                _follow(walk, node.outputs[0], index - bounds[0], owner, period, read, depth + 1)
            continue
        if op in _PASS_THROUGH:
            out = node.outputs[0]
            rank = walk.rank(out)
            _follow(walk, out, None if rank == 0 else (index or 0), owner, period, read, depth + 1)
            continue
        if op == "Concat":
            offset = 0
            for k, inp in enumerate(node.inputs):
                if k == slot:
                    break
                n = _length(walk, inp)
                if n is None:
                    walk.fail(f"shape Concat '{node.name}' with a piece of unknown length")
                offset += n
            _follow(walk, node.outputs[0], offset + (index or 0), owner, period, read, depth + 1)
            continue
        if op == "Div" and slot == 0 and _divides_by_period(walk, node, owner, index):
            continue
        if op == "Shape" or (op == "Equal" and is_marker(node.inputs[1 - slot], index or 0, walk.shape)):
            continue  # the vector's length, or the exporters' ``Where(shape == -1, 1, shape)`` test
        flat_reshape = op == "Reshape" and slot == 0 and walk.rank(node.outputs[0]) == walk.rank(vec) == 1
        if (op == "Where" and slot in (1, 2)) or flat_reshape:
            _follow(walk, node.outputs[0], index, owner, period, read, depth + 1)
            continue
        if op in ("Reshape", "Expand") and slot == 1 and index is not None:
            out, element = node.outputs[0], index
            walk.check_at_end(("merged read", node.name, element), node,
                              lambda out=out, e=element: walk.require_merged(out, e, period, read))
            continue
        walk.fail(f"the merged batch*channel dimension read at run time flows into {op} '{node.name}'")


def _divides_by_period(walk: Walk, node: ir.Node, owner: np.ndarray, index: int | None) -> bool:
    arr = const_array(node.inputs[1])
    if arr is None:
        return False
    flat = arr.reshape(-1)
    k = 0 if flat.size == 1 else index
    if k is None or k >= flat.size or int(flat[k]) != owner.size:
        return False
    walk.patch_constant(node.inputs[1], k, owner)
    return True


def _slice_range(walk: Walk, node: ir.Node, vec: ir.Value) -> tuple[int, int] | None:
    """``[start, end)`` of a step-1 Slice of the 1-D ``vec`` with constant bounds, or None."""
    n = _length(walk, vec)
    ins = list(node.inputs) + [None] * 5
    starts, ends, axes, steps = (const_array(v) if v is not None else None for v in ins[1:5])
    if n is None or starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if (axes is not None and int(axes.reshape(-1)[0]) not in (0, -1)) or (
            steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    start = min(max(start + n if start < 0 else start, 0), n)
    end = min(max(end + n if end < 0 else end, 0), n)
    return start, end


def _length(walk: Walk, value: ir.Value) -> int | None:
    """The length of a 1-D shape vector (1 for a scalar), or None when unknown."""
    shape = walk.shape(value)
    if shape is None:
        return None
    if len(shape) == 0:
        return 1
    return shape[0] if isinstance(shape[0], int) else None


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _norm(axis: int, rank: int) -> int:
    return max(0, axis + rank if axis < 0 else axis)
