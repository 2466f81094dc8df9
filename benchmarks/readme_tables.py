"""Rewrite the README's result tables from the benchmark JSON files (never by hand).

Each table sits between ``<!-- name -->`` and ``<!-- /name -->`` markers in README.md.

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MB = 1_000_000
sys.path.insert(0, str(ROOT / "benchmarks"))

import distill  # noqa: E402
import engine_speed  # noqa: E402
import quality  # noqa: E402
import zoo_table  # noqa: E402


def _results(name: str) -> dict | None:
    """The JSON a benchmark wrote to ``benchmarks/results/NAME.json`` (None when it has not run)."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _engine_speed() -> str | None:
    data = _results("engine_speed")
    if data is None:
        return None
    rows = data["models"]
    lines = [engine_speed.markdown_table(rows), ""]
    for r in rows:
        if not r.get("ok"):
            continue
        runs = ", ".join(f"{run['prune_s']:.2f}" for run in r.get("runs", []) if "prune_s" in run)
        options = "".join(f", {k}={v}" for k, v in (r.get("prune_options") or {}).items())
        commit = (r.get("commit") or data["machine"]["git"]).get("commit") or "?"
        line = (f"- {r['model']}: params {r['params_before'] / 1e6:.1f}M -> "
                f"{r['params_after'] / 1e6:.1f}M, units removed {r['units_removed']}; "
                f"prune s per run: {runs}; sparsity {r.get('sparsity', data['sparsity'])}{options}, "
                f"median of {r.get('repeat', data['repeat'])}, commit {commit[:7]}, "
                f"{r.get('created', data['created'])}")
        gen = r.get("generate")
        if gen:
            if gen.get("ok"):
                files = " + ".join(f"{name} ({size / MB:.0f} MB)" for name, size in gen["files"].items())
                line += (f". Pruned folder: {files}; `ORTModelForCausalLM` loads it in {gen['load_s']:.1f} s "
                         f"({gen['config']['num_key_value_heads']} KV heads in config.json) and generates "
                         f"{gen['new_tokens']} greedy tokens in {gen['generate_s']:.2f} s, peak RSS "
                         f"{gen['peak_rss_bytes'] / MB:.0f} MB")
            else:
                line += ". Pruned folder FAILED to load/generate with `ORTModelForCausalLM`"
        lines.append(line)
    lines.append(f"- {data['machine']['cpu_count']} cores shared with other jobs; each row's times are the "
                 "median over fresh processes, peak RSS the maximum")
    return "\n".join(lines)


def _zoo() -> str | None:
    data = _results("zoo")
    if data is None:
        return None
    rows = data["rows"]
    ok = [r for r in rows if r["ok"]]
    worst = max((r["max_rel_error"] for r in ok), default=float("nan"))
    head = (f"{len(ok)} of {len(rows)} variants pruned and verified; worst oracle relative error {worst:.1e} "
            f"(sparsity {data['sparsity']}, scope {'+'.join(data['scope'])}, {data['importance']}, "
            f"{data['created']}, commit {data.get('git', {}).get('commit', '?')[:7]}).")
    return head + "\n\n" + zoo_table.markdown(rows)


def _decoder() -> str | None:
    data = _results("decoder")
    if data is None:
        return None
    import decoder

    head = (f"{data['model']}; perplexity over the first {data['token_budget']} tokens of held-out Rotten "
            f"Tomatoes reviews in {data['chunk']}-token windows; calibration per row: `N reviews` (one "
            f"review per example, up to 128 tokens) or `N x 256-token windows` (reviews joined by blank "
            f"lines, `--pack`), drawn from reviews disjoint from the held-out ones; last run "
            f"{data['created']}. "
            f"Tokens/s: 64-token greedy generation at batch 1 (best of 3, "
            f"{data.get('tokens_per_s_threads', 'default')} ONNX Runtime thread(s)).")
    return head + "\n\n" + decoder.markdown(data["rows"]) + "\n\n- " + decoder.verdict(data["rows"])


def _quality() -> str | None:
    data = _results("quality")
    if data is None:
        return None
    dense = data["dense"]
    peer = data.get("peer", {})
    lines = [quality.markdown(data), "",
             f"- dense: {dense['params'] / 1e6:.1f}M params, {dense['flops'] / 1e9:.2f} GFLOPs, "
             f"{dense['latency_ms']:.0f} ms per batch"]
    lines += [f"- {line}" for line in data.get("summary", [])]
    if peer.get("available"):
        lines.append(f"- peer: onnxsim {peer.get('version')} on the fused graph (fused dense "
                     f"{peer['fused_latency_ms']:.0f} ms, cosine {peer['fused_cos_mean']:.4f} to the raw "
                     "export)")
    else:
        lines.append(f"- peer not run: {peer.get('reason')}")
    lines += [f"- {note}" for note in data.get("notes", [])]
    if data.get("generated_sweep"):
        lines += ["", "Data-free repair, `fidelity(rounds=1)`: the shape of the generated repair data "
                  "(`--generated-sweep`; the default is `optimum_prune.pruner.GENERATED_REPAIR_DATA`):", "",
                  quality.sweep_markdown(data["generated_sweep"]), ""]
    split = data["split"]
    lines.append(f"- split: {split['held_out']} held out / {split['calibration']} calibration "
                 f"of {data['split']['pool']} reviews; {data['seconds']:.0f} s in all; "
                 f"commit {data['machine']['git']['commit'][:7]}, {data['created']}")
    lines.append("")
    lines.append("![quality](benchmarks/results/quality.png)")
    return "\n".join(lines)


