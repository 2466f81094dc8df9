"""The op rule library: how a channel axis moves through each operator.

A rule is called with the node and the *entry*: one of the node's inputs or outputs, an axis of it,
and the owner array of that axis (position -> unit, -1 for positions outside the group). The rule
links every other input/output axis that must shrink with it (``walk.link``), marks consumer slices
(``walk.leaf``), records shape constants and attributes that count the channels (``walk.patch_*``),
and refuses what it cannot prove safe (``walk.fail``). Rules are looked up by (domain, op type);
an op with no rule makes its group unprunable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from optimum_prune.association.einsum import einsum
from optimum_prune.association.merged_axes import (
    element_producer,
    find_merged_block,
    follow_merged_read,
    is_product,
    read_source,
    reads_kept_dimension,
    split_symbol,
    static_block,
)
from optimum_prune.association.shape_expr import DimExpr, ShapeExprError, evaluate_dim_expr
from optimum_prune.graph import const_array, is_constant, is_weight

if TYPE_CHECKING:
    from optimum_prune.association.builder import Walk


@dataclass(frozen=True)
class Entry:
    """Where a walk enters a node: ``node.inputs[index]`` (or outputs) at ``axis`` with ``owner``."""

    value: ir.Value
    axis: int
    owner: np.ndarray
    is_output: bool
    index: int


Rule = Callable[[ir.Node, Entry, "Walk"], None]

MS = "com.microsoft"


class RuleRegistry:
    """Rules keyed by (domain, op_type); ``""`` and ``"ai.onnx"`` are the same domain."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, str], Rule] = {}

    def register(self, op_types: str | tuple[str, ...], rule: Rule, domain: str = "") -> None:
        """Register ``rule`` for one or several op types of ``domain``."""
        for op in (op_types,) if isinstance(op_types, str) else op_types:
            self._rules[(domain, op)] = rule

    def get(self, node: ir.Node) -> Rule | None:
        """The rule for ``node``, or None when the op is unknown."""
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        return self._rules.get((domain, node.op_type))

    def copy(self) -> RuleRegistry:
        """A copy that can be extended without changing this registry."""
        new = RuleRegistry()
        new._rules = dict(self._rules)
        return new


