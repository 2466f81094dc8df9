"""Which config.json keys the pruner may write, answered without importing transformers (and torch)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize(
    ("config", "heads", "note"),
    [
        # DistilBERT names the hidden size "dim": 2 heads divide 12, so the count is recorded
        ({"model_type": "distilbert", "dim": 12, "n_heads": 3}, 2, None),
        # ... and a count that does not divide it is not (DistilBertConfig raises on n_heads 2 with dim 9)
        ({"model_type": "distilbert", "dim": 9, "n_heads": 3}, 3, "2 heads do not divide hidden_size 9"),
        # no hidden size under a known key: the count stays, with a note
        ({"model_type": "unknown-arch", "n_heads": 3}, 3, "names the hidden size under none of"),
    ],
)
def test_head_counts_are_recorded_only_where_they_divide_the_hidden_size(tmp_path, config, heads, note):
    """config.json gets the pruned head count only when it divides the hidden size, whatever the key the
    config names that size with; otherwise the source count stays and report.json says why."""
    import json

    import onnx

    from graphs import OP_GRAPHS
    from optimum_prune import ORTPruner, PruningConfig

    src = tmp_path / "dense"
    src.mkdir()
    onnx.save(OP_GRAPHS["attention_block"](), src / "model.onnx")
    (src / "config.json").write_text(json.dumps(config))
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.34, scope=("heads",)), tmp_path / "p")
    assert json.loads((out / "config.json").read_text())["n_heads"] == heads
    notes = json.loads((out / "report.json").read_text())["stages"][-1]["config_notes"]
    assert (note is None and not notes) or any(note in n for n in notes), notes
