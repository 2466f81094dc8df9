"""``PruningPlan``: which units of which group are kept. The one object every stage reads."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from optimum_prune.errors import PlanMismatchError

PLAN_FILE = "pruning_plan.json"
PLAN_VERSION = 1


@dataclass
class GroupPlan:
    """The decision for one group: its identity (to check it matches) and the kept unit indices."""

    id: int
    kind: str
    seed: str
    units: int
    unit_size: int
    kept: list[int]
    tensors: list[str] = field(default_factory=list)

    @property
    def removed(self) -> list[int]:
        """Unit indices removed."""
        kept = set(self.kept)
        return [u for u in range(self.units) if u not in kept]


@dataclass
class PruningPlan:
    """Kept units per group, with the config that chose them; JSON round trip.

    ``repairs`` lists the consumers whose weights the repair step refitted (written by
    :meth:`ORTPruner.prune` with ``recover``): node, weight, leaf axis, bias tensor and whether the bias
    ``Add`` was created. It describes the written model; replaying a plan repairs again from its config.
    """

    groups: list[GroupPlan]
    config: dict = field(default_factory=dict)
    source: str = ""
    repairs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "version": PLAN_VERSION,
            "source": self.source,
            "config": self.config,
            "groups": [g.__dict__ for g in self.groups],
            **({"repairs": self.repairs} if self.repairs else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise PlanMismatchError(f"unsupported plan version {version!r}; expected {PLAN_VERSION}: pass a "
                                    f"{PLAN_FILE} written by ORTPruner.prune")
        if "components" in data:
            raise PlanMismatchError(f"this is the plan of a multi-file model (components "
                                    f"{sorted(data['components'])}): read one component with "
                                    "optimum_prune.plan.load_plan(path, file_name)")
        try:
            return cls(groups=[GroupPlan(**g) for g in data["groups"]], config=data.get("config", {}),
                       source=data.get("source", ""), repairs=list(data.get("repairs", [])))
        except (KeyError, TypeError) as e:
            raise PlanMismatchError(f"malformed pruning plan ({type(e).__name__}: {e}): pass a {PLAN_FILE} "
                                    "written by ORTPruner.prune") from e

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically)."""
        _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        """Read a plan written by :meth:`save`."""
        return cls.from_dict(_read_json(Path(path)))


def save_component_plans(path: str | os.PathLike, plans: dict[str, PruningPlan]) -> None:
    """Write the plans of a multi-file model (one per ONNX file) as one JSON file (atomically)."""
    _write_json(Path(path), {"version": PLAN_VERSION,
                             "components": {name: plan.to_dict() for name, plan in sorted(plans.items())}})


def load_plan(path: str | os.PathLike, file_name: str = "model.onnx") -> PruningPlan:
    """The plan of ``file_name`` in the plan file ``path`` (a plain plan, or a multi-file model's, written
    by :func:`save_component_plans`)."""
    data = _read_json(Path(path))
    if not (isinstance(data, dict) and "components" in data):
        return PruningPlan.from_dict(data)
    plans = _component_plans(data)
    if file_name not in plans:
        raise PlanMismatchError(f"{path} has no plan for {file_name}; it has plans for {sorted(plans)}")
    return plans[file_name]


def load_component_plans(path: str | os.PathLike) -> dict[str, PruningPlan]:
    """Every file's plan in a multi-file model's plan file; empty for a single-file plan."""
    data = _read_json(Path(path))
    return _component_plans(data) if isinstance(data, dict) and "components" in data else {}


def _component_plans(data: dict) -> dict[str, PruningPlan]:
    if data.get("version") != PLAN_VERSION:
        raise PlanMismatchError(f"unsupported plan version {data.get('version')!r}; expected {PLAN_VERSION}")
    return {name: PruningPlan.from_dict(plan) for name, plan in data["components"].items()}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlanMismatchError(f"{path} is not a pruning plan ({e}): pass a {PLAN_FILE} written by "
                                "ORTPruner.prune") from e


def _write_json(path: Path, data: dict) -> None:
    # Not mkstemp: its file is private (0600) whatever the umask.
    tmp = path.parent / f".plan-{uuid.uuid4().hex[:12]}"
    with open(tmp, "x") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
