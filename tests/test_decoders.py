"""Decoders with a KV cache: removing dead units leaves greedy generation unchanged, token for token."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from optimum_prune import ORTPruner, PruningConfig
from optimum_prune.errors import ValidationError
from optimum_prune.passes.cache_inputs import narrowed_dims
from zoo import export_zoo_model, load_ort_model


def _kill_units(src, dest, fraction: float) -> dict[str, int]:
    """Copy ``src`` to ``dest`` with the first ``fraction`` of the units of every FFN and head group
    dead: their root weights (producing slices) and leaf slices (consumer rows) set to zero."""
    shutil.copytree(src, dest)
    groups = ORTPruner.from_pretrained(src).analyze().groups
    model = onnx.load(dest / "model.onnx")
    inits = {t.name: t for t in model.graph.initializer}
    killed = {"ffn": 0, "heads": 0}
    for g in groups:
        if not g.prunable or g.kind not in killed:
            continue
        dead = np.arange(max(1, int(g.units * fraction)))
        killed[g.kind] += len(dead)
        for s in g.root_slices() + g.leaf_slices():
            if s.name not in inits:
                continue
            arr = onnx.numpy_helper.to_array(inits[s.name]).copy()
            positions = np.flatnonzero(np.isin(s.owner, dead))
            index = [slice(None)] * arr.ndim
            index[s.axis] = positions
            arr[tuple(index)] = 0
            inits[s.name].CopyFrom(onnx.numpy_helper.from_array(arr, s.name))
    onnx.save_model(model, dest / "model.onnx")
    return killed


def _greedy(folder, name: str) -> np.ndarray:
    import torch

    model = load_ort_model(name, folder)
    ids = torch.tensor([[5, 9, 2, 7, 11, 3]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False)
    return out.numpy()


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gemma"])
def test_removing_dead_units_keeps_greedy_tokens(zoo_root, tmp_path, name):
    src = export_zoo_model(name, zoo_root, with_past=True)
    dense = tmp_path / "dense"
    killed = _kill_units(src, dense, fraction=0.5)
    assert killed["ffn"] > 0
    config = PruningConfig(sparsity=0.5, scope=("ffn", "heads"), prune_kv_heads=True)
    out = ORTPruner.from_pretrained(dense).prune(config, tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["ffn"] == killed["ffn"]  # exactly the dead units (l2 score 0)
    assert report["units_removed"]["heads"] == killed["heads"]
    assert report["params_after"] < report["params_before"]
    np.testing.assert_array_equal(_greedy(out, name), _greedy(dense, name))


def test_config_records_pruned_mlp_and_kv_widths(zoo_root, tmp_path):
    """The LM head's vocabulary group is refused (it would resize the logits) but is no MLP layer:
    config.json still records the pruned intermediate size and KV-head count."""
    src = export_zoo_model("llama", zoo_root, with_past=True)
    config = PruningConfig(sparsity=0.5, scope=("ffn", "heads"), prune_kv_heads=True)
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    before = json.loads((src / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    removed = json.loads((out / "report.json").read_text())["stages"][-1]["units_removed"]
    layers = before["num_hidden_layers"]
    assert removed["ffn"] > 0 and removed["heads"] > 0
    assert after["intermediate_size"] == before["intermediate_size"] - removed["ffn"] // layers
    assert after["num_key_value_heads"] == before["num_key_value_heads"] - removed["heads"] // layers
    assert after["num_attention_heads"] == before["num_attention_heads"]  # the cache's head_dim rule


def test_the_cache_inputs_are_narrowed_when_the_recorded_count_does_not_generate(zoo_root, tmp_path,
                                                                              monkeypatch):
    """The pruner first records the pruned KV-head count in config.json; when Optimum cannot generate
    with it, it restores the source counts, narrows the cache inputs and tries again; when that fails
    too, nothing is written."""
    tried = []

    def cannot_generate(folder, file_name="model.onnx"):
        session = ort.InferenceSession(str(folder / file_name), providers=["CPUExecutionProvider"])
        tried.append((json.loads((folder / "config.json").read_text())["num_key_value_heads"],
                      narrowed_dims(session)))
        raise ValidationError("Optimum's ORTModelForCausalLM cannot generate with it (a test)")

    monkeypatch.setattr("optimum_prune.pruner.check_generates", cannot_generate)
    src = export_zoo_model("llama", zoo_root, with_past=True)
    config = PruningConfig(sparsity=0.5, scope=("heads",), prune_kv_heads=True)
    with pytest.raises(ValidationError, match="cannot generate"):
        ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    assert not (tmp_path / "pruned").exists()
    assert [count for count, _ in tried] == [1, 2]  # the pruned count, then the source count
    assert tried[0][1] == {} and sorted(tried[1][1].values()) == [1] * 4  # 2 layers x key, value


def test_global_allocation_keeps_kv_groups_uniform_and_generates(zoo_root, tmp_path):
    """allocation="global" ranks MLP neurons across layers, but the KV groups (one cache width in
    config.json) take the uniform share in every layer, so the folder still generates. At 25% of two KV
    groups per layer the uniform share is none, where a global ranking would cut one layer only."""
    src = export_zoo_model("llama", zoo_root, with_past=True)
    config = PruningConfig(sparsity=0.25, scope=("ffn", "heads"), prune_kv_heads=True, allocation="global")
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    plan = json.loads((out / "pruning_plan.json").read_text())
    heads = [g["units"] - len(g["kept"]) for g in plan["groups"] if g["kind"] == "heads"]
    ffn = [(g["units"], len(g["kept"])) for g in plan["groups"] if g["kind"] == "ffn" and "mlp" in g["seed"]]
    assert heads == [0] * len(heads)
    assert abs(sum(u - k for u, k in ffn) - 0.25 * sum(u for u, _ in ffn)) <= len(ffn)
    before = json.loads((src / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    assert after["num_key_value_heads"] == before["num_key_value_heads"]
    tokens = _greedy(out, "llama")
    assert tokens.shape == (1, 14)
