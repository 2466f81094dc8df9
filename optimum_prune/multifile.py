"""``MultiFilePruner``: a model exported as several ONNX files, pruned as one.

optimum-onnx writes encoder-decoder models (T5, BART, Marian, Whisper, ...) as several files:
``encoder_model.onnx``, ``decoder_model.onnx``, ``decoder_with_past_model.onnx`` and
``decoder_model_merged.onnx`` (the two decoders behind an ``If`` node, which
``ORTModelForSeq2SeqLM`` prefers). The files are pruned together:

- Each file is analysed on its own. A group whose root weights another file holds too (the two
  decoders are exported from the same layers) is linked to its twin there: twins keep the same units,
  planned once, in the first file by name (``decoder_model.onnx``), and followed by the others; a group
  that holds only some of its twin's roots (the cross-attention of the decoder with past, whose keys and
  values come from the cache) is a twin too when every shared root is owned unit by unit alike. A
  group whose root weights another file holds in a group of another structure (a tied embedding the
  encoder and decoder share) keeps every unit in both: never two files that disagree.
- The merged decoder is rebuilt from the two pruned decoders with optimum's own ``merge_decoders``;
  a merged decoder without its two parts cannot be pruned (its layers live in ``If`` subgraphs) and
  is copied unchanged.
- Every written file is validated (ONNX checker and an ONNX Runtime run) before the folder replaces
  ``save_dir``; ``pruning_plan.json`` holds one plan per file (:func:`optimum_prune.plan.load_plan`),
  so ``verify(dense, pruned, file_name=...)`` checks each file by the exactness oracle.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from optimum_prune.association.rules import RuleRegistry
from optimum_prune.association.tree import KINDS, PruningGroup
from optimum_prune.calibration import CalibrationData
from optimum_prune.configuration import DEFAULT_IO_PATTERNS, PruningConfig
from optimum_prune.errors import (
    CalibrationRequiredError,
    ConfigError,
    InvalidModelError,
    PlanMismatchError,
    PruningError,
)
from optimum_prune.graph import const_array, save_model_atomic
from optimum_prune.hints import config_hints, warn_mistakes
from optimum_prune.passes.cache_inputs import NARROWED_DIMS_KEY, narrow_cache_inputs
from optimum_prune.passes.validate import make_session, validate_model_file
from optimum_prune.plan import PLAN_FILE, PruningPlan, load_component_plans, save_component_plans
from optimum_prune.pruner import (
    AnalysisReport,
    ORTPruner,
    PrunedModel,
    _resized_inputs,
    _update_config,
    _write_report,
    check_save_dir,
    copy_side_files,
    removed_share,
    staging_folder,
)

MERGED_DECODER = "decoder_model_merged.onnx"
DECODER = "decoder_model.onnx"
DECODER_WITH_PAST = "decoder_with_past_model.onnx"

GroupRef = tuple[str, int]
"""(file name, group id)."""


@dataclass
class CrossFileLinks:
    """How the groups of the files relate: twins (the same units everywhere) and conflicts (shared
    root weights in groups of different structure: never pruned)."""

    twins: list[list[GroupRef]] = field(default_factory=list)
    conflicts: dict[GroupRef, str] = field(default_factory=dict)

    def leader_of(self) -> dict[GroupRef, GroupRef]:
        """Each twin's leader: the twin in the first file by name."""
        return {ref: min(cluster) for cluster in self.twins for ref in cluster}


