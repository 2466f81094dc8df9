"""Distillation: plan -> PyTorch student equivalence, save/reload/re-export, the KD loss, training, the stage.

Students are built from tiny zoo models (random weights, exported with optimum-onnx) and must reproduce
their pruned ONNX model under ONNX Runtime within 1e-4 (max abs) before anything else happens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from optimum_prune import ORTPruner, PruningConfig, load_pruned
from optimum_prune.distill import (
    DistillationConfig,
    DistillationLoss,
    build_student,
    compare_with_onnx,
    distill,
)
from optimum_prune.distill.data import encode_examples
from optimum_prune.distill.saving import save_student
from optimum_prune.errors import ConfigError, StudentMismatchError
from optimum_prune.pipeline import Pipeline
from optimum_prune.stages import read_report
from tiny_folders import TEXTS, save_letter_tokenizer, text_dataset
from zoo import ZOO, export_zoo_model

REPO = Path(__file__).resolve().parent.parent
ATOL = 1e-4


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


def _pruned(onnx_dir: Path, out: Path, **config) -> Path:
    if not out.exists():
        ORTPruner.from_pretrained(onnx_dir).prune(PruningConfig(**config), out)
    return out


def _torch_outputs(model, ids: np.ndarray):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), return_dict=True)
    return (out.logits if "logits" in out else out.last_hidden_state).numpy()


# --------------------------------------------------------------------------------------------------------
# Plan -> PyTorch student
# --------------------------------------------------------------------------------------------------------

CASES = [
    # (zoo name, with past, pruning config)
    ("bert", False, {"sparsity": 0.5, "scope": ("ffn", "heads")}),
    ("distilbert", False, {"sparsity": 0.5, "scope": ("ffn", "heads")}),
    ("vit", False, {"sparsity": 0.5, "scope": ("ffn", "heads")}),
    ("bart", False, {"sparsity": 0.5, "scope": ("ffn", "heads")}),
    ("gpt2", False, {"sparsity": 0.5, "scope": ("ffn",)}),
    ("llama", True, {"sparsity": 0.5, "scope": ("ffn", "heads"), "prune_kv_heads": True}),
    ("mistral", False, {"sparsity": 0.3, "scope": ("ffn",)}),
]


@pytest.mark.parametrize(("name", "past", "config"), CASES, ids=[c[0] for c in CASES])
def test_student_reproduces_the_pruned_onnx_model(name, past, config, work):
    onnx_dir = export_zoo_model(name, work / "zoo", with_past=past)
    teacher = ZOO[name].auto_model_class().from_pretrained(onnx_dir.parent / "hf").eval()
    pruned = _pruned(onnx_dir, work / f"{name}-pruned", **config)
    student, report = build_student(teacher, onnx_dir, pruned)

    assert report.max_abs_diff and max(report.max_abs_diff.values()) <= ATOL
    assert report.params_after < report.params_before
    assert report.params_after == sum(p.numel() for p in student.parameters())
    assert sum(p.numel() for p in teacher.parameters()) == report.params_before  # teacher untouched
    assert report.changed
    # an independent run on other inputs agrees too
    assert max(compare_with_onnx(student, pruned, rows=3, length=11, seed=7).values()) <= ATOL


def test_student_heads_use_transformers_prune_heads_and_reload_natively(work):
    from transformers import AutoModel

    onnx_dir = export_zoo_model("bert", work / "zoo")
    teacher = AutoModel.from_pretrained(onnx_dir.parent / "hf")
    pruned = _pruned(onnx_dir, work / "bert-pruned", sparsity=0.5, scope=("ffn", "heads"))
    student, report = build_student(teacher, onnx_dir, pruned)
    plan = json.loads((pruned / "pruning_plan.json").read_text())
    head_groups = [g for g in plan["groups"] if g["kind"] == "heads" and len(g["kept"]) < g["units"]]
    assert sorted(len(h) for h in report.pruned_heads.values()) == sorted(
        g["units"] - len(g["kept"]) for g in head_groups)
    assert student.config.pruned_heads == report.pruned_heads
    assert student.config.intermediate_size == 24  # 48 -> 24 in every layer

    folder = save_student(student, work / "bert-student")
    assert json.loads((folder / "student.json").read_text())["native"] is True
    ids = np.random.default_rng(0).integers(5, 100, size=(2, 9))
    native = AutoModel.from_pretrained(folder).eval()
    assert np.allclose(_torch_outputs(native, ids), _torch_outputs(student, ids), atol=1e-6)
    reloaded = load_pruned(folder)
    assert np.allclose(_torch_outputs(reloaded, ids), _torch_outputs(student, ids), atol=1e-6)


def test_saved_student_reloads_and_reexports(work):
    """Non-uniform structure (a llama whose down projections got a bias from repair, KV groups cut):
    load_pruned rebuilds it, and optimum-onnx exports it to a model that matches it."""
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_dir = export_zoo_model("llama", work / "zoo")
    teacher = ZOO["llama"].auto_model_class().from_pretrained(onnx_dir.parent / "hf").eval()
    pruned = _pruned(onnx_dir, work / "llama-repaired", sparsity=0.5, scope=("ffn",), recover=True)
    plan = json.loads((pruned / "pruning_plan.json").read_text())
    assert any(r["bias_created"] for r in plan["repairs"]), "llama's down_proj has no bias: repair adds one"
    student, report = build_student(teacher, onnx_dir, pruned)
    assert max(report.max_abs_diff.values()) <= ATOL
    assert any(name.endswith("down_proj.bias") for name, _ in student.named_parameters())

    folder = save_student(student, work / "llama-student")
    # nn.Linear biases the architecture does not have: from_pretrained cannot rebuild them
    assert json.loads((folder / "student.json").read_text())["native"] is False
    reloaded = load_pruned(folder)
    assert max(compare_with_onnx(reloaded, pruned).values()) <= ATOL

    export = work / "llama-student-onnx"
    onnx_export_from_model(reloaded, export, task="text-generation", do_validation=False)
    onnx.checker.check_model(str(export / "model.onnx"), full_check=True)
    assert max(compare_with_onnx(reloaded, export).values()) <= ATOL


def test_deduplicated_initializers_are_linked_through_their_identity_alias(work):
    """transformers' initialisation (zero biases, unit norms) makes equal tensors that the exporter
    deduplicates behind Identity nodes; each PyTorch tensor must still find its own pruned value."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoModel

    torch.manual_seed(0)
    hf = work / "bert-plain-hf"
    AutoModel.from_config(ZOO["bert"].make_config()).save_pretrained(hf)
    onnx_dir = work / "bert-plain-onnx"
    main_export(str(hf), onnx_dir, task="feature-extraction", library_name="transformers")
    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    assert any(n.op_type == "Identity" for n in model.graph.node)
    pruned = _pruned(onnx_dir, work / "bert-plain-pruned", sparsity=0.5, scope=("ffn", "heads"))
    student, report = build_student(AutoModel.from_pretrained(hf), onnx_dir, pruned)
    assert report.linked.get("alias", 0) > 0
    assert max(report.max_abs_diff.values()) <= ATOL


