"""import-hf / export-hf for the hybrid families of recurrent and attention layers with mixtures of experts
(Qwen3-Next and Qwen3.5's language model, Kimi Linear, Granite 4.0): parity with transformers' own models.

As tests/recipes/interop/test_hf_recurrent.py does for the Mamba-2 families, each case builds
transformers' model from a tiny random config covering the family's options, saves it, imports
it and checks: logits within 1e-4 on a left-padded batch longer than transformers' chunk of 64
tokens (the delta rule's; Granite's Mamba-2 chunks are set smaller); 20 greedy tokens through gptzoo's cache equal to transformers' generate from a left-padded
batch whose longest prompt crosses that chunk boundary; export -> from_pretrained -> the same logits
and the same tensors; generation past the trained context as transformers generates it, with a
cache that does not grow where every layer is recurrent.
"""

import json
from functools import partial

import pytest
import torch

from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training import costs

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop.hf_parity import (  # noqa: E402
    built,
    check_parity,
    check_past_context,
    check_refused,
    check_same_tensors,
    checkpoints,
    described,
    hf_greedy,
    hf_logits,
    left_padded_batch,
)

V = 320  # vocabulary of the tiny models
CONTEXT = 80  # max_position_embeddings of the tiny models: past transformers' chunk of 64; generation goes past it
CHUNK = 64  # the chunk transformers' delta rule runs in

