"""A saved plan is a complete record: re-applying it reproduces the pruned model byte for byte.

Covers hand-written graphs and two exported zoo models (an encoder and a decoder), the JSON round trip
of :class:`PruningPlan`, and the refusal (``PlanMismatchError``, naming what differs) of a plan that
was made for another model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from graphs import OP_GRAPHS
from optimum_prune import ORTPruner, PlanMismatchError, PruningConfig, PruningPlan
from optimum_prune.plan import PLAN_FILE
from zoo import export_zoo_model

REPO = Path(__file__).resolve().parents[1]

# (graph, config): one per kind, and a graph where several kinds share tensors
GRAPH_CASES = {
    "attention_block": PruningConfig(sparsity=0.4, scope=("ffn", "heads")),
    "conv": PruningConfig(sparsity=0.5, scope=("conv",), importance="l1"),
    "layernorm": PruningConfig(sparsity=0.5, scope=("ffn", "hidden")),
    "gqa_block": PruningConfig(sparsity=0.5, scope=("heads",)),
}
# llama has 2 KV groups of 2 query heads: 50% is the smallest cut that removes a head group
ZOO_CASES = {"bert": 0.3, "llama": 0.5}


def _write_graph(root: Path, key: str) -> Path:
    src = root / key
    src.mkdir()
    onnx.save(OP_GRAPHS[key](), src / "model.onnx")
    return src


def _model_files(folder: Path) -> dict[str, bytes]:
    """model.onnx and any external data file next to it."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.name.endswith((".onnx", ".onnx_data", ".onnx.data", "_data"))}


def assert_same_output(first: Path, second: Path) -> None:
    """Both folders hold byte-identical model files, plans and side files; reports differ only in time."""
    models = _model_files(first)
    assert "model.onnx" in models
    assert models == _model_files(second), "re-applying the plan wrote a different model"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        if name == "report.json":
            continue
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    reports = []
    for folder in (first, second):
        stage = json.loads((folder / "report.json").read_text())["stages"][-1]
        stage.pop("seconds")
        reports.append(stage)
    assert reports[0] == reports[1]


def _replay(src: Path, out: Path, dest: Path) -> Path:
    plan = PruningPlan.load(out / PLAN_FILE)
    return ORTPruner.from_pretrained(src).prune(plan=plan, save_dir=dest)


@pytest.mark.parametrize("key", sorted(GRAPH_CASES))
def test_replayed_plan_is_byte_identical_graph(tmp_path, key):
    src = _write_graph(tmp_path, key)
    out = ORTPruner.from_pretrained(src).prune(GRAPH_CASES[key], tmp_path / "first")
    plan = PruningPlan.load(out / PLAN_FILE)
    assert any(g.removed for g in plan.groups), "nothing was pruned: the replay would prove nothing"
    again = _replay(src, out, tmp_path / "second")
    assert_same_output(out, again)


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_replayed_plan_is_byte_identical_zoo(zoo_root, tmp_path, name):
    src = export_zoo_model(name, zoo_root)
    config = PruningConfig(sparsity=ZOO_CASES[name], scope=("ffn", "heads"))
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "first")
    plan = PruningPlan.load(out / PLAN_FILE)
    assert {g.kind for g in plan.groups if g.removed} == {"ffn", "heads"}
    again = _replay(src, out, tmp_path / "second")
    assert_same_output(out, again)


def test_replayed_plan_is_byte_identical_external_data(tmp_path):
    """model.onnx and its external data file are both reproduced byte for byte."""
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save_model(OP_GRAPHS["attention_block"](), src / "model.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=0)
    out = ORTPruner.from_pretrained(src).prune(GRAPH_CASES["attention_block"], tmp_path / "first")
    assert "model.onnx_data" in _model_files(out)
    again = _replay(src, out, tmp_path / "second")
    assert_same_output(out, again)


def test_replay_in_another_process_is_byte_identical(tmp_path):
    """No dependence on str hashing (PYTHONHASHSEED) or other per-process state."""
    src = _write_graph(tmp_path, "attention_block")
    out = ORTPruner.from_pretrained(src).prune(GRAPH_CASES["attention_block"], tmp_path / "first")
    code = ("import sys; from optimum_prune import ORTPruner, PruningPlan; "
            "ORTPruner.from_pretrained(sys.argv[1]).prune(plan=PruningPlan.load(sys.argv[2]), "
            "save_dir=sys.argv[3])")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(src), str(out / PLAN_FILE), str(tmp_path / "second")],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    assert_same_output(out, tmp_path / "second")


