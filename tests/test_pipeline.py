"""Pipeline stages, recipes and reports on tiny zoo models (offline, fast).

Every recipe in recipes/ runs on a tiny model of its architecture (the model and the data are
overridden; the stages are the recipe's), and its final folder must load with its ORTModel class and
run in a transformers pipeline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from optimum_prune.errors import BackendUnavailableError, ConfigError
from optimum_prune.pipeline import Pipeline
from optimum_prune.stages import (
    BenchmarkStage,
    EvaluateStage,
    ExportStage,
    OptimizeStage,
    PruneStage,
    QuantizeStage,
    read_report,
)
from optimum_prune.stages.data import DatasetConfig, load_split
from tiny_folders import TEXTS, text_dataset, tiny_hf_folder

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
FAST_BENCH = {"repeats": 2, "warmup": 0, "batch_sizes": [1, 32], "sequence_length": 16, "progress": False}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def bert_hf(work) -> Path:
    return tiny_hf_folder("bert", work / "zoo", work)


@pytest.fixture(scope="module")
def dataset(work) -> Path:
    return text_dataset(work)


def _text_data(dataset: Path, split: str = "train") -> dict:
    return {"name": str(dataset), "split": split, "num_samples": 16, "max_length": 32}


def _outputs(folder: Path, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _stage_names(folder: Path) -> list[str]:
    return [e["stage"] for e in read_report(folder)]


# --------------------------------------------------------------------------------------------------------
# Recipes on tiny models
# --------------------------------------------------------------------------------------------------------


def test_bert_recipe_on_tiny_bert(bert_hf, dataset, work):
    overrides = {"evaluate": {"dataset": _text_data(dataset, "train")}, "benchmark": FAST_BENCH}
    pipeline = Pipeline.from_recipe(RECIPES / "bert-prune30-int8-dynamic.yaml", overrides=overrides)
    before = _tree_digest(bert_hf)
    out = work / "bert30"
    final = pipeline.run(bert_hf, out, progress=False)

    assert _tree_digest(bert_hf) == before, "the input folder was modified"
    assert final == out / "final"
    names = _stage_names(final)
    assert names == [
        "export",
        "evaluate",
        "benchmark",
        "prune",
        "evaluate",
        "benchmark",
        "quantize",
        "evaluate",
        "benchmark",
    ]
    report = read_report(final)
    assert json.loads((out / "report.json").read_text())["stages"] == report
    prune = report[3]
    assert prune["params_after"] < prune["params_before"] and prune["verify"]["exact"]
    assert prune["config"]["sparsity"] == 0.3 and prune["config"]["scope"] == ["ffn", "heads"]
    for entry in (report[2], report[5], report[8]):
        assert set(entry["latency"]) == {"1", "32"}
        assert entry["latency"]["32"]["p90_ms"] >= entry["latency"]["32"]["p50_ms"] > 0
    assert report[1]["quality"]["value"] == pytest.approx(1.0)  # the baseline against itself
    assert 0.9 < report[7]["fidelity"]["cosine_mean"] <= 1.0 + 1e-6
    assert report[6]["size_bytes"] < report[3]["size_bytes"] < report[0]["size_bytes"]
    md = (out / "report.md").read_text()
    assert "| 1 | export |" in md and "quantize" in md and "report.png" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert not (final / "model.safetensors").exists()  # PyTorch weights are not carried into ONNX folders

    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForFeatureExtraction.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    features = pipeline("feature-extraction", model=model, tokenizer=tokenizer)(TEXTS[0])
    assert np.asarray(features).shape[-1] == 32

    # the quantized pruned model stays close to the pruned FP32 model
    enc = dict(tokenizer(TEXTS, padding=True, return_tensors="np"))
    pruned, quantized = out / "4-prune", final
    assert _cosine(_outputs(pruned, enc), _outputs(quantized, enc)) > 0.98


def test_pruned_int8_is_smaller_than_int8_alone(bert_hf, work):
    quant_only = Pipeline([ExportStage(task="feature-extraction"), QuantizeStage(mode="dynamic")])
    pruned_quant = Pipeline(
        [
            ExportStage(task="feature-extraction"),
            PruneStage(sparsity=0.3, verify=False),
            QuantizeStage(mode="dynamic"),
        ]
    )
    a = quant_only.run(bert_hf, work / "int8", progress=False)
    b = pruned_quant.run(bert_hf, work / "pruned-int8", progress=False)
    size_a, size_b = read_report(a)[-1]["size_bytes"], read_report(b)[-1]["size_bytes"]
    assert size_b < size_a


def test_minilm_static_recipe_on_tiny_bert(bert_hf, dataset, work):
    overrides = {
        "prune": {"calibration": _text_data(dataset, "train")},
        "quantize": {"calibration": _text_data(dataset, "train")},
        "evaluate": {"dataset": _text_data(dataset, "train")},
        "benchmark": FAST_BENCH,
    }
    pipeline = Pipeline.from_recipe(RECIPES / "minilm-prune50-repair-int8-static.yaml", overrides=overrides)
    final = pipeline.run(bert_hf, work / "minilm50", progress=False)
    report = read_report(final)
    quant = next(e for e in report if e["stage"] == "quantize")
    assert quant["config"]["mode"] == "static" and quant["calibration_samples"] == 16
    prune = next(e for e in report if e["stage"] == "prune")
    assert prune["units_removed"]["ffn"] == 2 * 24  # half of 48 neurons in each of 2 layers
    assert report[-2]["fidelity"]["cosine_mean"] > 0.5

    from optimum.onnxruntime import ORTModelForFeatureExtraction

    ORTModelForFeatureExtraction.from_pretrained(final)


def test_llama_gqa_recipe_on_tiny_llama(dataset, work):
    hf = tiny_hf_folder("llama", work / "zoo", work)
    overrides = {"evaluate": {"dataset": _text_data(dataset, "train")}, "benchmark": FAST_BENCH}
    pipeline = Pipeline.from_recipe(RECIPES / "llama-gqa-prune25.yaml", overrides=overrides)
    final = pipeline.run(hf, work / "llama", progress=False)
    report = read_report(final)
    assert report[0]["task"] == "text-generation-with-past"
    ppl = [e["perplexity"] for e in report if e["stage"] == "evaluate"]
    assert len(ppl) == 2 and all(np.isfinite(p) and p > 1 for p in ppl)
    prune = next(e for e in report if e["stage"] == "prune")
    assert prune["units_removed"]["ffn"] > 0 and prune["config"]["prune_kv_heads"] is True

    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForCausalLM.from_pretrained(final, use_cache=True)
    tokenizer = AutoTokenizer.from_pretrained(final)
    text = pipeline("text-generation", model=model, tokenizer=tokenizer)(
        "good film", max_new_tokens=3, do_sample=False
    )
    assert text[0]["generated_text"].startswith("good film")


def test_llama_flap_recipe_on_tiny_llama(dataset, work):
    hf = tiny_hf_folder("llama", work / "zoo", work)
    calibration = {**_text_data(dataset, "train"), "num_samples": 8, "pack": True}
    overrides = {"prune": {"calibration": calibration},
                 "evaluate": {"dataset": _text_data(dataset, "train")}, "benchmark": FAST_BENCH}
    pipeline = Pipeline.from_recipe(RECIPES / "llama-flap20-repair.yaml", overrides=overrides)
    final = pipeline.run(hf, work / "llama-flap", progress=False)
    report = read_report(final)
    prune = next(e for e in report if e["stage"] == "prune")
    assert prune["config"]["importance"] == "fluctuation" and prune["config"]["allocation"] == "standardized"
    assert prune["units_removed"]["ffn"] > 0 and prune["repair"]["consumers"] > 0
    assert prune["repair"]["mean_error_after"] < prune["repair"]["mean_error_before"]
    assert "packed" in prune["repair"]["calibration"]["source"]
    ppl = [e["perplexity"] for e in report if e["stage"] == "evaluate"]
    assert len(ppl) == 2 and all(np.isfinite(p) and p > 1 for p in ppl)

    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(final, use_cache=True)
    tokens = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert tokens.shape[1] == 6


def test_vit_recipe_on_tiny_vit(work):
    hf = tiny_hf_folder("vit", work / "zoo", work)
    pipeline = Pipeline.from_recipe(
        RECIPES / "vit-prune40-int8.yaml", overrides={"benchmark": {**FAST_BENCH, "batch_sizes": [1, 4]}}
    )
    final = pipeline.run(hf, work / "vit", progress=False)
    report = read_report(final)
    assert [e["stage"] for e in report if e["produces_model"]] == ["export", "prune", "quantize"]
    assert report[-2]["fidelity"]["top1_agreement"] >= 0.0 and report[-2]["data"] == "random inputs"

    from optimum.onnxruntime import ORTModelForImageClassification
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    model = ORTModelForImageClassification.from_pretrained(final)
    classify = pipeline(
        "image-classification", model=model, image_processor=AutoImageProcessor.from_pretrained(final)
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    assert len(classify(image, top_k=3)) == 3


@pytest.mark.parametrize("order", ["optimize-then-prune", "prune-then-optimize"])
def test_optimize_before_or_after_prune(bert_hf, work, order):
    prune, optimize = PruneStage(sparsity=0.3), OptimizeStage(level="O2")
    stages = [prune, optimize] if order == "prune-then-optimize" else [optimize, prune]
    final = Pipeline([ExportStage(task="feature-extraction"), *stages]).run(
        bert_hf, work / order, progress=False
    )
    report = read_report(final)
    opt = next(e for e in report if e["stage"] == "optimize")
    assert opt["fused_ops"].get("SkipLayerNormalization", 0) > 0
    pr = next(e for e in report if e["stage"] == "prune")
    assert pr["verify"]["exact"] and pr["units_removed"]["ffn"] > 0
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    ORTModelForFeatureExtraction.from_pretrained(final)


def test_quantize_after_optimize_on_a_head_pruned_model(bert_hf, work):
    """prune heads -> fuse (contrib Attention, which ONNX shape inference cannot type) -> INT8: the
    fused attention becomes QAttention and the INT8 model stays close to the fused FP32 one."""
    out = work / "prune-optimize-quantize"
    Pipeline(
        [
            ExportStage(task="feature-extraction"),
            PruneStage(sparsity=0.5, scope=["ffn", "heads"]),
            OptimizeStage(level="O2"),
            QuantizeStage(mode="dynamic"),
        ]
    ).run(bert_hf, out, progress=False)
    report = read_report(out / "4-quantize")
    assert next(e for e in report if e["stage"] == "prune")["units_removed"]["heads"] > 0
    assert next(e for e in report if e["stage"] == "optimize")["fused_ops"].get("Attention", 0) > 0
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "4-quantize" / "model.onnx")).graph.node}
    assert "QAttention" in ops and "Attention" not in ops
    from transformers import AutoTokenizer

    enc = dict(AutoTokenizer.from_pretrained(out / "3-optimize")(TEXTS, padding=True, return_tensors="np"))
    fused, quantized = _outputs(out / "3-optimize", enc), _outputs(out / "4-quantize", enc)
    np.testing.assert_allclose(fused, _outputs(out / "2-prune", enc), rtol=1e-4, atol=1e-4)
    assert _cosine(fused, quantized) > 0.98


def test_prune_stage_calibrates_on_packed_windows(bert_hf, work, dataset):
    calibration = {**_text_data(dataset), "num_samples": 3, "max_length": 16, "pack": True}
    final = Pipeline(
        [ExportStage(task="feature-extraction"), PruneStage(sparsity=0.3, importance="activation",
                                                            calibration=calibration)]
    ).run(bert_hf, work / "packed", progress=False)
    text = json.dumps(read_report(final))
    assert "packed into 16-token windows" in text and '"num_samples": 3' in text


def test_onnx_folder_input_passes_through_export(bert_hf, work, dataset):
    onnx_dir = Pipeline([ExportStage(task="feature-extraction")]).run(
        bert_hf, work / "exported", progress=False
    )
    final = Pipeline(
        [
            ExportStage(),
            PruneStage(sparsity=0.2),
            EvaluateStage(dataset=_text_data(dataset)),
            BenchmarkStage(**FAST_BENCH),
        ]
    ).run(onnx_dir, work / "from-onnx", progress=False)
    report = read_report(final)
    # the passed-through export keeps the earlier run's entries
    assert [e["stage"] for e in report] == ["export", "export", "prune", "evaluate", "benchmark"]
    assert "skipped" in report[1]


# --------------------------------------------------------------------------------------------------------
# Configuration errors
# --------------------------------------------------------------------------------------------------------


def test_unknown_recipe_key_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - prune: {sparsity: 0.3}\nmodle: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'modle'; valid keys: description, measure, model"):
        Pipeline.from_recipe(bad)


def test_unknown_stage_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        Pipeline.from_recipe({"stages": [{"prune": {"sparsity": 0.3, "sparsty": 0.5}}]})
    message = str(e.value)
    assert (
        "'sparsty'" in message and "sparsity" in message and "importance" in message and "verify" in message
    )
    with pytest.raises(ConfigError, match="unknown key 'batch'.*batch_sizes"):
        Pipeline.from_recipe({"stages": [{"benchmark": {"batch": 3}}]})
    with pytest.raises(ConfigError, match="unknown key 'splt'.*split"):
        QuantizeStage(mode="static", calibration={"name": "rotten_tomatoes", "splt": "train"})


def test_unknown_stage_name_lists_stages():
    with pytest.raises(ConfigError,
                       match="unknown stage 'prun'; known stages: benchmark, distill, evaluate, export"):
        Pipeline.from_recipe({"stages": ["prun"]})


def test_invalid_values_are_config_errors():
    with pytest.raises(ConfigError, match="sparsity must be in"):
        PruneStage(sparsity=1.5)
    with pytest.raises(ConfigError, match="mode must be one of 'dynamic', 'static'"):
        QuantizeStage(mode="fast")
    with pytest.raises(ConfigError, match="needs calibration"):
        QuantizeStage(mode="static")
    with pytest.raises(ConfigError, match="level must be one of"):
        OptimizeStage(level="O4")
    with pytest.raises(ConfigError, match="needs a dataset"):
        EvaluateStage(metric="accuracy")
    with pytest.raises(ConfigError, match="overrides for stages \\['quantize'\\]"):
        Pipeline.from_recipe({"stages": ["export"]}, overrides={"quantize": {"mode": "dynamic"}})


def test_every_recipe_parses():
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {p.name for p in recipes} >= {
        "bert-prune30-int8-dynamic.yaml",
        "minilm-prune50-repair-int8-static.yaml",
        "llama-gqa-prune25.yaml",
        "llama-flap20-repair.yaml",
        "vit-prune40-int8.yaml",
        "prune-distill-int8.yaml",
    }
    for path in recipes:
        pipeline = Pipeline.from_recipe(path)
        assert pipeline.stages[0].name == "export"


def test_neural_compressor_backend_names_the_missing_package():
    import importlib.util

    if importlib.util.find_spec("onnx_neural_compressor") is not None:
        pytest.skip("onnx-neural-compressor is installed")
    with pytest.raises(
        BackendUnavailableError, match=r"onnx-neural-compressor.*numpy<2.*backend: onnxruntime"
    ):
        QuantizeStage(backend="neural-compressor", mode="dynamic")


def test_stage_refuses_overlapping_folders(bert_hf, work):
    with pytest.raises(ConfigError, match="overlap"):
        ExportStage().run(bert_hf, bert_hf / "out")


def test_hf_folder_needs_an_export_stage(bert_hf, tmp_path):
    with pytest.raises(ConfigError, match="start the pipeline with an export stage"):
        Pipeline([PruneStage(sparsity=0.3)]).run(bert_hf, tmp_path / "out", progress=False)


def test_output_folder_must_be_new_or_an_earlier_run(bert_hf, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not an earlier pipeline run"):
        Pipeline([ExportStage()]).run(bert_hf, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep"


@pytest.mark.slow
def test_bert_recipe_on_real_minilm(minilm_dir, tmp_path):
    """The bert recipe as shipped (default model all-MiniLM-L6-v2, Rotten Tomatoes, batch 1 and 32)."""
    pipeline = Pipeline.from_recipe(RECIPES / "bert-prune30-int8-dynamic.yaml")
    final = pipeline.run(None, tmp_path / "run", progress=False)
    report = read_report(final)
    rows = [e for e in report if e["stage"] == "evaluate"]
    assert rows[0]["quality"]["value"] == pytest.approx(1.0)
    assert rows[-1]["quality"]["value"] > 0.5
    sizes = [e["size_bytes"] for e in report if e["produces_model"]]
    assert sizes[2] < sizes[1] < sizes[0]

    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForFeatureExtraction.from_pretrained(final)
    features = pipeline("feature-extraction", model=model, tokenizer=AutoTokenizer.from_pretrained(final))
    assert np.asarray(features("a fine film")).shape[-1] == 384


def test_prune_stage_with_calibration_uses_a_data_driven_criterion(bert_hf, dataset, work):
    stage = PruneStage(sparsity=0.5, scope=("ffn",), importance="activation",
                       calibration=_text_data(dataset, "train"))
    pipeline = Pipeline([ExportStage(task="feature-extraction"), stage])
    final = pipeline.run(bert_hf, work / "act", progress=False)
    prune = next(e for e in read_report(final) if e["stage"] == "prune")
    assert prune["config"]["importance"] == "activation"
    assert prune["calibration"]["num_samples"] == 16
    assert prune["verify"]["max_rel_error"] <= 1e-4
    with pytest.raises(ConfigError, match="activation"):
        Pipeline([ExportStage(task="feature-extraction"), PruneStage(sparsity=0.5, importance="activation")]
                 ).run(bert_hf, work / "no-data", progress=False)


def test_static_quantize_never_writes_into_its_input_folder(bert_hf, dataset, work):
    """ONNX Runtime's calibration writes ``model-inferred.onnx`` beside the model it reads (and removes it):
    a read-only input folder failed, and the folder changed under its owner."""
    exported = ExportStage(task="feature-extraction").run(bert_hf, work / "static-in")
    stamp = exported.stat().st_mtime_ns
    before = _tree_digest(exported)
    out = QuantizeStage(mode="static", calibration=_text_data(dataset)).run(exported, work / "static-out")
    assert (out / "model.onnx").is_file()
    assert exported.stat().st_mtime_ns == stamp, "a file was created in (or removed from) the input folder"
    assert _tree_digest(exported) == before


def test_recipe_values_are_checked_before_any_stage_runs():
    """Quoted booleans, a data-driven criterion without data, a dataset that is not local, data files
    without a builder name: each a one-line ConfigError naming the stage or key, at recipe load."""
    with pytest.raises(ConfigError, match=r"stage 'quantize': per_channel must be true or false .*'false'"):
        QuantizeStage(mode="dynamic", per_channel="false")
    with pytest.raises(ConfigError, match=r"stage 'prune': verify must be true or false"):
        PruneStage.from_dict({"sparsity": 0.3, "verify": "no"})
    with pytest.raises(ConfigError, match=r"stage 'prune': prune_kv_heads must be True or False"):
        PruneStage.from_dict({"sparsity": 0.3, "prune_kv_heads": "false"})
    with pytest.raises(ConfigError, match=r"stage 'prune': sparsity must be a number"):
        Pipeline.from_recipe({"stages": [{"prune": {"sparsity": "0.3"}}]})
    with pytest.raises(ConfigError, match=r"importance 'activation' needs calibration data: add calibration"):
        Pipeline.from_recipe({"stages": [{"prune": {"sparsity": 0.3, "importance": "activation"}}]})
    with pytest.raises(ConfigError, match=r"'imdb' is not a local dataset \(the Hub is never contacted\)"):
        load_split(DatasetConfig(name="imdb"))
    with pytest.raises(ConfigError, match=r"'csv' reads data_files"):
        DatasetConfig(name="csv")
    with pytest.raises(ConfigError, match=r"text_pair_column 's2' would be ignored"):
        PruneStage(sparsity=0.3, calibration={"name": "csv", "data_files": "p.csv", "text_pair_column": "s2"})
    assert DatasetConfig(data_files="reviews.csv").name == "csv"  # the extension names the builder
    assert DatasetConfig(data_files={"train": ["a.jsonl"]}).name == "json"


def test_a_learning_rate_written_1e_4_is_a_number():
    from optimum_prune.pipeline import load_yaml, parse_overrides

    assert load_yaml("learning_rate: 1e-4\nother: 2.0e-4\nname: x1e3") == {
        "learning_rate": 1e-4, "other": 2e-4, "name": "x1e3"}
    assert parse_overrides(["distill.learning_rate=5e-5"]) == {"distill": {"learning_rate": 5e-5}}


def test_class_ids_are_mapped_through_the_dataset_class_names(tmp_path):
    """An imagefolder numbers its classes alphabetically (cat 0, dog 1); a model with dog 0, cat 1 must be
    scored against its own ids, or a perfect model scores 0."""
    from optimum_prune.stages.data import labels_of

    (tmp_path / "config.json").write_text(json.dumps({"label2id": {"dog": 0, "cat": 1}}))
    assert labels_of(tmp_path, [0, 0, 1], ["cat", "dog"]).tolist() == [1, 1, 0]
    assert labels_of(tmp_path, [0, 1], None).tolist() == [0, 1]  # no names: ids as they are
    assert labels_of(tmp_path, [0, 1], ["ant", "bee"]).tolist() == [0, 1]  # names the model does not know


def test_fidelity_compares_per_token_outputs_token_by_token():
    """Token-classification logits of batches padded to different lengths: rows are the real tokens."""
    from optimum_prune.stages.evaluate import _fidelity, _pooled

    rng = np.random.default_rng(0)
    batches = [{"attention_mask": np.array([[1, 1, 0], [1, 1, 1]])}, {"attention_mask": np.ones((1, 5), int)}]
    outputs = [rng.standard_normal((2, 3, 4)), rng.standard_normal((1, 5, 4))]
    assert _pooled(outputs[0], batches[0], "token-classification").shape == (5, 4)
    same = _fidelity(outputs, outputs, batches, "token-classification")
    assert same["cosine_mean"] == pytest.approx(1.0)


def test_benchmark_records_the_sequence_length_that_ran(bert_hf, work):
    exported = ExportStage(task="feature-extraction").run(bert_hf, work / "bench-in")
    limit = json.loads((exported / "config.json").read_text())["max_position_embeddings"]
    out = BenchmarkStage(batch_sizes=[1], repeats=1, warmup=0, sequence_length=10 * limit).run(
        exported, work / "bench-out")
    entry = read_report(out)[-1]
    assert entry["sequence_length"] == limit and entry["sequence_length_asked"] == 10 * limit


def test_a_dotted_override_sets_one_key_inside_a_mapping_option():
    from optimum_prune.pipeline import parse_overrides

    calibration = {"name": "csv", "data_files": "a.csv", "num_samples": 64}
    recipe = {"stages": [{"prune": {"sparsity": 0.3, "importance": "activation", "recover": True,
                                    "calibration": calibration}}]}
    overrides = parse_overrides(["prune.calibration.num_samples=8", "prune.recover.damp=0.1"])
    stage = Pipeline.from_recipe(recipe, overrides=overrides).stages[0]
    calibration = stage.config.calibration
    assert (calibration.name, calibration.data_files, calibration.num_samples) == ("csv", "a.csv", 8)
    assert stage.config.pruning.recover.damp == 0.1
    # a whole mapping still replaces the option
    whole = parse_overrides(["prune.calibration={name: rotten_tomatoes, num_samples: 8}"])
    calibration = Pipeline.from_recipe(recipe, overrides=whole).stages[0].config.calibration
    assert (calibration.name, calibration.data_files) == ("rotten_tomatoes", None)
    with pytest.raises(ConfigError, match="STAGE.KEY=VALUE"):
        parse_overrides(["prune..num_samples=8"])