# ---------------------------------------------------------------------------------------------------
# helpers


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _repeat(owner: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(owner, k)


def _rows_owner(owner: np.ndarray, rows: int, walk: Walk, what: str) -> np.ndarray:
    """Owner of each of ``rows`` contiguous blocks of ``owner``; units inside one block are merged."""
    if owner.size % rows:
        walk.fail(f"{what}: axis of size {owner.size} does not split into {rows} blocks")
    block = owner.reshape(rows, -1)
    owned = block >= 0
    if (owned.any(axis=1) & ~owned.all(axis=1)).any():
        walk.fail(f"{what}: a block mixes channels of this group with other channels")
    walk.units.union_rows(block)
    return walk.units.find(block[:, 0])


def _outputs(node: ir.Node) -> list[ir.Value]:
    return [o for o in node.outputs if o is not None and o.name]


def _entry_to_output_axis(node: ir.Node, entry: Entry, walk: Walk) -> int:
    if entry.is_output:
        return entry.axis
    return entry.axis + walk.rank(node.outputs[0]) - walk.rank(entry.value)


# ---------------------------------------------------------------------------------------------------
# elementwise


def unary(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Shape-preserving ops on input 0 (activations, Cast, Identity, Dropout, ...): same axis everywhere."""
    walk.link(node.inputs[0], entry.axis, entry.owner)
    for out in _outputs(node):
        walk.link(out, entry.axis, entry.owner)


def broadcast(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Multidirectional broadcast (Add, Mul, Where, ...): inputs that span the axis shrink with it."""
    out = node.outputs[0]
    out_axis = _entry_to_output_axis(node, entry, walk)
    ro = walk.rank(out)
    if not entry.is_output and entry.owner.size == 1 and walk.dim(out, out_axis) != 1:
        walk.fail(f"{node.op_type} broadcasts the channel axis")  # one position repeated: nothing to prune
    walk.link(out, out_axis, entry.owner)
    for inp in node.inputs:
        if inp is None or not inp.name:
            continue
        ri = walk.rank(inp)
        axis = out_axis - (ro - ri)
        if axis < 0:
            continue
        dim = walk.dim(inp, axis)
        if dim == 1:
            continue
        walk.link(inp, axis, entry.owner)


# ---------------------------------------------------------------------------------------------------
# matrix products


def _matmul_labels(ra: int, rb: int, ry: int, trans_a: bool = False, trans_b: bool = False):
    nb = ry - (1 if ra >= 2 else 0) - (1 if rb >= 2 else 0)

    def batch(r: int) -> list[tuple]:
        return [("b", i + nb - r) for i in range(r)]

    la = ["K"] if ra == 1 else batch(ra - 2) + (["K", "M"] if trans_a else ["M", "K"])
    lb = ["K"] if rb == 1 else batch(rb - 2) + (["N", "K"] if trans_b else ["K", "N"])
    ly = [("b", i) for i in range(nb)] + (["M"] if ra >= 2 else []) + (["N"] if rb >= 2 else [])
    return la, lb, ly


def _link_labels(node: ir.Node, entry: Entry, walk: Walk, operands: list[tuple[ir.Value, list]]) -> None:
    labels = None
    for value, lab in operands:
        if value is entry.value and (entry.is_output == (value is node.outputs[0])):
            labels = lab[entry.axis]
            break
    if labels is None:
        walk.fail("entry tensor not found among the operands")
    a_const = is_constant(operands[0][0])
    b_const = is_constant(operands[1][0])
    if labels == "K":
        if not (is_weight(operands[0][0]) or is_weight(operands[1][0])):
            # q.k^T summed over channels that are not whole heads (e.g. head_dim of a single head): a
            # removed channel drops its term from every product, and no constant slice can be zeroed
            # to match, so the result would not be exact.
            walk.fail(f"{node.op_type} sums the channels of two activations (channels inside a head)",
                      keep=entry.owner)
        for value, lab in operands[:2]:
            for ax, lb in enumerate(lab):
                if lb == "K" and not (value is entry.value and ax == entry.axis):
                    walk.link(value, ax, entry.owner)
                if lb == "K" and is_constant(value):
                    walk.leaf(value, ax)
        return
    if isinstance(labels, tuple) and not (a_const or b_const):
        walk.mark("attention")
    for value, lab in operands:
        for ax, lb in enumerate(lab):
            if lb != labels or (value is entry.value and ax == entry.axis):
                continue
            if isinstance(lb, tuple) and walk.dim(value, ax) == 1:
                continue
            walk.link(value, ax, entry.owner)
            if lb == "N" and value is not node.outputs[0] and is_constant(value):
                walk.root(value, ax)
            if lb == "M" and value is not node.outputs[0] and is_constant(value):
                walk.root(value, ax)


def matmul(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """MatMul / FusedMatMul: batch axes pass through, M and N go to the output, K is the leaf."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ta = bool(_attr(node, "transA", 0))
    tb = bool(_attr(node, "transB", 0))
    la, lb, ly = _matmul_labels(walk.rank(a), walk.rank(b), walk.rank(y), ta, tb)
    _link_labels(node, entry, walk, [(a, la), (b, lb), (y, ly)])


def gemm(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Gemm: like MatMul on 2-D operands, with C broadcast onto [M, N]."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    has_c = len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name
    c = node.inputs[2] if has_c else None
    la = ["K", "M"] if _attr(node, "transA", 0) else ["M", "K"]
    lb = ["N", "K"] if _attr(node, "transB", 0) else ["K", "N"]
    operands = [(a, la), (b, lb), (y, ["M", "N"])]
    if c is not None:
        rc = walk.rank(c)
        lc = ["M", "N"][2 - rc:]
        lc = [lab if walk.dim(c, i) != 1 else ("bcast", i) for i, lab in enumerate(lc)]
        operands.append((c, lc))
    _link_labels(node, entry, walk, operands)


# ---------------------------------------------------------------------------------------------------
# convolutions and normalisation


def _optional(node: ir.Node, i: int) -> ir.Value | None:
    if len(node.inputs) > i and node.inputs[i] is not None and node.inputs[i].name:
        return node.inputs[i]
    return None


def conv(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Conv: input channels are the leaf (W axis 1), filters the root (W axis 0, bias, output axis 1).

    Grouped and depthwise convolutions pass whole groups through and patch the ``group`` attribute.
    """
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = _optional(node, 2)
    groups = int(_attr(node, "group", 1))
    walk.mark("conv")
    in_side = (entry.value is x and not entry.is_output) or (entry.value is w and entry.axis == 1)
    if entry.axis not in (0, 1) or (entry.value in (x, y) and entry.axis != 1):
        walk.fail("a Conv spatial or batch axis cannot carry channels")
    if groups == 1:
        if in_side:
            walk.link(x, 1, entry.owner)
            walk.link(w, 1, entry.owner)
            walk.leaf(w, 1)
        else:
            walk.link(w, 0, entry.owner)
            walk.root(w, 0)
            walk.link(y, 1, entry.owner)
            if bias is not None:
                walk.link(bias, 0, entry.owner)
        return
    cin = walk.dim(x, 1)
    cout = walk.dim(y, 1)
    if not isinstance(cin, int) or not isinstance(cout, int):
        walk.fail("grouped Conv with unknown channel counts")
    if in_side and entry.value is w:
        walk.fail("grouped Conv: the per-group input axis of W cannot carry channels")
    group_owner = _rows_owner(entry.owner, groups, walk, "grouped Conv")
    walk.link(x, 1, _repeat(group_owner, cin // groups))
    walk.link(w, 0, _repeat(group_owner, cout // groups))
    walk.root(w, 0)
    walk.link(y, 1, _repeat(group_owner, cout // groups))
    if bias is not None:
        walk.link(bias, 0, _repeat(group_owner, cout // groups))
    walk.patch_attribute(node, "group", 0, group_owner)


def conv_transpose(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """ConvTranspose (group 1): input channels are W axis 0 (leaf), output channels W axis 1."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = _optional(node, 2)
    walk.mark("conv")
    if int(_attr(node, "group", 1)) != 1:
        walk.fail("grouped ConvTranspose is not supported")
    if (entry.value in (x, y) and entry.axis != 1) or (entry.value is w and entry.axis not in (0, 1)):
        walk.fail("a ConvTranspose spatial or batch axis cannot carry channels")
    if (entry.value is x and not entry.is_output) or (entry.value is w and entry.axis == 0):
        walk.link(x, 1, entry.owner)
        walk.link(w, 0, entry.owner)
        walk.leaf(w, 0)
    else:
        walk.link(w, 1, entry.owner)
        walk.root(w, 1)
        walk.link(y, 1, entry.owner)
        if bias is not None:
            walk.link(bias, 0, entry.owner)


def batch_norm(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """BatchNormalization / InstanceNormalization: per-channel (axis 1) parameters shrink with it."""
    x, y = node.inputs[0], node.outputs[0]
    if len(_outputs(node)) > 1:
        walk.fail("BatchNormalization in training mode")
    axis = 1 if entry.value not in (x, y) else entry.axis
    if entry.value not in (x, y) or axis == 1:
        walk.link(x, 1, entry.owner)
        walk.link(y, 1, entry.owner)
        for p in node.inputs[1:]:
            if p is not None and p.name:
                walk.link(p, 0, entry.owner)
        return
    if node.op_type == "InstanceNormalization":
        walk.fail("InstanceNormalization normalises over the spatial axes")
    walk.link(x, axis, entry.owner)
    walk.link(y, axis, entry.owner)


def _norm_family(node: ir.Node, entry: Entry, walk: Walk, acts: list[int], outs: list[int],
                 params: list[int], norm_from: int | None) -> None:
    """Shared logic of LayerNorm-like ops: ``acts``/``outs`` are activation input/output indices."""
    ref = node.outputs[0]
    rank = walk.rank(ref)
    start = _norm_axis(norm_from, rank) if norm_from is not None else rank - 1
    if entry.value in [node.inputs[i] for i in params if i < len(node.inputs)] and entry.value is not None:
        pr = walk.rank(entry.value)
        axis = rank - pr + entry.axis
    elif entry.is_output:
        axis = entry.axis
    else:
        axis = entry.axis + rank - walk.rank(entry.value)
    values = [node.inputs[i] for i in acts if i < len(node.inputs)] + [node.outputs[i] for i in outs
                                                                          if i < len(node.outputs)]
    for v in values:
        if v is None or not v.name:
            continue
        va = axis - (rank - walk.rank(v))
        if va >= 0 and walk.dim(v, va) != 1:
            walk.link(v, va, entry.owner)
    if axis >= start:
        walk.non_exact(f"{node.op_type} '{node.name}' normalises over the channel axis")
        for i in params:
            p = _optional(node, i)
            if p is None:
                continue
            pa = axis - (rank - walk.rank(p))
            if pa >= 0 and walk.dim(p, pa) != 1:
                walk.link(p, pa, entry.owner)


def layer_norm(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """LayerNormalization / RMSNormalization / SimplifiedLayerNormalization (normalised from ``axis``)."""
    params = [1, 2] if node.op_type == "LayerNormalization" else [1]
    _norm_family(node, entry, walk, [0], [0], params, int(_attr(node, "axis", -1)))


def skip_layer_norm(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """SkipLayerNormalization (input, skip, gamma, beta, bias -> out, mean, inv_std, sum)."""
    _norm_family(node, entry, walk, [0, 1], [0, 3], [2, 3, 4], None)


def skip_simplified_layer_norm(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """SkipSimplifiedLayerNormalization (input, skip, gamma, bias -> out, mean, inv_std, sum)."""
    _norm_family(node, entry, walk, [0, 1], [0, 3], [2, 3], None)


def embed_layer_norm(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """EmbedLayerNormalization: the hidden axis of the embedding tables, gamma, beta and outputs."""
    is_table = entry.value in [_optional(node, i) for i in (2, 3, 4, 5, 6)] and not entry.is_output
    if (is_table and entry.value in [_optional(node, i) for i in (2, 3, 4)] and entry.axis != 1) or (
        entry.is_output and entry.axis != 2
    ):
        walk.fail("EmbedLayerNormalization: only the hidden axis can be pruned")
    for i in (2, 3, 4):
        t = _optional(node, i)
        if t is not None:
            walk.link(t, 1, entry.owner)
    for i in (5, 6):
        t = _optional(node, i)
        if t is not None:
            walk.link(t, 0, entry.owner)
    for i in (0, 2):
        if len(node.outputs) > i and node.outputs[i] is not None and node.outputs[i].name:
            walk.link(node.outputs[i], 2, entry.owner)
    walk.non_exact(f"EmbedLayerNormalization '{node.name}' normalises over the hidden axis")


def reduce(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Reduce*: a reduced channel axis is a normalisation-like coupling (not exact); others pass."""
    x, y = node.inputs[0], node.outputs[0]
    rank = walk.rank(x)
    axes = _attr(node, "axes", None)
    if axes is None and _optional(node, 1) is not None:
        arr = const_array(node.inputs[1])
        if arr is None:
            walk.fail(f"{node.op_type} with computed axes")
        axes = arr.tolist()
    keepdims = int(_attr(node, "keepdims", 1))
    if axes is None or len(axes) == 0:
        if int(_attr(node, "noop_with_empty_axes", 0)):
            walk.link(x if entry.is_output else y, entry.axis, entry.owner)
            return
        axes = list(range(rank))
    axes = sorted(_norm_axis(int(a), rank) for a in axes)
    if entry.is_output:
        if keepdims:
            in_axis = entry.axis
        else:
            kept = [i for i in range(rank) if i not in axes]
            in_axis = kept[entry.axis]
        walk.link(x, in_axis, entry.owner)
        return
    if entry.axis in axes:
        if node.op_type in ("ReduceMax", "ReduceMin", "ArgMax", "ArgMin"):
            walk.fail(f"{node.op_type} over the channel axis")
        walk.non_exact(f"{node.op_type} '{node.name}' reduces over the channel axis")
        return
    out_axis = entry.axis if keepdims else entry.axis - sum(1 for a in axes if a < entry.axis)
    walk.link(y, out_axis, entry.owner)


def softmax(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Softmax / LogSoftmax / Hardmax: the channel axis must not be the normalised one."""
    rank = walk.rank(node.outputs[0])
    axis = _norm_axis(int(_attr(node, "axis", -1)), rank)
    if entry.axis == axis:
        walk.fail(f"{node.op_type} normalises over the channel axis")
    unary(node, entry, walk)


# ---------------------------------------------------------------------------------------------------
# layout


def transpose(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Transpose: the axis moves by the permutation."""
    rank = walk.rank(node.inputs[0])
    perm = list(_attr(node, "perm", list(range(rank))[::-1]))
    if entry.is_output:
        walk.link(node.inputs[0], perm[entry.axis], entry.owner)
    else:
        walk.link(node.outputs[0], perm.index(entry.axis), entry.owner)


def _squeeze_axes(node: ir.Node, walk: Walk) -> list[int] | None:
    axes = _attr(node, "axes", None)
    if axes is None and _optional(node, 1) is not None:
        arr = const_array(node.inputs[1])
        if arr is None:
            walk.fail(f"{node.op_type} with computed axes")
        axes = arr.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def unsqueeze(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Unsqueeze: the axis index shifts past the inserted axes."""
    ro = walk.rank(node.outputs[0])
    axes = sorted(_norm_axis(a, ro) for a in (_squeeze_axes(node, walk) or []))
    kept = [i for i in range(ro) if i not in axes]
    if entry.is_output:
        if entry.axis in axes:
            walk.fail("Unsqueeze: an inserted axis cannot carry channels")
        walk.link(node.inputs[0], kept.index(entry.axis), entry.owner)
    else:
        walk.link(node.outputs[0], kept[entry.axis], entry.owner)


def squeeze(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Squeeze: the axis index shifts past the removed axes."""
    ri = walk.rank(node.inputs[0])
    axes = _squeeze_axes(node, walk)
    if axes is None:
        axes = [i for i in range(ri) if walk.dim(node.inputs[0], i) == 1]
    axes = sorted(_norm_axis(a, ri) for a in axes)
    kept = [i for i in range(ri) if i not in axes]
    if entry.is_output:
        walk.link(node.inputs[0], kept[entry.axis], entry.owner)
    else:
        if entry.axis in axes:
            walk.fail("Squeeze removes the channel axis")
        walk.link(node.outputs[0], kept.index(entry.axis), entry.owner)


def concat(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Concat: along another axis every input shrinks alike; along the channel axis, offsets."""
    y = node.outputs[0]
    rank = walk.rank(y)
    axis = _norm_axis(int(_attr(node, "axis", 0)), rank)
    inputs = [v for v in node.inputs if v is not None and v.name]
    if entry.axis != axis:
        for v in inputs + [y]:
            walk.link(v, entry.axis, entry.owner)
        return
    sizes = [walk.dim(v, axis) for v in inputs]
    if not all(isinstance(s, int) for s in sizes):
        walk.fail("Concat along the channel axis with inputs of unknown size")
    offsets = np.cumsum([0] + sizes)
    if entry.is_output:
        for v, lo, hi in zip(inputs, offsets[:-1], offsets[1:], strict=True):
            part = entry.owner[lo:hi]
            if (part >= 0).any():
                walk.link(v, axis, part)
        return
    full = np.full(int(offsets[-1]), -1, dtype=np.int64)
    for v, lo, hi in zip(inputs, offsets[:-1], offsets[1:], strict=True):
        if v is entry.value:
            full[lo:hi] = entry.owner
    walk.link(y, axis, full)


def split(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Split: along the channel axis each output takes its range; split sizes are patched."""
    x = node.inputs[0]
    rank = walk.rank(x)
    axis = _norm_axis(int(_attr(node, "axis", 0)), rank)
    outs = list(node.outputs)
    if entry.axis != axis:
        for v in [x] + _outputs(node):
            walk.link(v, entry.axis, entry.owner)
        return
    sizes = [walk.dim(v, axis) for v in outs]
    if not all(isinstance(s, int) for s in sizes):
        walk.fail("Split along the channel axis with outputs of unknown size")
    offsets = np.cumsum([0] + sizes)
    if entry.is_output:
        full = np.full(int(offsets[-1]), -1, dtype=np.int64)
        k = outs.index(entry.value)
        full[offsets[k]:offsets[k + 1]] = entry.owner
        walk.link(x, axis, full)
        return
    split_input = _optional(node, 1)
    for k, (v, lo, hi) in enumerate(zip(outs, offsets[:-1], offsets[1:], strict=True)):
        part = entry.owner[lo:hi]
        if (part >= 0).any():
            walk.link(v, axis, part)
        if split_input is not None:
            walk.patch_shape_element(split_input, k, part, node, source=(x, axis, int(lo), int(hi)))
        elif _attr(node, "split", None) is not None:
            walk.patch_attribute(node, "split", k, part)
        else:
            walk.fail("Split with implicit sizes (normalisation makes them explicit when shapes are known)")


def slice_(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Slice: along another axis the channels pass; along the channel axis (step 1) the output takes its
    range of positions (fused QKV / gate-up splits); with a step, one offset of every block (see
    :func:`_strided_slice`). Constant bounds are patched; bounds computed from the channel dimension
    itself (``torch.chunk``) are evaluated and must follow the pruning unpatched."""
    x, y = node.inputs[0], node.outputs[0]
    rank = walk.rank(x)
    starts_v, ends_v, axes_v, steps_v = (_optional(node, i) for i in (1, 2, 3, 4))
    starts, ends = const_array(starts_v), const_array(ends_v)
    axes = const_array(axes_v) if axes_v is not None else None
    if axes_v is not None and axes is None:
        walk.fail("Slice with computed axes")
    if axes is not None:
        n_axes = axes.size
    elif starts is not None:
        n_axes = starts.size
    else:
        n_axes = walk.dim(starts_v, 0)
        if not isinstance(n_axes, int):
            walk.fail("Slice with computed starts and no axes")
    axes_list = [_norm_axis(int(a), rank) for a in (axes.reshape(-1) if axes is not None else range(n_axes))]
    if entry.axis not in axes_list:
        walk.link(x if entry.is_output else y, entry.axis, entry.owner)
        return
    i = axes_list.index(entry.axis)
    if walk.period is not None:
        walk.fail("Slice along a merged batch*channel axis")
    size = walk.dim(x, entry.axis)
    if not isinstance(size, int):
        walk.fail("Slice along a channel axis of unknown size")
    steps = const_array(steps_v)
    if steps_v is not None and steps is None:
        walk.fail("Slice along the channel axis with a computed step")
    if steps is not None and int(steps.reshape(-1)[i]) != 1:
        _strided_slice(node, entry, walk, i, size, int(steps.reshape(-1)[i]), starts, ends)
        return
    bounds = []
    negative: set[str] = set()  # bounds counted from the end: they follow pruning unpatched
    for which, bound_v, arr in (("start", starts_v, starts), ("end", ends_v, ends)):
        if arr is not None:
            b = int(arr.reshape(-1)[i])
            if b < 0:
                negative.add(which)
            bounds.append((max(size + b, 0) if b < 0 else (min(b, size) if which == "end" else b), None))
            continue
        try:
            expr = evaluate_dim_expr(bound_v, i, x, entry.axis, np.arange(size + 1), walk.shape)
        except ShapeExprError as e:
            walk.fail(f"Slice along the channel axis with a computed {which} that is not a function of the "
                      f"channel dimension alone ({e})")
        f = _clamp_bound(expr.values, expr.dims)
        if not expr.known[size]:
            walk.fail(f"Slice along the channel axis: the computed {which} is undefined at {size} channels")
        bounds.append((int(f[size]), (which, expr, f)))
    (start, start_expr), (end, end_expr) = bounds
    if entry.is_output:
        full = np.full(size, -1, dtype=np.int64)
        full[start:end] = entry.owner
        walk.link(x, entry.axis, full)
        in_owner = walk.units.find(full)
    else:
        in_owner = entry.owner
        part = entry.owner[start:end]
        if (part >= 0).any():
            walk.link(y, entry.axis, part)
    if negative:  # the positions from the first bound counted from the end on must stay
        tail = min(start if "start" in negative else size, end if "end" in negative else size)
        _check_kept(walk, node, x, entry.axis, tail, size, "a negative Slice bound")
    if start > 0 and start_expr is None and "start" not in negative:
        walk.patch_shape_element(starts_v, i, in_owner[:start], node, source=(x, entry.axis, 0, start))
    if end < size and end_expr is None and "end" not in negative:
        walk.patch_shape_element(ends_v, i, in_owner[:end], node, source=(x, entry.axis, 0, end))
    for b, computed in ((start, start_expr), (end, end_expr)):
        if computed is not None:
            which, expr, f = computed
            walk.claim(("the computed bounds of Slice", node.name))
            walk.check_at_end(("slice", node.name, which), node,
                              lambda b=b, which=which, expr=expr, f=f: _check_computed_bound(
                                  walk, x, entry.axis, which, b, expr, f))


def _strided_slice(node: ir.Node, entry: Entry, walk: Walk, i: int, size: int, step: int,
                   starts: np.ndarray | None, ends: np.ndarray | None) -> None:
    """Slice with a step along the channel axis, over the whole axis from an offset inside the first
    block of ``step`` positions (GPT-OSS's interleaved gate/up, ``gate_up[..., ::2]`` and ``[..., 1::2]``):
    output position ``j`` is input position ``start + j * step``. The pruned graph takes the same offsets
    of the blocks that remain, so each block of ``step`` positions is removed whole: its units merge (the
    unpicked offsets too), and a block that mixes kept positions with pruned ones refuses the group."""
    x, y = node.inputs[0], node.outputs[0]
    if starts is None or ends is None:
        walk.fail("Slice along the channel axis with a step and computed bounds")
    if step < 0:
        walk.fail("Slice along the channel axis with a negative step")
    start, end = int(starts.reshape(-1)[i]), int(ends.reshape(-1)[i])
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if size % step or not 0 <= start < step or end < size:
        walk.fail(f"Slice along the channel axis with step {step} from {start} to {end} of {size} positions: "
                  "not one offset of every block of the axis")
    if entry.is_output:
        full = np.full(size, -1, dtype=np.int64)
        full[start::step] = entry.owner
        walk.link(x, entry.axis, full)
    else:
        walk.link(y, entry.axis, entry.owner[start::step])
    key = (x.name, entry.axis)
    if key not in walk.owners:
        return  # no position of the group reached the input: the rule runs again if one does
    blocks = size // step
    walk.units.union_rows(walk.owners[key].reshape(blocks, step))

    def whole_blocks() -> None:
        rows = walk.units.find(walk.owners[key]).reshape(blocks, step)
        mixed = (rows < 0).any(axis=1) & (rows >= 0).any(axis=1)
        if mixed.any():
            walk.fail(f"a block of {step} positions sliced with step {step} would lose some positions and "
                      "keep others", keep=rows[mixed].reshape(-1))

    walk.check_at_end(("strided slice", node.name), node, whole_blocks)


def _check_kept(walk: Walk, node: ir.Node, x: ir.Value, axis: int, lo: int, hi: int, what: str) -> None:
    """Positions ``lo:hi`` of ``x``'s ``axis`` must not be removed: a constant bound or index counts them
    (from the end when negative), and would land elsewhere. Checked now and once the walk ends (ownership
    can still grow); the refusal names their units, so the builder can walk again keeping them whole."""

    def check() -> None:
        key = (x.name, axis)
        owned = walk.units.find(walk.owners[key])[lo:hi] if key in walk.owners else np.empty(0, np.int64)
        if (owned >= 0).any():
            walk.fail(f"{what} counts positions {lo}:{hi} of the channel axis, and the group would remove "
                      "some of them", keep=owned, positional=True)

    check()
    walk.check_at_end(("kept", node.name, x.name, axis, lo, hi), node, check)


def _clamp_bound(values: np.ndarray, dims: np.ndarray) -> np.ndarray:
    """ONNX Slice bounds for step 1: negative counts from the end, then clamped to [0, dim]."""
    v = np.where(values < 0, values + dims, values)
    return np.clip(v, 0, dims)


def _check_computed_bound(walk: Walk, x: ir.Value, axis: int, which: str, b: int, expr: DimExpr,
                          f: np.ndarray) -> None:
    """A Slice bound ``f(D)`` recomputed from the pruned channel dimension must land where the positions
    before it went.

    Removing units R deletes ``t = |pos(R)|`` positions, ``|pos(R) & [0, b)|`` of them before the bound,
    so the pruned bound must be ``b - |pos(R) & [0, b)|`` and it is ``f(D - t)``. Sufficient: every unit
    has the same share ``c = a_u / n_u`` of its ``n_u`` positions before ``b`` (then any R has ``c * t`` of
    its positions there), and ``f(D - t) == b - c * t`` for every ``t`` that is a multiple of the gcd of
    the ``n_u`` up to their sum (a superset of the reachable totals). Read at the end of the walk, when the
    ownership of ``x`` and the units are final.
    """
    for k in expr.reads:
        if (x.name, k) in walk.owners:
            walk.fail(f"the computed Slice {which} reads axis {k} of '{x.name}', which shrinks with the "
                      "group")
    owner = walk.units.find(walk.owners[(x.name, axis)])
    size = owner.size
    owned = np.nonzero(owner >= 0)[0]
    if owned.size == 0:
        return
    ids = owner[owned]
    n_u = np.bincount(ids, minlength=walk.n_units)
    a_u = np.bincount(ids[owned < b], minlength=walk.n_units)
    units = np.nonzero(n_u)[0]
    n, a = n_u[units], a_u[units]
    if not (a * n[0] == n * a[0]).all():
        walk.fail(f"Slice along the channel axis whose {which} is computed from the channel dimension: the "
                  f"group's units do not all own the same share of their positions before the bound "
                  f"({b} of {size}), so the recomputed bound cannot follow every pruning (e.g. chunk halves "
                  "that are not pruned together)")
    g = int(np.gcd.reduce(n))
    t = np.arange(0, int(n.sum()) + 1, g, dtype=np.int64)
    num = t * int(a[0])
    expected = b - num // int(n[0])
    dims = size - t
    ok = (num % int(n[0]) == 0) & expr.known[dims] & (f[dims] == expected)
    if not ok.all():
        k = int(np.argmin(ok))
        got = int(f[dims[k]]) if expr.known[dims[k]] else "undefined"
        walk.fail(f"Slice along the channel axis whose {which} is computed from the channel dimension but "
                  f"does not follow pruning: at {int(dims[k])} of {size} channels it evaluates to {got}, but "
                  f"the kept positions before it number {int(expected[k])}")


def gather(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Gather: data axes other than the gather axis move past the index axes (embeddings)."""
    data, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    rd = walk.rank(data)
    axis = _norm_axis(int(_attr(node, "axis", 0)), rd)
    ri = walk.rank(idx)
    if entry.value is idx and not entry.is_output:
        walk.fail("Gather indices cannot carry channels")
    if entry.is_output:
        o = entry.axis
        if axis <= o < axis + ri:
            walk.fail("a Gather index axis cannot carry channels")
        walk.link(data, o if o < axis else o - ri + 1, entry.owner)
        return
    if entry.axis == axis:
        _gather_channels(node, walk, data, axis, const_array(idx))
        return
    out_axis = entry.axis if entry.axis < axis else entry.axis + ri - 1
    walk.link(y, out_axis, entry.owner)
    if is_constant(data):
        walk.root(data, entry.axis)


def gather_nd(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """GatherND: the output is ``indices.shape[:-1] + data.shape[batch_dims + k:]`` (``k`` the index
    depth), so a data axis past the indexed ones moves unchanged to the output's trailing axes (an
    interleaved rotary's ``x[..., 0::2]`` as some exporters emit it, gathering over the axes before the
    heads). An indexed axis, a batch axis or the indices themselves cannot carry channels."""
    data, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if entry.value is idx and not entry.is_output:
        walk.fail("GatherND indices cannot carry channels")
    ri = walk.rank(idx)
    depth = walk.dim(idx, ri - 1)
    if not isinstance(depth, int):
        walk.fail("GatherND with an index depth that is not static")
    first = int(_attr(node, "batch_dims", 0)) + depth  # the first data axis not indexed
    lead = ri - 1  # output axes before the data's trailing ones
    if entry.is_output:
        if entry.axis < lead:
            walk.fail("a GatherND index axis cannot carry channels")
        walk.link(data, entry.axis - lead + first, entry.owner)
        return
    if entry.axis < first:
        walk.fail("GatherND indexes the channel axis")
    walk.link(y, entry.axis - first + lead, entry.owner)
    if is_constant(data):
        walk.root(data, entry.axis)


def _gather_channels(node: ir.Node, walk: Walk, data: ir.Value, axis: int,
                     indices: np.ndarray | None) -> None:
    """Gather of constant positions of the channel axis (a fused projection's last heads, ``x[..., -1, :]``):
    the gathered positions, and every position the index counts over (those before it, or after it when
    it is negative), stay: the output keeps its size and the index its meaning."""
    size = walk.dim(data, axis)
    if indices is None or not isinstance(size, int) or indices.size == 0:
        walk.fail("Gather selects along the channel axis")
    flat = indices.reshape(-1).astype(np.int64)
    if ((flat < -size) | (flat >= size)).any():
        walk.fail("Gather along the channel axis with an index out of range")
    negative, positive = flat[flat < 0] + size, flat[flat >= 0]
    if negative.size:
        _check_kept(walk, node, data, axis, int(negative.min()), size, "a negative Gather index")
    if positive.size:
        _check_kept(walk, node, data, axis, 0, int(positive.max()) + 1, "a Gather index")


def gather_elements(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """GatherElements: data, indices and output share every axis but the gather axis, position by
    position (DeBERTa's relative-position lookups); the gather axis cannot carry channels."""
    data, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    axis = _norm_axis(int(_attr(node, "axis", 0)), walk.rank(data))
    if entry.axis == axis:
        walk.fail("GatherElements gathers along the channel axis")
    for value in (data, idx, y):  # no broadcasting: indices and output have the data's other dimensions
        walk.link(value, entry.axis, entry.owner)


def pool(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Pooling (Global*/Max/Average/Lp): the channel axis 1 (or the batch axis) passes."""
    if entry.axis > 1:
        walk.fail(f"{node.op_type} pools over the channel axis")
    unary(node, entry, walk)


def pad(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Pad: passes when nothing is padded along the channel axis.

    Computed pads (TF-style "same" padding, window padding) pass when their channel-axis entries
    evaluate to zero for every width the channel axis can be pruned to (:func:`_zero_for_every_width`).
    """
    x = node.inputs[0]
    rank = walk.rank(x)
    pads_value = _optional(node, 1)
    pads = const_array(pads_value) if pads_value is not None else _attr(node, "pads")
    axes = const_array(_optional(node, 3)) if _optional(node, 3) is not None else np.arange(rank)
    if axes is None:
        walk.fail("Pad with computed axes")
    axes = [_norm_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)]
    if entry.axis in axes:
        i = axes.index(entry.axis)
        if pads is None:
            if pads_value is None or not _zero_for_every_width(pads_value, (i, i + len(axes)), x, entry.axis,
                                                                walk):
                walk.fail("Pad with computed pads that may pad the channel axis")
        else:
            pads = np.asarray(pads).reshape(-1)
            if pads[i] != 0 or pads[i + len(axes)] != 0:
                walk.fail("Pad pads the channel axis")
    walk.link(x if entry.is_output else node.outputs[0], entry.axis, entry.owner)


def _zero_for_every_width(value: ir.Value, indices: tuple[int, ...], x: ir.Value, axis: int,
                          walk: Walk) -> bool:
    """Whether elements ``indices`` of the computed 1-D ``value`` are zero whatever ``x``'s ``axis`` is
    pruned to: evaluated for every width from 1 to the current one when the expression reads only
    ``Shape(x)``; otherwise with every activation's dimensions unknown, so the elements must not
    depend on any of them (window padding computes the spatial entries from the input's shape and
    writes constant zeros for the channels). On a merged batch*channel axis (or one of unknown width)
    only the second way counts: F.pad's computed pads vector, zero on every axis it leaves alone."""
    width = walk.dim(x, axis)
    if not isinstance(width, int) or walk.period is not None:
        try:
            exprs = [evaluate_dim_expr(value, i, None, axis, np.array([1]), walk.shape,
                                       float_shapes_unknown=True) for i in indices]
        except ShapeExprError:
            return False
        return all(e.known.all() and not e.values.any() for e in exprs)
    try:
        exprs = [evaluate_dim_expr(value, i, x, axis, np.arange(1, width + 1), walk.shape) for i in indices]
    except ShapeExprError:
        try:
            exprs = [evaluate_dim_expr(value, i, None, axis, np.array([width]), walk.shape,
                                       float_shapes_unknown=True) for i in indices]
        except ShapeExprError:
            return False
    return all(e.known.all() and not e.values.any() for e in exprs)


def resize(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Resize / Upsample: the channel axis passes when it is not resampled: a scale of 1 there, or a
    target size that counts the channels (patched). Every interpolation mode reads whole positions
    along an axis of scale 1, except ``tf_crop_and_resize`` (its region of interest moves them)."""
    x, y = node.inputs[0], node.outputs[0]
    if entry.value is not x and entry.value is not y:
        walk.fail(f"{node.op_type}: channels in its roi / scales / sizes input")
    rank = walk.rank(x)
    mode = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode == "tf_crop_and_resize":
        walk.fail(f"{node.op_type}: tf_crop_and_resize moves positions along every axis")
    axes = _attr(node, "axes")
    axes = list(range(rank)) if not axes else [_norm_axis(int(a), rank) for a in axes]
    if entry.axis in axes:
        i = axes.index(entry.axis)
        legacy = node.op_type == "Upsample" or len(node.inputs) == 2  # (X, scales): opset < 11
        scales = node.inputs[1] if legacy else _optional(node, 2)
        sizes = None if legacy else _optional(node, 3)
        if sizes is not None:
            if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
                walk.fail(f"{node.op_type}: keep_aspect_ratio_policy scales the channel axis with the others")
            walk.patch_shape_element(sizes, i, entry.owner, node, source=(y, entry.axis, 0, entry.owner.size))
        else:
            arr = const_array(scales) if scales is not None else None
            if arr is None:
                walk.fail(f"{node.op_type} with computed scales")
            if float(np.asarray(arr).reshape(-1)[i]) != 1.0:
                walk.fail(f"{node.op_type} resamples the channel axis")
    walk.link(x if entry.is_output else y, entry.axis, entry.owner)


def tile(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Tile: the channel axis passes when it is repeated once (repeats[axis] == 1), or is made by tiling a
    size-1 axis (then the repeat count is the channel count)."""
    x, y = node.inputs[0], node.outputs[0]
    if entry.value is not x and entry.value is not y:
        walk.fail("Tile: channels in its repeats input")
    if entry.value is y and walk.period is None and walk.dim(x, entry.axis) == 1 and entry.owner.size > 1:
        # a size-1 axis tiled to the channel count (``index.unsqueeze(-1).repeat(1, 1, dim)``, how a
        # torch.gather of token positions exports): the input has no channels to slice, and the repeat
        # count counts the channels, patched or read at run time like an Expand target element
        walk.patch_shape_element(node.inputs[1], entry.axis, entry.owner, node,
                                 source=(y, entry.axis, 0, entry.owner.size))
        return
    repeats = const_array(node.inputs[1])
    if repeats is None and _tiles_into_batch(node, entry, walk):
        return
    if repeats is None:  # computed (``repeat(batch, 1, 1, 1)``): its channel element must be 1 however read
        try:
            expr = evaluate_dim_expr(node.inputs[1], entry.axis, None, -1, np.zeros(1, dtype=np.int64),
                                     walk.shape, float_shapes_unknown=True)
        except ShapeExprError:
            walk.fail("Tile with computed repeats")
        if not (expr.known.all() and (expr.values == 1).all()):
            walk.fail("Tile with computed repeats along the channel axis")
    elif int(np.asarray(repeats).reshape(-1)[entry.axis]) != 1:
        walk.fail("Tile repeats the channel axis")
    walk.link(x if entry.is_output else y, entry.axis, entry.owner)


def _tiles_into_batch(node: ir.Node, entry: Entry, walk: Walk) -> bool:
    """``x.repeat(batch, 1, 1)`` on a static head axis (DeBERTa's relative-position keys): the output axis
    repeats the channels once per batch item, a merged axis (``merged_axes``) with the batch as its period
    symbol, which the output's inferred dimension names (``4*batch_size``). The repeat count itself is
    computed by the graph (``query.size(0) // num_heads``, whose divisor is patched where it is read)."""
    x, y = node.inputs[0], node.outputs[0]
    if entry.value is y and entry.is_output and walk.period is not None:  # from the merged side
        if walk.dim(x, entry.axis) != entry.owner.size:
            return False
        walk.link(x, entry.axis, entry.owner, period=None)
        return True
    if entry.value is not x or walk.period is not None or walk.dim(x, entry.axis) != entry.owner.size:
        return False
    dim = walk.dim(y, entry.axis)
    prefix = f"{entry.owner.size}*"
    if not isinstance(dim, str) or not dim.startswith(prefix):
        return False
    symbol = dim[len(prefix):]
    if not symbol.isidentifier() or not split_symbol(dim, symbol, entry.owner.size):
        return False
    walk.link(y, entry.axis, entry.owner, period=symbol)
    _check_repeat_count(node, entry.axis, symbol, walk)
    return True


def _check_repeat_count(node: ir.Node, axis: int, symbol: str, walk: Walk) -> None:
    """The repeat count of a Tile into the batch must stay the batch once pruned: read from an axis of
    that size which keeps it, or ``Shape(t)[k] / c`` with ``t``'s axis ``k`` merged in this group with the
    Tile output's positions (its divisor ``c`` is then patched where that read is followed)."""
    value = node.inputs[1]
    if reads_kept_dimension(walk, value, axis, symbol, node):
        return
    found = element_producer(walk, value, axis)
    divides = found is not None and found[0].op_type == "Div"
    read = read_source(walk, found[0].inputs[0], 0) if divides else None
    if read is None:
        walk.fail("Tile into the batch with a repeat count computed another way")
    tensor, k = read
    like = (node.outputs[0].name, axis)
    walk.check_at_end(("tile count", node.name), node, lambda: walk.require_merged(tensor, k, symbol, like))


def expand(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Expand: the channel axis passes, or is broadcast from 1 (a shared key/value head repeated for its
    query heads, as ``repeat_kv`` exports it): then the input has no channels to slice and only the
    target shape element, which counts the channels, is patched."""
    x, shape_v, y = node.inputs[0], node.inputs[1], node.outputs[0]
    ri, ro = walk.rank(x), walk.rank(y)
    out_axis = entry.axis if entry.is_output else entry.axis + ro - ri
    in_axis = out_axis - (ro - ri)
    if in_axis < 0 or walk.dim(x, in_axis) == 1:
        if not entry.is_output:
            walk.fail("Expand broadcasts along the channel axis")
        walk.patch_shape_element(shape_v, out_axis, entry.owner, node,
                                 source=(y, out_axis, 0, entry.owner.size), period=walk.period)
        return
    walk.link(x, in_axis, entry.owner)
    walk.link(y, out_axis, entry.owner)
    walk.patch_shape_element(shape_v, out_axis, entry.owner, node, broadcast_ok=True,
                             source=(y, out_axis, 0, entry.owner.size), period=walk.period)


def constant_of_shape(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """ConstantOfShape: a tensor of one fill value whose shape is an input (T5's zero position bias,
    ``zeros(1, n_heads, q, k)``): nothing to slice, and the shape element that counts the channels is
    patched. Its input is a shape vector, which never carries channels."""
    if not entry.is_output:
        walk.fail("ConstantOfShape's shape input cannot carry channels")
    walk.patch_shape_element(node.inputs[0], entry.axis, entry.owner, node,
                             source=(node.outputs[0], entry.axis, 0, entry.owner.size), period=walk.period)


def shape_sink(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Shape / Size read the (new) dimensions at run time: nothing to propagate. A read of an axis where
    the batch and the channels are merged is followed to where it is used (``merged_axes``)."""
    if walk.period is None:
        return
    if node.op_type != "Shape":
        walk.fail(f"{node.op_type} of a tensor whose batch and channels are merged")
    follow_merged_read(walk, node, entry.axis, entry.owner, walk.period)


def constant(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Constant: a leaf of the walk; its value is sliced like an initializer."""


def reshape(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Reshape / Flatten: the axis moves to the outermost non-1 axis of its block of merged/split axes.

    Units whose positions end up in one position of the new axis are merged (hidden -> heads gives
    head_dim-sized units); the target shape element that counts the axis is patched.
    """
    x, y = node.inputs[0], node.outputs[0]
    sin, sout = walk.shape(x), walk.shape(y)
    if node.op_type == "Flatten" and sin is not None:
        sout = _flattened(sin, int(_attr(node, "axis", 1)), node.name)
    if sin is None or sout is None:
        walk.fail(f"{node.op_type} with unknown input or output shape")
    sin, sout = _solve_wildcard(list(sin), list(sout))
    src_shape, dst_shape = (sout, sin) if entry.is_output else (sin, sout)
    if node.op_type == "Flatten":  # the axes before ``axis`` become output axis 0, the rest axis 1
        cut = _norm_axis(int(_attr(node, "axis", 1)), len(sin)) if sin else 0
        found = _entry_block([(list(range(cut)), [0]), (list(range(cut, len(sin))), [1])], entry)
    else:
        # where the leading axes cannot be paired ([B*P, C] -> [B, 4, C] with P computed, 4 traced), the
        # trailing axes of equal dimensions still map one to one (row-major order)
        found = (_entry_block(_align_blocks(sin, sout), entry)
                 or _entry_block(_align_tail(sin, sout, 0, 0), entry))
    if found is None:
        if node.op_type == "Reshape" and _reshape_channel_groups(node, entry, walk, sin, sout):
            return
        walk.fail(f"{node.op_type}: cannot align the channel axis between {list(sin)} and {list(sout)}")
    src_axes, dst_axes = found
    _refuse_product_coupling(node, entry, walk, src_axes)
    src_dims = [src_shape[a] for a in src_axes]
    dst_dims = [dst_shape[a] for a in dst_axes]
    if node.op_type == "Flatten" and not all(isinstance(d, int) for d in src_dims + dst_dims):
        walk.fail(f"{node.op_type}: symbolic dimension next to the channel axis")
    # a batch merged with the channels ([B, 4, ...] <-> [4*B, ...]) is mapped as one period of the merged axis
    src_dims, dst_dims, src_period, dst_period = static_block(src_dims, dst_dims, walk.period,
                                                              entry.owner.size, walk)
    entry_merged = src_period is not None and src_axes.index(entry.axis) == 0
    if entry_merged != (walk.period is not None) or (entry_merged and src_period != walk.period):
        walk.fail(f"{node.op_type}: the channel axis does not map onto the merged batch*channel axis")
    carriers = [a for a, d in zip(dst_axes, dst_dims, strict=True) if d != 1]
    if not carriers:
        walk.fail(f"{node.op_type}: no axis carries the channels")
    local = src_axes.index(entry.axis)
    block = np.broadcast_to(
        entry.owner.reshape([-1 if i == local else 1 for i in range(len(src_dims))]), src_dims
    ).reshape(dst_dims)
    carrier = walk.choose_carrier(node, carriers)
    k = dst_axes.index(carrier)
    rows = np.moveaxis(block, k, 0).reshape(dst_dims[k], -1)
    dst_owner = _rows_owner(rows.reshape(-1), dst_dims[k], walk, node.op_type)
    if dst_dims[k] < src_dims[local] and node.op_type == "Reshape":
        walk.mark("attention")  # channels split into (heads, head_dim): the units are heads
    carrier_period = dst_period if k == 0 else None
    walk.link(y if not entry.is_output else x, carrier, dst_owner, period=carrier_period)
    # the entry side may gain merged units: re-link it canonically
    back = np.broadcast_to(dst_owner.reshape([-1 if i == k else 1 for i in range(len(dst_dims))]), dst_dims)
    src_rows = np.moveaxis(back.reshape(src_dims), local, 0).reshape(src_dims[local], -1)
    walk.link(entry.value, entry.axis, _rows_owner(src_rows.reshape(-1), src_dims[local], walk, node.op_type),
              period=walk.period)
    if node.op_type == "Reshape":
        out_axis = entry.axis if entry.is_output else carrier
        out_owner = entry.owner if entry.is_output else dst_owner
        walk.patch_shape_element(node.inputs[1], out_axis, out_owner, node, reshape_input=x,
                                 allowzero=bool(_attr(node, "allowzero", 0)),
                                 source=(y, out_axis, 0, out_owner.size),
                                 period=walk.period if entry.is_output else carrier_period)


def _reshape_channel_groups(node: ir.Node, entry: Entry, walk: Walk, sin: list, sout: list) -> bool:
    """GroupNorm as PyTorch exports it: ``[B, C, H, W] -> [B, G, -1]``, InstanceNormalization over each
    group, and back. After a prefix of equal dimensions, the channel axis C faces an axis G dividing it:
    row-major order puts channel c in group ``c // (C / G)`` whatever the trailing dimensions are (the
    element count fixes the rest), so whole groups are the units, G is the carrier, and what follows G
    (the group's channels times the spatial size) keeps its size. False when the shapes are not of that
    form (the caller refuses)."""
    if walk.period is not None:
        return False
    mine, other = (sout, sin) if entry.is_output else (sin, sout)
    a = entry.axis
    if a >= len(other) or any(p is None or p != q for p, q in zip(mine[:a], other[:a], strict=False)):
        return False
    here, there = mine[a], other[a]
    if not (isinstance(here, int) and isinstance(there, int)) or here != entry.owner.size or there < 1:
        return False
    channels, groups = max(here, there), min(here, there)
    if channels % groups or (len(mine) == a + 1 and len(other) == a + 1):
        return False
    per_group = channels // groups
    if here == groups:  # entering on the groups axis: each group's channels on the other side
        other_owner = np.repeat(entry.owner, per_group)
    else:
        group_owner = _rows_owner(entry.owner, groups, walk, "Reshape into channel groups")
        other_owner = group_owner
        walk.link(entry.value, a, np.repeat(group_owner, per_group))
    x, y = node.inputs[0], node.outputs[0]
    walk.link(x if entry.is_output else y, a, other_owner)
    out_owner = entry.owner if entry.is_output else other_owner
    walk.patch_shape_element(node.inputs[1], a, walk.units.find(out_owner), node, reshape_input=x,
                             allowzero=bool(_attr(node, "allowzero", 0)), source=(y, a, 0, out_owner.size),
                             period=None)
    return True


def _refuse_product_coupling(node: ir.Node, entry: Entry, walk: Walk, src_axes: list[int]) -> None:
    """Two axes merged into one that both carry the group's units (the heads of attention probabilities
    times the head_dim channels of a single key/value head they all share): each merged position belongs
    to a unit of each, so every unit of both would couple into one. Refused naming the inner axis' units:
    kept whole, the outer axis' units (the heads) stay prunable on their own."""
    here = src_axes.index(entry.axis)
    for other_axis in src_axes:
        key = (entry.value.name, other_axis)
        if other_axis == entry.axis or key not in walk.owners:
            continue
        other = walk.units.find(walk.owners[key])
        if not (other >= 0).any():
            continue
        inner = entry.owner if here > src_axes.index(other_axis) else other
        walk.fail(f"{node.op_type} merges two axes that both carry the group's channels (axes {entry.axis} "
                  f"and {other_axis} of '{entry.value.name}'): every unit of both would couple", keep=inner)


def _flattened(sin: tuple, axis: int, name: str) -> tuple:
    """Flatten's output shape, from its input's (shape inference may name the output dimensions afresh
    when the input has a symbolic one): each side is the product of its axes, the symbol itself when it
    is the only non-1 axis there, and an opaque symbol of this node otherwise."""
    axis = axis + len(sin) if axis < 0 else axis

    def product(dims, side: int):
        if all(isinstance(d, int) for d in dims):
            return int(np.prod(dims, dtype=np.int64))
        rest = [d for d in dims if d != 1]
        return rest[0] if len(rest) == 1 else f"{name}:flat{side}"

    return product(sin[:axis], 0), product(sin[axis:], 1)


def _solve_wildcard(sin: list, sout: list) -> tuple[list, list]:
    """Fill one unknown dimension on a side from the element count (a -1 resolved at run time)."""
    sides = [sin, sout]
    for a, b in ((0, 1), (1, 0)):
        src, dst = sides[a], sides[b]
        unknown = [i for i, d in enumerate(dst) if not isinstance(d, int) and d not in src]
        leftover_src = [d for d in src if not isinstance(d, int) and d not in dst]
        if len(unknown) == 1 and not leftover_src:
            num = int(np.prod([d for d in src if isinstance(d, int)]))
            den = int(np.prod([d for d in dst if isinstance(d, int)]))
            if den and num % den == 0:
                dst = list(dst)
                dst[unknown[0]] = num // den
                sides[b] = dst
    return sides[0], sides[1]


def _entry_block(blocks: list[tuple[list[int], list[int]]],
                 entry: Entry) -> tuple[list[int], list[int]] | None:
    """The (entry side, other side) axes of the block holding the entry's axis, or None."""
    for bin_, bout in blocks:
        src_axes, dst_axes = (bout, bin_) if entry.is_output else (bin_, bout)
        if entry.axis in src_axes:
            return src_axes, dst_axes
    return None


def _align_blocks(sin: list, sout: list) -> list[tuple[list[int], list[int]]]:
    """Pair up minimal runs of input and output axes with equal products (from both ends)."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(sin) and j < len(sout):
        if j + 1 < len(sout) and is_product(sin[i], sout[j], sout[j + 1]):  # [4*B, ...] -> [B, 4, ...]
            blocks.append(([i], [j, j + 1]))
            i, j = i + 1, j + 2
            continue
        if i + 1 < len(sin) and is_product(sout[j], sin[i], sin[i + 1]):  # [B, 4, ...] -> [4*B, ...]
            blocks.append(([i, i + 1], [j]))
            i, j = i + 2, j + 1
            continue
        merged = find_merged_block(sin, sout, i, j)  # [B, 32] -> [4*B, 8]
        if merged is not None:
            blocks.append((list(range(i, i + merged[0])), list(range(j, j + merged[1]))))
            i, j = i + merged[0], j + merged[1]
            continue
        merged = find_merged_block(sout, sin, j, i)  # [4*B, 8] -> [B, 32]
        if merged is not None:
            blocks.append((list(range(i, i + merged[1])), list(range(j, j + merged[0]))))
            i, j = i + merged[1], j + merged[0]
            continue
        if sin[i] == sout[j] or not (isinstance(sin[i], int) or isinstance(sout[j], int)):
            # equal dims, or two symbolic dims (batch, sequence): paired one to one
            blocks.append(([i], [j]))
            i += 1
            j += 1
            continue
        if not (isinstance(sin[i], int) and isinstance(sout[j], int)):
            break
        bi, bj, pi, pj = [i], [j], sin[i], sout[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj and i < len(sin) and isinstance(sin[i], int):
                pi *= sin[i]
                bi.append(i)
                i += 1
            elif pj < pi and j < len(sout) and isinstance(sout[j], int):
                pj *= sout[j]
                bj.append(j)
                j += 1
            else:
                return blocks + _align_tail(sin[i:], sout[j:], i, j)
        while i < len(sin) and sin[i] == 1 and (j >= len(sout) or sout[j] != 1):
            bi.append(i)
            i += 1
        while j < len(sout) and sout[j] == 1 and (i >= len(sin) or sin[i] != 1):
            bj.append(j)
            j += 1
        blocks.append((bi, bj))
    return blocks + _align_tail(sin[i:], sout[j:], i, j)


def _align_tail(sin: list, sout: list, i0: int, j0: int) -> list[tuple[list[int], list[int]]]:
    """Align what is left from the right end (e.g. [B, S, H] -> [B*S, H]): axes of equal dimensions
    (the same integer or the same symbol) pair one to one from the last, and minimal runs of integer
    axes with equal products form a block ([.., heads, head_dim] -> [.., hidden]), whatever comes before
    them, since a Reshape keeps the row-major order of the elements. Unknown dimensions never pair."""
    blocks = []
    i, j = len(sin) - 1, len(sout) - 1
    while i >= 0 and j >= 0:
        if sin[i] is not None and sin[i] == sout[j]:
            blocks.append(([i0 + i], [j0 + j]))
            i -= 1
            j -= 1
            continue
        run = _static_tail_run(sin, sout, i, j)
        if run is None:
            break
        a, b = run
        blocks.append(([i0 + k for k in range(a, i + 1)], [j0 + k for k in range(b, j + 1)]))
        i, j = a - 1, b - 1
    return blocks


def _static_tail_run(sin: list, sout: list, i: int, j: int) -> tuple[int, int] | None:
    """The first axes ``(a, b)`` of the shortest runs ``sin[a..i]`` and ``sout[b..j]`` of positive
    integers with equal products, or None."""
    def positive(d) -> bool:
        return isinstance(d, int) and not isinstance(d, bool) and d > 0

    if not (positive(sin[i]) and positive(sout[j])):
        return None
    a, b, pa, pb = i, j, sin[i], sout[j]
    while pa != pb:
        if pa < pb:
            a -= 1
            if a < 0 or not positive(sin[a]):
                return None
            pa *= sin[a]
        else:
            b -= 1
            if b < 0 or not positive(sout[b]):
                return None
            pb *= sout[b]
    return a, b


def flatten(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Flatten: a Reshape to two axes."""
    reshape(node, entry, walk)


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime contrib ops (com.microsoft) and their ONNX counterparts


def attention(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """com.microsoft Attention: packed QKV weights [hidden, q+k+v], heads patched in ``num_heads``."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = _optional(node, 2)
    walk.mark("attention")
    if (entry.value is x and not entry.is_output) or (entry.value is w and entry.axis == 0):
        if entry.axis != walk.rank(x) - 1 and entry.value is x:
            walk.link(y, entry.axis, entry.owner)
            return
        walk.link(x, walk.rank(x) - 1, entry.owner)
        walk.link(w, 0, entry.owner)
        walk.leaf(w, 0)
        return
    heads = int(_attr(node, "num_heads"))
    total = walk.dim(w, 1)
    sizes = list(_attr(node, "qkv_hidden_sizes", []) or [total // 3] * 3)
    if entry.is_output and entry.axis != walk.rank(y) - 1:
        if entry.value is y:
            walk.link(x, entry.axis, entry.owner)
            return
        walk.fail("Attention: present/past cannot be pruned here")
    if entry.value is y:
        head_owner = _rows_owner(entry.owner, heads, walk, "Attention output")
    else:
        parts = np.split(entry.owner, np.cumsum(sizes)[:-1])
        head_owner = _rows_owner(
            np.concatenate([p.reshape(heads, -1) for p in parts], axis=1).reshape(-1), heads, walk,
            "Attention")
    packed = np.concatenate([_repeat(head_owner, s // heads) for s in sizes])
    walk.link(w, 1, packed)
    walk.root(w, 1)
    if bias is not None:
        walk.link(bias, 0, packed)
    walk.link(y, walk.rank(y) - 1, _repeat(head_owner, sizes[2] // heads))
    rel = _optional(node, 5)
    if rel is not None and walk.dim(rel, 1) != 1:
        walk.link(rel, 1, head_owner)
    if _optional(node, 4) is not None or (len(node.outputs) > 1 and node.outputs[1] is not None
                                          and node.outputs[1].name):
        walk.fail("Attention with past/present state")
    walk.patch_attribute(node, "num_heads", 0, head_owner)
    if _attr(node, "qkv_hidden_sizes", None):
        for i, s in enumerate(sizes):
            walk.patch_attribute(node, "qkv_hidden_sizes", i, _repeat(head_owner, s // heads))


def multi_head_attention(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """com.microsoft MultiHeadAttention with separate 3-D (BSD) or 4-D (BNSH) query/key/value."""
    heads = int(_attr(node, "num_heads"))
    walk.mark("attention")
    q = node.inputs[0]
    if walk.rank(q) != 3:
        walk.fail("MultiHeadAttention with packed query")
    k, v, bias = _optional(node, 1), _optional(node, 2), _optional(node, 3)
    head_dims = {}

    def per_head(value: ir.Value) -> tuple[int, int]:
        r = walk.rank(value)
        if r == 3:
            return 2, int(walk.dim(value, 2)) // heads
        return 1, 0

    if entry.value is node.outputs[0] or (entry.value in (q, k, v) and not entry.is_output):
        r = walk.rank(entry.value)
        if (r == 3 and entry.axis != 2) or (r == 4 and entry.axis != 1):
            walk.fail("MultiHeadAttention: only the head axis can be pruned")
        head_owner = _rows_owner(entry.owner, heads, walk, "MultiHeadAttention") if r == 3 else entry.owner
    elif entry.value is bias:
        head_owner = None
    else:
        if entry.axis != 1:
            walk.fail("MultiHeadAttention: only the head axis of past/present/bias can be pruned")
        head_owner = entry.owner
    if head_owner is None:
        qd = int(walk.dim(q, 2))
        kd = int(walk.dim(k, 2)) if k is not None and walk.rank(k) == 3 else qd
        parts = np.split(entry.owner, [qd, qd + kd])
        head_owner = _rows_owner(np.concatenate([p.reshape(heads, -1) for p in parts], axis=1).reshape(-1),
                                 heads, walk, "MultiHeadAttention bias")
    for value in (q, k, v, node.outputs[0]):
        if value is None:
            continue
        axis, d = per_head(value)
        head_dims[value.name] = d
        walk.link(value, axis, _repeat(head_owner, d) if d else head_owner)
    if bias is not None:
        qd = head_dims[q.name]
        kd = head_dims.get(k.name, qd) if k is not None else qd
        vd = head_dims.get(v.name, qd) if v is not None else qd
        walk.link(bias, 0, np.concatenate([_repeat(head_owner, qd), _repeat(head_owner, kd),
                                           _repeat(head_owner, vd)]))
    for i in (5,):
        rel = _optional(node, i)
        if rel is not None and walk.dim(rel, 1) != 1:
            walk.link(rel, 1, head_owner)
    for i in (6, 7):
        p = _optional(node, i)
        if p is not None:
            walk.link(p, 1, head_owner)
    for o in node.outputs[1:3]:
        if o is not None and o.name:
            walk.link(o, 1, head_owner)
    walk.patch_attribute(node, "num_heads", 0, head_owner)


def group_query_attention(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """com.microsoft GroupQueryAttention: units are KV groups (a KV head and the query heads sharing it)."""
    heads = int(_attr(node, "num_heads"))
    kv_heads = int(_attr(node, "kv_num_heads"))
    rep = heads // kv_heads
    walk.mark("attention")
    q, k, v = node.inputs[0], _optional(node, 1), _optional(node, 2)
    if k is None:
        walk.fail("GroupQueryAttention with packed QKV")
    d = int(walk.dim(q, 2)) // heads
    if entry.value is q or entry.value is node.outputs[0]:
        if entry.axis != 2:
            walk.fail("GroupQueryAttention: only the head axis can be pruned")
        kv_owner = _rows_owner(entry.owner, kv_heads, walk, "GroupQueryAttention query")
    elif entry.value in (k, v) and not entry.is_output:
        if entry.axis != 2:
            walk.fail("GroupQueryAttention: only the head axis can be pruned")
        kv_owner = _rows_owner(entry.owner, kv_heads, walk, "GroupQueryAttention key/value")
    else:
        if entry.axis != 1:
            walk.fail("GroupQueryAttention: only the head axis of past/present can be pruned")
        kv_owner = entry.owner
    q_owner = _repeat(kv_owner, rep)
    walk.link(q, 2, _repeat(q_owner, d))
    walk.link(node.outputs[0], 2, _repeat(q_owner, d))
    for value in (k, v):
        walk.link(value, 2, _repeat(kv_owner, d))
    for i in (3, 4):
        p = _optional(node, i)
        if p is not None:
            walk.link(p, 1, kv_owner)
    for o in node.outputs[1:3]:
        if o is not None and o.name:
            walk.link(o, 1, kv_owner)
    walk.patch_attribute(node, "num_heads", 0, q_owner)
    walk.patch_attribute(node, "kv_num_heads", 0, kv_owner)


def rotary_embedding(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """RotaryEmbedding (com.microsoft or ONNX): the head axis passes; ``num_heads`` is patched."""
    x, y = node.inputs[0], node.outputs[0]
    rank = walk.rank(x)
    if rank == 4:
        if entry.axis == 3:
            walk.fail("RotaryEmbedding rotates the head_dim axis")
        unary(node, entry, walk)
        return
    if entry.axis != 2:
        unary(node, entry, walk)
        return
    heads = int(_attr(node, "num_heads", 0))
    if heads == 0:
        cos = walk.shape(node.inputs[2])
        rot = int(_attr(node, "rotary_embedding_dim", 0))
        if rot or cos is None or not isinstance(cos[-1], int):
            walk.fail("RotaryEmbedding without num_heads")
        heads = int(walk.dim(x, 2)) // (2 * cos[-1])
    head_owner = _rows_owner(entry.owner, heads, walk, "RotaryEmbedding")
    full = _repeat(head_owner, int(walk.dim(x, 2)) // heads)
    walk.link(x, 2, full)
    walk.link(y, 2, full)
    if int(_attr(node, "num_heads", 0)):
        walk.patch_attribute(node, "num_heads", 0, head_owner)


# ---------------------------------------------------------------------------------------------------
# the default registry

UNARY_OPS = (
    "Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Softplus", "Softsign", "LeakyRelu", "HardSigmoid", "HardSwish",
    "Elu", "Selu", "Celu", "Mish", "ThresholdedRelu", "Shrink", "Cast", "CastLike", "Identity", "Dropout",
    "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not",
    "IsNaN", "IsInf", "Swish",
)
BROADCAST_OPS = (
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum", "Mean", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "Clip",
)
REDUCE_OPS = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
)
POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxPool", "AveragePool", "LpPool")


def default_registry() -> RuleRegistry:
    """A fresh registry with every built-in rule."""
    reg = RuleRegistry()
    reg.register(UNARY_OPS, unary)
    reg.register(BROADCAST_OPS, broadcast)
    reg.register(("MatMul",), matmul)
    reg.register(("Gemm",), gemm)
    reg.register(("Einsum",), einsum)
    reg.register(("Conv",), conv)
    reg.register(("ConvTranspose",), conv_transpose)
    reg.register(("BatchNormalization", "InstanceNormalization"), batch_norm)
    reg.register(("LayerNormalization", "RMSNormalization"), layer_norm)
    reg.register(REDUCE_OPS, reduce)
    reg.register(("Softmax", "LogSoftmax", "Hardmax"), softmax)
    reg.register(("Transpose",), transpose)
    reg.register(("Unsqueeze",), unsqueeze)
    reg.register(("Squeeze",), squeeze)
    reg.register(("Concat",), concat)
    reg.register(("Split",), split)
    reg.register(("Slice",), slice_)
    reg.register(("Gather",), gather)
    reg.register(("GatherND",), gather_nd)
    reg.register(("GatherElements",), gather_elements)
    reg.register(POOL_OPS, pool)
    reg.register(("Pad",), pad)
    reg.register(("Expand",), expand)
    reg.register(("ConstantOfShape",), constant_of_shape)
    reg.register(("Resize", "Upsample"), resize)
    reg.register(("Tile",), tile)
    reg.register(("Shape", "Size"), shape_sink)
    reg.register(("Constant",), constant)
    reg.register(("Reshape",), reshape)
    reg.register(("Flatten",), flatten)
    reg.register(("RotaryEmbedding",), rotary_embedding)
    # ONNX Runtime contrib ops emitted by its transformer optimizer
    reg.register(("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "BiasAdd"), broadcast, domain=MS)
    reg.register(("FusedMatMul",), matmul, domain=MS)
    reg.register(("LayerNormalization", "SimplifiedLayerNormalization"), layer_norm, domain=MS)
    reg.register(("SimplifiedLayerNormalization",), layer_norm)
    reg.register(("SkipLayerNormalization",), skip_layer_norm, domain=MS)
    reg.register(("SkipSimplifiedLayerNormalization",), skip_simplified_layer_norm, domain=MS)
    reg.register(("EmbedLayerNormalization",), embed_layer_norm, domain=MS)
    reg.register(("Attention",), attention, domain=MS)
    reg.register(("MultiHeadAttention",), multi_head_attention, domain=MS)
    reg.register(("GroupQueryAttention",), group_query_attention, domain=MS)
    reg.register(("RotaryEmbedding",), rotary_embedding, domain=MS)
    return reg
