"""The example third-party plugin (examples/plugins/gptzoo-geglu), installed the way pip would
leave it (its package on the path, a .dist-info with its pyproject's name, version and entry
points), is found through its entry point and works everywhere a built-in does, with no change to gptzoo."""

import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from gptzoo.core import GPT, ConfigError
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.registry import PLUGINS_ENV, make_registry
from gptzoo.testing import check_component

HERE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "gptzoo-geglu"


@pytest.fixture
def site(tmp_path):
    """A site-packages folder holding the plugin's .dist-info, written from its pyproject.toml."""
    project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    info = tmp_path / f"{project['name']}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(f"{name} = {value}\n" for name, value in project["entry-points"]["gptzoo"].items())
    (info / "entry_points.txt").write_text(f"[gptzoo]\n{entry_points}")
    return tmp_path


@pytest.fixture
def installed(monkeypatch, site):
    """Put the plugin and its dist-info on sys.path, as an installed distribution."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return make_registry()


def test_found_through_its_entry_point(installed):
    entry = installed.get("feed_forward", "geglu_erf")
    assert (entry.plugin, entry.distribution, entry.version) == ("geglu", "gptzoo_geglu", "0.1.0")


def test_not_there_when_not_installed():
    assert "geglu_erf" not in make_registry().names("feed_forward")


def test_passes_the_conformance_kit(installed):
    check_component("feed_forward", "geglu_erf", registry=installed)
    check_component("feed_forward", "geglu_erf", registry=installed, hidden=48, bias=True)


def test_a_toml_config_uses_it(installed):
    config = load_run_config(HERE / "geglu.toml", registry=installed)
    model = GPT(config.model)
    ffn = model.blocks[0].feed_forward
    assert type(ffn).__name__ == "GEGLU" and ffn.gate_proj.out_features == 64
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 50)
    # its params are validated like a built-in's
    with pytest.raises(
        ConfigError, match=r"feed_forward 'geglu_erf': hiden: unknown field \(did you mean 'hidden'\?\)"
    ):
        load_run_config(HERE / "geglu.toml", ["model.feed_forward.hiden=8"], registry=installed)


def test_computes_geglu(installed):
    config = load_run_config(HERE / "geglu.toml", registry=installed)
    ffn = GPT(config.model).blocks[0].feed_forward
    x = torch.randn(2, 3, 32)
    gate = x @ ffn.gate_proj.weight.T
    expected = (0.5 * gate * (1 + torch.erf(gate / math.sqrt(2))) * (x @ ffn.up_proj.weight.T)) @ ffn.out_proj.weight.T
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)


def test_cli_lists_it_with_its_distribution(site):
    env = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-m", "gptzoo.recipes", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (entry,) = [e for e in json.loads(result.stdout) if e["name"] == "geglu_erf"]
    assert entry["family"] == "feed_forward"
    assert (entry["plugin"], entry["distribution"], entry["version"]) == ("geglu", "gptzoo_geglu", "0.1.0")
    assert entry["params"]["hidden"] == {"type": "int | None", "default": None, "required": False}
