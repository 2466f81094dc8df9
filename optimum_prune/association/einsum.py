"""The association rule for Einsum, and the equation parsing it needs.

Each axis of each operand gets a label: its letter, or ``("...", i)`` for the i-th axis of the
broadcast (ellipsis) block, aligned from the right as broadcasting does. A letter kept in the output
passes the channels to every operand that has it, as MatMul's batch and M/N axes do; a letter summed
away is a contraction, whose constant operand is the leaf (the consumer slice), as MatMul's K.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_ir as ir

from optimum_prune.graph import is_constant, is_weight

if TYPE_CHECKING:
    from optimum_prune.association.builder import Walk
    from optimum_prune.association.rules import Entry

Label = str | tuple[str, int]


class EinsumEquationError(ValueError):
    """An equation this rule cannot read (the walk refuses the group, naming it)."""


def einsum_labels(equation: str, ranks: list[int]) -> tuple[list[list[Label]], list[Label]]:
    """The labels of every input axis and of the output's, for operands of ``ranks``.

    >>> einsum_labels("...qhd,...khd->...hqk", [4, 4])[1]
    [('...', 0), 'h', 'q', 'k']
    """
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise EinsumEquationError(f"{len(terms)} input terms for {len(ranks)} inputs")
    widths = []
    for term, rank in zip(terms, ranks, strict=True):
        letters = len(term.replace("...", ""))
        if "..." in term:
            widths.append(rank - letters)
        elif letters != rank:
            raise EinsumEquationError(f"term '{term}' for an input of rank {rank}")
        else:
            widths.append(0)
        if widths[-1] < 0 or not term.replace("...", "").isalpha():
            raise EinsumEquationError(f"term '{term}' for an input of rank {rank}")
    width = max(widths, default=0)
    inputs = [_expand(term, w, width) for term, w in zip(terms, widths, strict=True)]
    if arrow:
        output = _expand(rhs, width if "..." in rhs else 0, width)
    else:  # implicit output: the broadcast axes, then the letters used once, in alphabetical order
        letters = [lab for labels in inputs for lab in labels if isinstance(lab, str)]
        output = [("...", i) for i in range(width)] + sorted(c for c in set(letters) if letters.count(c) == 1)
    return inputs, output


def einsum_equation(node: ir.Node) -> str:
    """The ``equation`` attribute of an Einsum node ("" when it has none)."""
    return str(node.attributes["equation"].value) if "equation" in node.attributes else ""


def _expand(term: str, own: int, width: int) -> list[Label]:
    head, dots, tail = term.partition("...")
    if term.count("...") > 1:
        raise EinsumEquationError(f"term '{term}' has two ellipses")
    middle = [("...", width - own + i) for i in range(own)] if dots else []
    return list(head) + middle + list(tail)


def einsum(node: ir.Node, entry: Entry, walk: Walk) -> None:
    """Einsum: the entry axis' label links the same label's axis of every other operand (a size-1 axis,
    broadcast, aside). Summed away, the label needs a constant operand to be the leaf: summing the channels
    of two activations would drop the removed channels' terms from every product, which no zeroed constant
    slice matches."""
    inputs = list(node.inputs)
    equation = einsum_equation(node)
    try:
        in_labels, out_labels = einsum_labels(equation, [walk.rank(v) for v in inputs])
    except EinsumEquationError as e:
        walk.fail(f"Einsum equation '{equation}' not understood: {e}")
    mine = out_labels if entry.is_output else in_labels[entry.index]
    label = mine[entry.axis]
    if mine.count(label) > 1:
        walk.fail(f"Einsum takes a diagonal over the channel axis ('{equation}')")
    width = entry.owner.size
    # (operand, its axis with the label, its labels), a broadcast axis of 1 aside
    having = [(v, labels.index(label), labels) for v, labels in zip(inputs, in_labels, strict=True)
              if label in labels and (walk.dim(v, labels.index(label)) != 1 or width == 1)]
    if label not in out_labels:
        if not any(is_weight(v) for v, _, _ in having):
            walk.fail(f"Einsum sums the channels of activations only ('{equation}')", keep=entry.owner)
        for v, ax, _ in having:
            walk.link(v, ax, entry.owner)
            if is_constant(v):
                walk.leaf(v, ax)
        return
    contracted = {lab for labels in in_labels for lab in labels if lab not in out_labels}
    if len(having) > 1 and contracted and not any(is_weight(v) for v, _, _ in having):
        walk.mark("attention")  # heads kept through a product of activations (q.k, probs.v)
    for v, ax, labels in having:
        walk.link(v, ax, entry.owner)
        if is_constant(v) and any(lab in contracted for lab in labels):
            walk.root(v, ax)  # a projection's output channels
    walk.link(node.outputs[0], out_labels.index(label), entry.owner)
