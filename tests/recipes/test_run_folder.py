"""A run folder loads back into a model with the same outputs, whichever attention variant reads it."""

import torch

from gptzoo.core import GPT
from gptzoo.recipes.config import RunConfig
from gptzoo.recipes.run import load_run, save_run

SPEC = {"vocab_size": 64, "context_length": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "tokenizer": "byte", "tied_head": True}


def test_load_run_restores_every_attention_layout(tmp_path, registry):
    torch.manual_seed(0)
    source = GPT(registry.model_config(dict(SPEC, attention="sdpa"))).eval()
    idx = torch.randint(0, 64, (2, 12))
    for attention in ("per_head", "fused", "sdpa"):
        config = registry.model_config(dict(SPEC, attention=attention))
        save_run(tmp_path / attention, RunConfig(model=config), source, config.tokenizer.build())
        torch.testing.assert_close(load_run(tmp_path / attention).model(idx), source(idx))
