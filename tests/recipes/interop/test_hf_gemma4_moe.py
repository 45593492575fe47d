"""import-hf / export-hf for Gemma 4's text model with experts (gemma4_text, ``enable_moe_block``: the 26B-A4B):
parity with transformers' own model, built tiny from random configs (tests/recipes/interop/hf_parity.py), and
the experts' feed-forward against transformers' own modules."""

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop import hf_parity as parity  # noqa: E402

V = 320
LOCAL, GLOBAL = "sliding_attention", "full_attention"
EXPERTS = dict(enable_moe_block=True, num_experts=6, top_k_experts=2, moe_intermediate_size=24)
CASES = {
    # The 26B-A4B's shape: local layers (GQA, 2 key/value heads of 4, a window of 6 keys) and global ones (1 key/value
    # head of 16 whose keys are its values, proportional RoPE on a quarter of it); every layer's MLP beside 6 experts
    # (2 a token); no per-layer inputs; logits soft-capped; tied head
    "gemma4_text-experts": dict(
        num_hidden_layers=4,
        num_key_value_heads=2,
        head_dim=8,
        global_head_dim=16,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        layer_types=[LOCAL, GLOBAL, LOCAL, GLOBAL],
        hidden_size_per_layer_input=0,
        final_logit_softcapping=10.0,
        rope_parameters={
            LOCAL: {"rope_type": "default", "rope_theta": 1e4},
            GLOBAL: {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25},
        },
        **EXPERTS,
    ),
    # Experts with the E-models' parts: per-layer inputs 8 wide, the last 2 of 5 layers attending with an earlier
    # layer's keys and values through MLPs twice as wide, multi-query, untied head
    "gemma4_text-experts-shared-kv": dict(
        num_hidden_layers=5,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        layer_types=[LOCAL, LOCAL, GLOBAL, LOCAL, GLOBAL],
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=8,
        tie_word_embeddings=False,
        **EXPERTS,
    ),
}
DECODER = dict(
    vocab_size=V,
    vocab_size_per_layer_input=V,
    hidden_size=64,
    intermediate_size=48,
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

    torch.manual_seed(0)
    model = parity.randomised(Gemma4ForCausalLM(Gemma4TextConfig(**DECODER | CASES[case], attn_implementation="eager")))
    with torch.no_grad():  # the layer scalars (buffers) away from 1; router weights large enough to separate scores
        for layer in model.model.layers:
            layer.layer_scalar.uniform_(0.5, 1.5)
            layer.router.proj.weight.normal_(0, 1.0)
    return model


checkpoint = parity.checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    parity.check_parity_of(model, case, folder, tmp_path, parity.hf_logits_counting_real_tokens)


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    config = parity.check_same_tensors(model, folder, tmp_path)
    assert (config["enable_moe_block"], config["num_experts"], config["top_k_experts"]) == (True, 6, 2)


def test_the_imported_feed_forward_is_the_experts_beside_the_mlp(checkpoint, tmp_path):
    from gptzoo.recipes.interop.hf.import_ import import_hf
    from gptzoo.recipes.runs.folder import load_run

    case, model, folder = checkpoint
    import_hf(folder, tmp_path / "run")
    config = load_run(tmp_path / "run").model.config
    assert config.feed_forward.name == "mlp_and_experts" and config.block.name == "sandwich"
    experts = config.feed_forward.params.experts
    assert (experts.n_experts, experts.top_k, experts.hidden, experts.activation) == (6, 2, 24, "geglu")


@pytest.mark.parametrize(
    "change, named",
    [
        ({"num_experts": None}, 'enable_moe_block = true with {"num_experts": null, "top_k_experts": 2'),
        ({"hidden_activation": "gelu"}, 'hidden_activation = "gelu" is not supported for gemma4_text'),
    ],
)
def test_options_gptzoo_lacks_are_refused(change, named, tmp_path, capsys):
    parity.check_refused(build("gemma4_text-experts"), tmp_path, change, named, capsys)
