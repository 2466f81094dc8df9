"""optimum-prune: structured pruning of ONNX models for Hugging Face Optimum.

Public API::

    from optimum_prune import ORTPruner, PruningConfig, verify
    from optimum_prune import CalibrationData, CalibrationConfig  # for data-driven criteria
    from optimum_prune import RecoveryConfig  # least-squares repair options (PruningConfig(recover=...))
    from optimum_prune import Pipeline  # export -> prune -> optimize -> quantize -> evaluate -> benchmark
    from optimum_prune import load_pruned  # a distilled PyTorch student (the distill stage's student/)

Names are imported on first use (PEP 562), so ``optimum-cli``, which imports every registered command
module at start-up, does not pay for ONNX, onnx-ir and numpy unless a ``prune`` command runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CalibrationConfig": "optimum_prune.calibration",
    "CalibrationData": "optimum_prune.calibration",
    "AnalysisReport": "optimum_prune.pruner",
    "ORTPruner": "optimum_prune.pruner",
    "MultiFilePruner": "optimum_prune.multifile",
    "PruningConfig": "optimum_prune.configuration",
    "RecoveryConfig": "optimum_prune.configuration",
    "PruningPlan": "optimum_prune.plan",
    "VerificationResult": "optimum_prune.verify",
    "verify": "optimum_prune.verify",
    "Pipeline": "optimum_prune.pipeline",
    "load_pruned": "optimum_prune.distill.saving",
    "StudentMismatchError": "optimum_prune.errors",
    "Stage": "optimum_prune.stages",
    "StageRegistry": "optimum_prune.stages",
    "BackendUnavailableError": "optimum_prune.errors",
    "ConfigError": "optimum_prune.errors",
    "InvalidModelError": "optimum_prune.errors",
    "PlanMismatchError": "optimum_prune.errors",
    "PruningError": "optimum_prune.errors",
    "StageError": "optimum_prune.errors",
    "UnsupportedOpError": "optimum_prune.errors",
    "ValidationError": "optimum_prune.errors",
}

if TYPE_CHECKING:
    from optimum_prune.calibration import CalibrationConfig, CalibrationData
    from optimum_prune.configuration import PruningConfig, RecoveryConfig
    from optimum_prune.distill.saving import load_pruned
    from optimum_prune.errors import (
        BackendUnavailableError,
        ConfigError,
        InvalidModelError,
        PlanMismatchError,
        PruningError,
        StageError,
        StudentMismatchError,
        UnsupportedOpError,
        ValidationError,
    )
    from optimum_prune.multifile import MultiFilePruner
    from optimum_prune.pipeline import Pipeline
    from optimum_prune.plan import PruningPlan
    from optimum_prune.pruner import AnalysisReport, ORTPruner
    from optimum_prune.stages import Stage, StageRegistry
    from optimum_prune.verify import VerificationResult, verify

__all__ = [
    "AnalysisReport",
    "BackendUnavailableError",
    "CalibrationConfig",
    "CalibrationData",
    "ConfigError",
    "InvalidModelError",
    "MultiFilePruner",
    "ORTPruner",
    "Pipeline",
    "PlanMismatchError",
    "PruningConfig",
    "PruningError",
    "PruningPlan",
    "RecoveryConfig",
    "Stage",
    "StageError",
    "StageRegistry",
    "StudentMismatchError",
    "UnsupportedOpError",
    "ValidationError",
    "VerificationResult",
    "load_pruned",
    "verify",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optimum_prune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
