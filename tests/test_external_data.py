"""A model stored with external data prunes into a folder that validates and runs on its own."""

from __future__ import annotations

import numpy as np
import onnx

from graphs import OP_GRAPHS, make_inputs
from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.verify import RELATIVE_TOLERANCE


def test_external_data_model_prunes_to_a_self_contained_folder(tmp_path):
    model = OP_GRAPHS["relu"]()
    src = tmp_path / "dense"
    src.mkdir()
    # a Constant node whose tensor lives in the data file too, as the torch exporter writes them
    big = onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32))
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["unused_constant"], value=big))
    onnx.save_model(model, src / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=0, convert_attribute=True)
    for attr_holder in onnx.load(src / "model.onnx", load_external_data=False).graph.node:
        if attr_holder.op_type == "Constant":
            assert attr_holder.attribute[0].t.data_location == onnx.TensorProto.EXTERNAL
    config = PruningConfig(sparsity=0.5, scope=("ffn",))
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    assert (out / "model.onnx_data").is_file()
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    result = verify(src, out, inputs=make_inputs(model))
    assert result.max_rel_error <= RELATIVE_TOLERANCE
