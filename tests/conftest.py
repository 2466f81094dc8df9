"""Shared pytest setup: no network, the `slow` marker, and session-scoped real-model fixtures."""

from __future__ import annotations

import os

# Tests never reach the Hugging Face Hub; set before transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running test; run by `make test-all`, not by `make test`")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 Hugging Face folder from the asset cache (`make assets` fills it)."""
    from optimum_prune.assets import fetch_minilm

    return fetch_minilm()


@pytest.fixture(scope="session")
def minilm_onnx_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported once per session (per xdist worker) with Optimum, task feature-extraction.

    Read-only for tests: prune into your own ``tmp_path``.
    """
    from optimum.exporters.onnx import main_export

    out = tmp_path_factory.mktemp("minilm-onnx")
    main_export(str(minilm_dir), out, task="feature-extraction", library_name="transformers")
    return out


@pytest.fixture(scope="session")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cache folder for tiny zoo exports (tests/zoo.py), shared by the tests of one worker."""
    return tmp_path_factory.mktemp("zoo")
