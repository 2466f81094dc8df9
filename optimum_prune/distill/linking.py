"""Link the tensors of a Hugging Face PyTorch model to the initializers of its ONNX export.

Exporters keep the parameter names of biases, norms and embeddings, but MatMul weights become
``onnx::MatMul_123`` holding the transposed matrix, and identical tensors (all-zero biases of a random
model) are deduplicated behind ``Identity`` nodes. So a parameter is linked by name first, then through
an ``Identity`` alias, then by value (its bytes, or its transpose's, hashed): the export was made from
these very weights, so the values are equal bit for bit. Nothing is guessed from architecture names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


@dataclass(frozen=True)
class TensorLink:
    """Where a PyTorch tensor lives in an ONNX graph: initializer ``onnx_name``, transposed or not."""

    onnx_name: str
    transposed: bool = False
    how: str = "name"  # "name", "alias" or "value"


def onnx_tensors(model: ir.Model) -> tuple[dict[str, ir.Value], dict[str, str]]:
    """The graph's initializers by name, and the ``Identity`` aliases of initializers (output -> source)."""
    inits = {name: v for name, v in model.graph.initializers.items() if v.const_value is not None}
    aliases: dict[str, str] = {}
    for node in model.graph:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.inputs[0] is not None:
            src = node.inputs[0].name
            if src in inits:
                aliases[node.outputs[0].name] = src
    return inits, aliases


def _digest(arr: np.ndarray) -> tuple:
    arr = np.ascontiguousarray(arr)
    return arr.dtype.str, arr.shape, hashlib.blake2b(arr.tobytes(), digest_size=16).digest()


def link_tensors(tensors: dict[str, np.ndarray], model: ir.Model) -> dict[str, TensorLink]:
    """Link each of ``tensors`` (PyTorch name -> value) to an initializer of ``model`` holding equal values.

    Tensors absent from the graph (not used by the exported task, such as a pooler in a
    feature-extraction export) are left out of the result.
    """
    inits, aliases = onnx_tensors(model)
    values: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = inits[name].const_value.numpy()
        return values[name]

    by_digest: dict[tuple, list[str]] | None = None
    links: dict[str, TensorLink] = {}
    claimed: set[str] = set()
    for name, arr in tensors.items():
        source = name if name in inits else aliases.get(name)
        if (source is not None and tuple(inits[source].shape) == arr.shape
                and np.array_equal(value(source), arr)):
            links[name] = TensorLink(source, False, "name" if source == name else "alias")
            claimed.add(source)
            continue
        if by_digest is None:
            by_digest = {}
            for init_name, v in inits.items():
                if v.const_value.dtype.is_floating_point():
                    by_digest.setdefault(_digest(value(init_name)), []).append(init_name)
        candidates = [(n, False) for n in by_digest.get(_digest(arr), [])]
        if arr.ndim == 2:
            candidates += [(n, True) for n in by_digest.get(_digest(arr.T), [])]
        if not candidates:
            continue
        unclaimed = [c for c in candidates if c[0] not in claimed]
        onnx_name, transposed = (unclaimed or candidates)[0]
        links[name] = TensorLink(onnx_name, transposed, "value")
        claimed.add(onnx_name)
    return links


def pruned_value(name: str, link: TensorLink, model: ir.Model, inits: dict[str, ir.Value],
                 aliases: dict[str, str]) -> np.ndarray | None:
    """The value of PyTorch tensor ``name`` in the pruned graph ``model``, in PyTorch layout.

    The pruner keeps initializer names; a deduplicated vector may have been given its own copy named
    after its alias (``name``), or merged back into its source: both are looked up.
    """
    for candidate in (name, link.onnx_name):
        source = candidate if candidate in inits else aliases.get(candidate)
        if source is not None:
            arr = inits[source].const_value.numpy()
            return np.ascontiguousarray(arr.T) if link.transposed else arr
    return None
