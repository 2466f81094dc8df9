"""A zoo of tiny, randomly initialised transformers models exported to ONNX with optimum-onnx.

The zoo feeds the structural-pruning test suite. Every model is built from a transformers config (no hub
access is needed), seeded with ``torch.manual_seed(0)``, saved with ``save_pretrained`` and exported with
``optimum.exporters.onnx.main_export``. Optionally, the exported graph is run through ONNX Runtime's
transformer optimizer to get a graph with fused ``com.microsoft`` operators (Attention,
SkipLayerNormalization, ...).

Dimensions are chosen so that no two sizes that a pruning pass could confuse are equal. For text models:

===========================  =====
hidden size                  32
intermediate (FFN) size      48
attention heads              4
head dim                     8
key/value heads (GQA)        2
layers                       2
vocabulary                   100
max positions                64
dummy batch / seq / past     5 / 7 / 3
===========================  =====

Vision transformers use hidden 36 (head dim 9), FFN 56, image 32, patch 8 and 10 labels so that the hidden
size differs from the image side. Deviations for specific architectures are documented in their config
factories.

Parameters are perturbed after initialisation so that no two weights are equal (see
:func:`build_torch_model`).

Folder layout under ``root``::

    root/<name>/hf                 save_pretrained output (config + safetensors)
    root/<name>/onnx               plain export (decoders: no past key values)
    root/<name>/onnx-past          decoders only: export with past key values
    root/<name>/onnx[-past]-fused  graph optimised by onnxruntime.transformers.optimizer

Each ONNX folder holds ``model.onnx`` and ``config.json`` and is reused when it already exists and its
``zoo-fingerprint.txt`` matches (config, task, fusion settings, package versions), so editing a config
re-exports instead of silently reusing a stale model. Exports are serialised with a per-model file lock and
written atomically, so concurrent pytest-xdist workers can share one root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from filelock import FileLock

if TYPE_CHECKING:
    from transformers import PretrainedConfig

DUMMY_BATCH = 5
"""Batch size used by :func:`dummy_inputs` (distinct from every model dimension in the zoo)."""
DUMMY_SEQ = 7
"""(Encoder) sequence length used by :func:`dummy_inputs`."""
DUMMY_DECODER_SEQ = 9
"""Decoder sequence length used by :func:`dummy_inputs` for encoder-decoder models (bart)."""
DUMMY_PAST = 3
"""Past sequence length used by :func:`dummy_inputs` for ``past_key_values`` inputs."""

# Shared tiny text dimensions.
_VOCAB = 100
_HIDDEN = 32
_FFN = 48
_HEADS = 4
_KV_HEADS = 2
_LAYERS = 2
_MAX_POS = 64

# Shared tiny vision dimensions.
_IMAGE = 32
_PATCH = 8
_CHANNELS = 3
_VIT_HIDDEN = 36
_VIT_FFN = 56
_LABELS = 10

_TASK_FEATURES = "feature-extraction"
_TASK_CAUSAL = "text-generation"
_TASK_IMAGE = "image-classification"
_TASK_SEQ2SEQ = "text2text-generation"
_TASK_SPEECH = "automatic-speech-recognition"
_TASK_DETECTION = "object-detection"
_TASK_SEGMENTATION = "semantic-segmentation"
_TASK_ZERO_SHOT = "zero-shot-image-classification"
_TASK_IMAGE_TO_TEXT = "image-to-text"
_TASK_TEXT_TO_AUDIO = "text-to-audio"


def _default_fusion_dims(config: PretrainedConfig) -> tuple[int, int]:
    """(num_heads, hidden_size) for the ORT optimizer, read through the config's attribute map."""
    return int(config.num_attention_heads), int(config.hidden_size)


def _auto_fusion_dims(config: PretrainedConfig) -> tuple[int, int]:
    """Let the ORT optimizer detect num_heads / hidden_size from the graph (0 means auto-detect)."""
    del config
    return 0, 0


