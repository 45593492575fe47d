"""Gemma 4's text model against transformers' own, built tiny here with the same weights: local
layers with 2 key/value heads of 8, global layers with 1 of 16 whose keys are their values and
which rotate with proportional RoPE (a quarter of the pairs turning), the
last layers attending with the keys and values of the last earlier layer of their kind
(``kv_shared_layers``, transformers' num_kv_shared_layers), and per-layer embeddings (the
blocks' ``per_layer_input``, transformers' hidden_size_per_layer_input); with ``wide``, the sharing
layers' MLPs twice as wide (the feed-forward's ``double_wide_kv_shared``, use_double_wide_mlp) and each
layer's output scaled by its own number (the block's ``layer_scalar``, transformers' buffer of that name)."""

import pytest
import torch

from gptzoo.recipes.training import costs
from gptzoo.testing import build, check_kv_cache, check_padded_batch

transformers = pytest.importorskip("transformers")

LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"] * 2
SHARED = 3  # layers 3 and 4 (local) read layer 1, layer 5 (global) reads layer 2


def their_model(shared: int = SHARED, per_layer: int = 0, wide: bool = False):
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM

    config = Gemma4TextConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=4,
        layer_types=LAYER_TYPES,
        num_kv_shared_layers=shared,
        hidden_size_per_layer_input=per_layer,
        vocab_size_per_layer_input=50,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25},
        },
        max_position_embeddings=64,
        pad_token_id=0,
        use_double_wide_mlp=wide,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma4ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms away from 1, so a misplaced one shows
            p.add_(0.1 * torch.randn_like(p))
        if wide:  # their layer_scalar is a buffer: away from 1 too
            for layer in model.model.layers:
                layer.layer_scalar.uniform_(0.5, 1.5)
    return model


def our_config(registry, shared: int = SHARED, per_layer: int | None = None, wide: bool = False):
    attention = {"qk_norm": "per_head", "v_norm": True, "scale": 1.0}
    return registry.model_config(
        {
            "vocab_size": 50,
            "context_length": 32,
            "d_model": 32,
            "n_layers": 6,
            "n_heads": 4,
            "n_kv_heads": 2,
            "head_dim": 8,
            "attn_out_bias": False,
            "tied_head": True,
            "embedding_scale": "sqrt_d_model",
            "positional": {"name": "rope", "base": 10000.0},
            "attention": {"name": "sdpa", **attention},
            "feed_forward": {"name": "geglu", "hidden": 64, "double_wide_kv_shared": wide},
            "norm": {"name": "rmsnorm", "eps": 1e-6},
            "block": {"name": "sandwich", "per_layer_input": per_layer, "layer_scalar": wide},
            "kv_shared_layers": shared,
            "layer_kinds": {
                "local": {"attention": {"name": "sliding_window", "window": 4, **attention}},
                "global": {
                    "head_dim": 16,
                    "n_kv_heads": 1,
                    "positional": {"name": "rope", "base": 1e6, "fraction": 0.25, "proportional": True},
                    "attention": {"name": "sdpa", "shared_key_value": True, **attention},
                },
            },
            "layer_pattern": ["local", "local", "global"],
        }
    )


def their_weights(theirs, n_layers: int = 6, scalars: bool = False) -> dict:
    """transformers' Gemma 4 weights under gptzoo's names."""
    hf = {k.removeprefix("model."): v for k, v in theirs.state_dict().items()}
    ours = {"token_embedding.weight": hf["embed_tokens.weight"], "final_norm.weight": hf["norm.weight"]}
    for i in range(n_layers):
        a, b = f"layers.{i}.self_attn.", f"blocks.{i}."
        projections = [hf[a + p + ".weight"] for p in ("q_proj", "k_proj", "v_proj") if a + p + ".weight" in hf]
        ours[b + "attention.qkv.weight"] = torch.cat(projections)
        ours[b + "attention.out_proj.weight"] = hf[a + "o_proj.weight"]
        ours[b + "attention.qk_norm.q_norm"] = hf[a + "q_norm.weight"]
        if a + "k_norm.weight" in hf:
            ours[b + "attention.qk_norm.k_norm"] = hf[a + "k_norm.weight"]
        for mine, their in [("attn_norm", "input_layernorm"), ("attn_out_norm", "post_attention_layernorm")]:
            ours[b + mine + ".weight"] = hf[f"layers.{i}.{their}.weight"]
        for mine, their in [("ffn_norm", "pre_feedforward_layernorm"), ("ffn_out_norm", "post_feedforward_layernorm")]:
            ours[b + mine + ".weight"] = hf[f"layers.{i}.{their}.weight"]
        for mine, their in [("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj")]:
            ours[b + f"feed_forward.{mine}.weight"] = hf[f"layers.{i}.mlp.{their}.weight"]
        if scalars:
            ours[b + "layer_scalar"] = hf[f"layers.{i}.layer_scalar"]
        if "embed_tokens_per_layer.weight" in hf:  # their packed table and projection, sliced per layer
            P = hf[f"layers.{i}.per_layer_input_gate.weight"].size(0)
            ours[b + "per_layer_input.embedding.weight"] = hf["embed_tokens_per_layer.weight"][:, i * P : (i + 1) * P]
            ours[b + "per_layer_input.projection.weight"] = hf["per_layer_model_projection.weight"][i * P : (i + 1) * P]
            ours[b + "per_layer_input.projection_norm.weight"] = hf["per_layer_projection_norm.weight"]
            ours[b + "per_layer_input.gate.weight"] = hf[f"layers.{i}.per_layer_input_gate.weight"]
            ours[b + "per_layer_input.up.weight"] = hf[f"layers.{i}.per_layer_projection.weight"]
            ours[b + "per_layer_input.out_norm.weight"] = hf[f"layers.{i}.post_per_layer_input_norm.weight"]
    return ours


