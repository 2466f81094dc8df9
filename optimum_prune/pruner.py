"""``ORTPruner``: structured pruning of an ONNX model folder, mirroring Optimum's ``ORTQuantizer``.

    pruner = ORTPruner.from_pretrained(onnx_dir)
    report = pruner.analyze()
    out = pruner.prune(PruningConfig(sparsity=0.3), save_dir)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from optimum_prune.allocation import (
    global_allocation,
    joint_saving,
    normalise_per_kind,
    round_removal,
    select_kept,
    standardise_per_group,
    uniform_for_cost,
    unit_costs,
    units_to_remove,
)
from optimum_prune.association.builder import build_groups
from optimum_prune.association.rules import RuleRegistry
from optimum_prune.association.tree import KINDS, PruningGroup
from optimum_prune.calibration import CalibrationConfig, CalibrationData
from optimum_prune.configuration import DEFAULT_IO_PATTERNS, PruningConfig, RecoveryConfig
from optimum_prune.errors import (
    ConfigError,
    InvalidModelError,
    PlanMismatchError,
    PruningError,
    ValidationError,
)
from optimum_prune.graph import Shape, infer_shapes, load_model, save_model_atomic
from optimum_prune.hints import config_hints, conv_width_hints, warn_mistakes
from optimum_prune.importance import get_importance
from optimum_prune.metrics import count_flops, count_parameters
from optimum_prune.passes.apply import apply_removals
from optimum_prune.passes.cache_inputs import NARROWED_DIMS_KEY, narrow_cache_inputs
from optimum_prune.passes.normalize import (
    explicit_split_sizes,
    name_nodes,
    reshare_vectors,
    unshare_shape_constants,
    unshare_vectors,
    unshared_elements,
)
from optimum_prune.passes.static_ifs import IfDecision, apply_if_decisions, fold_static_ifs
from optimum_prune.passes.untie import seed_names, shared_computed_tensors, unshare_shape_tensors, untie
from optimum_prune.passes.validate import check_generates, image_dims, validate_model_file
from optimum_prune.plan import PLAN_FILE, GroupPlan, PruningPlan
from optimum_prune.recovery import repair

if TYPE_CHECKING:
    from optimum_prune.multifile import MultiFilePruner

REPORT_FILE = "report.json"
_MODEL_SUFFIXES = (".onnx", ".onnx_data", ".onnx.data")

_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads",
              "decoder_attention_heads")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "emb_dim")  # "dim": DistilBERT
_KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
_FFN_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim",
             "d_ff")

# Data-free repair (``recover`` without calibration): many short generated rows. On all-MiniLM-L6-v2 (ffn +
# heads, 500 held-out reviews) 512 rows x 32 tokens beat the former 128 x 128 at 30% and 50%: long random
# sequences average attention over noise (``benchmarks/quality.py --generated-sweep`` reruns the comparison;
# framing the rows with the tokenizer's [CLS]/[SEP] helped at 30% but wrecked the 50% repairs, so it is
# not done).
GENERATED_REPAIR_DATA = CalibrationConfig(num_samples=512, max_length=32)


@dataclass
class AnalysisReport:
    """What :meth:`ORTPruner.analyze` found: every group, by kind, with the reasons some are refused."""

    groups: list[PruningGroup]
    params: int
    flops: int
    seconds: float = 0.0

    def summary(self) -> dict[str, dict[str, int]]:
        """Per kind: groups found, groups prunable, prunable units."""
        out: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            gs = [g for g in self.groups if g.kind == kind]
            if gs:
                out[kind] = {"groups": len(gs), "prunable": sum(g.prunable for g in gs),
                             "units": sum(g.units for g in gs if g.prunable)}
        return out

    def unprunable(self) -> list[dict]:
        """Groups that cannot be pruned, with why (node, op)."""
        return [{"group": g.id, "kind": g.kind, "seed": g.seed, "reason": g.reason}
                for g in self.groups if not g.prunable]

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"params": self.params, "flops": self.flops, "seconds": round(self.seconds, 3),
                "summary": self.summary(), "unprunable": self.unprunable(),
                "groups": [g.summary() for g in self.groups]}

    def __str__(self) -> str:
        lines = [f"{'kind':<8}{'groups':>8}{'prunable':>10}{'units':>8}"]
        for kind, row in self.summary().items():
            lines.append(f"{kind:<8}{row['groups']:>8}{row['prunable']:>10}{row['units']:>8}")
        for u in self.unprunable()[:10]:
            lines.append(f"  group {u['group']} ({u['kind']}, seed {u['seed']}): {u['reason']}")
        for g in [g for g in self.groups if g.prunable and g.kept_whole][:10]:
            lines.append(f"  group {g.id} ({g.kind}, seed {g.seed}): {g.kept_whole}")
        return "\n".join(lines)


@dataclass
class _Prepared:
    model: ir.Model
    shapes: dict[str, Shape]
    groups: list[PruningGroup] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)  # tensors given a private copy per consumer (untie)
    folded_ifs: tuple[IfDecision, ...] = ()  # If nodes replaced by the branch the shapes decide
    flop_shapes: dict[str, Shape] | None = None  # the dense model's shapes FLOPs are counted on (lazy)


@dataclass
class PrunedModel:
    """A pruned model in memory (:meth:`ORTPruner.prune_in_memory`), with what its report needs."""

    model: ir.Model
    plan: PruningPlan
    groups: list[PruningGroup]
    removed: dict[int, set[int]]
    params_before: int
    flops_before: int
    params_after: int
    flops_after: int
    repair: object | None = None
    untied: list[str] = field(default_factory=list)
    folded_ifs: tuple[IfDecision, ...] = ()
    hints: list[str] = field(default_factory=list)  # see optimum_prune.hints.config_hints

    def report(self, seconds: float, config_notes: list[str]) -> dict:
        """The ``prune`` entry of ``report.json``."""
        return {
            "stage": "prune",
            "config": self.plan.config,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "groups_found": len(self.groups),
            "groups_pruned": sum(1 for r in self.removed.values() if r),
            "units_removed": {k: sum(len(self.removed.get(g.id, ())) for g in self.groups if g.kind == k)
                              for k in KINDS},
            "seconds": round(seconds, 3),
            "config_notes": config_notes,
            **({"hints": hints} if (hints := [*self.hints, *conv_width_hints(self.groups, self.removed)])
               else {}),
            **({"repair": self.repair.to_dict()} if self.repair is not None else {}),
            **({"untied": self.untied} if self.untied else {}),
            **({"folded_ifs": [{"node": name, "branch": "then" if taken else "else"}
                               for name, taken in self.folded_ifs]} if self.folded_ifs else {}),
            "groups": [{**g.summary(), "kept": len(g_plan.kept)}
                       for g, g_plan in zip(self.groups, self.plan.groups, strict=True)],
        }


def removed_share(models: Iterable[PrunedModel], target: str) -> float:
    """The fraction of the ``models``' summed parameters (``target="params"``) or else FLOPs removed."""
    totals = [(m.params_before, m.params_after) if target == "params" else (m.flops_before, m.flops_after)
              for m in models]
    return 1.0 - sum(a for _, a in totals) / max(sum(b for b, _ in totals), 1)


