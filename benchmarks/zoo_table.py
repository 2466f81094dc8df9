"""The engine over the model zoo: share of parameters removed and oracle error, per architecture.

Each tiny random-weight model of ``tests/zoo.py`` (exported with optimum-onnx; decoders with and
without past key/values; as exported and after ONNX Runtime's transformer fusions where they apply)
is pruned at 30% of ``ffn`` + ``heads`` + ``conv`` with the default ``l2`` criterion (with past
key/values, ``prune_kv_heads=True``: heads go through the cache, and the pruner checks that the folder
generates), and checked with the exactness oracle. Writes ``benchmarks/results/zoo.json`` and prints a
markdown table.

    python benchmarks/zoo_table.py [--cache-dir outputs/zoo] [--only bert llama]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from optimum_prune import ORTPruner, PruningConfig, verify  # noqa: E402
from zoo import ZOO, export_zoo_model  # noqa: E402  (the zoo lives with the tests)


def run_variant(name: str, past: bool, fused: bool, cache: Path, sparsity: float) -> dict:
    row = {"arch": name, "past": past, "fused": fused}
    try:
        src = export_zoo_model(name, cache, with_past=past, fused=fused)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = ORTPruner.from_pretrained(src).prune(
                PruningConfig(sparsity=sparsity, scope=("ffn", "heads", "conv"), prune_kv_heads=past),
                Path(tmp) / "pruned")
            row["prune_s"] = round(time.perf_counter() - start, 3)
            report = json.loads((out / "report.json").read_text())["stages"][-1]
            result = verify(src, out)
        row.update(params_before=report["params_before"], params_after=report["params_after"],
                   params_removed=round(1 - report["params_after"] / report["params_before"], 4),
                   units_removed=report["units_removed"], max_rel_error=result.max_rel_error,
                   exact=bool(result.exact_groups), ok=True)
    except Exception as e:  # a failing variant is a row in the table, not the end of the run
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc()[-2000:])
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| arch | past | fused | params removed | units removed (ffn/heads/conv) | oracle max rel err |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['arch']} | {'yes' if r['past'] else ''} | {'yes' if r['fused'] else ''} | "
                         f"failed: {r['error'][:80]} | | |")
            continue
        u = r["units_removed"]
        lines.append(f"| {r['arch']} | {'yes' if r['past'] else ''} | {'yes' if r['fused'] else ''} | "
                     f"{100 * r['params_removed']:.1f}% | {u['ffn']}/{u['heads']}/{u['conv']} | "
                     f"{r['max_rel_error']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "outputs" / "zoo")
    parser.add_argument("--only", nargs="*", default=None, help="architectures to run (default: all)")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "zoo.json")
    args = parser.parse_args()
    rows = []
    for name, spec in ZOO.items():
        if args.only and name not in args.only:
            continue
        for past in (False, True) if spec.is_decoder else (False,):
            for fused in (False, True) if spec.fusable else (False,):
                row = run_variant(name, past, fused, args.cache_dir, args.sparsity)
                print(f"{name:<12} past={past!s:<5} fused={fused!s:<5} "
                      + (f"removed {row['params_removed']:.3f} err {row['max_rel_error']:.1e}" if row["ok"]
                         else row["error"][:120]), flush=True)
                rows.append(row)
    import onnxruntime
    import transformers
    from engine_speed import _git_state

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "zoo", "sparsity": args.sparsity, "scope": ["ffn", "heads", "conv"], "importance": "l2",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
        "git": _git_state(), "rows": rows,
    }, indent=1) + "\n")
    print(markdown(rows))
    print(f"\nresults: {args.output}")


if __name__ == "__main__":
    main()
