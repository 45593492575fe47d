"""LoRA: the wrapped layer's formula, a start equal to the base, merging, what trains, the
parameter counts, targeting by name (per-head attention included) and LoRA runs on the CLI."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gptzoo.core import GPT, GptzooError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig, TrainConfig
from gptzoo.recipes.finetuning.classifier import classifier_config, classifier_from
from gptzoo.recipes.finetuning.common import count_parameters, set_trainable
from gptzoo.recipes.finetuning.instruct import train_instructions
from gptzoo.recipes.finetuning.lora import LoRALinear, LoRASettings, apply_lora, lora_state, merge_lora
from gptzoo.recipes.runs.folder import load_run, save_run
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
ALL = LoRASettings(rank=2, alpha=4.0, targets=["qkv", "out_proj", "ffn"])


def tiny(**changes) -> GPT:
    spec = {
        "vocab_size": 257,
        "context_length": 16,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "tokenizer": "byte",
        "tied_head": True,
    } | changes
    torch.manual_seed(0)
    return GPT(REGISTRY.model_config(spec)).eval()


def randomise_b(model: nn.Module) -> None:
    """B starts at zero; give it values so the adapter changes the function."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            nn.init.normal_(module.lora_B, std=0.1)


IDS = torch.tensor([[5, 9, 2, 7, 1, 3], [8, 8, 4, 0, 6, 2]])


def test_the_wrapped_layer_adds_the_scaled_low_rank_update():
    torch.manual_seed(0)
    linear = nn.Linear(3, 2)
    lora = LoRALinear(linear, rank=1, alpha=3.0)
    with torch.no_grad():
        lora.lora_A.copy_(torch.tensor([[1.0, 0.0, -1.0]]))
        lora.lora_B.copy_(torch.tensor([[2.0], [0.5]]))
    x = torch.tensor([[1.0, 2.0, 4.0]])
    # x·A^T = 1 - 4 = -3; ·B^T = [-6, -1.5]; scale alpha / rank = 3 -> [-18, -4.5]
    expected = linear(x) + torch.tensor([[-18.0, -4.5]])
    torch.testing.assert_close(lora(x), expected)
    torch.testing.assert_close(lora.merged()(x), expected)
    assert lora.weight is linear.weight and not lora.weight.requires_grad


def test_the_book_convention_is_the_books_linear_with_lora_at_rank_16_alpha_16():
    appendix_e = pytest.importorskip(
        "llms_from_scratch.appendix_e", reason="the book's package (pip install llms-from-scratch) is absent"
    )
    torch.manual_seed(0)
    linear = nn.Linear(768, 768)
    torch.manual_seed(7)
    book = appendix_e.LinearWithLoRA(linear, rank=16, alpha=16)
    torch.manual_seed(7)
    ours = LoRALinear(linear, rank=16, alpha=16, convention="book")
    torch.testing.assert_close(ours.lora_A, book.lora.A.T, rtol=0, atol=0)  # the same draw, stored (rank, in)
    torch.manual_seed(8)
    B = torch.randn(16, 768) * 0.01  # the book's B is (rank, out)
    with torch.no_grad():
        book.lora.B.copy_(B)
        ours.lora_B.copy_(B.T)
    x = torch.randn(4, 768)
    torch.testing.assert_close(ours(x), book(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.merged()(x), book(x), rtol=1e-5, atol=1e-5)

    # gptzoo's convention, same rank and alpha: scale 16 / 16 = 1 (not 16) and A's bound
    # 1/sqrt(768) (not 1/sqrt(16)): its update is 16·sqrt(768/16) ≈ 111 times smaller for the same B.
    torch.manual_seed(7)
    plain = LoRALinear(linear, rank=16, alpha=16)
    assert plain.scale == 1.0 and ours.scale == 16.0
    assert plain.lora_A.abs().max() <= 1 / math.sqrt(768) < ours.lora_A.abs().max() <= 1 / math.sqrt(16)
    with torch.no_grad():
        plain.lora_B.copy_(B.T)
    ratio = (ours(x) - linear(x)).std() / (plain(x) - linear(x)).std()
    assert 16 * math.sqrt(768 / 16) * 0.8 < ratio < 16 * math.sqrt(768 / 16) * 1.25


@pytest.mark.parametrize("attention", ["sdpa", "per_head", "fused"])
def test_lora_starts_equal_to_the_base_and_merges_to_the_same_function(attention):
    model = tiny(attention={"name": attention}, n_kv_heads=1)
    with torch.no_grad():
        base_logits = model(IDS)
        apply_lora(model, ALL)
        assert torch.equal(model(IDS), base_logits)  # B = 0: exactly the base
        randomise_b(model)
        adapted = model(IDS)
        assert not torch.allclose(adapted, base_logits)
        assert merge_lora(model) > 0
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(IDS), adapted, atol=1e-5, rtol=1e-5)
    # merged: the plain layout again, loadable by a model that never had an adapter
    assert set(model.state_dict()) == set(tiny(attention={"name": attention}, n_kv_heads=1).state_dict())


def test_per_head_attention_is_targeted_head_by_head():
    model = tiny(attention={"name": "per_head"}, n_heads=4, n_kv_heads=2)
    wrapped = apply_lora(model, LoRASettings(rank=1, alpha=1.0, targets=["qkv"]))
    # per block: 4 query heads + 2 key heads + 2 value heads
    assert len(wrapped) == 2 * 8
    assert "blocks.1.attention.queries.3.query" in wrapped and "blocks.0.attention.kv_heads.1.value" in wrapped
    assert not any(name.endswith("out_proj") for name in wrapped)


