"""import-hf / export-hf for the recurrent families: parity with transformers' own models.

As tests/recipes/interop/test_hf.py does for the attention families, each case builds
transformers' model from a tiny random config covering the family's options, saves it, imports
it and checks: logits within 1e-4 on a left-padded batch of more tokens than a chunk of the
scan; 20 greedy tokens through gptzoo's cache equal to transformers' generate from a left-padded
batch; export -> from_pretrained -> the same logits and the same tensors. Where every layer is
recurrent, generation runs past the trained context with a cache that does not grow.
"""

import pytest
import torch

from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.training import costs

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop.hf_parity import (  # noqa: E402
    built,
    check_parity_of,
    check_past_context,
    check_refused,
    check_same_tensors,
    checkpoints,
    described,
    hf_greedy,
    hf_logits,
    left_padded_batch,
)

V = 320  # vocabulary of the tiny models
CONTEXT = 32  # max_position_embeddings of the tiny models: generation goes past it

# name -> (transformers config class, its settings, whether every layer is recurrent)
CASES = {
    # 8 heads of 16 channels in 2 groups sharing B and C, state 12, chunks of 5 tokens (the prompts
    # and the 24-token batch cross several), a 3-wide convolution, untied head
    "mamba2": (
        "Mamba2Config",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_heads=8,
            head_dim=16,
            expand=2,
            n_groups=2,
            state_size=12,
            conv_kernel=3,
            chunk_size=5,
            tie_word_embeddings=False,
        ),
        True,
    ),
    # one group, a tied head, no convolution bias, layer norm epsilon 1e-6
    "mamba2-tied": (
        "Mamba2Config",
        dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_heads=4,
            head_dim=24,
            expand=2,
            n_groups=1,
            state_size=8,
            conv_kernel=4,
            chunk_size=4,
            use_conv_bias=False,
            layer_norm_epsilon=1e-6,
            tie_word_embeddings=True,
        ),
        True,
    ),
    # biases in in_proj and out_proj (transformers zeroes padding before in_proj, so its bias reaches the
    # real tokens through the convolution: the reference is each row without its padding)
    "mamba2-bias": (
        "Mamba2Config",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_heads=4,
            head_dim=16,
            n_groups=2,
            state_size=8,
            chunk_size=6,
            use_bias=True,
        ),
        True,
    ),
    # convolution, convolution, attention, convolution, attention (LFM2's own irregular schedule, 5 layers
    # in the pattern), GQA, QK-norm per head, the SwiGLU sized by 2/3 × 1.5 rounded up to 16, tied head
    "lfm2": (
        "Lfm2Config",
        dict(
            hidden_size=64,
            num_hidden_layers=5,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            block_auto_adjust_ff_dim=True,
            block_ffn_dim_multiplier=1.5,
            block_multiple_of=16,
            layer_types=["conv", "conv", "full_attention", "conv", "full_attention"],
            conv_L_cache=3,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=True,
        ),
        False,
    ),
    # (conv, attention) twice: a periodic pattern; multi-query, a 4-wide convolution, the width as given,
    # untied head, linear rope scaling
    "lfm2-periodic": (
        "Lfm2Config",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=80,
            block_auto_adjust_ff_dim=False,
            layer_types=["conv", "full_attention"] * 2,
            conv_L_cache=4,
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
            tie_word_embeddings=False,
        ),
        False,
    ),
    # Mamba-2, MLP, attention, MLP, Mamba-2 (Nemotron-H's pattern "M-*-M"): GQA with odd 24-wide heads, no
    # positions; 8 Mamba heads of 16 in 2 groups, chunks of 5; squared-ReLU MLP; untied head
    "nemotron_h": (
        "NemotronHConfig",
        dict(
            hidden_size=64,
            layers_block_type=["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"],
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            intermediate_size=96,
            mamba_num_heads=8,
            mamba_head_dim=16,
            n_groups=2,
            ssm_state_size=12,
            conv_kernel=3,
            chunk_size=5,
            tie_word_embeddings=False,
        ),
        False,
    ),
    # ("M*-") twice: a periodic pattern, multi-query, MLP biases, Mamba heads wider than 2 × d_model / heads;
    # tie_word_embeddings, which transformers' NemotronH ignores (its lm_head is its own)
    "nemotron_h-periodic": (
        "NemotronHConfig",
        dict(
            hidden_size=48,
            layers_block_type=["linear_attention", "full_attention", "mlp"] * 2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=12,
            intermediate_size=80,
            mlp_bias=True,
            mamba_num_heads=6,
            mamba_head_dim=24,
            n_groups=3,
            ssm_state_size=8,
            chunk_size=4,
            tie_word_embeddings=True,
        ),
        False,
    ),
    # Mamba-2 layers and attention at layers 1 and 3 (attn_layer_indices), each with a SwiGLU: GQA, rotary on
    # half of each head, attention and MLP biases; 8 Mamba heads of 16 in 2 groups, chunks of 5; untied
    "bamba": (
        "BambaConfig",
        dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=96,
            attn_layer_indices=[1, 3],
            attention_bias=True,
            mlp_bias=True,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=12,
            mamba_d_conv=3,
            mamba_chunk_size=5,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            tie_word_embeddings=False,
        ),
        False,
    ),
    # one attention layer of three, multi-query, head size "auto", tied head
    "bamba-tied": (
        "BambaConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=80,
            attn_layer_indices=[2],
            mamba_n_heads=4,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=4,
            tie_word_embeddings=True,
        ),
        False,
    ),
    # attention (GQA, 24-wide heads, biases) beside Mamba-2 (8 heads of 16 in 2 groups, state 12, chunks of 5,
    # its grouped gated norm) in every layer, then a SwiGLU with biases; every µP multiplier away from 1; untied
    "falcon_h1": (
        "FalconH1Config",
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            intermediate_size=96,
            attention_bias=True,
            mlp_bias=True,
            mamba_d_ssm=128,
            mamba_n_heads=8,
            mamba_d_head=16,
            mamba_n_groups=2,
            mamba_d_state=12,
            mamba_d_conv=3,
            mamba_chunk_size=5,
            mamba_rms_norm=True,
            mamba_norm_before_gate=False,
            embedding_multiplier=1.5,
            lm_head_multiplier=0.5,
            key_multiplier=0.7,
            attention_in_multiplier=0.9,
            attention_out_multiplier=1.1,
            ssm_in_multiplier=1.2,
            ssm_out_multiplier=0.8,
            ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.05],
            mlp_multipliers=[0.8, 1.3],
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            tie_word_embeddings=False,
        ),
        False,
    ),
    # Falcon-H1's published Mamba-2 (no norm before out_proj), multipliers at 1, multi-query, the inner width
    # from mamba_expand, a tied head
    "falcon_h1-tied": (
        "FalconH1Config",
        dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=80,
            mamba_d_ssm=None,
            mamba_expand=2,
            mamba_n_heads=6,
            mamba_d_head=16,
            mamba_n_groups=1,
            mamba_d_state=8,
            mamba_chunk_size=4,
            tie_word_embeddings=True,
        ),
        False,
    ),
}


