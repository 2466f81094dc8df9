"""Property tests: random small graphs of four families, random sparsity, scope and criterion.

For every generated model and config: pruning succeeds, the result passes ``onnx.checker`` (full
check), the exactness oracle reports exact (max relative error <= 1e-4), the parameter count does not
grow, and every pruned group shrinks its tensors by exactly the positions of its removed units.

Graphs are built with ``onnx.helper`` from float32 random weights; graph inputs and outputs have
fixed channel sizes, so only internal channels can be pruned. Hypothesis draws the structure and a
numpy seed for the weights, derandomised so that CI runs the same examples every time.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphs import make_inputs
from optimum_prune import ORTPruner, PruningConfig, PruningPlan, verify
from optimum_prune.passes.apply import removed_mask
from optimum_prune.plan import PLAN_FILE
from optimum_prune.verify import RELATIVE_TOLERANCE

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OPSET = 20  # Gelu is a default-domain op from opset 20
KINDS = ("ffn", "heads", "conv")


class Builder:
    """Collects nodes and float32 initializers; names are unique and deterministic."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._shared: dict[tuple, str] = {}
        self.sharing = "none"

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, prefix: str, arr: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(self, prefix: str, *shape: int, fan_in: int | None = None) -> str:
        scale = 1.0 / math.sqrt(fan_in or shape[0])
        return self.const(prefix, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def vector(self, prefix: str, n: int, *, positive: bool = False, shareable: bool = False) -> str:
        """A new random vector; with ``shareable`` and ``self.sharing`` set, one vector per (prefix, n)
        shared by every use, directly or behind an Identity per use, as exporters deduplicate them."""
        if shareable and self.sharing != "none":
            key = (prefix, n)
            if key not in self._shared:
                self._shared[key] = self.vector(prefix, n, positive=positive)
            name = self._shared[key]
            return self.op("Identity", [name]) if self.sharing == "identity" else name
        arr = self.rng.uniform(0.5, 1.5, n) if positive else self.rng.standard_normal(n) * 0.1
        return self.const(prefix, arr.astype(np.float32))

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(f"{op_type}_"), **attrs))
        return out

    def model(self, x_dims: list, y_dims: list, x: str, y: str) -> onnx.ModelProto:
        # the last node writes the graph output
        self.nodes[-1].output[0] = "y"
        graph = helper.make_graph(
            self.nodes, "random",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, x_dims)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 10
        onnx.checker.check_model(model, full_check=True)
        return model

    def activation(self, x: str, kind: str) -> str:
        if kind == "none":
            return x
        if kind == "gelu_tanh":
            return self.op("Gelu", [x], approximate="tanh")
        return self.op(kind, [x])

    def dense(self, x: str, n_in: int, n_out: int, *, bias: bool) -> str:
        h = self.op("MatMul", [x, self.weight("W", n_in, n_out)])
        return self.op("Add", [h, self.vector("b", n_out, shareable=True)]) if bias else h


ACTIVATIONS = ("Relu", "Gelu", "gelu_tanh", "Sigmoid", "Tanh", "none")
# equal biases / norm weights: separate, one shared initializer, or shared behind Identity nodes
SHARING = st.sampled_from(["none", "direct", "identity"])


# ------------------------------------------------------------------------------------------------
# families
# ------------------------------------------------------------------------------------------------


@st.composite
def mlps(draw):
    """MLP stack: [MatMul -> (+bias) -> activation] x n, then a MatMul head with a fixed width."""
    seed = draw(st.integers(0, 2**31 - 1))
    rank3 = draw(st.booleans())
    d_in, d_out = draw(st.integers(2, 8)), draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(2, 16), min_size=1, max_size=3))
    layers = [(w, draw(st.booleans()), draw(st.sampled_from(ACTIVATIONS))) for w in widths]
    b = Builder(seed)
    b.sharing = draw(SHARING)
    h, n = "x", d_in
    for width, bias, act in layers:
        h = b.activation(b.dense(h, n, width, bias=bias), act)
        n = width
    b.dense(h, n, d_out, bias=draw(st.booleans()))
    lead = ["B", "S"] if rank3 else ["B"]
    return b.model([*lead, d_in], [*lead, d_out], "x", "y")


