"""Find every root and walk def-use from it to build the pruning groups.

A walk starts at a *seed* (the output-channel axis of a constant weight) with one unit per channel and
follows the graph both ways with an explicit worklist, applying the op rules, until no tracked tensor
axis changes. What it collects is the group: every tensor axis that shrinks, with an owner array
(position -> unit), the shape constants and attributes to patch, and the reasons it may not be pruned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from optimum_prune.association.einsum import EinsumEquationError, einsum_equation, einsum_labels
from optimum_prune.association.merged_axes import MERGED_AXIS_OPS, reads_kept_dimension
from optimum_prune.association.rules import Entry, RuleRegistry, default_registry
from optimum_prune.association.shape_expr import ShapeExprError, evaluate_dim_expr, is_marker
from optimum_prune.association.tree import Patch, PruningGroup, TensorSlice
from optimum_prune.association.units import UnitSets
from optimum_prune.graph import Shape, const_array, is_constant

_MAX_STEPS_PER_VALUE = 50
_MAX_KEEP_RETRIES = 8  # walks again from one seed with more channels kept whole (see _walk_keeping_whole)
_MAX_CARRIER_RETRIES = 6  # walks again with another axis carrying the units after a Reshape (_next_carriers)
_SAME = object()  # Walk.link: the linked axis is merged with the batch as the entry's axis is


class Refusal(Exception):
    """Raised inside a walk when the group cannot be pruned safely.

    ``keep``: unit ids whose channels, kept whole, would lift this refusal (the trailing heads a
    negative Slice bound counts from the end, say); the builder then walks the seed again without them.
    ``positional``: the refusal is about positions of an axis that a constant index or bound counts;
    when those are all the seed's channels, the axis cannot carry units, and another one may.
    """

    def __init__(self, reason: str, keep: np.ndarray | None = None, positional: bool = False) -> None:
        super().__init__(reason)
        self.keep = keep
        self.positional = positional


@dataclass
class DeferredRead:
    """A shape element read at run time from ``name``'s ``axis``, checked when the walk ends: the axis
    must shrink with the group, or the element be replaceable by a constant (``piece``: the shape
    Concat's one-element input holding it; ``owner``: the positions it counts)."""

    name: str
    axis: int
    why: str
    piece: tuple[str, int] | None = None
    owner: np.ndarray | tuple[str, int, int, int] | None = None
    value: ir.Value | None = None


@dataclass
class Walk:
    """The state of one walk from one seed; the API the op rules call."""

    model: ir.Model
    shapes: dict[str, Shape]
    registry: RuleRegistry
    n_units: int
    units: UnitSets = field(init=False)
    owners: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    values: dict[str, ir.Value] = field(default_factory=dict)
    leaves: set[tuple[str, int]] = field(default_factory=set)
    roots: list[tuple[str, int]] = field(default_factory=list)
    marks: set[str] = field(default_factory=set)
    non_exact_reasons: list[str] = field(default_factory=list)
    patches: dict[tuple[str, str, int, str], np.ndarray | tuple[str, int, int, int]] = field(
        default_factory=dict)
    deferred: list[DeferredRead] = field(default_factory=list)
    periods: dict[tuple[str, int], str] = field(default_factory=dict)
    period: str | None = None  # the period symbol of the entry being processed (see merged_axes)
    end_checks: dict[tuple, tuple[ir.Node, Callable[[], None]]] = field(default_factory=dict)
    claims: set[tuple] = field(default_factory=set)
    nodes: dict[str, None] = field(default_factory=dict)
    carrier_choices: dict[str, int] = field(default_factory=dict)  # Reshape -> index of its carrier axis
    choice_points: dict[str, int] = field(default_factory=dict)  # Reshape -> its carrier count, walk order
    current: ir.Node | None = None
    _source: tuple[str, int, int, int] | None = None
    _piece: tuple[str, int] | None = None  # (Concat node, input index) of the one-element piece traced
    _trace_period: str | None = None  # the period symbol of the shape element traced
    _stack: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.units = UnitSets(self.n_units)

    # ---- shapes -------------------------------------------------------------------------------
    def shape(self, value: ir.Value) -> Shape | None:
        """The inferred shape of ``value`` (ints, symbols or None per axis), or None."""
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape)
        s = self.shapes.get(value.name)
        if s is None and value.shape is not None:
            s = tuple(d if isinstance(d, int) else (str(d) if d is not None else None) for d in value.shape)
        if s is None:
            arr = const_array(value)
            if arr is not None:
                s = tuple(arr.shape)
        return s

    def rank(self, value: ir.Value) -> int:
        """The rank of ``value``; refuses the group when unknown."""
        s = self.shape(value)
        if s is None:
            self.fail(f"unknown shape of '{value.name}'")
        return len(s)

    def dim(self, value: ir.Value, axis: int):
        """One dimension of ``value`` (int, symbol or None)."""
        s = self.shape(value)
        if s is None or axis >= len(s):
            return None
        return s[axis]

    # ---- what rules call ----------------------------------------------------------------------
    def fail(self, reason: str, *, keep: np.ndarray | None = None, positional: bool = False) -> None:
        """Refuse the whole group, naming the node being processed.

        ``keep``: the units (ids, any representative) whose channels, kept whole, would lift the refusal;
        the builder may then walk the seed again with those channels fixed (see :func:`build_groups`).
        ``positional``: see :class:`Refusal`.
        """
        node = self.current
        where = (f" at node '{node.name}' ({node.domain or 'ai.onnx'}::{node.op_type})" if node is not None
                 else "")
        if keep is not None:
            keep = np.asarray(keep, dtype=np.int64)
            keep = keep[keep >= 0]
            keep = keep if keep.size else None
        raise Refusal(f"{reason}{where}", keep, positional)

    def choose_carrier(self, node: ir.Node, carriers: list[int]) -> int:
        """The axis of a Reshape's output block that carries the units: the outermost non-1 axis unless
        this walk was started with another choice (``[3, heads, head_dim]``: the heads, once the walk
        through the size-3 axis was refused). Records the choice point when there are several."""
        if len(carriers) > 1:
            self.choice_points.setdefault(node.name, len(carriers))
        return carriers[min(self.carrier_choices.get(node.name, 0), len(carriers) - 1)]

    def mark(self, tag: str) -> None:
        """Record a property of the group ("attention", "conv") used to name its kind."""
        self.marks.add(tag)

    def non_exact(self, reason: str) -> None:
        """Record a coupling that changes the function (normalisation over the channel axis)."""
        if reason not in self.non_exact_reasons:
            self.non_exact_reasons.append(reason)

    def leaf(self, value: ir.Value, axis: int) -> None:
        """Mark a consumer's input slice (zeroed by the exactness oracle)."""
        self.leaves.add((value.name, axis))

    def root(self, value: ir.Value, axis: int) -> None:
        """Mark a constant whose slices produce the group's channels (scored by magnitude criteria)."""
        key = (value.name, axis)
        if key not in self.roots:
            self.roots.append(key)

    def link(self, value: ir.Value | None, axis: int, owner: np.ndarray, *, period=_SAME) -> None:
        """Require ``value``'s ``axis`` to shrink with the group, positions owned as in ``owner``.

        ``period``: the symbolic dimension merged outside the axis (``owner`` is then one period of it, see
        :mod:`~optimum_prune.association.merged_axes`); by default the same as the entry's axis.
        """
        if value is None or not value.name:
            return
        owner = np.asarray(owner, dtype=np.int64)
        if owner.size and not (owner >= 0).any():
            return  # no position of the group: the axis keeps its size, nothing to follow
        period = self.period if period is _SAME else period
        dim = self.dim(value, axis)
        key = (value.name, axis)
        if period is not None:
            if is_constant(value) or value.is_graph_input() or value.is_graph_output():
                what = "a constant" if is_constant(value) else "a graph input or output"
                self.fail(f"'{value.name}' is {what} on an axis where {period} and the channels are merged")
            if isinstance(dim, int):
                self.fail(f"'{value.name}' axis {axis} has static size {dim} where {period} and the channels "
                          "are merged")
        elif isinstance(dim, int) and dim != owner.size:
            self.fail(f"'{value.name}' axis {axis} has size {dim}, expected {owner.size}")
        if key in self.owners and self.periods.get(key) != period:
            self.fail(f"'{value.name}' axis {axis} is reached both merged with the batch and not")
        if period is not None:
            self.periods[key] = period
        self.values[value.name] = value
        cur = self.owners.get(key)
        if cur is None:
            self.owners[key] = self.units.find(owner)
            self._stack.append(key)
            return
        if cur.size != owner.size:
            self.fail(f"'{value.name}' axis {axis} reached with two different sizes")
        if np.array_equal(cur, owner):
            return  # nothing new: the same positions, the same units
        a, b = self.units.find(cur), self.units.find(owner)
        self.units.union_pairs(a, b)
        merged = self.units.find(np.where(a >= 0, a, b))
        if not np.array_equal(merged, self.units.find(cur)) or not np.array_equal(cur, merged):
            grew = bool(((a < 0) & (b >= 0)).any())
            self.owners[key] = merged
            if grew:
                self._stack.append(key)

    def check_at_end(self, key: tuple, node: ir.Node, check: Callable[[], None]) -> None:
        """Run ``check`` once the walk reaches its fixpoint (final owners and units), as if at ``node``.

        For conditions on the final ownership of an axis, which can still grow while the walk runs;
        ``check`` calls :meth:`fail` to refuse the group. One check per ``key``.
        """
        self.end_checks.setdefault(key, (node, check))

    def require_merged(self, value: ir.Value, axis: int, period: str, like: tuple[str, int]) -> None:
        """Refuse the group unless ``value``'s ``axis`` is tracked, merged with ``period``, with the same
        positions as the tracked axis ``like`` (an end check: a count read from one sets the other)."""
        key = (value.name, axis)
        same = (key in self.owners and self.periods.get(key) == period and like in self.owners
                and np.array_equal(self.units.find(self.owners[key]), self.units.find(self.owners[like])))
        if not same:
            self.fail(f"the merged {period}*channel dimension read at run time sets axis {axis} of "
                      f"'{value.name}', which does not hold those channels")

    def claim(self, key: tuple) -> None:
        """Mark something that only one prunable group may depend on (like a patched shape element)."""
        self.claims.add(key)

    def patch_attribute(self, node: ir.Node, attribute: str, index: int, owner: np.ndarray) -> None:
        """Element ``index`` of ``node.attribute`` counts positions of ``owner``."""
        self._add_patch("attribute", node.name, index, attribute, owner)

    def patch_shape_element(self, shape_value: ir.Value, index: int, owner: np.ndarray, node: ir.Node, *,
                            reshape_input: ir.Value | None = None, allowzero: bool = False,
                            broadcast_ok: bool = False,
                            source: tuple[ir.Value, int, int, int] | None = None,
                            period: str | None = None) -> None:
        """Element ``index`` of the 1-D shape tensor ``shape_value`` counts the positions of ``owner``.

        Traces the element back to a constant (patched) or to a dimension read at run time with Shape
        (checked to belong to this group at the end of the walk); anything else refuses the group.
        ``source`` = (value, axis, lo, hi): the element counts positions lo:hi of that tracked axis, read
        when the walk ends (ownership can still grow while the walk runs). ``period``: the element counts
        a merged axis, ``period * owner.size`` (see :mod:`~optimum_prune.association.merged_axes`).
        """
        self._source = None if source is None else (source[0].name, source[1], source[2], source[3])
        self._piece = None  # set by a shape Concat on the way; never carried over from another element
        self._trace_period = period
        try:
            self._trace_shape(shape_value, index, owner, reshape_input, allowzero, broadcast_ok, depth=0)
        finally:
            self._source = self._piece = self._trace_period = None

    def patch_constant(self, value: ir.Value, index: int, owner) -> None:
        """Element ``index`` of the constant behind ``value`` (an initializer or Constant node, through
        Identity) counts the positions of ``owner``."""
        self._add_patch("constant", _constant_holder(value).name, index, "", owner)

    # ---- internals ----------------------------------------------------------------------------
    def _add_patch(self, kind: str, target: str, index: int, attribute: str, owner) -> None:
        self.patches[(kind, target, index, attribute)] = (
            owner if isinstance(owner, tuple) else np.asarray(owner, dtype=np.int64))

    def patch_owner(self, owner) -> np.ndarray:
        """Resolve a patch's owner: an array, or a (name, axis, lo, hi) range of a tracked axis."""
        if isinstance(owner, tuple):
            name, axis, lo, hi = owner
            return self.owners[(name, axis)][lo:hi]
        return owner

    def _trace_shape(self, value: ir.Value, index: int, owner: np.ndarray, reshape_input: ir.Value | None,
                     allowzero: bool, broadcast_ok: bool, depth: int) -> None:
        if depth > 32:
            self.fail("shape expression too deep to trace")
        arr = const_array(value)
        if arr is not None:
            flat = arr.reshape(-1)
            if index >= flat.size:
                self.fail(f"shape constant '{value.name}' has no element {index}")
            elem = int(flat[index])
            if elem == -1 and reshape_input is not None:
                return
            if elem == 0 and reshape_input is not None and not allowzero:
                self.deferred.append(DeferredRead(reshape_input.name, index, "Reshape copies this dimension"))
                return
            if elem in (1, -1) and broadcast_ok:
                return  # Expand keeps the input dimension for 1 (and -1 in exporters' Where(-1 -> 1) idiom)
            if elem != owner.size or self._trace_period is not None:
                expected = owner.size if self._trace_period is None else f"{self._trace_period}*{owner.size}"
                self.fail(f"shape constant '{value.name}'[{index}] is {elem}, expected {expected}")
            self.patch_constant(value, index, self._source or owner)
            return
        node = value.producer()
        if node is None:
            self.fail(f"shape value '{value.name}' is a graph input")
        op = node.op_type

        def trace(v: ir.Value, i: int) -> None:
            self._trace_shape(v, i, owner, reshape_input, allowzero, broadcast_ok, depth + 1)

        if op not in ("Unsqueeze", "Squeeze", "Identity", "Gather", "Shape"):
            self._piece = None  # the value read is transformed on the way: no one-element piece to replace
        if op == "Concat":
            offset = 0
            for slot, inp in enumerate(node.inputs):
                n = self.dim(inp, 0) if self.rank(inp) == 1 else 1
                if not isinstance(n, int):
                    self.fail("shape Concat with a piece of unknown length")
                if index < offset + n:
                    self._piece = (node.name, slot) if n == 1 and len(value.uses()) == 1 else None
                    trace(inp, index - offset)
                    return
                offset += n
            self.fail("shape Concat shorter than expected")
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape", "Floor", "Ceil"):
            trace(node.inputs[0], index)
            return
        if op == "Shape":
            start = int(node.attributes["start"].value) if "start" in node.attributes else 0
            x = node.inputs[0]
            rank = self.rank(x)
            start = start + rank if start < 0 else start
            axis = start + index
            axis = axis + rank if axis < 0 else axis
            if self._trace_period is not None:
                self._defer_merged_read(node, x, axis)
                return
            self.deferred.append(DeferredRead(x.name, axis, f"shape read by '{node.name}'", self._piece,
                                              self._source or owner, x))
            return
        if op == "Gather":
            idx = const_array(node.inputs[1])
            if idx is None:
                self.fail("shape Gather with computed index")
            j = int(idx.reshape(-1)[index if idx.size > 1 else 0])
            if j < 0:
                n = self.dim(node.inputs[0], 0)
                if not isinstance(n, int):
                    self.fail("shape Gather with a negative index into a vector of unknown length")
                j += n
            trace(node.inputs[0], j)
            return
        if op == "Slice":
            trace(node.inputs[0], index + self._shape_slice_start(node))
            return
        if op in ("Mul", "Div", "Add", "Sub"):
            dynamic = [v for v in node.inputs if v is not None and not is_constant(v)]
            if not dynamic:
                self.fail("shape arithmetic on constants only")
            if op == "Mul" and len(dynamic) == 1 and self._patch_factor(node, dynamic[0], index, owner):
                return
            for v in dynamic:
                trace(v, index if self.rank(v) else 0)
            return
        if op == "Where":
            for v in node.inputs[1:]:
                prod = v.producer()
                if (prod is not None and prod.op_type == "ConstantOfShape") or _is_marker_fill(node, v):
                    continue
                trace(v, index)
            return
        if op == "ConstantOfShape":
            return
        self.fail(f"cannot trace shape element {index} through {op} '{node.name}'")

    def _shape_slice_start(self, node: ir.Node) -> int:
        """Where a Slice of a shape vector starts, as ONNX resolves it: a negative start counts from the
        end and the result is clamped to the vector (the dynamo exporter takes ``shape[:-2]`` as a Slice
        from ``INT64_MIN``). Computed starts and steps other than 1 are refused."""
        starts = const_array(node.inputs[1])
        if starts is None:
            self.fail("shape Slice with computed start")
        steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
        if steps is not None and int(steps.reshape(-1)[0]) != 1:
            self.fail("shape Slice with a step other than 1")
        start = int(starts.reshape(-1)[0])
        if start < 0:
            n = self.dim(node.inputs[0], 0)
            if not isinstance(n, int):
                self.fail("shape Slice with a negative start into a vector of unknown length")
            start = max(start + n, 0)
        return start

    def _patch_factor(self, node: ir.Node, dynamic: ir.Value, index: int, owner: np.ndarray) -> bool:
        """``dim * c`` where ``dim`` is read at run time from an axis of static size 1 and the constant ``c``
        counts the channels (``num_key_value_heads * n_rep`` with one key/value head, as ``repeat_kv``
        exports it): patch ``c``. For a merged axis (``batch * num_heads``), ``dim`` is the period symbol
        read from an axis that keeps its size. False when the element has another form."""
        const = next(v for v in node.inputs if v is not None and v is not dynamic)
        arr = const_array(const)
        if arr is None or arr.size == 0:
            return False
        k = index if arr.size > 1 else 0
        if int(arr.reshape(-1)[k]) != owner.size:
            return False
        if self._trace_period is not None:  # batch * heads: batch must keep its size
            if not reads_kept_dimension(self, dynamic, index if self.rank(dynamic) else 0, self._trace_period,
                                        node):
                return False
            self.patch_constant(const, k, self._source or owner)
            return True
        try:
            other = evaluate_dim_expr(dynamic, index if self.rank(dynamic) else 0, None, -1,
                                      np.zeros(1, dtype=np.int64), self.shape)
        except ShapeExprError:
            return False
        if not (other.known[0] and other.values[0] == 1):
            return False
        self.patch_constant(const, k, self._source or owner)
        return True

    def _defer_merged_read(self, shape_node: ir.Node, x: ir.Value, axis: int) -> None:
        """The merged element of a target shape is read from ``x``'s ``axis``: that axis must be the same
        merged axis (the graph then recomputes the pruned count)."""
        period, target = self._trace_period, self._source
        if target is None:
            self.fail("a merged batch*channel element read at run time for an untracked axis")
        self.check_at_end(("merged source", x.name, axis, target[0], target[1]), shape_node,
                          lambda: self.require_merged(x, axis, period, (target[0], target[1])))

    def run(self, seed: ir.Value, axis: int, fixed: np.ndarray | None = None) -> None:
        """Walk from ``seed``'s ``axis`` to a fixpoint; ``fixed`` (a mask of the seed's channels) are kept
        whole: they belong to no unit."""
        self.values[seed.name] = seed
        owner = np.arange(self.n_units, dtype=np.int64)
        if fixed is not None:
            owner[fixed] = -1  # an all-False mask changes nothing
        self.link(seed, axis, owner)
        steps = 0
        limit = _MAX_STEPS_PER_VALUE * max(1, len(self.model.graph.initializers) + len(self.model.graph))
        while self._stack:
            steps += 1
            if steps > limit:
                self.fail("the walk did not converge")
            name, ax = self._stack.pop()
            value = self.values[name]
            owner = self.units.find(self.owners[(name, ax)])
            self.period = self.periods.get((name, ax))
            producer = value.producer()
            if producer is not None:
                self._apply(producer, Entry(value, ax, owner, True, value.index() or 0))
            for use in value.uses():
                self._apply(use.node, Entry(value, ax, owner, False, use.idx))
        for node, check in list(self.end_checks.values()):
            self.current = node
            check()
        self.current = None
        self.period = None
        for read in self.deferred:
            if (read.name, read.axis) in self.owners:
                continue  # the dimension read shrinks with the group: the graph recomputes the element
            if not self._replace_read(read):
                self.current = None
                self.fail(f"a shape element that must shrink is read from '{read.name}' axis {read.axis}, "
                          f"which does not shrink with the group ({read.why})")

    def _replace_read(self, read: DeferredRead) -> bool:
        """A shape element read at run time from a tensor that keeps its size (``reshape(batch, seq,
        embed_dim)`` with ``embed_dim`` read from the unpruned residual stream) but that must count the
        group's positions: when the dimension read is static and equals that count, the one-element piece
        of the shape Concat holding it becomes a constant, patched like any other. False otherwise."""
        if read.piece is None or read.owner is None or read.value is None:
            return False
        dim = self.dim(read.value, read.axis)
        size = len(self.patch_owner(read.owner))
        if not isinstance(dim, int) or dim != size:
            return False
        self._add_patch("input", read.piece[0], read.piece[1], "", read.owner)
        return True

    def _apply(self, node: ir.Node, entry: Entry) -> None:
        self.current = node
        self.nodes[node.name] = None
        rule = self.registry.get(node)
        standard = node.domain in ("", "ai.onnx")
        if self.period is not None and not (standard and node.op_type in MERGED_AXIS_OPS):
            raise Refusal(f"{node.domain or 'ai.onnx'}::{node.op_type} on an axis where {self.period} and "
                          f"the channels are merged (node '{node.name}')")
        if rule is None:
            raise Refusal(
                f"no association rule for op {node.domain or 'ai.onnx'}::{node.op_type} "
                f"(node '{node.name}'); "
                "register one with RuleRegistry.register or exclude the group"
            )
        try:
            rule(node, entry, self)
        except Refusal:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise Refusal(
                f"rule for {node.op_type} failed at node '{node.name}': {type(e).__name__}: {e}"
            ) from e
        self.current = None


