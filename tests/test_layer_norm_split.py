"""Splitting ``com.microsoft::SkipLayerNormalization`` into Sum + LayerNormalization
(optimum_prune.passes.layer_norm_split) and the ``optimize`` stage that applies it.

Each hand-written graph must give the same outputs under ONNX Runtime after the split, pass
``onnx.checker`` (full check), and ONNX Runtime must not fuse it back when it loads the model.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from graphs import MS, _build, make_inputs
from optimum_prune.errors import ConfigError
from optimum_prune.passes.layer_norm_split import split_skip_layer_norms
from optimum_prune.stages import ExportStage, OptimizeStage, read_report
from tiny_folders import tiny_hf_folder


def _split(model: onnx.ModelProto):
    m = ir.from_proto(model)
    report = split_skip_layer_norms(m)
    return ir.to_proto(m), report


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _ops_after_ort_load(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    """The op types of the graph ONNX Runtime runs, after its load-time optimisations."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort-optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(tmp_path / "ort-optimized.onnx"))


def _inits(rng, **shapes) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _one_node_model(outputs: str = "float[B, S, 8] y", results: str = "y", opset: int = 17,
                    seed: int = 1) -> onnx.ModelProto:
    """One SkipLayerNormalization of two graph inputs, without bias or epsilon attribute."""
    rng = np.random.default_rng(seed)
    return _build(f"""
        g (float[B, S, 8] x, float[B, S, 8] r) => ({outputs}) {{
            {results} = {MS}.SkipLayerNormalization(x, r, g1, b1)
        }}""", _inits(rng, g1=(8,), b1=(8,)), opset=opset, domains={MS: 1})


def _two_block_model() -> onnx.ModelProto:
    """Two residual blocks as ONNX Runtime fuses them: the first SLN has a bias and hands its residual
    sum (4th output) to the second, which has neither bias nor epsilon attribute (default 1e-12)."""
    rng = np.random.default_rng(0)
    inits = _inits(rng, W=(8, 8), W2=(8, 8), g1=(8,), b1=(8,), bias=(8,), g2=(8,), b2=(8,))
    return _build(f"""
        g (float[B, S, 8] x) => (float[B, S, 8] y) {{
            o = MatMul(x, W)
            n1, m1, v1, s1 = {MS}.SkipLayerNormalization<epsilon = 0.00001>(o, x, g1, b1, bias)
            o2 = MatMul(n1, W2)
            y = {MS}.SkipLayerNormalization(o2, s1, g2, b2)
        }}""", inits, opset=17, domains={MS: 1})


def test_split_gives_the_same_outputs_and_ort_does_not_fuse_it_back(tmp_path):
    model = _two_block_model()
    assert _ops_after_ort_load(model, tmp_path)["SkipLayerNormalization"] == 2
    out, report = _split(model)
    assert report.split == 2 and report.kept == []
    onnx.checker.check_model(out, full_check=True)
    ops = _ops(out)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 2 and ops["Sum"] == 2
    assert ops["Add"] == 1  # only the first block has a bias
    feeds = make_inputs(model)
    for a, b in zip(_run(model, feeds), _run(out, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))
    assert [o.name for o in out.graph.output] == ["y"]
    assert _ops_after_ort_load(out, tmp_path)["SkipLayerNormalization"] == 0
    eps = {n.name: [a.f for a in n.attribute if a.name == "epsilon"][0]
           for n in out.graph.node if n.op_type == "LayerNormalization"}
    assert sorted(eps.values()) == pytest.approx([1e-12, 1e-5])


def test_a_read_mean_output_keeps_the_node_fused():
    model = _one_node_model(outputs="float[B, S, 8] y, float[B, S, 1] m", results="y, m")
    out, report = _split(model)
    assert report.split == 0 and len(report.kept) == 1 and "mean output is read" in report.kept[0]
    assert _ops(out)["SkipLayerNormalization"] == 1


def test_opset_below_17_keeps_every_node_fused():
    out, report = _split(_one_node_model(opset=16, seed=2))
    assert report.split == 0 and "opset 16" in report.kept[0]
    assert _ops(out)["SkipLayerNormalization"] == 1


def test_a_broadcast_skip_and_a_2d_input(tmp_path):
    """The skip may broadcast over the batch (shape [S, H]); after a hoisted Gather the input is 2-D."""
    rng = np.random.default_rng(3)
    inits = _inits(rng, pos=(5, 8), g1=(8,), b1=(8,), bias=(8,), g2=(8,), b2=(8,))
    model = _build(f"""
        g (float[B, 5, 8] x, float[B, 8] t, float[B, 8] u) => (float[B, 5, 8] y, float[B, 8] z) {{
            y = {MS}.SkipLayerNormalization(x, pos, g1, b1, bias)
            z = {MS}.SkipLayerNormalization(t, u, g2, b2)
        }}""", inits, opset=17, domains={MS: 1})
    out, report = _split(model)
    assert report.split == 2
    onnx.checker.check_model(out, full_check=True)
    feeds = make_inputs(model)
    for a, b in zip(_run(model, feeds), _run(out, feeds), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("layer-norm-split")


def test_optimize_stage_splits_an_exported_encoder(work):
    """A tiny BERT feature extractor: O2 fuses SkipLayerNormalization, the stage splits every one of them,
    and the folder gives the same hidden states as with the fused nodes."""
    from transformers import AutoTokenizer

    hf = tiny_hf_folder("bert", work / "zoo", work)
    exported = ExportStage(task="feature-extraction").run(hf, work / "bert-features")
    fused = OptimizeStage(level="O2", split_skip_layer_norms=False).run(exported, work / "bert-fused")
    split = OptimizeStage(level="O2").run(exported, work / "bert-split")
    entry = next(e for e in read_report(split) if e["stage"] == "optimize")["split_skip_layer_norms"]
    fused_ops = _ops(onnx.load(fused / "model.onnx"))
    assert fused_ops["SkipLayerNormalization"] >= 2
    assert entry["kept"] and entry["split"] == fused_ops["SkipLayerNormalization"], entry
    split_model = onnx.load(split / "model.onnx")
    assert _ops(split_model)["SkipLayerNormalization"] == 0
    onnx.checker.check_model(str(split / "model.onnx"), full_check=True)
    tokenizer = AutoTokenizer.from_pretrained(split)
    texts = ["a tiny test", "another, longer test sentence"]
    feeds = dict(tokenizer(texts, padding=True, return_tensors="np"))
    names = {i.name for i in split_model.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in names}
    a = _run(onnx.load(fused / "model.onnx"), feeds)[0]
    b = _run(split_model, feeds)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_split_option_is_validated():
    with pytest.raises(ConfigError, match="split_skip_layer_norms"):
        OptimizeStage(level="O2", split_skip_layer_norms=1)


def test_the_default_epsilon_is_onnx_runtimes():
    """An SLN without an epsilon attribute on rows of tiny variance, where the epsilon decides the output:
    the split node must use the epsilon ONNX Runtime's kernel defaults to."""
    model = _one_node_model(seed=4)
    out, report = _split(model)
    assert report.split == 1
    feeds = {k: (1e-5 * v).astype(np.float32) for k, v in make_inputs(model).items()}  # variance ~1e-10
    np.testing.assert_allclose(_run(out, feeds)[0], _run(model, feeds)[0], rtol=1e-3, atol=1e-3)
