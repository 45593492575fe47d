"""torch.compile works on every built-in plugin and its checkpoints carry no wrapper prefixes."""

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.registry import make_registry
from gptzoo.testing import tiny_config

BASE = dict(vocab_size=64, context_length=16, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, tokenizer="byte")
FAMILIES = ("positional", "attention", "feed_forward", "norm", "block", "residual", "head")


def _variants():
    registry = make_registry(entry_points=False)
    return [(family, name) for family in FAMILIES for name in registry.names(family)]


@pytest.mark.parametrize("family,name", _variants())
def test_compiled_matches_eager(family, name):
    # aot_eager runs dynamo's capture and AOT autograd without generating C++: it proves the
    # plugin compiles (no untraceable code) in a second, where inductor would take many.
    registry = make_registry(entry_points=False)
    torch.manual_seed(0)
    model = GPT(
        tiny_config(registry, n_layers=1, **{family: name})
    ).eval()  # grouped-query where the variant accepts it
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()


def test_inductor_compiled_training_step_matches_eager(tmp_path):
    from gptzoo.recipes.runs.weights import load_weights, save_weights

    registry = make_registry(entry_points=False)
    torch.manual_seed(0)
    model = GPT(registry.model_config(dict(BASE, tied_head=True)))
    compiled = torch.compile(model)
    idx = torch.randint(0, 64, (2, 10))
    torch.testing.assert_close(compiled(idx), model(idx), rtol=1e-4, atol=1e-5)
    save_weights(compiled, tmp_path / "model.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not any(key.startswith("_orig_mod.") for key in f.keys())
    fresh = GPT(model.config)
    load_weights(fresh, tmp_path / "model.safetensors")
    torch.testing.assert_close(fresh(idx), model(idx))
    torch._dynamo.reset()
