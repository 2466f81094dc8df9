"""Validation of a written model: the ONNX checker (full check) and an ONNX Runtime run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from optimum_prune.errors import ValidationError
from optimum_prune.passes.cache_inputs import narrowed_dims


def make_session(path: Path, *, threads: int = 0, light: bool = False):
    """An ONNX Runtime CPU session on ``path`` (all graph optimisations on).

    ``light`` builds a session only to check that the model loads and runs: no graph optimisations,
    no weight pre-packing, no memory arena (several seconds and a copy of the weights less).
    """
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads=threads, light=light),
                                providers=["CPUExecutionProvider"])


def session_options(*, threads: int = 0, light: bool = False):
    """ONNX Runtime session options of :func:`make_session`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if light:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return opts


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}

_DIM_VALUES = {"batch": 2, "sequence": 7, "past": 3, "height": 32, "width": 32, "channels": 3}


SEQUENCE_LADDER = (_DIM_VALUES["sequence"], 16, 64, 512, 4096, 16000)
"""Sequence lengths :func:`runnable_inputs` tries in turn: a speech encoder's convolution stack needs
hundreds of raw audio samples (wav2vec2: a receptive field of 400), a text model runs on seven tokens,
and a model whose export holds its traced length as a constant (Nystromformer's landmark Reshape) runs
only on optimum-onnx's dummy sequence length, 16."""


