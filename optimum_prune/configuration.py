"""Typed, validated configuration of a pruning run."""

from __future__ import annotations

from dataclasses import dataclass, field

from optimum_prune.association.tree import KINDS
from optimum_prune.errors import ConfigError

IMPORTANCE_CRITERIA = ("l1", "l2", "tree", "activation", "obs", "fidelity")
DEFAULT_IO_PATTERNS = ("past_key_values", "present", "past_key", "past_value")


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how.

    Args:
        sparsity: fraction of the units removed in every group of the chosen kinds, in [0, 1).
        scope: group kinds to prune, from ``("ffn", "heads", "conv", "hidden")``. ``hidden`` (the
            LayerNorm-coupled residual width) is never exact and must be asked for explicitly.
        importance: criterion that ranks units (ties keep the lower index): ``"l2"`` / ``"l1"`` (norm of
            the root weights), ``"tree"`` (normalised magnitudes of every tensor of the group),
            ``"activation"`` (Wanda-style, needs calibration data), ``"obs"`` (OBS saliency of the
            consumer rows; calibration optional) or ``"fidelity"`` (PAODING-style greedy output
            fidelity on generated inputs). See :mod:`optimum_prune.importance`.
        min_units: units always kept per group (at least one).
        exclude: substrings of seed tensor names whose groups are left alone.
        io_patterns: substrings of graph input/output names a group may resize (the KV cache).
        prune_kv_heads: also prune head groups that resize the KV cache (past/present). Off by default:
            optimum-onnx sizes the cache as ``hidden_size // num_attention_heads`` for most decoders,
            so such a folder would not ``generate`` with ``ORTModelForCausalLM``.
    """

    sparsity: float = 0.3
    scope: tuple[str, ...] = ("ffn", "heads")
    importance: str = "l2"
    min_units: int = 1
    exclude: tuple[str, ...] = ()
    io_patterns: tuple[str, ...] = field(default=DEFAULT_IO_PATTERNS)
    prune_kv_heads: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scope, str):
            object.__setattr__(self, "scope", tuple(s.strip() for s in self.scope.split(",") if s.strip()))
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}. Use e.g. sparsity=0.3 "
                              "to remove 30% of the units of every group.")
        unknown = [s for s in self.scope if s not in KINDS]
        if unknown or not self.scope:
            raise ConfigError(f"scope has unknown kinds {unknown or self.scope!r}; allowed: {KINDS}")
        if self.importance not in IMPORTANCE_CRITERIA:
            raise ConfigError(f"importance must be one of {IMPORTANCE_CRITERIA}, got {self.importance!r}")
        if not isinstance(self.min_units, int) or self.min_units < 1:
            raise ConfigError(f"min_units must be an integer >= 1, got {self.min_units!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "io_patterns", tuple(self.io_patterns))

    def to_dict(self) -> dict:
        """JSON-friendly form, stored in the plan and the report."""
        return {"sparsity": self.sparsity, "scope": list(self.scope), "importance": self.importance,
                "min_units": self.min_units, "exclude": list(self.exclude),
                "io_patterns": list(self.io_patterns), "prune_kv_heads": self.prune_kv_heads}
