"""Reading a TOML config: ``extends = "base.toml"`` at top level (the base read first, this file merged over
it) and ``--set`` overrides, which replace a component's spec when they name another plugin."""

from pathlib import Path

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config.reading import apply_overrides, read_toml

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

BASE = """
[model]
d_model = 64
n_layers = 2
positional = { name = "rope", base = 10000.0 }
attention = "sdpa"
norm = { name = "layernorm", eps = 1e-5 }
layers = [1, 2]

[train]
max_steps = 10
lr = 1e-3
"""


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_tables_merge_key_by_key_over_the_base(tmp_path):
    write(tmp_path, "base.toml", BASE)
    child = write(
        tmp_path,
        "child.toml",
        'extends = "base.toml"\n[model]\nd_model = 128\npositional = { base = 500000.0 }\nlayers = [3]\n[data]\nseed = 1\n',
    )
    assert read_toml(child) == {
        "model": {
            "d_model": 128,
            "n_layers": 2,
            "positional": {"name": "rope", "base": 500000.0},
            "attention": "sdpa",
            "norm": {"name": "layernorm", "eps": 1e-5},
            "layers": [3],  # a list is a value: replaced, not merged
        },
        "train": {"max_steps": 10, "lr": 1e-3},
        "data": {"seed": 1},
    }


def test_naming_another_plugin_replaces_the_component(tmp_path):
    write(tmp_path, "base.toml", BASE)
    child = write(
        tmp_path,
        "child.toml",
        'extends = "base.toml"\n[model]\nnorm = { name = "rmsnorm" }\nattention = { window = 8 }\n'
        'positional = { name = "rope", theta_scale = 2 }\n',
    )
    model = read_toml(child)["model"]
    assert model["norm"] == {"name": "rmsnorm"}  # layernorm's eps means nothing to rmsnorm
    assert model["attention"] == {"name": "sdpa", "window": 8}  # a name-only component, extended
    assert model["positional"] == {"name": "rope", "base": 10000.0, "theta_scale": 2}  # the same plugin: merged
    # the same rule as --set model.norm.name=rmsnorm
    base = read_toml(tmp_path / "base.toml")
    assert apply_overrides(base, ["model.norm.name=rmsnorm"])["model"]["norm"] == {"name": "rmsnorm"}


def test_bases_nest_and_paths_are_relative_to_the_extending_file(tmp_path, monkeypatch):
    write(tmp_path, "presets/base.toml", BASE)
    write(tmp_path, "presets/wide.toml", 'extends = "base.toml"\n[model]\nd_model = 256\n')
    child = write(tmp_path, "runs/deep.toml", 'extends = "../presets/wide.toml"\n[model]\nn_layers = 8\n')
    monkeypatch.chdir(tmp_path / "presets")  # not the folder the paths are relative to
    model = read_toml(child)["model"]
    assert (model["d_model"], model["n_layers"], model["attention"]) == (256, 8, "sdpa")
    assert "extends" not in read_toml(child)


def test_a_cycle_is_an_error_naming_the_files(tmp_path):
    a = write(tmp_path, "a.toml", 'extends = "b.toml"\n[model]\nd_model = 1\n')
    b = write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError) as err:
        read_toml(a)
    assert str(err.value) == f"{b}: extends = 'a.toml' makes a cycle: {a} -> {b} -> {a}"


def test_a_file_extending_itself_is_a_cycle(tmp_path):
    a = write(tmp_path, "a.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="makes a cycle"):
        read_toml(a)


def test_a_missing_base_names_the_extending_file(tmp_path):
    child = write(tmp_path, "child.toml", 'extends = "nope.toml"\n')
    with pytest.raises(ConfigError) as err:
        read_toml(child)
    assert str(err.value) == f"{child}: extends = 'nope.toml': no such file ({tmp_path / 'nope.toml'})"


def test_a_bad_base_names_the_base(tmp_path):
    bad = write(tmp_path, "bad.toml", "[model\n")
    child = write(tmp_path, "child.toml", 'extends = "bad.toml"\n')
    with pytest.raises(ConfigError, match=f"^{bad}: not valid TOML"):
        read_toml(child)


def test_extends_must_be_a_string(tmp_path):
    child = write(tmp_path, "child.toml", "extends = 3\n")
    with pytest.raises(ConfigError) as err:
        read_toml(child)
    assert str(err.value).startswith(f"{child}: extends = 3: give the base config's path")


def test_a_base_found_by_name(tmp_path):
    base = write(tmp_path, "elsewhere/base.toml", BASE)
    child = write(tmp_path, "child.toml", 'extends = "base"\n')
    assert read_toml(child, find_base={"base": base}.__getitem__)["model"]["d_model"] == 64


def test_read_toml_reads_a_shipped_config():
    assert read_toml(CONFIGS / "gpt2-124m.toml")["model"]["d_model"] == 768


def test_setting_name_to_another_plugin_replaces_the_spec():
    data = {"model": {"positional": {"name": "rope", "base": 500.0}}}
    assert apply_overrides(data, ["model.positional.name=learned"])["model"]["positional"] == {"name": "learned"}
    # the same name keeps its params; params given after the name apply to the new plugin
    assert apply_overrides(data, ["model.positional.name=rope"])["model"]["positional"] == {
        "name": "rope",
        "base": 500.0,
    }
    assert apply_overrides(data, ["model.positional.name=sinusoidal", "model.positional.base=20.0"])["model"][
        "positional"
    ] == {"name": "sinusoidal", "base": 20.0}
    assert data["model"]["positional"] == {"name": "rope", "base": 500.0}  # the input is not modified
