"""Importance criteria and calibration: rankings on hand-made cases with a known answer, exact pruning
of a tiny exported BERT with every criterion, and activation statistics against numpy."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimum_prune import ConfigError, ORTPruner, PruningConfig, verify
from optimum_prune.calibration import CalibrationConfig, CalibrationData, StatRequest, capture_activations
from optimum_prune.configuration import DEFAULT_IO_PATTERNS
from optimum_prune.graph import load_model
from optimum_prune.importance import (
    ActivationImportance,
    FidelityImportance,
    FluctuationImportance,
    MagnitudeImportance,
    OBSImportance,
    TreeImportance,
    get_importance,
)
from optimum_prune.importance import fidelity as fidelity_module
from optimum_prune.verify import RELATIVE_TOLERANCE
from zoo import export_zoo_model

IN, HIDDEN, OUT = 8, 5, 3


def _mlp(tmp_path, w1, b1, w2, w3=None):
    """x[B,S,8] -> MatMul(W1[8,5]) -> Add(b1) -> Relu = h -> MatMul(W2[5,3]) = z [-> MatMul(W3[3,2])] -> y.

    The FFN group has 5 units (the columns of W1, the rows of W2). Returns the model file.
    """
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["h"])]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W1", w1), ("b1", b1), ("W2", w2))]
    if w3 is None:
        nodes.append(helper.make_node("MatMul", ["h", "W2"], ["y"]))
        out_dim = w2.shape[1]
    else:
        nodes += [helper.make_node("MatMul", ["h", "W2"], ["z"]),
                  helper.make_node("MatMul", ["z", "W3"], ["y"])]
        inits.append(numpy_helper.from_array(np.asarray(w3, np.float32), "W3"))
        out_dim = w3.shape[1]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", IN])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", out_dim])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def _ffn_group(path):
    """The prepared model and the FFN group seeded at W1."""
    prep = ORTPruner.from_pretrained(path)._prepare(DEFAULT_IO_PATTERNS)
    group = next(g for g in prep.groups if g.prunable and ("W1", 1) in g.roots)
    assert group.units == HIDDEN
    return prep, group


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN), rng.standard_normal(HIDDEN) * 0.1,
            rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN))


def _feeds(seed=1, positive=False, batches=2):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        x = rng.uniform(0.5, 1.5, (3, 4, IN)) if positive else rng.standard_normal((3, 4, IN))
        out.append({"x": x.astype(np.float32)})
    return out


def _criteria(calibration):
    """Every criterion, the data-driven ones with and without ``calibration`` where optional."""
    return {
        "l1": MagnitudeImportance(p=1),
        "l2": MagnitudeImportance(p=2),
        "tree": TreeImportance(),
        "activation": ActivationImportance(calibration=calibration),
        "fluctuation": FluctuationImportance(calibration=calibration),
        "obs": OBSImportance(),
        "obs+calibration": OBSImportance(calibration=calibration),
        "fidelity": FidelityImportance(),
        "fidelity+calibration": FidelityImportance(calibration=calibration),
    }


# ----------------------------------------------------------------------------------------------
# rankings with a known answer


def test_every_criterion_removes_a_zero_unit_first(tmp_path):
    w1, b1, w2 = _weights()
    w1[:, 2], b1[2], w2[2] = 0, 0, 0
    prep, group = _ffn_group(_mlp(tmp_path, w1, b1, w2))
    calibration = CalibrationData.from_feeds(_feeds())
    for name, criterion in _criteria(calibration).items():
        scores = criterion(group, prep.model)
        assert scores.shape == (HIDDEN,), name
        assert np.argmin(scores) == 2 and np.sum(scores == scores.min()) == 1, (name, scores)


def test_activation_removes_a_unit_whose_input_is_always_zero(tmp_path):
    w1, b1, w2 = _weights()
    w1, b1 = np.abs(w1), np.abs(b1)  # positive inputs: every unit is active ...
    w1[:, 1], b1[1] = -1.0, 0.0  # ... except unit 1: relu(x @ W1[:, 1]) == 0 for every token
    w2[1] *= 10.0  # ... behind large weights, on both sides
    prep, group = _ffn_group(_mlp(tmp_path, w1, b1, w2))
    calibration = CalibrationData.from_feeds(_feeds(positive=True))
    activation = ActivationImportance(calibration=calibration)(group, prep.model)
    assert np.argmin(activation) == 1 and activation[1] == 0.0
    assert np.argmin(MagnitudeImportance()(group, prep.model)) != 1
    assert np.argmax(TreeImportance()(group, prep.model)) == 1


def test_fluctuation_removes_a_large_constant_unit_that_a_bias_absorbs(tmp_path):
    """Unit 3 outputs the same value for every token (relu(0 * x + 2) = 2) behind large weights: the
    largest unit to ``activation``, worthless to ``fluctuation`` (its variance is 0), and removing it
    with bias compensation (FLAP) leaves the outputs exactly unchanged."""
    import onnxruntime as ort

    from optimum_prune import RecoveryConfig

    w1, b1, w2 = _weights()
    w1[:, 3], b1[3] = 0.0, 2.0
    w2[3] *= 10.0
    (tmp_path / "dense").mkdir()
    path = _mlp(tmp_path / "dense", w1, b1, w2)
    prep, group = _ffn_group(path)
    calibration = CalibrationData.from_feeds(_feeds())
    fluctuation = FluctuationImportance(calibration=calibration)(group, prep.model)
    activation = ActivationImportance(calibration=calibration)(group, prep.model)
    assert np.argmin(fluctuation) == 3 and fluctuation[3] == 0.0 and fluctuation.min() < fluctuation.max()
    assert np.argmax(activation) == 3

    config = PruningConfig(sparsity=0.2, scope=("ffn",), importance="fluctuation",
                           recover=RecoveryConfig(method="bias"))
    out = ORTPruner.from_pretrained(path).prune(config, tmp_path / "pruned", calibration=calibration)
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert [g["kept"] for g in plan["groups"] if g["units"] == HIDDEN] == [[0, 1, 2, 4]]
    x = np.random.default_rng(7).standard_normal((2, 6, IN)).astype(np.float32)  # unseen inputs
    dense = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    pruned = ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(pruned, dense, rtol=1e-4, atol=1e-5)


def test_fidelity_removes_a_large_unit_with_no_effect_downstream(tmp_path):
    w1, b1, w2 = _weights()
    w1[:, 4] *= 10.0
    w2[4] = [5.0, 0.0, 0.0]  # unit 4 only feeds z[..., 0] ...
    w3 = np.random.default_rng(3).standard_normal((OUT, 2))
    w3[0] = 0.0  # ... which the next layer ignores
    prep, group = _ffn_group(_mlp(tmp_path, w1, b1, w2, w3))
    fidelity = FidelityImportance()(group, prep.model)
    assert np.argmin(fidelity) == 4, fidelity
    assert np.argmax(MagnitudeImportance()(group, prep.model)) == 4
    calibration = CalibrationData.from_feeds(_feeds())
    assert np.argmax(ActivationImportance(calibration=calibration)(group, prep.model)) == 4


def test_fidelity_on_a_model_with_two_batch_axes(tmp_path):
    """CLIP-style similarity: image rows [B, 8] through the FFN, text rows [T, 3], logits [B, T]. Stacking
    trials along both batch axes pairs every trial with every other; fidelity must still score each
    unit (one trial per run) and find the zero unit. It raised a reshape error before."""
    model = onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[batch_size, {IN}] x, float[text_batch_size, {OUT}] t)
            => (float[batch_size, text_batch_size] y) {{
            m = MatMul(x, W1)
            a = Add(m, b1)
            h = Relu(a)
            z = MatMul(h, W2)
            tt = Transpose <perm = [1, 0]> (t)
            y = MatMul(z, tt)
        }}
    """)
    w1, b1, w2 = _weights()
    b1[:] = 3.0  # every unit active on any input ...
    w1[:, 2], b1[2], w2[2] = 0, 0, 0  # ... but unit 2, which is zero
    for name, arr in (("W1", w1), ("b1", b1), ("W2", w2)):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
    onnx.save(model, tmp_path / "model.onnx")
    prep, group = _ffn_group(tmp_path / "model.onnx")
    scores = FidelityImportance()(group, prep.model)
    assert np.argmin(scores) == 2 and sorted(scores.tolist()) == list(range(HIDDEN)), scores


