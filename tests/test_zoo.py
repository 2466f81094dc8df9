"""The model zoo: tiny random transformers models exported with optimum-onnx, pruned at 30%.

Each variant (as exported, with past key/values for decoders, and after ONNX Runtime's transformer
fusions where they apply) must: prune exactly under the oracle, lose the share of parameters the cut
implies, and load and run with its ``ORTModelFor...`` class (``generate`` for decoders).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.verify import RELATIVE_TOLERANCE
from zoo import ZOO, dummy_inputs, export_zoo_model, load_ort_model

# Where the engine does not cut yet: the group is refused (never a wrong model), so little or
# nothing is removed. Each is an honest, strict xfail: fixing one makes the suite say so.
KNOWN_GAPS = {
    ("squeezebert", False, False): "Conv1d projections with grouped convs couple every channel",
    ("squeezebert", False, True): "Conv1d projections with grouped convs couple every channel",
}
MIN_PARAM_CUT = 0.04  # the smallest share a 30% cut of FFN/heads/filters removes in these tiny models


def _variants():
    for name, spec in ZOO.items():
        pasts = (False, True) if spec.is_decoder else (False,)
        for past in pasts:
            for fused in (False, True) if spec.fusable else (False,):
                key = (name, past, fused)
                marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[key])] if key in KNOWN_GAPS
                         else [])
                yield pytest.param(name, past, fused, marks=marks,
                                   id=f"{name}{'-past' if past else ''}{'-fused' if fused else ''}")


@pytest.mark.parametrize(("name", "past", "fused"), list(_variants()))
def test_zoo_model_prunes_exactly_and_loads(zoo_root, tmp_path, name, past, fused):
    spec = ZOO[name]
    src = export_zoo_model(name, zoo_root, with_past=past, fused=fused)
    scope = ("ffn", "heads", "conv")
    # With past key/values, heads go through the cache (config.json records it, or the cache inputs narrow).
    config = PruningConfig(sparsity=0.3, scope=scope, prune_kv_heads=past)
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    cut = 1 - report["params_after"] / report["params_before"]
    assert cut >= MIN_PARAM_CUT, f"only {cut:.3f} of the parameters removed: {report['units_removed']}"
    result = verify(src, out)
    assert result.exact_groups
    assert result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    model = load_ort_model(name, out)
    if spec.is_decoder:
        ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
        import torch

        tokens = model.generate(torch.tensor(ids), attention_mask=torch.ones(1, 4, dtype=torch.long),
                                max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert tokens.shape == (1, 7)
    else:
        feeds = dummy_inputs(name, out)
        import torch

        outputs = model(**{k: torch.tensor(v) for k, v in feeds.items()})
        first = outputs[0] if isinstance(outputs, tuple) else next(iter(outputs.values()))
        assert np.isfinite(first.detach().numpy()).all()


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gemma"])
def test_kv_group_pruning_keeps_generation_working(zoo_root, tmp_path, name):
    """With past key/values, pruning whole KV groups (a KV head with its query heads) resizes the
    cache; config.json must then describe it so that ORTModelForCausalLM.generate runs."""
    src = export_zoo_model(name, zoo_root, with_past=True)
    dense_cfg = json.loads((src / "config.json").read_text())
    out = ORTPruner.from_pretrained(src).prune(
        PruningConfig(sparsity=0.5, scope=("heads",), prune_kv_heads=True), tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_key_value_heads"] == dense_cfg["num_key_value_heads"] // 2
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert head_dim == cfg["head_dim"] or cfg["model_type"] == "gemma"  # gemma's runtime reads head_dim
    assert verify(src, out).max_rel_error <= RELATIVE_TOLERANCE
    import torch

    model = load_ort_model(name, out)
    tokens = model.generate(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                            max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, 7)


@pytest.mark.parametrize("past", [False, True])
def test_multi_query_attention_prunes_query_heads_and_keeps_the_shared_kv_head(zoo_root, tmp_path, past):
    """One KV head broadcast to every query head (Expand from 1, then a Reshape to ``kv * n_rep`` heads
    read at run time): query heads go one by one, the cache keeps its one KV head, generate() runs."""
    src = export_zoo_model("llama-mqa", zoo_root, with_past=past)
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4  # 2 of 4 query heads in each of the 2 layers
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_key_value_heads"] == 1
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE
    import torch

    model = load_ort_model("llama-mqa", out)
    tokens = model.generate(torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                            max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, 7)


@pytest.mark.parametrize("past", [False, True])
def test_fused_qkv_with_one_kv_head_prunes_query_heads_and_keeps_kv_whole(zoo_root, tmp_path, past):
    """Falcon-7B's query_key_value projection holds 4 query heads, then one key and one value head, sliced
    off with bounds counted from the end ([:-2], [-2], [-1]): the walk keeps the key/value channels whole
    and prunes the query heads on their own; the cache keeps its one KV head and generate() runs."""
    src = export_zoo_model("falcon", zoo_root, with_past=past)
    heads = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable and g.units == 4 for g in heads), [g.reason for g in heads]
    assert all(g.kept_whole.startswith("16 of 48 channels kept whole") for g in heads), heads[0].kept_whole
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4  # 2 of 4 query heads in each of the 2 layers
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    import torch

    tokens = load_ort_model("falcon", out).generate(
        torch.tensor([[1, 2, 3, 4]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
        max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, 7)


def test_beit_heads_prune_with_their_relative_position_bias(zoo_root, tmp_path):
    """BEiT's per-head relative position bias table is interpolated by a Resize (scale 1 on the head
    axis) before it is added to the scores: its head columns are sliced with the heads."""
    src = export_zoo_model("beit", zoo_root)
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4  # 2 of 4 heads in each of the 2 layers
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("fused", [False, True])
def test_bloom_heads_prune_per_layer_through_batch_merged_alibi_attention(zoo_root, tmp_path, fused):
    """BLOOM folds heads into the batch ([batch*heads, seq, head_dim]) and adds one ALiBi bias, built once,
    to every layer: the merged axis is tracked per period, and each layer gets its own copy of the bias, so
    the two layers lose their heads independently (a shared bias would couple them into one group)."""
    src = export_zoo_model("bloom", zoo_root, fused=fused)
    groups = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.kind == "heads"]
    assert len(groups) == 2 and all(g.prunable and g.units == 4 for g in groups), groups
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4  # 2 of 4 heads in each of the 2 layers
    for batch in (1, 3):  # the patched batch*heads products and batch = dim / heads reads, at two batches
        result = verify(src, out, dims={"batch": batch})
        assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    import torch

    tokens = load_ort_model("bloom", out).generate(
        torch.tensor([[1, 2, 3, 4], [1, 5, 6, 7]]), attention_mask=torch.ones(2, 4, dtype=torch.long),
        max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (2, 7)


@pytest.mark.parametrize("fused", [False, True])
def test_deberta_v2_heads_prune_with_their_relative_position_lookups(zoo_root, tmp_path, fused):
    """DeBERTa-v2 tiles its relative-position keys over batch*heads and gathers them with GatherElements on
    the merged axis; its heads prune exactly at several batch sizes and sequence lengths."""
    src = export_zoo_model("deberta-v2", zoo_root, fused=fused)
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("heads",)), tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4  # 2 of 4 heads in each of the 2 layers
    for batch, seq in ((1, 3), (3, 20)):
        result = verify(src, out, dims={"batch": batch, "sequence": seq})
        assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs


def _assert_cached_generation_matches_recomputation(name, folder, steps: int = 4) -> None:
    """Optimum's cached greedy generation on ``folder`` gives, at every step, the logits of running the
    pruned graph on the whole sequence so far from an empty cache (the first cache Optimum feeds is
    sized by config.json; the later ones are the graph's own)."""
    import onnxruntime as ort
    import torch

    from optimum_prune.runtime import complete_feeds

    model = load_ort_model(name, folder)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    result = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                            min_new_tokens=steps, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    sequence = ids.numpy()
    for step, scores in enumerate(result.logits):
        logits = session.run(["logits"], complete_feeds(session, {"input_ids": sequence}))[0][:, -1]
        np.testing.assert_allclose(scores.numpy(), logits, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        sequence = result.sequences[:, : ids.shape[1] + step + 1].numpy()


@pytest.mark.parametrize("name", ["gpt2", "opt", "bloom", "phi3"])
def test_cache_heads_config_json_cannot_describe_are_narrowed_and_generate(zoo_root, tmp_path, name):
    """gpt2, opt and bloom size their cache heads as hidden_size // num_attention_heads (no key/value
    count), and Optimum ignores phi3's num_key_value_heads: the pruned cache inputs narrow the dense-sized
    first cache, config.json keeps the source head counts, and generation matches recomputation."""
    src = export_zoo_model(name, zoo_root, with_past=True)
    dense_cfg = json.loads((src / "config.json").read_text())
    out = ORTPruner.from_pretrained(src).prune(
        PruningConfig(sparsity=0.5, scope=("heads",), prune_kv_heads=True), tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4  # 2 of 4 heads in each of the 2 layers
    assert any("narrow it to each layer's kept heads" in n for n in report["config_notes"])
    cfg = json.loads((out / "config.json").read_text())
    for key in ("num_attention_heads", "n_head", "num_key_value_heads"):
        assert cfg.get(key) == dense_cfg.get(key)
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    _assert_cached_generation_matches_recomputation(name, out)


def test_cache_heads_pruned_unevenly_across_layers_are_narrowed(zoo_root, tmp_path):
    """One KV group removed in the first layer only: no config.json can say so (it holds one count),
    so the cache inputs are narrowed instead and the counts stay."""
    src = export_zoo_model("llama", zoo_root, with_past=True)
    dense_cfg = json.loads((src / "config.json").read_text())
    pruner = ORTPruner.from_pretrained(src)
    plan = pruner.plan(PruningConfig(sparsity=0.5, scope=("heads",), prune_kv_heads=True))
    heads = [g for g in plan.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(len(g.kept) < g.units for g in heads)
    heads[1].kept = list(range(heads[1].units))
    out = pruner.prune(plan=plan, save_dir=tmp_path / "pruned")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_key_value_heads"] == dense_cfg["num_key_value_heads"]
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 1
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    _assert_cached_generation_matches_recomputation("llama", out)