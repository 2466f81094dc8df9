"""report.json's ``hints``: a pruning that probably did not do what was meant says so, with the fix, and
the plain mistakes (nothing pruned, an ``exclude`` pattern that matches nothing) also warn."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import pytest

from graphs import OP_GRAPHS
from optimum_prune import ORTPruner, PruningConfig
from optimum_prune.graph import load_model
from optimum_prune.metrics import count_parameters
from zoo import export_zoo_model


def _folder(tmp_path: Path, graph: str) -> Path:
    src = tmp_path / graph
    src.mkdir()
    onnx.save(OP_GRAPHS[graph](), src / "model.onnx")
    return src


def _hints(out: Path) -> list[str]:
    return json.loads((out / "report.json").read_text())["stages"][-1].get("hints", [])


def test_a_scope_the_model_does_not_have_names_the_kinds_it_has(tmp_path):
    src = _folder(tmp_path, "conv")
    with pytest.warns(UserWarning, match=r"nothing was pruned: no prunable group of kind ffn, heads; this "
                                         r"model's prunable groups: conv \(1\)"):
        out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5), tmp_path / "p")
    assert any("--scope" in h for h in _hints(out))


def test_a_sparsity_too_small_to_remove_a_unit_says_so(tmp_path):
    src = _folder(tmp_path, "conv")
    with pytest.warns(UserWarning, match=r"sparsity 0.05 removes no unit of the 1 group\(s\) in scope "
                                         r"\(smallest: 8 units"):
        ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.05, scope=("conv",)), tmp_path / "p")


def test_an_exclude_pattern_that_matches_nothing_warns(tmp_path):
    src = _folder(tmp_path, "conv")
    config = PruningConfig(sparsity=0.5, scope=("conv",), exclude=("layer.9", "W1"))
    with pytest.warns(UserWarning, match=r"exclude pattern\(s\) \['layer.9'\] match no group seed"):
        out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "p")
    assert json.loads((out / "report.json").read_text())["stages"][-1]["groups_pruned"] == 0  # W1 matched


def test_a_flops_cut_well_above_the_budget_names_the_rounding(tmp_path):
    src = _folder(tmp_path, "conv")
    config = PruningConfig(sparsity=0.1, scope=("conv",), target="flops", round_to={"conv": 4})
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    cut = 1 - report["flops_after"] / report["flops_before"]
    assert cut > 0.15  # 8 channels kept as a multiple of 4: half of them go
    assert any(f"the flops cut is {cut:.3f}, above the 0.1 asked" in h for h in _hints(out)), _hints(out)


def test_a_clean_pruning_has_no_hints(tmp_path):
    src = _folder(tmp_path, "conv")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        config = PruningConfig(sparsity=0.5, scope=("conv",))
        out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "p")
    assert _hints(out) == []


def test_heads_left_whole_for_the_cache_are_named(zoo_root, tmp_path):
    src = export_zoo_model("gpt2", zoo_root, with_past=True)
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5), tmp_path / "p")
    assert any("resize the key/value cache and were left whole" in h and "--prune-kv-heads" in h
               for h in _hints(out)), _hints(out)
    config = PruningConfig(sparsity=0.5, prune_kv_heads=True)
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "q")
    assert not any("key/value cache" in h for h in _hints(out))


def test_analyze_counts_the_parameters_of_the_file(zoo_root):
    """The analysis copies norms shared by several groups; its parameter count is still the file's."""
    src = export_zoo_model("bert", zoo_root)
    assert ORTPruner.from_pretrained(src).analyze().params == count_parameters(load_model(src / "model.onnx"))


def test_pruning_narrowed_cache_heads_again_is_refused_and_the_rest_still_prunes(zoo_root, tmp_path):
    """GPT-2's cache inputs are narrowed once its KV heads are pruned; a second pass over them used to
    collide with the first pass's narrowing nodes."""
    from optimum_prune.errors import ConfigError

    src = export_zoo_model("gpt2", zoo_root, with_past=True)
    kv = PruningConfig(sparsity=0.5, prune_kv_heads=True)
    once = ORTPruner.from_pretrained(src).prune(kv, tmp_path / "a")
    assert "optimum_prune.narrowed_dims" in {p.key for p in onnx.load(once / "model.onnx").metadata_props}
    with pytest.raises(ConfigError, match="narrowed by an earlier pruning"):
        ORTPruner.from_pretrained(once).prune(kv, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    ffn = PruningConfig(sparsity=0.3, scope=("ffn",))
    twice = ORTPruner.from_pretrained(once).prune(ffn, tmp_path / "c")
    report = json.loads((twice / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["ffn"] > 0


def test_a_kind_whose_groups_were_all_refused_names_a_reason(tmp_path):
    """A refused group is worth a hint only when no group of its kind was pruned (a re-pruned decoder whose
    every head group stops at the narrowed cache, say); the usual refusal next to pruned groups is not."""
    src = _folder(tmp_path, "conv")
    # W1's group prunes, W2's is refused (it would change the graph output): no hint for a partial refusal
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("conv",)), tmp_path / "p")
    assert not any("the analysis refused" in h for h in _hints(out))
    with pytest.warns(UserWarning, match="nothing was pruned"):
        out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("conv",),
                                                                 exclude=("W1",)), tmp_path / "q")
    refused = "no conv group was pruned: the analysis refused 1 (e.g. W2"
    assert any(h.startswith(refused) and "graph output" in h for h in _hints(out)), _hints(out)
