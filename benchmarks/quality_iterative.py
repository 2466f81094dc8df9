"""Iterative prune -> repair -> rescore against one-shot pruning (the quality benchmark's protocol).

Each step prunes the previous step's repaired model by the share that brings the total to the next
multiple of ``total / steps``, scoring its units and fitting the sequential least-squares repair on the
same 128 calibration reviews against that model (the only dense reference a post-training pruner has
at that point). The held-out cosine is always to the original dense embeddings, on the 500 reviews of
``quality.py``; the one-shot figure of the same configuration comes from ``results/quality.json``.

    python benchmarks/quality_iterative.py   # -> benchmarks/results/quality_iterative.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import quality  # noqa: E402  (the split, the calibration size and the embeddings of the quality benchmark)

RESULTS = ROOT / "benchmarks" / "results"
RUNS = (("fluctuation", 0.3, 3), ("activation", 0.5, 5))  # the best one-shot criterion at each sparsity


def iterate(onnx_dir: Path, importance: str, total: float, steps: int, calib_texts: list[str], tokenizer,
            held: list[str], dense, work: Path) -> list[dict]:
    """Prune ``onnx_dir`` to ``total`` in ``steps`` equal shares of the original units; one row per step."""
    from optimum_prune import CalibrationConfig, CalibrationData, ORTPruner, PruningConfig
    from optimum_prune.configuration import RecoveryConfig

    rows, src = [], onnx_dir
    for k in range(1, steps + 1):
        share = 1 - (1 - total * k / steps) / (1 - total * (k - 1) / steps)
        calib = CalibrationData.from_texts(calib_texts, src,
                                           CalibrationConfig(num_samples=quality.CALIBRATION))
        config = PruningConfig(sparsity=share, scope=("ffn", "heads"), importance=importance,
                               allocation="global",
                               recover=RecoveryConfig(sequential=True, cv_folds=quality.CV_FOLDS))
        out = work / f"{importance}-{total}-{k}"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ORTPruner.from_pretrained(src).prune(config, out, calibration=calib)
        report = json.loads((out / "report.json").read_text())["stages"][-1]
        cos = (quality.embeddings(out / "model.onnx", tokenizer, held) * dense).sum(axis=1)
        rows.append({"step": k, "step_sparsity": round(share, 4), "params": report["params_after"],
                     "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(f"{importance} {total:.0%} step {k}/{steps}: cos {cos.mean():.4f}", flush=True)
        src = out
    return rows


def one_shot(importance: str, sparsity: float) -> dict | None:
    """The same configuration's one-shot row of ``results/quality.json``."""
    path = RESULTS / "quality.json"
    if not path.is_file():
        return None
    for r in json.loads(path.read_text())["rows"]:
        if (r.get("importance") == importance and r.get("allocation") == "global" and r.get("sequential")
                and r.get("cv") == quality.CV_FOLDS and not r.get("norm_weighted")
                and abs(r["sparsity"] - sparsity) < 1e-9):
            return {"cos_mean": r["cos_mean"], "cos_min": r["cos_min"], "params": r["params"]}
    return None


def main() -> int:
    from demo import export_onnx
    from transformers import AutoTokenizer

    from optimum_prune.assets import fetch_minilm, fetch_rotten_tomatoes

    onnx_dir, _ = export_onnx(fetch_minilm(), quality.CACHE)
    held, calib_texts, _ = quality.load_split(fetch_rotten_tomatoes())
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    dense = quality.embeddings(onnx_dir / "model.onnx", tokenizer, held)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for importance, total, steps in RUNS:
            rows = iterate(onnx_dir, importance, total, steps, calib_texts, tokenizer, held, dense, Path(tmp))
            runs.append({"importance": importance, "sparsity": total, "steps": steps, "rows": rows,
                         "one_shot": one_shot(importance, total)})
    data = {"benchmark": "quality_iterative", "model": "all-MiniLM-L6-v2", "held_out": len(held),
            "calibration": quality.CALIBRATION,
            "configuration": "global allocation, sequential least-squares repair, cv 4 (as quality.py)",
            "runs": runs, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality_iterative.json").write_text(json.dumps(data, indent=1))
    for run in runs:
        last, ref = run["rows"][-1], run["one_shot"] or {}
        print(f"{run['importance']} {run['sparsity']:.0%} in {run['steps']} steps: {last['cos_mean']:.4f} "
              f"at {last['params']} params; one-shot {ref.get('cos_mean', float('nan')):.4f} "
              f"at {ref.get('params')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
