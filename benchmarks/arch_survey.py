"""Architectures beyond the test zoo: export, prune, verify (the engine on models no test names).

    .venv/bin/python benchmarks/arch_survey.py              # -> benchmarks/results/arch_survey.json
    .venv/bin/python benchmarks/arch_survey.py gptj beit    # only these

Each architecture is a tiny random-weight config (the zoo's dimensions: hidden 32, FFN 48, 4 heads,
2 layers; vision: hidden 36, image 32, patch 8), exported with optimum-onnx through the zoo's own
machinery (``tests/zoo.py``), decoders with and without past key/values, pruned at 30% of ``ffn`` +
``heads`` + ``conv`` with the default ``l2`` criterion (with past key/values: ``prune_kv_heads=True``,
and the pruned folder must generate with its ORTModel class) and checked by the exactness oracle
(:func:`optimum_prune.verify`). The JSON records the share of parameters removed, the units removed per
kind, the oracle's error and the analysis' reasons for the groups it refused; a config that does not
export is recorded as such (that is optimum-onnx's or the config's limit, not the pruner's). Each
variant runs in its own process, so one crash cannot end the survey.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "outputs" / "arch_survey"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

_TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=64)
_VISION = dict(image_size=32, patch_size=8, hidden_size=36, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=56, num_labels=10)
_SEQ2SEQ = dict(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
_AUDIO = dict(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
              num_conv_pos_embedding_groups=4, num_feat_extract_layers=2)
_GPT = dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=64, bos_token_id=1,
            eos_token_id=2)

# name -> (transformers config class, keyword arguments, task kind); "llama" is a causal LM whose keyword
# arguments extend the zoo's llama-style decoder dimensions (zoo._decoder_common)
# OWL-ViT and OWLv2: a text tower and a vision tower of the zoo's sizes (text positions 16)
_OWL = dict(text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=16),
            vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                               num_hidden_layers=2, num_attention_heads=4),
            projection_dim=16)

SPECS: dict[str, tuple[str, dict, str]] = {
    "roformer": ("RoFormerConfig", dict(_TEXT, embedding_size=32), "features"),
    "esm": ("EsmConfig", dict(_TEXT, vocab_size=33, position_embedding_type="rotary", pad_token_id=1,
                              mask_token_id=32), "features"),
    "data2vec-text": ("Data2VecTextConfig", _TEXT, "features"),
    # relative attention with batch and heads merged into one axis ([batch*heads, seq, head_dim])
    "deberta": ("DebertaConfig", dict(_TEXT, relative_attention=True, pos_att_type=["c2p", "p2c"],
                                      max_relative_positions=16), "features"),
    "sew-d": ("SEWDConfig", dict(_AUDIO, max_position_embeddings=64, position_buckets=16, share_att_key=True,
                                 relative_attention=True, pos_att_type=("p2c", "c2p"), squeeze_factor=2),
              "features"),
    # 8 heads split 4 self-attention + 4 span-convolution heads (head_ratio 2): 30% of 2 rounds to none
    "convbert": ("ConvBertConfig", dict(_TEXT, num_attention_heads=8, embedding_size=32, head_ratio=2,
                                        conv_kernel_size=3), "features"),
    "gptj": ("GPTJConfig", dict(_GPT, rotary_dim=4), "causal"),
    "codegen": ("CodeGenConfig", dict(_GPT, n_ctx=64, rotary_dim=4), "causal"),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(_GPT, multi_query=True), "causal"),
    "gpt_neo": ("GPTNeoConfig", dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                                     intermediate_size=48, max_position_embeddings=64,
                                     attention_types=[[["global", "local"], 1]], window_size=16,
                                     bos_token_id=1, eos_token_id=2), "causal"),
    "stablelm": ("StableLmConfig", {}, "llama"),
    "olmo": ("OlmoConfig", {}, "llama"),
    "granite": ("GraniteConfig", {}, "llama"),
    "phi": ("PhiConfig", {"num_key_value_heads": 4}, "llama"),
    "qwen3": ("Qwen3Config", {"head_dim": 8}, "llama"),
    "cohere": ("CohereConfig", {}, "llama"),
    "gemma-mqa": ("GemmaConfig", {"num_key_value_heads": 1, "head_dim": 8}, "llama"),
    "mpt": ("MptConfig", dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4, expansion_ratio=1.5,
                              max_seq_len=64), "causal"),
    "data2vec-vision": ("Data2VecVisionConfig", _VISION, "image"),
    "mobilevit": ("MobileViTConfig", dict(image_size=32, patch_size=2, hidden_sizes=[16, 24, 32],
                                          neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48], num_attention_heads=2,
                                          num_labels=10), "image"),
    "regnet": ("RegNetConfig", dict(embedding_size=8, hidden_sizes=[16, 24], depths=[1, 1], groups_width=8,
                                    num_labels=10), "image"),
    "poolformer": ("PoolFormerConfig", dict(hidden_sizes=[16, 24, 32, 40], depths=[1, 1, 1, 1],
                                            num_labels=10), "image"),
    # depth >= stage index + 1: transformers' CvtStage indexes its drop-path rates by the stage number
    "cvt": ("CvtConfig", dict(embed_dim=[16, 24, 32], num_heads=[1, 2, 4], depth=[1, 2, 3], num_labels=10),
            "image"),
    # Speech encoders: a strided Conv stack over raw audio, then a transformer
    "wav2vec2": ("Wav2Vec2Config", _AUDIO, "features"),
    "hubert": ("HubertConfig", _AUDIO, "features"),
    "wavlm": ("WavLMConfig", dict(_AUDIO, num_buckets=16, max_bucket_distance=32), "features"),
    # More vision backbones and tasks
    # the image-classification auto class maps LeViT to two heads: name the plain one
    "levit": ("LevitConfig", dict(image_size=32, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4],
                                  depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=10,
                                  architectures=["LevitForImageClassification"]), "image"),
    "mobilenet_v1": ("MobileNetV1Config", dict(image_size=32, depth_multiplier=0.25, num_labels=10), "image"),
    "swinv2": ("Swinv2Config", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                    num_heads=[2, 4], window_size=4, num_labels=10), "image"),
    "yolos": ("YolosConfig", dict(_VISION, image_size=[32, 32], num_detection_tokens=5), "detection"),
    # DETR: a ResNet backbone (transformers', not timm's), then attention on [batch*heads, seq, head_dim]
    "detr": ("DetrConfig", dict(use_timm_backbone=False, use_pretrained_backbone=False,
                                backbone_config=dict(model_type="resnet", embedding_size=8,
                                                     hidden_sizes=[8, 16], depths=[1, 1],
                                                     out_features=["stage2"]),
                                d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                                num_queries=5, num_labels=5), "detection"),
    "segformer": ("SegformerConfig", dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                                          hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
                                          num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                                          decoder_hidden_size=24, num_labels=5), "segmentation"),
    "clip": ("CLIPConfig", dict(text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 max_position_embeddings=64),
                                vision_config={k: v for k, v in _VISION.items() if k != "num_labels"},
                                projection_dim=16), "zero-shot"),
    # More encoders, decoders, vision and speech models (added 2026-12-03)
    "modernbert": ("ModernBertConfig", dict(_TEXT, global_attn_every_n_layers=2, local_attention=16,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                            sep_token_id=2), "features"),
    "xlm": ("XLMConfig", dict(vocab_size=100, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64),
            "features"),
    "flaubert": ("FlaubertConfig", dict(vocab_size=100, emb_dim=32, n_layers=2, n_heads=4,
                                        max_position_embeddings=64), "features"),
    "ibert": ("IBertConfig", _TEXT, "features"),
    "megatron-bert": ("MegatronBertConfig", _TEXT, "features"),
    "rembert": ("RemBertConfig", dict(_TEXT, input_embedding_size=16, output_embedding_size=16), "features"),
    "layoutlm": ("LayoutLMConfig", _TEXT, "features"),
    "big_bird": ("BigBirdConfig", dict(_TEXT, attention_type="original_full"), "features"),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "num_key_value_heads": 4}, "llama"),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8, "num_key_value_heads": 4, "sliding_window": 16},
                    "llama"),
    "olmo2": ("Olmo2Config", {"num_key_value_heads": 4}, "llama"),
    "nemotron": ("NemotronConfig", {"num_key_value_heads": 4, "head_dim": 8}, "llama"),
    "arcee": ("ArceeConfig", {"num_key_value_heads": 4}, "llama"),
    "helium": ("HeliumConfig", {"num_key_value_heads": 4, "head_dim": 8}, "llama"),
    "glm": ("GlmConfig", {"num_key_value_heads": 4, "head_dim": 8}, "llama"),
    "smollm3": ("SmolLM3Config", {"num_key_value_heads": 4}, "llama"),
    "qwen3_moe": ("Qwen3MoeConfig", {"num_key_value_heads": 4, "head_dim": 8, "num_experts": 4,
                                     "num_experts_per_tok": 2, "moe_intermediate_size": 24}, "llama"),
    "vit_msn": ("ViTMSNConfig", _VISION, "image"),
    "convnextv2": ("ConvNextV2Config", dict(image_size=32, hidden_sizes=[16, 24], depths=[1, 1], num_stages=2,
                                            num_labels=10), "image"),
    "efficientnet": ("EfficientNetConfig", dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.2,
                                                hidden_dim=320, num_labels=10), "image"),
    "data2vec-audio": ("Data2VecAudioConfig", _AUDIO, "features"),
    "unispeech-sat": ("UniSpeechSatConfig", _AUDIO, "features"),
    "sew": ("SEWConfig", dict(_AUDIO, squeeze_factor=2), "features"),
    "wav2vec2-conformer": ("Wav2Vec2ConformerConfig", dict(_AUDIO, conv_depthwise_kernel_size=3), "features"),
    # Architectures optimum-onnx exports that nothing above covered (added 2026-12-03, second session)
    "longformer": ("LongformerConfig", dict(_TEXT, attention_window=[4, 4], pad_token_id=1), "features"),
    # the export runs only at sequence length segment_means_seq_len (its landmark Reshape is traced with
    # it): 16, optimum-onnx's dummy length
    "nystromformer": ("NystromformerConfig", dict(_TEXT, num_landmarks=4, segment_means_seq_len=16,
                                                  conv_kernel_size=None), "features"),
    "splinter": ("SplinterConfig", _TEXT, "features"),
    "audio-spectrogram-transformer": ("ASTConfig", dict(hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=4, intermediate_size=48,
                                                        num_mel_bins=16, max_length=32, patch_size=8,
                                                        frequency_stride=8, time_stride=8), "features"),
    "unispeech": ("UniSpeechConfig", _AUDIO, "features"),
    "deepseek_v3": ("DeepseekV3Config", {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24,
                                         "qk_rope_head_dim": 4, "qk_nope_head_dim": 4, "v_head_dim": 8,
                                         "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1,
                                         "topk_group": 1, "moe_intermediate_size": 24,
                                         "first_k_dense_replace": 1, "n_shared_experts": 1}, "llama"),
    "gpt_oss": ("GptOssConfig", {"num_key_value_heads": 4, "head_dim": 8, "num_local_experts": 4,
                                 "num_experts_per_tok": 2, "sliding_window": 16,
                                 "layer_types": ["sliding_attention", "full_attention"]}, "llama"),
    "siglip": ("SiglipConfig", dict(text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     max_position_embeddings=64),
                                    vision_config=dict(image_size=32, patch_size=8, hidden_size=32,
                                                       num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=48)), "zero-shot"),
    "table-transformer": ("TableTransformerConfig", dict(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                             out_features=["stage2"]),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=48, decoder_ffn_dim=48, num_queries=5, num_labels=5), "detection"),
    # Encoder-decoder models, exported with past key/values as several ONNX files (MultiFilePruner)
    "bart-seq2seq": ("BartConfig", _SEQ2SEQ, "seq2seq"),
    "mbart": ("MBartConfig", _SEQ2SEQ, "seq2seq"),
    "pegasus": ("PegasusConfig", _SEQ2SEQ, "seq2seq"),
    "m2m_100": ("M2M100Config", _SEQ2SEQ, "seq2seq"),
    "blenderbot-small": ("BlenderbotSmallConfig", _SEQ2SEQ, "seq2seq"),
    "mt5": ("MT5Config", dict(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                              num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
            "seq2seq"),
    "blenderbot": ("BlenderbotConfig", _SEQ2SEQ, "seq2seq"),
    "bigbird_pegasus": ("BigBirdPegasusConfig", dict(_SEQ2SEQ, attention_type="original_full"), "seq2seq"),
    "longt5": ("LongT5Config", dict(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                    num_decoder_layers=2, num_heads=4, local_radius=4, global_block_size=4,
                                    encoder_attention_type="transient-global", decoder_start_token_id=0,
                                    pad_token_id=0, eos_token_id=1), "seq2seq"),
    "speech_to_text": ("Speech2TextConfig", dict(_SEQ2SEQ, input_feat_per_channel=16, num_conv_layers=2,
                                                 conv_channels=16, max_source_positions=64,
                                                 max_target_positions=64), "speech"),
    # Architectures optimum-onnx exports that nothing above covered (added 2026-12-04)
    # DINOv2: optimum-onnx's dummy pixel generator sizes its images by the crop size of the preprocessor
    # in the model folder (_PROCESSORS saves one)
    "dinov2": ("Dinov2Config", dict({k: v for k, v in _VISION.items() if k != "num_labels"}, mlp_ratio=1.5),
               "features"),
    # not here: imagegpt (its traced forward adds None to the sequence length with transformers 4.57) and
    # decision_transformer (the traced Reshape holds the dummy sequence length; optimum-onnx's own
    # validation at another length fails), perceiver (optimum-onnx's image-classification export gives the
    # pixel input the text input's dynamic axes: "Dynamic shape axis should be no more than the shape
    # dimension for height"; its text tasks are none of the kinds here)
    "camembert": ("CamembertConfig", dict(_TEXT, pad_token_id=1), "features"),
    "donut-swin": ("DonutSwinConfig", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                           num_heads=[2, 4], window_size=4), "features"),
    # the semantic-segmentation head: the ViT, its reassemble/fusion neck and the conv head
    "dpt": ("DPTConfig", dict(image_size=32, patch_size=8, hidden_size=36, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=56, backbone_out_indices=[0, 1, 2, 3],
                              neck_hidden_sizes=[8, 16, 24, 32], fusion_hidden_size=16,
                              use_auxiliary_head=False, num_labels=5), "segmentation"),
    "glpn": ("GLPNConfig", dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                mlp_ratios=[2, 2], decoder_hidden_size=16), "features"),
    "groupvit": ("GroupViTConfig", dict(text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48,
                                                         num_hidden_layers=2, num_attention_heads=4,
                                                         max_position_embeddings=64),
                                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32,
                                                           intermediate_size=48, depths=[1, 1],
                                                           num_hidden_layers=2, num_group_tokens=[4, 0],
                                                           num_output_groups=[4, 4], num_attention_heads=4),
                                        projection_dim=16, projection_intermediate_dim=24), "features"),
    "hiera": ("HieraConfig", dict(embed_dim=16, image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2],
                                  patch_padding=[1, 1], depths=[1, 1], num_heads=[1, 2], num_query_pool=1,
                                  query_stride=[2, 2], masked_unit_size=[4, 4],
                                  masked_unit_attention=[True, False], num_labels=10), "image"),
    "layoutlmv3": ("LayoutLMv3Config", dict(_TEXT, coordinate_size=6, shape_size=4, input_size=32,
                                            patch_size=8, rel_pos_bins=16, max_rel_pos=32, rel_2d_pos_bins=16,
                                            max_rel_2d_pos=64), "features"),
    # the layout branch concatenates six box embeddings of hidden/6 channels: hidden 48 (layout 12 = 4 x 3)
    "lilt": ("LiltConfig", dict(_TEXT, hidden_size=48, intermediate_size=64, channel_shrink_ratio=4),
             "features"),
    "markuplm": ("MarkupLMConfig", dict(_TEXT, xpath_unit_hidden_size=8, max_depth=8), "features"),
    "owlvit": ("OwlViTConfig", _OWL, "features"),
    # the backbone: PvtConfig's num_labels argument is not saved, so a reloaded head has 1000 labels
    "pvt": ("PvtConfig", dict(image_size=32, num_encoder_blocks=2, depths=[1, 1],
                              sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[4, 2],
                              strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]), "features"),
    # RT-DETR: a ResNet-vd backbone, a hybrid encoder (attention + CSP conv fusion), a deformable decoder
    "rt_detr": ("RTDetrConfig", dict(
        backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                             depths=[1, 1, 1, 1], layer_type="basic", out_indices=[2, 3, 4]),
        encoder_hidden_dim=32, encoder_in_channels=[16, 24, 32], encoder_ffn_dim=48,
        encoder_attention_heads=4, d_model=32, num_queries=10, decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=48, decoder_layers=1, decoder_attention_heads=4, num_denoising=0, num_labels=5),
        "detection"),
    # a non-square image: validation and the oracle read image_size from the folder's config.json
    "mgp-str": ("MgpstrConfig", dict(image_size=[32, 64], patch_size=8, max_token_length=8,
                                     num_character_labels=20, num_bpe_labels=30, num_wordpiece_labels=40,
                                     hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     mlp_ratio=1.5), "features"),
    "swin2sr": ("Swin2SRConfig", dict(image_size=32, patch_size=1, embed_dim=16, depths=[1, 1],
                                      num_heads=[2, 4], window_size=4, upscale=2), "features"),
    # ViT-MAE shuffles its patches with torch.rand (RandomUniformLike in the export): two runs of the same
    # model differ, and the oracle refuses it, naming the op (mask_ratio 0 keeps every patch, shuffled)
    "vit_mae": ("ViTMAEConfig", dict({k: v for k, v in _VISION.items() if k != "num_labels"}, mask_ratio=0.0),
                "features"),
    "t5": ("T5Config", dict(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                            num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
           "seq2seq"),
    "marian": ("MarianConfig", dict(_SEQ2SEQ, decoder_start_token_id=0), "seq2seq"),
    # optimum-onnx exports with 3000 mel frames (two conv strides of 2 -> 1500 positions)
    "whisper": ("WhisperConfig", dict(_SEQ2SEQ, num_mel_bins=16, max_source_positions=1500,
                                      max_target_positions=64, begin_suppress_tokens=None,
                                      suppress_tokens=None), "speech"),
    # the export runs only at its traced context length: 16, a length of the validation's ladder
    "patchtst": ("PatchTSTConfig", dict(num_input_channels=3, context_length=16, patch_length=8,
                                        patch_stride=8, num_hidden_layers=2, d_model=32,
                                        num_attention_heads=4, ffn_dim=48), "features"),
    # Architectures optimum-onnx exports that nothing above covered (added 2026-12-04, second session)
    # not here: sam (optimum-onnx's default "split" variant writes vision_encoder.onnx and
    # prompt_encoder_mask_decoder.onnx, no model.onnx), pix2struct and vitpose (their dummy-input generators
    # read a preprocessor from the model folder, which has none), speecht5 (the export needs a vocoder
    # checkpoint), musicgen (six files: text encoder, EnCodec decoder, decoders, delay-pattern mask; no
    # kind here), internlm2 (remote code only: transformers has no InternLM2 config), trocr alone (the
    # feature-extraction auto class has no TrOCR; its decoder is covered by vision-encoder-decoder)
    "chinese_clip": ("ChineseCLIPConfig", dict(text_config=_TEXT, vision_config=dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4), projection_dim=16), "zero-shot"),
    "metaclip_2": ("MetaClip2Config", dict(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64),
        vision_config={k: v for k, v in _VISION.items() if k != "num_labels"}, projection_dim=16),
        "zero-shot"),
    "owlv2": ("Owlv2Config", _OWL, "features"),
    "rt_detr_v2": ("RTDetrV2Config", dict(
        backbone_config=dict(model_type="rt_detr_resnet", embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                             depths=[1, 1, 1, 1], layer_type="basic", out_indices=[2, 3, 4]),
        encoder_hidden_dim=32, encoder_in_channels=[16, 24, 32], encoder_ffn_dim=48,
        encoder_attention_heads=4, d_model=32, num_queries=10, decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=48, decoder_layers=1, decoder_attention_heads=4, num_denoising=0, num_labels=5),
        "detection"),
    # MLP mixing over patches and channels (no attention): the FFN units are the expansion_factor x d_model
    "patchtsmixer": ("PatchTSMixerConfig", dict(num_input_channels=3, context_length=16, patch_length=8,
                                                patch_stride=8, d_model=32, expansion_factor=2, num_layers=2),
                     "features"),
    "visual_bert": ("VisualBertConfig", dict(_TEXT, visual_embedding_dim=16), "features"),
    "moonshine": ("MoonshineConfig", dict(vocab_size=100, hidden_size=32, intermediate_size=48,
                                          encoder_num_hidden_layers=2, decoder_num_hidden_layers=2,
                                          encoder_num_attention_heads=4, decoder_num_attention_heads=4,
                                          max_position_embeddings=64, pad_token_id=0), "speech"),
    # feature-extraction on T5 exports the whole T5Model (encoder and decoder) as one file
    "t5-features": ("T5Config", dict(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                     num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
                                     pad_token_id=0, eos_token_id=1), "features"),
    # D-FINE: an HGNetV2 backbone (hidden_sizes repeat stage_out_channels), RT-DETR's hybrid encoder, a
    # fine-grained distribution decoder
    "d_fine": ("DFineConfig", dict(
        backbone_config=dict(model_type="hgnet_v2", embedding_size=8, stem_channels=[3, 8, 8],
                             depths=[1, 1, 1, 1], hidden_sizes=[16, 24, 32, 40],
                             stage_in_channels=[8, 16, 24, 32], stage_mid_channels=[8, 8, 16, 16],
                             stage_out_channels=[16, 24, 32, 40], stage_num_blocks=[1, 1, 1, 1],
                             stage_numb_of_layers=[2, 2, 2, 2], stage_kernel_size=[3, 3, 3, 3],
                             out_indices=[2, 3, 4]),
        encoder_hidden_dim=32, encoder_in_channels=[24, 32, 40], encoder_ffn_dim=48,
        encoder_attention_heads=4, d_model=32, num_queries=10, decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=48, decoder_layers=1, decoder_attention_heads=4, num_denoising=0, lqe_hidden_dim=16,
        num_labels=5), "detection"),
    # MaskFormer: a Swin backbone (MaskFormerConfig sets its out_features to four stages), an FPN pixel
    # decoder (GroupNorm of 32 groups: fpn and mask features 32) and a DETR decoder over the queries; the
    # export runs only at multiples of optimum-onnx's 64-pixel dummy image (Swin's window padding is traced):
    # image_size 64, a key MaskFormerConfig merely stores, tells validation and the oracle
    "maskformer": ("MaskFormerConfig", dict(
        backbone_config=dict(model_type="swin", image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                             num_heads=[1, 2, 2, 4], window_size=4),
        decoder_config=dict(model_type="detr", d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                            decoder_ffn_dim=48, num_queries=5),
        fpn_feature_size=32, mask_feature_size=32, num_labels=5, image_size=64), "features"),
    # multimodal Gemma 3 (a SigLIP tower, Gemma3ForConditionalGeneration); text-generation exports the text
    # path (no pixel input); the special image tokens are ids of the 100-word vocabulary
    "gemma3": ("Gemma3Config", dict(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=8, max_position_embeddings=64,
                         sliding_window=16, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4),
        mm_tokens_per_image=4, boi_token_index=97, eoi_token_index=98, image_token_index=99), "causal"),
    # TrOCR-style: a ViT encoder and a TrOCR decoder (its cross-attention only with is_decoder and
    # add_cross_attention set); encoder hidden 36, decoder 32: the model projects between them
    "vision-encoder-decoder": ("VisionEncoderDecoderConfig", dict(
        encoder=dict({k: v for k, v in _VISION.items() if k != "num_labels"}, model_type="vit"),
        decoder=dict(model_type="trocr", vocab_size=100, d_model=32, decoder_layers=2,
                     decoder_attention_heads=4, decoder_ffn_dim=48, max_position_embeddings=64,
                     is_decoder=True, add_cross_attention=True, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2, decoder_start_token_id=1),
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1), "image-to-text"),
    # ColPali: PaliGemma (a SigLIP tower and a Gemma decoder) and a projection to multi-vector embeddings;
    # optimum-onnx reads num_image_tokens (image 32 / patch 8, squared) from the vision config; the image
    # token lies outside the vocabulary, so that no random dummy id is one (PaliGemma maps it to 0 first)
    "colpali": ("ColPaliConfig", dict(vlm_config=dict(
        model_type="paligemma", projection_dim=32, image_token_index=100,
        text_config=dict(model_type="gemma", vocab_size=100, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=8),
        vision_config=dict(model_type="siglip_vision_model", image_size=32, patch_size=8, hidden_size=32,
                           intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           num_image_tokens=16)),
        embedding_dim=16), "features"),
    # the vision towers alone (their own model types in optimum-onnx)
    "clip_vision_model": ("CLIPVisionConfig", {k: v for k, v in _VISION.items() if k != "num_labels"},
                          "features"),
    "siglip_vision_model": ("SiglipVisionConfig", dict(image_size=32, patch_size=8, hidden_size=32,
                                                       num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=48), "features"),
    # a BERT encoder and a GPT-2 decoder with cross-attention (optimum-onnx exports only decoders that take
    # past key/values, which its BERT config does not)
    "encoder-decoder": ("EncoderDecoderConfig", dict(
        encoder=dict(_TEXT, model_type="bert"),
        decoder=dict(_GPT, model_type="gpt2", is_decoder=True, add_cross_attention=True),
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1), "seq2seq"),
    # M-CTC-T: a GLU conv over log-mel features (conv_channels None: one conv to 2 x hidden), a transformer
    "mctct": ("MCTCTConfig", dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
                                  num_attention_heads=4, attention_head_dim=8, max_position_embeddings=64,
                                  input_feat_per_channel=16), "features"),
    # VITS text-to-speech: a text encoder (relative attention, conv FFN), a stochastic duration predictor,
    # flows and a HiFi-GAN decoder; noise scales 0, so that two runs agree (the noise ops stay in the graph)
    "vits": ("VitsConfig", dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, window_size=4, ffn_dim=48,
        flow_size=16, spectrogram_bins=17, upsample_initial_channel=32, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        depth_separable_num_layers=2, duration_predictor_filter_channels=16, duration_predictor_num_flows=2,
        prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=2,
        noise_scale=0.0, noise_scale_duration=0.0), "text-to-audio"),
}

_MULTI_FILE = ("seq2seq", "speech", "image-to-text")
"""Kinds exported with past key/values as several files (encoder, decoders): MultiFilePruner."""
_MODEL_CLASS = {"colpali": "ColPaliForRetrieval"}
"""Models the task's auto class does not build (optimum-onnx loads these by class name)."""


