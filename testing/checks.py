"""The conformance checks. Model checks run on a tiny GPT with the variant swapped into an
otherwise default config, so they test the variant through the same path a config file takes."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any, cast

import torch
from safetensors.torch import load_model, save_model
from torch import Tensor

from gptzoo.core import (
    GPT,
    Attention,
    Block,
    Component,
    ComponentSpec,
    ConfigError,
    GptzooError,
    Head,
    LayerCache,
    Meter,
    ModelConfig,
    Recorder,
    Tokenizer,
)
from gptzoo.registry import Registry, default_registry

TINY = {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}
PIECES = (1, 3, 7)  # tokens fed at a time through the cache after the prefill
MODEL_FAMILIES = ("positional", "attention", "feed_forward", "norm", "block", "residual", "head")
ATOL = 1e-5

SAMPLE_TEXT = (
    "It had always been rather a surprise to me that he should have given up painting. "
    "The sun was setting over the quiet harbour, and the boats came slowly home.\n"
    'She said: "Tell me again, how many tokens does a word need?" He laughed, and counted 1, 2, 3.\n'
) * 4
UNICODE_TEXT = "Grüße aus Köln — naïve café, 東京 and 🚀!\n\ttabs,  double  spaces<|endoftext|>and after the end."


def component_cases(registry: Registry) -> list[tuple[str, str]]:
    """Every registered (family, name): parametrize a test over it so new variants are checked automatically."""
    return [(e.family, e.name) for e in registry.entries()]


def single_threaded(check: Callable) -> Callable:
    """Run ``check`` on one CPU thread: on tiny tensors more threads only add synchronisation,
    which costs 100x on a busy machine."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


@single_threaded
def check_component(family: str, name: str, registry: Registry | None = None, **params: Any) -> None:
    """Run every check that applies to ``family`` on the variant ``name`` built with ``params``.

    Models are tiny GPTs with the variant swapped into a default config. Their context is long
    enough to pass well beyond an attention variant's declared receptive field, so windowed
    code runs; attention and positions are paired with every registered partner and checked
    with multi-head, grouped-query and multi-query attention.
    """
    registry = registry or default_registry()
    if family == "tokenizer":
        check_tokenizer(build_tokenizer(registry, name, **params))
        return
    spec = {"name": name, **params}
    impl = registry.resolve(family, name)
    mixer = impl if issubclass(impl, Attention) else None
    field: int | None = None
    declared_lengths: tuple[int, ...] = ()
    if mixer is not None:
        mixer_params = mixer.Params.model_validate(params, context={"registry": registry})
        field, declared_lengths = mixer.receptive_field(mixer_params), mixer.kit_lengths(mixer_params)
    length = max(TINY["context_length"], 2 * field + 8) if field else TINY["context_length"]
    lengths = sorted({length, *declared_lengths})
    check_builds_on_meta(tiny_config(registry, context_length=length, **{family: spec}))
    for context_length in lengths:
        model = build(tiny_config(registry, context_length=context_length, **{family: spec}))
        check_forward(model)
        check_gradients(model)
        check_state_round_trip(model)
        # Mixers and positions meet inside the mixer: check this variant beside every partner.
        partner = {"attention": "positional", "positional": "attention"}.get(family)
        if partner is None:
            models = [model]
        else:
            kv_heads = (TINY["n_heads"], 2, 1) if family == "attention" else (2,)
            models = [
                build(c) for c in _pairings(registry, family, spec, partner, kv_heads, context_length=context_length)
            ]
        for m in models:
            check_attention_capture(m)
            check_measurements(m)
            if _is_language_model(m):
                check_causal(m)
                check_kv_cache(m)
                check_padded_batch(m)
                check_separate_caches(m)
                check_bounded_cache(m)
    if mixer is not None and mixer.kv_sharing:
        check_kv_sharing(registry, spec, lengths[-1])
    if field:
        check_receptive_field(registry, spec, field)
    if mixer is not None and mixer.equivalent_to not in (None, name):
        check_loads_state_of(registry, name, mixer.equivalent_to, **params)
    print(
        f"{family} '{name}': checked at lengths {', '.join(map(str, lengths))}, cache pieces {', '.join(map(str, PIECES))}"
    )


# ---- building ------------------------------------------------------------------------------


