"""ONNX Runtime's symbolic shape inference, run on a graph whose large weights are shape-only stubs.

Two things about the stock entry point (``SymbolicShapeInference.infer_shapes``) do not suit a
pruner, and this module works around both without copying its logic:

- It reads the value of every initializer that feeds an arithmetic op (to propagate shape
  computations), so a stubbed bias makes the whole inference fail. :class:`_StubAware` answers
  "value unknown" for stubs instead, which is what they are.
- It reads ``axes`` from the input (opset 18) only for ReduceSum and ReduceMean; the other reductions
  are given the same rule. It leaves Flatten to ONNX inference, which names the output dimensions
  afresh when an input one is symbolic; Flatten gets a symbolic rule.
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
            for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
                       "ReduceSumSquare"):
                self.dispatcher_.setdefault(op, self._infer_ReduceMean)
            self.dispatcher_.setdefault("Flatten", self._infer_Flatten)

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
