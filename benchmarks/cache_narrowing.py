"""What narrowed cache inputs cost: decode-step latency of a GPT-2-size decoder with pruned heads.

    .venv/bin/python benchmarks/cache_narrowing.py      # -> benchmarks/results/cache_narrowing.json

A ``GPT2LMHeadModel`` with GPT-2 small's shape (12 layers, hidden 768, 12 heads, vocabulary cut to 8192
so that the LM head does not dominate), random weights (``torch.manual_seed(0)``), exported with
optimum-onnx for ``text-generation-with-past``, has a third of its heads pruned (4 of 12 per layer, with
``prune_kv_heads=True``). GPT-2's config cannot describe pruned cache heads, so the pruned graph's cache
inputs are narrowed (``optimum_prune.passes.cache_inputs``): a ``Reshape`` to the kept heads in front of
every cache input, which ONNX Runtime runs at every step. To price it, the same pruned graph with the
narrowing nodes taken out (its cache inputs declared at the kept width) is timed too, and so is the
narrowing the pass first used, a ``Slice`` to the kept heads (which copies the cache at every step).
Each variant runs one decode step (one new token) at batch 1 after a past of 128, 512 and 1024 tokens,
on ONNX Runtime sessions with 1 thread (2 threads on this 2-core machine were slower and far noisier),
interleaved, median of ``--repeats`` rounds. Also an end-to-end check: ``ORTModelForCausalLM``
generates from the pruned (narrowed) folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "outputs" / "cache_narrowing"
RESULTS = ROOT / "benchmarks" / "results" / "cache_narrowing.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPE = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=8192, n_positions=2048)


def export(folder: Path) -> Path:
    """The dense export (cached)."""
    out = folder / "dense"
    if (out / "model.onnx").is_file():
        return out
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = folder / "hf"
    GPT2LMHeadModel(GPT2Config(**SHAPE)).eval().save_pretrained(hf)
    tmp = folder / "dense.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    main_export(str(hf), output=str(tmp), task="text-generation-with-past", no_post_process=True)
    tmp.rename(out)
    return out


def _narrowing_nodes(model) -> list:
    from optimum_prune.passes.cache_inputs import NARROWING_NODE_PREFIX

    return [n for n in model.graph if (n.name or "").startswith(NARROWING_NODE_PREFIX)]


def _save_variant(model, narrowed: Path, dest: Path) -> Path:
    """Write ``model`` as ``dest/model.onnx`` next to the JSON and text files of the ``narrowed`` folder."""
    import onnx_ir as ir

    dest.mkdir(parents=True, exist_ok=True)
    for f in narrowed.iterdir():
        if f.suffix == ".json" or f.name.endswith(".txt"):
            shutil.copy(f, dest / f.name)
    ir.save(model, str(dest / "model.onnx"))
    return dest


def without_slices(narrowed: Path, dest: Path) -> Path:
    """``narrowed`` with its narrowing nodes removed and the cache inputs declared at the kept width (the
    graph a runtime that sized the cache right would run)."""
    import onnx_ir as ir

    from optimum_prune.passes.cache_inputs import NARROWED_DIMS_KEY

    model = ir.load(str(narrowed / "model.onnx"))
    widths = json.loads(model.metadata_props.pop(NARROWED_DIMS_KEY))
    for node in _narrowing_nodes(model):
        ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[0])
        model.graph.remove(node, safe=True)
    for value in model.graph.inputs:
        if value.shape is not None:
            value.shape = ir.Shape([widths.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d
                                    for d in value.shape])
    return _save_variant(model, narrowed, dest)


def with_slices(narrowed: Path, dest: Path) -> Path:
    """``narrowed`` with each narrowing Reshape replaced by a Slice to the kept heads (``[:kept]``)."""
    import onnx_ir as ir

    model = ir.load(str(narrowed / "model.onnx"))
    for node in _narrowing_nodes(model):
        target = node.inputs[1].const_value.numpy()
        axes = [i for i, t in enumerate(target) if t > 0]  # 0 keeps a dim, -1 is the length
        bounds = {"starts": [0] * len(axes), "ends": [int(target[a]) for a in axes], "axes": axes}
        consts = [ir.Value(name=f"{node.name}_{part}", const_value=ir.tensor(np.asarray(data, np.int64)))
                  for part, data in bounds.items()]
        for v in consts:
            model.graph.register_initializer(v)
        sliced = ir.Node("", "Slice", inputs=[node.inputs[0], *consts],
                         outputs=[ir.Value(name=f"{node.outputs[0].name}_sliced")], name=f"{node.name}_slice")
        model.graph.insert_before(node, sliced)
        ir.convenience.replace_all_uses_with(node.outputs[0], sliced.outputs[0])
        model.graph.remove(node, safe=True)
    return _save_variant(model, narrowed, dest)


def step_feeds(session, past: int, rng) -> dict[str, np.ndarray]:
    """Feeds of one decode step after ``past`` tokens: random cache at each input's declared width (the
    narrowed dims at their kept width)."""
    from optimum_prune.passes.cache_inputs import narrowed_dims

    widths = narrowed_dims(session)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = np.array([[11]], np.int64)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, past + 1), np.int64)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.array([[past]], np.int64)
        else:
            shape = [d if isinstance(d, int) else widths.get(d, 1 if i == 0 else past)
                     for i, d in enumerate(inp.shape)]
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def time_steps(folders: dict[str, Path], pasts: list[int], repeats: int, threads: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(str(f / "model.onnx"), options, providers=["CPUExecutionProvider"])
                for k, f in folders.items()}
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for past in pasts:
        feeds = {k: step_feeds(s, past, rng) for k, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for k, s in sessions.items():  # warm up
            for _ in range(3):
                s.run(None, feeds[k])
        for _ in range(repeats):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append(1000 * (time.perf_counter() - t))
        out[str(past)] = {k: round(statistics.median(v), 3) for k, v in times.items()}
        print(f"past {past}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in out[str(past)].items()), flush=True)
    return out


def generates(folder: Path) -> list[int]:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, use_io_binding=False,
                                                provider="CPUExecutionProvider")
    ids = torch.tensor([[1, 2, 3, 4]])
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                          do_sample=False)[0].tolist()


def markdown(data: dict) -> str:
    """The README table: decode-step milliseconds per past length, and the narrowing's share."""
    lines = ["| past tokens | dense ms | pruned, narrowed (Reshape) ms | pruned, Slice ms | "
             "pruned, cache at kept width ms | Reshape vs kept width | Slice vs kept width |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for past, row in data["step_ms"].items():
        lines.append(f"| {past} | {row['dense']:.1f} | {row['narrowed']:.1f} | {row['sliced']:.1f} | "
                     f"{row['no_slices']:.1f} | {data['narrowing_overhead_pct'][past]:+.1f}% | "
                     f"{data['slice_overhead_pct'][past]:+.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pasts", type=int, nargs="*", default=[128, 512, 1024])
    args = parser.parse_args(argv)
    from engine_speed import write_results

    from optimum_prune import ORTPruner, PruningConfig

    t0 = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    dense = export(CACHE)
    narrowed = CACHE / "pruned"
    shutil.rmtree(narrowed, ignore_errors=True)
    start = time.perf_counter()
    ORTPruner.from_pretrained(dense).prune(
        PruningConfig(sparsity=1 / 3, scope=("heads",), prune_kv_heads=True), narrowed)
    prune_s = time.perf_counter() - start
    report = json.loads((narrowed / "report.json").read_text())["stages"][-1]
    plain = CACHE / "pruned-no-slices"
    shutil.rmtree(plain, ignore_errors=True)
    without_slices(narrowed, plain)
    sliced = CACHE / "pruned-slices"
    shutil.rmtree(sliced, ignore_errors=True)
    with_slices(narrowed, sliced)
    tokens = generates(narrowed)
    steps = time_steps({"dense": dense, "narrowed": narrowed, "sliced": sliced, "no_slices": plain},
                       args.pasts, args.repeats, args.threads)
    overhead = {p: round(100 * (v["narrowed"] / v["no_slices"] - 1), 1) for p, v in steps.items()}
    slice_overhead = {p: round(100 * (v["sliced"] / v["no_slices"] - 1), 1) for p, v in steps.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    data = {"benchmark": "cache_narrowing", "shape": SHAPE, "heads_removed": report["units_removed"]["heads"],
            "params_before": report["params_before"], "params_after": report["params_after"],
            "config_notes": report["config_notes"], "prune_s": round(prune_s, 1), "generated": tokens,
            "threads": args.threads, "repeats": args.repeats, "step_ms": steps,
            "narrowing_overhead_pct": overhead, "slice_overhead_pct": slice_overhead, "commit": commit}
    write_results(data, RESULTS, t0)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
