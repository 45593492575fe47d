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
        "output_gate": "none",
        "qk_norm": "none",
        "qk_norm_eps": 1e-6,
        "qk_norm_unit_offset": False,
        "scale": None,
        "softcap": None,
        "sinks": False,
        "qk_norm_weight": True,
        "v_norm": False,
        "query_temperature_floor_scale": None,
        "query_temperature_scale": 0.1,
        "shared_key_value": False,
        "v_head_size": None,
        "value_scale": 1.0,
    }
    assert by_name["norm", "layernorm"]["params"] == {
        "eps": {"type": "float", "default": 1e-5, "required": False},
        "bias": {"type": "bool", "default": True, "required": False},
        "scale": {"type": "bool", "default": True, "required": False},
    }
    assert by_name["head", "classifier"]["params"]["pooling"]["default"] == "last"
    families = [e["family"] for e in entries]
    assert families == sorted(
        families,
        key=[
            "tokenizer",
            "positional",
            "attention",
            "feed_forward",
            "norm",
            "block",
            "residual",
            "head",
            "mtp",
            "task",
        ].index,
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
    assert set(info["config"]) == {"model", "data", "train", "finetune"}
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
        "residual": 0,
        "head": head,
        "forward": attention + feed_forward + head,
        "training": 3 * (attention + feed_forward + head),
    }
    per_token = L * 2 * C * 4  # keys and values of every layer, fp32
    assert info["kv_cache"] == {
        "bytes_per_token": per_token,
        "bytes_per_sequence": per_token * T,
        "state_bytes": 0,
        "window_bytes": 0,
        "dtype": "float32",
        "context_length": T,
        "decodes_past_context": False,
        "extension_refusal": info["kv_cache"]["extension_refusal"],
        "mtp_bytes_per_sequence": 0,  # no multi-token prediction modules
    }
    assert "LearnedPositions cannot run past the context" in info["kv_cache"]["extension_refusal"]
    per_layer = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * 2 * C
    assert info["layers"][11] == {
        "layer": 11,
        "kind": None,
        "positional": "learned",
        "attention": "sdpa",
        "feed_forward": "gelu",
        "norm": "layernorm",
        "block": "pre_norm",
        "head_size": 64,  # 12 heads of 64, each with its own keys and values
        "n_kv_heads": 12,
        "kv_from": None,
        "parameters": per_layer,
        "kv_cache_bytes_per_token": 2 * C * 4,
        "cache_kind": "keys_values",
        "cache_bytes": 2 * C * 4 * T,
        "state_bytes": None,
        "window": None,
        "max_cache_bytes": None,
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
    assert "73,728 bytes per token in 12 layers" in out  # 12 layers × keys and values of 768 × 4 bytes
    assert f"{73_728 * 1024:,} bytes (72.0 MiB) at 1,024 tokens" in out and "generation crops to the context" in out


# ---- what each layer keeps while decoding: the exact bytes from the formulas ----------------

LFM2 = ROOT / "configs" / "lfm2-style.toml"


def test_describe_a_hybrid_counts_states_and_growing_caches_apart(capsys):
    code, out, _ = run_main(capsys, "describe", str(LFM2), "--set", "model.vocab_size=512", "--json")
    assert code == 0
    info = json.loads(out)
    C, K, T = 128, 3, 64
    state = C * (K - 1) * 4  # a short convolution keeps the last K - 1 inputs of its C channels, fp32
    kv = 2 * 2 * 32 * 4  # keys and values of 2 key/value heads of 128 / 4 = 32
    conv, attention = [0, 1, 3, 4], [2, 5]
    for i in conv:
        row = info["layers"][i]
        assert (row["cache_kind"], row["state_bytes"], row["cache_bytes"], row["max_cache_bytes"]) == (
            "state",
            state,
            state,
            state,
        )
        assert row["kv_cache_bytes_per_token"] is None  # a state does not grow, and is not 0 bytes
    for i in attention:
        row = info["layers"][i]
        assert (row["cache_kind"], row["kv_cache_bytes_per_token"], row["cache_bytes"]) == ("keys_values", kv, kv * T)
        assert row["state_bytes"] is None and row["max_cache_bytes"] is None
    cache = info["kv_cache"]
    assert cache["bytes_per_token"] == len(attention) * kv
    assert cache["state_bytes"] == len(conv) * state == 4096
    assert cache["bytes_per_sequence"] == len(attention) * kv * T + len(conv) * state
    assert cache["decodes_past_context"] and cache["extension_refusal"] is None


def test_describe_a_composite_counts_its_state_beside_its_keys_and_values(capsys):
    config = ROOT / "configs" / "falcon-h1-style.toml"  # sdpa and Mamba-2 side by side in each of 4 layers
    code, out, _ = run_main(capsys, "describe", str(config), "--set", "model.vocab_size=512", "--json")
    assert code == 0
    info = json.loads(out)
    kv = 2 * 2 * 32 * 4  # keys and values of 2 key/value heads of 128 / 4 = 32, fp32
    d_inner, d_state, d_conv = 192, 32, 4
    # Mamba-2's state: (heads × head_dim = d_inner) × d_state, and its convolution's window: the last
    # d_conv - 1 inputs of x, B and C (d_inner + 2 · n_groups · d_state channels)
    state = (d_inner * d_state + (d_inner + 2 * d_state) * (d_conv - 1)) * 4
    for row in info["layers"]:
        assert (row["cache_kind"], row["kv_cache_bytes_per_token"], row["state_bytes"]) == ("keys_values", kv, state)
        assert row["cache_bytes"] == kv * 64 + state
    cache = info["kv_cache"]
    assert (cache["bytes_per_token"], cache["state_bytes"]) == (4 * kv, 4 * state)
    assert cache["bytes_per_sequence"] == 4 * (kv * 64 + state)


def test_describe_text_never_floors_a_state(capsys):
    code, out, _ = run_main(capsys, "describe", str(LFM2), "--set", "model.vocab_size=512")
    assert code == 0
    assert "4,096 bytes (4.0 KiB), the same at any length, in 4 layers" in out
    assert "1,024 bytes per token in 2 layers" in out  # the attention layers' keys and values
    assert "69,632 bytes (68.0 KiB) at 64 tokens" in out and "0.0 MiB" not in out
    assert "decodes past the context: keys and values grow by 1,024 bytes per token" in out
    assert out.count("state 1,024 bytes (1.0 KiB)") == 4


def test_describe_a_model_of_states_alone(capsys):
    code, out, _ = run_main(
        capsys,
        "describe",
        str(LFM2),
        "--set",
        "model.vocab_size=512",
        "--set",
        "model.layer_pattern=['conv']",
        "--set",
        "model.positional.name=none",
        "--json",
    )
    assert code == 0
    cache = json.loads(out)["kv_cache"]
    state = 6 * 128 * 2 * 4  # 6 layers, each the last 2 inputs of 128 channels, fp32
    assert (cache["bytes_per_token"], cache["state_bytes"], cache["bytes_per_sequence"]) == (0, state, state)
    assert cache["decodes_past_context"]


def test_describe_windows_and_layers_without_a_mixer(capsys):
    code, out, _ = run_main(
        capsys,
        "describe",
        str(GPT2),
        "--set",
        "model.positional.name=rope",
        "--set",
        "model.attention={name='sliding_window', window=128}",
        "--set",
        "model.layer_kinds={local={}, mlp={attention='none', positional='none'}}",
        "--set",
        "model.layer_pattern=['local', 'mlp']",
        "--json",
    )
    assert code == 0
    info = json.loads(out)
    C, W = 768, 128
    local, mlp = info["layers"][0], info["layers"][1]
    assert local["cache_kind"] == "window" and local["window"] == W
    assert (local["kv_cache_bytes_per_token"], local["cache_bytes"], local["max_cache_bytes"]) == (
        2 * C * 4,
        2 * C * 4 * W,
        2 * C * 4 * W,
    )
    assert (mlp["cache_bytes"], mlp["state_bytes"]) == (0, 0)
    cache = info["kv_cache"]
    assert (cache["bytes_per_token"], cache["window_bytes"], cache["bytes_per_sequence"]) == (
        0,
        6 * 2 * C * 4 * W,
        6 * 2 * C * 4 * W,
    )
    assert cache["decodes_past_context"]


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
