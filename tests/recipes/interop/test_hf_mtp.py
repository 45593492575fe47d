"""DeepSeek-V3's multi-token prediction layer (layer num_hidden_layers of model.layers) imports into
model.mtp, computes what transformers' own MtpModel computes on those weights, and exports back to
the same tensors, the copies of the embedding and head included."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run

transformers = pytest.importorskip("transformers")

from tests.recipes.interop.hf_parity import randomised  # noqa: E402

N_LAYERS = 2

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    first_k_dense_replace=1,
    n_routed_experts=8,
    num_experts_per_tok=3,
    n_shared_experts=1,
    moe_intermediate_size=24,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=12,
    qk_rope_head_dim=8,
    v_head_dim=10,
    tie_word_embeddings=False,
    num_nextn_predict_layers=1,
)


def deepseek_randomised(module):
    """``module`` randomised, DeepSeek-V3's bias for choosing experts too."""
    return randomised(module, buffers=("e_score_correction_bias",), buffer_scale=0.1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny DeepSeek-V3 saved by transformers, with an MTP layer in DeepSeek's layout added to its file."""
    from transformers.modeling_layers import MtpModel

    torch.manual_seed(0)
    config = transformers.DeepseekV3Config(**TINY, attn_implementation="eager")
    main = deepseek_randomised(transformers.AutoModelForCausalLM.from_config(config))
    mtp = deepseek_randomised(MtpModel(main, 1))
    mtp.tie_with_main_model(main)  # randomising the copies it shares would have changed the model's
    folder = tmp_path_factory.mktemp("hf") / "deepseek_v3_mtp"
    main.save_pretrained(folder)
    layer, prefix = mtp.layers[0], f"model.layers.{N_LAYERS}."
    names = {"post_norm.": "shared_head.norm.", "mtp_block.": ""}
    added = {}
    for name, tensor in [*layer.named_parameters(), *layer.named_buffers()]:
        for ours, theirs in names.items():
            name = name.replace(ours, theirs, 1) if name.startswith(ours) else name
        if name.endswith("experts.gate_up_proj"):  # fused in memory, one tensor per expert in files
            gate, up = tensor.detach().chunk(2, dim=1)
            for e in range(tensor.size(0)):
                added[f"{prefix}{name[: -len('gate_up_proj')]}{e}.gate_proj.weight"] = gate[e].clone()
                added[f"{prefix}{name[: -len('gate_up_proj')]}{e}.up_proj.weight"] = up[e].clone()
        elif name.endswith("experts.down_proj"):
            for e in range(tensor.size(0)):
                added[f"{prefix}{name[: -len('down_proj')]}{e}.down_proj.weight"] = tensor[e].detach().clone()
        elif not name.endswith("inv_freq"):
            added[prefix + name] = tensor.detach().clone()
    added[prefix + "embed_tokens.weight"] = main.model.embed_tokens.weight.detach().clone()
    added[prefix + "shared_head.head.weight"] = main.lm_head.weight.detach().clone()
    tensors = load_file(str(folder / "model.safetensors"))
    fused = main.model.layers[1].mlp.experts.gate_up_proj[0].chunk(2)  # the split above, as transformers saves it
    torch.testing.assert_close(tensors["model.layers.1.mlp.experts.0.up_proj.weight"], fused[1].detach())
    save_file(tensors | added, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return main, mtp, folder, added


def test_import_keeps_the_mtp_layer_and_computes_what_transformers_does(checkpoint, tmp_path):
    main, mtp, folder, _ = checkpoint
    import_hf(folder, tmp_path / "run")
    model = load_run(tmp_path / "run").model
    assert model.config.mtp.params.depth == 1 and model.mtp.layers[0].block.feed_forward.params.n_experts == 8
    idx = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = main(idx, output_hidden_states=True).hidden_states[-1]
        theirs = mtp.forward_layer(0, hidden, torch.arange(1, 13).expand(2, 12), None, input_ids=idx.roll(-1, 1))
        h = model.hidden_states(idx)
        ours = model.predict_ahead(h, idx.roll(-1, 1).unsqueeze(-1))[0]
    torch.testing.assert_close(h, hidden, rtol=1e-4, atol=1e-4)
    # Positions 0..10 read real next tokens (the last reads the first token, as the roll wraps).
    torch.testing.assert_close(ours[:, :-1], theirs[:, :-1], rtol=1e-4, atol=1e-4)


def test_export_writes_the_mtp_layer_back(checkpoint, tmp_path):
    _, _, folder, added = checkpoint
    import_hf(folder, tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "out")
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_nextn_predict_layers"] == 1
    assert {name for name in exported if name.startswith(f"model.layers.{N_LAYERS}.")} == set(added)
    for name, tensor in added.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)


def test_a_checkpoint_without_the_mtp_layer_imports_without_it(checkpoint, tmp_path):
    main, _, _, _ = checkpoint
    main.save_pretrained(tmp_path / "src")  # transformers saves no MTP layer, though its config counts one
    import_hf(tmp_path / "src", tmp_path / "run")
    assert load_run(tmp_path / "run").model.mtp is None