def _bit_processor(size: int):
    import transformers

    crop = {"height": size, "width": size}
    return transformers.BitImageProcessor(size={"shortest_edge": size}, crop_size=crop)


_PROCESSORS = {"dinov2": lambda: _bit_processor(_VISION["image_size"])}
"""Preprocessors saved beside the weights, for exports that read one from the model folder."""


def _spec(name: str):
    import transformers

    import zoo

    cls_name, kwargs, kind = SPECS[name]
    if kind == "llama":
        kwargs = {**zoo._decoder_common(), **kwargs}
    causal = kind in ("causal", "llama")
    task = zoo._TASK_CAUSAL if causal else {"features": zoo._TASK_FEATURES, "image": zoo._TASK_IMAGE,
                                            "seq2seq": zoo._TASK_SEQ2SEQ, "speech": zoo._TASK_SPEECH,
                                            "detection": zoo._TASK_DETECTION,
                                            "segmentation": zoo._TASK_SEGMENTATION,
                                            "zero-shot": zoo._TASK_ZERO_SHOT,
                                            "image-to-text": zoo._TASK_IMAGE_TO_TEXT,
                                            "text-to-audio": zoo._TASK_TEXT_TO_AUDIO}[kind]
    cls = getattr(transformers, cls_name)
    # a fresh copy per call: some configs pop keys from their nested dicts (RTDetrConfig's backbone_config)
    return zoo.ZooSpec(cls.model_type, lambda: cls(**copy.deepcopy(kwargs)), task, is_decoder=causal,
                       is_cnn=name in ("regnet", "poolformer", "mobilenet_v1", "convnextv2", "efficientnet"),
                       model_class=_MODEL_CLASS.get(name), processor=_PROCESSORS.get(name))


