"""Engine speed and memory: analyse and prune a BERT-base and a ~0.5B decoder exported with Optimum.

    .venv/bin/python benchmarks/engine_speed.py          # full run -> benchmarks/results/engine_speed.json
    .venv/bin/python benchmarks/engine_speed.py --quick  # tiny configs, seconds -> outputs/bench/...
    .venv/bin/python benchmarks/engine_speed.py --models bert-base   # rerun one row, keep the others

Models are built from ``transformers`` configs with random weights (``torch.manual_seed(0)``), saved
with ``save_pretrained`` and exported with ``optimum.exporters.onnx.main_export``:

* ``bert-base``: ``BertModel(BertConfig())`` (hidden 768, 12 layers, 12 heads, FFN 3072), task
  ``feature-extraction``, kept as exported (one protobuf, ~0.4 GB).
* ``qwen2-0.5b``: ``Qwen2ForCausalLM`` with Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 KV
  heads, FFN 4864, vocabulary 151936, tied embeddings), task ``text-generation-with-past``. The benchmark
  is about the external-data path: if the export is a single protobuf it is re-saved with onnx-ir as
  ``model.onnx`` + ``model.onnx_data``.
* ``llama-0.6b-2.6gb``: ``LlamaForCausalLM`` (hidden 1024, 24 layers, 16 query / 8 KV heads, MLP 4096,
  vocabulary 128256, untied LM head: 640M parameters, ~2.6 GB in fp32), task
  ``text-generation-with-past``; over 2 GB, so optimum-onnx writes external data itself. Pruned with
  ``prune_kv_heads=True`` (30% of 8 KV groups per layer = 2, with their query heads, and the cache), and
  the pruned folder is then loaded with ``ORTModelForCausalLM`` in a fresh process for an 8-token greedy
  ``generate``.

``--models`` measures only the listed models and keeps the other rows of the results JSON (each row
records its own date, commit, sparsity and repeat count); ``--fresh`` writes only the measured rows.

Exports are cached under ``outputs/bench/<model>/onnx`` (``export.json`` next to it records how they were
made) and reused. Every export and every measurement runs in its own subprocess, so the peak RSS of a
measurement is that of one ``from_pretrained().analyze()`` + ``.prune()`` run and nothing else. The
peak comes from the child's ``VmHWM`` (``/proc/self/status``) and is cross-checked with ``os.wait4``'s
``ru_maxrss`` for that child alone; a sampling thread also records the anonymous / file-backed split
(``RssAnon`` / ``RssFile``, sampled every 20 ms, so approximate), which shows whether the weights are
copied or only mapped.

To profile one measurement (e.g. where the BERT-base prune time goes)::

    .venv/bin/python -m cProfile -s cumtime benchmarks/engine_speed.py \\
        --child-run outputs/bench/bert-base/onnx outputs/bench/bert-base/pruned-prof /tmp/r.json | head -60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "outputs" / "bench"
RESULTS = ROOT / "benchmarks" / "results" / "engine_speed.json"
QUICK_RESULTS = CACHE_DIR / "engine_speed_quick.json"
EXTERNAL_DATA = "model.onnx_data"
MB = 1_000_000  # decimal megabytes in the printed table


# --------------------------------------------------------------------------------------------------------
# Model specs
# --------------------------------------------------------------------------------------------------------


def _bert_config(quick: bool):
    from transformers import BertConfig

    if quick:
        return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          vocab_size=1000, max_position_embeddings=128)
    return BertConfig()


def _qwen2_config(quick: bool):
    from transformers import Qwen2Config

    if quick:
        return Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=1000, max_position_embeddings=128,
                           tie_word_embeddings=True)
    # Qwen2.5-0.5B's shape (494M parameters).
    return Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def _llama_config(quick: bool):
    from transformers import LlamaConfig

    if quick:
        return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                           intermediate_size=128, vocab_size=1000, max_position_embeddings=128,
                           tie_word_embeddings=False)
    # A Llama-architecture decoder over 2 GB in fp32 (640M parameters, untied LM head): hidden 1024,
    # 24 layers, 16 query / 8 KV heads (head_dim 64), MLP 4096, Llama-3's 128256-token vocabulary.
    return LlamaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                       intermediate_size=4096, vocab_size=128256, max_position_embeddings=8192,
                       rope_theta=500_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


@dataclass(frozen=True)
class Spec:
    make_config: Callable
    model_cls: str
    task: str
    force_external: bool
    # PruningConfig fields besides sparsity (the default scope is ffn + heads).
    prune_options: dict = field(default_factory=dict)
    # After the measured runs, load the pruned folder with ORTModelForCausalLM and generate a few tokens.
    generate: bool = False


SPECS: dict[str, Spec] = {
    "bert-base": Spec(_bert_config, "BertModel", "feature-extraction", False),
    "qwen2-0.5b": Spec(_qwen2_config, "Qwen2ForCausalLM", "text-generation-with-past", True),
    # > 2 GB: optimum-onnx itself writes external data; KV groups (query heads sharing a KV head) pruned too.
    "llama-0.6b-2.6gb": Spec(_llama_config, "LlamaForCausalLM", "text-generation-with-past", True,
                             prune_options={"prune_kv_heads": True}, generate=True),
}


def _folder_name(name: str, quick: bool) -> str:
    return f"quick-{name}" if quick else name


def _spec_key(name: str, quick: bool) -> str:
    """Identifies how a cached export was made; a cache with another key is rebuilt."""
    spec = SPECS[name]
    return f"v1|{name}|{spec.model_cls}|{spec.task}|external={spec.force_external}|quick={quick}"


# --------------------------------------------------------------------------------------------------------
# Export (child process)
# --------------------------------------------------------------------------------------------------------


def _model_files(folder: Path) -> list[Path]:
    """``model.onnx`` and its external data files (whatever optimum or onnx-ir named them)."""
    import onnx

    model_file = folder / "model.onnx"
    proto = onnx.load(str(model_file), load_external_data=False)
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node for a in n.attribute
                                               if a.type == onnx.AttributeProto.TENSOR]
    locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
    return [model_file] + [folder / loc for loc in sorted(locations)]


def export_child(name: str, quick: bool, out: Path) -> None:
    """Build ``name`` with random weights and export it into ``out`` (external data if the spec asks)."""
    import onnx_ir as ir
    import torch
    import transformers
    from optimum.exporters.onnx import main_export

    spec = SPECS[name]
    make_config, model_cls, task = spec.make_config, spec.model_cls, spec.task
    force_external = spec.force_external
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    info: dict = {"model": name, "quick": quick, "task": task, "model_class": model_cls,
                  "spec_key": _spec_key(name, quick)}
    try:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        config = make_config(quick)
        model = getattr(transformers, model_cls)(config).eval()
        info["torch_params"] = sum(p.numel() for p in model.parameters())
        hf_dir = work / "hf"
        model.save_pretrained(hf_dir)
        del model
        info["build_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        onnx_dir = work / "onnx"
        main_export(str(hf_dir), onnx_dir, task=task, device="cpu", library_name="transformers")
        info["export_s"] = round(time.perf_counter() - t0, 2)
        if not (onnx_dir / "model.onnx").is_file():
            raise RuntimeError(f"export produced no model.onnx: {sorted(p.name for p in onnx_dir.iterdir())}")
        exported = _model_files(onnx_dir)
        info["exported_files"] = {p.name: p.stat().st_size for p in exported}
        info["exported_with_external_data"] = len(exported) > 1

        if len(exported) == 1 and force_external:
            # Single protobuf (< 2 GB): re-save with onnx-ir so the weights live in model.onnx_data.
            t0 = time.perf_counter()
            model_ir = ir.load(onnx_dir / "model.onnx")
            resave = work / "resave"
            resave.mkdir()
            ir.save(model_ir, resave / "model.onnx", external_data=EXTERNAL_DATA)
            del model_ir
            os.replace(resave / EXTERNAL_DATA, onnx_dir / EXTERNAL_DATA)
            os.replace(resave / "model.onnx", onnx_dir / "model.onnx")
            info["resaved_with_onnx_ir"] = True
            info["resave_s"] = round(time.perf_counter() - t0, 2)
        else:
            info["resaved_with_onnx_ir"] = False
        files = _model_files(onnx_dir)
        if force_external and len(files) < 2:
            raise RuntimeError(f"{onnx_dir / 'model.onnx'} still has no external data")
        info["files"] = {p.name: p.stat().st_size for p in files}
        info["file_bytes"] = sum(info["files"].values())
        info["folder"] = sorted(p.name for p in onnx_dir.iterdir())
        if out.exists():
            shutil.rmtree(out)
        os.replace(onnx_dir, out)
        (out.parent / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# Measurement (child process)
# --------------------------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    """Memory fields of /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class _Sampler(threading.Thread):
    """Polls /proc/self/status and keeps per-phase peaks of VmRSS, RssAnon and RssFile."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "import"
        self.peaks: dict[str, dict[str, int]] = {}
        self._done = threading.Event()

    def sample(self) -> None:
        st = _status()
        peaks = self.peaks.setdefault(self.phase, {})
        for key in ("VmRSS", "RssAnon", "RssFile"):
            peaks[key] = max(peaks.get(key, 0), st.get(key, 0))

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def set_phase(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        self.sample()
        self._done.set()
        self.join()


def run_child(onnx_dir: Path, pruned_dir: Path, result: Path, sparsity: float, options: dict | None = None
              ) -> int:
    """Time ``from_pretrained().analyze()`` and ``.prune()``; write the numbers (or error) to ``result``.

    ``options`` are further :class:`PruningConfig` fields (e.g. ``{"prune_kv_heads": True}``)."""
    import traceback

    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    from optimum_prune import ORTPruner, PruningConfig

    out: dict = {"import_s": time.perf_counter() - t0, "peak_rss_after_import_bytes": _status()["VmHWM"]}
    if pruned_dir.exists():
        shutil.rmtree(pruned_dir)
    phase, t0 = "analyze", time.perf_counter()
    try:
        sampler.set_phase("analyze")
        pruner = ORTPruner.from_pretrained(onnx_dir)
        analysis = pruner.analyze()
        out.update(analyze_s=time.perf_counter() - t0, engine_analyze_s=analysis.seconds,
                   peak_rss_after_analyze_bytes=_status()["VmHWM"], analysis_params=analysis.params,
                   analysis_summary=analysis.to_dict()["summary"],
                   unprunable_groups=len(analysis.unprunable()), unprunable=analysis.unprunable()[:20])

        phase, t0 = "prune", time.perf_counter()
        sampler.set_phase("prune")
        folder = Path(pruner.prune(PruningConfig(sparsity=sparsity, **(options or {})), pruned_dir))
        out["prune_s"] = time.perf_counter() - t0
        report = json.loads((folder / "report.json").read_text())["stages"][-1]
        out.update(engine_prune_s=report.get("seconds"),
                   report={k: report.get(k) for k in ("params_before", "params_after", "flops_before",
                                                      "flops_after", "groups_found", "groups_pruned",
                                                      "units_removed")},
                   pruned_files={p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()})
        code = 0
    except Exception:
        out.update(failed_phase=phase, failed_after_s=time.perf_counter() - t0,
                   error=traceback.format_exc().splitlines()[-12:])
        traceback.print_exc()
        code = 1
    sampler.stop()
    out.update(peak_rss_bytes=_status()["VmHWM"], sampled_peaks=sampler.peaks)
    result.write_text(json.dumps(out, indent=1) + "\n")
    return code


def generate_child(pruned_dir: Path, result: Path, new_tokens: int = 8) -> int:
    """Load ``pruned_dir`` with ``ORTModelForCausalLM`` and generate ``new_tokens`` greedy tokens (random
    weights give random tokens: this checks that the folder loads and its KV cache is sized right)."""
    import traceback

    sampler = _Sampler()
    sampler.start()
    out: dict = {"new_tokens": new_tokens}
    phase = "load"
    try:
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        cfg = json.loads((pruned_dir / "config.json").read_text())
        out["config"] = {k: cfg.get(k) for k in ("num_attention_heads", "num_key_value_heads", "head_dim",
                                                 "intermediate_size", "hidden_size")}
        out["files"] = {p.name: p.stat().st_size for p in _model_files(pruned_dir)}
        out["external_data"] = len(out["files"]) > 1
        sampler.set_phase("load")
        t0 = time.perf_counter()
        model = ORTModelForCausalLM.from_pretrained(pruned_dir, provider="CPUExecutionProvider")
        out["load_s"] = time.perf_counter() - t0
        phase = "generate"
        sampler.set_phase("generate")
        ids = torch.tensor([[1, 100, 200, 300, 400, 500, 600, 700]])
        t0 = time.perf_counter()
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
        out["generate_s"] = time.perf_counter() - t0
        out["generated"] = gen[0, ids.shape[1]:].tolist()
        out["use_cache"] = bool(getattr(model, "use_cache", None))
        code = 0 if len(out["generated"]) == new_tokens else 1
    except Exception:
        out.update(failed_phase=phase, error=traceback.format_exc().splitlines()[-12:])
        traceback.print_exc()
        code = 1
    sampler.stop()
    out.update(peak_rss_bytes=_status()["VmHWM"], sampled_peaks=sampler.peaks, ok=code == 0)
    result.write_text(json.dumps(out, indent=1) + "\n")
    return code


# --------------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------------


def _spawn(args: list[str], log: Path) -> tuple[int, float, int]:
    """Run this script with ``args`` in a fresh process; return (exit code, wall seconds, ru_maxrss bytes)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], stdout=f,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over every child so far).
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, rusage.ru_maxrss * 1024