def load_theirs(registry, theirs, shared: int = SHARED, per_layer: int | None = None, wide: bool = False):
    ours = build(our_config(registry, shared, per_layer, wide))
    weights = their_weights(theirs, scalars=wide)
    weights["head.weight"] = weights["token_embedding.weight"]  # tied
    ours.load_state_dict(weights, strict=True)
    return ours


@pytest.mark.parametrize(
    "shared, per_layer, wide", [(0, None, False), (SHARED, None, False), (SHARED, 8, False), (SHARED, 8, True)]
)
@torch.no_grad()
def test_gemma4_text_model_matches_transformers(registry, shared, per_layer, wide):
    theirs = their_model(shared, per_layer or 0, wide)
    ours = load_theirs(registry, theirs, shared, per_layer, wide)
    idx = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(1))
    # output_hidden_states keeps their forward from slicing the prompt before the sharing layers, which
    # fails without per-layer inputs in transformers 5.24 (and changes nothing in the logits).
    expected = theirs(idx, output_hidden_states=True).logits
    torch.testing.assert_close(ours(idx), expected, rtol=1e-4, atol=1e-4)
    cache = ours.new_cache(2)  # decoding in pieces, past the window, gives the same logits
    steps = [ours(idx[:, :5], cache=cache)] + [ours(idx[:, t : t + 1], cache=cache) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(steps, 1), expected, rtol=1e-4, atol=1e-4)


def test_shared_layers_have_no_key_value_weights_and_no_cache(registry):
    ours, alone = build(our_config(registry)), build(our_config(registry, shared=0))
    local_kv = 32 * 2 * 8 * 2  # keys and values of a local layer
    global_k = 32 * 1 * 16  # a global layer's keys, which are its values
    norms = 2 * 8 + 16  # the readers' k_norm weights
    assert (
        costs.param_counts(alone)["attention"] - costs.param_counts(ours)["attention"]
        == 2 * local_kv + global_k + norms
    )
    # Cache per token, float32: layers 0-2 keep their own (a local window of 4, a global layer's every token).
    local, wide = 4 * 2 * 2 * 8, 4 * 2 * 1 * 16  # bytes per token: keys and values
    assert costs.kv_cache_bytes(ours, 20) == 2 * local * 4 + wide * 20
    assert costs.kv_cache_bytes(alone, 20) == 4 * local * 4 + 2 * wide * 20
    assert [layer is None for layer in ours.new_cache(1).layers] == [False] * 3 + [True] * 3


@torch.no_grad()
def test_shared_layers_cache_and_pad(registry):
    model = build(our_config(registry))
    check_kv_cache(model)
    check_padded_batch(model)


def test_shared_layers_train_the_layer_they_read(registry):
    """Without a cache (training), layer 3 attends with layer 1's keys and values: its output alone,
    its input cut from the graph, sends a gradient to layer 1's key and value weights."""
    model = build(our_config(registry)).train()
    reader = model.blocks[3].attention
    reader.register_forward_pre_hook(lambda m, args: (args[0].detach(), *args[1:]))
    outputs = []
    reader.register_forward_hook(lambda m, args, out: outputs.append(out))
    model(torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(2)))
    outputs[0].square().sum().backward()
    key_values = model.blocks[1].attention.qkv.weight.grad[32:]  # rows after the 4 query heads of 8
    assert key_values.abs().sum() > 0
    assert model.blocks[2].attention.qkv.weight.grad is None  # a global layer: nothing of it reaches layer 3


