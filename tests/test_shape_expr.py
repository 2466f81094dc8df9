"""The shape-expression evaluator against ONNX Runtime: the same expression, every channel dimension."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimum_prune.association.shape_expr import ShapeExprError, evaluate_dim_expr

DIMS = np.arange(0, 13)

# x[1, D] -> r (int64): each body computes r from Shape(x) (the channel axis is 1, the batch axis 1 is known)
EXPRESSIONS = {
    "chunk2": """
  s = Shape(x)
  d = Gather<axis = 0>(s, im1)
  d1 = Add(d, one)
  h = Div(d1, two)
  r = Mul(h, one)
""",
    "div_truncates_negative": """
  s = Shape<start = 1>(x)
  n = Sub(three, s)
  r = Div(n, two)
""",
    "div_by_zero_is_unknown": """
  s = Shape<start = 1>(x)
  den = Sub(s, five)
  r = Div(twelve, den)
""",
    "mod_sign_of_divisor": """
  s = Shape<start = 1>(x)
  n = Sub(s, seven)
  a = Mod(n, three)
  b = Mod(n, mthree)
  c = Mod<fmod = 1>(n, mthree)
  r = Concat<axis = 0>(a, b, c)
""",
    "float_ceil_floor": """
  s = Shape<start = -1>(x)
  f = Cast<to = 1>(s)
  h = Mul(f, halff)
  c = Ceil(h)
  fl = Floor(h)
  ci = Cast<to = 7>(c)
  fi = Cast<to = 7>(fl)
  r = Concat<axis = 0>(ci, fi)
""",
    "shape_plumbing": """
  s = Shape(x)
  t = Slice(s, im1, big, zero)
  u = Squeeze(t, zero)
  v = Unsqueeze(u, zero)
  w = Concat<axis = 0>(v, s)
  m = Reshape(w, shp)
  g = Gather<axis = 1>(m, gidx)
  n = Neg(g)
  ab = Abs(n)
  mx = Max(n, mone, ab)
  mn = Min(ab, seven)
  mxf = Reshape(mx, flat)
  mnf = Reshape(mn, flat)
  r = Concat<axis = 0>(mxf, mnf, t)
""",
}
CONSTS = {
    "im1": np.array([-1], np.int64), "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
    "two": np.array([2], np.int64), "three": np.array([3], np.int64), "mthree": np.array([-3], np.int64),
    "five": np.array([5], np.int64), "seven": np.array([7], np.int64), "twelve": np.array([12], np.int64),
    "mone": np.array([-1], np.int64), "big": np.array([2**63 - 1], np.int64),
    "halff": np.array([0.5], np.float32), "shp": np.array([1, 3], np.int64), "gidx": np.array([0], np.int64),
    "flat": np.array([-1], np.int64),
}


def _model(body: str) -> onnx.ModelProto:
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
expr (float[1, D] x) => (int64[N] r) {{
{body}
}}
"""
    model = onnx.parser.parse_model(text)
    used = {i for n in model.graph.node for i in n.input}
    for name, arr in CONSTS.items():
        if name in used:
            model.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return model


def _evaluate(model: onnx.ModelProto, index: int, dims: np.ndarray):
    m = ir.serde.deserialize_model(model)
    x = m.graph.inputs[0]
    r = m.graph.outputs[0]
    return evaluate_dim_expr(r, index, x, 1, dims, lambda v: (1, "D") if v is x else None)


@pytest.mark.parametrize("key", sorted(EXPRESSIONS))
def test_evaluator_matches_onnxruntime(key):
    model = _model(EXPRESSIONS[key])
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    n_out = None
    results = {}
    for d in DIMS:
        try:
            results[int(d)] = sess.run(None, {"x": np.zeros((1, d), np.float32)})[0]
        except Exception:  # integer division by zero: the evaluator must call it unknown
            results[int(d)] = None
        if results[int(d)] is not None:
            n_out = results[int(d)].size
    assert n_out
    for index in range(n_out):
        expr = _evaluate(model, index, DIMS)
        for k, d in enumerate(DIMS):
            ref = results[int(d)]
            if ref is None:
                assert not expr.known[k], (key, d)
                continue
            assert expr.known[k], (key, d)
            assert int(expr.values[k]) == int(ref[index]), (key, int(d), index, expr.values[k], ref)


def test_division_by_zero_marks_one_candidate():
    expr = _evaluate(_model(EXPRESSIONS["div_by_zero_is_unknown"]), 0, DIMS)
    assert list(np.nonzero(~expr.known)[0]) == [5]


def test_other_axes_are_reported_as_read():
    expr = _evaluate(_model(EXPRESSIONS["shape_plumbing"]), 0, DIMS)
    assert expr.reads == {0}
    assert _evaluate(_model(EXPRESSIONS["chunk2"]), 0, DIMS).reads == {0}
    assert _evaluate(_model(EXPRESSIONS["div_truncates_negative"]), 0, DIMS).reads == set()


@pytest.mark.parametrize("body", [
    # Shape of another tensor: its dimension is not the symbol
    "  y = Relu(x)\n  s = Shape(y)\n  r = Gather<axis = 0>(s, im1)\n",
    # an op outside the shape-arithmetic set
    "  s = Shape<start = 1>(x)\n  q = Squeeze(s, zero)\n  r = Range(zero0, q, one0)\n",
])
def test_unsupported_expressions_raise(body):
    model = _model(body)
    for name, arr in (("zero0", np.array(0, np.int64)), ("one0", np.array(1, np.int64))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    with pytest.raises(ShapeExprError):
        _evaluate(model, 0, DIMS)
