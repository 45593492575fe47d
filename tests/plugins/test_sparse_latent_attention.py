"""DeepSeek Sparse Attention (sparse_latent) against transformers' DeepSeek-V3.2 and GLM-5 attention on
random weights, against a loop over queries written from the paper's definition, and its cache, sizes,
indexer loss and compiled form against the formulas.

Which keys a query attends to, by the paper (DeepSeek-V3.2, §2.1): query t's top-k keys by index score
I(t, s) among the keys s ≤ t. transformers 5.24's cached decoding and its full forward choose differently
when k is smaller than the row: both take the top-k of exactly those scores, but where scores are equal
(ReLU's zeros: a key no index head scores above 0) they leave the choice to torch.topk, whose order among
equal values changes with the row's length (12 keys in the full forward, t + 1 when decoding). So neither
side is wrong where scores differ, and where they tie the paper does not say which key wins. gptzoo gives
ties (at 12 significant bits) to the earlier key, which no row length changes: its cached decoding equals its own full forward with
ties (``test_cached_decoding_chooses_as_the_full_forward_even_with_ties``), and equals transformers' both
sides where there are none (``test_sparse_attention_matches_transformers``).
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import AttentionContext, ComponentSpec, ConfigError, Dims, GptzooError
from gptzoo.recipes.training import costs
from gptzoo.testing import build, check_component, tiny_config

C, NH, DR, DN, DV, R, RQ, H, D, TOPK = 48, 4, 8, 12, 10, 20, 24, 3, 16, 4
DIMS = Dims(
    vocab_size=50, context_length=64, d_model=C, n_heads=NH, n_kv_heads=NH, n_layers=1, head_dim=DR, attn_out_bias=False
)
SIZES = dict(
    q_lora_rank=RQ, kv_lora_rank=R, qk_nope_head_dim=DN, v_head_dim=DV, index_topk=TOPK, index_heads=H, index_head_dim=D
)


def sparse(registry, **params):
    torch.manual_seed(0)
    spec = ComponentSpec.resolve("attention", {"name": "sparse_latent", **SIZES, **params}, registry)
    module = spec.build(DIMS).eval()
    with torch.no_grad():  # norms away from 1 and the LayerNorm's bias away from 0, so each shows
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    return module


def rope(registry, layout="interleaved"):
    return ComponentSpec.resolve("positional", {"name": "rope", "base": 10000.0, "layout": layout}, registry).build(
        DIMS
    )


def context(registry, T, layout="interleaved", offset=0, positions=None, valid=None):
    q_positions = torch.arange(offset, offset + T)[None] if positions is None else positions[:, offset:]
    k_positions = torch.arange(offset + T)[None] if positions is None else positions
    return AttentionContext(rope(registry, layout), q_positions, k_positions, offset=offset, key_valid=valid)


@pytest.mark.parametrize("family", ["deepseek_v32", "glm_moe_dsa"])
@torch.no_grad()
def test_sparse_attention_matches_transformers(registry, family):
    """DeepSeek-V3.2's indexer rotates halves, GLM-5's interleaved pairs; both attentions interleaved pairs."""
    transformers = pytest.importorskip("transformers")
    from transformers.masking_utils import causal_mask_function, eager_mask

    module_name, prefix, layout = {
        "deepseek_v32": ("deepseek_v32", "DeepseekV32", "halves"),
        "glm_moe_dsa": ("glm_moe_dsa", "GlmMoeDsa", "interleaved"),
    }[family]
    hf_module = getattr(transformers.models, module_name)
    config = getattr(transformers, f"{prefix}Config")(
        hidden_size=C,
        num_attention_heads=NH,
        num_key_value_heads=NH,
        q_lora_rank=RQ,
        kv_lora_rank=R,
        qk_nope_head_dim=DN,
        qk_rope_head_dim=DR,
        v_head_dim=DV,
        index_topk=TOPK,
        index_n_heads=H,
        index_head_dim=D,
        num_hidden_layers=1,
    )
    config._attn_implementation = "eager"
    modeling = getattr(hf_module, f"modeling_{module_name}")
    torch.manual_seed(1)
    hf = getattr(modeling, f"{prefix}Attention")(config, layer_idx=0).eval()
    for name, p in hf.named_parameters():
        p.copy_(
            (1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p)
            if "norm" in name
            else 0.3 * torch.randn_like(p)
        )
    T = 12
    x = torch.randn(2, T, C)
    cos_sin = getattr(modeling, f"{prefix}RotaryEmbedding")(config)(x, torch.arange(T)[None])
    expected = hf(
        x,
        position_embeddings=cos_sin,
        attention_mask=eager_mask(1, T, T, mask_function=causal_mask_function, dtype=torch.float32),
    )[0]

    module = sparse(registry, index_rope_layout=layout)
    module.load_state_dict({key.replace("o_proj", "out_proj"): value for key, value in hf.state_dict().items()})
    ctx = context(registry, T)
    # No ties at the k-th place: where scores tie, the paper leaves the choice open (see the docstring).
    q_input = module.q_a_layernorm(module.q_a_proj(x))
    scores = module.index_scores(x, *module.index_queries_and_keys(x, q_input, ctx))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    ranked = scores.masked_fill(~causal, float("-inf")).sort(-1, descending=True).values
    assert (ranked[:, TOPK:, TOPK - 1] > ranked[:, TOPK:, TOPK]).all()
    torch.testing.assert_close(module(x, ctx), expected, atol=1e-5, rtol=1e-4)


def paper_loop(module, x, layout):
    """The layer written query by query from DeepSeek-V3.2's equations (indexer, top-k among keys s ≤ t, MLA
    over them), ties to the earlier key; rotary applied to features by hand, pairs as ``layout`` says."""
    B, T, _ = x.shape
    ind, H = module.indexer, module.params.index_heads

    def turn(v, pairs):  # v (..., T, d): rotate the first DR features by position, base 1e4
        inv = 1.0 / 10000 ** (torch.arange(0, DR, 2).double() / DR)
        angle = (torch.arange(T).double()[:, None] * inv).float()  # (T, DR/2)
        cos, sin = angle.cos(), angle.sin()
        r = v[..., :DR]
        a, b = (r[..., 0::2], r[..., 1::2]) if pairs == "interleaved" else r.chunk(2, dim=-1)
        ra, rb = a * cos - b * sin, a * sin + b * cos
        turned = torch.stack([ra, rb], -1).flatten(-2) if pairs == "interleaved" else torch.cat([ra, rb], -1)
        return torch.cat([turned, v[..., DR:]], dim=-1)

    c_q = module.q_a_layernorm(module.q_a_proj(x))
    q = module.q_b_proj(c_q).view(B, T, NH, DN + DR).transpose(1, 2)  # (B, nh, T, dn + dr)
    q = torch.cat([q[..., :DN], turn(q[..., DN:], "interleaved")], dim=-1)
    latent, k_rot = module.kv_a_proj_with_mqa(x).split([R, DR], dim=-1)
    k_nope, v = module.kv_b_proj(module.kv_a_layernorm(latent)).view(B, T, NH, DN + DV).split([DN, DV], dim=-1)
    k = torch.cat([k_nope.transpose(1, 2), turn(k_rot, "interleaved")[:, None].expand(B, NH, T, DR)], dim=-1)
    v = v.transpose(1, 2)
    iq = turn(ind.wq_b(c_q).view(B, T, H, D).transpose(1, 2), layout)  # (B, H, T, D)
    ik = turn(ind.k_norm(ind.wk(x)), layout)  # (B, T, D)
    w = ind.weights_proj(x) / math.sqrt(H)  # (B, T, H)
    out = torch.zeros(B, NH, T, DV)
    for b in range(B):
        for t in range(T):
            index = [
                sum(w[b, t, j] * F.relu(iq[b, j, t] @ ik[b, s] / math.sqrt(D)) for j in range(H)) for s in range(t + 1)
            ]
            keys = sorted(range(t + 1), key=lambda s: (-float(index[s]), s))[:TOPK]
            logits = (q[b, :, t, None] @ k[b, :, keys].transpose(-1, -2)).squeeze(1) * module.scale  # (nh, k)
            p = torch.softmax(logits, dim=-1)
            out[b, :, t] = (p.unsqueeze(-1) * v[b, :, keys]).sum(-2)
    return module.out_proj(out.transpose(1, 2).reshape(B, T, NH * DV)), index


def tied(registry, layout="halves"):
    """One index head whose scores are mostly ReLU's zeros: ties at the k-th place in most rows."""
    module = sparse(registry, index_heads=1, index_rope_layout=layout)
    with torch.no_grad():
        module.indexer.k_norm.bias.fill_(-0.8)  # keys mostly negative, so most q·k fall below 0
        module.indexer.weights_proj.weight.abs_()
    return module


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
@torch.no_grad()
def test_each_query_attends_to_its_top_k_keys_as_the_paper_defines(registry, layout):
    module = tied(registry, layout)
    x = torch.randn(2, 12, C)
    expected, last_row = paper_loop(module, x, layout)
    assert sum(float(s) == 0.0 for s in last_row) > TOPK  # the ties this case is about
    torch.testing.assert_close(module(x, context(registry, 12)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_cached_decoding_chooses_as_the_full_forward_even_with_ties(registry, padded):
    module = tied(registry)
    T = 12
    x = torch.randn(2, T, C)
    valid = torch.ones(2, T, dtype=torch.bool)
    if padded:
        valid[1, :3] = False
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    key_valid = valid if padded else None
    full = module(x, AttentionContext(rope(registry), positions, positions, key_valid=key_valid))
    cache = module.new_cache(2, T, x.device, x.dtype)
    steps = []
    for start, end in [(0, 5)] + [(t, t + 1) for t in range(5, T)]:  # a prompt of 5, then one token at a time
        seen = None if key_valid is None else valid[:, :end]
        ctx = AttentionContext(
            rope(registry), positions[:, start:end], positions[:, :end], offset=start, key_valid=seen
        )
        steps.append(module(x[:, start:end], ctx, cache))
    decoded = torch.cat(steps, dim=1)
    torch.testing.assert_close(decoded[valid], full[valid], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_the_cache_holds_the_latent_the_rotary_key_and_the_indexer_key(registry):
    model = build(
        tiny_config(
            registry,
            attention={"name": "sparse_latent", **SIZES},
            positional="rope",
            context_length=32,
        )
    )  # head_dim 8, two layers
    assert costs.kv_cache_bytes(model, 32) == 2 * (R + 8 + D) * 32 * 4  # layers × (r + dr + D) × tokens × fp32
    cache = model.new_cache(1, 32)
    assert [(tuple(c.kv.shape), tuple(c.index_keys.shape)) for c in cache.layers] == [
        ((1, 1, 32, R + 8), (1, 32, D))
    ] * 2


def test_parameters_and_flops_follow_the_formula(registry):
    module = sparse(registry)
    latent = C * RQ + RQ + RQ * NH * (DN + DR) + C * (R + DR) + R + R * NH * (DN + DV) + NH * DV * C
    indexer = RQ * H * D + C * D + 2 * D + C * H  # wq_b, wk, the LayerNorm's weight and bias, weights_proj
    assert sum(p.numel() for p in module.parameters()) == latent + indexer
    matrices = (
        C * RQ + RQ * NH * (DN + DR) + C * (R + DR) + R * NH * (DN + DV) + NH * DV * C + RQ * H * D + C * D + C * H
    )
    # the indexer scores all 64 keys (H products of D, then H weights); attention reaches TOPK of them
    assert module.flops_per_token(64) == 2 * matrices + 2 * H * (D + 1) * 64 + 2 * NH * (DN + DR + DV) * TOPK


def test_the_indexer_learns_from_its_kl_loss_alone(registry):
    """dsa_indexer = KL(p ‖ softmax(I)) over the chosen keys, p the heads' attention summed and renormalised;
    it reaches the indexer's weights and nothing else, and the language-model loss does not reach the indexer."""
    module = sparse(registry)
    x = torch.randn(2, 10, C)
    ctx = context(registry, 10)
    y = module(x, ctx)
    loss = module.auxiliary_losses()["dsa_indexer"]
    assert loss.weight == 1.0
    # the loss by hand: the attention's probabilities over the chosen keys from the paper's loop's terms
    with torch.no_grad():
        c_q = module.q_a_layernorm(module.q_a_proj(x))
        iq, ik = module.index_queries_and_keys(x, c_q, ctx)
        scores = module.index_scores(x, iq, ik)  # (B, T, Tk)
        causal = torch.ones(10, 10, dtype=torch.bool).tril()
        ranked = scores.masked_fill(~causal, float("-inf"))
        chosen = torch.zeros_like(ranked, dtype=torch.bool).scatter_(-1, ranked.topk(TOPK, -1).indices, True) & causal
        q = module.q_b_proj(c_q).view(2, 10, NH, DN + DR).transpose(1, 2)
        latent, k_rot = module.kv_a_proj_with_mqa(x).split([R, DR], dim=-1)
        q_rot, k_rot = ctx.rotate(q[..., DN:], k_rot.unsqueeze(1))
        k_nope, _ = module.kv_b_proj(module.kv_a_layernorm(latent)).view(2, 10, NH, DN + DV).split([DN, DV], -1)
        k = torch.cat([k_nope.transpose(1, 2), k_rot.expand(2, NH, 10, DR)], dim=-1)
        logits = (torch.cat([q[..., :DN], q_rot], -1) @ k.transpose(-1, -2) * module.scale).masked_fill(
            ~chosen.unsqueeze(1), float("-inf")
        )
        p = logits.softmax(-1).sum(1)
        p = p / p.sum(-1, keepdim=True)
        q_index = scores.masked_fill(~chosen, float("-inf")).softmax(-1)
        expected = (
            sum(
                float(p[b, t, s] * math.log(p[b, t, s] / q_index[b, t, s]))
                for b in range(2)
                for t in range(10)
                for s in range(10)
                if chosen[b, t, s] and p[b, t, s] > 0
            )
            / 20
        )
    assert math.isclose(float(loss.value.detach()), expected, rel_tol=1e-4)
    loss.value.backward()
    reached = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.any()}
    assert reached == {n for n, _ in module.named_parameters() if n.startswith("indexer.")}
    module.zero_grad()
    y.square().mean().backward()
    assert all(p.grad is None for n, p in module.named_parameters() if n.startswith("indexer."))


@torch.no_grad()
def test_no_loss_is_recorded_without_gradients(registry):
    module = sparse(registry)
    module(torch.randn(1, 6, C), context(registry, 6))
    assert module.auxiliary_losses() == {}


def test_compiles_without_graph_breaks(registry):
    model = build(tiny_config(registry, attention={"name": "sparse_latent", **SIZES}, positional="rope"))
    tokens = torch.randint(0, 50, (2, 12))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens), model(tokens))


