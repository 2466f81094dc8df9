"""Validation and the oracle run on generated inputs long enough for the model (speech encoders).

A wav2vec2-style feature extractor (a strided Conv stack over raw audio) cannot run on the seven
samples that suit a text model: the generated inputs grow along SEQUENCE_LADDER until the model runs,
and a pruned model that needs longer inputs than its source is still refused.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.errors import InvalidModelError, ValidationError
from optimum_prune.passes.validate import SEQUENCE_LADDER, make_session, runnable_inputs, validate_model_file


def _audio_convs(kernel: int = 10, stride: int = 5) -> onnx.ModelProto:
    """Raw audio [B, 1, S] -> Conv(kernel, stride) -> Relu -> Conv(3, stride 2) -> [B, 6, T]."""
    model = onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[B, 1, S] audio) => (float[B, 6, T] features) {{
            a = Conv <kernel_shape = [{kernel}], strides = [{stride}]> (audio, w1, b1)
            r = Relu(a)
            features = Conv <kernel_shape = [3], strides = [2]> (r, w2, b2)
        }}
    """)
    rng = np.random.default_rng(0)
    for name, arr in {"w1": rng.standard_normal((8, 1, kernel)), "b1": rng.standard_normal(8),
                      "w2": rng.standard_normal((6, 8, 3)), "b2": rng.standard_normal(6)}.items():
        model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    return model


def test_generated_inputs_grow_until_a_conv_stack_over_raw_audio_runs(tmp_path):
    path = tmp_path / "audio.onnx"
    onnx.save(_audio_convs(), path)
    feeds, outputs, length = runnable_inputs(make_session(path))
    assert length == 64 > SEQUENCE_LADDER[0]  # 7 and 16 samples are too few for the two kernels
    assert feeds["audio"].shape[-1] == length and outputs[0].shape[1] == 6


def test_a_speech_style_feature_extractor_prunes_and_verifies(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    onnx.save(_audio_convs(), folder / "model.onnx")
    config = PruningConfig(sparsity=0.5, scope=("conv",))
    out = ORTPruner.from_pretrained(folder).prune(config, tmp_path / "p")
    assert verify(folder, out).exact  # both models run on 64 samples
    pruned = onnx.load(str(out / "model.onnx"))
    assert numpy_helper.to_array(next(i for i in pruned.graph.initializer if i.name == "w1")).shape[0] == 4


def test_a_pruned_model_that_needs_longer_inputs_than_its_source_is_refused(tmp_path):
    source, pruned = tmp_path / "source.onnx", tmp_path / "pruned.onnx"
    onnx.save(_audio_convs(kernel=1, stride=1), source)  # runs on 7 samples
    onnx.save(_audio_convs(kernel=10), pruned)  # does not
    validate_model_file(pruned)  # on its own it runs, on 64 samples
    with pytest.raises(ValidationError, match="the source model .* runs on"):
        validate_model_file(pruned, source=source)


def _traced_length(length: int) -> onnx.ModelProto:
    """[B, S, 4] -> Reshape to [B, 4, length/4, 4] (the sequence length traced as a constant, as
    Nystromformer's landmarks export it) -> ReduceMean over the segments -> [B, 4, 4]."""
    return onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[B, S, 4] x) => (float[B, 4, 4] y)
            <int64[4] shape = {{0, 4, {length // 4}, 4}}, int64[1] ax = {{2}}> {{
            r = Reshape(x, shape)
            y = ReduceMean <keepdims = 0> (r, ax)
        }}
    """)


def test_a_model_traced_at_the_export_length_runs_on_it(tmp_path):
    path = tmp_path / "traced.onnx"
    onnx.save(_traced_length(16), path)
    feeds, _, length = runnable_inputs(make_session(path))
    assert length == 16 and feeds["x"].shape == (2, 16, 4)  # optimum-onnx's dummy sequence length
    validate_model_file(path)


def test_a_model_that_runs_on_no_generated_inputs_names_the_lengths_and_the_first_error(tmp_path):
    path = tmp_path / "traced.onnx"
    onnx.save(_traced_length(20), path)
    with pytest.raises(ValidationError, match=r"sequence lengths 7, 16, 64.*; at 7: .*Reshape"):
        runnable_inputs(make_session(path))


def _fixed_grid_convs(random_output: bool = False) -> onnx.ModelProto:
    """pixel_values [B, 3, height, width] -> 1x1 Conv -> + a position table for an 8 x 16 grid -> Relu ->
    1x1 Conv: symbolic image dimensions, but it runs on 8 x 16 only. ``random_output`` adds
    RandomUniformLike noise to the output (ViT-MAE shuffles its patches that way)."""
    noise = ("\n            n = RandomUniformLike <dtype = 1> (c)\n            y = Add(c, n)" if random_output
             else "\n            y = Identity(c)")
    model = onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[batch_size, 3, height, width] pixel_values) => (float[batch_size, 6, height, width] y) {{
            a = Conv <kernel_shape = [1, 1]> (pixel_values, w1, b1)
            p = Add(a, pos)
            r = Relu(p)
            c = Conv <kernel_shape = [1, 1]> (r, w2, b2){noise}
        }}
    """)
    rng = np.random.default_rng(0)
    for name, arr in {"w1": rng.standard_normal((8, 3, 1, 1)), "b1": rng.standard_normal(8),
                      "pos": rng.standard_normal((1, 8, 8, 16)), "w2": rng.standard_normal((6, 8, 1, 1)),
                      "b2": rng.standard_normal(6)}.items():
        model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    return model


