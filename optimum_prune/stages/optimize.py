"""``optimize``: ONNX Runtime graph optimisations and transformer fusions (Optimum's ``ORTOptimizer``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optimum_prune.errors import ConfigError
from optimum_prune.stages.base import MODEL_FILE, Stage, StageConfig, find_model_file

LEVELS = ("O1", "O2", "O3")


@dataclasses.dataclass
class OptimizeConfig(StageConfig):
    """Options of the ``optimize`` stage.

    Args:
        level: Optimum's ``AutoOptimizationConfig`` level: ``O1`` (basic graph optimisations), ``O2``
            (plus transformer fusions: Attention, SkipLayerNormalization, BiasGelu, ...), ``O3`` (plus
            approximate GELU). ``O4`` (fp16, GPU only) is not offered.
        options: further ``OptimizationConfig`` fields, e.g. ``{"disable_attention_fusion": true}``.
    """

    level: str = "O2"
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"optimize level must be one of {LEVELS}; got {self.level!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"optimize options must be a mapping; got {self.options!r}")


class OptimizeStage(Stage):
    """Optimise the folder's model; works on dense and on pruned models (before or after ``prune``)."""

    name = "optimize"
    config_class = OptimizeConfig

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

        model = find_model_file(input_dir)
        try:
            opt_config = AutoOptimizationConfig.with_optimization_level(
                self.config.level, for_gpu=False, **self.config.options
            )
        except TypeError as e:
            raise ConfigError(f"optimize options {sorted(self.config.options)}: {e}") from e
        optimizer = ORTOptimizer.from_pretrained(input_dir, file_names=[model.name])
        with _quiet_pruned_attention_warning():
            optimizer.optimize(opt_config, output_dir, file_suffix="")
        produced = sorted(output_dir.glob("*.onnx"))
        if len(produced) != 1:
            raise ConfigError(f"ORTOptimizer wrote {[p.name for p in produced]} in {output_dir}")
        if produced[0].name != MODEL_FILE:
            produced[0].rename(output_dir / MODEL_FILE)
        return {"fused_ops": _contrib_ops(output_dir / MODEL_FILE)}


class _PrunedAttentionWarning(logging.Filter):
    """Drops ONNX Runtime's "Input hidden size (N) is not same as weight matrix dimension of q,k,v (M)".

    Optimum passes the config's hidden size to the attention fusion, which reads each layer's head
    count and q/k/v width from the graph itself; after head pruning the q/k/v width is smaller than the
    hidden size, the fusion is still right (it sets ``qkv_hidden_sizes``), and the warning (which asks
    for a "correct" hidden size) would only mislead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Input hidden size (%d) is not same as weight matrix")


@contextlib.contextmanager
def _quiet_pruned_attention_warning() -> Iterator[None]:
    # ONNX Runtime's transformers package puts its folder on sys.path and imports its modules top-level
    # ("fusion_attention"); under other import paths the module is "onnxruntime.transformers.*".
    names = ("fusion_attention", "onnxruntime.transformers.fusion_attention")
    loggers = [logging.getLogger(n) for n in names]
    quiet = _PrunedAttentionWarning()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _contrib_ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
