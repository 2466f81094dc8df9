"""Encoder-decoder exports (several ONNX files) pruned as one model by ``MultiFilePruner``.

optimum-onnx writes T5, Marian, Whisper, ... as ``encoder_model.onnx``, ``decoder_model.onnx``,
``decoder_with_past_model.onnx`` and ``decoder_model_merged.onnx``. The two decoders share their layers,
so they must lose the same units; the merged decoder is rebuilt from them; the folder must load with
``ORTModelForSeq2SeqLM`` / ``ORTModelForSpeechSeq2Seq`` and every file must pass the exactness oracle.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from optimum_prune import CalibrationData, MultiFilePruner, ORTPruner, PruningConfig, verify
from optimum_prune.errors import ConfigError, PlanMismatchError
from optimum_prune.multifile import DECODER, DECODER_WITH_PAST, MERGED_DECODER, read_component_plans
from optimum_prune.plan import PLAN_FILE, PruningPlan, load_plan
from optimum_prune.verify import RELATIVE_TOLERANCE
from zoo import SEQ2SEQ, export_seq2seq_model

SCOPE = ("ffn", "heads")


@pytest.fixture(scope="module")
def t5_folder(zoo_root):
    return export_seq2seq_model("t5", zoo_root)


def _load(name: str, folder, *, use_merged: bool):
    cls = SEQ2SEQ[name].ort_model_class()
    return cls.from_pretrained(folder, use_merged=use_merged, use_io_binding=False, use_cache=True,
                               provider="CPUExecutionProvider")


def _encoder_inputs(name: str) -> dict[str, torch.Tensor]:
    if name == "whisper":
        return {"input_features": torch.from_numpy(np.random.default_rng(0).standard_normal((1, 16, 3000))
                                                   .astype(np.float32))}
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _scores(model, inputs) -> np.ndarray:
    """The raw logits of four greedy steps (the first without, the others with the key/value cache)."""
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    return np.stack([s.numpy() for s in out.logits])


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_encoder_decoder_export_prunes_every_file_exactly_and_generates(zoo_root, tmp_path, name):
    src = export_seq2seq_model(name, zoo_root)
    pruner = ORTPruner.from_pretrained(src)
    assert isinstance(pruner, MultiFilePruner)
    out = pruner.prune(PruningConfig(sparsity=0.3, scope=SCOPE), tmp_path / "pruned")
    assert {p.name for p in src.glob("*.onnx")} == {p.name for p in out.glob("*.onnx")}

    report = json.loads((out / "report.json").read_text())["stages"][-1]
    per_file = {f: c["units_removed"]["ffn"] for f, c in report["components"].items()}
    assert all(n > 0 for n in per_file.values()), per_file  # encoder and both decoders lose FFN units
    assert report["params_after"] < report["params_before"]

    plans = read_component_plans(out)
    decoder = {gp.seed: gp for gp in plans[DECODER].groups}
    twins = [g for g in plans[DECODER_WITH_PAST].groups if g.kind == "ffn" and g.removed]
    assert twins
    kept = sorted(tuple(g.kept) for g in twins)
    assert kept == sorted(tuple(g.kept) for g in decoder.values() if g.kind == "ffn" and g.removed)

    for f in sorted(plans):
        result = verify(src, out, file_name=f)
        assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, (f, result.outputs)
    combined = verify(src, out)
    assert combined.exact and any(k.startswith("encoder_model.onnx:") for k in combined.outputs)

    # The rebuilt merged decoder computes what its two pruned parts compute (no-past and with-past steps).
    inputs = _encoder_inputs(name)
    merged = _scores(_load(name, out, use_merged=True), inputs)
    separate = _scores(_load(name, out, use_merged=False), inputs)
    np.testing.assert_allclose(merged, separate, rtol=1e-4, atol=1e-5)
    assert merged.shape[0] == 4 and np.isfinite(merged).all()


def _recomputed_logits(folder, inputs, sequences: np.ndarray, steps: int) -> np.ndarray:
    """Each step's last-position logits from the pruned encoder and the no-cache decoder run on the whole
    decoder prefix (no key/value cache at all)."""
    import onnxruntime as ort

    def session(name):
        return ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])

    encoder, decoder = session("encoder_model.onnx"), session(DECODER)
    feeds = {k: v.numpy() for k, v in inputs.items()}
    hidden = encoder.run(None, {i.name: feeds[i.name] for i in encoder.get_inputs()})[0]
    wanted = {i.name for i in decoder.get_inputs()}
    out = []
    for step in range(steps):
        prefix = sequences[:, : step + 1]
        decoder_feeds = {"input_ids": prefix, "encoder_hidden_states": hidden}
        if "encoder_attention_mask" in wanted:
            decoder_feeds["encoder_attention_mask"] = feeds["attention_mask"]
        out.append(decoder.run(["logits"], decoder_feeds)[0][:, -1])
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_decoder_heads_prune_through_the_cache_and_generate(zoo_root, tmp_path, name):
    """With prune_kv_heads the decoders' self-attention heads go too (twins keep the same heads); the
    with-past decoder's cache inputs narrow the empty first cache Optimum sizes from config.json, which
    keeps its head counts. Cached generation, merged or not, gives the logits of recomputing every step
    from the whole prefix without a cache."""
    src = export_seq2seq_model(name, zoo_root)
    dense_cfg = json.loads((src / "config.json").read_text())
    out = ORTPruner.from_pretrained(src).prune(
        PruningConfig(sparsity=0.5, scope=SCOPE, prune_kv_heads=True), tmp_path / "pruned")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    heads = {f: c["units_removed"]["heads"] for f, c in report["components"].items()}
    assert heads[DECODER] > 0 and heads[DECODER_WITH_PAST] == heads[DECODER], heads
    assert any("narrow it to each layer's kept heads" in n for n in report["config_notes"])
    cfg = json.loads((out / "config.json").read_text())
    head_keys = [k for k in dense_cfg if "heads" in k or k == "d_kv"]
    assert head_keys and all(cfg[k] == dense_cfg[k] for k in head_keys)
    plans = read_component_plans(out)
    removed = sorted(tuple(g.kept) for g in plans[DECODER].groups if g.kind == "heads" and g.removed)
    assert removed == sorted(tuple(g.kept) for g in plans[DECODER_WITH_PAST].groups
                             if g.kind == "heads" and g.removed)
    for f in sorted(plans):
        result = verify(src, out, file_name=f)
        assert result.exact_groups and result.max_rel_error <= RELATIVE_TOLERANCE, (f, result.outputs)
    inputs = _encoder_inputs(name)
    for merged in (True, False):
        model = _load(name, out, use_merged=merged)
        result = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                output_logits=True, return_dict_in_generate=True)
        cached = np.stack([s.numpy() for s in result.logits])
        recomputed = _recomputed_logits(out, inputs, result.sequences.numpy(), 4)
        np.testing.assert_allclose(cached, recomputed, rtol=1e-4, atol=1e-5, err_msg=f"merged={merged}")


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_cross_attention_heads_are_twins_across_the_decoders(zoo_root, tmp_path, name):
    """The decoder without past computes the cross-attention keys and values from the encoder output, the
    one with past reads them from the cache: the same heads, seen through the query projection alone in
    one file. They are linked as twins (not refused as another structure) and go in both decoders with
    every other head group (T5's shared position biases couple each attention's heads across its layers:
    one self- and one cross-attention group); the with-past decoder's encoder cache inputs shrink."""
    src = export_seq2seq_model(name, zoo_root)
    analysis = ORTPruner.from_pretrained(src).analyze()
    assert not any(f != "encoder_model.onnx" and analysis.components[f].groups[gid].kind == "heads"
                   for f, gid in analysis.links.conflicts), analysis.links.conflicts
    out = ORTPruner.from_pretrained(src).prune(
        PruningConfig(sparsity=0.5, scope=("heads",), prune_kv_heads=True), tmp_path / "pruned")
    plans = read_component_plans(out)
    for f in (DECODER, DECODER_WITH_PAST):
        heads = [g for g in plans[f].groups if g.kind == "heads"]
        assert len(heads) >= 2 and all(len(g.kept) < g.units for g in heads), (f, heads)
    reads_encoder_cache = {g.id for g in analysis.components[DECODER_WITH_PAST].groups
                           if any(sl.io == "input" and "encoder" in sl.name for sl in g.slices)}
    cross = [g for g in plans[DECODER_WITH_PAST].groups if g.id in reads_encoder_cache]
    assert cross and all(len(g.kept) < g.units for g in cross)
    import onnx

    past = onnx.load(out / DECODER_WITH_PAST, load_external_data=False)
    dense = onnx.load(src / DECODER_WITH_PAST, load_external_data=False)
    heads = {i.name: i.type.tensor_type.shape.dim[1] for i in past.graph.input if "encoder" in i.name}
    before = {i.name: i.type.tensor_type.shape.dim[1] for i in dense.graph.input if "encoder" in i.name}
    assert heads and all(heads[k].dim_value < before[k].dim_value for k in heads
                         if before[k].HasField("dim_value")), (heads, before)
    for f in sorted(plans):
        assert verify(src, out, file_name=f).exact, f


