"""Write ONNX Runtime's fused ``SkipLayerNormalization`` back as ``Sum`` + ``LayerNormalization``.

ONNX Runtime's transformer fusions (and its load-time ``SkipLayerNormFusion``) turn each residual
``Add`` and the ``LayerNormalization`` after it into one ``com.microsoft::SkipLayerNormalization``. On
the CPU execution provider of ONNX Runtime 1.31 that kernel is several times slower than the two
standard kernels it replaces (``benchmarks/norm_kernels.py`` measures it: at 128 tokens x 384 channels
and one thread, about 310 us against about 95 us), so on CPU the fusion costs time. This pass undoes it:

    SkipLayerNormalization(input, skip, gamma, beta, bias)
      -> Add(input, bias)                      only with a bias; ONNX Runtime folds it into the MatMul
      -> Sum(biased input, skip)               the residual sum (the node's 4th output, if it is read)
      -> LayerNormalization(sum, gamma, beta, axis=-1, epsilon)

The residual sum is a ``Sum``, not an ``Add``: ONNX Runtime fuses ``Add`` + ``LayerNormalization`` back
into ``SkipLayerNormalization`` when it loads a model whose shapes it knows, and it has no such rule for
``Sum``. The values are the same up to floating-point rounding of the same operations.

A node is left fused when its mean or inverse-variance output is read, or when the model's default
opset is below 17 (``LayerNormalization``); the report says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from optimum_prune.graph import fresh_name, value_names

_MICROSOFT = "com.microsoft"
_DEFAULT_EPSILON = 1e-12  # com.microsoft::SkipLayerNormalization's default
_MIN_OPSET = 17  # LayerNormalization


@dataclass
class SplitReport:
    """What :func:`split_skip_layer_norms` did.

    Attributes:
        split: how many ``SkipLayerNormalization`` nodes became ``Sum`` + ``LayerNormalization``.
        kept: the ones left fused, each ``"<node>: <reason>"``.
    """

    split: int = 0
    kept: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"split": self.split, "kept": list(self.kept)}


def split_skip_layer_norms(model: ir.Model) -> SplitReport:
    """Replace each ``com.microsoft::SkipLayerNormalization`` of ``model``'s main graph by standard ops.

    The model is changed in place; call on a copy to keep the original. Output names (including graph
    outputs) and declared types stay as they were.
    """
    report = SplitReport()
    graph = model.graph
    nodes = [n for n in graph if n.domain == _MICROSOFT and n.op_type == "SkipLayerNormalization"]
    if not nodes:
        return report
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < _MIN_OPSET:
        report.kept = [f"{n.name}: the model's opset {opset} has no LayerNormalization (needs "
                       f"{_MIN_OPSET})" for n in nodes]
        return report
    node_names = {n.name for n in graph}
    taken_values = value_names(graph)
    for node in nodes:
        reason = _why_not(node)
        if reason:
            report.kept.append(f"{node.name}: {reason}")
            continue
        _split(graph, node, node_names, taken_values)
        report.split += 1
    return report


def _why_not(node: ir.Node) -> str | None:
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    if inputs[0] is None or inputs[1] is None or inputs[2] is None:
        return "an input (input, skip or gamma) is missing"
    for i, name in ((1, "mean"), (2, "inverse standard deviation")):
        if i < len(node.outputs) and (node.outputs[i].uses() or node.outputs[i].is_graph_output()):
            return f"its {name} output is read"
    return None


def _split(graph: ir.Graph, node: ir.Node, node_names: set[str], taken_values: set[str]) -> None:
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    data, skip, gamma, beta, bias = inputs[:5]
    full = data  # the input has the output's shape; the skip may broadcast
    epsilon = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else _DEFAULT_EPSILON
    new_nodes: list[ir.Node] = []
    if bias is not None:
        add = ir.Node("", "Add", [data, bias], name=fresh_name(node_names, f"{node.name}/bias_add"))
        _like(add.outputs[0], full, fresh_name(taken_values, f"{node.name}/biased"))
        new_nodes.append(add)
        data = add.outputs[0]
    total = ir.Node("", "Sum", [data, skip], name=fresh_name(node_names, f"{node.name}/residual_sum"))
    new_nodes.append(total)
    norm_inputs = [total.outputs[0], gamma] + ([beta] if beta is not None else [])
    norm = ir.Node("", "LayerNormalization", norm_inputs,
                   name=fresh_name(node_names, f"{node.name}/layer_norm"),
                   attributes=[ir.Attr("axis", ir.AttributeType.INT, -1),
                               ir.Attr("epsilon", ir.AttributeType.FLOAT, epsilon)])
    new_nodes.append(norm)
    graph.insert_before(node, new_nodes)
    _take_over(node.outputs[0], norm.outputs[0])
    if len(node.outputs) > 3:
        _take_over(node.outputs[3], total.outputs[0])
    if not total.outputs[0].name:
        _like(total.outputs[0], full, fresh_name(taken_values, f"{node.name}/residual"))
    graph.remove(node, safe=True)


def _like(value: ir.Value, model_value: ir.Value, name: str) -> None:
    """Name a created value and give it ``model_value``'s type and shape (same-shaped element-wise ops)."""
    value.name = name
    if model_value.type is not None:
        value.type = model_value.type
        if model_value.shape is not None:
            value.shape = model_value.shape


def _take_over(old: ir.Value, new: ir.Value) -> None:
    """``new`` replaces ``old`` everywhere, under ``old``'s name and declared type."""
    name = old.name
    old.name = None
    new.name = name
    if old.type is not None:
        new.type = old.type
    if old.shape is not None and new.type is not None:
        new.shape = old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)