@dataclass
class MultiFileAnalysis:
    """What :meth:`MultiFilePruner.analyze` found: one :class:`AnalysisReport` per file, and the links."""

    components: dict[str, AnalysisReport]
    links: CrossFileLinks
    unprunable_files: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> int:
        """Parameters of every file (shared weights counted once per file)."""
        return sum(r.params for r in self.components.values())

    @property
    def flops(self) -> int:
        """FLOPs of every file at batch 1 x 128 tokens."""
        return sum(r.flops for r in self.components.values())

    def unprunable(self) -> list[dict]:
        """Groups that cannot be pruned, with why, per file (cross-file conflicts included)."""
        rows = [{"file": name, **u} for name, r in self.components.items() for u in r.unprunable()]
        return rows + [{"file": f, "group": g, "kind": "", "seed": "", "reason": why}
                       for (f, g), why in sorted(self.links.conflicts.items())]

    @property
    def groups(self) -> list[PruningGroup]:
        """Every group of every file (ids are per file)."""
        return [g for report in self.components.values() for g in report.groups]

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per file, per kind: groups found, groups prunable, prunable units."""
        return {name: report.summary() for name, report in self.components.items()}

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"components": {name: report.to_dict() for name, report in self.components.items()},
                "twins": [[list(ref) for ref in cluster] for cluster in self.links.twins],
                "conflicts": [{"file": f, "group": g, "reason": why}
                              for (f, g), why in sorted(self.links.conflicts.items())],
                "unprunable_files": self.unprunable_files}

    def __str__(self) -> str:
        parts = []
        for name, report in self.components.items():
            parts.append(f"== {name}\n{report}")
        parts.append(f"{len(self.links.twins)} groups shared by several files (pruned alike), "
                     f"{len(self.links.conflicts)} refused for a cross-file conflict")
        parts += [f"{name}: {why}" for name, why in self.unprunable_files.items()]
        return "\n".join(parts)


ENCODER = "encoder_model.onnx"


def is_encoder_decoder_export(folder: Path) -> bool:
    """Whether ``folder`` holds optimum-onnx's encoder-decoder files (an encoder and a decoder)."""
    names = set(onnx_files(folder))
    return ENCODER in names and bool(names & {DECODER, DECODER_WITH_PAST, MERGED_DECODER})


def onnx_files(folder: Path) -> list[str]:
    """The ONNX files of ``folder``, sorted by name (hidden files left out)."""
    return sorted(p.name for p in folder.glob("*.onnx") if not p.name.startswith("."))


