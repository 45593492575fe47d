"""gptzoo inspect: see inside a model on one prompt (what each layer's token mixer offers: attention
of every head, a recurrent mixer's implicit attention or state norms; the logit lens, the
next-token choices, the residual stream's norm, attention entropy), as PNGs and JSON and a short
text view."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gptzoo.core import GPT, GptzooError, Tokenizer
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.research.inspection import MEANING, Inspection, inspect_model, write_inspection
from gptzoo.recipes.runs.files import check_out_folder
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training.devices import resolve_device
from gptzoo.recipes.training.models import untrained_model

HELP = "see inside a model on a prompt: each head's attention (or a recurrent layer's implicit attention or state norms), the logit lens, next-token choices, residual norms (PNGs, JSON)"
LENS_COLUMNS = 8  # positions of the logit lens the text view shows (all are in the JSON and PNG)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_CONFIG",
        help="a run folder (trained weights) or a TOML config or preset name (an untrained model from train.seed)",
    )
    parser.add_argument("--prompt", required=True, help="the text to look at; at most the model's context in tokens")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder for the PNGs and JSON (created if absent)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="next-token choices to keep at each position (default 5)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of a TOML config, e.g. model.positional.name=alibi (repeatable)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps, auto")


def load(source: Path, overrides: list[str], device: torch.device) -> tuple[GPT, Tokenizer, str]:
    """The model and tokenizer ``source`` names, and a phrase saying what the weights are."""
    if source.is_dir():
        if overrides:
            raise GptzooError(f"--set changes a config, not a trained run: {source} is a run folder")
        run = load_run(source, device=device)
        return run.model, run.tokenizer, "trained weights"
    if not source.exists():
        raise GptzooError(f"{source}: no such run folder or config file")
    config = load_run_config(source, overrides)
    model, tokenizer = untrained_model(config)
    return model.to(device).eval(), tokenizer, f"untrained weights (train.seed = {config.train.seed})"


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise GptzooError(f"--top-k {args.top_k}: must be at least 1")
    if not args.prompt:
        raise GptzooError("--prompt is empty; give some text")
    check_out_folder(args.out)
    source = Path(args.source)
    model, tokenizer, weights = load(source, args.overrides, resolve_device(args.device, "--device"))
    seen = inspect_model(model, tokenizer, args.prompt, args.top_k)
    files, drawn = write_inspection(seen, args.out, f"{source} ({weights})")
    c = model.config
    mixers = ", ".join(f"'{name}'" for name in dict.fromkeys(layer.attention.name for layer in c.layers()))
    print(
        f"{source}: {weights}; {mixers} token mixing, '{c.positional.name}' positions, '{c.block.name}' blocks, {c.n_layers} layers × {c.n_heads} heads"
    )
    print("\n".join(view(seen)))
    shown = ", ".join(f.name for f in files[:3]) + (f", … ({len(files)} files)" if len(files) > 3 else "")
    print(
        f"wrote {args.out}: {shown}"
        + ("" if drawn else " (no PNGs: matplotlib is not installed; pip install 'gptzoo[plots]')")
    )
    return 0


def view(seen: Inspection) -> list[str]:
    """The tokens, the top next tokens after the last one, and the logit lens's last positions."""
    T = len(seen.ids)
    lines = [f"{T} tokens: " + " ".join(f"{p}:'{t}'" for p, t in enumerate(seen.tokens))]
    if any(offers != "probabilities" for offers in seen.offers):
        lines.append("what each layer's token mixer shows:")
        lines += [f"  block {i}: {MEANING[offers]}" for i, offers in enumerate(seen.offers)]
    choices = "  ".join(
        f"'{t}' {p:.3f}" for t, p in zip(seen.next_tokens[-1], seen.next_probs[-1].tolist(), strict=True)
    )
    lines.append(f"next token after '{seen.tokens[-1]}': {choices}")
    first = max(0, T - LENS_COLUMNS)
    which = f"positions {first}-{T - 1} of {T}" if first else "every position"
    lines.append(f"logit lens, the top next token after each token as each layer would predict it ({which}):")
    cell = 10
    name_width = max(len(n) for n in seen.layer_names)
    lines.append(" " * name_width + "".join(f"  {_fit(t, cell)}" for t in seen.tokens[first:]))
    for name, row in reversed(list(zip(seen.layer_names, seen.lens_tokens, strict=True))):
        lines.append(f"{name:<{name_width}}" + "".join(f"  {_fit(t, cell)}" for t in row[first:]))
    return lines


def _fit(token: str, width: int) -> str:
    """The token in quotes (its labels escape newlines already), cut to ``width``."""
    text = f"'{token}'"
    return f"{text if len(text) <= width else text[: width - 2] + '…' + text[-1]:<{width}}"
