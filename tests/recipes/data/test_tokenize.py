"""gptzoo tokenize: ids and pieces side by side, checked against the book's chapter 2 outputs."""

import os
from pathlib import Path

import pytest

from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.runs.folder import save_run

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
BOOK_TEXT = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
# The book's section 2.3: SimpleTokenizerV1 built on the-verdict encodes BOOK_TEXT to these ids.
BOOK_IDS = [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]


def rows(out: str) -> list[tuple[int, int, str]]:
    """(position, id, piece) from the printed table."""
    table = out.split("  piece\n", 1)[1].split("\ndecodes back to:")[0]
    parsed = []
    for line in table.splitlines():
        position, token, piece = line.split(maxsplit=2)
        parsed.append((int(position), int(token), piece))
    return parsed


def test_word_tokenizer_fitted_from_a_config_gives_the_books_ids(tmp_path, shared_data, capsys):
    config = tmp_path / "word.toml"
    config.write_text(
        f'[model]\ncontext_length = 8\nd_model = 8\nn_layers = 1\nn_heads = 1\ntokenizer = {{ name = "word" }}\n'
        f'[data]\nsource = "{shared_data("the-verdict.txt")}"\n',
        encoding="utf-8",
    )
    assert main(["tokenize", str(config), "--text", BOOK_TEXT + " Hello"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "'word' tokenizer, 1,132 ids, fitted on"
    )  # the book's vocabulary: 1,130 words + 2 special tokens
    table = rows(out)
    assert [token for _, token, _ in table] == BOOK_IDS + [1131]  # "Hello" is not in the-verdict: <|unk|>
    assert table[1] == (1, 56, "'It'") and table[-1] == (21, 1131, "'<|unk|>'")
    # The book's decode of the same ids.
    assert out.endswith(
        "decodes back to: '\" It\\' s the last he painted, you know,\" Mrs. Gisburn said with pardonable pride. <|unk|>'\n"
    )


def test_tiktoken_gives_the_books_gpt2_ids_and_marks_split_characters(capsys):
    if not Path(os.environ.get("TIKTOKEN_CACHE_DIR", "/nonexistent")).is_dir():
        pytest.skip("tiktoken's files are absent: set TIKTOKEN_CACHE_DIR (tests use ../shared/tiktoken)")
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
    assert main(["tokenize", str(CONFIGS / "gpt2-124m.toml"), "--text", text + " 😀"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    # The book's section 2.5, tiktoken's "gpt2" encoding:
    book = [
        15496,
        11,
        466,
        345,
        588,
        8887,
        30,
        220,
        50256,
        554,
        262,
        4252,
        18250,
        8812,
        2114,
        286,
        617,
        34680,
        27271,
        13,
    ]
    assert [token for _, token, _ in table[:20]] == book
    assert table[2] == (2, 466, "' do'") and table[8] == (8, 50256, "'<|endoftext|>'")
    assert all(piece.endswith("(part of a character)") for _, _, piece in table[20:])  # the emoji's 4 bytes in 2 tokens
    assert out.endswith(f"decodes back to: {text + ' 😀'!r}\n")


def test_a_run_folder_uses_its_saved_tokenizer(tmp_path, registry, capsys):
    config = RunConfig.model_validate(
        {"model": {"context_length": 8, "d_model": 8, "n_layers": 1, "n_heads": 1, "tokenizer": "char"}},
        context={"registry": registry},
    )
    tokenizer = config.model.tokenizer.build()
    tokenizer.fit("cab")  # vocabulary a, b, c, then <|endoftext|>, <|unk|>
    config = config.model_copy(update={"model": config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})})
    from gptzoo.core import GPT

    save_run(tmp_path / "run", config, GPT(config.model), tokenizer)
    assert main(["tokenize", str(tmp_path / "run"), "--text", "bad"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"'char' tokenizer, 5 ids, saved in {tmp_path / 'run'}")
    assert rows(out) == [(0, 1, "'b'"), (1, 0, "'a'"), (2, 4, "'<|unk|>'")]


def test_a_missing_config_is_a_clear_error(tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "nope.toml"), "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert "nope.toml: no such config file" in err and "Traceback" not in err
