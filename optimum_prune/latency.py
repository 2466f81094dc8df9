"""Latency budgets: an ONNX Runtime latency table per layer, as in Kwon et al. (2022).

``PruningConfig(target="latency", sparsity=s)`` removes ``s`` of the model's latency (estimated): each
prunable block (an FFN: up-projection, GELU, down-projection; an attention block: Q/K/V projections,
scores, softmax, context, output projection) is timed in ONNX Runtime, as a small stand-alone graph at
``batch x sequence`` tokens, for a grid of kept widths; the table interpolates linearly between them.
The latency a plan saves is the sum over groups of ``table(full width) - table(kept width)``, and
allocation spends the budget on it (uniform: one share found by bisection; global: units taken in order
of score per unit of latency, with the exact interpolated marginal latency of each removal).

A measured table also holds the dense model's whole latency at the same shape (``total_ms``), so
``sparsity`` is a fraction of the whole model's latency; a table without it (given by hand, as the tests
do) makes ``sparsity`` a fraction of the latency of the blocks in scope. Give a table with
``PruningConfig(latency_table=...)`` (a :class:`LatencyTable`, its dict, or a JSON file) to skip the
measurement, e.g. to reuse one across runs: ``measure_latency_table(...).save(path)``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.errors import ConfigError

__all__ = ["LatencyTable", "block_signature", "measure_latency_table", "time_session"]

MEASURED_KINDS = ("ffn", "heads")


@dataclass
class LatencyTable:
    """Latency (ms) of each prunable block as a function of its kept units.

    Attributes:
        curves: ``{key: [[kept units, ...], [ms, ...]]}``, kept units ascending. A key is a block
            signature (:func:`block_signature`, e.g. ``"ffn:1536x1:h384"``) or just a kind (``"ffn"``),
            which then applies to every group of that kind without a signature of its own.
        total_ms: the dense model's latency at the same shape, or None (then ``sparsity`` is a share of
            the blocks' latency).
        batch, sequence: the input shape the table was measured at.
        source: how the table was made (``"measured"``, ``"given"``).
    """

    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    total_ms: float | None = None
    batch: int = 32
    sequence: int = 64
    source: str = "given"

    def __post_init__(self) -> None:
        clean = {}
        for key, curve in self.curves.items():
            try:
                widths, ms = (np.asarray(c, dtype=np.float64) for c in curve)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"latency table curve {key!r} must be [[kept units...], [ms...]]: "
                                  f"{e}") from e
            if widths.ndim != 1 or widths.shape != ms.shape or widths.size < 1:
                raise ConfigError(f"latency table curve {key!r}: widths and ms must be equal-length lists")
            if np.any(np.diff(widths) <= 0) or not np.all(np.isfinite(ms)) or np.any(ms < 0):
                raise ConfigError(f"latency table curve {key!r}: widths must increase and ms be finite, >= 0")
            clean[str(key)] = [widths.tolist(), ms.tolist()]
        self.curves = clean

    def curve(self, group: PruningGroup, signature: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The (widths, ms) curve of ``group``: by signature, else by kind; ConfigError if neither."""
        for key in (signature, group.kind):
            if key is not None and key in self.curves:
                widths, ms = self.curves[key]
                return np.asarray(widths), np.asarray(ms)
        raise ConfigError(f"the latency table has no curve for group {group.id} ({group.kind}, signature "
                          f"{signature!r}); it has {sorted(self.curves)}. Measured tables cover ffn and heads"
                          " groups; give a table with a curve per kind or signature for others")

    def ms(self, group: PruningGroup, kept: int | np.ndarray, signature: str | None = None) -> np.ndarray:
        """Interpolated latency of ``group`` with ``kept`` units (linear; extrapolated linearly to 0 kept
        units from the two narrowest widths, clamped at the widest)."""
        widths, ms = self.curve(group, signature)
        kept = np.asarray(kept, dtype=np.float64)
        out = np.interp(kept, widths, ms)
        if widths.size >= 2:
            slope = (ms[1] - ms[0]) / (widths[1] - widths[0])
            below = kept < widths[0]
            out = np.where(below, np.maximum(ms[0] + slope * (kept - widths[0]), 0.0), out)
        return out

    def to_dict(self) -> dict:
        return {"curves": self.curves, "total_ms": self.total_ms, "batch": self.batch,
                "sequence": self.sequence, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        unknown = sorted(set(d) - {"curves", "total_ms", "batch", "sequence", "source"})
        if unknown:
            raise ConfigError(f"unknown latency table keys {unknown}")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the latency table {path}: {e}") from e

    @classmethod
    def coerce(cls, value) -> LatencyTable | None:
        """None, a table, its dict, or a JSON path, as a :class:`LatencyTable`."""
        if value is None or isinstance(value, LatencyTable):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str | os.PathLike):
            return cls.load(value)
        raise ConfigError(f"latency_table must be a LatencyTable, a dict or a JSON path, got {value!r}")