def test_shared_layers_compile_with_fullgraph(registry):
    model = build(our_config(registry))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.kv_shared_layers=6", "kv_shared_layers=6: at least one of the n_layers=6 layers must compute"),
        ("model.kv_shared_layers=5", "layer 2 (global) has no earlier layer of its kind"),
        (
            "model.layer_kinds.local.attention.name=per_head",
            "layer 3's attention 'per_head' cannot attend with another layer's keys and values",
        ),
    ],
)
def test_sharing_is_checked_at_load(registry, override, message):
    from gptzoo.core import ConfigError
    from gptzoo.recipes.config.reading import apply_overrides

    data = apply_overrides({"model": our_config(registry).model_dump(mode="json")}, [override])
    with pytest.raises(ConfigError) as err:
        registry.model_config(data["model"])
    assert message in str(err.value)


@pytest.mark.parametrize("block", ["pre_norm", "sandwich", "post_norm"])
def test_per_layer_inputs_pass_the_kit(registry, block):
    from gptzoo.testing import check_causal, check_gradients, check_separate_caches, check_state_round_trip, tiny_config

    model = build(tiny_config(registry, positional="rope", norm="rmsnorm", block={"name": block, "per_layer_input": 4}))
    check_gradients(model)
    check_state_round_trip(model)
    check_causal(model)
    with torch.no_grad():
        check_kv_cache(model)
        check_padded_batch(model)
        check_separate_caches(model)


def test_per_layer_inputs_count_their_parameters_and_compile(registry):
    from gptzoo.testing import tiny_config

    plain = build(tiny_config(registry, norm="rmsnorm"))
    model = build(tiny_config(registry, norm="rmsnorm", block={"name": "pre_norm", "per_layer_input": 4}))
    # Per layer: the table (50, 4), projection (32 -> 4), gate (32 -> 4) and up (4 -> 32); its two norms (4, 32)
    # count under norm.
    assert costs.param_counts(model)["block"] - costs.param_counts(plain)["block"] == 2 * (
        50 * 4 + 32 * 4 + 32 * 4 + 4 * 32
    )
    assert costs.param_counts(model)["norm"] - costs.param_counts(plain)["norm"] == 2 * (4 + 32)
    assert costs.flops_per_token(model)["block"] - costs.flops_per_token(plain)["block"] == 2 * 2 * (3 * 32 * 4)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()


def test_per_layer_input_is_settable_and_checked(registry):
    from gptzoo.core import ConfigError
    from gptzoo.recipes.config.reading import apply_overrides

    data = {"model": our_config(registry).model_dump(mode="json")}
    assert (
        registry.model_config(
            apply_overrides(data, ["model.block.per_layer_input=8"])["model"]
        ).block.params.per_layer_input
        == 8
    )
    with pytest.raises(ConfigError, match="block 'sandwich': per_layer_input"):
        registry.model_config(apply_overrides(data, ["model.block.per_layer_input=0"])["model"])


def test_double_wide_mlp_and_layer_scalar_count_and_pass_the_kit(registry):
    """Only the sharing layers (3, 4 and 5) widen their MLP; each block owns one scalar, starting at 1."""
    plain, wide = build(our_config(registry)), build(our_config(registry, wide=True))
    assert [b.feed_forward.gate_proj.out_features for b in wide.blocks] == [64] * 3 + [128] * 3
    assert costs.param_counts(wide)["feed_forward"] - costs.param_counts(plain)["feed_forward"] == 3 * (3 * 32 * 64)
    assert costs.param_counts(wide)["block"] - costs.param_counts(plain)["block"] == 6
    # 2 FLOPs per weight of the three extra (32 x 64) matrices, on the 3 sharing layers
    assert costs.flops_per_token(wide)["feed_forward"] - costs.flops_per_token(plain)["feed_forward"] == 3 * 2 * (
        3 * 32 * 64
    )
    assert all(b.layer_scalar.tolist() == [1.0] for b in wide.blocks)
    check_kv_cache(wide)
    check_padded_batch(wide)
    compiled = torch.compile(wide, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(compiled(idx), wide(idx))
    torch._dynamo.reset()


def test_layer_scalar_scales_the_whole_stream_and_keeps_its_dtype(registry):
    """x · s after the block, the residual included (Gemma 4 scales hidden_states, not the branches)."""
    from gptzoo.testing import tiny_config

    config = tiny_config(registry, norm="rmsnorm", block={"name": "pre_norm", "layer_scalar": True})
    block = build(config).blocks[0]
    x = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(6))
    ctx_model = build(config)
    ctx = ctx_model.attention_contexts(torch.zeros(1, 4, dtype=torch.long))[None]
    with torch.no_grad():
        unscaled = block(x, ctx)
        block.layer_scalar.fill_(0.5)
        torch.testing.assert_close(block(x, ctx), 0.5 * unscaled)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a float32 scalar leaves a bfloat16 stream bfloat16
            assert block(x.bfloat16(), ctx).dtype == torch.bfloat16
