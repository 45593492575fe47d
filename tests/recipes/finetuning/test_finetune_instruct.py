"""Instruction fine-tuning: the Alpaca prompt, response extraction, padded batches with the
-100 mask, the split, bad data, and the finetune-instruct and chat commands."""

import io
import json

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import GPT
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.finetuning.common import split_data
from gptzoo.recipes.finetuning.instruct import (
    batch_loss,
    collate,
    encode_entries,
    extract_response,
    format_prompt,
    read_entries,
)
from gptzoo.recipes.runs.folder import load_run, save_run
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
PAD = 50256  # gpt2's <|endoftext|>


def tiny_base() -> GPT:
    torch.manual_seed(0)
    spec = {
        "context_length": 256,  # the Alpaca prompt alone is about 150 bytes
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "tokenizer": "byte",
        "vocab_size": 257,
        "tied_head": True,
    }
    return GPT(REGISTRY.model_config(spec))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    model = tiny_base()
    save_run(folder, RunConfig(model=model.config), model, model.config.tokenizer.build())
    return folder


# ---- prompts and responses ----------------------------------------------------------------


def test_prompt_with_input():
    assert format_prompt("Convert to passive voice.", "The cat chased the mouse.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nConvert to passive voice."
        "\n\n### Input:\nThe cat chased the mouse."
        "\n\n### Response:\n"
    )


def test_prompt_without_input_has_no_input_section():
    assert (
        format_prompt("Name a primary color.")
        == format_prompt("Name a primary color.", "")
        == (
            "Below is an instruction that describes a task. Write a response that appropriately completes the request."
            "\n\n### Instruction:\nName a primary color."
            "\n\n### Response:\n"
        )
    )


def test_extract_response():
    assert extract_response(format_prompt("Name a primary color.") + "Red.\n") == "Red."
    # Every marker the model repeats is cut, as the book's response_text.replace("### Response:", "").strip()
    assert extract_response(format_prompt("Name a primary color.") + "### Response:\n### Response:\nRed.") == "Red."
    assert extract_response("### Response:  The sky is blue. ### Response: again") == "The sky is blue.  again"
    assert extract_response("  no marker here \n") == "no marker here"


# ---- batches ------------------------------------------------------------------------------


def test_collate_pads_and_masks_like_the_book():
    batch = [([0, 1, 2, 3, 4], 0), ([5, 6], 0), ([7, 8, 9], 0)]
    inputs, targets = collate(batch, pad_id=PAD, max_length=100)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, PAD, PAD, PAD], [7, 8, 9, PAD, PAD]]
    assert targets.tolist() == [[1, 2, 3, 4, PAD], [6, PAD, -100, -100, -100], [8, 9, PAD, -100, -100]]


def test_collate_truncates_to_max_length_and_masks_the_prompt():
    batch = [([0, 1, 2, 3, 4], 2), ([5, 6], 1)]
    inputs, targets = collate(batch, pad_id=PAD, max_length=3, mask_prompt=True)
    # row 0: [0 1 2 3 4 PAD] cut to 4 tokens; its prompt is [0 1], so target 1 (token 1) is ignored
    assert inputs.tolist() == [[0, 1, 2], [5, 6, PAD]]
    assert targets.tolist() == [[-100, 2, 3], [6, PAD, -100]]


def test_prompt_tokens_prefix_the_encoded_entry():
    tokenizer = REGISTRY.model_config(
        {"context_length": 8, "d_model": 8, "n_layers": 1, "n_heads": 1}
    ).tokenizer.build()  # gpt2
    entry = {"instruction": "Edit the sentence.", "input": "He go home.", "output": "He goes home."}
    [(ids, prompt_length)] = encode_entries([entry], tokenizer)
    assert tokenizer.decode(ids[:prompt_length]) == format_prompt("Edit the sentence.", "He go home.")
    assert tokenizer.decode(ids[prompt_length:]) == "He goes home."


def test_padding_does_not_change_the_loss():
    model = tiny_base().eval()
    long, short = [1, 2, 3, 4, 5, 6], [7, 8]
    with torch.no_grad():
        padded = batch_loss(model, [(long, 0), (short, 0)], 256, 64, False, torch.device("cpu"))
        # each sequence alone, unpadded: inputs ids, targets ids[1:] + end-of-text
        sums = [
            F.cross_entropy(model(torch.tensor([ids]))[0], torch.tensor(ids[1:] + [256]), reduction="sum")
            for ids in (long, short)
        ]
    assert torch.allclose(padded, sum(sums) / (len(long) + len(short)), atol=1e-5)


# ---- data ---------------------------------------------------------------------------------