def build(case: str):
    config_class, settings, _ = CASES[case]
    config = getattr(transformers, config_class)(
        **settings | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0}
    )
    return built(config)


checkpoint = checkpoints(build, CASES)


def padded_batch():
    """Three rows, two of them left-padded: (ids, mask)."""
    return left_padded_batch(V, 24, low=0)


def unpadded(model, idx, mask):
    """transformers' logits at the real tokens of a left-padded batch: as a batch, or row by row
    where its padding reaches the real tokens (in_proj's bias)."""
    if not getattr(model.config, "use_bias", False):
        return hf_logits(model, idx, mask)
    rows = [
        hf_logits(model, row[m][None], torch.ones(1, int(m.sum()), dtype=torch.bool))[0]
        for row, m in zip(idx, mask, strict=True)
    ]
    out = torch.zeros(*idx.shape, rows[0].size(-1))
    out[mask] = torch.cat(rows)
    return out


def greedy(model, prompts, n):
    """transformers' greedy tokens from a left-padded batch (row by row where its padding reaches the real
    tokens)."""
    if not getattr(model.config, "use_bias", False):
        return hf_greedy(model, prompts, n)
    return [tokens for prompt in prompts for tokens in hf_greedy(model, [prompt], n)]


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    check_parity_of(model, case, folder, tmp_path, unpadded, low=0, greedy_of=greedy)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    check_same_tensors(model, folder, tmp_path)


