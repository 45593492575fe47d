"""MiMo-V2-Flash's multi-token-prediction modules (``model.mtp.layers.{k}``, ``num_nextn_predict_layers``: three
in the published checkpoint) import into model.mtp, compute what transformers' own MtpModel computes on those
weights, and export back to the same tensors; the model beside them keeps MiMo's parity.

transformers' MiMoV2FlashForCausalLM skips model.mtp.* and its config leaves out what MtpModel needs
(num_mtp_layers, the MTP layers' layer_types and mlp_layer_types): the test sets them as the published modules
are, windowed attention with sinks and a dense feed-forward (vLLM's and SGLang's MiMoV2 MTP layers, whose
checkpoint names are MiMo's decoder layer's with pre_mlp_layernorm, plus enorm, hnorm, eh_proj and
final_layernorm). MtpModel builds each module from MiMo's own decoder layer and norm, chains the modules by
their normalised outputs and predicts with the model's embedding and head:

    h^k    = final_layernorm_k(layer_k(eh_proj_k(cat[enorm_k(Emb(t_{i+k})), hnorm_k(h^{k-1})])))
    logits = lm_head(h^k)
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from gptzoo.recipes.cli import main  # noqa: E402
from gptzoo.recipes.interop.hf.convert import mismatches  # noqa: E402
from gptzoo.recipes.interop.hf.families.mimo import MIMO_V2_FLASH  # noqa: E402
from gptzoo.recipes.interop.hf.import_ import import_hf  # noqa: E402
from gptzoo.recipes.runs.folder import load_run  # noqa: E402
from tests.recipes.interop.hf_parity import (  # noqa: E402
    built,
    check_parity,
    check_same_tensors,
    hf_greedy,
    hf_logits,
    left_padded_batch,
    randomised,
)

V, C, DEPTH = 96, 32, 3
# a full dense layer, a windowed one (6 keys, sinks, key/value heads 1 -> 2) with experts, a full one with experts:
# the MTP blocks' kind (windowed, dense) is none of the model's, and its last layer is neither windowed nor dense
SETTINGS = dict(
    vocab_size=V,
    hidden_size=C,
    intermediate_size=40,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=24,
    v_head_dim=16,
    sliding_window=6,
    layer_types=["full_attention", "sliding_attention", "full_attention"],
    mlp_layer_types=["dense", "sparse", "sparse"],
    moe_intermediate_size=20,
    n_routed_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e5, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.334},
    },
    tie_word_embeddings=False,
    pad_token_id=0,
)
# transformers' module names in an MtpLayer -> the checkpoint's
RENAMED = (
    ("mtp_block.", ""),
    ("post_norm.", "final_layernorm."),
    ("post_attention_layernorm.", "pre_mlp_layernorm."),
    ("self_attn.sinks", "self_attn.attention_sink_bias"),
)


def mtp_model(model):
    """transformers' MtpModel on ``model``: DEPTH windowed, dense MiMo decoder layers, their parameters randomised."""
    from transformers.modeling_layers import MtpModel

    model.config.num_mtp_layers = DEPTH
    model.config.mtp_layer_types = ["sliding_attention"] * DEPTH
    model.config.mtp_mlp_layer_types = ["dense"] * DEPTH
    mtp = MtpModel(model, DEPTH)
    randomised(mtp.layers)
    return mtp.eval()


def mtp_tensors(mtp) -> dict:
    out = {}
    for k, layer in enumerate(mtp.layers):
        for name, p in layer.named_parameters():
            for theirs, ours in RENAMED:
                name = name.replace(theirs, ours)
            out[f"model.mtp.layers.{k}.{name}"] = p.detach().clone()
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny MiMo-V2-Flash saved by transformers, its MTP modules' tensors added and counted in config.json."""
    config = transformers.MiMoV2FlashConfig(**SETTINGS, attn_implementation="eager")
    model = built(config, buffers=("e_score_correction_bias",))
    folder = tmp_path_factory.mktemp("hf") / "mimo_v2_flash_mtp"
    model.save_pretrained(folder)
    mtp = mtp_model(model)
    added = mtp_tensors(mtp)
    assert "model.mtp.layers.2.self_attn.attention_sink_bias" in added
    assert "model.mtp.layers.0.pre_mlp_layernorm.weight" in added
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(tensors | added, str(folder / "model.safetensors"), metadata={"format": "pt"})
    hf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(hf | {"num_nextn_predict_layers": DEPTH}))
    return model, mtp, folder


