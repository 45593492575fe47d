"""import-hf / export-hf for DeepSeek-V3.2 (deepseek_v32) and GLM-5 (glm_moe_dsa): parity with transformers.

As tests/recipes/interop/test_hf.py does for the other families, each case builds transformers' model from a
tiny random config covering the family's options, saves it with save_pretrained, imports it and checks:
logits within 1e-4 on a left-padded batch, 20 greedy tokens through gptzoo's cache equal to transformers'
generate, export -> from_pretrained -> the same logits and the same tensors. The indexer keeps 5 keys
per query, fewer than the batch's 24 tokens and the prompts plus 20, so every check runs the sparse path.

Where the indexer's scores tie at the 5th place, the paper leaves the choice open and transformers' full
forward and cached decoding choose differently (tests/plugins/test_sparse_latent_attention.py). A score
ties that way where every index head's ReLU gives 0, so the indexers here have 12 or 16 heads (a chance of
2^-12 or 2^-16 per query and key) and the seeds give no ties: both of transformers' paths then make the
paper's choice, which gptzoo's must equal.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training import costs

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop import hf_parity as parity  # noqa: E402

V = 320  # vocabulary of the tiny models
TOPK = 5
COMMON = dict(
    vocab_size=V,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=12,
    qk_rope_head_dim=8,
    v_head_dim=10,
    index_topk=TOPK,
    index_head_dim=12,
    tie_word_embeddings=False,
)

# name -> (transformers config class, its settings)
CASES = {
    # three layers, the first dense; 8 experts in 4 groups, 2 groups kept, top 3, the bias for choosing, a
    # shared expert, scale 2.5; the indexer: 16 heads of 12, its first 8 features rotated in halves
    "deepseek_v32": (
        "DeepseekV32Config",
        dict(
            num_hidden_layers=3,
            first_k_dense_replace=1,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            moe_intermediate_size=24,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            index_n_heads=16,
        ),
    ),
    # DeepSeek's YaRN (frequencies ×4 beyond 16 positions, the scores scaled by mscale²), experts in every
    # layer (mlp_layer_types all sparse), one group, two shared experts, top 2 not renormalised
    "deepseek_v32-yarn": (
        "DeepseekV32Config",
        dict(
            num_hidden_layers=2,
            first_k_dense_replace=0,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=2,
            moe_intermediate_size=16,
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
            index_n_heads=16,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            },
        ),
    ),
    # GLM-5: the indexer rotates interleaved pairs; its rms_norm_eps 1e-5; the first of three layers dense
    "glm_moe_dsa": (
        "GlmMoeDsaConfig",
        dict(
            num_hidden_layers=3,
            first_k_dense_replace=1,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            moe_intermediate_size=24,
            n_group=1,
            topk_group=1,
            index_n_heads=12,
        ),
    ),
    # GLM-5's shared indexers: layers 1 and 2 run none and attend to the keys layer 0's chose, layer 3 runs its
    # own and layer 4 reuses its choice (indexer_types); the first layer dense
    "glm_moe_dsa-shared": (
        "GlmMoeDsaConfig",
        dict(
            num_hidden_layers=5,
            first_k_dense_replace=1,
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            moe_intermediate_size=24,
            n_group=1,
            topk_group=1,
            index_n_heads=12,
            indexer_types=["full", "shared", "shared", "full", "shared"],
        ),
    ),
}


def build(case: str):
    config_class, settings = CASES[case]
    model = parity.built(getattr(transformers, config_class)(**COMMON | settings, attn_implementation="eager"))
    with torch.no_grad():  # the experts' choosing bias drawn after the weights, as the seeds without ties were
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))
    return model


checkpoint = parity.checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    parity.check_parity_of(
        model, case, folder, tmp_path, parity.hf_logits_counting_real_tokens, assembles="sparse_latent", low=0
    )


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    config = parity.check_same_tensors(model, folder, tmp_path)
    assert config["mlp_layer_types"] == model.config.mlp_layer_types
    if case.startswith("glm_moe_dsa"):
        assert config["indexer_types"] == model.config.indexer_types
    assert (config["index_topk"], config["index_n_heads"], config["index_head_dim"]) == (
        TOPK,
        model.config.index_n_heads,
        12,
    )


def test_describe_counts_transformers_parameters(checkpoint, tmp_path, capsys):
    case, hf_model, folder = checkpoint
    model = parity.described(folder, tmp_path, capsys, hf_model)["config"]["model"]
    attention = model["attention"]
    assert (attention["index_topk"], attention["index_heads"], attention["index_rope_layout"]) == (
        TOPK,
        hf_model.config.index_n_heads,
        "interleaved" if case.startswith("glm_moe_dsa") else "halves",
    )
    assert model["positional"]["layout"] == "interleaved"
    # per token: the latent and rotary key in every layer and the indexer's key in those that run one, fp32
    config = hf_model.config
    indexers = sum(layer.self_attn.indexer is not None for layer in hf_model.model.layers)
    per_token = 4 * (
        (config.kv_lora_rank + config.qk_rope_head_dim) * config.num_hidden_layers + config.index_head_dim * indexers
    )
    run = load_run(tmp_path / "run")
    assert costs.kv_cache_bytes(run.model, 32) == 32 * per_token


@pytest.mark.parametrize(
    "case, change, named",
    [
        (
            "glm_moe_dsa",
            {"indexer_types": ["shared", "full", "full"]},
            'indexer_types = ["shared", "full", "full"] is not supported for glm_moe_dsa (gptzoo reads 3 layers of '
            '"full" or "shared", the first "full"',
        ),
        (
            "glm_moe_dsa",
            {"indexer_types": None, "index_topk_pattern": "FSX"},
            'index_topk_pattern = "FSX" is not supported for glm_moe_dsa',
        ),
        (
            "deepseek_v32",
            {"mlp_layer_types": ["dense", "mixed", "sparse"]},
            "mlp_layer_types = ['dense', 'mixed', 'sparse'] is not supported: gptzoo reads 3 entries of dense or sparse",
        ),
        ("deepseek_v32", {"attention_bias": True}, "attention_bias = true is not supported for deepseek_v32"),
        (
            "deepseek_v32",
            {"quantization_config": {"quant_method": "fp8"}},
            'quantization_config = {"quant_method": "fp8"} is not supported for deepseek_v32',
        ),
    ],
)
def test_options_gptzoo_lacks_are_refused_before_anything_is_written(case, change, named, tmp_path, capsys):
    build(case).save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(
        json.dumps({k: v for k, v in (config | change).items() if v is not None})
    )
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_mtp_layer_after_a_layer_reusing_an_earlier_choice_is_refused(tmp_path, capsys):
    """gptzoo builds the MTP block as the model's last layer; one that reuses an earlier layer's chosen keys would
    find none before it in the MTP module: refused, naming why."""
    from safetensors.torch import save_file

    build("glm_moe_dsa-shared").save_pretrained(tmp_path / "src")
    tensors = load_file(str(tmp_path / "src" / "model.safetensors"))
    mtp = {"model.layers.5.enorm.weight": torch.ones(COMMON["hidden_size"])}  # the checkpoint holds an MTP layer
    save_file(tensors | mtp, str(tmp_path / "src" / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | {"num_nextn_predict_layers": 1}))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "MTP layers are not supported for glm_moe_dsa" in err and 'indexer_types "shared"' in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
