"""Generation: the sampling rules, cached decoding against the book's plain loop, stopping,
streaming, and the ``gptzoo generate`` command."""

import math
import weakref

import pytest
import torch

from gptzoo.core import GPT, ConfigError, Tokenizer
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.generation import generate
from gptzoo.recipes.generation.generate import complete, generate_ids, sample_next, stream_ids
from gptzoo.recipes.generation.text import TextStream
from gptzoo.recipes.runs.folder import save_run
from gptzoo.registry import make_registry

EOT = 256  # the byte tokenizer's end-of-text id
REGISTRY = make_registry(entry_points=False)


def tiny_model(registry, **changes) -> GPT:
    spec = {
        "vocab_size": 257,
        "context_length": 12,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 4,
        "tokenizer": "byte",
    } | changes
    torch.manual_seed(0)
    return GPT(registry.model_config(spec)).eval()


def byte_tokenizer(registry) -> Tokenizer:
    return registry.model_config(
        {"context_length": 8, "d_model": 8, "n_layers": 1, "n_heads": 1, "tokenizer": "byte"}
    ).tokenizer.build()


def book_greedy(model: GPT, prompt: list[int], max_new_tokens: int, crop: bool = True) -> list[int]:
    """The book's generate_text_simple: re-run the cropped sequence (``crop``; else all of it), take the argmax."""
    idx = torch.tensor([prompt])
    window = model.config.context_length if crop else None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx[:, -window:] if window else idx)[:, -1]  # (1, V)
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt) :].tolist()


def book_text(model, prompt: str, n: int) -> str:
    """The book loop's text, cut at end-of-text, decoded as UTF-8 bytes."""
    ids = book_greedy(model, list(prompt.encode("utf-8")), n)
    ids = ids[: ids.index(EOT)] if EOT in ids else ids
    return bytes(ids).decode("utf-8", errors="replace")


def scripted_sampler(monkeypatch, script: list[list[int]]) -> list[int]:
    """Replace sampling with a fixed script (one list of per-row ids per step); returns a call counter."""
    calls = []

    def fake(logits, temperature, top_k, top_p, generator):
        calls.append(1)
        return torch.tensor(script[len(calls) - 1], device=logits.device)

    monkeypatch.setattr(generate, "sample_next", fake)
    return calls


# ---- sampling rules ---------------------------------------------------------------------


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 2.9, -5.0]])
    assert sample_next(logits, temperature=0.0).tolist() == [1, 0]
    # Greedy ignores the generator and the filters: the same answer every time.
    assert sample_next(logits, 0.0, top_k=3, top_p=0.5, generator=torch.Generator().manual_seed(7)).tolist() == [1, 0]


def test_top_k_never_samples_outside_the_top_k():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5, 2.5, -1.0]).expand(200, 6)  # top 2: ids 1 and 4
    seen = set()
    for seed in range(50):
        ids = sample_next(logits, temperature=1.5, top_k=2, generator=torch.Generator().manual_seed(seed))
        seen |= set(ids.tolist())
    assert seen == {1, 4}


