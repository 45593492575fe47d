"""Presets written as short diffs (``extends``) resolve to the very configs they replaced, written out
here in full; run configs may extend a preset by name, and --set applies after extends."""

import tomllib
from pathlib import Path

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config.reading import read_toml
from gptzoo.recipes.config.schema import load_run_config, validate_run_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

GPT2 = """
[model]
vocab_size = 50257
context_length = 1024
d_model = {d_model}
n_layers = {n_layers}
n_heads = {n_heads}
dropout = 0.0
qkv_bias = true
tied_head = true
tokenizer = {{ name = "tiktoken", encoding = "gpt2" }}
positional = {{ name = "learned" }}
attention = {{ name = "sdpa" }}
feed_forward = {{ name = "gelu" }}
norm = {{ name = "layernorm", eps = 1e-5 }}
head = {{ name = "lm" }}

[train]
max_steps = 1000
batch_size = 8
lr = 6e-4
warmup_steps = 100
"""

BOOK_MODEL = """
[model]
vocab_size = 50257
context_length = 256
d_model = 768
n_layers = 12
n_heads = 12
dropout = 0.1
qkv_bias = false
tied_head = false
init = "torch_default"
tokenizer = { name = "tiktoken", encoding = "gpt2" }
positional = { name = "learned" }
attention = { name = "sdpa" }
feed_forward = { name = "gelu" }
norm = { name = "layernorm", eps = 1e-5 }
head = { name = "lm" }

[data]
source = "../shared/data/the-verdict.txt"
val_fraction = 0.1
seed = 123
"""

CH05_VERDICT = (
    BOOK_MODEL
    + """
[train]
epochs = 10
batch_size = 2
lr = 0.0004
min_lr_ratio = 1.0
warmup_steps = 0
betas = [0.9, 0.999]
weight_decay = 0.1
weight_decay_scope = "all"
grad_clip = 0
eval_interval = 5
eval_batches = 5
eval_at_start = true
checkpoint_interval = 0
seed = 123
sample_prompt = "Every effort moves you"
sample_tokens = 50
"""
)

APPENDIX_D_SCHEDULE = (
    BOOK_MODEL
    + """
[train]
epochs = 15
batch_size = 2
lr = 0.001
warmup_steps = 27
min_lr_ratio = 0.01
betas = [0.9, 0.999]
weight_decay = 0.1
weight_decay_scope = "all"
grad_clip = 1.0
eval_interval = 5
eval_batches = 1
eval_at_start = true
checkpoint_interval = 0
seed = 123
sample_prompt = "Every effort moves you"
sample_tokens = 50
"""
)

FULL = {  # the preset: the config it was before it extended another
    "gpt2-355m.toml": GPT2.format(d_model=1024, n_layers=24, n_heads=16),
    "gpt2-774m.toml": GPT2.format(d_model=1280, n_layers=36, n_heads=20),
    "gpt2-1558m.toml": GPT2.format(d_model=1600, n_layers=48, n_heads=25),
    "book/ch05-verdict.toml": CH05_VERDICT,
    "book/appendix-d-schedule.toml": APPENDIX_D_SCHEDULE,
}


@pytest.mark.parametrize("name", FULL)
def test_a_rewritten_preset_is_the_config_it_replaced(name, registry):
    assert "extends" in tomllib.loads((CONFIGS / name).read_text(encoding="utf-8"))
    full = tomllib.loads(FULL[name])
    assert read_toml(CONFIGS / name) == full
    resolved = load_run_config(CONFIGS / name, registry=registry)
    assert resolved == validate_run_config(full, "the full config", registry)


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_config_extends_a_preset_by_name_and_set_comes_last(tmp_path):
    mine = write(tmp_path, "mine.toml", 'extends = "gpt2-124m"\n[model]\nn_layers = 2\n[train]\nlr = 1e-3\n')
    config = load_run_config(mine, ["model.n_layers=3", "model.norm.name=rmsnorm"])
    assert (config.model.n_layers, config.model.d_model, config.train.lr, config.train.max_steps) == (
        3,
        768,
        1e-3,
        1000,
    )
    assert config.model.norm.name == "rmsnorm"


def test_a_file_beside_the_config_wins_over_a_preset_of_that_name(tmp_path):
    write(
        tmp_path,
        "tiny.toml",
        "[model]\ncontext_length = 16\nd_model = 96\nn_layers = 1\nn_heads = 2\nvocab_size = 300\n",
    )
    mine = write(tmp_path, "mine.toml", 'extends = "tiny.toml"\n')
    assert load_run_config(mine).model.d_model == 96


def test_an_unknown_base_names_the_file_and_the_closest_presets(tmp_path):
    mine = write(tmp_path, "mine.toml", 'extends = "gpt2-125m"\n')
    with pytest.raises(ConfigError) as err:
        load_run_config(mine)
    assert str(err.value).startswith(f"{mine}: extends = 'gpt2-125m': gpt2-125m: no such config file, nor a shipped")
    assert "gpt2-124m" in str(err.value)


def test_a_sweep_base_may_extend_a_preset(tmp_path, registry):
    from gptzoo.recipes.research.sweep.plan import load_sweep

    write(tmp_path, "base.toml", 'extends = "gpt2-124m"\n[model]\nn_layers = 2\n')
    sweep = write(tmp_path, "sweep.toml", 'base = "base.toml"\n[axes]\n"model.n_heads" = [4]\n')
    configs = [variant.config.model for variant in load_sweep(sweep, registry).variants]
    assert [(c.d_model, c.n_layers, c.n_heads) for c in configs] == [(768, 2, 12), (768, 2, 4)]
