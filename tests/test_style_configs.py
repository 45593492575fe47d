"""Each shipped *-style assembly trains through `gptzoo train` on the embedded corpus and then
generates through `gptzoo generate` (issue 13: "each trains ... and generates")."""

import json
import math
from pathlib import Path

import pytest
import torch

from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import load_run_config

STYLES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*-style.toml"))
SHORT = [
    "train.max_steps=2",
    "train.eval_interval=2",
    "train.eval_batches=1",
    "train.batch_size=2",
    "train.sample_tokens=0",
]


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")  # shared: most styles tokenize the corpus alike


def test_there_are_style_configs():
    assert len(STYLES) >= 7  # llama, mistral, mla, moe, olmo2, neox, gemma3


@pytest.mark.slow
@pytest.mark.parametrize("config", STYLES, ids=lambda p: p.stem)
def test_style_config_trains_and_generates(config, tmp_path, token_cache, capsys):
    run = tmp_path / "run"
    overrides = [*SHORT, f"data.cache_dir={token_cache}"]
    assert main(["train", str(config), "--out", str(run), *(a for o in overrides for a in ("--set", o))]) == 0
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()][-1]
    assert last["step"] == 2 and math.isfinite(last["val_loss"])
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "The", "--max-new-tokens", "4", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("The")


# Bytes one more token adds to the decoding cache, counted by hand from each config (float32 keys
# and values of the layers that keep every token; a recurrent layer's state adds nothing).
GROWING_BYTES_PER_TOKEN = {
    "qwen3-next-style": 1 * 2 * 2 * 32 * 4,  # 1 gated sdpa layer: keys and values, 2 kv heads of 32
    "kimi-linear-style": 1 * (32 + 16) * 4,  # 1 MLA layer: the latent (rank 32) and the rope key (16)
    "minimax-01-style": 1 * 2 * 4 * 32 * 4,  # 1 sdpa layer: 4 kv heads of 32
    "falcon-h1-style": 4 * 2 * 2 * 32 * 4,  # sdpa beside Mamba-2 in each of 4 layers: 2 kv heads of 32
    "nemotron-h-style": 1 * 2 * 2 * 32 * 4,  # one attention layer ("*")
    "lfm2-style": 2 * 2 * 2 * 32 * 4,  # 2 attention layers of 6
    "mamba2-style": 0,  # Mamba-2 layers only
}


def _layer_bytes(layer) -> int:
    """Bytes of the tensors a layer's cache holds, the parts of a composite's cache included."""
    total = 0
    for value in vars(layer).values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, torch.Tensor):
                total += item.numel() * item.element_size()
            elif hasattr(item, "__dict__") and not callable(item):
                total += _layer_bytes(item)
    return total


@pytest.mark.parametrize("style", sorted(GROWING_BYTES_PER_TOKEN))
def test_recurrent_style_generates_past_its_context_keeping_its_state_with_bounded_memory(style):
    """Issue 23: the hybrids generate past their context (no cropping, the states kept: the greedy
    tokens are those of one forward over the whole text) and their cache grows by the attention
    layers' keys and values alone; the recurrent layers' states are the same size at any length."""
    from gptzoo.core import GPT
    from gptzoo.recipes.config.schema import load_run_config
    from gptzoo.recipes.generation.generate import generate_ids

    config = load_run_config(
        Path(__file__).resolve().parents[1] / "configs" / f"{style}.toml", ["model.vocab_size=512"]
    )
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    n = config.model.context_length
    assert model.extension_refusal() is None
    prompt = torch.randint(0, 512, (5,)).tolist()
    new = generate_ids(model, [prompt], 2 * n)[0]
    assert len(new) == 2 * n  # past the context: 5 + 2n tokens in all
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new]))
    assert logits[0, len(prompt) - 1 : -1].argmax(-1).tolist() == new

    short, long = model.new_cache(1, n), model.new_cache(1, 3 * n)
    growth = [_layer_bytes(b) - _layer_bytes(a) for a, b in zip(short.layers, long.layers, strict=True)]
    assert sum(growth) == 2 * n * GROWING_BYTES_PER_TOKEN[style]
    states = sum(map(_layer_bytes, short.layers)) - n * GROWING_BYTES_PER_TOKEN[style]
    assert states > 0  # the recurrent layers' states (and convolution windows), the same at n and 3n tokens
    assert model.bounded_cache() == (GROWING_BYTES_PER_TOKEN[style] == 0)


