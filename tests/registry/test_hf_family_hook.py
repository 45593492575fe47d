"""register_hf_families: a plugin installed the way pip would leave it (a package beside its
.dist-info) adds a Hugging Face family, which import-hf and export-hf read beside the built-in
table, and which their --help and the generated families page list; a family gptzoo builds in
already is refused by name."""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptzoo.core import GPT, ConfigError
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.interop.hf.convert import readable_types
from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.interop.hf.families import FAMILIES, all_families
from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import save_run
from gptzoo.registry import PLUGINS_ENV, PluginError, make_registry

PLUGIN = Path(__file__).resolve().parent / "hf_family_plugin"
ROOT = Path(__file__).resolve().parents[2]


def gptzoo(*args, **env_changes):
    """Run the gptzoo CLI in a fresh process that has the plugin installed."""
    env = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV} | env_changes
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "gptzoo.recipes", *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def installed(monkeypatch):
    """Put the plugin and its dist-info on sys.path, as an installed distribution."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return make_registry()


@pytest.fixture
def fork_checkpoint(tmp_path):
    """A Llama-layout checkpoint folder whose config.json says model_type = "llama_fork", and its weights."""
    registry = make_registry(entry_points=False)
    config = load_run_config(
        ROOT / "configs" / "llama-style.toml",
        ["model.tokenizer.name=byte", "model.vocab_size=257", "model.d_model=64", "model.n_layers=2"],
        registry,
    )
    torch.manual_seed(0)
    save_run(tmp_path / "run", config, GPT(config.model), config.model.tokenizer.build(), registry)
    export_hf(tmp_path / "run", tmp_path / "fork", registry)
    data = json.loads((tmp_path / "fork" / "config.json").read_text())
    data |= {"model_type": "llama_fork", "architectures": ["LlamaForkForCausalLM"]}
    (tmp_path / "fork" / "config.json").write_text(json.dumps(data))
    return tmp_path / "fork", load_file(str(tmp_path / "run" / "model.safetensors"))


def test_the_plugin_family_joins_the_built_in_table(installed):
    families = all_families(installed)
    assert list(families)[: len(FAMILIES)] == list(FAMILIES) and list(families)[len(FAMILIES) :] == ["llama_fork"]
    assert families["llama_fork"].architecture == "LlamaForkForCausalLM"


def test_import_and_export_read_the_plugin_family(installed, fork_checkpoint, tmp_path):
    folder, weights = fork_checkpoint
    import_hf(folder, tmp_path / "imported", registry=installed)
    imported = load_file(str(tmp_path / "imported" / "model.safetensors"))
    assert sorted(imported) == sorted(weights) and all(torch.equal(imported[n], weights[n]) for n in weights)
    family, data = export_hf(tmp_path / "imported", tmp_path / "again", installed)
    assert family.model_type == data["model_type"] == "llama_fork"  # the source's family, recorded on import
    assert data["architectures"] == ["LlamaForkForCausalLM"]


def test_without_the_plugin_the_model_type_is_refused(fork_checkpoint, tmp_path):
    folder, _ = fork_checkpoint
    assert "llama_fork" not in all_families(make_registry())
    with pytest.raises(ConfigError, match='model_type = "llama_fork" is not a family gptzoo imports'):
        import_hf(folder, tmp_path / "imported", registry=make_registry())


def test_a_plugin_family_with_a_built_in_model_type_is_refused(fork_checkpoint, tmp_path):
    registry = make_registry(entry_points=False)
    registry.add_hf_family(replace(FAMILIES["llama"], architecture="Mine"), plugin="mine")
    with pytest.raises(PluginError, match="Hugging Face family 'llama' from a plugin is built into gptzoo already"):
        import_hf(fork_checkpoint[0], tmp_path / "imported", registry=registry)
    with pytest.raises(PluginError, match="Hugging Face family 'llama' is registered twice"):
        registry.add_hf_family(FAMILIES["llama"], plugin="another")


def test_the_cli_imports_through_the_installed_plugin(fork_checkpoint, tmp_path):
    result = gptzoo("import-hf", fork_checkpoint[0], "--out", tmp_path / "imported")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "imported" / "config.json").read_text())["model"]["n_layers"] == 2


@pytest.mark.parametrize("command", ["import-hf", "export-hf"])
def test_the_help_lists_the_plugin_family_after_the_built_in_ones(command):
    result = gptzoo(command, "--help")
    assert result.returncode == 0, result.stderr
    listed = " ".join(result.stdout.split())  # argparse wraps the description
    # import-hf also reads the aliases and multimodal wrappers of the built-in families
    last_built_in = (readable_types(FAMILIES) if command == "import-hf" else list(FAMILIES))[-1]
    assert "gpt2, llama, mistral," in listed and f"{last_built_in}, llama_fork)" in listed


def test_the_help_names_a_plugin_that_fails_to_load():
    result = gptzoo("import-hf", "--help", **{PLUGINS_ENV: "not_installed"})
    assert result.returncode == 2
    assert result.stderr.startswith(f"gptzoo: error: {PLUGINS_ENV} names not_installed, not installed")


def test_the_reference_page_lists_the_plugin_family(installed):
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    row = "| [`llama_fork`](#llama_fork) | `LlamaForkForCausalLM` |"
    page = generator.hf_families_page(installed)
    assert row in page and "\n## llama_fork\n" in page
    assert page.index("## deepseek_v3") < page.index("## llama_fork")  # after the built-in table
    assert row not in generator.hf_families_page(make_registry(entry_points=False))
