"""Self-speculative decoding with the MTP module as the draft gives plain greedy decoding's tokens,
token for token, whether drafts are accepted or not, in batches with left padding and past the context."""

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import GptzooError
from gptzoo.recipes.generation import speculative
from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.recipes.generation.speculative import Speculation, speculative_ids
from gptzoo.testing import build, tiny_config

LLAMA = dict(positional="rope", norm="rmsnorm", feed_forward="swiglu", attn_out_bias=False, n_layers=2)
CYCLE = [3, 17, 8, 25, 11, 40, 2]


def trained_on_a_cycle(registry, steps=150, **fields):
    """A model (and its MTP module) trained on a repeating sequence, so that most drafts are right."""
    model = build(
        tiny_config(registry, mtp={"name": "sequential", "depth": 1, "loss_weight": 1.0}, **LLAMA, **fields)
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    stream = torch.tensor(CYCLE * 20)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 17, (8,), generator=generator)
        batch = torch.stack([stream[s : s + 17] for s in starts])
        inputs, targets = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        loss = loss + sum(a.weight * a.value for a in model.auxiliary_losses(targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cycle_model(request):
    from gptzoo.registry import default_registry

    return trained_on_a_cycle(default_registry())


def test_accepted_drafts_give_the_greedy_tokens(cycle_model):
    prompts = [CYCLE[:3], CYCLE[2:4] + CYCLE[:4]]  # left padding: 3 and 6 tokens
    stats = Speculation()
    got = speculative_ids(cycle_model, prompts, 9, stats=stats)
    assert got == generate_ids(cycle_model, prompts, 9)
    assert stats.drafted > 0 and stats.acceptance_rate > 0.5  # the cycle is learnt: most drafts are right
    assert stats.drafted + stats.accepted <= 9  # an accepted draft gives two tokens for one forward


def test_rejected_drafts_give_the_greedy_tokens_too(registry):
    model = build(tiny_config(registry, mtp={"name": "sequential"}, **LLAMA))  # untrained: drafts mostly wrong
    prompts = [[5, 9, 14, 2], [7]]
    stats = Speculation()
    got = speculative_ids(model, prompts, 10, stats=stats)
    assert got == generate_ids(model, prompts, 10)
    assert stats.drafted > 0 and stats.accepted < stats.drafted


# The token mixers whose caches keep every key and value, so a rejected draft is forgotten (KVCache.rewind).
REWINDABLE = ("sdpa", "fused", "per_head", "no_weights", "latent", "sparse_latent")


@pytest.mark.parametrize("drafts", ["as_drafted", "always_right"])
@pytest.mark.parametrize("attention", REWINDABLE)
def test_every_mixer_that_rewinds_gives_the_greedy_tokens_with_left_padding(registry, monkeypatch, attention, drafts):
    model = build(tiny_config(registry, attention=attention, mtp={"name": "sequential"}, **LLAMA))
    prompts = [[5, 9, 14, 2, 30], [7, 1]]  # the second left-padded by 3
    greedy = generate_ids(model, prompts, 8)
    if drafts == "always_right":  # each draft replaced by the greedy token: every step takes the accepted path
        texts = [[0] * (5 - len(p)) + p + g for p, g in zip(prompts, greedy, strict=True)]
        drafted = speculative._draft

        def right(model, hidden, following, cache, pending_mask=None):
            drafted(model, hidden, following, cache, pending_mask)  # the module's cache advances as it would
            return torch.tensor([[t[min(cache.length + 1, len(t) - 1)]] for t in texts])  # the token after pending

        monkeypatch.setattr(speculative, "_draft", right)
    stats = Speculation()
    assert speculative_ids(model, prompts, 8, stats=stats) == greedy
    assert stats.drafted > 0
    if drafts == "always_right":
        assert stats.accepted == stats.drafted
    else:
        assert stats.accepted < stats.drafted  # untrained: the rejected path and its rewind ran


def test_past_the_context_and_at_the_end_of_text(cycle_model):
    n = cycle_model.config.context_length
    prompt = (CYCLE * 3)[: n - 4]
    assert speculative_ids(cycle_model, [prompt], 12) == generate_ids(cycle_model, [prompt], 12)
    eot = generate_ids(cycle_model, [CYCLE[:3]], 4)[0][2]  # the third token to come ends the text
    assert speculative_ids(cycle_model, [CYCLE[:3]], 8, eot_id=eot) == generate_ids(
        cycle_model, [CYCLE[:3]], 8, eot_id=eot
    )


def test_refuses_a_model_without_mtp_or_with_windowed_caches(registry):
    with pytest.raises(GptzooError, match="no multi-token prediction"):
        speculative_ids(build(tiny_config(registry, **LLAMA)), [[1, 2]], 3)
    windowed = build(
        tiny_config(registry, mtp="sequential", **{**LLAMA, "attention": {"name": "sliding_window", "window": 4}})
    )
    with pytest.raises(GptzooError, match="SlidingWindowAttention"):
        speculative_ids(windowed, [[1, 2]], 3)


def test_generate_speculative_prints_the_greedy_text(tmp_path, shared_data, capsys):
    from gptzoo.recipes.cli import main

    run = tmp_path / "run"
    sets = [
        "model.context_length=32",
        "model.d_model=32",
        "model.n_layers=2",
        "model.n_heads=4",
        "model.tokenizer=char",
        "model.mtp.name=sequential",
        f"data.source={shared_data('the-verdict.txt')}",
        f"data.cache_dir={tmp_path}/cache",
        "train.max_steps=2",
        "train.eval_interval=2",
        "train.eval_batches=1",
        "train.batch_size=2",
        "train.sample_tokens=0",
    ]
    assert main(["train", "tiny", "--out", str(run), *(a for s in sets for a in ("--set", s))]) == 0
    capsys.readouterr()
    for stream in ([], ["--no-stream"]):
        assert main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", "12", "--no-stream"]) == 0
        plain = capsys.readouterr().out
        assert (
            main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", "12", "--speculative", *stream]) == 0
        )
        speculative = capsys.readouterr()
        assert speculative.out == plain and "drafts accepted" in speculative.err
    # a length no memory holds is refused before the prompt streams, as plain generate refuses it
    assert main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", str(10**12), "--speculative"]) == 2
    refused = capsys.readouterr()
    assert refused.out == "" and f"--max-new-tokens {10**12}: 1 text(s) of {10**12 + 5} tokens need" in refused.err


def test_refuses_a_length_no_memory_holds_before_decoding(cycle_model):
    with pytest.raises(GptzooError, match=f"--max-new-tokens {10**12}: 2 text\\(s\\) of {10**12 + 3} tokens need"):
        speculative_ids(cycle_model, [[3, 17, 8], [3, 17]], 10**12, on_token=lambda row, token: pytest.fail("streamed"))
