"""Fine-tuning configs: TOML validated with field paths, each kind's defaults, --set after extends,
and errors that name the flag when a command-line shorthand set the field."""

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config.finetune import ClassifierConfig, InstructConfig
from gptzoo.recipes.config.finetune_files import load_finetune_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_each_kind_has_the_commands_defaults(tmp_path):
    classifier = load_finetune_config(ClassifierConfig, write(tmp_path, "c.toml", '[data]\npath = "sms.tsv"\n'))
    assert classifier.train.epochs == 5 and classifier.data.split == (0.7, 0.1, 0.2)
    assert classifier.train.trainable == "last-block" and classifier.lora is None and classifier.pooling == "last"
    instruct = load_finetune_config(InstructConfig, write(tmp_path, "i.toml", '[data]\npath = "d.json"\n'))
    assert instruct.train.epochs == 2 and instruct.data.split == (0.85, 0.05, 0.1) and instruct.train.trainable == "all"
    assert instruct.data.prompt_style == "alpaca" and instruct.test.max_new_tokens == 256


def test_lora_changes_what_trains_by_default_and_alpha_defaults_to_the_rank(tmp_path):
    path = write(tmp_path, "c.toml", '[data]\npath = "sms.tsv"\n[lora]\nrank = 4\ntargets = "qkv,head.out"\n')
    classifier = load_finetune_config(ClassifierConfig, path)
    assert classifier.train.trainable == "head"  # the new head and the adapters
    assert (classifier.lora.alpha, classifier.lora.targets) == (4.0, ["qkv", "head.out"])
    instruct = load_finetune_config(InstructConfig, None, ["data.path=d.json", "lora.rank=8"])
    assert instruct.train.trainable == "none" and instruct.lora.alpha == 8.0


def test_set_applies_after_extends(tmp_path):
    write(tmp_path, "base.toml", '[data]\npath = "sms.tsv"\nbalance = true\n[train]\nlr = 1e-4\nepochs = 3\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[train]\nepochs = 4\n')
    config = load_finetune_config(ClassifierConfig, child, ["train.lr=2e-4", "data.split=0.5,0.25,0.25"])
    assert (config.train.epochs, config.train.lr, config.data.balance) == (4, 2e-4, True)
    assert config.data.split == (0.5, 0.25, 0.25)  # a --set value written as the flag writes it


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[train]\nlrr = 1e-4\n", "train.lrr: unknown field (did you mean 'lr'?)"),
        ("[train]\nlr = -1.0\n", "train.lr: give a positive learning rate"),
        ("[train]\nbetas = [0.9, 1.5]\n", "train.betas: give two numbers in [0, 1)"),
        ('[train]\ntrainable = "none"\n', "train.trainable = 'none' trains nothing without lora.rank"),
        ("[lora]\nalpha = 2.0\n", "lora: lora.alpha needs lora.rank"),
        ("[data]\nsplit = [0.7, 0.2, 0.2]\n", "data.split: give three positive fractions that sum to at most 1"),
        ('[data]\ntext_column = "message"\n', "data.text_column = 'message': sms.tsv is read as label<TAB>text lines"),
        ("mask_prompt = true\n", "mask_prompt: unknown field"),
    ],
)
def test_a_bad_field_is_named_with_its_file(tmp_path, toml, message):
    path = write(tmp_path, "bad.toml", toml)
    with pytest.raises(ConfigError) as err:
        load_finetune_config(ClassifierConfig, path, ['data.path="sms.tsv"'])
    assert str(err.value).startswith(f"{path}: invalid config") and message in str(err.value)


def test_a_flag_is_named_as_it_was_given():
    flags = {"data.path": ("--data", "sms.tsv"), "train.lr": ("--lr", float("nan"))}
    with pytest.raises(ConfigError, match="^--lr nan: give a positive learning rate$"):
        load_finetune_config(ClassifierConfig, None, [], flags)
    flags = {"data.path": ("--data", "sms.tsv"), "lora.alpha": ("--lora-alpha", 2.0)}
    with pytest.raises(ConfigError, match="--lora-alpha needs --lora-rank"):
        load_finetune_config(ClassifierConfig, None, [], flags, {"lora.rank": "--lora-rank"})


def test_the_kind_must_match(tmp_path):
    path = write(tmp_path, "i.toml", 'kind = "instruct"\n[data]\npath = "d.json"\n')
    with pytest.raises(ConfigError, match="kind: Input should be 'classifier'"):
        load_finetune_config(ClassifierConfig, path)


def test_a_flag_at_fault_comes_first_and_the_other_problems_follow(tmp_path):
    flags = {"data.path": ("--data", "sms.tsv"), "train.epochs": ("--epochs", 0)}
    with pytest.raises(ConfigError) as err:
        load_finetune_config(ClassifierConfig, None, ["train.lr=-1"], flags)
    assert str(err.value).splitlines() == ["--epochs 0: give at least 1", "  train.lr: give a positive learning rate"]
