"""Least-squares repair (``PruningConfig(recover=...)``): it lowers each layer's reconstruction error,
reproduces the dense layer when the removed channels are combinations of kept ones, touches only the
consumers, and keeps the oracle exact once the repaired consumers are copied into the dense model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimum_prune import ConfigError, ORTPruner, PruningConfig, verify
from optimum_prune.calibration import CalibrationConfig, CalibrationData
from optimum_prune.configuration import RecoveryConfig
from optimum_prune.recovery import RepairStats, _ridge_path, _terms, cross_validated_damp, solve
from optimum_prune.verify import RELATIVE_TOLERANCE
from test_criteria import (
    _sentences,
    tiny_bert,  # noqa: F401  (session fixture)
)

IN, HIDDEN, OUT = 6, 8, 4


def _mlp(tmp_path, w1, b1, w2, b2=None, name="model.onnx"):
    """x[B,S,6] -> MatMul(W1[6,8]) -> Add(b1) -> Relu = h -> MatMul(W2[8,4]) [-> Add(b2)] -> y.

    The FFN group has 8 units (columns of W1, rows of W2); W2 is the consumer the repair refits.
    """
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"], name="up"),
             helper.make_node("Add", ["m", "b1"], ["a"], name="up_bias"),
             helper.make_node("Relu", ["a"], ["h"], name="act")]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in (("W1", w1), ("b1", b1),
                                                                                  ("W2", w2))]
    if b2 is None:
        nodes.append(helper.make_node("MatMul", ["h", "W2"], ["y"], name="down"))
    else:
        nodes += [helper.make_node("MatMul", ["h", "W2"], ["z"], name="down"),
                  helper.make_node("Add", ["z", "b2"], ["y"], name="down_bias")]
        inits.append(numpy_helper.from_array(np.asarray(b2, np.float32), "b2"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", IN])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", OUT])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    folder = tmp_path / "dense"
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / name)
    return folder


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((IN, HIDDEN)) / np.sqrt(IN), rng.standard_normal(HIDDEN) * 0.1 + 0.3,
            rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN), rng.standard_normal(OUT) * 0.1)


def _feeds(seed=1, batches=4):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 8, IN)).astype(np.float32)} for _ in range(batches)]


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0].reshape(-1, OUT) for f in feeds])


def _prune(folder, out, recover, sparsity=0.4, calibration=None, plan=None):
    pruner = ORTPruner.from_pretrained(folder)
    config = PruningConfig(sparsity=sparsity, scope=("ffn",), importance="l2", recover=recover)
    if plan is not None:
        return pruner.prune(plan=plan, save_dir=out, calibration=calibration)
    return pruner.prune(config, out, calibration=calibration)


@pytest.mark.parametrize("config", [RecoveryConfig(), RecoveryConfig(sequential=False),
                                    RecoveryConfig(method="bias"), RecoveryConfig(method="mask"),
                                    RecoveryConfig(bias=False, prior="zero", ridge="diagonal")],
                         ids=["lstsq", "lstsq-dense", "bias", "mask", "lstsq-nobias"])
def test_repair_strictly_lowers_the_layer_error(tmp_path, config):
    w1, b1, w2, b2 = _weights()
    folder = _mlp(tmp_path, w1, b1, w2, b2)
    calibration = CalibrationData.from_feeds(_feeds())
    held_out = _feeds(seed=7)
    dense = _run(folder / "model.onnx", held_out)
    plain = _run(_prune(folder, tmp_path / "plain", False) / "model.onnx", held_out)
    out = _prune(folder, tmp_path / "repaired", config, calibration=calibration)
    repaired = _run(out / "model.onnx", held_out)
    report = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]
    (rec,) = report["records"]
    assert rec["weight"] == "W2" and rec["kept"] == 5 and rec["rows"] == HIDDEN
    assert rec["error_after"] < rec["error_before"]
    err_plain = np.sum((plain - dense) ** 2)
    err_repaired = np.sum((repaired - dense) ** 2)
    assert err_repaired < err_plain, (err_repaired, err_plain)


def test_repair_reproduces_the_dense_layer_when_removed_units_are_combinations(tmp_path):
    w1, b1, w2, b2 = _weights()
    # units 5, 6, 7 copy units 0, 1, 2 up to positive scales: relu(c * a) == c * relu(a) for c > 0
    for dup, src, c in ((5, 0, 1.0), (6, 1, 2.0), (7, 2, 0.5)):
        w1[:, dup], b1[dup] = c * w1[:, src], c * b1[src]
        w2[dup] *= 3.0  # large consumer rows: the plain cut loses a lot
    folder = _mlp(tmp_path, w1, b1, w2, b2)
    calibration = CalibrationData.from_feeds(_feeds(batches=6))
    pruner = ORTPruner.from_pretrained(folder)
    config = PruningConfig(sparsity=0.375, scope=("ffn",), recover=RecoveryConfig(damp=0.0))
    plan = pruner.plan(config)
    plan.groups = [dataclasses.replace(g, kept=[0, 1, 2, 3, 4]) if g.units == HIDDEN else g
                   for g in plan.groups]
    out = _prune(folder, tmp_path / "repaired", None, calibration=calibration, plan=plan)
    held_out = _feeds(seed=9)
    dense = _run(folder / "model.onnx", held_out)
    repaired = _run(out / "model.onnx", held_out)
    np.testing.assert_allclose(repaired, dense, rtol=1e-4, atol=1e-4)
    plain = _run(_prune(folder, tmp_path / "plain", False, plan=dataclasses.replace(
        plan, config={**plan.config, "recover": False})) / "model.onnx", held_out)
    assert np.abs(plain - dense).max() > 0.1


def test_repair_creates_a_bias_where_there_is_none_and_touches_only_consumers(tmp_path):
    w1, b1, w2, _ = _weights()
    folder = _mlp(tmp_path, w1, b1, w2)  # no b2
    out = _prune(folder, tmp_path / "repaired", True, calibration=CalibrationData.from_feeds(_feeds()))
    plain = _prune(folder, tmp_path / "plain", False)
    rep, pl = onnx.load(out / "model.onnx"), onnx.load(plain / "model.onnx")
    rep_inits = {i.name: numpy_helper.to_array(i) for i in rep.graph.initializer}
    pl_inits = {i.name: numpy_helper.to_array(i) for i in pl.graph.initializer}
    assert set(rep_inits) - set(pl_inits) == {"W2_repair_bias"}
    changed = {n for n in pl_inits if not np.array_equal(pl_inits[n], rep_inits[n])}
    assert changed == {"W2"}
    assert [n.op_type for n in rep.graph.node][-1] == "Add" and rep.graph.output[0].name == "y"
    plan = json.loads((out / "pruning_plan.json").read_text())
    assert plan["repairs"][0]["bias_created"] is True
    result = verify(folder, out, inputs=_feeds(seed=3)[0])
    assert result.repaired == 1 and result.exact, result.outputs


def _residual_block(tmp_path, seed=0, hidden=8, units=16):
    """x[B,S,8] -> MatMul(W1) -> Relu -> MatMul(W2) (the consumer) -> Add(x) -> LayerNormalization -> y."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, units)) / np.sqrt(hidden)
    w2 = rng.standard_normal((units, hidden)) / np.sqrt(units)
    gamma, beta = 1.0 + 0.1 * rng.standard_normal(hidden), 0.1 * rng.standard_normal(hidden)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m"], name="up"),
             helper.make_node("Relu", ["m"], ["h"], name="act"),
             helper.make_node("MatMul", ["h", "W2"], ["z"], name="down"),
             helper.make_node("Add", ["z", "x"], ["r"], name="residual"),
             helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], name="norm", axis=-1,
                              epsilon=1e-5)]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W1", w1), ("W2", w2), ("gamma", gamma), ("beta", beta))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", hidden])
    model = helper.make_model(helper.make_graph(nodes, "block", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    folder = tmp_path / "block"
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return folder


def _uneven_feeds(seed, batches=6, hidden=8):
    """Positions whose scale varies by 100x, as the high-norm tokens of a transformer's residual stream."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(batches):
        x = rng.standard_normal((4, 8, hidden))
        x *= rng.choice([0.1, 1.0, 10.0], size=(4, 8, 1))
        feeds.append({"x": x.astype(np.float32)})
    return feeds


def test_norm_weighted_repair_matches_the_normalised_output_better(tmp_path):
    """The fit weighted by the LayerNorm's per-position scale has a lower error after the norm (what
    the model outputs) than the plain fit, which spends itself on the high-norm positions."""
    folder = _residual_block(tmp_path)
    calibration = CalibrationData.from_feeds(_uneven_feeds(seed=1))
    held_out = _uneven_feeds(seed=2)
    dense = np.concatenate([_run_all(folder / "model.onnx", f) for f in held_out])
    errors = {}
    for weighted in (False, True):
        recover = RecoveryConfig(sequential=True, damp=0.01, norm_weighted=weighted)
        pruner = ORTPruner.from_pretrained(folder)
        config = PruningConfig(sparsity=0.5, scope=("ffn",), importance="l2", recover=recover)
        out = pruner.prune(config, tmp_path / f"weighted-{weighted}", calibration=calibration)
        got = np.concatenate([_run_all(out / "model.onnx", f) for f in held_out])
        errors[weighted] = float(np.sum((got - dense) ** 2))
    assert errors[True] < 0.9 * errors[False], errors


def test_norm_weighting_without_a_following_norm_changes_nothing(tmp_path):
    w1, b1, w2, b2 = _weights()
    folder = _mlp(tmp_path, w1, b1, w2, b2)
    calibration = CalibrationData.from_feeds(_feeds())
    outs = [_prune(folder, tmp_path / f"w{weighted}", RecoveryConfig(sequential=True, norm_weighted=weighted),
                   calibration=calibration) for weighted in (False, True)]
    a, b = (onnx.load(o / "model.onnx") for o in outs)
    weights = [{i.name: numpy_helper.to_array(i) for i in m.graph.initializer} for m in (a, b)]
    for name, arr in weights[0].items():
        np.testing.assert_array_equal(weights[1][name], arr)


def _run_all(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0].reshape(-1, session.get_outputs()[0].shape[-1])


def test_solve_with_dense_statistics_is_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6))
    w = rng.standard_normal((6, 3))
    keep = np.array([True, True, False, True, False, True])
    st = RepairStats()
    st.add(x, x)
    wk, d, before, after = solve(st, w, keep, RecoveryConfig(damp=0.0, bias=False))
    expected = np.linalg.lstsq(x[:, keep], x @ w, rcond=None)[0]
    np.testing.assert_allclose(wk, expected, rtol=1e-6, atol=1e-8)
    assert np.allclose(d, 0) and after < before
    res = x @ w - x[:, keep] @ expected
    centred = x @ w - (x @ w).mean(axis=0)
    assert after == pytest.approx(np.sum(res ** 2) / np.sum(centred ** 2), rel=1e-6)


@pytest.mark.parametrize("ridge, prior, bias", [("identity", "kept", True), ("diagonal", "zero", True),
                                               ("identity", "zero", False), ("diagonal", "kept", False)])
def test_the_ridge_path_is_the_solve_solution_at_every_grid_value(ridge, prior, bias):
    """Cross-validation fits every grid value from one eigendecomposition (bias eliminated by centring):
    the same rows and bias as :func:`solve`'s joint system."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 7)) @ rng.standard_normal((7, 7)) + 0.5
    w = rng.standard_normal((7, 3))
    keep = np.array([True, False, True, True, False, True, True])
    st = RepairStats()
    st.add(x, x)
    config = RecoveryConfig(ridge=ridge, prior=prior, bias=bias, damp_grid=(0.01, 0.3, 5.0))
    s = np.flatnonzero(keep)
    for damp, wk, d in _ridge_path(_terms(st, w, s), w[s], config):
        ref_w, ref_d, _, _ = solve(st, w, keep, dataclasses.replace(config, damp=damp))
        np.testing.assert_allclose(wk, ref_w, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(d, ref_d, rtol=1e-7, atol=1e-9)


def _folds(x, y_noise, rng, folds=4):
    """RepairStats per fold of rows of x whose target is x @ w plus noise carried as the residual term."""
    parts = []
    for xs, es in zip(np.array_split(x, folds), np.array_split(y_noise, folds), strict=True):
        st = RepairStats()
        st.add(xs, xs, es)
        parts.append(st)
    return parts


def test_cross_validation_picks_a_weak_ridge_for_plentiful_data_and_a_strong_one_for_scarce_data():
    rng = np.random.default_rng(0)
    k, out = 12, 4
    w = rng.standard_normal((k, out))
    keep = np.ones(k, bool)
    keep[::3] = False
    config = RecoveryConfig(cv_folds=4)
    # plentiful rows, correlated channels, a noise-free target: the removed rows are predictable
    mix = rng.standard_normal((k, k))
    x = rng.standard_normal((4000, k)) @ mix
    parts = _folds(x, np.zeros((4000, out)), rng)
    plentiful, cv = cross_validated_damp(parts, RepairStats.summed(parts), w, keep, config)
    assert plentiful == min(config.damp_grid) and cv[plentiful] < cv[max(config.damp_grid)]
    # as many rows as channels and a target drowned in noise: only a strong ridge generalises
    x = rng.standard_normal((24, k)) @ mix
    parts = _folds(x, 20.0 * rng.standard_normal((24, out)), rng)
    scarce, cv = cross_validated_damp(parts, RepairStats.summed(parts), w, keep, config)
    assert scarce >= 1.0 and cv[scarce] < cv[min(config.damp_grid)]


def test_summed_and_minus_are_inverse():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 5))
    parts = _folds(x, rng.standard_normal((40, 2)), rng)
    total = RepairStats.summed(parts)
    rest = total.minus(parts[0])
    again = RepairStats.summed(parts[1:])
    for name in ("gp", "cross", "gd", "sp", "sd", "pe", "de", "se"):
        np.testing.assert_allclose(getattr(rest, name), getattr(again, name), atol=1e-9)
    assert rest.count == again.count and rest.ee == pytest.approx(again.ee)
    dense = [RepairStats.dense(x[:20].T @ x[:20], x[:20].sum(0), 20), RepairStats.dense(x[20:].T @ x[20:],
                                                                                           x[20:].sum(0), 20)]
    both = RepairStats.summed(dense)
    assert both.gp is both.cross is both.gd and both.count == 40