def _tail(log: Path, n: int = 15) -> list[str]:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return lines[-n:]


def ensure_export(name: str, quick: bool, cache: Path) -> tuple[Path, dict]:
    folder = cache / _folder_name(name, quick)
    onnx_dir, meta = folder / "onnx", folder / "export.json"
    if (onnx_dir / "model.onnx").is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("spec_key") == _spec_key(name, quick):
            print(f"[{name}] reusing export {onnx_dir}", flush=True)
            return onnx_dir, info
        print(f"[{name}] cached export {onnx_dir} was made differently; rebuilding", flush=True)
    print(f"[{name}] exporting into {onnx_dir} ...", flush=True)
    args = ["--child-export", name, str(onnx_dir)] + (["--quick"] if quick else [])
    code, wall, maxrss = _spawn(args, folder / "export.log")
    if code != 0:
        raise RuntimeError(f"export of {name} failed (exit {code}); see {folder / 'export.log'}:\n"
                           + "\n".join(_tail(folder / "export.log")))
    info = json.loads(meta.read_text())
    info.update(export_wall_s=round(wall, 2), export_peak_rss_bytes=maxrss)
    meta.write_text(json.dumps(info, indent=1) + "\n")
    print(f"[{name}] exported in {wall:.1f} s", flush=True)
    return onnx_dir, info