class MultiFilePruner:
    """Structured pruner for a folder holding one model as several ONNX files (see the module docstring).

    ``ORTPruner.from_pretrained(folder)`` returns one for optimum-onnx's encoder-decoder layout (no
    ``model.onnx``; ``encoder_model.onnx`` and its decoders); build one directly with ``files=`` for any
    other set of ONNX files that share weights. It has the same ``analyze`` / ``plan`` / ``prune``
    methods as :class:`~optimum_prune.ORTPruner`.
    """

    def __init__(self, folder: str | os.PathLike, files: list[str] | None = None,
                 registry: RuleRegistry | None = None) -> None:
        self.folder = Path(folder)
        files = sorted(files) if files is not None else onnx_files(self.folder)
        missing = [f for f in files if not (self.folder / f).is_file()]
        if missing:
            raise InvalidModelError(f"{missing} not found in {self.folder}; ONNX files there: "
                                    f"{onnx_files(self.folder)}")
        self.rebuild_merged = MERGED_DECODER in files and DECODER in files and DECODER_WITH_PAST in files
        self.unprunable_files: dict[str, str] = {}
        if MERGED_DECODER in files:
            self.unprunable_files[MERGED_DECODER] = (
                f"rebuilt from the pruned {DECODER} and {DECODER_WITH_PAST} with optimum's merge_decoders"
                if self.rebuild_merged else
                f"copied unchanged: its layers live in If subgraphs; export with --no-post-process (or keep "
                f"{DECODER} and {DECODER_WITH_PAST}) to prune the decoder")
        self.files = [f for f in files if f != MERGED_DECODER]
        if not self.files:
            raise InvalidModelError(f"{self.folder} holds no ONNX file the pruner can prune "
                                    f"(only {MERGED_DECODER}): export with --no-post-process")
        self.pruners = {f: ORTPruner(self.folder / f, registry) for f in self.files}
        self._derived: dict[tuple[int, str], CalibrationData | None] = {}
        self._link_cache: dict[tuple[str, ...], CrossFileLinks] = {}
        self._inputs = {f: _input_names(self.folder / f) for f in self.files}

    # ------------------------------------------------------------------------------------------
    def analyze(self, io_patterns: tuple[str, ...] = DEFAULT_IO_PATTERNS) -> MultiFileAnalysis:
        """Analyse every file (see :meth:`ORTPruner.analyze`) and link the groups they share."""
        reports = {f: p.analyze(io_patterns) for f, p in self.pruners.items()}
        links = self._links(tuple(io_patterns))
        return MultiFileAnalysis(reports, links, dict(self.unprunable_files))

    def _links(self, io_patterns: tuple[str, ...]) -> CrossFileLinks:
        """The cross-file links (hashing every root weight once per ``io_patterns``)."""
        if io_patterns not in self._link_cache:
            self._link_cache[io_patterns] = self._find_links(io_patterns)
        return self._link_cache[io_patterns]

    def _find_links(self, io_patterns: tuple[str, ...]) -> CrossFileLinks:
        by_digest: dict[str, set[GroupRef]] = {}
        keys: dict[GroupRef, tuple] = {}
        digests: dict[GroupRef, frozenset[str]] = {}
        owners: dict[GroupRef, dict[str, np.ndarray]] = {}  # each root's unit owner, by content digest
        for f, pruner in self.pruners.items():
            prep = pruner._prepare(io_patterns)
            values = dict(prep.model.graph.initializers)
            for g in prep.groups:
                slices = {(s.name, s.axis): s.owner for s in g.slices}
                by_root = {d: slices.get((name, axis)) for name, axis in g.roots
                           if (d := _digest(values.get(name), axis)) is not None}
                ds = frozenset(by_root)
                keys[(f, g.id)] = (g.kind, g.units, g.unit_size, ds)
                digests[(f, g.id)] = ds
                owners[(f, g.id)] = by_root
                for d in ds:
                    by_digest.setdefault(d, set()).add((f, g.id))
        links = CrossFileLinks()
        seen: set[GroupRef] = set()
        for ref in sorted(keys):
            if ref in seen:
                continue
            partners = {other for d in digests[ref] for other in by_digest[d] if other[0] != ref[0]}
            if not partners:
                continue
            cluster = {ref} | partners
            per_file: dict[str, list[GroupRef]] = {}
            for r in cluster:
                per_file.setdefault(r[0], []).append(r)
            one_per_file = all(len(rs) == 1 for rs in per_file.values())
            same = one_per_file and len({keys[r] for r in cluster}) == 1
            if same or (one_per_file and _nested_twins(sorted(cluster), keys, owners)):
                links.twins.append(sorted(cluster))
            else:
                files = ", ".join(sorted(per_file))
                for r in cluster:
                    links.conflicts[r] = (f"its root weights are shared with groups of another structure in "
                                          f"{files}; pruning one file alone would break the other")
            seen |= cluster
        return links

    # ------------------------------------------------------------------------------------------
    def plan(self, config: PruningConfig, *,
             calibration: CalibrationData | Mapping[str, CalibrationData] | None = None
             ) -> dict[str, PruningPlan]:
        """One plan per file: twins keep the same units, conflicting groups keep every unit.

        ``calibration`` is one :class:`CalibrationData` (used for the files whose inputs it feeds) or a
        mapping from file name to calibration data.
        """
        links = self._links(tuple(config.io_patterns))
        leader = links.leader_of()
        preps = {f: p._prepare(config.io_patterns) for f, p in self.pruners.items()}
        eligible = {(f, g.id) for f, p in self.pruners.items() for g in p._eligible(preps[f], config)}
        frozen: dict[str, set[int]] = {f: set() for f in self.files}
        for ref in links.conflicts:
            frozen[ref[0]].add(ref[1])
        for cluster in links.twins:
            if not all(ref in eligible for ref in cluster):
                for f, gid in cluster:
                    frozen[f].add(gid)
        plans: dict[str, PruningPlan] = {}
        for f, pruner in self.pruners.items():
            follow = {}
            for (ff, gid), (lf, lgid) in leader.items():
                if ff == f and (lf, lgid) != (ff, gid) and gid not in frozen[f]:
                    follow[gid] = list(next(gp for gp in plans[lf].groups if gp.id == lgid).kept)
            calib = self._calibration_for(f, calibration)
            try:
                plans[f] = pruner._plan(preps[f], config, calib, frozen=frozenset(frozen[f]), follow=follow)
            except CalibrationRequiredError as e:
                if calib is None and calibration is not None:  # given, but it fits no input of this file
                    given = (sorted(next(iter(calibration.batches()), {}))
                             if isinstance(calibration, CalibrationData) else sorted(calibration))
                    raise CalibrationRequiredError(
                        f"{f}: importance {config.importance!r} needs calibration data for this file, and "
                        f"the data given ({given}) neither feeds its inputs {sorted(self._inputs[f])} nor, "
                        "through the encoder, a decoder's: pass a mapping {file name: CalibrationData} "
                        "(Python API), or choose a data-free criterion (l1, l2, tree, obs, fidelity)") from e
                raise type(e)(f"{f}: {e}") from e
            except ConfigError as e:
                raise type(e)(f"{f}: {e}") from e
            follows = [gp for gp in plans[f].groups if gp.id in follow]
            if config.recovery is not None and any(len(gp.kept) < gp.units for gp in follows):
                raise ConfigError(
                    f"recover=True: {f} shares pruned layers with another file of this model, and the repair "
                    "would refit them in one file only; prune with recover=False, or prune one file with "
                    "ORTPruner.from_pretrained(folder, file_name=...)")
        return plans

    def _check_twins(self, plans: Mapping[str, PruningPlan], config: PruningConfig | None) -> None:
        """A replayed set of plans must keep the same units in twin groups (and may not be repaired
        where twins lose units); raise :class:`PlanMismatchError` / :class:`ConfigError` otherwise."""
        io_patterns = config.io_patterns if config is not None else tuple(
            next(iter(plans.values())).config.get("io_patterns", DEFAULT_IO_PATTERNS))
        recover = config.recovery is not None if config is not None else any(
            pl.config.get("recover") for pl in plans.values())
        for cluster in self._links(tuple(io_patterns)).twins:
            group_plans = [next((gp for gp in plans[f].groups if gp.id == gid), None) for f, gid in cluster]
            kept = {tuple(sorted(gp.kept)) if gp is not None else None for gp in group_plans}
            if None in kept or len(kept) > 1:
                raise PlanMismatchError(
                    f"the plans keep different units in groups that share their layers ({cluster}): "
                    "make them with MultiFilePruner.plan")
            if recover and any(len(gp.kept) < gp.units for gp in group_plans):
                raise ConfigError(f"recover=True: the groups {cluster} share pruned layers across files, and "
                                  "the repair would refit them in one file only; replay with recover=False")

    def _calibration_for(self, name: str, calibration) -> CalibrationData | None:
        """The calibration data of file ``name``: its entry of a mapping; one ``CalibrationData`` when it
        feeds the file's inputs; for a decoder fed by an encoder the data feeds, inputs derived by
        :func:`decoder_calibration`; else None."""
        if calibration is None:
            return None
        if isinstance(calibration, Mapping):
            return calibration.get(name)
        first = next(iter(calibration.batches()), None)
        if first is None:
            return None
        if self._inputs[name] <= set(first):
            return calibration
        if ENCODER in self.pruners and self._inputs[ENCODER] <= set(first):
            key = (id(calibration), name)
            if key not in self._derived:
                self._derived[key] = decoder_calibration(self.folder, name, calibration)
            return self._derived[key]
        return None

    # ------------------------------------------------------------------------------------------
    def prune(self, config: PruningConfig | None = None, save_dir: str | os.PathLike | None = None, *,
              plan: Mapping[str, PruningPlan] | None = None, validate: bool = True,
              calibration: CalibrationData | Mapping[str, CalibrationData] | None = None) -> Path:
        """Prune every file with ``config`` (or replay ``plan``, one per file) and write one folder that
        ``ORTModelForSeq2SeqLM`` (or the matching class) loads.

        The folder holds every ONNX file of the source (pruned, rebuilt or copied), its other files,
        ``pruning_plan.json`` (one plan per file) and ``report.json``. Each file is validated before the
        folder replaces ``save_dir``; the input folder is never modified.
        """
        save_dir = check_save_dir(save_dir, self.folder, config, plan)
        start = time.perf_counter()
        if plan is None:
            plans = self.plan(config, calibration=calibration)
        elif isinstance(plan, Mapping):
            plans = dict(plan)
        else:
            raise ConfigError("a multi-file model takes one plan per file: pass the mapping "
                              "{file name: PruningPlan} (load_plan(path, file_name) reads each)")
        missing = sorted(set(self.files) - set(plans))
        if missing:
            raise ConfigError(f"no plan for {missing}; the plans cover {sorted(plans)}")
        if plan is not None:
            self._check_twins(plans, config)
        pruned: dict[str, PrunedModel] = {}
        for f, pruner in self.pruners.items():
            pruned[f] = pruner.prune_in_memory(config, plan=plans[f],
                                               calibration=self._calibration_for(f, calibration))
        # Optimum's ORTModelForSeq2SeqLM sizes the first, empty decoder cache from config.json as
        # num_attention_heads x hidden_size // num_attention_heads, which no count can make the pruned
        # one: the cache inputs narrow it, and config.json keeps the source counts.
        narrowed = False
        for pm in pruned.values():
            resized = _resized_inputs(pm.model, pm.groups, pm.removed)
            if resized:
                narrow_cache_inputs(pm.model, resized)
                narrowed = True
        with staging_folder(save_dir) as tmp:
            for f, pm in pruned.items():
                written = save_model_atomic(pm.model, tmp / f)
                if validate:
                    validate_model_file(tmp / f, source=self.folder / f, header=written.header)
            if MERGED_DECODER in self.unprunable_files:
                if self.rebuild_merged:
                    _merge_decoders(tmp, validate,
                                    pruned[DECODER_WITH_PAST].model.metadata_props.get(NARROWED_DIMS_KEY))
                else:
                    _copy_model(self.folder, MERGED_DECODER, tmp)
            copy_side_files(self.folder, tmp)
            combined, removed = _renumbered(pruned)
            notes = _update_config(tmp / "config.json", combined, removed, cache_narrowed=narrowed)
            save_component_plans(tmp / PLAN_FILE, {f: pm.plan for f, pm in pruned.items()})
            seconds = time.perf_counter() - start
            components = {f: pm.report(seconds, []) for f, pm in pruned.items()}
            asked = config or PruningConfig.from_dict(next(iter(pruned.values())).plan.config)
            cut = removed_share(pruned.values(), asked.target)
            hints = [*config_hints(combined, removed, asked, cut=cut),
                     *(h for c in components.values() for h in c.get("hints", []))]
            report = {"stage": "prune", "config": next(iter(components.values()))["config"],
                      "params_before": sum(c["params_before"] for c in components.values()),
                      "params_after": sum(c["params_after"] for c in components.values()),
                      "flops_before": sum(c["flops_before"] for c in components.values()),
                      "flops_after": sum(c["flops_after"] for c in components.values()),
                      "groups_found": sum(c["groups_found"] for c in components.values()),
                      "groups_pruned": sum(c["groups_pruned"] for c in components.values()),
                      "units_removed": {k: sum(c["units_removed"][k] for c in components.values())
                                        for k in KINDS},
                      "seconds": round(seconds, 3), "config_notes": notes,
                      **({"hints": hints} if hints else {}),
                      "files": dict(self.unprunable_files), "components": components}
            _write_report(tmp, self.folder, report)
        warn_mistakes(hints)
        return save_dir


