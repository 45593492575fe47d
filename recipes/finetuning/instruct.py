"""Instruction fine-tuning (the book's chapter 7) with the Alpaca prompt format.

Data is a JSON list of ``{"instruction", "input", "output"}`` entries ("input" may be
empty or absent). Each entry becomes prompt + output + end-of-text; the model learns to
predict every next token, padding ignored (and, with ``mask_prompt``, the prompt too).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from gptzoo.core import GPT, GptzooError, Tokenizer
from gptzoo.recipes.config.schema import TrainConfig
from gptzoo.recipes.finetuning.common import EpochStates, batches, read_data_file
from gptzoo.recipes.finetuning.loop import epoch_records
from gptzoo.recipes.generation.generate import complete, generate_ids
from gptzoo.recipes.generation.text import prompt_ids

IGNORE_INDEX = -100  # cross_entropy's default ignore_index
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
RESPONSE_MARKER = "### Response:"
RESPONSES = "responses.json"


# ---- reading and formatting ---------------------------------------------------------------


def read_entries(path: str | Path) -> list[dict]:
    """The entries of a JSON instruction file; GptzooError names the file and the first bad entry."""
    path, text = read_data_file(path, "a JSON list of {instruction, input, output} entries")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as err:
        raise GptzooError(f"{path}, line {err.lineno} column {err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(entries, list) or not entries:
        raise GptzooError(f"{path}: expected a non-empty JSON list of {{instruction, input, output}} entries")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise GptzooError(
                f"{path}, entry {number}: expected an object with instruction, input and output, got {type(entry).__name__}"
            )
        for field in ("instruction", "output"):
            if field not in entry:
                raise GptzooError(f"{path}, entry {number}: missing field '{field}'")
        for field in ("instruction", "input", "output"):
            if not isinstance(entry.get(field, ""), str):
                raise GptzooError(
                    f"{path}, entry {number}: field '{field}' must be a string, got {type(entry[field]).__name__}"
                )
    return entries


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt, ending where the response begins."""
    prompt = f"{PREAMBLE}\n\n### Instruction:\n{instruction}"
    if input:
        prompt += f"\n\n### Input:\n{input}"
    return prompt + f"\n\n{RESPONSE_MARKER}\n"


def entry_prompt(entry: dict) -> str:
    return format_prompt(entry["instruction"], entry.get("input", ""))


def extract_response(text: str) -> str:
    """The text after the first ``### Response:`` (all of it when there is none), with every
    further ``### Response:`` the model wrote removed and the rest stripped, as the book's
    ``.replace("### Response:", "").strip()``."""
    before, marker, after = text.partition(RESPONSE_MARKER)
    return (after if marker else before).replace(RESPONSE_MARKER, "").strip()


def split_in_file_order(
    entries: list[dict], fractions: tuple[float, float, float]
) -> tuple[list[dict], list[dict], list[dict]]:
    """The book's chapter 7 split, unshuffled: the first int(n·train) entries train, the next
    int(n·test) are the test set, the rest validate. Returns (train, validation, test)."""
    n_train = int(len(entries) * fractions[0])
    n_test = int(len(entries) * fractions[2])
    return entries[:n_train], entries[n_train + n_test :], entries[n_train : n_train + n_test]


# ---- batches ------------------------------------------------------------------------------


def encode_entries(entries: list[dict], tokenizer: Tokenizer) -> list[tuple[list[int], int]]:
    """(ids of prompt + output, number of prompt tokens) per entry."""
    prompts = [entry_prompt(e) for e in entries]
    full = tokenizer.encode_batch([p + e["output"] for p, e in zip(prompts, entries, strict=True)])
    prompt_lengths = [len(ids) for ids in tokenizer.encode_batch(prompts)]
    return list(zip(full, prompt_lengths, strict=True))


