"""Parameter counts of the GPT-2 configs against the published sizes and hand arithmetic."""

from pathlib import Path

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.config.reading import read_toml
from gptzoo.recipes.training import costs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def meta_model(registry, name):
    with torch.device("meta"):  # shapes only: nothing is allocated
        return GPT(registry.model_config(read_toml(CONFIGS / f"{name}.toml")["model"]))


@pytest.mark.parametrize(
    "name,total",
    [("gpt2-124m", 124_439_808), ("gpt2-355m", 354_823_168), ("gpt2-774m", 774_030_080), ("gpt2-1558m", 1_557_611_200)],
)
def test_gpt2_sizes(registry, name, total):
    model = meta_model(registry, name)
    assert costs.param_counts(model)["total"] == total
    # the tied head shares the embedding: counting unique tensors gives the same
    assert sum(p.numel() for p in model.parameters()) == total


def test_gpt2_124m_by_family(registry):
    V, T, C, L = 50257, 1024, 768, 12
    embeddings = V * C + T * C  # token table + learned position table
    attention = L * ((C * 3 * C + 3 * C) + (C * C + C))  # qkv with bias, output projection
    feed_forward = L * ((C * 4 * C + 4 * C) + (4 * C * C + C))  # up and down projections with biases
    norm = L * 2 * (2 * C) + 2 * C  # two LayerNorms (scale, shift) per block, one final
    assert costs.param_counts(meta_model(registry, "gpt2-124m")) == {
        "embeddings": embeddings,
        "attention": attention,
        "feed_forward": feed_forward,
        "norm": norm,
        "block": 0,  # the layouts own no parameters; their norms count under norm
        "residual": 0,  # the plain one stream
        "head": 0,  # tied: the embedding's weight counts once, under embeddings
        "total": 124_439_808,
    }
    assert embeddings == 39_383_808 and attention + feed_forward == 85_017_600


def test_untied_head_adds_its_own_matrix(registry):
    data = read_toml(CONFIGS / "gpt2-124m.toml")["model"] | {"tied_head": False}
    with torch.device("meta"):
        counts = costs.param_counts(GPT(registry.model_config(data)))
    assert counts["head"] == 50257 * 768
    assert counts["total"] == 124_439_808 + 50257 * 768