def run_variant(name: str, past: bool) -> dict:
    """Export, prune and verify one variant (in this process)."""
    import zoo
    from optimum_prune import ORTPruner, PruningConfig, verify

    multi_file = SPECS[name][2] in _MULTI_FILE
    if multi_file:
        zoo.SEQ2SEQ[name] = _spec(name)
    else:
        zoo.ZOO[name] = _spec(name)
    row: dict = {"arch": name, "past": past}
    try:
        src = zoo.export_seq2seq_model(name, CACHE) if multi_file else \
            zoo.export_zoo_model(name, CACHE, with_past=past)
    except Exception as e:  # the config or optimum-onnx, not the pruner
        return dict(row, ok=False, stage="export", error=f"{type(e).__name__}: {e}"[:300])
    try:
        pruner = ORTPruner.from_pretrained(src)
        analysis = pruner.analyze()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            # with past key/values, heads go through the cache (the pruner checks the folder generates)
            config = PruningConfig(sparsity=0.3, scope=("ffn", "heads", "conv"), prune_kv_heads=past)
            out = pruner.prune(config, Path(tmp) / "p")
            seconds = time.perf_counter() - start
            report = json.loads((out / "report.json").read_text())["stages"][-1]
            result = verify(src, out)
            if multi_file:
                row["files"] = sorted(f.name for f in out.glob("*.onnx"))
                row["generates"] = _generates(zoo.SEQ2SEQ[name], out)
            elif past:
                row["generates"] = _generates_causal(zoo.ZOO[name], out)
                if not row["generates"]:  # is it the pruning, or Optimum's runtime for this model type?
                    row["dense_generates"] = _generates_causal(zoo.ZOO[name], src)
                row["narrowed_cache"] = any("narrow" in n for n in report.get("config_notes", []))
        # the analysis' own reasons first, then the cross-file ones (shared weights, another structure)
        refused = sorted({u["reason"] for u in analysis.unprunable() if u["reason"]},
                         key=lambda why: (why.startswith("its root weights are shared"), why))
        return dict(row, ok=True, prune_s=round(seconds, 2),
                    params_removed=round(1 - report["params_after"] / report["params_before"], 4),
                    units_removed=report["units_removed"], max_rel_error=result.max_rel_error,
                    exact=bool(result.exact_groups), refused=refused[:6])
    except Exception as e:
        return dict(row, ok=False, stage="prune", error=f"{type(e).__name__}: {e}"[:500],
                    traceback=traceback.format_exc()[-1500:])


