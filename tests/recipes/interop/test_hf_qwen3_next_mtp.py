"""Qwen3-Next's and Qwen3.5's multi-token-prediction module (``mtp.*``) imports into model.mtp, computes what a module
built from transformers' own decoder layer and norms computes on those weights (transformers loads no
MTP module), and exports back to the same tensors.

The reference, as the published module runs (the main model's final, normed hidden state h; the
embedding and head are the model's):

    h_mtp  = mtp.layers.0(mtp.fc(cat[mtp.pre_fc_norm_embedding(Emb(t_{i+1})), mtp.pre_fc_norm_hidden(h_i)]))
    logits = lm_head(mtp.norm(h_mtp))

With ``mtp_use_dedicated_embeddings`` (false in every published config.json; the loaders that read the key,
e.g. MLX's and llama.cpp-style engines', take it so) Emb is the module's own table, ``mtp.embed_tokens.weight``.
"""

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run

transformers = pytest.importorskip("transformers")

from tests.recipes.interop import hf_parity  # noqa: E402

V, C = 96, 32

# Gated DeltaNet x 3 then gated attention (full_attention_interval 4), experts on every layer, untied
TINY = dict(
    vocab_size=V,
    hidden_size=C,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    linear_num_key_heads=1,
    linear_num_value_heads=2,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=8,
    shared_expert_intermediate_size=8,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
    tie_word_embeddings=False,
)
# family -> its config class and settings: Qwen3.5's with a dense SwiGLU in every layer, its MTP layer's too
CASES = {
    "qwen3_next": ("Qwen3NextConfig", TINY),
    "qwen3_5_text": (
        "Qwen3_5TextConfig",
        {k: v for k, v in TINY.items() if "expert" not in k and "moe" not in k} | {"intermediate_size": 40},
    ),
}


# unit-offset norms start at 0 in transformers: drawn around 0
randomised = partial(hf_parity.randomised, norms_at=0.0)


