"""The LM head's logit_scale against its formula and against transformers' Cohere 2 and Granite
models, whose heads multiply by logit_scale and divide by logits_scaling."""

import pytest
import torch

from gptzoo.core import Dims
from gptzoo.plugins.heads import LMHead, LMParams
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component


def head(vocab_size=3, vocab_multiple=1, **params):
    dims = Dims(
        vocab_size=vocab_size,
        context_length=8,
        d_model=2,
        n_heads=1,
        n_kv_heads=1,
        n_layers=1,
        vocab_multiple=vocab_multiple,
    )
    lm = LMHead(LMParams(**params), dims)
    with torch.no_grad():
        lm.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]][: dims.padded_vocab_size]))
    return lm


@torch.no_grad()
def test_logit_scale_multiplies_the_logits():
    x = torch.tensor([[[2.0, -4.0]]])  # logits before scaling: (2, -4, -2)
    torch.testing.assert_close(head(logit_scale=0.25)(x), torch.tensor([[[0.5, -1.0, -0.5]]]))


@torch.no_grad()
def test_logit_scale_comes_before_the_softcap_and_keeps_padding_out():
    x = torch.tensor([[[2.0, -4.0]]])
    logits = head(vocab_multiple=4, logit_scale=3.0, softcap=5.0)(x)
    expected = [5.0 * torch.tanh(torch.tensor(v * 3.0 / 5.0)).item() for v in (2.0, -4.0, -2.0)]
    torch.testing.assert_close(logits[..., :3], torch.tensor([[expected]]))
    assert logits[0, 0, 3].item() == float("-inf")


def _tiny_family(name):
    if name == "cohere2":
        from transformers import Cohere2Config, Cohere2ForCausalLM

        config = Cohere2Config(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            logit_scale=0.0625,
            layer_types=["full_attention"],
        )
        return Cohere2ForCausalLM(config), config.logit_scale
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        logits_scaling=8.0,
    )
    return GraniteForCausalLM(config), 1 / config.logits_scaling


@pytest.mark.parametrize("family", ["cohere2", "granite"])
@torch.no_grad()
def test_matches_the_head_of_transformers(family):
    torch.manual_seed(0)
    theirs, logit_scale = _tiny_family(family)
    theirs.eval()
    ids = torch.randint(0, 40, (2, 6))
    hidden = theirs.model(ids).last_hidden_state  # (B, T, C) after the final norm
    dims = Dims(vocab_size=40, context_length=8, d_model=16, n_heads=2, n_kv_heads=2, n_layers=1)
    ours = LMHead(LMParams(logit_scale=logit_scale), dims)
    ours.weight.copy_(theirs.lm_head.weight)
    expected = theirs(ids).logits
    assert not torch.allclose(expected, hidden @ theirs.lm_head.weight.T)  # the scaling does something
    torch.testing.assert_close(ours(hidden), expected)


def test_the_kit_passes_with_a_logit_scale(registry):
    check_component("head", "lm", registry=registry, logit_scale=0.0625)


def test_compiles_with_fullgraph_and_adds_no_parameters_or_flops(registry):
    from gptzoo.core import GPT
    from gptzoo.testing import tiny_config

    torch.manual_seed(0)
    model = GPT(tiny_config(registry, n_layers=1, head={"name": "lm", "logit_scale": 0.0625})).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()
    plain = GPT(tiny_config(registry, n_layers=1)).eval()
    assert costs.param_counts(model) == costs.param_counts(plain)  # a constant, not a weight
    assert costs.flops_per_token(model) == costs.flops_per_token(
        plain
    )  # one multiply per logit, uncounted as norms are
