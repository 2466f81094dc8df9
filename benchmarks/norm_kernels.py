"""ONNX Runtime's CPU kernel time for a residual layer norm: fused SkipLayerNormalization against the
Add (bias) + Sum (residual) + LayerNormalization that the ``optimize`` stage writes instead.

    .venv/bin/python benchmarks/norm_kernels.py      # -> benchmarks/results/norm_kernels.json

One-node (or three-node) models, ``input + skip + bias`` normalised over the last axis, at 128 tokens x
hidden 384 and 768, with 1 and 2 intra-op threads. The time per form is the sum of its kernels' times
from ONNX Runtime's own profiler (``*_kernel_time`` events), averaged over the runs, so Python's call
overhead is not in it. ONNX Runtime's load-time optimisations are on, as for any user: a plain
``Add`` + ``LayerNormalization`` would be fused back into SkipLayerNormalization, the ``Sum`` form is not
(the JSON records which ops each session ran).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FORMS = ("SkipLayerNormalization", "Add + Sum + LayerNormalization")


def _model(form: str, tokens: int, hidden: int, rng: np.random.Generator) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, tokens, hidden]) for n in ("x", "s")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, hidden])
    inits = [numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), n)
             for n in ("gamma", "beta", "bias")]
    if form == FORMS[0]:
        nodes = [helper.make_node("SkipLayerNormalization", ["x", "s", "gamma", "beta", "bias"], ["y"],
                                  domain="com.microsoft", epsilon=1e-12)]
    else:
        nodes = [helper.make_node("Add", ["x", "bias"], ["xb"]),
                 helper.make_node("Sum", ["xb", "s"], ["r"]),
                 helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], axis=-1,
                                  epsilon=1e-12)]
    graph = helper.make_graph(nodes, "norm", inputs, [output], inits)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def kernel_us(form: str, tokens: int, hidden: int, threads: int, runs: int) -> dict:
    """Mean kernel microseconds per run of ``form`` and the ops ONNX Runtime ran, plus its output."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    model = _model(form, tokens, hidden, rng)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(RESULTS / ".norm_kernels_profile")
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {n: rng.standard_normal((1, tokens, hidden)).astype(np.float32) for n in ("x", "s")}
    for _ in range(20):
        out = session.run(None, feeds)[0]
    profile = session.end_profiling()  # drop the warm-up runs
    os.remove(profile)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    return {"us": round(sum(per_op.values()) / runs, 1),
            "ops_us": {k: round(v / runs, 1) for k, v in sorted(per_op.items())}, "output": out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "norm_kernels.json")
    args = parser.parse_args(argv)
    from engine_speed import machine_info

    start = time.time()
    rows = []
    for hidden in args.hidden:
        for threads in args.threads:
            fused, split = (kernel_us(f, args.tokens, hidden, threads, args.runs) for f in FORMS)
            diff = float(np.max(np.abs(fused.pop("output") - split.pop("output"))))
            rows.append({"tokens": args.tokens, "hidden": hidden, "threads": threads, "fused": fused,
                         "split": split, "speedup": round(fused["us"] / split["us"], 2),
                         "max_abs_diff": diff})
            print(f"hidden {hidden}, {threads} thread(s): fused {fused['us']} us, split {split['us']} us "
                  f"{split['ops_us']}, x{rows[-1]['speedup']}, max abs diff {diff:.1e}", flush=True)
    data = {"rows": rows, "runs": args.runs, "seconds": round(time.time() - start, 1),
            "machine": machine_info(), "created": time.strftime("%Y-%m-%d")}
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")


def markdown(data: dict) -> str:
    """The README table of a ``norm_kernels.json``."""
    lines = ["| tokens x hidden | threads | SkipLayerNormalization us | Add + Sum + LayerNormalization us "
             "| split / fused speed |", "|---|---:|---:|---:|---:|"]
    for r in data["rows"]:
        ops = ", ".join(f"{k} {v:.0f}" for k, v in r["split"]["ops_us"].items())
        lines.append(f"| {r['tokens']} x {r['hidden']} | {r['threads']} | {r['fused']['us']:.0f} | "
                     f"{r['split']['us']:.0f} ({ops}) | {r['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