def tiny_config(registry: Registry, **fields: Any) -> ModelConfig:
    """A tiny GPT config with ``fields`` (dims or component specs) over the defaults.

    Grouped-query attention (2 key/value heads) unless ``n_kv_heads`` is given or the components
    reject it; a tied head whenever the head can be tied.
    """
    head = fields.get("head", "lm")
    head_impl = registry.resolve("head", head if isinstance(head, str) else head["name"])
    can_tie = issubclass(head_impl, Head) and head_impl.can_tie
    data = {**TINY, "tied_head": can_tie, **fields}
    if "n_kv_heads" not in fields:
        try:
            return registry.model_config({**data, "n_kv_heads": 2})
        except ConfigError:
            pass
    return registry.model_config(data)


def build(config: ModelConfig, seed: int = 0) -> GPT:
    """The GPT for ``config`` in eval mode, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(config).eval()


def build_tokenizer(registry: Registry, name: str, **params: Any) -> Tokenizer:
    """The tokenizer ``name``; fitted on SAMPLE_TEXT when its vocabulary is learned."""
    tokenizer = ComponentSpec.resolve("tokenizer", {"name": name, **params}, registry).build()
    if tokenizer.needs_fit:
        tokenizer.fit(SAMPLE_TEXT)
    return tokenizer


def _pairings(
    registry: Registry, family: str, spec: dict, partner: str, kv_heads: tuple[int, ...], **fields: Any
) -> list[ModelConfig]:
    configs = []
    for other in registry.names(partner):
        for n_kv_heads in kv_heads:
            try:
                configs.append(
                    tiny_config(registry, **{family: spec, partner: other, "n_kv_heads": n_kv_heads}, **fields)
                )
            except ConfigError:
                continue  # the config refuses this pairing, so no one can build it
    return configs


def _tokens(model: GPT, batch: int, length: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, _vocab_size(model), (batch, length), generator=generator)


def _vocab_size(model: GPT) -> int:
    """The model's vocabulary size (a GPT is built only once its config has one)."""
    return model.config.dims().vocab_size


def _is_language_model(model: GPT) -> bool:
    with torch.no_grad():
        return model(_tokens(model, 1, 2)).dim() == 3


def _describe(model: GPT) -> str:
    c = model.config
    parts = [f"{f}={getattr(c, f).name}" for f in MODEL_FAMILIES]
    return (
        ", ".join(parts) + f", n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads or c.n_heads}, context={c.context_length}"
    )


def _assert_close(got: Tensor, expected: Tensor, what: str, atol: float = ATOL) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    diff = (got - expected).abs().max().item()
    assert diff <= atol, f"{what}: differs by up to {diff:.3g} (allowed {atol:g})"


# ---- model checks ------------------------------------------------------------------------------


@single_threaded
@torch.no_grad()
def check_forward(model: GPT) -> None:
    """Logits are (B, T, V) from an LM head or (B, n) from a pooled head, and finite."""
    B, T, V = 2, model.config.context_length, _vocab_size(model)
    logits = model(_tokens(model, B, T))
    if logits.dim() == 3:
        assert logits.shape == (B, T, V), f"[{_describe(model)}] LM logits {tuple(logits.shape)}, expected {(B, T, V)}"
    else:
        assert logits.dim() == 2 and logits.size(0) == B, (
            f"[{_describe(model)}] logits {tuple(logits.shape)}: expected (B, T, V) or (B, n)"
        )
    assert torch.isfinite(logits).all(), f"[{_describe(model)}] logits hold inf or nan"


@single_threaded
def check_gradients(model: GPT) -> None:
    """A loss on the logits sends a non-zero gradient to every trainable parameter; the multi-token
    prediction modules, which run in training only, get theirs from their losses on the same tokens, and
    what learns from a loss of its own alone (a sparse attention's indexer) from that loss, as training adds it.
    A parameter behind a weight that starts at zero (hyper-connections' dynamic mixing) may get its
    gradient from the second step on: those are asked again after one step of gradient descent."""
    dead = _without_gradient(model)
    if dead:
        stepped = copy.deepcopy(model)
        _without_gradient(stepped, keep_gradients=True)
        with torch.no_grad():
            for p in stepped.parameters():
                if p.grad is not None:
                    p.sub_(0.1 * p.grad)
        dead = [name for name in _without_gradient(stepped) if name in dead]
    assert not dead, f"[{_describe(model)}] no gradient reaches {', '.join(dead)}"


