"""Loading, inspecting and saving ONNX models through onnx-ir.

Weights stay on disk after :func:`load_model` (see :mod:`optimum_prune.storage`); shape inference
runs on a copy of the graph whose large initializers are stubbed out, so it never reads or copies
weights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from optimum_prune.errors import InvalidModelError
from optimum_prune.storage import EXTERNAL_DATA_META, WrittenModel, load_lazily, write_model
from optimum_prune.symbolic import symbolic_infer

Dim = int | str | None
Shape = tuple[Dim, ...]

# Initializers with more elements than this are stubbed out before shape inference.
_STUB_THRESHOLD = 64
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes; protobuf cannot hold more than 2 GB


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load ``path`` with onnx-ir, keeping external data lazy; raise :class:`InvalidModelError`."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"ONNX file not found: {path}. Pass a folder that holds model.onnx or set "
                                "file_name=.")
    try:
        model = load_lazily(path)
    except Exception as e:  # onnx-ir raises DecodeError, OSError, ... on corrupt files
        raise InvalidModelError(
            f"Cannot parse {path} as an ONNX model ({type(e).__name__}: {e}). "
            "Re-export it with `optimum-cli export onnx` and try again."
        ) from e
    problem = _structural_problem(model)
    if problem:
        raise InvalidModelError(
            f"{path} is not a complete ONNX model ({problem}); the file is probably truncated or not an ONNX "
            "model. Re-export it with `optimum-cli export onnx` and try again."
        )
    return model


def _structural_problem(model: ir.Model) -> str | None:
    """What a parsed protobuf lacks to be a model (a truncated file can still parse), or None."""
    if not model.graph.outputs:
        return "the graph has no outputs"
    if "" not in model.opset_imports and any(n.domain in ("", "ai.onnx") for n in model.graph):
        return "no opset is imported for the default ONNX domain"
    return None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant content of ``value`` (initializer, Constant node, Identity of a constant), or None."""
    while value is not None:
        if value.const_value is not None:
            return value.const_value.numpy()
        node = value.producer()
        if node is None:
            return None
        if node.op_type == "Constant" and node.domain == "":
            attr = node.attributes.get("value")
            if attr is not None:
                return attr.value.numpy()
            for name in ("value_int", "value_float"):
                if name in node.attributes:
                    return np.array(node.attributes[name].value)
            for name in ("value_ints", "value_floats"):
                if name in node.attributes:
                    return np.array(list(node.attributes[name].value))
            return None
        if node.op_type == "Identity" and node.domain == "":
            value = node.inputs[0]
            continue
        return None
    return None


def is_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is an initializer or the output of a Constant node (seen through Identity)."""
    while value is not None:
        if value.const_value is not None:
            return True
        node = value.producer()
        if node is None or node.domain != "":
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type != "Identity":
            return False
        value = node.inputs[0]
    return False


# Ops that only move, cast or reshape data: their output is a weight when every input is one.
_LAYOUT_OPS = frozenset({"Transpose", "Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})


def is_weight(value: ir.Value | None, _depth: int = 0) -> bool:
    """Whether ``value`` is a constant or computed from constants by layout ops only (a tied
    embedding transposed for the LM head, a weight cast to another dtype)."""
    if is_constant(value):
        return True
    node = value.producer() if value is not None else None
    if node is None or node.domain != "" or node.op_type not in _LAYOUT_OPS or _depth > 8:
        return False
    return all(inp is None or is_weight(inp, _depth + 1) for inp in node.inputs)


def iter_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Nodes of the main graph in order (subgraphs are not entered: their ops make groups unprunable)."""
    yield from model.graph


def _stub_proto(model: ir.Model) -> tuple[onnx.ModelProto, frozenset[str]]:
    """Serialise ``model`` with large initializers replaced by shape-only stubs (no data read).

    Small Constant-node tensors stored as external data are read into the proto (shape inference
    cannot resolve their relative location); large ones stay external and are treated as unknown.
    Returns the proto and the names of the stubbed initializers.
    """
    saved: dict[str, ir.TensorProtocol] = {}
    saved_attrs: list[tuple[ir.Node, ir.Attr]] = []
    try:
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is not None and tensor.size > _STUB_THRESHOLD:
                saved[name] = tensor
                value.const_value = ir.ExternalTensor(
                    location="__stub__", offset=0, length=tensor.nbytes, dtype=tensor.dtype,
                    shape=tensor.shape, name=name, base_dir="",
                )
        for node in model.graph:
            attr = node.attributes.get("value") if node.op_type == "Constant" else None
            if (attr is not None and isinstance(attr.value, ir.ExternalTensor)
                    and attr.value.size <= _STUB_THRESHOLD):
                saved_attrs.append((node, attr))
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(attr.value.numpy()))
        return ir.serde.serialize_model(model), frozenset(saved)
    finally:
        for name, tensor in saved.items():
            model.graph.initializers[name].const_value = tensor
        for node, attr in saved_attrs:
            node.attributes["value"] = attr