def test_cross_validated_repair_records_each_consumers_damp(tmp_path):
    w1, b1, w2, b2 = _weights()
    folder = _mlp(tmp_path, w1, b1, w2, b2)
    calibration = CalibrationData.from_feeds(_feeds(batches=4), CalibrationConfig(batch_size=4))
    held_out = _feeds(seed=7)
    dense = _run(folder / "model.onnx", held_out)
    plain = _run(_prune(folder, tmp_path / "plain", False) / "model.onnx", held_out)
    for sequential in (False, True):
        config = RecoveryConfig(cv_folds=2, sequential=sequential, damp_grid=(0.01, 0.1, 1.0))
        out = _prune(folder, tmp_path / f"cv-{sequential}", config, calibration=calibration)
        (rec,) = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]["records"]
        assert rec["damp"] in (0.01, 0.1, 1.0) and rec["error_after"] < rec["error_before"]
        repaired = _run(out / "model.onnx", held_out)
        assert np.sum((repaired - dense) ** 2) < np.sum((plain - dense) ** 2)
    with pytest.raises(ConfigError, match="at least 8 calibration batches"):
        _prune(folder, tmp_path / "too-few", RecoveryConfig(cv_folds=8), calibration=calibration)


@pytest.mark.parametrize("bad", [dict(method="newton"), dict(damp=-1.0), dict(prior="one"), dict(ridge="x"),
                                 dict(sequential=1), dict(max_tensors_per_run=0), dict(cv_folds=1),
                                 dict(cv_folds=-2), dict(cv_folds=3, method="mask"), dict(damp_grid=()),
                                 dict(damp_grid=(0.1, 0.0)), dict(damp_grid="0.1"),
                                 dict(norm_weighted=True), dict(norm_weighted=1, sequential=True)])