@dataclass(frozen=True)
class ZooSpec:
    """Description of one zoo model.

    Attributes:
        arch: transformers ``model_type`` of the config.
        make_config: zero-argument factory returning the tiny config.
        task: optimum export task for the plain export (decoders get ``-with-past`` appended for the
            with-past variant).
        is_decoder: causal decoder-only LM, exported with and without past key values.
        is_cnn: convolutional vision model (no attention).
        fusable: ``model_type`` for ``onnxruntime.transformers.optimizer.optimize_model`` or ``None`` when
            fusion is not applicable / not supported (see ``fusion_note``).
        fusion_note: why ``fusable`` is what it is, and what the fusion produces.
        fusion_opt_level: ``opt_level`` passed to ``optimize_model`` (ORT basic graph optimisations run
            first when > 0).
        fusion_dims: maps the config to ``(num_heads, hidden_size)`` for ``optimize_model``.
        model_class: name of the ``transformers`` class that builds the model, when the task's auto class does
            not map its model type (optimum-onnx names the class too: ColPali's ColPaliForRetrieval).
        ort_class: name of the ``optimum.onnxruntime`` class that loads the export, when the task's default
            class does not fit (see :meth:`ort_model_class`).
        processor: zero-argument factory of a preprocessor saved beside the weights, for exports whose dummy
            inputs read one from the model folder (optimum-onnx sizes DINOv2's images by its crop size).
    """

    arch: str
    make_config: Callable[[], PretrainedConfig]
    task: str
    is_decoder: bool = False
    is_cnn: bool = False
    fusable: str | None = None
    fusion_note: str = ""
    fusion_opt_level: int = 1
    fusion_dims: Callable[[PretrainedConfig], tuple[int, int]] = _default_fusion_dims
    model_class: str | None = None
    ort_class: str | None = None
    processor: Callable[[], Any] | None = None

    @property
    def is_vision(self) -> bool:
        """Whether the model takes ``pixel_values``."""
        return self.task == _TASK_IMAGE

    def auto_model_class(self) -> type:
        """The transformers class that builds the model: :attr:`model_class`, else the task's auto class."""
        import transformers

        if self.model_class is not None:
            return getattr(transformers, self.model_class)
        return {
            _TASK_FEATURES: transformers.AutoModel,
            _TASK_CAUSAL: transformers.AutoModelForCausalLM,
            _TASK_IMAGE: transformers.AutoModelForImageClassification,
            _TASK_SEQ2SEQ: transformers.AutoModelForSeq2SeqLM,
            _TASK_SPEECH: transformers.AutoModelForSpeechSeq2Seq,
            _TASK_DETECTION: transformers.AutoModelForObjectDetection,
            _TASK_SEGMENTATION: transformers.AutoModelForSemanticSegmentation,
            _TASK_ZERO_SHOT: transformers.AutoModelForZeroShotImageClassification,
            _TASK_IMAGE_TO_TEXT: transformers.AutoModelForVision2Seq,
            _TASK_TEXT_TO_AUDIO: transformers.AutoModelForTextToWaveform,
        }[self.task]

    def ort_model_class(self) -> type:
        """The ``optimum.onnxruntime`` ORTModel class that loads this model's export."""
        import optimum.onnxruntime as ort

        if self.ort_class is not None:
            return getattr(ort, self.ort_class)
        return {
            _TASK_FEATURES: ort.ORTModelForFeatureExtraction,
            _TASK_CAUSAL: ort.ORTModelForCausalLM,
            _TASK_IMAGE: ort.ORTModelForImageClassification,
            _TASK_SEQ2SEQ: ort.ORTModelForSeq2SeqLM,
            _TASK_SPEECH: ort.ORTModelForSpeechSeq2Seq,
            _TASK_IMAGE_TO_TEXT: ort.ORTModelForVision2Seq,
        }[self.task]


# --------------------------------------------------------------------------------------------------------
# Config factories
# --------------------------------------------------------------------------------------------------------


def _text_common() -> dict[str, Any]:
    """Keyword arguments shared by the BERT-style encoder configs."""
    return {
        "vocab_size": _VOCAB,
        "hidden_size": _HIDDEN,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "intermediate_size": _FFN,
        "max_position_embeddings": _MAX_POS,
    }


def _bert() -> PretrainedConfig:
    from transformers import BertConfig

    return BertConfig(**_text_common(), type_vocab_size=2)


def _distilbert() -> PretrainedConfig:
    from transformers import DistilBertConfig

    return DistilBertConfig(
        vocab_size=_VOCAB,
        dim=_HIDDEN,
        n_layers=_LAYERS,
        n_heads=_HEADS,
        hidden_dim=_FFN,
        max_position_embeddings=_MAX_POS,
    )


def _roberta() -> PretrainedConfig:
    from transformers import RobertaConfig

    # Position ids start at pad_token_id + 1, so the usable sequence length is 62.
    return RobertaConfig(**_text_common(), type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _xlm_roberta() -> PretrainedConfig:
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        **_text_common(), type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2
    )


def _electra() -> PretrainedConfig:
    from transformers import ElectraConfig

    # embedding_size != hidden_size adds the embeddings_project Linear (16 -> 32).
    return ElectraConfig(**_text_common(), embedding_size=16)


def _albert() -> PretrainedConfig:
    from transformers import AlbertConfig

    # One hidden group with one inner layer: both layers share the same weights (ALBERT layer sharing).
    return AlbertConfig(
        **_text_common(),
        embedding_size=16,
        num_hidden_groups=1,
        inner_group_num=1,
        hidden_act="gelu_new",
    )


def _deberta_v2() -> PretrainedConfig:
    from transformers import DebertaV2Config

    # DeBERTa-v3 style disentangled attention; 2 * position_buckets = 24 relative embeddings.
    return DebertaV2Config(
        **_text_common(),
        type_vocab_size=0,
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        position_buckets=12,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
    )


def _mpnet() -> PretrainedConfig:
    from transformers import MPNetConfig

    # MPNetEncoder.compute_position_bias hard-codes num_buckets=32 (transformers 4.57), so the relative
    # attention bias table must have 32 rows; hidden is 40 (head dim 10) and FFN 56 to keep 32 unique.
    common = {**_text_common(), "hidden_size": 40, "intermediate_size": 56}
    return MPNetConfig(**common, relative_attention_num_buckets=32)


