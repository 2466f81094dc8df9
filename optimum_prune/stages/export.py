"""``export``: a Hugging Face model folder to an ONNX folder with optimum-onnx's ``main_export``."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any

from optimum_prune.errors import ConfigError, InvalidModelError
from optimum_prune.stages.base import (
    MODEL_FILE,
    Stage,
    StageConfig,
    find_model_file,
    has_onnx_model,
    link_or_copy,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ExportConfig(StageConfig):
    """Options of the ``export`` stage.

    Args:
        task: any task optimum-onnx supports (``"auto"`` infers it from the model), e.g.
            ``feature-extraction``, ``text-classification``, ``text-generation-with-past``,
            ``image-classification``.
        opset: ONNX opset (``None``: the exporter's default for the architecture).
        do_validation: let the exporter compare ONNX Runtime outputs with PyTorch.
        trust_remote_code: allow custom modelling code from the model folder.
        options: further keyword arguments of ``optimum.exporters.onnx.main_export`` (checked against
            its signature), e.g. ``{"no_post_process": true}``.
    """

    task: str = "auto"
    opset: int | None = None
    do_validation: bool = False
    trust_remote_code: bool = False
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ConfigError(
                f"export task must be a task name such as 'feature-extraction'; got {self.task!r}"
            )
        if self.opset is not None and (not isinstance(self.opset, int) or self.opset < 7):
            raise ConfigError(f"export opset must be an integer >= 7; got {self.opset!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"export options must be a mapping; got {self.options!r}")
        reserved = {"model_name_or_path", "output", "task", "opset", "do_validation", "trust_remote_code"}
        clash = sorted(reserved & set(self.options))
        if clash:
            raise ConfigError(f"export options {clash} are stage keys; set them directly")


class ExportStage(Stage):
    """Export a Hugging Face folder (``config.json`` + weights + tokenizer) to ``model.onnx``.

    When the input already holds an ONNX model, it is passed through unchanged and the report says so,
    so one recipe serves Hugging Face and ONNX folders alike.
    """

    name = "export"
    config_class = ExportConfig

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        cfg = self.config
        if has_onnx_model(input_dir):
            model = find_model_file(input_dir)
            for item in input_dir.iterdir():
                if (
                    item.is_file()
                    and item.name.startswith(model.stem)
                    and item.suffix != ".onnx"
                    and item.name.endswith(("_data", ".data"))
                ):
                    link_or_copy(item, output_dir / item.name)
            link_or_copy(model, output_dir / MODEL_FILE)
            logger.info("export: %s already holds %s; passed through", input_dir, model.name)
            from optimum_prune.stages.tasks import infer_task

            return {
                "skipped": f"input already holds an ONNX model ({model.name})",
                "task": infer_task(input_dir) if cfg.task == "auto" else cfg.task,
            }
        if not (input_dir / "config.json").is_file():
            raise InvalidModelError(
                f"{input_dir} is neither a Hugging Face model folder (no config.json) nor an ONNX folder"
            )
        from optimum.exporters.onnx import main_export
        from optimum.exporters.tasks import TasksManager

        allowed = set(inspect.signature(main_export).parameters)
        unknown = sorted(set(cfg.options) - allowed)
        if unknown:
            raise ConfigError(
                f"export options {unknown} are not arguments of main_export; valid: "
                f"{', '.join(sorted(allowed))}"
            )
        task = cfg.task
        if task == "auto":
            task = TasksManager.infer_task_from_model(str(input_dir), library_name="transformers")
        main_export(
            str(input_dir),
            output_dir,
            task=task,
            opset=cfg.opset,
            do_validation=cfg.do_validation,
            trust_remote_code=cfg.trust_remote_code,
            library_name="transformers",
            device="cpu",
            **cfg.options,
        )
        onnx_files = sorted(p.name for p in output_dir.glob("*.onnx"))
        if onnx_files != [MODEL_FILE]:
            raise InvalidModelError(
                f"export of {input_dir} ({task}) wrote {onnx_files}; pipeline stages need one "
                "model.onnx (decoders: the merged export is the default; encoder-decoder "
                "models need options: {monolith: true})"
            )
        return {"task": task}
