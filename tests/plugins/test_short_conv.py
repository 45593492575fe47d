"""LFM2's gated short convolution (``short_conv``): against transformers' Lfm2ShortConv on a tiny random
layer (whole and decoded through its cache), the equations written as a loop, its implicit attention
matrix against its output, and the kit."""

import pytest
import torch

from gptzoo.core import AttentionContext, ComponentSpec, Dims, Recorder
from gptzoo.testing import check_component

transformers = pytest.importorskip("transformers")

DIMS = Dims(vocab_size=50, context_length=64, d_model=16, n_heads=2, n_kv_heads=1, n_layers=2)
K = 4


def short_conv(registry, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": "short_conv", **params}, registry).build(DIMS).eval()


def context(registry, start, end, recorder=None, key_valid=None):
    none = ComponentSpec.resolve("positional", {"name": "none"}, registry).build(DIMS)
    positions = torch.arange(start, end)[None]
    return AttentionContext(
        none, positions, torch.arange(end)[None], offset=start, recorder=recorder, key_valid=key_valid
    )


def _lfm2(module):
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    config = Lfm2Config(
        hidden_size=16,
        num_hidden_layers=1,
        layer_types=["conv"],
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        conv_L_cache=K,
    )
    torch.manual_seed(1)
    hf = Lfm2ShortConv(config, layer_idx=0).eval()
    with torch.no_grad():
        hf.conv.weight.normal_()
        module.in_proj.weight.copy_(hf.in_proj.weight)
        module.conv.conv.weight.copy_(hf.conv.weight)
        module.out_proj.weight.copy_(hf.out_proj.weight)
    return config, hf


@torch.no_grad()
def test_matches_transformers_lfm2_short_conv_whole_and_through_the_cache(registry):
    from transformers import DynamicCache

    module = short_conv(registry, kernel_size=K)
    config, hf = _lfm2(module)
    T = 13
    x = torch.randn(2, T, 16)
    expected = hf(x)
    torch.testing.assert_close(module(x, context(registry, 0, T)), expected, atol=1e-6, rtol=1e-5)
    # Decoded in pieces through both caches: a prefill of 5, then 1, 3 and the rest.
    hf_cache, cache = DynamicCache(config=config), module.new_cache(2, None, x.device, x.dtype)
    hf_steps, steps = [], []
    for start, end in [(0, 5), (5, 6), (6, 9), (9, T)]:
        hf_steps.append(hf(x[:, start:end], cache=hf_cache))
        steps.append(module(x[:, start:end], context(registry, start, end), cache))
    torch.testing.assert_close(torch.cat(hf_steps, dim=1), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_matches_the_equations_token_by_token(registry):
    module = short_conv(registry, kernel_size=K)
    T, C = 11, DIMS.d_model
    x = torch.randn(1, T, C, dtype=torch.float64)
    module = module.double()
    W_in, w, W_out = module.in_proj.weight, module.conv.conv.weight[:, 0], module.out_proj.weight  # w: (C, K)
    expected = torch.zeros(T, C, dtype=torch.float64)
    for t in range(T):
        b, c, _ = (W_in @ x[0, t]).split(C)
        acc = torch.zeros(C, dtype=torch.float64)
        for j in range(K):  # the input j tokens back meets the kernel's tap K - 1 - j
            if t - j >= 0:
                bs, _, vs = (W_in @ x[0, t - j]).split(C)
                acc += w[:, K - 1 - j] * bs * vs
        expected[t] = W_out @ (c * acc)
    torch.testing.assert_close(module(x, context(registry, 0, T))[0], expected)


@torch.no_grad()
def test_implicit_attention_times_v_is_the_output_before_the_projection(registry):
    module = short_conv(registry, kernel_size=K)
    T, C = 10, DIMS.d_model
    x = torch.randn(2, T, C)
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :3] = False  # row 1 is left-padded
    recorder = Recorder()
    ctx = context(registry, 0, T, recorder=recorder, key_valid=valid)
    out = module(x, ctx)
    (A,) = recorder._reported
    assert A.shape == (2, C, T, T)
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    assert A[..., (lag < 0) | (lag >= K)].abs().max() == 0  # causal, and banded to the kernel
    v = module.in_proj(x).chunk(3, dim=-1)[2].transpose(1, 2)  # (B, C, T)
    y = (A @ v[..., None])[..., 0].transpose(1, 2)  # (B, T, C)
    torch.testing.assert_close(module.out_proj(y)[valid], out[valid], atol=1e-6, rtol=1e-5)


def test_cache_is_the_kernels_window_and_flops_follow_the_formula(registry):
    module = short_conv(registry, kernel_size=K)
    C = DIMS.d_model
    assert module.cache_bytes(1) == module.cache_bytes(10_000) == C * (K - 1) * 4
    assert module.flops_per_token(10_000) == 2 * 4 * C * C + 2 * C * K + 2 * C


def test_the_kit_passes_short_conv_with_a_longer_kernel(registry):
    check_component("attention", "short_conv", registry=registry, kernel_size=6)
