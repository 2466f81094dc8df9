"""ONNX Runtime's symbolic shape inference, run on a graph whose large weights are shape-only stubs.

These things about the stock entry point (``SymbolicShapeInference.infer_shapes``) do not suit a
pruner, and this module works around them without copying its logic:

- It reads the value of every initializer that feeds an arithmetic op (to propagate shape
  computations), so a stubbed bias makes the whole inference fail. :class:`_StubAware` answers
  "value unknown" for stubs instead, which is what they are.
- It reads ``axes`` from the input (opset 18) only for ReduceSum and ReduceMean; the other reductions
  are given the same rule. It leaves Flatten to ONNX inference, which names the output dimensions
  afresh when an input one is symbolic; Flatten gets a symbolic rule.
- Its Slice rule asserts where sympy cannot decide the sign of a computed bound, which ends the
  inference of the whole graph; here the axes the Slice does not cut keep their dimensions instead.
- Its Expand rule leaves the output unknown when the target shape's value is, and the driver then
  asserts on that value; here the input dimensions other than 1 carry over and the rest get symbols.
- It computes no value for ReduceMax / ReduceMin, so ``repeat_interleave``'s repeat count
  (``ReduceMax(ConstantOfShape(...))``) leaves the Expand it shapes with fresh symbols, which the next
  broadcast merges with whatever they meet (an interleaved rotary table's head axis of 1 became the head
  count); a full reduction of a known value gets its value.
- It computes no value for Mod, so window padding's pads (``(window - width % window) % window``) are
  unknown and the Pad after them gets fresh symbols for every dimension, the unpadded channel axis
  included; integer Mod gets its value.
- It computes Equal on shape values but not Not, so an If on "lengths differ" cannot pick its branch;
  Not gets a rule.
- ``import onnxruntime.tools`` imports torch when it is installed (about 1.6 s), and a failed
  inference writes ``sym_shape_infer_temp.onnx`` into the working directory. The module file is
  therefore loaded on its own, and the driver loop below does not write anything.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

_MODULE_NAME = "optimum_prune._ort_symbolic_shape_infer"


@cache
def _ort_module() -> ModuleType:
    """``onnxruntime/tools/symbolic_shape_infer.py`` loaded without its package ``__init__``."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise ImportError("onnxruntime is not installed")
    path = Path(spec.origin).parent / "tools" / "symbolic_shape_infer.py"
    module_spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[_MODULE_NAME] = module
    module_spec.loader.exec_module(module)
    logging.getLogger(module.__name__).setLevel(logging.ERROR)
    return module


