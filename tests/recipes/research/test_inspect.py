"""Inspection: the captured attention weights against softmax(QKᵀ/√d + mask) computed here from
each layer's own projection weights, the logit lens and residual stream against forward hooks,
entropy against its formula, and the ``gptzoo inspect`` command with its bad input."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from gptzoo.core import GptzooError, Recorder
from gptzoo.recipes.cli import main
from gptzoo.recipes.research.inspection import entropy_bits, inspect_model
from gptzoo.recipes.runs.folder import save_run
from gptzoo.registry import make_registry
from gptzoo.testing import build, build_tokenizer, tiny_config

REGISTRY = make_registry(entry_points=False)
T = 10
ALIBI_SLOPES_4_HEADS = torch.tensor([2**-2, 2**-4, 2**-6, 2**-8])  # Press et al.: 2^(-8i/n), i = 1..n


def attention_inputs(model, idx):
    """What each layer's attention module receives, (B, T, C), through forward pre-hooks."""
    seen = []
    hooks = [block.attention.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for block in model.blocks]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return seen


def rope_halves(x, base=10000.0):
    """Rotary positions, dimension j paired with j + d/2 (Llama), written out: x (B, h, T, d)."""
    d = x.size(-1)
    angles = torch.arange(x.size(2))[:, None] * base ** (-torch.arange(0, d, 2) / d)[None, :]  # (T, d/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def expected_weights(attention, x, positional, window=None):
    """softmax(q kᵀ/√hs + causal mask (+ ALiBi)) from the layer's qkv weights: (B, nh, T, T)."""
    dims = attention.dims
    nh, nkv, hs = dims.n_heads, dims.n_kv_heads, dims.head_size
    state = attention.state_dict()  # per_head's too: its hooks store the shared qkv layout
    q, k, _ = (x @ state["qkv.weight"].T).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    B, T_, _ = x.shape
    q = q.view(B, T_, nh, hs).transpose(1, 2)
    k = k.view(B, T_, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    if positional == "rope":
        q, k = rope_halves(q), rope_halves(k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)
    i, j = torch.arange(T_)[:, None], torch.arange(T_)[None, :]
    if positional == "alibi":
        scores = scores - ALIBI_SLOPES_4_HEADS[:, None, None] * (i - j)
    hidden = j > i
    if window is not None:
        hidden |= j <= i - window
    return torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)


@pytest.mark.parametrize("positional", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("attention", ["sdpa", "fused", "per_head"])
def test_captured_weights_are_the_explicit_softmax(attention, n_kv_heads, positional):
    model = build(tiny_config(REGISTRY, attention=attention, positional=positional, n_kv_heads=n_kv_heads))
    idx = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(0))
    recorder = Recorder()
    with torch.no_grad():
        model(idx, recorder=recorder)
    for layer, x in enumerate(attention_inputs(model, idx)):
        assert_close(recorder.attentions[layer], expected_weights(model.blocks[layer].attention, x, positional))


def test_sliding_window_weights_beyond_the_window():
    model = build(
        tiny_config(REGISTRY, attention={"name": "sliding_window", "window": 3}, positional="rope", context_length=T)
    )
    idx = torch.randint(0, 50, (1, T), generator=torch.Generator().manual_seed(1))
    recorder = Recorder()
    with torch.no_grad():
        model(idx, recorder=recorder)
    for layer, x in enumerate(attention_inputs(model, idx)):
        assert_close(recorder.attentions[layer], expected_weights(model.blocks[layer].attention, x, "rope", window=3))


def test_capturing_keeps_sdpa_on_its_fast_path_otherwise(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    model = build(tiny_config(REGISTRY, attention="sdpa"))
    idx = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        model(idx)
        assert len(calls) == 2  # one per layer
        model(idx, recorder=Recorder())
    assert len(calls) == 2  # the captured forward wrote the weights out instead


# ---- the notebook API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_model():
    tokenizer = build_tokenizer(REGISTRY, "byte")
    model = build(
        tiny_config(REGISTRY, vocab_size=tokenizer.vocab_size, tokenizer="byte", positional="rope", context_length=24)
    )
    return model, tokenizer


def test_logit_lens_and_residuals_match_each_block_output(byte_model):
    model, tokenizer = byte_model
    prompt = "Every effort"
    seen = inspect_model(model, tokenizer, prompt, top_k=3)
    idx = torch.tensor([tokenizer.encode(prompt)])
    streams = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: streams.append(args[0]))]
    hooks += [b.register_forward_hook(lambda m, args, out: streams.append(out)) for b in model.blocks]
    with torch.no_grad():
        logits = model(idx)[0]  # (T, V)
        lens = [torch.softmax(model.head(model.final_norm(s))[0], -1) for s in streams]
    for h in hooks:
        h.remove()
    assert len(seen.lens_ids) == len(model.blocks) + 1
    probs = torch.softmax(logits, -1)
    assert seen.lens_ids[-1].tolist() == logits.argmax(-1).tolist()  # the last layer's lens is the model's prediction
    assert_close(seen.lens_probs[-1], probs.max(-1).values)
    for layer, p in enumerate(lens):
        assert seen.lens_ids[layer].tolist() == p.argmax(-1).tolist()
        assert_close(seen.residual_norms[layer], streams[layer][0].norm(dim=-1))
    top = probs.topk(3, dim=-1)
    assert seen.next_ids.tolist() == top.indices.tolist()
    assert_close(seen.next_probs, top.values)
    assert seen.tokens == list(prompt) and seen.next_tokens[0][0] == chr(top.indices[0, 0].item())


