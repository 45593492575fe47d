"""The layouts of today's model families, stated as configs alone (no code), each checked layer by
layer against what the family's paper or reference implementation says."""

import tomllib

import pytest
import torch

from gptzoo.core import GPT

COMMON = "vocab_size = 64\ncontext_length = 16\nd_model = 64\nn_layers = 6\nn_heads = 4\n"

FAMILIES = {
    "gpt2": (
        'positional = "learned"\nqkv_bias = true\ntied_head = true\n',
        {"block": "pre_norm", "positional": "learned", "norm": "layernorm"},
    ),
    "llama": (
        'n_kv_heads = 2\nattn_out_bias = false\ntied_head = false\npositional = "rope"\nfeed_forward = "swiglu"\nnorm = "rmsnorm"\n',
        {"block": "pre_norm", "positional": "rope", "feed_forward": "swiglu", "norm": "rmsnorm"},
    ),
    "qwen3": (
        'n_kv_heads = 2\nhead_dim = 32\nattn_out_bias = false\npositional = { name = "rope", base = 1000000.0 }\nfeed_forward = "swiglu"\nnorm = "rmsnorm"\n',
        {"positional": "rope(base=1000000.0)"},
    ),
    "gemma3": (
        'positional = "rope"\nblock = "sandwich"\nnorm = "rmsnorm"\nlayer_pattern = ["local", "local", "local", "local", "local", "global"]\n'
        '[layer_kinds.local]\n[layer_kinds.global]\npositional = { name = "rope", base = 1000000.0 }\n',
        {"block": "sandwich"},
    ),
    "olmo2": (
        'positional = "rope"\nblock = "sublayer_output_norm"\nnorm = "rmsnorm"\nattn_out_bias = false\nfeed_forward = "swiglu"\n',
        {"block": "sublayer_output_norm"},
    ),
    "neox": ('positional = "rope"\nblock = "parallel"\nqkv_bias = true\n', {"block": "parallel", "norm": "layernorm"}),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_a_config(registry, family):
    text, expected = FAMILIES[family]
    config = registry.model_config(tomllib.loads(COMMON + text))
    model = GPT(config)
    layers = config.layers()
    for family_name, shown in expected.items():
        spec = getattr(layers[0], family_name)
        assert spec.name == shown.split("(")[0]
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 64)
    attention = model.blocks[0].attention
    if family in ("llama", "qwen3", "olmo2"):
        assert attention.out_proj.bias is None and attention.qkv.bias is None
    if family == "qwen3":
        assert attention.qkv.weight.shape == ((4 + 2 * 2) * 32, 64) and attention.out_proj.weight.shape == (64, 4 * 32)
    if family == "gemma3":
        assert [layer.positional.params.base for layer in layers] == [1e4] * 5 + [1e6]
        assert {"attn_out_norm", "ffn_out_norm"} <= set(dict(model.blocks[0].named_children()))
    if family == "neox":
        assert attention.qkv.bias is not None
