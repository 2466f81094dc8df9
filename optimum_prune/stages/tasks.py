"""Which task a model folder serves, and the ``ORTModelForXxx`` class that loads it."""

from __future__ import annotations

import json
from pathlib import Path

from optimum_prune.stages.base import read_report

_ARCH_SUFFIX_TASKS = (
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForImageClassification", "image-classification"),
    ("ForImageClassificationWithTeacher", "image-classification"),
)

ORT_MODEL_CLASSES = {
    "feature-extraction": "ORTModelForFeatureExtraction",
    "text-generation": "ORTModelForCausalLM",
    "text-classification": "ORTModelForSequenceClassification",
    "token-classification": "ORTModelForTokenClassification",
    "question-answering": "ORTModelForQuestionAnswering",
    "fill-mask": "ORTModelForMaskedLM",
    "image-classification": "ORTModelForImageClassification",
}


def normalize_task(task: str) -> str:
    """``text-generation-with-past`` -> ``text-generation`` (and the other ``-with-past`` variants)."""
    return task.removesuffix("-with-past")


def infer_task(folder: Path) -> str | None:
    """The task of a model folder: the one ``export`` recorded, else guessed from ``config.json``."""
    for entry in reversed(read_report(folder)):
        if entry.get("stage") == "export" and entry.get("task"):
            return normalize_task(entry["task"])
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    archs = json.loads(path.read_text()).get("architectures") or []
    for arch in archs:
        for suffix, task in _ARCH_SUFFIX_TASKS:
            if arch.endswith(suffix):
                return task
    return "feature-extraction" if archs else None


def ort_model_class(task: str):
    """The ``optimum.onnxruntime`` model class for ``task`` (``ORTModelForFeatureExtraction``, ...)."""
    import optimum.onnxruntime as ort

    name = ORT_MODEL_CLASSES.get(normalize_task(task))
    if name is None:
        from optimum_prune.errors import ConfigError

        raise ConfigError(f"no ORTModel class known for task {task!r}; known: {sorted(ORT_MODEL_CLASSES)}")
    return getattr(ort, name)
