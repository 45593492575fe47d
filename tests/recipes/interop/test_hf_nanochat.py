"""import-hf / export-hf for nanochat: parity with transformers' own models.

As tests/recipes/interop/test_hf.py does for the attention families, each case builds transformers' model from a
tiny random config covering the family's options (weightless norms on the embeddings, before each sublayer, at
the end and on each head's queries and keys after rotary; rotary turned the other way; a squared-ReLU MLP;
soft-capped or uncapped logits; GQA with biases, MQA; tied and untied heads), saves it, imports it and checks:
logits within 1e-4 on a left-padded batch; 20 greedy tokens through gptzoo's cache equal to transformers'
generate from a left-padded batch; export -> from_pretrained -> the same logits and the same tensors.
"""

import pytest

from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run

transformers = pytest.importorskip(
    "transformers", reason="the parity tests compare with transformers: pip install -e '.[reference]'"
)

from tests.recipes.interop import hf_parity as parity  # noqa: E402

V = 320  # vocabulary of the tiny models
CONTEXT = 64  # max_position_embeddings of the tiny models

CASES = {
    # GQA (4 query heads over 2 key/value heads, 12 wide), biases on q, k, v and o, logits capped at 15
    # (NanoChatConfig's default, the key absent), untied head
    "nanochat": dict(
        hidden_size=48,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        tie_word_embeddings=False,
    ),
    # multi-query attention with 10-wide heads, no cap (null), tied head, eps 1e-5
    "nanochat-mqa": dict(
        hidden_size=30,
        intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=3,
        num_key_value_heads=1,
        final_logit_softcapping=None,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        tie_word_embeddings=True,
    ),
}


def build(case: str):
    config = transformers.NanoChatConfig(
        **CASES[case] | {"vocab_size": V, "max_position_embeddings": CONTEXT, "pad_token_id": 0}
    )
    return parity.built(config)


checkpoint = parity.checkpoints(build, CASES)


def test_logits_greedy_tokens_and_export_equal_transformers(checkpoint, tmp_path):
    case, model, folder = checkpoint
    parity.check_parity_of(model, case, folder, tmp_path, prompt_lengths=(9, 3))


def test_import_then_export_gives_back_the_same_tensors(checkpoint, tmp_path):
    case, model, folder = checkpoint
    config = parity.check_same_tensors(model, folder, tmp_path)
    assert config["final_logit_softcapping"] == model.config.final_logit_softcapping
    assert config["hidden_act"] == "relu2"


def test_the_imported_assembly_is_nanochats(checkpoint, tmp_path):
    case, model, folder = checkpoint
    import_hf(folder, tmp_path / "run")
    config = load_run(tmp_path / "run").model.config
    assert config.embedding_norm and config.positional.params.reverse and not config.norm.params.scale
    assert not config.attention.params.qk_norm_weight
    assert config.head.params.softcap == (15.0 if case == "nanochat" else None)


def test_describe_counts_transformers_parameters(checkpoint, tmp_path, capsys):
    """No norm has a weight on either side: the count is the embedding, the layers' projections and an untied head."""
    _, model, folder = checkpoint
    info = parity.described(folder, tmp_path, capsys, model)  # the total and active counts: transformers'
    assert info["parameters"]["total"] == info["active_parameters_per_token"] == model.num_parameters()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "rope_type"),
    ],
)
def test_options_gptzoo_does_not_implement_are_refused(change, named, tmp_path, capsys):
    parity.check_refused(build("nanochat-mqa"), tmp_path, change, named, capsys)
