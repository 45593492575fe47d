"""import-hf / export-hf for Llama 4's text model (llama4_text): parity with transformers' own model.

As tests/recipes/interop/test_hf.py does for the older families: transformers' Llama4ForCausalLM from a
tiny random config covering the family's options, saved with save_pretrained, imported, and checked:
logits within 1e-4 on a left-padded batch, 20 greedy tokens through gptzoo's cache equal to
transformers' generate, export -> from_pretrained -> the same logits and the same tensors.

The reference for a left-padded row is transformers on that row alone: its NoPE layers' query
temperature counts a token's place in the cache (pads included, Llama4TextAttention's
cache.get_seq_length), where Llama 4's temperature is a function of the token's position, which gptzoo
takes from the real tokens as the rotary layers do (and transformers' own chunked mask does).
"""

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop.hf_parity import (  # noqa: E402
    check_parity,
    check_refused,
    check_same_tensors,
    checkpoints,
    hf_greedy,
    left_padded_batch,
    randomised,
)

V = 320  # vocabulary of the tiny models

CASES = {
    # Maverick's layout: experts every other layer (4 of them, top 1, sigmoid score on the input, a shared
    # expert), three chunked RoPE layers (chunks of 6 tokens, weightless QK-norm) to one NoPE layer whose
    # query temperature grows every 4 tokens, GQA, llama3 rope scaling, untied
    "llama4_text": dict(
        num_hidden_layers=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=24,
        intermediate_size_mlp=80,
        num_local_experts=4,
        interleave_moe_layer_step=2,
        attention_chunk_size=6,
        floor_scale=4,
        attn_scale=0.5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 5e5,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    # Scout's layout with options: experts in every layer, top 2 of 3; NoPE on the first and third layers
    # (no_rope_layers), no chunking (attention_chunk_size null), no QK-norm, no temperature, multi-query,
    # attention biases, tied head
    "llama4_text-tied": dict(
        num_hidden_layers=3,
        num_key_value_heads=1,
        intermediate_size=24,
        num_local_experts=3,
        num_experts_per_tok=2,
        no_rope_layers=[0, 1, 0],
        attention_chunk_size=None,
        use_qk_norm=False,
        attn_temperature_tuning=False,
        attention_bias=True,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
    ),
}
DECODER = dict(
    vocab_size=V,
    hidden_size=64,
    num_attention_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def build(case: str):
    config = transformers.Llama4TextConfig(**DECODER | CASES[case], attn_implementation="eager")
    torch.manual_seed(0)
    return randomised(transformers.Llama4ForCausalLM(config))


checkpoint = checkpoints(build, CASES)


def hf_logits(model, idx, mask):
    """transformers' logits of each row's real tokens, each row alone (see the module's docstring), at their
    places in the batch."""
    logits = torch.zeros(*idx.shape, model.config.vocab_size)
    with torch.no_grad():
        logits[mask] = torch.cat(
            [model(input_ids=row[keep][None]).logits[0] for row, keep in zip(idx, mask, strict=True)]
        )
    return logits


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    batch = left_padded_batch(V, low=0)
    prompts = [batch[0][0, :7].tolist(), batch[0][1, :3].tolist()]  # gptzoo decodes them as one left-padded batch
    greedy = [hf_greedy(model, [p], 20)[0] for p in prompts]  # each alone
    check_parity(case, folder, tmp_path, batch, hf_logits(model, *batch), prompts, greedy, hf_logits)


@torch.no_grad()
def test_transformers_left_padded_batch_differs_from_its_rows_alone_by_the_temperature_only():
    """Why the reference is each row alone: transformers' left-padded rows differ from themselves alone
    where the NoPE layer's temperature acts, and agree once it is switched off."""
    model = build("llama4_text")
    idx, mask = left_padded_batch(V, low=0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = model(input_ids=idx, attention_mask=mask.long(), position_ids=positions).logits[mask]
    rows = mask.sum(-1).tolist()  # the real tokens of each row: 24, 19, 13
    differences = [d.abs().max().item() for d in (batch - hf_logits(model, idx, mask)[mask]).split(rows)]
    assert differences[0] < 1e-5 and min(differences[1:]) > 1e-2  # the unpadded row agrees, the padded ones not
    for layer in model.model.layers:
        layer.self_attn.attn_temperature_tuning = False
    batch = model(input_ids=idx, attention_mask=mask.long(), position_ids=positions).logits[mask]
    torch.testing.assert_close(batch, hf_logits(model, idx, mask)[mask], atol=1e-4, rtol=0)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    _, model, folder = checkpoint
    assert check_same_tensors(model, folder, tmp_path)["model_type"] == "llama4_text"


@pytest.mark.parametrize(
    "change, named",
    [
        ({"hidden_act": "gelu"}, 'hidden_act = "gelu" is not supported for llama4_text'),
        (
            {"layer_types": ["sliding_attention"] * 4},
            'layer_types = ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention"] is '
            "not supported",
        ),
        ({"no_rope_layers": [1, 2, 1, 0]}, "no_rope_layers = [1, 2, 1, 0] is not supported"),
        (
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            'rope_parameters.rope_type = "dynamic" is not supported for llama4_text',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    check_refused(build("llama4_text"), tmp_path, change, named, capsys)