def test_an_index_head_dim_below_the_rotary_width_is_refused_at_load(registry):
    with pytest.raises(ConfigError, match="attention 'sparse_latent'.*index_head_dim must be at least"):
        tiny_config(registry, attention={"name": "sparse_latent", "index_head_dim": 4}, head_dim=8)


@pytest.mark.parametrize("q_lora_rank", [None, 12])
def test_the_kit_passes_sparse_attention_choosing_fewer_keys_than_it_sees(registry, q_lora_rank):
    check_component(
        "attention",
        "sparse_latent",
        registry=registry,
        q_lora_rank=q_lora_rank,
        kv_lora_rank=16,
        index_topk=3,
        index_heads=2,
        index_head_dim=12,
    )


# ---- GLM-5's shared indexers: a layer attending to the keys an earlier layer's indexer chose ---------------


SHARED = {"name": "sparse_latent", "kv_lora_rank": 16, "index_topk": 3, "index_heads": 2, "index_head_dim": 12}


@torch.no_grad()
def test_a_shared_layer_attends_to_the_keys_the_earlier_layers_indexer_chose(registry):
    """Layer 1 without an indexer gives what it gives with layer 0's choice written into its mask by hand."""
    model = build(tiny_config(registry, attention=SHARED | {"shared_index_layers": [1]}, positional="rope"))
    first, second = model.blocks[0].attention, model.blocks[1].attention
    assert first.indexer is not None and second.indexer is None
    assert not any(".1.attention.indexer" in name for name in model.state_dict())
    x = torch.randn(2, 10, model.config.d_model)
    ctx = model.attention_contexts(torch.zeros(2, 10, dtype=torch.long))[None]
    first(x, ctx)
    chosen = ctx.handed("sparse_latent.chosen_keys")  # (B, T, Tk): layer 0's choice, 3 keys a query past the third
    assert chosen.shape == (2, 10, 10) and (chosen.sum(-1) == torch.arange(1, 11).clamp(max=3)).all()
    own = second(x, ctx)
    mask = torch.zeros(2, 1, 10, 10).masked_fill(~chosen.unsqueeze(1), float("-inf"))
    B, T, nh, dr = 2, 10, second.dims.n_heads, second.dims.head_size
    q_nope, q_rot = second.q_proj(x).view(B, T, nh, -1).transpose(1, 2).split([second.nope, dr], dim=-1)
    latent, k_rot = second.kv_a_proj_with_mqa(x).split([second.rank, dr], dim=-1)
    q_rot, k_rot = ctx.rotate(q_rot, k_rot.unsqueeze(1))
    kv = torch.cat([second.kv_a_layernorm(latent).unsqueeze(1), k_rot], dim=-1)
    expected = second.explicit(q_nope, q_rot, kv, mask, False, None)
    torch.testing.assert_close(own, second.out_proj(expected.transpose(1, 2).reshape(B, T, -1)))


