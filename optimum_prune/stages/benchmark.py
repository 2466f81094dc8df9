"""``benchmark``: ONNX Runtime CPU latency (p50/p90 per batch size) and model size on disk."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from optimum_prune.errors import ConfigError
from optimum_prune.stages.base import Stage, StageConfig, find_model_file, model_size_bytes, positive_int
from optimum_prune.stages.data import synthetic_inputs


@dataclasses.dataclass
class BenchmarkConfig(StageConfig):
    """Options of the ``benchmark`` stage.

    Args:
        batch_sizes: batch sizes to time (default 1 and 32).
        sequence_length: tokens per example for text models.
        warmup: untimed runs first.
        repeats: timed runs per batch size.
        threads: ONNX Runtime intra-op threads (0: its default, one per core).
        progress: show a progress bar.
    """

    batch_sizes: list | tuple = (1, 32)
    sequence_length: int = 128
    warmup: int = 2
    repeats: int = 10
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.batch_sizes, int):
            self.batch_sizes = (self.batch_sizes,)
        if not isinstance(self.batch_sizes, list | tuple) or not self.batch_sizes:
            raise ConfigError(
                f"benchmark batch_sizes must be a non-empty list of integers; got {self.batch_sizes!r}"
            )
        for b in self.batch_sizes:
            positive_int(b, "benchmark batch size")
        self.batch_sizes = tuple(self.batch_sizes)
        positive_int(self.sequence_length, "benchmark sequence_length")
        positive_int(self.warmup, "benchmark warmup", minimum=0)
        positive_int(self.repeats, "benchmark repeats")
        positive_int(self.threads, "benchmark threads", minimum=0)


class BenchmarkStage(Stage):
    """Time the folder's model; the output folder links the model unchanged."""

    name = "benchmark"
    config_class = BenchmarkConfig
    produces_model = False

    def _run(self, input_dir: Path, output_dir: Path) -> dict[str, Any]:
        import onnxruntime as ort
        from tqdm.auto import tqdm

        cfg = self.config
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if cfg.threads:
            opts.intra_op_num_threads = cfg.threads
        session = ort.InferenceSession(
            str(find_model_file(input_dir)), opts, providers=["CPUExecutionProvider"]
        )
        latency: dict[str, dict[str, float]] = {}
        lengths: set[int] = set()
        total = len(cfg.batch_sizes) * (cfg.warmup + cfg.repeats)
        quiet = {} if cfg.progress else {"disable": True}  # unset: tqdm honours TQDM_DISABLE
        with tqdm(total=total, desc="benchmark", leave=False, **quiet) as bar:
            for batch in cfg.batch_sizes:
                feeds = synthetic_inputs(session, input_dir, batch=batch, sequence=cfg.sequence_length)
                lengths.update(int(v.shape[1]) for k, v in feeds.items() if k == "input_ids" and v.ndim == 2)
                times = []
                for i in range(cfg.warmup + cfg.repeats):
                    start = time.perf_counter()
                    session.run(None, feeds)
                    if i >= cfg.warmup:
                        times.append((time.perf_counter() - start) * 1000)
                    bar.update()
                latency[str(batch)] = {
                    "p50_ms": float(np.percentile(times, 50)),
                    "p90_ms": float(np.percentile(times, 90)),
                    "mean_ms": float(np.mean(times)),
                }
        ran = max(lengths) if lengths else cfg.sequence_length
        return {
            "latency": latency,
            # what ran: the length asked, capped at the model's position table
            "sequence_length": ran,
            **({"sequence_length_asked": cfg.sequence_length} if ran != cfg.sequence_length else {}),
            "repeats": cfg.repeats,
            "threads": cfg.threads or None,
            "model_size_bytes": model_size_bytes(input_dir),
        }
