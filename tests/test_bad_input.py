"""Bad input gives a clear error (its type, what is wrong, how to fix it) and never harms the input.

Every test hashes the input folder before and after: nothing in it may change, whatever fails.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

import optimum_prune.pruner as pruner_module
from graphs import _MYSTERY, _build, _mat, _vec, make_inputs
from optimum_prune import (
    ConfigError,
    InvalidModelError,
    ORTPruner,
    PlanMismatchError,
    PruningConfig,
    PruningPlan,
    ValidationError,
    verify,
)
from optimum_prune.plan import PLAN_FILE


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (and the folders themselves), by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def _mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    text = """
mlp (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, W1)
  a = Relu(h)
  y = MatMul(a, W2)
}
"""
    return _build(text, {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 6)})


@pytest.fixture
def dense(tmp_path) -> Path:
    """A valid model folder (model.onnx + a config side file)."""
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(_mlp(), src / "model.onnx")
    (src / "config.json").write_text('{"model_type": "toy"}\n')
    return src


def _leftovers(parent: Path, name: str) -> list[str]:
    """Temporary folders a prune into ``parent / name`` could have left."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((f".{name}-", ".tmp-", ".plan-")))


# ------------------------------------------------------------------------------------------------
# corrupt model files
# ------------------------------------------------------------------------------------------------


def _corrupt(kind: str) -> bytes:
    data = _mlp().SerializeToString()
    if kind == "random":
        return np.random.default_rng(0).bytes(2048)
    if kind == "empty":
        return b""
    if kind == "truncated-half":
        return data[: len(data) // 2]
    if kind == "truncated-tail":  # parses as protobuf, but the opset import at the end is gone
        return data[: len(data) - 6]
    if kind == "text":
        return b"<html>404 Not Found</html>\n"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "empty", "truncated-half", "truncated-tail", "text"])
def test_corrupt_model_file(tmp_path, kind):
    src = tmp_path / "broken"
    src.mkdir()
    (src / "model.onnx").write_bytes(_corrupt(kind))
    (src / "config.json").write_text("{}\n")
    before = snapshot(src)
    pruner = ORTPruner.from_pretrained(src)
    for call in (pruner.analyze, lambda: pruner.prune(PruningConfig(sparsity=0.5), tmp_path / "out")):
        with pytest.raises(InvalidModelError) as info:
            call()
        message = str(info.value)
        assert str(src / "model.onnx") in message, message
        assert "optimum-cli export onnx" in message, message  # the fix
    assert snapshot(src) == before
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path, "out") == []


def test_every_truncation_of_a_model_is_refused(tmp_path):
    """A file cut anywhere either fails to parse or is caught as incomplete: never a silent model."""
    data = _mlp().SerializeToString()
    path = tmp_path / "model.onnx"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(InvalidModelError, match="Re-export"):
            ORTPruner.from_pretrained(path).analyze()


# ------------------------------------------------------------------------------------------------
# unknown op in a channel path
# ------------------------------------------------------------------------------------------------


def _with_custom_op(seed: int = 0) -> onnx.ModelProto:
    """x -> W1 -> Relu -> W2 + b2 -> custom.domain::Mystery -> W3 -> y: the W2 group meets the custom op."""
    rng = np.random.default_rng(seed)
    text = """
custom (float[B, S, 8] x) => (float[B, S, 6] y) {
  h = MatMul(x, W1)
  a = Relu(h)
  g0 = MatMul(a, W2)
  g = Add(g0, b2)
  m = custom.domain.Mystery(g)
  y = MatMul(m, W3)
}
"""
    inits = {"W1": _mat(rng, 8, 12), "W2": _mat(rng, 12, 10), "b2": _vec(rng, 10), "W3": _mat(rng, 10, 6)}
    model = _build(text, inits, domains={"custom.domain": 1}, functions_text=_MYSTERY)
    for i, node in enumerate(model.graph.node):
        node.name = f"{node.op_type.lower()}_node_{i}"
    return model


