"""import-hf / export-hf: parity with transformers' own models, family by family.

Each case builds transformers' model from a tiny random config covering the family's
distinguishing options, saves it with save_pretrained, imports it and checks: logits within
1e-4 on a batch with left padding, 20 greedy tokens through gptzoo's KV cache equal to
transformers' generate, and export -> from_pretrained -> the same logits, for every
attention variant the family's assembly can use. transformers is the reference (the
``reference`` extra); it is never imported by gptzoo itself.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.interop.hf import convert as hf
from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop.hf_parity import (  # noqa: E402
    built,
    check_parity_of,
    check_refused,
    check_same_tensors,
    checkpoints,
    described,
    hf_logits_counting_real_tokens,
    left_padded_batch,
)

ATTENTION = ["sdpa", "fused", "per_head"]
V = 320  # vocabulary of the tiny models

# name -> (transformers config class, its settings, the attention variants the assembly can use)
CASES = {
    # GQA (2 kv heads of 4), head_dim 24 != 64 / 4, untied head, biases on attention and MLP
    "llama": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            head_dim=24,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 5e4},
        ),
        ATTENTION,
    ),
    # multi-query, tied head, no biases (SmolLM2's options), Llama 3.1/3.2's rope scaling (original context 16 of 64)
    "llama-tied-mqa": (
        "LlamaConfig",
        dict(
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 5e5,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        ATTENTION,
    ),
    # linear rope scaling (position interpolation)
    "mistral": (
        "MistralConfig",
        dict(
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=None,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        ),
        ATTENTION,
    ),
    # SmolLM3's NoPE: every 4th layer without rotary (transformers' default no_rope_layers), GQA, tied head
    "smollm3": ("SmolLM3Config", dict(num_hidden_layers=4, num_key_value_heads=2, pad_token_id=None), ATTENTION),
    # NoPE on the first of two layers (no_rope_layers given), MQA, biases, untied head, linear rope scaling
    "smollm3-biases": (
        "SmolLM3Config",
        dict(
            no_rope_layers=[0, 1],
            num_key_value_heads=1,
            pad_token_id=None,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        ),
        ATTENTION,
    ),
    # q/k/v biases and (separately) an o_proj bias, MLP biases, GQA, head_dim 24 != 64 / 4, untied head
    "seed_oss": (
        "SeedOssConfig",
        dict(
            num_key_value_heads=2,
            head_dim=24,
            attention_bias=True,
            attention_out_bias=True,
            mlp_bias=True,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # Seed-OSS's published options: q/k/v biases only, multi-query, tied head, linear rope scaling
    "seed_oss-tied": (
        "SeedOssConfig",
        dict(
            num_key_value_heads=1,
            head_dim=16,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # Apertus: xIELU MLP (up, activation, down), QK-norm per head, GQA, llama3 rope scaling (its default), untied
    "apertus": (
        "ApertusConfig",
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 12e6,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # attention biases, multi-query, 24-wide heads, no rope scaling, tied head
    "apertus-tied": (
        "ApertusConfig",
        dict(
            num_key_value_heads=1,
            head_dim=24,
            attention_bias=True,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # a window of 6 keys, shorter than the test's 24 tokens and 27 generated
    "mistral-window": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=6), ["sliding_window"]),
    # QK-norm per head, head_dim 32 != 64 / 4, GQA, untied
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=False), ATTENTION),
    # q/k/v biases without an o_proj bias, tied head, YaRN rope scaling (its attention factor on cos and sin)
    "qwen2": (
        "Qwen2Config",
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e6,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        ATTENTION,
    ),
    # norms on the sublayers' outputs, QK-norm across heads, GQA
    # three windowed layers (6 keys) to one full, each kind with its own rotary (YaRN on the full ones), GQA
    "olmo3": (
        "Olmo3Config",
        dict(
            num_hidden_layers=4,
            num_key_value_heads=2,
            sliding_window=6,
            tie_word_embeddings=False,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                "full_attention": {
                    "rope_type": "yarn",
                    "rope_theta": 5e5,
                    "factor": 2.0,
                    "original_max_position_embeddings": 32,
                },
            },
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # three windowed rotary layers (6 keys) to one full NoPE layer, QK-norm per head, GQA, llama3 rope scaling
    "exaone4": (
        "Exaone4Config",
        dict(
            num_hidden_layers=4,
            num_key_value_heads=2,
            sliding_window=6,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 1e6,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        ATTENTION,
    ),
    # layer_types given (one windowed, one full), MQA, tied head
    "exaone4-tied": (
        "Exaone4Config",
        dict(
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"],
            num_key_value_heads=1,
            tie_word_embeddings=True,
        ),
        ATTENTION,
    ),
    "olmo2": (
        "Olmo2Config",
        dict(num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        ATTENTION,
    ),
    # q, k, v in one projection and gate, up in another; GQA; untied; rotary on the first half of each head
    "phi3": (
        "Phi3Config",
        dict(
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # 4 experts, top 2 renormalised, GQA, a window of 6 keys
    "mixtral": (
        "MixtralConfig",
        dict(
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=6,
            tie_word_embeddings=False,
        ),
        ["sliding_window"],
    ),
    # a dense first layer (mlp_only_layers) then experts (top 3 of 6, renormalised), QK-norm, head_dim 32
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=32,
            num_experts=6,
            num_experts_per_tok=3,
            moe_intermediate_size=40,
            norm_topk_prob=True,
            mlp_only_layers=[0],
        ),
        ATTENTION,
    ),
    # experts every other layer (decoder_sparse_step 2), top 2 of 4 unnormalised, tied
    "qwen3_moe-step": (
        "Qwen3MoeConfig",
        dict(
            num_hidden_layers=4,
            num_key_value_heads=1,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            decoder_sparse_step=2,
            tie_word_embeddings=True,
        ),
        ATTENTION,
    ),
    # MLA with a query latent, interleaved rotary pairs; a dense first layer (first_k_dense_replace);
    # 8 experts in 4 groups, 2 groups kept, top 3, the bias for choosing, a shared expert, scale 2.5
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=4,
            first_k_dense_replace=1,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            moe_intermediate_size=24,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_nope_head_dim=12,
            qk_rope_head_dim=8,
            v_head_dim=10,
            tie_word_embeddings=False,
        ),
        ["latent"],
    ),
    # DeepSeek-V3's YaRN: frequencies interpolated ×4 beyond 16 positions, the scores scaled by mscale²
    "deepseek_v3-yarn": (
        "DeepseekV3Config",
        dict(
            num_hidden_layers=2,
            num_key_value_heads=4,
            first_k_dense_replace=1,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            moe_intermediate_size=16,
            n_group=2,
            topk_group=1,
            q_lora_rank=24,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=16,
            v_head_dim=8,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            },
        ),
        ["latent"],
    ),
    # MLA without a query latent (V2-Lite's shape), halves rotary layout, two shared experts, one group
    "deepseek_v3-lite": (
        "DeepseekV3Config",
        dict(
            num_key_value_heads=4,
            first_k_dense_replace=0,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=2,
            moe_intermediate_size=16,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
            norm_topk_prob=False,
            q_lora_rank=None,
            kv_lora_rank=16,
            qk_nope_head_dim=8,
            qk_rope_head_dim=16,
            v_head_dim=8,
            rope_interleave=False,
        ),
        ["latent"],
    ),
    # GLM-4.5: q/k/v biases, rotary on half of each head, QK-norm per head, GQA; a dense first layer, then
    # 8 experts in 4 groups (2 kept), top 3 renormalised, the bias for choosing, a shared expert, scale 2.5
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=2,
            attention_bias=True,
            use_qk_norm=True,
            first_k_dense_replace=1,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            moe_intermediate_size=24,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            tie_word_embeddings=False,
        ),
        ATTENTION,
    ),
    # no QK-norm nor biases, rotary on a quarter of 24-wide heads with YaRN, multi-query, no dense layer,
    # two shared experts, top 2 of 4 unnormalised, tied head
    "glm4_moe-yarn": (
        "Glm4MoeConfig",
        dict(
            num_key_value_heads=1,
            head_dim=24,
            first_k_dense_replace=0,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=2,
            moe_intermediate_size=16,
            norm_topk_prob=False,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "partial_rotary_factor": 0.25,
            },
        ),
        ATTENTION,
    ),
    # MiniMax-M2: QK-norm across heads (GQA: the keys' norm is narrower), rotary on half of each head (rotary_dim,
    # as the published configs give it), 6 experts, top 3 by sigmoid scores with the bias for choosing, untied
    "minimax_m2": (
        "MiniMaxM2Config",
        dict(
            num_key_value_heads=2,
            head_dim=24,
            rotary_dim=12,
            intermediate_size=40,
            num_local_experts=6,
            num_experts_per_tok=3,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # multi-query, full rotary with linear scaling, top 2 of 4, tied head
    "minimax_m2-tied": (
        "MiniMaxM2Config",
        dict(
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=24,
            num_local_experts=4,
            num_experts_per_tok=2,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # Command R7B's layer: attention and SwiGLU in parallel after one bias-free LayerNorm, three windowed layers
    # (6 keys) with interleaved rotary to one full layer without positions, GQA, logits × 0.25, tied head
    "cohere2": (
        "Cohere2Config",
        dict(num_hidden_layers=4, num_key_value_heads=2, sliding_window=6, logit_scale=0.25, layer_norm_eps=1e-5),
        ATTENTION,
    ),
    # layer_types given (full, then windowed), attention biases, multi-query, linear rope scaling, untied head
    "cohere2-untied": (
        "Cohere2Config",
        dict(
            layer_types=["full_attention", "sliding_attention"],
            sliding_window=6,
            num_key_value_heads=1,
            attention_bias=True,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        ),
        ATTENTION,
    ),
    # sandwich blocks, GeGLU, √d_model embeddings, both soft-caps, query_pre_attn_scalar 16 != head_dim 24,
    # local (window 6) and global layers alternating, GQA, tied
    "gemma2": (
        "Gemma2Config",
        dict(
            num_hidden_layers=4,
            num_key_value_heads=2,
            head_dim=24,
            query_pre_attn_scalar=16,
            sliding_window=6,
            attn_logit_softcapping=20.0,
            final_logit_softcapping=5.0,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # five local layers to one global (7 layers: the pattern wraps), QK-norm with Gemma's (1 + weight),
    # rotary bases 1e4 local and 1e6 global with linear scaling 8 (Gemma 3 4B-27B), multi-query, untied
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(
            num_hidden_layers=7,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=6,
            tie_word_embeddings=False,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
            },
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # attention and MLP in parallel, each with its own LayerNorm; rotary on 1/4 of each head; q, k, v interleaved per head; exact GELU
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ATTENTION,
    ),
    # the same with the two sublayers one after the other (use_parallel_residual = false)
    "gpt_neox-sequential": (
        "GPTNeoXConfig",
        dict(
            use_parallel_residual=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ["sdpa"],
    ),
    # a window on every layer (Phi-3-mini-4k: 2047 of 4096)
    "phi3-window": (
        "Phi3Config",
        dict(num_key_value_heads=2, sliding_window=6, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        ["sliding_window"],
    ),
    # an MLP width other than 4 × n_embd (n_inner), which import-gpt2 reads through the same table
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, n_inner=80), ATTENTION),
}
DECODER = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)


def build(case: str):
    """transformers' model for ``case``, randomised (DeepSeek-V3's bias for choosing experts too)."""
    config_class, settings, _ = CASES[case]
    fields = settings if config_class == "GPT2Config" else DECODER | settings
    config = getattr(transformers, config_class)(**fields | {"vocab_size": V}, attn_implementation="eager")
    return built(config, buffers=("e_score_correction_bias",), buffer_scale=0.1)


checkpoint = checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    check_parity_of(model, case, folder, tmp_path, hf_logits_counting_real_tokens, CASES[case][2], low=0)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    _, model, folder = checkpoint
    # several families may match (Mistral without a window is a Llama): the export names the source's
    check_same_tensors(model, folder, tmp_path)


def test_describe_shows_the_family_assembly(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    model = described(folder, tmp_path, capsys, hf_model)["config"]["model"]
    family = case.split("-")[0]
    feed_forward = "moe" if family in ("mixtral", "qwen3_moe", "deepseek_v3", "glm4_moe", "minimax_m2") else "swiglu"
    feed_forward = "xielu" if family == "apertus" else feed_forward
    expected = {
        "gpt2": ("learned", "gelu", "layernorm", "pre_norm"),
        "olmo2": ("rope", "swiglu", "rmsnorm", "sublayer_output_norm"),
        "olmo3": ("rope", "swiglu", "rmsnorm", "sublayer_output_norm"),
        "exaone4": ("rope", "swiglu", "rmsnorm", "sublayer_output_norm"),
        "exaone4-tied": ("rope", "swiglu", "rmsnorm", "sublayer_output_norm"),
        "gemma2": ("rope", "geglu", "rmsnorm", "sandwich"),
        "gemma3_text": ("rope", "geglu", "rmsnorm", "sandwich"),
        "gpt_neox": ("rope", "gelu", "layernorm", "parallel"),
        "gpt_neox-sequential": ("rope", "gelu", "layernorm", "pre_norm"),
        "cohere2": ("rope", "swiglu", "layernorm", "parallel"),
        "cohere2-untied": ("rope", "swiglu", "layernorm", "parallel"),
    }.get(case, ("rope", feed_forward, "rmsnorm", "pre_norm"))
    assert (
        model["positional"]["name"],
        model["feed_forward"]["name"],
        model["norm"]["name"],
        model["block"]["name"],
    ) == expected
    assert (
        model["attention"].get("qk_norm", "none")
        == {
            "qwen3": "per_head",
            "olmo2": "across_heads",
            "olmo3": "across_heads",
            "exaone4": "per_head",
            "qwen3_moe": "per_head",
            "gemma3_text": "per_head",
            "glm4_moe": "per_head",
            "minimax_m2": "across_heads",
            "apertus": "per_head",
        }.get(family, "none")
        if case != "glm4_moe-yarn"
        else "none"
    )  # glm4_moe-yarn: use_qk_norm false
    if case.startswith("gemma"):  # local (windowed) and global layers
        assert (
            model["layer_pattern"] == {"gemma2": ["local", "global"], "gemma3_text": ["local"] * 5 + ["global"]}[case]
        )
        assert (
            model["layer_kinds"]["local"]["attention"]["window"] == 6
            and model["embedding_scale"] == "sqrt_d_model"
            and model["norm"]["unit_offset"]
        )
    if case == "gemma3_text":  # rotary base 1e4 on local layers, 1e6 on global ones
        assert (model["layer_kinds"]["local"]["positional"]["base"], model["positional"]["base"]) == (1e4, 1e6)
    if (
        case == "olmo3"
    ):  # three windowed layers to one full; rotary base 1e4 on the windowed ones, 5e5 with YaRN on the full
        assert model["layer_pattern"] == ["local"] * 3 + ["global"]
        local = model["layer_kinds"]["local"]
        assert (local["attention"]["name"], local["attention"]["window"], local["attention"]["qk_norm"]) == (
            "sliding_window",
            6,
            "across_heads",
        )
        assert (local["positional"]["base"], local["positional"]["scaling"], model["positional"]["base"]) == (
            1e4,
            None,
            5e5,
        )
    if case == "exaone4":  # windowed layers rotate, the full ones have no positions
        assert model["layer_pattern"] == ["local"] * 3 + ["global"]
        assert model["layer_kinds"]["global"]["positional"]["name"] == "none"
        assert model["layer_kinds"]["local"]["attention"]["window"] == 6
    if family == "smollm3":  # NoPE layers: no rotary on every 4th layer (the first of two when given so)
        assert model["layer_pattern"] == {"smollm3": ["rope"] * 3 + ["nope"], "smollm3-biases": ["nope", "rope"]}[case]
        assert model["layer_kinds"]["nope"]["positional"]["name"] == "none"
    scaling = {
        "llama-tied-mqa": "llama3",
        "mistral": "linear",
        "smollm3-biases": "linear",
        "seed_oss-tied": "linear",
        "glm4_moe-yarn": "yarn",
        "cohere2-untied": "linear",
        "apertus": "llama3",
        "minimax_m2-tied": "linear",
        "olmo3": "yarn",
        "exaone4": "llama3",
        "qwen2": "yarn",
        "gemma3_text": "linear",
        "deepseek_v3-yarn": "yarn",
    }.get(case)
    assert (model["positional"].get("scaling") or {}).get("type") == scaling
    if case == "phi3":
        assert model["positional"]["fraction"] == 0.5
    if family == "glm4_moe":  # rotary on the first half (a quarter) of each head; the first layer dense or none
        assert model["positional"]["fraction"] == {"glm4_moe": 0.5, "glm4_moe-yarn": 0.25}[case]
        assert model.get("layer_pattern") == {"glm4_moe": ["dense", "moe", "moe"], "glm4_moe-yarn": []}[case]
    if family == "minimax_m2":  # rotary_dim 12 of 24 read as half of each head; all of it when absent
        assert model["positional"].get("fraction", 1.0) == {"minimax_m2": 0.5, "minimax_m2-tied": 1.0}[case]
    if family == "cohere2":  # windowed layers rotate (interleaved pairs), the full ones have no positions
        assert (
            model["layer_pattern"]
            == {"cohere2": ["local"] * 3 + ["global"], "cohere2-untied": ["global", "local"]}[case]
        )
        assert model["layer_kinds"]["global"]["positional"]["name"] == "none"
        assert model["positional"]["layout"] == "interleaved" and model["block"]["shared_norm"]
        assert model["head"]["logit_scale"] == {"cohere2": 0.25, "cohere2-untied": 0.0625}[case]
    if family == "seed_oss":  # q/k/v biases always here; the o_proj bias only where attention_out_bias is set
        assert (model["qkv_bias"], model["attn_out_bias"]) == (True, case == "seed_oss")
    if case.startswith("gpt_neox"):
        assert model["feed_forward"]["approximate"] == "none" and model["positional"]["fraction"] == {
            "gpt_neox": 0.25
        }.get(case, 0.5)


# ---- the folder: shards, dtypes, refusals, memory -----------------------------------------------


def test_shards_and_bfloat16_import_as_they_are_or_as_float32(tmp_path):
    model = build("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / hf.INDEX).is_file() and len(list((tmp_path / "src").glob("model-*.safetensors"))) > 2
    original = {k: v for f in (tmp_path / "src").glob("model-*.safetensors") for k, v in load_file(str(f)).items()}
    import_hf(tmp_path / "src", tmp_path / "bf16", dtype="bfloat16")
    import_hf(tmp_path / "src", tmp_path / "fp32", dtype="float32")
    bf16, fp32 = (
        load_file(str(tmp_path / "bf16" / "model.safetensors")),
        load_file(str(tmp_path / "fp32" / "model.safetensors")),
    )
    q, k, v = (original[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert bf16["blocks.1.attention.qkv.weight"].dtype == torch.bfloat16 and torch.equal(
        bf16["blocks.1.attention.qkv.weight"], torch.cat([q, k, v])
    )
    assert fp32["blocks.1.attention.qkv.weight"].dtype == torch.float32 and torch.equal(
        fp32["blocks.1.attention.qkv.weight"], torch.cat([q, k, v]).float()
    )
    assert torch.equal(bf16["head.weight"], original["lm_head.weight"])


def test_export_shards_past_the_size_and_transformers_loads_them(tmp_path):
    model = build("qwen2")
    model.save_pretrained(tmp_path / "src")
    import_hf(tmp_path / "src", tmp_path / "run")
    assert (
        main(
            ["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--max-shard-gb", str(50_000 / 2**30)]
        )
        == 0
    )
    index = json.loads((tmp_path / "out" / hf.INDEX).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all(
        (tmp_path / "out" / f).stat().st_size < 50_000 + 4096
        for f in files
        if len(load_file(str(tmp_path / "out" / f))) > 1
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    idx, mask = left_padded_batch(V, low=0)
    torch.testing.assert_close(
        hf_logits_counting_real_tokens(reloaded, idx, mask)[mask],
        hf_logits_counting_real_tokens(model, idx, mask)[mask],
        atol=0,
        rtol=0,
    )


def test_the_refusal_and_help_list_every_model_type_import_reads(tmp_path, capsys):
    """Read from the tables: every family, the aliases (Kimi K2) and the multimodal wrappers (Qwen3.5's)."""
    from gptzoo.recipes.interop.hf.families import FAMILIES

    expected = [*FAMILIES, "kimi_k2", "qwen3_5", "qwen3_5_moe"]
    build("llama-tied-mqa").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.rstrip().endswith("supported: " + ", ".join(expected))
    with pytest.raises(SystemExit):
        main(["import-hf", "--help"])
    assert " ".join(capsys.readouterr().out.split()).count(", ".join(expected)) == 1


@pytest.mark.parametrize(
    "change, named",
    [
        ({"model_type": "bert"}, 'model_type = "bert" is not a family gptzoo imports; supported: gpt2, llama'),
        (
            {"hidden_act": "gelu"},
            'hidden_act = "gelu" is not supported for llama (the SwiGLU feed-forward gates with SiLU',
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for llama',
        ),
        ({"num_hidden_layers": None}, "num_hidden_layers missing"),
    ],
)
def test_an_unsupported_model_or_option_is_refused_before_anything_is_written(change, named, tmp_path, capsys):
    build("llama-tied-mqa").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(
        json.dumps({k: v for k, v in (config | change).items() if v is not None})
    )
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"use_sliding_window": True, "sliding_window": 6},
            "use_sliding_window = true is not supported for smollm3 (SmolLM3's windowed NoPE layers are not read yet",
        ),
        ({"no_rope_layers": [1, 2, 1, 0]}, "no_rope_layers = [1, 2, 1, 0] is not supported: gptzoo reads 4 entries"),
        ({"no_rope_layers": [1, 0]}, "no_rope_layers = [1, 0] is not supported: gptzoo reads 4 entries"),
    ],
)
def test_smollm3_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    check_refused(build("smollm3"), tmp_path, change, named, capsys)


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"layer_types": ["sliding_attention", "chunked_attention"] * 2},
            'layer_types = ["sliding_attention", "chunked_attention", "sliding_attention", "chunked_attention"] is not supported',
        ),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}}},
            'rope_parameters.full_attention.rope_type = "dynamic" is not supported for olmo3',
        ),
    ],
)
def test_olmo3_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    check_refused(build("olmo3"), tmp_path, change, named, capsys)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"sliding_window": None}, "sliding_window = null is not supported for exaone4"),
        (
            {"sliding_window_pattern": "LLLG", "layer_types": None},
            'sliding_window_pattern = "LLLG" without layer_types is not supported',
        ),
    ],
)
def test_exaone4_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    check_refused(build("exaone4"), tmp_path, change, named, capsys)