def check_save_dir(save_dir: str | os.PathLike | None, source_folder: Path, config: PruningConfig | None,
                   plan: PruningPlan | None) -> Path:
    """``save_dir`` resolved, or a :class:`ConfigError` when it is missing, is (or holds) the input folder,
    or is a non-empty folder that no earlier pruning wrote."""
    if save_dir is None:
        raise ConfigError("save_dir is required: the folder to write the pruned model to")
    if config is None and plan is None:
        raise ConfigError("pass a PruningConfig or a PruningPlan")
    save_dir = Path(save_dir).resolve()
    source = source_folder.resolve()
    if save_dir == source or save_dir in source.parents or source in save_dir.parents:
        what = ("is the input folder" if save_dir == source else f"contains the input folder {source}"
                if save_dir in source.parents else f"is inside the input folder {source}")
        raise ConfigError(f"save_dir {save_dir} {what}, which pruning would change; choose a new folder "
                          "outside it (inputs are never modified)")
    if save_dir.exists() and any(save_dir.iterdir()) and not (save_dir / PLAN_FILE).exists():
        raise ConfigError(f"save_dir {save_dir} exists and is not empty (and holds no earlier pruning "
                          "output); choose a new folder")
    return save_dir


@contextmanager
def staging_folder(save_dir: Path) -> Iterator[Path]:
    """A fresh folder next to ``save_dir`` that replaces it when the block ends without error; on an
    error it is removed, with every parent folder it created, so a failed run leaves nothing behind."""
    created = [p for p in (save_dir.parent, *save_dir.parent.parents) if not p.exists()]
    save_dir.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its folder is private (0700) whatever the umask, and it becomes save_dir.
    tmp = save_dir.parent / f".{save_dir.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        if save_dir.exists():
            shutil.rmtree(save_dir)
        os.replace(tmp, save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


class ORTPruner:
    """Structured pruner for an ONNX model folder exported by optimum-onnx (or any ONNX file).

    Args:
        model_path: the ONNX file.
        registry: op rules to use (defaults to the built-in library); extend it for custom ops.
    """

    def __init__(self, model_path: Path, registry: RuleRegistry | None = None) -> None:
        self.model_path = Path(model_path)
        self.folder = self.model_path.parent
        self.registry = registry
        # per io_patterns: shapes, groups, tied tensors, the If nodes folded (see _prepare)
        self._cache: dict[tuple[str, ...], tuple[dict[str, Shape], list[PruningGroup], list[str],
                                                  tuple[IfDecision, ...]]] = {}

    @classmethod
    def from_pretrained(cls, model_or_path: str | os.PathLike, file_name: str = "model.onnx",
                        registry: RuleRegistry | None = None) -> ORTPruner | MultiFilePruner:
        """Open a folder holding ``file_name`` (or an ``.onnx`` file directly).

        A folder with no ``model.onnx`` that holds optimum-onnx's encoder-decoder files
        (``encoder_model.onnx``, ``decoder_model.onnx``, ...) gives a
        :class:`~optimum_prune.multifile.MultiFilePruner`, which prunes the files together; pass
        ``file_name`` to prune one file alone.
        """
        path = Path(model_or_path)
        if path.is_file():
            return cls(path, registry)
        if not path.exists():
            raise InvalidModelError(f"model folder not found: {path}. Export one with "
                                    f"`optimum-cli export onnx --model MODEL {path}`.")
        model_path = path / file_name
        if not model_path.is_file() and file_name == "model.onnx":
            from optimum_prune.multifile import MultiFilePruner, is_encoder_decoder_export

            if is_encoder_decoder_export(path):
                return MultiFilePruner(path, registry=registry)
        if not model_path.is_file():
            found = sorted(p.name for p in path.glob("*.onnx"))
            if not found and (path / "config.json").is_file() and any(
                    any(path.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin", "*.h5")):
                raise InvalidModelError(
                    f"{path} holds a transformers checkpoint, not an ONNX export: export it first with "
                    f"`optimum-cli export onnx --model {path} ONNX_DIR` (or run a recipe whose first stage "
                    "is export) and prune ONNX_DIR")
            raise InvalidModelError(f"{model_path} not found; ONNX files in {path}: {found or 'none'}. "
                                    "Pass file_name= (CLI: --file-name) to choose one.")
        return cls(model_path, registry)

    # ------------------------------------------------------------------------------------------
    def _prepare(self, io_patterns: tuple[str, ...]) -> _Prepared:
        model = load_model(self.model_path)
        _refuse_quantized(model, self.model_path)
        name_nodes(model)
        unshare_shape_tensors(model)
        unshare_shape_constants(model)
        unshare_vectors(model)
        cached = self._cache.get(io_patterns)
        if cached is not None:
            shapes, groups, tied, decisions = cached
            apply_if_decisions(model, decisions)
            explicit_split_sizes(model, shapes)
            if tied:
                untie(model, tied, seed_names(model, shapes))
            return _Prepared(model, shapes, groups, tied, decisions)
        shapes = infer_shapes(model)
        # an If on "lengths differ" hides its branch's heads
        decisions = tuple(fold_static_ifs(model, shapes))
        if decisions:
            shapes = infer_shapes(model)
        if explicit_split_sizes(model, shapes):
            shapes = infer_shapes(model)
        groups = build_groups(model, shapes, self.registry, io_patterns=io_patterns)
        seeds = seed_names(model, shapes)
        tied = shared_computed_tensors(model, groups, seeds)
        if untie(model, tied, seeds):  # layers coupled only through a shared computed tensor (ALiBi)
            shapes = infer_shapes(model)
            groups = build_groups(model, shapes, self.registry, io_patterns=io_patterns)
        self._cache[io_patterns] = (shapes, groups, tied, decisions)
        return _Prepared(model, shapes, groups, tied, decisions)

    def analyze(self, io_patterns: tuple[str, ...] = DEFAULT_IO_PATTERNS) -> AnalysisReport:
        """Find every group (kind, prunable units) and why some cannot be pruned."""
        start = time.perf_counter()
        prep = self._prepare(tuple(io_patterns))
        # parameters as the source file holds them (the analysis copies shared norms per use)
        return AnalysisReport(prep.groups, count_parameters(prep.model) - unshared_elements(prep.model),
                              count_flops(prep.model, self._dense_flop_shapes(prep)),
                              time.perf_counter() - start)

    def _dense_flop_shapes(self, prep: _Prepared) -> dict[str, Shape]:
        """:meth:`_flop_shapes` of the prepared (unpruned) model, inferred once for the plan's budget and
        the report."""
        if prep.flop_shapes is None:
            prep.flop_shapes = self._flop_shapes(prep.model, prep.shapes)
        return prep.flop_shapes

    def _flop_shapes(self, model: ir.Model, shapes: dict[str, Shape] | None = None) -> dict[str, Shape]:
        """The shapes FLOPs are counted on: at the image size and channel count of the folder's
        ``config.json`` when it gives them (a symbolic image side would count as 128, which weighs a CNN's
        layers unlike the images it runs on), else ``shapes`` (inferred when None)."""
        dims = image_dims(self.folder)
        named = {"height": dims.get("height"), "width": dims.get("width"), "channel": dims.get("channels")}
        saved: list[tuple[ir.Value, ir.Shape | None]] = []
        for value in model.graph.inputs:
            if value.shape is None:
                continue
            new = [next((v for k, v in named.items() if v and isinstance(d, ir.SymbolicDim) and d.value
                         and k in str(d.value).lower()), d) for d in value.shape]
            if any(a is not b for a, b in zip(new, value.shape, strict=True)):
                saved.append((value, value.shape))
                value.shape = ir.Shape(new)
        if not saved:
            return shapes if shapes is not None else infer_shapes(model)
        try:
            return infer_shapes(model)
        finally:
            for value, shape in saved:
                value.shape = shape

    def plan(self, config: PruningConfig, *, calibration: CalibrationData | None = None) -> PruningPlan:
        """Choose the kept units of every group in ``config.scope`` (uniform sparsity per group).

        ``calibration`` feeds the data-driven criteria (required by ``importance="activation"`` and
        ``"fluctuation"``).
        """
        prep = self._prepare(config.io_patterns)
        return self._plan(prep, config, calibration)

    def _eligible(self, prep: _Prepared, config: PruningConfig) -> list[PruningGroup]:
        """The groups ``config`` may prune: prunable, in scope, not excluded, and touching the key/value
        cache only with ``prune_kv_heads``."""
        eligible: list[PruningGroup] = []
        for g in prep.groups:
            resizes_cache = any(s.io for s in g.slices)
            if (g.prunable and g.kind in config.scope and not any(pat in g.seed for pat in config.exclude)
                    and (config.prune_kv_heads or not resizes_cache)):
                eligible.append(g)
        return eligible

    def _plan(self, prep: _Prepared, config: PruningConfig, calibration: CalibrationData | None = None, *,
              frozen: frozenset[int] = frozenset(), follow: dict[int, list[int]] | None = None
              ) -> PruningPlan:
        """The plan of ``config``. ``frozen`` groups keep every unit; ``follow`` groups keep the given units
        (a multi-file model: a decoder twin follows the plan made for its sibling file). Neither takes part
        in the allocation."""
        follow = follow or {}
        eligible = [g for g in self._eligible(prep, config) if g.id not in frozen and g.id not in follow]
        importance = get_importance(config.importance, calibration=calibration, **config.importance_options) \
            if eligible or not (frozen or follow) else None
        if getattr(importance, "input_dims", ()) is None:  # generated inputs: images of the config's size
            importance.input_dims = image_dims(self.folder) or None
        multiples = {g.id: config.multiple(g.kind) for g in eligible}
        scores: dict[int, np.ndarray] = {}
        latency = None
        cost_shapes = self._dense_flop_shapes(prep) if config.target == "flops" else prep.shapes
        if config.target == "latency":
            latency = self._latency_model(prep, config, eligible)
            costs = latency.unit_costs(config.min_units)
        elif config.target == "units":
            costs = {g.id: np.ones(g.units) for g in eligible}
        else:
            costs = {g.id: unit_costs(g, prep.model, cost_shapes, config.target) for g in eligible}
        total = 0.0
        if config.target == "params":
            total = float(count_parameters(prep.model) - unshared_elements(prep.model))
        elif config.target == "flops":
            total = float(count_flops(prep.model, cost_shapes))
        elif latency is not None:
            total = latency.budget(1.0)

        def uniform_share(g: PruningGroup) -> int:
            """Units of ``g`` removed by one share of ``config.sparsity``, rounded to its multiple."""
            n = units_to_remove(g.units, config.sparsity, config.min_units)
            return round_removal(g.units, n, multiples[g.id], config.min_units)

        if not eligible:
            n_remove: dict[int, int] = {}
        elif config.allocation == "uniform":
            if config.target == "units":
                n_remove = {g.id: uniform_share(g) for g in eligible}
            else:
                # a tensor cut by two groups (a convolution between two channel groups) saves less than
                # the sum of their unit costs
                saving = latency.total_saving if latency else joint_saving(eligible, prep.model, cost_shapes,
                                                                           config.target)
                n_remove = uniform_for_cost(eligible, costs, config.sparsity * total, config.min_units,
                                            multiples, saving=saving, total=total,
                                            measure="latency (ms)" if latency else config.target) \
                    if eligible and config.sparsity > 0 else {}
        else:
            importance.prepare(prep.model, eligible, shapes=prep.shapes, n_remove=None)
            scores = {g.id: importance(g, prep.model) for g in eligible}
            # Head groups that resize the KV cache must lose the same count in every layer (config.json
            # holds one key/value-head count): they take the uniform share, the rest is ranked globally.
            fixed = {g.id: uniform_share(g) for g in eligible
                     if g.kind == "heads" and any(s.io for s in g.slices)}
            ranked = [g for g in eligible if g.id not in fixed]
            if config.target == "units":
                target: float | dict[str, float] = {
                    k: config.sparsity * sum(g.units for g in eligible if g.kind == k)
                    - sum(fixed.get(g.id, 0) for g in eligible if g.kind == k)
                    for k in {g.kind for g in eligible}}
            else:
                target = config.sparsity * total - sum(
                    float(np.sort(costs[g.id])[:fixed[g.id]].sum()) for g in eligible if g.id in fixed)
            normalise = standardise_per_group if config.allocation == "standardized" else normalise_per_kind
            n_remove = global_allocation(ranked, scores, costs, target, config.min_units, multiples,
                                         marginal=latency.marginal if latency else None,
                                         normalise=normalise) \
                if ranked and config.sparsity > 0 else {}
            n_remove.update(fixed if config.sparsity > 0 else {})
            if getattr(importance, "budget_aware", False):  # its ranking depends on the budget: rescore
                scores = {}
        active = [g for g in prep.groups if n_remove.get(g.id)]
        missing = [g for g in active if g.id not in scores]
        if missing:
            importance.prepare(prep.model, missing, shapes=prep.shapes, n_remove=n_remove)
            scores.update({g.id: importance(g, prep.model) for g in missing})
        plans = []
        for g in prep.groups:
            if g.id in follow:
                kept = sorted(follow[g.id])
            elif n_remove.get(g.id):
                kept = select_kept(scores[g.id], n_remove[g.id])
            else:
                kept = list(range(g.units))
            plans.append(GroupPlan(id=g.id, kind=g.kind, seed=f"{g.seed}:{g.seed_axis}", units=g.units,
                                   unit_size=g.unit_size, kept=kept,
                                   tensors=sorted({s.name for s in g.slices if s.constant})))
        plan_config = config.to_dict()
        if latency is not None:
            plan_config["latency_table"] = latency.table.to_dict()
            plan_config["latency_estimate_ms"] = {
                "blocks_before": latency.blocks_ms(),
                "saved": latency.total_saving({g.id: n_remove.get(g.id, 0) for g in eligible}),
                "budget": latency.budget(config.sparsity), "total_before": latency.table.total_ms}
        return PruningPlan(groups=plans, config=plan_config, source=str(self.model_path.name))

    def _latency_model(self, prep: _Prepared, config: PruningConfig, eligible: list[PruningGroup]):
        """The latency table of ``config`` (measured on this model when it has none) bound to the groups."""
        from optimum_prune.latency import LatencyModel, measure_latency_table

        table = config.latency_table
        if table is None:
            table = measure_latency_table(prep.model, eligible, model_path=self.model_path,
                                          min_units=config.min_units)
        return LatencyModel(table, eligible, prep.model)

    def prune(self, config: PruningConfig | None = None, save_dir: str | os.PathLike | None = None, *,
              plan: PruningPlan | None = None, validate: bool = True,
              calibration: CalibrationData | None = None) -> Path:
        """Prune with ``config`` (or apply a saved ``plan``) and write an Optimum-loadable folder.

        The folder holds ``model.onnx``, the source folder's config/tokenizer/processor files,
        ``pruning_plan.json`` and ``report.json``. The model is validated (ONNX checker and an ONNX
        Runtime run) before anything is written; the input folder is never modified. ``calibration``
        feeds the data-driven criteria (required by ``importance="activation"`` and ``"fluctuation"``) and
        the repair step (``recover``; generated inputs are used when it is None). A saved ``plan`` whose
        config has ``recover`` is repaired again on ``calibration``.
        """
        save_dir = check_save_dir(save_dir, self.folder, config, plan)
        start = time.perf_counter()
        pruned = self.prune_in_memory(config, plan=plan, calibration=calibration)
        asked = config or PruningConfig.from_dict(pruned.plan.config)  # a replayed plan: its config's hints
        cut = removed_share([pruned], asked.target)
        pruned.hints = config_hints(pruned.groups, pruned.removed, asked, cut=cut)
        with staging_folder(save_dir) as tmp:
            model_file = tmp / self.model_path.name
            self._copy_side_files(tmp)
            config_file = tmp / "config.json"
            cache_resized = _cache_resized(pruned.groups, pruned.removed)
            patterns = tuple(pruned.plan.config.get("io_patterns", DEFAULT_IO_PATTERNS))
            has_cache = any(p in v.name for v in pruned.model.graph.inputs for p in patterns)
            # A runtime sizes the first, empty cache from config.json: where it cannot say the pruned
            # head counts, the cache inputs narrow what arrives to the kept heads.
            narrow = cache_resized and config_file.is_file() and not _config_describes_cache(
                json.loads(config_file.read_text()), pruned.groups, pruned.removed)

            def write(narrowed: bool) -> list[str]:
                if narrowed:
                    resized = _resized_inputs(pruned.model, pruned.groups, pruned.removed)
                    narrow_cache_inputs(pruned.model, resized)
                written = save_model_atomic(pruned.model, model_file)
                if validate:
                    validate_model_file(model_file, source=self.model_path, header=written.header)
                return _update_config(config_file, pruned.groups, pruned.removed, has_cache=has_cache,
                                      cache_narrowed=narrowed)

            config_notes = write(narrow)
            if validate and cache_resized and config_file.is_file():
                try:
                    check_generates(tmp, model_file.name)
                except ValidationError:
                    if narrow:
                        raise
                    # This model type's runtime ignores the recorded key/value-head count: narrow instead.
                    shutil.copyfile(self.folder / "config.json", config_file)
                    config_notes = write(True)
                    check_generates(tmp, model_file.name)
            pruned.plan.save(tmp / PLAN_FILE)
            report = pruned.report(time.perf_counter() - start, config_notes)
            _write_report(tmp, self.folder, report)
        warn_mistakes(pruned.hints)
        return save_dir

    def prune_in_memory(self, config: PruningConfig | None = None, *, plan: PruningPlan | None = None,
                        calibration: CalibrationData | None = None, frozen: frozenset[int] = frozenset(),
                        follow: dict[int, list[int]] | None = None) -> PrunedModel:
        """Plan (unless ``plan`` is given), repair and slice; return the pruned model without writing it.

        ``frozen`` and ``follow`` are passed to the planner (see :class:`~optimum_prune.MultiFilePruner`).
        """
        if config is None and plan is None:
            raise ConfigError("pass a PruningConfig or a PruningPlan")
        io_patterns = tuple(plan.config.get("io_patterns", DEFAULT_IO_PATTERNS)) if plan and config is None \
            else config.io_patterns
        prep = self._prepare(io_patterns)
        if config is not None and config.prune_kv_heads and NARROWED_DIMS_KEY in prep.model.metadata_props:
            raise ConfigError(
                f"{self.model_path}: its cache inputs were narrowed by an earlier pruning with "
                "prune_kv_heads=True, and pruning its key/value heads again is not supported. Prune the "
                "dense export once at the total sparsity, or prune the other groups with "
                "prune_kv_heads=False (CLI: without --prune-kv-heads)")
        if plan is None:
            plan = self._plan(prep, config, calibration, frozen=frozen, follow=follow)
        removed = _match_plan(plan, prep.groups)
        params_before = count_parameters(prep.model) - unshared_elements(prep.model)
        flops_before = count_flops(prep.model, self._dense_flop_shapes(prep))
        recovery = config.recovery if config is not None else None
        if config is None and plan.config.get("recover"):
            recovery = RecoveryConfig.from_dict(plan.config["recover"])
        repair_report = None
        if recovery is not None and any(removed.values()):
            calib = calibration if calibration is not None else CalibrationData.generated(
                prep.model, GENERATED_REPAIR_DATA, dims=image_dims(self.folder))
            repair_report = repair(prep.model, prep.groups, removed, calib, recovery, shapes=prep.shapes)
            plan = PruningPlan(groups=plan.groups, config=plan.config, source=plan.source,
                               repairs=[{k: v for k, v in r.to_dict().items() if not k.startswith("error")}
                                        for r in repair_report.records])
        apply_removals(prep.model, prep.groups, removed)
        reshare_vectors(prep.model)
        return PrunedModel(model=prep.model, plan=plan, groups=prep.groups, removed=removed,
                           params_before=params_before, flops_before=flops_before,
                           params_after=count_parameters(prep.model),
                           flops_after=count_flops(prep.model, self._flop_shapes(prep.model)),
                           repair=repair_report, untied=list(prep.untied),
                           folded_ifs=prep.folded_ifs)

    def _copy_side_files(self, dest: Path) -> None:
        copy_side_files(self.folder, dest)


def copy_side_files(source: Path, dest: Path) -> None:
    """Copy the files of ``source`` that are not models nor pruning outputs (config, tokenizer,
    processor, generation config) into ``dest``."""
    for item in sorted(source.iterdir()):
        if item.is_file() and not item.name.endswith(_MODEL_SUFFIXES) and item.name not in (PLAN_FILE,
                                                                                             REPORT_FILE):
            shutil.copy2(item, dest / item.name)


_ANOTHER_MODEL = ("the plan was made for another model; make one for this model with "
                  "prune(PruningConfig(...), save_dir)")


def _describe(kind: str, seed: str, units: int, unit_size: int) -> str:
    return f"{kind}, seed {seed}, {units} units of {unit_size}"


def _match_plan(plan: PruningPlan, groups: list[PruningGroup]) -> dict[int, set[int]]:
    model_groups = [(g.kind, f"{g.seed}:{g.seed_axis}", g.units, g.unit_size) for g in groups]
    plan_groups = [(gp.kind, gp.seed, gp.units, gp.unit_size) for gp in plan.groups]
    if len(plan_groups) != len(model_groups):
        n = min(len(plan_groups), len(model_groups))
        first = next((i for i in range(n) if plan_groups[i] != model_groups[i]), n)
        in_plan = _describe(*plan_groups[first]) if first < len(plan_groups) else "none"
        in_model = _describe(*model_groups[first]) if first < len(model_groups) else "none"
        raise PlanMismatchError(f"the plan has {len(plan_groups)} groups, the model {len(model_groups)}; "
                                f"first difference at group {first}: plan ({in_plan}), model ({in_model}); "
                                + _ANOTHER_MODEL)
    removed: dict[int, set[int]] = {}
    for gp, g, in_plan, in_model in zip(plan.groups, groups, plan_groups, model_groups, strict=True):
        if in_plan != in_model:
            raise PlanMismatchError(f"plan group {gp.id} ({_describe(*in_plan)}) does not match model group "
                                    f"{g.id} ({_describe(*in_model)}): " + _ANOTHER_MODEL)
        tensors = sorted({s.name for s in g.slices if s.constant})
        if gp.tensors and list(gp.tensors) != tensors:
            raise PlanMismatchError(
                f"plan group {gp.id} (seed {gp.seed}) touches other tensors than model group {g.id}: only in "
                f"the plan {sorted(set(gp.tensors) - set(tensors))}, only in the model "
                f"{sorted(set(tensors) - set(gp.tensors))}: " + _ANOTHER_MODEL)
        invalid = [u for u in gp.kept
                   if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < g.units]
        if invalid or len(set(gp.kept)) != len(gp.kept):
            raise PlanMismatchError(f"plan group {gp.id} (seed {gp.seed}) keeps invalid units "
                                    f"{invalid or sorted(gp.kept)}: kept must list distinct unit indices in "
                                    f"[0, {g.units})")
        rm = set(gp.removed)
        if rm and not g.prunable:
            raise PlanMismatchError(f"plan removes units of group {g.id}, which cannot be pruned: {g.reason}")
        if len(rm) >= g.units:
            raise PlanMismatchError(f"plan removes every unit of group {g.id}")
        removed[g.id] = rm
    return removed


def _uniform_ratio(groups: list[PruningGroup], removed: dict[int, set[int]], kind: str) -> float | None:
    """The kept share of every ``kind`` group when it is the same for all, else None. Groups refused
    because they would resize a graph output or input (a decoder's LM head: its units are the
    vocabulary, the ``logits`` width) are interface widths, not a layer width the config describes."""
    gs = [g for g in groups if g.kind == kind and g.units > 1
          and (g.prunable or not any(s.io for s in g.slices))]
    if not gs or any(not g.prunable for g in gs):
        return None
    ratios = {(g.units - len(removed.get(g.id, ()))) / g.units for g in gs}
    return ratios.pop() if len(ratios) == 1 else None


def _cache_resized(groups: list[PruningGroup], removed: dict[int, set[int]]) -> bool:
    return any(s.io for g in groups if g.kind == "heads" and removed.get(g.id) for s in g.slices)


def _config_describes_cache(cfg: dict, groups: list[PruningGroup], removed: dict[int, set[int]]) -> bool:
    """Whether config.json can record the pruned cache: it has a key/value-head count, and every head
    group keeps the same share (it holds one count for all layers)."""
    return (any(isinstance(cfg.get(k), int) for k in _KV_KEYS)
            and _uniform_ratio(groups, removed, "heads") is not None)


def _resized_inputs(model: ir.Model, groups: list[PruningGroup],
                    removed: dict[int, set[int]]) -> dict[str, dict[int, int]]:
    """The graph inputs pruned head groups resized: name -> {axis: kept width} (read from the pruned
    model, whose declared input shapes have the kept widths)."""
    inputs = {v.name: v for v in model.graph.inputs}
    out: dict[str, dict[int, int]] = {}
    for g in groups:
        if g.kind != "heads" or not removed.get(g.id):
            continue
        for s in g.slices:
            if s.io and s.name in inputs:
                width = inputs[s.name].shape[s.axis] if inputs[s.name].shape is not None else None
                if not isinstance(width, int):
                    raise PruningError(f"cache input '{s.name}' has no fixed size on axis {s.axis} after "
                                       "pruning, so it cannot be narrowed")
                out.setdefault(s.name, {})[s.axis] = width
    return out


def _kv_heads_pruned(cfg: dict, groups: list[PruningGroup], removed: dict[int, set[int]],
                     n_heads: int | None) -> bool:
    """Whether the pruned head groups remove key/value heads: False when their units are query heads
    that share fewer key/value heads (multi-query attention: the KV head is broadcast to every query
    head, so query heads go alone and the KV-head count stays)."""
    n_kv = next((cfg[k] for k in _KV_KEYS if isinstance(cfg.get(k), int)), None)
    units = {g.units for g in groups if g.kind == "heads" and removed.get(g.id)}
    return not (n_kv is not None and n_heads and n_kv < n_heads and units == {n_heads})


_QUANTIZED_OPS = frozenset({
    ("", "QuantizeLinear"), ("", "DequantizeLinear"), ("", "DynamicQuantizeLinear"), ("", "MatMulInteger"),
    ("", "ConvInteger"), ("", "QLinearMatMul"), ("", "QLinearConv"),
    ("com.microsoft", "QuantizeLinear"), ("com.microsoft", "DequantizeLinear"),
    ("com.microsoft", "QAttention"), ("com.microsoft", "QGemm"), ("com.microsoft", "DynamicQuantizeMatMul"),
    ("com.microsoft", "MatMulNBits"),
    ("com.microsoft", "MatMulIntegerToFloat"), ("com.microsoft", "GatherBlockQuantized"),
    ("com.microsoft", "MatMulBnb4"),
})


def _refuse_quantized(model: ir.Model, path: Path) -> None:
    """Raise :class:`InvalidModelError` for a quantized model: its weights reach the MatMuls through
    (de)quantization ops, so no group could be pruned, and slicing int8 weights with their scales is
    the quantizer's business. The fix is the order of the stages: prune the float model, then quantize."""
    for node in model.graph:
        if (node.domain if node.domain != "ai.onnx" else "", node.op_type) in _QUANTIZED_OPS:
            raise InvalidModelError(
                f"{path} is quantized (node '{node.name}', {node.domain or 'ai.onnx'}::{node.op_type}): "
                "structured pruning works on the float model. Prune the float export, then quantize it "
                "(a recipe's `quantize` stage after `prune`, or ORTQuantizer on the pruned folder)")


def _config_can_set(model_type: str | None, key: str) -> bool:
    """Whether ``model_type``'s transformers config class takes ``key`` from config.json (Falcon computes
    ``head_dim`` from the hidden size and head count, a read-only property that rejects the key).

    Importing transformers imports torch (about 3 s, more than the rest of pruning BERT-base), so until
    something else has imported it the answer is read from the config class's source file instead.
    """
    if model_type is None:
        return True
    if "transformers" not in sys.modules:
        return not _read_only_in_source(model_type, key)
    import inspect

    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        return True
    attr = inspect.getattr_static(CONFIG_MAPPING[model_type], key, None)
    return not (isinstance(attr, property) and attr.fset is None)


def _read_only_in_source(model_type: str, key: str) -> bool:
    """Whether ``transformers/models/<type>/configuration_<type>.py`` defines ``key`` as a property with
    no setter (False when the file is not found: the key is then written, as for any other class)."""
    try:
        dist = importlib.metadata.distribution("transformers")
    except importlib.metadata.PackageNotFoundError:
        return False
    name = model_type.replace("-", "_")
    try:
        text = Path(dist.locate_file(f"transformers/models/{name}/configuration_{name}.py")).read_text()
    except OSError:
        return False
    return re.search(rf"@property\s+def {key}\(", text) is not None and f"@{key}.setter" not in text


def _update_config(path: Path, groups: list[PruningGroup], removed: dict[int, set[int]], *,
                   has_cache: bool = False, cache_narrowed: bool = False) -> list[str]:
    """Record uniform head / KV-head / FFN counts in config.json so runtimes size caches correctly.

    When pruned head groups resize the key/value cache, only the KV-head count changes (with an
    explicit ``head_dim``): Optimum's runtime sizes the cache as ``num_key_value_heads`` x
    ``hidden_size // num_attention_heads``, so ``num_attention_heads`` keeps its source value. Query
    heads pruned alone (multi-query attention) change neither count, for the same reason: so do head
    groups of a graph with a cache (``has_cache``) that leave it whole, whatever config.json says of
    the key/value heads (Falcon-7B's ``multi_query`` overrides its ``num_kv_heads``), and head groups
    whose cache inputs are narrowed (``cache_narrowed``, see :mod:`optimum_prune.passes.cache_inputs`):
    the runtime then sizes the first cache for the dense model, which the graph narrows.
    Otherwise new head counts are recorded when they divide the hidden size, read under any of
    ``_HIDDEN_KEYS`` (kept when it is not found there; some config
    classes reject other values, and the graph does not read them). Returns notes on what was kept.
    """
    if not path.is_file():
        return []
    cfg = json.loads(path.read_text())
    notes: list[str] = []
    changed = False
    cache_resized = _cache_resized(groups, removed)
    heads = _uniform_ratio(groups, removed, "heads")
    if cache_narrowed:
        n_heads = next((cfg[k] for k in _HEAD_KEYS if isinstance(cfg.get(k), int)), None)
        notes.append(f"config.json keeps the source head counts (num_attention_heads={n_heads}): the "
                     "model's cache inputs take the cache a runtime sizes from them and narrow it to each "
                     "layer's kept heads (optimum_prune.passes.cache_inputs). Load it without IO binding "
                     "(use_io_binding=False, the default on CPU): IO binding sizes the output cache the "
                     "same way.")
        heads = None  # the counts stay
    if heads is not None and heads < 1:
        n_heads = next((cfg[k] for k in _HEAD_KEYS if isinstance(cfg.get(k), int)), None)
        hidden = next((cfg[k] for k in _HIDDEN_KEYS if isinstance(cfg.get(k), int)), None)
        new = dict(cfg)
        if (n_heads and isinstance(hidden, int) and cfg.get("head_dim") is None
                and _config_can_set(cfg.get("model_type"), "head_dim")):
            new["head_dim"] = hidden // n_heads
        query_only = not cache_resized and (has_cache or not _kv_heads_pruned(cfg, groups, removed, n_heads))
        if cache_resized or query_only:
            for k in _KV_KEYS if cache_resized else ():
                if isinstance(cfg.get(k), int):
                    new[k] = int(round(cfg[k] * heads))
            notes.append(f"config.json keeps num_attention_heads={n_heads} (the graph has "
                         f"{int(round((n_heads or 0) * heads))} query heads) so that runtimes computing "
                         "head_dim as hidden_size // num_attention_heads size the key/value cache right")
            cfg, changed = new, True
        else:
            for k in _HEAD_KEYS + _KV_KEYS:
                if isinstance(cfg.get(k), int):
                    new[k] = int(round(cfg[k] * heads))
            new_heads = next((new[k] for k in _HEAD_KEYS if isinstance(new.get(k), int)), None)
            if not new_heads or (hidden is not None and hidden % new_heads == 0):
                cfg, changed = new, True
            else:
                why = (f"{new_heads} heads do not divide hidden_size {hidden}" if hidden is not None else
                       f"it names the hidden size under none of {list(_HIDDEN_KEYS)}, so whether {new_heads} "
                       "heads divide it is unknown")
                notes.append(f"config.json keeps the source head counts: {why}, and the pruned graph does "
                             "not read them")
    ffn = _uniform_ratio(groups, removed, "ffn")
    if ffn is not None and ffn < 1:
        for k in _FFN_KEYS:
            if isinstance(cfg.get(k), int):
                cfg[k] = int(round(cfg[k] * ffn))
        changed = True
    if changed:
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return notes


def _write_report(dest: Path, source: Path, stage: dict) -> None:
    prior = source / REPORT_FILE
    stages = []
    if prior.is_file():
        try:
            stages = list(json.loads(prior.read_text()).get("stages", []))
        except (json.JSONDecodeError, AttributeError):
            stages = []
    stages.append(stage)
    (dest / REPORT_FILE).write_text(json.dumps({"stages": stages}, indent=1, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(type(o))