@pytest.mark.parametrize("checkpoint", [case for case in CASES if CASES[case][2]], indirect=True)
def test_generation_goes_past_the_trained_context_with_a_cache_that_does_not_grow(checkpoint, tmp_path):
    """Every layer recurrent: 3 × CONTEXT tokens decoded through the cache, as transformers decodes
    them, and the cache holds as many bytes for one token as for the whole text."""
    case, model, folder = checkpoint
    run = check_past_context(model, folder, tmp_path, padded_batch()[0][0, :5].tolist(), CONTEXT, greedy, 3 * CONTEXT)
    assert run.model.bounded_cache()
    assert (
        costs.kv_cache_bytes(run.model, 1)
        == costs.kv_cache_bytes(run.model, 3 * CONTEXT)
        == costs.kv_cache_bytes(run.model, 10_000)
    )


@pytest.mark.parametrize("checkpoint", [case for case in CASES if case.startswith("falcon_h1")], indirect=True)
def test_falcon_h1_generates_past_the_trained_context_as_transformers_does(checkpoint, tmp_path):
    """3 × CONTEXT tokens through the cache, as transformers decodes them: Mamba-2's state stays the same
    size, so the cache grows by the attention part's keys and values alone."""
    case, model, folder = checkpoint
    run = check_past_context(model, folder, tmp_path, padded_batch()[0][0, :5].tolist(), CONTEXT, greedy, 3 * CONTEXT)
    config = model.config
    head_dim = (
        config.head_dim if getattr(config, "head_dim", None) else config.hidden_size // config.num_attention_heads
    )
    per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4  # keys and values, fp32
    assert costs.kv_cache_bytes(run.model, 1000) - costs.kv_cache_bytes(run.model, 100) == 900 * per_token