def _mobilebert() -> PretrainedConfig:
    from transformers import MobileBertConfig

    # hidden 40 (inter-block width), trigram embeddings 3 * 20 = 60 -> 40, bottleneck (true hidden) 24 with
    # 4 heads of 6, FFN 56 on the bottleneck width; NoNorm (elementwise) normalisation as in the original.
    return MobileBertConfig(
        vocab_size=_VOCAB,
        hidden_size=40,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        intermediate_size=56,
        max_position_embeddings=_MAX_POS,
        embedding_size=20,
        intra_bottleneck_size=24,
        num_feedforward_networks=2,
        use_bottleneck=True,
        key_query_shared_bottleneck=True,
    )


def _squeezebert() -> PretrainedConfig:
    from transformers import SqueezeBertConfig

    # Grouped 1x1 convolutions with 2 groups (16 channels per group, distinct from head dim 8).
    return SqueezeBertConfig(
        **_text_common(),
        embedding_size=_HIDDEN,
        q_groups=2,
        k_groups=2,
        v_groups=2,
        post_attention_groups=1,
        intermediate_groups=2,
        output_groups=2,
    )


def _bart() -> PretrainedConfig:
    from transformers import BartConfig

    return BartConfig(
        vocab_size=_VOCAB,
        d_model=_HIDDEN,
        encoder_layers=_LAYERS,
        decoder_layers=_LAYERS,
        encoder_attention_heads=_HEADS,
        decoder_attention_heads=_HEADS,
        encoder_ffn_dim=_FFN,
        decoder_ffn_dim=_FFN,
        max_position_embeddings=_MAX_POS,
    )


def _vit_common() -> dict[str, Any]:
    """Keyword arguments shared by ViT and DeiT."""
    return {
        "hidden_size": _VIT_HIDDEN,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "intermediate_size": _VIT_FFN,
        "image_size": _IMAGE,
        "patch_size": _PATCH,
        "num_channels": _CHANNELS,
        "num_labels": _LABELS,
    }


def _vit() -> PretrainedConfig:
    from transformers import ViTConfig

    return ViTConfig(**_vit_common())


def _deit() -> PretrainedConfig:
    from transformers import DeiTConfig

    # The auto class maps DeiT to two heads; pick the distilled one (cls + distillation token classifiers,
    # averaged) through ``architectures``, as in the facebook/deit-*-distilled checkpoints.
    return DeiTConfig(**_vit_common(), architectures=["DeiTForImageClassificationWithTeacher"])


def _beit() -> PretrainedConfig:
    from transformers import BeitConfig

    # Per-layer relative position bias: a [relative distances, heads] table gathered and interpolated
    # (a Resize with scale 1 on the head axis) before it is added to the attention scores.
    return BeitConfig(**_vit_common(), use_relative_position_bias=True)


def _swin() -> PretrainedConfig:
    from transformers import SwinConfig

    # 8x8 patch grid, 4x4 windows; stage widths 12 / 24 with 2 / 4 heads (head dim 6); MLP 30 / 60.
    return SwinConfig(
        image_size=_IMAGE,
        patch_size=4,
        num_channels=_CHANNELS,
        embed_dim=12,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        mlp_ratio=2.5,
        num_labels=_LABELS,
    )


def _convnext() -> PretrainedConfig:
    from transformers import ConvNextConfig

    # Two stages (num_stages must match hidden_sizes): widths 12 / 20, inverted bottleneck 48 / 80.
    return ConvNextConfig(
        num_channels=_CHANNELS,
        patch_size=4,
        num_stages=2,
        hidden_sizes=[12, 20],
        depths=[2, 2],
        image_size=_IMAGE,
        num_labels=_LABELS,
    )


def _resnet() -> PretrainedConfig:
    from transformers import ResNetConfig

    # Bottleneck blocks (reduction 4): stem 8, stage outputs 16 / 24, reduced widths 4 / 6.
    return ResNetConfig(
        num_channels=_CHANNELS,
        embedding_size=8,
        hidden_sizes=[16, 24],
        depths=[1, 2],
        layer_type="bottleneck",
        num_labels=_LABELS,
    )


def _mobilenet_v2() -> PretrainedConfig:
    from transformers import MobileNetV2Config

    # The block structure is fixed; depth_multiplier shrinks every width (rounded to multiples of 8).
    return MobileNetV2Config(
        num_channels=_CHANNELS,
        image_size=_IMAGE,
        depth_multiplier=0.25,
        finegrained_output=False,
        num_labels=_LABELS,
    )


def _decoder_common() -> dict[str, Any]:
    """Keyword arguments shared by the llama-style decoder configs (GQA: 4 query heads, 2 kv heads)."""
    return {
        "vocab_size": _VOCAB,
        "hidden_size": _HIDDEN,
        "intermediate_size": _FFN,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _KV_HEADS,
        "max_position_embeddings": _MAX_POS,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _gpt2() -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=_VOCAB,
        n_embd=_HIDDEN,
        n_layer=_LAYERS,
        n_head=_HEADS,
        n_inner=_FFN,
        n_positions=_MAX_POS,
        bos_token_id=1,
        eos_token_id=2,
    )


def _llama() -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(**_decoder_common())


def _llama_mqa() -> PretrainedConfig:
    from transformers import LlamaConfig

    # Multi-query attention (one key/value head shared by the 4 query heads, as Gemma-2B / Falcon-7B):
    # repeat_kv broadcasts it from 1, so query heads are pruned without touching the cache.
    return LlamaConfig(**{**_decoder_common(), "num_key_value_heads": 1})


