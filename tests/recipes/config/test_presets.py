"""Presets by name: configs/ ships as package data and commands take a preset's name for a config."""

from pathlib import Path

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config.presets import find_config, preset_names
from gptzoo.recipes.config.schema import load_run_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_names_cover_the_folders():
    names = preset_names()
    assert {"tiny", "gpt2-124m", "hf/qwen3", "book/ch05-verdict", "ablations/attention"} <= set(names)
    assert len(names) == len(list(CONFIGS.rglob("*.toml")))


@pytest.mark.parametrize(
    "name,file",
    [
        ("tiny", "tiny.toml"),
        ("tiny.toml", "tiny.toml"),
        ("hf/qwen3", "hf/qwen3.toml"),
        ("qwen3", "hf/qwen3.toml"),  # the only preset of that name
        ("book/ch05-verdict.toml", "book/ch05-verdict.toml"),
        ("ch05-verdict", "book/ch05-verdict.toml"),
    ],
)
def test_a_name_finds_its_file(name, file):
    assert find_config(name).resolve() == (CONFIGS / file).resolve()


def test_a_path_that_exists_wins_over_a_preset(tmp_path, monkeypatch):
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert find_config("tiny") == Path("tiny")


def test_an_unknown_name_says_the_closest_presets():
    with pytest.raises(ConfigError) as err:
        find_config("qwen")
    message = str(err.value)
    assert message.startswith("qwen: no such config file, nor a shipped preset; closest presets: ")
    assert "hf/qwen3" in message and "`gptzoo presets` lists them" in message


def test_load_run_config_takes_a_name():
    assert load_run_config("hf/qwen3").model.d_model == 1024  # as configs/hf/qwen3.toml says
    assert load_run_config("gpt2-124m", ["model.n_layers=2"]).model.n_layers == 2
