"""optimum-prune: structured pruning of ONNX models for Hugging Face Optimum.

Public API::

    from optimum_prune import ORTPruner, PruningConfig, verify
    from optimum_prune import CalibrationData, CalibrationConfig  # for data-driven criteria
    from optimum_prune import RecoveryConfig  # least-squares repair options (PruningConfig(recover=...))
"""

from optimum_prune.calibration import CalibrationConfig, CalibrationData
from optimum_prune.configuration import PruningConfig, RecoveryConfig
from optimum_prune.errors import (
    ConfigError,
    InvalidModelError,
    PlanMismatchError,
    PruningError,
    UnsupportedOpError,
    ValidationError,
)
from optimum_prune.plan import PruningPlan
from optimum_prune.pruner import AnalysisReport, ORTPruner
from optimum_prune.verify import VerificationResult, verify

__all__ = [
    "AnalysisReport",
    "CalibrationConfig",
    "CalibrationData",
    "ConfigError",
    "InvalidModelError",
    "ORTPruner",
    "PlanMismatchError",
    "PruningConfig",
    "PruningError",
    "PruningPlan",
    "RecoveryConfig",
    "UnsupportedOpError",
    "ValidationError",
    "VerificationResult",
    "verify",
]
__version__ = "0.1.0"
