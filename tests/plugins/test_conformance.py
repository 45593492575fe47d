"""Every registered component passes the conformance kit; the kit itself catches broken variants."""

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import PositionalEncoding
from gptzoo.plugins.attention import FusedAttention
from gptzoo.registry import make_registry
from gptzoo.testing import (
    build,
    check_attention_capture,
    check_causal,
    check_component,
    check_kv_cache,
    check_padded_batch,
    component_cases,
    tiny_config,
)


@pytest.mark.parametrize("family,name", component_cases(make_registry()))
def test_component_conforms(family, name, registry):
    check_component(family, name, registry=registry)


def test_cases_cover_every_family(registry):
    families = {family for family, _ in component_cases(registry)}
    assert families == {
        "tokenizer",
        "positional",
        "attention",
        "feed_forward",
        "norm",
        "block",
        "residual",
        "head",
        "mtp",
    }
    assert ("attention", "sdpa") in component_cases(registry)


def test_classifier_head_with_params(registry):
    check_component("head", "classifier", registry=registry, n_classes=3, pooling="mean")


# ---- the kit fails on variants that break the contract -------------------------------------


class NoMaskAttention(FusedAttention):
    """Attends to every key, future ones included."""

    def forward(self, x, ctx, cache=None):
        q, k, v = self.project(x, ctx, cache)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return self.merge(F.scaled_dot_product_attention(q, k, v))


class ForgetfulAttention(FusedAttention):
    """Ignores the cache: each step sees only its own tokens."""

    def forward(self, x, ctx, cache=None):
        return super().forward(x, ctx, None)


class AbsolutePositionsFromZero(PositionalEncoding):
    """Ignores the positions it is given (wrong after a cache or with left padding)."""

    def __init__(self, params, dims):
        super().__init__(params, dims)
        self.table = torch.nn.Embedding(dims.context_length, dims.d_model)

    def embed(self, x, positions):
        return x + self.table(torch.arange(x.size(1)))


def _model_with(registry, family, impl):
    registry.add(family, "broken", impl)
    return build(tiny_config(registry, **{family: "broken"}))


def test_kit_catches_attention_that_sees_the_future(registry):
    with pytest.raises(AssertionError, match="causality"):
        check_causal(_model_with(registry, "attention", NoMaskAttention))


def test_kit_catches_attention_that_ignores_the_cache(registry):
    with pytest.raises(AssertionError, match="KV cache"):
        check_kv_cache(_model_with(registry, "attention", ForgetfulAttention))


def test_kit_catches_positions_that_ignore_the_cache_offset(registry):
    model = _model_with(registry, "positional", AbsolutePositionsFromZero)
    with pytest.raises(AssertionError, match="KV cache"):
        check_kv_cache(model)
    with pytest.raises(AssertionError, match="left padding"):
        check_padded_batch(model)


def test_kit_catches_a_layout_that_differs_from_sdpa(registry):
    class SwappedKeyValue(FusedAttention):
        def project(self, x, ctx, cache):
            q, k, v = super().project(x, ctx, cache)
            return q, v, k

    registry.add("attention", "swapped", SwappedKeyValue)
    with pytest.raises(AssertionError, match="sdpa's weights"):
        check_component("attention", "swapped", registry=registry)


def test_kit_catches_a_dead_parameter(registry):
    class UnusedWeight(FusedAttention):
        def __init__(self, params, dims):
            super().__init__(params, dims)
            self.unused = torch.nn.Parameter(torch.ones(3))

    registry.add("attention", "unused", UnusedWeight)
    with pytest.raises(AssertionError, match="no gradient reaches .*unused"):
        check_component("attention", "unused", registry=registry)


class SilentAttention(FusedAttention):
    """Computes the right function through SDPA but never reports its weights."""

    def forward(self, x, ctx, cache=None):
        q, k, v = self.project(x, ctx, cache)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.bias(q.dtype)))


class UnmaskedReport(FusedAttention):
    """Attends correctly but reports the weights before the causal mask."""

    def forward(self, x, ctx, cache=None):
        q, k, v = self.project(x, ctx, cache)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(-2, -1) * self.scale
        ctx.record(torch.softmax(scores, dim=-1))
        return self.merge(torch.softmax(scores + ctx.bias(q.dtype), dim=-1) @ v)


def test_kit_catches_attention_that_does_not_report_its_weights(registry):
    with pytest.raises(AssertionError, match="declares inspection = 'probabilities' and called ctx.record 0 times"):
        check_attention_capture(_model_with(registry, "attention", SilentAttention))


def test_kit_catches_reported_weights_on_future_keys(registry):
    with pytest.raises(AssertionError, match="where a query may not look"):
        check_attention_capture(_model_with(registry, "attention", UnmaskedReport))