def _is_marker_fill(where: ir.Node, branch: ir.Value) -> bool:
    """``Where(shape == -1, ones, shape)`` (Expand's target as exporters write it) with the ones folded
    into a constant: the ones replace only the -1 markers, so the element is the other branch's."""
    arr = const_array(branch)
    cond = where.inputs[0].producer() if where.inputs[0] is not None else None
    if arr is None or not (arr == 1).all() or cond is None or cond.op_type != "Equal" \
            or branch is not where.inputs[1]:
        return False
    other = where.inputs[2]
    if other not in cond.inputs:
        return False
    marker = cond.inputs[1] if cond.inputs[0] is other else cond.inputs[0]
    return const_array(marker) is not None and is_marker(marker, 0, lambda v: None)


def _constant_holder(value: ir.Value) -> ir.Value:
    """The initializer or Constant-node output behind ``value`` (through Identity)."""
    while value.const_value is None:
        node = value.producer()
        if node is None or node.op_type != "Identity":
            return value
        value = node.inputs[0]
    return value


# ---------------------------------------------------------------------------------------------------


def find_seeds(model: ir.Model, shapes: dict[str, Shape]) -> list[tuple[ir.Value, int]]:
    """Every root: output-channel axes of constant MatMul/Gemm/Conv weights and embedding tables."""
    seeds: list[tuple[ir.Value, int]] = []
    for node in model.graph:
        op, dom = node.op_type, node.domain
        ins = node.inputs

        def add(v: ir.Value | None, axis: int) -> None:
            if v is not None and is_constant(v):
                arr_shape = _const_shape(v)
                if arr_shape is not None and len(arr_shape) > axis and arr_shape[axis] > 1:
                    seeds.append((v, axis))

        if dom in ("", "ai.onnx"):
            if op == "MatMul" and len(ins) > 1 and ins[1] is not None:
                s = _const_shape(ins[1])
                if s is not None and len(s) >= 2:
                    add(ins[1], len(s) - 1)
            elif op == "Gemm":
                tb = int(node.attributes["transB"].value) if "transB" in node.attributes else 0
                add(ins[1], 0 if tb else 1)
            elif op == "Conv":
                add(ins[1], 0)
            elif op == "ConvTranspose":
                add(ins[1], 1)
            elif op == "Einsum":
                for v, axis in _einsum_projection_axes(node, shapes):
                    add(v, axis)
            elif op == "Gather":
                axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
                s = _const_shape(ins[0])
                if axis == 0 and s is not None and len(s) == 2:
                    add(ins[0], 1)
        elif dom == "com.microsoft":
            if op == "Attention":
                add(ins[1], 1)
            elif op == "EmbedLayerNormalization":
                add(ins[2], 1)
            elif op == "FusedMatMul":
                s = _const_shape(ins[1])
                if s is not None and len(s) >= 2:
                    tb = int(node.attributes["transB"].value) if "transB" in node.attributes else 0
                    add(ins[1], len(s) - 2 if tb else len(s) - 1)
    return seeds


