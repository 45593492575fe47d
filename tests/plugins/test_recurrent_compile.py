"""The recurrent token mixers under torch.compile(fullgraph=True) (issue 23): training's chunked form
across several chunk boundaries, then decoding through the cache (a prefill of several chunks, then
one token), each compiled whole and equal to eager. tests/core/test_compile.py compiles every
variant on one short sequence, within one chunk."""

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.registry import make_registry
from gptzoo.testing import tiny_config

REGISTRY = make_registry(entry_points=False)
CHUNKED = {"chunk_size": 4}  # 17 tokens span four chunks: the loops over chunks unroll
MIXERS = {
    "linear": CHUNKED,
    "retention": CHUNKED,
    "lightning": CHUNKED,
    "gla": CHUNKED,
    "deltanet": CHUNKED,
    "gated_deltanet": CHUNKED,
    "kimi_delta": CHUNKED,
    "mamba2": {**CHUNKED, "d_state": 8},
    "mamba": {"d_state": 4},  # its scan's chunks are about √T tokens
    "short_conv": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MIXERS))
def test_compiled_whole_training_and_decoding_match_eager(name):
    positional = "rope" if "rotate" in REGISTRY.resolve("attention", name).position_hooks else "none"
    config = tiny_config(
        REGISTRY,
        n_layers=1,
        n_kv_heads=None,
        context_length=17,
        positional=positional,
        attention={"name": name, **MIXERS[name]},
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # capture without generating code
    idx = torch.randint(0, 50, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx))
        cache, eager_cache = model.new_cache(2, 17), model.new_cache(2, 17)
        for start, end in [(0, 16), (16, 17)]:
            got = compiled(idx[:, start:end], cache=cache)
            torch.testing.assert_close(got, model(idx[:, start:end], cache=eager_cache))
    torch._dynamo.reset()
