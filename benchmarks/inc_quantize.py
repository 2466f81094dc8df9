"""INT8 with Intel Neural Compressor (the quantize stage's ``neural-compressor`` backend) on a real model.

    .venv-inc/bin/python benchmarks/inc_quantize.py   # -> benchmarks/results/inc_quantize.json

Needs .venv-inc (``make venv-inc``: onnx-neural-compressor pins numpy<2) and the asset cache
(``python -m optimum_prune.assets``). all-MiniLM-L6-v2 is exported with optimum-onnx, pruned as
recipes/bert-prune30-int8-dynamic.yaml does (30% of FFN + heads, L2), and quantized by INC dynamic and
static (QOperator, 64 Rotten Tomatoes train reviews, minmax) and, for reference, by ONNX Runtime dynamic
(the recipe's backend), each on the dense and on the pruned model. Each row records the size on disk and
the mean cosine of 200 mean-pooled, L2-normalised Rotten Tomatoes test embeddings to the dense FP32
model's and to the FP32 model it was quantized from.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "outputs" / "bench" / "inc_quantize"
RESULT = REPO / "benchmarks" / "results" / "inc_quantize.json"


def embeddings(folder: Path, enc: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    hidden = session.run(None, {k: v for k, v in enc.items() if k in names})[0]
    mask = enc["attention_mask"][..., None].astype(np.float64)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> int:
    import onnx_neural_compressor  # noqa: F401  (fail early outside .venv-inc)
    from transformers import AutoTokenizer

    from optimum_prune.assets import fetch_minilm
    from optimum_prune.stages import ExportStage, PruneStage, QuantizeStage, read_report
    from optimum_prune.stages.base import model_size_bytes
    from optimum_prune.stages.data import DatasetConfig, load_split

    WORK.mkdir(parents=True, exist_ok=True)
    dense = WORK / "dense"
    if not (dense / "model.onnx").is_file():
        ExportStage(task="feature-extraction").run(fetch_minilm(), dense)
    pruned = PruneStage(sparsity=0.3, scope=["ffn", "heads"], importance="l2").run(dense, WORK / "pruned")

    texts = list(load_split(DatasetConfig(name="rotten_tomatoes", split="test", num_samples=200))["text"])
    tokenizer = AutoTokenizer.from_pretrained(dense)
    enc = dict(tokenizer(texts, padding=True, truncation=True, return_tensors="np"))
    reference = {"dense": embeddings(dense, enc), "pruned": embeddings(pruned, enc)}
    calibration = {"name": "rotten_tomatoes", "split": "train", "num_samples": 64}
    variants = {
        "onnxruntime dynamic": {"backend": "onnxruntime", "mode": "dynamic"},
        "neural-compressor dynamic": {"backend": "neural-compressor", "mode": "dynamic"},
        "neural-compressor static": {
            "backend": "neural-compressor",
            "mode": "static",
            "calibration": calibration,
        },
    }
    rows = [
        {"model": name, "quantize": "FP32", "size_bytes": model_size_bytes(folder), "cosine_to_dense": None}
        for name, folder in (("dense", dense), ("pruned", pruned))
    ]
    rows[1]["cosine_to_dense"] = round(float((reference["pruned"] * reference["dense"]).sum(1).mean()), 4)
    for source, folder in (("dense", dense), ("pruned", pruned)):
        for label, options in variants.items():
            start = time.perf_counter()
            out = QuantizeStage(**options).run(folder, WORK / f"{source}-{label.replace(' ', '-')}")
            seconds = time.perf_counter() - start
            emb = embeddings(out, enc)
            entry = read_report(out)[-1]
            rows.append(
                {
                    "model": source,
                    "quantize": label,
                    "size_bytes": model_size_bytes(out),
                    "cosine_to_dense": round(float((emb * reference["dense"]).sum(1).mean()), 4),
                    "cosine_to_fp32_source": round(float((emb * reference[source]).sum(1).mean()), 4),
                    "quantized_nodes": entry.get("quantized_nodes"),
                    "quantized_by_op_type": entry.get("quantized_by_op_type"),
                    "seconds": round(seconds, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    RESULT.write_text(
        json.dumps(
            {
                "benchmark": "inc_quantize",
                "model": "all-MiniLM-L6-v2",
                "prune": "30% ffn + heads, l2",
                "eval": "200 rotten_tomatoes test reviews, mean-pooled L2-normalised embeddings",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
