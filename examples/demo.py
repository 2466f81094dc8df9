"""End-to-end demo on a real model: prune all-MiniLM-L6-v2 (exported to ONNX) and measure fidelity.

Steps: fetch the model from the local asset cache, export it to ONNX with Optimum, analyse the
pruning groups, prune 30% of FFN neurons and attention heads by L2 magnitude, check the pruned graph
with ``verify``, and compare sentence embeddings (mean pooling, L2-normalised, as sentence-transformers
does for this model) of the dense and pruned models on a fixed set of sentences.

Runs offline. Usage: ``make demo`` or ``.venv/bin/python examples/demo.py``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

from optimum_prune import ORTPruner, PruningConfig, verify
from optimum_prune.assets import fetch_minilm

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO_ROOT / "outputs" / "demo"

SENTENCES = (
    "The cat sits on the mat.",
    "A kitten is resting on the rug.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "I love hiking in the mountains during autumn.",
    "Walking through the hills in the fall is my favourite pastime.",
    "The recipe calls for two cups of flour and one egg.",
    "Preheat the oven to 180 degrees before baking the bread.",
    "Quantum computers use qubits instead of classical bits.",
    "The new phone has a longer battery life than the old one.",
    "Please remember to water the plants while I am away.",
    "The train to Paris leaves from platform nine at noon.",
    "Our flight was delayed by three hours because of the storm.",
    "She scored the winning goal in the last minute of the match.",
    "The museum exhibits paintings from the Renaissance period.",
    "Regular exercise improves both physical and mental health.",
    "The committee postponed its decision until next month.",
    "He fixed the leaking tap in the kitchen with a new washer.",
    "Solar panels convert sunlight directly into electricity.",
    "The children built a sandcastle on the beach.",
    "This movie was a complete waste of two hours.",
    "An absolutely wonderful film with a brilliant cast.",
    "The library is closed on public holidays.",
    "Interest rates are expected to rise later this year.",
    "The software update fixed several security vulnerabilities.",
    "A heavy snowfall blocked the mountain pass overnight.",
    "The orchestra played Beethoven's ninth symphony.",
    "My grandmother grows tomatoes and beans in her garden.",
    "The detective found a crucial clue in the old letter.",
    "Electric cars are becoming cheaper every year.",
    "The bakery on the corner sells the best croissants in town.",
    "Neural networks can be compressed by removing redundant neurons.",
)


def export_onnx(model_dir: Path, onnx_dir: Path) -> Path:
    """Export ``model_dir`` to ONNX (feature-extraction) into ``onnx_dir`` unless it is already there."""
    if (onnx_dir / "model.onnx").is_file():
        print(f"ONNX export found, reusing {onnx_dir}")
        return onnx_dir
    from optimum.exporters.onnx import main_export

    print(f"Exporting {model_dir} to ONNX ...")
    # The folder also carries sentence-transformers files; export the plain transformers encoder.
    main_export(str(model_dir), onnx_dir, task="feature-extraction", library_name="transformers")
    return onnx_dir


def sentence_embeddings(model_path: Path, tokenizer, sentences: tuple[str, ...]) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of ``sentences`` from an ONNX encoder."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    encoded = tokenizer(list(sentences), padding=True, truncation=True, max_length=128, return_tensors="np")
    feeds = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    hidden = session.run(None, feeds)[0]  # last_hidden_state: (batch, seq, hidden)
    mask = encoded["attention_mask"][..., None].astype(hidden.dtype)
    pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _row(label: str, *values: object) -> str:
    return f"  {label:<28}" + "".join(f" {v!s:>17}" for v in values)


def main() -> None:
    model_dir = fetch_minilm()
    onnx_dir = export_onnx(model_dir, OUT_ROOT / "onnx")
    pruned_dir = OUT_ROOT / "pruned"

    pruner = ORTPruner.from_pretrained(onnx_dir, file_name="model.onnx")
    analysis = pruner.analyze().to_dict()

    config = PruningConfig(sparsity=0.3, scope=("ffn", "heads"), importance="l2")
    if pruned_dir.exists():
        shutil.rmtree(pruned_dir)  # our own output from an earlier run
    out = pruner.prune(config, pruned_dir)
    check = verify(onnx_dir, out)

    stages = json.loads((out / "report.json").read_text())["stages"]
    prune_stage = next(s for s in stages if s["stage"] == "prune")

    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    dense = sentence_embeddings(onnx_dir / "model.onnx", tokenizer, SENTENCES)
    pruned = sentence_embeddings(out / "model.onnx", tokenizer, SENTENCES)
    cosine = (dense * pruned).sum(axis=1)

    print()
    print("optimum-prune demo: all-MiniLM-L6-v2, sparsity=0.3, scope=(ffn, heads), importance=l2")
    print(_row("group kind", "groups", "prunable", "units"))
    for kind, counts in sorted(analysis["summary"].items()):
        print(_row(kind, counts["groups"], counts["prunable"], counts["units"]))
    print(_row("unprunable groups", len(analysis["unprunable"])))
    print(_row("", "before", "after", "after/before"))
    for key in ("params", "flops"):
        before, after = prune_stage[f"{key}_before"], prune_stage[f"{key}_after"]
        print(_row(key, f"{before:,}", f"{after:,}", f"{after / before:.3f}"))
    print(_row("groups pruned / found", f"{prune_stage['groups_pruned']} / {prune_stage['groups_found']}"))
    print(_row("verify", f"exact={check.exact}", f"max_abs={check.max_abs_error:.2e}"))
    n = len(SENTENCES)
    print(_row(f"cosine to dense (n={n})", f"mean={cosine.mean():.4f}", f"min={cosine.min():.4f}"))
    print(f"  written to {out}")


if __name__ == "__main__":
    main()
