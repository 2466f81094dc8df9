"""A pruned PyTorch student from the Hugging Face model a pruned ONNX model was exported from.

The pruned ONNX model is the source of truth: every PyTorch tensor linked to one of the dense export's
initializers (:mod:`optimum_prune.distill.linking`) takes that initializer's pruned value, so slices and
least-squares repairs carry over as they are. The modules are then resized to match
(:mod:`optimum_prune.distill.structure`) and the student is checked against the pruned ONNX model under
ONNX Runtime before anything else may use it.
"""

from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from optimum_prune.distill.linking import TensorLink, link_tensors, onnx_tensors, pruned_value
from optimum_prune.distill.structure import (
    removed_heads,
    resize,
    supports_prune_heads,
    uniform_config_updates,
)
from optimum_prune.errors import InvalidModelError, StudentMismatchError
from optimum_prune.graph import load_model
from optimum_prune.plan import PLAN_FILE, PruningPlan

DEFAULT_ATOL = 1e-4


@dataclass
class StudentReport:
    """How a student was built and how closely it reproduces the pruned ONNX model."""

    linked: dict[str, int] = field(default_factory=dict)  # tensors linked, by how ("name", "alias", "value")
    not_in_graph: list[str] = field(default_factory=list)  # PyTorch tensors the export does not use
    changed: list[str] = field(default_factory=list)  # tensors whose shape or values the pruning changed
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)  # via transformers' prune_heads
    config_updates: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per compared output

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {
            "linked": self.linked,
            "not_in_graph": len(self.not_in_graph),
            "changed": len(self.changed),
            "pruned_heads": {str(k): v for k, v in self.pruned_heads.items()},
            "config_updates": self.config_updates,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "max_abs_diff": self.max_abs_diff,
        }


def _model_file(folder_or_file: str | os.PathLike) -> Path:
    path = Path(folder_or_file)
    if path.is_dir():
        from optimum_prune.stages.base import find_model_file

        return find_model_file(path)
    if not path.is_file():
        raise InvalidModelError(f"ONNX model not found: {path}")
    return path


def _tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Parameters and persistent buffers (tied parameters once), as float numpy arrays."""
    out = {name: p.detach().cpu().numpy() for name, p in model.named_parameters()}
    persistent = set(model.state_dict())
    for name, b in model.named_buffers():
        if name in persistent and b.dtype.is_floating_point:
            out[name] = b.detach().cpu().numpy()
    return out


def _created_biases(plan: PruningPlan | None, links: dict[str, TensorLink], pruned, inits, aliases
                    ) -> dict[str, np.ndarray]:
    """Biases that repair added to consumers which had none: ``<module>.bias`` for the Linear holding
    the consumer's weight."""
    if plan is None:
        return {}
    by_onnx = {link.onnx_name: name for name, link in links.items()}
    out = {}
    for repair in plan.repairs:
        if not repair.get("bias_created") or not repair.get("bias"):
            continue
        weight = by_onnx.get(repair["weight"])
        if weight is None or not weight.endswith(".weight"):
            raise StudentMismatchError(
                f"repair added a bias '{repair['bias']}' to node '{repair['node']}', whose weight "
                f"'{repair['weight']}' is not a PyTorch Linear weight; prune without recover, or with "
                "recover: {method: mask} (which never adds a bias)")
        bias = pruned_value(repair["bias"], TensorLink(repair["bias"]), pruned, inits, aliases)
        out[weight.removesuffix(".weight") + ".bias"] = bias
    return out