def _einsum_projection_axes(node: ir.Node, shapes: dict[str, Shape]) -> list[tuple[ir.Value, int]]:
    """The output-channel axes of an Einsum's constant projections: operands of rank 2 or more that sum
    a label away (``d`` of ``bsd,dn->bsn``), at the labels only they have and the output keeps (``n``).
    A constant that sums nothing (ESM's rotary ``inv_freq`` in ``i,j->ij``) is not a projection."""
    operand_shapes = [None if v is None else _operand_shape(v, shapes) for v in node.inputs]
    if any(shape is None for shape in operand_shapes):
        return []
    try:
        in_labels, out_labels = einsum_labels(einsum_equation(node), [len(s) for s in operand_shapes])
    except EinsumEquationError:
        return []  # the walk that reaches it names the equation
    axes = []
    for i, (v, labels) in enumerate(zip(node.inputs, in_labels, strict=True)):
        if v is None or not is_constant(v) or len(labels) < 2 or all(lab in out_labels for lab in labels):
            continue
        others = {lab for j, other in enumerate(in_labels) if j != i for lab in other}
        axes += [(v, ax) for ax, lab in enumerate(labels) if lab in out_labels and lab not in others
                 and isinstance(lab, str) and labels.count(lab) == 1]
    return axes


def _operand_shape(v: ir.Value, shapes: dict[str, Shape]) -> Shape | None:
    shape = _const_shape(v)
    return shape if shape is not None else shapes.get(v.name)


