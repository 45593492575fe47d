"""Initialisation: the named schemes against hand-built references, and components owning theirs."""

import math

import pytest
import torch
from torch import nn

from gptzoo.core import GPT
from gptzoo.plugins.feed_forward import GELUFeedForward

BOOKISH = {
    "vocab_size": 50,
    "context_length": 16,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "tokenizer": "byte",
    "positional": "learned",
    "attention": "sdpa",
    "feed_forward": "gelu",
    "norm": "layernorm",
    "tied_head": False,
}


def test_torch_default_draws_exactly_what_the_books_model_draws(registry):
    """The book's GPTModel (ch. 4) builds, in order: tok_emb, pos_emb, then per block W_query, W_key,
    W_value (no bias), out_proj, ff Linear(C, 4C), Linear(4C, C); then out_head Linear(C, V, bias=False),
    each with PyTorch's default init. Drawn here by hand with the same seed."""
    V, T, C, L = 50, 16, 32, 2
    torch.manual_seed(123)
    expected = {
        "token_embedding.weight": nn.Embedding(V, C).weight,
        "positional.table.weight": nn.Embedding(T, C).weight,
    }
    for i in range(L):
        wq, wk, wv = (nn.Linear(C, C, bias=False) for _ in range(3))
        out_proj, ff_in, ff_out = nn.Linear(C, C), nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        expected |= {
            f"blocks.{i}.attention.qkv.weight": torch.cat([wq.weight, wk.weight, wv.weight]),
            f"blocks.{i}.attention.out_proj.weight": out_proj.weight,
            f"blocks.{i}.attention.out_proj.bias": out_proj.bias,
            f"blocks.{i}.feed_forward.in_proj.weight": ff_in.weight,
            f"blocks.{i}.feed_forward.in_proj.bias": ff_in.bias,
            f"blocks.{i}.feed_forward.out_proj.weight": ff_out.weight,
            f"blocks.{i}.feed_forward.out_proj.bias": ff_out.bias,
        }
    expected["head.weight"] = nn.Linear(C, V, bias=False).weight

    torch.manual_seed(123)
    state = GPT(registry.model_config(BOOKISH | {"init": "torch_default"})).state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor.detach()), name
    assert torch.equal(state["blocks.0.attn_norm.weight"], torch.ones(C)) and torch.equal(
        state["final_norm.bias"], torch.zeros(C)
    )


def test_gpt2_scheme_statistics(registry):
    config = registry.model_config(BOOKISH | {"d_model": 256, "n_layers": 4, "vocab_size": 2000})
    torch.manual_seed(0)
    state = GPT(config).state_dict()
    residual = 0.02 / math.sqrt(2 * 4)
    for name, tensor in state.items():
        if name.endswith("out_proj.weight"):
            assert tensor.std().item() == pytest.approx(residual, rel=0.05), name
        elif "norm" in name:
            assert torch.equal(
                tensor, torch.ones_like(tensor) if name.endswith("weight") else torch.zeros_like(tensor)
            ), name
        elif name.endswith("bias"):
            assert not tensor.any(), name
        else:
            assert tensor.mean().abs().item() < 0.002 and tensor.std().item() == pytest.approx(0.02, rel=0.05), name


def test_torch_default_embeddings_are_unit_normal(registry):
    torch.manual_seed(0)
    model = GPT(registry.model_config(BOOKISH | {"vocab_size": 4000, "d_model": 64, "init": "torch_default"}))
    assert model.token_embedding.weight.std().item() == pytest.approx(1.0, rel=0.02)
    bound = 1 / math.sqrt(64)  # Kaiming-uniform with a = √5 on fan_in 64
    assert model.blocks[0].attention.qkv.weight.abs().max().item() <= bound
    assert model.blocks[0].attention.qkv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_a_component_owns_its_initialisation(registry):
    class ZeroOutMLP(GELUFeedForward):
        """Starts as the identity on the residual stream, as some papers do."""

        def init_weights(self, scheme):
            super().init_weights(scheme)
            nn.init.zeros_(self.out_proj.weight)

    class ScaledInit(GELUFeedForward):
        def __init__(self, params, dims):
            super().__init__(params, dims)
            self.register_buffer("marker", torch.ones(1))

        def init_weights(self, scheme):
            nn.init.constant_(self.in_proj.weight, 0.5)

    registry.add("feed_forward", "zero_out", ZeroOutMLP)
    registry.add("feed_forward", "constant_in", ScaledInit)
    for scheme in ("gpt2", "torch_default"):
        zero = GPT(registry.model_config(BOOKISH | {"feed_forward": "zero_out", "init": scheme}))
        assert all(not b.feed_forward.out_proj.weight.any() for b in zero.blocks)
        const = GPT(registry.model_config(BOOKISH | {"feed_forward": "constant_in", "init": scheme}))
        assert all(torch.all(b.feed_forward.in_proj.weight == 0.5) for b in const.blocks)


def test_unknown_scheme_is_a_config_error(registry):
    from gptzoo.core import ConfigError

    with pytest.raises(ConfigError, match="init"):
        registry.model_config(BOOKISH | {"init": "xavier"})