def _qwen2() -> PretrainedConfig:
    from transformers import Qwen2Config

    return Qwen2Config(**_decoder_common())


def _mistral() -> PretrainedConfig:
    from transformers import MistralConfig

    return MistralConfig(**_decoder_common(), sliding_window=None)


def _phi3() -> PretrainedConfig:
    from transformers import Phi3Config

    # Fused qkv_proj / gate_up_proj. The default pad_token_id (32000) is outside the tiny vocabulary.
    # No GQA (4 kv heads, as Phi-3-mini): optimum-onnx 0.1.0's ORTModelForCausalLM sizes the empty past of
    # phi3 with num_attention_heads, so a GQA phi3 export fails in generate().
    # FFN 40 so that gate_up_proj (2 * 40 = 80) differs from qkv_proj (3 * 32 = 96).
    common = {**_decoder_common(), "num_key_value_heads": _HEADS, "intermediate_size": 40}
    return Phi3Config(**common, original_max_position_embeddings=_MAX_POS)


def _opt() -> PretrainedConfig:
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=_VOCAB,
        hidden_size=_HIDDEN,
        ffn_dim=_FFN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        max_position_embeddings=_MAX_POS,
        word_embed_proj_dim=_HIDDEN,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )


def _gemma() -> PretrainedConfig:
    from transformers import GemmaConfig

    # Gemma's default head_dim is 256, independent of hidden_size / heads.
    return GemmaConfig(**_decoder_common(), head_dim=_HIDDEN // _HEADS)


def _gpt_neox() -> PretrainedConfig:
    from transformers import GPTNeoXConfig

    # Partial rotary embeddings on 6 of the 8 head dims (distinct from the 4 heads); parallel residual.
    return GPTNeoXConfig(
        vocab_size=_VOCAB,
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        intermediate_size=_FFN,
        max_position_embeddings=_MAX_POS,
        rotary_pct=0.75,
        bos_token_id=1,
        eos_token_id=2,
    )


def _falcon() -> PretrainedConfig:
    from transformers import FalconConfig

    # Falcon-7B style: multi-query attention (1 kv head), rotary, parallel attention + MLP.
    # The Falcon-40B "new decoder architecture" (grouped kv heads) cannot be exported with past: transformers
    # 4.57 broadcasts k/v to all heads before the cache update while optimum's dummy past has num_kv_heads.
    return FalconConfig(
        vocab_size=_VOCAB,
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        multi_query=True,
        new_decoder_architecture=False,
        parallel_attn=True,
        alibi=False,
        ffn_hidden_size=40,  # query_key_value is (4 + 2) * 8 = 48 wide, so not _FFN
        max_position_embeddings=_MAX_POS,
        bos_token_id=1,
        eos_token_id=2,
    )


def _bloom() -> PretrainedConfig:
    from transformers import BloomConfig

    # ALiBi attention; BLOOM's MLP width is fixed at 4 * hidden = 128.
    return BloomConfig(
        vocab_size=_VOCAB,
        hidden_size=_HIDDEN,
        n_layer=_LAYERS,
        n_head=_HEADS,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _mobilebert_fusion_dims(config: PretrainedConfig) -> tuple[int, int]:
    """MobileBERT attention runs on the bottleneck width (true_hidden_size), not hidden_size."""
    return int(config.num_attention_heads), int(config.true_hidden_size)


# What ORT's optimizer produces for each arch (onnxruntime 1.31.1, transformers 4.57.6, optimum-onnx 0.1.0) is
# recorded in the notes; `python tests/zoo_survey.py OUTDIR` re-checks it. Attention is only fused for the
# BERT family, whose export is torch's SDPA decomposition with a runtime scale (q and k^T each multiplied by
# Sqrt(...) computed from Shape(q)), i.e. FusionAttention's "sdpa" qk path. Every other export keeps its
# MatMul/Softmax attention: SDPA decomposition with a constant scale (explicit `scaling`: vit, deit, bart,
# llama-likes, opt, gpt_neox), eager attention with relative position biases / ALiBi, or GPT-style graphs
# that the gpt2 attention fusions do not match.
_BERT_FULL = "Attention + EmbedLayerNormalization + SkipLayerNormalization + BiasGelu: fully fused."
_BERT_NO_EMBED = (
    "Attention + SkipLayerNormalization + BiasGelu; embeddings stay unfused (position ids derived from "
    "input_ids via padding_idx, so no EmbedLayerNormalization)."
)
_ROPE_L0 = (
    "opt_level 0 (python fusions only): RotaryEmbedding (q and k per layer) + "
    "SkipSimplifiedLayerNormalization. With opt_level >= 1, ORT's constant folding runs first and breaks the "
    "rotary pattern (only SkipSimplifiedLayerNormalization remains). No attention fusion (SDPA "
    "decomposition with constant scale, GQA repeat_kv: not matched)."
)
_VIT_NOTE = (
    "SkipLayerNormalization + BiasGelu only: attention is the SDPA decomposition with a constant scale and "
    "no mask (Mul(q), Mul(k^T) -> MatMul -> Softmax), which none of FusionAttention's qk paths matches. "
    "opt_level 99 even loses SkipLayerNormalization."
)
_CNN_NOTE = "CNN: no transformer fusions apply (Conv+BatchNorm is already folded by the exporter)."

ZOO: dict[str, ZooSpec] = {
    # Text encoders ----------------------------------------------------------------------------------------
    "bert": ZooSpec("bert", _bert, _TASK_FEATURES, fusable="bert", fusion_note=_BERT_FULL),
    "distilbert": ZooSpec("distilbert", _distilbert, _TASK_FEATURES, fusable="bert", fusion_note=_BERT_FULL),
    "roberta": ZooSpec("roberta", _roberta, _TASK_FEATURES, fusable="bert", fusion_note=_BERT_NO_EMBED),
    "electra": ZooSpec("electra", _electra, _TASK_FEATURES, fusable="bert", fusion_note=_BERT_FULL),
    "albert": ZooSpec(
        "albert",
        _albert,
        _TASK_FEATURES,
        fusable="bert",
        fusion_note=(
            "Only one of the two applications of the shared layer (the second) gets an Attention node, "
            "with its own packed QKV copy of the shared q/k/v weights; the first keeps MatMul/Softmax "
            "attention on the original initializers. The other shared weights stay single initializers with "
            "two consumers (in the plain export the second use of each pre-transposed MatMul weight goes "
            "through an Identity node). SkipLayerNormalization + FastGelu (gelu_new); no "
            "EmbedLayerNormalization."
        ),
    ),
    "deberta-v2": ZooSpec(
        "deberta-v2",
        _deberta_v2,
        _TASK_FEATURES,
        fusable="bert",
        fusion_note="SkipLayerNormalization + BiasGelu; disentangled attention is not fused.",
    ),
    "mpnet": ZooSpec(
        "mpnet",
        _mpnet,
        _TASK_FEATURES,
        fusable="bert",
        fusion_note="SkipLayerNormalization + BiasGelu; attention with relative position bias is not fused.",
    ),
    "xlm-roberta": ZooSpec(
        "xlm-roberta", _xlm_roberta, _TASK_FEATURES, fusable="bert", fusion_note=_BERT_NO_EMBED
    ),
    "mobilebert": ZooSpec(
        "mobilebert",
        _mobilebert,
        _TASK_FEATURES,
        fusable=None,
        fusion_note=(
            "optimize_model runs (any model_type / opt_level) but produces no contrib op at all: NoNorm "
            "is an elementwise Mul+Add (no LayerNormalization to fuse), ReLU FFN, bottleneck attention not "
            "matched."
        ),
        fusion_dims=_mobilebert_fusion_dims,
    ),
    "squeezebert": ZooSpec(
        "squeezebert",
        _squeezebert,
        _TASK_FEATURES,
        fusable="bert",
        fusion_note="Gelu + one SkipLayerNormalization; grouped-Conv attention / FFN are not fused.",
    ),
    # Encoder-decoder: 'feature-extraction' exports one monolithic graph (encoder + decoder) with inputs
    # input_ids, attention_mask, decoder_input_ids and output last_hidden_state (of the decoder).
    # ORTModelForFeatureExtraction.forward cannot pass decoder_input_ids; ORTModelForCustomTasks feeds
    # every graph input by name.
    "bart": ZooSpec(
        "bart",
        _bart,
        _TASK_FEATURES,
        fusable="bart",
        fusion_note="SkipLayerNormalization + BiasGelu; SDPA (constant scale) self/cross attention unfused.",
        ort_class="ORTModelForCustomTasks",
    ),
    # Vision ------------------------------------------------------------------------------------------------
    "vit": ZooSpec("vit", _vit, _TASK_IMAGE, fusable="vit", fusion_note=_VIT_NOTE),
    "deit": ZooSpec("deit", _deit, _TASK_IMAGE, fusable="vit", fusion_note=_VIT_NOTE),
    "beit": ZooSpec("beit", _beit, _TASK_IMAGE, fusion_note="not fused: the relative position bias is not a "
                    "pattern of ONNX Runtime's transformer optimizer"),
    "swin": ZooSpec(
        "swin",
        _swin,
        _TASK_IMAGE,
        fusable="swin",
        fusion_note=(
            "SkipLayerNormalization + BiasGelu only: window attention is eager (MatMul -> Div -> "
            "Add(relative position bias) [-> Add(shift mask)] -> Softmax) and not fused. Per-stage heads: "
            "auto-detected."
        ),
        fusion_dims=_auto_fusion_dims,
    ),
    "convnext": ZooSpec("convnext", _convnext, _TASK_IMAGE, is_cnn=True, fusion_note=_CNN_NOTE),
    "resnet": ZooSpec("resnet", _resnet, _TASK_IMAGE, is_cnn=True, fusion_note=_CNN_NOTE),
    "mobilenet_v2": ZooSpec("mobilenet_v2", _mobilenet_v2, _TASK_IMAGE, is_cnn=True, fusion_note=_CNN_NOTE),
    # Decoder-only LMs ---------------------------------------------------------------------------------------
    "gpt2": ZooSpec(
        "gpt2",
        _gpt2,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_note="SkipLayerNormalization + FastGelu; the gpt2 attention fusions miss the SDPA graph.",
    ),
    "llama": ZooSpec(
        "llama",
        _llama,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_opt_level=0,
        fusion_note=_ROPE_L0,
    ),
    "llama-mqa": ZooSpec(
        "llama",
        _llama_mqa,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_opt_level=0,
        fusion_note=_ROPE_L0,
    ),
    "qwen2": ZooSpec(
        "qwen2",
        _qwen2,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_opt_level=0,
        fusion_note=_ROPE_L0,
    ),
    "mistral": ZooSpec(
        "mistral",
        _mistral,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_opt_level=0,
        fusion_note=_ROPE_L0,
    ),
    "phi3": ZooSpec(
        "phi3", _phi3, _TASK_CAUSAL, is_decoder=True, fusable="gpt2", fusion_opt_level=0, fusion_note=_ROPE_L0
    ),
    "opt": ZooSpec(
        "opt",
        _opt,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable=None,
        fusion_note=(
            "optimize_model runs (any model_type / opt_level) but produces no contrib op: neither the "
            "residual Add + LayerNormalization nor the ReLU FFN / attention match a fusion."
        ),
    ),
    "gemma": ZooSpec(
        "gemma",
        _gemma,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_note=(
            "opt_level 1: SkipSimplifiedLayerNormalization + FastGelu (gelu_pytorch_tanh). opt_level 0 also "
            "fuses RotaryEmbedding, but feeds it a batch-1 position tensor: the graph fails for batch > 1."
        ),
    ),
    "gpt_neox": ZooSpec(
        "gpt_neox",
        _gpt_neox,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt_neox",
        fusion_opt_level=0,
        fusion_note=(
            "opt_level 0 (the ORT default for gpt_neox): RotaryEmbedding (partial rotary) + "
            "SkipLayerNormalization + BiasGelu; opt_level >= 1 loses RotaryEmbedding. Attention is not fused."
        ),
    ),
    "falcon": ZooSpec(
        "falcon",
        _falcon,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_note="SkipLayerNormalization + Gelu; MQA SDPA attention and rotary are not fused.",
    ),
    "bloom": ZooSpec(
        "bloom",
        _bloom,
        _TASK_CAUSAL,
        is_decoder=True,
        fusable="gpt2",
        fusion_note="SkipLayerNormalization + FastGelu; ALiBi attention is not fused.",
    ),
}
"""All zoo models by name."""


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


def _t5() -> PretrainedConfig:
    from transformers import T5Config

    return T5Config(vocab_size=_VOCAB, d_model=_HIDDEN, d_kv=_HIDDEN // _HEADS, d_ff=_FFN, num_layers=_LAYERS,
                    num_decoder_layers=_LAYERS, num_heads=_HEADS, decoder_start_token_id=0, pad_token_id=0,
                    eos_token_id=1)


def _marian() -> PretrainedConfig:
    from transformers import MarianConfig

    return MarianConfig(vocab_size=_VOCAB, d_model=_HIDDEN, encoder_layers=_LAYERS, decoder_layers=_LAYERS,
                        encoder_attention_heads=_HEADS, decoder_attention_heads=_HEADS, encoder_ffn_dim=_FFN,
                        decoder_ffn_dim=_FFN, max_position_embeddings=_MAX_POS, pad_token_id=0,
                        decoder_start_token_id=0)


def _whisper() -> PretrainedConfig:
    from transformers import WhisperConfig

    # max_source_positions 1500: optimum-onnx exports with 3000 mel frames (two conv strides of 2 -> 1500).
    return WhisperConfig(vocab_size=_VOCAB, d_model=_HIDDEN, encoder_layers=_LAYERS, decoder_layers=_LAYERS,
                         encoder_attention_heads=_HEADS, decoder_attention_heads=_HEADS, encoder_ffn_dim=_FFN,
                         decoder_ffn_dim=_FFN, num_mel_bins=16, max_source_positions=1500,
                         max_target_positions=_MAX_POS, decoder_start_token_id=1, pad_token_id=0,
                         eos_token_id=2, bos_token_id=1, begin_suppress_tokens=None, suppress_tokens=None)


SEQ2SEQ: dict[str, ZooSpec] = {
    "t5": ZooSpec("t5", _t5, _TASK_SEQ2SEQ),
    "marian": ZooSpec("marian", _marian, _TASK_SEQ2SEQ),
    "whisper": ZooSpec("whisper", _whisper, _TASK_SPEECH),
}
"""Encoder-decoder models, exported with past key/values as several ONNX files (encoder_model.onnx,
decoder_model.onnx, decoder_with_past_model.onnx, decoder_model_merged.onnx): :func:`export_seq2seq_model`."""


def _spec(name: str) -> ZooSpec:
    """Look up a zoo spec with a helpful error."""
    try:
        return ZOO[name] if name in ZOO else SEQ2SEQ[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(ZOO) + sorted(SEQ2SEQ)}") from None


def export_seq2seq_model(name: str, root: Path) -> Path:
    """Export encoder-decoder model ``name`` of :data:`SEQ2SEQ` with past key/values under ``root`` (cached
    like :func:`export_zoo_model`); return the folder holding its ONNX files."""
    spec = _spec(name)
    root = Path(root)
    out = root / name / "onnx-seq2seq"
    stamp = _fingerprint(spec, with_past=True)
    if _is_fresh(out, "encoder_model.onnx", stamp):
        return out
    (root / name).mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / name / ".lock")):
        if not _is_fresh(out, "encoder_model.onnx", stamp):
            hf_dir = _save_hf_model(name, root / name / "hf")
            _write_atomically(out, stamp, lambda tmp: _export(hf_dir, tmp, spec.task + "-with-past",
                                                              marker="encoder_model.onnx"))
    return out


