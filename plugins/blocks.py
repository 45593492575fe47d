"""Block layouts: where the norms sit around the token mixer and the feed-forward on the residual stream.

Written out for one sublayer f (the mixer a, then the feed-forward), with n = norms, d = dropout,
α = ``stream_scale`` and β = ``branch_scale`` (both 1 unless set):

- ``pre_norm``             x = α·x + β·d(f(n(x)))          GPT-2, Llama
- ``post_norm``            x = n(α·x + β·d(f(x)))          the original Transformer
- ``normed_residual``      x = α·n(x) + β·d(f(n(x)))       MiniMax-01 (α, β): the stream goes on from the norm's output
- ``sandwich``             x = α·x + β·d(n'(f(n(x))))      Gemma 2 and 3
- ``sublayer_output_norm`` x = α·x + β·d(n(f(x)))          OLMo 2
- ``parallel``             x = α·x + β·(d(a(n1(x))) + d(f(n2(x))))  (n2 = n1 with shared_norm)  GPT-J, GPT-NeoX, Phi
- ``no_shortcut``          x = d(f(n(x)))                  the book's 4.4 lesson: no residual stream

Either sublayer may be ``none`` (a mixer-only layer as Mamba-2's, a feed-forward-only layer as
Nemotron-H's): the block then builds neither it nor its norms. A feed-forward that norms its own input
(``reads_stream``: Gemma 4's MLP beside its experts) gets the stream where n would act on its input. β is Granite's
``residual_multiplier``. All but ``parallel`` and ``no_shortcut`` may end in a per-layer input
(``per_layer_input``: Gemma 3n and Gemma 4's per-layer embeddings, plugins/per_layer_input.py), then
multiply the whole stream by a learned scalar (``layer_scalar``: Gemma 4).
"""

from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import AttentionContext, Block, Dims, LayerCache, LayerSpec, Params
from gptzoo.plugins.per_layer_input import PerLayerInput
from gptzoo.registry import hookimpl

Sublayer = Callable[[Tensor], Tensor]


class ResidualParams(Params):
    branch_scale: float = Field(
        1.0, description="multiplies each sublayer's output before it joins the stream (Granite's residual_multiplier)"
    )
    stream_scale: float = Field(1.0, description="multiplies the stream each sublayer's output joins (MiniMax-01's α)")


class SublayerParams(ResidualParams):
    per_layer_input: int | None = Field(
        None,
        gt=0,
        description="the size of each layer's own input, from a second embedding table by token id, added after "
        "the sublayers through a gated branch (Gemma 3n and Gemma 4's per-layer embeddings, "
        "hidden_size_per_layer_input); None: none",
    )
    layer_scalar: bool = Field(
        False,
        description="multiply the stream leaving the block (its input plus every branch) by a learned scalar "
        "starting at 1 (Gemma 4's layer_scalar)",
    )


def _reads_stream(layer: LayerSpec) -> bool:
    return bool(getattr(layer.feed_forward.impl, "reads_stream", False))


def _feed_forward_norm(layer: LayerSpec, dims: Dims) -> nn.Module:
    """The norm on the feed-forward's input: the identity for one that norms its own (FeedForward.reads_stream)."""
    return nn.Identity() if _reads_stream(layer) else layer.norm.build(dims)


def _join(params: ResidualParams, x: Tensor, branch: Tensor) -> Tensor:
    """α·x + β·branch, skipping the multiplications by 1."""
    if params.stream_scale != 1.0:
        x = x * params.stream_scale
    if params.branch_scale != 1.0:
        branch = branch * params.branch_scale
    return x + branch


