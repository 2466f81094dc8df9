"""Models written in plain PyTorch, not in transformers, exported by ``torch.onnx.export``.

timm's vision transformers (and MGP-STR's) compute q, k and v with one fused projection laid out as
``[batch, tokens, 3, heads, head_dim]``, permuted to ``[3, batch, heads, tokens, head_dim]`` and taken
apart by indexing (``qkv[0], qkv[1], qkv[2]``: three Gathers) or by ``unbind(0)`` (Split + Squeeze), with
``F.scaled_dot_product_attention`` or an explicit softmax. Both exporters, both ways of taking q, k and v
apart: every block's heads must be prunable and the pruned model exact.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from optimum_prune import ORTPruner, PruningConfig, verify

_DIM, _HEADS, _TOKENS, _IMAGE = 32, 4, 10, 24


class _Attention(torch.nn.Module):
    """timm's ``Attention``: fused qkv, heads from the size-3 axis' permutation."""

    def __init__(self, take: str, fused: bool) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(_DIM, 3 * _DIM)
        self.proj = torch.nn.Linear(_DIM, _DIM)
        self.take, self.fused = take, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, _HEADS, c // _HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.take == "index" else qkv.unbind(0)
        if self.fused:
            x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * (c // _HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Block(torch.nn.Module):
    def __init__(self, take: str, fused: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(_DIM), torch.nn.LayerNorm(_DIM)
        self.attn = _Attention(take, fused)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(_DIM, 48), torch.nn.GELU(), torch.nn.Linear(48, _DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ViT(torch.nn.Module):
    """Patch embedding (a strided Conv), class token, learned positions, two blocks, a final norm."""

    def __init__(self, take: str, fused: bool) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, _DIM, kernel_size=8, stride=8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, _DIM) * 0.02)
        self.pos = torch.nn.Parameter(torch.randn(1, _TOKENS, _DIM) * 0.02)
        self.blocks = torch.nn.Sequential(_Block(take, fused), _Block(take, fused))
        self.norm = torch.nn.LayerNorm(_DIM)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.norm(self.blocks(x))


def _export(model: torch.nn.Module, folder, dynamo: bool) -> None:
    folder.mkdir()
    images = torch.randn(2, 3, _IMAGE, _IMAGE)
    kwargs = (dict(dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}}) if dynamo
              else dict(dynamic_axes={"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}))
    with torch.no_grad():
        program = torch.onnx.export(model.eval(), (images,), None if dynamo else str(folder / "model.onnx"),
                                    dynamo=dynamo, input_names=["pixel_values"],
                                    output_names=["last_hidden_state"], verbose=False, **kwargs)
    if dynamo:
        program.save(str(folder / "model.onnx"))
    # the oracle and the validation run feed images of the config's size
    (folder / "config.json").write_text(json.dumps({"image_size": _IMAGE, "num_channels": 3}))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize(("take", "fused"), [("index", False), ("index", True), ("unbind", True)])
def test_timm_style_fused_qkv_heads_prune_exactly(tmp_path, take, fused, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")  # the dynamo exporter's dependency (the `dev` extra installs it)
    torch.manual_seed(0)
    src = tmp_path / "dense"
    _export(_ViT(take, fused), src, dynamo)
    before = (src / "model.onnx").read_bytes()
    heads = [g for g in ORTPruner.from_pretrained(src).analyze().groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable and g.units == _HEADS for g in heads), \
        [(g.seed, g.units, g.reason) for g in heads]
    out = ORTPruner.from_pretrained(src).prune(PruningConfig(sparsity=0.5, scope=("ffn", "heads")),
                                               tmp_path / "pruned")
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    report = json.loads((out / "report.json").read_text())["stages"][-1]
    assert report["units_removed"]["heads"] == 4 and report["units_removed"]["ffn"] > 0
    result = verify(src, out)
    assert result.exact_groups and result.max_rel_error <= 1e-4, result.outputs
    assert (src / "model.onnx").read_bytes() == before
