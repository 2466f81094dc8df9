"""Knowledge distillation: a pruned PyTorch student built from a pruning, trained from the dense teacher.

- :func:`build_student`: the Hugging Face model a pruned ONNX model was exported from, with the pruned
  shapes and weights, checked against the pruned ONNX model.
- :func:`save_student` / :func:`load_pruned`: a student folder and its reload.
- :class:`DistillationConfig` / :func:`distill`: KD training with the Hugging Face ``Trainer``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "StudentReport": "optimum_prune.distill.student",
    "build_student": "optimum_prune.distill.student",
    "compare_with_onnx": "optimum_prune.distill.student",
    "load_pruned": "optimum_prune.distill.saving",
    "save_student": "optimum_prune.distill.saving",
    "DistillationConfig": "optimum_prune.distill.training",
    "DistillationLoss": "optimum_prune.distill.loss",
    "distill": "optimum_prune.distill.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optimum_prune.distill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