def test_a_student_that_differs_from_the_graph_is_refused(work):
    """A pruned graph with an op PyTorch does not have (here: outputs scaled by 2) cannot be reproduced."""
    onnx_dir = export_zoo_model("bert", work / "zoo")
    pruned = _pruned(onnx_dir, work / "bert-pruned", sparsity=0.5, scope=("ffn", "heads"))
    tampered = work / "bert-tampered"
    shutil.copytree(pruned, tampered, dirs_exist_ok=True)
    model = onnx.load(str(tampered / "model.onnx"))
    out = model.graph.output[0]
    producer = next(n for n in model.graph.node if out.name in n.output)
    producer.output[list(producer.output).index(out.name)] = "unscaled"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["unscaled", "two"], [out.name]))
    onnx.save(model, str(tampered / "model.onnx"))

    teacher = ZOO["bert"].auto_model_class().from_pretrained(onnx_dir.parent / "hf")
    with pytest.raises(StudentMismatchError,
                       match=r"output 'last_hidden_state' differs by .* tolerance 0.0001"):
        build_student(teacher, onnx_dir, tampered)


@pytest.mark.parametrize(("name", "fused", "scope"),
                         [("bert", True, ("heads",)), ("resnet", False, ("conv",))],
                         ids=["bert-fused", "resnet"])
