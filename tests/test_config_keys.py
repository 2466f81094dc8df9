"""Which config.json keys the pruner may write, answered without importing transformers (and torch)."""

from __future__ import annotations

import inspect
import subprocess
import sys

from optimum_prune.pruner import _read_only_in_source


def test_source_check_agrees_with_the_config_classes():
    """For every model type transformers knows, reading the config class's source says "read-only
    ``head_dim``" exactly when the class has a ``head_dim`` property without a setter."""
    from transformers import CONFIG_MAPPING

    read_only = []
    for model_type in CONFIG_MAPPING:
        attr = inspect.getattr_static(CONFIG_MAPPING[model_type], "head_dim", None)
        exact = isinstance(attr, property) and attr.fset is None
        assert _read_only_in_source(model_type, "head_dim") == exact, model_type
        if exact:
            read_only.append(model_type)
    assert "falcon" in read_only and "llama" not in read_only


def test_pruning_a_folder_with_a_config_does_not_import_transformers(tmp_path):
    """Recording head counts in config.json (whose head_dim Falcon's config class would reject) reads
    the class's source: the prune runs without importing transformers, which imports torch (seconds)."""
    script = f"""
import json, sys
import numpy as np, onnx
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
from graphs import OP_GRAPHS
from optimum_prune import ORTPruner, PruningConfig
src = __import__("pathlib").Path({str(tmp_path)!r}) / "dense"
src.mkdir()
onnx.save(OP_GRAPHS["attention_block"](), src / "model.onnx")
(src / "config.json").write_text(json.dumps({{"model_type": "falcon", "hidden_size": 12,
                                              "num_attention_heads": 3}}))
out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.34, scope=("heads",)), src.parent / "p")
config = json.loads((out / "config.json").read_text())
print(json.dumps({{"heads": config["num_attention_heads"], "head_dim": config.get("head_dim"),
                  "transformers": "transformers" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == '{"heads": 2, "head_dim": null, "transformers": false}'
