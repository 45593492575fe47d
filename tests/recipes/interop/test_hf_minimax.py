"""import-hf / export-hf for MiniMax-01 (minimax): parity with transformers' own models.

As tests/recipes/interop/test_hf_recurrent.py does for the Mamba-2 families, each case builds
transformers' model from a tiny random config covering the family's options, saves it, imports it
and checks: logits within 1e-4 on a left-padded batch longer than several of transformers' lightning
blocks; 20 greedy tokens through gptzoo's cache from a left-padded batch equal to transformers' generate
(row by row: see ``greedy``); export -> from_pretrained -> the same logits and the same tensors (less the decays
transformers saves and recomputes); generation past the trained context as transformers generates it,
the lightning layers' cache not growing.
"""

import pytest
from safetensors.torch import load_file

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
CONTEXT = 32  # max_position_embeddings of the tiny models: generation goes past it
DECAYS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")  # buffers transformers saves

# name -> (transformers config class, its settings)
CASES = {
    # three lightning layers to one softmax layer (MiniMax-01's 7 : 1, shorter), blocks of 5 tokens (the
    # prompts and the 24-token batch cross several), softmax GQA with 24-wide heads, 4 experts top 2,
    # residual α = 2 and β = 0.5 (DeepNet's, as MiniMax-01's α = (2 · 80)^(1/4)), untied head
    "minimax": (
        "MiniMaxConfig",
        dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            intermediate_size=40,
            num_local_experts=4,
            num_experts_per_tok=2,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            block_size=5,
            full_attn_alpha_factor=2.0,
            linear_attn_alpha_factor=2.0,
            mlp_alpha_factor=2.0,
            full_attn_beta_factor=0.5,
            linear_attn_beta_factor=0.5,
            mlp_beta_factor=0.5,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            tie_word_embeddings=False,
        ),
    ),
    # transformers' default schedule (softmax, lightning in turn), multi-query, blocks of 7, 6 experts top 3, tied head
    "minimax-tied": (
        "MiniMaxConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=24,
            num_local_experts=6,
            num_experts_per_tok=3,
            block_size=7,
            tie_word_embeddings=True,
        ),
    ),
}


def build(case: str):
    config_class, settings = CASES[case]
    config = getattr(transformers, config_class)(
        **settings | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0}
    )
    return built(config)


checkpoint = checkpoints(build, CASES)


def padded_batch():
    """Three rows, two of them left-padded: (ids, mask)."""
    return left_padded_batch(V, 24)


def greedy(model, prompts, n):
    """transformers' n greedy tokens after each prompt, row by row: decoding a left-padded batch, its MiniMax
    strays from the padded rows' own tokens after the first (which its row alone, and recomputing the whole
    text without a cache, agree on), so each row alone is the reference for gptzoo's left-padded batch."""
    return [tokens for prompt in prompts for tokens in hf_greedy(model, [prompt], n)]


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    idx, mask = padded_batch()
    prompts = [idx[0, :12].tolist(), idx[1, :3].tolist()]
    check_parity(case, folder, tmp_path, (idx, mask), hf_logits(model, idx, mask), prompts, greedy(model, prompts, 20))


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    decays = {name for name in load_file(str(folder / "model.safetensors")) if name.endswith(DECAYS)}
    config = check_same_tensors(model, folder, tmp_path, left_out=decays)
    assert decays and config["layer_types"] == model.config.layer_types
    assert (
        config["block_size"] == model.config.block_size and config["mlp_alpha_factor"] == model.config.mlp_alpha_factor
    )


def test_generation_goes_past_the_trained_context_as_transformers_does(checkpoint, tmp_path):
    """CONTEXT + 30 tokens decoded through the cache, as transformers decodes them; the lightning layers keep
    a state of the same bytes at every length, so the cache grows by the softmax layers' keys and values alone."""
    case, model, folder = checkpoint
    run = check_past_context(model, folder, tmp_path, padded_batch()[0][0, :5].tolist(), CONTEXT, greedy)
    softmax_layers = model.config.layer_types.count("full_attention")
    config = model.config
    per_token = softmax_layers * 2 * config.num_key_value_heads * (config.head_dim or 12) * 4  # keys and values, fp32
    assert costs.kv_cache_bytes(run.model, 1000) - costs.kv_cache_bytes(run.model, 100) == 900 * per_token


def test_describe_shows_the_family_assembly_and_transformers_parameter_count(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    info = described(folder, tmp_path, capsys)
    model = info["config"]["model"]
    assert info["parameters"]["total"] == hf_model.num_parameters()
    pattern = [model["layer_pattern"][i % len(model["layer_pattern"])] for i in range(model["n_layers"])]
    mixers = [(model["layer_kinds"][k].get("attention") or model["attention"])["name"] for k in pattern]
    assert mixers == [
        {"linear_attention": "lightning", "full_attention": "sdpa"}[t] for t in hf_model.config.layer_types
    ]
    assert model["block"] == {
        "name": "normed_residual",
        "stream_scale": hf_model.config.mlp_alpha_factor,
        "branch_scale": hf_model.config.mlp_beta_factor,
        "per_layer_input": None,
        "layer_scalar": False,
    }
    moe = model["feed_forward"]
    idle = (moe["n_experts"] - moe["top_k"]) * 3 * moe["hidden"] * model["d_model"]
    assert info["active_parameters_per_token"] == hf_model.num_parameters() - model["n_layers"] * idle


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for minimax'),
        (
            {"full_attn_alpha_factor": 3.0},
            "full_attn_alpha_factor = 3.0 is not supported for minimax (gptzoo's block scales the attention and the "
            "feed-forward alike: mlp_alpha_factor = 2.0)",
        ),
        ({"linear_attn_beta_factor": 1}, "linear_attn_beta_factor = 1 is not supported for minimax"),
        (
            {"layer_types": ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]},
            'layer_types = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"] is not '
            "supported: gptzoo reads 4 entries of linear_attention or full_attention",
        ),
        ({"sliding_window": 8}, "sliding_window = 8 is not supported for minimax"),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            'rope_parameters.rope_type = "dynamic" is not supported for minimax',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(change, named, tmp_path, capsys):
    check_refused(build("minimax"), tmp_path, change, named, capsys)
