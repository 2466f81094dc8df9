"""The folder written by ``ORTPruner.prune`` gets the usual permissions (from the umask), not private ones.

Regression: the folder was created with ``tempfile.mkdtemp`` and the plan with ``tempfile.mkstemp``, so the
pruned folder was 0700 and ``pruning_plan.json`` 0600 whatever the umask: unreadable for anyone else.
"""

from __future__ import annotations

import os
import stat

import onnx
import pytest

from graphs import OP_GRAPHS
from optimum_prune import ORTPruner, PruningConfig


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_pruned_folder_follows_the_umask(tmp_path, umask_022):
    src = tmp_path / "dense"
    src.mkdir()
    onnx.save_model(OP_GRAPHS["matmul"](), src / "model.onnx")
    (src / "config.json").write_text("{}")
    config = PruningConfig(sparsity=0.5, scope=("ffn",))
    out = ORTPruner.from_pretrained(src).prune(config, tmp_path / "pruned")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    files = sorted(out.iterdir())
    assert {p.name for p in files} >= {"model.onnx", "config.json", "pruning_plan.json", "report.json"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name
