"""gptzoo plugins / describe: the documented JSON shapes, hand-checked numbers, and clean errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptzoo.recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]
GPT2 = ROOT / "configs" / "gpt2-124m.toml"


def gptzoo(*args):
    """Run the real command in a subprocess: (exit code, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "gptzoo.recipes", *args], capture_output=True, text=True, timeout=120
    )
    return result.returncode, result.stdout, result.stderr


def run_main(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_json_shape():
    code, out, err = gptzoo("plugins", "--json")
    assert code == 0, err
    entries = json.loads(out)
    for entry in entries:
        assert set(entry) == {"family", "name", "plugin", "distribution", "version", "params"}
        for field in entry["params"].values():
            assert set(field) == {"type", "default", "required"}
    by_name = {(e["family"], e["name"]): e for e in entries}
    sdpa = by_name["attention", "sdpa"]
    assert (sdpa["plugin"], sdpa["distribution"]) == ("gptzoo.plugins.attention", "gptzoo")
    assert {name: field["default"] for name, field in sdpa["params"].items()} == {
        "qk_norm": "none",
        "qk_norm_eps": 1e-6,
        "qk_norm_unit_offset": False,
        "scale": None,
        "softcap": None,
    }
    assert by_name["norm", "layernorm"]["params"] == {
        "eps": {"type": "float", "default": 1e-5, "required": False},
        "bias": {"type": "bool", "default": True, "required": False},
        "scale": {"type": "bool", "default": True, "required": False},
    }
    assert by_name["head", "classifier"]["params"]["pooling"]["default"] == "last"
    families = [e["family"] for e in entries]
    assert families == sorted(
        families, key=["tokenizer", "positional", "attention", "feed_forward", "norm", "block", "head", "task"].index
    )


def test_plugins_table(capsys):
    code, out, _ = run_main(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["family", "name", "params", "provided", "by"]
    rope = next(line for line in lines if line.split()[:2] == ["positional", "rope"])
    assert "base=10000.0" in rope and "gptzoo.plugins.positional (gptzoo " in rope


def test_describe_json_gpt2_124m(capsys):
    code, out, _ = run_main(capsys, "describe", str(GPT2), "--json")
    assert code == 0
    info = json.loads(out)
    assert set(info) == {"config", "parameters", "active_parameters_per_token", "flops_per_token", "kv_cache", "layers"}
    assert set(info["config"]) == {"model", "data", "train"}
    assert info["config"]["model"]["attention"]["name"] == "sdpa"
    assert info["parameters"]["total"] == info["active_parameters_per_token"] == 124_439_808
    assert info["parameters"]["embeddings"] == 50257 * 768 + 1024 * 768
    C, L, T, V = 768, 12, 1024, 50257
    attention = L * (2 * (C * 3 * C + C * C) + 4 * C * T)  # projections + QK^T and AV over T keys
    feed_forward = L * 2 * (2 * C * 4 * C)
    head = 2 * V * C
    assert info["flops_per_token"] == {
        "positional": 0,
        "attention": attention,
        "feed_forward": feed_forward,
        "norm": 0,
        "block": 0,
        "head": head,
        "forward": attention + feed_forward + head,
        "training": 3 * (attention + feed_forward + head),
    }
    per_token = L * 2 * C * 4  # keys and values of every layer, fp32
    assert info["kv_cache"] == {
        "bytes_per_token": per_token,
        "bytes_per_sequence": per_token * T,
        "dtype": "float32",
        "context_length": T,
    }
    per_layer = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * 2 * C
    assert info["layers"][11] == {
        "layer": 11,
        "kind": None,
        "positional": "learned",
        "attention": "sdpa",
        "feed_forward": "gelu",
        "norm": "layernorm",
        "block": "pre_norm",
        "parameters": per_layer,
        "kv_cache_bytes_per_token": 2 * C * 4,
    }


def test_describe_with_overrides(capsys):
    code, out, _ = run_main(
        capsys, "describe", str(GPT2), "--json", "--set", "model.attention.name=per_head", "--set", "model.n_kv_heads=4"
    )
    assert code == 0
    info = json.loads(out)
    assert info["config"]["model"]["attention"]["name"] == "per_head"
    C, L = 768, 12
    # 4 key/value heads of size 64 instead of 12: k and v rows shrink from 2·768 to 2·256
    assert info["parameters"]["attention"] == L * (C * (C + 2 * 256) + (C + 2 * 256) + C * C + C)
    assert info["kv_cache"]["bytes_per_token"] == L * 2 * 256 * 4


def test_describe_text(capsys):
    code, out, _ = run_main(capsys, "describe", str(GPT2))
    assert code == 0
    assert "124,439,808" in out and "attention" in out and "name='sdpa'" in out


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["describe", "no/such/config.toml"], "no/such/config.toml: no such config file"),
        (["describe", str(GPT2), "--set", "model.attention.name=spda"], "did you mean 'sdpa'"),
        (["describe", str(GPT2), "--set", "model.d_model"], "write it as key=value"),
        (["describe", str(GPT2), "--set", "model.n_heads=7"], "d_model=768 must be divisible by n_heads=7"),
    ],
)
def test_errors_exit_2_with_one_message(capsys, args, fragment):
    code, out, err = run_main(capsys, *args)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert err.startswith("gptzoo describe: error: ")


def test_error_in_a_real_process(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[model]\ncontext_length = 8\nd_model = 8\nn_layers = 1\nn_heads = 2\nnorm = { name = "rmsnorm", epsilon = 1e-5 }\n'
    )
    code, out, err = gptzoo("describe", str(bad))
    assert code == 2
    assert "Traceback" not in err and out == ""
    assert str(bad) in err and "epsilon: unknown field (did you mean 'eps'?)" in err


def test_usage_error_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["describe"])
    assert exit.value.code == 2
    assert "required: config" in capsys.readouterr().err