class _Sublayers(Block):
    """The mixer, then the feed-forward, each wrapped by ``step``; one norm each (two for ``sandwich``)."""

    Params = SublayerParams
    out_norms = False  # a second norm on each sublayer's output
    norms_input = True  # the norm acts on the sublayer's input (not for post_norm, sublayer_output_norm)

    def __init__(self, params: SublayerParams, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.mixes, self.feeds = not layer.attention.impl.absent, not layer.feed_forward.impl.absent
        # A 'none' mixer is still built: the model asks every layer's mixer for its (empty) cache.
        self.attention = layer.attention.build(dims)
        self.feed_forward = layer.feed_forward.build(dims)
        self.attn_norm = layer.norm.build(dims) if self.mixes else None
        self.ffn_norm = self.feed_forward_norm(layer, dims) if self.feeds else None
        if self.out_norms:
            self.attn_out_norm = layer.norm.build(dims) if self.mixes else None
            self.ffn_out_norm = layer.norm.build(dims) if self.feeds else None
        self.dropout = nn.Dropout(dims.dropout)
        size = getattr(params, "per_layer_input", None)
        self.per_layer_input = PerLayerInput(size, dims, layer) if size is not None else None
        self.layer_scalar = nn.Parameter(torch.ones(1)) if getattr(params, "layer_scalar", False) else None

    def feed_forward_norm(self, layer: LayerSpec, dims: Dims) -> nn.Module:
        return _feed_forward_norm(layer, dims) if self.norms_input else layer.norm.build(dims)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:  # (B, T, C)
        if self.mixes:
            x = self.step(
                x, lambda h: self.attention(h, ctx, cache), self.attn_norm, getattr(self, "attn_out_norm", None)
            )
        if self.feeds:
            x = self.step(x, self.feed_forward, self.ffn_norm, getattr(self, "ffn_out_norm", None))
        if self.per_layer_input is not None:
            x = self.per_layer_input(x, ctx)
        if self.layer_scalar is not None:  # in the stream's dtype, which a float32 scalar would promote
            x = x * self.layer_scalar.to(x.dtype)
        return x

    def join(self, x: Tensor, branch: Tensor) -> Tensor:
        return _join(self.params, x, branch)

    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        raise NotImplementedError


class PreNormBlock(_Sublayers):
    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        return self.join(x, self.dropout(sublayer(norm(x))))


class PostNormBlock(_Sublayers):
    output_normalized = True
    norms_input = False

    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        return norm(self.join(x, self.dropout(sublayer(x))))


class NormedResidualBlock(_Sublayers):
    """Pre-norm whose residual is the normalised input, not the input (MiniMax-01's decoder layer)."""

    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        h = norm(x)
        return self.join(h, self.dropout(sublayer(h)))


class SublayerOutputNormBlock(_Sublayers):
    """The norms act on each sublayer's output before it joins the residual stream (OLMo 2's reordered norm)."""

    norms_input = False

    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        return self.join(x, self.dropout(norm(sublayer(x))))


class SandwichBlock(_Sublayers):
    """A norm before and after each sublayer."""

    out_norms = True

    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        assert out_norm is not None
        return self.join(x, self.dropout(out_norm(sublayer(norm(x)))))


class NoShortcutBlock(_Sublayers):
    """Pre-norm without the residual stream: each sublayer's output replaces its input.

    The teaching variant of the book's section 4.4: without shortcut connections the gradient
    reaching the early layers shrinks layer by layer (``gptzoo gradients`` shows it).
    """

    Params = Params  # no stream to scale

    def step(self, x: Tensor, sublayer: Sublayer, norm: nn.Module, out_norm: nn.Module | None) -> Tensor:
        return self.dropout(sublayer(norm(x)))


class ParallelParams(ResidualParams):
    shared_norm: bool = False  # True: one norm feeds both sublayers (GPT-J, Phi); False: one each (GPT-NeoX)


class ParallelBlock(Block):
    """The mixer and the feed-forward read the same input and both add to the residual stream."""

    Params = ParallelParams

    def __init__(self, params: ParallelParams, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.attn_norm = layer.norm.build(dims)
        self.attention = layer.attention.build(dims)
        self.ffn_norm = None if params.shared_norm and not _reads_stream(layer) else _feed_forward_norm(layer, dims)
        self.feed_forward = layer.feed_forward.build(dims)
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        h = self.attn_norm(x)
        f = h if self.ffn_norm is None else self.ffn_norm(x)
        branch = self.dropout(self.attention(h, ctx, cache)) + self.dropout(self.feed_forward(f))
        return _join(self.params, x, branch)


@hookimpl
def register_components(register):
    register("block", "pre_norm", PreNormBlock)
    register("block", "post_norm", PostNormBlock)
    register("block", "normed_residual", NormedResidualBlock)
    register("block", "sandwich", SandwichBlock)
    register("block", "sublayer_output_norm", SublayerOutputNormBlock)
    register("block", "parallel", ParallelBlock)
    register("block", "no_shortcut", NoShortcutBlock)
