"""examples/demo.py end to end on a tiny random BERT, so the demo (and ``make demo``) cannot silently rot.

The real demo prunes all-MiniLM-L6-v2; here the same code runs on the zoo's tiny BERT with a toy
letter-level tokenizer and a small Rotten-Tomatoes-shaped CSV: export, reuse of the export, pruning,
the exactness oracle, the embedding comparison and the printed table.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import export_zoo_model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO = REPO_ROOT / "examples" / "demo.py"
N_REVIEWS = 8


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("optimum_prune_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_tiny_tokenizer(folder: Path, vocab_size: int) -> None:
    """A lower-casing WordPiece tokenizer over single letters and punctuation (fits the tiny vocabulary)."""
    from transformers import BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *".,!?'-"]
    assert len(vocab) <= vocab_size
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(folder)


def _write_reviews(path: Path) -> None:
    """A bz2 CSV with the columns of the cached Rotten Tomatoes corpus (plot rows must be skipped)."""
    rows = [("plot", "A synopsis that the demo must not pick, however long it goes on.", "m0")]
    rows += [("fresh", f"A sharp, funny film number {i}; the cast is wonderful.", f"f{i}") for i in range(6)]
    rows += [("rotten", f"Review {i}: a dull, overlong mess.", f"r{i}") for i in range(6)]
    with bz2.open(path, "wt", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        writer.writerows([(c, t, m, "False") for c, t, m in rows])


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The zoo's tiny BERT as a Hugging Face folder and as an ONNX folder, both with a tokenizer."""
    root = tmp_path_factory.mktemp("demo")
    zoo_onnx = export_zoo_model("bert", root / "zoo")
    hf = root / "hf"
    shutil.copytree(zoo_onnx.parent / "hf", hf)
    onnx = root / "onnx"
    shutil.copytree(zoo_onnx, onnx)
    vocab_size = 100
    for folder in (hf, onnx):
        _save_tiny_tokenizer(folder, vocab_size)
    reviews = root / "reviews.csv.bz2"
    _write_reviews(reviews)
    return {"hf": hf, "onnx": onnx, "reviews": reviews, "root": root}


def _check_result(result: dict, out_dir: Path) -> None:
    assert result["verify"]["exact"], result["verify"]
    assert result["groups"]["ffn"] == {"groups": 2, "prunable": 2, "units": 96}
    assert result["groups"]["heads"] == {"groups": 2, "prunable": 2, "units": 8}
    report = result["report"]
    assert report["units_removed"]["ffn"] == 2 * 14 and report["units_removed"]["heads"] == 2 * 1
    assert report["params_after"] < report["params_before"]
    assert report["flops_after"] < report["flops_before"]
    assert 0.0 < result["cosine_min"] <= result["cosine_mean"] <= 1.0 + 1e-6
    assert result["n_reviews"] == N_REVIEWS and result["n_calibration"] == 8
    assert report["config"]["importance"] == "activation" and report["repair"]["consumers"] == 4
    assert report["repair"]["mean_error_after"] < report["repair"]["mean_error_before"]
    assert result["pruned_dir"] == out_dir / "pruned"
    assert (out_dir / "pruned" / "model.onnx").is_file()


def test_demo_exports_then_reuses_the_export(demo, tiny_bert, tmp_path, capsys):
    out_dir = tmp_path / "out"
    args = ["--model", str(tiny_bert["hf"]), "--output-dir", str(out_dir),
            "--reviews", str(tiny_bert["reviews"]), "--n-reviews", str(N_REVIEWS),
            "--n-calibration", "8"]

    first = demo.main(args)
    assert first["export"] == "new"
    assert first["onnx_dir"] == out_dir / "onnx"
    _check_result(first, out_dir)
    printed = capsys.readouterr().out
    for text in ("Exporting", "exactness oracle (verify)", "embedding cosine", "parameters", "(new)"):
        assert text in printed
    assert sorted(p.name for p in out_dir.iterdir()) == ["export.json", "onnx", "pruned"]  # no temp folders

    # A rerun, exactly as `make demo` runs it (the script, in a fresh interpreter), reuses the export,
    # gives the same numbers and prints nothing but the table.
    proc = subprocess.run([sys.executable, str(DEMO), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Exporting" not in proc.stdout and "(reused)" in proc.stdout
    assert f"mean {first['cosine_mean']:.4f}, min {first['cosine_min']:.4f}" in proc.stdout


def test_demo_on_an_onnx_folder(demo, tiny_bert, tmp_path, capsys):
    out_dir = tmp_path / "out"
    result = demo.main(["--model", str(tiny_bert["onnx"]), "--output-dir", str(out_dir),
                        "--reviews", str(tiny_bert["reviews"]), "--n-reviews", str(N_REVIEWS),
            "--n-calibration", "8"])
    assert result["onnx_dir"] == tiny_bert["onnx"] and result["export"] == "given"
    _check_result(result, out_dir)
    assert not (out_dir / "onnx").exists()
    printed = capsys.readouterr().out
    assert "Exporting" not in printed and "(given)" in printed


def test_demo_reports_a_missing_model_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(DEMO), "--model", str(tmp_path / "missing"), "--output-dir",
                           str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: model folder not found") and "Traceback" not in proc.stderr


def test_demo_reports_folders_it_cannot_use_without_traceback(tiny_bert, tmp_path):
    """A classifier's ONNX folder (no last_hidden_state) and a folder that does not export: one line each,
    and nothing pruned for the first (it used to prune, then fail on the missing output)."""
    import onnx

    classifier = tmp_path / "classifier"
    shutil.copytree(tiny_bert["onnx"], classifier)
    model = onnx.load(str(classifier / "model.onnx"))
    model.graph.output[0].name = "logits"
    for node in model.graph.node:
        node.output[:] = ["logits" if o == "last_hidden_state" else o for o in node.output]
    onnx.save(model, str(classifier / "model.onnx"))
    no_config = tmp_path / "weights-only"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    for folder, message in ((classifier, "outputs ['logits']"), (no_config, "could not export")):
        out = tmp_path / f"out-{folder.name}"
        proc = subprocess.run([sys.executable, str(DEMO), "--model", str(folder), "--output-dir", str(out),
                               "--reviews", str(tiny_bert["reviews"])], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
        assert not (out / "pruned").exists()
