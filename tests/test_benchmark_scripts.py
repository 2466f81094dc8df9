"""The bookkeeping of the benchmark scripts: merging rerun rows, the target verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import decoder  # noqa: E402
import quality_classifier  # noqa: E402


def _row(name: str, sparsity: float, accuracy: float, **extra) -> dict:
    return {"name": name, "sparsity": sparsity, "accuracy": accuracy, **extra}


def test_kept_rows_drops_the_rows_being_rerun_and_dates_the_others(tmp_path):
    path = tmp_path / "quality_classifier.json"
    path.write_text(json.dumps({"dense": {"accuracy": 0.8}, "created": "2026-11-30", "rows": [
        _row("l2", 0.2, 0.7), _row("fluctuation", 0.2, 0.75), _row("fluctuation", 0.4, 0.7, measured="x")]}))
    todo = [dict(importance="fluctuation", options={}, data="calibration", repair=False, sparsity=0.2,
                 allocation="uniform")]
    rows = quality_classifier.kept_rows(path, todo, dense_acc=0.8)
    assert [(r["name"], r["sparsity"]) for r in rows] == [("l2", 0.2), ("fluctuation", 0.4)]
    assert [r["measured"] for r in rows] == ["2026-11-30", "x"]
    assert quality_classifier.kept_rows(tmp_path / "missing.json", todo, dense_acc=0.8) == []


def test_kept_rows_refuses_results_of_another_dense_model(tmp_path):
    path = tmp_path / "quality_classifier.json"
    path.write_text(json.dumps({"dense": {"accuracy": 0.8}, "rows": []}))
    with pytest.raises(SystemExit, match="different dense classifier"):
        quality_classifier.kept_rows(path, [], dense_acc=0.81)


def test_classifier_labels_name_the_allocation():
    spec = dict(importance="fluctuation", options={}, repair=True, allocation="standardized")
    assert quality_classifier.label(spec) == "fluctuation, standardized + repair"
    assert quality_classifier.label(dict(spec, allocation="uniform", repair=False)) == "fluctuation"


def test_decoder_verdict_uses_the_best_repaired_row_at_the_target_sparsity():
    rows = [{"criterion": "dense", "sparsity": 0.0, "perplexity": 100.0},
            {"criterion": "activation", "sparsity": 0.2, "perplexity": 101.0},  # not repaired: ignored
            {"criterion": "activation+repair", "sparsity": 0.2, "perplexity": 120.0, "calibration": "a"},
            {"criterion": "fluctuation+repair@standardized", "sparsity": 0.2, "perplexity": 114.0,
             "calibration": "b"},
            {"criterion": "fluctuation+repair", "sparsity": 0.1, "perplexity": 105.0}]
    text = decoder.verdict(rows)
    assert "met" in text and "fluctuation+repair@standardized" in text and "+14.0%" in text
    rows[3]["perplexity"] = 116.0
    assert "missed" in decoder.verdict(rows) and "+16.0%" in decoder.verdict(rows)
    assert decoder.uses_calibration("l2+repair") and decoder.uses_calibration("fluctuation@standardized")
    assert not decoder.uses_calibration("l2@global")


def test_shared_kept_rows_returns_the_previous_data(tmp_path):
    import engine_speed

    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"peer": {"available": True}, "created": "2026-11-30",
                                "rows": [_row("peer", 0.3, 0.6), _row("l2", 0.3, 0.7)]}))
    rows, previous = engine_speed.kept_rows(path, {("peer", 0.3)})
    assert [r["name"] for r in rows] == ["l2"] and rows[0]["measured"] == "2026-11-30"
    assert previous["peer"] == {"available": True}
    assert engine_speed.kept_rows(tmp_path / "none.json", set()) == ([], {})


def test_decoder_markdown_says_which_rows_used_calibration():
    common = {"params": 1e6, "tokens_per_s": 10.0, "generations": ["Paris"]}
    rows = [{"criterion": "dense", "sparsity": 0.0, "perplexity": 10.0, **common},
            {"criterion": "l2", "sparsity": 0.2, "perplexity": 20.0, "calibration": "64 reviews", **common},
            {"criterion": "l2+repair", "sparsity": 0.2, "perplexity": 11.47, "calibration": "64 reviews",
             **common}]
    lines = decoder.markdown(rows).splitlines()[2:]
    assert lines[0].startswith("| dense | 0.0 | none |")
    assert lines[1].startswith("| l2 | 0.2 | none |") and "+100.0%" in lines[1]
    assert lines[2].startswith("| l2+repair | 0.2 | 64 reviews |") and "+14.7%" in lines[2]


def test_quality_sweep_table_has_a_column_per_sparsity_and_marks_the_default():
    import quality

    sweep = [{"tokens_per_row": 128, "rows": 128, "sparsity": 0.3, "cos_mean": 0.83, "default": False},
             {"tokens_per_row": 32, "rows": 512, "sparsity": 0.3, "cos_mean": 0.855, "default": True},
             {"tokens_per_row": 32, "rows": 512, "sparsity": 0.5, "cos_mean": 0.7, "default": True}]
    lines = quality.sweep_markdown(sweep).splitlines()
    assert lines[0] == "| generated repair data (rows x tokens) | 30%: cos mean | 50%: cos mean |"
    assert lines[2] == "| 128 x 128 | 0.830 | - |"
    assert lines[3] == "| 512 x 32 (default) | 0.855 | 0.700 |"


def test_quality_ceiling_table_has_a_row_per_repair_and_a_column_per_sparsity():
    import quality_ceiling

    rows = [{"name": "least squares, 128 reviews", "repair_kind": "least squares", "reviews": 128,
             "sparsity": 0.3, "cos_mean": 0.9446, "cos_min": 0.756},
            {"name": "least squares, 128 reviews", "repair_kind": "least squares", "reviews": 128,
             "sparsity": 0.5, "cos_mean": 0.886, "cos_min": 0.567},
            {"name": "gradient, 4096 reviews", "repair_kind": "gradient", "reviews": 4096,
             "sparsity": 0.3, "cos_mean": 0.969, "cos_min": 0.85}]
    lines = quality_ceiling.markdown({"rows": rows}).splitlines()
    assert lines[0] == "| repair | calibration reviews | 30%: cos mean / min | 50%: cos mean / min |"
    assert lines[2] == "| least squares | 128 | 0.945 / 0.756 | 0.886 / 0.567 |"
    assert lines[3] == "| gradient | 4096 | 0.969 / 0.850 |  |"


def test_arch_survey_table_says_which_stage_failed():
    import arch_survey

    rows = [{"arch": "gptj", "past": True, "ok": True, "params_removed": 0.086,
             "units_removed": {"ffn": 28, "heads": 0, "conv": 0}, "max_rel_error": 0.0, "refused": []},
            {"arch": "funnel", "past": False, "ok": False, "stage": "export", "error": "TypeError: x"}]
    lines = arch_survey.markdown(rows).splitlines()
    assert lines[2] == "| gptj | yes | 8.6% | 28/0/0 | 0.0e+00 |  |"
    assert lines[3].startswith("| funnel |  | export failed: TypeError: x")


def _cnn_row(importance, repair, sparsity, accuracy, **extra):
    return {"name": importance + (" + repair" if repair else ""), "importance": importance, "options": {},
            "repair": repair, "sparsity": sparsity, "accuracy": accuracy, "flops_cut": sparsity + 0.01,
            "speedup": 1.5, **extra}


def test_cnn_quality_tables_have_a_column_per_budget_and_a_row_per_rounding():
    import cnn_quality

    result = {"dense": {"accuracy": 0.982, "params": 696202, "flops": 13_000_000, "latency_ms": 4.1,
                        "train_seconds": 41.0},
              "split": {"train": 4000, "held_out": 1000, "calibration": 128}, "round_to": 8, "seconds": 60,
              "commit": "abc1234", "created": "2026-12-04 05:00:00",
              "rows": [_cnn_row("l2", False, 0.2, 0.95), _cnn_row("l2", True, 0.2, 0.98),
                       _cnn_row("l2", True, 0.5, 0.975), _cnn_row("activation", True, 0.5, 0.97)],
              "rounding": [_cnn_row("l2", False, s, 0.9, round_to=rt, flops_cut=s, speedup=sp)
                           for rt, sp in ((1, 0.2), (8, 1.4)) for s in (0.2, 0.5)]}
    lines = cnn_quality.markdown(result).splitlines()
    assert lines[0] == "| criterion | repair | 20% | 50% |"
    assert lines[2] == "| dense | | 0.982 | |"
    assert lines[3:6] == ["| l2 |  | 0.950 | - |", "| l2 | yes | 0.980 | 0.975 |",
                          "| activation | yes | - | 0.970 |"]
    assert "13 MFLOPs per digit" in cnn_quality.markdown(result)
    rounding = cnn_quality.rounding_markdown(result).splitlines()
    assert rounding[2] == "| 1 | 0.200 | 0.20x | 0.500 | 0.20x |"
    assert rounding[3] == "| 8 | 0.200 | 1.40x | 0.500 | 1.40x |"
    assert cnn_quality.label({"importance": "fidelity", "options": {"rounds": 1}, "repair": True}) == \
        "fidelity(rounds=1) + repair"
