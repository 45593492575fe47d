"""Compiled decoding through a static cache (``generate_ids(..., compiled=True)``, ``generate --compile``):
the book loop's greedy tokens for every mixer, left padding included, windows, chunks and sparse choices
shorter than the text too, one compiled graph for every token, and a clean refusal of a mixer that does
not declare it."""

import pytest
import torch

from gptzoo.core import GPT, ConfigError, GptzooError
from gptzoo.plugins.attention import SDPAAttention
from gptzoo.recipes.generation import generate, static
from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
PROMPTS = [[72, 105, 33], [1, 250, 7, 99, 3, 18, 64]]  # left-padded by 4 in the batch
NEW = 5  # 7 + 5 tokens stay within the 12-token context


def tiny_model(**changes) -> GPT:
    spec = {"vocab_size": 257, "context_length": 12, "d_model": 32, "n_layers": 2, "n_heads": 4, "tokenizer": "byte"}
    torch.manual_seed(0)
    return GPT(REGISTRY.model_config(spec | changes)).eval().double()


def book_greedy(model: GPT, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The book's generate_text_simple: re-run the whole sequence, take the argmax."""
    idx = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, len(prompt) :].tolist()


class CountingBackend:
    """A torch.compile backend that runs the graph as traced (as aot_eager would) and counts compilations."""

    def __init__(self):
        self.compilations = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.compilations += 1
        return graph.forward


@pytest.fixture
def backend(monkeypatch):
    counting = CountingBackend()
    monkeypatch.setattr(static, "COMPILE_BACKEND", counting)
    torch._dynamo.reset()
    yield counting
    torch._dynamo.reset()


def _variants() -> list[tuple[str, dict]]:
    """Every registered mixer (grouped key/value heads where it takes them), and softmax attention's cached options."""
    variants = [(name, {"attention": {"name": name}}) for name in REGISTRY.names("attention")]
    return variants + [
        ("sdpa, one key/value head", {"attention": {"name": "sdpa"}, "n_kv_heads": 1}),
        ("sdpa with sinks", {"attention": {"name": "sdpa", "sinks": True}}),
        ("fused with alibi", {"attention": {"name": "fused"}, "positional": {"name": "alibi"}}),
        ("sdpa with learned positions", {"attention": {"name": "sdpa"}, "positional": {"name": "learned"}}),
        ("sdpa, kv shared by a later layer", {"attention": {"name": "sdpa"}, "kv_shared_layers": 1}),
        # Windows, chunks and sparse choices shorter than the 12-token text: the static cache masks them.
        ("sliding window of 3", {"attention": {"name": "sliding_window", "window": 3}}),
        (
            "sliding window of 3, kv shared",
            {"attention": {"name": "sliding_window", "window": 3}, "kv_shared_layers": 1},
        ),
        ("chunks of 4", {"attention": {"name": "chunked", "chunk_size": 4}}),
        (
            "sliding window of 3 beside a convolution",
            {
                "attention": {
                    "name": "parallel_mixers",
                    "mixers": [{"name": "sliding_window", "window": 3}, {"name": "short_conv"}],
                }
            },
        ),
        (
            "sparse, top 3",
            {"attention": {"name": "sparse_latent", "index_topk": 3, "index_heads": 2, "index_head_dim": 8}},
        ),
        (
            "sparse, top 3, the second layer reusing the first's choice",
            {
                "attention": {
                    "name": "sparse_latent",
                    "index_topk": 3,
                    "index_heads": 2,
                    "index_head_dim": 8,
                    "shared_index_layers": [1],
                }
            },
        ),
    ]


@pytest.mark.parametrize("changes", [c for _, c in _variants()], ids=[n for n, _ in _variants()])
def test_compiled_greedy_gives_the_book_tokens_with_left_padding(backend, changes):
    try:
        model = tiny_model(**({"n_kv_heads": 2} | changes))
    except ConfigError:  # no separate key/value heads
        model = tiny_model(**changes)
    expected = [book_greedy(model, prompt, NEW) for prompt in PROMPTS]
    assert generate_ids(model, PROMPTS, NEW, compiled=True) == expected  # each row as it would decode alone
    assert generate_ids(model, PROMPTS, NEW) == expected  # the eager path, the same tokens
    assert backend.compilations > 0  # the steps after the prompt did run compiled


@pytest.mark.parametrize("mixer", [{"name": "sliding_window", "window": 3}, {"name": "chunked", "chunk_size": 4}])
def test_a_window_shorter_than_the_text_hides_the_older_keys_when_compiled(backend, mixer):
    # The static cache keeps every key, the window a mask: the tokens are those of eager's ring, and they
    # are not those of the same weights attending to every key (sdpa: the same state-dict layout).
    windowed = tiny_model(attention=mixer, context_length=32)
    full = tiny_model(attention={"name": "sdpa"}, context_length=32)
    full.load_state_dict(windowed.state_dict())
    compiled = generate_ids(windowed, PROMPTS, 20, compiled=True)
    assert compiled == generate_ids(windowed, PROMPTS, 20)
    assert compiled[1] != generate_ids(full, PROMPTS, 20, compiled=True)[1]


class UndeclaredAttention(SDPAAttention):
    static_cache = False  # what a mixer declares by default (core.Attention)


