"""``evaluate``: the quality of the folder's model.

Metrics (``metric: auto`` picks by task):

- ``fidelity``: agreement with a reference model (by default the pipeline's first model, the dense
  export) on the same inputs: cosine similarity of mean-pooled embeddings (feature extraction) or of
  logits, and top-1 agreement for logits. Runs on a ``datasets`` split or, without one, on random inputs.
- ``accuracy``: top-1 accuracy on a labelled split (classification).
- ``perplexity``: next-token perplexity on a text split (causal language models).

Models run under ONNX Runtime on CPU. Metrics are computed with numpy (the ``evaluate`` package loads
its metric scripts from the Hub, which is not reachable offline).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from optimum_prune.errors import ConfigError
from optimum_prune.stages.base import Stage, StageConfig, find_model_file, one_of, positive_int, read_report
from optimum_prune.stages.data import (
    DatasetConfig,
    class_names,
    complete_feeds,
    encode,
    labels_of,
    load_split,
    synthetic_inputs,
)
from optimum_prune.stages.tasks import infer_task, normalize_task

METRICS = ("auto", "fidelity", "accuracy", "perplexity")
CLASSIFICATION_TASKS = ("text-classification", "image-classification", "audio-classification",
                        "zero-shot-classification", "multiple-choice")
"""Tasks whose output is one score per class per example: what ``accuracy`` compares with the labels."""


@dataclasses.dataclass
class EvaluateConfig(StageConfig):
    """Options of the ``evaluate`` stage.

    Args:
        metric: ``auto``, ``fidelity``, ``accuracy`` or ``perplexity``.
        task: the model's task (``None``: from the export stage or ``config.json``).
        dataset: the split to evaluate on (a :class:`DatasetConfig` mapping or a built-in name);
            ``None``: random inputs (fidelity only).
        reference: folder of the reference model for fidelity: ``"baseline"`` (the first model of the
            pipeline), a path, or ``None`` (no fidelity).
        batch_size: examples per ONNX Runtime call.
        num_samples: random inputs drawn when there is no dataset.
        sequence_length: length of random text inputs.
    """

    metric: str = "auto"
    task: str | None = None
    dataset: DatasetConfig | dict | str | None = None
    reference: str | None = "baseline"
    batch_size: int = 16
    num_samples: int = 16
    sequence_length: int = 32

    def __post_init__(self) -> None:
        one_of(self.metric, METRICS, "evaluate metric")
        positive_int(self.batch_size, "evaluate batch_size")
        positive_int(self.num_samples, "evaluate num_samples")
        positive_int(self.sequence_length, "evaluate sequence_length")
        self.dataset = DatasetConfig.coerce(self.dataset, "evaluate dataset")
        if self.metric in ("accuracy", "perplexity") and self.dataset is None:
            raise ConfigError(
                f"evaluate metric {self.metric!r} needs a dataset, e.g. dataset: "
                "{name: rotten_tomatoes, split: test}"
            )
        if self.metric == "fidelity" and self.reference is None:
            raise ConfigError("evaluate metric 'fidelity' needs a reference ('baseline' or a folder)")


def baseline_folder(folder: Path) -> Path | None:
    """The first model of the pipeline that led to ``folder``: the export output, else the first input."""
    stages = read_report(folder)
    for entry in stages:
        if entry.get("stage") == "export" and entry.get("output_dir"):
            return Path(entry["output_dir"])
    for entry in stages:
        if entry.get("input_dir"):
            return Path(entry["input_dir"])
    return None


class EvaluateStage(Stage):
    """Measure the quality of the folder's model; the output folder links the model unchanged."""

    name = "evaluate"
    config_class = EvaluateConfig
    produces_model = False

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        import onnxruntime as ort

        cfg = self.config
        task = normalize_task(cfg.task) if cfg.task else (infer_task(input_dir) or "feature-extraction")
        metric = cfg.metric
        if metric == "auto":
            if task == "text-generation" and cfg.dataset is not None:
                metric = "perplexity"
            elif task in CLASSIFICATION_TASKS and cfg.dataset is not None and cfg.dataset.label_column:
                metric = "accuracy"
            else:
                metric = "fidelity"
        if metric == "perplexity" and task != "text-generation":
            raise ConfigError(f"evaluate perplexity is for text-generation models; {input_dir} is {task}: "
                              "use metric accuracy (classifiers) or fidelity")
        reference = self._reference(input_dir)
        if metric == "fidelity" and reference is None:
            raise ConfigError(
                f"evaluate: no reference model for fidelity of {input_dir} (reference="
                f"{cfg.reference!r}); set reference: PATH or use metric accuracy/perplexity"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(
            str(find_model_file(input_dir)), opts, providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in session.get_inputs()]
        labels = None
        if cfg.dataset is not None:
            ds = load_split(cfg.dataset)
            rows = ds[:]
            batches = [
                encode(input_dir, {k: v[i : i + cfg.batch_size] for k, v in rows.items()}, cfg.dataset, names)
                for i in range(0, len(ds), cfg.batch_size)
            ]
            if cfg.dataset.label_column and cfg.dataset.label_column in rows:
                column = cfg.dataset.label_column
                labels = labels_of(input_dir, rows[column], class_names(ds, column))
            source = f"{cfg.dataset.name}:{cfg.dataset.split}"
        else:
            n = cfg.num_samples
            batches = [
                synthetic_inputs(
                    session, input_dir, batch=min(cfg.batch_size, n - i), sequence=cfg.sequence_length, seed=i
                )
                for i in range(0, n, cfg.batch_size)
            ]
            source = "random inputs"
        batches = [complete_feeds(session, b) for b in batches]
        outputs = [session.run(None, b)[0] for b in batches]
        result: dict[str, Any] = {
            "task": task,
            "metric": metric,
            "data": source,
            "samples": int(sum(len(next(iter(b.values()))) for b in batches)),
        }
        if metric == "accuracy":
            if labels is None:
                raise ConfigError(
                    f"evaluate accuracy: dataset has no label column {cfg.dataset.label_column!r}"
                )
            if any(o.ndim != 2 for o in outputs):
                raise ConfigError(
                    f"evaluate accuracy compares one prediction per example with its label; the {task} model "
                    f"{input_dir} outputs {outputs[0].shape} per batch (classes per token?): use metric "
                    f"fidelity, or accuracy on a {' / '.join(CLASSIFICATION_TASKS[:3])} model")
            pred = np.concatenate([o.argmax(-1) for o in outputs])
            result["accuracy"] = float((pred == labels).mean())
            result["quality"] = {"name": "accuracy", "value": result["accuracy"], "higher_is_better": True}
        elif metric == "perplexity":
            result["perplexity"] = _perplexity(outputs, batches)
            result["quality"] = {
                "name": "perplexity",
                "value": result["perplexity"],
                "higher_is_better": False,
            }
        if reference is not None:
            ref_session = ort.InferenceSession(
                str(find_model_file(reference)), opts, providers=["CPUExecutionProvider"]
            )
            ref_outputs = [
                ref_session.run(
                    None,
                    complete_feeds(
                        ref_session, {k: v for k, v in b.items() if k in _input_names(ref_session)}
                    ),
                )[0]
                for b in batches
            ]
            fid = _fidelity(outputs, ref_outputs, batches, task)
            result["fidelity"] = {"reference": str(reference), **fid}
            if metric == "fidelity":
                result["quality"] = {
                    "name": "cosine to reference",
                    "value": fid["cosine_mean"],
                    "higher_is_better": True,
                }
        return result

    def _reference(self, folder: Path) -> Path | None:
        ref = self.config.reference
        if ref is None:
            return None
        path = baseline_folder(folder) if ref == "baseline" else Path(ref)
        if path is None or not path.is_dir():
            if ref == "baseline":
                return None
            raise ConfigError(f"evaluate reference folder not found: {path}")
        return path.resolve()


def _input_names(session) -> set[str]:
    return {i.name for i in session.get_inputs()}


def _pooled(out: np.ndarray, feeds: dict[str, np.ndarray], task: str) -> np.ndarray:
    """Rows to compare: a feature extractor's mean-pooled embedding per example, one row per real token for
    other per-token outputs (token classification; batches padded to different lengths), one row per
    position for a language model, else one per example."""
    out = out.astype(np.float64)
    mask = feeds.get("attention_mask")
    if task == "feature-extraction" and out.ndim == 3 and mask is not None:
        weights = mask[..., None].astype(np.float64)
        return (out * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
    if task == "text-generation":
        return out.reshape(-1, out.shape[-1])
    if out.ndim == 3 and mask is not None and mask.shape == out.shape[:2]:
        return out[mask.astype(bool)]
    return out.reshape(out.shape[0], -1)


def _fidelity(
    outputs: list[np.ndarray], refs: list[np.ndarray], batches: list[dict], task: str
) -> dict[str, float]:
    a = np.concatenate([_pooled(o, b, task) for o, b in zip(outputs, batches, strict=True)])
    r = np.concatenate([_pooled(o, b, task) for o, b in zip(refs, batches, strict=True)])
    cos = (a * r).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(r, axis=-1), 1e-12, None)
    result = {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_error": float(np.abs(a - r).max()),
    }
    if task != "feature-extraction":
        result["top1_agreement"] = float((a.argmax(-1) == r.argmax(-1)).mean())
    return result


def _perplexity(outputs: list[np.ndarray], batches: list[dict]) -> float:
    nll, count = 0.0, 0
    for logits, feeds in zip(outputs, batches, strict=True):
        ids = feeds["input_ids"]
        mask = feeds.get("attention_mask", np.ones_like(ids)).astype(bool)
        logits = logits[:, :-1].astype(np.float64)
        target = ids[:, 1:]
        valid = mask[:, 1:] & mask[:, :-1]
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
        nll -= float(picked[valid].sum())
        count += int(valid.sum())
    if count == 0:
        raise ConfigError("evaluate perplexity: no token pairs (texts of one token?)")
    return float(np.exp(nll / count))
