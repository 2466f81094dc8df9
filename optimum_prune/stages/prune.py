"""``prune``: structured pruning with :class:`~optimum_prune.ORTPruner` and a ``PruningConfig``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optimum_prune.configuration import PruningConfig
from optimum_prune.errors import CalibrationRequiredError, ConfigError
from optimum_prune.stages.base import Stage, StageConfig, check_booleans, check_keys, find_model_file
from optimum_prune.stages.data import DatasetConfig

_PRUNE_RESERVED = {"self", "config", "save_dir", "plan"}


def _pruning_keys() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(PruningConfig) if f.init)


def _prune_call_keys() -> tuple[str, ...]:
    """Keyword arguments of ``ORTPruner.prune`` beyond config/save_dir/plan (e.g. ``validate``)."""
    from optimum_prune.pruner import ORTPruner

    params = inspect.signature(ORTPruner.prune).parameters.values()
    return tuple(
        p.name
        for p in params
        if p.name not in _PRUNE_RESERVED and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


@dataclasses.dataclass
class PruneStageConfig(StageConfig):
    """Options of the ``prune`` stage.

    Recipe keys are the fields of :class:`~optimum_prune.PruningConfig` (``sparsity``, ``scope``,
    ``importance``, ``min_units``, ``exclude``, ``io_patterns``, ``prune_kv_heads``, and whatever fields
    it gains), the keyword arguments of ``ORTPruner.prune`` (such as ``validate``), and:

    Args:
        pruning: the :class:`PruningConfig` (built from the recipe keys).
        prune_options: extra keyword arguments for ``ORTPruner.prune``.
        verify: run the exactness oracle (:func:`~optimum_prune.verify`) and record its errors.
        calibration: a dataset split (a :class:`DatasetConfig` mapping) for data-driven criteria
            (``activation``, ``obs``): tokenised with the folder's own tokenizer (or image processor).
    """

    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    prune_options: dict = dataclasses.field(default_factory=dict)
    verify: bool = True
    calibration: DatasetConfig | dict | str | None = None

    def __post_init__(self) -> None:
        from optimum_prune.importance import criterion_class

        self.calibration = DatasetConfig.coerce(self.calibration, "prune calibration")
        if isinstance(self.pruning, Mapping):
            self.pruning = PruningConfig(**self.pruning)
        if not isinstance(self.pruning, PruningConfig):
            raise ConfigError(f"prune: pruning must be a PruningConfig; got {type(self.pruning).__name__}")
        if self.calibration is not None and self.calibration.text_pair_column is not None:
            raise ConfigError(f"prune: calibration tokenises one text per example; text_pair_column "
                              f"{self.calibration.text_pair_column!r} would be ignored: remove it (the first "
                              "sentence alone calibrates), or join the pair into one text column")
        if self.calibration is None and criterion_class(self.pruning.importance)[0].requires_calibration:
            raise CalibrationRequiredError(
                f"prune: importance {self.pruning.importance!r} needs calibration data: add calibration to "
                "the stage (e.g. calibration: {name: rotten_tomatoes, num_samples: 128}), or choose a "
                "data-free criterion (l1, l2, tree, obs, fidelity)")
        unknown = sorted(set(self.prune_options) - set(_prune_call_keys()))
        if unknown:
            raise ConfigError(
                f"prune: {unknown} are not options of ORTPruner.prune; valid: {_prune_call_keys()}"
            )

    @classmethod
    def valid_keys(cls) -> tuple[str, ...]:
        """PruningConfig fields, ORTPruner.prune keyword arguments, ``verify`` and ``calibration``."""
        return (*_pruning_keys(), *(k for k in _prune_call_keys() if k != "calibration"), "verify",
                "calibration")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, where: str = "") -> PruneStageConfig:
        """Split a flat recipe mapping into PruningConfig fields, prune() options and stage keys."""
        data = dict(data or {})
        where = where or "stage 'prune'"
        check_keys(data, cls.valid_keys(), where)
        check_booleans(cls, data, where)
        pruning = {k: data.pop(k) for k in list(data) if k in _pruning_keys()}
        for key in ("scope", "exclude", "io_patterns"):
            if isinstance(pruning.get(key), list):
                pruning[key] = tuple(pruning[key])
        options = {k: data.pop(k) for k in list(data) if k in _prune_call_keys() and k != "calibration"}
        try:
            return cls(pruning=PruningConfig(**pruning), prune_options=options, **data)
        except ConfigError as e:
            raise type(e)(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """Flat form, as a recipe writes it."""
        out = {**self.pruning.to_dict(), **self.prune_options, "verify": self.verify}
        if self.calibration is not None:
            out["calibration"] = dataclasses.asdict(self.calibration)
        return out


def load_calibration(folder: Path, cfg: DatasetConfig):
    """CalibrationData from a dataset split, processed with the folder's own tokenizer/processor (the
    ``prune`` stage's ``calibration`` and ``prune onnx --calibration``)."""
    from optimum_prune.calibration import CalibrationConfig, CalibrationData
    from optimum_prune.stages.data import load_split

    # packed windows are filled from as many texts as they need: read the whole (shuffled) split
    dataset = load_split(dataclasses.replace(cfg, num_samples=2**62) if cfg.pack else cfg)
    column = cfg.text_column if cfg.text_column in dataset.column_names else cfg.image_column
    if column not in dataset.column_names:
        raise ConfigError(f"calibration dataset {cfg.name!r} has neither text_column {cfg.text_column!r} nor "
                          f"image_column {cfg.image_column!r}; its columns: {dataset.column_names}")
    rows = cfg.num_samples if cfg.pack else min(cfg.num_samples, len(dataset))
    config = CalibrationConfig(num_samples=rows, max_length=cfg.max_length, column=column, pack=cfg.pack)
    return CalibrationData.from_dataset(dataset, folder, config=config)


class PruneStage(Stage):
    """Prune the folder's model; the output holds ``model.onnx``, ``pruning_plan.json`` and the side files.

    ``PruneStage(sparsity=0.3, scope=("ffn", "heads"))`` or ``PruneStage(PruningConfig(...))``.
    """

    name = "prune"
    config_class = PruneStageConfig

    def __init__(self, config: PruneStageConfig | PruningConfig | None = None, /, **kwargs: Any) -> None:
        if isinstance(config, PruningConfig):
            config = (
                PruneStageConfig(pruning=config, **kwargs) if kwargs else PruneStageConfig(pruning=config)
            )
            kwargs = {}
        super().__init__(config, **kwargs)

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        from optimum_prune.pruner import ORTPruner

        model = find_model_file(input_dir)
        pruner = ORTPruner.from_pretrained(input_dir, file_name=model.name)
        options = dict(self.config.prune_options)
        metrics: dict[str, Any] = {}
        if self.config.calibration is not None:
            options["calibration"] = load_calibration(input_dir, self.config.calibration)
            metrics["calibration"] = options["calibration"].describe()
        pruner.prune(self.config.pruning, output_dir, **options)
        if self.config.verify:
            from optimum_prune.verify import verify

            result = verify(input_dir, output_dir, file_name=model.name)
            metrics["verify"] = {k: v for k, v in result.to_dict().items() if k != "outputs"}
        if model.name != "model.onnx":  # keep one name for every folder of a pipeline
            (output_dir / model.name).rename(output_dir / "model.onnx")
        return metrics
