"""Survey the ONNX exports of the test zoo (a script, not a test).

Usage::

    python tests/zoo_survey.py OUTDIR [--jobs N] [--only NAME ...]

Exports every model of :data:`zoo.ZOO` under ``OUTDIR`` (plain export, with past for decoders, and fused
where the spec has an ORT fusion type), then writes ``OUTDIR/survey.json`` with, per model and variant:
export success / error, export seconds, node count, the sorted set of ``(domain, op_type)``, per-op counts,
graph inputs / outputs, whether onnxruntime runs the graph on :func:`zoo.dummy_inputs`, whether the matching
``optimum.onnxruntime`` ORTModel class loads and runs it, the max output difference between fused and unfused
graphs, and a few structural observations (attention kind: torch SDPA decomposition vs. eager, Softmax count,
constant vs. dynamic Reshape targets, shared initializers).

Each model is surveyed in its own subprocess (``--worker NAME``) so that one crash cannot take the whole
survey down; per-model results are also kept in ``OUTDIR/survey-parts/NAME.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import zoo

WORKER_TIMEOUT_S = 1800
_HEAVY_MODULES = (
    "transformers",
    "optimum.exporters.onnx",
    "optimum.onnxruntime",
    "onnxruntime.transformers.optimizer",
)


def _error(exc: BaseException) -> str:
    """One-line description of an exception plus the innermost traceback frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}{where}"


def _shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    """Static dims as ints, symbolic dims as their names."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _nearest_upstream(
    start: onnx.NodeProto, op_type: str, producer: dict[str, onnx.NodeProto], max_depth: int = 8
) -> list[onnx.NodeProto] | None:
    """Breadth-first search towards the graph inputs for the closest ``op_type`` node (skipping shape
    computations); returns the node path from ``start`` (exclusive) to it, or ``None``."""
    frontier: list[list[onnx.NodeProto]] = [[]]
    seen: set[str] = set()
    for _ in range(max_depth):
        next_frontier = []
        for path in frontier:
            for name in (path[-1] if path else start).input:
                node = producer.get(name)
                if (
                    node is None
                    or node.name in seen
                    or node.op_type in {"Shape", "Constant", "ConstantOfShape"}
                ):
                    continue
                seen.add(node.name)
                if node.op_type == op_type:
                    return [*path, node]
                next_frontier.append([*path, node])
        frontier = next_frontier
    return None


def classify_attention(graph: onnx.GraphProto, producer: dict[str, onnx.NodeProto]) -> dict[str, Any]:
    """Classify every Softmax by the attention-score subgraph that feeds it.

    torch's ONNX symbolic for ``scaled_dot_product_attention`` scales q and k^T by ``sqrt(scale)`` each
    (two ``Mul`` nodes) before the score ``MatMul``; with ``scale=None`` the factor is computed at runtime
    from ``Shape(q)`` through ``Sqrt`` nodes, with an explicit scale it is a constant. Eager attention
    multiplies / divides the product instead. Returns counts per kind and the distinct op chains from the
    Softmax up to the score MatMul.
    """
    kinds: Counter[str] = Counter()
    chains: set[str] = set()
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        path = _nearest_upstream(node, "MatMul", producer)
        if path is None:
            kinds["unknown"] += 1
            continue
        chains.add(" <- ".join(["Softmax", *(n.op_type for n in path)]))
        cur = path[-1]
        scalers = [producer.get(i) for i in cur.input]
        if all(s is not None and s.op_type == "Mul" for s in scalers):
            sqrt = any(
                producer.get(i) is not None and producer[i].op_type == "Sqrt"
                for s in scalers
                for i in s.input
            )
            kinds["sdpa_runtime_scale" if sqrt else "sdpa_constant_scale"] += 1
        else:
            kinds["eager"] += 1
    return {"kinds": dict(sorted(kinds.items())), "chains": sorted(chains)}


def analyse_graph(path: Path) -> dict[str, Any]:
    """Structural facts about ``path``: op inventory, I/O, SDPA decomposition and Reshape target kinds."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)

    attention = classify_attention(graph, producer)
    reshape_targets: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type == "Reshape":
            target = node.input[1]
            kind = "const" if target in constants else f"dynamic:{producer[target].op_type}"
            reshape_targets[kind] += 1
    initializers = {init.name for init in graph.initializer}
    consumers: Counter[str] = Counter(i for n in graph.node for i in set(n.input) if i in initializers)
    counts = Counter((n.domain or "ai.onnx", n.op_type) for n in graph.node)
    return {
        "node_count": len(graph.node),
        "initializer_count": len(graph.initializer),
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "ops": sorted(counts),
        "op_counts": {f"{d}::{op}": c for (d, op), c in sorted(counts.items())},
        "inputs": {vi.name: _shape(vi) for vi in graph.input if vi.name not in constants},
        "outputs": {vi.name: _shape(vi) for vi in graph.output},
        "attention": attention,
        "softmax_count": counts[("ai.onnx", "Softmax")],
        "reshape_targets": dict(sorted(reshape_targets.items())),
        # Weight sharing: initializers read by several nodes, and initializers re-exposed through Identity.
        "shared_initializers": sorted(name for name, c in consumers.items() if c > 1),
        "identity_of_initializer": sum(
            1 for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers
        ),
    }