def test_twins_follow_their_leader_under_a_data_driven_criterion(t5_folder, tmp_path):
    pruner = ORTPruner.from_pretrained(t5_folder)
    calibration = {f: CalibrationData.generated(t5_folder / f) for f in pruner.files}
    out = pruner.prune(PruningConfig(sparsity=0.5, scope=("ffn",), importance="activation"), tmp_path / "p",
                       calibration=calibration)
    plans = read_component_plans(out)
    lead = sorted(tuple(g.kept) for g in plans[DECODER].groups if g.kind == "ffn")
    follow = sorted(tuple(g.kept) for g in plans[DECODER_WITH_PAST].groups if g.kind == "ffn")
    assert lead == follow and all(len(k) == 24 for k in lead)
    assert verify(t5_folder, out).exact


def test_weights_shared_in_groups_of_another_structure_are_never_pruned(t5_folder, tmp_path):
    analysis = ORTPruner.from_pretrained(t5_folder).analyze()
    hidden = {(f, g.id) for f, r in analysis.components.items() for g in r.groups if g.kind == "hidden"}
    assert len(hidden) == 3 and hidden <= set(analysis.links.conflicts)  # the tied embedding
    assert all(f for f in (u["file"] for u in analysis.unprunable()))
    out = ORTPruner.from_pretrained(t5_folder).prune(PruningConfig(sparsity=0.3, scope=("hidden",)),
                                                     tmp_path / "p")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["hidden"] == 0