class Reference(torch.nn.Module):
    """The MTP module from transformers' parts: its decoder layer is another model's last (gated attention) layer."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNorm

        self.donor = randomised(transformers.AutoModelForCausalLM.from_config(config))
        self.fc = torch.nn.Linear(2 * C, C, bias=False)
        self.pre_fc_norm_embedding, self.pre_fc_norm_hidden, self.norm = (Qwen3NextRMSNorm(C) for _ in range(3))
        randomised(self)

    def tensors(self, donor_file: dict) -> dict:
        """The module's tensors as a checkpoint stores them (the layer's as transformers saves a layer)."""
        own = {f"mtp.{name}": p.detach().clone() for name, p in self.named_parameters() if not name.startswith("donor")}
        last = f"model.layers.{TINY['num_hidden_layers'] - 1}."
        return own | {k.replace(last, "mtp.layers.0.", 1): t for k, t in donor_file.items() if k.startswith(last)}

    def logits(self, main, idx, embedding=None):
        """``embedding``: the module's own table for the tokens ahead (mtp_use_dedicated_embeddings); None: the model's."""
        with torch.no_grad():
            h = main.model(input_ids=idx).last_hidden_state
            ahead = idx.roll(-1, 1)
            embedded = (
                main.model.embed_tokens(ahead) if embedding is None else torch.nn.functional.embedding(ahead, embedding)
            )
            x = self.fc(torch.cat([self.pre_fc_norm_embedding(embedded), self.pre_fc_norm_hidden(h)], -1))
            positions = torch.arange(idx.size(1)).expand(idx.size(0), -1)
            layer = self.donor.model.layers[-1]
            out = layer(x, position_embeddings=main.model.rotary_emb(x, positions), position_ids=positions)
            out = out[0] if isinstance(out, tuple) else out
            return main.lm_head(self.norm(out))


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    """A tiny model saved by transformers, its mtp.* tensors added and counted as the published config.json does."""
    torch.manual_seed(0)
    config_class, settings = CASES[request.param]
    config = getattr(transformers, config_class)(**settings)
    main_model = randomised(transformers.AutoModelForCausalLM.from_config(config))
    reference = Reference(config)
    root = tmp_path_factory.mktemp("hf")
    main_model.save_pretrained(root / "src")
    reference.donor.save_pretrained(root / "donor")
    added = reference.tensors(load_file(str(root / "donor" / "model.safetensors")))
    assert "mtp.layers.0.self_attn.q_proj.weight" in added
    assert ("mtp.layers.0.mlp.experts.3.up_proj.weight" in added) == ("num_experts" in settings)
    tensors = load_file(str(root / "src" / "model.safetensors"))
    save_file(tensors | added, str(root / "src" / "model.safetensors"), metadata={"format": "pt"})
    hf = json.loads((root / "src" / "config.json").read_text())
    (root / "src" / "config.json").write_text(json.dumps(hf | {"mtp_num_hidden_layers": 1}))
    return main_model, reference, root / "src", added


def test_import_keeps_the_mtp_module_and_computes_what_the_reference_does(checkpoint, tmp_path):
    main_model, reference, folder, _ = checkpoint
    import_hf(folder, tmp_path / "run")
    model = load_run(tmp_path / "run").model
    assert model.config.mtp.params.depth == 1
    assert model.mtp.layers[0].block.attention.params.output_gate == "elementwise"
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.head(model.predict_ahead(model.hidden_states(idx), idx.roll(-1, 1).unsqueeze(-1))[0])
    torch.testing.assert_close(ours, reference.logits(main_model, idx), rtol=0, atol=1e-4)


def test_export_writes_the_mtp_module_back(checkpoint, tmp_path):
    _, _, folder, added = checkpoint
    import_hf(folder, tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "out")
    original, exported = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tmp_path / "out" / "model.safetensors")),
    )
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mtp_num_hidden_layers"] == 1
    assert sorted(exported) == sorted(original)  # no copies of the embedding or head, as DeepSeek-V3's layers store
    for name, tensor in original.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)
    assert {name for name in exported if name.startswith("mtp.")} == set(added)


def test_a_checkpoint_without_the_mtp_module_imports_without_it(checkpoint, tmp_path):
    main_model, _, _, _ = checkpoint
    main_model.save_pretrained(tmp_path / "src")
    hf = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | {"mtp_num_hidden_layers": 1}))
    import_hf(tmp_path / "src", tmp_path / "run")
    assert load_run(tmp_path / "run").model.mtp is None


def test_more_than_one_mtp_layer_is_refused(checkpoint, tmp_path, capsys):
    """Qwen3-Next's MTP layers would share one fc and norms: gptzoo's sequential modules each have their own."""
    _, _, folder, _ = checkpoint
    (tmp_path / "src").mkdir()
    for name in ("model.safetensors", "config.json"):
        (tmp_path / "src" / name).write_bytes((folder / name).read_bytes())
    hf = json.loads((folder / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | {"mtp_num_hidden_layers": 2}))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "mtp_num_hidden_layers = 2" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_mtp_layer_gptzoo_would_build_otherwise_is_refused(tmp_path, capsys):
    """gptzoo builds the MTP block as the model's last layer; the checkpoints' MTP layer is gated attention, so a
    model ending in a Gated DeltaNet layer cannot hold it: refused, naming why, rather than a missing weight."""
    settings = TINY | {"num_hidden_layers": 2, "layer_types": ["full_attention", "linear_attention"]}
    config = transformers.Qwen3NextConfig(**settings)
    randomised(transformers.AutoModelForCausalLM.from_config(config)).save_pretrained(tmp_path / "src")
    tensors = load_file(str(tmp_path / "src" / "model.safetensors"))
    donor = Reference(config)
    added = donor.tensors({k.replace("layers.0.", "layers.3.", 1): t.clone() for k, t in tensors.items()})
    save_file(tensors | added, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    hf = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | {"mtp_num_hidden_layers": 1}))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "MTP layer is a full_attention layer" in err and "linear_attention here" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def with_dedicated_embedding(folder, tmp_path, dedicated, table: torch.Tensor | None):
    """A copy of ``folder`` whose config.json says mtp_use_dedicated_embeddings = ``dedicated``, holding ``table``
    as mtp.embed_tokens.weight (None: no such tensor)."""
    (tmp_path / "src").mkdir()
    tensors = load_file(str(folder / "model.safetensors"))
    added = {"mtp.embed_tokens.weight": table} if table is not None else {}
    save_file(tensors | added, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    hf = json.loads((folder / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | {"mtp_use_dedicated_embeddings": dedicated}))
    return tmp_path / "src"


def test_a_dedicated_mtp_embedding_is_the_modules_own_table(checkpoint, tmp_path):
    main_model, reference, folder, _ = checkpoint
    table = 0.3 * torch.randn(V, C, generator=torch.Generator().manual_seed(3))
    src = with_dedicated_embedding(folder, tmp_path, True, table)
    import_hf(src, tmp_path / "run")
    model = load_run(tmp_path / "run").model
    assert model.config.mtp.params.own_embedding
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.head(model.predict_ahead(model.hidden_states(idx), idx.roll(-1, 1).unsqueeze(-1))[0])
    expected = reference.logits(main_model, idx, embedding=table)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    assert (ours - reference.logits(main_model, idx)).abs().max() > 1e-2  # the model's own table would differ
    export_hf(tmp_path / "run", tmp_path / "out")
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mtp_use_dedicated_embeddings"] is True
    original = load_file(str(src / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dedicated", [True, False])
def test_a_dedicated_mtp_embedding_and_its_tensor_go_together(checkpoint, tmp_path, capsys, dedicated):
    """config.json saying true without mtp.embed_tokens, or false with it: refused, naming the tensor."""
    _, _, folder, _ = checkpoint
    src = with_dedicated_embedding(folder, tmp_path, dedicated, None if dedicated else torch.zeros(V, C))
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "mtp.embed_tokens.weight" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_dedicated_mtp_embedding_other_than_true_or_false_is_refused(checkpoint, tmp_path, capsys):
    _, _, folder, _ = checkpoint
    src = with_dedicated_embedding(folder, tmp_path, "yes", None)
    assert main(["import-hf", str(src), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert 'mtp_use_dedicated_embeddings = "yes"' in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
