"""The CLI by subprocess, after a non-editable install of this checkout.

The shared development venv has an editable install that may point at another checkout, so the fixture
makes a throw-away venv (no pip, a few files) whose ``shared.pth`` puts the shared venv's
site-packages on its path (without running that venv's ``.pth`` hooks, so the editable finder is not
active), and ``pip install --no-deps`` a copy of this checkout into it. Then:

- ``optimum-cli prune ...``: the venv's own ``optimum-cli`` script, run by the throw-away interpreter,
  discovers our ``optimum/commands/register/register_prune.py`` through Optimum's plugin mechanism;
- ``optimum-prune ...``: the console script pip generated from ``[project.scripts]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tiny_folders import TEXTS, save_letter_tokenizer, tiny_hf_folder
from zoo import export_zoo_model

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with optimum-prune installed (non-editable) on top of the shared venv's packages."""
    root = tmp_path_factory.mktemp("cli")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("optimum_prune", "optimum"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(src),
        ],
        check=True,
        cwd=root,
    )
    return venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    return env


def optimum_cli(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "python"), str(VENV_BIN / "optimum-cli"), *args],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def optimum_prune(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "optimum-prune"), *args], env=_env(), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory) -> Path:
    return export_zoo_model("bert", tmp_path_factory.mktemp("cli-zoo"))


def test_install_is_not_editable(installed):
    site = next((installed / "lib").glob("python*/site-packages"))
    assert (site / "optimum" / "commands" / "register" / "register_prune.py").is_file()
    assert (
        not (site / "optimum" / "__init__.py").exists()
        and not (site / "optimum" / "commands" / "__init__.py").exists()
    )
    assert not list(site.glob("__editable__*"))


def test_optimum_cli_discovers_prune(installed):
    top = optimum_cli(installed, "--help")
    assert top.returncode == 0 and "prune" in top.stdout, top.stderr
    res = optimum_cli(installed, "prune", "--help")
    assert res.returncode == 0, res.stderr
    for sub in ("run", "onnx", "analyze", "verify"):
        assert sub in res.stdout
    # the existing commands of optimum-onnx still work next to ours
    assert optimum_cli(installed, "export", "onnx", "--help").returncode == 0


def test_console_script_has_the_same_commands(installed):
    res = optimum_prune(installed, "--help")
    assert res.returncode == 0, res.stderr
    for sub in ("run", "onnx", "analyze", "verify"):
        assert sub in res.stdout