def test_a_merged_decoder_without_its_parts_is_copied_and_the_encoder_still_pruned(t5_folder, tmp_path):
    src = tmp_path / "merged-only"
    shutil.copytree(t5_folder, src)
    (src / DECODER).unlink()
    (src / DECODER_WITH_PAST).unlink()
    pruner = ORTPruner.from_pretrained(src)
    assert pruner.files == ["encoder_model.onnx"]
    assert "copied unchanged" in pruner.unprunable_files[MERGED_DECODER]
    out = pruner.prune(PruningConfig(sparsity=0.3, scope=SCOPE), tmp_path / "p")
    assert (out / MERGED_DECODER).read_bytes() == (src / MERGED_DECODER).read_bytes()
    assert verify(src, out).exact
    scores = _scores(_load("t5", out, use_merged=True), _encoder_inputs("t5"))
    assert np.isfinite(scores).all()


def test_a_saved_multi_file_plan_replays_byte_for_byte(t5_folder, tmp_path):
    pruner = ORTPruner.from_pretrained(t5_folder)
    first = pruner.prune(PruningConfig(sparsity=0.3, scope=SCOPE), tmp_path / "a")
    again = pruner.prune(plan=read_component_plans(first), save_dir=tmp_path / "b")
    for f in pruner.files:
        assert (first / f).read_bytes() == (again / f).read_bytes(), f
    with pytest.raises(PlanMismatchError, match="load_plan"):
        PruningPlan.load(first / PLAN_FILE)
    assert load_plan(first / PLAN_FILE, "encoder_model.onnx").source == "encoder_model.onnx"
    with pytest.raises(PlanMismatchError, match="no plan for model.onnx"):
        load_plan(first / PLAN_FILE)