# ----------------------------------------------------------------------------------------------
# signatures


def _root_dims(group: PruningGroup, model: ir.Model) -> tuple[int, int] | None:
    """(channels on the root axis, the other dimension) of the group's first constant 2-D root weight."""
    inits = model.graph.initializers
    for s in group.root_slices():
        value = inits.get(s.name)
        tensor = value.const_value if value is not None else None
        if tensor is None or len(tensor.shape) != 2:
            continue
        dims = [int(d) for d in tensor.shape]
        return dims[s.axis], dims[1 - s.axis]
    return None


def block_signature(group: PruningGroup, model: ir.Model) -> str | None:
    """``"<kind>:<units>x<unit size>:h<hidden>"`` for FFN and head groups with 2-D root weights (None
    otherwise); groups with the same signature share one measured curve."""
    if group.kind not in MEASURED_KINDS:
        return None
    dims = _root_dims(group, model)
    if dims is None:
        return None
    return f"{group.kind}:{group.units}x{max(1, group.unit_size)}:h{dims[1]}"


def _parse(signature: str) -> tuple[str, int, int, int]:
    kind, shape, hidden = signature.split(":")
    units, size = shape.split("x")
    return kind, int(units), int(size), int(hidden[1:])


# ----------------------------------------------------------------------------------------------
# measurement


