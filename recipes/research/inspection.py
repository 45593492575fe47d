"""See inside a model: what each head attends to, what each layer would predict (the logit lens),
how the residual stream grows, and the next-token distribution at every position.

For notebooks::

    from gptzoo.recipes.research.inspection import inspect_model
    seen = inspect_model(model, tokenizer, "Every effort moves you", top_k=5)
    seen.attentions[0][3]   # layer 0, head 3: (T, T), query rows, key columns
    seen.lens_tokens[-1]    # the top token at each position after the last block

Everything comes from one forward with a ``gptzoo.core.Recorder``, which every token mixer
reports to, so it works for any combination of components. Each layer shows what its mixer
declares it offers (``Attention.inspection``), as the mixer computed it: softmax attention its
probabilities (an entropy per query), attention with sinks its probabilities whose rows sum to
less than 1, a recurrent mixer its implicit attention matrix (y = A·v; Ali et al., 2024: not a
distribution, so never renormalised and given no entropy) or the norms of its state per head
after each token, and a layer without a mixer nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gptzoo.core import GPT, GptzooError, Recorder, Tokenizer
from gptzoo.recipes.generation.text import encode_within
from gptzoo.recipes.runs.files import save_png, write_text_atomic

SUMMARY = "inspect.json"
ATTENTION = "attention.json"
HEADS_DRAWN = 16  # heads a layer's PNG draws (a short convolution offers one per channel); the JSON has all

MATRICES = ("probabilities", "partial_probabilities", "implicit_attention")
"""What a layer may offer as a (heads, T, T) matrix; ``state_norms`` are (heads, T), ``nothing`` nothing."""

MEANING = {
    "probabilities": "attention probabilities (each row sums to 1)",
    "partial_probabilities": "attention probabilities whose rows sum to less than 1 (the rest goes to a sink)",
    "implicit_attention": "implicit attention matrix (y = A·v): not a distribution, shown as computed, no entropy",
    "state_norms": "the norm of its recurrent state per head after each token",
    "nothing": "nothing: the layer has no token mixer",
}
"""What each ``Inspection`` literal of gptzoo.core.interfaces shows, in words."""


@dataclass
class Inspection:
    """One prompt seen through the model; L = layers, nh = heads, T = prompt tokens, k = top_k.

    Layer 0 of the residual stream and the logit lens is the embeddings' output (what enters the
    first block); layer i is block i - 1's output. Entropies are in bits.
    """

    ids: list[int]
    tokens: list[str]  # each token decoded alone
    offers: list[str]  # L: what each layer's token mixer offers (an Inspection literal of gptzoo.core.interfaces)
    attentions: list[
        Tensor | None
    ]  # L of (h, T, T) where the layer offers a matrix (row = query, column = key), else None
    attention_entropy: list[
        Tensor | None
    ]  # L of (h, T): entropy of each query's probabilities, None unless it offers them
    state_norms: list[Tensor | None]  # L of (h, T): the state's norm per head after each token, where it offers them
    residual_norms: Tensor  # (L + 1, T): L2 norm of the residual stream
    lens_ids: Tensor  # (L + 1, T): top token of each layer's stream through the final norm and head
    lens_probs: Tensor  # (L + 1, T): its probability
    lens_tokens: list[list[str]]  # (L + 1) × T decoded lens_ids
    next_ids: Tensor  # (T, k): the model's most likely next tokens after each position
    next_probs: Tensor  # (T, k)
    next_tokens: list[list[str]]  # T × k decoded next_ids

    @property
    def layer_names(self) -> list[str]:
        return ["embeddings"] + [f"block {i}" for i in range(len(self.offers))]


def token_label(tokenizer: Tokenizer, token: int) -> str:
    """A token's text alone, with newlines and other control characters escaped ('\\n');
    '\ufffd' marks part of a character."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in tokenizer.decode([token]))


