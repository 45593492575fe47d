"""The one vocabulary resolver and the one meta-device model that describe, ablate and import count costs on."""

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.training import costs
from gptzoo.recipes.training.models import meta_model, resolve_vocab

INTEGERS_100 = 'model.tokenizer={name = "integers", vocab_size = 100}'  # ids 0..99, <|endoftext|>, <|unk|>: 102


def test_meta_model_allocates_nothing_and_counts_gpt2_124m():
    model = meta_model(load_run_config("gpt2-124m").model)
    assert all(p.is_meta for p in model.parameters())
    assert costs.param_counts(model)["total"] == 124_439_808  # GPT-2 small's published size


def test_resolve_vocab_fills_an_unset_size_from_the_tokenizer():
    config = load_run_config("tiny", [INTEGERS_100])
    assert config.model.vocab_size is None
    assert resolve_vocab(config, config.model.tokenizer.build()).model.vocab_size == 102


def test_resolve_vocab_keeps_a_larger_size_and_refuses_a_smaller_one():
    padded = load_run_config("tiny", [INTEGERS_100, "model.vocab_size=128"])
    assert resolve_vocab(padded, padded.model.tokenizer.build()).model.vocab_size == 128
    small = load_run_config("tiny", [INTEGERS_100, "model.vocab_size=64"])
    with pytest.raises(
        ConfigError, match="model.vocab_size = 64 is smaller than the 'integers' tokenizer's vocabulary of 102"
    ):
        resolve_vocab(small, small.model.tokenizer.build())
