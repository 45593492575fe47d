"""Inspection: the captured attention weights against softmax(QKᵀ/√d + mask) computed here from
each layer's own projection weights, the logit lens and residual stream against forward hooks,
entropy against its formula, a hybrid whose layers offer different things (sinks, an implicit
attention matrix, state norms, nothing) against those computed here, and the ``gptzoo inspect``
command with its bad input."""

import json
import math

import pytest
import torch
from torch.testing import assert_close

from gptzoo.core import Attention, GptzooError, Recorder
from gptzoo.recipes.cli import main
from gptzoo.recipes.research.inspection import entropy_bits, inspect_model, write_inspection
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


# ---- a hybrid: each layer shows what its mixer offers ----------------------------------------


class _Projected(Attention):
    """Queries, keys and values of every head from one linear map; out_proj back to the stream.
    Test mixers for inspection only: they keep no cache."""

    position_hooks = frozenset()
    cache_kind = "state"

    def __init__(self, params, dims):
        super().__init__(params, dims)
        nh, hs = dims.n_heads, dims.head_size
        self.qkv = torch.nn.Linear(dims.d_model, 3 * nh * hs, bias=False)
        self.out_proj = torch.nn.Linear(nh * hs, dims.d_model, bias=False)

    def heads(self, x):
        """x (B, T, C) -> q, k, v (B, nh, T, hs) each."""
        B, T, _ = x.shape
        return (t.view(B, T, self.dims.n_heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))

    def merge(self, y):
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))


class DecayedLinearAttention(_Projected):
    """y_t = Σ_{s<=t} 0.5^(t-s) (q_t·k_s) v_s: the masked matrix A it multiplies v with is its implicit attention."""

    inspection = "implicit_attention"

    def forward(self, x, ctx, cache=None):
        q, k, v = self.heads(x)
        T = x.size(1)
        distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]
        decay = torch.where(distance >= 0, 0.5 ** distance.clamp(min=0).float(), 0.0)  # (T, T)
        A = (q @ k.transpose(-2, -1)) * decay  # (B, nh, T, T)
        ctx.record(A)
        return self.merge(A @ v)


class RunningOuterProducts(_Projected):
    """S_t = Σ_{s<=t} k_s v_sᵀ per head, y_t = q_t S_t; it offers ‖S_t‖ per head after each token."""

    inspection = "state_norms"

    def forward(self, x, ctx, cache=None):
        q, k, v = self.heads(x)
        states = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # (B, nh, T, hs, hs)
        if ctx.capturing:
            ctx.record(states.flatten(-2).norm(dim=-1))  # (B, nh, T)
        return self.merge((q.unsqueeze(-2) @ states).squeeze(-2))


class SinkAttention(_Projected):
    """Softmax attention with a sink: one more logit, 0, that carries no value, so rows sum to < 1."""

    inspection = "partial_probabilities"

    def forward(self, x, ctx, cache=None):
        q, k, v = self.heads(x)
        T = x.size(1)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")
        )
        sink = torch.zeros(*scores.shape[:-1], 1)
        weights = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :T]  # (B, nh, T, T)
        ctx.record(weights)
        return self.merge(weights @ v)


HYBRID_LAYERS = ["soft", "sink", "ffn_only", "implicit", "norms"]


@pytest.fixture(scope="module")
def hybrid():
    """A byte-level hybrid: softmax attention, sink attention, a layer without a mixer and two recurrent-style mixers."""
    registry = make_registry(entry_points=False)
    registry.add("attention", "sink_test", SinkAttention)
    registry.add("attention", "decayed_test", DecayedLinearAttention)
    registry.add("attention", "outer_test", RunningOuterProducts)
    tokenizer = build_tokenizer(registry, "byte")
    config = tiny_config(
        registry,
        vocab_size=tokenizer.vocab_size,
        tokenizer="byte",
        positional="learned",
        n_layers=len(HYBRID_LAYERS),
        n_kv_heads=4,
        layer_kinds={
            "soft": {},
            "sink": {"attention": "sink_test"},
            "ffn_only": {"attention": "none"},
            "implicit": {"attention": "decayed_test"},
            "norms": {"attention": "outer_test"},
        },
        layer_pattern=HYBRID_LAYERS,
    )
    return build(config), tokenizer