# name -> (transformers config class, its settings, whether every layer is recurrent)
CASES = {
    # Gated DeltaNet, Gated DeltaNet (a dense SwiGLU: mlp_only_layers), Gated DeltaNet, gated attention:
    # 2 key heads shared by 4 value heads, keys 8 wide and values 6; attention GQA with 24-wide heads,
    # rotary on 6 of them; 6 experts, 2 chosen, renormalised, a shared expert of 2 experts' width; untied
    "qwen3_next": (
        "Qwen3NextConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=6,
            linear_conv_kernel_dim=4,
            num_experts=6,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            intermediate_size=40,
            mlp_only_layers=[1],
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
            tie_word_embeddings=False,
        ),
        False,
    ),
    # (Gated DeltaNet, attention) twice with experts on every second layer (decoder_sparse_step 2), multi-query
    # attention with biases (its gate's too), rotary on half of each head with linear scaling, as many key heads
    # as value heads, a 3-wide convolution, top-k weights not renormalised, tied head
    "qwen3_next-periodic": (
        "Qwen3NextConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            attention_bias=True,
            linear_num_key_heads=4,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=3,
            num_experts=4,
            num_experts_per_tok=3,
            moe_intermediate_size=8,
            shared_expert_intermediate_size=8,
            norm_topk_prob=False,
            decoder_sparse_step=2,
            intermediate_size=24,
            rope_parameters={
                "rope_type": "linear",
                "factor": 2.0,
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            },
            tie_word_embeddings=True,
        ),
        False,
    ),
    # every layer Gated DeltaNet, no experts (a SwiGLU everywhere): decodes past the context with a fixed cache
    "qwen3_next-linear": (
        "Qwen3NextConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            layer_types=["linear_attention"] * 2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            linear_num_key_heads=1,
            linear_num_value_heads=2,
            linear_key_head_dim=12,
            linear_value_head_dim=10,
            num_experts=0,
            intermediate_size=24,
            tie_word_embeddings=False,
        ),
        True,
    ),
    # Kimi Delta Attention, KDA, KDA, latent attention: a dense SwiGLU on the first layer (mlp_layer_types), then
    # 6 experts in 2 groups, 2 chosen from the best group, sigmoid scores with the choosing bias, renormalised
    # and scaled by 2; one shared expert; 2 KDA heads of 8 (not the attention's sizes); latent of 16, the
    # shared key part 8 wide, 12 + 8 query/key and 10 value features per head; untied
    "kimi_linear": (
        "KimiLinearConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            mlp_layer_types=["dense"] + ["sparse"] * 3,
            num_attention_heads=4,
            num_key_value_heads=4,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=12,
            v_head_dim=10,
            linear_num_heads=2,
            linear_head_dim=8,
            linear_conv_kernel_dim=4,
            num_local_experts=6,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.0,
            n_shared_experts=1,
            moe_intermediate_size=16,
            intermediate_size=40,
            bos_token_id=1,
            eos_token_id=2,
        ),
        False,
    ),
    # (KDA, latent attention) twice, experts everywhere, the queries through a latent of 12, a 3-wide convolution,
    # top-k weights not renormalised, two shared experts
    "kimi_linear-periodic": (
        "KimiLinearConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            mlp_layer_types=["sparse"] * 4,
            num_attention_heads=2,
            num_key_value_heads=2,
            kv_lora_rank=12,
            q_lora_rank=12,
            qk_rope_head_dim=6,
            qk_nope_head_dim=10,
            v_head_dim=8,
            linear_num_heads=4,
            linear_head_dim=6,
            linear_conv_kernel_dim=3,
            num_local_experts=4,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            n_shared_experts=2,
            moe_intermediate_size=8,
            intermediate_size=24,
            bos_token_id=1,
            eos_token_id=2,
        ),
        False,
    ),
    # every layer KDA with a SwiGLU: decodes past the context with a fixed cache
    "kimi_linear-linear": (
        "KimiLinearConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            layer_types=["linear_attention"] * 2,
            mlp_layer_types=["dense"] * 2,
            num_attention_heads=2,
            num_key_value_heads=2,
            linear_num_heads=2,
            linear_head_dim=12,
            intermediate_size=24,
            bos_token_id=1,
            eos_token_id=2,
        ),
        True,
    ),
    # Mamba-2, attention, Mamba-2, Mamba-2 without positions (Granite 4.0's "nope"): GQA with 12-wide heads;
    # 6 Mamba heads of 16 in 2 groups, chunks of 5; 4 experts, 2 chosen, beside a shared SwiGLU two experts
    # wide; every multiplier away from 1; untied
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
            num_attention_heads=4,
            num_key_value_heads=2,
            position_embedding_type="nope",
            mamba_n_heads=6,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=8,
            mamba_d_conv=3,
            mamba_chunk_size=5,
            num_local_experts=4,
            num_experts_per_tok=2,
            intermediate_size=16,
            shared_intermediate_size=32,
            embedding_multiplier=2.5,
            residual_multiplier=0.5,
            attention_multiplier=0.1,
            logits_scaling=4.0,
            tie_word_embeddings=False,
        ),
        False,
    ),
    # (Mamba-2, attention) twice, rotary with linear scaling on the attention layers, multi-query attention with
    # biases, no experts (the shared SwiGLU alone), logits_scaling 3 (1/3 is not exact), tied head
    "granitemoehybrid-rope": (
        "GraniteMoeHybridConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            num_attention_heads=4,
            num_key_value_heads=1,
            attention_bias=True,
            position_embedding_type="rope",
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=6,
            num_local_experts=0,
            shared_intermediate_size=40,
            embedding_multiplier=3.0,
            residual_multiplier=0.7,
            attention_multiplier=0.2,
            logits_scaling=3.0,
            tie_word_embeddings=True,
        ),
        False,
    ),
    # every layer Mamba-2 with experts: decodes past the context with a fixed cache
    "granitemoehybrid-mamba": (
        "GraniteMoeHybridConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            layer_types=["linear_attention"] * 2,
            num_attention_heads=2,
            mamba_n_heads=4,
            mamba_d_state=8,
            mamba_chunk_size=7,
            num_local_experts=3,
            num_experts_per_tok=2,
            intermediate_size=8,
            shared_intermediate_size=8,
            embedding_multiplier=2.0,
            residual_multiplier=0.5,
            logits_scaling=2.0,
        ),
        True,
    ),
    # Qwen3.5's language model: Qwen3-Next's layers with a SwiGLU everywhere and the Gated DeltaNet's projections
    # apart; 3 : 1 with 2 key heads shared by 4 value heads, GQA attention with 24-wide heads, untied
    "qwen3_5_text": (
        "Qwen3_5TextConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=6,
            intermediate_size=40,
            tie_word_embeddings=False,
        ),
        False,
    ),
    # (Gated DeltaNet, attention) twice, multi-query attention with biases, rotary on half of each head, tied
    "qwen3_5_text-periodic": (
        "Qwen3_5TextConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            attention_bias=True,
            linear_num_key_heads=4,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=3,
            intermediate_size=24,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
            tie_word_embeddings=True,
        ),
        False,
    ),
    # Qwen3.5-MoE's language model: 3 : 1 with 2 key heads shared by 4 value heads, 6 experts, 2 chosen, and a shared
    # expert of 2 experts' width gated by a sigmoid, GQA attention with 24-wide heads, untied
    "qwen3_5_moe_text": (
        "Qwen3_5MoeTextConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=6,
            num_experts=6,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            tie_word_embeddings=False,
        ),
        False,
    ),
    # (Gated DeltaNet, attention) twice, multi-query attention with biases, 4 experts, 3 chosen, tied
    "qwen3_5_moe_text-periodic": (
        "Qwen3_5MoeTextConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            attention_bias=True,
            linear_num_key_heads=4,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=3,
            num_experts=4,
            num_experts_per_tok=3,
            moe_intermediate_size=8,
            shared_expert_intermediate_size=8,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
            tie_word_embeddings=True,
        ),
        False,
    ),
}
MIXERS = {  # family -> its layer_types' token mixers in gptzoo
    "qwen3_next": {"linear_attention": "gated_deltanet", "full_attention": "sdpa"},
    "kimi_linear": {"linear_attention": "kimi_delta", "full_attention": "latent"},
    "granitemoehybrid": {"linear_attention": "mamba2", "full_attention": "sdpa"},
    "qwen3_5_text": {"linear_attention": "gated_deltanet", "full_attention": "sdpa"},
    "qwen3_5_moe_text": {"linear_attention": "gated_deltanet", "full_attention": "sdpa"},
}