def test_plan_json_round_trip(tmp_path):
    src = _write_graph(tmp_path, "attention_block")
    config = PruningConfig(sparsity=0.4, scope=("ffn", "heads"), exclude=("nothing",), min_units=2)
    plan = ORTPruner.from_pretrained(src).plan(config)
    assert any(g.removed for g in plan.groups)
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded == plan
    assert PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert loaded.config == config.to_dict()
    # the plan written by prune() is the plan plan() chooses, and saving it again gives the same bytes
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    assert PruningPlan.load(out / PLAN_FILE) == plan
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "plan.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".plan-")]  # no temp file left


@pytest.mark.parametrize(("made_for", "applied_to", "expected"), [
    # group seeds differ
    ("attention_block", "split_qkv_attention", ["plan group 0", "Wq:1", "Wqkv:1", "another model"]),
    # same seeds and unit counts, but the group touches other tensors (bias b1 only in the plan)
    ("relu", "matmul", ["plan group 0", "b1", "only in the plan", "another model"]),
    # different number of groups
    ("relu", "layernorm", ["the plan has 2 groups, the model", "first difference at group", "another model"]),
])
def test_plan_for_another_graph_is_refused(tmp_path, made_for, applied_to, expected):
    out = ORTPruner.from_pretrained(_write_graph(tmp_path, made_for)).prune(
        PruningConfig(sparsity=0.5, scope=("ffn", "heads")), tmp_path / "pruned")
    other = _write_graph(tmp_path, applied_to)
    with pytest.raises(PlanMismatchError) as info:
        _replay(other, out, tmp_path / "replayed")
    for text in expected:
        assert text in str(info.value), str(info.value)
    assert not (tmp_path / "replayed").exists()


def test_plan_for_another_zoo_model_is_refused(zoo_root, tmp_path):
    bert, llama = export_zoo_model("bert", zoo_root), export_zoo_model("llama", zoo_root)
    out = ORTPruner.from_pretrained(bert).prune(PruningConfig(sparsity=0.3), tmp_path / "bert-pruned")
    with pytest.raises(PlanMismatchError, match="another model") as info:
        _replay(llama, out, tmp_path / "llama-pruned")
    message = str(info.value)
    assert "groups" in message and "first difference" in message, message
    assert not (tmp_path / "llama-pruned").exists()


def test_tampered_plan_is_refused(tmp_path):
    src = _write_graph(tmp_path, "relu")
    pruner = ORTPruner.from_pretrained(src)
    plan = pruner.plan(PruningConfig(sparsity=0.5, scope=("ffn",)))
    units = plan.groups[0].units
    bad_index = replace(plan, groups=[replace(plan.groups[0], kept=[0, 1, units + 3])] + plan.groups[1:])
    with pytest.raises(PlanMismatchError, match=rf"keeps invalid units \[{units + 3}\]"):
        pruner.prune(plan=bad_index, save_dir=tmp_path / "a")
    duplicate = replace(plan, groups=[replace(plan.groups[0], kept=[0, 0, 1])] + plan.groups[1:])
    with pytest.raises(PlanMismatchError, match="distinct unit indices"):
        pruner.prune(plan=duplicate, save_dir=tmp_path / "b")
    wrong_kind = replace(plan, groups=[replace(plan.groups[0], kind="heads")] + plan.groups[1:])
    with pytest.raises(PlanMismatchError, match="does not match model group 0"):
        pruner.prune(plan=wrong_kind, save_dir=tmp_path / "c")
    data = plan.to_dict()
    data["version"] = 99
    with pytest.raises(PlanMismatchError, match="unsupported plan version 99"):
        PruningPlan.from_dict(data)
    (tmp_path / "broken.json").write_text('{"version": 1, "groups": [')
    with pytest.raises(PlanMismatchError, match="broken.json is not a pruning plan"):
        PruningPlan.load(tmp_path / "broken.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.json", "relu"]
