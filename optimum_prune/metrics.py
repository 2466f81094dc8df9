"""Parameter and FLOP counts of an ONNX model (weights of MatMul/Gemm/Conv and friends)."""

from __future__ import annotations

import math

import onnx_ir as ir

from optimum_prune.graph import Shape

# Inputs that take precomputed buffers rather than learned weights (rotary cos/sin caches that
# ONNX Runtime's fusions materialise for the longest position): not counted as parameters.
_BUFFER_INPUTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("com.microsoft", "RotaryEmbedding"): (2, 3),
    ("com.microsoft", "GroupQueryAttention"): (7, 8),
}


def _is_buffer(value: ir.Value) -> bool:
    uses = list(value.uses())
    return bool(uses) and all(
        idx in _BUFFER_INPUTS.get((node.domain, node.op_type), ()) for node, idx in uses)


def count_parameters(model: ir.Model) -> int:
    """Elements of the floating-point initializers, except precomputed buffers (rotary caches)."""
    total = 0
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is not None and t.dtype.is_floating_point() and not _is_buffer(value):
            total += math.prod(int(d) for d in t.shape)
    return total


def _numel(shape: Shape | None, defaults: dict[str, int]) -> int | None:
    if shape is None:
        return None
    n = 1
    for d in shape:
        if isinstance(d, int):
            n *= d
        elif d is None:
            return None
        else:
            n *= defaults.get("batch", 1) if "batch" in str(d) else defaults.get("sequence", 128)
    return n


_COUNTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def count_flops(model: ir.Model, shapes: dict[str, Shape], *, batch: int = 1, sequence: int = 128) -> int:
    """Multiply-accumulate FLOPs (2 per MAC) of MatMul/Gemm/Conv at ``batch`` x ``sequence``."""
    defaults = {"batch": batch, "sequence": sequence}
    total = 0
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _COUNTED_OPS:
            continue
        out = shapes.get(node.outputs[0].name)
        n_out = _numel(out, defaults)
        w = node.inputs[1]
        w_shape = shapes.get(w.name) if w is not None else None
        if n_out is None or w_shape is None or not all(isinstance(d, int) for d in w_shape):
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a_shape = shapes.get(node.inputs[0].name)
            if a_shape is None:
                continue
            attrs = node.attributes
            transa = node.op_type == "Gemm" and "transA" in attrs and attrs["transA"].value
            k = a_shape[0] if transa else a_shape[-1]
            if not isinstance(k, int):
                continue
            total += 2 * n_out * k
        elif node.op_type == "Conv":
            total += 2 * n_out * math.prod(w_shape[1:])
        else:
            total += 2 * _numel(shapes.get(node.inputs[0].name), defaults) * math.prod(w_shape[1:])
    return total
