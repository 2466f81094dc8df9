"""``quantize``: INT8 with ONNX Runtime (Optimum's ``ORTQuantizer``) or Intel Neural Compressor.

Backends:

- ``onnxruntime``: dynamic (weights INT8, activations quantized at run time) or static (activations
  calibrated on a ``datasets`` split) through ``ORTQuantizer`` and ``AutoQuantizationConfig`` presets.
- ``neural-compressor``: Intel Neural Compressor's ONNX API (``onnx_neural_compressor.quantization.quantize``
  with a ``DynamicQuantConfig`` or a ``StaticQuantConfig`` and a calibration data reader), the
  ``onnx-neural-compressor`` package. That package requires ``numpy<2`` while this project's main
  environment runs on numpy 2, so it is the ``neural-compressor-onnx`` extra, installed in its own
  environment pinned by ``constraints-inc.txt`` (``make venv-inc`` / ``make test-inc``). The stage checks
  for it when configured and names the package and the fix when it is missing.

  INC first writes an ONNX Runtime-optimized copy of the model whose initializers are external data, and
  saves the quantized model the same way (``model.onnx`` + ``model.onnx_data``), so models over the 2 GB
  protobuf limit go through as well.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from optimum_prune.errors import BackendUnavailableError, ConfigError
from optimum_prune.stages.base import (
    MODEL_FILE,
    Stage,
    StageConfig,
    as_tuple,
    find_model_file,
    one_of,
    positive_int,
)
from optimum_prune.stages.data import DatasetConfig, complete_feeds, encode, load_split

BACKENDS = ("onnxruntime", "neural-compressor")
MODES = ("dynamic", "static")
PRESETS = ("avx512_vnni", "avx512", "avx2", "arm64")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("qoperator", "qdq")
INC_PACKAGE = "onnx-neural-compressor"
INC_FIX = (
    "it pins numpy<2, so install the extra in its own environment: `make venv-inc` (builds .venv-inc with "
    "`pip install -c constraints-inc.txt -e '.[neural-compressor-onnx]'`; constraints-inc.txt pins "
    "numpy<2 and what follows from it), or use backend: onnxruntime"
)
# Op types of integer kernels (QOperator format) and of the quantize / dequantize nodes around them.
_INTEGER_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QGemm", "QAttention")
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_ORIGIN_OPS = {
    "QAttention": "Attention",
    "QGemm": "Gemm",
    "DynamicQuantizeMatMul": "MatMul",
    "DynamicQuantizeLSTM": "LSTM",
    "QEmbedLayerNormalization": "EmbedLayerNormalization",
}


@dataclasses.dataclass
class QuantizeConfig(StageConfig):
    """Options of the ``quantize`` stage.

    Args:
        backend: ``"onnxruntime"`` or ``"neural-compressor"``.
        mode: ``"dynamic"`` or ``"static"`` (static needs ``calibration``).
        preset: ``AutoQuantizationConfig`` preset (onnxruntime backend): ``avx512_vnni``, ``avx512``,
            ``avx2`` or ``arm64``.
        per_channel: per-channel weight scales (``None``: the preset's default).
        operators_to_quantize: op types to quantize (``None``: the preset's default).
        nodes_to_exclude: node names left in float.
        calibration: the ``datasets`` split for static calibration (a :class:`DatasetConfig` mapping).
        calibration_method: ``minmax``, ``entropy`` or ``percentile``.
        batch_size: calibration batch size.
        quant_format: neural-compressor backend, static mode: ``"qoperator"`` (integer kernels such as
            ``QLinearMatMul``; the default) or ``"qdq"`` (``QuantizeLinear``/``DequantizeLinear`` pairs
            around float ops). ``None``: ``qoperator``. Not an option of the onnxruntime backend, whose
            format follows ``preset``.

    With backend ``neural-compressor``, ``preset`` is not used (INC targets the CPU execution provider),
    ``per_channel`` ``None`` means ``True`` like the onnxruntime presets (INC's own default is per-tensor,
    which lowers the embedding cosine of dynamic INT8 all-MiniLM-L6-v2 from 0.991 to 0.958), and
    ``operators_to_quantize`` ``None`` means INC's default op list for the mode and format. INC 1.0 has a
    ``reduce_range`` option but its quantize entry points do not pass it on to the quantizer (weights are
    always 8-bit), so it is not offered here.
    """

    backend: str = "onnxruntime"
    mode: str = "dynamic"
    preset: str = "avx512_vnni"
    per_channel: bool | None = None
    operators_to_quantize: list | tuple | None = None
    nodes_to_exclude: list | tuple | None = None
    calibration: DatasetConfig | dict | str | None = None
    calibration_method: str = "minmax"
    batch_size: int = 8
    quant_format: str | None = None

    def __post_init__(self) -> None:
        one_of(self.backend, BACKENDS, "quantize backend")
        one_of(self.mode, MODES, "quantize mode")
        one_of(self.preset, PRESETS, "quantize preset")
        one_of(self.calibration_method, CALIBRATION_METHODS, "quantize calibration_method")
        positive_int(self.batch_size, "quantize batch_size")
        self.operators_to_quantize = as_tuple(self.operators_to_quantize, "operators_to_quantize")
        self.nodes_to_exclude = as_tuple(self.nodes_to_exclude, "nodes_to_exclude")
        self.calibration = DatasetConfig.coerce(self.calibration, "quantize calibration")
        if self.mode == "static" and self.calibration is None:
            raise ConfigError(
                "quantize mode 'static' needs calibration: a dataset split, e.g. "
                "calibration: {name: rotten_tomatoes, split: train, num_samples: 64}"
            )
        if self.mode == "dynamic" and self.calibration is not None:
            raise ConfigError(
                "quantize calibration is only used by mode 'static'; remove it or set mode: static"
            )
        if self.quant_format is not None:
            one_of(self.quant_format, QUANT_FORMATS, "quantize quant_format")
            if self.backend != "neural-compressor":
                raise ConfigError(
                    "quantize quant_format is an option of backend 'neural-compressor'; with backend "
                    "'onnxruntime' the format follows preset: remove quant_format"
                )
            if self.quant_format == "qdq" and self.mode == "dynamic":
                raise ConfigError(
                    "quantize quant_format 'qdq' needs mode 'static' (dynamic quantization is QOperator only)"
                )
        if self.backend == "neural-compressor" and importlib.util.find_spec("onnx_neural_compressor") is None:
            raise BackendUnavailableError(
                f"quantize backend 'neural-compressor' needs the package {INC_PACKAGE} "
                f"(Intel Neural Compressor's ONNX API), which is not installed: "
                f"{INC_FIX}"
            )


class QuantizeStage(Stage):
    """Quantize the folder's model to INT8; the output's ``model.onnx`` is the quantized model."""

    name = "quantize"
    config_class = QuantizeConfig

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        model = find_model_file(input_dir)
        scratch = Path(tempfile.mkdtemp(prefix=".quantize-", dir=output_dir.parent))
        try:
            model = _prepared_for_quantizer(model, scratch)
            if self.config.backend == "onnxruntime":
                metrics = self._onnxruntime(input_dir, model, output_dir)
            else:
                metrics = self._neural_compressor(input_dir, model, output_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        produced = [p for p in output_dir.glob("*.onnx")]
        if len(produced) != 1:
            raise ConfigError(f"quantization wrote {[p.name for p in produced]} in {output_dir}")
        if produced[0].name != MODEL_FILE:
            produced[0].rename(output_dir / MODEL_FILE)
        return metrics

    def _calibration_rows(self, input_dir: Path, input_names: list[str]) -> dict[str, np.ndarray]:
        cfg = self.config.calibration
        ds = load_split(cfg)
        return encode(input_dir, ds[:], cfg, input_names)

    def _onnxruntime(self, input_dir: Path, model: Path, output_dir: Path) -> dict[str, Any]:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

        cfg = self.config
        kwargs: dict[str, Any] = {"is_static": cfg.mode == "static"}
        if cfg.per_channel is not None:
            kwargs["per_channel"] = cfg.per_channel
        if cfg.operators_to_quantize:
            kwargs["operators_to_quantize"] = list(cfg.operators_to_quantize)
        if cfg.nodes_to_exclude:
            kwargs["nodes_to_exclude"] = list(cfg.nodes_to_exclude)
        qconfig = getattr(AutoQuantizationConfig, cfg.preset)(**kwargs)
        quantizer = ORTQuantizer.from_pretrained(model.parent, file_name=model.name)
        ranges = None
        metrics: dict[str, Any] = {"format": str(qconfig.format.name), "per_channel": qconfig.per_channel}
        if cfg.mode == "static":
            import datasets
            import onnxruntime as ort

            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            feeds = self._calibration_rows(input_dir, [i.name for i in session.get_inputs()])
            feeds = complete_feeds(session, feeds)
            calib = datasets.Dataset.from_dict({k: v.tolist() for k, v in feeds.items()})
            method = {
                "minmax": AutoCalibrationConfig.minmax,
                "entropy": AutoCalibrationConfig.entropy,
                "percentile": AutoCalibrationConfig.percentiles,
            }[cfg.calibration_method]
            calib_config = method(calib)
            augmented = output_dir.parent / f".{output_dir.name}-augmented.onnx"
            try:
                ranges = quantizer.fit(
                    dataset=calib,
                    calibration_config=calib_config,
                    batch_size=cfg.batch_size,
                    onnx_augmented_model_name=augmented,
                    operators_to_quantize=qconfig.operators_to_quantize,
                )
            finally:
                augmented.unlink(missing_ok=True)
            metrics["calibration_samples"] = len(calib)
        quantizer.quantize(qconfig, output_dir, file_suffix="quantized", calibration_tensors_range=ranges)
        return metrics

    def _neural_compressor(self, input_dir: Path, model: Path, output_dir: Path) -> dict[str, Any]:
        try:
            from onnx_neural_compressor.quantization import config as inc_config
            from onnx_neural_compressor.quantization import quant_utils
            from onnx_neural_compressor.quantization import quantize as inc_quantize
        except ImportError as e:
            raise BackendUnavailableError(
                f"quantize backend 'neural-compressor' needs {INC_PACKAGE}, which failed to import ({e}): "
                f"{INC_FIX}"
            ) from e
        cfg = self.config
        options: dict[str, Any] = {
            "per_channel": True if cfg.per_channel is None else cfg.per_channel,
            "nodes_to_exclude": list(cfg.nodes_to_exclude or ()),
            # INC otherwise picks CUDA/DNNL when onnxruntime has them; the output is for CPU inference.
            "execution_provider": "CPUExecutionProvider",
        }
        if cfg.operators_to_quantize:
            options["op_types_to_quantize"] = list(cfg.operators_to_quantize)
        metrics: dict[str, Any] = {"backend": "neural-compressor", "mode": cfg.mode}
        if cfg.mode == "dynamic":
            config_class = inc_config.DynamicQuantConfig
            metrics["format"] = "QOperator"
        else:
            import onnxruntime as ort

            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
            feeds = complete_feeds(
                session, self._calibration_rows(input_dir, [i.name for i in session.get_inputs()])
            )
            del session
            reader = _Reader(feeds, cfg.batch_size)
            formats = quant_utils.QuantFormat
            fmt = formats.QDQ if cfg.quant_format == "qdq" else formats.QOperator
            config_class = inc_config.StaticQuantConfig
            options.update(
                calibration_data_reader=reader,
                calibrate_method={
                    "minmax": quant_utils.CalibrationMethod.MinMax,
                    "entropy": quant_utils.CalibrationMethod.Entropy,
                    "percentile": quant_utils.CalibrationMethod.Percentile,
                }[cfg.calibration_method],
                quant_format=fmt,
                # every batch of the reader (INC's default stops after 100)
                calibration_sampling_size=reader.num_batches,
            )
            metrics.update(format=fmt.name, calibration_samples=reader.n)
        try:
            qconfig = config_class(**options)
        except ValueError as e:  # INC checks the op types against the execution provider and format
            raise ConfigError(f"quantize backend 'neural-compressor' rejected the configuration: {e}") from e
        if not qconfig.op_types_to_quantize:
            # INC's entry points call exit(0) on an empty op type list; fail before that.
            raise ConfigError("quantize backend 'neural-compressor' has no op type to quantize")
        inc_quantize(str(model), str(output_dir / MODEL_FILE), qconfig)
        metrics["per_channel"] = options["per_channel"]
        metrics.update(quantized_node_counts(output_dir / MODEL_FILE))
        return metrics


def quantized_node_counts(path: Path) -> dict[str, Any]:
    """What Neural Compressor's quantization left in the ONNX model at ``path``.

    INC names every node it quantized ``<name>_quant`` (the integer kernel in QOperator format, the float
    op between ``DequantizeLinear`` and ``QuantizeLinear`` in QDQ format), and its "Quantization
    Statistics" log table counts those per original op type; this reads the same from the saved graph.

    Returns ``quantized_nodes`` (nodes computing in INT8), ``quantized_by_op_type`` (original op type ->
    count, e.g. ``MatMul`` for ``QLinearMatMul``/``MatMulInteger``) and ``quantized_op_types`` (op type ->
    count of the integer kernels and quantize / dequantize nodes in the graph).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    in_graph: dict[str, int] = {}
    by_origin: dict[str, int] = {}
    for node in graph.node:
        op = node.op_type
        if op.startswith("QLinear") or op in _INTEGER_OPS or op in _QDQ_OPS:
            in_graph[op] = in_graph.get(op, 0) + 1
        if node.name.endswith("_quant") and op not in _QDQ_OPS:
            origin = op.removeprefix("QLinear").removesuffix("Integer")
            origin = _ORIGIN_OPS.get(origin, origin)
            by_origin[origin] = by_origin.get(origin, 0) + 1
    return {
        "quantized_nodes": sum(by_origin.values()),
        "quantized_by_op_type": dict(sorted(by_origin.items())),
        "quantized_op_types": dict(sorted(in_graph.items())),
    }


def _prepared_for_quantizer(model: Path, scratch: Path) -> Path:
    """A copy of ``model`` in ``scratch`` that the quantizers can read (links to the folder's files when no
    repair is needed).

    Two repairs, each only when needed:

    - onnx-ir writes shape annotations for initializers. ONNX Runtime's dynamic quantizer rewrites
      ``Gemm(transB=1)`` into ``MatMul`` by transposing the weight in place and then re-runs shape
      inference, which fails on the stale annotation of the transposed weight ("Inferred shape and
      existing shape differ"). The annotations carry nothing the initializers do not, so they are
      dropped.
    - ONNX shape inference does not know ONNX Runtime's contrib ops (``Attention``,
      ``SkipLayerNormalization``, ... left by the ``optimize`` stage), so the tensors after them have no
      type and the quantizer stops ("Unable to find data type"). ONNX Runtime's symbolic shape
      inference knows them; its ``value_info`` is added.
    """
    import onnx

    header = onnx.load(str(model), load_external_data=False)
    names = {t.name for t in header.graph.initializer}
    stale = any(v.name in names for v in header.graph.value_info)
    contrib = any(n.domain == "com.microsoft" for n in header.graph.node)
    if not stale and not contrib:
        # ONNX Runtime's static calibration writes ``<model>-inferred.onnx`` beside the file it reads: give
        # it links in ``scratch``, so that the input folder is never written to (nor need be writable)
        for path in model.parent.iterdir():
            if path.is_file():
                (scratch / path.name).symlink_to(path.resolve())
        return scratch / model.name
    full = onnx.load(str(model))
    if contrib:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            full = SymbolicShapeInference.infer_shapes(full, auto_merge=True, guess_output_rank=True)
        except Exception as e:  # noqa: BLE001 - the tool raises bare Exceptions on unknown patterns
            raise ConfigError(
                f"{model}: ONNX Runtime's symbolic shape inference failed on a model with contrib ops "
                f"({type(e).__name__}: {e}); quantize before the optimize stage instead"
            ) from e
    kept = [v for v in full.graph.value_info if v.name not in names]
    del full.graph.value_info[:]
    full.graph.value_info.extend(kept)
    out = scratch / model.name
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    onnx.save(
        full, str(out), save_as_external_data=external, location=f"{model.name}_data" if external else None
    )
    if (model.parent / "config.json").is_file():
        shutil.copy2(model.parent / "config.json", scratch / "config.json")
    return out


class _Reader:
    """An ONNX Runtime / Neural Compressor calibration data reader over in-memory feeds."""

    def __init__(self, feeds: dict[str, np.ndarray], batch_size: int) -> None:
        self.feeds, self.batch_size = feeds, batch_size
        self.n = len(next(iter(feeds.values())))
        self.num_batches = -(-self.n // batch_size)
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.n:
            return None
        batch = {k: v[self.pos : self.pos + self.batch_size] for k, v in self.feeds.items()}
        self.pos += self.batch_size
        return batch

    def rewind(self) -> None:
        self.pos = 0