def build(case: str):
    config_class, settings, _ = CASES[case]
    config = getattr(transformers, config_class)(
        **settings | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0}
    )
    # norms that scale by 1 + weight start at 0 in transformers; the experts' choosing bias is saved, so drawn too
    return built(config, norms_at=0.0, buffers=("e_score_correction_bias",))


checkpoint = checkpoints(build, CASES)


logits = partial(hf_logits, use_cache=False)  # transformers' logits of a whole text, without a cache


def padded_batch():
    """Three rows of CHUNK + 8 tokens, two of them left-padded (one past the chunk still): (ids, mask)."""
    return left_padded_batch(V, CHUNK + 8, pads=(5, 40))


def greedy(model, prompts, n):
    """transformers' greedy tokens, recomputing the whole text at each step where no layer is attention
    (transformers' cache then cannot tell its length)."""
    return hf_greedy(model, prompts, n, use_cache="full_attention" in model.config.layer_types)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    idx, mask = padded_batch()
    prompts = [idx[0, : CHUNK + 3].tolist(), idx[1, :3].tolist()]
    expected, tokens = logits(model, idx, mask), greedy(model, prompts, 20)
    check_parity(case, folder, tmp_path, (idx, mask), expected, prompts, tokens, logits)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    assert check_same_tensors(model, folder, tmp_path)["layer_types"] == model.config.layer_types


def test_generation_goes_past_the_trained_context_as_transformers_does(checkpoint, tmp_path):
    """CONTEXT + 30 tokens decoded through the cache, as transformers decodes them; where every layer is
    recurrent, the cache holds as many bytes for one token as for the whole text."""
    case, model, folder = checkpoint
    run = check_past_context(model, folder, tmp_path, padded_batch()[0][0, :5].tolist(), CONTEXT, greedy)
    if CASES[case][2]:
        assert run.model.bounded_cache()
        assert (
            costs.kv_cache_bytes(run.model, 1)
            == costs.kv_cache_bytes(run.model, 3 * CONTEXT)
            == costs.kv_cache_bytes(run.model, 10**4)
        )
    else:
        assert not run.model.bounded_cache()


