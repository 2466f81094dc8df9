"""ONNX Runtime sessions on in-memory ``onnx_ir`` models (clones with extra outputs or inputs).

Criteria and calibration run variants of the model being pruned: the same graph with some intermediate
tensors exposed as outputs, or with mask inputs inserted. They work on a clone (tensors shared, never
copied) and never on the input file. Small models go to ONNX Runtime as bytes; models with external
data or beyond what one protobuf holds are written to a temporary folder that lives as long as the
session context.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimum_prune.errors import ConfigError
from optimum_prune.graph import const_array, model_bytes

_BYTES_LIMIT = 1_500_000_000  # serialised in memory below this, through a temporary file above

ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bfloat16)": np.float32,
}


def _needs_file(model: ir.Model) -> bool:
    if model_bytes(model) > _BYTES_LIMIT:
        return True
    if any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
        return True
    for node in model.graph:
        attr = node.attributes.get("value") if node.op_type == "Constant" else None
        if attr is not None and isinstance(attr.value, ir.ExternalTensor):
            return True
    return False


@contextmanager
def ort_session(model: ir.Model, *, threads: int = 0, optimize: bool = True) -> Iterator:
    """An ONNX Runtime CPU session on ``model`` (an in-memory model, typically a clone).

    Args:
        model: the model to run; it is serialised, not modified.
        threads: intra-op threads (0: ONNX Runtime's default, all cores).
        optimize: apply ONNX Runtime's graph optimisations (off: run the graph as written).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    tmp: Path | None = None
    try:
        if _needs_file(model):
            tmp = Path(tempfile.mkdtemp(prefix="optimum-prune-session-"))
            path = tmp / "model.onnx"
            ir.save(model, path, external_data="model.onnx_data")
            source: str | bytes = str(path)
        else:
            source = ir.to_proto(model).SerializeToString()
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        yield session
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def complete_feeds(session, feeds: dict[str, np.ndarray], *, skip: frozenset[str] = frozenset()
                   ) -> dict[str, np.ndarray]:
    """``feeds`` matched to ``session``'s inputs: extra keys dropped, types cast, common inputs filled.

    A missing ``attention_mask`` is filled with ones, ``token_type_ids`` with zeros and
    ``position_ids`` with ``0..S-1``, shaped like ``input_ids``; a missing KV cache
    (``past_key_values.*``) is empty (past length 0, as in a first generation step). Inputs named in
    ``skip`` are left to the caller. Any other missing input raises :class:`ConfigError`.
    """
    from optimum_prune.passes.cache_inputs import narrowed_dims

    narrowed = narrowed_dims(session)
    out: dict[str, np.ndarray] = {}
    reference = next((np.asarray(v) for k, v in feeds.items() if k == "input_ids"), None)
    missing = []
    for inp in session.get_inputs():
        if inp.name in skip:
            continue
        dtype = ORT_TYPES.get(inp.type, np.float32)
        if inp.name in feeds:
            out[inp.name] = np.asarray(feeds[inp.name]).astype(dtype, copy=False)
            continue
        lname = inp.name.lower()
        if reference is not None and reference.ndim == 2:
            if "attention_mask" in lname:
                out[inp.name] = np.ones(reference.shape, dtype=dtype)
                continue
            if "token_type" in lname:
                out[inp.name] = np.zeros(reference.shape, dtype=dtype)
                continue
            if "position_ids" in lname:
                positions = np.arange(reference.shape[1], dtype=dtype)
                out[inp.name] = np.broadcast_to(positions, reference.shape).copy()
                continue
            if "past" in lname and inp.shape:
                out[inp.name] = empty_cache(inp, reference.shape[0], narrowed)
                continue
        missing.append(inp.name)
    if missing:
        raise ConfigError(f"the calibration feeds lack the model inputs {missing} (feeds have "
                          f"{sorted(feeds)}); pass feed dicts with every input, or a dataset the folder's "
                          "tokenizer/processor turns into them")
    return out


def empty_cache(inp, batch: int, narrowed: dict[str, int]) -> np.ndarray:
    """Zeros for cache input ``inp`` (an ONNX Runtime input description) with past length 0, as in a
    first generation step: symbolic dimensions are ``batch`` (the first), the width a narrowed cache
    input computes with (``narrowed``: :func:`optimum_prune.passes.cache_inputs.narrowed_dims`), or 0."""
    shape = [d if isinstance(d, int) else narrowed.get(d, batch if i == 0 else 0)
             for i, d in enumerate(inp.shape)]
    return np.zeros(shape, dtype=ORT_TYPES.get(inp.type, np.float32))


def generate_feeds(session, model: ir.Model, *, rows: int, length: int, seed: int = 0,
                   skip: frozenset[str] = frozenset(), dims: dict[str, int] | None = None
                   ) -> dict[str, np.ndarray]:
    """Random feeds for ``session``: ``rows`` examples of ``length`` tokens (symbolic batch / sequence dims).

    Masks are ones, token types zeros, positions ``0..S-1``; token ids are drawn uniformly over the rows
    of the embedding table they index in ``model`` (not just the first few ids, which are special
    tokens), other integers in a small range, floats from a standard normal. Inputs in ``skip`` are
    left out. ``dims`` fixes other symbolic dimensions (``height``, ``width``, ``channels``: what
    :func:`optimum_prune.passes.validate.image_dims` reads from a folder's ``config.json``).
    """
    from optimum_prune.passes.validate import generated_inputs

    past = 1  # a KV cache of random values is not data: keep it as short as possible
    dims = dict(dims or {})
    for inp in session.get_inputs():
        for d in inp.shape:
            if isinstance(d, str):
                low = d.lower()
                if "batch" in low:
                    dims[low] = rows
                elif "past" in low and "+" not in low:
                    dims[low] = past
                elif "total" in low or ("past" in low and "+" in low):
                    dims[low] = past + length
                elif "seq" in low or "length" in low:
                    dims[low] = length
    feeds = generated_inputs(session, seed=seed, dims=dims)
    rng = np.random.default_rng(seed + 1)
    tables = _table_rows(model)
    for name, arr in feeds.items():
        lname = name.lower()
        if (name in tables and np.issubdtype(arr.dtype, np.integer)
                and not any(k in lname for k in ("mask", "position", "token_type", "segment"))):
            feeds[name] = rng.integers(0, tables[name], size=arr.shape).astype(arr.dtype)
    return {k: v for k, v in feeds.items() if k not in skip}


def _table_rows(model: ir.Model) -> dict[str, int]:
    """For each graph input used as Gather indices into a constant table: the smallest table's row count."""
    out: dict[str, int] = {}
    for v in model.graph.inputs:
        for node, index in v.uses():
            if node.op_type != "Gather" or index != 1:
                continue
            table = const_array(node.inputs[0])
            if table is None:
                continue
            axis = node.attributes["axis"].value if "axis" in node.attributes else 0
            n = int(table.shape[axis])
            out[v.name] = min(out.get(v.name, n), n)
    return out
