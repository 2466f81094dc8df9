"""``distill``: a pruned student learns from the dense teacher, then is exported back to ONNX.

The input is a pruned ONNX folder (``pruning_plan.json``). The stage finds the Hugging Face model it came
from (the ``export`` stage's input, or ``teacher:``) and the dense export (the ``prune`` stage's input, or
``dense:``), builds the PyTorch student with the pruned shapes and weights and checks it against the
pruned ONNX model, trains it by knowledge distillation with the Hugging Face ``Trainer`` on a ``datasets``
split, saves it under ``student/`` (reload with :func:`optimum_prune.load_pruned`) and exports it with
optimum-onnx as the folder's ``model.onnx``, checked against the trained student.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optimum_prune.distill.training import DistillationConfig
from optimum_prune.errors import ConfigError, InvalidModelError
from optimum_prune.plan import PLAN_FILE, PruningPlan
from optimum_prune.stages.base import MODEL_FILE, MODEL_SUFFIXES, Stage, StageConfig, read_report
from optimum_prune.stages.data import DatasetConfig, load_split

logger = logging.getLogger(__name__)

STUDENT_DIR = "student"
_TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(DistillationConfig))


@dataclasses.dataclass
class DistillStageConfig(StageConfig, DistillationConfig):
    """Options of the ``distill`` stage: every :class:`~optimum_prune.distill.DistillationConfig` field
    (temperature, loss weights, learning rate, steps, ``freeze``, ...) plus:

    Args:
        dataset: the training split (a :class:`DatasetConfig` mapping); ``label_column`` is used when
            ``alpha_ce`` > 0.
        eval_samples: examples of ``dataset`` held out to measure the distillation loss before and after.
        teacher: the dense Hugging Face folder (default: the input of the run's ``export`` stage).
        dense: the dense ONNX folder the pruning started from (default: the input of the ``prune`` stage).
        task: export task of the student (default: the task the ``export`` stage used).
        atol: largest absolute difference accepted between the student and the pruned ONNX model (and
            between the trained student and its export).
        opset: ONNX opset of the student's export (default: the exporter's).
    """

    dataset: DatasetConfig | dict | str = dataclasses.field(
        default_factory=lambda: DatasetConfig(name="rotten_tomatoes", split="train", num_samples=1024))
    eval_samples: int = 64
    teacher: str | None = None
    dense: str | None = None
    task: str | None = None
    atol: float = 1e-4
    opset: int | None = None

    def __post_init__(self) -> None:
        self.dataset = DatasetConfig.coerce(self.dataset, "distill dataset")
        if self.dataset is None:
            raise ConfigError("distill needs a dataset, e.g. dataset: {name: rotten_tomatoes, split: train}")
        if isinstance(self.eval_samples, bool) or not isinstance(self.eval_samples, int) \
                or self.eval_samples < 0:
            raise ConfigError(f"distill eval_samples must be an integer >= 0; got {self.eval_samples!r}")
        if self.eval_samples >= self.dataset.num_samples:
            raise ConfigError(f"distill eval_samples ({self.eval_samples}) must be smaller than the "
                              f"dataset's num_samples ({self.dataset.num_samples})")
        if not isinstance(self.atol, int | float) or not self.atol > 0:
            raise ConfigError(f"distill atol must be > 0; got {self.atol!r}")
        DistillationConfig.__post_init__(self)  # the training options

    def training(self) -> DistillationConfig:
        """The training options as a :class:`DistillationConfig`."""
        return DistillationConfig(**{k: getattr(self, k) for k in _TRAINING_KEYS})


def _stage_input(entries: list[dict], stage: str) -> dict | None:
    for entry in reversed(entries):
        if entry.get("stage") == stage and not entry.get("skipped"):
            return entry
    return None


def _hidden_kept(plan: PruningPlan) -> list[int] | None:
    hidden = [g for g in plan.groups if g.kind == "hidden" and len(g.kept) < g.units]
    if len(hidden) != 1 or hidden[0].unit_size != 1:
        return None
    return sorted(hidden[0].kept)


def _pruned_config_updates(dense_dir: Path, pruned_dir: Path) -> dict[str, Any]:
    """The ``config.json`` values the pruner changed (head counts, FFN widths, KV heads)."""
    try:
        dense = json.loads((dense_dir / "config.json").read_text())
        pruned = json.loads((pruned_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in pruned.items() if k in dense and dense[k] != v and isinstance(v, int | float)}


class DistillStage(Stage):
    """Build the pruned PyTorch student, distil it from the dense teacher, export it to ONNX."""

    name = "distill"
    config_class = DistillStageConfig

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        import torch

        from optimum_prune.distill.data import encode_examples
        from optimum_prune.distill.saving import save_student, tokenizer_files
        from optimum_prune.distill.structure import HEAD_ATTRS
        from optimum_prune.distill.student import build_student, compare_with_onnx
        from optimum_prune.distill.training import distill

        cfg = self.config
        if not (input_dir / PLAN_FILE).is_file():
            raise ConfigError(f"distill needs a pruned folder ({PLAN_FILE}); {input_dir} has none: put a "
                              "`prune` stage before `distill`")
        entries = read_report(input_dir)
        export = _stage_input(entries, "export")
        prune = _stage_input(entries, "prune")
        teacher_dir = Path(cfg.teacher) if cfg.teacher else (Path(export["input_dir"]) if export else None)
        dense_dir = Path(cfg.dense) if cfg.dense else (Path(prune["input_dir"]) if prune else None)
        if teacher_dir is None or not (teacher_dir / "config.json").is_file():
            raise ConfigError(f"distill needs the dense Hugging Face model: set teacher: <folder> (found "
                              f"{teacher_dir}; the run's report names no exported Hugging Face folder)")
        if dense_dir is None or not dense_dir.is_dir():
            raise ConfigError(f"distill needs the dense ONNX folder the pruning started from: set dense: "
                              f"<folder> (found {dense_dir})")
        task = cfg.task or (export or {}).get("task")
        if not task:
            from optimum_prune.stages.tasks import infer_task

            task = infer_task(input_dir)
        from optimum.exporters.tasks import TasksManager

        from optimum_prune.stages.tasks import normalize_task

        model_class = TasksManager.get_model_class_for_task(normalize_task(task), framework="pt")
        teacher = model_class.from_pretrained(teacher_dir)
        student, build = build_student(teacher, dense_dir, input_dir, atol=cfg.atol)
        for key, value in _pruned_config_updates(dense_dir, input_dir).items():
            if build.pruned_heads and key in HEAD_ATTRS:
                continue  # transformers counts the heads of every layer from config.pruned_heads
            setattr(student.config, key, value)

        data = load_split(cfg.dataset)
        label_column = cfg.dataset.label_column if cfg.alpha_ce else None
        examples, collator = encode_examples(
            teacher_dir, data, student, text_column=cfg.dataset.text_column,
            text_pair_column=cfg.dataset.text_pair_column, image_column=cfg.dataset.image_column,
            label_column=label_column, max_length=cfg.dataset.max_length)
        held = examples[len(examples) - cfg.eval_samples:] if cfg.eval_samples else None
        train = examples[:len(examples) - cfg.eval_samples]
        plan = PruningPlan.load(input_dir / PLAN_FILE)
        result = distill(student, teacher, train, cfg.training(), collator=collator, eval_examples=held,
                         hidden_kept=_hidden_kept(plan))
        del teacher
        student = student.to("cpu").eval()

        save_student(student, output_dir / STUDENT_DIR,
                     extra_files=[*tokenizer_files(teacher_dir), input_dir / PLAN_FILE],
                     info={"task": task, "build": build.to_dict(), "distillation": result.to_dict()})
        with tempfile.TemporaryDirectory(prefix=".distill-export-", dir=output_dir.parent) as scratch:
            from optimum.exporters.onnx import onnx_export_from_model

            with torch.no_grad():
                onnx_export_from_model(student, scratch, task=task, opset=cfg.opset, do_validation=False)
            onnx_files = sorted(p.name for p in Path(scratch).glob("*.onnx"))
            if onnx_files != [MODEL_FILE]:
                raise InvalidModelError(f"the student's export ({task}) wrote {onnx_files}; the distill "
                                        "stage needs one model.onnx")
            for item in Path(scratch).iterdir():
                if item.is_file() and (item.name.endswith(MODEL_SUFFIXES) or item.name == "config.json"):
                    shutil.move(str(item), output_dir / item.name)
        export_diff = compare_with_onnx(student, output_dir / MODEL_FILE, atol=cfg.atol)
        native = json.loads((output_dir / STUDENT_DIR / "student.json").read_text())["native"]
        return {
            "teacher": str(teacher_dir),
            "dense": str(dense_dir),
            "task": task,
            "student": build.to_dict(),
            "student_native_reload": native,
            "train_examples": len(train),
            "eval_examples": len(held or []),
            "distillation": result.to_dict(),
            "export_max_abs_diff": export_diff,
        }
