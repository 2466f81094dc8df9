"""``optimize``: ONNX Runtime graph optimisations and transformer fusions (Optimum's ``ORTOptimizer``)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optimum_prune.errors import ConfigError
from optimum_prune.stages.base import MODEL_FILE, Stage, StageConfig, find_model_file

LEVELS = ("O1", "O2", "O3")
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OptimizeConfig(StageConfig):
    """Options of the ``optimize`` stage.

    Args:
        level: Optimum's ``AutoOptimizationConfig`` level: ``O1`` (basic graph optimisations), ``O2``
            (plus transformer fusions: Attention, SkipLayerNormalization, BiasGelu, ...), ``O3`` (plus
            approximate GELU). ``O4`` (fp16, GPU only) is not offered.
        options: further ``OptimizationConfig`` fields, e.g. ``{"disable_attention_fusion": true}``.
        hoist_gathers: after the fusions, move constant-index ``Gather`` ops (first-token pooling)
            above the token-wise ops that feed them, so those run on the read positions only
            (:func:`optimum_prune.passes.token_gather.hoist_token_gathers`; exact). The result is
            checked against the fused model on generated inputs and dropped if it differs.
        one_query_attention: with ``hoist_gathers``, also write a fused ``Attention`` read at one
            position out in standard ops with that position's query only
            (:mod:`optimum_prune.passes.attention_query`). Off by default: on the 50% MiniLM
            classifier it was 1-2% faster after INT8 at ONNX Runtime's default settings (6% in FP32),
            but 3-7% slower with thread spinning off, where its small ops each wake the threads.
        split_skip_layer_norms: last, write each fused ``SkipLayerNormalization`` back as ``Sum`` +
            ``LayerNormalization`` (:func:`optimum_prune.passes.layer_norm_split.split_skip_layer_norms`),
            whose CPU kernels are faster than the fused one (``benchmarks/norm_kernels.py``); checked
            the same way.
    """

    level: str = "O2"
    options: dict = dataclasses.field(default_factory=dict)
    hoist_gathers: bool = True
    one_query_attention: bool = False
    split_skip_layer_norms: bool = True

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"optimize level must be one of {LEVELS}; got {self.level!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"optimize options must be a mapping; got {self.options!r}")
        for name in ("hoist_gathers", "one_query_attention", "split_skip_layer_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"optimize {name} must be true or false; got {getattr(self, name)!r}")
        if self.one_query_attention and not self.hoist_gathers:
            raise ConfigError("optimize one_query_attention rewrites the attention a hoisted Gather reads: "
                              "set hoist_gathers: true or one_query_attention: false")


class OptimizeStage(Stage):
    """Optimise the folder's model; works on dense and on pruned models (before or after ``prune``)."""

    name = "optimize"
    config_class = OptimizeConfig

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

        model = find_model_file(input_dir)
        try:
            opt_config = AutoOptimizationConfig.with_optimization_level(
                self.config.level, for_gpu=False, **self.config.options
            )
        except TypeError as e:
            raise ConfigError(f"optimize options {sorted(self.config.options)}: {e}") from e
        optimizer = ORTOptimizer.from_pretrained(input_dir, file_names=[model.name])
        with _quiet_pruned_attention_warning():
            optimizer.optimize(opt_config, output_dir, file_suffix="")
        produced = sorted(output_dir.glob("*.onnx"))
        if len(produced) != 1:
            raise ConfigError(f"ORTOptimizer wrote {[p.name for p in produced]} in {output_dir}")
        if produced[0].name != MODEL_FILE:
            produced[0].rename(output_dir / MODEL_FILE)
        metrics: dict[str, Any] = {"fused_ops": _contrib_ops(output_dir / MODEL_FILE)}
        if self.config.hoist_gathers:
            metrics["hoisted_gathers"] = hoist_gathers_in_file(
                output_dir / MODEL_FILE, attention_queries=self.config.one_query_attention)
        if self.config.split_skip_layer_norms:
            metrics["split_skip_layer_norms"] = split_skip_layer_norms_in_file(output_dir / MODEL_FILE)
        return metrics


