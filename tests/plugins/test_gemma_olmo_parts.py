"""Gemma's, OLMo's and nanochat's small parts against transformers and their formulas: RMSNorm with
the (1 + weight) offset, OLMo 1's non-parametric LayerNorm, nanochat's weightless RMSNorm and
normalised embeddings, final-logit soft-capping, embeddings scaled by √d_model in the activations' dtype."""

import math

import pytest
import torch

from gptzoo.core import Dims
from gptzoo.plugins.heads import LMHead, LMParams
from gptzoo.plugins.norms import LayerNorm, LayerNormParams, RMSNorm, RMSNormParams
from gptzoo.testing import build, tiny_config


def dims(d_model=32, **kw):
    return Dims(**(dict(vocab_size=50, context_length=16, d_model=d_model, n_heads=4, n_kv_heads=4, n_layers=1) | kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_unit_offset_rmsnorm_matches_transformers_gemma_rmsnorm(dtype):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    ours = RMSNorm(RMSNormParams(eps=1e-6, unit_offset=True), dims()).to(dtype)
    assert not ours.weight.any()  # Gemma's stored weight: 0 is the identity scale
    theirs = GemmaRMSNorm(32, eps=1e-6).to(dtype)
    torch.manual_seed(0)
    weight = torch.randn(32).to(dtype)
    ours.weight.copy_(weight)
    theirs.weight.copy_(weight)
    x = (3 * torch.randn(2, 5, 32)).to(dtype)
    torch.testing.assert_close(ours(x), theirs(x), atol=0, rtol=0)


@torch.no_grad()
def test_rmsnorm_without_scale_has_no_weight_and_divides_by_the_root_mean_square():
    ours = RMSNorm(RMSNormParams(eps=1e-6, scale=False), dims(d_model=4))
    assert list(ours.parameters()) == []
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])  # mean of squares (1 + 4 + 9 + 16) / 4 = 7.5
    torch.testing.assert_close(ours(x), x / math.sqrt(7.5 + 1e-6))


def test_unit_offset_without_scale_is_refused():
    with pytest.raises(ValueError, match="unit_offset"):
        RMSNorm.check(RMSNormParams(unit_offset=True, scale=False), dims())


@torch.no_grad()
def test_layernorm_without_scale_and_bias_is_olmo_1s():
    from transformers.models.olmo.modeling_olmo import OlmoLayerNorm

    ours = LayerNorm(LayerNormParams(bias=False, scale=False), dims())
    assert list(ours.parameters()) == []
    x = 3 * torch.randn(2, 5, 32) + 1
    torch.testing.assert_close(ours(x), OlmoLayerNorm(32)(x))


@torch.no_grad()
def test_softcap_bounds_the_logits_by_its_formula_and_keeps_padding_out():
    head = LMHead(LMParams(softcap=30.0), dims(vocab_size=50, vocab_multiple=64))
    head.init_weights("gpt2")
    x = 200 * torch.randn(2, 3, 32)  # raw logits far beyond the cap
    raw = x @ head.weight.T
    logits = head(x)
    torch.testing.assert_close(logits[..., :50], 30.0 * torch.tanh(raw[..., :50] / 30.0))
    assert logits[..., :50].abs().max() < 30.0 and raw[..., :50].abs().max() > 30.0
    assert torch.isneginf(logits[..., 50:]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_embeddings_are_scaled_by_sqrt_d_model_rounded_to_the_activation_dtype(registry, dtype):
    C = 48  # √48 = 6.928..., 6.9375 in bfloat16 as Gemma's normaliser rounds it
    model = build(tiny_config(registry, d_model=C, n_heads=4, positional="rope", embedding_scale="sqrt_d_model")).to(
        dtype
    )
    idx = torch.randint(0, 50, (2, 6))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    model(idx)
    normaliser = torch.tensor(math.sqrt(C), dtype=dtype)
    assert dtype == torch.float32 or normaliser.item() == 6.9375
    torch.testing.assert_close(seen["x"], model.token_embedding(idx) * normaliser, atol=0, rtol=0)
    plain = build(tiny_config(registry, d_model=C, n_heads=4, embedding_scale=2.5))
    assert plain.embedding_multiplier == 2.5


@torch.no_grad()
def test_embedding_norm_normalises_the_first_blocks_input_by_its_root_mean_square(registry):
    config = tiny_config(
        registry, positional="rope", norm={"name": "rmsnorm", "eps": 1e-6, "scale": False}, embedding_norm=True
    )
    model = build(config)
    idx = torch.randint(0, 50, (2, 6))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    model(idx)
    e = model.token_embedding(idx)
    torch.testing.assert_close(seen["x"], e / (e.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt())
    assert build(tiny_config(registry)).embedding_norm is None  # off by default


def test_embedding_scale_reads_from_toml_and_refuses_other_words(registry):
    from gptzoo.core import ConfigError

    assert tiny_config(registry, embedding_scale="sqrt_d_model").embedding_multiplier() == pytest.approx(math.sqrt(32))
    with pytest.raises(ConfigError, match="embedding_scale"):
        tiny_config(registry, embedding_scale="sqrt")
    with pytest.raises(ConfigError, match="embedding_scale"):
        tiny_config(registry, embedding_scale=0.0)