def test_unknown_op_refuses_its_group_and_prunes_the_rest_exactly(tmp_path):
    model = _with_custom_op()
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    before = snapshot(src)
    analysis = ORTPruner.from_pretrained(src).analyze()
    by_seed = {g.seed: g for g in analysis.groups}
    refused = by_seed["W2"]
    assert not refused.prunable
    assert "custom.domain::Mystery" in refused.reason and "mystery_node_4" in refused.reason, refused.reason
    assert "RuleRegistry.register" in refused.reason  # how to fix it
    assert any(u["seed"] == "W2" and "Mystery" in u["reason"] for u in analysis.to_dict()["unprunable"])
    assert "mystery_node_4" in str(analysis)
    assert by_seed["W1"].prunable

    config = PruningConfig(sparsity=0.5, scope=("ffn",))
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    plan = PruningPlan.load(out / PLAN_FILE)
    assert {g.seed.split(":")[0] for g in plan.groups if g.removed} == {"W1"}
    result = verify(src, out, inputs=make_inputs(model))
    assert result.exact, result.outputs
    pruned = {i.name: tuple(i.dims) for i in onnx.load(out / "model.onnx").graph.initializer}
    assert pruned["W1"] == (8, 6) and pruned["W2"] == (6, 10) and pruned["b2"] == (10,)
    assert snapshot(src) == before


def test_plan_pruning_a_refused_group_is_refused(tmp_path):
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(_with_custom_op(), src / "model.onnx")
    pruner = ORTPruner.from_pretrained(src)
    plan = pruner.plan(PruningConfig(sparsity=0.5, scope=("ffn",)))
    for g in plan.groups:
        if g.seed == "W2:1":
            g.kept = g.kept[: g.units // 2]
    with pytest.raises(PlanMismatchError, match="cannot be pruned: no association rule for op custom.domain"):
        pruner.prune(plan=plan, save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, math.nan, math.inf, -math.inf])
def test_sparsity_outside_range(sparsity):
    with pytest.raises(ConfigError) as info:
        PruningConfig(sparsity=sparsity)
    message = str(info.value)
    assert "sparsity" in message and "[0, 1)" in message and str(sparsity) in message, message
    assert "sparsity=0.3" in message  # an example of a valid value


@pytest.mark.parametrize("sparsity", ["0.3", None, True])
def test_sparsity_not_a_number(sparsity):
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\)"):
        PruningConfig(sparsity=sparsity)


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"scope": ("ffn", "neurons")}, "unknown kinds ['neurons']"),
    ({"scope": ()}, "allowed"),
    ({"importance": "taylor"}, "importance must be one of"),
    ({"min_units": 0}, "min_units must be an integer >= 1"),
])
def test_other_config_values(kwargs, text):
    with pytest.raises(ConfigError) as info:
        PruningConfig(**kwargs)
    assert text in str(info.value)


def test_sparsity_boundaries_are_accepted():
    assert PruningConfig(sparsity=0).sparsity == 0
    assert PruningConfig(sparsity=0.999).sparsity == 0.999


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(InvalidModelError) as info:
        ORTPruner.from_pretrained(missing)
    message = str(info.value)
    assert str(missing) in message and "not found" in message
    assert "optimum-cli export onnx" in message
    assert not missing.exists()


def test_folder_without_model_onnx_lists_onnx_files(tmp_path):
    src = tmp_path / "variants"
    src.mkdir()
    for name in ("model_optimized.onnx", "model_quantized.onnx"):
        onnx.save(_mlp(), src / name)
    (src / "config.json").write_text("{}\n")
    before = snapshot(src)
    with pytest.raises(InvalidModelError) as info:
        ORTPruner.from_pretrained(src)
    message = str(info.value)
    assert str(src / "model.onnx") in message
    assert "model_optimized.onnx" in message and "model_quantized.onnx" in message
    assert "file_name=" in message  # the fix
    # and the fix works
    pruner = ORTPruner.from_pretrained(src, file_name="model_quantized.onnx")
    assert pruner.analyze().groups
    assert snapshot(src) == before


def test_folder_without_any_onnx_file(tmp_path):
    src = tmp_path / "hf-checkpoint"
    src.mkdir()
    (src / "config.json").write_text("{}\n")
    with pytest.raises(InvalidModelError, match=r"ONNX files in .*hf-checkpoint: none"):
        ORTPruner.from_pretrained(src)


def test_save_dir_equal_to_input_is_refused(dense):
    before = snapshot(dense)
    for opened in (dense, dense / "model.onnx"):
        pruner = ORTPruner.from_pretrained(opened)
        for save_dir in (dense, dense / ".", dense.parent / "link"):
            if save_dir.name == "link" and not save_dir.exists():
                save_dir.symlink_to(dense, target_is_directory=True)
            with pytest.raises(ConfigError) as info:
                pruner.prune(PruningConfig(sparsity=0.5), save_dir)
            message = str(info.value)
            assert "is the input folder" in message and "choose a new folder" in message, message
    assert snapshot(dense) == before


