"""configs/hf/<name>.toml: one published size of each family (two for llama: SmolLM2 and Llama 3.2
with its rope scaling), equal to what import-hf makes of that checkpoint's config.json (as
published on the Hub), with the published parameter count."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.interop.hf import convert as hf
from gptzoo.recipes.interop.hf.families import FAMILIES

PRESETS = Path(__file__).resolve().parents[3] / "configs" / "hf"

# family -> (the checkpoint's config.json, as published: the fields import-hf reads; its parameter count)
PUBLISHED = {
    "llama": (
        {  # HuggingFaceTB/SmolLM2-135M
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-05,
            "rope_theta": 100000,
            "rope_scaling": None,
            "tie_word_embeddings": True,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        134_515_008,
    ),
    "mistral": (
        {  # mistralai/Mistral-7B-v0.3
            "model_type": "mistral",
            "architectures": ["MistralForCausalLM"],
            "vocab_size": 32768,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        7_248_023_552,
    ),
    "qwen2": (
        {  # Qwen/Qwen2.5-0.5B
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 151936,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "use_sliding_window": False,
            "max_window_layers": 24,
            "tie_word_embeddings": True,
            "hidden_act": "silu",
            "bos_token_id": 151643,
            "eos_token_id": 151643,
        },
        494_032_768,
    ),
    "qwen3": (
        {  # Qwen/Qwen3-0.6B
            "model_type": "qwen3",
            "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": 151936,
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000,
            "rope_scaling": None,
            "sliding_window": None,
            "use_sliding_window": False,
            "max_window_layers": 28,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "hidden_act": "silu",
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        596_049_920,
    ),
    "mixtral": (
        {  # mistralai/Mixtral-8x7B-v0.1
            "model_type": "mixtral",
            "architectures": ["MixtralForCausalLM"],
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1e6,
            "sliding_window": None,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "router_aux_loss_coef": 0.02,
            "output_router_logits": False,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        46_702_792_704,
    ),
    "qwen3_moe": (
        {  # Qwen/Qwen3-30B-A3B (published: 30.5 B; the count is the architecture's formula, 2·V·C + 48 layers + the final norm)
            "model_type": "qwen3_moe",
            "architectures": ["Qwen3MoeForCausalLM"],
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "moe_intermediate_size": 768,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "rope_scaling": None,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "router_aux_loss_coef": 0.001,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 48,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "hidden_act": "silu",
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        30_532_122_624,
    ),
    "deepseek_v3": (
        {  # deepseek-ai/DeepSeek-V3 without its quantization_config (the FP8 weights dequantized to bf16); the main model's count
            "model_type": "deepseek_v3",
            "architectures": ["DeepseekV3ForCausalLM"],
            "vocab_size": 129280,
            "hidden_size": 7168,
            "intermediate_size": 18432,
            "moe_intermediate_size": 2048,
            "num_hidden_layers": 61,
            "num_nextn_predict_layers": 1,
            "num_attention_heads": 128,
            "num_key_value_heads": 128,
            "n_shared_experts": 1,
            "n_routed_experts": 256,
            "ep_size": 1,
            "routed_scaling_factor": 2.5,
            "kv_lora_rank": 512,
            "q_lora_rank": 1536,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "qk_nope_head_dim": 128,
            "topk_method": "noaux_tc",
            "n_group": 8,
            "topk_group": 4,
            "num_experts_per_tok": 8,
            "moe_layer_freq": 1,
            "first_k_dense_replace": 3,
            "norm_topk_prob": True,
            "scoring_func": "sigmoid",
            "aux_loss_alpha": 0.001,
            "seq_aux": True,
            "hidden_act": "silu",
            "max_position_embeddings": 163840,
            "rms_norm_eps": 1e-06,
            "rope_theta": 10000,
            "rope_scaling": {
                "beta_fast": 32,
                "beta_slow": 1,
                "factor": 40,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "original_max_position_embeddings": 4096,
                "type": "yarn",
            },
            "tie_word_embeddings": False,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "eos_token_id": 1,
        },
        671_026_404_352,
    ),
    "llama-3.2-1b": (
        {  # meta-llama/Llama-3.2-1B: Llama 3's rope scaling (factor 32 over 8192 trained positions)
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 128256,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "factor": 32.0,
                "high_freq_factor": 4.0,
                "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "tie_word_embeddings": True,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "bos_token_id": 128000,
            "eos_token_id": 128001,
        },
        1_235_814_400,
    ),
    "phi3": (
        {  # microsoft/Phi-3-mini-4k-instruct
            "model_type": "phi3",
            "architectures": ["Phi3ForCausalLM"],
            "vocab_size": 32064,
            "hidden_size": 3072,
            "intermediate_size": 8192,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "sliding_window": 2047,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "attention_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 32000,
            "pad_token_id": 32000,
        },
        3_821_079_552,
    ),
    "smollm3": (
        {  # HuggingFaceTB/SmolLM3-3B, its config.json as recalled (the Hub is out of reach here): the sizes are
            # SmolLM3Config's defaults in transformers; the count is 36 layers of (attention 10,485,760 + SwiGLU
            # 67,633,152 + norms 4,096) + the tied embedding 262,668,288 + the final norm 2,048 (3.08 B on the Hub page)
            "model_type": "smollm3",
            "architectures": ["SmolLM3ForCausalLM"],
            "vocab_size": 128256,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-06,
            "rope_theta": 5000000.0,
            "rope_scaling": None,
            "tie_word_embeddings": True,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "no_rope_layer_interval": 4,
            "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(36)],
            "bos_token_id": 128000,
            "eos_token_id": 128012,
            "pad_token_id": 128004,
        },
        3_075_098_624,
    ),
    "olmo2": (
        {  # allenai/OLMo-2-0425-1B
            "model_type": "olmo2",
            "architectures": ["Olmo2ForCausalLM"],
            "vocab_size": 100352,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-06,
            "rope_theta": 500000,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "attention_bias": False,
            "eos_token_id": 100257,
            "pad_token_id": 100277,
        },
        1_484_916_736,
    ),
    "olmo3": (
        {  # allenai/Olmo-3-1025-7B, its config.json as recalled (the Hub is out of reach here); the count is
            # 32 layers of (attention 67,108,864 + SwiGLU 135,266,304 + 4 norms 16,384) + two 410,738,688 embeddings
            # + the final norm 4,096 (7.3 B on the Hub page)
            "model_type": "olmo3",
            "architectures": ["Olmo3ForCausalLM"],
            "vocab_size": 100278,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-06,
            "rope_theta": 500000,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 8.0,
                "original_max_position_embeddings": 8192,
                "attention_factor": 1.2079441541679836,
                "beta_fast": 32,
                "beta_slow": 1,
            },
            "sliding_window": 4096,
            "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"] * 8,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "attention_bias": False,
            "eos_token_id": 100257,
            "pad_token_id": 100277,
        },
        7_298_011_136,
    ),
    "exaone4": (
        {  # LGAI-EXAONE/EXAONE-4.0-32B, its config.json as recalled (the Hub is out of reach here); the count is
            # 64 layers of (attention 62,914,560 + QK-norms 256 + SwiGLU 420,741,120 + norms 10,240) + two 524,288,000
            # embeddings + the final norm 5,120 (32.0 B on the Hub page)
            "model_type": "exaone4",
            "architectures": ["Exaone4ForCausalLM"],
            "vocab_size": 102400,
            "hidden_size": 5120,
            "intermediate_size": 27392,
            "num_hidden_layers": 64,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 16.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "sliding_window": 4096,
            "sliding_window_pattern": "LLLG",
            "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"] * 16,
            "tie_word_embeddings": False,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 361,
            "pad_token_id": 0,
        },
        32_003_216_384,
    ),
    "gemma2": (
        {  # google/gemma-2-2b
            "model_type": "gemma2",
            "architectures": ["Gemma2ForCausalLM"],
            "vocab_size": 256000,
            "hidden_size": 2304,
            "intermediate_size": 9216,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0,
            "sliding_window": 4096,
            "query_pre_attn_scalar": 256,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh",
            "attention_bias": False,
            "cache_implementation": "hybrid",
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        2_614_341_888,
    ),
    "gemma3_text": (
        {  # google/gemma-3-1b-pt: five local layers (512 keys) to one global, 26 layers
            "model_type": "gemma3_text",
            "architectures": ["Gemma3ForCausalLM"],
            "vocab_size": 262144,
            "hidden_size": 1152,
            "intermediate_size": 6912,
            "num_hidden_layers": 26,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 256,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000,
            "rope_local_base_freq": 10000,
            "rope_scaling": None,
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "query_pre_attn_scalar": 256,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "hidden_activation": "gelu_pytorch_tanh",
            "attention_bias": False,
            "cache_implementation": "hybrid",
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
        },
        999_885_952,
    ),
    "gpt_neox": (
        {  # EleutherAI/pythia-160m
            "model_type": "gpt_neox",
            "architectures": ["GPTNeoXForCausalLM"],
            "vocab_size": 50304,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 2048,
            "layer_norm_eps": 1e-05,
            "rotary_emb_base": 10000,
            "rotary_pct": 0.25,
            "hidden_act": "gelu",
            "use_parallel_residual": True,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        162_322_944,
    ),
    "mamba2": (
        {  # mistralai/Mamba-Codestral-7B-v0.1, not read from the Hub here (no network): transformers' Mamba2Config
            # defaults, which its docs give as that checkpoint's, with its eos and pad ids. Its count is the one
            # transformers' Mamba2ForCausalLM gives for this config, and the model card's 7.29 B.
            "model_type": "mamba2",
            "architectures": ["Mamba2ForCausalLM"],
            "vocab_size": 32768,
            "hidden_size": 4096,
            "num_hidden_layers": 64,
            "num_heads": 128,
            "head_dim": 64,
            "state_size": 128,
            "expand": 2,
            "n_groups": 8,
            "conv_kernel": 4,
            "chunk_size": 256,
            "hidden_act": "silu",
            "layer_norm_epsilon": 1e-05,
            "residual_in_fp32": True,
            "time_step_limit": [0.0, float("inf")],
            "time_step_min": 0.001,
            "time_step_max": 0.1,
            "time_step_floor": 0.0001,
            "use_bias": False,
            "use_conv_bias": True,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 0,
        },
        7_285_403_648,
    ),
    "lfm2": (
        {  # LiquidAI/LFM2-350M, not read from the Hub here (no network): its config.json as transformers' Lfm2Config
            # docs describe it, in its first spelling (block_ff_dim, tie_embedding, full_attn_idxs). The count is the
            # model card's, and what transformers' Lfm2ForCausalLM gives for this config.
            "model_type": "lfm2",
            "architectures": ["Lfm2ForCausalLM"],
            "vocab_size": 65536,
            "hidden_size": 1024,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "max_position_embeddings": 128000,
            "norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "block_ff_dim": 6656,
            "block_auto_adjust_ff_dim": True,
            "block_ffn_dim_multiplier": 1.0,
            "block_multiple_of": 256,
            "conv_L_cache": 3,
            "conv_bias": False,
            "full_attn_idxs": [2, 5, 8, 10, 12, 14],
            "tie_embedding": True,
            "bos_token_id": 1,
            "eos_token_id": 7,
            "pad_token_id": 0,
        },
        354_483_968,
    ),
    "nemotron_h": (
        {  # nvidia/Nemotron-H-8B-Base-8K, not read from the Hub here (no network): written from transformers'
            # NemotronHConfig defaults (its docs' 8B) and the model card's 24 Mamba-2, 24 MLP and 4 attention layers;
            # the order of those layers in hybrid_override_pattern is not checked against the Hub's file (the count
            # does not depend on it). The count is what transformers' NemotronHForCausalLM gives, the card's 8.1 B.
            "model_type": "nemotron_h",
            "architectures": ["NemotronHForCausalLM"],
            "vocab_size": 131072,
            "hidden_size": 4096,
            "hybrid_override_pattern": "M-M-M-M*-" * 4 + "M-" * 8,
            "num_hidden_layers": 52,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 8192,
            "intermediate_size": 21504,
            "mlp_hidden_act": "relu2",
            "mlp_bias": False,
            "mamba_num_heads": 128,
            "mamba_head_dim": 64,
            "mamba_hidden_act": "silu",
            "ssm_state_size": 128,
            "n_groups": 8,
            "conv_kernel": 4,
            "expand": 2,
            "chunk_size": 128,
            "use_bias": False,
            "use_conv_bias": True,
            "time_step_min": 0.001,
            "time_step_max": 0.1,
            "time_step_floor": 0.0001,
            "time_step_limit": [0.0, float("inf")],
            "layer_norm_epsilon": 1e-05,
            "residual_in_fp32": False,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        8_100_852_736,
    ),
    "bamba": (
        {  # ibm-ai-platform/Bamba-9B, not read from the Hub here (no network): written from the model card and
            # transformers' BambaConfig defaults (max_position_embeddings is its default). The count is what
            # transformers' BambaForCausalLM gives for this config, the card's 9.78 B.
            "model_type": "bamba",
            "architectures": ["BambaForCausalLM"],
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 262144,
            "attn_layer_indices": [9, 18, 27],
            "mamba_n_heads": 128,
            "mamba_d_head": 64,
            "mamba_n_groups": 1,
            "mamba_d_state": 128,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_chunk_size": 256,
            "mamba_conv_bias": True,
            "mamba_proj_bias": False,
            "time_step_limit": [0.0, float("inf")],
            "hidden_act": "silu",
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "pad_token_id": 0,
        },
        9_780_235_392,
    ),
    "gpt2": (
        {  # openai-community/gpt2
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": 50257,
            "n_positions": 1024,
            "n_ctx": 1024,
            "n_embd": 768,
            "n_layer": 12,
            "n_head": 12,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-05,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
        },
        124_439_808,
    ),
}


def test_every_family_has_a_preset():
    assert sorted(p.stem for p in PRESETS.glob("*.toml")) == sorted(PUBLISHED)
    assert {published["model_type"] for published, _ in PUBLISHED.values()} == set(FAMILIES)


@pytest.mark.parametrize("preset", PUBLISHED)
def test_preset_is_the_published_checkpoint_with_its_parameter_count(preset, registry):
    published, count = PUBLISHED[preset]
    config = load_run_config(PRESETS / f"{preset}.toml", registry=registry).model
    imported = registry.model_config(
        hf.model_table(
            FAMILIES[published["model_type"]], hf.normalise(published), "config.json", tokenizer=config.tokenizer
        )
    )
    assert hf.explicit(config) == hf.explicit(imported)
    with torch.device("meta"):
        assert GPT(config).param_counts()["total"] == count


@pytest.mark.parametrize(
    "family, active", [("mixtral", 12_879_925_248), ("qwen3_moe", 3_353_032_704), ("deepseek_v3", 37_552_282_624)]
)
def test_moe_presets_active_parameters_are_the_formula(family, active, registry):
    """Active per token: the total less each mixture layer's idle experts, (E - k) · 3 · hidden · d_model."""
    preset = load_run_config(PRESETS / f"{family}.toml", registry=registry).model
    ffn = preset.feed_forward.params
    mixtures = sum(layer.feed_forward.name == "moe" for layer in preset.layers())
    with torch.device("meta"):
        model = GPT(preset)
    assert (
        model.active_parameters_per_token()
        == PUBLISHED[family][1] - mixtures * (ffn.n_experts - ffn.top_k) * 3 * ffn.hidden * preset.d_model
        == active
    )


def test_describing_a_7b_preset_allocates_nothing():
    script = (
        "import resource, sys\n"
        "from gptzoo.recipes.cli import main\n"
        "from gptzoo.registry import default_registry\n"
        "default_registry()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert main(['describe', sys.argv[1], '--json']) == 0\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(PRESETS / "mistral.toml")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stderr.split()[-2:])
    assert (after - before) * 1024 < 200 * 2**20  # 7.2 B float32 parameters would be 27 GiB
    assert json.loads(done.stdout)["parameters"]["total"] == 7_248_023_552