def _generates(spec, folder: Path) -> bool:
    """Whether ``folder`` loads with the spec's ORTModel class and generates three tokens (the merged
    decoder's no-past and with-past branches)."""
    import torch

    from optimum_prune.passes.validate import generated_inputs, make_session

    encoder = make_session(folder / "encoder_model.onnx", light=True)
    dims = {"batch_size": 1}
    for inp in encoder.get_inputs():  # raw audio (Moonshine): its strided convs need more than 7 samples
        if inp.name == "input_values" and isinstance(inp.shape[-1], str):
            dims[inp.shape[-1].lower()] = 1600
    feeds = {k: torch.from_numpy(v) for k, v in generated_inputs(encoder, dims=dims).items()}
    model = spec.ort_model_class().from_pretrained(folder, use_io_binding=False,
                                                   provider="CPUExecutionProvider")
    tokens = model.generate(**feeds, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    return tokens.shape[-1] >= 3


def _generates_causal(spec, folder: Path) -> bool:
    """Whether ``folder`` loads with ``ORTModelForCausalLM`` (with its cache) and generates three tokens."""
    import torch

    try:
        model = spec.ort_model_class().from_pretrained(folder, use_io_binding=False, use_cache=True,
                                                       provider="CPUExecutionProvider")
        ids = torch.tensor([[1, 2, 3, 4]])
        tokens = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                min_new_tokens=3, do_sample=False)
    except Exception:  # ONNX Runtime raises its own types
        return False
    return tokens.shape[-1] == 7