def test_a_mixer_that_does_not_declare_a_static_cache_is_refused_in_one_line():
    registry = make_registry(entry_points=False)
    registry.add("attention", "undeclared", UndeclaredAttention)
    spec = {"vocab_size": 257, "context_length": 12, "d_model": 32, "n_layers": 2, "n_heads": 4, "tokenizer": "byte"}
    model = GPT(registry.model_config(spec | {"attention": {"name": "undeclared"}})).eval()
    with pytest.raises(GptzooError, match="layer 0's token mixer UndeclaredAttention keeps a keys_values cache") as err:
        generate_ids(model, PROMPTS, NEW, compiled=True)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("positional", ["rope", "alibi"])
def test_every_token_runs_through_one_compiled_graph(backend, positional):
    model = tiny_model(attention={"name": "sdpa"}, positional={"name": positional}, context_length=64)
    first = generate_ids(model, PROMPTS, 40, compiled=True)
    assert backend.compilations == 1  # 39 steps, one graph: no recompilation as the text grows
    assert generate_ids(model, [[5, 6, 7, 8, 9, 10, 11], [9, 8]], 40, compiled=True) != first
    assert backend.compilations == 1  # another batch of the same shape reuses it


def test_mixture_of_experts_routing_runs_through_one_compiled_graph(backend):
    # Each step routes its token to other experts: the routing must be data in the graph, not a recompile.
    model = tiny_model(feed_forward={"name": "moe", "n_experts": 4, "top_k": 2}, context_length=64)
    expected = [book_greedy(model, prompt, 30) for prompt in PROMPTS]
    assert generate_ids(model, PROMPTS, 30, compiled=True) == expected
    assert backend.compilations == 1


def test_models_of_one_shape_decoded_in_turn_each_give_their_own_tokens(backend):
    # The steps after a call's first skip the guards that tell graphs apart by nothing but tensors' values:
    # two models sharing one graph must still each run on their own weights and caches.
    first, second = tiny_model(attention={"name": "sdpa"}), tiny_model(attention={"name": "sdpa"})
    torch.manual_seed(1)
    second.load_state_dict(GPT(second.config).double().state_dict())  # the same shapes, other weights
    expected = {id(m): [book_greedy(m, prompt, NEW) for prompt in PROMPTS] for m in (first, second)}
    assert expected[id(first)] != expected[id(second)]
    for model in (first, second, first, second):
        assert generate_ids(model, PROMPTS, NEW, compiled=True) == expected[id(model)]


def test_more_graphs_than_dynamos_recompile_limit_still_give_the_book_tokens(backend):
    # Every new text length compiles a graph of its own; past dynamo's limit on one function's graphs
    # (torch._dynamo.config.recompile_limit) the steps run eagerly, with the same tokens.
    model = tiny_model(attention={"name": "sdpa"}, context_length=64)
    limit = torch._dynamo.config.recompile_limit
    for new in range(2, limit + 5):
        expected = [book_greedy(model, prompt, new) for prompt in PROMPTS]
        assert generate_ids(model, PROMPTS, new, compiled=True) == expected
    assert backend.compilations == limit


@pytest.mark.parametrize(
    "changes",
    [
        {"attention": {"name": "mamba2"}, "positional": {"name": "none"}},
        {"attention": {"name": "sliding_window", "window": 3}, "positional": {"name": "rope"}},  # past the ring
    ],
    ids=["mamba2", "sliding window"],
)
def test_a_model_that_decodes_past_its_context_does_so_compiled(backend, changes):
    model = tiny_model(**changes)
    assert model.extension_refusal() is None  # its state or window extends: no cropping
    expected = [book_greedy(model, prompt, 20) for prompt in PROMPTS]
    assert generate_ids(model, PROMPTS, 20, compiled=True) == expected


def test_a_text_past_the_context_of_a_model_that_crops_is_refused():
    with pytest.raises(GptzooError, match="come to 27, past the context of 12 that the model crops to"):
        generate_ids(tiny_model(), PROMPTS, 20, compiled=True)


@pytest.mark.slow
def test_inductor_compiled_greedy_equals_the_eager_path():
    # The real backend (C++ code generated and built): about a minute on two cores.
    torch._dynamo.reset()
    model = tiny_model(attention={"name": "sdpa"}).float()
    assert generate_ids(model, PROMPTS, NEW, compiled=True) == generate_ids(model, PROMPTS, NEW)
    torch._dynamo.reset()


def test_the_memory_check_counts_every_key_of_a_window_when_compiled(monkeypatch):
    # A window of 4 holds 4 tokens' keys eagerly, every token's in a static cache: 2 layers x 4 heads x
    # (8 + 8) features x 4 bytes = 512 bytes per token, so a million tokens need 512 MB compiled, 2 KB not.
    model = tiny_model(attention={"name": "sliding_window", "window": 4}, positional={"name": "rope"}).float()
    monkeypatch.setattr(generate, "available_memory", lambda device: 2**20)
    generate.check_memory(model, 1, 3, 10**6, keep_text=False)
    with pytest.raises(GptzooError, match=rf"--max-new-tokens {10**6}: 1 text\(s\) of {10**6 + 3} tokens need about"):
        generate.check_memory(model, 1, 3, 10**6, keep_text=False, compiled=True)
    monkeypatch.setattr(generate, "available_memory", lambda device: 512 * (10**6 + 3))
    generate.check_memory(model, 1, 3, 10**6, keep_text=False, compiled=True)  # just fits
    monkeypatch.setattr(generate, "available_memory", lambda device: 512 * (10**6 + 3) - 1)
    with pytest.raises(GptzooError, match="need about"):
        generate.check_memory(model, 1, 3, 10**6, keep_text=False, compiled=True)