def run_dummy(name: str, folder: Path) -> dict[str, Any]:
    """Run ``folder/model.onnx`` with onnxruntime on :func:`zoo.dummy_inputs`; report output shapes."""
    import onnxruntime as ort

    feeds = zoo.dummy_inputs(name, folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    finite = all(np.isfinite(o).all() for o in outputs if np.issubdtype(o.dtype, np.floating))
    return {
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "output_shapes": {o.name: list(v.shape) for o, v in zip(session.get_outputs(), outputs, strict=True)},
        "finite": bool(finite),
    }


def fused_max_abs_diff(name: str, fused: Path, unfused: Path) -> dict[str, float]:
    """Max |fused - unfused| per output on the same dummy inputs (fusion must not change the function)."""
    import onnxruntime as ort

    feeds = zoo.dummy_inputs(name, unfused)
    diffs = {}
    sessions = [
        ort.InferenceSession(str(f / "model.onnx"), providers=["CPUExecutionProvider"])
        for f in (fused, unfused)
    ]
    names = [o.name for o in sessions[1].get_outputs()]
    fused_feeds = {i.name: feeds[i.name] for i in sessions[0].get_inputs()}
    for out_name, a, b in zip(
        names, sessions[0].run(names, fused_feeds), sessions[1].run(names, feeds), strict=True
    ):
        diffs[out_name] = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return diffs


def run_ort_model(name: str, folder: Path) -> dict[str, Any]:
    """Load ``folder`` with the matching ORTModel class and run it once through its public API.

    Decoders run ``generate`` for 3 new tokens (exercising the past-key-values path when exported with past);
    encoders / vision models run ``forward`` with the inputs the ORTModel's forward accepts.
    """
    import torch

    spec = zoo.ZOO[name]
    model = zoo.load_ort_model(name, folder)
    feeds = zoo.dummy_inputs(name, folder)
    if spec.is_decoder:
        input_ids = torch.from_numpy(feeds["input_ids"])
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=3,
            do_sample=False,
            min_new_tokens=3,
        )
        return {
            "class": type(model).__name__,
            "use_cache": zoo.graph_has_past(folder),
            "generated": list(generated.shape),
        }
    if spec.ort_class != "ORTModelForCustomTasks":  # the task classes only forward their known inputs
        accepted = {"input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values"}
        dropped = sorted(set(feeds) - accepted)
        if dropped:
            raise RuntimeError(f"{type(model).__name__}.forward cannot feed graph inputs {dropped}")
    out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    first = next(iter(out.values()))
    return {"class": type(model).__name__, "first_output": list(first.shape)}