def zoo_folder(name: str, root: Path, *, with_past: bool = False, fused: bool = False) -> Path:
    """The folder that :func:`export_zoo_model` writes for these arguments (whether or not it exists)."""
    leaf = "onnx" + ("-past" if with_past else "") + ("-fused" if fused else "")
    return Path(root) / name / leaf


def export_zoo_model(name: str, root: Path, *, with_past: bool = False, fused: bool = False) -> Path:
    """Export zoo model ``name`` under ``root``; return the folder holding ``model.onnx`` + ``config.json``.

    Args:
        name: key of :data:`ZOO`.
        root: cache root; existing exports under it are reused.
        with_past: decoders only: export ``text-generation-with-past`` (past_key_values inputs, present
            outputs) instead of ``text-generation``.
        fused: run ONNX Runtime's transformer optimizer on the export (requires ``spec.fusable``).

    Raises:
        ValueError: ``with_past`` for a non-decoder, or ``fused`` for a model without a fusion type.
    """
    spec = _spec(name)
    if with_past and not spec.is_decoder:
        raise ValueError(f"{name} is not a decoder; with_past is only supported for decoders")
    if fused and spec.fusable is None:
        raise ValueError(f"{name} has no ORT fusion type: {spec.fusion_note}")
    root = Path(root)
    out = zoo_folder(name, root, with_past=with_past, fused=fused)
    stamp = _fingerprint(spec, with_past=with_past, fused=fused)
    if _is_fresh(out, "model.onnx", stamp):
        return out
    # The fused variant starts from the plain export, which takes the lock itself.
    src = export_zoo_model(name, root, with_past=with_past) if fused else None
    (root / name).mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / name / ".lock")):
        if _is_fresh(out, "model.onnx", stamp):
            return out
        if src is not None:
            _write_atomically(out, stamp, lambda tmp: _fuse(spec, src, tmp))
        else:
            hf_dir = _save_hf_model(name, root / name / "hf")
            task = spec.task + ("-with-past" if with_past else "")
            _write_atomically(out, stamp, lambda tmp: _export(hf_dir, tmp, task))
    return out