def _without_gradient(model: GPT, keep_gradients: bool = False) -> list[str]:
    """The trainable parameters one backward pass of a loss on the logits and the auxiliary losses leaves without gradient."""
    model.zero_grad(set_to_none=True)
    tokens = _tokens(model, 2, model.config.context_length)
    model.train(model.mtp is not None)
    loss = model(tokens).square().mean()
    auxiliary = [a.weight * a.value for a in model.auxiliary_losses(tokens).values()]
    model.eval()
    sum(auxiliary, loss).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    if not keep_gradients:
        model.zero_grad(set_to_none=True)
    return dead


@single_threaded
@torch.no_grad()
def check_state_round_trip(model: GPT) -> None:
    """Saved to safetensors and loaded into a freshly built model, the outputs are identical."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_model(model, path)  # stores a tied weight once
        fresh = build(model.config, seed=1)
        load_model(fresh, path)
    idx = _tokens(model, 2, model.config.context_length)
    assert torch.equal(fresh(idx), model(idx)), f"[{_describe(model)}] outputs change after a safetensors save and load"


@single_threaded
@torch.no_grad()
def check_causal(model: GPT) -> None:
    """Changing the tokens after position t never changes the logits at or before t."""
    T, V = model.config.context_length, _vocab_size(model)
    idx = _tokens(model, 2, T)
    logits = model(idx)
    for t in (0, T // 2, T - 2):
        changed = idx.clone()
        changed[:, t + 1 :] = (idx[:, t + 1 :] + 1) % V
        _assert_close(
            model(changed)[:, : t + 1],
            logits[:, : t + 1],
            f"[{_describe(model)}] causality: tokens after position {t} changed logits up to it",
        )


@single_threaded
@torch.no_grad()
def check_attention_capture(model: GPT) -> None:
    """A ``Recorder`` gets from each layer what its mixer declares (``Attention.inspection``):
    attention matrices (B, h, T, T) with zeros where a query may not look (later keys, keys
    beyond its receptive field), probability rows summing to 1 (at most 1 for partial ones),
    state norms (B, h, T) >= 0, or nothing; and the residual stream before the first block and
    after each. Capturing changes no output."""
    B, T = 2, model.config.context_length
    idx = _tokens(model, B, T)
    recorder = Recorder()
    try:
        logits = model(idx, recorder=recorder)
    except GptzooError as err:
        raise AssertionError(f"[{_describe(model)}] capture: {err}") from None
    _assert_close(
        logits, model(idx), f"[{_describe(model)}] capture: the outputs of a captured forward differ from a plain one"
    )
    n_layers, C = len(model.blocks), model.config.d_model
    assert len(recorder.residuals) == n_layers + 1, (
        f"[{_describe(model)}] capture: {len(recorder.residuals)} residual streams, expected {n_layers + 1}"
    )
    for i, x in enumerate(recorder.residuals):
        assert x.shape == (B, T, C), (
            f"[{_describe(model)}] capture: residual stream {i} is {tuple(x.shape)}, expected {(B, T, C)}"
        )
    _assert_close(
        model.head(model.final_norm(recorder.residuals[-1])),
        logits,
        f"[{_describe(model)}] capture: the last residual stream through the final norm and head",
    )
    for i, (block, offers, reported) in enumerate(zip(model.blocks, recorder.offers, recorder.attentions, strict=True)):
        mixer = cast(Block, block).attention
        what = f"[{_describe(model)}] capture: layer {i}'s {offers}"
        if offers == "nothing":
            assert reported is None, f"{what}: it declares it reports nothing, yet reported something"
            continue
        assert reported is not None, f"{what} are missing"
        if offers == "state_norms":
            assert reported.dim() == 3 and reported.shape[::2] == (B, T), (
                f"{what} are {tuple(reported.shape)}, expected (B={B}, heads, T={T})"
            )
            assert (reported >= 0).all() and torch.isfinite(reported).all(), f"{what}: norms must be finite and >= 0"
            continue
        _check_attention_matrix(reported, mixer, offers, B, T, what)


def check_measurements(model: GPT) -> None:
    """A ``Meter`` gets from each layer the measurements its mixer declares (``Attention.measurements``),
    each finite, and measuring changes no output."""
    idx = _tokens(model, 2, model.config.context_length)
    meter = Meter()
    try:
        logits = model(idx, meter=meter)
    except GptzooError as err:
        raise AssertionError(f"[{_describe(model)}] measure: {err}") from None
    _assert_close(
        logits, model(idx), f"[{_describe(model)}] measure: the outputs of a measured forward differ from a plain one"
    )
    for i, layer in enumerate(meter.layers):
        for name, value in layer.items():
            assert math.isfinite(value), f"[{_describe(model)}] measure: layer {i}'s {name} is {value}"


def _check_attention_matrix(weights: Tensor, mixer: Attention, offers: str, B: int, T: int, what: str) -> None:
    """(B, h, T, T), zero where a query may not look; probability rows sum to 1 (sinks: at most 1)."""
    assert weights.dim() == 4 and weights.shape[0] == B and weights.shape[2:] == (T, T), (
        f"{what} are {tuple(weights.shape)}, expected (B={B}, heads, T={T}, T={T})"
    )
    if offers == "probabilities":
        _assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), f"{what}: rows' sums")
    elif offers == "partial_probabilities":
        assert (weights >= 0).all() and (weights.sum(-1) <= 1 + ATOL).all(), (
            f"{what}: probabilities must be >= 0 with rows summing to at most 1"
        )
    query, key = torch.arange(T)[:, None], torch.arange(T)[None, :]
    hidden = key > query  # (T, T)
    field = type(mixer).receptive_field(mixer.params)
    if field is not None:
        hidden |= key <= query - field
    leak = weights[..., hidden].abs().max().item() if hidden.any() else 0.0
    assert leak == 0, (
        f"{what} reach {leak:.3g} where a query may not look (later keys{' or beyond its receptive field' if field else ''})"
    )


@single_threaded
@torch.no_grad()
def check_kv_cache(model: GPT, prefix: int = 5) -> None:
    """Prefill ``prefix`` tokens into model.new_cache, feed the rest 1, 3 and 7 at a time: the logits match one full forward."""
    T = model.config.context_length
    idx = _tokens(model, 2, T)
    expected = model(idx)
    for chunk in PIECES:
        cache = model.new_cache(2)
        parts = [model(idx[:, :prefix], cache=cache)]
        parts += [model(idx[:, s : s + chunk], cache=cache) for s in range(prefix, T, chunk)]
        _assert_close(
            torch.cat(parts, dim=1),
            expected,
            f"[{_describe(model)}] KV cache: prefill {prefix}, then {chunk} token(s) at a time",
        )


@single_threaded
@torch.no_grad()
def check_padded_batch(model: GPT) -> None:
    """A left-padded batch (with pad_mask, and through the cache for one more token) gives each row's logits alone."""
    T = model.config.context_length
    lengths = (T - 1, T - 6, 2)
    width = max(lengths)
    rows = [_tokens(model, 1, n, seed=i + 1) for i, n in enumerate(lengths)]
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    pad_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        idx[i, width - row.size(1) :] = row[0]
        pad_mask[i, width - row.size(1) :] = True
    last = model(idx, pad_mask=pad_mask)[:, -1]  # (B, V)
    following = _tokens(model, len(rows), 1, seed=99)  # (B, 1)
    cache = model.new_cache(len(rows))
    model(idx, cache=cache, pad_mask=pad_mask)
    stepped = model(following, cache=cache)[:, -1]  # (B, V)
    for i, row in enumerate(rows):
        alone = model(row)[0, -1]
        _assert_close(
            last[i],
            alone,
            f"[{_describe(model)}] left padding: row {i} ({row.size(1)} tokens) differs from the row alone",
        )
        alone_next = model(torch.cat([row, following[i : i + 1]], dim=1))[0, -1]
        _assert_close(
            stepped[i],
            alone_next,
            f"[{_describe(model)}] left padding + KV cache: row {i}'s next step differs from the row alone",
        )


