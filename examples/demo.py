"""End-to-end demo on a real model: prune all-MiniLM-L6-v2 (exported to ONNX) and measure fidelity.

Steps: take the model from the local asset cache, export it to ONNX with optimum-onnx (once; reruns reuse
the export), analyse the pruning groups, prune 30% of the FFN neurons and attention heads by L2
magnitude, check the pruned graph with the exactness oracle ``verify``, and compare sentence embeddings
(mean pooling, L2-normalised, as sentence-transformers does for this model) of the dense and pruned
models on a fixed sample of Rotten Tomatoes reviews from the asset cache. Prints one summary table;
everything is written under ``outputs/demo/``.

Runs offline. Usage: ``make demo`` or ``.venv/bin/python examples/demo.py [--model DIR] [--output-dir DIR]``
where ``--model`` is a Hugging Face model folder (exported to ONNX first) or a folder holding
``model.onnx`` and its tokenizer (used as is).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Run against the checkout this file belongs to, even when the venv's editable install points at
# another checkout of the project (several git worktrees sharing one venv).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import bz2
import contextlib
import csv
import json
import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator

import numpy as np
import onnx

from optimum_prune import CalibrationConfig, CalibrationData, ORTPruner, PruningConfig, verify
from optimum_prune.assets import AssetError
from optimum_prune.errors import PruningError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "outputs" / "demo"
# Wanda-style activation scores and the least-squares repair, both on reviews other than the ones compared
CONFIG = PruningConfig(sparsity=0.3, scope=("ffn", "heads"), importance="activation", recover=True)
N_REVIEWS = 48
N_CALIBRATION = 128
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
EXPORT_STAMP = "export.json"  # next to onnx/: which source folder the export was made from


class DemoError(RuntimeError):
    """An input of the demo is missing or unusable (reported as one line, no traceback)."""


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


class _DropMessages(logging.Filter):
    """Drops log records whose message contains one of ``needles``."""

    def __init__(self, needles: tuple[str, ...]) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.needles)


# Known, harmless noise of a CPU-only export: (logger, message fragments).
_EXPORT_NOISE = (
    # torchao ships optional CUDA / other-Python kernels and logs every one it cannot load.
    ("torchao", ("Failed to load",)),
    # torchao registers Enum pytree constants that torch now supports natively.
    ("torch.utils._pytree", ("is an Enum subclass",)),
    # optimum-onnx still passes `torch_dtype` to from_pretrained.
    ("transformers.modeling_utils", ("`torch_dtype` is deprecated",)),
    ("transformers.configuration_utils", ("`torch_dtype` is deprecated",)),
)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the known warnings of a CPU export (by logger and message); everything else still shows."""
    filters = [(logging.getLogger(name), _DropMessages(needles)) for name, needles in _EXPORT_NOISE]
    for logger, f in filters:
        logger.addFilter(f)
    try:
        with warnings.catch_warnings():
            # The exporter traces the model; transformers' attention-mask helper triggers this tracer note.
            warnings.filterwarnings("ignore", message=r"torch\.tensor results are registered as constants")
            yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)