def survey_variant(name: str, root: Path, *, with_past: bool, fused: bool) -> dict[str, Any]:
    """Export one variant (timed) and run every check on it, recording failures instead of raising."""
    record: dict[str, Any] = {"with_past": with_past, "fused": fused}
    folder = zoo.zoo_folder(name, root, with_past=with_past, fused=fused)
    record["cached"] = (folder / "model.onnx").is_file()
    start = time.perf_counter()
    try:
        folder = zoo.export_zoo_model(name, root, with_past=with_past, fused=fused)
        record["export_ok"] = True
    except Exception as exc:  # noqa: BLE001 - the survey records every failure
        record.update(export_ok=False, error=_error(exc), traceback=traceback.format_exc())
        return record
    finally:
        record["seconds"] = round(time.perf_counter() - start, 2)
    record["folder"] = str(folder)
    record.update(analyse_graph(folder / "model.onnx"))
    checks = [("dummy_run", run_dummy), ("ort_model", run_ort_model)]
    if fused:
        unfused = zoo.zoo_folder(name, root, with_past=with_past)
        checks.append(("fused_vs_unfused", lambda n, f: fused_max_abs_diff(n, f, unfused)))
    for key, check in checks:
        try:
            record[key] = check(name, folder)
            record[f"{key}_ok"] = True
        except Exception as exc:  # noqa: BLE001
            record[f"{key}_ok"] = False
            record[f"{key}_error"] = _error(exc)
    return record


def survey_model(name: str, root: Path) -> dict[str, Any]:
    """All variants of one zoo model."""
    spec = zoo.ZOO[name]
    variants = {"plain": (False, False)}
    if spec.is_decoder:
        variants["past"] = (True, False)
    if spec.fusable is not None:
        variants["fused"] = (False, True)
        if spec.is_decoder:
            variants["past-fused"] = (True, True)
    return {
        "arch": spec.arch,
        "task": spec.task,
        "is_decoder": spec.is_decoder,
        "is_cnn": spec.is_cnn,
        "fusable": spec.fusable,
        "fusion_note": spec.fusion_note,
        "variants": {
            key: survey_variant(name, root, with_past=past, fused=fused)
            for key, (past, fused) in variants.items()
        },
    }


def _run_worker(name: str, root: Path) -> dict[str, Any]:
    """Survey ``name`` in a subprocess and read back its part file."""
    part = root / "survey-parts" / f"{name}.json"
    part.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), str(root), "--worker", name]
    log = root / "survey-parts" / f"{name}.log"
    try:
        with log.open("w") as fh:
            proc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=WORKER_TIMEOUT_S, check=False
            )
    except subprocess.TimeoutExpired:
        return {"arch": zoo.ZOO[name].arch, "worker_error": f"timeout after {WORKER_TIMEOUT_S}s"}
    if proc.returncode != 0 or not part.is_file():
        return {"arch": zoo.ZOO[name].arch, "worker_error": f"worker exited {proc.returncode}, see {log}"}
    return json.loads(part.read_text())


def _summary_line(name: str, result: dict[str, Any]) -> str:
    """Compact one-line status of a surveyed model."""
    if "worker_error" in result:
        return f"{name:14s} WORKER FAILED: {result['worker_error']}"
    cells = []
    for key, var in result["variants"].items():
        flags = "E" if var.get("export_ok") else "e"
        flags += "R" if var.get("dummy_run_ok") else "r"
        flags += "O" if var.get("ort_model_ok") else "o"
        cells.append(f"{key}={flags}({var.get('seconds', 0):.1f}s)")
    return f"{name:14s} " + " ".join(cells)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--jobs", type=int, default=2, help="models surveyed in parallel")
    parser.add_argument("--only", nargs="*", default=None, help="survey only these zoo names")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.outdir.resolve()
    (root / "survey-parts").mkdir(parents=True, exist_ok=True)

    if args.worker is not None:
        for module in _HEAVY_MODULES:  # keep import time out of the export timings
            importlib.import_module(module)
        result = survey_model(args.worker, root)
        (root / "survey-parts" / f"{args.worker}.json").write_text(json.dumps(result, indent=1))
        return 0

    names = args.only or list(zoo.ZOO)
    unknown = sorted(set(names) - set(zoo.ZOO))
    if unknown:
        parser.error(f"unknown zoo names: {unknown}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(names, pool.map(lambda n: _run_worker(n, root), names), strict=True))
    for name, result in results.items():
        print(_summary_line(name, result), flush=True)

    survey_path = root / "survey.json"
    merged = json.loads(survey_path.read_text()) if args.only and survey_path.is_file() else {}
    merged.update(results)
    merged = {name: merged[name] for name in zoo.ZOO if name in merged}
    survey_path.write_text(json.dumps(merged, indent=1))
    print(f"wrote {survey_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
