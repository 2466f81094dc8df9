"""Pipeline stages: each reads a model folder, writes a new one and appends its metrics to ``report.json``.

Built-in stages (recipe names): ``export``, ``prune``, ``optimize``, ``quantize``, ``evaluate``,
``benchmark``, ``distill``. Third-party stages register through the entry point group ``optimum_prune.stages``
(see :mod:`optimum_prune.stages.registry`). Stage classes are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from optimum_prune.stages.base import MODEL_FILE, REPORT_FILE, Stage, StageConfig, read_report, write_report
from optimum_prune.stages.registry import BUILTIN_STAGES, ENTRY_POINT_GROUP, StageRegistry, default_registry

if TYPE_CHECKING:
    from optimum_prune.stages.benchmark import BenchmarkConfig, BenchmarkStage
    from optimum_prune.stages.data import DatasetConfig
    from optimum_prune.stages.distill import DistillStage, DistillStageConfig
    from optimum_prune.stages.evaluate import EvaluateConfig, EvaluateStage
    from optimum_prune.stages.export import ExportConfig, ExportStage
    from optimum_prune.stages.optimize import OptimizeConfig, OptimizeStage
    from optimum_prune.stages.prune import PruneStage, PruneStageConfig
    from optimum_prune.stages.quantize import QuantizeConfig, QuantizeStage

_LAZY = {
    "BenchmarkConfig": "benchmark",
    "BenchmarkStage": "benchmark",
    "DatasetConfig": "data",
    "DistillStage": "distill",
    "DistillStageConfig": "distill",
    "EvaluateConfig": "evaluate",
    "EvaluateStage": "evaluate",
    "ExportConfig": "export",
    "ExportStage": "export",
    "OptimizeConfig": "optimize",
    "OptimizeStage": "optimize",
    "PruneStage": "prune",
    "PruneStageConfig": "prune",
    "QuantizeConfig": "quantize",
    "QuantizeStage": "quantize",
}

__all__ = [
    "BUILTIN_STAGES",
    "BenchmarkConfig",
    "BenchmarkStage",
    "DatasetConfig",
    "DistillStage",
    "DistillStageConfig",
    "ENTRY_POINT_GROUP",
    "EvaluateConfig",
    "EvaluateStage",
    "ExportConfig",
    "ExportStage",
    "MODEL_FILE",
    "OptimizeConfig",
    "OptimizeStage",
    "PruneStage",
    "PruneStageConfig",
    "QuantizeConfig",
    "QuantizeStage",
    "REPORT_FILE",
    "Stage",
    "StageConfig",
    "StageRegistry",
    "default_registry",
    "read_report",
    "write_report",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'optimum_prune.stages' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"optimum_prune.stages.{module}"), name)
    globals()[name] = value
    return value
