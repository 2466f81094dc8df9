"""The exactness oracle: a pruned model must compute what the dense model computes with the removed
channels' consumer slices set to zero.

For groups whose channels are not normalised together (FFN neurons, heads, conv filters) the two
outputs agree to float32 round-off; a missed consumer or a wrong index map breaks this at once.
Groups coupled through a normalisation (``hidden``) cannot be exact: they are reported as such.

A model pruned with ``recover`` (least-squares repair) has refitted consumer rows and biases, so it no
longer equals the zeroed dense model. The oracle then also copies the repaired consumer tensors listed in
the plan (``repairs``) from the pruned model into the zeroed dense model (kept rows in place, removed rows
zero, created bias ``Add`` nodes inserted the same way): the comparison checks that the repair changed
nothing but those consumers, and that the cut is still exact around them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimum_prune.association.tree import PruningGroup
from optimum_prune.configuration import DEFAULT_IO_PATTERNS
from optimum_prune.errors import InvalidModelError
from optimum_prune.graph import const_array, save_model_atomic
from optimum_prune.passes.apply import removed_mask
from optimum_prune.passes.validate import image_dims, make_session, runnable_inputs
from optimum_prune.plan import PLAN_FILE, load_component_plans, load_plan
from optimum_prune.pruner import ORTPruner, _match_plan

RELATIVE_TOLERANCE = 1e-4


@dataclass
class VerificationResult:
    """Errors between the zeroed dense model and the pruned model, per output and overall."""

    max_abs_error: float
    max_rel_error: float
    exact_groups: bool
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    tolerance: float = RELATIVE_TOLERANCE
    repaired: int = 0

    @property
    def exact(self) -> bool:
        """True when every pruned group is exact by construction and the outputs agree within tolerance."""
        return self.exact_groups and self.max_rel_error <= self.tolerance

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error, "exact": self.exact,
                "exact_groups": self.exact_groups, "outputs": self.outputs, "repaired": self.repaired}


_RANDOM_OPS = ("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial",
               "Bernoulli", "Dropout")


def _require_deterministic(session, feeds: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                           model: ir.Model, path: Path) -> None:
    """Raise :class:`InvalidModelError` when a second run of the dense model on the same inputs gives other
    outputs: the oracle compares two runs and would blame the pruning for the model's own randomness
    (ViT-MAE's patch shuffling, ``RandomUniformLike``)."""
    again = session.run(None, feeds)
    for (name, first), second in zip(ref.items(), again, strict=True):
        first, second = np.asarray(first), np.asarray(second)
        # thread scheduling may reorder a float sum: the last bits are not a difference
        same = first.shape == second.shape and (
            np.allclose(first, second, rtol=1e-6, atol=1e-7, equal_nan=True)
            if np.issubdtype(first.dtype, np.floating) else np.array_equal(first, second))
        if same:
            continue
        random = [f"'{n.name}' ({n.op_type})" for n in model.graph if n.op_type in _RANDOM_OPS]
        cause = f"random ops: {', '.join(random[:3])}" if random else "no random op in the graph"
        raise InvalidModelError(
            f"{path}: two runs on the same inputs give different '{name}' ({cause}); the exactness oracle "
            "cannot compare such a model. Fix: export it without the random ops (ViT-MAE shuffles its "
            "patches even with mask_ratio=0), or verify a deterministic part of it")


def verify(dense_dir: str | os.PathLike, pruned_dir: str | os.PathLike, *, file_name: str = "model.onnx",
           seed: int = 0, dims: dict[str, int] | None = None,
           inputs: dict[str, np.ndarray] | None = None) -> VerificationResult:
    """Run the exactness oracle on a dense folder and the pruned folder made from it.

    For a multi-file model (:class:`~optimum_prune.multifile.MultiFilePruner`) pass ``file_name`` to check
    one file; with the default, every pruned file is checked and the results are combined
    (:func:`combined_result`).

    The plan in ``pruned_dir`` says which units were removed; their consumer slices are zeroed in a
    copy of the dense model, and both models run under ONNX Runtime on the same generated inputs
    (graph inputs and outputs that were resized, such as the KV cache, are compared on kept positions).
    ``inputs`` replaces the generated inputs (feeds of the dense model).
    """
    pruned_dir = Path(pruned_dir)
    plan_path = pruned_dir / PLAN_FILE
    if not plan_path.is_file():
        raise InvalidModelError(f"{plan_path} not found: {pruned_dir} is not a folder written by "
                                "ORTPruner.prune")
    components = sorted(load_component_plans(plan_path))
    if components and file_name == "model.onnx" and not (pruned_dir / file_name).is_file():
        results = {name: verify(dense_dir, pruned_dir, file_name=name, seed=seed, dims=dims)
                   for name in components}
        return combined_result(results)
    plan = load_plan(plan_path, file_name)
    pruner = ORTPruner.from_pretrained(dense_dir, file_name=file_name)
    prep = pruner._prepare(tuple(plan.config.get("io_patterns", DEFAULT_IO_PATTERNS)))
    removed = _match_plan(plan, prep.groups)
    active = [g for g in prep.groups if removed.get(g.id)]
    _zero_leaves(prep, active, removed)
    copied = True
    if plan.repairs:
        copied = _copy_repairs(prep, active, removed, plan.repairs, pruned_dir / file_name)
    tmp = Path(tempfile.mkdtemp(prefix="optimum-prune-verify-"))
    try:
        zeroed_path = tmp / "zeroed.onnx"
        save_model_atomic(prep.model, zeroed_path)
        dense = make_session(zeroed_path)
        pruned = make_session(pruned_dir / file_name)
        if dims is None:
            dims = image_dims(Path(dense_dir))
        feeds = inputs if inputs is not None else runnable_inputs(dense, seed=seed, dims=dims)[0]
        keep = _io_keep(active, removed)
        pruned_feeds = {k: _take(v, keep.get(k)) for k, v in feeds.items()}
        ref = dict(zip([o.name for o in dense.get_outputs()], dense.run(None, feeds), strict=True))
        _require_deterministic(dense, feeds, ref, prep.model, Path(dense_dir) / file_name)
        got = dict(zip([o.name for o in pruned.get_outputs()], pruned.run(None, pruned_feeds), strict=True))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    outputs = {}
    max_abs = max_rel = 0.0
    for name, r in ref.items():
        r = _take(r, keep.get(name))
        g = got[name]
        if r.shape != g.shape:
            outputs[name] = {"max_abs_error": float("inf"), "max_rel_error": float("inf")}
            max_abs = max_rel = float("inf")
            continue
        if not np.issubdtype(r.dtype, np.floating):
            err = float(np.abs(r.astype(np.float64) - g.astype(np.float64)).max()) if r.size else 0.0
            rel = err
        else:
            err = float(np.abs(r.astype(np.float64) - g).max()) if r.size else 0.0
            scale = float(np.abs(r).max()) if r.size else 0.0
            rel = err / max(scale, 1e-12)
        outputs[name] = {"max_abs_error": err, "max_rel_error": rel}
        max_abs, max_rel = max(max_abs, err), max(max_rel, rel)
    return VerificationResult(max_abs, max_rel, copied and all(g.exact for g in active), outputs,
                              repaired=len(plan.repairs))


def combined_result(results: dict[str, VerificationResult]) -> VerificationResult:
    """One result for several files: the largest errors, exact only when every file is; outputs are
    named ``file:output``."""
    outputs = {f"{name}:{out}": errs for name, r in results.items() for out, errs in r.outputs.items()}
    return VerificationResult(max((r.max_abs_error for r in results.values()), default=0.0),
                              max((r.max_rel_error for r in results.values()), default=0.0),
                              all(r.exact_groups for r in results.values()), outputs,
                              repaired=sum(r.repaired for r in results.values()))


def _copy_repairs(prep, groups: list[PruningGroup], removed: dict[int, set[int]], repairs: list[dict],
                  pruned_file: Path) -> bool:
    """Put the pruned model's repaired consumer weights and biases into the zeroed dense model.

    A repaired tensor goes back to its kept positions on every axis a group cuts (a consumer's outputs may
    be another group's channels). Returns False when a tensor could not be placed, so the comparison
    cannot be exact."""
    from optimum_prune.graph import load_model
    from optimum_prune.recovery import insert_bias

    pruned = load_model(pruned_file)
    inits = pruned.graph.initializers
    values = dict(prep.model.graph.initializers)
    nodes = {n.name: n for n in prep.model.graph}

    def kept_positions(name: str) -> dict[int, np.ndarray]:
        # the kept positions of every axis some group cuts: a consumer's output axis may be another
        # group's root (a CNN's convolutions, an MLP chain), and the pruned tensor lost both
        keeps: dict[int, np.ndarray] = {}
        for g in groups:
            for s in g.slices:
                if s.name == name:
                    mask = ~removed_mask(s.owner, removed[g.id])
                    keeps[s.axis] = mask if s.axis not in keeps else keeps[s.axis] & mask
        return keeps

    def placed(dense: np.ndarray, new: np.ndarray, keeps: dict[int, np.ndarray]) -> np.ndarray | None:
        index = np.ix_(*(np.flatnonzero(keeps[a]) if a in keeps else np.arange(n)
                         for a, n in enumerate(dense.shape)))
        if dense[index].shape != new.shape:
            return None
        dense = dense.copy()
        dense[index] = new
        return dense

    ok = True
    for rec in repairs:
        name, axis = rec["weight"], int(rec["axis"])
        keeps = kept_positions(name)
        if name not in values or name not in inits or axis not in keeps:
            ok = False
            continue
        dense_w = np.array(values[name].const_value.numpy())
        new_w = placed(dense_w, inits[name].const_value.numpy(), keeps)
        if new_w is None:
            ok = False
            continue
        values[name].const_value = ir.tensor(new_w, name=name)
        bias = rec.get("bias")
        if not bias or bias not in inits:
            continue
        arr = inits[bias].const_value.numpy()
        out_axis = 0 if dense_w.ndim > 2 else 1 - axis  # a Conv kernel's outputs lead; a matrix's: not rows
        out_keeps = {0: keeps[out_axis]} if out_axis in keeps else {}
        if rec.get("bias_created"):
            full = placed(np.zeros(dense_w.shape[out_axis], dtype=arr.dtype), arr, out_keeps)
            if rec["node"] not in nodes or full is None:
                ok = False
                continue
            insert_bias(prep.model, nodes[rec["node"]], bias, full)
            continue
        full = placed(np.array(values[bias].const_value.numpy()), arr, kept_positions(bias) or out_keeps) \
            if bias in values else None
        if full is None:
            ok = False
            continue
        values[bias].const_value = ir.tensor(full, name=bias)
    return ok


def _zero_leaves(prep, groups: list[PruningGroup], removed: dict[int, set[int]]) -> None:
    values = dict(prep.model.graph.initializers)
    for node in prep.model.graph:
        for out in node.outputs:
            values.setdefault(out.name, out)
    for g in groups:
        for s in g.leaf_slices():
            value = values[s.name]
            arr = const_array(value)
            if arr is None or value.const_value is None:
                continue
            arr = np.array(arr)
            mask = removed_mask(s.owner, removed[g.id])
            index = [slice(None)] * arr.ndim
            index[s.axis] = mask
            arr[tuple(index)] = 0
            value.const_value = ir.tensor(arr, name=value.name)


def _io_keep(groups: list[PruningGroup],
             removed: dict[int, set[int]]) -> dict[str, list[tuple[int, np.ndarray]]]:
    keep: dict[str, list[tuple[int, np.ndarray]]] = {}
    for g in groups:
        for s in g.slices:
            if s.io:
                keep.setdefault(s.name, []).append((s.axis, ~removed_mask(s.owner, removed[g.id])))
    return keep


def _take(arr: np.ndarray, axes: list[tuple[int, np.ndarray]] | None) -> np.ndarray:
    if not axes:
        return arr
    for axis, mask in axes:
        arr = np.compress(mask, arr, axis=axis)
    return arr