@pytest.mark.parametrize("with_data", [False, True], ids=["data-free", "calibration"])
def test_obs_prefers_the_unit_the_others_can_compensate(tmp_path, with_data):
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((IN, IN)))
    w1 = q[:, :HIDDEN].copy()
    w1[:, 1] = w1[:, 0]  # units 0 and 1 see the same input: either can stand in for the other
    b1 = np.zeros(HIDDEN)
    rng = np.random.default_rng(1)
    w2 = rng.standard_normal((HIDDEN, OUT))
    w2 /= np.linalg.norm(w2, axis=1, keepdims=True)
    w2 *= np.array([1.0, 1.1, 1.2, 1.3, 0.85])[:, None]  # unit 4 has the smallest consumer row
    prep, group = _ffn_group(_mlp(tmp_path, w1, b1, w2))
    calibration = CalibrationData.from_feeds(_feeds(batches=4)) if with_data else None
    scores = OBSImportance(calibration=calibration)(group, prep.model)
    assert np.argmin(scores) == 0, scores
    leaf_rows = np.linalg.norm(w2, axis=1)
    assert np.argmin(leaf_rows) == 4  # a magnitude criterion on the consumer would remove unit 4
    if with_data:
        assert scores[0] < 0.05 * np.sort(scores)[2]  # fully compensable: near-zero saliency


