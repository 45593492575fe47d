"""Every shipped config validates and builds: run configs in configs/, sweeps in configs/ablations/.

Found by glob, so a new config is covered the moment it is added."""

from pathlib import Path

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.config.schema import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(CONFIGS.glob("*.toml")) + sorted((CONFIGS / "book").glob("*.toml"))
SWEEPS = sorted((CONFIGS / "ablations").glob("*.toml"))
OPTION_FILES = sorted((CONFIGS / "book").glob("*.args"))
SMALL = 10_000_000  # parameters; smaller models are also built for real and run


def build_and_run(model_config):
    if model_config.vocab_size is None:
        model_config = model_config.model_copy(update={"vocab_size": model_config.tokenizer.build().vocab_size})
    with torch.device("meta"):
        total = GPT(model_config).param_counts()["total"]
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


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.name)
def test_option_file_parses_for_the_command_it_names(path):
    """An @FILE of options reads as the command its "Use as" line names, and passes its checks."""
    import importlib
    import re

    from gptzoo.recipes.cli import COMMANDS, build_parser, finetune_options

    command = re.search(r"gptzoo (\S+) BASE", path.read_text(encoding="utf-8")).group(1)
    args = build_parser().parse_args([command, "BASE", "--data", "data", "--out", "out", f"@{path}"])
    module = importlib.import_module(COMMANDS[command])
    kind = module.ClassifierConfig if command == "finetune-classifier" else module.InstructConfig
    config = finetune_options.config_from_arguments(kind, args, module.SHORTHANDS)
    assert config.train.seed == 123 and config.train.grad_clip is None and config.train.betas == (0.9, 0.999)
    assert config.data.split_order == "book"


def test_the_books_gpt_config_124m_has_the_books_parameter_count(registry):
    config = load_run_config(CONFIGS / "book" / "ch04-gpt-124m.toml", registry=registry)
    assert build_and_run(config.model) == 163_009_536  # the book's "Total number of parameters: 163,009,536"