def test_describe_shows_the_family_assembly_and_transformers_parameter_count(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    info = described(folder, tmp_path, capsys)
    model = info["config"]["model"]
    assert info["parameters"]["total"] == info["active_parameters_per_token"] == hf_model.num_parameters()
    family = hf_model.config.model_type
    assert (model["attention"]["name"], model["feed_forward"]["name"], model["positional"]["name"]) == {
        "mamba2": ("mamba2", "none", "none"),
        "lfm2": ("sdpa", "swiglu", "rope"),
        "nemotron_h": ("sdpa", "squared_relu", "none"),
        "bamba": ("sdpa", "swiglu", "rope"),
        "falcon_h1": ("parallel_mixers", "swiglu", "rope"),
    }[family]
    if family == "mamba2":
        assert model["attention"]["chunk_size"] == hf_model.config.chunk_size
    elif family == "nemotron_h":  # one sublayer per layer, as layers_block_type has them
        pattern = [model["layer_pattern"][i % len(model["layer_pattern"])] for i in range(model["n_layers"])]
        kinds = {"linear_attention": "M", "mlp": "-", "full_attention": "*"}
        assert pattern == [kinds[t] for t in hf_model.config.layers_block_type]
        assert model["layer_kinds"]["M"]["attention"]["name"] == "mamba2"
    elif family == "falcon_h1":  # attention beside Mamba-2 in every layer, the µP multipliers where they act
        config = hf_model.config
        attention, mamba = model["attention"]["mixers"]
        assert (attention["name"], mamba["name"], mamba["head_dim"]) == ("sdpa", "mamba2", config.mamba_d_head)
        assert model["embedding_scale"] == config.embedding_multiplier
        assert model["head"]["logit_scale"] == config.lm_head_multiplier
        ffn = model["feed_forward"]
        assert [ffn["gate_multiplier"], ffn["out_multiplier"]] == list(config.mlp_multipliers)
        assert (model["attention"]["out_multipliers"] or [1.0, 1.0]) == [
            config.attention_out_multiplier,
            config.ssm_out_multiplier,
        ]
    elif family == "bamba":  # attention at attn_layer_indices, Mamba-2 elsewhere
        pattern = [model["layer_pattern"][i % len(model["layer_pattern"])] for i in range(model["n_layers"])]
        assert [i for i, k in enumerate(pattern) if k == "attention"] == hf_model.config.attn_layer_indices
        assert model["layer_kinds"]["mamba"]["attention"]["name"] == "mamba2" and model["positional"]["fraction"] == 0.5
    else:  # the convolution layers' kind, and the attention layers' QK-norm
        types = hf_model.config.layer_types
        pattern = [model["layer_pattern"][i % len(model["layer_pattern"])] for i in range(len(types))]
        assert pattern == ["conv" if t == "conv" else "attention" for t in types]
        assert model["layer_kinds"]["conv"]["attention"] == {
            "name": "short_conv",
            "kernel_size": hf_model.config.conv_L_cache,
        }
        assert model["attention"]["qk_norm"] == "per_head"


@pytest.mark.parametrize(
    "case, change, named",
    [
        ("mamba2", {"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for mamba2 (the convolution'),
        (
            "mamba2",
            {"time_step_limit": [0.05, 0.5]},
            "time_step_limit = [0.05, 0.5] is not supported for mamba2 (transformers clamps",
        ),
        ("lfm2", {"conv_bias": True}, "conv_bias = true is not supported for lfm2 (gptzoo's short_conv has no biases"),
        (
            "lfm2",
            {"layer_types": ["conv", "sliding_attention", "conv", "conv", "full_attention"]},
            'layer_types = ["conv", "sliding_attention", "conv", "conv", "full_attention"] is not supported',
        ),
        (
            "nemotron_h",
            {"layers_block_type": ["linear_attention", "moe", "full_attention", "mlp", "linear_attention"]},
            "is not supported for nemotron_h (its moe layers are not read yet",
        ),
        ("nemotron_h", {"mlp_hidden_act": "silu"}, 'mlp_hidden_act = "silu" is not supported for nemotron_h'),
        (
            "nemotron_h",
            {"time_step_limit": [0.001, 0.5]},
            "time_step_limit = [0.001, 0.5] is not supported for nemotron_h",
        ),
        ("bamba", {"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for bamba'),
        ("falcon_h1", {"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for falcon_h1'),
        (
            "falcon_h1",
            {"mamba_norm_before_gate": True},
            "mamba_norm_before_gate = true with mamba_rms_norm = true is not supported for falcon_h1",
        ),
        (
            "falcon_h1",
            {"projectors_bias": True},
            "projectors_bias = true with mamba_proj_bias = false is not supported for falcon_h1",
        ),
        ("falcon_h1", {"ssm_multipliers": [1.0] * 4}, "ssm_multipliers = [1.0, 1.0, 1.0, 1.0] is not supported"),
        ("falcon_h1", {"time_step_limit": [0.0, 0.5]}, "time_step_limit = [0.0, 0.5] is not supported for falcon_h1"),
        ("bamba", {"time_step_limit": [0.0, 0.5]}, "time_step_limit = [0.0, 0.5] is not supported for bamba"),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(case, change, named, tmp_path, capsys):
    check_refused(build(case), tmp_path, change, named, capsys)


@pytest.mark.parametrize("preset, family", [("mamba2-style", "mamba2"), ("lfm2-style", "lfm2")])
def test_a_run_trained_in_gptzoo_exports_as_its_family(preset, family, tmp_path, registry):
    """configs/mamba2-style.toml and lfm2-style.toml are those families' assemblies: each exports as its
    family and transformers computes the same logits."""
    from pathlib import Path

    from gptzoo.core import GPT
    from gptzoo.recipes.config.schema import load_run_config
    from gptzoo.recipes.runs.folder import save_run

    config = load_run_config(
        Path(__file__).resolve().parents[3] / "configs" / f"{preset}.toml",
        ["model.tokenizer.name=byte", "model.vocab_size=257"],
        registry,
    )
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    save_run(tmp_path / "run", config, model, config.model.tokenizer.build(), registry)
    exported, data = export_hf(tmp_path / "run", tmp_path / "out", registry)
    assert exported.model_type == family and data["num_hidden_layers"] == config.model.n_layers
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, model(idx), atol=1e-4, rtol=0)