def test_split_of_the_instruction_data_matches_the_book(shared_data):
    entries = read_entries(shared_data("instruction-data.json"))
    train, val, test = split_data(entries, (0.85, 0.05, 0.1), seed=123)
    assert (len(entries), len(train), len(val), len(test)) == (1100, 935, 55, 110)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "data.json: the file is empty"),
        (
            '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]',
            "data.json, line 2 column 22: not valid JSON",
        ),
        ('{"instruction": "a", "output": "b"}', "data.json: expected a non-empty JSON list"),
        ('[{"instruction": "a", "output": "b"}, "just text"]', "data.json, entry 1: expected an object"),
        (
            '[{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": ""}]',
            "data.json, entry 1: missing field 'output'",
        ),
        ('[{"instruction": "a", "output": 3}]', "data.json, entry 0: field 'output' must be a string"),
    ],
)
def test_bad_data_is_a_clear_error_with_exit_code_2(base_dir, tmp_path, capsys, content, message):
    data = tmp_path / "data.json"
    data.write_text(content, encoding="utf-8")
    assert main(["finetune-instruct", str(base_dir), "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_input_field_may_be_absent(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('[{"instruction": "a", "output": "b"}]', encoding="utf-8")
    assert read_entries(data) == [{"instruction": "a", "output": "b"}]


# ---- the commands -------------------------------------------------------------------------


def naive_greedy(model: GPT, ids: list[int], max_new_tokens: int, eot: int) -> list[int]:
    """Full forward each step, argmax, stop at end-of-text (the book's loop)."""
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            context = torch.tensor([(ids + out)[-model.config.context_length :]])
            token = int(model(context)[0, -1].argmax())
            if token == eot:
                break
            out.append(token)
    return out


def test_finetune_instruct_and_chat_end_to_end(base_dir, shared_data, tmp_path, capsys, monkeypatch):
    entries = json.loads(shared_data("instruction-data.json").read_text(encoding="utf-8"))[:20]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    out = tmp_path / "tuned"
    args = [
        "finetune-instruct",
        str(base_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--eval-batches",
        "1",
        "--max-length",
        "200",
        "--max-new-tokens",
        "4",
        "--limit-test",
        "1",
        "--lr",
        "1e-3",
    ]
    assert main(args) == 0
    assert "train 17, validation 1, test 2" in capsys.readouterr().out  # int(20 · 0.85), int(20 · 0.05), the rest

    epoch, final = read_metrics(out)
    assert set(epoch) == {"epoch", "step", "train_loss", "val_loss"} and epoch["step"] == 3  # ceil(17 / 8)
    assert set(final) == {"test_loss"}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["head"]["name"] == "lm" and config["train"]["epochs"] == 1
    [answered] = json.loads((out / "responses.json").read_text())
    test = split_data(entries, (0.85, 0.05, 0.1), seed=123)[2]
    assert answered == test[0] | {"model_response": answered["model_response"]}
    assert isinstance(answered["model_response"], str)
    tuned, base = load_run(out).model, load_run(base_dir).model
    assert not torch.equal(tuned.token_embedding.weight, base.token_embedding.weight)  # --train all is the default

    tokenizer = load_run(out).tokenizer
    prompt = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.\n\n### Input:\nto Bob\n\n### Response:\n"
    )
    expected = tokenizer.decode(naive_greedy(tuned, tokenizer.encode(prompt), 6, 256)).strip()
    assert main(["chat", str(out), "--instruction", "Say hi.", "--input", "to Bob", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected + "\n"

    monkeypatch.setattr("sys.stdin", io.StringIO("Say hi.\n\nSay hi.\n"))
    assert main(["chat", str(out), "--max-new-tokens", "3"]) == 0
    one = tokenizer.decode(naive_greedy(tuned, tokenizer.encode(format_prompt("Say hi.")), 3, 256)).strip()
    assert capsys.readouterr().out == f"{one}\n{one}\n"  # the blank line is skipped


def test_the_books_split_in_file_order_and_drop_last(base_dir, shared_data, tmp_path, capsys):
    entries = json.loads(shared_data("instruction-data.json").read_text(encoding="utf-8"))[:20]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    out = tmp_path / "tuned"
    args = [
        "finetune-instruct",
        str(base_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--eval-batches",
        "1",
        "--max-length",
        "200",
        "--max-new-tokens",
        "1",
        "--split-order",
        "book",
        "--drop-last",
        "--betas",
        "0.9,0.999",
        "--grad-clip",
        "0",
    ]
    assert main(args) == 0
    assert "train 17, validation 1, test 2" in capsys.readouterr().out
    # The book's chapter 7: the first 17 train, the next int(20 · 0.1) = 2 are the test set, the last one validates.
    assert [
        {k: v for k, v in r.items() if k != "model_response"} for r in json.loads((out / "responses.json").read_text())
    ] == entries[17:19]
    assert read_metrics(out)[0]["step"] == 2  # 17 entries in batches of 8: the last one dropped


def count_entries(long: set[int]) -> list[dict]:
    """20 entries whose Alpaca prompts are about 150 bytes, but well over 200 at the indices in ``long``."""
    padding = " Please count slowly, one number after another, and say each number clearly." * 2
    return [
        {"instruction": f"Count to {i}." + (padding if i in long else ""), "output": " ".join(map(str, range(i)))}
        for i in range(20)
    ]


def test_a_context_too_short_for_every_prompt_is_refused_naming_the_lengths(base_dir, tmp_path, capsys):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(count_entries(long=set())), encoding="utf-8")
    shortest = min(len(format_prompt(e["instruction"]).encode()) for e in count_entries(long=set()))  # bytes
    argv = [
        "finetune-instruct",
        str(base_dir),
        "--data",
        str(data),
        "--max-length",
        "100",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "every training prompt is longer than the 100 tokens a sequence may hold (data.max_length = 100): "
        f"the shortest is {shortest} tokens, so no response would be trained on" in err
    )
    assert not (tmp_path / "o" / "config.json").exists()


def test_entries_that_lose_their_response_are_counted_in_a_warning(base_dir, tmp_path, capsys):
    """Split in file order (the book's): entries 0-16 train, 17-18 test, 19 validates."""
    data = tmp_path / "data.json"
    data.write_text(json.dumps(count_entries(long={0, 5, 17, 19})), encoding="utf-8")
    argv = ["finetune-instruct", str(base_dir), "--data", str(data), "--max-length", "200", "--split-order", "book"]
    argv += ["--epochs", "1", "--eval-batches", "1", "--limit-test", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 4 of 20 entries (train 2, validation 1, test 1) have a prompt longer than the 200 tokens a "
        "sequence may hold (data.max_length = 200), so they lose their response"
    ]


def test_chat_refuses_an_instruction_longer_than_the_context_as_generate_refuses_a_prompt(
    base_dir, tmp_path, capsys, monkeypatch
):
    long = ("Repeat this. " * 20).strip()  # with the Alpaca format, over the base's 256 bytes
    n_bytes = len(format_prompt(long).encode())
    assert main(["chat", str(base_dir), "--instruction", long]) == 2
    message = f"tokens but the model's context holds 256 (context_length in {base_dir / 'config.json'}); shorten it"
    assert f"the prompt of the instruction is {n_bytes} {message}" in capsys.readouterr().err
    assert main(["generate", str(base_dir), "--prompt", format_prompt(long)]) == 2
    assert f"the prompt is {n_bytes} {message}" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{long}\nSay hi.\n"))
    assert main(["chat", str(base_dir), "--max-new-tokens", "2"]) == 2  # the long line refused, the next answered
    out, err = capsys.readouterr()
    assert f"the prompt of the instruction on line 1 is {n_bytes} {message}" in err
    model, tokenizer = load_run(base_dir).model, load_run(base_dir).tokenizer
    assert (
        out == tokenizer.decode(naive_greedy(model, tokenizer.encode(format_prompt("Say hi.")), 2, 256)).strip() + "\n"
    )


def test_chat_refuses_a_classifier(tmp_path, capsys):
    base = tiny_base()
    config = REGISTRY.model_config(
        base.config.model_dump(mode="json") | {"head": {"name": "classifier"}, "tied_head": False}
    )
    save_run(tmp_path / "cls", RunConfig(model=config), GPT(config), config.tokenizer.build())
    assert main(["chat", str(tmp_path / "cls"), "--instruction", "hi"]) == 2
    assert "cannot answer" in capsys.readouterr().err


def test_the_books_chapter_7_config_by_name(base_dir, shared_data, tmp_path, capsys):
    """configs/book/ch07-instruct.toml, shortened with --set: the book's file-order split and drop_last."""
    entries = json.loads(shared_data("instruction-data.json").read_text(encoding="utf-8"))[:20]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    out = tmp_path / "tuned"
    shorter = ["train.epochs=1", "train.eval_batches=1", "data.max_length=200", "test.max_new_tokens=1"]
    argv = ["finetune-instruct", base_dir, "--config", "book/ch07-instruct", "--data", data, "--out", out]
    assert main([str(a) for a in argv] + [arg for s in shorter for arg in ("--set", s)]) == 0
    assert "train 17, validation 1, test 2" in capsys.readouterr().out  # as the test above, by the book's rule
    assert read_metrics(out)[0]["step"] == 2  # 17 entries in batches of 8: the last one dropped
    saved = json.loads((out / "config.json").read_text())["finetune"]["config"]
    assert saved["train"]["betas"] == [0.9, 0.999] and saved["train"]["weight_decay_scope"] == "all"
