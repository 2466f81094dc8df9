"""Stage registry: stage names (as recipes write them) to :class:`~optimum_prune.stages.Stage` classes.

There is no global registry to mutate: a :class:`StageRegistry` is an ordinary object.
:func:`default_registry` builds a fresh one from the built-in stages plus every stage that installed
distributions declare in the entry point group ``optimum_prune.stages``::

    # pyproject.toml of a third-party package
    [project.entry-points."optimum_prune.stages"]
    distill = "my_package.stages:DistillStage"

Entry points are loaded on first use of their name, so a broken plugin only fails the recipes using it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from optimum_prune.errors import ConfigError
from optimum_prune.stages.base import Stage

ENTRY_POINT_GROUP = "optimum_prune.stages"

BUILTIN_STAGES: dict[str, str] = {
    "export": "optimum_prune.stages.export:ExportStage",
    "prune": "optimum_prune.stages.prune:PruneStage",
    "optimize": "optimum_prune.stages.optimize:OptimizeStage",
    "quantize": "optimum_prune.stages.quantize:QuantizeStage",
    "evaluate": "optimum_prune.stages.evaluate:EvaluateStage",
    "benchmark": "optimum_prune.stages.benchmark:BenchmarkStage",
    "distill": "optimum_prune.stages.distill:DistillStage",
}
"""Built-in stage names and where their classes live (imported on first use)."""


class StageRegistry:
    """Maps stage names to stage classes, resolving ``module:Class`` references and entry points lazily.

    Args:
        stages: initial mapping of name to a :class:`Stage` subclass, a ``"module:Class"`` string or an
            :class:`importlib.metadata.EntryPoint`.
    """

    def __init__(self, stages: Mapping[str, type[Stage] | str | metadata.EntryPoint] | None = None) -> None:
        self._stages: dict[str, type[Stage] | str | metadata.EntryPoint] = {}
        for name, target in (stages or {}).items():
            self.register(target, name=name)

    def register(
        self,
        stage: type[Stage] | str | metadata.EntryPoint,
        *,
        name: str | None = None,
        replace: bool = False,
    ) -> None:
        """Add a stage under ``name`` (default: the class's ``name``); a clash raises unless ``replace``."""
        if isinstance(stage, type):
            if not issubclass(stage, Stage):
                raise ConfigError(f"{stage.__qualname__} is not a subclass of optimum_prune.stages.Stage")
            name = name or stage.name
        if not name:
            raise ConfigError(f"stage {stage!r} has no name; pass name=")
        if name in self._stages and not replace and self._stages[name] != stage:
            raise ConfigError(
                f"a stage named {name!r} is already registered ({_describe(self._stages[name])}); "
                "pass replace=True to override it"
            )
        self._stages[name] = stage

    def get(self, name: str) -> type[Stage]:
        """The stage class registered as ``name`` (:class:`ConfigError` listing the known names if none)."""
        if name not in self._stages:
            raise ConfigError(
                f"unknown stage {name!r}; known stages: {', '.join(self.names())}. Third-party "
                f"stages register through the entry point group {ENTRY_POINT_GROUP!r}."
            )
        target = self._stages[name]
        if not isinstance(target, type):
            target = _load(name, target)
            self._stages[name] = target
        return target

    def create(self, name: str, options: Mapping[str, Any] | None = None) -> Stage:
        """Instantiate stage ``name`` from a recipe mapping of options."""
        return self.get(name).from_dict(options)

    def names(self) -> list[str]:
        """Registered stage names, sorted."""
        return sorted(self._stages)

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._stages)

    def copy(self) -> StageRegistry:
        """An independent registry with the same entries."""
        return StageRegistry(self._stages)


def _describe(target: Any) -> str:
    if isinstance(target, type):
        return f"{target.__module__}.{target.__qualname__}"
    if isinstance(target, metadata.EntryPoint):
        return f"entry point {target.value}"
    return str(target)


def _load(name: str, target: str | metadata.EntryPoint) -> type[Stage]:
    try:
        if isinstance(target, metadata.EntryPoint):
            cls = target.load()
        else:
            module, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
    except Exception as e:
        raise ConfigError(
            f"stage {name!r} could not be loaded from {_describe(target)}: {type(e).__name__}: {e}"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(
            f"stage {name!r} ({_describe(target)}) is not a subclass of optimum_prune.stages.Stage"
        )
    return cls


def default_registry(*, entry_points: bool = True) -> StageRegistry:
    """A new registry with the built-in stages and (unless ``entry_points=False``) installed plugins.

    A plugin may not shadow a built-in stage name: that raises :class:`ConfigError`.
    """
    registry = StageRegistry(BUILTIN_STAGES)
    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in BUILTIN_STAGES:
                raise ConfigError(
                    f"entry point {ep.name!r} = {ep.value!r} in group {ENTRY_POINT_GROUP!r} "
                    "shadows a built-in stage; rename it"
                )
            registry.register(ep, name=ep.name)
    return registry