def test_recovery_config_is_validated(bad):
    with pytest.raises(ConfigError):
        RecoveryConfig(**bad)


def test_pruning_config_takes_recover_forms():
    assert PruningConfig(recover=True).recovery == RecoveryConfig()
    assert PruningConfig(recover=False).recovery is None
    cfg = PruningConfig(recover={"method": "bias"})
    assert cfg.recovery.method == "bias" and cfg.to_dict()["recover"]["method"] == "bias"
    with pytest.raises(ConfigError):
        PruningConfig(recover="yes")
    with pytest.raises(ConfigError):
        PruningConfig(recover={"unknown": 1})


def test_repair_on_tiny_bert_heads_and_ffn_keeps_the_oracle_exact(tiny_bert, tmp_path):  # noqa: F811
    calibration = CalibrationData.from_texts(_sentences(24), tiny_bert, CalibrationConfig(batch_size=8))
    config = PruningConfig(sparsity=0.3, scope=("ffn", "heads"), importance="activation", recover=True)
    out = ORTPruner.from_pretrained(tiny_bert).prune(config, tmp_path / "pruned", calibration=calibration)
    report = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]
    assert report["consumers"] >= 2 and not report["skipped"]
    assert all(r["error_after"] < r["error_before"] for r in report["records"])
    result = verify(tiny_bert, out)
    assert result.repaired == report["consumers"]
    assert result.exact and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
