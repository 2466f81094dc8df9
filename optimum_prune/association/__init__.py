"""Node association trees: which tensors, nodes and constants must shrink with each channel group."""

from optimum_prune.association.builder import build_groups
from optimum_prune.association.tree import PruningGroup

__all__ = ["PruningGroup", "build_groups"]
