"""The quantize stage's ``neural-compressor`` backend (Intel Neural Compressor's ONNX API).

onnx-neural-compressor pins numpy<2, so the tests that run it are marked ``inc`` and run by
``make test-inc`` in .venv-inc (constraints-inc.txt); in an environment without the package they are
skipped (``make test``), unless OPTIMUM_PRUNE_REQUIRE_INC is set (``make test-inc`` sets it), where a
missing package fails them instead. The configuration checks and the constraints-file check below need
no INC and run everywhere.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimum_prune.errors import ConfigError
from optimum_prune.stages import ExportStage, PruneStage, QuantizeStage, read_report
from tiny_folders import TEXTS, text_dataset, tiny_hf_folder

REPO = Path(__file__).resolve().parent.parent
HAVE_INC = importlib.util.find_spec("onnx_neural_compressor") is not None
needs_inc = pytest.mark.skipif(
    not HAVE_INC and not os.environ.get("OPTIMUM_PRUNE_REQUIRE_INC"),
    reason="onnx-neural-compressor is not installed (it pins numpy<2): run `make test-inc`, which builds "
    ".venv-inc from constraints-inc.txt",
)

# op types each (mode, format) must leave in the graph, and the integer kernel of a MatMul
EXPECTED_OPS = {
    ("dynamic", None): {"MatMulInteger", "DynamicQuantizeLinear"},
    ("static", None): {"QLinearMatMul", "QuantizeLinear", "DequantizeLinear"},
    ("static", "qdq"): {"QuantizeLinear", "DequantizeLinear"},
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inc")


@pytest.fixture(scope="module")
def exported(work) -> Path:
    hf = tiny_hf_folder("bert", work / "zoo", work)
    return ExportStage(task="feature-extraction").run(hf, work / "export")


@pytest.fixture(scope="module")
def pruned(exported, work) -> Path:
    return PruneStage(sparsity=0.3, verify=False).run(exported, work / "prune")


@pytest.fixture(scope="module")
def calibration(work) -> dict:
    return {"name": str(text_dataset(work)), "split": "train", "num_samples": 16, "max_length": 32}


def _encoded(folder: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="np"))


def _outputs(folder: Path, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _op_types(folder: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}


@pytest.mark.parametrize(
    ("mode", "quant_format"),
    [("dynamic", None), ("static", None), ("static", "qdq")],
    ids=["dynamic", "static-qoperator", "static-qdq"],
)
@pytest.mark.inc
@needs_inc
def test_pruned_model_quantized_with_inc(pruned, calibration, work, mode, quant_format):
    options = {"calibration": calibration} if mode == "static" else {}
    if quant_format:
        options["quant_format"] = quant_format
    stage = QuantizeStage(backend="neural-compressor", mode=mode, **options)
    out = stage.run(pruned, work / f"inc-{mode}-{quant_format or 'qoperator'}")

    # what INC did, in the report
    entry = read_report(out)[-1]
    assert entry["stage"] == "quantize" and entry["backend"] == "neural-compressor"
    assert entry["mode"] == mode
    assert entry["format"] == ("QDQ" if quant_format == "qdq" else "QOperator")
    assert entry["quantized_by_op_type"].get("MatMul", 0) >= 8  # 2 layers x (Q, K, V, O, FFN up, FFN down)
    assert entry["quantized_nodes"] == sum(entry["quantized_by_op_type"].values())
    if mode == "static":
        assert entry["calibration_samples"] == 16

    # and in the graph itself
    ops = _op_types(out)
    expected = EXPECTED_OPS[(mode, quant_format)]
    assert expected <= ops, f"missing {expected - ops}"
    assert set(entry["quantized_op_types"]) >= expected
    if quant_format == "qdq":  # QDQ keeps float MatMuls between DequantizeLinear and QuantizeLinear
        assert "QLinearMatMul" not in ops and "MatMul" in ops
    else:  # QOperator: no float MatMul with a weight initializer is left
        assert "MatMulInteger" in ops or "QLinearMatMul" in ops
    # INC saves through external data (its ONNX Runtime-optimized copy has external initializers)
    assert (out / "model.onnx_data").is_file()

    # the folder loads with its Optimum class and runs in a transformers pipeline
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForFeatureExtraction.from_pretrained(out)
    features = pipeline("feature-extraction", model=model, tokenizer=AutoTokenizer.from_pretrained(out))(
        TEXTS[0]
    )
    assert np.asarray(features).shape[-1] == 32

    # INT8 stays close to the FP32 pruned model (measured: dynamic 0.99996, static QOperator 0.995,
    # static QDQ 0.99994 on this tiny BERT)
    enc = _encoded(pruned)
    assert _cosine(_outputs(pruned, enc), _outputs(out, enc)) > 0.98


@pytest.mark.inc
@needs_inc
def test_pruned_int8_is_smaller_than_int8_alone_with_inc(exported, pruned, work):
    int8 = QuantizeStage(backend="neural-compressor", mode="dynamic").run(exported, work / "inc-int8")
    pruned_int8 = QuantizeStage(backend="neural-compressor", mode="dynamic").run(
        pruned, work / "inc-pruned-int8"
    )
    size_int8 = read_report(int8)[-1]["size_bytes"]
    size_pruned_int8 = read_report(pruned_int8)[-1]["size_bytes"]
    assert size_pruned_int8 < size_int8
    # both counted with their external data file
    assert size_int8 >= (int8 / "model.onnx_data").stat().st_size > 0


@pytest.mark.inc
@needs_inc
def test_inc_quantizes_a_model_stored_as_external_data(pruned, work):
    # the path models over the 2 GB protobuf limit take: initializers in model.onnx_data
    import shutil

    src = work / "pruned-external"
    shutil.copytree(pruned, src)
    proto = onnx.load(str(src / "model.onnx"))
    onnx.save(proto, str(src / "model.onnx"), save_as_external_data=True, location="model.onnx_data",
              size_threshold=0)
    header = onnx.load(str(src / "model.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    out = QuantizeStage(backend="neural-compressor", mode="dynamic").run(src, work / "inc-external")
    assert "MatMulInteger" in _op_types(out) and (out / "model.onnx_data").is_file()
    enc = _encoded(pruned)
    assert _cosine(_outputs(pruned, enc), _outputs(out, enc)) > 0.98


@pytest.mark.inc
@needs_inc
def test_inc_rejects_an_op_type_it_cannot_quantize(pruned, work):
    stage = QuantizeStage(backend="neural-compressor", mode="dynamic", operators_to_quantize=["Softmax"])
    with pytest.raises(ConfigError, match="rejected the configuration: Unsupported optype Softmax"):
        stage.run(pruned, work / "inc-softmax")


# --------------------------------------------------------------------------------------------------------
# No INC needed
# --------------------------------------------------------------------------------------------------------


def test_quant_format_is_a_neural_compressor_option():
    with pytest.raises(ConfigError, match="quant_format is an option of backend 'neural-compressor'"):
        QuantizeStage(mode="dynamic", quant_format="qdq")
    with pytest.raises(ConfigError, match="'qdq' needs mode 'static'"):
        QuantizeStage(backend="neural-compressor", mode="dynamic", quant_format="qdq")
    with pytest.raises(ConfigError, match="quant_format"):
        QuantizeStage(backend="neural-compressor", mode="dynamic", quant_format="int4")


def _pins(path: Path) -> dict[str, str]:
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    pins = dict(ln.split("==", 1) for ln in lines if ln and not ln.startswith("#"))
    return {k.lower().replace("_", "-"): v for k, v in pins.items()}


def test_inc_constraints_differ_from_the_main_ones_only_where_numpy_1_needs_it():
    main, inc_pins = _pins(REPO / "constraints.txt"), _pins(REPO / "constraints-inc.txt")
    assert inc_pins["numpy"].startswith("1.") and main["numpy"].startswith("2.")
    assert inc_pins["torch"] == main["torch"] == "2.13.0"  # the Makefile installs this torch first
    changed = {k for k in main if k in inc_pins and inc_pins[k] != main[k]}
    assert changed == {"numpy", "ml-dtypes", "pandas", "pyarrow"}
    assert set(inc_pins) - set(main) == {"onnx-neural-compressor", "onnxruntime-extensions", "scipy"}
    assert set(main) <= set(inc_pins)