def test_targets_by_group_and_glob():
    model = tiny(feed_forward={"name": "swiglu", "hidden": 48})
    assert apply_lora(model, LoRASettings(rank=1, alpha=1.0, targets=["ffn"])) == [
        f"blocks.{b}.feed_forward.{name}" for b in (0, 1) for name in ("gate_proj", "up_proj", "out_proj")
    ]
    assert apply_lora(tiny(), LoRASettings(rank=1, alpha=1.0, targets=["blocks.1.attention.out_proj"])) == [
        "blocks.1.attention.out_proj"
    ]
    with pytest.raises(GptzooError, match="'attn' matches no linear layer"):
        apply_lora(tiny(), LoRASettings(rank=1, alpha=1.0, targets=["attn"]))


def test_parameter_counts_with_lora():
    model = tiny()
    before = count_parameters(model)
    set_trainable(model, "none")
    apply_lora(model, ALL)
    # per block, rank · (in + out): qkv 32→96, out_proj 32→32, ffn 32→128 and 128→32
    per_block = 2 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert count_parameters(model) == {"total": before["total"] + 2 * per_block, "trainable": 2 * per_block}


def test_training_changes_only_the_adapters():
    model = tiny()
    set_trainable(model, "none")
    apply_lora(model, ALL)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    data = [([1, 2, 3, 4, 5], 2), ([6, 7], 1)]
    train_instructions(
        model,
        data,
        data,
        TrainConfig(epochs=2, batch_size=2, lr=1e-2),
        pad_id=256,
        max_length=16,
        device=torch.device("cpu"),
    )
    for name, tensor in model.state_dict().items():
        if name.endswith(".lora_A") or name.endswith(".lora_B"):
            assert not torch.equal(tensor, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(tensor, before[name]), f"{name} should be frozen"


# ---- LoRA runs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    model = tiny(context_length=192)  # room for an Alpaca prompt of bytes
    save_run(folder, RunConfig(model=model.config), model, model.config.tokenizer.build())
    return folder


def test_a_lora_classifier_run_saves_merged_weights_and_the_adapter(base_dir, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text(
        "text,label\n"
        + "".join(
            f"{'win cash now' if i % 2 else 'see you soon'} {i},{'spam' if i % 2 else 'ham'}\n" for i in range(20)
        )
    )
    out = tmp_path / "lora"
    args = [
        "finetune-classifier",
        str(base_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--eval-batches",
        "1",
        "--lr",
        "1e-2",
        "--lora-rank",
        "2",
        "--lora-alpha",
        "4",
        "--lora-targets",
        "qkv,ffn",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # head: 32·2 + 2; adapters per block: 2·(32 + 96) + 2·(32 + 128) + 2·(128 + 32)
    trainable = 66 + 2 * 2 * (128 + 160 + 160)
    assert f"{trainable:,} trainable" in printed

    settings = LoRASettings.model_validate_json((out / "lora.json").read_text())
    assert (settings.rank, settings.alpha, settings.targets) == (2, 4.0, ["qkv", "ffn"])
    assert settings.parameters["after"]["trainable"] == trainable

    # The saved weights are the base plus the saved adapter, folded in; the head is the trained one.
    tuned = load_run(out).model
    rebuilt = classifier_from(load_run(base_dir).model, classifier_config(load_run(base_dir).config.model, 2, REGISTRY))
    apply_lora(rebuilt, settings)
    adapter = load_file(str(out / "lora.safetensors"))
    assert set(adapter) == set(lora_state(rebuilt)) and len(adapter) == 2 * 2 * 3
    rebuilt.load_state_dict(
        adapter | {n: t for n, t in tuned.state_dict().items() if n.startswith("head.")}, strict=False
    )
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(IDS), tuned(IDS), atol=1e-5, rtol=1e-5)
    base_state = load_run(base_dir).model.state_dict()
    assert torch.equal(
        tuned.state_dict()["blocks.0.attention.out_proj.weight"], base_state["blocks.0.attention.out_proj.weight"]
    )  # not targeted

    assert main(["classify", str(out), "--text", "win cash now 99"]) == 0
    assert capsys.readouterr().out.split()[0] in ("ham", "spam")


def test_a_lora_instruction_run_loads_for_chat(base_dir, tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text(
        json.dumps(
            [
                {"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i)))}
                for i in range(1, 21)
            ]
        )
    )
    out = tmp_path / "lora"
    args = [
        "finetune-instruct",
        str(base_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--eval-batches",
        "1",
        "--max-new-tokens",
        "2",
        "--limit-test",
        "1",
        "--lora-rank",
        "4",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    base_total = count_parameters(load_run(base_dir).model)["total"]
    adapters = 4 * 2 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert f"parameters before: {base_total:,} total, {base_total:,} trainable" in printed
    assert f"parameters after:  {base_total + adapters:,} total, {adapters:,} trainable" in printed
    assert json.loads((out / "lora.json").read_text())["alpha"] == 4.0  # defaults to the rank
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"])
    assert main(["chat", str(out), "--instruction", "Count to 3.", "--max-new-tokens", "2"]) == 0


def test_unknown_lora_targets_fail_before_training(base_dir, tmp_path, capsys):
    data = tmp_path / "d.tsv"
    data.write_text("ham\ta\nspam\tb\n" * 10)
    args = [
        "finetune-classifier",
        str(base_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--lora-rank",
        "2",
        "--lora-targets",
        "mlp",
    ]
    assert main(args) == 2
    assert "'mlp' matches no linear layer; use qkv, out_proj, ffn" in capsys.readouterr().err
