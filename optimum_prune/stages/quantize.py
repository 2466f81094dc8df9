"""``quantize``: INT8 with ONNX Runtime (Optimum's ``ORTQuantizer``) or Intel Neural Compressor.

Backends:

- ``onnxruntime``: dynamic (weights INT8, activations quantized at run time) or static (activations
  calibrated on a ``datasets`` split) through ``ORTQuantizer`` and ``AutoQuantizationConfig`` presets.
- ``neural-compressor``: Intel Neural Compressor's ONNX API, the ``onnx-neural-compressor`` package.
  That package requires ``numpy<2`` while this project runs on numpy 2, so it is an optional extra; the
  stage checks for it when configured and names the package and the fix when it is missing.
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
INC_PACKAGE = "onnx-neural-compressor"
INC_FIX = (
    f"install it with `pip install {INC_PACKAGE}` in an environment with numpy<2 (it pins numpy<2; this "
    "environment has numpy 2), or use backend: onnxruntime"
)


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
            model = _without_initializer_value_info(model, scratch)
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
            from onnx_neural_compressor.quantization import quantize as inc_quantize
        except ImportError as e:
            raise BackendUnavailableError(
                f"quantize backend 'neural-compressor' needs {INC_PACKAGE}: {e}. {INC_FIX}"
            ) from e
        cfg = self.config
        out = output_dir / MODEL_FILE
        if cfg.mode == "dynamic":
            inc_quantize(str(model), str(out), inc_config.DynamicQuantConfig())
            return {"format": "QOperator"}
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feeds = complete_feeds(
            session, self._calibration_rows(input_dir, [i.name for i in session.get_inputs()])
        )
        reader = _Reader(feeds, cfg.batch_size)
        inc_quantize(str(model), str(out), inc_config.StaticQuantConfig(reader))
        return {"format": "QOperator", "calibration_samples": len(next(iter(feeds.values())))}


def _without_initializer_value_info(model: Path, scratch: Path) -> Path:
    """``model``, or a copy in ``scratch`` without ``value_info`` entries for initializers.

    onnx-ir writes shape annotations for initializers. ONNX Runtime's dynamic quantizer rewrites
    ``Gemm(transB=1)`` into ``MatMul`` by transposing the weight in place and then re-runs shape
    inference, which fails on the stale annotation of the transposed weight ("Inferred shape and
    existing shape differ"). The annotations carry nothing the initializers do not, so they are dropped.
    """
    import onnx

    header = onnx.load(str(model), load_external_data=False)
    names = {t.name for t in header.graph.initializer}
    if not any(v.name in names for v in header.graph.value_info):
        return model
    full = onnx.load(str(model))
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
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.n:
            return None
        batch = {k: v[self.pos : self.pos + self.batch_size] for k, v in self.feeds.items()}
        self.pos += self.batch_size
        return batch

    def rewind(self) -> None:
        self.pos = 0