def entropy_bits(p: Tensor) -> Tensor:
    """-Σ p log2 p over the last dimension, with 0 · log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1) / math.log(2)


@torch.inference_mode()
def inspect_model(model: GPT, tokenizer: Tokenizer, prompt: str, top_k: int = 5) -> Inspection:
    """Run ``prompt`` through ``model`` once, recording every layer (the model is in eval mode meanwhile)."""
    if top_k < 1:
        raise GptzooError(f"--top-k {top_k}: must be at least 1")
    context = model.config.context_length
    ids, whole = encode_within(tokenizer, prompt, context)  # megabytes are refused without tokenizing them all
    if not ids:
        raise GptzooError("--prompt is empty (it encodes to no tokens); give some text")
    if len(ids) > context:
        count = len(ids) if whole else f"more than {context}"
        raise GptzooError(f"--prompt is {count} tokens but the model's context holds {context}; shorten it")
    device = model.token_embedding.weight.device
    recorder = Recorder()
    training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids], device=device), recorder=recorder)  # (1, T, V)
    finally:
        model.train(training)
    if logits.dim() != 3:
        raise GptzooError(
            f"the model's '{model.config.head.name}' head does not predict tokens, so there is no next token or logit lens to show"
        )
    vocab = model.config.vocab_size  # the padding rows of a padded vocabulary have probability 0
    top_k = min(top_k, vocab)
    next_probs, next_ids = logits[0, :, :vocab].float().softmax(-1).topk(top_k, dim=-1)  # (T, k)
    lens = []
    for stream in recorder.residuals:  # one layer at a time: (T, V) each, not (L + 1, T, V)
        lens.append(model.head(model.final_norm(stream))[0, :, :vocab].float().softmax(-1).max(-1))
    lens_probs, lens_ids = torch.stack([p for p, _ in lens]), torch.stack([i for _, i in lens])  # (L + 1, T) each
    reported = [None if r is None else r[0].float().cpu() for r in recorder.attentions]  # L of (h, T, T), (h, T)
    offers = recorder.offers
    attentions = [r if offer in MATRICES else None for r, offer in zip(reported, offers, strict=True)]
    return Inspection(
        ids=ids,
        tokens=[token_label(tokenizer, i) for i in ids],
        offers=offers,
        attentions=attentions,
        attention_entropy=[
            entropy_bits(a) if a is not None and offer == "probabilities" else None
            for a, offer in zip(attentions, offers, strict=True)
        ],
        state_norms=[r if offer == "state_norms" else None for r, offer in zip(reported, offers, strict=True)],
        residual_norms=torch.stack([r[0].float().norm(dim=-1) for r in recorder.residuals]).cpu(),
        lens_ids=lens_ids.cpu(),
        lens_probs=lens_probs.cpu(),
        lens_tokens=[[token_label(tokenizer, i) for i in row] for row in lens_ids.tolist()],
        next_ids=next_ids.cpu(),
        next_probs=next_probs.cpu(),
        next_tokens=[[token_label(tokenizer, i) for i in row] for row in next_ids.tolist()],
    )


# ---- files -----------------------------------------------------------------------------------


def _rounded(t: Tensor, digits: int = 5) -> list:
    return torch.round(t, decimals=digits).tolist()


def _mixer(seen: Inspection, layer: int) -> dict:
    """What layer ``layer``'s mixer offers, in words; probabilities short of 1 also say how far short."""
    offers = seen.offers[layer]
    shown = {"layer": layer, "offers": offers, "meaning": MEANING[offers]}
    weights = seen.attentions[layer]
    if offers == "partial_probabilities" and weights is not None:
        shown["row_sum_per_head"] = _rounded(weights.sum(-1).mean(-1), 4)  # (h,): mean over queries
    return shown


def summary(seen: Inspection, source: str) -> dict:
    """Everything but the attention weights and state norms, as JSON-ready data."""
    return {
        "source": source,
        "ids": seen.ids,
        "tokens": seen.tokens,
        "layers": seen.layer_names,
        "mixers": [_mixer(seen, layer) for layer in range(len(seen.offers))],
        "next_tokens": [
            [{"id": i, "token": t, "prob": round(p, 5)} for i, t, p in zip(ids, tokens, probs, strict=True)]
            for ids, tokens, probs in zip(
                seen.next_ids.tolist(), seen.next_tokens, seen.next_probs.tolist(), strict=True
            )
        ],
        "logit_lens": {
            "top_ids": seen.lens_ids.tolist(),
            "top_tokens": seen.lens_tokens,
            "top_probs": _rounded(seen.lens_probs),
        },
        "residual_norms": _rounded(seen.residual_norms, 3),
        "attention_entropy_bits": {  # null for a layer that offers no probabilities
            "per_head": [None if e is None else _rounded(e.mean(-1), 4) for e in seen.attention_entropy],
            "per_head_and_position": [None if e is None else _rounded(e, 4) for e in seen.attention_entropy],
        },
    }


