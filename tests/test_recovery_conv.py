"""Least-squares repair of Conv consumers (He et al.'s channel pruning: the next layer refitted on its
input patches). The patch rows reproduce ONNX Runtime's convolution; the repair lowers the layer error,
reproduces the dense layer when the removed channels are combinations of kept ones, creates a missing
bias as the Conv's third input, refits the Conv after a grouped one, and keeps the exactness oracle exact."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.calibration import CalibrationData
from optimum_prune.configuration import RecoveryConfig
from optimum_prune.recovery import ConvGeometry

C_IN, UNITS, C_OUT, SIZE = 3, 8, 4, 10


def _conv_pair(tmp_path, w1, b1, w2, b2=None, *, group2=1, name="dense"):
    """x[B,3,10,10] -> Conv(W1[8,3,3,3], pads 1) + b1 -> Relu -> Conv(W2[4,8/g,3,3], stride 2, pads 1)
    [+ b2] -> y[B,4,5,5]. The conv group has 8 units (W1's output channels, W2's input channels)."""
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"], name="act"),
             helper.make_node("Conv", ["h", "W2"] + (["b2"] if b2 is not None else []), ["y"], name="conv2",
                              pads=[1, 1, 1, 1], strides=[2, 2], group=group2)]
    arrays = {"W1": w1, "b1": b1, "W2": w2} | ({"b2": b2} if b2 is not None else {})
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in arrays.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", C_IN, SIZE, SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", C_OUT, SIZE // 2, SIZE // 2])
    model = helper.make_model(helper.make_graph(nodes, "convs", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return folder


def _weights(seed=0, group2=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((UNITS, C_IN, 3, 3)) / np.sqrt(C_IN * 9),
            rng.standard_normal(UNITS) * 0.1 + 0.3,
            rng.standard_normal((C_OUT, UNITS // group2, 3, 3)) / np.sqrt(UNITS * 9),
            rng.standard_normal(C_OUT) * 0.1)


def _feeds(seed=1, batches=4):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, C_IN, SIZE, SIZE)).astype(np.float32)} for _ in range(batches)]


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def _prune(folder, out, recover, calibration=None, plan=None):
    pruner = ORTPruner.from_pretrained(folder)
    if plan is not None:
        return pruner.prune(plan=plan, save_dir=out, calibration=calibration)
    config = PruningConfig(sparsity=0.375, scope=("conv",), importance="l2", recover=recover)
    return pruner.prune(config, out, calibration=calibration)


@pytest.mark.parametrize(("kernel", "strides", "dilations", "pads"), [
    ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
    ((3, 2), (1, 2), (2, 1), (2, 0, 1, 1)),
    ((1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
    ((5,), (3,), (2,), (4, 1)),
])
def test_patch_rows_times_the_flattened_kernel_is_the_convolution(kernel, strides, dilations, pads):
    rng = np.random.default_rng(0)
    nd = len(kernel)
    x = rng.standard_normal((2, 3) + (9,) * nd).astype(np.float32)
    w = rng.standard_normal((4, 3) + kernel).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            dilations=list(dilations), pads=list(pads))
    graph = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    rows = ConvGeometry(kernel, strides, dilations, pads).patches(x)
    out = rows @ w.reshape(4, -1).T  # [N * prod(out), C_out]
    expected = np.moveaxis(y, 1, -1).reshape(-1, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [RecoveryConfig(), RecoveryConfig(sequential=True),
                                    RecoveryConfig(method="bias"), RecoveryConfig(cv_folds=2)],
                         ids=["lstsq", "sequential", "bias", "cv"])
def test_conv_repair_strictly_lowers_the_layer_error_and_stays_exact(tmp_path, config):
    folder = _conv_pair(tmp_path, *_weights())
    calibration = CalibrationData.from_feeds(_feeds())
    held_out = _feeds(seed=7)
    dense = _run(folder / "model.onnx", held_out)
    plain = _run(_prune(folder, tmp_path / "plain", False) / "model.onnx", held_out)
    out = _prune(folder, tmp_path / "repaired", config, calibration=calibration)
    report = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]
    assert not report["skipped"], report["skipped"]
    (rec,) = report["records"]
    assert rec["weight"] == "W2" and rec["kept"] == 5 and rec["rows"] == UNITS
    assert rec["error_after"] < rec["error_before"]
    repaired = _run(out / "model.onnx", held_out)
    assert np.sum((repaired - dense) ** 2) < np.sum((plain - dense) ** 2)
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    result = verify(folder, out, inputs=_feeds(seed=3)[0])
    assert result.repaired == 1 and result.exact, result.outputs


def test_conv_repair_reproduces_the_dense_layer_when_removed_channels_are_combinations(tmp_path):
    w1, b1, w2, b2 = _weights()
    # channels 5, 6, 7 copy channels 0, 1, 2 up to positive scales: relu(c * a) == c * relu(a) for c > 0
    for dup, src, c in ((5, 0, 1.0), (6, 1, 2.0), (7, 2, 0.5)):
        w1[dup], b1[dup] = c * w1[src], c * b1[src]
        w2[:, dup] *= 3.0  # large consumer taps: the plain cut loses a lot
    folder = _conv_pair(tmp_path, w1, b1, w2, b2)
    pruner = ORTPruner.from_pretrained(folder)
    plan = pruner.plan(PruningConfig(sparsity=0.375, scope=("conv",), recover=RecoveryConfig(damp=0.0)))
    plan.groups = [dataclasses.replace(g, kept=[0, 1, 2, 3, 4]) if g.units == UNITS else g
                   for g in plan.groups]
    out = _prune(folder, tmp_path / "repaired", None, calibration=CalibrationData.from_feeds(_feeds()),
                 plan=plan)
    held_out = _feeds(seed=9)
    dense = _run(folder / "model.onnx", held_out)
    np.testing.assert_allclose(_run(out / "model.onnx", held_out), dense, rtol=1e-4, atol=1e-4)
    plain = _prune(folder, tmp_path / "plain", None, plan=dataclasses.replace(
        plan, config={**plan.config, "recover": False}))
    assert np.abs(_run(plain / "model.onnx", held_out) - dense).max() > 0.1


def test_conv_repair_creates_a_missing_bias_as_the_third_input(tmp_path):
    w1, b1, w2, _ = _weights()
    folder = _conv_pair(tmp_path, w1, b1, w2)  # conv2 has no bias
    out = _prune(folder, tmp_path / "repaired", True, calibration=CalibrationData.from_feeds(_feeds()))
    model = onnx.load(out / "model.onnx")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert list(conv2.input)[2] == "W2_repair_bias" and [n.op_type for n in model.graph.node][-1] == "Conv"
    assert json.loads((out / "pruning_plan.json").read_text())["repairs"][0]["bias_created"] is True
    result = verify(folder, out, inputs=_feeds(seed=3)[0])
    assert result.repaired == 1 and result.exact, result.outputs


def test_a_grouped_conv_inside_the_group_is_sliced_and_the_conv_after_it_repaired(tmp_path):
    """A grouped Conv after the pruned channels loses whole groups, inputs and outputs: it is inside the
    group (its kernel is sliced on the output axis only), not a consumer; the 1x1 Conv after it is the
    consumer the repair refits."""
    w1, b1, w2, _ = _weights(group2=2)
    w3 = np.random.default_rng(5).standard_normal((C_OUT, C_OUT, 1, 1)) / 2.0
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"], name="act"),
             helper.make_node("Conv", ["h", "W2"], ["g"], name="grouped", pads=[1, 1, 1, 1], group=2),
             helper.make_node("Conv", ["g", "W3"], ["y"], name="pointwise")]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W1", w1), ("b1", b1), ("W2", w2), ("W3", w3))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", C_IN, SIZE, SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", C_OUT, SIZE, SIZE])
    graph = helper.make_graph(nodes, "grouped", [x], [y], inits)
    folder = tmp_path / "dense"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              folder / "model.onnx")
    (group,) = [g for g in ORTPruner.from_pretrained(folder).analyze().groups if g.prunable]
    assert group.units == 2  # whole groups of the grouped Conv
    out = ORTPruner.from_pretrained(folder).prune(
        PruningConfig(sparsity=0.5, scope=("conv",), recover=True), tmp_path / "repaired",
        calibration=CalibrationData.from_feeds(_feeds()))
    report = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]
    assert [r["node"] for r in report["records"]] == ["pointwise"] and not report["skipped"]
    assert report["records"][0]["error_after"] < report["records"][0]["error_before"]
    result = verify(folder, out, inputs=_feeds(seed=3)[0])
    assert result.repaired == 1 and result.exact, result.outputs


def test_a_repaired_consumer_that_also_loses_output_channels_keeps_the_oracle_exact(tmp_path):
    """conv1 -> Relu -> conv2 -> Relu -> conv3: conv2 is the consumer of conv1's pruned channels and the
    producer of its own, so its repaired kernel is cut on both axes; the oracle puts it back at the kept
    positions of both (it used to compare the unrepaired dense model and report an error)."""
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((UNITS, C_IN, 3, 3)) / np.sqrt(C_IN * 9)
    w2 = rng.standard_normal((UNITS, UNITS, 3, 3)) / np.sqrt(UNITS * 9)
    w3 = rng.standard_normal((C_OUT, UNITS, 1, 1)) / np.sqrt(UNITS)
    b1, b2 = rng.standard_normal(UNITS) * 0.1 + 0.3, rng.standard_normal(UNITS) * 0.1 + 0.3
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["h"], name="act1"),
             helper.make_node("Conv", ["h", "W2", "b2"], ["c"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["k"], name="act2"),
             helper.make_node("Conv", ["k", "W3"], ["y"], name="conv3")]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n)
             for n, a in (("W1", w1), ("b1", b1), ("W2", w2), ("b2", b2), ("W3", w3))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", C_IN, SIZE, SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", C_OUT, SIZE, SIZE])
    folder = tmp_path / "dense"
    folder.mkdir()
    model = helper.make_model(helper.make_graph(nodes, "chain", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, folder / "model.onnx")
    out = ORTPruner.from_pretrained(folder).prune(
        PruningConfig(sparsity=0.375, scope=("conv",), recover=True), tmp_path / "repaired",
        calibration=CalibrationData.from_feeds(_feeds()))
    pruned = {i.name: numpy_helper.to_array(i) for i in onnx.load(out / "model.onnx").graph.initializer}
    assert pruned["W2"].shape == (5, 5, 3, 3) and pruned["b2"].shape == (5,)
    report = json.loads((out / "report.json").read_text())["stages"][-1]["repair"]
    assert [r["node"] for r in report["records"]] == ["conv2", "conv3"]
    result = verify(folder, out, inputs=_feeds(seed=3)[0])
    assert result.repaired == 2 and result.exact, result.outputs


def test_large_inputs_are_turned_into_patches_a_few_samples_at_a_time():
    geometry = ConvGeometry((3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    slices = geometry.sample_slices((64, 64, 56, 56))  # 64 x 3136 rows x 576 columns: 116M elements
    assert len(slices) > 1 and slices[0].start == 0 and slices[-1].stop >= 64
    per_slice = (slices[0].stop - slices[0].start) * 56 * 56 * 64 * 9
    assert per_slice <= 1 << 23
    x = np.random.default_rng(0).standard_normal((5, 2, 6, 6)).astype(np.float32)
    small = ConvGeometry((3, 3), (2, 2), (1, 1), (1, 1, 1, 1))
    assert len(small.sample_slices(x.shape)) == 1  # small inputs: one piece
    whole = small.patches(x)
    pieces = np.concatenate([small.patches(x[i:i + 2]) for i in range(0, 5, 2)])
    np.testing.assert_array_equal(whole, pieces)


def test_the_report_hints_at_rounding_when_conv_widths_are_odd(tmp_path):
    folder = _conv_pair(tmp_path, *_weights())
    config = PruningConfig(sparsity=0.375, scope=("conv",))
    odd = ORTPruner.from_pretrained(folder).prune(config, tmp_path / "a")
    hints = json.loads((odd / "report.json").read_text())["stages"][-1]["hints"]
    assert len(hints) == 1 and "W1: 5 channels" in hints[0] and "round_to={'conv': 16}" in hints[0]
    even = ORTPruner.from_pretrained(folder).prune(
        PruningConfig(sparsity=0.375, scope=("conv",), round_to={"conv": 4}), tmp_path / "b")
    report = json.loads((even / "report.json").read_text())["stages"][-1]
    assert "hints" not in report and report["units_removed"]["conv"] == 4