_EXPORT_KEYS = ("torch_params", "export_s", "export_wall_s", "exported_with_external_data",
                "resaved_with_onnx_ir", "export_peak_rss_bytes")


def measure(name: str, quick: bool, cache: Path, sparsity: float, repeat: int = 1) -> dict:
    """``repeat`` fresh-process runs: median times, maximum peak RSS, per-run values in ``runs``."""
    onnx_dir, _ = ensure_export(name, quick, cache)
    runs = [measure_once(name, onnx_dir, sparsity, i, repeat) for i in range(repeat)]
    row = dict(runs[-1])
    row["repeat"] = repeat
    row["sparsity"] = sparsity
    row["prune_options"] = SPECS[name].prune_options
    row["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row["commit"] = _git_state()
    if SPECS[name].generate and runs[-1].get("ok"):
        row["generate"] = check_generate(name, onnx_dir.parent)
    row["runs"] = [{k: r.get(k) for k in ("ok", "analyze_s", "prune_s", "failed_after_s", "peak_rss_bytes")}
                   for r in runs]
    for key in ("analyze_s", "prune_s", "total_s", "failed_after_s", "import_s", "child_wall_s"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            row[key] = round(statistics.median(vals), 3)
    peaks = [r["peak_rss_bytes"] for r in runs if r.get("peak_rss_bytes")]
    if peaks:
        row["peak_rss_bytes"] = max(peaks)
        row["rss_over_file"] = round(max(peaks) / row["file_bytes"], 3)
    row["ok"] = all(r.get("ok") for r in runs)
    return row


def check_generate(name: str, folder: Path) -> dict:
    """``generate_child`` on the last run's pruned folder, in a fresh process."""
    result_file = folder / "generate.json"
    result_file.unlink(missing_ok=True)
    print(f"[{name}] loading the pruned folder with ORTModelForCausalLM and generating ...", flush=True)
    code, wall, maxrss = _spawn(["--child-generate", str(folder / "pruned"), str(result_file)],
                                folder / "generate.log")
    if not result_file.is_file():
        return {"ok": False, "exit_code": code, "error": _tail(folder / "generate.log")}
    r = json.loads(result_file.read_text())
    r.update(exit_code=code, child_wall_s=round(wall, 2), peak_rss_wait4_bytes=maxrss)
    for key in ("load_s", "generate_s"):
        if key in r:
            r[key] = round(r[key], 3)
    if r.get("ok"):
        print(f"[{name}] pruned folder ({'external data' if r['external_data'] else 'one protobuf'}, "
              f"{r['config']['num_key_value_heads']} KV heads) loaded in {r['load_s']:.1f} s, generated "
              f"{r['generated']} in {r['generate_s']:.2f} s, peak RSS {r['peak_rss_bytes'] / MB:.0f} MB",
              flush=True)
    else:
        print(f"[{name}] generate FAILED:\n  " + "\n  ".join(r.get("error", [])), flush=True)
    return r


def measure_once(name: str, onnx_dir: Path, sparsity: float, index: int, repeat: int) -> dict:
    folder = onnx_dir.parent
    export_info = json.loads((folder / "export.json").read_text())
    files = _model_files(onnx_dir)
    file_bytes = sum(p.stat().st_size for p in files)
    result_file = folder / "run.json"
    result_file.unlink(missing_ok=True)
    print(f"[{name}] measuring analyze + prune (sparsity {sparsity}), run {index + 1}/{repeat} ...",
          flush=True)
    args = ["--child-run", str(onnx_dir), str(folder / "pruned"), str(result_file),
            "--sparsity", str(sparsity), "--prune-options", json.dumps(SPECS[name].prune_options)]
    code, wall, maxrss = _spawn(args, folder / "run.log")
    row: dict = {"model": name, "onnx_dir": str(onnx_dir.relative_to(ROOT)), "task": export_info.get("task"),
                 "file_bytes": file_bytes, "files": {p.name: p.stat().st_size for p in files},
                 "export": {k: export_info.get(k) for k in _EXPORT_KEYS}}
    if not result_file.is_file():
        row.update(ok=False, exit_code=code, child_wall_s=round(wall, 2), error=_tail(folder / "run.log"))
        print(f"[{name}] FAILED (exit {code}):\n  " + "\n  ".join(row["error"]), flush=True)
        return row
    r = json.loads(result_file.read_text())
    row.update(ok=code == 0 and "error" not in r, exit_code=code, child_wall_s=round(wall, 2))
    for key in ("analyze_s", "prune_s", "import_s", "engine_analyze_s", "failed_after_s"):
        if key in r:
            row[key] = round(r[key], 3)
    if "analyze_s" in r and "prune_s" in r:
        row["total_s"] = round(r["analyze_s"] + r["prune_s"], 3)
    row.update(
        peak_rss_bytes=r["peak_rss_bytes"],
        peak_rss_wait4_bytes=maxrss,
        rss_over_file=round(r["peak_rss_bytes"] / file_bytes, 3),
        peak_rss_after_import_bytes=r.get("peak_rss_after_import_bytes"),
        peak_rss_after_analyze_bytes=r.get("peak_rss_after_analyze_bytes"),
        sampled_peaks_bytes=r.get("sampled_peaks"),
    )
    rep = r.get("report") or {}
    row.update({k: rep[k] for k in ("params_before", "params_after", "flops_before", "flops_after",
                                    "groups_found", "groups_pruned", "units_removed") if k in rep})
    for key in ("engine_prune_s", "analysis_params", "analysis_summary", "unprunable_groups", "unprunable",
                "pruned_files", "failed_phase", "error"):
        if key in r:
            row[key] = r[key]
    if not row["ok"]:
        print(f"[{name}] FAILED in {r.get('failed_phase')} after {r.get('failed_after_s', 0):.2f} s "
              f"(analyze {r.get('analyze_s', float('nan')):.2f} s, "
              f"peak RSS {r['peak_rss_bytes'] / MB:.0f} MB):"
              "\n  " + "\n  ".join(r.get("error", _tail(folder / "run.log"))), flush=True)
        return row
    print(f"[{name}] analyze {row['analyze_s']:.2f} s, prune {row['prune_s']:.2f} s, "
          f"peak RSS {row['peak_rss_bytes'] / MB:.0f} MB ({row['rss_over_file']:.2f}x file)", flush=True)
    return row


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_state() -> dict:
    """Commit and uncommitted files of the repository (the engine may be edited between runs)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    status = git("status", "--porcelain", "--", "optimum_prune").splitlines()
    dirty = [ln[3:] for ln in status]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "engine_dirty_files": dirty}


def write_results(data: dict, path: Path, started: float) -> None:
    """Stamp ``data`` with the run's seconds (since ``started``, a ``time.perf_counter()``), the machine and
    the date, and write it to ``path`` as indented JSON (the folder is created)."""
    data["seconds"] = round(time.perf_counter() - started, 1)
    data["machine"] = machine_info()
    data["created"] = time.strftime("%Y-%m-%d")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def kept_rows(path: Path, rerun: set[tuple[str, float]]) -> tuple[list[dict], dict]:
    """For a partial rerun (``--only``): the rows of the results file at ``path`` whose ``(name, sparsity)``
    is not in ``rerun``, each stamped with the date it was measured (``measured``, else the file's
    ``created``), and the file's whole data ({} and no rows when there is no file)."""
    if not path.is_file():
        return [], {}
    previous = json.loads(path.read_text())
    rows = [dict(row, measured=row.get("measured", previous.get("created"))) for row in previous["rows"]
            if (row["name"], row["sparsity"]) not in rerun]
    return rows, previous


def machine_info() -> dict:
    cpu_model, mem_total = None, None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            mem_total = next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal")), None)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "mem_total_bytes": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "onnx_ir": _version("onnx-ir"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "optimum": _version("optimum"),
        "optimum_onnx": _version("optimum-onnx"),
        "optimum_prune": _version("optimum-prune"),
        "git": _git_state(),
    }


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | file MB | analyze s | prune s | peak RSS MB | RSS / file |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("ok"):
            lines.append(f"| {r['model']} | {r['file_bytes'] / MB:.0f} | {r['analyze_s']:.2f} "
                         f"| {r['prune_s']:.2f} | {r['peak_rss_bytes'] / MB:.0f} "
                         f"| {r['rss_over_file']:.2f} |")
        else:
            size = f"{r['file_bytes'] / MB:.0f}" if "file_bytes" in r else "-"
            analyze = f"{r['analyze_s']:.2f}" if "analyze_s" in r else "failed"
            prune = f"{r['prune_s']:.2f}" if "prune_s" in r else (
                f"failed after {r['failed_after_s']:.2f}" if r.get("failed_phase") == "prune" else "failed")
            rss = f"{r['peak_rss_bytes'] / MB:.0f}" if "peak_rss_bytes" in r else "-"
            ratio = f"{r['rss_over_file']:.2f}" if "rss_over_file" in r else "-"
            lines.append(f"| {r['model']} | {size} | {analyze} | {prune} | {rss} | {ratio} |")
    return "\n".join(lines)


def merge_rows(previous: dict, rows: list[dict]) -> list[dict]:
    """``rows`` with the rows of ``previous`` (a results JSON) for the models not measured now, in
    ``SPECS`` order. Old rows get the old file's provenance (created, commit, sparsity, repeat)."""
    new = {r["model"]: r for r in rows}
    kept = {}
    for r in previous.get("models", []):
        if r.get("model") in new:
            continue
        r = dict(r)
        r.setdefault("created", previous.get("created"))
        r.setdefault("commit", previous.get("machine", {}).get("git"))
        r.setdefault("sparsity", previous.get("sparsity"))
        r.setdefault("repeat", previous.get("repeat"))
        kept[r["model"]] = r
    merged = {**kept, **new}
    order = [m for m in SPECS if m in merged] + [m for m in merged if m not in SPECS]
    return [merged[m] for m in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configs (smoke test, seconds)")
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), default=list(SPECS))
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh-process runs per model (median times, max peak RSS); default 3")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--fresh", action="store_true",
                        help="write only the models measured now (default: keep the other rows of --output)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results JSON (default {RESULTS.relative_to(ROOT)}, or "
                             f"{QUICK_RESULTS.relative_to(ROOT)} with --quick)")
    parser.add_argument("--prune-options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--child-generate", nargs=2, metavar=("PRUNED_DIR", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--child-export", nargs=2, metavar=("MODEL", "ONNX_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--child-run", nargs=3, metavar=("ONNX_DIR", "PRUNED_DIR", "RESULT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_export:
        export_child(args.child_export[0], args.quick, Path(args.child_export[1]))
        return 0
    if args.child_run:
        onnx_dir, pruned_dir, result = (Path(p) for p in args.child_run)
        return run_child(onnx_dir, pruned_dir, result, args.sparsity, json.loads(args.prune_options))
    if args.child_generate:
        return generate_child(Path(args.child_generate[0]), Path(args.child_generate[1]))

    output = args.output or (QUICK_RESULTS if args.quick else RESULTS)
    cache = args.cache_dir.resolve()
    rows = []
    for name in args.models:
        try:
            rows.append(measure(name, args.quick, cache, args.sparsity,
                                max(1, args.repeat)))
        except Exception as e:  # an export failure is recorded and the other models still run
            print(f"[{name}] FAILED: {e}", flush=True)
            rows.append({"model": name, "ok": False, "error": str(e).splitlines()[-15:]})
    measured = [r["model"] for r in rows]
    if output.is_file() and not args.fresh:
        rows = merge_rows(json.loads(output.read_text()), rows)
    results = {
        "benchmark": "engine_speed",
        "measured_in_last_run": measured,
        "quick": args.quick,
        "sparsity": args.sparsity,
        "repeat": args.repeat,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "notes": ("analyze_s = ORTPruner.from_pretrained(dir).analyze(); prune_s = .prune(PruningConfig("
                  "sparsity), out_dir) on the same pruner; wall seconds (time.perf_counter), each run in a "
                  "fresh subprocess, medians over `repeat` runs (per-run values in `runs`). peak_rss_bytes = "
                  "max over runs of the child's VmHWM at its end (imports included); peak_rss_wait4_bytes = "
                  "os.wait4 ru_maxrss of the last child. file_bytes = model.onnx + external data. "
                  "Printed table: MB = 1e6 bytes. Rows carry their own created/commit/sparsity/repeat: "
                  "--models reruns only the listed rows and keeps the others (--fresh drops them). "
                  "generate: the pruned folder loaded with ORTModelForCausalLM in a fresh process and a "
                  "greedy generate of a few tokens (random weights, so random tokens)."),
        "models": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(markdown_table(rows))
    print(f"\nresults: {output}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