def test_image_dimensions_come_from_the_folder_config(tmp_path):
    """A model that runs on one image size only (its position table's grid) validates and verifies on
    the ``image_size`` of its ``config.json``, a non-square [height, width] included; without it the
    generated 32 x 32 images do not run and the pruned model is refused, naming what was tried."""
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(_fixed_grid_convs(), src / "model.onnx")
    config = PruningConfig(sparsity=0.5, scope=("conv",))
    with pytest.raises(ValidationError, match="runs on no generated inputs"):
        ORTPruner.from_pretrained(src).prune(config, tmp_path / "without")
    (src / "config.json").write_text('{"image_size": [8, 16]}')
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "with")
    assert onnx.load(out / "model.onnx").graph.initializer[0].dims[0] == 4
    assert verify(src, out).exact_groups


def test_the_channel_count_comes_from_the_folder_config(tmp_path):
    """A grayscale model exported with a symbolic ``num_channels`` input dimension (optimum-onnx names it
    so for every vision model) runs on the ``num_channels`` of its ``config.json``: the generated three
    channels do not fit its one-channel kernel."""
    model = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[batch_size, num_channels, height, width] pixel_values)
            => (float[batch_size, 6, height, width] y) {
            a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (pixel_values, w1, b1)
            r = Relu(a)
            y = Conv <kernel_shape = [1, 1]> (r, w2, b2)
        }
    """)
    rng = np.random.default_rng(0)
    for name, arr in {"w1": rng.standard_normal((8, 1, 3, 3)), "b1": rng.standard_normal(8),
                      "w2": rng.standard_normal((6, 8, 1, 1)), "b2": rng.standard_normal(6)}.items():
        model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(model, src / "model.onnx")
    config = PruningConfig(sparsity=0.5, scope=("conv",))
    with pytest.raises(ValidationError, match="runs on no generated inputs"):
        ORTPruner.from_pretrained(src).prune(config, tmp_path / "without")
    (src / "config.json").write_text('{"num_channels": 1, "image_size": 28}')
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "with")
    assert verify(src, out).exact_groups
    # the data-free parts generate one-channel images too: the fidelity criterion and the repair
    data_free = PruningConfig(sparsity=0.5, scope=("conv",), importance="fidelity",
                              importance_options={"rounds": 1}, recover=True)
    out = ORTPruner.from_pretrained(src).prune(data_free, tmp_path / "data-free")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["repair"]["consumers"] == 1 and report["repair"]["calibration"]["source"] == "generated"
    assert verify(src, out).exact


def test_the_oracle_refuses_a_model_whose_runs_differ(tmp_path):
    """Two runs of a model with random ops differ: the oracle names the op instead of calling the
    pruning inexact."""
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(_fixed_grid_convs(random_output=True), src / "model.onnx")
    (src / "config.json").write_text('{"image_size": [8, 16]}')
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("conv",)), tmp_path / "p")
    with pytest.raises(InvalidModelError, match="RandomUniformLike"):
        verify(src, out)