@st.composite
def cnns(draw):
    """Conv (k x k, groups 1) or depthwise Conv blocks with optional BatchNorm and Relu, then
    GlobalAveragePool -> Flatten -> Gemm head."""
    seed = draw(st.integers(0, 2**31 - 1))
    c_in, size, classes = draw(st.integers(1, 4)), draw(st.sampled_from([5, 6, 8])), draw(st.integers(2, 5))
    b = Builder(seed)
    h, c = "x", c_in
    for _ in range(draw(st.integers(1, 3))):
        depthwise = draw(st.booleans())
        k = draw(st.sampled_from([1, 3]))
        pads = [k // 2] * 4
        if depthwise:
            w = b.weight("Wdw", c, 1, k, k, fan_in=k * k)
            inputs = [h, w] + ([b.vector("bc", c)] if draw(st.booleans()) else [])
            h = b.op("Conv", inputs, group=c, kernel_shape=[k, k], pads=pads)
        else:
            out = draw(st.integers(2, 12))
            w = b.weight("Wc", out, c, k, k, fan_in=c * k * k)
            inputs = [h, w] + ([b.vector("bc", out)] if draw(st.booleans()) else [])
            h = b.op("Conv", inputs, kernel_shape=[k, k], pads=pads)
            c = out
        if draw(st.booleans()):
            h = b.op("BatchNormalization", [h, b.vector("bn_s", c, positive=True), b.vector("bn_b", c),
                                            b.vector("bn_m", c), b.vector("bn_v", c, positive=True)])
        if draw(st.booleans()):
            h = b.op("Relu", [h])
    h = b.op("GlobalAveragePool", [h])
    h = b.op("Flatten", [h])
    trans_b = draw(st.booleans())
    w = b.weight("Wfc", classes, c, fan_in=c) if trans_b else b.weight("Wfc", c, classes)
    b.op("Gemm", [h, w, b.vector("bfc", classes)], transB=int(trans_b))
    return b.model(["B", c_in, size, size], ["B", classes], "x", "y")


@st.composite
def residuals(draw):
    """Pre-norm residual blocks: x + (branch_1 [+ branch_2]) of LayerNorm(x), each branch an FFN;
    a final LayerNormalization."""
    seed = draw(st.integers(0, 2**31 - 1))
    d = draw(st.integers(2, 8))
    b = Builder(seed)
    b.sharing = draw(SHARING)
    x = "x"
    for _ in range(draw(st.integers(1, 2))):
        normed = b.op("LayerNormalization", [x, b.vector("ln_s", d, positive=True, shareable=True),
                                             b.vector("ln_b", d, shareable=True)], axis=-1)
        branches = []
        for _ in range(draw(st.integers(1, 2))):
            f = draw(st.integers(1, 16))
            act = draw(st.sampled_from(ACTIVATIONS))
            h = b.activation(b.dense(normed, d, f, bias=draw(st.booleans())), act)
            branches.append(b.dense(h, f, d, bias=draw(st.booleans())))
        r = branches[0] if len(branches) == 1 else b.op("Add", branches)
        x = b.op("Add", [x, r])
    b.op("LayerNormalization", [x, b.vector("ln_s", d, positive=True, shareable=True),
                                b.vector("ln_b", d, shareable=True)], axis=-1)
    return b.model(["B", "S", d], ["B", "S", d], "x", "y")


def build_attention(seed: int, d: int, heads: int, head_dim: int, flag: Callable[[], bool],
                    ffn: tuple[int, str] | None = None) -> onnx.ModelProto:
    """Multi-head self-attention: Q/K/V MatMul (+bias) -> Reshape [0,0,H,hd] -> Transpose -> QK^T ->
    scale -> Softmax -> .V -> Transpose -> Reshape [0,0,H*hd] -> output projection [-> FFN].

    ``flag()`` decides each optional detail (biases, a shape constant per Reshape or one shared, K^T
    by one Transpose or two); ``ffn`` is (width, activation) of an FFN after the projection.
    """
    inner = heads * head_dim
    b = Builder(seed)
    split = b.const("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    qkv = []
    for prefix in "qkv":
        h = b.dense("x", d, inner, bias=flag())
        own = np.array([0, 0, heads, head_dim], dtype=np.int64)
        shape = b.const(f"{prefix}_shape", own) if flag() else split
        qkv.append(b.op("Reshape", [h, shape]))
    q = b.op("Transpose", [qkv[0]], perm=[0, 2, 1, 3])
    if flag():
        k = b.op("Transpose", [qkv[1]], perm=[0, 2, 3, 1])
    else:
        k = b.op("Transpose", [b.op("Transpose", [qkv[1]], perm=[0, 2, 1, 3])], perm=[0, 1, 3, 2])
    v = b.op("Transpose", [qkv[2]], perm=[0, 2, 1, 3])
    scores = b.op("MatMul", [q, k])
    scale = b.const("scale", np.array(math.sqrt(head_dim), dtype=np.float32))
    scores = b.op("Div", [scores, scale])
    probs = b.op("Softmax", [scores], axis=-1)
    ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, b.const("merge_shape", np.array([0, 0, inner], dtype=np.int64))])
    out = b.dense(ctx, inner, d, bias=flag())
    if ffn is not None:
        width, act = ffn
        h = b.activation(b.dense(out, d, width, bias=True), act)
        b.dense(h, width, d, bias=flag())
    return b.model(["B", "S", d], ["B", "S", d], "x", "y")