def read_component_plans(folder: str | os.PathLike) -> dict[str, PruningPlan]:
    """Every file's plan in a folder written by :meth:`MultiFilePruner.prune`."""
    return load_component_plans(Path(folder) / PLAN_FILE)


def decoder_calibration(folder: Path, decoder: str, encoder_data: CalibrationData) -> CalibrationData | None:
    """Calibration feeds for ``decoder`` made from the encoder's: ``encoder_hidden_states`` computed by
    the dense ``encoder_model.onnx`` on each batch, its ``attention_mask`` as ``encoder_attention_mask``,
    and the batch's own ``input_ids`` shifted right behind ``decoder_start_token_id`` as the decoder's
    ``input_ids`` (teacher forcing on the source text: a proxy for target text that keeps the token
    statistics). None when the decoder takes other inputs (a cache) or the batches hold no ``input_ids``
    (speech): pass a mapping from file name to data then."""
    import json

    names = _input_names(folder / decoder)
    if not names <= {"input_ids", "encoder_hidden_states", "encoder_attention_mask"} or \
            "encoder_hidden_states" not in names:
        return None
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    start = next((config[k] for k in ("decoder_start_token_id", "pad_token_id")
                  if isinstance(config.get(k), int)), 0)
    session = make_session(folder / ENCODER)
    wanted = {i.name for i in session.get_inputs()}
    batches = []
    for batch in encoder_data.batches():
        if "input_ids" not in batch:
            return None
        hidden = session.run(None, {k: v for k, v in batch.items() if k in wanted})[0]
        ids = np.asarray(batch["input_ids"])
        feed = {"encoder_hidden_states": hidden,
                "input_ids": np.concatenate([np.full_like(ids[:, :1], start), ids[:, :-1]], axis=1)}
        if "encoder_attention_mask" in names:
            feed["encoder_attention_mask"] = np.asarray(batch.get("attention_mask", np.ones_like(ids)))
        batches.append(feed)
    return CalibrationData(batches, encoder_data.config, source=f"derived from the encoder for {decoder}")


