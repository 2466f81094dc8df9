"""Lazy loading and streaming writes keep every byte: a load/write round trip is lossless."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from graphs import OP_GRAPHS, make_inputs
from optimum_prune.errors import InvalidModelError
from optimum_prune.graph import load_model, save_model_atomic
from optimum_prune.passes.validate import make_session
from optimum_prune.storage import LAZY_MIN_BYTES, FileTensor, load_lazily, write_model


def _with_big_tensors(name: str = "matmul") -> onnx.ModelProto:
    model = OP_GRAPHS[name]()
    # a float16 and an int64 initializer (unused) to cover other dtypes, and a small one kept inline
    rng = np.random.default_rng(0)
    extras = ((rng.standard_normal((33, 17)).astype(np.float16), "extra_f16"),
              (np.arange(700, dtype=np.int64), "extra_i64"), (np.ones(3, np.float32), "extra_small"))
    for arr, tname in extras:
        model.graph.initializer.append(onnx.numpy_helper.from_array(arr, tname))
    return model


def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize("external", [False, True], ids=["single-file", "external-data"])
def test_lazy_load_then_streaming_write_is_lossless(tmp_path, external):
    proto = _with_big_tensors()
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(proto, src)
    model = load_lazily(src)
    lazy = [v.name for v in model.graph.initializers.values() if isinstance(v.const_value, FileTensor)]
    assert "extra_f16" in lazy and "extra_i64" in lazy and "extra_small" not in lazy
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    written = write_model(model, out, external_data=external)
    assert (written.data_path is not None) == external
    reloaded = onnx.load(out)  # reads external data too
    onnx.checker.check_model(reloaded, full_check=True)
    want, got = _initializers(proto), _initializers(reloaded)
    assert want.keys() == got.keys()
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and np.array_equal(got[name], arr), name
    assert [n.op_type for n in reloaded.graph.node] == [n.op_type for n in proto.graph.node]
    # the header references the written bytes: ONNX Runtime gives the same outputs from it
    header = out.parent / "header.onnx"
    header.write_bytes(written.header.SerializeToString())
    feeds = make_inputs(proto)
    for a, b in zip(make_session(src).run(None, feeds), make_session(header).run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_file_tensor_reads_the_bytes_it_points_at(tmp_path):
    arr = np.arange(LAZY_MIN_BYTES, dtype=np.float32).reshape(32, -1)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 7 + arr.tobytes())
    t = FileTensor(blob, 7, arr.nbytes, ir.DataType.FLOAT, ir.Shape(arr.shape), name="t")
    np.testing.assert_array_equal(t.numpy(), arr)
    short = FileTensor(blob, 7, arr.nbytes + 4, ir.DataType.FLOAT, ir.Shape([arr.size + 1]), name="t")
    with pytest.raises(OSError, match="shorter than expected"):
        short.numpy()


def test_save_model_atomic_keeps_external_data_of_an_external_source(tmp_path):
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(_with_big_tensors(), src, save_as_external_data=True, location="model.onnx_data",
                    size_threshold=0)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    written = save_model_atomic(load_model(src), out)
    assert written.data_path == out.parent / "model.onnx_data" and written.data_path.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx_data"]
    for name, arr in _initializers(onnx.load(src)).items():
        np.testing.assert_array_equal(_initializers(onnx.load(out))[name], arr)


@pytest.mark.parametrize("corruption", ["truncated", "garbage"])
def test_corrupt_file_is_a_clear_error(tmp_path, corruption):
    path = tmp_path / "model.onnx"
    data = _with_big_tensors().SerializeToString()
    path.write_bytes(data[: len(data) // 2] if corruption == "truncated" else bytes(range(256)) * 40)
    with pytest.raises(InvalidModelError, match="Cannot parse .*model.onnx as an ONNX model"):
        load_model(path)