_FINGERPRINT_FILE = "zoo-fingerprint.txt"
_BUILD_REVISION = 1
"""Bump when the model construction (e.g. the weight perturbation) changes without a config change."""


def _fingerprint(
    spec: ZooSpec, *, with_past: bool = False, fused: bool = False, hf_only: bool = False
) -> str:
    """Hash of everything an export folder depends on: config, build revision, task, fusion settings and
    the versions of the packages that produce it. A cached folder is reused only if its stamp matches."""
    import importlib.metadata as metadata

    packages = ["torch", "transformers"] + ([] if hf_only else ["optimum", "optimum-onnx", "onnx"])
    payload: dict[str, Any] = {
        "config": spec.make_config().to_dict(),
        "build": _BUILD_REVISION,
        "versions": {p: metadata.version(p) for p in packages},
    }
    if spec.processor is not None:
        payload["processor"] = spec.processor().to_dict()
    if not hf_only:
        payload["task"] = spec.task + ("-with-past" if with_past else "")
    if fused:
        payload["fusion"] = [spec.fusable, spec.fusion_opt_level, metadata.version("onnxruntime")]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _is_fresh(folder: Path, marker: str, stamp: str) -> bool:
    """Whether ``folder`` holds ``marker`` and was written for ``stamp``."""
    stamp_file = folder / _FINGERPRINT_FILE
    return (folder / marker).is_file() and stamp_file.is_file() and stamp_file.read_text().strip() == stamp