def _block_model(kind: str, kept: int, unit_size: int, hidden: int, opset: int = 17):
    """A stand-alone ONNX graph of one block with ``kept`` units (random weights), input ``x[B, S, H]``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width = kept * unit_size
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), name))
        return name

    def const(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    if kind == "ffn":
        nodes += [helper.make_node("MatMul", ["x", weight("w1", (hidden, width))], ["h1"]),
                  helper.make_node("Add", ["h1", weight("b1", (width,))], ["h2"]),
                  helper.make_node("Div", ["h2", weight("sqrt2", ())], ["h3"]),
                  helper.make_node("Erf", ["h3"], ["h4"]),
                  helper.make_node("Add", ["h4", weight("one", ())], ["h5"]),
                  helper.make_node("Mul", ["h2", "h5"], ["h6"]),
                  helper.make_node("Mul", ["h6", weight("half", ())], ["h7"]),
                  helper.make_node("MatMul", ["h7", weight("w2", (width, hidden))], ["h8"]),
                  helper.make_node("Add", ["h8", weight("b2", (hidden,))], ["y"])]
    elif kind == "heads":
        shape4 = const("shape4", [0, 0, kept, unit_size])
        for p in "qkv":
            nodes += [helper.make_node("MatMul", ["x", weight(f"w{p}", (hidden, width))], [f"{p}0"]),
                      helper.make_node("Add", [f"{p}0", weight(f"b{p}", (width,))], [f"{p}1"]),
                      helper.make_node("Reshape", [f"{p}1", shape4], [f"{p}2"])]
        nodes += [helper.make_node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
                  helper.make_node("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
                  helper.make_node("MatMul", ["q3", "k3"], ["s0"]),
                  helper.make_node("Div", ["s0", weight("scale", ())], ["s1"]),
                  helper.make_node("Softmax", ["s1"], ["s2"], axis=-1),
                  helper.make_node("MatMul", ["s2", "v3"], ["c0"]),
                  helper.make_node("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["c1", const("shape3", [0, 0, width])], ["c2"]),
                  helper.make_node("MatMul", ["c2", weight("wo", (width, hidden))], ["o0"]),
                  helper.make_node("Add", ["o0", weight("bo", (hidden,))], ["y"])]
    else:
        raise ConfigError(f"no latency block for kind {kind!r}; measured kinds: {MEASURED_KINDS}")
    graph = helper.make_graph(
        nodes, f"{kind}_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        initializer=inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def time_session(session, feeds: dict[str, np.ndarray], repeat: int = 5, warmup: int = 2) -> float:
    """Median wall time (ms) of ``session.run`` on ``feeds`` after ``warmup`` runs."""
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _session(model_bytes_or_path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes_or_path, options, providers=["CPUExecutionProvider"])


def width_grid(units: int, points: int, min_units: int = 1) -> list[int]:
    """``points`` kept widths from ``min_units`` to ``units``, evenly spaced, distinct, both ends kept."""
    low = max(1, min(min_units, units))
    return sorted({int(round(w)) for w in np.linspace(low, units, max(2, points))})


def measure_latency_table(model: ir.Model, groups: Sequence[PruningGroup], *, model_path: str | os.PathLike |
                          None = None, batch: int = 32, sequence: int = 64, points: int = 7, repeat: int = 5,
                          threads: int | None = None, min_units: int = 1) -> LatencyTable:
    """Time every distinct block of ``groups`` (FFN and head groups) at ``points`` kept widths.

    ``model_path`` (the dense ONNX file), when given, is also timed whole with random token inputs
    (``total_ms``). Each block is a stand-alone graph with random weights of the group's shape, input
    ``[batch, sequence, hidden]``; the median of ``repeat`` runs after two warm-up runs.
    """
    signatures = sorted({sig for g in groups if (sig := block_signature(g, model)) is not None})
    rng = np.random.default_rng(0)
    curves = {}
    for sig in signatures:
        kind, units, size, hidden = _parse(sig)
        feeds = {"x": rng.standard_normal((batch, sequence, hidden)).astype(np.float32)}
        widths = width_grid(units, points, min_units)
        ms = []
        for w in widths:
            session = _session(_block_model(kind, w, size, hidden).SerializeToString(), threads)
            ms.append(time_session(session, feeds, repeat))
        # timing noise must not make a narrower block look slower than a wider one
        ms = np.minimum.accumulate(np.asarray(ms)[::-1])[::-1]
        curves[sig] = [widths, ms.tolist()]
    total = None
    if model_path is not None:
        session = _session(str(model_path), threads)
        config = Path(model_path).parent / "config.json"
        vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
        feeds = _token_feeds(session, batch, sequence, rng, int(vocab or 1000))
        if feeds is not None:
            total = time_session(session, feeds, repeat)
    return LatencyTable(curves=curves, total_ms=total, batch=batch, sequence=sequence, source="measured")


def _token_feeds(session, batch: int, sequence: int, rng, vocab: int) -> dict[str, np.ndarray] | None:
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        if len(shape) != 2 or "int" not in inp.type:
            return None  # not a text model: no whole-model timing (sparsity is then a share of the blocks)
        if "mask" in inp.name:
            feeds[inp.name] = np.ones((batch, sequence), np.int64)
        elif "type" in inp.name or "position" in inp.name:
            feeds[inp.name] = (np.zeros((batch, sequence), np.int64) if "type" in inp.name
                               else np.tile(np.arange(sequence, dtype=np.int64), (batch, 1)))
        else:
            feeds[inp.name] = rng.integers(min(5, vocab - 1), vocab, (batch, sequence), dtype=np.int64)
    return feeds


# ----------------------------------------------------------------------------------------------
# allocation support


class LatencyModel:
    """The table bound to a set of groups: savings of removal counts, marginal costs, mean costs."""

    def __init__(self, table: LatencyTable, groups: Sequence[PruningGroup], model: ir.Model) -> None:
        self.table = table
        self.groups = {g.id: g for g in groups}
        self.signatures = {g.id: block_signature(g, model) for g in groups}
        self.full = {g.id: float(table.ms(g, g.units, self.signatures[g.id])) for g in groups}

    def saving(self, gid: int, n_remove: int) -> float:
        """Latency (ms) saved by removing ``n_remove`` units of group ``gid``."""
        g = self.groups[gid]
        return self.full[gid] - float(self.table.ms(g, g.units - n_remove, self.signatures[gid]))

    def total_saving(self, n_remove: dict[int, int]) -> float:
        return sum(self.saving(gid, n) for gid, n in n_remove.items() if n)

    def marginal(self, gid: int, removed_so_far: int) -> float:
        """Latency saved by removing one more unit of ``gid`` after ``removed_so_far``."""
        return self.saving(gid, removed_so_far + 1) - self.saving(gid, removed_so_far)

    def unit_costs(self, min_units: int) -> dict[int, np.ndarray]:
        """Per-unit cost for ranking: the mean latency per unit over the removable range."""
        out = {}
        for gid, g in self.groups.items():
            cap = max(0, g.units - max(1, min_units))
            per = self.saving(gid, cap) / cap if cap else 0.0
            out[gid] = np.full(g.units, max(per, 0.0))
        return out

    def blocks_ms(self) -> float:
        return float(sum(self.full.values()))

    def budget(self, sparsity: float) -> float:
        """``sparsity`` of the whole model's latency (``total_ms``), else of the blocks' latency."""
        base = self.table.total_ms if self.table.total_ms else self.blocks_ms()
        return sparsity * base