# case -> its options gptzoo does not implement, each refused naming the key and the value
REFUSED = {
    "seed_oss": [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for seed_oss (the SwiGLU feed-forward gates'),
        ({"pretraining_tp": 2}, "pretraining_tp = 2 is not supported for seed_oss"),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for seed_oss',
        ),
    ],
    "glm4_moe": [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for glm4_moe (the SwiGLU feed-forward gates'),
        (
            {"quantization_config": {"quant_method": "fp8"}},
            'quantization_config = {"quant_method": "fp8"} is not supported for glm4_moe',
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for glm4_moe',
        ),
    ],
    "minimax_m2": [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for minimax_m2 (the SwiGLU feed-forward gates'),
        ({"qk_norm_type": "per_head"}, 'qk_norm_type = "per_head" is not supported for minimax_m2'),
        ({"scoring_func": "softmax"}, 'scoring_func = "softmax" is not supported for minimax_m2'),
        ({"use_routing_bias": False}, "use_routing_bias = false is not supported for minimax_m2"),
    ],
    "cohere2": [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for cohere2 (the SwiGLU feed-forward gates'),
        ({"sliding_window": None}, "sliding_window = null is not supported for cohere2"),
        (
            {"layer_types": ["sliding_attention", "chunked_attention", "sliding_attention", "full_attention"]},
            'layer_types = ["sliding_attention", "chunked_attention", "sliding_attention", "full_attention"] is not '
            "supported: gptzoo reads 4 entries of sliding_attention or full_attention",
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for cohere2',
        ),
    ],
    "apertus": [
        (
            {"hidden_act": "silu"},
            'hidden_act = "silu" is not supported for apertus (the feed-forward is gptzoo\'s xielu',
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for apertus',
        ),
    ],
}


@pytest.mark.parametrize(
    "case, change, named", [(case, change, named) for case, rows in REFUSED.items() for change, named in rows]
)
def test_family_options_gptzoo_lacks_are_refused(case, change, named, tmp_path, capsys):
    check_refused(build(case), tmp_path, change, named, capsys)


def test_glm4_moe_keeps_its_multi_token_prediction_layer_as_transformers_computes_it(tmp_path):
    """GLM-4.5 stores its MTP layer as DeepSeek-V3 does (layer num_hidden_layers: eh_proj, enorm, hnorm,
    shared_head, copies of the embedding and head): it imports into model.mtp, computes what transformers'
    MtpModel computes on those weights, and exports back to the same tensors."""
    from transformers.modeling_layers import MtpModel

    model = build("glm4_moe")
    model.config.num_nextn_predict_layers = 1
    torch.manual_seed(1)
    mtp = MtpModel(model, 1).eval()
    with torch.no_grad():
        for name, p in mtp.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    mtp.tie_with_main_model(model)
    model.save_pretrained(tmp_path / "src")
    prefix, added = "model.layers.3.", {}
    for name, tensor in [*mtp.layers[0].named_parameters(), *mtp.layers[0].named_buffers()]:
        name = name.replace("post_norm.", "shared_head.norm.", 1).replace("mtp_block.", "", 1)
        if name.endswith("experts.gate_up_proj"):  # fused in memory, one tensor per expert in files
            gate, up = tensor.detach().chunk(2, dim=1)
            for e in range(tensor.size(0)):
                added[f"{prefix}{name[: -len('gate_up_proj')]}{e}.gate_proj.weight"] = gate[e].clone()
                added[f"{prefix}{name[: -len('gate_up_proj')]}{e}.up_proj.weight"] = up[e].clone()
        elif name.endswith("experts.down_proj"):
            for e in range(tensor.size(0)):
                added[f"{prefix}{name[: -len('down_proj')]}{e}.down_proj.weight"] = tensor[e].detach().clone()
        elif not name.endswith("inv_freq"):
            added[prefix + name] = tensor.detach().clone()
    added[prefix + "embed_tokens.weight"] = model.model.embed_tokens.weight.detach().clone()
    added[prefix + "shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    tensors = load_file(str(tmp_path / "src" / "model.safetensors"))
    save_file(tensors | added, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    import_hf(tmp_path / "src", tmp_path / "run")
    ours = load_run(tmp_path / "run").model
    assert ours.config.mtp.params.depth == 1
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model(idx, output_hidden_states=True).hidden_states[-1]
        theirs = mtp.forward_layer(0, hidden, torch.arange(1, 13).expand(2, 12), None, input_ids=idx.roll(-1, 1))
        ahead = ours.predict_ahead(ours.hidden_states(idx), idx.roll(-1, 1).unsqueeze(-1))[0]
    torch.testing.assert_close(ahead[:, :-1], theirs[:, :-1], rtol=1e-4, atol=1e-4)  # the last reads a wrapped token
    export_hf(tmp_path / "run", tmp_path / "out")
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {name for name in exported if name.startswith(prefix)} == set(added)
    for name, tensor in added.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)


def test_weights_that_do_not_match_the_config_are_named(tmp_path, capsys):
    build("llama").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | {"num_key_value_heads": 4}))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "wrong shape model.layers.0.self_attn.k_proj.weight (48, 64) vs (96, 64) for this config" in err
    assert not (tmp_path / "run").exists()


def test_peak_memory_of_an_import_is_about_the_largest_tensor(tmp_path, peak_rss_growth):
    """A Llama-shaped checkpoint in two shards, written without transformers: RSS grows by less than the weights plus one tensor."""
    C, H, L, V_big = 512, 1536, 6, 32000
    shapes = {"model.embed_tokens.weight": (V_big, C), "model.norm.weight": (C,), "lm_head.weight": (V_big, C)}
    for i in range(L):
        shapes |= {
            f"model.layers.{i}.{n}": s
            for n, s in {
                "input_layernorm.weight": (C,),
                "post_attention_layernorm.weight": (C,),
                "self_attn.q_proj.weight": (C, C),
                "self_attn.k_proj.weight": (C // 4, C),
                "self_attn.v_proj.weight": (C // 4, C),
                "self_attn.o_proj.weight": (C, C),
                "mlp.gate_proj.weight": (H, C),
                "mlp.up_proj.weight": (H, C),
                "mlp.down_proj.weight": (C, H),
            }.items()
        }
    src = tmp_path / "src"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    names = list(shapes)
    halves = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    for file, part in halves.items():
        save_file({n: torch.randn(shapes[n], generator=g) for n in part}, str(src / file), metadata={"format": "pt"})
    (src / hf.INDEX).write_text(json.dumps({"weight_map": {n: f for f, part in halves.items() for n in part}}))
    (src / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": V_big,
                "hidden_size": C,
                "intermediate_size": H,
                "num_hidden_layers": L,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "max_position_embeddings": 256,
            }
        )
    )
    size = sum((src / f).stat().st_size for f in halves)
    growth = peak_rss_growth("gptzoo.recipes.interop.hf.import_:import_hf", src, tmp_path / "run")
    largest = V_big * C * 4
    assert growth < size + 2 * largest, (
        f"peak RSS grew by {growth / 2**20:.0f} MiB for {size / 2**20:.0f} MiB of weights"
    )


# ---- the checkpoint's tokenizer and chat template -----------------------------------------------

CHAT_TEMPLATE = (  # Qwen-style turns with the model's BOS, as instruction-tuned checkpoints bring
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tokenizer(folder):
    """A byte-level BPE trained here with the tokenizers library, saved as a checkpoint ships it
    (BOS added by the post-processor, as in Llama's and Gemma's tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=V, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(
        ["The quick brown fox jumps over the lazy dog. " * 20, "Hello world, how are you today?"], trainer
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [3, 1]}))
    return tokenizer


@pytest.fixture
def chat_checkpoint(tmp_path):
    model = build("qwen2")
    model.save_pretrained(tmp_path / "src")
    write_tokenizer(tmp_path / "src")
    return model, tmp_path / "src"


def test_the_hf_tokenizer_encodes_and_renders_chats_as_transformers(chat_checkpoint, tmp_path):
    _, src = chat_checkpoint
    reference = transformers.AutoTokenizer.from_pretrained(src)
    import_hf(src, tmp_path / "run")
    tokenizer = load_run(tmp_path / "run").tokenizer
    assert tokenizer.params.eos_token_ids == [3, 1] and tokenizer.eot_id == 3
    for text in ["Hello world", "The lazy dog jumps. Über!", ""]:
        assert tokenizer.encode(text) == reference(text).input_ids, text
        assert tokenizer.encode(text)[:1] == [0]  # BOS, from the post-processor
    messages = [{"role": "user", "content": "How are you?"}]
    assert tokenizer.render_chat(messages) == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    expected = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert tokenizer.encode_chat(messages) == list(getattr(expected, "input_ids", expected))


def test_generate_and_chat_work_on_an_imported_run_and_the_tokenizer_exports(chat_checkpoint, tmp_path, capsys):
    model, src = chat_checkpoint
    reference = transformers.AutoTokenizer.from_pretrained(src)
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert (
        main(["generate", str(tmp_path / "run"), "--prompt", "Hello world", "--max-new-tokens", "8", "--no-stream"])
        == 0
    )
    prompt = reference("Hello world").input_ids
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=[3, 1], pad_token_id=1
        )[0, len(prompt) :].tolist()
    out = out[: out.index(3)] if 3 in out else out
    assert capsys.readouterr().out == reference.decode(prompt + out) + "\n"

    assert main(["chat", str(tmp_path / "run"), "--instruction", "How are you?", "--max-new-tokens", "6"]) == 0
    ids = reference.apply_chat_template(
        [{"role": "user", "content": "How are you?"}], tokenize=True, add_generation_prompt=True
    )
    ids = list(getattr(ids, "input_ids", ids))
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=3, pad_token_id=1)[
            0, len(ids) :
        ].tolist()
    out = out[: out.index(3)] if 3 in out else out
    assert capsys.readouterr().out == reference.decode(out).strip() + "\n"

    export_hf(tmp_path / "run", tmp_path / "out")
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (tmp_path / "run" / "tokenizer.json").read_text()
    assert exported("Hello world").input_ids == prompt and exported.chat_template == CHAT_TEMPLATE
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["eos_token_id"] == [3, 1]


def test_generation_stops_at_every_end_of_turn_id_the_checkpoint_names(chat_checkpoint, tmp_path, capsys):
    """generation_config.json's eos_token_id may name several ids (Llama 3's chat turns end at <|eot_id|>, the
    second of three): transformers' generate stops at any of them, and so do generate and chat."""
    model, src = chat_checkpoint
    reference = transformers.AutoTokenizer.from_pretrained(src)
    prompt = reference("Hello world").input_ids
    with torch.no_grad():
        free = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    free = free[0, len(prompt) :].tolist()
    stop = next(t for t in free[2:] if t not in free[:2])  # a token the model reaches only after two others
    (src / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [3, stop]}))
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=[3, stop], pad_token_id=1
        )[0, len(prompt) :].tolist()
    assert out[-1] == stop and len(out) < 8  # transformers stopped there
    for streaming in ([], ["--no-stream"]):
        argv = ["generate", str(tmp_path / "run"), "--prompt", "Hello world", "--max-new-tokens", "8", *streaming]
        assert main(argv) == 0
        assert capsys.readouterr().out == reference.decode(prompt + out[:-1]) + "\n"