def build_student(teacher: torch.nn.Module, dense_onnx: str | os.PathLike, pruned_onnx: str | os.PathLike, *,
                  check: bool = True, atol: float = DEFAULT_ATOL) -> tuple[torch.nn.Module, StudentReport]:
    """Apply a pruning to ``teacher`` (a Hugging Face PyTorch model): the returned student has the shapes
    and weights of the pruned ONNX model; ``teacher`` is not modified.

    Args:
        teacher: the model ``dense_onnx`` was exported from.
        dense_onnx: the dense export (a folder with ``model.onnx`` or a file): links PyTorch tensors to
            ONNX initializers by name and value.
        pruned_onnx: the pruned model (a folder written by ``ORTPruner.prune``, or its ``model.onnx``).
        check: compare the student with the pruned ONNX model on generated inputs and raise
            :class:`StudentMismatchError` when an output differs by more than ``atol``.
        atol: largest absolute difference accepted.
    """
    dense_file, pruned_file = _model_file(dense_onnx), _model_file(pruned_onnx)
    tensors = _tensors(teacher)
    links = link_tensors(tensors, load_model(dense_file))
    pruned = load_model(pruned_file)
    inits, aliases = onnx_tensors(pruned)
    plan_file = pruned_file.parent / PLAN_FILE
    plan = PruningPlan.load(plan_file) if plan_file.is_file() else None

    report = StudentReport(not_in_graph=sorted(set(tensors) - set(links)))
    for link in links.values():
        report.linked[link.how] = report.linked.get(link.how, 0) + 1
    new_values: dict[str, np.ndarray] = {}
    for name, link in links.items():
        value = pruned_value(name, link, pruned, inits, aliases)
        if value is None:
            continue
        dense = tensors[name]
        if value.shape != dense.shape or not np.array_equal(value, dense):
            new_values[name] = value.astype(dense.dtype, copy=False)
    new_values.update(_created_biases(plan, links, pruned, inits, aliases))
    report.changed = sorted(new_values)

    student = copy.deepcopy(teacher)
    if supports_prune_heads(student):
        heads = removed_heads(student, new_values)
        if heads:
            student.prune_heads(heads)
            report.pruned_heads = heads
    resize(student, {name: value.shape for name, value in new_values.items()})
    state = {**dict(student.named_parameters()), **dict(student.named_buffers())}
    with torch.no_grad():
        for name, value in new_values.items():
            state[name].copy_(torch.from_numpy(np.array(value)))
    report.config_updates = uniform_config_updates(teacher, student)
    for key, value in report.config_updates.items():
        setattr(student.config, key, value)
    report.params_before = sum(p.numel() for p in teacher.parameters())
    report.params_after = sum(p.numel() for p in student.parameters())
    if check:
        report.max_abs_diff = compare_with_onnx(student, pruned_file, atol=atol, suspects=report.not_in_graph)
    return student, report


def compare_with_onnx(model: torch.nn.Module, onnx_file: str | os.PathLike, *, atol: float = DEFAULT_ATOL,
                      rows: int = 2, length: int = 16, seed: int = 0, suspects: list[str] | None = None
                      ) -> dict[str, float]:
    """Run ``model`` and the ONNX model on the same generated inputs; max abs difference per output.

    Decoders exported with past key/values are compared on a first step (empty cache). Raises
    :class:`StudentMismatchError` naming the output that differs by more than ``atol``.
    """
    import onnxruntime as ort

    from optimum_prune.passes.validate import image_dims
    from optimum_prune.runtime import complete_feeds, generate_feeds

    onnx_file = _model_file(onnx_file)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    feeds = generate_feeds(session, load_model(onnx_file), rows=rows, length=length, seed=seed,
                           dims=image_dims(Path(onnx_file).parent))
    if any("past" in i.name for i in session.get_inputs()):
        feeds = complete_feeds(session, {"input_ids": feeds["input_ids"]})
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feeds), strict=True))

    accepted = inspect.signature(model.forward).parameters
    kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()
              if k in accepted and "past" not in k}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            got = model(**kwargs, return_dict=True) if "return_dict" in accepted else model(**kwargs)
    except RuntimeError as e:  # a module whose size lives in a tensor the graph folded away
        hint = f" (PyTorch tensors not in the ONNX graph: {suspects[:8]})" if suspects else ""
        raise StudentMismatchError(
            f"the PyTorch student built for {onnx_file} fails to run: {e}{hint}. Some of its tensors were "
            "folded into other constants by the export (e.g. BatchNorm into Conv, relative position "
            "tables), so the pruning cannot be mapped back to " + type(model).__name__) from e
    finally:
        model.train(was_training)
    diffs: dict[str, float] = {}
    for name, ref in expected.items():
        value = got.get(name) if hasattr(got, "get") else None
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu().numpy()
        if value.shape != ref.shape:
            raise StudentMismatchError(
                f"the student's output '{name}' has shape {list(value.shape)}, the pruned ONNX model "
                f"{onnx_file} gives {list(ref.shape)}: the student's modules were not resized like the graph")
        diffs[name] = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
    if not diffs:
        raise StudentMismatchError(
            f"no output of the student matches an output of {onnx_file} by name (ONNX: {names}); "
            "cannot check the student")
    bad = {k: v for k, v in diffs.items() if not v <= atol}
    if bad:
        name, diff = max(bad.items(), key=lambda kv: kv[1])
        hint = (f"; PyTorch tensors not found in the ONNX graph (not pruned with it): {suspects[:8]}"
                if suspects else "")
        raise StudentMismatchError(
            f"the PyTorch student does not reproduce the pruned ONNX model {onnx_file}: output '{name}' "
            f"differs by {diff:.3g} (max abs, tolerance {atol:g}){hint}. Distillation needs a pruned model "
            "whose graph keeps the exported weights (prune the export before any `optimize` stage)")
    return diffs