def test_save_dir_containing_input_is_refused(tmp_path):
    """An earlier output folder (it holds a plan, so prune would replace it) with the model inside it."""
    outer = tmp_path / "outer"
    src = outer / "dense"
    src.mkdir(parents=True)
    onnx.save(_mlp(), src / "model.onnx")
    (outer / PLAN_FILE).write_text("{}")
    before = snapshot(outer)
    with pytest.raises(ConfigError, match="contains the input folder"):
        ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5), outer)
    assert snapshot(outer) == before


def test_save_dir_not_empty_is_refused(dense, tmp_path):
    other = tmp_path / "my-documents"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        ORTPruner.from_pretrained(dense).prune(PruningConfig(sparsity=0.5), other)
    assert (other / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------
# failures leave nothing behind
# ------------------------------------------------------------------------------------------------


def _fail_validation(path, **kwargs):
    raise ValidationError(f"pruned model {path} does not run in ONNX Runtime: injected failure")


def test_failed_prune_leaves_no_output(dense, tmp_path, monkeypatch):
    before = snapshot(dense)
    monkeypatch.setattr(pruner_module, "validate_model_file", _fail_validation)
    save_dir = tmp_path / "new" / "nested" / "pruned"
    with pytest.raises(ValidationError, match="injected failure"):
        ORTPruner.from_pretrained(dense).prune(PruningConfig(sparsity=0.5), save_dir)
    assert not (tmp_path / "new").exists()  # not even the parent folders the run created
    assert _leftovers(tmp_path, "pruned") == []
    assert snapshot(dense) == before


def test_failed_prune_keeps_earlier_output(dense, tmp_path, monkeypatch):
    save_dir = tmp_path / "pruned"
    ORTPruner.from_pretrained(dense).prune(PruningConfig(sparsity=0.25), save_dir)
    earlier = snapshot(save_dir)
    monkeypatch.setattr(pruner_module, "validate_model_file", _fail_validation)
    with pytest.raises(ValidationError):
        ORTPruner.from_pretrained(dense).prune(PruningConfig(sparsity=0.5), save_dir)
    assert snapshot(save_dir) == earlier
    assert _leftovers(tmp_path, "pruned") == []


def test_failed_plan_leaves_no_output(dense, tmp_path):
    before = snapshot(dense)
    pruner = ORTPruner.from_pretrained(dense)
    plan = pruner.plan(PruningConfig(sparsity=0.5))
    plan.groups[0].kept = []  # removes every unit
    with pytest.raises(PlanMismatchError, match="removes every unit"):
        pruner.prune(plan=plan, save_dir=tmp_path / "a" / "pruned")
    assert not (tmp_path / "a").exists()
    assert snapshot(dense) == before


def test_a_quantized_model_is_refused_with_the_order_of_stages(tmp_path):
    """A QDQ model (int8 weights through DequantizeLinear): no group could be pruned, and an unpruned copy
    written without a word would look like success. The error names the file, the node, the op and the
    fix (prune the float model, then quantize); the folder is untouched."""
    rng = np.random.default_rng(0)
    text = """
qdq (float[B, S, 8] x) => (float[B, S, 6] y) {
  w1 = DequantizeLinear(W1q, s1)
  h = MatMul(x, w1)
  a = Relu(h)
  y = MatMul(a, W2)
}
"""
    model = _build(text, {"W1q": rng.integers(-127, 127, (8, 12)).astype(np.int8),
                          "s1": np.array(0.01, np.float32), "W2": _mat(rng, 12, 6)})
    src = tmp_path / "quantized"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    before = snapshot(src)
    with pytest.raises(InvalidModelError, match=r"quantized \(node '.*DequantizeLinear.*Prune the float"):
        ORTPruner.from_pretrained(src).analyze()
    with pytest.raises(InvalidModelError, match="ai.onnx::DequantizeLinear"):
        ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5), tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert snapshot(src) == before


def test_save_dir_inside_input_is_refused(dense):
    """Writing into a subfolder of the input would change the input folder."""
    before = snapshot(dense)
    with pytest.raises(ConfigError, match="is inside the input folder"):
        ORTPruner.from_pretrained(dense).prune(PruningConfig(sparsity=0.5), dense / "pruned")
    assert snapshot(dense) == before


def test_a_transformers_checkpoint_is_told_to_export_first(tmp_path):
    src = tmp_path / "hf-weights"
    src.mkdir()
    (src / "config.json").write_text("{}\n")
    (src / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidModelError, match=r"transformers checkpoint, not an ONNX export.*optimum-cli "
                                                 r"export onnx --model"):
        ORTPruner.from_pretrained(src)


def test_an_empty_scope_says_so():
    with pytest.raises(ConfigError, match="scope is empty"):
        PruningConfig(scope=())
