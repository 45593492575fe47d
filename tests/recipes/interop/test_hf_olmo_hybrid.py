"""import-hf / export-hf for OLMo Hybrid (Gated DeltaNet layers and OLMo 3's attention layers): parity with
transformers' own models.

As tests/recipes/interop/test_hf_hybrid.py does, each case builds transformers' model from a tiny random config
covering the family's options, saves it in the published layout, imports it and checks: logits within 1e-4 on a
left-padded batch longer than transformers' chunk of 64 tokens (the delta rule's); 20 greedy tokens through
gptzoo's cache equal to transformers' generate from a left-padded batch whose longest prompt crosses that chunk
boundary; export -> from_pretrained -> the same logits and the same tensors; generation past the trained context
as transformers generates it (OLMo Hybrid always has an attention layer, so its cache grows).
"""

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.training import costs

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop.hf_parity import (  # noqa: E402
    built,
    check_parity,
    check_past_context,
    check_same_tensors,
    described,
    hf_greedy,
    hf_logits,
    left_padded_batch,
)

V = 320  # vocabulary of the tiny models
CONTEXT = 80  # max_position_embeddings of the tiny models: past transformers' chunk of 64; generation goes past it
CHUNK = 64  # the chunk transformers' delta rule runs in

CASES = {
    # Gated DeltaNet three times, then attention (transformers' default schedule): 2 key heads shared by 4 value
    # heads, keys 8 wide and values 6 (β up to 2); GQA attention with rotary; untied head
    "olmo_hybrid": dict(
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=40,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=False,
    ),
    # (attention, Gated DeltaNet) twice, multi-query attention without positions (rope_theta null), as many key
    # heads as value heads with the sizes transformers derives (keys 0.75 × d_model / heads, values twice that),
    # β in (0, 1), a 3-wide convolution, tied head
    "olmo_hybrid-nope": dict(
        hidden_size=32,
        num_hidden_layers=4,
        layer_types=["full_attention", "linear_attention"] * 2,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=24,
        linear_conv_kernel_dim=3,
        linear_allow_neg_eigval=False,
        rope_parameters={"rope_type": "default", "rope_theta": None},
        tie_word_embeddings=True,
    ),
}


def build(case: str):
    config = transformers.OlmoHybridConfig(
        **CASES[case] | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0, "eos_token_id": 1}
    )
    # transformers starts norms at 1: randomise all; weights of 0.2 (not 0.3) keep the activations, which the norms'
    # plain weights do not shrink, small enough that float32 rounding stays far below 1e-4 in the logits
    return built(config, scale=0.2)


def save_published(model, folder):
    """save_pretrained, with the Gated DeltaNet's convolution cut as the published checkpoints cut it: queries',
    keys' and values' channels (transformers writes three equal thirds, which differ where values are wider)."""
    model.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer, "linear_attn"):
            attn = layer.linear_attn
            parts = attn.conv1d.weight.detach().split([attn.key_dim, attn.key_dim, attn.value_dim])
            for p, part in zip("qkv", parts, strict=True):
                weights[f"model.layers.{i}.linear_attn.{p}_conv1d.weight"] = part.contiguous()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    model = build(request.param)
    folder = tmp_path_factory.mktemp("hf") / request.param
    save_published(model, folder)
    reread = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert all(
        torch.equal(a, b) for a, b in zip(reread.state_dict().values(), model.state_dict().values(), strict=True)
    )
    return request.param, model, folder


def padded_batch():
    """Three rows of CHUNK + 8 tokens, two of them left-padded (one past the chunk still): (ids, mask)."""
    return left_padded_batch(V, CHUNK + 8, pads=(5, 40), low=2)


logits = partial(hf_logits, use_cache=False)  # transformers' logits of a whole text, without a cache


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    idx, mask = padded_batch()
    prompts = [idx[0, : CHUNK + 3].tolist(), idx[1, :3].tolist()]
    check_parity(
        case, folder, tmp_path, (idx, mask), logits(model, idx, mask), prompts, hf_greedy(model, prompts, 20), logits
    )


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    _, model, folder = checkpoint
    config = check_same_tensors(model, folder, tmp_path)
    assert (config["model_type"], config["layer_types"]) == ("olmo_hybrid", model.config.layer_types)
    assert config["rope_parameters"]["rope_theta"] == model.config.rope_parameters["rope_theta"]


def test_generation_goes_past_the_trained_context_as_transformers_does(checkpoint, tmp_path):
    """CONTEXT + 30 tokens decoded through the cache, as transformers decodes them; the attention layers' keys
    and values grow with the text, the Gated DeltaNet's state does not."""
    case, model, folder = checkpoint
    run = check_past_context(model, folder, tmp_path, padded_batch()[0][0, :5].tolist(), CONTEXT, hf_greedy)
    config = model.config
    attention_layers = config.layer_types.count("full_attention")
    head_dim = config.hidden_size // config.num_attention_heads
    per_token = attention_layers * 2 * config.num_key_value_heads * head_dim * 4  # keys and values, fp32
    assert costs.kv_cache_bytes(run.model, 1000) - costs.kv_cache_bytes(run.model, 100) == 900 * per_token


def test_describe_shows_the_layers_and_transformers_parameter_count(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    info = described(folder, tmp_path, capsys)
    model, config = info["config"]["model"], hf_model.config
    assert info["parameters"]["total"] == hf_model.num_parameters()
    pattern, n = model["layer_pattern"], model["n_layers"]
    kinds = [model["layer_kinds"][pattern[i % len(pattern)]] for i in range(n)]
    layers = [
        (
            (k.get("attention") or model["attention"])["name"],
            (k.get("block") or model["block"])["name"],
            (k.get("positional") or model["positional"])["name"],
        )
        for k in kinds
    ]
    rotary = "rope" if config.rope_parameters["rope_theta"] is not None else "none"
    assert layers == [
        ("gated_deltanet", "pre_norm", "none") if t == "linear_attention" else ("sdpa", "sublayer_output_norm", rotary)
        for t in config.layer_types
    ]
    deltanet = model["layer_kinds"]["linear"]["attention"]
    assert (deltanet["head_k_dim"], deltanet["head_v_dim"], deltanet["allow_neg_eigval"]) == (
        config.linear_key_head_dim,
        config.linear_value_head_dim,
        config.linear_allow_neg_eigval,
    )
    assert model["attention"]["qk_norm"] == "across_heads"


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for olmo_hybrid'),
        ({"attention_bias": True}, "attention_bias = true is not supported for olmo_hybrid"),
        (
            {"layer_types": ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]},
            'layer_types = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"] is not '
            "supported for olmo_hybrid",
        ),
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            'rope_parameters.rope_type = "dynamic" is not supported for olmo_hybrid',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(change, named, tmp_path, capsys):
    save_published(build("olmo_hybrid"), tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | change))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
