"""Tiny hand-written ONNX models, one factory per pruning rule.

Every factory returns an ``onnx.ModelProto`` (default domain opset 18 unless noted, plus
``com.microsoft`` opset 1 where contrib ops are used) that

* holds at least one prunable channel group: a root (MatMul/Gemm B, Conv/ConvTranspose W, an
  embedding table, a packed QKV weight, ...) whose output channels flow through the op under
  test into a consumer MatMul/Gemm/Conv,
* has deterministic float32 initializers drawn from ``np.random.default_rng(seed)``,
* runs under onnxruntime (CPU EP) on the feeds of :func:`make_inputs`.

Dimension conventions: symbolic ``B`` (batch) is fed as 2 and ``S`` (sequence) as 5; channel
sizes are chosen to be distinct inside a graph (typically in 8, hidden 12, out 6; attention in
10, 3 heads x 4) so that a wrong axis shows up as a shape error or a numeric mismatch.

``OP_GRAPHS`` maps a test id to its factory, ``EXPECTED_KIND`` gives the kind of the group that
exercises the op under test ('ffn', 'heads', 'conv' or 'hidden'; a graph may contain other
groups too, e.g. the LayerNorm graph also has an FFN group), and ``EXPECTED_UNPRUNABLE`` lists
the graphs whose group must be refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

DIM_VALUES: dict[str, int] = {"B": 2, "S": 5, "T": 7, "height": 32}
MS = "com.microsoft"

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _build(
    graph_text: str,
    inits: dict[str, np.ndarray],
    *,
    opset: int = 18,
    domains: dict[str, int] | None = None,
    functions_text: str = "",
) -> onnx.ModelProto:
    """Parse ``graph_text`` (ONNX textual syntax) and attach ``inits`` as initializers."""
    imports = {"": opset, **(domains or {})}
    header = "<ir_version: 10, opset_import: [{}]>\n".format(
        ", ".join(f'"{d}" : {v}' for d, v in imports.items())
    )
    model = onnx.parser.parse_model(header + graph_text + functions_text)
    for name, arr in inits.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    return model


def _mat(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """MatMul weight [k, n] scaled to keep activations O(1)."""
    return (rng.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32)


def _conv(rng: np.random.Generator, o: int, i: int, kh: int, kw: int) -> np.ndarray:
    return (rng.standard_normal((o, i, kh, kw)) / math.sqrt(i * kh * kw)).astype(np.float32)


def _vec(rng: np.random.Generator, *shape: int, scale: float = 0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _pos(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Strictly positive values (norm scales, variances, divisors)."""
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


_SCALAR0 = np.array(0, dtype=np.int64)
_SCALAR1 = np.array(1, dtype=np.int64)


def _ffn(body: str, extra: dict[str, np.ndarray], rng: np.random.Generator, **kw) -> onnx.ModelProto:
    """x[B,S,8] -> MatMul(W1[8,12]) -> Add(b1[12]) = h -> <body: h -> a> -> MatMul(W2[12,6]) -> y."""
    text = (
        """
ffn (float[B, S, 8] x) => (float[B, S, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
"""
        + body
        + """
  y = MatMul(a, W2)
}
"""
    )
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6), **extra}
    return _build(text, inits, **kw)


# --------------------------------------------------------------------------------------------
# MatMul / Gemm
# --------------------------------------------------------------------------------------------


# x[B,S,8] -> MatMul(W1[8,12]) -> MatMul(W2[12,6]) -> y[B,S,6]
def matmul(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
matmul (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, W1)
  y = MatMul(h, W2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6)})