def test_entropy_is_the_formula(byte_model):
    assert_close(
        entropy_bits(torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25] * 4])), torch.tensor([0.0, 1.0, 2.0])
    )
    model, tokenizer = byte_model
    seen = inspect_model(model, tokenizer, "abcdef")
    for layer, weights in enumerate(seen.attentions):
        p = weights.double()
        expected = -(p * torch.log2(p.clamp_min(1e-300))).sum(-1)
        assert_close(seen.attention_entropy[layer].double(), expected, atol=1e-5, rtol=1e-5)
        assert_close(
            seen.attention_entropy[layer][:, 0], torch.zeros(weights.size(0))
        )  # the first token sees itself only


def test_a_classifier_is_refused(byte_model):
    _, tokenizer = byte_model
    model = build(tiny_config(REGISTRY, vocab_size=tokenizer.vocab_size, head={"name": "classifier", "n_classes": 2}))
    with pytest.raises(GptzooError, match="'classifier' head does not predict tokens"):
        inspect_model(model, tokenizer, "ab")


# ---- the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    registry = make_registry(entry_points=False)
    from gptzoo.recipes.config.schema import RunConfig

    config = RunConfig.model_validate(
        {
            "model": {
                "vocab_size": 257,
                "context_length": 16,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 4,
                "tokenizer": "byte",
                "attention": "sdpa",
            },
            "data": {"source": "x"},
        },
        context={"registry": registry},
    )
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    from gptzoo.core import GPT

    save_run(folder, config, GPT(config.model), config.model.tokenizer.build(), registry)
    return folder


def test_inspect_writes_the_files_and_prints_the_view(run_dir, tmp_path, capsys):
    out = tmp_path / "seen"
    assert main(["inspect", str(run_dir), "--prompt", "Hello", "--out", str(out), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "5 tokens: 0:'H' 1:'e' 2:'l' 3:'l' 4:'o'" in printed
    assert "logit lens" in printed and "block 1" in printed and "embeddings" in printed
    summary = json.loads((out / "inspect.json").read_text())
    expected = [
        "inspect.json",
        "attention.json",
        "attention-layer0.png",
        "attention-layer1.png",
        "logit-lens.png",
        "next-tokens.png",
        "residual-norms.png",
        "attention-entropy.png",
    ]
    assert summary["files"] == expected
    assert all((out / name).stat().st_size > 0 for name in expected)
    assert summary["tokens"] == list("Hello") and len(summary["next_tokens"][-1]) == 3
    assert len(summary["logit_lens"]["top_ids"]) == 3  # embeddings + 2 blocks
    attention = json.loads((out / "attention.json").read_text())["layers"]
    assert len(attention) == 2 and len(attention[0]) == 4 and attention[0][0][0] == [1.0, 0, 0, 0, 0]


def test_a_later_inspection_removes_the_earlier_files(run_dir, tmp_path):
    out = tmp_path / "seen"
    (out).mkdir()
    (out / "attention-layer7.png").write_bytes(b"x")  # not listed by an inspection: left alone
    (out / "inspect.json").write_text(json.dumps({"files": ["attention-layer5.png"]}))
    (out / "attention-layer5.png").write_bytes(b"x")
    assert main(["inspect", str(run_dir), "--prompt", "Hi", "--out", str(out)]) == 0
    assert not (out / "attention-layer5.png").exists() and (out / "attention-layer7.png").exists()


def test_inspect_a_config_with_random_weights(tmp_path, capsys):
    config = tmp_path / "model.toml"
    config.write_text(
        '[model]\ncontext_length = 16\nd_model = 16\nn_layers = 1\nn_heads = 2\ntokenizer = "byte"\nattention = "latent"\npositional = "alibi"\n[data]\nsource = "x"\n'
    )
    assert (
        main(
            [
                "inspect",
                str(config),
                "--prompt",
                "abc",
                "--out",
                str(tmp_path / "o"),
                "--set",
                "model.block.name=parallel",
            ]
        )
        == 0
    )
    assert "untrained weights" in capsys.readouterr().out
    assert (tmp_path / "o" / "attention-layer0.png").is_file()


def error_of(capsys, argv):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("args,message", [
    (["{missing}", "--prompt", "a"], "no such run folder or config file"),
    (["{run}", "--prompt", ""], "--prompt is empty"),
    (["{run}", "--prompt", "x" * 17], "--prompt is 17 tokens but the model's context holds 16"),
    (["{run}", "--prompt", "a", "--top-k", "0"], "--top-k 0: must be at least 1"),
    (["{run}", "--prompt", "a", "--top-k", "-2"], "--top-k -2: must be at least 1"),
])  # fmt: skip
def test_bad_input_exits_2(run_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = ["inspect", *(a.format(run=run_dir, missing=tmp_path / "nope") for a in args), "--out", out]
    assert message in error_of(capsys, argv)
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(run_dir, tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    assert "is a file, not a folder" in error_of(capsys, ["inspect", run_dir, "--prompt", "a", "--out", file])
    assert file.read_text() == "mine"