def _const_shape(v: ir.Value) -> tuple[int, ...] | None:
    while v is not None:
        if v.const_value is not None:
            return tuple(int(d) for d in v.const_value.shape)
        node = v.producer()
        if node is None:
            return None
        if node.op_type == "Constant":
            arr = const_array(v)
            return None if arr is None else arr.shape
        if node.op_type != "Identity":
            return None
        v = node.inputs[0]
    return None


def build_groups(model: ir.Model, shapes: dict[str, Shape], registry: RuleRegistry | None = None,
                 io_patterns: tuple[str, ...] = ()) -> list[PruningGroup]:
    """Build every pruning group of ``model``.

    ``io_patterns``: substrings of graph input/output names that a group may resize (the KV cache);
    a group that would resize any other graph input or output is refused.
    """
    registry = registry or default_registry()
    groups: list[PruningGroup] = []
    pruned_axes: set[tuple[str, int]] = set()  # tensor axes of the prunable groups: their seeds are walked
    # seed axes a refused walk covered one channel per unit: walking from them again would start from
    # the same units over the same coupling and be refused the same way
    refused_axes: set[tuple[str, int]] = set()
    refused_reach: set[tuple[str, int]] = set()  # every tensor axis a refused walk reached
    # groups patching one element count disjoint positions of the axis it sets (a Concat of two groups'
    # heads): the element then shrinks by the sum of their removals
    patch_owner: dict[tuple[str, str, int, str], list[tuple[int, np.ndarray]]] = {}
    claim_owner: dict[tuple, int] = {}
    for seed, axis in find_seeds(model, shapes):
        key = (seed.name, axis)
        if key in pruned_axes or key in refused_axes:
            continue
        # a refused walk that reached this seed with coarser units (a rotary table's head_dim positions,
        # shared by every head of the projection) says nothing about the seed's own units (its heads)
        revisit = key in refused_reach
        n = _const_shape(seed)[axis]
        group = PruningGroup(id=len(groups), seed=seed.name, seed_axis=axis)
        walk = _walk_keeping_whole(model, shapes, registry, seed, axis, n, group)
        _finalize(group, walk, io_patterns)
        if group.prunable:
            _refuse_shared(group, walk, patch_owner, claim_owner)
        if not group.prunable:
            refused_axes.update(k for k, owner in walk.owners.items() if _one_channel_per_unit(walk, owner))
            if revisit:
                continue  # the seed is reported in the group that reached it already
            refused_reach.update(walk.owners)
        else:
            pruned_axes.update(walk.owners)
            for p in group.patches:
                patch_owner.setdefault((p.kind, p.target, p.index, p.attribute), []).append(
                    (group.id, p.owner))
            for k in walk.claims:
                claim_owner[k] = group.id
        groups.append(group)
    return groups