def _input_names(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in initializers}


def _nested_twins(cluster: list[GroupRef], keys: dict[GroupRef, tuple],
                  owners: dict[GroupRef, dict[str, np.ndarray]]) -> bool:
    """Whether the groups of ``cluster`` (one per file) are one structure seen through fewer roots in some
    files: the same kind, units and unit size, root sets nested (a decoder with past reads the cross-
    attention keys and values from the cache, so its group holds only the query projection of the other
    decoder's), and every root two of them share owned unit by unit alike."""
    if len({keys[r][:3] for r in cluster}) != 1:
        return False
    chain = sorted(cluster, key=lambda r: len(keys[r][3]))
    for small, big in zip(chain, chain[1:], strict=False):
        if not keys[small][3] <= keys[big][3]:
            return False
    for a in cluster:
        for b in cluster:
            for d in keys[a][3] & keys[b][3]:
                oa, ob = owners[a].get(d), owners[b].get(d)
                if oa is None or ob is None or not np.array_equal(oa, ob):
                    return False
    return True


def _digest(value: ir.Value | None, axis: int) -> str | None:
    """Content hash of a root weight (with the unit axis), or None when it is not a constant."""
    if value is None:
        return None
    arr = const_array(value)
    if arr is None:
        return None
    h = hashlib.sha1(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
    return f"{arr.dtype}:{arr.shape}:{axis}:{h.hexdigest()}"


def _renumbered(pruned: dict[str, PrunedModel]) -> tuple[list[PruningGroup], dict[int, set[int]]]:
    """Every file's groups with ids made unique, and their removed units (for config.json)."""
    from dataclasses import replace

    groups: list[PruningGroup] = []
    removed: dict[int, set[int]] = {}
    for pm in pruned.values():
        for g in pm.groups:
            new = replace(g, id=len(groups))
            removed[new.id] = pm.removed.get(g.id, set())
            groups.append(new)
    return groups, removed


def _copy_model(source: Path, name: str, dest: Path) -> None:
    """Bring an ONNX file with its external data files (hard links where possible: outputs are always new
    files, never written in place)."""
    import onnx

    from optimum_prune.stages.base import link_or_copy

    model = onnx.load(str(source / name), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for item in (name, *sorted(locations)):
        link_or_copy(source / item, dest / item)


def _merge_decoders(folder: Path, validate: bool, narrowed: str | None = None) -> None:
    """Rebuild ``decoder_model_merged.onnx`` in ``folder`` from its two pruned decoders; ``narrowed`` is
    the with-past decoder's narrowed cache widths (its metadata), which ``merge_decoders`` drops."""
    from optimum.onnx.graph_transformations import merge_decoders

    target = folder / MERGED_DECODER
    try:
        merge_decoders(folder / DECODER, folder / DECODER_WITH_PAST, save_path=target, strict=False)
    except Exception as e:
        raise PruningError(f"could not rebuild {MERGED_DECODER} from the pruned {DECODER} and "
                           f"{DECODER_WITH_PAST} with optimum's merge_decoders "
                           f"({type(e).__name__}: {e})") from e
    if narrowed is not None:
        merged = onnx.load(str(target), load_external_data=False)
        onnx.helper.set_model_props(merged, {**{p.key: p.value for p in merged.metadata_props},
                                             NARROWED_DIMS_KEY: narrowed})
        onnx.save(merged, str(target))
    if validate:
        validate_model_file(target)
