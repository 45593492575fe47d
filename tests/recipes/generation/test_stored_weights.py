"""Weights stored as int8 rows with scales, or as bf16, for decoding: the products against the
formula worked in the test, the padding the int8 kernel needs, a tied head and embedding, and the
commands' --weight-storage option."""

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.generation import stored_weights
from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.recipes.generation.stored_weights import (
    DECODE_ROWS,
    StoredEmbedding,
    StoredHead,
    StoredLinear,
    packs_bf16,
    store_weights,
)
from gptzoo.recipes.runs.folder import save_run
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)


def int8_by_hand(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8: scale = max |w| / 127 (kept in bf16, as the kernel takes it), q = round(w / scale)."""
    scale = w.abs().amax(dim=1) / 127
    q = (w / scale[:, None]).round().clamp(-127, 127)
    return q * scale.to(torch.bfloat16).float()[:, None]


# 52 and 13: rows no build of the kernel takes unpadded; 40 and 24: multiples of 8 that its AVX-512 build
# crashes on or multiplies wrong (it reads 16 numbers at a time)
@pytest.mark.parametrize("k", [64, 52, 40, 24, 13])
def test_int8_products_equal_bf16_activations_times_the_dequantized_rows(k):
    torch.manual_seed(0)
    w, x = torch.randn(40, k), torch.randn(3, 5, k)
    stored = StoredLinear(w, None, "int8")
    expected = x.to(torch.bfloat16).float() @ int8_by_hand(w).T  # (3, 5, 40)
    torch.testing.assert_close(stored(x), expected, rtol=1e-2, atol=1e-2)
    assert (stored(x) - x @ w.T).abs().max() < 0.1 * (x @ w.T).abs().max()


def test_a_prefill_multiplies_fp32_activations_by_the_dequantized_rows():
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 16), torch.randn(24), torch.randn(1, DECODE_ROWS + 1, 16)
    torch.testing.assert_close(StoredLinear(w, b, "int8")(x), x @ int8_by_hand(w).T + b)


needs_native_bf16 = pytest.mark.skipif(
    not packs_bf16(), reason="oneDNN multiplies bf16 natively only where the CPU has AVX-512 bf16 or AMX"
)


@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=needs_native_bf16)])
@pytest.mark.parametrize("k", [64, 52])
def test_bf16_storage_multiplies_the_bf16_numbers(packed, k, monkeypatch):
    monkeypatch.setattr(stored_weights, "packs_bf16", lambda: packed)
    torch.manual_seed(0)
    w, b, x = torch.randn(40, k), torch.randn(40), torch.randn(3, 5, k)
    stored = StoredLinear(w, None, "bf16")
    assert stored.packed is packed
    # the exact product of the bf16-rounded numbers, rounded to bf16: the kernels sum in fp32, so one bf16 unit apart
    expected = (x.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T).to(torch.bfloat16).float()
    torch.testing.assert_close(stored(x), expected, rtol=2**-7, atol=1e-6)
    assert torch.equal(StoredLinear(w, b, "bf16")(x), stored(x) + b)  # the bias added in the model's dtype
    assert torch.equal(stored.weight, w.to(torch.bfloat16).float())  # (N, K) again, packed or not
    prefill = torch.randn(1, DECODE_ROWS + 1, k)  # past the decoding rows: fp32 activations, the bf16 numbers
    torch.testing.assert_close(stored(prefill), prefill @ w.to(torch.bfloat16).float().T)


@needs_native_bf16
def test_packed_bf16_keeps_a_tied_embedding_s_rows_plain_and_an_untied_table_unpacked():
    reference = tiny_model(tied_head=True)
    model = store_weights(tiny_model(tied_head=True), "bf16")
    linears = {name for name, m in reference.named_modules() if type(m) is torch.nn.Linear}
    assert all(model.get_submodule(name).packed for name in linears)
    assert model.head.matrix.packed and model.head.matrix is model.token_embedding.matrix
    ids = torch.tensor([[3, 299, 0], [7, 7, 1]])
    embedding = reference.token_embedding.weight.detach().to(torch.bfloat16).float()
    assert torch.equal(model.token_embedding(ids), embedding[ids])
    assert model.token_embedding.weight.layout == torch.strided  # what callers read the dtype and device from
    untied = store_weights(tiny_model(tied_head=False), "bf16")
    assert untied.head.matrix.packed and not untied.token_embedding.matrix.packed  # a table alone is never multiplied
    assert untied.token_embedding.table is None


@needs_native_bf16
@pytest.mark.slow
def test_packed_bf16_decodes_compiled_to_the_eager_tokens():
    # Inductor builds C++ for the step (about half a minute); the packed product is an operator it calls as it is.
    torch._dynamo.reset()
    model = store_weights(tiny_model(), "bf16")
    prompts = [[1, 2, 3], [4]]
    assert generate_ids(model, prompts, 6, compiled=True) == generate_ids(model, prompts, 6)
    torch._dynamo.reset()


def tiny_model(**changes) -> GPT:
    spec = {"vocab_size": 300, "context_length": 32, "d_model": 48, "n_layers": 2, "n_heads": 4} | changes
    torch.manual_seed(0)
    return GPT(REGISTRY.model_config(spec)).eval()


def test_a_tied_head_and_its_embedding_share_one_stored_matrix():
    model = store_weights(tiny_model(tied_head=True), "int8")
    assert isinstance(model.head, StoredHead) and isinstance(model.token_embedding, StoredEmbedding)
    assert model.head.matrix is model.token_embedding.matrix
    ids = torch.tensor([[3, 299, 0]])
    rows = int8_by_hand(tiny_model(tied_head=True).token_embedding.weight.detach())[ids]
    torch.testing.assert_close(model.token_embedding(ids), rows)


@pytest.mark.parametrize("tied_head", [False, True])
@pytest.mark.parametrize("storage", ["bf16", "int8"])
def test_stored_models_decode_close_to_fp32(storage, tied_head):
    reference, stored = tiny_model(tied_head=tied_head), store_weights(tiny_model(tied_head=tied_head), storage)
    x = torch.randint(0, 300, (2, 9))
    with torch.inference_mode():
        expected, got = reference(x), stored(x[:, :1])
    scale = expected.abs().max()
    assert (got - expected[:, :1]).abs().max() < 0.05 * scale
    assert len(generate_ids(stored, [[1, 2, 3]], 5)[0]) == 5


def test_fp32_keeps_every_value_in_the_layout_of_the_longer_rows():
    reference = tiny_model(tied_head=True)
    model = store_weights(tiny_model(tied_head=True), "fp32")
    linears = {name: m for name, m in reference.named_modules() if type(m) is torch.nn.Linear}
    widening = {name for name, m in linears.items() if m.out_features >= m.in_features}
    assert widening and widening != set(linears)  # the up and down projections: both layouts are used
    for name, linear in linears.items():
        stored = model.get_submodule(name)
        expected = linear.weight.T if name in widening else linear.weight  # (K, N) where N >= K, else (N, K)
        assert isinstance(stored, StoredLinear) and stored.stored.is_contiguous()
        assert torch.equal(stored.stored, expected)
    embedding = reference.token_embedding.weight
    assert torch.equal(model.head.matrix.stored, embedding.T) and model.head.matrix is model.token_embedding.matrix
    ids = torch.tensor([[3, 299, 0], [7, 7, 1]])
    assert torch.equal(model.token_embedding(ids), embedding[ids])
    x = torch.randint(0, 300, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x))
    with torch.inference_mode():
        assert generate_ids(model, [[1, 2, 3], [4]], 12) == generate_ids(reference, [[1, 2, 3], [4]], 12)


def test_fp32_leaves_an_untied_lookup_table_as_it_is():
    model = store_weights(tiny_model(tied_head=False), "fp32")
    assert type(model.token_embedding) is torch.nn.Embedding and isinstance(model.head, StoredHead)


def test_generate_and_eval_take_the_option(tmp_path, capsys):
    config = RunConfig.model_validate(
        {
            "model": {
                "vocab_size": 257,
                "context_length": 16,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 4,
                "tokenizer": "byte",
            }
        },
        context={"registry": REGISTRY},
    )
    torch.manual_seed(0)
    save_run(tmp_path / "run", config, GPT(config.model), config.model.tokenizer.build())
    (tmp_path / "text.txt").write_text("Hello there, how are you? " * 4)
    for storage in ("bf16", "int8"):
        argv = [
            "generate",
            str(tmp_path / "run"),
            "--prompt",
            "Hello",
            "--max-new-tokens",
            "4",
            "--weight-storage",
            storage,
        ]
        assert main(argv) == 0
        assert capsys.readouterr().out.startswith("Hello")
    assert main(["eval", str(tmp_path / "run"), "--data", str(tmp_path / "text.txt"), "--weight-storage", "int8"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_a_scaled_and_capped_head_keeps_its_scaling_and_cap():
    head = {"name": "lm", "logit_scale": 0.5, "softcap": 2.0}
    reference, stored = tiny_model(head=head), store_weights(tiny_model(head=head), "int8")
    h = torch.randn(1, 1, 48)
    w = reference.head.weight.detach()
    expected = 2.0 * torch.tanh(0.5 * (h.to(torch.bfloat16).float() @ int8_by_hand(w).T) / 2.0)
    torch.testing.assert_close(stored.head(h), expected, rtol=1e-2, atol=1e-2)


def as_trained_and_stored(attention: str, storage: str) -> tuple[GPT, GPT]:
    """Two copies of one tiny model with ``attention``: as trained, and with its weights stored as ``storage``."""
    return tiny_model(attention={"name": attention}), store_weights(tiny_model(attention={"name": attention}), storage)


@pytest.mark.parametrize("attention", REGISTRY.names("attention"))
def test_every_mixer_decodes_with_int8_storage_close_to_fp32(attention):
    reference, stored = as_trained_and_stored(attention, "int8")
    x = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        expected, got = reference(x), stored(x)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("attention", REGISTRY.names("attention"))
def test_every_mixer_gives_the_same_logits_and_greedy_tokens_with_fp32_storage(attention):
    reference, stored = as_trained_and_stored(attention, "fp32")
    x = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        torch.testing.assert_close(stored(x), reference(x), rtol=1e-4, atol=1e-5)
        assert generate_ids(stored, [[5, 6, 7], [8]], 10) == generate_ids(reference, [[5, 6, 7], [8]], 10)
    assert len(generate_ids(stored, [[1, 2, 3]], 4)[0]) == 4
