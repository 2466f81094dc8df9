"""The small exception hierarchy of optimum-prune.

Every error raised on bad user input derives from :class:`PruningError` (itself a ``ValueError`` so
code written against Optimum's habit of raising ``ValueError`` keeps working) and says what is wrong,
where, and how to fix it.
"""

from __future__ import annotations


class PruningError(ValueError):
    """Base class of every error raised by optimum-prune."""


class InvalidModelError(PruningError):
    """The input folder or ONNX file is missing, unreadable or not a valid model."""


class UnsupportedOpError(PruningError):
    """An operator in a channel's path has no association rule, so its group cannot be pruned."""


class ConfigError(PruningError):
    """A configuration value is outside its allowed range or names something unknown."""


class CalibrationRequiredError(ConfigError):
    """A data-driven criterion was asked for without calibration data for the model (or file) it scores."""


class PlanMismatchError(PruningError):
    """A saved pruning plan does not match the model it is applied to."""


class ValidationError(PruningError):
    """A pruned model failed validation (ONNX checker or an ONNX Runtime run); nothing was written."""


class BackendUnavailableError(PruningError):
    """A stage or backend needs a package that is not installed (the message names it and the fix)."""


class StageError(PruningError):
    """A pipeline stage failed on its input folder (the message names the stage and the folder)."""


class StudentMismatchError(PruningError):
    """A PyTorch student built from a pruning plan does not reproduce the pruned ONNX model."""