def test_describe_shows_the_family_assembly_and_transformers_parameter_count(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    info = described(folder, tmp_path, capsys)
    model = info["config"]["model"]
    assert info["parameters"]["total"] == hf_model.num_parameters()
    pattern, n = model["layer_pattern"], model["n_layers"]
    kinds = [model["layer_kinds"][pattern[i % len(pattern)]] for i in range(n)] if pattern else [{}] * n
    mixers = [(k.get("attention") or model["attention"])["name"] for k in kinds]
    family = hf_model.config.model_type
    assert mixers == [MIXERS[family][t] for t in hf_model.config.layer_types]
    feed_forwards = [(k.get("feed_forward") or model["feed_forward"])["name"] for k in kinds]
    has_experts = [
        hasattr(getattr(layer, "mlp", None), "experts") or getattr(layer, "block_sparse_moe", None) is not None
        for layer in hf_model.model.layers
    ]
    assert feed_forwards == ["moe" if experts else "swiglu" for experts in has_experts]
    if "moe" in feed_forwards:
        moe = model["feed_forward"]
        assert (moe["scoring"], moe["shared_expert_gate"], moe["expert_bias"], moe["top_k"]) == (
            *{
                "qwen3_next": ("softmax", True, False),
                "qwen3_5_moe_text": ("softmax", True, False),
                "kimi_linear": ("sigmoid", False, True),
                "granitemoehybrid": ("softmax", False, False),
            }[family],
            hf_model.config.num_experts_per_tok,
        )
        active = info["active_parameters_per_token"]
        idle = (moe["n_experts"] - moe["top_k"]) * 3 * moe["hidden"] * model["d_model"]
        assert active == hf_model.num_parameters() - feed_forwards.count("moe") * idle
    if family.startswith("qwen3"):  # gated attention, norms scaling by 1 + weight, rotary on part of each head
        assert model["attention"]["output_gate"] == "elementwise" and model["norm"]["unit_offset"]
        assert model["positional"]["fraction"] == hf_model.config.rope_parameters["partial_rotary_factor"]
    elif family == "kimi_linear":  # no positions anywhere
        assert model["positional"]["name"] == "none" and not model["tied_head"]
    else:  # Granite's multipliers
        config = hf_model.config
        assert (model["embedding_scale"], model["block"]["branch_scale"], model["head"]["logit_scale"]) == (
            config.embedding_multiplier,
            config.residual_multiplier,
            1 / config.logits_scaling,
        )


@pytest.mark.parametrize(
    "case, change, named",
    [
        ("qwen3_next", {"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for qwen3_next'),
        (
            "qwen3_next",
            {"layer_types": ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]},
            'layer_types = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"] is not '
            "supported for qwen3_next (its sliding_attention layers are not read",
        ),
        (
            "qwen3_next",
            {"shared_expert_intermediate_size": 24},
            "shared_expert_intermediate_size = 24 is not supported for qwen3_next (gptzoo's shared expert is a "
            "whole number of experts",
        ),
        (
            "qwen3_next",
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            'rope_parameters.rope_type = "dynamic" is not supported for qwen3_next',
        ),
        ("kimi_linear", {"mla_use_nope": False}, "mla_use_nope = false is not supported for kimi_linear"),
        (
            "kimi_linear",
            {"moe_router_activation_func": "softmax"},
            'moe_router_activation_func = "softmax" is not supported for kimi_linear',
        ),
        (
            "kimi_linear",
            {"mlp_layer_types": ["dense", "sparse", "shared", "sparse"]},
            'mlp_layer_types = ["dense", "sparse", "shared", "sparse"] is not supported for kimi_linear',
        ),
        (
            "kimi_linear",
            {"num_nextn_predict_layers": 1},
            "num_nextn_predict_layers = 1 is not supported for kimi_linear",
        ),
        ("granitemoehybrid", {"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for granitemoehybrid'),
        (
            "granitemoehybrid",
            {"shared_intermediate_size": 24},
            "shared_intermediate_size = 24 is not supported for granitemoehybrid (gptzoo's shared expert is a whole",
        ),
        (
            "granitemoehybrid",
            {"layer_types": ["linear_attention", "sliding_attention", "linear_attention", "linear_attention"]},
            'layer_types = ["linear_attention", "sliding_attention", "linear_attention", "linear_attention"] is not '
            "supported for granitemoehybrid",
        ),
        (
            "granitemoehybrid",
            {"time_step_limit": [0.0, 0.5]},
            "time_step_limit = [0.0, 0.5] is not supported for granitemoehybrid",
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(case, change, named, tmp_path, capsys):
    check_refused(build(case), tmp_path, change, named, capsys)


def test_kimi_linear_reads_moonshots_own_config_json(tmp_path):
    """The published config.json is Moonshot's: 1-indexed kda_layers and full_attn_layers inside
    linear_attn_config, first_k_dense_replace, and the attribute map's other names. Rewritten so, the
    tiny checkpoint imports to the same logits (and transformers reads it as the same model)."""
    model = build("kimi_linear")
    model.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    types = config.pop("layer_types")
    moonshots = {k: v for k, v in config.items() if not k.startswith("linear_") and k != "mlp_layer_types"} | {
        "linear_attn_config": {
            "full_attn_layers": [i + 1 for i, t in enumerate(types) if t == "full_attention"],
            "kda_layers": [i + 1 for i, t in enumerate(types) if t == "linear_attention"],
            "head_dim": config["linear_head_dim"],
            "num_heads": config["linear_num_heads"],
            "short_conv_kernel_size": config["linear_conv_kernel_dim"],
        },
        "first_k_dense_replace": 1,
        "mla_use_nope": True,
        "moe_router_activation_func": "sigmoid",
        "moe_layer_freq": 1,
        "num_nextn_predict_layers": 0,
    }
    moonshots["n_group"] = moonshots.pop("num_expert_group")
    (tmp_path / "src" / "config.json").write_text(json.dumps(moonshots))
    reread = transformers.AutoConfig.from_pretrained(tmp_path / "src")
    assert (reread.layer_types, reread.mlp_layer_types) == (model.config.layer_types, model.config.mlp_layer_types)
    import_hf(tmp_path / "src", tmp_path / "run")
    idx, mask = padded_batch()
    with torch.no_grad():
        ours = load_run(tmp_path / "run").model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], logits(model, idx, mask)[mask], atol=1e-4, rtol=0)


def test_granite_reads_the_older_layers_block_type(tmp_path):
    """Granite 4.0's published config.json names its layers "mamba" and "attention" (in layers_block_type before
    transformers 5): rewritten so, the tiny checkpoint imports to the same logits."""
    model = build("granitemoehybrid")
    model.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    older = {"linear_attention": "mamba", "full_attention": "attention"}
    config["layers_block_type"] = [older[t] for t in config.pop("layer_types")]
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    import_hf(tmp_path / "src", tmp_path / "run")
    idx, mask = padded_batch()
    with torch.no_grad():
        ours = load_run(tmp_path / "run").model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], logits(model, idx, mask)[mask], atol=1e-4, rtol=0)
