"""Block layouts: where the norms sit around attention and feed-forward on the residual stream.

Written out for one layer, with a = attention, f = feed-forward, n = norms, d = dropout:

- ``pre_norm``             x += d(a(n1(x)));  x += d(f(n2(x)))          GPT-2, Llama
- ``post_norm``            x = n1(x + d(a(x)));  x = n2(x + d(f(x)))    the original Transformer
- ``sandwich``             x += d(n1'(a(n1(x))));  x += d(n2'(f(n2(x))))  Gemma 2 and 3
- ``sublayer_output_norm`` x += d(n1(a(x)));  x += d(n2(f(x)))          OLMo 2
- ``parallel``             x += d(a(n1(x))) + d(f(n2(x)))  (n2 = n1 with shared_norm)  GPT-J, GPT-NeoX, Phi
- ``no_shortcut``          x = d(a(n1(x)));  x = d(f(n2(x)))            the book's 4.4 lesson: no residual stream
"""

from torch import Tensor, nn

from gptzoo.core import AttentionContext, Block, Dims, LayerCache, LayerSpec, Params
from gptzoo.registry import hookimpl


class _Sublayers(Block):
    """Attention and feed-forward with one norm each (named after what they normalise)."""

    def __init__(self, params: Params, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.attn_norm = layer.norm.build(dims)
        self.attention = layer.attention.build(dims)
        self.ffn_norm = layer.norm.build(dims)
        self.feed_forward = layer.feed_forward.build(dims)
        self.dropout = nn.Dropout(dims.dropout)


class PreNormBlock(_Sublayers):
    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:  # (B, T, C)
        x = x + self.dropout(self.attention(self.attn_norm(x), ctx, cache))
        return x + self.dropout(self.feed_forward(self.ffn_norm(x)))


class PostNormBlock(_Sublayers):
    output_normalized = True

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        x = self.attn_norm(x + self.dropout(self.attention(x, ctx, cache)))
        return self.ffn_norm(x + self.dropout(self.feed_forward(x)))


class SublayerOutputNormBlock(_Sublayers):
    """The norms act on each sublayer's output before it joins the residual stream (OLMo 2's reordered norm)."""

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        x = x + self.dropout(self.attn_norm(self.attention(x, ctx, cache)))
        return x + self.dropout(self.ffn_norm(self.feed_forward(x)))


class SandwichBlock(_Sublayers):
    """A norm before and after each sublayer."""

    def __init__(self, params: Params, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.attn_out_norm = layer.norm.build(dims)
        self.ffn_out_norm = layer.norm.build(dims)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        x = x + self.dropout(self.attn_out_norm(self.attention(self.attn_norm(x), ctx, cache)))
        return x + self.dropout(self.ffn_out_norm(self.feed_forward(self.ffn_norm(x))))


class NoShortcutBlock(_Sublayers):
    """Pre-norm without the residual stream: each sublayer's output replaces its input.

    The teaching variant of the book's section 4.4: without shortcut connections the gradient
    reaching the early layers shrinks layer by layer (``gptzoo gradients`` shows it).
    """

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:  # (B, T, C)
        x = self.dropout(self.attention(self.attn_norm(x), ctx, cache))
        return self.dropout(self.feed_forward(self.ffn_norm(x)))


class ParallelParams(Params):
    shared_norm: bool = False  # True: one norm feeds both sublayers (GPT-J, Phi); False: one each (GPT-NeoX)


class ParallelBlock(Block):
    """Attention and feed-forward read the same input and both add to the residual stream."""

    Params = ParallelParams

    def __init__(self, params: ParallelParams, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.attn_norm = layer.norm.build(dims)
        self.attention = layer.attention.build(dims)
        self.ffn_norm = None if params.shared_norm else layer.norm.build(dims)
        self.feed_forward = layer.feed_forward.build(dims)
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        h = self.attn_norm(x)
        f = h if self.ffn_norm is None else self.ffn_norm(x)
        return x + self.dropout(self.attention(h, ctx, cache)) + self.dropout(self.feed_forward(f))


@hookimpl
def register_components(register):
    register("block", "pre_norm", PreNormBlock)
    register("block", "post_norm", PostNormBlock)
    register("block", "sandwich", SandwichBlock)
    register("block", "sublayer_output_norm", SublayerOutputNormBlock)
    register("block", "parallel", ParallelBlock)
    register("block", "no_shortcut", NoShortcutBlock)
