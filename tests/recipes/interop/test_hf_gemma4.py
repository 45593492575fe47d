"""import-hf / export-hf for Gemma 4's text model (gemma4_text): parity with transformers' own model.

As tests/recipes/interop/test_hf.py does for the older families: transformers' Gemma4ForCausalLM from a
tiny random config covering the family's options, saved with save_pretrained, imported, and checked:
logits within 1e-4 on a left-padded batch, 20 greedy tokens through gptzoo's cache equal to
transformers' generate, export -> from_pretrained -> the same logits and the same tensors.
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
    model = Gemma4ForCausalLM(config).eval()
    with torch.no_grad():  # norms near 1, the rest random, the layer scalars (buffers) away from 1
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
        for layer in model.model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    model = build(request.param)
    folder = tmp_path_factory.mktemp("hf") / request.param
    model.save_pretrained(folder)
    return request.param, model, folder


def padded_batch():
    """Three rows, two of them left-padded: (ids, mask, positions counting real tokens)."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, V, (3, 24), generator=g)
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[1, :5], mask[2, :11] = False, False
    return idx, mask, (mask.long().cumsum(-1) - 1).clamp(min=0)


def hf_logits(model, idx, mask, positions):
    with torch.no_grad():
        return model(input_ids=idx, attention_mask=mask.long(), position_ids=positions).logits


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    idx, mask, positions = padded_batch()
    expected = hf_logits(model, idx, mask, positions)
    prompts = [idx[0, :7].tolist(), idx[1, :3].tolist()]
    left_padded = torch.tensor([prompts[0], [0] * 4 + prompts[1]])
    with torch.no_grad():
        out = model.generate(
            left_padded,
            attention_mask=(torch.arange(7) >= torch.tensor([[0], [4]])).long(),
            max_new_tokens=20,
            min_new_tokens=20,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    import_hf(folder, tmp_path / "run")
    run = load_run(tmp_path / "run")
    with torch.no_grad():
        ours = run.model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], expected[mask], atol=1e-4, rtol=0)
    assert generate_ids(run.model, prompts, 20) == out[:, 7:].tolist()
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "exported", attn_implementation="eager"
    ).eval()
    torch.testing.assert_close(hf_logits(reloaded, idx, mask, positions)[mask], expected[mask], atol=1e-4, rtol=0)


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
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gemma4_text"


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
    build("gemma4_text").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | change))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


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