def collate(
    batch: list[tuple[list[int], int]], pad_id: int, max_length: int, mask_prompt: bool = False
) -> tuple[Tensor, Tensor]:
    """Inputs and targets (B, T) for next-token training, padded with ``pad_id``.

    Each sequence gets one end-of-text token and is cut to ``max_length`` + 1 tokens; inputs
    are its first tokens, targets the same shifted by one. Targets after the first end-of-text
    are IGNORE_INDEX, so padding costs nothing but the model still learns to stop; with
    ``mask_prompt`` the targets that are prompt tokens are ignored too.
    """
    sequences = [(ids + [pad_id])[: max_length + 1] for ids, _ in batch]
    T = max(len(s) for s in sequences) - 1
    inputs = torch.full((len(batch), T), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    for row, (sequence, (_, prompt_length)) in enumerate(zip(sequences, batch, strict=True)):
        n = len(sequence) - 1
        inputs[row, :n] = torch.tensor(sequence[:-1])
        targets[row, :n] = torch.tensor(sequence[1:])
        if mask_prompt:
            targets[row, : prompt_length - 1] = IGNORE_INDEX  # target j is token j + 1
    return inputs, targets


def responses_lost(encoded: list[tuple[list[int], int]], max_length: int) -> int:
    """How many encoded entries lose their whole response when cut to ``max_length`` tokens:
    ``collate`` keeps the first ``max_length`` + 1 tokens (inputs and targets shifted by one),
    so the response, which starts after the prompt, keeps a target only when the prompt has at
    most ``max_length`` tokens."""
    return sum(prompt_length > max_length for _, prompt_length in encoded)


def check_responses_fit(splits: dict[str, list[tuple[list[int], int]]], max_length: int, limit: str) -> None:
    """Refuse when every training entry would lose its response to the ``max_length`` cut (``limit``
    says where that length comes from): training would see only prompts, every one cut the same way.
    When only some lose it, a warning line says how many, split by split."""
    lost = {name: responses_lost(encoded, max_length) for name, encoded in splits.items()}
    if lost["train"] == len(splits["train"]):
        shortest = min(prompt_length for _, prompt_length in splits["train"])
        raise GptzooError(
            f"every training prompt is longer than the {max_length} tokens a sequence may hold ({limit}): the "
            f"shortest is {shortest} tokens, so no response would be trained on; fine-tune a base with a longer context"
        )
    if any(lost.values()):
        total = sum(len(encoded) for encoded in splits.values())
        where = ", ".join(f"{name} {n}" for name, n in lost.items() if n)
        print(
            f"warning: {sum(lost.values())} of {total} entries ({where}) have a prompt longer than the {max_length} "
            f"tokens a sequence may hold ({limit}), so they lose their response",
            file=sys.stderr,
        )


# ---- training -----------------------------------------------------------------------------


def batch_loss(
    model: GPT, batch: list, pad_id: int, max_length: int, mask_prompt: bool, device: torch.device
) -> Tensor:
    inputs, targets = (t.to(device) for t in collate(batch, pad_id, max_length, mask_prompt))
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def mean_loss(
    model: GPT,
    data: list,
    batch_size: int,
    pad_id: int,
    max_length: int,
    mask_prompt: bool,
    device: torch.device,
    max_batches: int | None = None,
) -> float:
    """Mean loss over the first ``max_batches`` batches of ``data`` (all when None)."""
    was_training = model.training
    model.eval()
    losses = [
        batch_loss(model, b, pad_id, max_length, mask_prompt, device).item()
        for b in batches(data, batch_size)[:max_batches]
    ]
    model.train(was_training)
    return sum(losses) / len(losses)


def train_instructions(
    model: GPT,
    train: list,
    val: list,
    cfg: TrainConfig,
    *,
    pad_id: int,
    max_length: int,
    mask_prompt: bool = False,
    device: torch.device,
    out: Path | None = None,
    drop_last: bool = False,
    epoch_states: EpochStates | None = None,
) -> list[dict]:
    """The book's loop (recipes/finetuning/loop.py) with the loss on the first ``cfg.eval_batches`` batches
    of train and validation after each epoch (appended to ``out``'s metrics); returns the epochs' records.
    ``drop_last`` skips each epoch's last, smaller batch; ``epoch_states``: see ``epoch_records``."""

    def scores_of(data: Sequence, max_batches: int | None) -> dict[str, float]:
        return {"loss": mean_loss(model, data, cfg.batch_size, pad_id, max_length, mask_prompt, device, max_batches)}

    return epoch_records(
        model,
        train,
        val,
        cfg,
        loss_of=lambda batch: batch_loss(model, batch, pad_id, max_length, mask_prompt, device),
        scores_of=scores_of,
        device=device,
        out=out,
        drop_last=drop_last,
        epoch_states=epoch_states,
    )


def instruction_ids(
    tokenizer: Tokenizer, instruction: str, input: str = "", templated: bool = False, chat: ChatOptions | None = None
) -> list[int]:
    """The ids a model answers an instruction from: its chat template's (``templated``), else the Alpaca prompt's."""
    if templated:
        chat = chat or ChatOptions()
        content = f"{instruction}\n\n{input}" if input else instruction
        system = [{"role": "system", "content": chat.system}] if chat.system is not None else []
        return tokenizer.encode_chat([*system, {"role": "user", "content": content}], **chat.template_variables)
    return prompt_ids(tokenizer, format_prompt(instruction, input))


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """What a chat template is given beside the user's message: a system message, and the template's own
    variables (apply_chat_template's keyword arguments, such as Qwen3's ``enable_thinking``)."""

    system: str | None = None
    template_variables: dict[str, Any] = dataclasses.field(default_factory=dict)


def respond(
    model: GPT, tokenizer: Tokenizer, instruction: str, input: str = "", max_new_tokens: int = 256, **sampling
) -> str:
    """The model's response to one instruction (greedy unless ``sampling`` says otherwise)."""
    prompt = format_prompt(instruction, input)
    return extract_response(prompt + complete(model, tokenizer, prompt, max_new_tokens, **sampling))


def respond_in_template(
    model: GPT,
    tokenizer: Tokenizer,
    instruction: str,
    input: str = "",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int | None = None,
    chat: ChatOptions | None = None,
) -> str:
    """The response of a checkpoint with a chat template (the ``hf`` tokenizer's) to one user message."""
    ids = instruction_ids(tokenizer, instruction, input, templated=True, chat=chat)
    generator = (
        torch.Generator(device=model.token_embedding.weight.device).manual_seed(seed) if seed is not None else None
    )
    [out] = generate_ids(
        model,
        [ids],
        max_new_tokens,
        temperature=temperature,
        generator=generator,
        eot_id=tokenizer.eot_id,
        stop_ids=tokenizer.stop_ids,
    )
    return tokenizer.decode(out).strip()


def generate_responses(model: GPT, tokenizer: Tokenizer, entries: list[dict], max_new_tokens: int) -> list[dict]:
    """Each entry with the model's greedy response added under "model_response"."""
    return [
        entry
        | {"model_response": respond(model, tokenizer, entry["instruction"], entry.get("input", ""), max_new_tokens)}
        for entry in tqdm(entries, desc="test responses", unit="entry")
    ]
