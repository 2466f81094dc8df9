"""Association trees merged into pruning groups: what a group touches and how its units map onto tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("ffn", "heads", "conv", "hidden")


@dataclass
class TensorSlice:
    """One axis of one tensor that shrinks with the group.

    ``owner[p]`` is the unit that owns position ``p`` of ``axis`` (-1: not owned, never removed).
    """

    name: str
    axis: int
    owner: np.ndarray
    constant: bool = False
    leaf: bool = False  # a consumer's input slice (MatMul/Gemm reduction rows, Conv input channels)
    io: str | None = None  # "input" / "output" for graph inputs and outputs
    merged_with: str | None = None  # the symbolic dimension (batch) merged outside the axis: the axis
    # repeats ``owner`` that many times (``[batch*heads, ...]``, see association.merged_axes)


@dataclass
class Patch:
    """A shape constant element or an attribute element that counts positions of the group.

    At apply time the element decreases by the number of positions of ``owner`` whose unit is removed.
    ``target`` is the constant's value name (kind "constant") or the node name (kind "attribute"), or,
    for kind "input", the shape Concat whose one-element input ``index`` read the (unpruned) count at
    run time: that input is replaced by a constant, the number of kept positions of ``owner``.
    """

    kind: str
    target: str
    index: int
    owner: np.ndarray
    attribute: str = ""


@dataclass
class PruningGroup:
    """Coupled association trees: channels that can only be removed together, as ``units``.

    ``unit_positions[u]`` lists the positions of unit ``u`` on the seed axis. ``slices`` holds every
    tensor axis that shrinks (root weights, biases, norms, activations, consumer slices, graph I/O);
    ``patches`` the shape constants and attributes that count the group's channels.
    """

    id: int
    seed: str
    seed_axis: int
    kind: str = "ffn"
    units: int = 0
    unit_size: int = 0
    slices: list[TensorSlice] = field(default_factory=list)
    patches: list[Patch] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    exact: bool = True
    notes: list[str] = field(default_factory=list)
    kept_whole: str = ""  # seed channels that belong to no unit, and the refusals that fixed them

    roots: list[tuple[str, int]] = field(default_factory=list)

    def root_slices(self) -> list[TensorSlice]:
        """Constant weights that produce the group's channels (MatMul/Gemm outputs, Conv filters, ...)."""
        keys = set(self.roots)
        return [s for s in self.slices if (s.name, s.axis) in keys]

    def leaf_slices(self) -> list[TensorSlice]:
        """Consumers' input slices: zeroing these in the dense model is what the oracle compares to."""
        return [s for s in self.slices if s.leaf]

    def summary(self) -> dict:
        """A JSON-friendly description (no owner arrays)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "seed": f"{self.seed}:{self.seed_axis}",
            "units": self.units,
            "unit_size": self.unit_size,
            "prunable": self.prunable,
            "reason": self.reason,
            "kept_whole": self.kept_whole,
            "exact": self.exact,
            "tensors": sorted({s.name for s in self.slices if s.constant}),
            "io": sorted({s.name for s in self.slices if s.io}),
            "nodes": len(self.nodes),
        }