@st.composite
def attentions(draw):
    """``build_attention`` with random head count (1-4), head_dim (1-4), width and details."""
    seed = draw(st.integers(0, 2**31 - 1))
    d, heads, head_dim = draw(st.integers(2, 8)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ffn = draw(st.none() | st.tuples(st.integers(1, 12), st.sampled_from(ACTIVATIONS)))
    return build_attention(seed, d, heads, head_dim, lambda: draw(st.booleans()), ffn)


def configs(native: str) -> st.SearchStrategy[PruningConfig]:
    """Random sparsity in [0, 0.9), criterion, and scope: the family's own kind plus any others."""
    return st.builds(
        PruningConfig,
        sparsity=st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.75]), st.floats(0.05, 0.9, exclude_max=True)),
        scope=st.sets(st.sampled_from(KINDS)).map(lambda s: tuple(sorted(s | {native}))),
        importance=st.sampled_from(["l1", "l2"]),
    )


# ------------------------------------------------------------------------------------------------
# the property
# ------------------------------------------------------------------------------------------------


def _params(model: onnx.ModelProto) -> int:
    return sum(math.prod(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT)


def assert_prune_properties(model: onnx.ModelProto, config: PruningConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="optimum-prune-prop-") as tmp:
        src, dest = Path(tmp) / "dense", Path(tmp) / "pruned"
        src.mkdir()
        onnx.save(model, src / "model.onnx")
        before = (src / "model.onnx").read_bytes()
        groups = ORTPruner.from_pretrained(src).analyze().groups
        out = ORTPruner.from_pretrained(src).prune(config, dest)

        onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
        result = verify(src, out, inputs=make_inputs(model))
        assert result.exact, result.to_dict()
        assert result.max_rel_error <= RELATIVE_TOLERANCE

        pruned = onnx.load(out / "model.onnx")
        assert _params(pruned) <= _params(model)
        plan = PruningPlan.load(out / PLAN_FILE)
        removed = {gp.id: set(gp.removed) for gp in plan.groups if gp.removed}
        if removed:
            assert _params(pruned) < _params(model)
        for g in groups:  # what was not selected was not touched
            if g.id in removed:
                assert g.prunable and g.kind in config.scope
                assert len(removed[g.id]) <= math.floor(config.sparsity * g.units + 1e-9)

        # every tensor axis of a pruned group shrinks by the positions of its removed units
        dense_shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
        pruned_shapes = {i.name: tuple(i.dims) for i in pruned.graph.initializer}
        keep: dict[tuple[str, int], np.ndarray] = {}
        for g in groups:
            if g.id not in removed:
                continue
            shrunk = False
            for s in g.slices:
                if not s.constant or s.name not in dense_shapes or s.name not in pruned_shapes:
                    continue
                mask = ~removed_mask(s.owner, removed[g.id])
                keep[(s.name, s.axis)] = keep.get((s.name, s.axis), mask) & mask
                shrunk |= pruned_shapes[s.name][s.axis] < dense_shapes[s.name][s.axis]
            assert shrunk, f"group {g.id} ({g.kind}, seed {g.seed}) was pruned but no tensor shrank"
        for (name, axis), mask in keep.items():
            assert pruned_shapes[name][axis] == int(mask.sum()), (name, axis)
        touched = {name for name, _ in keep}
        for name, shape in pruned_shapes.items():
            if name in dense_shapes and name not in touched:
                assert shape == dense_shapes[name], name
        assert (src / "model.onnx").read_bytes() == before


@PROPERTY_SETTINGS
@given(model=mlps(), config=configs("ffn"))
def test_mlp_stacks(model, config):
    assert_prune_properties(model, config)


@PROPERTY_SETTINGS
@given(model=cnns(), config=configs("conv"))
def test_cnns(model, config):
    assert_prune_properties(model, config)


@PROPERTY_SETTINGS
@given(model=residuals(), config=configs("ffn"))
def test_residual_blocks(model, config):
    assert_prune_properties(model, config)


@PROPERTY_SETTINGS
@given(model=attentions(), config=configs("heads"))
def test_attention_blocks(model, config):
    assert_prune_properties(model, config)


def test_single_head_query_key_channels_are_not_pruned():
    """Regression (found by test_attention_blocks): with one head, Reshape keeps head_dim as the channel
    axis, and q.k^T sums it. Removing such channels changes every score and no constant slice can be
    zeroed to match, so the Q and K groups must be refused; V's channels stay prunable, exactly."""
    model = build_attention(0, d=4, heads=1, head_dim=3, flag=lambda: True, ffn=None)
    with tempfile.TemporaryDirectory(prefix="optimum-prune-prop-") as tmp:
        onnx.save(model, Path(tmp) / "model.onnx")
        groups = ORTPruner.from_pretrained(tmp).analyze().groups
    refused = [g for g in groups if "sums the channels of two activations" in g.reason]
    assert len(refused) == 2 and not any(g.prunable for g in refused)
    assert any(g.prunable and g.units == 3 for g in groups)  # the V channels
    assert_prune_properties(model, PruningConfig(sparsity=0.5, scope=("ffn", "heads")))


@pytest.mark.parametrize("sharing", ["direct", "identity"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_shared_vectors_do_not_grow_the_model(sharing, sparsity):
    """Regression (found by test_mlp_stacks): three layers of width 8 share one bias, as exporters
    deduplicate equal vectors; the per-consumer copies made for the analysis are merged back."""
    b = Builder(0)
    b.sharing = sharing
    h = "x"
    for n_in in (4, 8, 8):
        h = b.op("Relu", [b.dense(h, n_in, 8, bias=True)])
    b.dense(h, 8, 3, bias=False)
    model = b.model(["B", 4], ["B", 3], "x", "y")
    assert len(model.graph.initializer) == 5  # 4 weights, 1 bias
    assert_prune_properties(model, PruningConfig(sparsity=sparsity, scope=("ffn",)))
    with tempfile.TemporaryDirectory(prefix="optimum-prune-prop-") as tmp:
        src = Path(tmp) / "dense"
        src.mkdir()
        onnx.save(model, src / "model.onnx")
        config = PruningConfig(sparsity=sparsity, scope=("ffn",))
        out = ORTPruner.from_pretrained(src).prune(config, Path(tmp) / "p")
        pruned = onnx.load(out / "model.onnx")
        report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["params_before"] == _params(model)
    assert report["params_after"] == _params(pruned)
    if sparsity == 0.0:
        assert _params(pruned) == _params(model)
        assert len(pruned.graph.initializer) == 5  # the bias is shared again