def _layers(name):
    return load_run_config(STYLES[0].parent / f"{name}.toml").model.layers()


def test_gpt_oss_style_alternates_windows_with_sinks_everywhere_and_gpt_oss_experts():
    layers = _layers("gpt-oss-style")
    assert [layer.attention.name for layer in layers] == ["sliding_window", "sdpa"] * 2
    assert all(layer.attention.params.sinks for layer in layers)
    experts = layers[0].feed_forward.params
    assert (experts.router_bias, experts.expert_biases, experts.activation) == (True, True, "clamped_swiglu")
    assert layers[0].positional.params.scaling.type == "yarn"


def test_llama4_style_chunks_its_rope_layers_and_routes_every_other_layer():
    layers = _layers("llama4-style")
    assert [layer.positional.name for layer in layers] == ["rope", "rope", "rope", "none"]
    assert [layer.attention.name for layer in layers] == ["chunked"] * 3 + ["sdpa"]
    assert all(not layer.attention.params.qk_norm_weight for layer in layers[:3])
    assert layers[3].attention.params.qk_norm == "none" and layers[3].attention.params.query_temperature_floor_scale
    assert [layer.feed_forward.name for layer in layers] == ["swiglu", "moe", "swiglu", "moe"]
    routing = layers[1].feed_forward.params
    assert (routing.top_k, routing.weights_at, routing.n_shared_experts) == (1, "input", 1)


def test_gemma4_style_widens_its_global_layers_shares_keys_and_values_and_feeds_each_layer():
    from gptzoo.recipes.cli.describe import describe

    config = load_run_config(STYLES[0].parent / "gemma4-style.toml", ["model.vocab_size=512"])
    model_config = config.model
    assert [(model_config.dims(i).head_size, model_config.dims(i).n_kv_heads) for i in range(8)] == (
        [(32, 2)] * 3 + [(64, 1)]
    ) * 2
    assert [model_config.kv_source(i) for i in range(8)] == [None] * 4 + [2, 2, 2, 3]
    assert model_config.block.params.per_layer_input == 16
    info = describe(config)
    # Float32 bytes per token: layer 3 keeps every key (its values are its keys, yet both are cached:
    # 2 · 1 head · 64); layers 0-2 a window of 16 keys and values (2 · 2 heads · 32 each); layers 4-7 none.
    assert info["kv_cache"]["bytes_per_token"] == 2 * 1 * 64 * 4
    assert info["kv_cache"]["window_bytes"] == 3 * 16 * 2 * 2 * 32 * 4
    assert [row["cache_bytes"] == 0 for row in info["layers"]] == [False] * 4 + [True] * 4
    assert [(r["head_size"], r["n_kv_heads"], r["kv_from"]) for r in info["layers"][2:]] == [
        (32, 2, None),
        (64, 1, None),
        (32, 2, 2),
        (32, 2, 2),
        (32, 2, 2),
        (64, 1, 3),
    ]


def test_gemma4_style_describe_says_which_layers_read_others_keys_and_values(capsys):
    assert main(["describe", str(STYLES[0].parent / "gemma4-style.toml"), "--set", "model.vocab_size=512"]) == 0
    out = capsys.readouterr().out
    assert out.count("none: layer 2's keys and values") == 3 and out.count("none: layer 3's keys and values") == 1
    assert f"{2 * 64 * 4:,} bytes per token in 1 layer" in out  # layer 3 alone keeps every key and value
    assert "in 3 layers" in out  # the windows of layers 0-2


def test_deepseek_v3_mtp_style_trains_its_mtp_module_and_logs_its_loss(tmp_path, token_cache):
    config = STYLES[0].parent / "deepseek-v3-mtp-style.toml"
    layers = load_run_config(config).model
    assert layers.mtp.params.depth == 1 and layers.layers()[-1].attention.name == "latent"
    run = tmp_path / "run"
    overrides = [*SHORT, f"data.cache_dir={token_cache}"]
    assert main(["train", str(config), "--out", str(run), *(a for o in overrides for a in ("--set", o))]) == 0
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()][-1]
    assert math.isfinite(last["aux_mtp_1"]) and last["aux_mtp_1"] > 0