def test_top_k_keeps_exactly_k_when_logits_tie():
    logits = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.0]).expand(2000, 5)
    ids = sample_next(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert len(set(ids.tolist())) == 2 and 0 in ids.tolist()


@pytest.mark.parametrize(
    "top_p, kept",
    [
        # probabilities by id: 0.10, 0.40, 0.05, 0.30, 0.15; sorted 0.40 (1), 0.30 (3), 0.15 (4), 0.10 (0), 0.05 (2)
        (0.3, {1: 1.0}),  # 0.40 alone reaches 0.3
        (0.65, {1: 0.4 / 0.7, 3: 0.3 / 0.7}),  # 0.40 + 0.30 = 0.70 reaches 0.65
        (0.75, {1: 0.4 / 0.85, 3: 0.3 / 0.85, 4: 0.15 / 0.85}),  # 0.70 does not; 0.85 does
        (1.0, {0: 0.10, 1: 0.40, 2: 0.05, 3: 0.30, 4: 0.15}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    n = 40_000
    logits = torch.tensor([0.10, 0.40, 0.05, 0.30, 0.15]).log().expand(n, 5)
    ids = sample_next(logits, temperature=1.0, top_p=top_p, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=5)
    assert {i for i in range(5) if counts[i]} == set(kept)
    for i, p in kept.items():  # renormalised over the kept set; 4 standard deviations
        assert abs(counts[i].item() / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_temperature_scales_the_logits():
    # logits (0, ln 3): probabilities 1/4, 3/4 at T=1; at T=2 the odds are sqrt(3): 1/(1+sqrt 3).
    n = 40_000
    logits = torch.tensor([0.0, math.log(3.0)]).expand(n, 2)
    for temperature, p0 in [(1.0, 0.25), (2.0, 1 / (1 + math.sqrt(3)))]:
        ids = sample_next(logits, temperature, generator=torch.Generator().manual_seed(1))
        share = (ids == 0).float().mean().item()
        assert abs(share - p0) < 4 * math.sqrt(p0 * (1 - p0) / n)


# ---- decoding -----------------------------------------------------------------------------


def _pairs_configs_accept() -> list[tuple[str, str]]:
    """Every (mixer, position scheme) a config accepts: a mixer refuses schemes whose hooks it never calls."""
    pairs = []
    for attention in REGISTRY.names("attention"):
        for positional in REGISTRY.names("positional"):
            try:
                tiny_model(REGISTRY, attention={"name": attention}, positional={"name": positional})
            except ConfigError:
                continue
            pairs.append((attention, positional))
    return pairs


@pytest.mark.parametrize("attention, positional", _pairs_configs_accept())
def test_cached_greedy_equals_the_book_loop_and_batches_match_single_prompts(registry, attention, positional):
    # Grouped key/value heads where the variant takes them, and a run past the 12-token context: prompts of 3 and 7 tokens + 14 new.
    try:
        model = tiny_model(
            registry, attention={"name": attention}, positional={"name": positional}, n_kv_heads=2
        ).double()
    except ConfigError:  # the variant has no separate key/value heads
        model = tiny_model(registry, attention={"name": attention}, positional={"name": positional}).double()
    prompts = [[72, 105, 33], [1, 250, 7, 99, 3, 18, 64]]
    # A model whose caches are bounded and whose positions extend sees its whole text; the others crop as the book does.
    crop = model.extension_refusal() is not None
    expected = [book_greedy(model, p, 14, crop) for p in prompts]
    for prompt, want in zip(prompts, expected, strict=True):
        assert generate_ids(model, [prompt], 14) == [want]
        assert generate_ids(model, [prompt], 14, use_cache=False) == [want]
    assert generate_ids(model, prompts, 14, eot_id=EOT) == [e[: e.index(EOT)] if EOT in e else e for e in expected]
    assert generate_ids(model, prompts, 14, use_cache=False) == expected


def test_the_prompt_runs_once_then_one_token_per_step_until_the_context_is_full(registry, monkeypatch):
    model = tiny_model(registry)
    fed = []
    hidden_states = model.hidden_states

    def spy(idx, cache=None, pad_mask=None):
        fed.append((idx.size(1), cache is not None, pad_mask is not None))
        return hidden_states(idx, cache=cache, pad_mask=pad_mask)

    monkeypatch.setattr(model, "hidden_states", spy)
    generate_ids(model, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], 9)
    # Context 12: the 7-column prompt (padded, masked), 5 single tokens fill the cache to 12,
    # then 12-token windows; the window starting at column 1..3 still holds row 0's padding.
    assert fed == [(7, True, True)] + [(1, True, False)] * 5 + [(12, False, True)] * 3
    fed.clear()
    generate_ids(model, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], 12)
    assert fed[-1] == (12, False, False)  # window from column 4: past all padding


def test_prompt_longer_than_the_context_is_cropped_like_the_book(registry):
    model = tiny_model(registry).double()
    prompt = list(range(40, 60))  # 20 tokens, context 12
    assert generate_ids(model, [prompt], 5) == [book_greedy(model, prompt, 5)]


def test_greedy_is_deterministic_and_training_mode_is_restored(registry):
    model = tiny_model(registry, dropout=0.5).train()
    tokenizer = byte_tokenizer(registry)
    first = complete(model, tokenizer, "Hello", 10)
    assert first == complete(model, tokenizer, "Hello", 10)
    assert model.training
    model.eval()
    assert first == book_text(model, "Hello", 10)


def test_the_same_seed_gives_the_same_text(registry):
    model = tiny_model(registry)
    tokenizer = byte_tokenizer(registry)
    texts = [complete(model, tokenizer, "Hi", 20, temperature=1.0, top_k=50, top_p=0.95, seed=s) for s in (1, 1, 2)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_generation_stops_at_end_of_text_per_row(registry, monkeypatch):
    model = tiny_model(registry)
    # Row 0 ends after 2 tokens, row 1 after 4; the script has no step 6, so a 6th call would fail.
    script = [[10, 20], [11, 21], [EOT, 22], [12, 23], [EOT, 24], [EOT, EOT]]
    calls = scripted_sampler(monkeypatch, script)
    heard = []
    out = generate_ids(model, [[65], [66, 67]], 50, eot_id=EOT, on_token=lambda row, token: heard.append((row, token)))
    assert out == [[10, 11], [20, 21, 22, 23, 24]]
    assert len(calls) == 6
    assert sorted(heard) == sorted([(0, 10), (0, 11), (1, 20), (1, 21), (1, 22), (1, 23), (1, 24)])


def test_without_end_of_text_generation_runs_to_max_new_tokens(registry, monkeypatch):
    model = tiny_model(registry)
    scripted_sampler(monkeypatch, [[EOT]] * 7)
    assert generate_ids(model, [[65]], 7) == [[EOT] * 7]


def test_complete_stops_at_end_of_text(registry, monkeypatch):
    scripted_sampler(monkeypatch, [[ord("o")], [ord("k")], [EOT]])
    assert complete(tiny_model(registry), byte_tokenizer(registry), "x", 100) == "ok"


# ---- streaming without keeping the text -------------------------------------------------------

# A model whose caches are bounded and which decodes past its context.
WINDOWED = {"attention": {"name": "sliding_window", "window": 4}, "positional": "alibi"}


class Enough(Exception):
    """Raised by a listener that has heard enough tokens."""


def streamed(model, prompts, max_new_tokens, stop_after=None, at_stop=lambda: None, **options) -> list[list[int]]:
    """What stream_ids hands on, per row; ``stop_after`` tokens in all end it early, calling ``at_stop`` first."""
    heard = [[] for _ in prompts]

    def listen(row, token):
        heard[row].append(token)
        if stop_after is not None and sum(map(len, heard)) >= stop_after:
            at_stop()
            raise Enough

    try:
        stream_ids(model, prompts, max_new_tokens, listen, **options)
    except Enough:
        pass
    return heard


@pytest.mark.parametrize("changes", [{}, WINDOWED], ids=["crops", "bounded"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_a_text_far_past_the_first_buffer_gives_the_book_tokens(registry, monkeypatch, changes, use_cache):
    # A buffer of 2 x 12 columns (the context) is moved many times over 60 tokens.
    monkeypatch.setattr(generate, "_FEW_COLUMNS", 1)
    model = tiny_model(registry, **changes).double()
    crop = model.extension_refusal() is not None
    prompts = [[72, 105, 33], [1, 250, 7, 99, 3, 18, 64]]
    expected = [book_greedy(model, p, 60, crop) for p in prompts]
    assert streamed(model, prompts, 60, use_cache=use_cache) == expected
    assert generate_ids(model, prompts, 60, use_cache=use_cache) == expected  # its buffer grows instead


class LiveTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Watches every tensor an operation makes (factories included); ``live_bytes()``: the bytes of
    those still alive, each storage counted once."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.made += [weakref.ref(t) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out

    def live_bytes(self) -> int:
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for r in self.made if (t := r()) is not None
        }
        return sum(storages.values())


@pytest.mark.parametrize(
    "changes",
    [{}, WINDOWED, WINDOWED | {"positional": "rope"}, WINDOWED | {"positional": "sinusoidal"}],
    ids=["crops", "bounded", "bounded rope", "bounded sinusoidal"],  # rope and sinusoidal: no table grows
)
def test_streaming_an_absurd_number_of_tokens_keeps_flat_memory(registry, monkeypatch, changes):
    monkeypatch.setattr(generate, "_FEW_COLUMNS", 4)
    model = tiny_model(registry, **changes)
    live = []
    for heard in (40, 400):
        with LiveTensors() as mode:
            out = streamed(
                model, [[72, 105, 33]], 10**18, stop_after=heard, at_stop=lambda: live.append(mode.live_bytes())
            )
        assert len(out[0]) == heard
    # What generation holds (its text buffer, cache, last logits) is as large after 400 tokens as after 40,
    # though 10^18 were asked for: nothing grows with the tokens asked for or produced.
    print("LIVE", live, model.positional.__dict__.get("_buffers", {}).keys())
    assert live[0] == live[1] > 0


def test_a_cache_that_grows_past_what_memory_holds_is_refused_before_streaming(registry):
    from gptzoo.core import GptzooError

    hybrid = tiny_model(
        registry,
        positional="rope",
        layer_kinds={"local": {"attention": {"name": "sliding_window", "window": 4}}, "global": {}},
        layer_pattern=["local", "global"],
    )
    assert hybrid.extension_refusal() is None and not hybrid.bounded_cache()
    with pytest.raises(GptzooError, match=rf"--max-new-tokens {10**15}: 1 text\(s\) of {10**15 + 3} tokens need about"):
        streamed(hybrid, [[72, 105, 33]], 10**15)


def test_a_window_is_sized_to_the_text_and_refused_up_front_when_the_text_would_fill_more_than_memory(registry):
    from gptzoo.core import GptzooError

    model = tiny_model(registry, attention={"name": "sliding_window", "window": 10**12}, positional="alibi").double()
    prompt = [72, 105, 33]
    assert streamed(model, [prompt], 20) == [book_greedy(model, prompt, 20, crop=False)]  # a ring of 23 tokens
    with pytest.raises(GptzooError, match=rf"--max-new-tokens {10**15}: 1 text\(s\) of {10**15 + 3} tokens need about"):
        streamed(model, [prompt], 10**15)  # its ring would hold every one of them


def test_cli_streams_an_absurd_number_of_tokens_until_interrupted(run_dir, capsys, monkeypatch):
    folder, model = run_dir
    written = []

    def write(text):
        written.append(text)
        if len(written) > 20:
            raise KeyboardInterrupt

    monkeypatch.setattr("gptzoo.recipes.cli.generate._write", write)
    assert main(["generate", str(folder), "--prompt", "Hey", "--max-new-tokens", str(10**18)]) == 130
    assert "".join(written).startswith("Hey" + book_text(model, "Hey", 15))


def test_bytes_that_never_form_a_character_are_not_held_back_for_ever(registry):
    tokenizer = byte_tokenizer(registry)
    pieces = []
    stream = TextStream(tokenizer, pieces.append)
    for _ in range(100):
        stream.add(0xFF)  # never valid in UTF-8
        assert len(stream.pending) < 8
    stream.flush()
    assert "".join(pieces) == "\ufffd" * 100


# ---- streaming ------------------------------------------------------------------------------


def test_streamed_pieces_join_to_the_text_and_split_characters_print_whole(registry, monkeypatch):
    text = "héllo €😀 wörld"
    scripted_sampler(monkeypatch, [[b] for b in text.encode("utf-8")] + [[EOT]])
    pieces = []
    result = complete(tiny_model(registry), byte_tokenizer(registry), "x", 100, stream=pieces.append)
    assert result == text
    assert pieces == list(text)  # each character as soon as its last byte arrives


def test_stream_flushes_an_incomplete_character_at_the_end(registry):
    tokenizer = byte_tokenizer(registry)
    pieces = []
    stream = TextStream(tokenizer, pieces.append)
    for b in "a€".encode()[:-1]:  # the euro sign cut after 2 of its 3 bytes
        stream.add(b)
    assert pieces == ["a"]
    stream.flush()
    assert "".join(pieces) == tokenizer.decode(list("a€".encode()[:-1]))


class SpacedWords(Tokenizer):
    """Decodes ids to words joined by spaces: a piece must carry the space before its word."""

    words = ["the", "cat", "sat"]
    vocab_size = 4
    eot_id = 3

    def encode(self, text):
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


def test_stream_keeps_what_a_tokenizer_puts_between_tokens():
    pieces = []
    stream = TextStream(SpacedWords(None), pieces.append)
    for token in [0, 1, 2]:
        stream.add(token)
    assert pieces == ["the", " cat", " sat"]


# ---- decoding after the prompt --------------------------------------------------------------

VERDICT_OPENING = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no "
    "great surprise to me to hear that, in the height of his glory, he had dropped his painting."
)


def fitted(registry, name: str, text: str, **params) -> Tokenizer:
    config = registry.model_config(
        {"context_length": 8, "d_model": 8, "n_layers": 1, "n_heads": 1, "tokenizer": {"name": name, **params}}
    )
    tokenizer = config.tokenizer.build()
    tokenizer.fit(text)
    return tokenizer


def model_for(registry, tokenizer: Tokenizer, context_length: int = 64) -> GPT:
    torch.manual_seed(0)
    spec = {
        "vocab_size": tokenizer.vocab_size,
        "context_length": context_length,
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 2,
    }
    return GPT(registry.model_config(spec)).eval()


def test_word_tokenizer_continuation_reads_as_the_whole_sequence_decoded(registry, monkeypatch):
    tokenizer = fitted(registry, "word", VERDICT_OPENING)
    new_ids = tokenizer.encode("it the had, he")
    scripted_sampler(monkeypatch, [[i] for i in new_ids] + [[tokenizer.eot_id]])
    pieces = []
    prompt = "I HAD always thought Jack"
    continuation = complete(model_for(registry, tokenizer), tokenizer, prompt, 20, stream=pieces.append)
    # The book's SimpleTokenizerV1.decode of the whole sequence: words joined by spaces, no space before punctuation.
    assert prompt + continuation == "I HAD always thought Jack it the had, he"
    assert prompt + continuation == tokenizer.decode(tokenizer.encode(prompt) + new_ids)
    assert pieces == [" it", " the", " had", ",", " he"]


def test_byte_level_bpe_streams_multi_byte_characters_whole_after_the_prompt(registry, monkeypatch):
    corpus = "héllo wörld, €5 for 😀 and 日本語 text " * 3
    tokenizer = fitted(
        registry, "bpe", corpus, vocab_size=270
    )  # few merges: most characters stay split over byte tokens
    prompt, text = "héllo wö", "rld €5 😀 日本語"
    new_ids = tokenizer.encode(text)
    assert len(new_ids) > len(text)  # some characters do span several tokens
    scripted_sampler(monkeypatch, [[i] for i in new_ids] + [[tokenizer.eot_id]])
    pieces = []
    continuation = complete(model_for(registry, tokenizer), tokenizer, prompt, 40, stream=pieces.append)
    assert prompt + continuation == tokenizer.decode(tokenizer.encode(prompt) + new_ids) == prompt + text
    assert "".join(pieces) == continuation and not any("\ufffd" in piece for piece in pieces)


def test_the_training_sample_reads_as_the_whole_sequence_decoded(registry, monkeypatch):
    from gptzoo.recipes.config.schema import TrainConfig
    from gptzoo.recipes.training.evaluation import sample_text

    tokenizer = fitted(registry, "word", VERDICT_OPENING)
    scripted_sampler(monkeypatch, [[i] for i in tokenizer.encode("it was no")] + [[tokenizer.eot_id]])
    train = TrainConfig(max_steps=1, sample_prompt="thought  Jack", sample_tokens=8)
    assert sample_text(model_for(registry, tokenizer), tokenizer, train) == "thought Jack it was no"


# ---- the command ----------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, registry):
    config = RunConfig.model_validate(
        {
            "model": {
                "vocab_size": 257,
                "context_length": 12,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 4,
                "tokenizer": "byte",
            }
        },
        context={"registry": registry},
    )
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    save_run(tmp_path / "run", config, model, config.model.tokenizer.build())
    return tmp_path / "run", model


def test_cli_generate_streams_the_greedy_text(run_dir, capsys):
    folder, model = run_dir
    assert main(["generate", str(folder), "--prompt", "Hey", "--max-new-tokens", "15"]) == 0
    assert capsys.readouterr().out == "Hey" + book_text(model, "Hey", 15) + "\n"


def test_cli_generate_a_batch_prints_each_result(run_dir, capsys):
    folder, model = run_dir
    argv = ["generate", str(folder), "--prompt", "Hey", "--prompt", "Good day", "--max-new-tokens", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == "Hey" + book_text(model, "Hey", 6) + "\n\n" + "Good day" + book_text(model, "Good day", 6) + "\n"


def test_cli_sampling_with_a_seed_repeats(run_dir, capsys):
    folder, _ = run_dir
    argv = [
        "generate",
        str(folder),
        "--prompt",
        "a",
        "--temperature",
        "1.0",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "4",
        "--no-stream",
    ]
    assert main(argv) == 0 and main(argv) == 0
    first, second = capsys.readouterr().out.split("\n")[:2]
    assert first == second and first.startswith("a")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        (["--temperature", "-0.5"], "--temperature -0.5: must be 0"),
        (["--top-k", "0"], "--top-k 0: must be at least 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: give at least 1"),
        (["--prompt", "x" * 13], "prompt 2 is 13 tokens but the model's context holds 12"),
    ],
)
def test_cli_rejects_bad_options(run_dir, capsys, extra, message):
    folder, _ = run_dir
    assert main(["generate", str(folder), "--prompt", "a", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("stream", [True, False])
def test_cli_prints_the_prompt_and_continuation_as_the_word_tokenizer_decodes_them(tmp_path, registry, capsys, stream):
    tokenizer = fitted(registry, "word", VERDICT_OPENING)
    config = RunConfig.model_validate(
        {
            "model": {
                "vocab_size": tokenizer.vocab_size,
                "context_length": 16,
                "d_model": 32,
                "n_layers": 2,
                "n_heads": 4,
                "tokenizer": "word",
            }
        },
        context={"registry": registry},
    )
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    save_run(tmp_path / "run", config, model, tokenizer)
    prompt = tokenizer.encode("I HAD always thought Jack")
    new_ids = book_greedy(model, prompt, 6)
    new_ids = new_ids[: new_ids.index(tokenizer.eot_id)] if tokenizer.eot_id in new_ids else new_ids
    argv = ["generate", str(tmp_path / "run"), "--prompt", "I HAD  always thought Jack", "--max-new-tokens", "6"]
    assert main(argv + ([] if stream else ["--no-stream"])) == 0
    assert capsys.readouterr().out == tokenizer.decode(prompt + new_ids) + "\n"


def test_cli_missing_run_folder(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nowhere"), "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere'}: no such run folder" in err and "Traceback" not in err


def test_cli_refuses_a_classifier(tmp_path, registry, capsys):
    config = RunConfig.model_validate(
        {
            "model": {
                "vocab_size": 257,
                "context_length": 12,
                "d_model": 16,
                "n_layers": 1,
                "n_heads": 2,
                "tokenizer": "byte",
                "head": {"name": "classifier"},
            }
        },
        context={"registry": registry},
    )
    save_run(tmp_path / "clf", config, GPT(config.model), config.model.tokenizer.build())
    assert main(["generate", str(tmp_path / "clf"), "--prompt", "a"]) == 2
    assert "cannot generate text" in capsys.readouterr().err
