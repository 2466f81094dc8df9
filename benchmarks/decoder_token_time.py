"""Where SmolLM2-135M's generation time goes at batch 1: dense vs 30% of its MLP neurons pruned.

Two measurements on the ``benchmarks/decoder.py`` export (reused from ``outputs/bench/decoder/onnx``,
exported if missing) and a 30%-MLP ``l2`` pruning of it (speed does not depend on the criterion):

1. ``ORTModelForCausalLM.generate`` of 64 greedy tokens (the decoder benchmark's tokens/s), with the
   session's ``run`` wrapped by a timer: per generated token, the time inside ONNX Runtime and the
   time outside it (transformers' generation loop, optimum's input/output handling), and one forward
   pass over a 128-token prompt (prefill). Dense and pruned are interleaved, ``--rounds`` times each;
   medians.
2. One more generate per model with ONNX Runtime profiling on: kernel time per decode step (the
   prompt's prefill run excluded) split by the node names' module: LM head, MLP, attention, norms,
   other. Profiling adds a little per node, so only its shares and differences are used.

Writes ``benchmarks/results/decoder_token_time.json`` and prints a summary.

    python benchmarks/decoder_token_time.py [--rounds 5] [--threads 1] [--also outputs/bench/decoder/RUN ...]

``--also`` adds folders written by ``benchmarks/decoder.py`` (any criterion or allocation) to the same
interleaved rounds and profiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from decoder import WORK, export  # noqa: E402

from optimum_prune import ORTPruner, PruningConfig  # noqa: E402
from optimum_prune.assets import fetch_smollm2  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "decoder_token_time.json"
PROMPT = "The movie was"
CATEGORIES = ("lm_head", "mlp", "attention", "norm", "other")


def _category(node: str) -> str:
    if "lm_head" in node:
        return "lm_head"
    if "/mlp/" in node:
        return "mlp"
    if "/self_attn/" in node:
        return "attention"
    if "norm" in node:
        return "norm"
    return "other"


def _load(folder: Path, threads: int, profile: bool = False):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(folder / "ort_profile")
    return ORTModelForCausalLM.from_pretrained(folder, use_cache=True, use_io_binding=False,
                                               provider="CPUExecutionProvider", session_options=opts)


class _TimedRun:
    """Wraps ``session.run`` and records the wall time of each call."""

    def __init__(self, session) -> None:
        self.inner, self.times = session.run, []
        session.run = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.times.append(time.perf_counter() - start)


def timed_generate(model, timer: _TimedRun, ids, new_tokens: int) -> dict:
    timer.times.clear()
    start = time.perf_counter()
    model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    total = time.perf_counter() - start
    runs = list(timer.times)
    decode = runs[1:]  # runs[0] is the prompt's prefill
    in_ort = sum(runs)
    return {"total_s": total, "tokens_per_s": new_tokens / total, "runs": len(runs),
            "prefill_ms": runs[0] * 1e3, "decode_run_ms": statistics.median(decode) * 1e3,
            "outside_ort_ms_per_token": (total - in_ort) / new_tokens * 1e3,
            "in_ort_ms_per_token": in_ort / new_tokens * 1e3}


PREFILL_TOKENS = 128


def timed_prefill(model, tokens: int = PREFILL_TOKENS, seed: int = 0) -> float:
    """Milliseconds of one forward pass over a ``tokens``-long prompt at batch 1 (the cache is filled)."""
    import torch

    ids = torch.randint(100, 20000, (1, tokens), generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return (time.perf_counter() - start) * 1e3


def profile_generate(folder: Path, ids, new_tokens: int, threads: int) -> dict:
    """Kernel time per decode step by module, from an ONNX Runtime profile of one generate."""
    model = _load(folder, threads, profile=True)
    model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    path = Path(model.session.end_profiling())
    events = json.loads(path.read_text())
    path.unlink()
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) < 2:
        raise RuntimeError(f"expected one model_run per token in the profile, found {len(runs)}")
    prefill_end = runs[0][1]
    decode = runs[1:]
    by_cat = dict.fromkeys(CATEGORIES, 0.0)
    matmul = dict.fromkeys(CATEGORIES, 0.0)
    nodes = dict.fromkeys(CATEGORIES, 0)
    by_op: dict[str, float] = {}
    lm_head_ops = []
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < prefill_end:
            continue
        node = e["name"][: -len("_kernel_time")]
        cat = _category(node)
        by_cat[cat] += e["dur"]
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
        nodes[cat] += 1
        if "MatMul" in op or op == "Gemm":
            matmul[cat] += e["dur"]
        if cat == "lm_head":
            lm_head_ops.append(f"{node} ({op})")
    steps = len(decode)
    run_us = sum(b - a for a, b in decode)
    kernel_us = sum(by_cat.values())
    return {
        "decode_steps": steps,
        "run_ms_per_step": run_us / steps / 1e3,
        "kernel_ms_per_step": kernel_us / steps / 1e3,
        "ms_per_step": {k: v / steps / 1e3 for k, v in by_cat.items()},
        "share_of_kernel_time": {k: v / kernel_us for k, v in by_cat.items()},
        "matmul_ms_per_step": {k: v / steps / 1e3 for k, v in matmul.items()},
        "nodes_per_step": {k: v / steps for k, v in nodes.items()},
        "top_ops_ms_per_step": dict(sorted(((k, v / steps / 1e3) for k, v in by_op.items()),
                                           key=lambda kv: -kv[1])[:8]),
        "lm_head_nodes": sorted(set(lm_head_ops)),
    }


def _weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of ONNX Runtime and torch (0: their defaults). Default 1: on "
                             "a machine shared with other jobs, spinning thread pools make 2-thread timings "
                             "meaningless (3 tok/s instead of ~40)")
    parser.add_argument("--also", nargs="*", type=Path, default=[], metavar="DIR",
                        help="more pruned folders (e.g. benchmarks/decoder.py run folders) timed in the same "
                             "interleaved rounds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    onnx_dir = export(fetch_smollm2(), WORK / "onnx")
    pruned_dir = WORK / f"timing-l2-ffn{int(args.sparsity * 100)}"
    if not (pruned_dir / "model.onnx").is_file():
        ORTPruner.from_pretrained(onnx_dir).prune(
            PruningConfig(sparsity=args.sparsity, scope=("ffn",), importance="l2"), pruned_dir)
    report = json.loads((pruned_dir / "report.json").read_text())["stages"][-1]
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    ids = tokenizer(PROMPT, return_tensors="pt")
    folders = {"dense": onnx_dir, f"mlp{int(args.sparsity * 100)}": pruned_dir}
    for extra in args.also:
        if not (extra / "model.onnx").is_file():
            raise SystemExit(f"--also {extra}: no model.onnx there")
        folders[extra.name] = extra.resolve()

    models = {name: _load(folder, args.threads) for name, folder in folders.items()}
    timers = {name: _TimedRun(m.session) for name, m in models.items()}
    for name, m in models.items():  # warm-up
        timed_generate(m, timers[name], ids, 8)
        timed_prefill(m)
    samples: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, m in models.items():
            prefill = timed_prefill(m)
            samples[name].append({**timed_generate(m, timers[name], ids, args.new_tokens),
                                  f"prefill_{PREFILL_TOKENS}_ms": prefill})
    del models, timers

    rows = {}
    for name, folder in folders.items():
        med = {k: statistics.median(s[k] for s in samples[name]) for k in samples[name][0] if k != "runs"}
        stage = json.loads((folder / "report.json").read_text())["stages"][-1] \
            if (folder / "report.json").is_file() else {}
        rows[name] = {"folder": str(folder.relative_to(ROOT)), "weights_mb": round(_weights_mb(folder), 1),
                      "params": stage.get("params_after"), "units_removed": stage.get("units_removed"),
                      "generate": {k: round(v, 3) for k, v in med.items()},
                      "generate_rounds": [{k: round(v, 3) for k, v in s.items()} for s in samples[name]],
                      "profile": profile_generate(folder, ids, args.new_tokens, args.threads)}
    import onnxruntime

    results = {
        "benchmark": "decoder_token_time", "model": "SmolLM2-135M-Instruct", "prompt": PROMPT,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "threads": args.threads or "default",
        "pruning": {"sparsity": args.sparsity, "scope": ["ffn"], "importance": "l2",
                    "params_before": report["params_before"], "params_after": report["params_after"],
                    "flops_before": report.get("flops_before"), "flops_after": report.get("flops_after")},
        "onnxruntime": onnxruntime.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    for name, r in rows.items():
        g, p = r["generate"], r["profile"]
        print(f"{name}: {g['tokens_per_s']:.1f} tok/s; {PREFILL_TOKENS}-token prefill "
              f"{g[f'prefill_{PREFILL_TOKENS}_ms']:.0f} ms; "
              f"per token {g['in_ort_ms_per_token']:.2f} ms in ORT "
              f"(decode run {g['decode_run_ms']:.2f} ms) + {g['outside_ort_ms_per_token']:.2f} ms outside; "
              f"profiled kernels {p['kernel_ms_per_step']:.2f} ms/step: "
              + ", ".join(f"{k} {p['ms_per_step'][k]:.2f} ({p['matmul_ms_per_step'][k]:.2f} MatMul, "
                          f"{p['nodes_per_step'][k]:.0f} nodes)" for k in CATEGORIES))
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
