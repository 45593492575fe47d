"""Every config mistake is a ConfigError naming what is wrong, raised before any tensor exists."""

import json
from pathlib import Path

import pytest
import torch

from gptzoo.core import ConfigError, ModelConfig
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.registry import make_registry

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}


@pytest.fixture
def no_modules(monkeypatch):
    """Fail the test if anything builds a torch module (so: allocates parameters)."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a torch module was built while the config was still being checked")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)


def write(tmp_path, model_lines, name="config.toml"):
    path = tmp_path / name
    path.write_text(
        "[model]\nvocab_size = 50\ncontext_length = 16\nn_layers = 2\n" + model_lines + "\n[train]\nmax_steps = 1\n"
    )
    return path


CASES = [
    # (model lines, fragments the message must contain)
    (
        'd_model = 32\nn_heads = 4\nattention = { name = "spda" }',
        ["attention", "'spda'", "did you mean 'sdpa'", ", ".join(make_registry().names("attention"))],
    ),
    (
        'd_model = 32\nn_heads = 4\nnorm = { name = "rmsnorm", epsilon = 1e-5 }',
        ["norm 'rmsnorm'", "epsilon", "unknown field", "did you mean 'eps'"],
    ),
    (
        'd_model = 32\nn_heads = 4\nnorm = { name = "layernorm", eps = "small" }',
        ["norm 'layernorm'", "eps", "valid number"],
    ),
    ("d_model = 32\nn_heads = 4\ndropout = 1.5", ["dropout", "less than 1"]),
    ("d_model = 30\nn_heads = 4", ["d_model=30", "n_heads=4", "divisible"]),
    ("d_model = 32\nn_heads = 4\nn_kv_heads = 3", ["n_heads=4", "n_kv_heads=3", "divisible"]),
    (
        'd_model = 20\nn_heads = 4\npositional = { name = "rope" }',
        ["positional 'rope'", "even number of rotated dimensions", "d_model=20", "n_heads=4"],
    ),
    (
        'd_model = 32\nn_heads = 4\ntied_head = true\nhead = { name = "classifier" }',
        ["head 'classifier'", "tied_head = false"],
    ),
    (
        'd_model = 32\nn_heads = 4\nhead = { name = "classifier", n_classes = 1 }',
        ["head 'classifier'", "n_classes", "greater than or equal to 2"],
    ),
    ("dmodel = 32\nn_heads = 4", ["dmodel", "unknown field", "did you mean 'd_model'"]),
    ("d_model = 32\nn_heads = 4\nattention = 3", ["attention", 'name = "..."']),
]


@pytest.mark.parametrize("lines,fragments", CASES, ids=[f[0] for _, f in CASES])
def test_config_error_names_the_problem(tmp_path, no_modules, lines, fragments):
    path = write(tmp_path, lines)
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_every_problem_is_listed_at_once(tmp_path, no_modules):
    path = write(tmp_path, 'd_model = 32\nn_heads = 4\nattention = "spda"\nnorm = { name = "rmsnorm", epsilon = 1e-5 }')
    with pytest.raises(ConfigError, match=r"(?s)spda.*epsilon"):
        load_run_config(path)


def test_missing_file(tmp_path, no_modules):
    with pytest.raises(ConfigError, match="nope.toml: no such config file"):
        load_run_config(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path, no_modules):
    path = tmp_path / "broken.toml"
    path.write_text("[model]\nd_model = = 3\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML.*line 2"):
        load_run_config(path)


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.d_model", "write it as key=value"),
        ("=3", "write it as key=value"),
        ("model.d_model.x=3", "'d_model' is a value, not a table"),
        ("model.d_model=wide", "d_model"),
        ("model.attention.name=spda", "did you mean 'sdpa'"),
        ("model.norm.epsilon=1e-5", "epsilon"),
    ],
)
def test_bad_override(tmp_path, no_modules, override, fragment):
    path = write(tmp_path, "d_model = 32\nn_heads = 4")
    with pytest.raises(ConfigError, match=fragment):
        load_run_config(path, [override])


def test_no_model_table(tmp_path, no_modules):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nmax_steps = 1\n")
    with pytest.raises(ConfigError, match=r"c.toml.*\[model\]"):
        load_run_config(path)


def test_component_specs_need_a_registry():
    with pytest.raises(ValueError, match="registry"):
        ModelConfig.model_validate(TINY | {"attention": "sdpa"})


# ---- round trips ------------------------------------------------------------------------


def test_model_config_json_round_trip(registry):
    config = registry.model_config(
        TINY | {"n_kv_heads": 2, "positional": {"name": "rope", "base": 500.0}, "head": "classifier"}
    )
    again = registry.model_config(json.loads(config.model_dump_json()))
    assert again == config
    assert again.positional.params.base == 500.0 and again.positional.impl is config.positional.impl
    assert json.loads(config.model_dump_json())["positional"] == {
        "name": "rope",
        "base": 500.0,
        "scaling": None,
        "fraction": 1.0,
        "layout": "halves",
        "proportional": False,
        "reverse": False,
    }


def test_toml_to_json_gives_the_same_run_config(tmp_path):
    config = load_run_config(CONFIGS / "llama-style.toml")
    (tmp_path / "config.json").write_text(config.model_dump_json())
    assert load_run_config(tmp_path / "config.json") == config
    assert load_run_config(tmp_path) == config  # a run folder reads its config.json


# ---- override semantics ------------------------------------------------------------------


def test_override_sets_a_component_name(tmp_path):
    config = load_run_config(
        CONFIGS / "gpt2-124m.toml", ["model.attention.name=fused", "model.d_model=384", "train.lr=0.01"]
    )
    assert config.model.attention.name == "fused"
    assert config.model.d_model == 384 and config.train.lr == 0.01


def test_override_on_a_component_given_by_name_only(tmp_path):
    path = write(tmp_path, 'd_model = 32\nn_heads = 4\nnorm = "layernorm"')
    config = load_run_config(path, ["model.norm.eps=0.001"])
    assert config.model.norm.name == "layernorm" and config.model.norm.params.eps == 0.001


def test_swapped_plugin_loses_the_old_params(tmp_path):
    path = write(tmp_path, 'd_model = 32\nn_heads = 4\nfeed_forward = { name = "swiglu", hidden = 64, bias = true }')
    config = load_run_config(path, ["model.feed_forward.name=relu"])
    assert config.model.feed_forward.name == "relu"
    assert config.model.feed_forward.params.hidden is None  # relu's own default, not swiglu's 64


def test_the_no_modules_guard_itself_works(registry, no_modules):
    from gptzoo.core import GPT

    config = registry.model_config(TINY)  # validating builds nothing
    with pytest.raises(AssertionError, match="torch module was built"):
        GPT(config)
