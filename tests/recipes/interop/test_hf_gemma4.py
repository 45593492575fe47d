"""import-hf / export-hf for Gemma 4's text model (gemma4_text): parity with transformers' own model.

As tests/recipes/interop/test_hf.py does for the older families: transformers' Gemma4ForCausalLM from a
tiny random config covering the family's options, saved with save_pretrained, imported, and checked:
logits within 1e-4 on a left-padded batch, 20 greedy tokens through gptzoo's cache equal to
transformers' generate, export -> from_pretrained -> the same logits and the same tensors.
"""

import pytest
import torch
from safetensors.torch import load_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.interop.hf.import_ import import_hf

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop.hf_parity import (  # noqa: E402
    check_parity_of,
    check_refused,
    check_same_tensors,
    checkpoints,
    hf_logits_counting_real_tokens,
    randomised,
)

V = 320  # vocabulary of the tiny models
LOCAL, GLOBAL = "sliding_attention", "full_attention"

CASES = {
    # Gemma 4's E-models: local layers (GQA, 2 key/value heads of 8, a window of 6 keys) and global ones
    # (1 key/value head of 16 whose keys are its values, proportional RoPE on a quarter of it); the last 3
    # of 7 layers attend with an earlier layer's keys and values through MLPs twice as wide; per-layer
    # inputs 8 wide; logits soft-capped; tied head
    "gemma4_text": dict(
        num_hidden_layers=7,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        layer_types=[LOCAL, LOCAL, GLOBAL, LOCAL, LOCAL, LOCAL, GLOBAL],
        num_kv_shared_layers=3,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=8,
        final_logit_softcapping=10.0,
        rope_parameters={
            LOCAL: {"rope_type": "default", "rope_theta": 1e4},
            GLOBAL: {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25},
        },
    ),
    # Gemma 4 31B's shape: no per-layer inputs nor sharing, global heads wider (24) with their own values,
    # multi-query, attention biases, plain RoPE on the global layers, no soft-cap, untied head
    "gemma4_text-untied": dict(
        num_hidden_layers=4,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=24,
        layer_types=[LOCAL, GLOBAL, LOCAL, GLOBAL],
        hidden_size_per_layer_input=0,
        attention_bias=True,
        tie_word_embeddings=False,
        rope_parameters={
            LOCAL: {"rope_type": "default", "rope_theta": 1e4},
            GLOBAL: {"rope_type": "default", "rope_theta": 5e5},
        },
    ),
}
DECODER = dict(
    vocab_size=V,
    vocab_size_per_layer_input=V,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    sliding_window=6,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def build(case: str):
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4ForCausalLM

    config = Gemma4TextConfig(**DECODER | CASES[case], attn_implementation="eager")
    torch.manual_seed(0)
    model = randomised(Gemma4ForCausalLM(config))
    with torch.no_grad():  # the layer scalars (buffers) away from 1
        for layer in model.model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
    return model


checkpoint = checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    check_parity_of(model, case, folder, tmp_path, hf_logits_counting_real_tokens, low=0)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    _, model, folder = checkpoint
    assert check_same_tensors(model, folder, tmp_path)["model_type"] == "gemma4_text"


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hidden_activation": "gelu"}, 'hidden_activation = "gelu" is not supported for gemma4_text'),
        ({"use_bidirectional_attention": "all"}, 'use_bidirectional_attention = "all" is not supported'),
        (
            {"rope_parameters": {GLOBAL: {"rope_type": "proportional", "rope_theta": 1e6, "factor": 8.0}}},
            'rope_parameters.full_attention = {"rope_type": "proportional", "rope_theta": 1000000.0, "factor": 8.0} '
            "is not supported for gemma4_text",
        ),
        ({"vocab_size_per_layer_input": 100}, "vocab_size_per_layer_input = 100 is not supported"),
        ({"per_layer_config": {"0": {"head_dim": 16}}}, 'per_layer_config.0 = {"head_dim": 16} is not supported'),
        (
            {"layer_types": [LOCAL, "chunked_attention", GLOBAL] * 2 + [GLOBAL]},
            'layer_types = ["sliding_attention", "chunked_attention", ',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    check_refused(build("gemma4_text"), tmp_path, change, named, capsys)


def test_export_refuses_per_layer_projection_norms_that_training_made_differ(tmp_path, capsys):
    """Gemma 4 keeps one per_layer_projection_norm for every layer; gptzoo each layer a copy of it."""
    from safetensors.torch import save_file

    build("gemma4_text").save_pretrained(tmp_path / "src")
    import_hf(tmp_path / "src", tmp_path / "run")
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    weights["blocks.1.per_layer_input.projection_norm.weight"] += 1
    save_file(weights, str(tmp_path / "run" / "model.safetensors"), metadata={"format": "pt", "source": "gemma4_text"})
    (tmp_path / "run" / "manifest.json").unlink()  # its hash of the weights would refuse them first
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "blocks.0.per_layer_input.projection_norm.weight, blocks.1.per_layer_input.projection_norm.weight" in err
    assert "model.per_layer_projection_norm.weight" in err and not (tmp_path / "out").exists()