def write_inspection(seen: Inspection, out: Path, source: str) -> tuple[list[Path], bool]:
    """inspect.json, attention.json and, when matplotlib is installed, the PNGs, in ``out``.

    The files an earlier inspection listed in ``out/inspect.json`` are removed first, so the
    folder never mixes two inspections (a model with fewer layers leaves no stale layer files).
    Returns the files written and whether the PNGs could be drawn.
    """
    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier(out)
    data = summary(seen, source)
    files = [out / SUMMARY, out / ATTENTION]
    try:
        files += plot_all(seen, out)
        drawn = True
    except ImportError:
        drawn = False
    data["files"] = [f.name for f in files]
    reported = [a if a is not None else n for a, n in zip(seen.attentions, seen.state_norms, strict=True)]
    attention = {
        "tokens": seen.tokens,
        "offers": seen.offers,  # how to read each layer's entry: a (h, T, T) matrix, (h, T) state norms or null
        "layers": [None if r is None else _rounded(r) for r in reported],
    }
    write_text_atomic(out / ATTENTION, json.dumps(attention) + "\n")
    write_text_atomic(out / SUMMARY, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return files, drawn


def _remove_earlier(out: Path) -> None:
    try:
        earlier = json.loads((out / SUMMARY).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    for name in earlier:
        if isinstance(name, str) and Path(name).name == name:
            (out / name).unlink(missing_ok=True)


# ---- pictures --------------------------------------------------------------------------------


def plot_all(seen: Inspection, out: Path) -> list[Path]:
    """Every PNG; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for layer, (offers, weights, norms) in enumerate(zip(seen.offers, seen.attentions, seen.state_norms, strict=True)):
        if weights is not None:
            files.append(out / f"attention-layer{layer}.png")
            _attention_grid(plt, seen.tokens, weights, layer, offers, files[-1])
        elif norms is not None:
            files.append(out / f"state-norms-layer{layer}.png")
            _state_norms(plt, seen.tokens, norms, layer, files[-1])
    files.append(out / "logit-lens.png")
    _token_table(
        plt,
        seen.lens_tokens,
        seen.lens_probs,
        seen.layer_names,
        seen.tokens,
        files[-1],
        "logit lens: each layer's top next token (colour: its probability)",
        "after the token",
        "layer",
    )
    files.append(out / "next-tokens.png")
    _token_table(
        plt,
        [list(row) for row in zip(*seen.next_tokens, strict=True)],
        seen.next_probs.T,
        [f"#{r + 1}" for r in range(seen.next_ids.size(1))],
        seen.tokens,
        files[-1],
        "the next token after each position: top choices (colour: probability)",
        "after the token",
        "rank",
    )
    files.append(out / "residual-norms.png")
    _residual_norms(plt, seen, files[-1])
    if any(e is not None for e in seen.attention_entropy):
        files.append(out / "attention-entropy.png")
        _entropy(plt, seen, files[-1])
    return files


def _short(text: str, n: int = 8) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _attention_grid(plt, tokens: list[str], weights: Tensor, layer: int, offers: str, path: Path) -> None:
    """One (T, T) heatmap per head, four heads a row; token labels on both axes. Probabilities on
    a 0..1 scale; an implicit attention matrix, which may be negative and exceed 1, as computed on
    a scale symmetric about 0."""
    heads, T = weights.size(0), weights.size(-1)
    weights = weights[:HEADS_DRAWN]
    nh = weights.size(0)
    if offers == "implicit_attention":
        bound = max(weights.abs().max().item(), 1e-12)
        scale = {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
        what = "implicit attention"
    else:
        scale = {"cmap": "viridis", "vmin": 0, "vmax": 1}
        what = "rows sum to < 1" if offers == "partial_probabilities" else ""
    cols = min(nh, 4)
    rows = -(-nh // cols)
    side = min(max(2.8, 0.18 * T + 1.6), 8)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
    labels = [_short(t) for t in tokens]
    size = max(3, min(8, 200 / T))
    for h, ax in enumerate(axes.flat):
        if h >= nh:
            ax.axis("off")
            continue
        image = ax.imshow(weights[h].numpy(), **scale)
        ax.set_title(f"layer {layer}, head {h}" + (f" ({what})" if what else ""), fontsize=9)
        ax.set_xticks(range(T), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(T), labels, fontsize=size)
        ax.set_xlabel("key (attended to)", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    if heads > nh:
        fig.suptitle(f"layer {layer}: heads 0-{nh - 1} of {heads} (all of them in {ATTENTION})", fontsize=10)
    save_png(fig, path)


def _state_norms(plt, tokens: list[str], norms: Tensor, layer: int, path: Path) -> None:
    """A (heads, T) heatmap: the norm of each head's state after each token."""
    nh, T = norms.shape
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.3 * T, 24), min(1.5 + 0.4 * nh, 16)))
    image = ax.imshow(norms.numpy(), cmap="magma", aspect="auto", origin="lower")
    size = max(3, min(8, 200 / T))
    ax.set_xticks(range(T), [_short(t) for t in tokens], rotation=90, fontsize=size)
    ax.set_yticks(range(nh), [str(h) for h in range(nh)], fontsize=8)
    ax.set_xlabel("after the token", fontsize=8)
    ax.set_ylabel("head", fontsize=8)
    ax.set_title(f"layer {layer}: {MEANING['state_norms']}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="‖state‖")
    save_png(fig, path)


def _token_table(
    plt,
    text: list[list[str]],
    values: Tensor,
    row_labels: list[str],
    col_labels: list[str],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> None:
    """A grid of tokens coloured by probability, the first row at the bottom."""
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.75 * n_cols, 24), min(1.5 + 0.55 * n_rows, 24)))
    image = ax.imshow(values.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="lower")
    size = max(4, min(8, 240 / n_cols))
    for r in range(n_rows):
        for c in range(n_cols):
            label = f"{_short(text[r][c])}\n{values[r, c]:.2f}"
            ax.text(
                c, r, label, ha="center", va="center", fontsize=size, color="black" if values[r, c] > 0.6 else "white"
            )
    ax.set_xticks(range(n_cols), [_short(t) for t in col_labels], rotation=90, fontsize=size)
    ax.set_yticks(range(n_rows), row_labels, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="probability")
    save_png(fig, path)