def _one_channel_per_unit(walk: Walk, owner: np.ndarray) -> bool:
    canonical = walk.units.find(owner)
    return bool((canonical >= 0).all()) and np.unique(canonical).size == canonical.size


def _refuse_shared(group: PruningGroup, walk: Walk, patch_owner: dict, claim_owner: dict) -> None:
    """Refuse ``group`` when it would patch a shape element at positions an earlier prunable group patches,
    or claims a node an earlier group claimed. (Two groups that slice one tensor axis compose: the axis
    loses the union of their positions.)"""
    for p in group.patches:
        key = (p.kind, p.target, p.index, p.attribute)
        other = next((gid for gid, owner in patch_owner.get(key, ())
                      if owner.size != p.owner.size or ((owner >= 0) & (p.owner >= 0)).any()), None)
        if other is not None:
            group.prunable = False
            group.reason = f"shares the shape element {p.target}[{p.index}] with group {other}"
            return
    for key in sorted(walk.claims, key=repr):
        if key in claim_owner:
            group.prunable = False
            group.reason = f"shares {key[0]} '{key[1]}' with group {claim_owner[key]}"
            return


def _walk_keeping_whole(model: ir.Model, shapes: dict[str, Shape], registry: RuleRegistry, seed: ir.Value,
                        axis: int, n: int, group: PruningGroup) -> Walk:
    """Walk from ``seed``; when the walk is refused for channels that could simply be kept whole (the
    refusal names their units: a fused QKV projection's single key/value head, sliced off by a bound
    counted from the end), walk again with those channels fixed, so the rest of the seed stays prunable.
    When a refusal names no such channels and a Reshape on the way split the channels over several axes,
    walk again with the next of those axes carrying the units (:func:`_next_carriers`: ModernBERT's
    ``[batch, seq, 3, heads, head_dim]``, whose size-3 axis is split off into q, k and v, carries its heads
    on the next axis). Any walk that completes is exact; the refusal reported is the first walk's.

    Each keep retry fixes at least one more channel; at most :data:`_MAX_KEEP_RETRIES` of them and
    :data:`_MAX_CARRIER_RETRIES` carrier retries. Sets ``group.prunable`` / ``group.reason`` when the walk
    is refused for good, and ``group.kept_whole``.
    """
    fixed = np.zeros(n, dtype=bool)
    kept: list[str] = []
    choices: dict[str, int] = {}
    first_refusal: str | None = None
    keep_retries = carrier_retries = 0
    while True:
        walk = Walk(model, shapes, registry, n, carrier_choices=dict(choices))
        try:
            walk.run(seed, axis, fixed)
            break
        except Refusal as e:
            grow = np.zeros(n, dtype=bool) if e.keep is None else (
                np.isin(walk.units.find(np.arange(n)), walk.units.find(e.keep)) & ~fixed)
            keeps_all = bool((fixed | grow).all())
            if grow.any() and not keeps_all and keep_retries < _MAX_KEEP_RETRIES:
                keep_retries += 1
                fixed |= grow
                kept.append(str(e))
                continue
            first_refusal = first_refusal or str(e)
            # a refusal that names channels is about those channels, not about the axis carrying them,
            # unless a constant index counts every position of that axis (q, k and v gathered off the
            # size-3 axis of a fused projection, when it carries the units)
            about_axis = e.keep is None or (keeps_all and e.positional)
            following = _next_carriers(walk, choices) if about_axis else None
            if following is None or carrier_retries >= _MAX_CARRIER_RETRIES:
                group.prunable, group.reason = False, first_refusal
                break
            carrier_retries += 1
            choices, fixed, kept, keep_retries = following, np.zeros(n, dtype=bool), [], 0
    if kept:
        group.kept_whole = f"{int(fixed.sum())} of {n} channels kept whole: " + "; ".join(kept)
    return walk


