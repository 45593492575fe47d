"""A third-party gptzoo plugin: the GEGLU feed-forward (Shazeer, 2020) with the exact (erf) GELU,
GELU(x W_gate) ⊙ (x W_up) W_out, registered as geglu_erf (the built-in geglu gates with the tanh GELU).

Installed, it is found through its entry point (group "gptzoo"); nothing in gptzoo names it.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import Dims, FeedForward, Params
from gptzoo.registry import hookimpl


class GEGLUParams(Params):
    hidden: int | None = None  # None: 4 × d_model
    bias: bool = False


class GEGLU(FeedForward):
    Params = GEGLUParams

    def __init__(self, params: GEGLUParams, dims: Dims):
        super().__init__(params, dims)
        hidden = params.hidden or 4 * dims.d_model
        self.gate_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.up_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.out_proj = nn.Linear(hidden, dims.d_model, bias=params.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(F.gelu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, hidden) -> (B, T, C)


@hookimpl
def register_components(register):
    register("feed_forward", "geglu_erf", GEGLU)
