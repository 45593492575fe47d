"""The ``none`` of the token mixer and feed-forward families: a layer without that sublayer.

Blocks read ``absent`` and build neither the sublayer nor its norms, so a layer holds only a
mixer (Mamba-2's layers, Nemotron-H's ``M``) or only a feed-forward (Nemotron-H's ``-``)."""

import torch
from torch import Tensor

from gptzoo.core import Attention, AttentionContext, FeedForward, LayerCache
from gptzoo.registry import hookimpl


class NoMixer(Attention):
    """No token mixing: the block skips the sublayer. It keeps no cache and reports nothing."""

    absent = True
    inspection = "nothing"
    position_hooks = frozenset()
    cache_kind = "state"
    static_cache = True

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        raise TypeError("a 'none' mixer is never called: the block leaves its sublayer out")

    def new_cache(self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype) -> LayerCache:
        return LayerCache()

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return 0

    def flops_per_token(self, context_length: int) -> int:
        return 0


class NoFeedForward(FeedForward):
    """No feed-forward: the block skips the sublayer."""

    absent = True

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError("a 'none' feed-forward is never called: the block leaves its sublayer out")


@hookimpl
def register_components(register):
    register("attention", "none", NoMixer)
    register("feed_forward", "none", NoFeedForward)