def _next_carriers(walk: Walk, choices: dict[str, int]) -> dict[str, int] | None:
    """The next carrier choices to try, depth first: the last Reshape the refused walk met that has an
    untried carrier axis moves to its next one, the Reshapes met after it go back to their first; None
    when every choice was tried."""
    met = list(walk.choice_points.items())
    for pos in range(len(met) - 1, -1, -1):
        name, n_carriers = met[pos]
        current = choices.get(name, 0)
        if current + 1 < n_carriers:
            later = {other for other, _ in met[pos + 1:]}
            return {**{k: v for k, v in choices.items() if k not in later}, name: current + 1}
    return None


def _finalize(group: PruningGroup, walk: Walk, io_patterns: tuple[str, ...]) -> None:
    seed_owner = walk.units.find(walk.owners.get((group.seed, group.seed_axis), np.arange(walk.n_units)))
    roots_in_order = list(dict.fromkeys(int(r) for r in seed_owner if r >= 0))
    index = {r: i for i, r in enumerate(roots_in_order)}

    lut = np.full(walk.n_units + 1, -1, dtype=np.int64)  # last slot maps -1 (unowned) to -1
    for r, i in index.items():
        lut[r] = i

    def renumber(owner: np.ndarray) -> np.ndarray:
        return lut[walk.units.find(owner)]

    group.units = len(roots_in_order)
    group.unit_size = int(np.bincount(renumber(seed_owner)[seed_owner >= 0]).max()) if group.units else 0
    for (name, axis), owner in walk.owners.items():
        value = walk.values[name]
        io = "input" if value.is_graph_input() else ("output" if value.is_graph_output() else None)
        group.slices.append(TensorSlice(name=name, axis=axis, owner=renumber(owner),
                                        constant=is_constant(value), leaf=(name, axis) in walk.leaves, io=io,
                                        merged_with=walk.periods.get((name, axis))))
        if io and group.prunable and not any(p in name for p in io_patterns):
            group.prunable = False
            group.reason = f"would change the shape of graph {io} '{name}'"
    for (kind, target, idx, attribute), owner in walk.patches.items():
        if isinstance(owner, tuple) and (owner[0], owner[1]) not in walk.owners:
            continue  # the walk was refused before that axis was reached
        group.patches.append(Patch(kind=kind, target=target, index=idx,
                                   owner=renumber(walk.patch_owner(owner)), attribute=attribute))
    group.roots = [r for r in walk.roots if r in walk.owners]
    group.nodes = list(walk.nodes)
    group.exact = not walk.non_exact_reasons
    group.notes = list(walk.non_exact_reasons)
    if not group.exact:
        group.kind = "hidden"
    elif "conv" in walk.marks:
        group.kind = "conv"
    elif "attention" in walk.marks:
        group.kind = "heads"
    else:
        group.kind = "ffn"
    if group.prunable and group.units < 2:
        group.prunable = False
        group.reason = "all channels are coupled into one unit"