def reference_logits(model, mtp, idx) -> list[torch.Tensor]:
    """Each depth's logits as MtpModel computes them, depth k reading the token k ahead at each position."""
    with torch.no_grad():
        h = model.model(input_ids=idx).last_hidden_state
        positions = torch.arange(idx.size(1)).expand(idx.size(0), -1)
        out = []
        for k in range(DEPTH):
            h = mtp.forward_layer(k, h, positions, None, input_ids=idx.roll(-(k + 1), 1))
            out.append(mtp._project_to_logits(h))
        return out


def test_import_keeps_the_mtp_modules_and_computes_what_transformers_does(checkpoint, tmp_path):
    model, mtp, folder = checkpoint
    import_hf(folder, tmp_path / "run")
    ours = load_run(tmp_path / "run").model
    params = ours.config.mtp.params
    assert (params.depth, params.layer_kind, params.chain_normed) == (DEPTH, "sliding_dense", True)
    kind = ours.config.layer_kinds["sliding_dense"]
    assert kind.attention.params.sinks and kind.feed_forward.name == "swiglu" and kind.n_kv_heads == 2
    idx = torch.randint(1, V, (2, 14), generator=torch.Generator().manual_seed(1))  # past the window of 6
    ahead = torch.stack([idx.roll(-k, 1) for k in range(1, DEPTH + 1)], dim=-1)
    with torch.no_grad():
        got = [ours.head(h) for h in ours.predict_ahead(ours.hidden_states(idx), ahead)]
    for k, expected in enumerate(reference_logits(model, mtp, idx)):
        torch.testing.assert_close(got[k], expected, rtol=0, atol=1e-4, msg=lambda m, k=k: f"depth {k + 1}: {m}")


def test_the_model_beside_its_mtp_modules_keeps_parity(checkpoint, tmp_path):
    """Logits on a left-padded batch, 20 greedy tokens, and export read back by transformers."""
    model, _, folder = checkpoint
    batch = left_padded_batch(V)
    prompts = [[5, 9, 2, 7, 3, 8, 1, 4], [6, 11, 3]]
    check_parity(
        "mimo_v2_flash+mtp", folder, tmp_path, batch, hf_logits(model, *batch), prompts, hf_greedy(model, prompts, 20)
    )


def test_export_writes_the_mtp_modules_back(checkpoint, tmp_path):
    model, _, folder = checkpoint
    config = check_same_tensors(model, folder, tmp_path)
    assert config["num_nextn_predict_layers"] == DEPTH
    assert sum(name.startswith("model.mtp.layers.") for name in load_file(str(tmp_path / "out" / "model.safetensors")))


def test_a_checkpoint_without_the_mtp_modules_imports_without_them(checkpoint, tmp_path):
    model, _, _ = checkpoint
    model.save_pretrained(tmp_path / "src")
    hf = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | {"num_nextn_predict_layers": DEPTH}))
    import_hf(tmp_path / "src", tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.model.mtp is None and "sliding_dense" not in run.config.model.layer_kinds


def test_mtp_modules_without_a_window_are_refused(checkpoint, tmp_path, capsys):
    """The modules are windowed: a config.json whose layers all attend fully and whose window is null cannot hold them."""
    _, _, folder = checkpoint
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    hf = json.loads((folder / "config.json").read_text())
    change = {"layer_types": ["full_attention"] * 3, "sliding_window": None}
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | change))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sliding_window = null" in err and "MTP layers" in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change, named",
    [({"chain_normed": False}, "chain_normed = false"), ({"layer_kind": None}, "layer_kind = null")],
)
def test_mtp_modules_mimo_does_not_build_are_not_exported_as_mimo(checkpoint, tmp_path, registry, change, named):
    """Modules chained by their blocks' outputs, or built as the model's last layer, are not MiMo's."""
    _, _, folder = checkpoint
    import_hf(folder, tmp_path / "run")
    config = load_run(tmp_path / "run").config.model
    table = config.model_dump(mode="json")
    table["mtp"] = table["mtp"] | change
    problems = mismatches(MIMO_V2_FLASH, registry.model_config(table), registry)
    assert problems and any(named in p for p in problems), problems
