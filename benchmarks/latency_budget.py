"""Latency budgets on a real model: estimated against measured ONNX Runtime latency saving.

    .venv/bin/python benchmarks/latency_budget.py   # -> benchmarks/results/latency_budget.json

The fine-tuned Rotten Tomatoes classifier of ``quality_classifier.py`` (exported there, or here on first
use) gets a latency table (``optimum_prune.latency.measure_latency_table``: every FFN / attention block
timed at batch 32 x 64 tokens for 7 widths) and is pruned with ``PruningConfig(target="latency")`` at each
``--sparsities`` (``l2``, uniform and global allocation); the pruned model's latency is then measured at
the same shape and compared with the table's estimate. About 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)

    import os

    from engine_speed import machine_info
    from quality import latency_ms
    from quality_classifier import CACHE, export_classifier
    from rt_classifier import ensure_classifier

    from optimum_prune import ORTPruner, PruningConfig
    from optimum_prune.configuration import DEFAULT_IO_PATTERNS
    from optimum_prune.latency import measure_latency_table

    t0 = time.perf_counter()
    onnx_dir = export_classifier(ensure_classifier(), CACHE)
    pruner = ORTPruner.from_pretrained(onnx_dir)
    prep = pruner._prepare(DEFAULT_IO_PATTERNS)
    eligible = [g for g in prep.groups if g.kind in ("ffn", "heads") and g.prunable]
    start = time.perf_counter()
    table = measure_latency_table(prep.model, eligible, model_path=pruner.model_path)
    table_s = time.perf_counter() - start
    dense_ms = latency_ms(onnx_dir / "model.onnx", args.repeat)
    rows = []
    for s in args.sparsities:
        for allocation in ("uniform", "global"):
            out = CACHE / "latency" / f"{allocation}-{s:.2f}"
            pruner.prune(PruningConfig(sparsity=s, target="latency", allocation=allocation,
                                       scope=("ffn", "heads"), latency_table=table), out)
            est = json.loads((out / "pruning_plan.json").read_text())["config"]["latency_estimate_ms"]
            ms = latency_ms(out / "model.onnx", args.repeat)
            rows.append({"sparsity": s, "allocation": allocation, "estimated_saving": est["saved"] / est[
                "total_before"], "measured_saving": 1.0 - ms / dense_ms, "latency_ms": ms,
                "estimate": est})
            print(f"{int(100 * s)}% {allocation:<8} estimated saving {rows[-1]['estimated_saving']:.3f} "
                  f"measured {rows[-1]['measured_saving']:.3f}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    data = {"model": "rt_classifier seed 0, optimum-onnx text-classification export", "importance": "l2",
            "table": table.to_dict(), "table_seconds": round(table_s, 1), "dense_latency_ms": dense_ms,
            "latency": {"batch": table.batch, "sequence": table.sequence, "repeat": args.repeat},
            "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
            "load_average_end": round(os.getloadavg()[0], 2), "machine": machine_info(),
            "created": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_budget.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {RESULTS / 'latency_budget.json'} in {data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
