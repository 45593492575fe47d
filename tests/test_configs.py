"""Every shipped config validates and builds: run configs in configs/, sweeps in configs/ablations/.

Found by glob, so a new config is covered the moment it is added."""

from pathlib import Path

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.config.reading import read_toml
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.training import costs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FINETUNE_CONFIGS = sorted(p for p in (CONFIGS / "book").glob("*.toml") if "kind" in read_toml(p))  # a fine-tuning's
RUN_CONFIGS = sorted(CONFIGS.glob("*.toml")) + sorted(set((CONFIGS / "book").glob("*.toml")) - set(FINETUNE_CONFIGS))
SWEEPS = sorted((CONFIGS / "ablations").glob("*.toml"))
SMALL = 10_000_000  # parameters; smaller models are also built for real and run


def build_and_run(model_config):
    if model_config.vocab_size is None:
        model_config = model_config.model_copy(update={"vocab_size": model_config.tokenizer.build().vocab_size})
    with torch.device("meta"):
        total = costs.param_counts(GPT(model_config))["total"]
    assert total > 0
    if total < SMALL:
        model = GPT(model_config).eval()
        with torch.no_grad():
            logits = model(torch.zeros(1, 8, dtype=torch.long))
        assert logits.shape[0] == 1 and torch.isfinite(logits).all()
    return total


def test_there_are_configs():
    names = {p.name for p in RUN_CONFIGS}
    assert {
        "gpt2-124m.toml",
        "gpt2-355m.toml",
        "gpt2-774m.toml",
        "gpt2-1558m.toml",
        "tiny.toml",
        "llama-style.toml",
    } <= names


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_validates_and_builds(path, registry):
    config = load_run_config(path, registry=registry)
    build_and_run(config.model)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_validates_and_every_variant_builds(path, registry):
    from gptzoo.recipes.research.sweep import load_sweep

    sweep = load_sweep(path, registry=registry)
    assert len(sweep.variants) >= 2, f"{path} compares nothing"
    for variant in sweep.variants:
        build_and_run(variant.config.model)


def test_the_books_fine_tunings_are_configs():
    assert {p.name for p in FINETUNE_CONFIGS} == {"ch06-spam.toml", "ch07-instruct.toml", "appendix-e-lora.toml"}


@pytest.mark.parametrize("path", FINETUNE_CONFIGS, ids=lambda p: p.name)
def test_finetune_config_validates_for_the_command_it_names(path):
    """A fine-tuning config reads as the command its "Use as" line names, with the book's settings."""
    import re

    from gptzoo.recipes.cli import build_parser, finetune_classifier, finetune_instruct, finetune_options

    command = re.search(r"gptzoo (\S+) BASE --config", path.read_text(encoding="utf-8")).group(1)
    module = {"finetune-classifier": finetune_classifier, "finetune-instruct": finetune_instruct}[command]
    args = build_parser().parse_args([command, "BASE", "--data", "data", "--out", "out", "--config", str(path)])
    kind = module.ClassifierConfig if command == "finetune-classifier" else module.InstructConfig
    config = finetune_options.config_from_arguments(kind, args, module.SHORTHANDS)
    assert config.train.seed == 123 and config.train.grad_clip is None and config.train.betas == (0.9, 0.999)
    assert config.data.split_order == "book" and config.train.drop_last and config.train.weight_decay_scope == "all"


def test_the_books_gpt_config_124m_has_the_books_parameter_count(registry):
    config = load_run_config(CONFIGS / "book" / "ch04-gpt-124m.toml", registry=registry)
    assert build_and_run(config.model) == 163_009_536  # the book's "Total number of parameters: 163,009,536"