def test_folded_tensors_cannot_be_mapped_back_and_say_so(name, fused, scope, work):
    """After ONNX Runtime's fusions Q/K/V live in one packed initializer; resnet's export folds BatchNorm
    into the Conv weights. Neither maps back to PyTorch parameters: the student is refused."""
    onnx_dir = export_zoo_model(name, work / "zoo", fused=fused)
    pruned = _pruned(onnx_dir, work / f"{name}-{fused}-pruned", sparsity=0.5, scope=scope)
    teacher = ZOO[name].auto_model_class().from_pretrained(onnx_dir.parent / "hf")
    with pytest.raises(StudentMismatchError, match="does not reproduce|fails to run"):
        build_student(teacher, onnx_dir, pruned)


# --------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------


def test_soft_target_loss_is_zero_for_equal_logits_and_scales_with_t_squared():
    logits = torch.randn(4, 3)
    loss = DistillationLoss(temperature=3.0)
    total, parts = loss({"logits": logits}, {"logits": logits.clone()})
    assert float(total) == pytest.approx(0.0, abs=1e-6) and set(parts) == {"kd"}

    s, t = torch.randn(4, 3), torch.randn(4, 3)
    for temperature in (1.0, 4.0):
        p = torch.softmax(t / temperature, -1)
        manual = (p * (p.log() - torch.log_softmax(s / temperature, -1))).sum(-1).mean() * temperature**2
        got, _ = DistillationLoss(temperature=temperature)({"logits": s}, {"logits": t})
        assert float(got) == pytest.approx(float(manual), rel=1e-5)


def test_loss_terms_hard_labels_and_hidden_states_with_kept_positions():
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    labels = torch.tensor([[0, 1, 2, 3, -100]] * 2)
    loss = DistillationLoss(alpha_kd=0.0, alpha_ce=1.0)
    got, parts = loss({"logits": s}, {"logits": t}, labels=labels)
    assert float(got) == pytest.approx(float(torch.nn.functional.cross_entropy(
        s.reshape(-1, 4), labels.reshape(-1), ignore_index=-100)), rel=1e-5) and set(parts) == {"ce"}

    teacher_h = (torch.randn(2, 5, 6), torch.randn(2, 5, 6))
    kept = [0, 2, 5]
    student_h = tuple(h[..., kept] for h in teacher_h)  # a student that kept exactly those positions
    loss = DistillationLoss(alpha_kd=0.0, alpha_hidden=1.0, hidden_kept=kept)
    got, _ = loss({"hidden_states": student_h}, {"hidden_states": teacher_h})
    assert float(got) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="no kept positions"):
        DistillationLoss(alpha_kd=0.0, alpha_hidden=1.0)({"hidden_states": student_h},
                                                         {"hidden_states": teacher_h})


def test_masked_tokens_do_not_count():
    s, t = torch.randn(1, 4, 3), torch.randn(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    t_changed = t.clone()
    t_changed[:, 2:] = 100.0  # padding positions
    loss = DistillationLoss()
    a, _ = loss({"logits": s}, {"logits": t}, attention_mask=mask)
    b, _ = loss({"logits": s}, {"logits": t_changed}, attention_mask=mask)
    assert float(a) == pytest.approx(float(b))


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"alpha_kd": -1}, {"alpha_kd": 0},
                                 {"learning_rate": 0}, {"batch_size": 0}, {"max_steps": 0},
                                 {"warmup_ratio": 1.0}, {"epochs": float("nan")}])
