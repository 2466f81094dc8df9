"""Einsum equation parsing: every axis' label, ellipsis axes aligned from the right."""

from __future__ import annotations

import pytest

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