def _dims_of(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def infer_shapes(model: ir.Model) -> dict[str, Shape]:
    """Shapes of every value that ONNX (or ONNX Runtime's symbolic) shape inference can resolve.

    ONNX Runtime's symbolic shape inference (consistent symbols, contrib ops) comes first;
    ``onnx.shape_inference`` with data propagation fills what it leaves out.
    """
    proto, stubs = _stub_proto(model)
    shapes: dict[str, Shape] = {}
    # symbolic inference fails on some graphs; ONNX inference fills in below
    with contextlib.suppress(Exception):
        _collect(symbolic_infer(proto, stubs), shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False,
                                                     data_prop=True)
        extra: dict[str, Shape] = {}
        _collect(inferred, extra)
        for k, v in extra.items():
            if k not in shapes:
                shapes[k] = v
    except Exception:  # inference is best effort; a missing shape makes the affected group unprunable
        pass
    for init in proto.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _collect(proto: onnx.ModelProto, shapes: dict[str, Shape]) -> None:
    g = proto.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        dims = _dims_of(vi.type)
        if dims is not None:
            shapes[vi.name] = dims
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(int(d) for d in a.t.dims)


def model_bytes(model: ir.Model) -> int:
    """Total bytes of the model's initializers."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model_atomic(model: ir.Model, path: Path, *, external_data: bool | None = None) -> WrittenModel:
    """Write ``model`` to ``path`` through a temporary folder and a rename, so no half file is left.

    External data (``<name>_data``) is used when ``external_data`` is True, or when None and the
    weights exceed what a single protobuf can hold or the source model had external data.
    Constant-node tensors stored externally are read into memory first, since only initializers are
    streamed to the new files. Returns where the data went (see :class:`~optimum_prune.storage.WrittenModel`).
    """
    path = Path(path)
    had_external = _inline_external_constants(model) or bool(model.meta.get(EXTERNAL_DATA_META))
    if external_data is None:
        external_data = had_external or model_bytes(model) > _EXTERNAL_DATA_THRESHOLD
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        written = write_model(model, tmp_dir / path.name, external_data=external_data)
        data_path = None
        if written.data_path is not None:
            data_path = path.parent / written.data_path.name
            os.replace(written.data_path, data_path)
        os.replace(written.path, path)
        return WrittenModel(path, data_path, written.header)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _inline_external_constants(model: ir.Model) -> bool:
    """Read Constant-node tensors that live in external data into memory. True if any did."""
    found = False
    for node in model.graph:
        attr = node.attributes.get("value") if node.op_type == "Constant" else None
        if attr is not None and isinstance(attr.value, ir.ExternalTensor):
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(attr.value.numpy()))
            found = True
    return found


def fresh_name(taken: set[str], base: str) -> str:
    """``base``, or ``base_<n>`` with the first ``n`` not in ``taken``; the result is added to ``taken``."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def values_by_name(model: ir.Model) -> dict[str, ir.Value]:
    """Every value of the main graph by name: initializers, graph inputs and node outputs."""
    values: dict[str, ir.Value] = dict(model.graph.initializers)
    for v in model.graph.inputs:
        values.setdefault(v.name, v)
    for node in model.graph:
        for out in node.outputs:
            values[out.name] = out
    return values


def value_names(graph: ir.Graph) -> set[str]:
    """Names of the values of ``graph``'s top level: inputs, initializers and node outputs."""
    names = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in graph:
        names.update(o.name for o in node.outputs if o.name)
    return names


def redirect_outputs(olds: Sequence[ir.Value], new: ir.Value, copy_name: Callable[[], str]) -> list[ir.Node]:
    """Make every reader of ``olds`` (values that compute the same thing) read ``new`` instead.

    A graph output keeps its name and declared type: the first through ``new`` itself, each further one
    through an ``Identity`` of ``new`` named ``copy_name()``. Returns those ``Identity`` nodes for the
    caller to insert after ``new``'s producer. ``new`` takes an old value's type when it has none.
    """
    copies: list[ir.Node] = []
    pairs: list[tuple[ir.Value, ir.Value]] = []
    named = False
    for old in olds:
        target = new
        if old.is_graph_output():
            if named:
                copy = ir.Node("", "Identity", [new], num_outputs=1, name=copy_name())
                copies.append(copy)
                target = copy.outputs[0]
            named = True
            name, old.name = old.name, None
            target.name = name
            if old.shape is not None:  # the declared output type, symbolic dim names included
                target.shape = old.shape
            if old.type is not None:
                target.type = old.type
        elif target.type is None and old.type is not None:
            target.type = old.type
            if old.shape is not None:
                target.shape = old.shape
        pairs.append((old, target))
    for old, target in pairs:
        old.replace_all_uses_with(target, replace_graph_outputs=True)
    return copies
