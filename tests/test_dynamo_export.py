"""Models exported by PyTorch's dynamo exporter (``torch.onnx.export(dynamo=True)``), not by optimum-onnx.

Its graphs differ from the TorchScript exporter's: opset 18+, initializers deduplicated (every zero bias
of a random model is one tensor), and a target shape computed once and read by every layer's Reshapes.
The pruner must serve them like any other export: exact, every layer's heads prunable.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
import transformers

from optimum_prune import ORTPruner, PruningConfig, verify

pytest.importorskip("onnxscript")  # the dynamo exporter's dependency (the `dev` extra installs it)

_TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64)


class _LastHiddenState(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, return_dict=False)[0]


def _export(model: torch.nn.Module, folder) -> None:
    torch.manual_seed(0)
    folder.mkdir()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2, max=64)
    with torch.no_grad():
        program = torch.onnx.export(_LastHiddenState(model.eval()), (torch.randint(0, 100, (2, 7)),),
                                    dynamo=True, input_names=["input_ids"],
                                    output_names=["last_hidden_state"],
                                    dynamic_shapes={"input_ids": {0: batch, 1: seq}}, verbose=False)
    program.save(str(folder / "model.onnx"))


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_dynamo_export_prunes_every_layer_exactly(tmp_path, arch):
    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(**_TINY, attn_implementation="eager")
        model = transformers.BertModel(config)
    else:
        config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                         attn_implementation="eager")
        model = transformers.GPT2Model(config)
    src = tmp_path / "dense"
    _export(model, src)
    before = (src / "model.onnx").read_bytes()
    heads = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable for g in heads), [(g.seed, g.reason) for g in heads]
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.3, scope=("ffn", "heads")),
                                               tmp_path / "pruned")
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 2 and report["units_removed"]["ffn"] > 0
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= 1e-4, result.outputs
    assert (src / "model.onnx").read_bytes() == before