def markdown(rows: list[dict]) -> str:
    lines = ["| arch | past | params removed | units removed (ffn/heads/conv) | oracle max rel err | "
             "refused groups |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        past = "yes" if r["past"] else ""
        if r["past"] and "generates" in r and not r.get("files"):
            past += ", generates" if r["generates"] else ", NO generate"
            past += ", narrowed" if r.get("narrowed_cache") else ""
            past += " (nor does the dense export)" if r.get("dense_generates") is False else ""
        if r.get("files"):  # an encoder-decoder export: its files, and whether it generates once pruned
            past = f"{len(r['files'])} files" + (", generates" if r.get("generates") else ", NO generate")
        if not r["ok"]:
            error = re.sub(r"(?:/[^\s:'\"/]+)+/(?=[^\s:'\"/]+\.onnx)", "", r["error"])  # no folders
            lines.append(f"| {r['arch']} | {past} | {r['stage']} failed: {error[:160]} | | | |")
            continue
        u = r["units_removed"]
        why = "; ".join(x[:90] for x in r["refused"][:2])
        lines.append(f"| {r['arch']} | {past} | {100 * r['params_removed']:.1f}% | "
                     f"{u['ffn']}/{u['heads']}/{u['conv']} | {r['max_rel_error']:.1e} | {why} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"architectures (default: all of {', '.join(SPECS)})")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "PAST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("ROW " + json.dumps(run_variant(args.worker[0], args.worker[1] == "past")), flush=True)
        return 0
    from engine_speed import write_results

    t0 = time.perf_counter()
    rows = []
    for name in args.names or list(SPECS):
        # causal decoders are one file with or without past key/values; encoder-decoder models are exported
        # once, with past, as several files
        for past in (False, True) if SPECS[name][2] in ("causal", "llama") else (
                (True,) if SPECS[name][2] in _MULTI_FILE else (False,)):
            try:
                command = [sys.executable, __file__, "--worker", name, "past" if past else "plain"]
                proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
                found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
                row = json.loads(found[0]) if found else {"arch": name, "past": past, "ok": False,
                                                          "stage": "worker", "error": proc.stderr[-300:]}
            except subprocess.TimeoutExpired:
                row = {"arch": name, "past": past, "ok": False, "stage": "worker", "error": "timeout (900 s)"}
            rows.append(row)
            print(markdown([row]).splitlines()[-1], flush=True)
    ok = [r for r in rows if r["ok"]]
    data = {"benchmark": "arch_survey", "sparsity": 0.3, "scope": ["ffn", "heads", "conv"],
            "importance": "l2", "rows": rows,
            "verified": sum(r["exact"] and r["max_rel_error"] <= 1e-4 for r in ok),
            "pruned": len(ok), "variants": len(rows)}
    if not args.names:
        write_results(data, RESULTS / "arch_survey.json", t0)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