# x[B,8] -> Gemm(W1[8,12], C1[12]) -> Relu -> Gemm(W2[12,6], C2[6]) -> y[B,6]      (transB=0)
def gemm_transb0(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gemm (float[B, 8] x) => (float[B, 6] y) {
  h = Gemm(x, W1, C1)
  r = Relu(h)
  y = Gemm(r, W2, C2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "C1": _vec(rng, 12), "W2": _mat(rng, 12, 6), "C2": _vec(rng, 6)}
    return _build(text, inits)


# x[B,8] -> Gemm(W1t[12,8], C1[12], transB=1, alpha=0.5, beta=2) -> Relu
#        -> Gemm(W2t[6,12], C2[6], transB=1) -> y[B,6]
def gemm_transb1(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gemm (float[B, 8] x) => (float[B, 6] y) {
  h = Gemm<transB = 1, alpha = 0.5, beta = 2.0>(x, W1t, C1)
  r = Relu(h)
  y = Gemm<transB = 1>(r, W2t, C2)
}
"""
    inits = {
        "W1t": _mat(rng, 8, 12).T.copy(),
        "C1": _vec(rng, 12),
        "W2t": _mat(rng, 12, 6).T.copy(),
        "C2": _vec(rng, 6),
    }
    return _build(text, inits)


# --------------------------------------------------------------------------------------------
# Conv family
# --------------------------------------------------------------------------------------------


# x[B,3,7,9] -> Conv(W1[8,3,3,3], B1[8], pads=1) -> Relu -> Conv(W2[6,8,1,1], B2[6]) -> y[B,6,7,9]
def conv(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
conv (float[B, 3, 7, 9] x) => (float[B, 6, 7, 9] y) {
  c = Conv<pads = [1, 1, 1, 1]>(x, W1, B1)
  r = Relu(c)
  y = Conv(r, W2, B2)
}
"""
    inits = {
        "W1": _conv(rng, 8, 3, 3, 3),
        "B1": _vec(rng, 8),
        "W2": _conv(rng, 6, 8, 1, 1),
        "B2": _vec(rng, 6),
    }
    return _build(text, inits)


# x[B,8] -> MatMul(W1[8,12]) -> Unsqueeze(axes=[1]) -> [B,1,12] -> Tile([1,3,1]) -> [B,3,12] -> Relu
#   -> MatMul(W2[12,6]) -> y[B,3,6]                    (repeats 1 along the channel axis: it passes)
def tile(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
tile (float[B, 8] x) => (float[B, 3, 6] y) {
  h = MatMul(x, W1)
  u = Unsqueeze(h, ax1)
  t = Tile(u, reps)
  r = Relu(t)
  y = MatMul(r, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "ax1": _i64(1), "reps": _i64(1, 3, 1)}
    return _build(text, inits)


# x[B,S,8] -> MatMul(W1[8,12]) -> GatherND(indices [3,2] over (batch, sequence)) -> [3,12] -> Relu
#   -> MatMul(W2[12,6]) -> y[3,6]      (the channel axis is not indexed: it moves to the output's last axis)
# ``indexed=True``: indices [2,3] index the channel axis too ([2] single channels) -> Unsqueeze -> MatMul
#   (W2[2,3]) -> y[1,3]: refused
def gather_nd(seed: int = 0, *, indexed: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    out, tail = ("float[1, 3] y", "u = Unsqueeze(g, ax0)") if indexed else ("float[3, 6] y", "u = Relu(g)")
    text = f"""
gnd (float[B, S, 8] x) => ({out}) {{
  h = MatMul(x, W1)
  g = GatherND(h, indices)
  {tail}
  y = MatMul(u, W2)
}}
"""
    indices = [[0, 0, 1], [1, 3, 5]] if indexed else [[0, 0], [1, 3], [0, 4]]
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 2, 3) if indexed else _mat(rng, 12, 6),
             "indices": np.array(indices, dtype=np.int64), **({"ax0": _i64(0)} if indexed else {})}
    return _build(text, inits)


def gather_nd_channel_axis(seed: int = 0) -> onnx.ModelProto:
    return gather_nd(seed, indexed=True)


# the same tiled twice along the channel axis: [B,24] -> MatMul(W2[24,6]); the copies cannot be sliced
def tile_channel_axis(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
tile (float[B, 8] x) => (float[B, 6] y) {
  h = MatMul(x, W1)
  t = Tile(h, reps)
  r = Relu(t)
  y = MatMul(r, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 24, 6), "reps": _i64(1, 2)}
    return _build(text, inits)


# x[B,3,7,9] -> Conv(W1[8,3,3,3], pads=1) -> Relu -> Resize(scales=[1,1,2,2], linear) -> [B,8,14,18]
#   -> Conv(W2[6,8,1,1]) -> y[B,6,14,18]             (an FPN / decoder upsampling: channels pass)
def resize_scales(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
resize (float[B, 3, 7, 9] x) => (float[B, 6, 14, 18] y) {
  c = Conv<pads = [1, 1, 1, 1]>(x, W1)
  r = Relu(c)
  u = Resize<mode = "linear">(r, "", sc)
  y = Conv(u, W2)
}
"""
    inits = {"W1": _conv(rng, 8, 3, 3, 3), "W2": _conv(rng, 6, 8, 1, 1),
             "sc": np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32)}
    return _build(text, inits)


# the same with target sizes on the spatial axes only (opset 18 ``axes``), cubic
def resize_sizes_axes(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
resize (float[B, 3, 7, 9] x) => (float[B, 6, 10, 5] y) {
  c = Conv<pads = [1, 1, 1, 1]>(x, W1)
  r = Relu(c)
  u = Resize<mode = "cubic", axes = [2, 3]>(r, "", "", sz)
  y = Conv(u, W2)
}
"""
    inits = {"W1": _conv(rng, 8, 3, 3, 3), "W2": _conv(rng, 6, 8, 1, 1), "sz": _i64(10, 5)}
    return _build(text, inits)


# Resize(scales=[1,2,1,1]) interpolates between channels: the filters of W1 cannot be removed
def resize_channel_axis(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
resize (float[B, 3, 7, 9] x) => (float[B, 6, 7, 9] y) {
  c = Conv<pads = [1, 1, 1, 1]>(x, W1)
  r = Relu(c)
  u = Resize<mode = "linear">(r, "", sc)
  y = Conv(u, W2)
}
"""
    inits = {"W1": _conv(rng, 8, 3, 3, 3), "W2": _conv(rng, 6, 16, 1, 1),
             "sc": np.array([1.0, 2.0, 1.0, 1.0], dtype=np.float32)}
    return _build(text, inits)


def _conv_pad(pads_body: str, pads_inits: dict[str, np.ndarray], out_hw: tuple[int, int],
              seed: int) -> onnx.ModelProto:
    """x[B,3,7,9] -> Conv(W1[8,3,3,3]) -> Relu -> r[B,8,5,7] -> Pad(r, pads) -> Conv(W2[6,8,1,1]) -> y, with
    ``pads`` computed by ``pads_body`` (ONNX text lines) from ``pads_inits``."""
    rng = np.random.default_rng(seed)
    text = f"""
pad (float[B, 3, 7, 9] x) => (float[B, 6, {out_hw[0]}, {out_hw[1]}] y) {{
  c = Conv(x, W1)
  r = Relu(c)
{pads_body}
  p = Pad(r, pads)
  y = Conv(p, W2)
}}
"""
    return _build(text, {"W1": _conv(rng, 8, 3, 3, 3), "W2": _conv(rng, 6, 8, 1, 1), **pads_inits})


# pads computed from the Pad input's own spatial shape: [0, 0, 0, 0, 0, 0, H % 2, W % 2] (TF-style "same"
#   padding): [B,8,5,7] -> [B,8,6,8]
def pad_computed_spatial(seed: int = 0) -> onnx.ModelProto:
    body = """  s = Shape(r)
  h = Gather(s, i2)
  w = Gather(s, i3)
  ph = Mod(h, two)
  pw = Mod(w, two)
  pads = Concat<axis = 0>(zero, zero, zero, zero, zero, zero, ph, pw)"""
    inits = {"i2": _i64(2), "i3": _i64(3), "two": _i64(2), "zero": _i64(0)}
    return _conv_pad(body, inits, (6, 8), seed)


# the same as torch.nn.functional.pad(r, (1, 1, 1, 1)) exports it: the pads are built at run time from the
#   torch order (last axis first) by Concat(constant, ConstantOfShape) -> Reshape[-1, 2] -> reversed Slice
#   -> Transpose -> Reshape[-1] -> Cast (MobileNetV1's TF-style padding): [B,8,5,7] -> [B,8,7,9]
def pad_torch_functional(seed: int = 0) -> onnx.ModelProto:
    body = """  zeros = ConstantOfShape<value = int64[1] {0}>(four)
  torch_order = Concat<axis = 0>(ones, zeros)
  pairs = Reshape(torch_order, pair_shape)
  onnx_order = Slice(pairs, minus1, big_negative, zero, minus1)
  moved = Transpose<perm = [1, 0]>(onnx_order)
  flat = Reshape(moved, minus1)
  pads = Cast<to = 7>(flat)"""
    inits = {"four": _i64(4), "ones": _i64(1, 1, 1, 1), "pair_shape": _i64(-1, 2), "minus1": _i64(-1),
             "big_negative": _i64(-(2**63) + 1), "zero": _i64(0)}
    return _conv_pad(body, inits, (7, 9), seed)


# LongT5's blocked attention: the sequence padded to a multiple of the block (5) and split into blocks,
# [B, S+p, 12] -> [B, n, 5, 3, 4], then merged back by a Reshape whose target shape inference cannot
# evaluate (it goes through Abs): [B, n, 5, 3, 4] -> [u0, u1, 12]. The leading axes pair as opaque
# symbols and leave [5, 3, 4] against [12]; from the right, [3, 4] -> [12] is a block by its products
def reshape_heads_tail_product(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
rht (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, W1)
  s = Shape(h)
  seq = Slice(s, i1, i2)
  rem = Mod(seq, five)
  need = Sub(five, rem)
  p = Mod(need, five)
  pads = Concat<axis = 0>(z4, p, z1)
  hp = Pad(h, pads)
  blocks = Reshape(hp, block_shape)
  r = Relu(blocks)
  sp = Shape(hp)
  lead = Slice(sp, z1, i2)
  lead_abs = Abs(lead)
  target = Concat<axis = 0>(lead_abs, c12)
  m = Reshape(r, target)
  a = Slice(m, z1, seq, i1)
  y = MatMul(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "block_shape": _i64(0, -1, 5, 3, 4),
             "z1": _i64(0), "z4": _i64(0, 0, 0, 0), "i1": _i64(1), "i2": _i64(2), "five": _i64(5),
             "c12": _i64(12)}
    return _build(text, inits)


# two layers' head splits read one computed target, Concat(Shape(x)[:2], [3], [4]), as the PyTorch dynamo
# exporter writes them: each layer's Reshape gets its own copy of that arithmetic (passes/untie.py), so
# the layers' heads prune independently instead of one group patching the other's head count
def shared_computed_reshape_target(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
scr (float[B, S, 8] x) => (float[B, S, 6] y) {
  s = Shape(x)
  lead = Slice(s, z1, i2)
  target = Concat<axis = 0>(lead, c3, c4)
  q1 = MatMul(x, Wa)
  r1 = Reshape(q1, target)
  t1 = Relu(r1)
  m1 = Reshape(t1, mg_shape)
  h = MatMul(m1, Wb)
  q2 = MatMul(h, Wc)
  r2 = Reshape(q2, target)
  t2 = Relu(r2)
  m2 = Reshape(t2, mg_shape)
  y = MatMul(m2, Wd)
}
"""
    inits = {"Wa": _mat(rng, 8, 12), "Wb": _mat(rng, 12, 8), "Wc": _mat(rng, 8, 12), "Wd": _mat(rng, 12, 6),
             "z1": _i64(0), "i2": _i64(2), "c3": _i64(3), "c4": _i64(4), "mg_shape": _i64(0, 0, 12)}
    return _build(text, inits)


# --------------------------------------------------------------------------------------------
# Einsum
# --------------------------------------------------------------------------------------------


# x[B,S,8] -> Einsum("bsd,dn->bsn", W1[8,12]) -> Relu -> Einsum("...n,nm->...m", W2[12,6]) -> y: the
# projections are written as Einsums (W1's n is a seed, W2's n the leaf), the bias as "...n,n->...n"
def einsum_projection(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
eip (float[B, S, 8] x) => (float[B, S, 6] y) {
  h0 = Einsum<equation = "bsd,dn->bsn">(x, W1)
  h = Add(h0, b1)
  g = Einsum<equation = "...n,n->...n">(h, s1)
  a = Relu(g)
  y = Einsum<equation = "...n,nm->...m">(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "s1": _pos(rng, 12), "W2": _mat(rng, 12, 6)}
    return _build(text, inits)


# attention written with Einsums, as T5 variants export it: scores "bqhd,bkhd->bhqk" (heads kept, head_dim
# summed between q and k: the heads are the units), context "bhqk,bkhd->bqhd"
def einsum_attention(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
eia (float[B, S, 10] x) => (float[B, S, 6] y) {
  q0 = MatMul(x, Wq)
  k0 = MatMul(x, Wk)
  v0 = MatMul(x, Wv)
  q = Reshape(q0, hd_shape)
  k = Reshape(k0, hd_shape)
  v = Reshape(v0, hd_shape)
  scores = Einsum<equation = "bqhd,bkhd->bhqk">(q, k)
  probs = Softmax<axis = -1>(scores)
  ctx = Einsum<equation = "bhqk,bkhd->bqhd">(probs, v)
  merged = Reshape(ctx, mg_shape)
  y = MatMul(merged, Wo)
}
"""
    inits = {"Wq": _mat(rng, 10, 12), "Wk": _mat(rng, 10, 12), "Wv": _mat(rng, 10, 12),
             "Wo": _mat(rng, 12, 6), "hd_shape": _i64(0, 0, 3, 4), "mg_shape": _i64(0, 0, 12)}
    return _build(text, inits)


# h1 . h2 summed over the channels of two activations ("bsd,bsd->bs"): no constant slice to zero, refused
def einsum_activations_summed(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
eis (float[B, S, 8] x) => (float[B, S] y) {
  h1 = MatMul(x, W1)
  h2 = MatMul(x, W2)
  y = Einsum<equation = "bsd,bsd->bs">(h1, h2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 8, 12)})


# window padding (Swin): height and width padded up to a multiple of the window, (4 - H % 4) % 4, then
# split into 4x4 windows by a Reshape whose target is read from the padded shape, channel count included,
# and merged back by one that names the channel count; shape inference must keep the unpadded channel axis
# at 12 through the Pad (its pads are computed with Mod) for the window Reshape to be aligned
def pad_window_partition(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
pwp (float[B, S, T, 8] x) => (float[B, S, T, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  s = Shape(h)
  hw = Slice(s, i1, i3)
  rem = Mod(hw, four)
  need = Sub(four, rem)
  p = Mod(need, four)
  pads = Concat<axis = 0>(z4, z1, p, z1)
  hp = Pad(h, pads)
  sp = Shape(hp)
  b = Slice(sp, z1, i1)
  hh = Slice(sp, i1, i2)
  ww = Slice(sp, i2, i3)
  nh = Div(hh, four)
  nw = Div(ww, four)
  c = Slice(sp, i3, i4)
  target = Concat<axis = 0>(b, nh, four, nw, four, c)
  padded = Concat<axis = 0>(b, hh, ww, c12)
  win = Reshape(hp, target)
  wt = Transpose<perm = [0, 1, 3, 2, 4, 5]>(win)
  g = Relu(wt)
  gb = Transpose<perm = [0, 1, 3, 2, 4, 5]>(g)
  back = Reshape(gb, padded)
  a = Slice(back, z2, hw, i12)
  y = MatMul(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6), "i1": _i64(1),
             "i2": _i64(2), "i3": _i64(3), "i12": _i64(1, 2), "four": _i64(4), "z1": _i64(0),
             "z2": _i64(0, 0), "z4": _i64(0, 0, 0, 0), "i4": _i64(4), "c12": _i64(12)}
    return _build(text, inits)


# padding the channel axis up to a multiple of 8: nothing at 8 channels, but 2 once pruned to 6
def pad_computed_channel(seed: int = 0) -> onnx.ModelProto:
    body = """  s = Shape(r)
  ch = Gather(s, i1)
  rest = Mod(ch, eight)
  short = Sub(eight, rest)
  pc = Mod(short, eight)
  pads = Concat<axis = 0>(zero, zero, zero, zero, zero, pc, zero, zero)"""
    inits = {"i1": _i64(1), "eight": _i64(8), "zero": _i64(0)}
    return _conv_pad(body, inits, (5, 7), seed)


# x[B,3,7,9] -> Conv(W1[8,3,3,3], pads=1) -> Relu
#   -> Conv(W2[12,4,3,3], B2[12], group=2, pads=1)     (8 in = 2 groups x 4, 12 out = 2 groups x 6)
#   -> Relu -> Conv(W3[6,12,1,1]) -> y[B,6,7,9]
def conv_grouped(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
conv (float[B, 3, 7, 9] x) => (float[B, 6, 7, 9] y) {
  c1 = Conv<pads = [1, 1, 1, 1]>(x, W1)
  r1 = Relu(c1)
  c2 = Conv<group = 2, pads = [1, 1, 1, 1]>(r1, W2, B2)
  r2 = Relu(c2)
  y = Conv(r2, W3)
}
"""
    inits = {
        "W1": _conv(rng, 8, 3, 3, 3),
        "W2": _conv(rng, 12, 4, 3, 3),
        "B2": _vec(rng, 12),
        "W3": _conv(rng, 6, 12, 1, 1),
    }
    return _build(text, inits)


# x[B,3,7,9] -> Conv(W1[8,3,3,3], B1[8], pads=1) -> Conv(Wd[8,1,3,3], Bd[8], group=8, pads=1)
#   -> Relu -> Conv(W3[6,8,1,1]) -> y[B,6,7,9]                 (depthwise: channel passes through)
def conv_depthwise(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
conv (float[B, 3, 7, 9] x) => (float[B, 6, 7, 9] y) {
  c1 = Conv<pads = [1, 1, 1, 1]>(x, W1, B1)
  d = Conv<group = 8, pads = [1, 1, 1, 1]>(c1, Wd, Bd)
  r = Relu(d)
  y = Conv(r, W3)
}
"""
    inits = {
        "W1": _conv(rng, 8, 3, 3, 3),
        "B1": _vec(rng, 8),
        "Wd": _conv(rng, 8, 1, 3, 3),
        "Bd": _vec(rng, 8),
        "W3": _conv(rng, 6, 8, 1, 1),
    }
    return _build(text, inits)


# x[B,3,7,9] -> Conv(W1[8,3,3,3], pads=1) -> Relu
#   -> Conv(Wd[16,1,3,3], group=8, pads=1)   (depth multiplier 2: input channel c -> outputs 2c, 2c+1)
#   -> Relu -> Conv(W3[6,16,1,1]) -> y[B,6,7,9]
def conv_depthwise_multiplier(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
conv (float[B, 3, 7, 9] x) => (float[B, 6, 7, 9] y) {
  c1 = Conv<pads = [1, 1, 1, 1]>(x, W1)
  r1 = Relu(c1)
  d = Conv<group = 8, pads = [1, 1, 1, 1]>(r1, Wd)
  r2 = Relu(d)
  y = Conv(r2, W3)
}
"""
    inits = {"W1": _conv(rng, 8, 3, 3, 3), "Wd": _conv(rng, 16, 1, 3, 3), "W3": _conv(rng, 6, 16, 1, 1)}
    return _build(text, inits)


# x[B,3,4,5] -> ConvTranspose(W1[3,8,3,3], B1[8], strides=2) -> [B,8,9,11] -> Relu  (root: W1 axis 1)
#   -> ConvTranspose(W2[8,6,2,2], B2[6]) -> y[B,6,10,12]                  (consumer: W2 axis 0)
def conv_transpose(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
convt (float[B, 3, 4, 5] x) => (float[B, 6, 10, 12] y) {
  c = ConvTranspose<strides = [2, 2]>(x, W1, B1)
  r = Relu(c)
  y = ConvTranspose(r, W2, B2)
}
"""
    inits = {
        "W1": _conv(rng, 3, 8, 3, 3),
        "B1": _vec(rng, 8),
        "W2": _conv(rng, 8, 6, 2, 2),
        "B2": _vec(rng, 6),
    }
    return _build(text, inits)


# x[B,3,7,9] -> Conv(W1[8,3,3,3], pads=1) -> BatchNormalization(s,b,mean,var [8]) -> Relu
#   -> Conv(W2[6,8,1,1]) -> y[B,6,7,9]
# GroupNorm(4, 8) as PyTorch exports it: Reshape [B, 8, H, W] -> [B, 4, -1] ([B, 4, 2*H*W] with symbolic
# H, W: no run of axes pairs with it), InstanceNormalization over each group (scale and bias of ones and
# zeros per group), Reshape back to Shape(x), then the affine [8, 1, 1]: whole groups of two channels are
# the units, and removing one is exact
def group_norm(seed: int = 0, *, groups: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gn (float[B, 3, S, T] x) => (float[B, 6, S, T] y) {
  c = Conv<kernel_shape = [1, 1]>(x, W1, b1)
  grouped = Reshape(c, group_shape)
  normed = InstanceNormalization<epsilon = 1e-5>(grouped, ones, zeros)
  sc = Shape(c)
  back = Reshape(normed, sc)
  scaled = Mul(back, gamma)
  shifted = Add(scaled, beta)
  r = Relu(shifted)
  y = Conv<kernel_shape = [1, 1]>(r, W2, b2)
}
"""
    inits = {"W1": _conv(rng, 8, 3, 1, 1), "b1": _vec(rng, 8), "group_shape": _i64(0, groups, -1),
             "ones": np.ones(groups, np.float32), "zeros": np.zeros(groups, np.float32),
             "gamma": _pos(rng, 8, 1, 1), "beta": _vec(rng, 8, 1, 1), "W2": _conv(rng, 6, 8, 1, 1),
             "b2": _vec(rng, 6)}
    return _build(text, inits)


# GroupNorm(1, 8) (PoolFormer): one group holds every channel; refused (the Reshape merges the channels
# with the spatial axes into the one normalised axis)
def group_norm_one_group(seed: int = 0) -> onnx.ModelProto:
    return group_norm(seed, groups=1)


def batchnorm(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
bn (float[B, 3, 7, 9] x) => (float[B, 6, 7, 9] y) {
  c = Conv<pads = [1, 1, 1, 1]>(x, W1)
  n = BatchNormalization<epsilon = 1e-5>(c, bn_scale, bn_bias, bn_mean, bn_var)
  r = Relu(n)
  y = Conv(r, W2)
}
"""
    inits = {
        "W1": _conv(rng, 8, 3, 3, 3),
        "bn_scale": _pos(rng, 8),
        "bn_bias": _vec(rng, 8),
        "bn_mean": _vec(rng, 8),
        "bn_var": _pos(rng, 8),
        "W2": _conv(rng, 6, 8, 1, 1),
    }
    return _build(text, inits)


# x[B,3,5,6] -> Conv(W1[8,3,3,3]) -> Relu -> [B,8,3,4] -> Flatten(axis=1) -> [B,96]
#   -> Gemm(W2[96,6], C2[6]) -> y[B,6]            (channel c owns Gemm rows 12c .. 12c+11)
def flatten_conv_gemm(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
flat (float[B, 3, 5, 6] x) => (float[B, 6] y) {
  c = Conv(x, W1)
  r = Relu(c)
  f = Flatten<axis = 1>(r)
  y = Gemm(f, W2, C2)
}
"""
    inits = {"W1": _conv(rng, 8, 3, 3, 3), "W2": _mat(rng, 96, 6), "C2": _vec(rng, 6)}
    return _build(text, inits)


# x[B,3,7,9] -> Conv(W1[8,3,3,3], B1[8]) -> Relu -> GlobalAveragePool -> [B,8,1,1] -> Flatten
#   -> Gemm(W2t[6,8], C2[6], transB=1) -> y[B,6]
def global_avg_pool(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gap (float[B, 3, 7, 9] x) => (float[B, 6] y) {
  c = Conv(x, W1, B1)
  r = Relu(c)
  p = GlobalAveragePool(r)
  f = Flatten<axis = 1>(p)
  y = Gemm<transB = 1>(f, W2t, C2)
}
"""
    inits = {
        "W1": _conv(rng, 8, 3, 3, 3),
        "B1": _vec(rng, 8),
        "W2t": _mat(rng, 8, 6).T.copy(),
        "C2": _vec(rng, 6),
    }
    return _build(text, inits)


# x[B,3,7,9] -> Conv(W1[8,3,3,3]) -> Relu -> [B,8,5,7] -> Transpose(0,2,3,1) -> [B,5,7,8]
#   -> MatMul(W2[8,6]) -> y[B,5,7,6]                (channel axis moves from 1 to -1)
def transpose_nchw_nhwc(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
nhwc (float[B, 3, 7, 9] x) => (float[B, 5, 7, 6] y) {
  c = Conv(x, W1)
  r = Relu(c)
  t = Transpose<perm = [0, 2, 3, 1]>(r)
  y = MatMul(t, W2)
}
"""
    return _build(text, {"W1": _conv(rng, 8, 3, 3, 3), "W2": _mat(rng, 8, 6)})


# --------------------------------------------------------------------------------------------
# element-wise binary ops with constants
# --------------------------------------------------------------------------------------------


# x[B,S,8] -> MatMul(W1[8,12]) -> Add(b1[12]) -> Add(c[12]) -> Relu -> MatMul(W2[12,6]) -> y
def add_vector(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = """
  t = Add(h, c)
  a = Relu(t)
"""
    return _ffn(body, {"c": _vec(rng, 12)}, rng)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Sub(c[12], .) (constant on the left) -> Relu
#   -> MatMul(W2[12,6]) -> y
def sub_vector_lhs(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = """
  t = Sub(c, h)
  a = Relu(t)
"""
    return _ffn(body, {"c": _vec(rng, 12)}, rng)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Mul(., c[1,1,12]) (rank-3 broadcast) -> Tanh
#   -> MatMul(W2[12,6]) -> y
def mul_vector(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = """
  t = Mul(h, c)
  a = Tanh(t)
"""
    return _ffn(body, {"c": _pos(rng, 1, 1, 12)}, rng)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Div(., c[12]) (c > 0) -> Relu -> MatMul(W2[12,6]) -> y
def div_vector(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = """
  t = Div(h, c)
  a = Relu(t)
"""
    return _ffn(body, {"c": _pos(rng, 12)}, rng)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Add(s0[]) -> Mul(s1[1], .) -> Sub(., s2[]) -> Div(., s3[])
#   -> Relu -> MatMul(W2[12,6]) -> y                (scalars broadcast over every channel)
def elementwise_scalar(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    body = """
  t0 = Add(h, s0)
  t1 = Mul(s1, t0)
  t2 = Sub(t1, s2)
  t3 = Div(t2, s3)
  a = Relu(t3)
"""
    extra = {
        "s0": _f32(0.25),
        "s1": np.array([1.5], dtype=np.float32),
        "s2": _f32(0.125),
        "s3": _f32(2.0),
    }
    return _ffn(body, extra, rng)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Mul(., m[B,S,1]) (graph input, non-channel broadcast)
#   -> Relu -> MatMul(W2[12,6]) -> y
def mul_nonchannel_input(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
mulm (float[B, S, 8] x, float[B, S, 1] m) => (float[B, S, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  t = Mul(h, m)
  a = Relu(t)
  y = MatMul(a, W2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6)})


# x[B,S,8] -> MatMul(W1[8,12]) --+
#                                +-> Add -> Relu -> MatMul(W2[12,6]) -> y     (two coupled roots)
# x[B,S,8] -> MatMul(W1b[8,12]) -+
def add_two_branches(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
add2 (float[B, S, 8] x) => (float[B, S, 6] y) {
  h1 = MatMul(x, W1)
  h2 = MatMul(x, W1b)
  t = Add(h1, h2)
  a = Relu(t)
  y = MatMul(a, W2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W1b": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6)})


# --------------------------------------------------------------------------------------------
# activations (all on the _ffn template: x -> MatMul(W1[8,12]) -> Add(b1[12]) -> ACT -> MatMul(W2[12,6]))
# --------------------------------------------------------------------------------------------


# x[B,S,8] -> MatMul(W1[8,12]) -> Add(b1[12]) -> Relu -> MatMul(W2[12,6]) -> y
def relu(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Relu(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Gelu (opset 20, approximate="none") -> MatMul(W2) -> y
def gelu_opset20(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Gelu(h)\n", {}, np.random.default_rng(seed), opset=20)


# x[B,S,8] -> MatMul(W1) -> Add(b1) = h -> h * 0.5 * (1 + Erf(h / sqrt2)) -> MatMul(W2) -> y
def gelu_erf(seed: int = 0) -> onnx.ModelProto:
    body = """
  d = Div(h, sqrt2)
  e = Erf(d)
  e1 = Add(e, one)
  m = Mul(h, e1)
  a = Mul(m, half)
"""
    extra = {"sqrt2": _f32(math.sqrt(2.0)), "one": _f32(1.0), "half": _f32(0.5)}
    return _ffn(body, extra, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Tanh -> MatMul(W2) -> y
def tanh(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Tanh(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Sigmoid -> MatMul(W2) -> y     (Sigmoid(0) != 0)
def sigmoid(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Sigmoid(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) = h -> Mul(h, Sigmoid(h)) -> MatMul(W2) -> y
def silu(seed: int = 0) -> onnx.ModelProto:
    body = """
  g = Sigmoid(h)
  a = Mul(h, g)
"""
    return _ffn(body, {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(Wg[8,12]) -> Silu (x*Sigmoid(x)) --+
#                                                        +-> Mul -> MatMul(Wd[12,6]) -> y
# x[B,S,8] -> MatMul(Wu[8,12]) -------------------------+
def swiglu(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
swiglu (float[B, S, 8] x) => (float[B, S, 6] y) {
  g0 = MatMul(x, Wg)
  gs = Sigmoid(g0)
  g = Mul(g0, gs)
  u = MatMul(x, Wu)
  a = Mul(g, u)
  y = MatMul(a, Wd)
}
"""
    return _build(text, {"Wg": _mat(rng, 8, 12), "Wu": _mat(rng, 8, 12), "Wd": _mat(rng, 12, 6)})


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Softplus -> MatMul(W2) -> y
def softplus(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Softplus(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Clip(min=-1.0, max=1.5 scalar inputs) -> MatMul(W2) -> y
def clip(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Clip(h, lo, hi)\n", {"lo": _f32(-1.0), "hi": _f32(1.5)}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> LeakyRelu(alpha=0.1) -> MatMul(W2) -> y
def leaky_relu(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = LeakyRelu<alpha = 0.1>(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> HardSigmoid(alpha=0.2, beta=0.5) -> MatMul(W2) -> y
def hard_sigmoid(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = HardSigmoid<alpha = 0.2, beta = 0.5>(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> HardSwish -> MatMul(W2) -> y
def hard_swish(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = HardSwish(h)\n", {}, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------
# pass-through / structural ops
# --------------------------------------------------------------------------------------------


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Where(cond[12] bool const, ., alt[12]) -> MatMul(W2) -> y
def where_channel_cond(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    cond = np.array([True, False, True, True, False, True, False, False, True, True, False, True])
    return _ffn("  a = Where(cond, h, alt)\n", {"cond": cond, "alt": _vec(rng, 12)}, rng)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Where(mask[B,S,1] bool input, ., -1.0) -> MatMul(W2) -> y
def where_mask_input(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
where (float[B, S, 8] x, bool[B, S, 1] mask) => (float[B, S, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  a = Where(mask, h, fill)
  y = MatMul(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6), "fill": _f32(-1.0)}
    return _build(text, inits)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Cast(to=FLOAT) -> Relu -> MatMul(W2) -> y
def cast(seed: int = 0) -> onnx.ModelProto:
    body = """
  c = Cast<to = 1>(h)
  a = Relu(c)
"""
    return _ffn(body, {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Identity -> Relu -> MatMul(W2) -> y
def identity(seed: int = 0) -> onnx.ModelProto:
    body = """
  i = Identity(h)
  a = Relu(i)
"""
    return _ffn(body, {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Relu -> Dropout(ratio=0.3, inference) -> MatMul(W2) -> y
def dropout(seed: int = 0) -> onnx.ModelProto:
    body = """
  r = Relu(h)
  a = Dropout(r, ratio)
"""
    return _ffn(body, {"ratio": _f32(0.3)}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1[8,12]) -> Relu -+-> Concat(axis=-1) [B,S,22] -> MatMul(W3[22,6]) -> y
# x[B,S,8] -> MatMul(W2[8,10]) -> Sigmoid +       (W2's channels sit at offset 12 in W3)
def concat_channels(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
concat (float[B, S, 8] x) => (float[B, S, 6] y) {
  h1 = MatMul(x, W1)
  a1 = Relu(h1)
  h2 = MatMul(x, W2)
  a2 = Sigmoid(h2)
  c = Concat<axis = -1>(a1, a2)
  y = MatMul(c, W3)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 8, 10), "W3": _mat(rng, 22, 6)})


# x[B,S,8] -> MatMul(W1[8,12]) -+-> Concat(axis=1) [B,2S,12] -> ReduceMean(axes=[1], keepdims=1)
# x[B,S,8] -> MatMul(W2[8,12]) -+     -> Relu -> MatMul(W3[12,6]) -> y[B,1,6]   (roots coupled)
def concat_seq_axis(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
concat (float[B, S, 8] x) => (float[B, 1, 6] y) {
  h1 = MatMul(x, W1)
  h2 = MatMul(x, W2)
  c = Concat<axis = 1>(h1, h2)
  m = ReduceMean<keepdims = 1>(c, ax1)
  a = Relu(m)
  y = MatMul(a, W3)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 8, 12), "W3": _mat(rng, 12, 6), "ax1": _i64(1)}
    return _build(text, inits)


# x[B,S,8] -> MatMul(Wf[8,36]) -> Add(bf[36]) -> Split(axis=-1, [12,10,14])
#   p0 -> Relu    -> MatMul(Wa[12,6]) --+
#   p1 -> Sigmoid -> MatMul(Wb[10,6]) --+-> Sum -> y[B,S,6]
#   p2 ----------- -> MatMul(Wc[14,6]) --+
def split_uneven(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
split (float[B, S, 8] x) => (float[B, S, 6] y) {
  f0 = MatMul(x, Wf)
  f = Add(f0, bf)
  p0, p1, p2 = Split<axis = -1>(f, sizes)
  a0 = Relu(p0)
  a1 = Sigmoid(p1)
  y0 = MatMul(a0, Wa)
  y1 = MatMul(a1, Wb)
  y2 = MatMul(p2, Wc)
  y = Sum(y0, y1, y2)
}
"""
    inits = {
        "Wf": _mat(rng, 8, 36),
        "bf": _vec(rng, 36),
        "sizes": _i64(12, 10, 14),
        "Wa": _mat(rng, 12, 6),
        "Wb": _mat(rng, 10, 6),
        "Wc": _mat(rng, 14, 6),
    }
    return _build(text, inits)


# x[B,S,8] -> MatMul(W1[8,12]) -> Add(b1) -> Slice(axis=1, [1:4]) -> [B,3,12] -> Relu
#   -> MatMul(W2[12,6]) -> y[B,3,6]
def slice_seq(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
slice (float[B, S, 8] x) => (float[B, 3, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  s = Slice(h, starts, ends, axes)
  a = Relu(s)
  y = MatMul(a, W2)
}
"""
    inits = {
        "W1": _mat(rng, 8, 12),
        "b1": _vec(rng, 12),
        "W2": _mat(rng, 12, 6),
        "starts": _i64(1),
        "ends": _i64(4),
        "axes": _i64(1),
    }
    return _build(text, inits)


# torch.chunk(gu, 2, dim=-1) as the TorchScript exporter writes it: the split point is computed from
# the tensor's own shape, half = ((Shape(gu)[-1] + 1) / 2) * 1, end of the second half = half * 2.
_CHUNK_HALF = """
  shp = Shape(gu)
  d = Gather<axis = 0>(shp, im1)
  d1 = Add(d, one)
  half = Div(d1, two)
  end0 = Mul(half, one)
  end1 = Mul(half, two)
"""
_CHUNK_INITS = {"im1": _i64(-1), "one": _i64(1), "two": _i64(2), "zero": _i64(0)}


# x[B,S,8] -> MatMul(Wgu[8,24]) = gu -> chunk(2, -1) by computed Slices -> g, u [B,S,12]
#   -> Mul(g, Sigmoid(g)) * u -> MatMul(Wd[12,6]) -> y        (fused gate/up SwiGLU: phi3 gate_up_proj)
def chunk_computed_glu(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        """
chunk (float[B, S, 8] x) => (float[B, S, 6] y) {
  gu = MatMul(x, Wgu)
"""
        + _CHUNK_HALF
        + """
  g = Slice(gu, zero, end0, im1)
  u = Slice(gu, end0, end1, im1)
  gs = Sigmoid(g)
  sg = Mul(g, gs)
  a = Mul(sg, u)
  y = MatMul(a, Wd)
}
"""
    )
    return _build(text, {"Wgu": _mat(rng, 8, 24), "Wd": _mat(rng, 12, 6), **_CHUNK_INITS})


# GPT-OSS's interleaved GLU: x[B,S,8] -> MatMul(Wgu[8,24]) + bgu = gu [B,S,24] -> gate gu[..., ::2],
#   up gu[..., 1::2] (Slice with step 2 to INT64_MAX) -> g * Sigmoid(g) * (u + 1) -> MatMul(Wd[12,6]) -> y.
#   ``unpaired``: the up half is a Slice of its own input (x @ Wu), and the gate's odd positions, sliced
#   by nothing, are dead weights that go with their block. ``stop``: both Slices stop at 20 of 24.
#   ``tail``: gu[..., -1:] is added to y, so the last position is kept whole, and its block with it.
def strided_slice_glu(seed: int = 0, *, unpaired: bool = False, stop: bool = False,
                      tail: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    end = "twenty" if stop else "big"
    tail_nodes = "\n  t = Slice(gu, im1, big, im1)\n  y = Add(y0, t)"
    up = f"  u = Slice(gu, one, {end}, im1, two)" if not unpaired else "  u0 = MatMul(x, Wu)\n  u = Relu(u0)"
    text = f"""
strided (float[B, S, 8] x) => (float[B, S, 6] y) {{
  gu0 = MatMul(x, Wgu)
  gu = Add(gu0, bgu)
  g = Slice(gu, zero, {end}, im1, two)
{up}
  gs = Sigmoid(g)
  sg = Mul(g, gs)
  u1 = Add(u, onef)
  a = Mul(sg, u1)
  {"y0" if tail else "y"} = MatMul(a, Wd){tail_nodes if tail else ""}
}}
"""
    inits = {"Wgu": _mat(rng, 8, 24), "bgu": _vec(rng, 24), "Wd": _mat(rng, 12 if not stop else 10, 6),
             "zero": _i64(0), "one": _i64(1), "two": _i64(2), "im1": _i64(-1), "twenty": _i64(20),
             "big": _i64(np.iinfo(np.int64).max), "onef": _f32(1.0)}
    if unpaired:
        inits["Wu"] = _mat(rng, 8, 12)
    return _build(text, inits)


def strided_slice_unpaired(seed: int = 0) -> onnx.ModelProto:
    return strided_slice_glu(seed, unpaired=True)


def rotary_table_shared(seed: int = 0, *, table_output: bool = True, table_first: bool = True
                        ) -> onnx.ModelProto:
    """A rotary table gathered by position ids (an embedding-like seed) multiplies the first two head_dim
    positions of every head. The table's walk reaches the query projection with units of three channels
    (one head_dim position of each head); the projection's own walk, with heads as units, never meets
    the table (it broadcasts over the heads). By default the table is walked first and refused (it is
    also a graph output), and the projection's heads still prune exactly. ``table_output=False`` makes
    the table's group prunable; ``table_first=False`` walks the projection first."""
    rng = np.random.default_rng(seed)
    table = "  t = Gather(T, pos)\n  tu = Unsqueeze(t, ax2)\n"
    projection = "  q = MatMul(x, Wq)\n  qh = Reshape(q, hd_shape)\n"
    outputs = ", float[B, S, 2] t" if table_output else ""
    text = f"""
rts (float[B, S, 8] x, int64[B, S] pos) => (float[B, S, 6] y{outputs}) {{
{table + projection if table_first else projection + table}  rot = Slice(qh, zero, two, ax3)
  keep = Slice(qh, two, four, ax3)
  r = Mul(rot, tu)
  c = Concat<axis = 3>(r, keep)
  m = Reshape(c, mg_shape)
  y = MatMul(m, Wo)
}}
"""
    inits = {
        "T": _vec(rng, 16, 2, scale=1.0),
        "Wq": _mat(rng, 8, 12),
        "Wo": _mat(rng, 12, 6),
        "hd_shape": _i64(0, 0, 3, 4),
        "mg_shape": _i64(0, 0, 12),
        "ax2": _i64(2),
        "ax3": _i64(3),
        "zero": _i64(0),
        "two": _i64(2),
        "four": _i64(4),
    }
    return _build(text, inits)


def strided_slice_tail(seed: int = 0) -> onnx.ModelProto:
    return strided_slice_glu(seed, tail=True)


def strided_slice_stop(seed: int = 0) -> onnx.ModelProto:
    return strided_slice_glu(seed, stop=True)


# x[B,S,8] -> MatMul(Wg[8,12]) -+-> Concat(-1) = gu [B,S,24] -> chunk(2, -1), the split point computed in
# x[B,S,8] -> MatMul(Wu[8,12]) -+   float: Cast(Ceil(Cast<float>(Shape(gu)[-1:]) / 2)); the second half
#   ends at INT64_MAX -> Gelu(g) * u -> MatMul(Wd[12,6]) -> y   (the walk from Wg reaches the up half's
#   Slice from its output, through the Mul: the ownership of gu grows after the Slice rule ran)
def chunk_computed_concat(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
chunk (float[B, S, 8] x) => (float[B, S, 6] y) {
  g0 = MatMul(x, Wg)
  u0 = MatMul(x, Wu)
  gu = Concat<axis = -1>(g0, u0)
  shp = Shape<start = -1>(gu)
  df = Cast<to = 1>(shp)
  hf = Div(df, twof)
  hc = Ceil(hf)
  half = Cast<to = 7>(hc)
  g = Slice(gu, zero, half, im1)
  u = Slice(gu, half, big, im1)
  gg = Gelu(g)
  a = Mul(gg, u)
  y = MatMul(a, Wd)
}
"""
    inits = {"Wg": _mat(rng, 8, 12), "Wu": _mat(rng, 8, 12), "Wd": _mat(rng, 12, 6),
             "twof": np.array([2.0], np.float32), "big": _i64(2**63 - 1), **_CHUNK_INITS}
    return _build(text, inits, opset=20)


# x[B,S,8] -> MatMul(W[8,24]) = gu -> chunk(3, -1): size = (Shape(gu)[-1] + 2) / 3, Slices [0:s], [s:2s],
#   [2s:3s] -> a * Sigmoid(b) * c -> MatMul(Wd[8,6]) -> y          (three parts pruned together)
def chunk_computed_three(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
chunk (float[B, S, 8] x) => (float[B, S, 6] y) {
  gu = MatMul(x, W)
  shp = Shape(gu)
  d = Gather<axis = 0>(shp, im1)
  d2 = Add(d, two)
  s1 = Div(d2, three)
  s2 = Mul(s1, two)
  s3 = Mul(s1, three)
  p = Slice(gu, zero, s1, im1)
  q = Slice(gu, s1, s2, im1)
  r = Slice(gu, s2, s3, im1)
  qs = Sigmoid(q)
  pq = Mul(p, qs)
  a = Mul(pq, r)
  y = MatMul(a, Wd)
}
"""
    inits = {"W": _mat(rng, 8, 24), "Wd": _mat(rng, 8, 6), "three": _i64(3), **_CHUNK_INITS}
    return _build(text, inits)


# x[B,S,8] -> MatMul(Wgu[8,24]) = gu -> Slices split at the computed Shape(gu)[-1] - 12 (= 12 dense):
#   the halves are pruned together (g * u) but the offset does not scale with the pruned width
def chunk_computed_offset(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
chunk (float[B, S, 8] x) => (float[B, S, 6] y) {
  gu = MatMul(x, Wgu)
  shp = Shape(gu)
  d = Gather<axis = 0>(shp, im1)
  split = Sub(d, twelve)
  g = Slice(gu, zero, split, im1)
  u = Slice(gu, split, d, im1)
  gs = Sigmoid(g)
  a = Mul(gs, u)
  y = MatMul(a, Wd)
}
"""
    inits = {"Wgu": _mat(rng, 8, 24), "Wd": _mat(rng, 12, 6), "twelve": _i64(12), **_CHUNK_INITS}
    return _build(text, inits)


# x[B,S,8] -> MatMul(W[8,24]) = gu -> chunk(2, -1) by computed Slices -> g [B,S,12] -> Relu
#   -> MatMul(Wa[12,6]); u [B,S,12] -> MatMul(Wb[12,6]); Add -> y    (halves of unequal pruning: a
#   channel of one half can go without its partner, which the recomputed split point cannot follow)
def chunk_computed_unpaired(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        """
chunk (float[B, S, 8] x) => (float[B, S, 6] y) {
  gu = MatMul(x, W)
"""
        + _CHUNK_HALF
        + """
  g = Slice(gu, zero, end0, im1)
  u = Slice(gu, end0, end1, im1)
  a = Relu(g)
  ya = MatMul(a, Wa)
  yb = MatMul(u, Wb)
  y = Add(ya, yb)
}
"""
    )
    inits = {"W": _mat(rng, 8, 24), "Wa": _mat(rng, 12, 6), "Wb": _mat(rng, 12, 6), **_CHUNK_INITS}
    return _build(text, inits)


# ids int64[B,S] -> Gather(E[20,12], ids) -> [B,S,12] -> MatMul(W[12,6]) -> y     (root: E axis -1)
def gather_embedding(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
emb (int64[B, S] ids) => (float[B, S, 6] y) {
  e = Gather<axis = 0>(E, ids)
  y = MatMul(e, W)
}
"""
    return _build(text, {"E": _vec(rng, 20, 12, scale=1.0), "W": _mat(rng, 12, 6)})


# ids -> Gather(E[20,12]) -> e; r = e + MatMul(e, W); LayerNorm; logits = MatMul(n, Transpose(E))
#   (a tied LM head: the embedding, transposed, is the output projection; hidden group)
def tied_lm_head(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
tied (int64[B, S] ids) => (float[B, S, 20] y) {
  e = Gather<axis = 0>(E, ids)
  h = MatMul(e, W)
  r = Add(e, h)
  n = LayerNormalization<axis = -1, epsilon = 1e-5>(r, g, b)
  Et = Transpose<perm = [1, 0]>(E)
  y = MatMul(n, Et)
}
"""
    return _build(text, {"E": _vec(rng, 20, 12, scale=1.0), "W": _mat(rng, 12, 12), "g": _pos(rng, 12),
                         "b": _vec(rng, 12)})


# x[B,S,8] -> MatMul(W1[8,12]) -> Add(b1) -> Gather(axis=1, index 0 scalar) -> [B,12] -> Relu
#   -> MatMul(W2[12,6]) -> y[B,6]                  (Gather on a non-channel axis, drops it)
def gather_token(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
tok (float[B, S, 8] x) => (float[B, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  t = Gather<axis = 1>(h, i0)
  a = Relu(t)
  y = MatMul(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6), "i0": _SCALAR0}
    return _build(text, inits)


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> ReduceMean(axes=[1], keepdims=1) -> [B,1,12] -> Relu
#   -> MatMul(W2[12,6]) -> y[B,1,6]
def reduce_mean_seq(seed: int = 0) -> onnx.ModelProto:
    body = """
  m = ReduceMean<keepdims = 1>(h, ax1)
  a = Relu(m)
"""
    rng = np.random.default_rng(seed)
    model = _ffn(body, {"ax1": _i64(1)}, rng)
    _set_output_shape(model, 0, ["B", 1, 6])
    return model


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Softmax(axis=1, over S) -> MatMul(W2) -> y
def softmax_seq(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Softmax<axis = 1>(h)\n", {}, np.random.default_rng(seed))


# x[B,8] -> MatMul(W1[8,12]) -> Unsqueeze(axes=[1]) -> [B,1,12] -> Relu -> Squeeze(axes=[1])
#   -> [B,12] -> MatMul(W2[12,6]) -> y[B,6]
def squeeze_unsqueeze(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
sq (float[B, 8] x) => (float[B, 6] y) {
  h = MatMul(x, W1)
  u = Unsqueeze(h, ax1)
  r = Relu(u)
  s = Squeeze(r, ax1)
  y = MatMul(s, W2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "ax1": _i64(1)})


# x[B,8] -> MatMul(W1[8,12]) -> Unsqueeze(axes=[1]) -> [B,1,12] -> Expand(shape=[1,4,12])
#   -> [B,4,12] -> Relu -> MatMul(W2[12,6]) -> y[B,4,6]      (the shape constant holds the 12)
def expand(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
expand (float[B, 8] x) => (float[B, 4, 6] y) {
  h = MatMul(x, W1)
  u = Unsqueeze(h, ax1)
  e = Expand(u, eshape)
  r = Relu(e)
  y = MatMul(r, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "ax1": _i64(1), "eshape": _i64(1, 4, 12)}
    return _build(text, inits)


# --------------------------------------------------------------------------------------------
# norms (hidden groups: the residual stream is written by Win and W2, read by W1 and Wout)
# --------------------------------------------------------------------------------------------

_RESIDUAL = """
  h = MatMul(x, Win)
  f0 = MatMul(h, W1)
  f1 = Relu(f0)
  f = MatMul(f1, W2)
  r = Add(h, f)
"""


def _residual_inits(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "Win": _mat(rng, 8, 12),
        "W1": _mat(rng, 12, 16),
        "W2": _mat(rng, 16, 12),
        "Wout": _mat(rng, 12, 6),
    }


# x[B,S,8] -> MatMul(Win[8,12]) = h -> MatMul(W1[12,16]) -> Relu -> MatMul(W2[16,12]) = f
#   Add(h, f) -> LayerNormalization(g[12], b[12], axis=-1) -> MatMul(Wout[12,6]) -> y
def layernorm(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        "ln (float[B, S, 8] x) => (float[B, S, 6] y) {"
        + _RESIDUAL
        + """
  n = LayerNormalization<axis = -1, epsilon = 1e-5>(r, g, b)
  y = MatMul(n, Wout)
}
"""
    )
    return _build(text, {**_residual_inits(rng), "g": _pos(rng, 12), "b": _vec(rng, 12)})


# residual r as in `layernorm`, then
#   r -> Pow(2) -> ReduceMean(axes=[-1], keepdims=1) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(r, .)
#     -> Mul(., g[12]) -> MatMul(Wout[12,6]) -> y
def rmsnorm_reciprocal(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        "rms (float[B, S, 8] x) => (float[B, S, 6] y) {"
        + _RESIDUAL
        + """
  p = Pow(r, two)
  ms = ReduceMean<keepdims = 1>(p, axm1)
  v = Add(ms, eps)
  sd = Sqrt(v)
  inv = Reciprocal(sd)
  nr = Mul(r, inv)
  n = Mul(nr, g)
  y = MatMul(n, Wout)
}
"""
    )
    extra = {"two": _f32(2.0), "axm1": _i64(-1), "eps": _f32(1e-6), "g": _pos(rng, 12)}
    return _build(text, {**_residual_inits(rng), **extra})


# residual r as in `layernorm`, then
#   r -> Pow(2) -> ReduceMean(axes=[-1], keepdims=1) -> Add(eps) -> Sqrt -> Div(r, .)
#     -> Mul(g[12], .) -> MatMul(Wout[12,6]) -> y
def rmsnorm_div(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        "rms (float[B, S, 8] x) => (float[B, S, 6] y) {"
        + _RESIDUAL
        + """
  p = Pow(r, two)
  ms = ReduceMean<keepdims = 1>(p, axm1)
  v = Add(ms, eps)
  sd = Sqrt(v)
  nr = Div(r, sd)
  n = Mul(g, nr)
  y = MatMul(n, Wout)
}
"""
    )
    extra = {"two": _f32(2.0), "axm1": _i64(-1), "eps": _f32(1e-6), "g": _pos(rng, 12)}
    return _build(text, {**_residual_inits(rng), **extra})


# --------------------------------------------------------------------------------------------
# multi-head reshapes and attention (3 heads x head_dim 4 = 12 unless noted)
# --------------------------------------------------------------------------------------------


# x[B,S,8] -> MatMul(Wv[8,12]) -> Add(bv) -> Reshape(const [0,0,3,4]) -> Softmax(axis=-1, per head)
#   -> Reshape(const [0,0,12]) -> MatMul(Wo[12,6]) -> y           (whole heads only)
def reshape_heads_const(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
rh (float[B, S, 8] x) => (float[B, S, 6] y) {
  v0 = MatMul(x, Wv)
  v = Add(v0, bv)
  vh = Reshape(v, hd_shape)
  sm = Softmax<axis = -1>(vh)
  m = Reshape(sm, mg_shape)
  y = MatMul(m, Wo)
}
"""
    inits = {
        "Wv": _mat(rng, 8, 12),
        "bv": _vec(rng, 12),
        "hd_shape": _i64(0, 0, 3, 4),
        "mg_shape": _i64(0, 0, 12),
        "Wo": _mat(rng, 12, 6),
    }
    return _build(text, inits)


# as `reshape_heads_const`, but both Reshape targets are built at run time
#   Shape(x) -> Gather(0), Gather(1) -> Unsqueeze -> Concat(b, s, Constant[3], Constant[4])
#   and Concat(b, s, Constant[12])    (Constant nodes, not initializers)
def reshape_heads_dynamic(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
rh (float[B, S, 8] x) => (float[B, S, 6] y) {
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  s = Gather<axis = 0>(sh, i1)
  b1 = Unsqueeze(b, ax0)
  s1 = Unsqueeze(s, ax0)
  nh = Constant<value = int64[1] {3}>()
  hd = Constant<value = int64[1] {4}>()
  hid = Constant<value = int64[1] {12}>()
  hd_shape = Concat<axis = 0>(b1, s1, nh, hd)
  mg_shape = Concat<axis = 0>(b1, s1, hid)
  v0 = MatMul(x, Wv)
  v = Add(v0, bv)
  vh = Reshape(v, hd_shape)
  sm = Softmax<axis = -1>(vh)
  m = Reshape(sm, mg_shape)
  y = MatMul(m, Wo)
}
"""
    inits = {
        "i0": _SCALAR0,
        "i1": _SCALAR1,
        "ax0": _i64(0),
        "Wv": _mat(rng, 8, 12),
        "bv": _vec(rng, 12),
        "Wo": _mat(rng, 12, 6),
    }
    return _build(text, inits)


# x[B,4,8] -> MatMul(W1[8,12]) -> Relu -> Flatten(axis=2) -> [4*B, 12] -> MatMul(W2[12,6]) -> [4*B, 6]
#   -> Reshape(b, 4, 6) -> y      (ONNX inference names Flatten's output dimensions afresh once B is
#   symbolic; the symbolic rule keeps 4*B and 12, and the channel axis is the flattened tail)
def flatten_symbolic_batch(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
flat (float[B, 4, 8] x) => (float[B, 4, 6] y) {
  h = MatMul(x, W1)
  r = Relu(h)
  f = Flatten<axis = 2>(r)
  g = MatMul(f, W2)
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  b1 = Unsqueeze(b, ax0)
  target = Concat<axis = 0>(b1, four, six)
  y = Reshape(g, target)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "i0": _SCALAR0, "ax0": _i64(0),
             "four": _i64(4), "six": _i64(6)}
    return _build(text, inits)


# x[B,4,8] -> MatMul(W1[8,12]) -> Reshape(-1, 12) -> [4*B, 12] -> Relu -> Reshape(b, 4, 12) -> [B,4,12]
#   -> MatMul(W2[12,6]) -> y      (batch and a static axis merged into one symbolic 4*B, then split back)
def reshape_merge_symbolic_batch(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
merge (float[B, 4, 8] x) => (float[B, 4, 6] y) {
  h = MatMul(x, W1)
  m = Reshape(h, flat_shape)
  r = Relu(m)
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  b1 = Unsqueeze(b, ax0)
  target = Concat<axis = 0>(b1, four, twelve)
  u = Reshape(r, target)
  y = MatMul(u, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "flat_shape": _i64(-1, 12), "i0": _SCALAR0,
             "ax0": _i64(0), "four": _i64(4), "twelve": _i64(12)}
    return _build(text, inits)


# x[B,height,8] -> MatMul(W1[8,12]) -> Reshape(-1, 12) -> [B*height, 12] -> Relu -> Reshape(b, 32, 12)
#   -> [B,32,12] -> MatMul(W2[12,6]) -> y. The token count is symbolic in the input (LeViT's, computed
#   from the image size) while the target's 32 was traced as a constant: the leading axes cannot be
#   paired, the trailing channel axis still maps one to one. ``merged=True`` reshapes to (b, 384) instead,
#   which merges the tokens with the channels: refused.
def reshape_traced_token_count(seed: int = 0, *, merged: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    target, out = ("b1, merged_width", "float[B, 6] y") if merged else \
        ("b1, tokens, twelve", "float[B, 32, 6] y")
    text = f"""
traced (float[B, height, 8] x) => ({out}) {{
  h = MatMul(x, W1)
  m = Reshape(h, flat_shape)
  r = Relu(m)
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  b1 = Unsqueeze(b, ax0)
  target = Concat<axis = 0>({target})
  u = Reshape(r, target)
  y = MatMul(u, W2)
}}
"""
    target_pieces = {"merged_width": _i64(32 * 12)} if merged else {"tokens": _i64(32), "twelve": _i64(12)}
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 32 * 12 if merged else 12, 6),
             "flat_shape": _i64(-1, 12), "i0": _SCALAR0, "ax0": _i64(0), **target_pieces}
    return _build(text, inits)


def reshape_traced_token_count_merged(seed: int = 0) -> onnx.ModelProto:
    return reshape_traced_token_count(seed, merged=True)


# x[B,S,12] -> MatMul(Wv[12,12]) -> Reshape(b, s, 3, 4) -> Softmax -> Reshape(b, s, e) -> MatMul(Wo[12,6]),
#   with e = Shape(x)[2] read from the (unpruned) block input, as CLIP's attention reshapes its output to
#   ``(batch, seq, embed_dim)`` of ``hidden_states.size()``: e becomes a constant, the kept width
def reshape_heads_read_embed(seed: int = 0, *, shared: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    extra = "  x2 = Reshape(x, mg_shape)\n  x2p = MatMul(x2, Wo2)\n  y = Add(y0, x2p)\n" if shared else ""
    out = "y0" if shared else "y"
    text = f"""
rh (float[B, S, 12] x) => (float[B, S, 6] y) {{
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  s = Gather<axis = 0>(sh, i1)
  e = Gather<axis = 0>(sh, i2)
  b1 = Unsqueeze(b, ax0)
  s1 = Unsqueeze(s, ax0)
  e1 = Unsqueeze(e, ax0)
  nh = Constant<value = int64[1] {{3}}>()
  hd = Constant<value = int64[1] {{4}}>()
  hd_shape = Concat<axis = 0>(b1, s1, nh, hd)
  mg_shape = Concat<axis = 0>(b1, s1, e1)
  v = MatMul(x, Wv)
  vh = Reshape(v, hd_shape)
  sm = Softmax<axis = -1>(vh)
  m = Reshape(sm, mg_shape)
  {out} = MatMul(m, Wo)
{extra}}}
"""
    inits = {"i0": _SCALAR0, "i1": _SCALAR1, "i2": np.array(2, dtype=np.int64), "ax0": _i64(0),
             "Wv": _mat(rng, 12, 12), "Wo": _mat(rng, 12, 6), **({"Wo2": _mat(rng, 12, 6)} if shared else {})}
    return _build(text, inits)


# the same shape vector also reshapes the block input itself: replacing e there would break that Reshape,
#   but each Reshape reads its own copy of the shape arithmetic (passes/untie.py), so only the heads' copy
#   gets the kept width (this graph was refused before the copies)
def reshape_heads_read_embed_shared(seed: int = 0) -> onnx.ModelProto:
    return reshape_heads_read_embed(seed, shared=True)


# x[B,S,8] -> MatMul(Wv[8,12]) -> Reshape([0,0,3,4]) -> Transpose(0,2,1,3) -> [B,3,S,4]
#   -> Softmax(axis=-1) -> Transpose(0,2,1,3) -> Reshape([0,0,12]) -> MatMul(Wo[12,6]) -> y
def transpose_heads(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
th (float[B, S, 8] x) => (float[B, S, 6] y) {
  v = MatMul(x, Wv)
  vh = Reshape(v, hd_shape)
  vt = Transpose<perm = [0, 2, 1, 3]>(vh)
  sm = Softmax<axis = -1>(vt)
  st = Transpose<perm = [0, 2, 1, 3]>(sm)
  m = Reshape(st, mg_shape)
  y = MatMul(m, Wo)
}
"""
    inits = {
        "Wv": _mat(rng, 8, 12),
        "hd_shape": _i64(0, 0, 3, 4),
        "mg_shape": _i64(0, 0, 12),
        "Wo": _mat(rng, 12, 6),
    }
    return _build(text, inits)


# Interleaved rotary as transformers' `repeat_interleave(cos[..., :d/2], 2)` exports (Helium, GLM): the
#   table [1, 1, S, 2] (angles [1, S, 2] unsqueezed at the head axis, which broadcasts) -> Transpose(3,1,2,0)
#   -> Unsqueeze(1) -> Expand to [1, R, 1, S, 1], R = ReduceMax(ConstantOfShape([2], 2)) (the repeat
#   count), the 1 read from the table's own head axis -> GatherND flattening the first two axes ->
#   Transpose back -> [1, 1, S, 4], multiplied with the query heads [B, 3, S, 4]. The table spans no head;
#   shape inference sees so only if it knows the repeat count.
def rotary_repeat_interleave(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
rri (float[B, S, 8] x, float[1, S, 2] ang) => (float[B, S, 6] y) {
  q = MatMul(x, Wq)
  qh = Reshape(q, hd_shape)
  qt = Transpose<perm = [0, 2, 1, 3]>(qh)
  a4 = Unsqueeze(ang, ax1)
  c = Cos(a4)
  ct = Transpose<perm = [3, 1, 2, 0]>(c)
  cu = Unsqueeze(ct, ax1)
  half = Shape<start = 3, end = 4>(c)
  fill = ConstantOfShape<value = int64[1] {2}>(half)
  reps = ReduceMax<keepdims = 0>(fill)
  reps1 = Unsqueeze(reps, ax0)
  sh = Shape(ct)
  d1 = Slice(sh, one, four)
  target = Concat<axis = 0>(one, reps1, d1)
  e = Expand(cu, target)
  g = GatherND(e, pairs)
  tab = Transpose<perm = [3, 1, 2, 0]>(g)
  r = Mul(qt, tab)
  rt = Transpose<perm = [0, 2, 1, 3]>(r)
  m = Reshape(rt, mg_shape)
  y = MatMul(m, Wo)
}
"""
    inits = {
        "Wq": _mat(rng, 8, 12),
        "Wo": _mat(rng, 12, 6),
        "hd_shape": _i64(0, 0, 3, 4),
        "mg_shape": _i64(0, 0, 12),
        "ax1": _i64(1),
        "ax0": _i64(0),
        "one": _i64(1),
        "four": _i64(4),
        "pairs": np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.int64),
    }
    return _build(text, inits)


def _sdpa(q: str, k: str, v: str, out: str, bias: str | None = None) -> str:
    """Scaled dot-product attention on 3-D q/k/v [B,S,12] -> out [B,S,12] (3 heads x 4); ``bias``, when
    given, is added to the scaled scores."""
    scores = "scores" if bias is None else "scores_b"
    add_bias = "" if bias is None else f"\n  scores = Add(scores_b, {bias})"
    return f"""
  {q}_h = Reshape({q}, hd_shape)
  {q}_t = Transpose<perm = [0, 2, 1, 3]>({q}_h)
  {k}_h = Reshape({k}, hd_shape)
  {k}_t = Transpose<perm = [0, 2, 3, 1]>({k}_h)
  {v}_h = Reshape({v}, hd_shape)
  {v}_t = Transpose<perm = [0, 2, 1, 3]>({v}_h)
  scores0 = MatMul({q}_t, {k}_t)
  {scores} = Div(scores0, scale){add_bias}
  probs = Softmax<axis = -1>(scores)
  ctx0 = MatMul(probs, {v}_t)
  ctx1 = Transpose<perm = [0, 2, 1, 3]>(ctx0)
  {out} = Reshape(ctx1, mg_shape)
"""


def _sdpa_inits() -> dict[str, np.ndarray]:
    return {"hd_shape": _i64(0, 0, 3, 4), "mg_shape": _i64(0, 0, 12), "scale": _f32(2.0)}


def _heads_attention(scale_op: str) -> str:
    """Attention on per-head q, k, v [B,3,S,4] -> y [B,S,6]: scores scaled by ``scale_op`` (Div or Mul)
    with ``scale``, softmax, context merged back to [B,S,12] (``mg_shape``) and projected by Wo[12,6]."""
    return f"""
  kt = Transpose<perm = [0, 1, 3, 2]>(k)
  sc0 = MatMul(q, kt)
  sc = {scale_op}(sc0, scale)
  pr = Softmax<axis = -1>(sc)
  c0 = MatMul(pr, v)
  c1 = Transpose<perm = [0, 2, 1, 3]>(c0)
  c = Reshape(c1, mg_shape)
  y = MatMul(c, Wo)
"""


# ModernBERT's / timm's fused QKV: x[B,S,10] -> MatMul(Wqkv[10,36]) -> Reshape[0,0,3,3,4] -> [B,S,3,H,D]
#   -> Transpose(2,0,3,1,4) -> [3,B,H,S,D] -> Split(axis 0) + Squeeze -> q, k, v [B,3,S,4] (unbind(0))
#   -> attention -> Transpose(0,2,1,3) -> Reshape[0,0,12] -> MatMul(Wo[12,6]) -> y. The outermost axis of
#   the Reshape's block (q/k/v) is split off, so the heads are carried by the next one.
def fused_qkv_unbind(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
unbind (float[B, S, 10] x) => (float[B, S, 6] y) {
  f = MatMul(x, Wqkv)
  f5 = Reshape(f, qkv_shape)
  ft = Transpose<perm = [2, 0, 3, 1, 4]>(f5)
  q1, k1, v1 = Split<axis = 0, num_outputs = 3>(ft)
  q = Squeeze(q1, ax0)
  k = Squeeze(k1, ax0)
  v = Squeeze(v1, ax0)
""" + _heads_attention("Div") + """}
"""
    inits = {"Wqkv": _mat(rng, 10, 36), "Wo": _mat(rng, 12, 6), "qkv_shape": _i64(0, 0, 3, 3, 4),
             "ax0": _i64(0), "mg_shape": _i64(0, 0, 12), "scale": _f32(2.0)}
    return _build(text, inits)


# timm's / MGP-STR's fused QKV indexed rather than unbound: the same [3,B,H,S,D] layout, q, k and v taken
#   with Gather(axis 0) of the scalar indices 0, 1 and 2 (``qkv[0], qkv[1], qkv[2]``). Each index counts
#   a position of the size-3 axis, so that axis cannot carry the units; the heads (next axis) do.
def fused_qkv_gather(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gather_qkv (float[B, S, 10] x) => (float[B, S, 6] y) {
  f0 = MatMul(x, Wqkv)
  f = Add(f0, bqkv)
  f5 = Reshape(f, qkv_shape)
  ft = Transpose<perm = [2, 0, 3, 1, 4]>(f5)
  q = Gather<axis = 0>(ft, i0)
  k = Gather<axis = 0>(ft, i1)
  v = Gather<axis = 0>(ft, i2)
""" + _heads_attention("Mul") + """}
"""
    inits = {"Wqkv": _mat(rng, 10, 36), "bqkv": rng.standard_normal(36).astype(np.float32),
             "Wo": _mat(rng, 12, 6),
             "qkv_shape": _i64(0, 0, 3, 3, 4), "i0": np.array(0, dtype=np.int64),
             "i1": np.array(1, dtype=np.int64), "i2": np.array(2, dtype=np.int64),
             "mg_shape": _i64(0, 0, 12), "scale": _f32(0.5)}
    return _build(text, inits)


# The dynamo exporter's decomposition of scaled_dot_product_attention transposes the keys through a
#   merged batch*heads axis whose shapes are sliced from the keys' own shape: Shape(k) [B,H,S,D] ->
#   Slice(INT64_MIN:-2) = [B,H], Slice(-2:-1) = [S], Slice(-1:INT64_MAX) = [D]; k -> Reshape[-1,S,D] ->
#   Transpose(0,2,1) -> Reshape[B,H,D,S]. The prefix [B,H] is read at run time (the pruned head count).
def sdpa_key_transpose_sliced_shape(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
sliced_shape (float[B, S, 10] x) => (float[B, S, 6] y) {
  q0 = MatMul(x, Wq)
  k0 = MatMul(x, Wk)
  v0 = MatMul(x, Wv)
  qh = Reshape(q0, hd_shape)
  q = Transpose<perm = [0, 2, 1, 3]>(qh)
  kh = Reshape(k0, hd_shape)
  k = Transpose<perm = [0, 2, 1, 3]>(kh)
  vh = Reshape(v0, hd_shape)
  v = Transpose<perm = [0, 2, 1, 3]>(vh)
  ks = Shape(k)
  lead = Slice(ks, smin, m2)
  seq = Slice(ks, m2, m1)
  dim = Slice(ks, m1, smax)
  flat_shape = Concat<axis = 0>(m1, seq, dim)
  kf = Reshape(k, flat_shape)
  kft = Transpose<perm = [0, 2, 1]>(kf)
  back_shape = Concat<axis = 0>(lead, dim, seq)
  kt = Reshape(kft, back_shape)
  sc0 = MatMul(q, kt)
  sc = Mul(sc0, scale)
  pr = Softmax<axis = -1>(sc)
  c0 = MatMul(pr, v)
  c1 = Transpose<perm = [0, 2, 1, 3]>(c0)
  c = Reshape(c1, mg_shape)
  y = MatMul(c, Wo)
}
"""
    inits = {"Wq": _mat(rng, 10, 12), "Wk": _mat(rng, 10, 12), "Wv": _mat(rng, 10, 12),
             "Wo": _mat(rng, 12, 6),
             "hd_shape": _i64(0, 0, 3, 4), "mg_shape": _i64(0, 0, 12), "scale": _f32(0.5),
             "smin": _i64(np.iinfo(np.int64).min), "smax": _i64(np.iinfo(np.int64).max), "m2": _i64(-2),
             "m1": _i64(-1)}
    return _build(text, inits)


# x[B,S,10] -> MatMul(Wq[10,12]) + bq -> Reshape[0,0,3,4] -> Transpose(0,2,1,3) ----------+
# x[B,S,10] -> MatMul(Wk[10,12]) + bk -> Reshape[0,0,3,4] -> Transpose(0,2,3,1) -> MatMul(q,k^T)
#   -> Div(sqrt(4)) -> Softmax -> MatMul(., v)    (v: Wv[10,12] + bv -> Reshape -> Transpose)
#   -> Transpose(0,2,1,3) -> Reshape[0,0,12] -> MatMul(Wo[12,6]) -> Add(bo[6]) -> y[B,S,6]
def attention_block(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        """
mha (float[B, S, 10] x) => (float[B, S, 6] y) {
  q0 = MatMul(x, Wq)
  q = Add(q0, bq)
  k0 = MatMul(x, Wk)
  k = Add(k0, bk)
  v0 = MatMul(x, Wv)
  v = Add(v0, bv)
"""
        + _sdpa("q", "k", "v", "ctx")
        + """
  o = MatMul(ctx, Wo)
  y = Add(o, bo)
}
"""
    )
    inits = {
        "Wq": _mat(rng, 10, 12),
        "bq": _vec(rng, 12),
        "Wk": _mat(rng, 10, 12),
        "bk": _vec(rng, 12),
        "Wv": _mat(rng, 10, 12),
        "bv": _vec(rng, 12),
        "Wo": _mat(rng, 12, 6),
        "bo": _vec(rng, 6),
        **_sdpa_inits(),
    }
    return _build(text, inits)


def _if_on_lengths(seed: int, k_input: str) -> onnx.ModelProto:
    """``attention_block`` whose scores pass through DeBERTa's "do the query and key lengths differ?"
    ``If``: the then-branch (never taken when the lengths are one symbol) gives every key the first
    key's score."""
    rng = np.random.default_rng(seed)
    inputs = "float[B, S, 10] x" + (", float[B, T, 10] xk" if k_input == "xk" else "")
    text = f"""
mha ({inputs}) => (float[B, S, 6] y) {{
  q0 = MatMul(x, Wq)
  q = Add(q0, bq)
  k0 = MatMul({k_input}, Wk)
  k = Add(k0, bk)
  v0 = MatMul({k_input}, Wv)
  v = Add(v0, bv)
  q_h = Reshape(q, hd_shape)
  q_t = Transpose<perm = [0, 2, 1, 3]>(q_h)
  k_h = Reshape(k, hd_shape)
  k_t = Transpose<perm = [0, 2, 3, 1]>(k_h)
  v_h = Reshape(v, hd_shape)
  v_t = Transpose<perm = [0, 2, 1, 3]>(v_h)
  scores0 = MatMul(q_t, k_t)
  q_shape = Shape(q)
  q_len1 = Slice(q_shape, one, two)
  q_len = Squeeze(q_len1)
  k_shape = Shape(k)
  k_len1 = Slice(k_shape, one, two)
  k_len = Squeeze(k_len1)
  same = Equal(q_len, k_len)
  differ = Not(same)
  cond = Cast<to = 9>(differ)
  scores1 = If(cond) <
    then_branch = then_g () => (float[B, H, S, T] first_key) {{
      sliced = Slice(scores0, zero, one, minus_one)
      scores_shape = Shape(scores0)
      first_key = Expand(sliced, scores_shape)
    }},
    else_branch = else_g () => (float[B, H, S, T] same_scores) {{
      same_scores = Identity(scores0)
    }}
  >
  scores = Div(scores1, scale)
  probs = Softmax<axis = -1>(scores)
  ctx0 = MatMul(probs, v_t)
  ctx1 = Transpose<perm = [0, 2, 1, 3]>(ctx0)
  ctx = Reshape(ctx1, mg_shape)
  o = MatMul(ctx, Wo)
  y = Add(o, bo)
}}
"""
    inits = {
        "Wq": _mat(rng, 10, 12), "bq": _vec(rng, 12), "Wk": _mat(rng, 10, 12), "bk": _vec(rng, 12),
        "Wv": _mat(rng, 10, 12), "bv": _vec(rng, 12), "Wo": _mat(rng, 12, 6), "bo": _vec(rng, 6),
        "one": _i64(1), "two": _i64(2), "zero": _i64(0), "minus_one": _i64(-1), **_sdpa_inits(),
    }
    return _build(text, inits)


# attention_block with If(Cast(Not(Equal(len(q), len(k))))) on the scores: q and k from the same x, so
# the lengths are one symbol, the condition is False for every input and the If folds to its else-branch.
def if_on_equal_lengths(seed: int = 0) -> onnx.ModelProto:
    return _if_on_lengths(seed, "x")


# The same If with keys from a second input of length T: the condition depends on the input, the If
# stays, and the heads (whose scores flow into it) are refused.
def if_on_undecided_lengths(seed: int = 0) -> onnx.ModelProto:
    return _if_on_lengths(seed, "xk")


# x[B,S,10] -> MatMul(Wqkv[10,36]) -> Add(bqkv[36]) -> Split(axis=-1, [12,12,12]) -> q, k, v
#   -> (attention as in `attention_block`) -> MatMul(Wo[12,6]) -> y
def split_qkv_attention(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        """
qkv (float[B, S, 10] x) => (float[B, S, 6] y) {
  f0 = MatMul(x, Wqkv)
  f = Add(f0, bqkv)
  q, k, v = Split<axis = -1>(f, sizes)
"""
        + _sdpa("q", "k", "v", "ctx")
        + """
  y = MatMul(ctx, Wo)
}
"""
    )
    inits = {
        "Wqkv": _mat(rng, 10, 36),
        "bqkv": _vec(rng, 36),
        "sizes": _i64(12, 12, 12),
        "Wo": _mat(rng, 12, 6),
        **_sdpa_inits(),
    }
    return _build(text, inits)


# Attention of 4 query heads of head_dim 3: q[B,4,S,3], kt[B,kv,3,S] and v[B,kv,S,3] (kv = 4 or 1,
# broadcast) -> scaled scores -> Softmax -> @ v -> Transpose -> Reshape[0,0,12] -> MatMul(Wo) = y.
_FOUR_HEAD_TAIL = """
  sc0 = MatMul(q, kt)
  sc = Mul(sc0, scale)
  p = Softmax<axis = -1>(sc)
  c0 = MatMul(p, v)
  c1 = Transpose<perm = [0, 2, 1, 3]>(c0)
  c = Reshape(c1, mg_shape)
  y = MatMul(c, Wo)
"""


# GQA: 4 query heads, 2 KV heads, head_dim 3.
# x[B,S,10] -> MatMul(Wq[10,12]) -> Reshape[0,0,4,3] -> Transpose(0,2,1,3) -> q[B,4,S,3]
# x[B,S,10] -> MatMul(Wk[10,6]) -> Reshape[0,0,2,3] -> Transpose(0,2,1,3) -> [B,2,S,3]
#   repeat_kv: Unsqueeze(axes=[2]) -> [B,2,1,S,3] -> Expand([1,1,2,1,1]) -> [B,2,2,S,3]
#              -> Reshape([0,4,-1,3]) -> [B,4,S,3]          (query head h uses KV head h // 2)
#   (same for v with Wv[10,6])
# q @ k^T -> Mul(1/sqrt3) -> Softmax -> @ v -> Transpose(0,2,1,3) -> Reshape[0,0,12]
#   -> MatMul(Wo[12,7]) -> y[B,S,7]
def gqa_block(seed: int = 0) -> onnx.ModelProto:
    return _repeat_kv_attention("gqa", seed, kv_heads=2, merge="rep_merge",
                                merge_inits={"rep_merge": _i64(0, 4, -1, 3)})


def _repeat_kv_attention(name: str, seed: int, *, kv_heads: int, merge: str, merge_nodes: str = "",
                         merge_inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """4 query heads of head_dim 3 over ``kv_heads`` key/value heads, repeated by Unsqueeze + Expand
    and merged by ``Reshape(., merge)`` (``merge_nodes`` compute it when it is not a constant)."""
    rng = np.random.default_rng(seed)
    text = f"""
{name} (float[B, S, 10] x) => (float[B, S, 7] y) {{
  q0 = MatMul(x, Wq)
  q1 = Reshape(q0, q_shape)
  q = Transpose<perm = [0, 2, 1, 3]>(q1)
  k0 = MatMul(x, Wk)
  k1 = Reshape(k0, kv_shape)
  k2 = Transpose<perm = [0, 2, 1, 3]>(k1)
{merge_nodes}  k3 = Unsqueeze(k2, ax2)
  k4 = Expand(k3, rep_shape)
  k = Reshape(k4, {merge})
  kt = Transpose<perm = [0, 1, 3, 2]>(k)
  v0 = MatMul(x, Wv)
  v1 = Reshape(v0, kv_shape)
  v2 = Transpose<perm = [0, 2, 1, 3]>(v1)
  v3 = Unsqueeze(v2, ax2)
  v4 = Expand(v3, rep_shape)
  v = Reshape(v4, {merge})
{_FOUR_HEAD_TAIL}}}
"""
    inits = {
        "Wq": _mat(rng, 10, 12),
        "Wk": _mat(rng, 10, 3 * kv_heads),
        "Wv": _mat(rng, 10, 3 * kv_heads),
        "Wo": _mat(rng, 12, 7),
        "q_shape": _i64(0, 0, 4, 3),
        "kv_shape": _i64(0, 0, kv_heads, 3),
        "ax2": _i64(2),
        "rep_shape": _i64(1, 1, 4 // kv_heads, 1, 1),
        "mg_shape": _i64(0, 0, 12),
        "scale": _f32(1.0 / math.sqrt(3.0)),
        **merge_inits,
    }
    return _build(text, inits)


# MQA: 4 query heads share one KV head (head_dim 3), repeat_kv as transformers exports it:
# k[B,1,S,3] -> Unsqueeze(axes=[2]) -> [B,1,1,S,3] -> Expand([1,1,4,1,1]) -> [B,1,4,S,3] (broadcast from
# 1 along the query-head axis) -> Reshape([B, kv * 4, S, 3]) with kv read at run time by Shape (= 1).
# Query heads are prunable one by one (each removed head drops its copy of the shared K/V); K and V are
# one unit each (their only KV head) and stay. (same for v with Wv[10,3])
def mqa_block(seed: int = 0) -> onnx.ModelProto:
    merge_nodes = """  ks = Shape(k2)
  kb = Gather(ks, i0)
  kh = Gather(ks, i1)
  kl = Gather(ks, i2)
  kr = Mul(kh, n_rep)
  kb1 = Unsqueeze(kb, ax0)
  kr1 = Unsqueeze(kr, ax0)
  kl1 = Unsqueeze(kl, ax0)
  merge = Concat<axis = 0>(kb1, kr1, kl1, head_dim)
"""
    pairs = (("i0", 0), ("i1", 1), ("i2", 2), ("n_rep", 4))
    scalar = {name: np.array(v, dtype=np.int64) for name, v in pairs}
    return _repeat_kv_attention("mqa", seed, kv_heads=1, merge="merge", merge_nodes=merge_nodes,
                                merge_inits={**scalar, "ax0": _i64(0), "head_dim": _i64(3)})


# attention_block with a constant position bias built by ConstantOfShape([1, n_heads, 1, 1]) and
# added to the scores (T5's zero bias of a cross-attention without relative attention bias): the
# n_heads element of the shape is patched with the heads.
def constant_of_shape_bias(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        """
cos (float[B, S, 10] x) => (float[B, S, 6] y) {
  q = MatMul(x, Wq)
  k = MatMul(x, Wk)
  v = MatMul(x, Wv)
  bias = ConstantOfShape<value = float[1] {0.5}>(bshape)
"""
        + _sdpa("q", "k", "v", "c", bias="bias")
        + """
  y = MatMul(c, Wo)
}
"""
    )
    inits = {
        "Wq": _mat(rng, 10, 12),
        "Wk": _mat(rng, 10, 12),
        "Wv": _mat(rng, 10, 12),
        "Wo": _mat(rng, 12, 6),
        "bshape": _i64(1, 3, 1, 1),
        **_sdpa_inits(),
    }
    return _build(text, inits)


# Fused QKV with one shared KV head (multi-query attention), Falcon-7B style: one projection
# x[B,S,10] -> MatMul(Wqkv[10,18]) -> Reshape[0,0,6,3] (4 query heads, then k, then v; head_dim 3)
#   q = Slice(axes=[2], [0:-2])  -> [B,S,4,3] -> Transpose(0,2,1,3)
#   k = Gather(axis=2, [-2])     -> [B,S,1,3] -> Transpose(0,2,3,1) -> [B,1,3,S]
#   v = Gather(axis=2, [-1])     -> [B,S,1,3] -> Transpose(0,2,1,3) -> [B,1,S,3]
# q @ k^T (k broadcast over the heads) -> Softmax -> @ v -> Transpose -> Reshape[0,0,12] -> Wo[12,7].
# The bound -2 and the indices -2/-1 count k and v from the end: their six channels are kept whole,
# and the four query heads are pruned on their own.
def fused_qkv_mqa_slices(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
fmqa (float[B, S, 10] x) => (float[B, S, 7] y) {
  f = MatMul(x, Wqkv)
  f4 = Reshape(f, qkv_shape)
  q0 = Slice(f4, zero, minus2, ax2)
  k0 = Gather<axis = 2>(f4, minus2)
  v0 = Gather<axis = 2>(f4, minus1)
  q = Transpose<perm = [0, 2, 1, 3]>(q0)
  kt = Transpose<perm = [0, 2, 3, 1]>(k0)
  v = Transpose<perm = [0, 2, 1, 3]>(v0)
""" + _FOUR_HEAD_TAIL + """}
"""
    inits = {
        "Wqkv": _mat(rng, 10, 18),
        "Wo": _mat(rng, 12, 7),
        "qkv_shape": _i64(0, 0, 6, 3),
        "zero": _i64(0),
        "minus2": _i64(-2),
        "minus1": _i64(-1),
        "ax2": _i64(2),
        "mg_shape": _i64(0, 0, 12),
        "scale": _f32(1.0 / math.sqrt(3.0)),
    }
    return _build(text, inits)


# Fused QKV with one shared KV head, GPTBigCode style: Split(axis=-1, [12, 3, 3]) of one projection
# x[B,S,10] -> MatMul(Wqkv[10,18]) + bqkv -> q[B,S,12] -> Reshape[0,0,4,3] -> Transpose(0,2,1,3)
#   k[B,S,3] -> Unsqueeze(1) -> Transpose(0,1,3,2) -> [B,1,3,S];  v[B,S,3] -> Unsqueeze(1) -> [B,1,S,3]
# q @ k^T -> Softmax -> @ v -> [B,4,S,3] -> Transpose -> Reshape[0,0,12] -> Wo[12,7].
# k's channels are summed with every head's (q.k^T) and v's are each head's head_dim (the Reshape
# merges heads x v-channels): both are kept whole, and the query heads are pruned on their own.
def fused_qkv_mqa_split(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
smqa (float[B, S, 10] x) => (float[B, S, 7] y) {
  f0 = MatMul(x, Wqkv)
  f = Add(f0, bqkv)
  q0, k0, v0 = Split<axis = -1>(f, sizes)
  q1 = Reshape(q0, q_shape)
  q = Transpose<perm = [0, 2, 1, 3]>(q1)
  k1 = Unsqueeze(k0, ax1)
  kt = Transpose<perm = [0, 1, 3, 2]>(k1)
  v = Unsqueeze(v0, ax1)
""" + _FOUR_HEAD_TAIL + """}
"""
    inits = {
        "Wqkv": _mat(rng, 10, 18),
        "bqkv": _vec(rng, 18),
        "Wo": _mat(rng, 12, 7),
        "sizes": _i64(12, 3, 3),
        "q_shape": _i64(0, 0, 4, 3),
        "ax1": _i64(1),
        "mg_shape": _i64(0, 0, 12),
        "scale": _f32(1.0 / math.sqrt(3.0)),
    }
    return _build(text, inits)


# x[B,S,8] -> MatMul(W1[8,12]) + b1 -> Relu = a; head = Slice(a, [0:-4]) -> MatMul(W2[8,6]);
#   tail = Slice(a, [-4:]) -> MatMul(W3[4,6]); y = head + tail. The last four channels are counted from
#   the end: they are kept whole, the first eight prune.
def slice_negative_bounds(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
sneg (float[B, S, 8] x) => (float[B, S, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  a = Relu(h)
  head = Slice(a, zero, minus4, ax2)
  tail = Slice(a, minus4, big, ax2)
  y0 = MatMul(head, W2)
  y1 = MatMul(tail, W3)
  y = Add(y0, y1)
}
"""
    inits = {
        "W1": _mat(rng, 8, 12),
        "b1": _vec(rng, 12),
        "W2": _mat(rng, 8, 6),
        "W3": _mat(rng, 4, 6),
        "zero": _i64(0),
        "minus4": _i64(-4),
        "big": _i64(2**62),
        "ax2": _i64(2),
    }
    return _build(text, inits)


# x[B,S,8] -> MatMul(W1[8,12]) + b1 -> Relu = a; first = Gather(a, axis=2, [1]) [B,S,1] (a per-token
# gate from channel 1), y = MatMul(a, W2[12,6]) * first. Index 1 counts channels 0 and 1: they stay.
def gather_channel_index(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gch (float[B, S, 8] x) => (float[B, S, 6] y) {
  h0 = MatMul(x, W1)
  h = Add(h0, b1)
  a = Relu(h)
  g = Gather<axis = 2>(a, one)
  y0 = MatMul(a, W2)
  y = Mul(y0, g)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6), "one": _i64(1)}
    return _build(text, inits)


# --------------------------------------------------------------------------------------------
# batch and heads merged into one axis ([B*H, S, D], association.merged_axes)
# --------------------------------------------------------------------------------------------

# the merged target shape [Shape(x)[0] * n_heads, -1, head_dim]
_MERGE_SHAPE = """
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  bh = Mul(b, n_heads)
  bh1 = Unsqueeze(bh, ax0)
  merge_shape = Concat<axis = 0>(bh1, minus1, head_dim)
"""

_MERGED_QKV = _MERGE_SHAPE + """
  q = MatMul(x, Wq)
  k = MatMul(x, Wk)
  v = MatMul(x, Wv)
  q_h = Reshape(q, hd_shape)
  q_t = Transpose<perm = [0, 2, 1, 3]>(q_h)
  q_m = Reshape(q_t, merge_shape)
  k_h = Reshape(k, hd_shape)
  k_t = Transpose<perm = [0, 2, 1, 3]>(k_h)
  k_m = Reshape(k_t, merge_shape)
  k_mt = Transpose<perm = [0, 2, 1]>(k_m)
  v_h = Reshape(v, hd_shape)
  v_t = Transpose<perm = [0, 2, 1, 3]>(v_h)
  v_m = Reshape(v_t, merge_shape)
  s0 = MatMul(q_m, k_mt)
"""

_MERGED_OUT = """
  probs = Softmax<axis = -1>(scores)
  ctx = MatMul(probs, v_m)
  csh = Shape(ctx)
  cb = Gather<axis = 0>(csh, i0)
  b2 = Div(cb, n_heads)
  b21 = Unsqueeze(b2, ax0)
  split_shape = Concat<axis = 0>(b21, heads1, minus1, head_dim)
  c4 = Reshape(ctx, split_shape)
  c5 = Transpose<perm = [0, 2, 1, 3]>(c4)
  c6 = Reshape(c5, mg_shape)
  y = MatMul(c6, Wo)
"""


def _merged_inits(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"i0": _SCALAR0, "ax0": _i64(0), "n_heads": np.array(3, dtype=np.int64), "heads1": _i64(3),
            "minus1": _i64(-1), "head_dim": _i64(4), "hd_shape": _i64(0, 0, 3, 4), "mg_shape": _i64(0, 0, 12),
            "Wq": _mat(rng, 8, 12), "Wk": _mat(rng, 8, 12), "Wv": _mat(rng, 8, 12), "Wo": _mat(rng, 12, 6)}


# VITS-style relative attention on batch-merged heads: the scores [3B,S,S] are padded by one key position
#   (F.pad's computed pads vector, Concat of constants: zero on the merged axis) and sliced back along the
#   key axis (Slice(0, -1) on axis 2) before the softmax: Pad and Slice along other axes leave the merged
#   heads alone. ``pad_merged``: the pads also grow the merged axis, which no head count can follow.
def batch_merged_pad_slice(seed: int = 0, *, pad_merged: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = f"""
bmp (float[B, S, 8] x) => (float[B, S, 6] y) {{
{_MERGED_QKV}
  pads = Concat<axis = 0>(pad_begin, pad_end)
  padded = Pad(s0, pads)
  scores = Slice(padded, starts, ends, axes)
{_MERGED_OUT}}}
"""
    # pad_merged: one row in front of the merged axis, sliced off again (the dense model runs)
    begin, starts, ends, axes = ((_i64(1, 0, 0), _i64(1, 0), _i64(np.iinfo(np.int64).max, -1), _i64(0, 2))
                                 if pad_merged else (_i64(0, 0, 0), _i64(0), _i64(-1), _i64(2)))
    return _build(text, {**_merged_inits(rng), "pad_begin": begin, "pad_end": _i64(0, 0, 1), "starts": starts,
                         "ends": ends, "axes": axes})


def batch_merged_pad_merged_axis(seed: int = 0) -> onnx.ModelProto:
    return batch_merged_pad_slice(seed, pad_merged=True)


# BLOOM-style: q/k/v [B,S,12] -> [B,3,S,4] -> Reshape([B*3, -1, 4], with B*3 = Shape(x)[0] * 3) -> batched
# MatMul / Softmax on [3B,S,S], plus an ALiBi-style bias slopes[3,1] * pos[B,1,S] -> [B,3,S] -> Reshape to
# [B*3, 1, S] -> back to [B,3,S,4] with B = Shape(ctx)[0] / 3. Pruning a head patches both 3s of the
# products and the divisor, and slices the slopes.
def batch_merged_heads(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = f"""
bm (float[B, S, 8] x, float[B, 1, S] pos) => (float[B, S, 6] y) {{
{_MERGED_QKV}
  al0 = Mul(slopes, pos)
  bias_shape = Concat<axis = 0>(bh1, one, minus1)
  al = Reshape(al0, bias_shape)
  scores = Add(s0, al)
{_MERGED_OUT}}}
"""
    return _build(text, {**_merged_inits(rng), "slopes": _vec(rng, 3, 1, scale=1.0), "one": _i64(1)})


# DeBERTa-style relative positions: a static [3, R, 4] head stack of projected position embeddings is tiled
# over the batch (repeats = Shape(q_m)[0] / 3) into [3B, R, 4]; q_m @ it^T gives [3B, S, R], and
# token selection as torch.gather exports it (RT-DETR's top-k queries, ViT-MAE's kept patches): top-k
# positions [B, 3] -> Unsqueeze -> Tile to [B, 3, 12] with the channel count read from Shape(h) ->
# GatherElements(h, axis=1): the tiled index axis counts the channels, its repeat count is recomputed
def gather_tiled_index(seed: int = 0, *, constant_repeats: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    repeats = "  reps = Identity(c_reps)" if constant_repeats else (
        "  sh = Shape(h)\n  ch = Slice(sh, i2, i3)\n  reps = Concat<axis = 0>(one, one, ch)")
    text = f"""
gti (float[B, S, 8] x) => (float[B, 3, 6] y) {{
  h = MatMul(x, W1)
  score = ReduceMean<keepdims = 0>(x, i2)
  top, idx = TopK<axis = 1>(score, k3)
  u = Unsqueeze(idx, i2)
{repeats}
  t = Tile(u, reps)
  g = GatherElements<axis = 1>(h, t)
  a = Relu(g)
  y = MatMul(a, W2)
}}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6), "i2": _i64(2), "i3": _i64(3), "one": _i64(1),
             "k3": _i64(3), "c_reps": _i64(1, 1, 12)}
    return _build(text, inits)


def gather_tiled_index_constant(seed: int = 0) -> onnx.ModelProto:
    return gather_tiled_index(seed, constant_repeats=True)


# GatherElements picks one relative position per (query, key) with indices [1,S,S] expanded to
# [Shape(q_m)[0], S, S] (the merged dimension read at run time).
def batch_merged_tile_gather(seed: int = 0, *, count_from_input: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    # the repeat count: the batch read from x, or (3B) / 3 read from the merged q
    count = "Gather<axis = 0>(sh, i0)" if count_from_input else "Div(qb, n_heads)"
    text = f"""
bt (float[B, S, 8] x, float[6, 8] rel, float[1, S, S] u) => (float[B, S, 6] y) {{
{_MERGED_QKV}
  pk = MatMul(rel, Wr)
  pk_h = Reshape(pk, rel_shape)
  pk_t = Transpose<perm = [1, 0, 2]>(pk_h)
  qsh = Shape(q_m)
  qb = Gather<axis = 0>(qsh, i0)
  reps = {count}
  reps1 = Unsqueeze(reps, ax0)
  tile_reps = Concat<axis = 0>(reps1, one, one)
  pk_m = Tile(pk_t, tile_reps)
  pk_mt = Transpose<perm = [0, 2, 1]>(pk_m)
  c2p = MatMul(q_m, pk_mt)
  u_s = Sigmoid(u)
  u_m = Mul(u_s, span)
  idx_f = Floor(u_m)
  idx0 = Cast<to = 7>(idx_f)
  s = Gather<axis = 0>(sh, i1)
  s1 = Unsqueeze(s, ax0)
  qb1 = Unsqueeze(qb, ax0)
  idx_shape = Concat<axis = 0>(qb1, s1, s1)
  idx = Expand(idx0, idx_shape)
  rel_scores = GatherElements<axis = -1>(c2p, idx)
  scores = Add(s0, rel_scores)
{_MERGED_OUT}}}
"""
    inits = {**_merged_inits(rng), "i1": _SCALAR1, "one": _i64(1), "Wr": _mat(rng, 8, 12),
             "rel_shape": _i64(6, 3, 4), "span": _f32(5.99)}
    return _build(text, inits)


# torch.nn.functional.multi_head_attention_forward: x[S,B,8] -> q/k/v [S,B,12] -> Reshape([S, B*3, 4]) (the
# 12 channels split into 3 heads folded into the batch in one Reshape) -> Transpose to [3B, S, 4] -> attention
# -> Transpose back to [S, 3B, 4] -> Reshape([S, B, 12]).
# the same, with the Tile's repeat count read from the input's batch dimension (no divisor to patch)
def batch_merged_tile_batch_read(seed: int = 0) -> onnx.ModelProto:
    return batch_merged_tile_gather(seed, count_from_input=True)


def batch_merged_seq_first(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    heads = "".join(f"""
  {n} = MatMul(x, W{n})
  {n}_m = Reshape({n}, fold_shape)
  {n}_t = Transpose<perm = [1, 0, 2]>({n}_m)
""" for n in "qkv")
    text = f"""
sf (float[S, B, 8] x) => (float[S, B, 6] y) {{
  sh = Shape(x)
  s = Gather<axis = 0>(sh, i0)
  b = Gather<axis = 0>(sh, i1)
  s1 = Unsqueeze(s, ax0)
  bh = Mul(b, n_heads)
  bh1 = Unsqueeze(bh, ax0)
  b1 = Unsqueeze(b, ax0)
  fold_shape = Concat<axis = 0>(s1, bh1, head_dim)
  unfold_shape = Concat<axis = 0>(s1, b1, width)
{heads}
  k_tt = Transpose<perm = [0, 2, 1]>(k_t)
  s0 = MatMul(q_t, k_tt)
  probs = Softmax<axis = -1>(s0)
  ctx = MatMul(probs, v_t)
  ctx_t = Transpose<perm = [1, 0, 2]>(ctx)
  c = Reshape(ctx_t, unfold_shape)
  y = MatMul(c, Wo)
}}
"""
    inits = {"i0": _SCALAR0, "i1": _SCALAR1, "ax0": _i64(0), "n_heads": np.array(3, dtype=np.int64),
             "head_dim": _i64(4), "width": _i64(12), "Wq": _mat(rng, 8, 12), "Wk": _mat(rng, 8, 12),
             "Wv": _mat(rng, 8, 12), "Wo": _mat(rng, 12, 6)}
    return _build(text, inits)


# ConvBERT-style: heads folded inside batch*seq. v[B,S,12] -> Reshape([-1, 4, 1]) = [3*B*S, 4, 1] (3 heads of
# 4), a per-head weight k[B,S,3] -> Reshape([-1, 1, 1]) = [3*B*S, 1, 1], their batched product, then
# Reshape([-1, 12]) = [B*S, 12] and back to [B, S, 12]. The period symbol is the product B*S.
def batch_seq_merged_heads(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
bs (float[B, S, 8] x) => (float[B, S, 6] y) {
  sh = Shape(x)
  b = Gather<axis = 0>(sh, i0)
  s = Gather<axis = 0>(sh, i1)
  b1 = Unsqueeze(b, ax0)
  s1 = Unsqueeze(s, ax0)
  out_shape = Concat<axis = 0>(b1, s1, width)
  v = MatMul(x, Wv)
  v_m = Reshape(v, fold_v)
  k0 = MatMul(x, Wk)
  k = Sigmoid(k0)
  k_m = Reshape(k, fold_k)
  p = MatMul(v_m, k_m)
  p2 = Reshape(p, flat)
  p3 = Reshape(p2, out_shape)
  y = MatMul(p3, Wo)
}
"""
    inits = {"i0": _SCALAR0, "i1": _SCALAR1, "ax0": _i64(0), "width": _i64(12), "fold_v": _i64(-1, 4, 1),
             "fold_k": _i64(-1, 1, 1), "flat": _i64(-1, 12), "Wv": _mat(rng, 8, 12), "Wk": _mat(rng, 8, 3),
             "Wo": _mat(rng, 12, 6)}
    return _build(text, inits)


# Two groups' heads side by side: h1, h2 [B,S,2,4] (separate projections) -> Concat(axis=2) -> [B,S,4,4]
# -> Reshape([0, 0, 16]). The 16 counts both groups' positions (disjoint halves): it shrinks by the sum of
# their removals, so both groups stay prunable.
def concat_groups_one_reshape(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
cg (float[B, S, 8] x) => (float[B, S, 6] y) {
  v1 = MatMul(x, W1)
  h1 = Reshape(v1, hd_shape)
  a1 = Softmax<axis = -1>(h1)
  v2 = MatMul(x, W2)
  h2 = Reshape(v2, hd_shape2)
  a2 = Softmax<axis = -1>(h2)
  c = Concat<axis = 2>(a1, a2)
  m = Reshape(c, mg_shape)
  y = MatMul(m, Wo)
}
"""
    inits = {"hd_shape": _i64(0, 0, 2, 4), "hd_shape2": _i64(0, 0, 2, 4), "mg_shape": _i64(0, 0, 16),
             "W1": _mat(rng, 8, 8), "W2": _mat(rng, 8, 8), "Wo": _mat(rng, 16, 6)}
    return _build(text, inits)


# Heads folded *outside* the batch ([B,3,S,4] -> Transpose -> [3,B,S,4] -> Reshape([3*B, S, 4])): the merged
# axis holds each head's rows contiguously, not one period per batch item, and its dimension prints as 3*B
# all the same. Refused.
def batch_merged_heads_outer(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = f"""
bo (float[B, S, 8] x) => (float[B, S, 6] y) {{
{_MERGE_SHAPE}
  v = MatMul(x, Wv)
  v_h = Reshape(v, hd_shape)
  v_t = Transpose<perm = [2, 0, 1, 3]>(v_h)
  v_m = Reshape(v_t, merge_shape)
  sm = Softmax<axis = -1>(v_m)
  back = Reshape(sm, outer_shape)
  back_t = Transpose<perm = [1, 2, 0, 3]>(back)
  c = Reshape(back_t, mg_shape)
  y = MatMul(c, Wo)
}}
"""
    inits = {"i0": _SCALAR0, "ax0": _i64(0), "n_heads": np.array(3, dtype=np.int64), "minus1": _i64(-1),
             "head_dim": _i64(4), "hd_shape": _i64(0, 0, 3, 4), "outer_shape": _i64(3, -1, 5, 4),
             "mg_shape": _i64(0, 0, 12), "Wv": _mat(rng, 8, 12), "Wo": _mat(rng, 12, 6)}
    return _build(text, inits)


def _bias_layer(i: int, src: str, out: str) -> str:
    return f"""
  q{i} = MatMul({src}, Wq{i})
  k{i} = MatMul({src}, Wk{i})
  v{i} = MatMul({src}, Wv{i})
  q{i}_h = Reshape(q{i}, hd_shape)
  k{i}_h = Reshape(k{i}, hd_shape)
  v{i}_h = Reshape(v{i}, hd_shape)
  q{i}_t = Transpose<perm = [0, 2, 1, 3]>(q{i}_h)
  k{i}_t = Transpose<perm = [0, 2, 3, 1]>(k{i}_h)
  v{i}_t = Transpose<perm = [0, 2, 1, 3]>(v{i}_h)
  s{i} = MatMul(q{i}_t, k{i}_t)
  b{i} = Add(s{i}, bias)
  p{i} = Softmax<axis = -1>(b{i})
  c{i} = MatMul(p{i}, v{i}_t)
  c{i}_t = Transpose<perm = [0, 2, 1, 3]>(c{i})
  m{i} = Reshape(c{i}_t, mg_shape)
  o{i} = MatMul(m{i}, Wo{i})
  {out} = Add({src}, o{i})
"""


# Two attention layers (3 heads x 4) that add the same computed bias, slopes[3,1,1] * pos[B,1,1,S] (BLOOM's
# ALiBi, built once for all layers). Without a private copy per layer, both layers' heads are one group.
def shared_bias_layers(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = f"""
sb (float[B, S, 12] x, float[B, 1, 1, S] pos) => (float[B, S, 12] y) {{
  bias = Mul(slopes, pos)
{_bias_layer(1, "x", "h")}{_bias_layer(2, "h", "y")}}}
"""
    inits = {"slopes": _vec(rng, 3, 1, 1, scale=1.0), "hd_shape": _i64(0, 0, 3, 4),
             "mg_shape": _i64(0, 0, 12)}
    for i in (1, 2):
        inits.update({f"W{n}{i}": _mat(rng, 12, 12) for n in "qkvo"})
    return _build(text, inits)


# --------------------------------------------------------------------------------------------
# com.microsoft contrib ops (all verified to run on the onnxruntime 1.31 CPU EP)
# --------------------------------------------------------------------------------------------


# x[B,S,10] -> com.microsoft.Attention(Wqkv[10,36], bqkv[36], num_heads=3) -> [B,S,12]
#   -> MatMul(Wo[12,6]) -> y          (Wqkv columns: Q[0:12] | K[12:24] | V[24:36], head h = 4h:4h+4)
def ms_attention(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
attn (float[B, S, 10] x) => (float[B, S, 6] y) {
  a = com.microsoft.Attention<num_heads = 3>(x, Wqkv, bqkv)
  y = MatMul(a, Wo)
}
"""
    inits = {"Wqkv": _mat(rng, 10, 36), "bqkv": _vec(rng, 36), "Wo": _mat(rng, 12, 6)}
    return _build(text, inits, domains={MS: 1})


# x[B,S,10] -> MatMul(Wq[10,12]), MatMul(Wk[10,12]), MatMul(Wv[10,12])
#   -> com.microsoft.MultiHeadAttention(q, k, v, bias[36] = bq|bk|bv, num_heads=3) -> [B,S,12]
#   -> MatMul(Wo[12,6]) -> y
def ms_multihead_attention(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
mha (float[B, S, 10] x) => (float[B, S, 6] y) {
  q = MatMul(x, Wq)
  k = MatMul(x, Wk)
  v = MatMul(x, Wv)
  a = com.microsoft.MultiHeadAttention<num_heads = 3>(q, k, v, bias)
  y = MatMul(a, Wo)
}
"""
    inits = {
        "Wq": _mat(rng, 10, 12),
        "Wk": _mat(rng, 10, 12),
        "Wv": _mat(rng, 10, 12),
        "bias": _vec(rng, 36),
        "Wo": _mat(rng, 12, 6),
    }
    return _build(text, inits, domains={MS: 1})


# GQA contrib op; the CPU kernel requires head_size % 8 == 0, so head_dim is 8 here.
# x[B,S,10] -> MatMul(Wq[10,32]) (4 heads x 8), MatMul(Wk[10,16]), MatMul(Wv[10,16]) (2 KV heads x 8)
#   seqlens_k[B] int32 = S-1, total_sequence_length int32 scalar = S   (built from Shape(x))
#   -> com.microsoft.GroupQueryAttention(q, k, v, "", "", seqlens_k, total_seq,
#                                        num_heads=4, kv_num_heads=2)   (causal by default)
#   -> [B,S,32] -> MatMul(Wo[32,6]) -> y
def ms_group_query_attention(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gqa (float[B, S, 10] x) => (float[B, S, 6] y) {
  q = MatMul(x, Wq)
  k = MatMul(x, Wk)
  v = MatMul(x, Wv)
  sh = Shape(x)
  b64 = Gather<axis = 0>(sh, i0)
  s64 = Gather<axis = 0>(sh, i1)
  b1 = Unsqueeze(b64, ax0)
  total = Cast<to = 6>(s64)
  last = Sub(total, one32)
  seqlens = Expand(last, b1)
  a = com.microsoft.GroupQueryAttention<num_heads = 4, kv_num_heads = 2>(q, k, v, "", "", seqlens, total)
  y = MatMul(a, Wo)
}
"""
    inits = {
        "Wq": _mat(rng, 10, 32),
        "Wk": _mat(rng, 10, 16),
        "Wv": _mat(rng, 10, 16),
        "Wo": _mat(rng, 32, 6),
        "i0": _SCALAR0,
        "i1": _SCALAR1,
        "ax0": _i64(0),
        "one32": np.array(1, dtype=np.int32),
    }
    return _build(text, inits, domains={MS: 1})


# x[B,S,10] -> MatMul(Wq[10,12]) + bq -> com.microsoft.RotaryEmbedding(., position_ids, cos, sin) = q
# x[B,S,10] -> MatMul(Wk[10,12]) + bk -> com.microsoft.RotaryEmbedding(., position_ids, cos, sin) = k
# x[B,S,10] -> MatMul(Wv[10,12]) + bv = v
#   3-D input [B,S,12], no num_heads attribute: head_size = 2 * cos.shape[1] = 4, so 3 heads;
#   cos/sin caches [16, 2]; position_ids int64[B,S] graph input in [0, 16); rotate-half layout.
#   -> attention as in `attention_block` -> MatMul(Wo[12,6]) -> y
def ms_rotary_embedding(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = (
        """
rope (float[B, S, 10] x, int64[B, S] position_ids) => (float[B, S, 6] y) {
  q0 = MatMul(x, Wq)
  q1 = Add(q0, bq)
  q = com.microsoft.RotaryEmbedding(q1, position_ids, cos_cache, sin_cache)
  k0 = MatMul(x, Wk)
  k1 = Add(k0, bk)
  k = com.microsoft.RotaryEmbedding(k1, position_ids, cos_cache, sin_cache)
  v0 = MatMul(x, Wv)
  v = Add(v0, bv)
"""
        + _sdpa("q", "k", "v", "ctx")
        + """
  y = MatMul(ctx, Wo)
}
"""
    )
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, 4, 2) / 4))
    angles = np.outer(np.arange(16), inv_freq)
    inits = {
        "Wq": _mat(rng, 10, 12),
        "bq": _vec(rng, 12),
        "Wk": _mat(rng, 10, 12),
        "bk": _vec(rng, 12),
        "Wv": _mat(rng, 10, 12),
        "bv": _vec(rng, 12),
        "Wo": _mat(rng, 12, 6),
        "cos_cache": np.cos(angles).astype(np.float32),
        "sin_cache": np.sin(angles).astype(np.float32),
        **_sdpa_inits(),
    }
    return _build(text, inits, domains={MS: 1})


# residual stream as in `layernorm`, fused:
# x[B,S,8] -> MatMul(Win[8,12]) = h -> MatMul(W1[12,16]) -> Relu -> MatMul(W2[16,12]) = f
#   com.microsoft.SkipLayerNormalization(input=f, skip=h, gamma[12], beta[12], bias[12], eps=1e-5)
#   -> MatMul(Wout[12,6]) -> y
def ms_skip_layernorm(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
sln (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, Win)
  f0 = MatMul(h, W1)
  f1 = Relu(f0)
  f = MatMul(f1, W2)
  n = com.microsoft.SkipLayerNormalization<epsilon = 1e-5>(f, h, g, b, bias)
  y = MatMul(n, Wout)
}
"""
    extra = {"g": _pos(rng, 12), "b": _vec(rng, 12), "bias": _vec(rng, 12)}
    return _build(text, {**_residual_inits(rng), **extra}, domains={MS: 1})


# as `ms_skip_layernorm` with
#   com.microsoft.SkipSimplifiedLayerNormalization(input=f, skip=h, gamma[12], bias[12], eps=1e-6)
def ms_skip_simplified_layernorm(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
ssln (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, Win)
  f0 = MatMul(h, W1)
  f1 = Relu(f0)
  f = MatMul(f1, W2)
  n = com.microsoft.SkipSimplifiedLayerNormalization<epsilon = 1e-6>(f, h, g, bias)
  y = MatMul(n, Wout)
}
"""
    extra = {"g": _pos(rng, 12), "bias": _vec(rng, 12)}
    return _build(text, {**_residual_inits(rng), **extra}, domains={MS: 1})


# input_ids int32[B,S] in [0,20), segment_ids int32[B,S] in [0,3)
#   -> com.microsoft.EmbedLayerNormalization(ids, seg, word[20,12], pos[16,12], seg_emb[3,12],
#                                            gamma[12], beta[12], eps=1e-5) -> [B,S,12]
#   (second output mask_index is produced but unused; the kernel needs it declared)
#   -> MatMul(W[12,6]) -> y                    (roots: the three tables' axis -1, gamma, beta)
def ms_embed_layernorm(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
eln (int32[B, S] input_ids, int32[B, S] segment_ids) => (float[B, S, 6] y) {
  e, mask_index = com.microsoft.EmbedLayerNormalization<epsilon = 1e-5>(
      input_ids, segment_ids, word, pos, seg, g, b)
  y = MatMul(e, W)
}
"""
    inits = {
        "word": _vec(rng, 20, 12, scale=1.0),
        "pos": _vec(rng, 16, 12, scale=0.5),
        "seg": _vec(rng, 3, 12, scale=0.5),
        "g": _pos(rng, 12),
        "b": _vec(rng, 12),
        "W": _mat(rng, 12, 6),
    }
    return _build(text, inits, domains={MS: 1})


# x[B,S,8] -> MatMul(W1[8,12]) -> com.microsoft.BiasGelu(., b1[12]) -> MatMul(W2[12,6]) -> y
def ms_bias_gelu(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
bg (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, W1)
  a = com.microsoft.BiasGelu(h, b1)
  y = MatMul(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6)}
    return _build(text, inits, domains={MS: 1})


# x[B,S,8] -> MatMul(W1[8,12]) -> com.microsoft.FastGelu(., bias=b1[12]) -> MatMul(W2[12,6]) -> y
def ms_fast_gelu(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
fg (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, W1)
  a = com.microsoft.FastGelu(h, b1)
  y = MatMul(a, W2)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "b1": _vec(rng, 12), "W2": _mat(rng, 12, 6)}
    return _build(text, inits, domains={MS: 1})


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> com.microsoft.Gelu -> MatMul(W2) -> y
def ms_gelu(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = com.microsoft.Gelu(h)\n", {}, np.random.default_rng(seed), domains={MS: 1})


# --------------------------------------------------------------------------------------------
# graphs whose group must be refused
# --------------------------------------------------------------------------------------------

# custom.domain::Mystery is a model-local function (so onnxruntime can run the model), but it is
# not a known op: a pruner that does not inline functions must treat it as opaque. Its body is
# channel-mixing (X * Softmax(X, axis=-1)), so even an inlining pruner must refuse the group.
_MYSTERY = """
<domain: "custom.domain", opset_import: ["" : 18]>
Mystery (X) => (Y) {
  s = Softmax<axis = -1>(X)
  Y = Mul(X, s)
}
"""


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> custom.domain::Mystery -> MatMul(W2) -> y
def unknown_custom_op(seed: int = 0) -> onnx.ModelProto:
    return _ffn(
        "  a = custom.domain.Mystery(h)\n",
        {},
        np.random.default_rng(seed),
        domains={"custom.domain": 1},
        functions_text=_MYSTERY,
    )


# x[B,S,8] -> MatMul(W1) -> Add(b1) -> Softmax(axis=-1, over the channels) -> MatMul(W2) -> y
def softmax_channel_axis(seed: int = 0) -> onnx.ModelProto:
    return _ffn("  a = Softmax<axis = -1>(h)\n", {}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1) -> Add(b1) = h -> Sub(h, ReduceMean(h, axes=[-1], keepdims=1)) -> Relu
#   -> MatMul(W2) -> y                        (centering over the channel axis mixes channels)
def reduce_mean_channel_axis(seed: int = 0) -> onnx.ModelProto:
    body = """
  mu = ReduceMean<keepdims = 1>(h, axm1)
  c = Sub(h, mu)
  a = Relu(c)
"""
    return _ffn(body, {"axm1": _i64(-1)}, np.random.default_rng(seed))


# x[B,S,8] -> MatMul(W1[8,12]) -> Relu = a ---> graph output a[B,S,12]
#                                         \--> MatMul(W2[12,6]) -> y     (output shape is fixed)
def graph_output_channels(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
gout (float[B, S, 8] x) => (float[B, S, 6] y, float[B, S, 12] a) {
  h = MatMul(x, W1)
  a = Relu(h)
  y = MatMul(a, W2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6)})


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

_REGISTRY: list[tuple[str, Callable[[], onnx.ModelProto], str]] = [
    ("matmul", matmul, "ffn"),
    ("gemm_transb0", gemm_transb0, "ffn"),
    ("gemm_transb1", gemm_transb1, "ffn"),
    ("conv", conv, "conv"),
    ("conv_grouped", conv_grouped, "conv"),
    ("conv_depthwise", conv_depthwise, "conv"),
    ("conv_depthwise_multiplier", conv_depthwise_multiplier, "conv"),
    ("conv_transpose", conv_transpose, "conv"),
    ("group_norm", group_norm, "conv"),
    ("group_norm_one_group", group_norm_one_group, "conv"),
    ("batchnorm", batchnorm, "conv"),
    ("flatten_conv_gemm", flatten_conv_gemm, "conv"),
    ("global_avg_pool", global_avg_pool, "conv"),
    ("transpose_nchw_nhwc", transpose_nchw_nhwc, "conv"),
    ("add_vector", add_vector, "ffn"),
    ("sub_vector_lhs", sub_vector_lhs, "ffn"),
    ("mul_vector", mul_vector, "ffn"),
    ("div_vector", div_vector, "ffn"),
    ("elementwise_scalar", elementwise_scalar, "ffn"),
    ("mul_nonchannel_input", mul_nonchannel_input, "ffn"),
    ("add_two_branches", add_two_branches, "ffn"),
    ("relu", relu, "ffn"),
    ("gelu_opset20", gelu_opset20, "ffn"),
    ("gelu_erf", gelu_erf, "ffn"),
    ("tanh", tanh, "ffn"),
    ("sigmoid", sigmoid, "ffn"),
    ("silu", silu, "ffn"),
    ("swiglu", swiglu, "ffn"),
    ("softplus", softplus, "ffn"),
    ("clip", clip, "ffn"),
    ("leaky_relu", leaky_relu, "ffn"),
    ("hard_sigmoid", hard_sigmoid, "ffn"),
    ("hard_swish", hard_swish, "ffn"),
    ("where_channel_cond", where_channel_cond, "ffn"),
    ("where_mask_input", where_mask_input, "ffn"),
    ("cast", cast, "ffn"),
    ("identity", identity, "ffn"),
    ("dropout", dropout, "ffn"),
    ("concat_channels", concat_channels, "ffn"),
    ("concat_seq_axis", concat_seq_axis, "ffn"),
    ("split_uneven", split_uneven, "ffn"),
    ("slice_seq", slice_seq, "ffn"),
    ("chunk_computed_glu", chunk_computed_glu, "ffn"),
    ("chunk_computed_concat", chunk_computed_concat, "ffn"),
    ("chunk_computed_three", chunk_computed_three, "ffn"),
    ("chunk_computed_offset", chunk_computed_offset, "ffn"),
    ("chunk_computed_unpaired", chunk_computed_unpaired, "ffn"),
    ("gather_embedding", gather_embedding, "ffn"),
    ("gather_token", gather_token, "ffn"),
    ("reduce_mean_seq", reduce_mean_seq, "ffn"),
    ("softmax_seq", softmax_seq, "ffn"),
    ("squeeze_unsqueeze", squeeze_unsqueeze, "ffn"),
    ("expand", expand, "ffn"),
    ("gather_tiled_index", gather_tiled_index, "ffn"),
    ("gather_tiled_index_constant", gather_tiled_index_constant, "ffn"),
    ("tile", tile, "ffn"),
    ("tile_channel_axis", tile_channel_axis, "ffn"),
    ("gather_nd", gather_nd, "ffn"),
    ("gather_nd_channel_axis", gather_nd_channel_axis, "ffn"),
    ("resize_scales", resize_scales, "conv"),
    ("resize_sizes_axes", resize_sizes_axes, "conv"),
    ("resize_channel_axis", resize_channel_axis, "conv"),
    ("pad_computed_spatial", pad_computed_spatial, "conv"),
    ("pad_window_partition", pad_window_partition, "ffn"),
    ("reshape_heads_tail_product", reshape_heads_tail_product, "heads"),
    ("shared_computed_reshape_target", shared_computed_reshape_target, "heads"),
    ("einsum_projection", einsum_projection, "ffn"),
    ("einsum_attention", einsum_attention, "heads"),
    ("einsum_activations_summed", einsum_activations_summed, "ffn"),
    ("pad_torch_functional", pad_torch_functional, "conv"),
    ("pad_computed_channel", pad_computed_channel, "conv"),
    ("layernorm", layernorm, "hidden"),
    ("rmsnorm_reciprocal", rmsnorm_reciprocal, "hidden"),
    ("rmsnorm_div", rmsnorm_div, "hidden"),
    ("tied_lm_head", tied_lm_head, "hidden"),
    ("reshape_heads_const", reshape_heads_const, "heads"),
    ("reshape_heads_dynamic", reshape_heads_dynamic, "heads"),
    ("reshape_heads_read_embed", reshape_heads_read_embed, "heads"),
    ("flatten_symbolic_batch", flatten_symbolic_batch, "ffn"),
    ("reshape_merge_symbolic_batch", reshape_merge_symbolic_batch, "ffn"),
    ("reshape_traced_token_count", reshape_traced_token_count, "ffn"),
    ("reshape_traced_token_count_merged", reshape_traced_token_count_merged, "ffn"),
    ("reshape_heads_read_embed_shared", reshape_heads_read_embed_shared, "heads"),
    ("transpose_heads", transpose_heads, "heads"),
    ("rotary_repeat_interleave", rotary_repeat_interleave, "heads"),
    ("rotary_table_shared", rotary_table_shared, "heads"),
    ("attention_block", attention_block, "heads"),
    ("split_qkv_attention", split_qkv_attention, "heads"),
    ("fused_qkv_unbind", fused_qkv_unbind, "heads"),
    ("fused_qkv_gather", fused_qkv_gather, "heads"),
    ("sdpa_key_transpose_sliced_shape", sdpa_key_transpose_sliced_shape, "heads"),
    ("if_on_equal_lengths", if_on_equal_lengths, "heads"),
    ("if_on_undecided_lengths", if_on_undecided_lengths, "heads"),
    ("gqa_block", gqa_block, "heads"),
    ("mqa_block", mqa_block, "heads"),
    ("constant_of_shape_bias", constant_of_shape_bias, "heads"),
    ("fused_qkv_mqa_slices", fused_qkv_mqa_slices, "heads"),
    ("fused_qkv_mqa_split", fused_qkv_mqa_split, "heads"),
    ("slice_negative_bounds", slice_negative_bounds, "ffn"),
    ("strided_slice_glu", strided_slice_glu, "ffn"),
    ("strided_slice_unpaired", strided_slice_unpaired, "ffn"),
    ("strided_slice_stop", strided_slice_stop, "ffn"),
    ("strided_slice_tail", strided_slice_tail, "ffn"),
    ("gather_channel_index", gather_channel_index, "ffn"),
    ("batch_merged_heads", batch_merged_heads, "heads"),
    ("batch_merged_pad_slice", batch_merged_pad_slice, "heads"),
    ("batch_merged_pad_merged_axis", batch_merged_pad_merged_axis, "heads"),
    ("batch_merged_tile_gather", batch_merged_tile_gather, "heads"),
    ("batch_merged_tile_batch_read", batch_merged_tile_batch_read, "heads"),
    ("batch_merged_seq_first", batch_merged_seq_first, "heads"),
    ("batch_seq_merged_heads", batch_seq_merged_heads, "heads"),
    ("concat_groups_one_reshape", concat_groups_one_reshape, "heads"),
    ("batch_merged_heads_outer", batch_merged_heads_outer, "heads"),
    ("ms_attention", ms_attention, "heads"),
    ("ms_multihead_attention", ms_multihead_attention, "heads"),
    ("ms_group_query_attention", ms_group_query_attention, "heads"),
    ("ms_rotary_embedding", ms_rotary_embedding, "heads"),
    ("ms_skip_layernorm", ms_skip_layernorm, "hidden"),
    ("ms_skip_simplified_layernorm", ms_skip_simplified_layernorm, "hidden"),
    ("ms_embed_layernorm", ms_embed_layernorm, "hidden"),
    ("ms_bias_gelu", ms_bias_gelu, "ffn"),
    ("ms_fast_gelu", ms_fast_gelu, "ffn"),
    ("ms_gelu", ms_gelu, "ffn"),
    ("unknown_custom_op", unknown_custom_op, "ffn"),
    ("softmax_channel_axis", softmax_channel_axis, "ffn"),
    ("reduce_mean_channel_axis", reduce_mean_channel_axis, "ffn"),
    ("graph_output_channels", graph_output_channels, "ffn"),
]

OP_GRAPHS: dict[str, Callable[[], onnx.ModelProto]] = {key: fn for key, fn, _ in _REGISTRY}
EXPECTED_KIND: dict[str, str] = {key: kind for key, _, kind in _REGISTRY}
EXPECTED_UNPRUNABLE: set[str] = {
    "batch_merged_pad_merged_axis",
    "unknown_custom_op",
    "group_norm_one_group",
    "einsum_activations_summed",
    "softmax_channel_axis",
    "reduce_mean_channel_axis",
    "graph_output_channels",
    "resize_channel_axis",
    "tile_channel_axis",
    "pad_computed_channel",
    "chunk_computed_offset",
    "chunk_computed_unpaired",
    "batch_merged_heads_outer",
    "if_on_undecided_lengths",
    "reshape_traced_token_count_merged",
    "gather_nd_channel_axis",
    "strided_slice_stop",
}
# Part of the refusal reason of the group that exercises the op, where it matters which check refused.
EXPECTED_REASON: dict[str, str] = {
    "batch_merged_pad_merged_axis": "Pad with computed pads that may pad the channel axis",
    "einsum_activations_summed": "Einsum sums the channels of activations only",
    "chunk_computed_offset": "does not follow pruning",
    "resize_channel_axis": "resamples the channel axis",
    "tile_channel_axis": "Tile repeats the channel axis",
    "pad_computed_channel": "may pad the channel axis",
    "chunk_computed_unpaired": "do not all own the same share",
    "batch_merged_heads_outer": "symbolic dimension next to the channel axis",
    "if_on_undecided_lengths": "no association rule for op ai.onnx::If",
    "reshape_traced_token_count_merged": "cannot align the channel axis",
    "gather_nd_channel_axis": "GatherND indexes the channel axis",
    "strided_slice_stop": "not one offset of every block",
}


# --------------------------------------------------------------------------------------------
# inputs / shapes
# --------------------------------------------------------------------------------------------


def _set_output_shape(model: onnx.ModelProto, index: int, dims: list[int | str]) -> None:
    shape = model.graph.output[index].type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _resolve_dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.dim_param in DIM_VALUES:
            dims.append(DIM_VALUES[d.dim_param])
        else:
            raise ValueError(f"{value_info.name}: unknown symbolic dim {d.dim_param!r}")
    return tuple(dims)


def output_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Declared graph output shapes with B=2, S=5 substituted."""
    return {o.name: _resolve_dims(o) for o in model.graph.output}


def _initializer_shape(model: onnx.ModelProto, name: str) -> tuple[int, ...]:
    for init in model.graph.initializer:
        if init.name == name:
            return tuple(init.dims)
    raise ValueError(f"{name!r} is not an initializer")


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _index_bound(model: onnx.ModelProto, name: str) -> int:
    """Exclusive upper bound for an integer graph input, from the ops that consume it."""
    bounds = []
    for node in model.graph.node:
        for pos, inp in enumerate(node.input):
            if inp != name:
                continue
            if node.domain in ("", "ai.onnx") and node.op_type == "Gather" and pos == 1:
                data_shape = _initializer_shape(model, node.input[0])
                bounds.append(data_shape[_attr(node, "axis", 0)])
            elif node.domain == MS and node.op_type == "EmbedLayerNormalization" and pos in (0, 1, 8):
                table = {0: 2, 1: 4, 8: 3}[pos]
                bounds.append(_initializer_shape(model, node.input[table])[0])
            elif node.domain == MS and node.op_type == "RotaryEmbedding" and pos == 1:
                bounds.append(_initializer_shape(model, node.input[2])[0])
            else:
                raise ValueError(f"no index bound rule for {name!r} used by {node.op_type} input {pos}")
    if not bounds:
        raise ValueError(f"integer input {name!r} has no consumer")
    return min(bounds)


def make_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for ``model``: float ~ N(0,1), bool ~ Bernoulli(0.5), int indices in range."""
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        shape = _resolve_dims(vi)
        elem = vi.type.tensor_type.elem_type
        if elem == onnx.TensorProto.FLOAT:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
        elif elem == onnx.TensorProto.BOOL:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            dtype = np.int64 if elem == onnx.TensorProto.INT64 else np.int32
            feeds[vi.name] = rng.integers(0, _index_bound(model, vi.name), shape).astype(dtype)
        else:
            raise ValueError(f"unsupported input type {elem} for {vi.name!r}")
    return feeds
