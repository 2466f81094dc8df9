"""``optimize``: ONNX Runtime graph optimisations and transformer fusions (Optimum's ``ORTOptimizer``)."""

from __future__ import annotations

import dataclasses
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
        optimizer.optimize(opt_config, output_dir, file_suffix="")
        produced = sorted(output_dir.glob("*.onnx"))
        if len(produced) != 1:
            raise ConfigError(f"ORTOptimizer wrote {[p.name for p in produced]} in {output_dir}")
        if produced[0].name != MODEL_FILE:
            produced[0].rename(output_dir / MODEL_FILE)
        return {"fused_ops": _contrib_ops(output_dir / MODEL_FILE)}


def _contrib_ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
