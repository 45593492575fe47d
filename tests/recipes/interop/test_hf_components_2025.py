"""import-hf / export-hf for the families built from 2025's components (attention sinks, gpt-oss's experts, values
narrower than keys, key/value heads per kind of layer): parity
with transformers' own models, as tests/recipes/interop/test_hf.py checks the older families.

Each case builds transformers' model from a tiny random config covering the family's options, saves it with
save_pretrained, imports it and checks: logits within 1e-4 on a batch with left padding, 20 greedy tokens through
gptzoo's KV cache equal to transformers' generate, export -> from_pretrained -> the same logits, import -> export
giving back the same tensors, and transformers' parameter count.
"""

import pytest
import torch

from gptzoo.recipes.interop.hf.export import export_hf

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop import hf_parity as parity  # noqa: E402

ATTENTION = ["sdpa", "fused", "per_head"]
V = 320  # vocabulary of the tiny models
DECODER = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)

# name -> (transformers config class, its settings, the attention variants the assembly can use)
CASES = {
    # gpt-oss: windowed (6 keys) and full layers in turn over 3 layers (the pattern wraps), sinks, GQA, 24-wide
    # heads, attention biases, 5 experts top 2 with biases and the clamped SwiGLU, YaRN without truncation, untied
    "gpt_oss": (
        "GptOssConfig",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=24,
            sliding_window=6,
            num_local_experts=5,
            num_experts_per_tok=2,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 16,
            },
            pad_token_id=0,
        ),
        ATTENTION,
    ),
    # full layers only, multi-query, no attention biases, a tighter clamp (limit 2, slope 1), 4 experts top 3,
    # unscaled rotary, tied head
    "gpt_oss-tied": (
        "GptOssConfig",
        dict(
            layer_types=["full_attention", "full_attention"],
            num_key_value_heads=1,
            head_dim=16,
            attention_bias=False,
            swiglu_limit=2.0,
            swiglu_alpha=1.0,
            num_local_experts=4,
            num_experts_per_tok=3,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            pad_token_id=0,
        ),
        ATTENTION,
    ),
    # MiMo-V2-Flash: one full layer, then two windowed (6 keys) with sinks and twice the key/value heads (1 -> 2),
    # 24-wide query/key heads and 16-wide values scaled by 0.707, a rotary per kind on part of each head (half at
    # 1e5 on the full layer, 0.334 at 1e4 on the windowed), q/k/v biases, a dense first layer, then 6 experts in
    # 2 groups, top 2 from the best group by sigmoid scores with the bias for choosing, scaled by 2, untied
    "mimo_v2_flash": (
        "MiMoV2FlashConfig",
        dict(
            num_hidden_layers=3,
            num_key_value_heads=1,
            head_dim=24,
            v_head_dim=16,
            sliding_window=6,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            attention_bias=True,
            moe_intermediate_size=20,
            n_routed_experts=6,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.0,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1e5, "partial_rotary_factor": 0.5},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.334},
            },
            pad_token_id=0,
        ),
        ["sdpa", "fused"],  # per_head gives values the head size
    ),
    # windowed layers first and last around a full one (GQA 2 -> 4 on the windowed), experts in every layer
    # (mlp_layer_types all sparse), no value scale (null), 4 experts top 2 unnormalised, tied head
    "mimo_v2_flash-tied": (
        "MiMoV2FlashConfig",
        dict(
            num_key_value_heads=2,
            head_dim=18,  # its default rotary's 0.334 of 18: 6 dimensions
            v_head_dim=8,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            mlp_layer_types=["sparse"] * 3,
            num_hidden_layers=3,
            attention_value_scale=None,
            moe_intermediate_size=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            tie_word_embeddings=True,
            pad_token_id=0,
        ),
        ["sdpa", "fused"],
    ),
}


def build(case: str):
    """transformers' model for ``case``, randomised (MiMo's bias for choosing experts too)."""
    config_class, settings, _ = CASES[case]
    config = getattr(transformers, config_class)(**DECODER | settings, attn_implementation="eager")
    return parity.built(config, buffers=("e_score_correction_bias",), buffer_scale=0.1)


checkpoint = parity.checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    parity.check_parity_of(model, case, folder, tmp_path, parity.hf_logits_counting_real_tokens, CASES[case][2], low=0)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    _, model, folder = checkpoint
    parity.check_same_tensors(model, folder, tmp_path)