def test_tree_judges_a_unit_on_its_consumers_too(tmp_path):
    w1, b1, w2 = _weights()
    w1[:, 3] *= 0.05  # smallest producer column ...
    w2[3] *= 40.0  # ... but by far the largest consumer row
    prep, group = _ffn_group(_mlp(tmp_path, w1, b1, w2))
    assert np.argmin(MagnitudeImportance()(group, prep.model)) == 3
    tree = TreeImportance()(group, prep.model)
    assert np.argmin(tree) != 3
    assert np.argmin(TreeImportance(leaves=False)(group, prep.model)) == 3


def test_fidelity_batched_trials_match_one_by_one(tmp_path, monkeypatch):
    w1, b1, w2 = _weights()
    prep, group = _ffn_group(_mlp(tmp_path, w1, b1, w2))
    batched = FidelityImportance(rounds=3, max_rows_per_run=5)(group, prep.model)
    monkeypatch.setattr(fidelity_module, "_batch_symbol", lambda model: None)  # no batch axis: one by one
    single = FidelityImportance(rounds=3)(group, prep.model)
    np.testing.assert_array_equal(batched, single)


# ----------------------------------------------------------------------------------------------
# configuration and errors


def test_data_driven_criteria_say_how_to_get_data():
    with pytest.raises(ConfigError, match="calibration=CalibrationData"):
        get_importance("activation")
    with pytest.raises(ConfigError, match="allowed"):
        get_importance("taylor")
    with pytest.raises(ConfigError, match="importance must be one of"):
        PruningConfig(importance="wanda")
    for name in ("l1", "l2", "tree", "obs", "fidelity"):
        assert get_importance(name) is not None
        assert PruningConfig(importance=name).importance == name