def _distill() -> str | None:
    data = _results("distill")
    if data is None:
        return None
    kd, split, lat = data["kd"], data["split"], data["latency"]
    teacher = data["teacher"]["train_info"]
    lines = [distill.markdown(data), ""]
    lines += [f"- {line}" for line in distill.verdicts(data)]
    lines += [
        f"- teacher: all-MiniLM-L6-v2 fine-tuned {teacher['steps']} steps (seed {teacher['seed']}), "
        f"held-out accuracy {teacher['heldout']['accuracy']:.3f} in PyTorch",
        f"- KD: {kd['steps']} steps at batch {kd['batch_size']} ({split['kd_train']} train-split reviews), "
        f"{kd['seconds'] / 60:.1f} min; T={kd['temperature']}, alpha_ce={kd['alpha_ce']}, "
        f"lr={kd['learning_rate']}, frozen {kd['freeze']}; distillation loss on {split['kd_eval']} held-out "
        f"train reviews {kd['loss_before']:.4f} -> {kd['loss_after']:.4f}",
        f"- student vs pruned ONNX before training: max abs diff "
        f"{max(kd['student_max_abs_diff'].values()):.1e}; trained student vs its export "
        f"{max(kd['export_max_abs_diff'].values()):.1e}; reloads with from_pretrained: {kd['native_reload']}",
        f"- accuracy on {split['held_out']} held-out reviews ({split['held_out_rule']}); latency: batch "
        f"{lat['batch']} x {lat['sequence']} tokens, {lat['statistic']}, {lat['repeat']} rounds",
        f"- {data['seconds'] / 60:.1f} min in all, {data['machine']['cpu_count']} cores, "
        f"commit {data['machine']['git']['commit'][:7]}, {data['created']}",
    ]
    return "\n".join(lines)


def _quality_classifier() -> str | None:
    data = _results("quality_classifier")
    if data is None:
        return None
    import quality_classifier

    dense, info, split = data["dense"], data["classifier"]["train_info"], data["split"]
    lines = [quality_classifier.markdown(data), ""]
    lines += [f"- {line}" for line in data.get("findings", [])]
    lines.append(f"- dense: accuracy {dense['accuracy']:.3f} (ONNX Runtime; torch "
                 f"{info['heldout']['accuracy']:.3f}), {dense['params'] / 1e6:.1f}M params, "
                 f"{dense['flops'] / 1e9:.2f} GFLOPs, {dense['latency_ms']:.0f} ms per batch of 32 x 64")
    lines.append(f"- classifier: {info['steps']} steps ({info['epochs']} epoch) at batch "
                 f"{info['batch_size']}, "
                 f"lr {info['learning_rate']}, max_length {info['max_length']}, seed {info['seed']}, "
                 f"{info['train_examples']} training reviews, {info['seconds']:.0f} s on "
                 f"{data['machine']['cpu_count']} cores")
    lines += [f"- {note}" for note in data.get("notes", [])]
    names = list(dict.fromkeys(r["name"] for r in data["rows"]))
    secs = {n: [r["prune_s"] for r in data["rows"] if r["name"] == n] for n in names}
    lines.append("- mean pruning seconds (scoring + repair): "
                 + ", ".join(f"{n} {sum(v) / len(v):.0f}" for n, v in secs.items())
                 + f"; load average at start / end {data.get('load_average_start_end')}")
    lines.append(f"- split: {split['held_out']} held out ({split['held_out_positive']} positive) / "
                 f"{split['calibration']} calibration; {data['seconds']:.0f} s in all; "
                 f"commit {data['machine']['git']['commit'][:7]}, {data['created']}")
    lines.append("")
    lines.append("![quality_classifier](benchmarks/results/quality_classifier.png)")
    return "\n".join(lines)