def test_multi_file_refusals_name_the_file_and_the_fix(t5_folder, tmp_path):
    pruner = ORTPruner.from_pretrained(t5_folder)
    with pytest.raises(ConfigError, match="recover=False"):
        pruner.prune(PruningConfig(sparsity=0.3, scope=("ffn",), recover=True), tmp_path / "a")
    encoder_only = {"encoder_model.onnx": CalibrationData.generated(t5_folder / "encoder_model.onnx")}
    with pytest.raises(ConfigError, match=DECODER):
        pruner.prune(PruningConfig(sparsity=0.3, scope=("ffn",), importance="activation"), tmp_path / "c",
                     calibration=encoder_only)
    with pytest.raises(ConfigError, match="one plan per file"):
        pruner.prune(plan=PruningPlan(groups=[]), save_dir=tmp_path / "d")
    assert not any((tmp_path / d).exists() for d in "acd")
    single = ORTPruner.from_pretrained(t5_folder, file_name="encoder_model.onnx")
    assert not isinstance(single, MultiFilePruner)


def test_replayed_plans_whose_twins_disagree_are_refused(t5_folder, tmp_path):
    pruner = ORTPruner.from_pretrained(t5_folder)
    plans = pruner.plan(PruningConfig(sparsity=0.5, scope=("ffn",)))
    follower = next(gp for gp in plans[DECODER_WITH_PAST].groups if gp.kind == "ffn" and gp.removed)
    follower.kept = sorted(set(range(follower.units)) - {follower.kept[0]})[:len(follower.kept)]
    with pytest.raises(PlanMismatchError, match="different units"):
        pruner.prune(plan=plans, save_dir=tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_encoder_calibration_feeds_the_decoders_through_the_dense_encoder(t5_folder, tmp_path):
    """One CalibrationData for the encoder's inputs: the decoder gets the dense encoder's hidden states
    and the source ids shifted right behind decoder_start_token_id (its twin follows its plan)."""
    from optimum_prune.multifile import decoder_calibration

    encoder_data = CalibrationData.from_feeds([{"input_ids": np.array([[5, 6, 7, 8], [9, 10, 11, 12]]),
                                                "attention_mask": np.ones((2, 4), dtype=np.int64)}])
    derived = decoder_calibration(t5_folder, DECODER, encoder_data)
    batch = next(iter(derived.batches()))
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7], [0, 9, 10, 11]]  # T5's decoder_start_token_id 0
    assert batch["encoder_hidden_states"].shape == (2, 4, 32)
    assert decoder_calibration(t5_folder, DECODER_WITH_PAST, encoder_data) is None  # it takes a cache
    out = ORTPruner.from_pretrained(t5_folder).prune(
        PruningConfig(sparsity=0.5, scope=("ffn",), importance="activation"), tmp_path / "p",
        calibration=encoder_data)
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert all(c["units_removed"]["ffn"] == 48 for c in report["components"].values())
    assert verify(t5_folder, out).exact


def test_hints_of_a_multi_file_model_are_judged_on_every_file_together(zoo_root, tmp_path):
    """Whisper: at scope conv only the encoder has conv groups, so no file-level 'nothing was pruned'
    warning may fire; the top-level report carries the hints (the decoders' cache-resizing heads)."""
    import warnings

    src = export_seq2seq_model("whisper", zoo_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = MultiFilePruner(src).prune(PruningConfig(sparsity=0.5, scope=("conv",)), tmp_path / "conv")
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["conv"] > 0
    assert not any("nothing was pruned" in h for h in report.get("hints", []))
    out = MultiFilePruner(src).prune(PruningConfig(sparsity=0.5), tmp_path / "heads")
    hints = json.loads((out / "report.json").read_text())["stages"][-1]["hints"]
    assert any("resize the key/value cache" in h for h in hints), hints


def test_calibration_that_fits_no_file_of_a_speech_model_says_which_and_how(zoo_root, tmp_path):
    """Text feeds for Whisper: they feed neither the encoder (input_features) nor, through it, a decoder;
    the error used to say 'needs calibration data: pass calibration=...' although data was passed."""
    src = export_seq2seq_model("whisper", zoo_root)
    text = CalibrationData.from_feeds([{"input_ids": np.ones((2, 5), np.int64)}])
    config = PruningConfig(sparsity=0.3, importance="activation")
    with pytest.raises(ConfigError, match=r"_model.onnx: .*the data given \(\['input_ids'\]\) neither "
                                          r"feeds its inputs .*mapping \{file name: CalibrationData\}"):
        MultiFilePruner(src).prune(config, tmp_path / "p", calibration=text)
