"""import-hf / export-hf for LFM2-MoE (LFM2's gated short convolutions and attention layers, the first
num_dense_layers with a SwiGLU and the rest with sigmoid-scored experts): parity with transformers' own models.

As tests/recipes/interop/test_hf_hybrid.py does, each case builds transformers' model from a tiny random config
covering the family's options, saves it, imports it and checks: logits within 1e-4 on a left-padded batch; 20
greedy tokens through gptzoo's cache equal to transformers' generate from a left-padded batch; export ->
from_pretrained -> the same logits and the same tensors; generation past the trained context as transformers
generates it, with a cache that does not grow where every layer is a convolution.
"""

from functools import partial

import pytest

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
CONTEXT = 48  # max_position_embeddings of the tiny models: generation goes past it

# name -> (its settings, whether every layer is a convolution)
CASES = {
    # convolution (a SwiGLU: num_dense_layers 1), attention, convolution, convolution, each with 6 experts of which
    # 2 are chosen with the choosing bias, renormalised and scaled by 2; GQA with QK-norm per head; tied head
    "lfm2_moe": (
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            layer_types=["conv", "full_attention", "conv", "conv"],
            num_dense_layers=1,
            intermediate_size=40,
            moe_intermediate_size=16,
            num_experts=6,
            num_experts_per_tok=2,
            routed_scaling_factor=2.0,
            conv_L_cache=3,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=True,
        ),
        False,
    ),
    # (attention, convolution) twice after two dense layers, multi-query, a 4-wide convolution, no choosing bias,
    # top-k weights not renormalised, 4 experts of which 3 are chosen, linear rope scaling, untied head
    "lfm2_moe-periodic": (
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            layer_types=["full_attention", "conv"] * 2,
            num_dense_layers=2,
            intermediate_size=24,
            moe_intermediate_size=8,
            num_experts=4,
            num_experts_per_tok=3,
            use_expert_bias=False,
            norm_topk_prob=False,
            conv_L_cache=4,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
            tie_word_embeddings=False,
        ),
        False,
    ),
    # every layer a convolution with experts: decodes past the context with a fixed cache
    "lfm2_moe-conv": (
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            layer_types=["conv"] * 2,
            num_dense_layers=0,
            moe_intermediate_size=8,
            num_experts=3,
            num_experts_per_tok=2,
        ),
        True,
    ),
}


def build(case: str):
    settings, _ = CASES[case]
    config = transformers.Lfm2MoeConfig(
        **settings | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0}
    )
    return built(config, buffers=("expert_bias",))


checkpoint = checkpoints(build, CASES)


def padded_batch():
    """Three rows of 40 tokens, two of them left-padded: (ids, mask)."""
    return left_padded_batch(V, 40, pads=(5, 19))


def greedy(model, prompts, n):
    """transformers' greedy tokens, recomputing the whole text at each step where no layer is attention
    (transformers' cache then cannot tell its length)."""
    return hf_greedy(model, prompts, n, use_cache="full_attention" in model.config.layer_types)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    idx, mask = padded_batch()
    prompts = [idx[0, :11].tolist(), idx[1, :3].tolist()]
    logits = partial(hf_logits, use_cache=False)
    check_parity(
        case, folder, tmp_path, (idx, mask), logits(model, idx, mask), prompts, greedy(model, prompts, 20), logits
    )


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    config = check_same_tensors(model, folder, tmp_path)
    assert (config["layer_types"], config["num_dense_layers"]) == (
        model.config.layer_types,
        model.config.num_dense_layers,
    )


def test_generation_goes_past_the_trained_context_as_transformers_does(checkpoint, tmp_path):
    """CONTEXT + 30 tokens decoded through the cache, as transformers decodes them; where every layer is a
    convolution, the cache holds as many bytes for one token as for the whole text."""
    case, model, folder = checkpoint
    run = check_past_context(model, folder, tmp_path, padded_batch()[0][0, :5].tolist(), CONTEXT, greedy)
    assert run.model.bounded_cache() == CASES[case][1]
    if CASES[case][1]:
        assert (
            costs.kv_cache_bytes(run.model, 1)
            == costs.kv_cache_bytes(run.model, 3 * CONTEXT)
            == costs.kv_cache_bytes(run.model, 10**4)
        )


def test_describe_shows_the_layers_and_transformers_parameter_counts(checkpoint, tmp_path, capsys):
    """Each layer's mixer and feed-forward as transformers builds them; the total is transformers' count, and
    active per token the total less each mixture's idle experts."""
    case, hf_model, folder = checkpoint
    info = described(folder, tmp_path, capsys)
    model = info["config"]["model"]
    pattern, n = model["layer_pattern"], model["n_layers"]
    kinds = [model["layer_kinds"][pattern[i % len(pattern)]] for i in range(n)]
    mixers = [(k.get("attention") or model["attention"])["name"] for k in kinds]
    assert mixers == ["short_conv" if t == "conv" else "sdpa" for t in hf_model.config.layer_types]
    feed_forwards = [(k.get("feed_forward") or model["feed_forward"])["name"] for k in kinds]
    assert feed_forwards == [
        "moe" if hasattr(layer.feed_forward, "experts") else "swiglu" for layer in hf_model.model.layers
    ]
    config, moe = hf_model.config, model["feed_forward"]
    assert (moe["scoring"], moe["expert_bias"], moe["normalize_top_k"], moe["routed_scale"], moe["top_k"]) == (
        "sigmoid",
        config.use_expert_bias,
        config.norm_topk_prob,
        config.routed_scaling_factor,
        config.num_experts_per_tok,
    )
    assert info["parameters"]["total"] == hf_model.num_parameters()
    idle = (config.num_experts - config.num_experts_per_tok) * 3 * config.moe_intermediate_size * config.hidden_size
    assert info["active_parameters_per_token"] == hf_model.num_parameters() - feed_forwards.count("moe") * idle


@pytest.mark.parametrize(
    "change, named",
    [
        ({"conv_bias": True}, "conv_bias = true is not supported for lfm2_moe (gptzoo's short_conv has no biases"),
        (
            {"layer_types": ["conv", "sliding_attention", "conv", "conv"]},
            'layer_types = ["conv", "sliding_attention", "conv", "conv"] is not supported',
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            'rope_parameters.rope_type = "dynamic" is not supported for lfm2_moe',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(change, named, tmp_path, capsys):
    check_refused(build("lfm2_moe"), tmp_path, change, named, capsys)
