"""``Pipeline``: stages run one after the other, each in its own folder, with a report at the end.

    pipeline = Pipeline([ExportStage(task="feature-extraction"), PruneStage(sparsity=0.3),
                         QuantizeStage(mode="dynamic")])
    final = pipeline.run("path/to/hf-model", "outputs/run")

    pipeline = Pipeline.from_recipe("recipes/bert-prune30-int8-dynamic.yaml")

Layout of ``output_dir``: ``NN-<stage>/`` per stage (each an Optimum-loadable folder whose
``report.json`` holds every stage so far), ``final/`` (the last folder), ``report.json``, ``report.md``,
``report.png`` and ``pipeline.json`` (the stages that ran).

A recipe is YAML::

    name: bert-prune30-int8-dynamic
    model: all-MiniLM-L6-v2      # default model (a built-in name or a folder); --model overrides it
    stages:
      - export: {task: feature-extraction}
      - prune: {sparsity: 0.3, scope: [ffn, heads]}
      - quantize: {mode: dynamic}
    measure:                     # run after every model stage: the rows and points of the report
      - evaluate: {dataset: {name: rotten_tomatoes, split: test}}
      - benchmark: {}

Unknown keys anywhere are a :class:`~optimum_prune.errors.ConfigError` that lists the valid keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from optimum_prune.errors import ConfigError, InvalidModelError
from optimum_prune.stages.base import (
    REPORT_FILE,
    Stage,
    check_keys,
    has_onnx_model,
    link_or_copy,
    read_report,
)
from optimum_prune.stages.registry import StageRegistry, default_registry

logger = logging.getLogger(__name__)

RECIPE_KEYS = ("name", "description", "model", "stages", "measure")
PIPELINE_FILE = "pipeline.json"
FINAL_DIR = "final"


def _minilm() -> Path:
    from optimum_prune.assets import fetch_minilm

    return fetch_minilm()


def _smollm2() -> Path:
    from optimum_prune.assets import fetch_smollm2

    return fetch_smollm2()


def _rt_classifier() -> Path:
    from optimum_prune.classifier import ensure_classifier

    return ensure_classifier()


BUILTIN_MODELS: dict[str, Callable[[], Path]] = {
    "all-MiniLM-L6-v2": _minilm,
    "SmolLM2-135M-Instruct": _smollm2,
    # all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes reviews (trained once, ~10 min on 2 cores, cached)
    "minilm-rotten-tomatoes": _rt_classifier,
}
"""Model names a recipe or ``--model`` may use instead of a folder (fetched into the local asset cache)."""


def resolve_model(model: str | os.PathLike) -> Path:
    """A model folder from a folder path or a built-in model name."""
    if isinstance(model, str) and model in BUILTIN_MODELS and not Path(model).exists():
        return BUILTIN_MODELS[model]()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InvalidModelError(
            f"model folder not found: {model} (built-in models: {', '.join(BUILTIN_MODELS)})"
        )
    return path.resolve()


class Pipeline:
    """An ordered list of stages, plus measurement stages repeated after every model-producing stage.

    Args:
        stages: the stages, in order.
        measure: stages (typically ``evaluate`` and ``benchmark``) run after each stage that produces a
            model, so the report has quality and latency for every model of the run.
        name: shown in the report.
        model: default input model (folder or built-in name) used when :meth:`run` gets none.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        measure: Sequence[Stage] = (),
        name: str = "pipeline",
        model: str | os.PathLike | None = None,
    ) -> None:
        for s in [*stages, *measure]:
            if not isinstance(s, Stage):
                raise ConfigError(f"pipeline stages must be Stage instances; got {type(s).__name__} {s!r}")
        if not stages:
            raise ConfigError("a pipeline needs at least one stage")
        self.stages = list(stages)
        self.measure = list(measure)
        self.name = name
        self.model = model

    @classmethod
    def from_recipe(
        cls,
        recipe: str | os.PathLike | Mapping[str, Any],
        *,
        registry: StageRegistry | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Pipeline:
        """Build from a YAML file (or an already parsed mapping).

        ``overrides`` maps a stage name to options merged into every stage of that name (the CLI's
        ``--set stage.key=value``), e.g. ``{"benchmark": {"repeats": 3}}``.
        """
        name = "pipeline"
        if isinstance(recipe, Mapping):
            data = dict(recipe)
        else:
            import yaml

            path = Path(recipe)
            if not path.is_file():
                raise ConfigError(f"recipe not found: {path}")
            try:
                data = load_yaml(path.read_text())
            except yaml.YAMLError as e:
                raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
            name = path.stem
            if not isinstance(data, Mapping):
                raise ConfigError(f"recipe {path} must be a mapping with keys {', '.join(RECIPE_KEYS)}")
        check_keys(data, RECIPE_KEYS, "recipe")
        registry = registry or default_registry()
        overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        stages = _parse_stages(data.get("stages"), registry, overrides, "stages")
        measure = _parse_stages(data.get("measure") or [], registry, overrides, "measure")
        if not stages:
            raise ConfigError("recipe has no stages")
        used = {s.name for s in [*stages, *measure]}
        unused = sorted(set(overrides) - used)
        if unused:
            raise ConfigError(
                f"overrides for stages {unused} that the recipe does not have; its stages: {sorted(used)}"
            )
        return cls(stages, measure=measure, name=str(data.get("name") or name), model=data.get("model"))

    def expanded(self) -> list[Stage]:
        """The stages in the order they run (measurements inserted after each model stage)."""
        out: list[Stage] = []
        for stage in self.stages:
            out.append(stage)
            if stage.produces_model:
                out.extend(self.measure)
        return out

    def run(
        self,
        model: str | os.PathLike | None = None,
        output_dir: str | os.PathLike = "outputs/pipeline",
        *,
        progress: bool = True,
    ) -> Path:
        """Run every stage on ``model`` (a Hugging Face or ONNX folder, or a built-in model name).

        Returns the final folder (``output_dir/final``), which loads with ``ORTModelForXxx.from_pretrained``.
        ``output_dir`` must be new, empty, or the output of an earlier pipeline run (it is then replaced).
        """
        from tqdm.auto import tqdm

        model = model if model is not None else self.model
        if model is None:
            raise ConfigError(f"pipeline {self.name!r} has no model: pass one (--model DIR)")
        current = resolve_model(model)
        stages = self.expanded()
        if not has_onnx_model(current) and stages[0].name != "export":
            raise ConfigError(
                f"{current} holds no ONNX model and the first stage is {stages[0].name!r}: start the "
                "pipeline with an export stage, or pass an ONNX folder"
            )
        output_dir = Path(output_dir).resolve()
        if current.is_relative_to(output_dir) or output_dir.is_relative_to(current):
            raise ConfigError(f"output folder {output_dir} overlaps the model folder {current}")
        _prepare_output(output_dir)
        (output_dir / PIPELINE_FILE).write_text(
            json.dumps(
                {
                    "name": self.name,
                    "model": str(current),
                    "stages": [{"stage": s.name, "config": s.config.to_dict()} for s in stages],
                },
                indent=1,
            )
            + "\n"
        )
        width = len(str(len(stages)))
        with _progress_bars(progress):
            bar = tqdm(stages, desc=self.name, disable=not progress, unit="stage")
            for i, stage in enumerate(bar, 1):
                bar.set_postfix_str(stage.name)
                logger.info("stage %d/%d: %s", i, len(stages), stage.name)
                current = stage.run(current, output_dir / f"{i:0{width}d}-{stage.name}")
        final = output_dir / FINAL_DIR
        tmp = output_dir / f".{FINAL_DIR}-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for item in current.iterdir():
            if item.is_file():
                link_or_copy(item, tmp / item.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        report = read_report(final)
        shutil.copy2(final / REPORT_FILE, output_dir / REPORT_FILE)
        from optimum_prune.report import write_reports

        write_reports(report, output_dir, title=f"{self.name}: {Path(str(model)).name}")
        return final


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Without progress, also silence the bars inside stages (tqdm reads ``TQDM_DISABLE``)."""
    if enabled:
        yield
        return
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def _parse_stages(items: Any, registry: StageRegistry, overrides: dict[str, dict], where: str) -> list[Stage]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(
            f"recipe {where} must be a list such as [{{prune: {{sparsity: 0.3}}}}]; got {items!r}"
        )
    stages = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, Mapping) and len(item) == 1:
            name, options = next(iter(item.items()))
            options = {} if options is None else options
        else:
            raise ConfigError(
                f"recipe {where}[{i}] must be a stage name or a one-key mapping "
                f"{{stage_name: {{options}}}}; got {item!r}"
            )
        if not isinstance(options, Mapping):
            raise ConfigError(f"recipe {where}[{i}] ({name}): options must be a mapping; got {options!r}")
        options = apply_overrides(options, overrides.get(name, {}))
        stage_cls = registry.get(name)
        stages.append(stage_cls.from_dict(options))
    return stages


def _prepare_output(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output {output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not (output_dir / PIPELINE_FILE).is_file():
            raise ConfigError(
                f"output folder {output_dir} exists, is not empty and is not an earlier pipeline "
                "run; choose a new folder"
            )
        for item in output_dir.iterdir():  # an earlier run: replace it
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$""")


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-4`` as a number: PyYAML follows YAML 1.1, where a float needs
    a dot (``1.0e-4``), so a learning rate written ``1e-4`` came in as a string."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["benchmark.repeats=3"]`` -> ``{"benchmark": {"repeats": 3}}`` (values parsed as YAML). A longer
    path sets one key inside a mapping option and keeps its other keys:
    ``prune.calibration.num_samples=8`` changes the calibration's sample count only (a whole mapping,
    ``prune.calibration={...}``, replaces it)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, *path = key.strip().split(".")
        if not sep or not stage or not path or not all(path):
            raise ConfigError(f"--set takes STAGE.KEY=VALUE (e.g. benchmark.repeats=3); got {item!r}")
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
        node = out.setdefault(stage, {})
        for part in path[:-1]:
            if not isinstance(node.get(part), _Partial):
                node[part] = _Partial()
            node = node[part]
        node[path[-1]] = parsed
    return out


class _Partial(dict):
    """Keys ``parse_overrides`` sets inside a mapping option, merged into it rather than replacing it."""


def apply_overrides(options: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``overrides`` applied: a :class:`_Partial` merges into the mapping it names."""
    out = dict(options)
    for key, value in overrides.items():
        if isinstance(value, _Partial):
            base = out.get(key)
            out[key] = apply_overrides(base if isinstance(base, Mapping) else {}, value)
        else:
            out[key] = value
    return out