@cache
def _stub_aware_class() -> type:
    base = _ort_module().SymbolicShapeInference

    class _StubAware(base):
        """Treats initializers named in ``stubs`` and external Constant tensors as unknown values."""

        def __init__(self, stubs: frozenset[str], *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._stubs = stubs
            # Opset 18 moved ``axes`` to an input for every reduction; the base class reads it there for
            # ReduceSum / ReduceMean only, and an unknown-rank ReduceL2 (weight normalisation) then ends
            # the whole inference at the next broadcasting op. Same spec as ReduceMean 18: same rule.
            for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
                self.dispatcher_.setdefault(op, self._infer_ReduceMean)
            self.dispatcher_.setdefault("ReduceMax", self._infer_ReduceMax_or_Min)
            self.dispatcher_.setdefault("ReduceMin", self._infer_ReduceMax_or_Min)
            self.dispatcher_.setdefault("Flatten", self._infer_Flatten)
            self.dispatcher_.setdefault("Not", self._infer_Not)
            self.dispatcher_.setdefault("Mod", self._infer_Mod)
            self.dispatcher_["Slice"] = self._infer_Slice_keeping_other_axes
            self.dispatcher_["Expand"] = self._infer_Expand_to_unknown_shape

        def _infer_ReduceMax_or_Min(self, node):  # noqa: N802 (the base class's naming)
            """The shape rule of ReduceMean 18, and the value of a full reduction of a known shape value:
            ``repeat_interleave(x, 2)`` exports its repeat count as ``ReduceMax(ConstantOfShape([d], 2))``,
            and that count is the Expand target that tells a broadcast axis of 1 (the rotary table's head
            axis) from one that spans the heads. Without the value the Expand output gets a fresh symbol
            there, which the next broadcast merges with the head count."""
            self._infer_ReduceMean(node)
            data = self._try_get_value(node, 0)
            if data is None:
                return
            arr = np.asarray(data)
            values = arr.reshape(-1).tolist()
            axes = self._try_get_value(node, 1) if len(node.input) > 1 and node.input[1] else None
            mod = _ort_module()
            if axes is not None and arr.ndim != 1:
                return  # a partial reduction of a multi-dimensional value: its shape only
            if not values or not all(mod.is_literal(v) for v in values):
                return
            if mod.get_attribute(node, "noop_with_empty_axes", 0) and axes is not None and not len(axes):
                return
            result = int((max if node.op_type == "ReduceMax" else min)(int(v) for v in values))
            keep = mod.get_attribute(node, "keepdims", 1)
            self.sympy_data_[node.output[0]] = [result] if keep and arr.ndim else result

        def _infer_Expand_to_unknown_shape(self, node):  # noqa: N802 (the base class's naming)
            """The base rule; when the target shape's value is unknown (Cohere's repeat_interleave computes
            it with ReduceMax), the output keeps each input dimension other than 1 (a broadcast cannot
            change it) and gets fresh symbols elsewhere. The base class left those dimensions unknown and
            then asserted on the unknown value, ending the inference of the whole graph."""
            super()._infer_Expand(node)
            if self._try_get_value(node, 1) is not None:
                return
            target = self._get_shape(node, 1)
            if not target or not isinstance(target[0], int):
                return
            shape = self._get_sympy_shape(node, 0)
            rank = max(target[0], len(shape))
            aligned = [None] * (rank - len(shape)) + list(shape)
            new = [d if d is not None and d != 1 else self._new_symbolic_dim_from_output(node, 0, i)
                   for i, d in enumerate(aligned)]
            self._update_computed_dims(new)
            self.known_vi_[node.output[0]].CopyFrom(onnx.helper.make_tensor_value_info(
                node.output[0], self.known_vi_[node.input[0]].type.tensor_type.elem_type,
                _ort_module().get_shape_from_sympy_shape(new)))

        def _infer_Slice_keeping_other_axes(self, node):  # noqa: N802 (the base class's naming)
            """The base rule; where it fails (it asserts when sympy cannot decide the sign of a computed
            bound, SEW-D's ``x[..., :length]``), the axes the Slice does not cut keep their dimensions and
            each cut axis gets a fresh symbol, instead of every axis (batch and channels included)."""
            try:
                super()._infer_Slice(node)
                return
            except Exception:  # noqa: BLE001 (any failure of the base rule: fall back)
                pass
            mod = _ort_module()
            shape = self._get_sympy_shape(node, 0)
            rank = len(shape)
            if len(node.input) > 3 and node.input[3]:
                axes = self._try_get_value(node, 3)
                if axes is None:
                    return
                axes = [int(a) for a in np.asarray(axes).reshape(-1)]
            else:
                starts = self._get_shape(node, 1) if len(node.input) > 1 else None
                if not starts or not isinstance(starts[0], int):
                    return
                axes = list(range(starts[0]))
            cut = {a + rank if a < 0 else a for a in axes}
            new = [self._new_symbolic_dim_from_output(node, 0, i) if i in cut else d
                   for i, d in enumerate(shape)]
            self._update_computed_dims(new)
            self.known_vi_[node.output[0]].CopyFrom(onnx.helper.make_tensor_value_info(
                node.output[0], self.known_vi_[node.input[0]].type.tensor_type.elem_type,
                mod.get_shape_from_sympy_shape(new)))

        def _infer_Not(self, node):  # noqa: N802 (the base class's naming)
            """Not of a computed boolean, so an If on ``Not(Equal(len_q, len_k))`` (DeBERTa's relative
            positions, "query and key lengths differ") resolves to one branch. Without it both branches
            are inferred, and the one that never runs ends the whole inference on shapes it cannot have."""
            value = self._try_get_value(node, 0)
            if value is not None:
                self.sympy_data_[node.output[0]] = ([not bool(v) for v in value] if isinstance(value, list)
                                                    else not bool(value))

        def _infer_Mod(self, node):  # noqa: N802 (the base class's naming)
            """The value of an integer Mod of shape values (``fmod=0``: the sign of the divisor, as
            Python's ``%``). Window padding computes its pads as ``(window - width % window) % window``;
            without the value the pads are unknown and the base Pad rule names every output dimension
            afresh, the unpadded channel axis included, which hides the channel count from the window
            Reshapes after it (Swin V2)."""
            if _ort_module().get_attribute(node, "fmod", 0):
                return  # C's fmod: the sign of the dividend; not a shape computation
            mod = _ort_module()
            self._compute_on_sympy_data(node, lambda v: mod.sympy.Mod(v[0], v[1]))

        def _infer_Flatten(self, node):  # noqa: N802 (the base class's naming)
            """Flatten's output is (product of the axes before ``axis``, product of the rest), symbolic
            products included; ONNX inference names both afresh once one input axis is symbolic, which
            hides the channel count from everything downstream (LeViT's attention)."""
            mod = _ort_module()
            shape = self._get_sympy_shape(node, 0)
            axis = int(mod.get_attribute(node, "axis", 1))
            axis = axis + len(shape) if axis < 0 else axis  # 0..rank, both ends included
            if not 0 <= axis <= len(shape):
                return  # an invalid model: leave it to ONNX inference and the checker
            new = [mod.sympy_reduce_product(shape[:axis]) if axis else 1,
                   mod.sympy_reduce_product(shape[axis:]) if axis < len(shape) else 1]
            self._update_computed_dims(new)
            vi = self.known_vi_[node.output[0]]
            vi.CopyFrom(onnx.helper.make_tensor_value_info(
                node.output[0], self.known_vi_[node.input[0]].type.tensor_type.elem_type,
                mod.get_shape_from_sympy_shape(new)))

        def _try_get_value(self, node, idx):
            name = node.input[idx] if idx < len(node.input) else None
            if name is not None and name in self._stubs and name not in self.sympy_data_:
                return None
            return super()._try_get_value(node, idx)

        def _infer_Constant(self, node):  # noqa: N802 (the base class's naming)
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_location == onnx.TensorProto.EXTERNAL:
                return  # a large external constant: its value stays unknown
            super()._infer_Constant(node)

    return _StubAware


def symbolic_infer(proto: onnx.ModelProto, stubs: frozenset[str]) -> onnx.ModelProto:
    """Run symbolic shape inference (auto-merge, guessed output ranks) and return the annotated model.

    Raises whatever the inference raises; the caller treats a failure as "no shapes from here".
    """
    inference = _stub_aware_class()(stubs, 2**31 - 1, True, True, 0)
    inference._preprocess(proto)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_
