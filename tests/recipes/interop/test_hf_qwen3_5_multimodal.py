"""import-hf of the multimodal Qwen3.5 checkpoints (model_type qwen3_5 and qwen3_5_moe, as the Hub publishes them):
the language model's part of config.json (text_config, tied as the wrapper says) and its tensors (under
model.language_model.), the vision encoder's (model.visual.*) left out with a note; export writes the text-only
model type, which transformers loads as Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM.

Parity as tests/recipes/interop/test_hf_hybrid.py checks it, against transformers' multimodal model fed text only:
logits within 1e-4 on a left-padded batch longer than the delta rule's chunk of 64 tokens; 20 greedy tokens equal
to its generate from a left-padded batch crossing that chunk boundary; export -> from_pretrained -> the same logits
and the language model's tensors.
"""

import json
from functools import partial

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

from tests.recipes.interop.hf_parity import (  # noqa: E402
    hf_greedy,
    hf_logits,
    left_padded_batch,
    randomised,
    saved,
)

V = 320  # vocabulary of the tiny models
CHUNK = 64  # the chunk transformers' delta rule runs in
VISION = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, patch_size=4, spatial_merge_size=2)

# name -> (transformers config class, the text model's settings, the wrapper's tie_word_embeddings)
CASES = {
    # (Gated DeltaNet, gated attention) twice: 2 key heads shared by 4 value heads, multi-query attention; tied
    "qwen3_5": (
        "Qwen3_5Config",
        dict(
            hidden_size=32,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=6,
            intermediate_size=24,
        ),
        True,
    ),
    # three Gated DeltaNet to one gated attention, 6 experts of which 2 are chosen, a shared expert; untied
    "qwen3_5_moe": (
        "Qwen3_5MoeConfig",
        dict(
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=6,
            num_experts=6,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        ),
        False,
    ),
}


def build(case: str):
    config_class, text, tied = CASES[case]
    text = text | {"vocab_size": V, "max_position_embeddings": 80, "pad_token_id": 0}
    vision = VISION | {"out_hidden_size": text["hidden_size"]}
    config = getattr(transformers, config_class)(text_config=text, vision_config=vision, tie_word_embeddings=tied)
    torch.manual_seed(0)
    # norms that scale by 1 + weight start at 0 in transformers
    return randomised(transformers.AutoModelForImageTextToText.from_config(config), norms_at=0.0)


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    model = build(request.param)
    return request.param, model, saved(model, tmp_path_factory, request.param)


def padded_batch():
    """Three rows of CHUNK + 8 tokens, two of them left-padded (one past the chunk still): (ids, mask)."""
    return left_padded_batch(V, CHUNK + 8, pads=(5, 40))


logits = partial(hf_logits, use_cache=False)  # transformers' logits of a whole text, without a cache


def test_the_language_model_imports_and_exports_text_only_with_parity(checkpoint, tmp_path, capsys):
    case, model, folder = checkpoint
    idx, mask = padded_batch()
    expected = logits(model, idx, mask)
    prompts = [idx[0, : CHUNK + 3].tolist(), idx[1, :3].tolist()]
    capsys.readouterr()
    assert main(["import-hf", str(folder), "--out", str(tmp_path / "run")]) == 0
    visual = sum(name.startswith("model.visual.") for name in load_file(str(folder / "model.safetensors")))
    assert f"left out the vision encoder's {visual} tensors (model.visual.*)" in capsys.readouterr().err
    run = load_run(tmp_path / "run")
    with torch.no_grad():
        ours = run.model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], expected[mask], atol=1e-4, rtol=0, msg=lambda m: f"{case}: {m}")
    assert generate_ids(run.model, prompts, 20) == hf_greedy(model, prompts, 20), case
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["model_type"] == f"{case}_text" and "text_config" not in config
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    torch.testing.assert_close(logits(reloaded, idx, mask)[mask], expected[mask], atol=1e-4, rtol=0)


def test_export_gives_back_the_language_models_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    import_hf(folder, tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "out")
    original = load_file(str(folder / "model.safetensors"))
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    tied = {"lm_head.weight"} if CASES[case][2] else set()
    text = {
        name.replace("model.language_model.", "model.", 1): tensor
        for name, tensor in original.items()
        if not name.startswith("model.visual.") and name not in tied
    }
    assert sorted(exported) == sorted(text)
    for name in exported:
        assert torch.equal(exported[name], text[name]), name


def test_a_wrapper_without_its_text_config_is_refused_before_anything_is_written(tmp_path, capsys):
    build("qwen3_5").save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    del config["text_config"]
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "text_config missing" in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
