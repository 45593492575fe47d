"""Weights stored as int4 codes in groups, int8 rows with scales, or bf16, for decoding: the products
against the formula worked in the test, the padding the kernels need, a tied head and embedding, and
the commands' --weight-storage option."""

import pytest
import torch

from gptzoo.core import GPT, GptzooError
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


def int4_by_hand(w: torch.Tensor) -> torch.Tensor:
    """Asymmetric 4-bit codes in groups of 32 along each row, a group at a time: scale = (max - min) / 15 and
    zero = min + 8 · scale (both kept in bf16, as the kernel takes them), q = round((w - zero) / scale) + 8 in
    0..15, read back as (q - 8) · scale + zero."""
    out = torch.empty_like(w)
    for n in range(w.shape[0]):
        for start in range(0, w.shape[1], 32):
            group = w[n, start : start + 32]
            padded = torch.cat([group, group.new_zeros(32 - group.numel())])  # a short last group: zero-padded
            low, high = padded.min().item(), padded.max().item()
            scale = torch.tensor((high - low) / 15).to(torch.bfloat16).float()
            zero = (low + 8 * scale).to(torch.bfloat16).float()
            q = ((group - zero) / scale + 8).round().clamp(0, 15)
            out[n, start : start + 32] = (q - 8) * scale + zero
    return out


@pytest.mark.parametrize(("n", "k"), [(64, 64), (40, 52), (50, 13)])
def test_int4_products_equal_bf16_activations_times_the_dequantized_groups(n, k):
    # 40 and 50 rows: the kernel takes multiples of 16; 52 and 13 numbers: part of a group of 32
    torch.manual_seed(0)
    w, b = torch.randn(n, k), torch.randn(n)
    w[0] = w[0].abs() + 1  # a row of one sign: the range of each of its whole groups leaves zero out
    expected_w = int4_by_hand(w)
    assert (expected_w - w).abs().max() < 0.6 * (w.max() - w.min()) / 15  # half a step, and the rounding of bf16
    for rows in (5, DECODE_ROWS + 1):  # decoding and a prefill: both through the kernel
        x = torch.randn(3, rows, k)
        # the kernel sums in fp32 and returns bf16: a bf16 unit of the output apart
        expected = x.to(torch.bfloat16).float() @ expected_w.T
        torch.testing.assert_close(StoredLinear(w, None, "int4")(x), expected, rtol=2**-7, atol=1e-3)
        assert torch.equal(StoredLinear(w, b, "int4")(x), StoredLinear(w, None, "int4")(x) + b)  # in the model's dtype
    # the matrix read back: by the kernel from its own layout (to bf16), or from the row codes of a looked-up one
    torch.testing.assert_close(StoredLinear(w, None, "int4").weight, expected_w, rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(StoredLinear(w, None, "int4", looked_up=True).weight, expected_w)


def test_int4_tables_look_rows_up_in_their_codes_and_a_multiplied_matrix_alone_has_none():
    reference = tiny_model(tied_head=True)
    tied = store_weights(tiny_model(tied_head=True), "int4")
    assert tied.head.matrix is tied.token_embedding.matrix and tied.head.matrix.stored is not None
    ids = torch.tensor([[3, 299, 0], [7, 7, 1]])
    rows = int4_by_hand(reference.token_embedding.weight.detach())[ids]
    torch.testing.assert_close(tied.token_embedding(ids), rows)
    untied = store_weights(tiny_model(tied_head=False), "int4")
    assert untied.token_embedding.matrix.stored is None  # a table alone is never multiplied
    torch.testing.assert_close(untied.token_embedding(ids), rows)
    assert untied.head.matrix.row_table is None and untied.blocks[0].attention.qkv.row_table is None
    with pytest.raises(GptzooError, match="no rows to look up"):
        untied.head.matrix.rows(ids)


def test_int4_refuses_a_model_off_the_cpu():
    with pytest.raises(GptzooError, match="int4 weight storage multiplies with torch's CPU kernel"):
        store_weights(tiny_model().to("meta"), "int4")


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
    assert untied.token_embedding.matrix.row_table is None


@pytest.mark.slow
@pytest.mark.parametrize("storage", [pytest.param("bf16", marks=needs_native_bf16), "int8", "int4"])
def test_stored_weights_decode_compiled_to_the_eager_tokens(storage):
    # Inductor builds C++ for the step (seconds to half a minute); a packed bf16 product is an operator it calls
    # as it is, the int8 and int4 kernels are torch's own
    torch._dynamo.reset()
    model = store_weights(tiny_model(), storage)
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


def with_int4_values(model: GPT) -> GPT:
    """``model`` with every matrix that int4 storage keeps (linear layers, lookup tables, the head) replaced by
    its values read back from ``int4_by_hand``, in fp32."""
    matrices = {id(m.weight): m.weight for m in model.modules() if type(m) in (torch.nn.Linear, torch.nn.Embedding)}
    matrices[id(model.head.weight)] = model.head.weight
    with torch.no_grad():
        for w in matrices.values():
            w.copy_(int4_by_hand(w))
    return model


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
    for storage in ("bf16", "int8", "int4"):
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
    for storage in ("int8", "int4"):
        argv = ["eval", str(tmp_path / "run"), "--data", str(tmp_path / "text.txt"), "--weight-storage", storage]
        assert main(argv) == 0
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


@pytest.mark.parametrize("tied_head", [False, True])
@pytest.mark.parametrize("attention", REGISTRY.names("attention"))
def test_every_mixer_decodes_with_int4_storage_as_the_model_of_its_int4_values(attention, tied_head):
    # 4 bits move a random model's logits by a tenth of their size: the reference holds the same 4-bit values
    reference = with_int4_values(tiny_model(attention={"name": attention}, tied_head=tied_head))
    stored = store_weights(tiny_model(attention={"name": attention}, tied_head=tied_head), "int4")
    x = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        expected, got = reference(x), stored(x)  # the stored model rounds activations to bf16
        assert (got - expected).abs().max() < 0.03 * expected.abs().max()
        assert len(generate_ids(stored, [[5, 6, 7], [8]], 4)[1]) == 4


@pytest.mark.parametrize("attention", REGISTRY.names("attention"))
def test_every_mixer_gives_the_same_logits_and_greedy_tokens_with_fp32_storage(attention):
    reference, stored = as_trained_and_stored(attention, "fp32")
    x = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        torch.testing.assert_close(stored(x), reference(x), rtol=1e-4, atol=1e-5)
        assert generate_ids(stored, [[5, 6, 7], [8]], 10) == generate_ids(reference, [[5, 6, 7], [8]], 10)
    assert len(generate_ids(stored, [[1, 2, 3]], 4)[0]) == 4
