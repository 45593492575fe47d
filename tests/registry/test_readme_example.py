"""The docs' "Writing a plugin", "Writing an attention variant" and "Conformance kit" examples (docs/extending.md,
once the README's) work exactly as written."""

import re
import sys
import tomllib
from pathlib import Path

import pytest

from gptzoo.core import GPT
from gptzoo.registry import PLUGINS_ENV, default_registry, make_registry

EXTENDING = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def section(title):
    text = EXTENDING.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"docs/extending.md has no '## {title}' section"
    return match.group(1)


def blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to 'install' into; the module and the default registry are reset after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "my_norms", raising=False)
    default_registry.cache_clear()
    yield tmp_path
    sys.modules.pop("my_norms", None)
    default_registry.cache_clear()


def test_plugin_example_works_in_code_and_installed(site):
    module_code, notebook_code = blocks(section("Writing a plugin"), "python")
    pyproject, config_line = blocks(section("Writing a plugin"), "toml")
    (site / "my_norms.py").write_text(module_code)

    # In a notebook: registered in code.
    namespace = {}
    exec(notebook_code, namespace)
    model = namespace["model"]
    assert isinstance(model, GPT) and type(model.blocks[0].attn_norm).__name__ == "ScaleNorm"

    # Installed: the docs' entry point, as pip would record it, makes it visible everywhere.
    entry_points = tomllib.loads(pyproject)["project"]["entry-points"]["gptzoo"]
    info = site / "my_norms-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-norms\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gptzoo]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    entry = make_registry().get("norm", "scalenorm")
    assert (entry.distribution, entry.version) == ("my-norms", "1.0")
    component = tomllib.loads(config_line)["norm"]
    config = default_registry().model_config(
        {"vocab_size": 50, "context_length": 8, "d_model": 16, "n_layers": 1, "n_heads": 2, "norm": component}
    )
    assert config.norm.name == "scalenorm" and config.norm.params.eps == 1e-6

    # The conformance kit example, run as the plugin author's test would be.
    (kit_code,) = blocks(section("Conformance kit"), "python")
    namespace = {}
    exec(kit_code, namespace)
    namespace["test_scalenorm"]()


def test_attention_example_passes_the_kit(site):
    (module_code,) = blocks(section("Writing an attention variant"), "python")
    (site / "my_attention.py").write_text(module_code)
    import importlib

    from gptzoo.testing import check_component

    module = importlib.import_module("my_attention")
    registry = make_registry(entry_points=False)
    registry.register_plugin(module)
    check_component("attention", "temperature", registry=registry)
    sys.modules.pop("my_attention", None)
