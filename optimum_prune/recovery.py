"""Least-squares repair of the consumers of pruned groups, without fine-tuning.

For a consumer ``y = x @ W + b`` of a pruned group (the MatMul/Gemm whose input rows are the group's leaf
slices) that keeps the input channels ``S``, the kept rows and the bias are refitted so the pruned layer
reproduces the dense layer's output on calibration data:

    min_{W', d}  || X W - X'_S W' - 1 d ||^2 + lambda || W' - P ||^2

``X`` is the dense model's input to the layer, ``X'`` the input of the model pruned (and repaired) so far
(``X' = X`` when ``sequential`` is off), ``P`` the prior (``W_S``, or 0 for a plain ridge) and
``lambda = damp * mean(diag(X'_S^T X'_S))``. With ``Z = [X'_S, 1]`` the solution is

    [W'; d] = (Z^T Z + lambda D)^-1 (Z^T X W + lambda [P; 0])

computed from accumulated Gram products only (``X'^T X'``, ``X'^T X``, ``X^T X``, column sums), so the
activations are never held in memory. This is Kwon et al.'s mask tuning (2022) with a bias term.
``method="bias"`` keeps ``W' = W_S`` and solves only for ``d`` (FLAP's bias compensation:
``d = mean(X) W - mean(X'_S) W_S``, which is ``mean(X_R) W_R`` with dense statistics).

Sequential repair walks the consumers in graph order, in stages of consumers that do not feed one
another; each stage is fitted on a model whose earlier consumers are already repaired and whose removed
rows are zero (zeroing the rows is what physical removal computes, the exactness oracle), so later
layers learn to correct the error left upstream.

A ``Conv`` consumer (``group=1``, explicit or no padding) is the same problem on its input patches (He
et al.'s channel pruning, 2017): ``X`` holds one row per output position and one column per
(input channel, kernel offset), ``W`` is the kernel flattened to ``[C_in * k, C_out]``, and an input
channel is removed with all of its ``k`` columns.

Only the consumers' weights (kept rows) and biases change; removed rows are zeroed and then sliced
away by :func:`optimum_prune.passes.apply.apply_removals`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.calibration import (
    CalibrationData,
    StatRequest,
    _token_dims,
    _valid_mask,
    capture_activations,
)
from optimum_prune.configuration import RecoveryConfig
from optimum_prune.errors import ConfigError
from optimum_prune.graph import Shape, const_array
from optimum_prune.importance.base import leaf_inputs, values_by_name
from optimum_prune.passes.apply import removed_mask
from optimum_prune.runtime import complete_feeds, ort_session

_PATCH_ELEMENTS = 1 << 23  # patch-matrix elements built at once (32 MB of float32)


@dataclass(frozen=True)
class ConvGeometry:
    """How a ``Conv`` consumer reads its input: kernel size, strides, dilations and the explicit pads
    (``begin..., end...`` per spatial axis, as ONNX writes them)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]

    @property
    def taps(self) -> int:
        """Kernel offsets per input channel."""
        return int(np.prod(self.kernel))

    def patches(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``[N, C, *spatial]`` as rows ``[N * prod(out_spatial), C * taps]`` (channel-major columns,
        the order of the kernel ``W.reshape(C_out, -1)``)."""
        nd = len(self.kernel)
        pad = [(0, 0), (0, 0)] + [(self.pads[i], self.pads[i + nd]) for i in range(nd)]
        x = np.pad(np.asarray(x, dtype=np.float32), pad) if any(self.pads) else np.asarray(x, np.float32)
        spans = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations, strict=True)]
        windows = np.lib.stride_tricks.sliding_window_view(x, spans, axis=tuple(range(2, 2 + nd)))
        take = tuple([slice(None), slice(None)] + [slice(None, None, s) for s in self.strides]
                     + [slice(None, None, d) for d in self.dilations])
        windows = windows[take]  # [N, C, *out, *kernel]
        order = [0] + list(range(2, 2 + nd)) + [1] + list(range(2 + nd, 2 + 2 * nd))
        return np.ascontiguousarray(windows.transpose(order)).reshape(-1, x.shape[1] * self.taps)

    def sample_slices(self, shape: tuple[int, ...]) -> list[slice]:
        """Slices of the samples of an input of ``shape`` whose patch rows stay under
        :data:`_PATCH_ELEMENTS` elements (a large image's patches are built a few samples at a time)."""
        nd = len(self.kernel)
        positions = 1
        for i in range(nd):
            span = self.dilations[i] * (self.kernel[i] - 1) + 1
            padded = shape[2 + i] + self.pads[i] + self.pads[i + nd]
            positions *= max((padded - span) // self.strides[i] + 1, 1)
        per_sample = max(positions * shape[1] * self.taps, 1)
        step = max(1, _PATCH_ELEMENTS // per_sample)
        return [slice(i, i + step) for i in range(0, shape[0], step)]


@dataclass
class Consumer:
    """One layer to repair: ``node`` computes ``activation @ weight`` over ``axis`` of the weight (for a
    Conv, over its input patches: see :class:`ConvGeometry`)."""

    node: ir.Node
    weight: ir.Value
    axis: int
    activation: str
    act_axis: int
    removed: np.ndarray  # boolean mask over the weight's ``axis``
    bias: ir.Value | None = None
    residual: str | None = None  # the stream the output is added to
    norm: tuple[str, str, float] | None = None  # (normalised value, "center" | "rms", epsilon) after it
    conv: ConvGeometry | None = None

    @property
    def out_axis(self) -> int:
        """The channel axis of the output (and of the residual stream it is added to)."""
        return 1 if self.conv is not None else -1

    def rows(self, arr: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """The consumer's input as rows (positions x features) of the least-squares problem."""
        if self.conv is not None:
            return self.conv.patches(arr)
        return _rows_of(arr, self.act_axis, valid)

    def sample_slices(self, arr: np.ndarray) -> list[slice]:
        """The samples of ``arr`` to turn into rows together: all of them, or for a Conv a few at a time."""
        return self.conv.sample_slices(arr.shape) if self.conv is not None else [slice(None)]

    def weight_rows(self) -> np.ndarray:
        """The weight as rows (one per input feature) x outputs, float64."""
        arr = self.weight.const_value.numpy()
        if self.conv is not None:
            return np.asarray(arr, dtype=np.float64).reshape(arr.shape[0], -1).T
        return _as_rows(arr, self.axis)

    def weight_from_rows(self, rows: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`weight_rows`."""
        if self.conv is not None:
            return rows.T.reshape(tuple(self.weight.const_value.shape))
        return rows if self.axis == 0 else rows.T

    def feature_mask(self) -> np.ndarray:
        """The removed rows of :meth:`weight_rows`: a removed input channel takes its kernel taps."""
        return np.repeat(self.removed, self.conv.taps) if self.conv is not None else self.removed


@dataclass
class RepairStats:
    """Gram products accumulated for one consumer (``Xp``: pruned-model input, ``Xd``: dense input)."""

    count: float = 0  # rows (their summed weights when rows are weighted)
    gp: np.ndarray | None = None  # Xp^T Xp
    cross: np.ndarray | None = None  # Xp^T Xd
    gd: np.ndarray | None = None  # Xd^T Xd
    sp: np.ndarray | None = None  # sum of Xp
    sd: np.ndarray | None = None  # sum of Xd
    # residual-stream difference E = r_dense - r_pruned (sequential repair with residual=True)
    pe: np.ndarray | None = None  # Xp^T E
    de: np.ndarray | None = None  # Xd^T E
    se: np.ndarray | None = None  # sum of E
    ee: float = 0.0  # ||E||^2

    def add(self, xp: np.ndarray, xd: np.ndarray, e: np.ndarray | None = None,
            weight: np.ndarray | None = None) -> None:
        """Accumulate one batch of rows (positions x channels) of both inputs (and of ``E``), each row's
        products multiplied by ``weight`` (one value per row; 1 when None)."""
        k = xp.shape[1]
        if self.gp is None:
            self.gp, self.cross, self.gd = (np.zeros((k, k)) for _ in range(3))
            self.sp, self.sd = np.zeros(k), np.zeros(k)
        xp32, xd32 = xp.astype(np.float32, copy=False), xd.astype(np.float32, copy=False)
        w = None if weight is None else np.asarray(weight, dtype=np.float32)[:, None]
        xpw = xp32 if w is None else xp32 * w
        xdw = xd32 if w is None else xd32 * w
        self.gp += xpw.T @ xp32
        self.cross += xpw.T @ xd32
        self.gd += xdw.T @ xd32
        self.sp += xpw.sum(axis=0, dtype=np.float64)
        self.sd += xdw.sum(axis=0, dtype=np.float64)
        self.count += xp.shape[0] if w is None else float(np.sum(weight, dtype=np.float64))
        if e is not None:
            e32 = e.astype(np.float32, copy=False)
            ew = e32 if w is None else e32 * w
            if self.pe is None:
                self.pe, self.de = np.zeros((k, e.shape[1])), np.zeros((k, e.shape[1]))
                self.se = np.zeros(e.shape[1])
            self.pe += xpw.T @ e32
            self.de += xdw.T @ e32
            self.se += ew.sum(axis=0, dtype=np.float64)
            self.ee += float(np.einsum("ij,ij->", ew, e32, dtype=np.float64))

    def minus(self, other: RepairStats) -> RepairStats:
        """These statistics without ``other``'s rows (``other`` accumulated over a subset of them)."""
        if self.gp is self.cross and self.cross is self.gd and other.gp is other.cross:
            return RepairStats.dense(self.gp - other.gp, self.sp - other.sp, self.count - other.count)
        out = RepairStats(count=self.count - other.count, ee=self.ee - other.ee)
        for name in ("gp", "cross", "gd", "sp", "sd", "pe", "de", "se"):
            a, b = getattr(self, name), getattr(other, name)
            setattr(out, name, None if a is None else (a - b if b is not None else a.copy()))
        return out

    @classmethod
    def summed(cls, parts: Sequence[RepairStats]) -> RepairStats:
        """The statistics of all of ``parts``' rows together."""
        if all(p.gp is p.cross and p.cross is p.gd for p in parts):
            grams = [p.gp for p in parts if p.gp is not None]
            if not grams:
                return RepairStats()
            sums = [p.sp for p in parts if p.sp is not None]
            return RepairStats.dense(np.sum(grams, axis=0), np.sum(sums, axis=0), sum(p.count for p in parts))
        out = RepairStats(count=sum(p.count for p in parts), ee=sum(p.ee for p in parts))
        for name in ("gp", "cross", "gd", "sp", "sd", "pe", "de", "se"):
            arrays = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            setattr(out, name, np.sum(arrays, axis=0) if arrays else None)
        return out

    @classmethod
    def dense(cls, gram: np.ndarray, total: np.ndarray, count: int) -> RepairStats:
        """Statistics where the pruned-model input equals the dense one (non-sequential repair)."""
        return cls(count=count, gp=gram, cross=gram, gd=gram, sp=total, sd=total)


@dataclass
class RepairRecord:
    """What the repair did to one consumer; errors are relative squared errors of the layer output
    ``||X W - X'_S W' - d||^2 / ||X W - mean||^2`` on the calibration data, before (rows dropped, no
    refit) and after."""

    node: str
    weight: str
    axis: int
    bias: str | None
    bias_created: bool
    kept: int
    rows: int
    error_before: float
    error_after: float
    damp: float | None = None  # the cross-validated ridge strength (cv_folds), else None

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        out = {"node": self.node, "weight": self.weight, "axis": self.axis, "bias": self.bias,
               "bias_created": self.bias_created, "kept": self.kept, "rows": self.rows,
               "error_before": round(self.error_before, 6), "error_after": round(self.error_after, 6)}
        if self.damp is not None:
            out["damp"] = self.damp
        return out


@dataclass
class RepairReport:
    """Every consumer repaired, the ones skipped (with why) and the stages of the sequential fit."""

    records: list[RepairRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stages: int = 0
    calibration: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly form (for report.json)."""
        before = [r.error_before for r in self.records]
        after = [r.error_after for r in self.records]
        return {"consumers": len(self.records), "stages": self.stages, "skipped": self.skipped,
                "mean_error_before": float(np.mean(before)) if before else 0.0,
                "mean_error_after": float(np.mean(after)) if after else 0.0,
                "calibration": self.calibration, "records": [r.to_dict() for r in self.records]}


# ----------------------------------------------------------------------------------------------
# finding the consumers


def find_consumers(model: ir.Model, groups: Sequence[PruningGroup], removed: dict[int, set[int]],
                   skipped: list[str] | None = None) -> list[Consumer]:
    """The MatMul/Gemm consumers of the pruned ``groups``, in graph order, with their removed rows.

    A consumer's removed rows combine every group that removes rows of the same weight axis. Consumers
    that cannot be refitted (another op type, a weight shared by several nodes, no tracked data input)
    are left alone and named in ``skipped``.
    """
    skipped = skipped if skipped is not None else []
    values = values_by_name(model)
    found: dict[str, Consumer] = {}
    for g in groups:
        units = removed.get(g.id)
        if not units:
            continue
        for li in leaf_inputs(g, model, values):
            node, w = li.node, values.get(li.weight.name)
            label = f"{node.name} ({node.op_type}, weight {li.weight.name})"
            if node.op_type not in ("MatMul", "Gemm", "Conv") or node.domain not in ("", "ai.onnx"):
                skipped.append(f"{label}: only MatMul/Gemm/Conv consumers are repaired")
                continue
            if w is None or w.const_value is None or node.inputs[1] is not w:
                skipped.append(f"{label}: the weight is not a constant second input")
                continue
            if len(list(w.uses())) != 1 or li.activation is None:
                skipped.append(f"{label}: weight shared by several nodes, or data input not tracked")
                continue
            shape = tuple(w.const_value.shape)
            conv = None
            if node.op_type == "Conv":
                conv, why = _conv_geometry(node, shape, li.weight.axis, li.activation.axis)
                if conv is None:
                    skipped.append(f"{label}: {why}")
                    continue
            elif len(shape) != 2 or (node.op_type == "Gemm" and _attr(node, "transA")):
                skipped.append(f"{label}: only 2-D weights (and Gemm without transA) are repaired")
                continue
            mask = removed_mask(li.weight.owner, units)
            key = node.name
            if key in found:
                if found[key].axis != li.weight.axis:
                    skipped.append(f"{label}: two groups remove rows on different axes")
                    continue
                found[key].removed |= mask
                continue
            bias = _find_bias(node)
            found[key] = Consumer(node, w, li.weight.axis, li.activation.name, li.activation.axis,
                                  mask.copy(), bias, _find_residual(node, bias),
                                  None if conv is not None else _find_norm(node, bias), conv)
    order = {id(n): i for i, n in enumerate(model.graph)}
    return sorted(found.values(), key=lambda c: order[id(c.node)])


def _attr(node: ir.Node, name: str) -> int:
    a = node.attributes.get(name)
    return int(a.value) if a is not None else 0


def _ints(node: ir.Node, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    a = node.attributes.get(name)
    return tuple(int(v) for v in a.value) if a is not None else default


def _conv_geometry(node: ir.Node, shape: tuple[int, ...], weight_axis: int, act_axis: int
                   ) -> tuple[ConvGeometry | None, str]:
    """The patch geometry of a Conv consumer whose input channels are removed, or None and why not."""
    nd = len(shape) - 2
    if nd < 1 or weight_axis != 1 or act_axis != 1:
        return None, "a Conv is repaired over its input channels only"
    if _attr(node, "group") > 1:
        return None, "grouped Conv consumers are not repaired"
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.value if auto_pad is not None else "NOTSET"
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("NOTSET", "VALID"):
        return None, f"Conv auto_pad={mode} is not repaired (explicit pads are)"
    kernel = tuple(int(k) for k in shape[2:])
    pads = (0,) * (2 * nd) if mode == "VALID" else _ints(node, "pads", (0,) * (2 * nd))
    return ConvGeometry(kernel, _ints(node, "strides", (1,) * nd), _ints(node, "dilations", (1,) * nd),
                        pads), ""


def _find_bias(node: ir.Node) -> ir.Value | None:
    """The constant 1-D bias added to ``node``'s output (Gemm's C, or the one Add that uses the output)."""
    n_out = None
    w = node.inputs[1].const_value
    if w is not None:
        n_out = w.shape[0] if (node.op_type == "Gemm" and _attr(node, "transB")) or node.op_type == "Conv" \
            else w.shape[-1]
    if node.op_type == "Conv":  # the bias is the third input; an Add after a Conv broadcasts otherwise
        b = node.inputs[2] if len(node.inputs) > 2 else None
        ok = b is not None and b.const_value is not None and tuple(b.const_value.shape) == (n_out,)
        return b if ok and len(list(b.uses())) == 1 else None
    if node.op_type == "Gemm":
        c = node.inputs[2] if len(node.inputs) > 2 else None
        arr = const_array(c) if c is not None else None
        return c if arr is not None and arr.shape == (n_out,) and c.const_value is not None else None
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or uses[0][0].op_type != "Add":
        return None
    add = uses[0][0]
    other = add.inputs[1 - uses[0][1]]
    if other is None or other.const_value is None or len(list(other.uses())) != 1:
        return None
    return other if tuple(other.const_value.shape) == (n_out,) else None


def _residual_add(node: ir.Node, bias: ir.Value | None) -> tuple[ir.Node, int, ir.Value] | None:
    """``(add, index, output)``: the only reader of ``node``'s (biased) output, when it is an ``Add``,
    with the input index the output takes there."""
    out = node.outputs[0]
    if bias is not None and node.op_type not in ("Gemm", "Conv"):
        out = next(iter(out.uses()))[0].outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or uses[0][0].op_type != "Add":
        return None
    add, idx = uses[0]
    return add, idx, out


def _find_residual(node: ir.Node, bias: ir.Value | None) -> str | None:
    """The other input of the ``Add`` that sums ``node``'s (biased) output into a residual stream."""
    found = _residual_add(node, bias)
    if found is None:
        return None
    add, idx, out = found
    other = add.inputs[1 - idx]
    if other is None or const_array(other) is not None:
        return None
    if other.shape is not None and out.shape is not None and len(other.shape) != len(out.shape):
        return None
    return other.name


_NORMS = {"LayerNormalization": "center", "RMSNormalization": "rms", "SimplifiedLayerNormalization": "rms"}


def _find_norm(node: ir.Node, bias: ir.Value | None) -> tuple[str, str, float] | None:
    """``(value, kind, epsilon)`` of the norm that reads ``node``'s (biased) output after its residual
    ``Add``: the value it normalises over the last axis, ``"center"`` (LayerNormalization) or ``"rms"``."""
    found = _residual_add(node, bias)
    if found is None:
        return None
    stream = found[0].outputs[0]
    for user, idx in stream.uses():
        kind = _NORMS.get(user.op_type)
        axis = user.attributes["axis"].as_int() if "axis" in user.attributes else -1
        rank = len(stream.shape) if stream.shape is not None else None
        if kind and idx == 0 and (axis == -1 or (rank is not None and axis == rank - 1)):
            eps = user.attributes["epsilon"].as_float() if "epsilon" in user.attributes else 1e-5
            return stream.name, kind, eps
    return None


def insert_bias(model: ir.Model, node: ir.Node, name: str, arr: np.ndarray) -> ir.Value:
    """Add ``arr`` to ``node``'s output through a new ``Add`` (with a new initializer ``name``); a Conv
    without a bias takes it as its third input."""
    out = node.outputs[0]
    bias = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.FLOAT))
    bias.const_value = ir.tensor(arr.astype(np.float32), name=name)
    model.graph.register_initializer(bias)
    if node.op_type == "Conv":
        if len(node.inputs) < 3:
            node.resize_inputs(3)
        node.replace_input_with(2, bias)
        return bias
    add = ir.Node("", "Add", [out, bias], name=f"{node.name}/repair_bias_add", num_outputs=1)
    new = add.outputs[0]
    new.name = f"{out.name}_repaired"
    new.type = out.type
    new.shape = out.shape
    was_output = any(v is out for v in model.graph.outputs)
    out.replace_all_uses_with(new, replace_graph_outputs=True)
    add.replace_input_with(0, out)
    if was_output:  # keep the graph output's name
        old = out.name
        out.name = f"{old}_before_repair_bias"
        new.name = old
    model.graph.insert_after(node, add)
    return bias


# ----------------------------------------------------------------------------------------------
# solving


@dataclass
class _Terms:
    """The quadratic form of one consumer's output error ``||T - X'_S W' - 1 d||^2`` on some statistics:
    ``gss = X'_S^T X'_S``, ``sps = 1^T X'_S``, ``cross = X'_S^T T``, ``tsum = 1^T T``, ``total = ||T||^2``."""

    n: int
    gss: np.ndarray
    sps: np.ndarray
    cross: np.ndarray
    tsum: np.ndarray
    total: float

    def error(self, wk: np.ndarray, d: np.ndarray) -> float:
        """The absolute squared output error of kept rows ``wk`` and bias correction ``d``."""
        quad = float(np.sum(wk * (self.gss @ wk))) + 2.0 * float((self.sps @ wk) @ d) + self.n * float(d @ d)
        lin = float(np.sum(wk * self.cross)) + float(d @ self.tsum)
        return max(self.total - 2.0 * lin + quad, 0.0)

    @property
    def centred(self) -> float:
        return self.total - float(self.tsum @ self.tsum) / max(self.n, 1)


def _terms(stats: RepairStats, w: np.ndarray, s: np.ndarray) -> _Terms:
    """The error terms of keeping rows ``s`` of ``w`` (float64, rows x outputs) under ``stats``."""
    target_cross = stats.cross[s] @ w  # X'_S^T T with T = X W (+ E)
    target_sum = stats.sd @ w  # 1^T T
    total = float(np.sum(w * (stats.gd @ w)))  # ||T||^2
    if stats.pe is not None and stats.pe.shape[1] == w.shape[1]:
        target_cross = target_cross + stats.pe[s]
        target_sum = target_sum + stats.se
        total += 2.0 * float(np.sum(w * stats.de)) + stats.ee
    return _Terms(max(stats.count, 1), stats.gp[np.ix_(s, s)], stats.sp[s], target_cross, target_sum, total)


def solve(stats: RepairStats, w: np.ndarray, keep: np.ndarray, config: RecoveryConfig
          ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Refit the kept rows of ``w`` (rows x outputs) and a bias correction from ``stats``.

    Returns ``(w_kept, d, error_before, error_after)``: the new kept rows, the bias correction and the
    relative squared output errors before (kept rows unchanged, no correction) and after.
    """
    s = np.flatnonzero(keep)
    w = np.asarray(w, dtype=np.float64)
    ws = w[s]
    t = _terms(stats, w, s)
    n, gss, sps, target_cross, target_sum = t.n, t.gss, t.sps, t.cross, t.tsum
    centred = t.centred

    def error(wk: np.ndarray, d: np.ndarray) -> float:
        # a layer whose output barely varies (a dead channel's consumer) is measured against its energy
        return t.error(wk, d) / max(centred, 1e-6 * t.total, 1e-30)

    before = error(ws, np.zeros(w.shape[1]))
    if config.method == "bias":
        d = (target_sum - sps @ ws) / n if config.bias else np.zeros(w.shape[1])
        return ws, d, before, error(ws, d)
    k = s.size
    if config.method == "mask":
        wk, d = _solve_mask(gss, sps, n, ws, target_cross, target_sum, config)
        after = error(wk, d)
        return (wk, d, before, after) if after < before else (ws, np.zeros(w.shape[1]), before, before)
    ridge = config.damp * _ridge_scale(gss, config)
    prior = ridge[:, None] * (ws if config.prior == "kept" else np.zeros_like(ws))
    if config.bias:
        a = np.empty((k + 1, k + 1))
        a[:k, :k] = gss
        a[:k, k] = a[k, :k] = sps
        a[k, k] = n
        b = np.vstack([target_cross + prior, target_sum[None, :]])
        a[np.arange(k), np.arange(k)] += ridge
    else:
        a = gss + np.diag(ridge)
        b = target_cross + prior
    try:
        theta = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        theta = np.linalg.lstsq(a, b, rcond=None)[0]
    wk, d = (theta[:k], theta[k]) if config.bias else (theta, np.zeros(w.shape[1]))
    after = error(wk, d)
    if not after < before:  # an ill-conditioned solve never makes a layer worse
        return ws, np.zeros(w.shape[1]), before, before
    return wk, d, before, after


def cross_validated_damp(folds: Sequence[RepairStats], total: RepairStats, w: np.ndarray, keep: np.ndarray,
                         config: RecoveryConfig) -> tuple[float, dict[float, float]]:
    """The ridge strength of ``config.damp_grid`` whose fits on all folds but one reconstruct the left-out
    fold best, summed over the folds (``total`` is the sum of ``folds``).

    Each training fit is the ``lstsq`` solution of :func:`solve` (bias eliminated by centring, which is
    the same solution); one eigendecomposition per fold serves every grid value. Returns the chosen
    value and the cross-validated error of each, relative to the layer's centred output energy.
    """
    s = np.flatnonzero(keep)
    w = np.asarray(w, dtype=np.float64)
    ws = w[s]
    cv = dict.fromkeys(config.damp_grid, 0.0)
    energy = 0.0
    for held in folds:
        th = _terms(held, w, s)
        energy += max(th.centred, 0.0)
        for damp, wk, d in _ridge_path(_terms(total.minus(held), w, s), ws, config):
            cv[damp] += th.error(wk, d)
    cv = {k: v / max(energy, 1e-30) for k, v in cv.items()}
    return min(config.damp_grid, key=lambda d: (cv[d], d)), cv


def _ridge_scale(gss: np.ndarray, config: RecoveryConfig) -> np.ndarray:
    """Per kept row, what ``damp`` multiplies: the mean diagonal of the Gram matrix (``ridge="identity"``)
    or the row's own diagonal entry, floored at 1e-12 of the mean (``"diagonal"``)."""
    k = gss.shape[0]
    mean_diag = max(float(np.trace(gss)) / max(k, 1), 1e-30)
    if config.ridge == "diagonal":
        return np.maximum(np.diag(gss), 1e-12 * mean_diag)
    return np.full(k, mean_diag)


def _ridge_path(t: _Terms, ws: np.ndarray, config: RecoveryConfig):
    """``(damp, w_kept, d)`` of the ``lstsq`` fit for every value of ``config.damp_grid``, from one
    eigendecomposition: with the bias eliminated by centring and the ridge scale ``D`` (``mean(diag)`` or
    ``diag`` of the Gram matrix) folded in, ``(D^-1/2 A D^-1/2 + damp I) D^1/2 W' = D^-1/2 B + damp D^1/2 P``.
    """
    a, b = t.gss, t.cross
    if config.bias:
        a = a - np.outer(t.sps, t.sps) / t.n
        b = b - np.outer(t.sps, t.tsum) / t.n
    scale = _ridge_scale(t.gss, config)
    r = 1.0 / np.sqrt(scale)
    evals, q = np.linalg.eigh(a * r[:, None] * r[None, :])
    qb = q.T @ (b * r[:, None])
    qp = q.T @ (ws * np.sqrt(scale)[:, None]) if config.prior == "kept" else np.zeros_like(qb)
    for damp in config.damp_grid:
        wk = (q @ ((qb + damp * qp) / np.maximum(evals + damp, 1e-12)[:, None])) * r[:, None]
        d = (t.tsum - t.sps @ wk) / t.n if config.bias else np.zeros(ws.shape[1])
        yield damp, wk, d


def _solve_mask(gss: np.ndarray, sps: np.ndarray, n: int, ws: np.ndarray, target_cross: np.ndarray,
                target_sum: np.ndarray, config: RecoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Kwon et al.'s mask tuning: one scale ``m_i`` per kept row (``W' = diag(m) W_S``) and a bias ``d``.

    Normal equations: ``(G_SS * W_S W_S^T) m + (s_S * W_S) d = rowsum(X_S^T T * W_S)`` and
    ``(s_S * W_S)^T m + n d = 1^T T``; the ridge pulls ``m`` towards 1.
    """
    k, out = ws.shape
    mm = gss * (ws @ ws.T)
    c = sps[:, None] * ws  # k x out
    rhs = np.sum(target_cross * ws, axis=1)
    ridge = config.damp * float(np.trace(mm)) / max(k, 1)
    prior = np.ones(k) if config.prior == "kept" else np.zeros(k)
    if config.bias:
        a = np.zeros((k + out, k + out))
        a[:k, :k] = mm + ridge * np.eye(k)
        a[:k, k:] = c
        a[k:, :k] = c.T
        a[k:, k:] = n * np.eye(out)
        b = np.concatenate([rhs + ridge * prior, target_sum])
    else:
        a, b = mm + ridge * np.eye(k), rhs + ridge * prior
    try:
        theta = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        theta = np.linalg.lstsq(a, b, rcond=None)[0]
    d = theta[k:] if config.bias else np.zeros(out)
    return theta[:k, None] * ws, d


def _as_rows(arr: np.ndarray, axis: int) -> np.ndarray:
    return np.asarray(arr, dtype=np.float64) if axis == 0 else np.asarray(arr, dtype=np.float64).T


def _write(consumer: Consumer, model: ir.Model, w_rows: np.ndarray, d: np.ndarray, config: RecoveryConfig,
           ) -> tuple[str | None, bool]:
    """Store the repaired rows (removed rows zero) and the bias correction into ``model``."""
    w = consumer.weight
    dtype = w.const_value.dtype.numpy()
    arr = consumer.weight_from_rows(w_rows)
    w.const_value = ir.tensor(np.ascontiguousarray(arr.astype(dtype)), name=w.name)
    if not config.bias or not np.any(d):
        return (consumer.bias.name if consumer.bias is not None else None), False
    if consumer.bias is not None:
        b = consumer.bias
        new = b.const_value.numpy().astype(np.float64) + d
        b.const_value = ir.tensor(new.astype(b.const_value.dtype.numpy()), name=b.name)
        return b.name, False
    name = f"{w.name}_repair_bias"
    consumer.bias = insert_bias(model, consumer.node, name, d)
    return name, True


# ----------------------------------------------------------------------------------------------
# capture


def _stages(consumers: list[Consumer], values: dict[str, ir.Value]) -> list[list[Consumer]]:
    """Consumers in graph order, cut into stages whose members do not feed one another."""
    ancestors: dict[str, set[int]] = {}

    def upstream(name: str) -> set[int]:
        seen: set[int] = set()
        stack = [values[name]]
        visited: set[str] = set()
        while stack:
            v = stack.pop()
            if v.name in visited:
                continue
            visited.add(v.name)
            node = v.producer()
            if node is None:
                continue
            seen.add(id(node))
            stack.extend(i for i in node.inputs if i is not None)
        return seen

    stages: list[list[Consumer]] = []
    current: list[Consumer] = []
    for c in consumers:
        ancestors[c.activation] = up = upstream(c.activation)
        if any(id(o.node) in up for o in current):
            stages.append(current)
            current = []
        current.append(c)
    if current:
        stages.append(current)
    return stages


def _with_outputs(model: ir.Model, names: Sequence[str]) -> ir.Model:
    clone = model.clone()
    produced = {out.name: out for node in clone.graph for out in node.outputs}
    present = {v.name for v in clone.graph.outputs}
    for name in names:
        if name in produced and name not in present:
            clone.graph.outputs.append(produced[name])
    return clone


def _rows_of(arr: np.ndarray, axis: int, valid: np.ndarray | None) -> np.ndarray:
    x = np.moveaxis(np.asarray(arr), axis, -1)
    if valid is not None and x.ndim > 2 and valid.shape == x.shape[:2]:
        x = x[valid]
    return x.reshape(-1, x.shape[-1])


class _PairCapture:
    """Runs the dense model (one session, every needed tensor exposed) and the model pruned so far (a new
    session per stage) on the same calibration batches."""

    def __init__(self, dense: ir.Model, calibration: CalibrationData, consumers: list[Consumer],
                 residual: bool, norm_weighted: bool = False) -> None:
        self.calibration = calibration
        self.residual = residual
        self.norm_weighted = norm_weighted
        self.inputs = {v.name for v in dense.graph.inputs}
        self.fetch_all = sorted(n for c in consumers for n in self._names(c) if n not in self.inputs)
        self.masked = _token_dims(dense) is not None
        self._stack = ExitStack()
        self.dense = self._stack.enter_context(ort_session(_with_outputs(dense, self.fetch_all)))

    def close(self) -> None:
        """Release the dense session."""
        self._stack.close()

    def _names(self, c: Consumer) -> set[str]:
        names = {c.activation}
        if self.residual and c.residual:
            names.add(c.residual)
        if self.norm_weighted and c.norm:
            names.add(c.norm[0])
        return names

    def stage(self, current: ir.Model, stage: list[Consumer], folds: int = 1) -> dict[str, list[RepairStats]]:
        """Statistics of ``stage``'s consumers, keyed by node name: one per fold (batch ``i`` in fold
        ``i % folds``)."""
        fetch = sorted({n for c in stage for n in self._names(c)} - self.inputs)
        stats = {c.node.name: [RepairStats() for _ in range(folds)] for c in stage}
        with ort_session(_with_outputs(current, fetch)) as sc:
            for index, batch in enumerate(self.calibration.batches()):
                fd, fc = complete_feeds(self.dense, batch), complete_feeds(sc, batch)
                od = dict(zip(fetch, self.dense.run(fetch, fd), strict=True)) if fetch else {}
                oc = dict(zip(fetch, sc.run(fetch, fc), strict=True)) if fetch else {}
                od.update((k, v) for k, v in fd.items() if k not in od)
                oc.update((k, v) for k, v in fc.items() if k not in oc)
                valid = _valid_mask(batch) if self.masked else None
                for c in stage:
                    for part in c.sample_slices(od[c.activation]):
                        mask = valid if part == slice(None) else None  # token masks: transformers only
                        xd = c.rows(od[c.activation][part], mask)
                        xc = c.rows(oc[c.activation][part], mask)
                        e = None
                        if self.residual and c.residual:
                            e = (_rows_of(od[c.residual][part], c.out_axis, mask)
                                 - _rows_of(oc[c.residual][part], c.out_axis, mask))
                        weight = None
                        if self.norm_weighted and c.norm:
                            norm_rows = _rows_of(od[c.norm[0]][part], -1, mask)
                            weight = _norm_weight(norm_rows, c.norm[1], c.norm[2])
                        stats[c.node.name][index % folds].add(xc, xd, e, weight)
        return stats


def _norm_weight(rows: np.ndarray, kind: str, eps: float) -> np.ndarray:
    """Per row, the square of the factor a norm over the last axis scales it by: ``1 / (var + eps)``
    (``"center"``, LayerNormalization) or ``1 / (mean square + eps)`` (``"rms"``), divided by the batch's
    mean so that the weighted row count stays the row count."""
    x = rows.astype(np.float64, copy=False)
    spread = x.var(axis=1) if kind == "center" else np.mean(x * x, axis=1)
    weight = 1.0 / (spread + eps)
    return weight / max(float(weight.mean()), 1e-30) if weight.size else weight


# ----------------------------------------------------------------------------------------------


def repair(model: ir.Model, groups: Sequence[PruningGroup], removed: dict[int, set[int]],
           calibration: CalibrationData, config: RecoveryConfig | None = None, *,
           shapes: dict[str, Shape] | None = None) -> RepairReport:
    """Refit the consumers of the pruned ``groups`` of ``model`` in place (see the module docstring).

    Args:
        model: the dense model the groups were built on; its consumer weights and biases are rewritten
            (removed rows set to zero), and a bias ``Add`` is inserted where a consumer has none.
        groups: the model's groups.
        removed: units removed per group id.
        calibration: the calibration data.
        config: repair settings.
        shapes: inferred shapes, when known (used by the non-sequential capture).

    Returns:
        A :class:`RepairReport` with each consumer's layer error before and after.
    """
    config = config or RecoveryConfig()
    if not isinstance(calibration, CalibrationData):
        raise ConfigError(f"repair needs CalibrationData, got {type(calibration).__name__}")
    report = RepairReport(calibration=calibration.describe())
    consumers = find_consumers(model, groups, removed, report.skipped)
    if not consumers:
        return report
    values = values_by_name(model)
    folds = max(config.cv_folds, 1)
    if config.cv_folds and len(calibration) < config.cv_folds:
        raise ConfigError(f"RecoveryConfig(cv_folds={config.cv_folds}) needs at least {config.cv_folds} "
                          f"calibration batches, got {len(calibration)}: use more samples, a smaller "
                          "CalibrationConfig.batch_size, or fewer folds")
    captured: dict[str, list[RepairStats]] = {}
    if config.sequential:
        stages = _stages(consumers, values)
        capture = _PairCapture(model.clone(), calibration, consumers, config.residual, config.norm_weighted)
    else:
        stages = [consumers]
        requests = sorted({StatRequest(c.activation, c.act_axis, gram=True)
                           for c in consumers if c.conv is None}, key=lambda r: (r.name, r.axis))
        batches = list(calibration.batches())
        parts = [calibration] if folds == 1 else [
            CalibrationData(batches[f::folds], calibration.config, source=calibration.source)
            for f in range(folds)]
        if requests:
            channel_stats = [capture_activations(model, part, requests, shapes=shapes,
                                                 max_tensors_per_run=config.max_tensors_per_run)
                             for part in parts]
            for c in consumers:
                if c.conv is None:
                    captured[c.node.name] = [RepairStats.dense(cs.gram, cs.sum, cs.count) for cs in
                                             (fold[(c.activation, c.act_axis)] for fold in channel_stats)]
        captured.update(_patch_stats(model, calibration, [c for c in consumers if c.conv is not None], folds))
    report.stages = len(stages)
    try:
        _repair_stages(model, stages, config, report, capture if config.sequential else None,
                       None if config.sequential else captured)
    finally:
        if config.sequential:
            capture.close()
    return report


def _patch_stats(model: ir.Model, calibration: CalibrationData, consumers: list[Consumer], folds: int
                 ) -> dict[str, list[RepairStats]]:
    """Dense-model statistics of the Conv ``consumers``' input patches, one per fold (batch ``i`` in fold
    ``i % folds``), keyed by node name: one run per batch with the inputs exposed."""
    if not consumers:
        return {}
    inputs = {v.name for v in model.graph.inputs}
    fetch = sorted({c.activation for c in consumers} - inputs)
    grams: dict[str, list[list]] = {c.node.name: [[None, None, 0] for _ in range(folds)] for c in consumers}
    with ort_session(_with_outputs(model, fetch)) as session:
        for index, batch in enumerate(calibration.batches()):
            feeds = complete_feeds(session, batch)
            out = dict(zip(fetch, session.run(fetch, feeds), strict=True)) if fetch else {}
            out.update((k, v) for k, v in feeds.items() if k not in out)
            for c in consumers:
                acc = grams[c.node.name][index % folds]
                for part in c.sample_slices(out[c.activation]):
                    x = c.rows(out[c.activation][part], None)
                    acc[0] = (x.T @ x).astype(np.float64) + (0 if acc[0] is None else acc[0])
                    acc[1] = x.sum(axis=0, dtype=np.float64) + (0 if acc[1] is None else acc[1])
                    acc[2] += x.shape[0]
    return {name: [RepairStats.dense(g, t, n) if g is not None else RepairStats() for g, t, n in parts]
            for name, parts in grams.items()}


def _repair_stages(model: ir.Model, stages: list[list[Consumer]], config: RecoveryConfig,
                   report: RepairReport, capture: _PairCapture | None,
                   captured: dict[str, list[RepairStats]] | None) -> None:
    folds = max(config.cv_folds, 1)
    for stage in stages:
        if capture is not None:
            pair_stats = capture.stage(model, stage, folds)
        for c in stage:
            parts = pair_stats[c.node.name] if capture is not None else captured[c.node.name]
            st = parts[0] if len(parts) == 1 else RepairStats.summed(parts)
            w_rows = c.weight_rows()
            if st.gp is None or st.gp.shape[0] != w_rows.shape[0]:
                report.skipped.append(f"{c.node.name}: input has {None if st.gp is None else st.gp.shape[0]} "
                                      f"channels, weight {w_rows.shape[0]} rows")
                continue
            keep = ~c.feature_mask()
            fit = config
            damp = None
            if config.cv_folds:
                damp, _ = cross_validated_damp(parts, st, w_rows, keep, config)
                fit = replace(config, damp=damp)
            wk, d, before, after = solve(st, w_rows, keep, fit)
            new = np.zeros_like(w_rows)
            new[keep] = wk
            bias_name, created = _write(c, model, new, d, config)
            report.records.append(RepairRecord(c.node.name, c.weight.name, c.axis, bias_name, created,
                                               int((~c.removed).sum()), int(c.removed.size), before, after,
                                               damp))


__all__ = ["Consumer", "ConvGeometry", "RepairRecord", "RepairReport", "RepairStats", "cross_validated_damp",
           "find_consumers", "insert_bias", "repair", "solve"]
