"""Einsum equation parsing (every axis' label, ellipsis axes aligned from the right) and Einsum seeds."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimum_prune.association.builder import _einsum_projection_axes
from optimum_prune.association.einsum import EinsumEquationError, einsum_labels


def test_explicit_output_with_ellipsis():
    inputs, output = einsum_labels("...qhd,...khd->...hqk", [4, 4])
    assert inputs == [[("...", 0), "q", "h", "d"], [("...", 0), "k", "h", "d"]]
    assert output == [("...", 0), "h", "q", "k"]


def test_ellipsis_axes_align_from_the_right():
    """A rank-4 operand's two broadcast axes against a rank-3 operand's one: the shorter one's axis is
    the last of the block, as in broadcasting."""
    inputs, output = einsum_labels("...d,...d->...", [4, 2])
    assert inputs == [[("...", 0), ("...", 1), ("...", 2), "d"], [("...", 2), "d"]]
    assert output == [("...", 0), ("...", 1), ("...", 2)]


def test_implicit_output_is_the_letters_used_once_in_order():
    inputs, output = einsum_labels("bsd, dn", [3, 2])
    assert inputs == [["b", "s", "d"], ["d", "n"]]
    assert output == ["b", "n", "s"]


@pytest.mark.parametrize(("equation", "ranks"), [
    ("ij,jk->ik", [2, 3]),  # a term shorter than its input
    ("ij->i", [2, 2]),  # two inputs, one term
    ("i...j...->ij", [4]),  # two ellipses
    ("ijk...->i", [2]),  # more letters than axes
])
def test_equations_that_do_not_fit_their_inputs_are_errors(equation, ranks):
    with pytest.raises(EinsumEquationError):
        einsum_labels(equation, ranks)


def _einsum_node(equation: str, shapes: list[tuple[int, ...]]) -> ir.Node:
    """An Einsum of an activation ``x`` (the first shape) and constants ``c1``, ``c2``, ..."""
    inputs = [ir.Value(name="x")] + [
        ir.Value(name=f"c{i}", const_value=ir.tensor(np.ones(shape, np.float32), name=f"c{i}"))
        for i, shape in enumerate(shapes[1:], start=1)]
    return ir.Node("", "Einsum", inputs=inputs, attributes=[ir.AttrString("equation", equation)])


@pytest.mark.parametrize(("equation", "shapes", "axes"), [
    ("bsd,dn->bsn", [(2, 3, 8), (8, 12)], [("c1", 1)]),  # a projection: its n
    ("bsd,dhk->bshk", [(2, 3, 8), (8, 4, 3)], [("c1", 1), ("c1", 2)]),  # heads and head_dim
    ("i,j->ij", [(5,), (4,)], []),  # an outer product (ESM's rotary inv_freq): nothing summed
    ("...n,n->...n", [(2, 3, 12), (12,)], []),  # a scale: a vector, nothing summed
])
def test_einsum_seeds_are_the_output_channels_of_constant_projections(equation, shapes, axes):
    node = _einsum_node(equation, shapes)
    found = [(v.name, axis) for v, axis in _einsum_projection_axes(node, {"x": shapes[0]})]
    assert found == axes