def test_calibration_with_a_data_free_criterion_warns():
    data = CalibrationData.from_feeds(_feeds())
    with pytest.warns(UserWarning, match="data-free"):
        get_importance("l2", calibration=data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_importance("obs", calibration=data)


@pytest.mark.parametrize("bad", [{"num_samples": 0}, {"batch_size": -1}, {"max_length": 1.5},
                                 {"batch_size": True}, {"column": 3}, {"seed": "0"}])
def test_calibration_config_is_validated(bad):
    with pytest.raises(ConfigError):
        CalibrationConfig(**bad)


def test_criterion_options_are_validated():
    with pytest.raises(ConfigError):
        FidelityImportance(rounds=0)
    with pytest.raises(ConfigError):
        OBSImportance(damp=0)
    with pytest.raises(ConfigError):
        TreeImportance(p=3)
    with pytest.raises(ConfigError):
        ActivationImportance(calibration=[{"x": np.zeros(3)}])


def test_from_feeds_rebatches_and_caps_samples():
    feeds = [{"x": np.zeros((7, 4, IN), np.float32)}, {"x": np.zeros((5, 2, IN), np.float32)}]
    data = CalibrationData.from_feeds(feeds, CalibrationConfig(num_samples=10, batch_size=3))
    assert [b["x"].shape[0] for b in data.batches()] == [3, 3, 1, 3]
    assert data.num_samples == 10
    with pytest.raises(ConfigError, match="batch"):
        CalibrationData.from_feeds([{"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}])
    with pytest.raises(ConfigError, match="empty"):
        CalibrationData.from_feeds([])


# ----------------------------------------------------------------------------------------------
# activation capture


def test_capture_matches_numpy(tmp_path):
    w1, b1, w2 = _weights()
    path = _mlp(tmp_path, w1, b1, w2)
    feeds = _feeds(batches=3)
    data = CalibrationData.from_feeds(feeds, CalibrationConfig(batch_size=2))
    requests = [StatRequest("h", 2, gram=True), StatRequest("x", -1), StatRequest("y", 1)]
    stats = capture_activations(load_model(path), data, requests, max_tensors_per_run=1)
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    h = np.maximum(x @ w1.astype(np.float32) + b1.astype(np.float32), 0)
    y = h @ w2.astype(np.float32)
    for (name, axis), ref in {("h", 2): h, ("x", -1): x, ("y", 1): np.moveaxis(y, 1, -1)}.items():
        st = stats[(name, axis)]
        rows = ref.reshape(-1, ref.shape[-1])
        assert st.count == rows.shape[0]
        np.testing.assert_allclose(st.sum, rows.sum(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(st.sumsq, (rows ** 2).sum(0), rtol=1e-5)
        np.testing.assert_allclose(st.rms(), np.sqrt((rows ** 2).mean(0)), rtol=1e-5)
    rows = h.reshape(-1, HIDDEN)
    np.testing.assert_allclose(stats[("h", 2)].gram, rows.T @ rows, rtol=1e-5, atol=1e-6)
    assert stats[("x", -1)].gram is None
    with pytest.raises(ConfigError, match="not a graph input"):
        capture_activations(load_model(path), data, [("nope", 0)])


def test_capture_leaves_the_model_untouched(tmp_path):
    path = _mlp(tmp_path, *_weights())
    model = load_model(path)
    def state():
        return path.read_bytes(), len(model.graph.outputs), len(model.graph.inputs), len(list(model.graph))

    before = state()
    capture_activations(model, CalibrationData.from_feeds(_feeds()), [("h", 2)])
    assert state() == before


# ----------------------------------------------------------------------------------------------
# a tiny exported BERT, with a tokenizer of its own

_WORDS = ["the", "a", "film", "movie", "story", "actor", "plot", "scene", "is", "was", "not", "very",
          "good", "bad", "great", "dull", "funny", "long", "short", "slow", "fast", "and", "but",
          "with", "of", "to", "in", "it", "this", "that", "too", "so", "best", "worst", "script",
          "music", "ending", "cast", "fun", "boring", "love", "hate", "smart", "silly", "dark",
          "light", "warm", "cold", "new", "old"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """The zoo's tiny BERT (vocabulary 100) in a folder with a word-level tokenizer of its own."""
    from transformers import BertTokenizerFast

    src = export_zoo_model("bert", tmp_path_factory.mktemp("criteria-zoo"))
    folder = tmp_path_factory.mktemp("tiny-bert")
    shutil.copytree(src, folder, dirs_exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=64).save_pretrained(folder)
    return folder


def _sentences(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(3, 15)))) for _ in range(n)]


def test_capture_excludes_padding(tiny_bert):
    model = load_model(tiny_bert / "model.onnx")
    name = "/encoder/layer.0/intermediate/intermediate_act_fn/Mul_1_output_0"
    texts = _sentences(5)
    config = CalibrationConfig(batch_size=5, sort_by_length=False)
    padded = CalibrationData.from_texts(texts, tiny_bert, config)
    assert (next(padded.batches())["attention_mask"] == 0).any()
    single = CalibrationData.from_texts(texts, tiny_bert, CalibrationConfig(batch_size=1))
    a = capture_activations(model, padded, [StatRequest(name, 2, gram=True)])[(name, 2)]
    b = capture_activations(model, single, [StatRequest(name, 2, gram=True)])[(name, 2)]
    assert a.count == b.count == int(next(padded.batches())["attention_mask"].sum())
    np.testing.assert_allclose(a.sumsq, b.sumsq, rtol=1e-4)
    np.testing.assert_allclose(a.gram, b.gram, rtol=1e-4, atol=1e-6)


def test_calibration_from_a_dataset(tiny_bert, tmp_path):
    import datasets

    texts = _sentences(20)
    ds = datasets.Dataset.from_dict({"label": list(range(20)), "sentence": texts})
    data = CalibrationData.from_dataset(ds, tiny_bert, config=CalibrationConfig(num_samples=11, batch_size=4))
    assert data.num_samples == 11 and len(data) == 3
    batch = next(data.batches())
    assert set(batch) >= {"input_ids", "attention_mask"} and batch["input_ids"].dtype == np.int64
    assert data.describe()["num_samples"] == 11 and "sentence" in data.describe()["source"]
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "\n".join(f"{t},1" for t in texts) + "\n")
    data = CalibrationData.from_dataset("csv", tiny_bert, data_files=str(csv),
                                        config=CalibrationConfig(num_samples=6))
    assert data.num_samples == 6
    with pytest.raises(ConfigError, match="column 'review' not in the dataset"):
        CalibrationData.from_dataset(ds, tiny_bert, config=CalibrationConfig(column="review"))
    with pytest.raises(ConfigError, match="no tokenizer"):
        CalibrationData.from_texts(texts, tmp_path)


def _tiny_bert_calibration(kind, folder):
    if kind == "texts":
        return CalibrationData.from_texts(_sentences(12), folder, CalibrationConfig(batch_size=4))
    return CalibrationData.generated(folder / "model.onnx", CalibrationConfig(num_samples=6, batch_size=3,
                                                                              max_length=9))


@pytest.mark.parametrize(("criterion", "data"), [
    ("l1", None), ("tree", None), ("activation", "texts"), ("activation", "generated"),
    ("fluctuation", "texts"), ("obs", None),
    ("obs", "texts"), ("fidelity", None), ("fidelity", "texts")])
def test_every_criterion_prunes_tiny_bert_exactly(tiny_bert, tmp_path, criterion, data):
    calibration = _tiny_bert_calibration(data, tiny_bert) if data else None
    config = PruningConfig(sparsity=0.3, scope=("ffn", "heads"), importance=criterion)
    out = ORTPruner.from_pretrained(tiny_bert).prune(config, tmp_path / "pruned", calibration=calibration)
    plan = json.loads((out / "pruning_plan.json").read_text())
    removed = {g["kind"]: g["units"] - len(g["kept"]) for g in plan["groups"] if g["kind"] != "hidden"}
    assert removed == {"heads": 1, "ffn": 14}
    result = verify(tiny_bert, out)
    assert result.exact, result.outputs
    assert result.max_rel_error <= RELATIVE_TOLERANCE


def test_prune_without_calibration_for_activation_fails_before_writing(tiny_bert, tmp_path):
    config = PruningConfig(importance="activation")
    with pytest.raises(ConfigError, match="needs calibration data"):
        ORTPruner.from_pretrained(tiny_bert).prune(config, tmp_path / "pruned")
    assert not (tmp_path / "pruned").exists()
    with pytest.raises(ConfigError, match="needs calibration data"):
        ORTPruner.from_pretrained(tiny_bert).plan(config)


def test_criteria_rank_differently_on_tiny_bert(tiny_bert):
    """Not a quality claim: the criteria are not all the same ranking under another name."""
    calibration = _tiny_bert_calibration("texts", tiny_bert)
    pruner = ORTPruner.from_pretrained(tiny_bert)
    plans = {}
    for name in ("l2", "tree", "activation", "obs", "fidelity"):
        plan = pruner.plan(PruningConfig(sparsity=0.3, scope=("ffn",), importance=name),
                           calibration=calibration if name == "activation" else None)
        plans[name] = tuple(tuple(g.kept) for g in plan.groups if g.kind == "ffn")
    assert len(set(plans.values())) >= 4, plans


def test_packed_calibration_cuts_the_joined_texts_into_full_windows(tiny_bert):
    from transformers import AutoTokenizer

    texts = _sentences(12)
    data = CalibrationData.from_texts(texts, tiny_bert, CalibrationConfig(num_samples=5, batch_size=2,
                                                                          max_length=8, pack=True))
    batches = list(data.batches())
    assert [b["input_ids"].shape for b in batches] == [(2, 8), (2, 8), (1, 8)]
    assert all((b["attention_mask"] == 1).all() for b in batches)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"] + separator]
    np.testing.assert_array_equal(np.concatenate([b["input_ids"].ravel() for b in batches]), stream[:40])
    assert "packed into 8-token windows" in data.source
    short = CalibrationData.from_texts(texts[:2], tiny_bert, CalibrationConfig(num_samples=100, max_length=8,
                                                                               pack=True))
    assert sum(len(b["input_ids"]) for b in short.batches()) == len(
        [i for t in texts[:2] for i in tokenizer(t, add_special_tokens=False)["input_ids"] + separator]) // 8
    with pytest.raises(ConfigError, match="fewer than one packed window"):
        CalibrationData.from_texts(texts[:1], tiny_bert, CalibrationConfig(max_length=10_000, pack=True))
    with pytest.raises(ConfigError, match="pack must be True or False"):
        CalibrationConfig(pack="yes")


def test_generated_calibration_draws_ids_over_the_vocabulary(tiny_bert):
    config = CalibrationConfig(num_samples=5, batch_size=2, max_length=30)
    data = CalibrationData.generated(tiny_bert / "model.onnx", config)
    batches = list(data.batches())
    assert [b["input_ids"].shape for b in batches] == [(2, 30), (2, 30), (1, 30)]
    ids = np.concatenate([b["input_ids"].ravel() for b in batches])
    assert ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 30  # the zoo BERT has 100 tokens
    assert all((b["attention_mask"] == 1).all() and (b["token_type_ids"] == 0).all() for b in batches)


def test_data_free_repair_uses_many_short_generated_rows(tiny_bert, tmp_path):
    from optimum_prune.pruner import GENERATED_REPAIR_DATA

    out = tmp_path / "repaired"
    ORTPruner.from_pretrained(tiny_bert).prune(PruningConfig(sparsity=0.5, recover=True), out)
    calibration = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]["calibration"]
    assert calibration["source"] == "generated"
    assert calibration["num_samples"] == GENERATED_REPAIR_DATA.num_samples == 512
    assert calibration["config"]["max_length"] == GENERATED_REPAIR_DATA.max_length == 32


@pytest.mark.slow
def test_activation_prunes_real_minilm_exactly(minilm_onnx_dir, tmp_path):
    import pandas as pd

    from optimum_prune.assets import fetch_rotten_tomatoes

    reviews = pd.read_csv(fetch_rotten_tomatoes())
    texts = reviews[reviews.category != "plot"].text.astype(str).tolist()[:32]
    calibration = CalibrationData.from_texts(texts, minilm_onnx_dir, CalibrationConfig(batch_size=16))
    config = PruningConfig(sparsity=0.3, scope=("ffn", "heads"), importance="activation")
    pruner = ORTPruner.from_pretrained(minilm_onnx_dir)
    out = pruner.prune(config, tmp_path / "pruned", calibration=calibration)
    result = verify(minilm_onnx_dir, out)
    assert result.exact, result.outputs


def test_criterion_class_names_every_criterion_and_its_use_of_calibration():
    from optimum_prune.configuration import IMPORTANCE_CRITERIA
    from optimum_prune.importance import criterion_class

    data_driven = {n for n in IMPORTANCE_CRITERIA if criterion_class(n)[0].uses_calibration}
    assert data_driven == {"activation", "fluctuation", "obs", "fidelity"}
    assert criterion_class("l1")[1] == {"p": 1}
    criterion_class("l2")[1]["p"] = 9  # a copy: the registry is unchanged
    assert criterion_class("l2")[1] == {"p": 2}
    with pytest.raises(ConfigError, match="unknown importance criterion 'nope'"):
        criterion_class("nope")