def generated_inputs(session, *, seed: int = 0, dims: dict[str, int] | None = None,
                     sequence: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs that fit ``session``'s declared inputs: ids in a small range, masks of ones.

    ``dims`` sets symbolic dimensions by name; ``sequence`` is the length of the other sequence-like
    dimensions (default 7).
    """
    rng = np.random.default_rng(seed)
    dims = {**narrowed_dims(session), **(dims or {})}
    values = dict(_DIM_VALUES, sequence=sequence or _DIM_VALUES["sequence"])
    feeds = {}
    for inp in session.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
                continue
            name = str(d).lower() if d is not None else ""
            if name in dims:
                shape.append(dims[name])
            elif "past" in name and "+" in name:
                shape.append(values["past"] + values["sequence"])
            elif "past" in name:
                shape.append(values["past"])
            elif "batch" in name or i == 0:
                shape.append(values["batch"])
            elif "channel" in name:
                shape.append(dims.get("channels", values["channels"]))
            elif "height" in name:
                shape.append(dims.get("height", values["height"]))
            elif "width" in name:
                shape.append(dims.get("width", values["width"]))
            else:
                shape.append(values["sequence"])
        dtype = _ORT_TYPES.get(inp.type, np.float32)
        lname = inp.name.lower()
        if "mask" in lname:
            arr = np.ones(shape, dtype=dtype)
        elif "position_ids" in lname:
            offset = values["past"] if any("past" in i.name for i in session.get_inputs()) else 0
            arr = np.broadcast_to(np.arange(shape[-1], dtype=dtype) + offset, shape).copy()
        elif "token_type" in lname or "segment" in lname:
            arr = np.zeros(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            arr = rng.integers(0, 3, size=shape).astype(dtype)  # valid for any table
        elif dtype == np.bool_:
            arr = np.ones(shape, dtype=dtype)
        else:
            arr = rng.standard_normal(shape).astype(dtype)
        feeds[inp.name] = arr
    return feeds


def image_dims(folder: Path) -> dict[str, int]:
    """``{"height": h, "width": w}`` from the ``image_size`` of the ``config.json`` in ``folder`` (or of its
    ``vision_config``), for models whose image dimensions are symbolic but which run on one size only
    (a position table of a fixed patch grid), and ``"channels"`` from its ``num_channels`` (a grayscale
    model's symbolic ``num_channels`` input dimension); empty when the folder says nothing."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    out: dict[str, int] = {}
    channels = config.get("num_channels", vision.get("num_channels"))
    if isinstance(channels, int) and not isinstance(channels, bool) and channels > 0:
        out["channels"] = channels
    size = config.get("image_size", vision.get("image_size"))
    if isinstance(size, int) and size > 0:
        out.update(height=size, width=size)
    elif isinstance(size, (list, tuple)) and len(size) == 2 and \
            all(isinstance(d, int) and d > 0 for d in size):
        out.update(height=size[0], width=size[1])
    return out


def runnable_inputs(session, *, seed: int = 0, dims: dict[str, int] | None = None
                    ) -> tuple[dict[str, np.ndarray], list[np.ndarray], int]:
    """Generated inputs on which ``session`` runs, its outputs, and the sequence length used: the shortest
    of :data:`SEQUENCE_LADDER` that works. When none does, raises :class:`ValidationError` with the error
    of the shortest and the lengths tried (the longest ones mostly overflow position tables, which says
    little)."""
    first: Exception | None = None
    for length in SEQUENCE_LADDER:
        feeds = generated_inputs(session, seed=seed, dims=dims, sequence=length)
        try:
            return feeds, session.run(None, feeds), length
        except Exception as e:  # ONNX Runtime raises its own exception types
            first = first or e
    lengths = ", ".join(str(n) for n in SEQUENCE_LADDER)
    raise ValidationError(f"the model runs on no generated inputs (sequence lengths {lengths}); at "
                          f"{SEQUENCE_LADDER[0]}: {first}") from first


def validate_model_file(path: Path, *, source: Path | None = None, run: bool = True,
                        header: onnx.ModelProto | None = None) -> None:
    """Run ``onnx.checker`` (full check) and one ONNX Runtime inference; raise :class:`ValidationError`.

    With ``header`` (the written model with its weights as external references into the written
    files, see :func:`optimum_prune.storage.write_model`), the checker and ONNX Runtime read that
    small file instead of parsing the whole protobuf, so the weights are loaded once.

    ONNX Runtime's fusions emit ops the checker does not know (SimplifiedLayerNormalization in the
    default domain): when the checker rejects the pruned model, the ``source`` model is checked too,
    and a rejection both share is left to the ONNX Runtime run to judge.
    """
    path = Path(path)
    target = path
    if header is not None:
        target = path.parent / f".{path.stem}-validate.onnx"
        target.write_bytes(header.SerializeToString())
    try:
        _validate(target, path, source, run)
    finally:
        if header is not None:
            target.unlink(missing_ok=True)


def _validate(target: Path, path: Path, source: Path | None, run: bool) -> None:
    try:
        onnx.checker.check_model(str(target), full_check=True)
    except Exception as e:
        if source is None or _checker_accepts(source):
            raise ValidationError(f"pruned model {path} fails onnx.checker: {e}") from e
    if not run:
        return
    dims = image_dims(source.parent if source is not None else path.parent)
    try:
        sess = make_session(target, light=True)
        _, outs, length = runnable_inputs(sess, dims=dims)
    except Exception as e:
        raise ValidationError(f"pruned model {path} does not run in ONNX Runtime: {e}") from e
    if source is not None and length != SEQUENCE_LADDER[0] and _runs(source, SEQUENCE_LADDER[0], dims):
        raise ValidationError(f"pruned model {path} does not run in ONNX Runtime on the generated inputs "
                              f"the source model {source} runs on (sequence {SEQUENCE_LADDER[0]})")
    for meta, out in zip(sess.get_outputs(), outs, strict=True):
        if np.issubdtype(np.asarray(out).dtype, np.floating) and not np.isfinite(out).all():
            raise ValidationError(f"pruned model {path} gives non-finite values in output '{meta.name}'")


def _runs(path: Path, sequence: int, dims: dict[str, int]) -> bool:
    """Whether the model at ``path`` runs on generated inputs with sequence-like dimensions ``sequence``."""
    try:
        sess = make_session(path, light=True)
        sess.run(None, generated_inputs(sess, sequence=sequence, dims=dims))
    except Exception:
        return False
    return True


def _checker_accepts(path: Path) -> bool:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception:
        return False
    return True


def check_generates(folder: Path, file_name: str = "model.onnx") -> None:
    """Load ``folder`` with Optimum's ``ORTModelForCausalLM`` and generate two tokens; raise
    :class:`ValidationError` if it cannot.

    Run when pruning resized the key/value cache: the runtime sizes the first cache from
    ``config.json`` with rules that differ per model type, so the only reliable check is to try (the
    pruner narrows the cache inputs when the recorded counts do not work, and tries again). The session is a
    light one (see :func:`make_session`): what is checked does not depend on graph optimisations, and
    without them and weight pre-packing ONNX Runtime maps the external weights instead of copying
    them (on a 2.6 GB decoder: 1.5 GB less anonymous memory, and the session is built seconds faster).
    """
    try:
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        model = ORTModelForCausalLM.from_pretrained(folder, file_name=file_name, use_cache=True,
                                                    use_io_binding=False, provider="CPUExecutionProvider",
                                                    session_options=session_options(light=True))
        ids = torch.tensor([[1, 2, 3]])
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                       do_sample=False)
    except Exception as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValidationError(
            "the pruned model resizes the key/value cache, and Optimum's ORTModelForCausalLM cannot "
            f"generate with it ({type(e).__name__}: {message[:300]}). Use prune_kv_heads=False (heads are "
            "then pruned only where the cache stays whole).") from e