def _latency_budget() -> str | None:
    data = _results("latency_budget")
    if data is None:
        return None
    lines = ["| latency budget | allocation | estimated saving | measured saving | ms per batch |",
             "|---:|---|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {int(100 * r['sparsity'])}% | {r['allocation']} | {r['estimated_saving']:.3f} | "
                     f"{r['measured_saving']:.3f} | {r['latency_ms']:.0f} |")
    lines.append("")
    lat = data["latency"]
    lines.append(f"- {data['model']}, {data['importance']}, ffn + heads; dense "
                 f"{data['dense_latency_ms']:.0f} ms at batch {lat['batch']} x {lat['sequence']} (median of "
                 f"{lat['repeat']}); table measured in {data['table_seconds']:.0f} s; load average "
                 f"{data['load_average_end']} on {data['machine']['cpu_count']} cores; commit "
                 f"{data['machine']['git']['commit'][:7]}, {data['created']}")
    return "\n".join(lines)


def _norm_kernels() -> str | None:
    data = _results("norm_kernels")
    if data is None:
        return None
    import norm_kernels

    return (norm_kernels.markdown(data) + "\n\n" + f"- mean of {data['runs']} runs per form; largest output "
            f"difference {max(r['max_abs_diff'] for r in data['rows']):.1e}; onnxruntime "
            f"{data['machine']['onnxruntime']}, {data['machine']['cpu_count']} cores, {data['created']}")


def _quality_ceiling() -> str | None:
    data = _results("quality_ceiling")
    if data is None:
        return None
    import quality_ceiling

    t = data["training"]
    grads = [r for r in data["rows"] if r["name"].startswith("gradient")]
    lines = [quality_ceiling.markdown(data), "",
             f"- configuration: {data['configuration']} (the best row of `quality.py` at 30%)",
             f"- gradient reconstruction: {t['loss']}; batch {t['batch_size']}, dropout {t['dropout']}, "
             f"frozen {t['frozen']}; 128 reviews: {t['small']['epochs']} epochs at lr "
             f"{t['small']['learning_rate']}, large: {t['large']['epochs']} epochs at lr "
             f"{t['large']['learning_rate']}",
             "- training time per row: " + ", ".join(f"{int(100 * r['sparsity'])}% {r['reviews']} reviews "
                                                   f"{r['train_s'] / 60:.1f} min" for r in grads),
             f"- held out: the same {data['split']['held_out']} reviews as `quality.py`; "
             f"{data['split']['rule']}; targets {data['targets']}; {data['seconds'] / 60:.0f} min in all; "
             f"commit {data['machine']['git']['commit'][:7]}, {data['created']}"]
    return "\n".join(lines)


def _cache_narrowing() -> str | None:
    data = _results("cache_narrowing")
    if data is None:
        return None
    import cache_narrowing

    shape = data["shape"]
    return (cache_narrowing.markdown(data) + "\n\n" +
            f"- GPT-2 shape {shape['n_layer']} layers x {shape['n_embd']} hidden x {shape['n_head']} heads, "
            f"vocabulary {shape['vocab_size']}, random weights; {data['heads_removed']} heads removed "
            f"({data['params_before'] / 1e6:.1f}M -> {data['params_after'] / 1e6:.1f}M parameters); one "
            f"new token at batch 1, {data['threads']} ONNX Runtime threads, median of {data['repeats']} "
            f"interleaved rounds; `ORTModelForCausalLM` generated {len(data['generated']) - 4} tokens from "
            f"the narrowed folder; commit {data['commit']}, {data['created']}")


def _arch_survey() -> str | None:
    data = _results("arch_survey")
    if data is None:
        return None
    import arch_survey

    head = (f"{data['pruned']} of {data['variants']} variants exported and pruned, {data['verified']} "
            f"of them exact under the oracle (sparsity {data['sparsity']}, scope {'+'.join(data['scope'])}, "
            f"{data['importance']}; {data['seconds']:.0f} s; commit {data['machine']['git']['commit'][:7]}, "
            f"{data['created']}).")
    return head + "\n\n" + arch_survey.markdown(data["rows"])


def _cnn_quality() -> str | None:
    data = _results("cnn_quality")
    if data is None:
        return None
    import cnn_quality

    body = cnn_quality.markdown(data)
    rounding = cnn_quality.rounding_markdown(data)
    if rounding:
        body += ("\n\nONNX Runtime speedup at batch 64 of `l2` (no repair) against the dense model, by the "
                 "multiple the kept channels of every group are rounded to (`round_to={\"conv\": k}`):\n\n"
                 + rounding)
    return body + "\n\n![cnn quality](benchmarks/results/cnn_quality.png)"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name, render in (("engine_speed", _engine_speed), ("zoo", _zoo), ("quality", _quality),
                         ("quality_classifier", _quality_classifier), ("latency_budget", _latency_budget),
                         ("decoder", _decoder), ("distill", _distill), ("norm_kernels", _norm_kernels),
                         ("arch_survey", _arch_survey), ("quality_ceiling", _quality_ceiling),
                         ("cache_narrowing", _cache_narrowing), ("cnn_quality", _cnn_quality)):
        body = render()
        if body is None:
            continue
        pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> markers")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    readme.write_text(text)
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