@single_threaded
@torch.no_grad()
def check_receptive_field(registry: Registry, spec: dict, field: int) -> None:
    """With one layer, the logits at t depend on the last ``field`` tokens (t - field + 1 .. t) and on no earlier one."""
    T = 2 * field + 8
    model = build(tiny_config(registry, attention=spec, n_layers=1, context_length=T))
    idx = _tokens(model, 2, T)
    logits = model(idx)
    t = T - 1
    outside, inside = idx.clone(), idx.clone()
    outside[:, : t - field + 1] = (idx[:, : t - field + 1] + 1) % _vocab_size(model)
    inside[:, t - field + 1] = (idx[:, t - field + 1] + 1) % _vocab_size(model)
    _assert_close(
        model(outside)[:, t],
        logits[:, t],
        f"[{_describe(model)}] receptive field {field}: tokens before position {t - field + 1} changed the logits at {t}",
    )
    assert not torch.allclose(model(inside)[:, t], logits[:, t]), (
        f"[{_describe(model)}] receptive field {field}: the token at {t - field + 1}, inside the field, has no influence on position {t}"
    )


@single_threaded
@torch.no_grad()
def check_loads_state_of(registry: Registry, name: str, reference: str, **params: Any) -> None:
    """The variant loads the state dict of ``reference`` (its declared equivalent, built with the
    same params when it takes them) and computes the same, with and without GQA."""
    n_heads = TINY["n_heads"]
    for n_kv_heads in (n_heads, 2):
        try:
            config = tiny_config(registry, attention={"name": name, **params}, n_kv_heads=n_kv_heads)
        except ConfigError:
            if n_kv_heads == n_heads:
                raise
            continue  # the variant refuses grouped-query attention
        try:
            reference_config = tiny_config(registry, attention={"name": reference, **params}, n_kv_heads=n_kv_heads)
        except ConfigError:
            reference_config = tiny_config(registry, attention=reference, n_kv_heads=n_kv_heads)
        expected = build(reference_config)
        model = build(config, seed=1)
        model.load_state_dict(expected.state_dict())
        idx = _tokens(model, 2, config.context_length)
        _assert_close(
            model(idx), expected(idx), f"attention '{name}' with {reference}'s weights (n_kv_heads={n_kv_heads})"
        )


