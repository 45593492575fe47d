"""Block layouts against the residual wiring written out by hand, from the same modules."""

import pytest
import torch

from gptzoo.core import AttentionContext
from gptzoo.recipes.training import costs
from gptzoo.testing import build, tiny_config

C = 32


def hand_written(layout, block, x, ctx):
    """One layer of each layout, as the papers write it (dropout is off)."""
    attn = lambda h: block.attention(h, ctx)  # noqa: E731
    ffn = block.feed_forward
    if layout == "pre_norm":  # GPT-2, Llama
        x = x + attn(block.attn_norm(x))
        return x + ffn(block.ffn_norm(x))
    if layout == "post_norm":  # Vaswani et al.
        x = block.attn_norm(x + attn(x))
        return block.ffn_norm(x + ffn(x))
    if layout == "normed_residual":  # MiniMax-01: the stream goes on from each norm's output
        h = block.attn_norm(x)
        x = h + attn(h)
        h = block.ffn_norm(x)
        return h + ffn(h)
    if layout == "sandwich":  # Gemma 2/3: input, post-attention, pre-feed-forward and post-feed-forward norms
        x = x + block.attn_out_norm(attn(block.attn_norm(x)))
        return x + block.ffn_out_norm(ffn(block.ffn_norm(x)))
    if layout == "sublayer_output_norm":  # OLMo 2: post-attention and post-feed-forward norms only
        x = x + block.attn_norm(attn(x))
        return x + block.ffn_norm(ffn(x))
    if layout == "parallel":  # GPT-NeoX: both sublayers read x
        return x + attn(block.attn_norm(x)) + ffn(block.ffn_norm(x))
    if layout == "parallel_shared":  # GPT-J, Phi: one norm feeds both
        h = block.attn_norm(x)
        return x + attn(h) + ffn(h)
    raise AssertionError(layout)


LAYOUTS = {
    "pre_norm": {"name": "pre_norm"},
    "post_norm": {"name": "post_norm"},
    "normed_residual": {"name": "normed_residual"},
    "sandwich": {"name": "sandwich"},
    "sublayer_output_norm": {"name": "sublayer_output_norm"},
    "parallel": {"name": "parallel"},
    "parallel_shared": {"name": "parallel", "shared_norm": True},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_layout_matches_the_hand_written_layer(registry, layout):
    torch.manual_seed(0)  # the same weights whichever tests ran before: the tolerance is float32 rounding
    model = build(tiny_config(registry, block=LAYOUTS[layout], positional="rope", norm="rmsnorm", n_layers=2))
    for name, p in model.named_parameters():
        if "norm" in name:  # norms start at 1; make them matter
            p.copy_(torch.rand_like(p) + 0.5)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).unsqueeze(0)
    ctx = AttentionContext(model.positional, positions, positions)
    x = model.token_embedding(idx)
    for block in model.blocks:
        x = hand_written(layout, block, x, ctx)
    if layout != "post_norm":  # the post-norm block's output is already normalised
        x = model.final_norm(x)
    torch.testing.assert_close(model.hidden_states(idx), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "layout, norms_per_layer",
    [
        ("pre_norm", 2),
        ("post_norm", 2),
        ("normed_residual", 2),
        ("sandwich", 4),
        ("sublayer_output_norm", 2),
        ("parallel", 2),
        ("parallel_shared", 1),
    ],
)
def test_norm_parameters_per_layout(registry, layout, norms_per_layer):
    model = build(tiny_config(registry, block=LAYOUTS[layout], norm="rmsnorm", n_layers=3))
    final = 0 if layout == "post_norm" else C
    assert costs.param_counts(model)["norm"] == 3 * norms_per_layer * C + final


def test_norm_placement_of_old_configs_reads_as_a_block(registry):
    assert tiny_config(registry, norm_placement="post").block.name == "post_norm"
    assert tiny_config(registry, norm_placement="pre").block.name == "pre_norm"
    from gptzoo.core import ConfigError

    with pytest.raises(ConfigError, match="give model.block alone"):
        tiny_config(registry, norm_placement="post", block="parallel")
    with pytest.raises(ConfigError, match="'middle' is not 'pre' or 'post'"):
        tiny_config(registry, norm_placement="middle")
    assert "norm_placement" not in tiny_config(registry, norm_placement="post").model_dump()