def test_prune_onnx_analyze_verify(installed, bert_onnx, tmp_path):
    out = tmp_path / "pruned"
    res = optimum_cli(
        installed,
        "prune",
        "onnx",
        "--model",
        str(bert_onnx),
        "--sparsity",
        "0.3",
        "--scope",
        "ffn,heads",
        "--importance",
        "l2",
        "-o",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "pruned 4/" in res.stdout and "exact" in res.stdout
    assert (out / "model.onnx").is_file() and (out / "pruning_plan.json").is_file()

    res = optimum_prune(installed, "analyze", "--model", str(bert_onnx))
    assert res.returncode == 0, res.stderr
    assert "ffn" in res.stdout and "heads" in res.stdout

    res = optimum_cli(installed, "prune", "verify", str(bert_onnx), str(out))
    assert res.returncode == 0, res.stderr
    assert "exact: True" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["onnx", "--model", "MISSING", "--sparsity", "0.3", "-o", "OUT"], "model folder not found"),
        (
            ["onnx", "--model", "ONNX", "--sparsity", "0.3", "--scope", "ffn,bogus", "-o", "OUT"],
            "unknown kinds",
        ),
        (["onnx", "--model", "ONNX", "--sparsity", "1.5", "-o", "OUT"], "expected a number in [0, 1)"),
        (
            ["onnx", "--model", "ONNX", "--sparsity", "0.3", "--importance", "activation", "-o", "OUT"],
            "needs calibration data: add --calibration NAME",
        ),
        (
            ["onnx", "--model", "ONNX", "--sparsity", "0.3", "--set", "sparsty=0.2", "-o", "OUT"],
            "unknown key 'sparsty'",
        ),
        (
            ["onnx", "--model", "ONNX", "--sparsity", "0.3", "--calibration-files", "x.csv", "-o", "OUT"],
            "add --calibration",
        ),
        (["onnx", "--model", "ONNX", "--sparsity", "0.3", "--round-to", "ffn=x", "-o", "OUT"], "KIND=N"),
        (["run", "RECIPE", "--model", "ONNX", "-o", "OUT"], "unknown key 'sparsty'"),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(installed, bert_onnx, tmp_path, args, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - prune: {sparsty: 0.3}\n")
    subs = {
        "MISSING": str(tmp_path / "missing"),
        "ONNX": str(bert_onnx),
        "OUT": str(tmp_path / "out"),
        "RECIPE": str(recipe),
    }
    res = optimum_prune(installed, *[subs.get(a, a) for a in args])
    assert res.returncode == 2
    assert message in res.stderr
    if "1.5" not in args and "--round-to" not in args:  # argparse prints its usage first
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "Traceback" not in res.stderr


def test_run_recipe(installed, tmp_path_factory, tmp_path):
    hf = tiny_hf_folder("bert", tmp_path_factory.mktemp("cli-run-zoo"), tmp_path)
    recipe = REPO / "recipes" / "bert-prune30-int8-dynamic.yaml"
    out = tmp_path / "run"
    res = optimum_cli(
        installed,
        "prune",
        "run",
        str(recipe),
        "--model",
        str(hf),
        "-o",
        str(out),
        "--set",
        "evaluate.dataset=null",
        "--set",
        "benchmark.repeats=2",
        "--set",
        "benchmark.batch_sizes=[1, 4]",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    assert "quantize" in res.stdout and "p50 ms b1" in res.stdout
    assert (out / "final" / "model.onnx").is_file() and (out / "report.md").is_file()


def test_prune_onnx_budget_rounding_and_generated_repair(installed, bert_onnx, tmp_path):
    """The PruningConfig options reach the plan: global allocation, rounding per kind, a FLOPs target, the
    repair on generated inputs (no calibration given), and any other field through --set."""
    out = tmp_path / "pruned"
    res = optimum_prune(
        installed, "onnx", "--model", str(bert_onnx), "--sparsity", "0.2", "--target", "flops",
        "--allocation", "global", "--round-to", "ffn=8", "--recover", "--set", "min_units=2",
        "--set", "recover.damp=0.1", "-o", str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "repair: " in res.stdout and "generated" in res.stdout and "exact" in res.stdout
    plan = json.loads((out / "pruning_plan.json").read_text())
    config = plan["config"]
    assert (config["allocation"], config["target"], config["round_to"], config["min_units"]) == (
        "global", "flops", {"ffn": 8}, 2)
    assert config["recover"]["method"] == "lstsq" and config["recover"]["damp"] == 0.1 and plan["repairs"]
    ffn = [g for g in plan["groups"] if g["kind"] == "ffn"]
    assert any(len(g["kept"]) < g["units"] for g in ffn)
    assert all(len(g["kept"]) % 8 == 0 for g in ffn)
    assert all(len(g["kept"]) >= 2 for g in plan["groups"])


def test_prune_onnx_with_calibration_file(installed, bert_onnx, tmp_path):
    """--calibration csv --calibration-files: a data-driven criterion and the repair on the user's texts,
    tokenised with the folder's tokenizer; the source folder is left as it was."""
    model = tmp_path / "onnx"
    shutil.copytree(bert_onnx, model)
    save_letter_tokenizer(model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    data = tmp_path / "texts.csv"
    data.write_text("review\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    out = tmp_path / "pruned"
    res = optimum_cli(
        installed, "prune", "onnx", "--model", str(model), "--sparsity", "0.3", "--importance", "activation",
        "--recover", "--calibration", "csv", "--calibration-files", str(data),
        "--calibration-column", "review", "--num-samples", "8", "--max-length", "16", "-o", str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "exact" in res.stdout and "repair: " in res.stdout
    stage = json.loads((out / "report.json").read_text())["stages"][-1]
    assert stage["config"]["importance"] == "activation"
    assert stage["repair"]["calibration"]["num_samples"] == len(TEXTS)
    assert "review" in stage["repair"]["calibration"]["source"]
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