def test_chat_passes_a_system_message_and_the_templates_own_variables(chat_checkpoint, tmp_path, capsys):
    model, src = chat_checkpoint
    template = (  # a system turn, and a switch the template reads (as Qwen3's enable_thinking)
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% if brief %}{{ 'Brief: ' }}{% endif %}{% endif %}"
    )
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": template}))
    reference = transformers.AutoTokenizer.from_pretrained(src)
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    argv = ["chat", str(tmp_path / "run"), "--instruction", "Hi", "--max-new-tokens", "6", "--system", "Be kind."]
    assert main([*argv, "--template-var", "brief=true"]) == 0
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, brief=True)
    ids = list(getattr(ids, "input_ids", ids))
    assert reference.decode(ids).endswith("Brief: ")
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=[3, 1])
    out = out[0, len(ids) :].tolist()
    out = next((out[:i] for i, t in enumerate(out) if t in (3, 1)), out)
    assert capsys.readouterr().out == reference.decode(out).strip() + "\n"


def test_a_run_trained_in_gptzoo_exports_as_the_first_family_its_assembly_matches(tmp_path, registry):
    """configs/llama-style.toml is Llama's, Mistral's and Phi-3's assembly alike: with no source recorded, the first (llama)."""
    from gptzoo.core import GPT
    from gptzoo.recipes.config.schema import load_run_config
    from gptzoo.recipes.runs.folder import save_run

    config = load_run_config(
        Path(__file__).resolve().parents[3] / "configs" / "llama-style.toml",
        ["model.tokenizer.name=byte", "model.vocab_size=257"],
        registry,
    )
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    save_run(tmp_path / "run", config, model, config.model.tokenizer.build(), registry)
    family, data = export_hf(tmp_path / "run", tmp_path / "out", registry)
    assert (
        family.model_type == "llama"
        and data["num_key_value_heads"] == 2
        and data["rope_parameters"]["rope_theta"] == 10000.0
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    idx = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, model(idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"quantization_config": {"quant_method": "fp8"}},
            'quantization_config = {"quant_method": "fp8"} is not supported for deepseek_v3 (the weights must be floating point; dequantize',
        ),
        (
            {
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 1e4,
                    "factor": 4.0,
                    "original_max_position_embeddings": 16,
                    "mscale": 0.7,
                    "mscale_all_dim": 1.0,
                }
            },
            "mscale = 0.7 with mscale_all_dim = 1.0 is not supported for deepseek_v3",
        ),
    ],
)
def test_deepseek_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    build("deepseek_v3-lite").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | change))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_kimi_k2_reads_as_deepseek_v3_and_exports_as_it(tmp_path, capsys):
    """Kimi K2's config.json says model_type "kimi_k2" over DeepSeek-V3's layout (its architectures name
    DeepseekV3ForCausalLM; transformers 5.24 has no kimi_k2): import reads it as deepseek_v3, export
    writes deepseek_v3, which transformers loads. K2-Thinking's int4 weights (a quantization_config) are refused."""
    model = build("deepseek_v3")
    model.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | {"model_type": "kimi_k2"}))
    idx, mask = left_padded_batch(V, low=0)
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 0
    with torch.no_grad():
        ours = load_run(tmp_path / "run").model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], hf_logits_counting_real_tokens(model, idx, mask)[mask], atol=1e-4, rtol=0)
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "deepseek_v3"
    thinking = config | {"model_type": "kimi_k2", "quantization_config": {"format": "pack-quantized", "bits": 4}}
    (tmp_path / "src" / "config.json").write_text(json.dumps(thinking))
    capsys.readouterr()
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "thinking")]) == 2
    err = capsys.readouterr().err
    assert "quantization_config" in err and "Kimi K2-Thinking's int4" in err and not (tmp_path / "thinking").exists()


