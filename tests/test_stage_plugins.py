"""Third-party stages: registered through the entry point group ``optimum_prune.stages`` of an installed
distribution (a tiny ``.dist-info`` on ``sys.path``), then usable by name in recipes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from optimum_prune.errors import ConfigError
from optimum_prune.pipeline import Pipeline
from optimum_prune.stages import (
    ENTRY_POINT_GROUP,
    BenchmarkStage,
    Stage,
    StageRegistry,
    default_registry,
    read_report,
)
from zoo import export_zoo_model

PLUGIN = '''
import dataclasses
from optimum_prune.errors import ConfigError
from optimum_prune.stages import Stage, StageConfig


@dataclasses.dataclass
class NoteConfig(StageConfig):
    message: str = "hello"
    times: int = 1

    def __post_init__(self):
        if self.times < 1:
            raise ConfigError(f"times must be >= 1, got {self.times}")


class NoteStage(Stage):
    """Writes a note next to the model; measures nothing."""

    name = "note"
    config_class = NoteConfig
    produces_model = False

    def _run(self, input_dir, output_dir):
        (output_dir / "note.txt").write_text(self.config.message * self.config.times)
        return {"note_length": len(self.config.message) * self.config.times}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Path:
    """A distribution ``note-stage-plugin`` declaring ``note = note_stage_plugin:NoteStage``."""
    (tmp_path / "note_stage_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "note_stage_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: note-stage-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nnote = note_stage_plugin:NoteStage\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_stage_is_in_the_default_registry(plugin):
    registry = default_registry()
    assert "note" in registry and "prune" in registry
    cls = registry.get("note")
    assert issubclass(cls, Stage) and cls.__module__ == "note_stage_plugin"
    assert "note" not in default_registry(entry_points=False)


def test_entry_point_stage_runs_in_a_recipe(plugin, tmp_path):
    onnx_dir = export_zoo_model("bert", tmp_path / "zoo")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages:\n  - prune: {sparsity: 0.2}\n  - note: {message: hi, times: 2}\n")
    final = Pipeline.from_recipe(recipe).run(onnx_dir, tmp_path / "out", progress=False)
    assert (final / "note.txt").read_text() == "hihi"
    assert (final / "model.onnx").is_file()
    entry = read_report(final)[-1]
    assert (
        entry["stage"] == "note"
        and entry["note_length"] == 4
        and entry["config"] == {"message": "hi", "times": 2}
    )


def test_entry_point_stage_config_is_checked(plugin):
    with pytest.raises(ConfigError, match="unknown key 'mesage'; valid keys: message, times"):
        Pipeline.from_recipe({"stages": [{"note": {"mesage": "x"}}]})
    with pytest.raises(ConfigError, match="times must be >= 1"):
        Pipeline.from_recipe({"stages": [{"note": {"times": 0}}]})


def test_broken_entry_point_fails_only_when_used(tmp_path, monkeypatch):
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module:Stage\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = default_registry()
    Pipeline.from_recipe({"stages": ["export"]}, registry=registry)  # other stages are unaffected
    with pytest.raises(
        ConfigError, match="stage 'broken' could not be loaded from entry point no_such_module:Stage"
    ):
        registry.get("broken")


def test_registry_objects_are_independent():
    a = StageRegistry({"bench": BenchmarkStage})
    b = a.copy()
    b.register(BenchmarkStage, name="bench2")
    assert "bench2" in b and "bench2" not in a
    with pytest.raises(ConfigError, match="already registered"):
        a.register(type("Other", (BenchmarkStage,), {}), name="bench")
    with pytest.raises(ConfigError, match="not a subclass"):
        a.register(int, name="x")