def hoist_gathers_in_file(path: Path, *, attention_queries: bool = False, rtol: float | None = None
                          ) -> dict[str, Any]:
    """Apply :func:`~optimum_prune.passes.token_gather.hoist_token_gathers` (with its
    ``attention_queries`` option) to the model file ``path``.

    Checked and written as :func:`rewrite_model_file` does; returns the pass's report with ``kept``.
    """
    from optimum_prune.passes.token_gather import hoist_token_gathers

    return rewrite_model_file(path, lambda m: hoist_token_gathers(m, attention_queries=attention_queries),
                              changed=lambda r: r.moved > 0, what="hoisting Gathers", rtol=rtol)


def split_skip_layer_norms_in_file(path: Path, *, rtol: float | None = None) -> dict[str, Any]:
    """Apply :func:`~optimum_prune.passes.layer_norm_split.split_skip_layer_norms` to the model file
    ``path``, checked and written as :func:`rewrite_model_file` does."""
    from optimum_prune.passes.layer_norm_split import split_skip_layer_norms

    return rewrite_model_file(path, split_skip_layer_norms, changed=lambda r: r.split > 0,
                              what="splitting SkipLayerNormalization", rtol=rtol)


def rewrite_model_file(path: Path, rewrite: Callable[[Any], Any], *, changed: Callable[[Any], bool],
                       what: str, rtol: float | None = None) -> dict[str, Any]:
    """Apply an exact graph rewrite ``rewrite(model) -> report`` to the model file ``path``.

    The rewritten model must give the same outputs as the file on generated inputs (two rows of 16
    tokens; ``rtol`` relative to each output's largest magnitude, by default the exactness oracle's
    :data:`~optimum_prune.verify.RELATIVE_TOLERANCE`) and pass the checker and an ONNX Runtime run; it
    then replaces the file (atomically, with its external data if it has any). Otherwise the file is
    left as it is and the returned report says why (``"kept": false``). The report is
    ``rewrite``'s (its ``to_dict()``) plus ``kept``.
    """
    import numpy as np

    from optimum_prune.graph import load_model, save_model_atomic
    from optimum_prune.passes.validate import image_dims, make_session, validate_model_file
    from optimum_prune.runtime import generate_feeds
    from optimum_prune.verify import RELATIVE_TOLERANCE

    rtol = RELATIVE_TOLERANCE if rtol is None else rtol
    model = load_model(path)
    report = rewrite(model)
    result: dict[str, Any] = {**report.to_dict(), "kept": False}
    if not changed(report):
        return result
    scratch = Path(tempfile.mkdtemp(prefix=".rewrite-", dir=path.parent))
    try:
        written = save_model_atomic(model, scratch / path.name)
        validate_model_file(written.path, source=path)
        before, after = make_session(path), make_session(written.path)
        # the token tables are not touched; images of the size config.json gives
        feeds = generate_feeds(before, model, rows=2, length=16, dims=image_dims(path.parent))
        outputs = zip(before.get_outputs(), before.run(None, feeds), after.run(None, feeds), strict=True)
        for meta, x, y in outputs:
            scale = max(float(np.max(np.abs(x))), 1e-12) if np.size(x) else 1.0
            diff = float(np.max(np.abs(np.asarray(x, np.float64) - y))) if np.size(x) else 0.0
            if diff > rtol * scale:
                result["reason"] = (f"output {meta.name!r} changed by {diff:.3g} (largest magnitude "
                                    f"{scale:.3g}); the model was left as it was")
                logger.warning("%s in %s: %s", what, path, result["reason"])
                return result
        del before, after
        if written.data_path is not None:
            os.replace(written.data_path, path.parent / written.data_path.name)
        os.replace(written.path, path)
        result["kept"] = True
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _PrunedAttentionWarning(logging.Filter):
    """Drops ONNX Runtime's "Input hidden size (N) is not same as weight matrix dimension of q,k,v (M)".

    Optimum passes the config's hidden size to the attention fusion, which reads each layer's head
    count and q/k/v width from the graph itself; after head pruning the q/k/v width is smaller than the
    hidden size, the fusion is still right (it sets ``qkv_hidden_sizes``), and the warning (which asks
    for a "correct" hidden size) would only mislead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Input hidden size (%d) is not same as weight matrix")


@contextlib.contextmanager
def _quiet_pruned_attention_warning() -> Iterator[None]:
    # ONNX Runtime's transformers package puts its folder on sys.path and imports its modules top-level
    # ("fusion_attention"); under other import paths the module is "onnxruntime.transformers.*".
    names = ("fusion_attention", "onnxruntime.transformers.fusion_attention")
    loggers = [logging.getLogger(n) for n in names]
    quiet = _PrunedAttentionWarning()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _contrib_ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