def export_onnx(model_dir: Path, output_dir: Path) -> tuple[Path, bool]:
    """Export the Hugging Face folder ``model_dir`` to ``output_dir/onnx`` (feature-extraction).

    Reuses an earlier export of the same source. The export is written to a temporary folder and moved
    into place when complete, so an interrupted run never leaves a half-written export to be reused.
    Returns the ONNX folder and whether it was reused.
    """
    onnx_dir = output_dir / "onnx"
    stamp_file = output_dir / EXPORT_STAMP
    stamp = {"source": str(model_dir.resolve()), "task": "feature-extraction"}
    if (onnx_dir / "model.onnx").is_file() and stamp_file.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(stamp_file.read_text()) == stamp:
                return onnx_dir, True
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"Exporting {_show(model_dir)} to ONNX (first run only) ...", flush=True)
    with _quiet_export():
        from optimum.exporters.onnx import main_export

        tmp = output_dir / f".onnx-{uuid.uuid4().hex[:12]}"  # not mkdtemp: that folder would be 0700
        tmp.mkdir()
        try:
            # The folder also carries sentence-transformers files; export the plain transformers encoder.
            try:
                main_export(str(model_dir), tmp, task="feature-extraction", library_name="transformers")
            except Exception as e:  # optimum and transformers raise many types (ValueError, KeyError)
                raise DemoError(f"could not export {model_dir} to ONNX for feature extraction "
                                f"({type(e).__name__}: {e}); the demo takes a Hugging Face text encoder "
                                "folder (config.json, weights, tokenizer) or an ONNX folder") from e
            if not (tmp / "model.onnx").is_file():
                raise DemoError(f"the export of {model_dir} produced no model.onnx")
            stamp_file.unlink(missing_ok=True)
            if onnx_dir.exists():
                shutil.rmtree(onnx_dir)
            os.replace(tmp, onnx_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return onnx_dir, False


# --------------------------------------------------------------------------------------------------------
# Fidelity on real data
# --------------------------------------------------------------------------------------------------------


def load_reviews(path: Path, n: int = N_REVIEWS, offset: int = 0) -> list[str]:
    """``n`` reviews from the Rotten Tomatoes CSV (``category``, ``text``): half ``fresh``, half ``rotten``,
    evenly spaced through the file, each ``offset`` rows after its even spot (deterministic; ``plot``
    synopses are skipped). Offsets 0 and 1 give disjoint sets while ``n`` is at most half the reviews."""
    opener = bz2.open if path.suffix == ".bz2" else open
    by_category: dict[str, list[str]] = {"fresh": [], "rotten": []}
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = (row.get("text") or "").strip()
            if text and row.get("category") in by_category:
                by_category[row["category"]].append(text)
    picked: list[str] = []
    for i, texts in enumerate(by_category.values()):
        k = n // 2 + (n % 2 if i == 0 else 0)
        if len(texts) < k:
            raise DemoError(f"{path} has {len(texts)} reviews of one category, {k} needed")
        picked += [texts[(j * len(texts) // k + offset) % len(texts)] for j in range(k)]
    return picked


def sentence_embeddings(model_path: Path, tokenizer, sentences: list[str], max_length: int) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of ``sentences`` from an ONNX encoder."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    encoded = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    feeds = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    hidden = session.run(["last_hidden_state"], feeds)[0]  # (batch, seq, hidden)
    mask = encoded["attention_mask"][..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def _show(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter output)."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="examples/demo.py", description="Prune a sentence encoder end to end and measure fidelity.")
    parser.add_argument("--model", type=Path, default=None,
                        help="Hugging Face model folder (exported to ONNX first) or a folder holding "
                             "model.onnx and a tokenizer; default: all-MiniLM-L6-v2 from the asset cache")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help="where the export (onnx/) and the pruned model (pruned/) go; "
                             "default: %(default)s")
    parser.add_argument("--reviews", type=Path, default=None,
                        help="Rotten Tomatoes CSV (category,text); default: the cached data set")
    parser.add_argument("--n-reviews", type=int, default=N_REVIEWS,
                        help="reviews compared; default: %(default)s")
    parser.add_argument("--n-calibration", type=int, default=N_CALIBRATION,
                        help="other reviews the criterion and the repair use; default: %(default)s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the demo, print the summary table and return its numbers."""
    from optimum_prune.assets import fetch_minilm, fetch_rotten_tomatoes

    start = time.perf_counter()
    args = _parse_args(argv)
    output_dir = args.output_dir.resolve()
    model_dir = (args.model or fetch_minilm()).absolute()
    if not model_dir.is_dir():
        raise DemoError(f"model folder not found: {model_dir}")
    reviews_path = args.reviews or fetch_rotten_tomatoes()
    name = model_dir.name if args.model is None else _show(model_dir)

    if (model_dir / "model.onnx").is_file():
        onnx_dir, export = model_dir, "given"
    else:
        onnx_dir, reused = export_onnx(model_dir, output_dir)
        export = "reused" if reused else "new"

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    except Exception as e:  # OSError, ValueError, KeyError (a config class with no tokenizer, e.g. ViT)
        raise DemoError(f"no usable tokenizer in {onnx_dir} ({type(e).__name__}: {e}); the demo embeds "
                        "text: give it a text model") from e
    outputs = [o.name for o in onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph.output]
    if "last_hidden_state" not in outputs:
        raise DemoError(f"the demo compares sentence embeddings (the output last_hidden_state of a "
                        f"feature-extraction export); {onnx_dir / 'model.onnx'} outputs {outputs}: export "
                        "the model with task feature-extraction, or pass its Hugging Face folder")
    config_file = onnx_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    max_length = min(MAX_LENGTH, config.get("max_position_embeddings", MAX_LENGTH))
    reviews = load_reviews(Path(reviews_path), args.n_reviews)
    calibration = CalibrationData.from_texts(load_reviews(Path(reviews_path), args.n_calibration, offset=1),
                                             onnx_dir, CalibrationConfig(num_samples=args.n_calibration,
                                                                         max_length=max_length))

    pruner = ORTPruner.from_pretrained(onnx_dir, file_name="model.onnx")
    summary = pruner.analyze().summary()
    out = pruner.prune(CONFIG, output_dir / "pruned", calibration=calibration)
    check = verify(onnx_dir, out)
    report = json.loads((out / "report.json").read_text())["stages"][-1]

    dense = sentence_embeddings(onnx_dir / "model.onnx", tokenizer, reviews, max_length)
    pruned = sentence_embeddings(out / "model.onnx", tokenizer, reviews, max_length)
    cosine = (dense * pruned).sum(axis=1)

    result = {
        "model": name,
        "onnx_dir": onnx_dir,
        "export": export,
        "pruned_dir": out,
        "groups": summary,
        "report": report,
        "verify": check.to_dict(),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "n_reviews": len(reviews),
        "n_calibration": calibration.num_samples,
        "seconds": time.perf_counter() - start,
    }
    print(format_table(result))
    return result


def format_table(r: dict) -> str:
    """The summary printed by :func:`main`."""
    rep, chk = r["report"], r["verify"]
    cfg = rep["config"]
    lines = [
        "",
        f"optimum-prune demo: {r['model']}",
        f"  pruning: sparsity={cfg['sparsity']}, scope={'+'.join(cfg['scope'])}, "
        f"importance={cfg['importance']}" + (", least-squares repair" if cfg.get("recover") else "")
        + f" (calibration: {r['n_calibration']} other reviews)",
        "",
        f"  {'groups':<32}{'found':>8}{'prunable':>10}{'pruned':>8}{'units removed':>16}",
    ]
    for kind, counts in r["groups"].items():
        groups = [g for g in rep["groups"] if g["kind"] == kind]
        pruned = sum(g["kept"] < g["units"] for g in groups)
        units = f"{rep['units_removed'][kind]} / {sum(g['units'] for g in groups)}"
        lines.append(f"  {kind:<32}{counts['groups']:>8}{counts['prunable']:>10}{pruned:>8}{units:>16}")
    lines += ["", f"  {'size':<32}{'before':>16}{'after':>16}{'after/before':>14}"]
    for label, key in (("parameters", "params"), ("FLOPs (MatMul weights, 128 tok)", "flops")):
        before, after = rep[f"{key}_before"], rep[f"{key}_after"]
        lines.append(f"  {label:<32}{before:>16,}{after:>16,}{after / before:>14.3f}")
    exact = "exact" if chk["exact"] else "NOT EXACT"
    lines += [
        "",
        "  fidelity to the dense model",
        f"  {'exactness oracle (verify)':<32}{exact}: max abs error {chk['max_abs_error']:.1e}, "
        f"max rel error {chk['max_rel_error']:.1e}",
        f"  {'sentence-embedding cosine':<32}mean {r['cosine_mean']:.4f}, min {r['cosine_min']:.4f} "
        f"({r['n_reviews']} Rotten Tomatoes reviews)",
        "",
    ]
    for g in rep["groups"]:
        if not g["prunable"]:
            lines.append(f"  {g['kind']} group {g['id']} not prunable: {g['reason']}")
    lines += [
        f"  ONNX model:  {_show(r['onnx_dir'])} ({r['export']})",
        f"  written to:  {_show(r['pruned_dir'])} (model.onnx, pruning_plan.json, report.json)",
        f"  done in {r['seconds']:.1f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except (DemoError, AssetError, PruningError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
