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

import json

import pytest
import torch
from safetensors.torch import load_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
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
    model = transformers.Llama4ForCausalLM(config).eval()
    with torch.no_grad():  # norms near 1, the rest random
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    model = build(request.param)
    folder = tmp_path_factory.mktemp("hf") / request.param
    model.save_pretrained(folder)
    return request.param, model, folder


def padded_batch():
    """Three rows, two of them left-padded: (ids, mask)."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, V, (3, 24), generator=g)
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[1, :5], mask[2, :11] = False, False
    return idx, mask


def hf_logits(model, idx, mask):
    """transformers' logits of each row's real tokens, each row alone (see the module's docstring)."""
    with torch.no_grad():
        return torch.cat([model(input_ids=row[keep][None]).logits[0] for row, keep in zip(idx, mask, strict=True)])


def hf_greedy(model, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    idx, mask = padded_batch()
    expected = hf_logits(model, idx, mask)
    prompts = [idx[0, :7].tolist(), idx[1, :3].tolist()]  # gptzoo decodes them as one left-padded batch
    import_hf(folder, tmp_path / "run")
    run = load_run(tmp_path / "run")
    with torch.no_grad():
        ours = run.model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], expected, atol=1e-4, rtol=0)
    assert generate_ids(run.model, prompts, 20) == [hf_greedy(model, p) for p in prompts]
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "exported", attn_implementation="eager"
    ).eval()
    torch.testing.assert_close(hf_logits(reloaded, idx, mask), expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_transformers_left_padded_batch_differs_from_its_rows_alone_by_the_temperature_only():
    """Why the reference is each row alone: transformers' left-padded rows differ from themselves alone
    where the NoPE layer's temperature acts, and agree once it is switched off."""
    model = build("llama4_text")
    idx, mask = padded_batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = model(input_ids=idx, attention_mask=mask.long(), position_ids=positions).logits[mask]
    rows = mask.sum(-1).tolist()  # the real tokens of each row: 24, 19, 13
    differences = [d.abs().max().item() for d in (batch - hf_logits(model, idx, mask)).split(rows)]
    assert differences[0] < 1e-5 and min(differences[1:]) > 1e-2  # the unpadded row agrees, the padded ones not
    for layer in model.model.layers:
        layer.self_attn.attn_temperature_tuning = False
    batch = model(input_ids=idx, attention_mask=mask.long(), position_ids=positions).logits[mask]
    torch.testing.assert_close(batch, hf_logits(model, idx, mask), atol=1e-4, rtol=0)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    import_hf(folder, tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "out")
    original = load_file(str(folder / "model.safetensors"))
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert sorted(exported) == sorted(set(original) - tied)
    for name in exported:
        assert torch.equal(exported[name], original[name]), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama4_text"


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
    build("llama4_text").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | change))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
