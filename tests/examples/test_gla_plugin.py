"""The example third-party token mixer (examples/plugins/gptzoo-gla), installed the way pip would
leave it, passes the conformance kit for what it declares (an implicit attention matrix, no
position hooks, a state), computes the gated recurrence written out token by token here, shows
its implicit attention to inspection as computed, and describe counts its state."""

import math
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from gptzoo.core import GPT, ConfigError, Recorder
from gptzoo.recipes.cli.describe import describe
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.registry import PLUGINS_ENV, make_registry
from gptzoo.testing import check_component

HERE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "gptzoo-gla"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plugin's package and a .dist-info written from its pyproject.toml on sys.path, as pip leaves them."""
    project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    info = tmp_path / f"{project['name']}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = "".join(f"{name} = {value}\n" for name, value in project["entry-points"]["gptzoo"].items())
    (info / "entry_points.txt").write_text(f"[gptzoo]\n{entry_points}")
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    return make_registry()


def model_from_toml(registry, *overrides):
    config = load_run_config(HERE / "gla.toml", list(overrides), registry=registry)
    torch.manual_seed(0)
    return GPT(config.model).eval()


def test_found_through_its_entry_point(installed):
    entry = installed.get("attention", "headwise_gla")
    assert (entry.plugin, entry.distribution, entry.version) == ("gla", "gptzoo_gla", "0.1.0")


def test_not_there_when_not_installed():
    assert "headwise_gla" not in make_registry().names("attention")


def test_passes_the_conformance_kit(installed, capsys):
    check_component("attention", "headwise_gla", registry=installed)
    assert "checked at lengths 16, 53" in capsys.readouterr().out  # 3 chunks of 16 and 5 tokens more


def mixer_calls(model, idx):
    """What each layer's mixer receives and returns, (B, T, C) each, through forward hooks."""
    seen = []
    hooks = [b.attention.register_forward_hook(lambda m, args, out: seen.append((args[0], out))) for b in model.blocks]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return seen


def gates_and_heads(layer, x):
    """g (B, nkv, T) and q (B, nh, T, hs), k, v (B, nkv, T, hs) from the layer's weights, written out."""
    B, T, _ = x.shape
    nh, nkv, hs = 4, 2, 8
    W = layer.qkv.weight
    q = (x @ W[: nh * hs].T).view(B, T, nh, hs).transpose(1, 2)
    k = (x @ W[nh * hs : (nh + nkv) * hs].T).view(B, T, nkv, hs).transpose(1, 2)
    v = (x @ W[(nh + nkv) * hs :].T).view(B, T, nkv, hs).transpose(1, 2)
    g = torch.sigmoid(x @ layer.gate.weight.T + layer.gate.bias) ** (1 / 16.0)  # (B, T, nkv)
    return g.transpose(1, 2), q, k, v


def test_computes_the_gated_recurrence_token_by_token(installed):
    model = model_from_toml(installed)  # chunks of 4: 13 tokens cross three chunk boundaries
    idx = torch.randint(0, 50, (2, 13), generator=torch.Generator().manual_seed(1))
    layer = model.blocks[0].attention
    x, output = mixer_calls(model, idx)[0]
    g, q, k, v = gates_and_heads(layer, x)
    S = torch.zeros(2, 2, 8, 8)  # (B, nkv, hs, hs)
    ys = []
    for t in range(13):
        S = g[:, :, t, None, None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # S_t = g_t S_{t-1} + k_tᵀ v_t
        ys.append(
            q[:, :, t, None, :] @ S.repeat_interleave(2, dim=1) / math.sqrt(8)
        )  # query heads 0, 1 share kv head 0
    y = torch.cat(ys, dim=2).transpose(1, 2).reshape(2, 13, 32)
    assert_close(output, F.linear(y, layer.out_proj.weight, layer.out_proj.bias))


def test_inspection_gets_the_implicit_attention_as_computed(installed):
    model = model_from_toml(installed)
    idx = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(2))
    recorder = Recorder()
    with torch.no_grad():
        model(idx, recorder=recorder)
    assert recorder.offers == ["implicit_attention", "implicit_attention"]
    x, _ = mixer_calls(model, idx)[1]
    g, q, k, _ = gates_and_heads(model.blocks[1].attention, x)
    expected = torch.zeros(4, 10, 10)
    for h in range(4):
        for t in range(10):
            for s in range(t + 1):
                decay = g[0, h // 2, s + 1 : t + 1].prod()  # g_{s+1} ··· g_t
                expected[h, t, s] = (q[0, h, t] @ k[0, h // 2, s]) / math.sqrt(8) * decay
    assert_close(recorder.attentions[1][0], expected)
    assert not torch.allclose(expected.sum(-1), torch.ones(4, 10))  # not a distribution, and not made one


def test_refuses_positions_it_never_applies(installed):
    with pytest.raises(ConfigError, match="rotate.*headwise_gla|headwise_gla.*rotate"):
        load_run_config(HERE / "gla.toml", ["model.positional.name=rope"], registry=installed)


def test_describe_counts_a_state_of_the_same_size_at_any_length(installed):
    info = describe(load_run_config(HERE / "gla.toml", registry=installed))
    state = 2 * 8 * 8 * 4  # 2 key/value heads of 8: an 8 × 8 float32 state each
    assert [row["state_bytes"] for row in info["layers"]] == [state, state]
    cache = info["kv_cache"]
    assert (cache["bytes_per_token"], cache["state_bytes"], cache["bytes_per_sequence"]) == (0, 2 * state, 2 * state)
    assert cache["decodes_past_context"]