def test_each_layer_of_a_hybrid_shows_what_its_mixer_offers(hybrid):
    model, tokenizer = hybrid
    prompt = "abcdefg"
    seen = inspect_model(model, tokenizer, prompt)
    T = len(prompt)
    mixing = [0, 1, 3, 4]  # the layer without a mixer never calls it
    inputs = dict(zip(mixing, attention_inputs(model, torch.tensor([tokenizer.encode(prompt)])), strict=True))
    assert seen.offers == ["probabilities", "partial_probabilities", "nothing", "implicit_attention", "state_norms"]
    # softmax attention: its probabilities, with an entropy per query
    assert_close(seen.attentions[0], expected_weights(model.blocks[0].attention, inputs[0], "learned")[0])
    assert seen.attention_entropy[0].shape == (4, T)
    # sinks: the probabilities as computed, exp(s) / (1 + Σ exp(s)), rows short of 1; no entropy
    q, k, _ = model.blocks[1].attention.heads(inputs[1])
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)))[0].double()  # (nh, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    sink = scores.exp() * causal / (1 + (scores.exp() * causal).sum(-1, keepdim=True))
    assert_close(seen.attentions[1].double(), sink, atol=1e-6, rtol=1e-5)
    assert (seen.attentions[1].sum(-1) < 1).all() and seen.attention_entropy[1] is None
    # no mixer: nothing at all
    assert seen.attentions[2] is None and seen.state_norms[2] is None and seen.attention_entropy[2] is None
    # the implicit attention matrix exactly as the mixer multiplies v with, not renormalised
    q, k, _ = model.blocks[3].attention.heads(inputs[3])
    qk = (q @ k.transpose(-2, -1))[0]  # (nh, T, T)
    implicit = torch.zeros(4, T, T)
    for t in range(T):
        for s in range(t + 1):
            implicit[:, t, s] = 0.5 ** (t - s) * qk[:, t, s]
    assert_close(seen.attentions[3], implicit)
    assert not torch.allclose(seen.attentions[3].sum(-1), torch.ones(4, T)) and seen.attention_entropy[3] is None
    # state norms: ‖Σ_{s<=t} k_s v_sᵀ‖ per head, by a loop
    _, k, v = model.blocks[4].attention.heads(inputs[4])
    state, norms = torch.zeros(4, 8, 8), []
    for t in range(T):
        state = state + k[0, :, t, :, None] * v[0, :, t, None, :]
        norms.append(state.flatten(1).norm(dim=-1))
    assert_close(seen.state_norms[4], torch.stack(norms, dim=1))
    assert seen.attentions[4] is None and seen.attention_entropy[4] is None


def test_a_hybrid_writes_what_each_layer_offers(hybrid, tmp_path):
    model, tokenizer = hybrid
    seen = inspect_model(model, tokenizer, "abcde")
    files, drawn = write_inspection(seen, tmp_path, "hybrid")
    summary = json.loads((tmp_path / "inspect.json").read_text())
    expected = [
        "inspect.json",
        "attention.json",
        "attention-layer0.png",
        "attention-layer1.png",
        "attention-layer3.png",
        "state-norms-layer4.png",
        "logit-lens.png",
        "next-tokens.png",
        "residual-norms.png",
        "attention-entropy.png",
    ]
    assert summary["files"] == (expected if drawn else expected[:2])
    assert [m["offers"] for m in summary["mixers"]] == seen.offers
    assert (
        "sum to less than 1" in summary["mixers"][1]["meaning"]
        and "not a distribution" in summary["mixers"][3]["meaning"]
    )
    assert summary["mixers"][1]["row_sum_per_head"] == pytest.approx(
        seen.attentions[1].sum(-1).mean(-1).tolist(), abs=1e-4
    )
    entropy = summary["attention_entropy_bits"]["per_head"]
    assert [e is None for e in entropy] == [False, True, True, True, True]
    attention = json.loads((tmp_path / "attention.json").read_text())
    assert attention["offers"] == seen.offers
    layers = attention["layers"]
    assert layers[2] is None
    assert torch.tensor(layers[3]).shape == (4, 5, 5) and torch.tensor(layers[4]).shape == (4, 5)
    assert_close(torch.tensor(layers[4]), seen.state_norms[4], atol=1e-5, rtol=0)


def test_a_layer_with_many_heads_draws_the_first_16(hybrid, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import gptzoo.recipes.research.inspection as inspection

    model, tokenizer = hybrid
    seen = inspect_model(model, tokenizer, "abc")
    seen.attentions[3] = torch.randn(40, 3, 3).tril()  # a short convolution offers one matrix per channel
    drawn = {}
    monkeypatch.setattr(
        inspection,
        "save_png",
        lambda fig, path: drawn.setdefault(path.name, [a for a in fig.axes if a.images and a.get_title()]),
    )
    inspection.plot_all(seen, tmp_path)
    assert len(drawn["attention-layer3.png"]) == 16 and len(drawn["attention-layer0.png"]) == 4
    assert drawn["attention-layer3.png"][0].get_title() == "layer 3, head 0 (implicit attention)"


def test_inspect_a_hybrid_config_names_what_each_layer_shows(tmp_path, capsys):
    config = tmp_path / "hybrid.toml"
    config.write_text(
        '[model]\ncontext_length = 16\nd_model = 16\nn_layers = 2\nn_heads = 2\ntokenizer = "byte"\n'
        'positional = "learned"\nlayer_pattern = ["mix", "feed"]\n'
        '[model.layer_kinds]\nmix = {}\nfeed = { attention = "none" }\n[data]\nsource = "x"\n'
    )
    out = tmp_path / "o"
    assert main(["inspect", str(config), "--prompt", "abc", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "'sdpa', 'none' token mixing" in printed
    assert "block 0: attention probabilities" in printed and "block 1: nothing: the layer has no token mixer" in printed
    assert json.loads((out / "attention.json").read_text())["offers"] == ["probabilities", "nothing"]
    assert not (out / "attention-layer1.png").exists()


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