def test_describe_shows_the_family_assembly_and_transformers_parameter_count(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    model = parity.described(folder, tmp_path, capsys, hf_model)["config"]["model"]
    if case.startswith("gpt_oss"):
        ffn = model["feed_forward"]
        assert (ffn["name"], ffn["activation"], ffn["router_bias"], ffn["expert_biases"]) == (
            "moe",
            "clamped_swiglu",
            True,
            True,
        )
        assert model["attention"]["sinks"]
    if case == "gpt_oss":  # windowed layers with sinks, then full ones; YaRN whose ramp is not rounded
        assert model["layer_pattern"] == ["sliding", "full"]
        assert (
            model["layer_kinds"]["sliding"]["attention"] | {"sinks": True}
            == model["layer_kinds"]["sliding"]["attention"]
        )
        assert model["layer_kinds"]["sliding"]["attention"]["window"] == 6
        assert (model["positional"]["scaling"]["type"], model["positional"]["scaling"]["truncate"]) == ("yarn", False)
    if case == "gpt_oss-tied":
        assert not model.get("layer_pattern") and (model["qkv_bias"], model["attn_out_bias"]) == (False, False)
        assert (model["feed_forward"]["swiglu_limit"], model["feed_forward"]["swiglu_alpha"]) == (2.0, 1.0)
    if case == "mimo_v2_flash":  # windowed kinds with sinks and twice the key/value heads, a dense first layer
        assert model["layer_pattern"] == ["full_dense", "sliding_moe", "sliding_moe"]
        sliding = model["layer_kinds"]["sliding_moe"]
        assert (sliding["n_kv_heads"], sliding["attention"]["sinks"], sliding["attention"]["window"]) == (2, True, 6)
        assert (model["attention"]["v_head_size"], model["attention"]["value_scale"]) == (16, 0.707)
        assert (model["positional"]["base"], sliding["positional"]["base"]) == (1e5, 1e4)
        assert (model["feed_forward"]["scoring"], model["feed_forward"]["n_groups"]) == ("sigmoid", 2)
    if case == "mimo_v2_flash-tied":
        assert model["layer_pattern"] == ["sliding_moe", "full_moe"]  # the pattern wraps
        assert model["attention"]["value_scale"] == 1.0 and model["tied_head"]


# case -> its options gptzoo does not implement, each refused naming the key and the value
REFUSED = {
    "gpt_oss": [
        (
            {"layer_types": ["sliding_attention", "chunked_attention", "full_attention"]},
            'layer_types = ["sliding_attention", "chunked_attention", "full_attention"] is not supported: '
            "gptzoo reads 3 entries of sliding_attention or full_attention",
        ),
        ({"sliding_window": None}, "sliding_window = null is not supported for gpt_oss"),
        (
            {"quantization_config": {"quant_method": "mxfp4"}},
            'quantization_config = {"quant_method": "mxfp4"} is not supported for gpt_oss',
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for gpt_oss',
        ),
    ],
    "mimo_v2_flash": [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for mimo_v2_flash (the SwiGLU feed-forward'),
        (
            {"mlp_layer_types": ["dense", "sparse", "shared"]},
            'mlp_layer_types = ["dense", "sparse", "shared"] is not supported: gptzoo reads 3 entries of dense or sparse',
        ),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}},
            'rope_parameters.full_attention.rope_type = "yarn" is not supported for mimo_v2_flash',
        ),
        ({"sliding_window": None}, "sliding_window = null is not supported for mimo_v2_flash"),
        (
            {"quantization_config": {"quant_method": "fp8"}},
            'quantization_config = {"quant_method": "fp8"} is not supported for mimo_v2_flash',
        ),
    ],
}


@pytest.mark.parametrize(
    "case, change, named", [(case, change, named) for case, rows in REFUSED.items() for change, named in rows]
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(case, change, named, tmp_path, capsys):
    parity.check_refused(build(case), tmp_path, change, named, capsys)


def test_the_gpt_oss_style_config_exports_as_gpt_oss_and_transformers_computes_it(tmp_path, registry):
    """configs/gpt-oss-style.toml, built in gptzoo with random weights, is gpt-oss's assembly: export-hf writes it as
    gpt_oss and transformers' GptOssForCausalLM gives its logits, windows and sinks included."""
    from pathlib import Path

    from gptzoo.core import GPT
    from gptzoo.recipes.config.schema import load_run_config
    from gptzoo.recipes.runs.folder import save_run

    config = load_run_config(
        Path(__file__).resolve().parents[3] / "configs" / "gpt-oss-style.toml",
        ["model.tokenizer.name=byte", "model.vocab_size=257"],
        registry,
    )
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    with torch.no_grad():  # sinks and biases start at 0: randomise them so their mapping shows
        for name, p in model.named_parameters():
            if name.endswith(("sinks", "bias")):
                p.copy_(0.3 * torch.randn_like(p))
    save_run(tmp_path / "run", config, model, config.model.tokenizer.build(), registry)
    family, data = export_hf(tmp_path / "run", tmp_path / "out", registry)
    assert family.model_type == "gpt_oss" and data["layer_types"] == ["sliding_attention", "full_attention"] * 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    idx = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(0))  # longer than the window of 16
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, model(idx), atol=1e-4, rtol=0)