def test_a_shared_layer_caches_no_index_keys_and_counts_no_indexer(registry):
    shared = build(tiny_config(registry, attention=SHARED | {"shared_index_layers": [1]}, positional="rope"))
    own = build(tiny_config(registry, attention=SHARED, positional="rope"))
    index = 12 * 4  # an index key per token, fp32
    assert costs.kv_cache_bytes(own, 16) - costs.kv_cache_bytes(shared, 16) == 16 * index
    assert not hasattr(shared.new_cache(1, 16).layers[1], "index_keys")
    indexer = sum(p.numel() for p in own.blocks[1].attention.indexer.parameters())
    assert costs.param_counts(own)["total"] - costs.param_counts(shared)["total"] == indexer
    assert own.blocks[1].attention.flops_per_token(16) > shared.blocks[1].attention.flops_per_token(16)


@pytest.mark.parametrize("layers, named", [([0], "[0]"), ([1, 2], "[2]")])
def test_shared_index_layers_outside_layers_1_to_the_last_are_refused_at_load(registry, layers, named):
    with pytest.raises(ConfigError, match=re.escape(f"shared_index_layers names {named}: a layer reusing")):
        tiny_config(registry, attention=SHARED | {"shared_index_layers": layers}, positional="rope")


def test_a_shared_layer_without_an_indexer_before_it_says_so(registry):
    config = tiny_config(
        registry,
        positional="rope",
        attention=SHARED | {"shared_index_layers": [1]},
        layer_pattern=["plain", "sparse"],
        layer_kinds={"plain": {"attention": "sdpa"}, "sparse": {}},
    )
    with pytest.raises(GptzooError, match="no earlier layer handed over 'sparse_latent.chosen_keys'"):
        build(config)(torch.zeros(1, 8, dtype=torch.long))


def test_the_kit_passes_a_layer_reusing_the_earlier_layers_chosen_keys(registry):
    params = {k: v for k, v in SHARED.items() if k != "name"}
    check_component("attention", "sparse_latent", registry=registry, shared_index_layers=[1], **params)
