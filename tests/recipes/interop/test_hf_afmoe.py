"""import-hf / export-hf for AFMoE (Arcee's Trinity): parity with transformers' own models.

As tests/recipes/interop/test_hf.py does for the attention families, each case builds transformers' model from a
tiny random config covering the family's options (windowed layers with rotary and global layers without
positions, windows shorter than the inputs, gated attention with QK-norm, a norm before and after each sublayer,
dense layers then experts with a choosing bias and shared experts), saves it, imports it and checks: logits
within 1e-4 on a left-padded batch; 20 greedy tokens through gptzoo's cache equal to transformers' generate from
a left-padded batch; export -> from_pretrained -> the same logits and the same tensors.
"""

from functools import partial

import pytest

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop import hf_parity as parity  # noqa: E402

V = 320  # vocabulary of the tiny models
CONTEXT = 64  # max_position_embeddings of the tiny models

CASES = {
    # (windowed, global) twice with a window of 6, GQA with 12-wide heads; a SwiGLU on the first layer
    # (num_dense_layers 1), then 6 experts of which 2 are chosen with the choosing bias, renormalised and scaled
    # by 2.5, beside one shared expert; the embedding scaled by √d_model (mup_enabled); untied head
    "afmoe": dict(
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        global_attn_every_n_layers=2,
        sliding_window=6,
        num_dense_layers=1,
        intermediate_size=40,
        moe_intermediate_size=16,
        num_experts=6,
        num_experts_per_tok=2,
        num_shared_experts=1,
        route_scale=2.5,
        mup_enabled=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=False,
    ),
    # three windowed layers of 5 to one global, multi-query attention with 10-wide heads (not hidden / heads),
    # experts from the first layer on, 4 of which 3 are chosen, two shared experts, linear rope scaling, tied head
    "afmoe-periodic": dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=10,
        global_attn_every_n_layers=4,
        sliding_window=5,
        num_dense_layers=0,
        moe_intermediate_size=8,
        num_experts=4,
        num_experts_per_tok=3,
        num_shared_experts=2,
        rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
        tie_word_embeddings=True,
    ),
}


def build(case: str):
    config = transformers.AfmoeConfig(
        **CASES[case] | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0}
    )
    return parity.built(config)  # the router and the choosing bias (parameters in transformers) randomised too


checkpoint = parity.checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    # three rows of 24 tokens (four windows), two of them left-padded
    parity.check_parity_of(
        model, case, folder, tmp_path, partial(parity.hf_logits, use_cache=False), prompt_lengths=(9, 3)
    )


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    config = parity.check_same_tensors(model, folder, tmp_path)
    assert (config["layer_types"], config["num_dense_layers"], config["mup_enabled"]) == (
        model.config.layer_types,
        model.config.num_dense_layers,
        model.config.mup_enabled,
    )


def test_describe_shows_the_layers_and_transformers_parameter_counts(checkpoint, tmp_path, capsys):
    """Windowed layers with rotary and global ones without positions, dense layers then experts, as transformers
    builds them; the total is transformers' count less the choosing biases (parameters there, buffers here),
    and active per token the total less each mixture's idle experts."""
    case, hf_model, folder = checkpoint
    info = parity.described(folder, tmp_path, capsys)
    model, config = info["config"]["model"], hf_model.config
    pattern, n = model["layer_pattern"], model["n_layers"]
    kinds = [model["layer_kinds"][pattern[i % len(pattern)]] for i in range(n)]
    layers = [
        (
            (k.get("attention") or model["attention"])["name"],
            (k.get("positional") or model["positional"])["name"],
            (k.get("feed_forward") or model["feed_forward"])["name"],
        )
        for k in kinds
    ]
    assert layers == [
        (
            "sliding_window" if t == "sliding_attention" else "sdpa",
            "rope" if t == "sliding_attention" else "none",
            "moe" if layer.moe_enabled else "swiglu",
        )
        for t, layer in zip(config.layer_types, hf_model.model.layers, strict=True)
    ]
    attention = model["attention"]
    assert (attention["qk_norm"], attention["output_gate"], model["block"]["name"]) == (
        "per_head",
        "elementwise",
        "sandwich",
    )
    moe = model["feed_forward"]
    assert (moe["scoring"], moe["expert_bias"], moe["routed_scale"], moe["n_shared_experts"]) == (
        "sigmoid",
        True,
        config.route_scale,
        config.num_shared_experts,
    )
    mixtures = sum(layer.moe_enabled for layer in hf_model.model.layers)
    assert info["parameters"]["total"] == hf_model.num_parameters() - mixtures * config.num_experts
    idle = (config.num_experts - config.num_experts_per_tok) * 3 * config.moe_intermediate_size * config.hidden_size
    assert info["active_parameters_per_token"] == info["parameters"]["total"] - mixtures * idle


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for afmoe'),
        ({"attention_bias": True}, "attention_bias = true is not supported for afmoe"),
        ({"score_func": "softmax"}, 'score_func = "softmax" is not supported for afmoe'),
        ({"route_norm": False}, "route_norm = false is not supported for afmoe"),
        ({"n_group": 2}, "n_group = 2 is not supported for afmoe"),
        ({"num_shared_experts": 0}, "num_shared_experts = 0 is not supported for afmoe"),
        (
            {"layer_types": ["sliding_attention", "chunked_attention", "sliding_attention", "full_attention"]},
            'layer_types = ["sliding_attention", "chunked_attention", "sliding_attention", "full_attention"] is not '
            "supported for afmoe",
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            'rope_parameters.rope_type = "dynamic" is not supported for afmoe',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(change, named, tmp_path, capsys):
    parity.check_refused(build("afmoe"), tmp_path, change, named, capsys)