def test_bad_distillation_options_are_config_errors(bad):
    with pytest.raises(ConfigError, match="distillation"):
        DistillationConfig(**bad)


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def _tiny_classifier(dest: Path) -> Path:
    """A tiny BERT sentiment classifier folder (random weights, letter tokenizer, 2 labels)."""
    from transformers import BertForSequenceClassification

    if (dest / "config.json").is_file():
        return dest
    config = ZOO["bert"].make_config()
    config.num_labels = 2
    config.id2label, config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        model.classifier.weight.mul_(50.0)  # confident enough that soft targets carry information
    model.save_pretrained(dest)
    save_letter_tokenizer(dest)
    return dest


def test_a_few_kd_steps_lower_the_kd_loss(work):
    import datasets
    from optimum.exporters.onnx import main_export
    from transformers import AutoModelForSequenceClassification

    hf = _tiny_classifier(work / "clf-hf")
    onnx_dir = work / "clf-onnx"
    if not onnx_dir.exists():
        main_export(str(hf), onnx_dir, task="text-classification", library_name="transformers")
    pruned = _pruned(onnx_dir, work / "clf-pruned", sparsity=0.5, scope=("ffn", "heads"))
    teacher = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    student, _ = build_student(teacher, onnx_dir, pruned)
    rows = [TEXTS[i % len(TEXTS)] + " " + TEXTS[(3 * i) % len(TEXTS)] for i in range(48)]
    data = datasets.Dataset.from_dict({"text": rows, "label": [i % 2 for i in range(48)]})
    examples, collator = encode_examples(hf, data, student, max_length=32, label_column="label")
    config = DistillationConfig(max_steps=30, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0,
                                progress=False, alpha_ce=0.1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = [p.requires_grad for p in teacher.parameters()]
    result = distill(student, teacher, examples[:40], config, collator=collator,
                     eval_examples=examples[40:])
    assert result.steps == 30 and result.history
    assert result.loss_after < 0.8 * result.loss_before
    # the teacher was frozen while the student trained, and is given back as it came
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert [p.requires_grad for p in teacher.parameters()] == flags and any(flags)
    # so a second student built from it trains too (it used to inherit requires_grad=False)
    again, _ = build_student(teacher, onnx_dir, pruned)
    short = DistillationConfig(max_steps=5, batch_size=8, progress=False, learning_rate=2e-3, alpha_ce=0.1)
    second = distill(again, teacher, examples[:40], short, collator=collator, eval_examples=examples[40:])
    assert second.loss_after < second.loss_before


# --------------------------------------------------------------------------------------------------------
# The stage and the recipe
# --------------------------------------------------------------------------------------------------------


def test_prune_distill_int8_recipe_on_a_tiny_classifier(work):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    hf = _tiny_classifier(work / "clf-hf")
    data = text_dataset(work, n=48)
    split = {"name": str(data), "split": "train", "num_samples": 48, "max_length": 32}
    overrides = {
        # without repair the tiny student starts far enough from the teacher for KD to show
        "prune": {"calibration": split, "recover": False},
        # soft targets only: the tiny dataset's labels are arbitrary
        "distill": {"dataset": split, "eval_samples": 8, "max_steps": 12, "batch_size": 8,
                    "learning_rate": 2e-3, "alpha_ce": 0.0, "progress": False},
        "evaluate": {"dataset": {**split, "num_samples": 16}},
        "benchmark": {"repeats": 2, "warmup": 0, "batch_sizes": [1], "sequence_length": 16,
                      "progress": False},
    }
    pipe = Pipeline.from_recipe(REPO / "recipes" / "prune-distill-int8.yaml", overrides=overrides)
    out = work / "recipe"
    final = pipe.run(hf, out, progress=False)
    report = read_report(final)
    produced = [e["stage"] for e in report if e["produces_model"]]
    assert produced == ["export", "prune", "distill", "optimize", "quantize"]
    entry = next(e for e in report if e["stage"] == "distill")
    assert max(entry["student"]["max_abs_diff"].values()) <= ATOL
    assert max(entry["export_max_abs_diff"].values()) <= ATOL
    assert entry["distillation"]["steps"] == 12
    assert entry["distillation"]["loss_after"] < entry["distillation"]["loss_before"]
    sizes = {e["stage"]: e["size_bytes"] for e in report if e["produces_model"]}
    assert sizes["distill"] < sizes["export"]
    ops = {n.op_type for n in onnx.load(str(final / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    assert "QAttention" in ops  # the fused attention of the pruned student, quantized
    accuracy = [e for e in report if e["stage"] == "evaluate"]
    assert len(accuracy) == 5 and all(0.0 <= e["quality"]["value"] <= 1.0 for e in accuracy)

    distill_dir = next(out.glob("*-distill"))
    student = load_pruned(distill_dir / "student")
    assert sum(p.numel() for p in student.parameters()) == entry["student"]["params_after"]
    model = ORTModelForSequenceClassification.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    labels = {r["label"] for r in pipeline("text-classification", model=model, tokenizer=tokenizer)(TEXTS)}
    assert labels <= {"negative", "positive"}


def test_distill_needs_a_pruned_input(work):
    from optimum_prune.stages import DistillStage

    onnx_dir = export_zoo_model("bert", work / "zoo")
    with pytest.raises(ConfigError, match="put a `prune` stage before `distill`"):
        DistillStage(progress=False).run(onnx_dir, work / "no-plan")
    assert not (work / "no-plan").exists()


def test_distill_stage_options_are_checked():
    from optimum_prune.stages import DistillStage

    with pytest.raises(ConfigError, match="eval_samples"):
        DistillStage(eval_samples=2000)
    with pytest.raises(ConfigError, match="valid keys"):
        DistillStage(temprature=2.0)
    with pytest.raises(ConfigError, match="temperature"):
        DistillStage(temperature=-1.0)


def test_distill_stage_on_a_decoder_with_past_keeps_generation_working(work):
    """KV groups and MLP neurons cut, the student distilled and exported with past key/values: the final
    folder generates with ORTModelForCausalLM (the student's config carries the pruned KV-head count)."""
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from optimum_prune.stages import DistillStage, ExportStage, PruneStage
    from tiny_folders import tiny_hf_folder

    hf = tiny_hf_folder("llama", work / "zoo", work)
    data = text_dataset(work, n=48)
    split = {"name": str(data), "split": "train", "num_samples": 24, "max_length": 16}
    stages = [ExportStage(task="text-generation-with-past"),
              PruneStage(sparsity=0.5, scope=("ffn", "heads"), prune_kv_heads=True),
              DistillStage(dataset=split, eval_samples=8, max_steps=3, batch_size=8, progress=False)]
    final = Pipeline(stages).run(hf, work / "llama-kd", progress=False)
    entry = next(e for e in read_report(final) if e["stage"] == "distill")
    assert entry["task"] == "text-generation-with-past"
    assert max(entry["export_max_abs_diff"].values()) <= ATOL
    config = json.loads((final / "config.json").read_text())
    pruned_config = json.loads((work / "llama-kd" / "2-prune" / "config.json").read_text())
    assert config["num_key_value_heads"] == pruned_config["num_key_value_heads"] < 2  # 2 KV heads, half cut
    model = ORTModelForCausalLM.from_pretrained(final, use_cache=True)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("good film", return_tensors="pt", return_token_type_ids=False)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
