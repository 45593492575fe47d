"""gptzoo chat: answer instructions with an instruction-tuned run, in the prompt format it was tuned on."""

import argparse
import itertools
import json
import math
import sys
from typing import Any

from gptzoo.core import GptzooError
from gptzoo.recipes.cli.generate import add_weight_storage_argument, check_seed
from gptzoo.recipes.finetuning.instruct import ChatOptions, instruction_ids, respond, respond_in_template
from gptzoo.recipes.generation.stored_weights import store_weights
from gptzoo.recipes.generation.text import encode_within
from gptzoo.recipes.runs.folder import Run, load_run

HELP = "answer an instruction with an instruction-tuned run: in its checkpoint's chat template when it has one (import-hf), else the Alpaca format of finetune-instruct; without --instruction, one per stdin line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a run folder written by gptzoo finetune-instruct")
    parser.add_argument(
        "--instruction",
        default=None,
        help="the instruction; without it, read one instruction per line from stdin until end of input",
    )
    parser.add_argument("--input", default="", help="the input the instruction refers to (optional)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest response, in tokens (default 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy; higher is more random")
    parser.add_argument("--seed", type=int, default=None, help="the same seed gives the same sampled response")
    parser.add_argument(
        "--system", default=None, help="a system message before each instruction (runs with a chat template)"
    )
    parser.add_argument(
        "--template-var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable of the checkpoint's chat template, as apply_chat_template's keyword arguments "
        "(e.g. enable_thinking=false for Qwen3, reasoning_effort=low for gpt-oss); VALUE is read as JSON "
        "where it parses, else as text; repeatable",
    )
    add_weight_storage_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise GptzooError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    if not args.temperature >= 0 or math.isinf(args.temperature):  # also nan
        raise GptzooError(f"--temperature {args.temperature}: must be 0 (greedy) or a positive number")
    check_seed(args.seed)
    if args.input and args.instruction is None:
        raise GptzooError("--input needs --instruction")
    loaded = load_run(args.run_dir)
    if loaded.config.model.head.name != "lm":
        raise GptzooError(
            f"{args.run_dir}: its '{loaded.config.model.head.name}' head does not predict tokens, so it cannot answer; use gptzoo classify"
        )
    store_weights(loaded.model, args.weight_storage)
    options: dict = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    templated = getattr(loaded.tokenizer.params, "chat_template", None) is not None
    if templated:
        options["chat"] = ChatOptions(args.system, template_variables(args.template_var))
    elif args.system is not None or args.template_var:
        which = "--system" if args.system is not None else "--template-var"
        raise GptzooError(
            f"{which}: {args.run_dir} has no chat template (it answers in the Alpaca format of finetune-instruct); "
            "leave it out, or chat with a run imported with its template (import-hf)"
        )
    answer = respond_in_template if templated else respond
    if args.instruction is not None:
        check_fits(loaded, args.instruction, args.input, templated, "the instruction", options.get("chat"))
        print(answer(loaded.model, loaded.tokenizer, args.instruction, args.input, **options))
        return 0
    interactive = sys.stdin.isatty()
    refused = 0
    for number in itertools.count(1):
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            return 2 if refused else 0
        if not line.strip():
            continue
        try:
            check_fits(loaded, line.strip(), "", templated, f"the instruction on line {number}", options.get("chat"))
        except GptzooError as err:  # that line is refused; the next ones are answered
            print(f"gptzoo chat: error: {err}", file=sys.stderr, flush=True)
            refused += 1
            continue
        print(answer(loaded.model, loaded.tokenizer, line.strip(), **options), flush=True)


def template_variables(assignments: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs as a chat template's variables: VALUE as JSON where it parses (true, 3, "x"), else as text."""
    variables: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or not name.strip().isidentifier():
            raise GptzooError(f"--template-var {assignment!r}: write NAME=VALUE, e.g. enable_thinking=false")
        try:
            variables[name.strip()] = json.loads(text)
        except ValueError:
            variables[name.strip()] = text
    return variables


def check_fits(
    loaded: Run, instruction: str, input: str, templated: bool, which: str, chat: ChatOptions | None = None
) -> None:
    """Refuse an instruction whose prompt the model's context cannot hold, as generate refuses such a prompt:
    the model would see only its end."""
    context_length = loaded.config.model.context_length
    # The instruction alone first, in growing prefixes: one of megabytes is refused without tokenizing it all.
    _, whole = encode_within(loaded.tokenizer, f"{instruction}\n\n{input}", context_length)
    if not whole:
        raise GptzooError(
            f"the prompt of {which} is more than {context_length} tokens but the model's context holds {context_length} "
            f"(context_length in {loaded.folder / 'config.json'}); shorten it"
        )
    n_tokens = len(instruction_ids(loaded.tokenizer, instruction, input, templated, chat))
    if n_tokens > context_length:
        raise GptzooError(
            f"the prompt of {which} is {n_tokens} tokens but the model's context holds {context_length} "
            f"(context_length in {loaded.folder / 'config.json'}); shorten it"
        )