@single_threaded
@torch.no_grad()
def check_separate_caches(model: GPT) -> None:
    """Two sequences decoded through two caches, their steps interleaved, give what each gives
    alone: no state leaks between caches."""
    T = model.config.context_length
    a, b = _tokens(model, 1, T, seed=3), _tokens(model, 1, T, seed=4)
    cache_a, cache_b = model.new_cache(1), model.new_cache(1)
    steps_a, steps_b = [model(a[:, :2], cache=cache_a)], [model(b[:, :2], cache=cache_b)]
    for t in range(2, T):
        steps_a.append(model(a[:, t : t + 1], cache=cache_a))
        steps_b.append(model(b[:, t : t + 1], cache=cache_b))
    _assert_close(torch.cat(steps_a, 1), model(a), f"[{_describe(model)}] two caches interleaved: sequence a")
    _assert_close(torch.cat(steps_b, 1), model(b), f"[{_describe(model)}] two caches interleaved: sequence b")


@single_threaded
@torch.no_grad()
def check_bounded_cache(model: GPT) -> None:
    """Where the model decodes past its context (``model.extension_refusal()`` is None), decoding
    goes there with the same logits as one forward over the whole text; where every layer's
    cache is also bounded, the cache's tensors hold as many bytes as the mixers declare,
    whatever the length, and the model's bookkeeping stays within the widest window."""
    if model.extension_refusal() is not None:
        return
    T = model.config.context_length
    idx = _tokens(model, 2, 2 * T + 3)
    bounded = model.bounded_cache()
    cache = model.new_cache(2, None if bounded else idx.size(1))
    assert not bounded or cache.max_len is None, (
        f"[{_describe(model)}] bounded caches, yet new_cache has a limit of {cache.max_len}"
    )
    steps = [model(idx[:, :5], cache=cache)]
    sizes = []
    for t in range(5, idx.size(1)):
        steps.append(model(idx[:, t : t + 1], cache=cache))
        sizes.append(_cache_tensor_bytes(cache))
    _assert_close(
        torch.cat(steps, 1), model(idx), f"[{_describe(model)}] decoding past the context ({idx.size(1)} tokens)"
    )
    if not bounded:
        return
    declared = 2 * sum(
        cast(Block, b).attention.cache_bytes(idx.size(1), model.token_embedding.weight.dtype) for b in model.blocks
    )
    assert sizes[T] == sizes[-1] == declared, (
        f"[{_describe(model)}] bounded cache: its tensors hold {sizes[T]:,} bytes at {T + 6} tokens and {sizes[-1]:,} "
        f"at {idx.size(1)}; the mixers' cache_bytes declare {declared:,} for two sequences"
    )
    kept = cache.positions.size(1)
    assert cache.keep is not None and kept <= cache.keep, (
        f"[{_describe(model)}] bounded cache: the model's bookkeeping keeps {kept} tokens (at most {cache.keep} expected)"
    )


def _cache_tensor_bytes(cache: Any) -> int:
    """Bytes of every tensor the layers' caches hold (their attributes, one level deep, and the
    same within a layer cache made of other layer caches, as a composite mixer's)."""
    return sum(_layer_cache_bytes(layer) for layer in cache.layers if layer is not None)


