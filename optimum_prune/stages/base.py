"""The ``Stage`` base class: one step of a pipeline that reads a model folder and writes a new one.

Every stage has a typed configuration (a :class:`StageConfig` dataclass validated in ``__post_init__``),
never modifies its input folder, writes its output atomically (a hidden sibling folder renamed into
place once everything succeeded) and appends one entry with its metrics to the folder's ``report.json``
(``{"stages": [...]}``, the format :class:`~optimum_prune.ORTPruner` writes).

A folder is an *artifact* Optimum understands: one ``model.onnx`` (with external data when large), the
config and tokenizer / processor files, and our ``pruning_plan.json`` and ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from optimum_prune.errors import ConfigError, InvalidModelError, PruningError, StageError

REPORT_FILE = "report.json"
MODEL_FILE = "model.onnx"
MODEL_SUFFIXES = (".onnx", ".onnx_data", ".onnx.data")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".ckpt")
"""Framework weights of a Hugging Face folder: never carried into ONNX folders."""


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageConfig:
    """Base class of stage configurations: a dataclass built from keyword arguments or a recipe mapping.

    Subclasses declare typed fields and validate them in ``__post_init__`` (raising
    :class:`~optimum_prune.errors.ConfigError` that shows the allowed values).
    """

    @classmethod
    def valid_keys(cls) -> tuple[str, ...]:
        """The keys a recipe may use for this configuration."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, where: str = "") -> StageConfig:
        """Build from a mapping; an unknown key is a :class:`ConfigError` listing the valid keys."""
        data = {} if data is None else data
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of options, got {type(data).__name__} {data!r}")
        check_keys(data, cls.valid_keys(), where)
        check_booleans(cls, data, where)
        try:
            return cls(**data)
        except ConfigError as e:
            if str(e).startswith(where):
                raise
            raise type(e)(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (nested configurations included), stored in ``report.json``."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}


def check_booleans(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` when a field of dataclass ``cls`` typed ``bool`` (or ``bool | None``) is
    given anything else in ``data``: a quoted ``"false"`` is a true string, not off."""
    for f in dataclasses.fields(cls):
        kind = str(f.type).replace(" ", "")
        if f.name in data and kind in ("bool", "bool|None", "None|bool"):
            value = data[f.name]
            if not isinstance(value, bool) and not (value is None and "None" in kind):
                raise ConfigError(f"{where}: {f.name} must be true or false (unquoted in YAML), "
                                  f"got {value!r}")


def check_keys(data: Mapping[str, Any], valid: tuple[str, ...] | list[str], where: str) -> None:
    """Raise :class:`ConfigError` naming the unknown keys of ``data`` and listing the valid ones."""
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(sorted(valid))}"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, StageConfig):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if callable(to_dict) else dataclasses.asdict(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def one_of(value: Any, allowed: tuple, name: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is in ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")


def positive_int(value: Any, name: str, *, minimum: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")


def as_tuple(value: Any, name: str) -> tuple:
    """A list/tuple (or comma-separated string) as a tuple; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ConfigError(f"{name} must be a list; got {value!r}")


# --------------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------------


def find_model_file(folder: str | os.PathLike) -> Path:
    """The ONNX model of a folder: ``model.onnx``, or the only ``*.onnx`` file in it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidModelError(f"model folder not found: {folder}")
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    found = sorted(folder.glob("*.onnx"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidModelError(
            f"no ONNX model in {folder} (files: {sorted(p.name for p in folder.iterdir())}); "
            "start the pipeline with an `export` stage for a Hugging Face folder"
        )
    raise InvalidModelError(
        f"{folder} holds several ONNX models {[p.name for p in found]}; pipeline stages "
        "work on single-model folders (export decoders with a merged or monolith graph); an "
        "encoder-decoder export is pruned as a whole by ORTPruner.from_pretrained(folder) or "
        "`optimum-cli prune onnx --model FOLDER`"
    )


def has_onnx_model(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds at least one ``*.onnx`` file."""
    folder = Path(folder)
    return folder.is_dir() and any(folder.glob("*.onnx"))


def model_size_bytes(folder: str | os.PathLike) -> int:
    """Bytes on disk of the ONNX model files of ``folder`` (graph plus external data)."""
    return sum(
        p.stat().st_size for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(MODEL_SUFFIXES)
    )


def read_report(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``stages`` list of ``folder/report.json`` (empty when there is none or it is unreadable)."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        return []
    try:
        stages = json.loads(path.read_text()).get("stages", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return list(stages) if isinstance(stages, list) else []


def write_report(folder: str | os.PathLike, stages: list[dict[str, Any]]) -> Path:
    """Write ``{"stages": stages}`` to ``folder/report.json``."""
    path = Path(folder) / REPORT_FILE
    path.write_text(json.dumps({"stages": stages}, indent=1, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of large weights); copy when linking is impossible.

    Safe because no stage ever writes into an existing file: every output is a new file.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def carry_files(src: Path, dst: Path, *, models: bool) -> None:
    """Bring the files of ``src`` that ``dst`` lacks: config, tokenizer, plan (the model if ``models``)."""
    for item in sorted(src.iterdir()):
        if not item.is_file() or item.name == REPORT_FILE or item.name.startswith("."):
            continue
        if item.name.endswith(_WEIGHT_SUFFIXES) or item.name.endswith(".index.json"):
            continue
        if item.name.endswith(MODEL_SUFFIXES) and not models:
            continue
        if not (dst / item.name).exists():
            link_or_copy(item, dst / item.name)


# --------------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------------


class Stage(ABC):
    """One step of a :class:`~optimum_prune.pipeline.Pipeline`.

    Subclasses set ``name`` (the name recipes use), ``config_class`` (a :class:`StageConfig` subclass),
    ``produces_model`` (``False`` for measurements such as ``evaluate`` and ``benchmark``, whose output
    folder links the input model unchanged) and implement :meth:`_run`.

    Construct with a config object or with its fields as keyword arguments::

        PruneStage(sparsity=0.3, scope=("ffn", "heads"))
        PruneStage(PruneStage.config_class(sparsity=0.3))
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[StageConfig]] = StageConfig
    produces_model: ClassVar[bool] = True

    def __init__(self, config: StageConfig | None = None, /, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ConfigError(
                f"stage {self.name!r}: pass either a config object or keyword options, not both"
            )
        if config is None:
            config = self.config_class.from_dict(kwargs, where=f"stage {self.name!r}")
        elif not isinstance(config, self.config_class):
            raise ConfigError(
                f"stage {self.name!r} takes a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None) -> Stage:
        """Build from a recipe mapping (unknown keys are a :class:`ConfigError` listing the valid ones)."""
        return cls(cls.config_class.from_dict(options, where=f"stage {cls.name!r}"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def run(self, input_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
        """Read ``input_dir``, write ``output_dir`` (replaced if it exists) and return it.

        ``output_dir/report.json`` holds the input's stages plus this stage's entry: its name, config,
        folders, time taken, model size on disk and the metrics :meth:`_run` returned.
        """
        input_dir = Path(input_dir).resolve()
        output_dir = Path(output_dir).resolve()
        if not input_dir.is_dir():
            raise InvalidModelError(f"stage {self.name!r}: input folder not found: {input_dir}")
        if input_dir.is_relative_to(output_dir) or output_dir.is_relative_to(input_dir):
            raise ConfigError(
                f"stage {self.name!r}: output folder {output_dir} and input folder {input_dir} "
                "overlap; choose a separate output folder (inputs are never modified)"
            )
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_dir.parent / f".{output_dir.name}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        start = time.perf_counter()
        try:
            try:
                metrics = self._run(input_dir, tmp) or {}
            except PruningError:
                raise
            except Exception as e:
                raise StageError(f"stage {self.name!r} failed on {input_dir}: {type(e).__name__}: {e}") from e
            carry_files(input_dir, tmp, models=not self.produces_model)
            if self.produces_model:
                find_model_file(tmp)  # the stage must leave exactly one model
            stages = self._merge_report(input_dir, tmp, metrics, output_dir, time.perf_counter() - start)
            write_report(tmp, stages)
            if output_dir.exists():
                shutil.rmtree(output_dir)
            os.replace(tmp, output_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return output_dir

    def _merge_report(
        self, input_dir: Path, out: Path, metrics: dict[str, Any], output_dir: Path, seconds: float
    ) -> list[dict[str, Any]]:
        prior = read_report(input_dir)
        produced = read_report(out)
        # A tool that writes report.json itself (ORTPruner) appends its own entry: extend it.
        entry = dict(produced[-1]) if len(produced) == len(prior) + 1 else {}
        if entry.get("seconds") is not None:
            entry[f"{self.name}_seconds"] = entry.pop("seconds")
        entry.update(
            {
                "stage": self.name,
                "config": self.config.to_dict(),
                "produces_model": self.produces_model,
                "input_dir": str(input_dir),
                "output_dir": str(output_dir),
                "seconds": round(seconds, 3),
                "size_bytes": model_size_bytes(out),
                **metrics,
            }
        )
        return [*prior, entry]

    @abstractmethod
    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any] | None:
        """Do the work: read ``input_dir`` (never modify it), write into the empty ``output_dir``.

        Model stages leave exactly one ONNX model in ``output_dir`` (prefer ``model.onnx``); the base
        class brings the remaining config / tokenizer files over. Return the metrics for the report.
        """