def _write_atomically(out: Path, stamp: str, write: Callable[[Path], None]) -> None:
    """Run ``write`` into a temporary sibling of ``out``, stamp it and rename it to ``out`` (replacing a stale
    folder) once it succeeded."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700
    try:
        write(tmp)
        (tmp / _FINGERPRINT_FILE).write_text(stamp + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_config(name: str) -> PretrainedConfig:
    """A fresh copy of the tiny config of zoo model ``name``."""
    return _spec(name).make_config()


def build_torch_model(name: str) -> Any:
    """Instantiate zoo model ``name`` in eval mode with random weights seeded by ``torch.manual_seed(0)``.

    Every parameter gets N(0, 0.02) noise on top of the transformers initialisation. Without it, all
    zero-initialised biases and all-ones norm weights are equal tensors, and the torch ONNX exporter
    deduplicates equal initializers: one initializer would then feed e.g. a LayerNorm bias and a Linear bias
    through ``Identity`` nodes, which real checkpoints never do. Genuinely tied parameters (tied embeddings,
    ALBERT's shared layers) are single ``Parameter`` objects and stay tied.
    """
    import torch

    spec = _spec(name)
    torch.manual_seed(0)
    cls, config = spec.auto_model_class(), spec.make_config()
    # an auto class builds with from_config, a model class (spec.model_class) with its constructor
    model = (cls.from_config(config) if hasattr(cls, "from_config") else cls(config)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def _save_hf_model(name: str, hf_dir: Path) -> Path:
    """``save_pretrained`` the seeded model ``name`` into ``hf_dir`` (reused when up to date)."""
    stamp = _fingerprint(_spec(name), hf_only=True)
    if _is_fresh(hf_dir, "config.json", stamp):
        return hf_dir

    def write(tmp: Path) -> None:
        spec = _spec(name)
        build_torch_model(name).save_pretrained(tmp)
        if spec.processor is not None:
            spec.processor().save_pretrained(tmp)

    _write_atomically(hf_dir, stamp, write)
    return hf_dir


def _export(hf_dir: Path, out: Path, task: str, marker: str = "model.onnx") -> None:
    """Export with optimum's ``main_export`` (writes model.onnx, config.json, generation_config.json)."""
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), out, task=task, device="cpu", library_name="transformers")
    if not (out / marker).is_file():
        produced = sorted(p.name for p in out.iterdir())
        raise RuntimeError(f"export of {hf_dir} ({task}) produced no {marker}: {produced}")


