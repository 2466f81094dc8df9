"""Weights on disk: load a model without reading its weights, write one a tensor at a time.

A pruner touches every weight once or twice (to score units, to slice them) and writes each once.
Holding the dense model, the pruned copy and a serialised protobuf in memory at the same time costs
several times the file size; this module keeps memory near the size of the largest tensor:

- :func:`load_lazily` parses only the graph: the bytes of each large initializer are located in
  the file (its ``raw_data`` in a single-file model, or its external data) and represented by a
  :class:`FileTensor` that reads them with ``pread`` when asked, without caching or memory mapping
  (mapped pages would count towards the process's resident memory until unmapped).
- :func:`write_model` serialises the graph with stubs in place of large tensors, then streams each
  tensor's bytes into the file: a single protobuf (its ``initializer`` records appended to the
  graph field by hand, which protobuf parsers accept in any order) or a ``.onnx`` plus a data file.
  Untouched tensors are copied file to file by the kernel (``copy_file_range``).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

# ``model.meta`` key set by :func:`load_lazily` when the file used external data.
EXTERNAL_DATA_META = "optimum_prune.external_data"
# Tensors with at least this many bytes are read lazily and streamed on write.
LAZY_MIN_BYTES = 1024
_STUB_LOCATION = "__optimum_prune_stub__"
_PAGE = 4096
_PAGE_ALIGN_MIN_BYTES = 1 << 16

# Protobuf field numbers (onnx.proto3).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9


class FileTensor(ir.LazyTensor):
    """A tensor whose little-endian bytes are ``length`` bytes at ``offset`` of ``path``."""

    def __init__(self, path: Path, offset: int, length: int, dtype: ir.DataType, shape: ir.Shape,
                 name: str | None = None) -> None:
        self.path, self.offset, self.length = Path(path), int(offset), int(length)
        super().__init__(self._read, dtype=dtype, shape=shape, name=name, cache=False)

    def _read(self) -> ir.Tensor:
        with open(self.path, "rb") as f:
            buf = os.pread(f.fileno(), self.length, self.offset)
        if len(buf) != self.length:
            raise OSError(f"{self.path} is shorter than expected: tensor '{self.name}' needs bytes "
                          f"[{self.offset}, {self.offset + self.length})")
        arr = np.frombuffer(buf, dtype=np.dtype(self.dtype.numpy()).newbyteorder("<"))
        return ir.tensor(arr.reshape(self.shape.numpy()), name=self.name)


def _numpy_dtype_ok(dtype: ir.DataType) -> bool:
    return dtype.bitwidth >= 8 and dtype != ir.DataType.STRING


# -------------------------------------------------------------------------------------------------
# Loading
def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _encode_varint(field << 3 | wire_type)


def _fields(buf, start: int, end: int):
    """(field, wire_type, field_start, payload_start, payload_end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos2 = _varint(buf, pos)
        elif wire == 1:
            pos2 = pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            pos2 = pos + n
        elif wire == 5:
            pos2 = pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {field_start}")
        yield field, wire, field_start, pos, pos2
        pos = pos2


def _externalised_tensor(buf, start: int, end: int, location: str) -> bytes | None:
    """The TensorProto in buf[start:end] with its raw_data replaced by an external reference to
    ``location`` at the raw_data's own offset, or None when it has no large raw_data."""
    out = bytearray()
    raw = None
    for field, wire, fs, ps, pe in _fields(buf, start, end):
        if field == _TENSOR_RAW_DATA and wire == 2:
            raw = (ps, pe - ps)
        else:
            out += buf[fs:pe]
    if raw is None or raw[1] < LAZY_MIN_BYTES:
        return None
    tensor = onnx.TensorProto.FromString(bytes(out))
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    return tensor.SerializeToString()


def _graph_without_raw_data(buf, start: int, end: int, location: str) -> bytes:
    out = bytearray()
    for field, wire, fs, ps, pe in _fields(buf, start, end):
        if field == _GRAPH_INITIALIZER and wire == 2:
            replaced = _externalised_tensor(buf, ps, pe, location)
            if replaced is not None:
                out += _key(_GRAPH_INITIALIZER, 2) + _encode_varint(len(replaced)) + replaced
                continue
        out += buf[fs:pe]
    return bytes(out)


def _proto_without_raw_data(path: Path) -> onnx.ModelProto:
    """The model in ``path`` with each large initializer's raw_data turned into an external
    reference into ``path`` itself (the bytes stay where they are in the file)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        out = bytearray()
        for field, wire, fs, ps, pe in _fields(buf, 0, len(buf)):
            if field == _MODEL_GRAPH and wire == 2:
                graph = _graph_without_raw_data(buf, ps, pe, path.name)
                out += _key(_MODEL_GRAPH, 2) + _encode_varint(len(graph)) + graph
            else:
                out += buf[fs:pe]
    return onnx.ModelProto.FromString(bytes(out))


def load_lazily(path: Path) -> ir.Model:
    """Load ``path`` with every initializer of at least :data:`LAZY_MIN_BYTES` as a :class:`FileTensor`.

    Raises whatever protobuf parsing raises on a corrupt file (the caller words the error).
    """
    path = Path(path)
    proto = _proto_without_raw_data(path)
    had_external = any(
        t.data_location == onnx.TensorProto.EXTERNAL and not any(
            e.key == "location" and e.value == path.name for e in t.external_data)
        for t in proto.graph.initializer)
    model = ir.serde.deserialize_model(proto)
    model.meta[EXTERNAL_DATA_META] = had_external
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    for value in model.graph.initializers.values():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor) and _numpy_dtype_ok(t.dtype) and t.length is not None:
            value.const_value = FileTensor(Path(t.path), t.offset or 0, t.length, t.dtype, t.shape, t.name)
    return model


# -------------------------------------------------------------------------------------------------
# Writing
@dataclass(frozen=True)
class WrittenModel:
    """Where :func:`write_model` put the data: ``header`` is the model with every streamed tensor as
    an external reference into the written files (for the checker and a light ONNX Runtime load)."""

    path: Path
    data_path: Path | None
    header: onnx.ModelProto


def _stub_large_initializers(model: ir.Model) -> tuple[onnx.ModelProto, dict[str, ir.TensorProtocol]]:
    saved: dict[str, ir.TensorProtocol] = {}
    try:
        for name, value in model.graph.initializers.items():
            t = value.const_value
            if t is not None and t.nbytes >= LAZY_MIN_BYTES and _numpy_dtype_ok(t.dtype):
                saved[name] = t
                value.const_value = ir.ExternalTensor(location=_STUB_LOCATION, offset=0, length=t.nbytes,
                                                      dtype=t.dtype, shape=t.shape, name=name, base_dir="")
        return ir.serde.serialize_model(model), dict(saved)
    finally:
        for name, t in saved.items():
            model.graph.initializers[name].const_value = t


def _copy_range(src: Path, offset: int, length: int, dst_fd: int) -> None:
    with open(src, "rb") as f:
        fd, done = f.fileno(), 0
        while done < length:
            try:
                n = os.copy_file_range(fd, dst_fd, length - done, offset + done)
            except OSError:  # cross-device or unsupported: plain reads
                n = os.write(dst_fd, os.pread(fd, min(length - done, 1 << 24), offset + done))
            if n == 0:
                raise OSError(f"{src} ended early while copying {length} bytes at {offset}")
            done += n


def _write_tensor(tensor: ir.TensorProtocol, fd: int) -> None:
    if isinstance(tensor, FileTensor):
        _copy_range(tensor.path, tensor.offset, tensor.length, fd)
        return
    arr = np.ascontiguousarray(tensor.numpy())
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    _write_all(fd, memoryview(arr).cast("B"))


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def write_model(model: ir.Model, path: Path, *, external_data: bool,
                progress: Callable[[int], None] | None = None) -> WrittenModel:
    """Write ``model`` to ``path`` (and ``<name>_data`` when ``external_data``), one tensor at a time.

    Writes in place: callers write into a temporary folder and rename (see ``graph.save_model_atomic``).
    ``progress`` is called with the bytes of each tensor written.
    """
    path = Path(path)
    proto, streamed = _stub_large_initializers(model)
    graph = proto.graph
    stub_protos = [t for t in graph.initializer if t.name in streamed]
    header = onnx.ModelProto()
    header.CopyFrom(proto)
    header_inits = {t.name: t for t in header.graph.initializer}
    if external_data:
        data_path = path.with_name(path.name + "_data")
        fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            for t in stub_protos:
                # page-aligned starts let runtimes memory-map large tensors instead of copying them
                pad = -offset % (_PAGE if streamed[t.name].nbytes >= _PAGE_ALIGN_MIN_BYTES else 64)
                if pad:
                    _write_all(fd, b"\0" * pad)
                    offset += pad
                _write_tensor(streamed[t.name], fd)
                length = streamed[t.name].nbytes
                _set_external(t, data_path.name, offset, length)
                _set_external(header_inits[t.name], data_path.name, offset, length)
                offset += length
                if progress:
                    progress(length)
        finally:
            os.close(fd)
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        return WrittenModel(path, data_path, header)

    # One protobuf: the graph without the streamed initializers, then one record per tensor.
    records = []
    for t in stub_protos:
        bare = onnx.TensorProto()
        bare.CopyFrom(t)
        del bare.external_data[:]
        bare.ClearField("data_location")
        head = bare.SerializeToString()
        length = streamed[t.name].nbytes
        raw_key = _key(_TENSOR_RAW_DATA, 2) + _encode_varint(length)
        body_len = len(head) + len(raw_key) + length
        prefix = _key(_GRAPH_INITIALIZER, 2) + _encode_varint(body_len) + head + raw_key
        records.append((t.name, prefix, length))
    kept = [t for t in graph.initializer if t.name not in streamed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph_bytes = graph.SerializeToString()
    graph_len = len(graph_bytes) + sum(len(prefix) + length for _, prefix, length in records)
    proto.ClearField("graph")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        offset = 0
        graph_key = _key(_MODEL_GRAPH, 2) + _encode_varint(graph_len)
        for chunk in (proto.SerializeToString(), graph_key, graph_bytes):
            _write_all(fd, chunk)
            offset += len(chunk)
        for name, prefix, length in records:
            _write_all(fd, prefix)
            offset += len(prefix)
            _write_tensor(streamed[name], fd)
            _set_external(header_inits[name], path.name, offset, length)
            offset += length
            if progress:
                progress(length)
    finally:
        os.close(fd)
    return WrittenModel(path, None, header)
