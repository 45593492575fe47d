"""Each recurrent mixer's FLOPs per token (issue 23) against the matrix products torch counts in
one forward over whole chunks, plus the products a mixer does elementwise, counted here by hand.
(linear, lightning and retention, all matrix products, are in test_linear_attention.py; short_conv
in test_short_conv.py.)"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gptzoo.core import AttentionContext, ComponentSpec, Dims, NoParams, PositionalEncoding
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
DIMS = Dims(vocab_size=50, context_length=64, d_model=32, n_heads=4, n_kv_heads=4, n_layers=2)
T, C, HEADS = 64, 16, 4  # whole chunks of 16: every chunk costs the same


def elementwise(name: str, layer) -> int:
    """FLOPs per token of the products a mixer forms elementwise, which FlopCounterMode does not see."""
    if name == "kimi_delta":  # q·k and k·k within a chunk, one decay per key channel: 2 × 2·C·dk per head
        return HEADS * 2 * 2 * C * layer.head_k_dim
    if name == "gla":  # q·k within a chunk, one decay per key channel: 2·C·dk per query head
        return HEADS * 2 * C * layer.key_width
    if name == "mamba":  # per channel and state entry: the input Δ·x·B and the decayed sum, 2 × 2
        return 4 * layer.inner * layer.params.d_state
    return 0  # deltanet, gated_deltanet and mamba2 multiply matrices only


@pytest.mark.parametrize(
    "name,params",
    [
        ("deltanet", {"chunk_size": C}),
        ("gated_deltanet", {"chunk_size": C, "num_k_heads": 2}),
        ("kimi_delta", {"chunk_size": C}),
        ("gla", {"chunk_size": C}),
        ("mamba2", {"chunk_size": C, "d_state": 8, "n_groups": 2}),
        ("mamba", {"d_state": 4}),
    ],
)
def test_flops_per_token_are_the_counted_matrix_products_and_the_elementwise_ones(name, params):
    layer = ComponentSpec.resolve("attention", {"name": name, **params}, REGISTRY).build(DIMS).eval()
    positions = torch.arange(T)[None]
    ctx = AttentionContext(PositionalEncoding(NoParams(), DIMS), positions, positions)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(torch.randn(1, T, DIMS.d_model), ctx)
    assert layer.flops_per_token(T) * T == counter.get_total_flops() + elementwise(name, layer) * T