def _layer_cache_bytes(layer: LayerCache) -> int:
    total = 0
    for value in vars(layer).values():
        values = value if isinstance(value, (list, tuple)) else [value]
        total += sum(t.numel() * t.element_size() for t in values if isinstance(t, Tensor))
        total += sum(_layer_cache_bytes(part) for part in values if isinstance(part, LayerCache))
    return total


def check_kv_sharing(registry: Registry, spec: dict, context_length: int) -> None:
    """A mixer declaring ``kv_sharing``, in a model whose last two layers attend with the first one's
    keys and values: the model checks pass (the cache, padding, decoding past the context), and
    the readers have no key or value weights and keep no cache."""
    fields = {"n_layers": 3, "kv_shared_layers": 2, "context_length": context_length, "attention": spec}
    for positional in ("rope", "alibi"):
        model = build(tiny_config(registry, positional=positional, **fields))
        unshared = build(tiny_config(registry, positional=positional, **{**fields, "kv_shared_layers": 0}))
        reader, own = cast(Block, model.blocks[1]).attention, cast(Block, unshared.blocks[1]).attention
        n_params = sum(p.numel() for p in reader.parameters())
        assert n_params < sum(p.numel() for p in own.parameters()), (
            f"[{_describe(model)}] a layer reading layer 0's keys and values has {n_params} parameters, as many as one "
            "computing its own"
        )
        assert reader.cache_bytes(context_length) == 0 and model.new_cache(1).layers[1:] == [None, None], (
            f"[{_describe(model)}] the layers reading layer 0's keys and values keep a cache"
        )
        check_forward(model)
        check_gradients(model)
        check_state_round_trip(model)
        check_attention_capture(model)
        check_causal(model)
        check_kv_cache(model)
        check_padded_batch(model)
        check_separate_caches(model)
        check_bounded_cache(model)


def check_builds_on_meta(config: ModelConfig) -> None:
    """The model builds on the meta device (as ``describe`` builds it: shapes only, no memory) and
    its costs are countable there: a plugin must not read tensor values in ``__init__``."""
    try:
        with torch.device("meta"):
            model = GPT(config)
        for component in model.modules():  # what describe counts: each component's FLOPs, each mixer's cache
            if isinstance(component, Component):
                component.flops_per_token(config.context_length)
        for mixer in model.mixers():
            mixer.cache_bytes(config.context_length)
    except Exception as err:  # the kit reports any failure as the plugin's
        raise AssertionError(
            f"[{', '.join(f'{f}={getattr(config, f).name}' for f in MODEL_FAMILIES)}] building on the meta device "
            f"(as describe does) fails: {type(err).__name__}: {err}. Do not read tensor values (.item(), .tolist()) in __init__"
        ) from None


# ---- tokenizer check -----------------------------------------------------------------------------


@single_threaded
def check_tokenizer(tokenizer: Tokenizer) -> None:
    """Ids lie in [0, vocab_size); "<|endoftext|>" is [eot_id]; lossless ones round-trip Unicode; state reloads."""
    name = type(tokenizer).__name__
    V, eot = tokenizer.vocab_size, tokenizer.eot_id
    assert 0 <= eot < V, f"{name}: eot_id {eot} outside [0, {V})"
    assert tokenizer.encode(Tokenizer.EOT) == [eot], (
        f"{name}: {Tokenizer.EOT!r} encodes to {tokenizer.encode(Tokenizer.EOT)}, expected [{eot}]"
    )
    texts = [SAMPLE_TEXT, UNICODE_TEXT]
    encoded = [tokenizer.encode(t) for t in texts]
    for text, ids in zip(texts, encoded, strict=True):
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < V]
        assert ids and not bad, f"{name}: encode({text[:20]!r}...) gave ids outside [0, {V}): {bad[:5]}"
        if tokenizer.lossless:
            assert tokenizer.decode(ids) == text, f"{name} is lossless but decode(encode(text)) != text for {text!r}"
    assert tokenizer.encode_batch(texts) == encoded, f"{name}: encode_batch differs from encode"
    state = tokenizer.state()
    if state is not None:
        reloaded = type(tokenizer)(tokenizer.params)
        reloaded.load_state(json.loads(json.dumps(state)))
        assert [reloaded.encode(t) for t in texts] == encoded, (
            f"{name}: a tokenizer loaded from state() encodes differently"
        )