# ---- continuing an imported run with a component swapped -----------------------------------------


def test_an_imported_run_starts_a_training_with_a_component_swapped(tmp_path, capsys):
    """train.init_from: the weights both models have are copied (a learning rate of 1e-9 leaves them
    there after one step), Qwen3's QK-norm weights are left behind, the tokenizer is the checkpoint's."""
    src = tmp_path / "src"
    build("qwen3").save_pretrained(src)
    write_tokenizer(src)
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 0
    assert main(["describe", str(tmp_path / "run")]) == 0
    train = [
        "train",
        str(tmp_path / "run"),
        "--set",
        f"train.init_from={tmp_path / 'run'}",
        "--set",
        "train.max_steps=1",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.lr=1e-9",
        "--set",
        "train.eval_batches=1",
        "--set",
        "train.sample_tokens=0",
        "--set",
        "model.attention.qk_norm=none",
    ]
    capsys.readouterr()
    assert main(train + ["--out", str(tmp_path / "new")]) == 0
    said = capsys.readouterr()
    assert (
        "started from" in said.out + said.err
        and "left behind: blocks.0.attention.qk_norm.k_norm" in said.out + said.err
    )
    source, trained = (
        load_file(str(tmp_path / "run" / "model.safetensors")),
        load_file(str(tmp_path / "new" / "model.safetensors")),
    )
    assert sorted(trained) == sorted(n for n in source if ".qk_norm." not in n)
    for name in trained:
        torch.testing.assert_close(trained[name], source[name], atol=1e-6, rtol=0, msg=name)
    assert (tmp_path / "new" / "tokenizer.json").read_text() == (tmp_path / "run" / "tokenizer.json").read_text()
    assert json.loads((tmp_path / "new" / "config.json").read_text())["train"]["init_from"] == str(tmp_path / "run")

    assert main(train + ["--set", "model.n_kv_heads=4", "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    # (4 query + 2 × 2 kv heads) × head_dim 32 rows in the checkpoint, (4 + 2 × 4) × 32 with 4 kv heads
    assert (
        "holds blocks.0.attention.qkv.weight as (256, 64) but this config makes it (384, 64)" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "wrong" / "model.safetensors").exists()
