"""gptzoo generate: continue prompts with a trained run, streaming the text as it is produced."""

import argparse
import math
import sys

import torch

from gptzoo.core import GptzooError
from gptzoo.recipes.generation.generate import check_memory, generate_ids, stream_ids
from gptzoo.recipes.generation.speculative import Speculation, speculation_refusal, speculative_ids
from gptzoo.recipes.generation.static import static_refusal
from gptzoo.recipes.generation.stored_weights import STORAGES, store_weights
from gptzoo.recipes.generation.text import TextStream, decode_after, encode_within, too_long
from gptzoo.recipes.runs.folder import load_run

HELP = "continue one or more prompts with a trained run (greedy, temperature, top-k, top-p)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a run folder written by gptzoo train")
    parser.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="text to continue; repeat for a batch (printed whole, not streamed)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=50,
        help="stop after this many tokens (default 50); end-of-text stops sooner",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; higher is more random")
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the K most likely tokens")
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample only from the smallest set of tokens whose probability reaches P, in (0, 1]",
    )
    parser.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    parser.add_argument(
        "--no-stream", action="store_true", help="print the text when it is complete instead of as it is produced"
    )
    parser.add_argument(
        "--speculative",
        action="store_true",
        help="greedy decoding drafted by the run's multi-token prediction module (model.mtp) and verified by the "
        "model: the same tokens, fewer forwards; the drafts' acceptance rate goes to stderr",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="decode through a static cache with one step compiled by torch.compile: the same greedy tokens; pays "
        "off only over many tokens, the first compile taking seconds to minutes (docs/design/performance.md)",
    )
    add_weight_storage_argument(parser)


def add_weight_storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weight-storage",
        choices=STORAGES,
        default="fp32",
        help="keep the linear layers' and the head's weights as fp32 (default: every value as it is, each matrix laid "
        "out for one-row products), bf16, int8 with a scale per row, or int4 with a scale and zero point per 32 numbers "
        "(weight-only): fewer bytes, faster only where the CPU has fast kernels for them; docs/design/performance.md "
        "gives the speed and quality cost",
    )


def check_options(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise GptzooError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    if not args.temperature >= 0 or math.isinf(args.temperature):  # also nan
        raise GptzooError(f"--temperature {args.temperature}: must be 0 (greedy) or a positive number")
    if args.top_k is not None and args.top_k < 1:
        raise GptzooError(f"--top-k {args.top_k}: must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise GptzooError(f"--top-p {args.top_p}: must be in (0, 1]")
    check_seed(args.seed)
    if args.speculative and (args.temperature > 0 or args.top_k or args.top_p):
        raise GptzooError("--speculative decodes greedily: drop --temperature, --top-k and --top-p")
    if args.speculative and args.compile:
        raise GptzooError("--speculative drafts and verifies through the eager cache: drop --compile")


def check_seed(seed: int | None) -> None:
    """--seed within the 64 bits torch's generators take."""
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise GptzooError(f"--seed {seed}: give a seed of at most 64 bits (0 to {2**64 - 1})")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_run(args.run_dir, device=device)
    model, tokenizer = store_weights(loaded.model, args.weight_storage), loaded.tokenizer
    with torch.inference_mode():
        probe = model.head(torch.zeros(1, 1, model.config.d_model, device=device))
    if probe.dim() != 3:
        raise GptzooError(
            f"{args.run_dir}: its '{model.config.head.name}' head does not predict tokens, so it cannot generate text"
        )

    if args.speculative and (refusal := speculation_refusal(model)) is not None:
        raise GptzooError(f"--speculative: {args.run_dir}: {refusal}")

    context_length = model.config.context_length
    prompts = []
    for n, text in enumerate(args.prompt, start=1):
        ids, whole = encode_within(tokenizer, text, context_length)
        if len(ids) > context_length:
            which = f"prompt {n}" if len(args.prompt) > 1 else "the prompt"
            raise too_long(which, ids, whole, context_length, loaded.folder / "config.json")
        prompts.append(ids or [tokenizer.eot_id])  # an empty prompt starts from end-of-text, as prompt_ids does

    if args.compile and (refusal := static_refusal(model, max(map(len, prompts)) + args.max_new_tokens)) is not None:
        raise GptzooError(f"--compile: {args.run_dir}: {refusal}; decode without --compile")
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None
    options = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
        eot_id=tokenizer.eot_id,
        stop_ids=tokenizer.stop_ids,
        compiled=args.compile,
    )
    # Each prompt prints as the tokenizer decodes it, the continuation as its ids decode after
    # the prompt's: together, the tokenizer's text of the whole sequence (the word tokenizer
    # spaces the words and drops what it cannot encode; lossless tokenizers give the prompt back).
    shown = [tokenizer.decode(tokenizer.encode(text)) for text in args.prompt]
    if args.speculative:
        return _speculate(model, tokenizer, prompts, shown, args)
    if len(prompts) == 1 and not args.no_stream:
        # Before the prompt prints.
        check_memory(model, 1, len(prompts[0]), args.max_new_tokens, keep_text=False, compiled=args.compile)
        streamer = TextStream(tokenizer, _write, context=prompts[0])
        _write(shown[0])
        stream_ids(model, prompts, args.max_new_tokens, lambda row, token: streamer.add(token), **options)
        streamer.flush()
        _write("\n")
        return 0
    outputs = generate_ids(model, prompts, args.max_new_tokens, **options)
    for n, (text, context, ids) in enumerate(zip(shown, prompts, outputs, strict=True)):
        if n:
            print()
        print(text + decode_after(tokenizer, context, ids))
    return 0


def _speculate(model, tokenizer, prompts: list[list[int]], shown: list[str], args: argparse.Namespace) -> int:
    """Greedy text drafted by the MTP module, streamed when there is one prompt; the acceptance rate on stderr."""
    stats = Speculation()
    check_memory(model, len(prompts), max(map(len, prompts)), args.max_new_tokens)  # before the prompt prints
    streamer = TextStream(tokenizer, _write, context=prompts[0]) if len(prompts) == 1 and not args.no_stream else None
    on_token = (lambda row, token: streamer.add(token)) if streamer is not None else None
    if streamer is not None:
        _write(shown[0])
    outputs = speculative_ids(
        model,
        prompts,
        args.max_new_tokens,
        eot_id=tokenizer.eot_id,
        stop_ids=tokenizer.stop_ids,
        on_token=on_token,
        stats=stats,
    )
    if streamer is not None:
        streamer.flush()
        _write("\n")
    else:
        for n, (text, context, ids) in enumerate(zip(shown, prompts, outputs, strict=True)):
            print(("\n" if n else "") + text + decode_after(tokenizer, context, ids))
    print(
        f"speculative: {stats.accepted} of {stats.drafted} drafts accepted ({stats.acceptance_rate:.0%})",
        file=sys.stderr,
    )
    return 0


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
