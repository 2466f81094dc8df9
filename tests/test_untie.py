"""Private copies of computed tensors shared by several layers (BLOOM's ALiBi bias): layers prune alone."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir

from graphs import make_inputs, shared_bias_layers
from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.metrics import count_parameters
from optimum_prune.passes.untie import weightless_cone
from optimum_prune.verify import RELATIVE_TOLERANCE


def _write(tmp_path, model):
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    return src


def test_layers_sharing_a_computed_bias_get_a_heads_group_each(tmp_path):
    model = shared_bias_layers()
    src = _write(tmp_path, model)
    before = (src / "model.onnx").read_bytes()
    pruner = ORTPruner.from_pretrained(src)
    heads = [g for g in pruner.analyze().groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable and g.units == 3 for g in heads), heads
    out = pruner.prune(PruningConfig(sparsity=0.34, scope=("heads",)), tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 2  # one of three heads in each layer
    # the copied slopes are not parameters of the input model; the report names the tensor copied
    assert report["params_before"] == count_parameters(ir.from_proto(model))
    assert report["untied"] == ["bias"]
    result = verify(src, out, inputs=make_inputs(model))
    assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, result.outputs
    pruned = onnx.load(out / "model.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    # each layer adds its own copy of the bias, with its own kept slopes
    slopes = [i for i in pruned.graph.initializer if i.name.startswith("slopes")]
    assert sorted(tuple(i.dims) for i in slopes) == [(2, 1, 1), (2, 1, 1)]
    assert (src / "model.onnx").read_bytes() == before


def test_different_heads_can_go_in_each_layer(tmp_path):
    """With the copies, layer 1 can keep a head that layer 2 drops (a coupled group could not)."""
    model = shared_bias_layers()
    for init in model.graph.initializer:  # make head 0 the weakest in layer 1 and head 2 in layer 2
        if init.name in ("Wq1", "Wk1", "Wv1", "Wq2", "Wk2", "Wv2"):
            arr = onnx.numpy_helper.to_array(init).copy()
            weak = 0 if init.name.endswith("1") else 2
            arr[:, 4 * weak:4 * weak + 4] *= 1e-3
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    src = _write(tmp_path, model)
    config = PruningConfig(sparsity=0.34, scope=("heads",), importance="l2")
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    plan = json.loads((out / "pruning_plan.json").read_text())
    kept = {g["seed"]: g["kept"] for g in plan["groups"] if g["kind"] == "heads"}
    assert kept == {"Wq1:1": [1, 2], "Wq2:1": [0, 1]}
    assert verify(src, out, inputs=make_inputs(model)).exact_groups


def _cone_graph(table_shape: tuple[int, ...]) -> ir.Value:
    x = ir.Value(name="x", shape=ir.Shape(["B", 3, 1, "S"]), type=ir.TensorType(ir.DataType.FLOAT))
    table = ir.Value(name="t", const_value=ir.tensor(np.ones(table_shape, dtype=np.float32), name="t"))
    node = ir.Node("", "Mul", inputs=[table, x], num_outputs=1, name="mul")
    ir.Graph([x], node.outputs, nodes=[node], initializers=[table], name="g")
    return node.outputs[0]


def test_tables_and_weights_are_never_copied():
    assert weightless_cone(_cone_graph((3, 1, 1)), set()) is not None  # a vector of slopes: copied
    assert weightless_cone(_cone_graph((3, 1, 4)), set()) is None  # a table: a parameter, stays shared
    assert weightless_cone(_cone_graph((3, 1, 1)), {"t"}) is None  # a group's weight: stays shared
