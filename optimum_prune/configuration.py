"""Typed, validated configuration of a pruning run."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from optimum_prune.association.tree import KINDS
from optimum_prune.errors import ConfigError

IMPORTANCE_CRITERIA = ("l1", "l2", "tree", "activation", "fluctuation", "obs", "fidelity")
DEFAULT_IO_PATTERNS = ("past_key_values", "present", "past_key", "past_value")
RECOVERY_METHODS = ("lstsq", "mask", "bias")
ALLOCATIONS = ("uniform", "global", "standardized")
TARGETS = ("units", "params", "flops", "latency")
RIDGES = ("identity", "diagonal")


@dataclass(frozen=True)
class RecoveryConfig:
    """How the consumers of pruned groups are repaired (``PruningConfig(recover=...)``).

    For every consumer ``y = x @ W (+ b)`` of a pruned group (the MatMul/Gemm whose input rows are the
    group's leaf slices), the kept rows ``W_S`` and the bias are refitted on calibration activations so
    the pruned layer reproduces the dense layer's output. See :mod:`optimum_prune.recovery`.

    Args:
        method: ``"lstsq"``: ridge least squares over the kept rows and the bias (Kwon et al.'s mask
            tuning, solved from Gram matrices); ``"bias"``: only the bias absorbs the mean contribution
            of the removed channels (FLAP's bias compensation, the one-column special case).
        damp: ridge strength relative to the mean diagonal of the kept channels' Gram matrix (0.3 was
            best of 0.001-1 on all-MiniLM-L6-v2 with 128 calibration sentences).
        prior: what the ridge pulls the kept rows towards: ``"kept"`` (their dense values, so weak data
            changes them little) or ``"zero"`` (plain ridge, ``lambda ||W'||^2``).
        sequential: fit each consumer on the inputs of the model pruned and repaired so far (layer by
            layer, as Kwon et al.), with the dense model's output as the target; else (default) on the
            dense model's inputs, one capture pass. On all-MiniLM-L6-v2 with 128 calibration sentences
            the dense-statistics fit generalised as well or better to held-out text and ran 4x faster
            (the sequential fit matches the calibration set more closely: it overfits).
        bias: refit the bias too (an ``Add`` is created after a consumer that has none).
        residual: sequential only: when the consumer's output is added to a residual stream, also
            absorb the difference between the dense and the pruned model's residual input (the layer
            then corrects the error carried from upstream, not only its own).
        max_tensors_per_run: tensors captured per ONNX Runtime run (non-sequential capture).
        cv_folds: 0 (default): every consumer uses ``damp``. ``k >= 2``: each consumer picks its own
            ridge strength from ``damp_grid`` by ``k``-fold cross-validation over the calibration batches
            (batch ``i`` in fold ``i % k``): the value whose fits on ``k - 1`` folds reconstruct the
            held-out fold's layer output best, then refitted on all of them. Needs ``method="lstsq"``
            and at least ``k`` calibration batches; the statistics are held once per fold.
        damp_grid: the ridge strengths ``cv_folds`` chooses from (relative, as ``damp``).
        norm_weighted: sequential only: when the consumer's output reaches a LayerNormalization (or an
            RMS norm) through its residual ``Add``, weight each position's squared error by the inverse
            variance (mean square) of the dense model's normalised input there, which is how much
            the norm scales that position's error; the fit then matches the normalised output rather
            than the raw stream, where a few high-norm positions would dominate.
    """

    method: str = "lstsq"
    damp: float = 0.3
    prior: str = "kept"
    ridge: str = "identity"
    sequential: bool = False
    bias: bool = True
    residual: bool = True
    max_tensors_per_run: int = 16
    cv_folds: int = 0
    damp_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
    norm_weighted: bool = False

    def __post_init__(self) -> None:
        if self.method not in RECOVERY_METHODS:
            raise ConfigError(f"RecoveryConfig.method must be one of {RECOVERY_METHODS}, got {self.method!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, int | float) or not self.damp >= 0:
            raise ConfigError(f"RecoveryConfig.damp must be a number >= 0, got {self.damp!r}")
        if self.ridge not in RIDGES:
            raise ConfigError(f"RecoveryConfig.ridge must be one of {RIDGES}, got {self.ridge!r}")
        if self.prior not in ("kept", "zero"):
            raise ConfigError(f"RecoveryConfig.prior must be 'kept' or 'zero', got {self.prior!r}")
        for name in ("sequential", "bias", "residual", "norm_weighted"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"RecoveryConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if (isinstance(self.max_tensors_per_run, bool) or not isinstance(self.max_tensors_per_run, int)
                or self.max_tensors_per_run < 1):
            raise ConfigError("RecoveryConfig.max_tensors_per_run must be an integer >= 1, got "
                              f"{self.max_tensors_per_run!r}")
        if (isinstance(self.cv_folds, bool) or not isinstance(self.cv_folds, int) or self.cv_folds < 0
                or self.cv_folds == 1):
            raise ConfigError("RecoveryConfig.cv_folds must be 0 (off) or an integer >= 2, got "
                              f"{self.cv_folds!r}")
        if self.cv_folds and self.method != "lstsq":
            raise ConfigError(f"RecoveryConfig.cv_folds chooses the ridge of method 'lstsq'; method "
                              f"{self.method!r} has none: set cv_folds=0 or method='lstsq'")
        if self.norm_weighted and not self.sequential:
            raise ConfigError("RecoveryConfig.norm_weighted weights the sequential fit: set sequential=True "
                              "or norm_weighted=False")
        grid = self.damp_grid
        if isinstance(grid, list):  # from YAML / JSON
            grid = tuple(grid)
            object.__setattr__(self, "damp_grid", grid)
        if (not isinstance(grid, tuple) or not grid
                or any(isinstance(d, bool) or not isinstance(d, int | float) or not d > 0 for d in grid)):
            raise ConfigError(f"RecoveryConfig.damp_grid must be a non-empty list of numbers > 0, "
                              f"got {grid!r}")

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"method": self.method, "damp": self.damp, "prior": self.prior, "ridge": self.ridge,
                "sequential": self.sequential,
                "bias": self.bias, "residual": self.residual, "max_tensors_per_run": self.max_tensors_per_run,
                "cv_folds": self.cv_folds, "damp_grid": list(self.damp_grid),
                "norm_weighted": self.norm_weighted}

    @classmethod
    def from_dict(cls, d: dict) -> RecoveryConfig:
        """Inverse of :meth:`to_dict` (unknown keys are rejected)."""
        unknown = sorted(set(d) - set(cls().to_dict()))
        if unknown:
            raise ConfigError(f"unknown RecoveryConfig keys {unknown}; allowed: {sorted(cls().to_dict())}")
        return cls(**d)


@dataclass(frozen=True)
class PruningConfig:
    """What to prune and how.

    Args:
        sparsity: fraction removed, in [0, 1): of the units of every group (``target="units"``,
            uniform), of every kind's units (``"units"``, global), or of the whole model's parameters
            or FLOPs (``"params"`` / ``"flops"``; FLOPs at batch 1 x 128 tokens, MatMul/Gemm/Conv).
        scope: group kinds to prune, from ``("ffn", "heads", "conv", "hidden")``. ``hidden`` (the
            LayerNorm-coupled residual width) is never exact and must be asked for explicitly.
        importance: criterion that ranks units (ties keep the lower index): ``"l2"`` / ``"l1"`` (norm of
            the root weights), ``"tree"`` (normalised magnitudes of every tensor of the group),
            ``"activation"`` (Wanda-style, needs calibration data), ``"fluctuation"`` (FLAP: activation
            variance times squared weight norm, for use with repair; needs calibration data), ``"obs"``
            (OBS saliency of the consumer rows; calibration optional) or ``"fidelity"`` (PAODING-style
            greedy output fidelity on generated inputs). See :mod:`optimum_prune.importance`.
        importance_options: keyword arguments of the criterion's class, e.g. ``{"rounds": 1}`` for a
            one-shot ``fidelity`` or ``{"iterative": False}`` for ``obs``.
        min_units: units always kept per group (at least one, so every layer keeps a head / KV group).
        allocation: ``"uniform"`` (every group loses the same share), ``"global"`` (units of every
            layer ranked together by their score normalised per kind, divided by their normalised cost
            for params/FLOPs targets) or ``"standardized"`` (ranked together by their score standardised
            within their own group, FLAP's adaptive structure: a layer whose scores spread widely keeps
            more units); see :mod:`optimum_prune.allocation`. Head groups that resize a KV cache always
            take the uniform share, since config.json holds one KV-head count.
        target: what ``sparsity`` measures: ``"units"``, ``"params"``, ``"flops"`` or ``"latency"``
            (ONNX Runtime latency estimated from a per-block latency table; see
            :mod:`optimum_prune.latency`).
        latency_table: for ``target="latency"``: a :class:`~optimum_prune.latency.LatencyTable`, its dict,
            or a JSON file; ``None`` measures one while planning (batch 32 x 64 tokens, 7 widths per
            block, a few seconds on MiniLM).
        round_to: kept units per group rounded to a multiple of this (an int for every kind, or a dict
            by kind, e.g. ``{"ffn": 8}``); a budget is then met within one rounding step per group.
        exclude: substrings of seed tensor names whose groups are left alone.
        io_patterns: substrings of graph input/output names a group may resize (the KV cache).
        prune_kv_heads: also prune head groups that resize the KV cache (past/present). Off by default,
            since it changes what the runtime must feed: Optimum sizes the first, empty cache from
            ``config.json``. Where ``config.json`` can record the pruned count (a key/value-head count,
            the same share in every layer, a runtime that reads it) it is recorded; elsewhere
            (``head_dim = hidden_size // num_attention_heads`` models such as GPT-2 or OPT, per-layer
            counts) the pruned cache inputs narrow the dense-sized first cache to the kept heads
            (:mod:`optimum_prune.passes.cache_inputs`), which generates with ``ORTModelForCausalLM`` on
            its default CPU path but not with IO binding (which sizes the output cache the same way).
        recover: repair the consumers of pruned groups by least squares on calibration data: ``True``
            (default :class:`RecoveryConfig`), a :class:`RecoveryConfig` (or its dict), or
            ``False``/``None``. Without calibration data the pruner uses generated inputs (512 rows of 32
            random tokens, ``optimum_prune.pruner.GENERATED_REPAIR_DATA``). A repaired
            model no longer equals the dense model with the removed consumer rows zeroed;
            :func:`optimum_prune.verify` then puts the repaired consumer weights into the zeroed dense
            model before comparing.
    """

    sparsity: float = 0.3
    scope: tuple[str, ...] = ("ffn", "heads")
    importance: str = "l2"
    importance_options: dict = field(default_factory=dict)
    min_units: int = 1
    exclude: tuple[str, ...] = ()
    io_patterns: tuple[str, ...] = field(default=DEFAULT_IO_PATTERNS)
    prune_kv_heads: bool = False
    recover: bool | RecoveryConfig = False
    allocation: str = "uniform"
    target: str = "units"
    round_to: int | dict[str, int] = 1
    latency_table: Any = None

    def __post_init__(self) -> None:
        from optimum_prune.latency import LatencyTable

        object.__setattr__(self, "latency_table", LatencyTable.coerce(self.latency_table))
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {TARGETS}, got {self.target!r}")
        round_to = self.round_to if isinstance(self.round_to, dict) else {k: self.round_to for k in KINDS}
        bad = {k: v for k, v in round_to.items()
               if k not in KINDS or isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(f"round_to must be an integer >= 1 or a dict {{kind: integer >= 1}} with kinds "
                              f"from {KINDS}; bad entries: {bad}")
        if isinstance(self.round_to, dict):
            object.__setattr__(self, "round_to", dict(self.round_to))
        if isinstance(self.recover, dict):
            object.__setattr__(self, "recover", RecoveryConfig.from_dict(self.recover))
        if self.recover is True or self.recover is None:
            object.__setattr__(self, "recover", RecoveryConfig() if self.recover else False)
        if not (self.recover is False or isinstance(self.recover, RecoveryConfig)):
            raise ConfigError(f"recover must be True, False or a RecoveryConfig, got {self.recover!r}")
        if isinstance(self.scope, str):
            object.__setattr__(self, "scope", tuple(s.strip() for s in self.scope.split(",") if s.strip()))
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float):
            raise ConfigError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}. Use e.g. sparsity=0.3 "
                              "to remove 30% of the units of every group.")
        unknown = [s for s in self.scope if s not in KINDS]
        if not self.scope:
            raise ConfigError(f"scope is empty: name the group kinds to prune; allowed: {KINDS}")
        if unknown:
            raise ConfigError(f"scope has unknown kinds {unknown}; allowed: {KINDS}")
        if self.importance not in IMPORTANCE_CRITERIA:
            raise ConfigError(f"importance must be one of {IMPORTANCE_CRITERIA}, got {self.importance!r}")
        if not isinstance(self.importance_options, dict):
            raise ConfigError(f"importance_options must be a dict, got {self.importance_options!r}")
        object.__setattr__(self, "importance_options", dict(self.importance_options))
        if not isinstance(self.prune_kv_heads, bool):
            raise ConfigError(f"prune_kv_heads must be True or False, got {self.prune_kv_heads!r}")
        if not isinstance(self.min_units, int) or self.min_units < 1:
            raise ConfigError(f"min_units must be an integer >= 1, got {self.min_units!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "io_patterns", tuple(self.io_patterns))

    def to_dict(self) -> dict:
        """JSON-friendly form, stored in the plan and the report."""
        return {"sparsity": self.sparsity, "scope": list(self.scope), "importance": self.importance,
                **({"importance_options": self.importance_options} if self.importance_options else {}),
                "min_units": self.min_units, "exclude": list(self.exclude),
                "io_patterns": list(self.io_patterns), "prune_kv_heads": self.prune_kv_heads,
                "recover": self.recover.to_dict() if self.recover else False,
                "allocation": self.allocation, "target": self.target, "round_to": self.round_to,
                **({"latency_table": self.latency_table.to_dict()} if self.latency_table else {})}

    @classmethod
    def from_dict(cls, d: dict) -> PruningConfig:
        """Inverse of :meth:`to_dict`; the keys a plan adds to it (``latency_estimate_ms``) are ignored."""
        names = {f.name for f in fields(cls) if f.init}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("scope", "exclude", "io_patterns"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def multiple(self, kind: str) -> int:
        """The rounding multiple of ``kind``'s kept units."""
        return self.round_to.get(kind, 1) if isinstance(self.round_to, dict) else self.round_to

    @property
    def recovery(self) -> RecoveryConfig | None:
        """The repair settings, or None when ``recover`` is off."""
        return self.recover or None
