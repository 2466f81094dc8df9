"""Advice for ``report.json`` (``hints``): what a pruning did that the user probably did not mean, and the
option that changes it. A hint never changes the result; :func:`warn_mistakes` turns the ones that are
plain mistakes (nothing pruned, an ``exclude`` pattern that matches nothing) into a ``UserWarning``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

from optimum_prune.association.tree import PruningGroup
from optimum_prune.configuration import PruningConfig

CONV_WIDTH_MULTIPLE = 4
"""Kept channel counts of ``conv`` groups below a multiple of this make ONNX Runtime's CPU convolutions
slower than the dense model's (``benchmarks/cnn_quality.py``: 0.3x at exact counts, 2.3x faster at 16)."""

OVERSHOOT = 0.05
"""A params / FLOPs cut this much (absolute) above the one asked is reported (rounding steps)."""


def conv_width_hints(groups: Sequence[PruningGroup], removed: dict[int, set[int]]) -> list[str]:
    """Advice when pruned ``conv`` groups keep channel counts that are not multiples of
    :data:`CONV_WIDTH_MULTIPLE`, naming how many and the option that avoids it."""
    kept = {g.id: (g.units - len(removed[g.id])) * g.unit_size for g in groups
            if g.kind == "conv" and removed.get(g.id)}
    odd = [g for g in groups if g.id in kept and kept[g.id] % CONV_WIDTH_MULTIPLE]
    if not odd:
        return []
    return [f"{len(odd)} pruned conv group(s) keep channel counts that are not multiples of "
            f"{CONV_WIDTH_MULTIPLE} (e.g. {odd[0].seed}: {kept[odd[0].id]} channels); ONNX Runtime's CPU "
            "convolutions run several times slower on such widths. Fix: PruningConfig(round_to={'conv': 16}) "
            "(8 on CPUs without AVX-512)"]


def config_hints(groups: Sequence[PruningGroup], removed: dict[int, set[int]], config: PruningConfig, *,
                 cut: float | None = None) -> list[str]:
    """Advice on ``config`` against what it pruned: nothing pruned (and which kinds the model has), a kind
    in scope none of whose groups was pruned while the analysis refused some, head groups left whole
    because they resize the key/value cache, ``exclude`` patterns that match no group, and a params /
    FLOPs ``cut`` (the fraction removed) well above the ``sparsity`` asked."""
    hints: list[str] = []
    prunable = [g for g in groups if g.prunable]
    if config.sparsity > 0 and not any(removed.values()):
        in_scope = [g for g in prunable if g.kind in config.scope]
        have = Counter(g.kind for g in prunable)
        found = ", ".join(f"{k} ({n})" for k, n in sorted(have.items())) or "none"
        if not in_scope:
            hints.append(f"{NOTHING_PRUNED}: no prunable group of kind {', '.join(config.scope)}; this "
                         f"model's prunable groups: {found}. Fix: a scope among them (CLI: --scope)")
        else:
            hints.append(f"{NOTHING_PRUNED}: sparsity {config.sparsity} removes no unit of the "
                         f"{len(in_scope)} group(s) in scope (smallest: {min(g.units for g in in_scope)} "
                         "units, min_units and round_to kept). Fix: a higher sparsity or lower round_to")
    for kind in config.scope:
        refused = [g for g in groups if g.kind == kind and not g.prunable]
        if refused and not any(removed.get(g.id) for g in groups if g.kind == kind):
            hints.append(f"no {kind} group was pruned: the analysis refused {len(refused)} (e.g. "
                         f"{refused[0].seed}: {refused[0].reason}); ORTPruner.analyze() (CLI: prune analyze) "
                         "gives every reason")
    cache_heads = [g for g in prunable if g.kind == "heads" and "heads" in config.scope
                   and any(s.io for s in g.slices)]
    if cache_heads and not config.prune_kv_heads:
        hints.append(f"{len(cache_heads)} head group(s) resize the key/value cache and were left whole. Fix: "
                     "PruningConfig(prune_kv_heads=True) (CLI: --prune-kv-heads)")
    unmatched = [p for p in config.exclude if not any(p in g.seed for g in groups)]
    if unmatched:
        example = next((g.seed for g in prunable), None)
        hints.append(f"{UNMATCHED_EXCLUDE} {unmatched} match no group seed (seeds look like {example!r}; "
                     "ORTPruner.analyze() lists them), so they exclude nothing")
    if cut is not None and config.target in ("params", "flops") and cut > config.sparsity + OVERSHOOT:
        hints.append(f"the {config.target} cut is {cut:.3f}, above the {config.sparsity} asked: round_to "
                     f"{config.round_to} moves each group by whole steps. Fix: a lower round_to")
    return hints


NOTHING_PRUNED = "nothing was pruned"
UNMATCHED_EXCLUDE = "exclude pattern(s)"


def warn_mistakes(hints: Sequence[str]) -> None:
    """A ``UserWarning`` for each hint that is a plain mistake (nothing pruned, an unmatched exclude)."""
    for hint in hints:
        if hint.startswith((NOTHING_PRUNED, UNMATCHED_EXCLUDE)):
            warnings.warn(hint, UserWarning, stacklevel=3)