def _fuse(spec: ZooSpec, src: Path, out: Path) -> None:
    """Run ``onnxruntime.transformers.optimizer.optimize_model`` on ``src/model.onnx`` into ``out``."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    num_heads, hidden_size = spec.fusion_dims(AutoConfig.from_pretrained(src))
    optimized = optimize_model(
        str(src / "model.onnx"),
        model_type=spec.fusable,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=spec.fusion_opt_level,
        use_gpu=False,
    )
    optimized.save_model_to_file(str(out / "model.onnx"))
    for extra in src.glob("*.json"):
        shutil.copy2(extra, out / extra.name)


# --------------------------------------------------------------------------------------------------------
# Loading and dummy inputs
# --------------------------------------------------------------------------------------------------------


def graph_has_past(folder: Path) -> bool:
    """Whether ``folder/model.onnx`` takes ``past_key_values.*`` inputs."""
    model = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)
    return any(i.name.startswith("past_key_values") for i in model.graph.input)


def load_ort_model(name: str, folder: Path) -> Any:
    """Load ``folder`` with the matching ``optimum.onnxruntime`` ORTModel class (CPU, no IO binding).

    Decoders get ``use_cache`` set from the graph (``True`` iff it has past_key_values inputs).
    """
    spec = _spec(name)
    kwargs: dict[str, Any] = {"provider": "CPUExecutionProvider", "use_io_binding": False}
    if spec.is_decoder:
        kwargs["use_cache"] = graph_has_past(folder)
    return spec.ort_model_class().from_pretrained(Path(folder), **kwargs)


_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


def _symbolic_dims(config: PretrainedConfig) -> dict[str, int]:
    """Values for the symbolic dimension names optimum uses in exported graphs."""
    image = getattr(config, "image_size", _IMAGE)
    channels = getattr(config, "num_channels", _CHANNELS)
    return {
        "batch_size": DUMMY_BATCH,
        "sequence_length": DUMMY_SEQ,
        "encoder_sequence_length": DUMMY_SEQ,
        "decoder_sequence_length": DUMMY_DECODER_SEQ,
        "past_sequence_length": DUMMY_PAST,
        "past_sequence_length + sequence_length": DUMMY_PAST + DUMMY_SEQ,
        "past_sequence_length + 1": DUMMY_PAST + 1,
        "total_sequence_length": DUMMY_PAST + DUMMY_SEQ,
        "num_channels": channels,
        "height": image,
        "width": image,
    }


def _resolve_shape(value_info: onnx.ValueInfoProto, dims: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape for a graph input: static dims as is, symbolic dims from ``dims``."""
    shape = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.dim_param in dims:
            shape.append(dims[d.dim_param])
        else:
            raise ValueError(f"input {value_info.name!r}: unknown symbolic dim {d.dim_param!r}")
    return tuple(shape)


def dummy_inputs(name: str, folder: Path, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random numpy inputs for ``folder/model.onnx`` keyed by graph input name.

    Shapes come from the graph inputs, with symbolic dims set to batch :data:`DUMMY_BATCH`, sequence
    :data:`DUMMY_SEQ` (decoder sequence :data:`DUMMY_DECODER_SEQ`), past :data:`DUMMY_PAST` and the config's
    image size / channels; dtypes follow the graph. Token ids are drawn from the vocabulary, masks are all
    ones, ``position_ids`` continue after the past, and pixel values / past key values are standard normal.
    """
    from transformers import AutoConfig

    del name  # everything needed is in the graph and the exported config
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    dims = _symbolic_dims(config)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    has_past = any(i.name.startswith("past_key_values") for i in graph.input)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in graph.input:
        if vi.name in initializers:
            continue
        dtype = _ONNX_TO_NUMPY[vi.type.tensor_type.elem_type]
        shape = _resolve_shape(vi, dims)
        if vi.name.endswith("input_ids"):
            value = rng.integers(3, config.vocab_size, size=shape)
        elif vi.name.endswith("attention_mask"):
            value = np.ones(shape)
        elif vi.name == "token_type_ids":
            value = np.zeros(shape)
        elif vi.name == "position_ids":
            start = DUMMY_PAST if has_past else 0
            value = np.broadcast_to(np.arange(start, start + shape[-1]), shape)
        else:
            value = rng.standard_normal(shape)
        feeds[vi.name] = np.ascontiguousarray(value, dtype=dtype)
    return feeds