def _residual_norms(plt, seen: Inspection, path: Path) -> None:
    """The residual stream's norm through the layers: one thin line per position, the mean thick."""
    norms = seen.residual_norms  # (L + 1, T)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    layers = range(norms.size(0))
    ax.plot(layers, norms.numpy(), color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(layers, norms.mean(1).numpy(), color="black", linewidth=2, marker="o", label="mean over positions")
    ax.set_xticks(layers, seen.layer_names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("‖residual stream‖₂")
    ax.set_title("residual-stream norm after each layer (thin: each position)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def _entropy(plt, seen: Inspection, path: Path) -> None:
    """Mean attention entropy per head of the layers that offer probabilities, in bits (0: one key;
    log2(t + 1): uniform over t + 1 keys); a head a layer lacks stays blank."""
    layers = [layer for layer, e in enumerate(seen.attention_entropy) if e is not None]
    means = [e.mean(-1) for e in seen.attention_entropy if e is not None]  # (h,) each
    L, nh = len(means), max(m.numel() for m in means)
    mean = torch.full((L, nh), float("nan"))
    for row, m in enumerate(means):
        mean[row, : m.numel()] = m
    fig, ax = plt.subplots(figsize=(min(2 + 0.6 * nh, 16), min(1.4 + 0.45 * L, 16)))
    image = ax.imshow(mean.numpy(), cmap="magma", aspect="auto", origin="lower")
    for row in range(L):
        for h in range(means[row].numel()):
            ax.text(
                h,
                row,
                f"{mean[row, h]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if mean[row, h] < mean.nan_to_num(0).max() * 0.6 else "black",
            )
    ax.set_xticks(range(nh), [str(h) for h in range(nh)], fontsize=8)
    ax.set_yticks(range(L), [str(layer) for layer in layers], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("attention entropy per head (bits, mean over positions)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    save_png(fig, path)
