"""Every command's bad values and damaged inputs: one line naming the value, field or file, exit
code 2, no traceback, nothing written or overwritten (issue 11).

BAD_VALUES is the table: for each command, one row per kind of bad value it takes (a missing
path, a folder or file of the wrong type, text that is not UTF-8, malformed content, a number out
of range or not finite, an unknown choice, a malformed --set, a component no plugin provides, a
folder that is not a run). Rows are written with placeholders filled in per test (see ``places``).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from gptzoo.recipes import cli
from gptzoo.recipes.cli import COMMANDS, main
from gptzoo.recipes.runs._lock import LOCK

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "runs-v0.1"
RUN = FIXTURES / "gpt2-pre"  # a small language-model run folder (saved by gptzoo 0.1)


def error_of(capsys, argv):
    """The one error line of a command that must fail with exit code 2 and no traceback."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own refusals (unknown choice, not a number) exit from parse_args
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return err


# Options that make a command reach the value under test; a run folder's readers with their
# other required options.
SMS = ["--data", "{sms}", "--out", "{tmp}/out"]
INSTRUCTIONS = ["--data", "{instructions}", "--out", "{tmp}/out"]
READERS = {
    "eval": ["--data", "builtin:pydoc"],
    "evaluate": ["--tasks", "x"],
    "generate": ["--prompt", "x"],
    "classify": ["--text", "x"],
    "chat": ["--instruction", "x"],
    "export-hf": ["--out", "{tmp}/out"],
    "finetune-classifier": SMS,
    "finetune-instruct": INSTRUCTIONS,
}
NOT_A_RUN = [
    ("missing path", "{tmp}/nowhere", "{tmp}/nowhere: no such run folder"),
    ("folder that is not a run", "{empty}", "{empty}/config.json: missing; is {empty} a gptzoo run folder?"),
    ("file for a folder", "{file}", "{file}: a file, not a run folder"),
]
# Commands that write a new folder at --out: (the arguments before --out, the message for an --out
# that holds something: a run for train, which may continue an empty or crashed folder, else any file).
WRITERS = {
    "train": (["{config}"], "{old_run}: already holds a run; pass --resume"),
    "finetune-classifier": (["{run}", "--data", "{sms}"], "--out {full} exists and is not an empty folder"),
    "finetune-instruct": (["{run}", "--data", "{instructions}"], "--out {full} exists and is not an empty folder"),
    "ablate": (["{sweep}"], "{full} exists and is not an ablation folder (no sweep.json)"),
    "import-gpt2": (["{run}"], "{full} already exists and is not empty; choose a new folder (nothing was written)"),
    "import-hf": (["{run}"], "{full} already exists and is not empty; choose a new folder (nothing was written)"),
    "import-book": (["{book}"], "{full} already exists and is not empty; choose a new folder (nothing was written)"),
    "export-hf": (["{run}"], "{full} already exists and is not empty; choose a new folder (nothing was written)"),
    "new-plugin": (["scalenorm", "--family", "norm"], "{full}: exists and is not an empty folder; choose a new --out"),
}

BAD_VALUES = [
    # (command, kind of bad value, argv after the command, message)
    ("plugins", "unknown option", ["--bogus"], "unrecognized arguments: --bogus"),
    ("presets", "no name matches", ["qwen9"], "no preset name contains 'qwen9'; `gptzoo presets` lists them all"),
    # -- configs: describe, tokenize, gradients, train
    ("describe", "missing path", ["{tmp}/nope.toml"], "{tmp}/nope.toml: no such config file"),
    (
        "describe",
        "unknown preset",
        ["qwen"],
        "qwen: no such config file, nor a shipped preset; closest presets: hf/qwen3",
    ),
    ("describe", "folder that is not a run", ["{empty}"], "{empty}: a folder without config.json, so not a run folder"),
    ("describe", "not UTF-8", ["{latin1_toml}"], "{latin1_toml}: not UTF-8 text (byte 13); save the config as UTF-8"),
    ("describe", "malformed content", ["{bad_toml}"], "{bad_toml}: not valid TOML: Expected '=' after a key"),
    ("describe", "malformed content", ["{bad_json}"], "{bad_json}: not valid JSON: Expecting value"),
    (
        "describe",
        "malformed --set",
        ["{config}", "--set", "model.d_model"],
        "override 'model.d_model': write it as key=value",
    ),
    (
        "describe",
        "unknown field",
        ["{config}", "--set", "model.widht=3"],
        "model.widht: unknown field; known fields: vocab_size",
    ),
    (
        "describe",
        "negative int",
        ["{config}", "--set", "model.d_model=-1"],
        "model.d_model: Input should be greater than 0",
    ),
    (
        "describe",
        "nan float",
        ["{config}", "--set", "model.dropout=nan"],
        "model.dropout: Input should be a finite number",
    ),
    ("describe", "unknown plugin name", ["{config}", "--set", "model.norm.name=scalenorm"], "unknown norm 'scalenorm'"),
    ("tokenize", "missing path", ["{tmp}/nope.toml", "--text", "hi"], "{tmp}/nope.toml: no such config file"),
    ("tokenize", "folder that is not a run", ["{empty}", "--text", "hi"], "{empty}: a folder without config.json"),
    ("tokenize", "not UTF-8", ["{latin1_toml}", "--text", "hi"], "{latin1_toml}: not UTF-8 text (byte 13)"),
    ("tokenize", "malformed content", ["{bad_toml}", "--text", "hi"], "{bad_toml}: not valid TOML"),
    ("tokenize", "malformed --set", ["{config}", "--text", "hi", "--set", "x"], "override 'x': write it as key=value"),
    (
        "tokenize",
        "unknown plugin name",
        ["{config}", "--text", "hi", "--set", "model.tokenizer.name=nope"],
        "unknown tokenizer 'nope'",
    ),
    ("gradients", "missing path", ["{tmp}/nope.toml", "--text", "hi"], "{tmp}/nope.toml: no such config file"),
    ("gradients", "folder that is not a run", ["{empty}", "--text", "hi"], "{empty}: a folder without config.json"),
    ("gradients", "not UTF-8", ["{latin1_toml}", "--text", "hi"], "{latin1_toml}: not UTF-8 text (byte 13)"),
    ("gradients", "text too short", ["{config}", "--text", "h"], "--text 'h' is 1 token(s); give at least two"),
    (
        "gradients",
        "malformed --set",
        ["{config}", "--text", "hi", "--compare", "nonsense"],
        "override 'nonsense': write it as key=value",
    ),
    (
        "gradients",
        "unknown plugin name",
        ["{config}", "--text", "hi", "--compare", "model.norm.name=scalenorm"],
        "unknown norm 'scalenorm'",
    ),
    (
        "gradients",
        "folder for a file",
        ["{config}", "--text", "hello", "--plot", "{empty}"],
        "--plot {empty}: give a file name with its format's suffix",
    ),
    (
        "gradients",
        "path under a file",
        ["{config}", "--text", "hello", "--plot", "{file}/x.png"],
        "--plot {file}/x.png lies under {file}, which is a file",
    ),
    ("train", "missing path", ["{tmp}/nope.toml", "--out", "{tmp}/out"], "{tmp}/nope.toml: no such config file"),
    (
        "train",
        "unknown preset",
        ["tiny2", "--out", "{tmp}/out"],
        "tiny2: no such config file, nor a shipped preset; closest presets: tiny;",
    ),
    (
        "train",
        "not UTF-8",
        ["{latin1_toml}", "--out", "{tmp}/out"],
        "{latin1_toml}: not UTF-8 text (byte 13); save the config as UTF-8",
    ),
    ("train", "malformed content", ["{bad_toml}", "--out", "{tmp}/out"], "{bad_toml}: not valid TOML"),
    (
        "train",
        "zero int",
        ["{config}", "--out", "{tmp}/out", "--nproc", "0"],
        "--nproc 0: give a number of processes of at least 1",
    ),
    (
        "train",
        "not a number",
        ["{config}", "--out", "{tmp}/out", "--nproc", "two"],
        "argument --nproc: invalid int value: 'two'",
    ),
    (
        "train",
        "zero int",
        ["{config}", "--out", "{tmp}/out", "--set", "train.max_steps=0"],
        "train.max_steps: Input should be greater than 0",
    ),
    (
        "train",
        "inf float",
        ["{config}", "--out", "{tmp}/out", "--set", "train.lr=inf"],
        "train.lr: Input should be a finite number",
    ),
    (
        "train",
        "negative float",
        ["{config}", "--out", "{tmp}/out", "--set", "train.lr=-1"],
        "train.lr: Input should be greater than 0",
    ),
    (
        "train",
        "malformed --set",
        ["{config}", "--out", "{tmp}/out", "--set", "nonsense"],
        "override 'nonsense': write it as key=value",
    ),
    (
        "train",
        "unknown plugin name",
        ["{config}", "--out", "{tmp}/out", "--set", "model.norm.name=scalenorm"],
        "unknown norm 'scalenorm'",
    ),
    (
        "train",
        "unknown device",
        ["{config}", "--out", "{tmp}/out", "--set", "train.device=bogus"],
        "train.device 'bogus':",
    ),
    (
        "train",
        "missing data",
        ["{config}", "--out", "{tmp}/out", "--set", "data.source='{tmp}/nope.txt'"],
        "{tmp}/nope.txt: no such file or folder",
    ),
    (
        "train",
        "data not UTF-8",
        ["{config}", "--out", "{tmp}/out", "--set", "data.source='{latin1}'"],
        "{latin1}: not UTF-8 text",
    ),
    (
        "train",
        "folder without data",
        ["{config}", "--out", "{tmp}/out", "--set", "data.source='{empty}'"],
        "{empty}: the folder holds no .txt, .jsonl or .parquet files",
    ),
    (
        "train",
        "run folder without a checkpoint",
        ["{config}", "--out", "{empty}", "--resume"],
        "{empty}: holds no committed checkpoint to resume",
    ),
    (
        "train",
        "missing path",
        ["{config}", "--out", "{tmp}/nowhere", "--resume"],
        "{tmp}/nowhere: no such run folder to resume",
    ),
    # -- a trained run: eval, evaluate, generate, chat, classify
    ("evaluate", "no tasks", ["{run}", "--tasks", ","], "--tasks ',': name at least one task"),
    ("evaluate", "zero int", ["{run}", "--tasks", "x", "--limit", "0"], "--limit 0: give at least 1"),
    ("evaluate", "negative int", ["{run}", "--tasks", "x", "--num-fewshot", "-1"], "--num-fewshot -1: give 0 or more"),
    ("evaluate", "zero int", ["{run}", "--tasks", "x", "--batch-size", "0"], "--batch-size 0: give at least 1"),
    ("eval", "zero int", ["{run}", "--batch-size", "0"], "--batch-size 0: give at least 1"),
    ("eval", "negative int", ["{run}", "--batch-size", "-1"], "--batch-size -1: give at least 1"),
    ("eval", "zero int", ["{run}", "--context", "0"], "--context 0: give lengths of 1 token or more"),
    ("eval", "unknown device", ["{run}", "--device", "bogus"], "--device 'bogus':"),
    (
        "eval",
        "flags that do not combine",
        ["{run}", "--context", "8", "--weight-storage", "int8"],
        "--weight-storage int8 scores the run's own context; leave it out with --context",
    ),
    ("eval", "missing data", ["{run}", "--data", "{tmp}/nope.txt"], "{tmp}/nope.txt: no such file or folder"),
    ("eval", "data not UTF-8", ["{run}", "--data", "{latin1}"], "{latin1}: not UTF-8 text"),
    (
        "eval",
        "folder without data",
        ["{run}", "--data", "{empty}"],
        "{empty}: the folder holds no .txt, .jsonl or .parquet files",
    ),
    (
        "eval",
        "unknown built-in corpus",
        ["{run}", "--data", "builtin:nope"],
        "data.source 'builtin:nope': unknown built-in corpus",
    ),
    (
        "generate",
        "nan float",
        ["{run}", "--prompt", "I had", "--temperature", "nan"],
        "--temperature nan: must be 0 (greedy) or a positive number",
    ),
    (
        "generate",
        "inf float",
        ["{run}", "--prompt", "I had", "--temperature", "inf"],
        "--temperature inf: must be 0 (greedy) or a positive number",
    ),
    (
        "generate",
        "negative float",
        ["{run}", "--prompt", "I had", "--temperature", "-1"],
        "--temperature -1.0: must be 0 (greedy) or a positive number",
    ),
    (
        "generate",
        "zero int",
        ["{run}", "--prompt", "I had", "--max-new-tokens", "0"],
        "--max-new-tokens 0: give at least 1",
    ),
    ("generate", "zero int", ["{run}", "--prompt", "I had", "--top-k", "0"], "--top-k 0: must be at least 1"),
    ("generate", "nan float", ["{run}", "--prompt", "I had", "--top-p", "nan"], "--top-p nan: must be in (0, 1]"),
    (
        "generate",
        "float out of range",
        ["{run}", "--prompt", "I had", "--top-p", "1.5"],
        "--top-p 1.5: must be in (0, 1]",
    ),
    (
        "generate",
        "not a number",
        ["{run}", "--prompt", "I had", "--top-p", "most"],
        "argument --top-p: invalid float value: 'most'",
    ),
    (
        "generate",
        "absurd int",
        ["{run}", "--prompt", "I had", "--no-stream", "--max-new-tokens", str(10**12)],
        f"--max-new-tokens {10**12}: 1 text(s) of",
    ),
    (
        "generate",
        "int beyond 64 bits",
        ["{run}", "--prompt", "I had", "--no-stream", "--max-new-tokens", str(10**19)],
        f"--max-new-tokens {10**19}: 1 text(s) of",
    ),
    (
        "generate",
        "text too long",
        ["{run}", "--prompt", "x" * 1000],
        "the prompt is more than 16 tokens but the model's context holds 16 (context_length in {run}/config.json)",
    ),
    (
        "generate",
        "option that does not apply",
        ["{run}", "--prompt", "I had", "--speculative"],
        "--speculative: {run}: it has no multi-token prediction module (model.mtp) to draft with",
    ),
    (
        "generate",
        "absurd int",
        ["{mtp_run}", "--prompt", "I had", "--speculative", "--max-new-tokens", str(10**12)],
        f"--max-new-tokens {10**12}: 1 text(s) of",
    ),
    (
        "generate",
        "options that conflict",
        ["{run}", "--prompt", "I had", "--speculative", "--temperature", "0.7"],
        "--speculative decodes greedily: drop --temperature, --top-k and --top-p",
    ),
    (
        "generate",
        "options that conflict",
        ["{run}", "--prompt", "I had", "--speculative", "--compile"],
        "--speculative drafts and verifies through the eager cache: drop --compile",
    ),
    (
        "generate",
        "option that does not apply",
        ["{run}", "--prompt", "I had", "--compile", "--max-new-tokens", "40"],
        "past the context of 16 that the model crops to; decode without --compile",
    ),
    (
        "generate",
        "int beyond 64 bits",
        ["{run}", "--prompt", "I had", "--seed", str(2**64)],
        f"--seed {2**64}: give a seed of at most 64 bits (0 to {2**64 - 1})",
    ),
    (
        "eval",
        "run of another kind",
        ["{classifier}", "--data", "builtin:pydoc"],
        "{classifier}: its 'classifier' head does not predict tokens, so it has no language-model loss to evaluate",
    ),
    (
        "describe",
        "nested too deeply",
        ["{deep_toml}"],
        "{deep_toml}: not a config: its tables or arrays nest too deeply to read",
    ),
    ("describe", "nested too deeply", ["{deep_json}"], "{deep_json}: its objects or arrays nest too deeply to read"),
    (
        "describe",
        "@FILE with a quote across lines",
        ["@{args_file}"],
        "@FILE line '--set \"model.d_model=': no closing quotation; a quoted value ends on the line it starts on",
    ),
    (
        "train",
        "int beyond 64 bits",
        ["{config}", "--out", "{tmp}/out", "--set", f"train.seed={2**64}"],
        f"train.seed: Input should be less than {2**64}",
    ),
    (
        "train",
        "negative int",
        ["{config}", "--out", "{tmp}/out", "--set", "data.seed=-1"],
        "data.seed: Input should be greater than or equal to 0",
    ),
    (
        "train",
        "int beyond 64 bits",
        ["{config}", "--out", "{tmp}/out", "--set", f"data.seed={2**64}"],
        f"data.seed: Input should be less than {2**64}",
    ),
    (
        "finetune-classifier",
        "int beyond 64 bits",
        ["{run}", *SMS, "--seed", str(2**64)],
        f"--seed {2**64}: Input should be less than {2**64}",
    ),
    (
        "finetune-classifier",
        "int beyond 32 bits",
        ["{run}", *SMS, "--split-order", "book", "--seed", str(2**32)],
        f"--seed {2**32}: data.split_order = 'book' draws with numpy's RandomState, which takes a seed from 0 to {2**32 - 1}",
    ),
    (
        "chat",
        "int beyond 64 bits",
        ["{run}", "--instruction", "Say hi.", "--seed", str(2**64)],
        f"--seed {2**64}: give a seed of at most 64 bits (0 to {2**64 - 1})",
    ),
    (
        "ablate",
        "int beyond 64 bits",
        ["{sweep_big_seed}", "--out", "{tmp}/out"],
        f"seeds.0: Input should be less than {2**64}",
    ),
    (
        "import-book",
        "checkpoint of another kind",
        ["{flat_book}", "--out", "{tmp}/out"],
        "{flat_book}: 'tok_emb.weight' has shape (4,), not (rows, emb_dim); not the book's GPTModel",
    ),
    (
        "chat",
        "text too long",
        ["{run}", "--instruction", "x" * 1000],
        "the prompt of the instruction is more than 16 tokens but the model's context holds 16",
    ),
    (
        "inspect",
        "text too long",
        ["{run}", "--prompt", "x" * 1000, "--out", "{tmp}/out"],
        "--prompt is more than 16 tokens but the model's context holds 16; shorten it",
    ),
    (
        "chat",
        "chat template that fails",
        ["{chat_run}", "--instruction", "Say hi."],
        "the checkpoint's chat template failed on this conversation (it says: roles must alternate)",
    ),
    (
        "chat",
        "negative int",
        ["{run}", "--instruction", "Say hi.", "--max-new-tokens", "-1"],
        "--max-new-tokens -1: give at least 1",
    ),
    (
        "chat",
        "negative float",
        ["{run}", "--instruction", "Say hi.", "--temperature", "-0.5"],
        "--temperature -0.5: must be 0 (greedy) or a positive number",
    ),
    (
        "chat",
        "nan float",
        ["{run}", "--instruction", "Say hi.", "--temperature", "nan"],
        "--temperature nan: must be 0 (greedy) or a positive number",
    ),
    ("chat", "option without its partner", ["{run}", "--input", "x"], "--input needs --instruction"),
    (
        "chat",
        "template option on a run without a template",
        ["{run}", "--instruction", "Say hi.", "--system", "Be kind."],
        "--system: {run} has no chat template (it answers in the Alpaca format of finetune-instruct)",
    ),
    (
        "chat",
        "template variable without a value",
        ["{chat_run}", "--instruction", "Say hi.", "--template-var", "enable_thinking"],
        "--template-var 'enable_thinking': write NAME=VALUE, e.g. enable_thinking=false",
    ),
    (
        "chat",
        "template variable gptzoo sets",
        ["{chat_run}", "--instruction", "Say hi.", "--template-var", "bos_token=x"],
        "template variable 'bos_token' is set by gptzoo itself; choose another name",
    ),
    (
        "chat",
        "instruction longer than the context",
        ["{run}", "--instruction", "Say hi."],
        "tokens but the model's context holds 16 (context_length in {run}/config.json); shorten it",
    ),
    (
        "classify",
        "run of another kind",
        ["{run}", "--text", "x"],
        "{run}: not a classifier run (no labels.json or no classifier head)",
    ),
    # -- fine-tuning
    (
        "finetune-classifier",
        "missing data",
        ["{run}", "--data", "{tmp}/nope.tsv", "--out", "{tmp}/out"],
        "{tmp}/nope.tsv: no such data file",
    ),
    (
        "finetune-classifier",
        "folder for a file",
        ["{run}", "--data", "{empty}", "--out", "{tmp}/out"],
        "{empty}: a folder, not a data file",
    ),
    (
        "finetune-classifier",
        "data not UTF-8",
        ["{run}", "--data", "{latin1}", "--out", "{tmp}/out"],
        "{latin1}: not UTF-8 text (byte 3); convert it to UTF-8",
    ),
    (
        "finetune-classifier",
        "malformed data",
        ["{run}", "--data", "{bad_toml}", "--out", "{tmp}/out"],
        "{bad_toml}, line 1: expected 'label<TAB>text'",
    ),
    ("finetune-classifier", "zero int", ["{run}", *SMS, "--epochs", "0"], "--epochs 0: give at least 1"),
    ("finetune-classifier", "negative int", ["{run}", *SMS, "--batch-size", "-1"], "--batch-size -1: give at least 1"),
    ("finetune-classifier", "zero int", ["{run}", *SMS, "--eval-batches", "0"], "--eval-batches 0: give at least 1"),
    (
        "finetune-classifier",
        "zero int",
        ["{run}", *SMS, "--train", "last-n", "--last-n", "0"],
        "--last-n 0: give at least 1",
    ),
    ("finetune-classifier", "zero int", ["{run}", *SMS, "--max-length", "1"], "--max-length 1: give at least 2 tokens"),
    ("finetune-classifier", "zero int", ["{run}", *SMS, "--lora-rank", "0"], "--lora-rank 0: give at least 1"),
    ("finetune-classifier", "nan float", ["{run}", *SMS, "--lr", "nan"], "--lr nan: give a positive learning rate"),
    ("finetune-classifier", "inf float", ["{run}", *SMS, "--lr", "inf"], "--lr inf: give a positive learning rate"),
    (
        "finetune-classifier",
        "negative float",
        ["{run}", *SMS, "--weight-decay", "-1"],
        "--weight-decay -1.0: give 0 or a positive number",
    ),
    (
        "finetune-classifier",
        "nan float",
        ["{run}", *SMS, "--grad-clip", "nan"],
        "--grad-clip nan: give 0 or a positive number",
    ),
    (
        "finetune-classifier",
        "nan float",
        ["{run}", *SMS, "--lora-rank", "2", "--lora-alpha", "nan"],
        "--lora-alpha nan: give a positive number",
    ),
    (
        "finetune-classifier",
        "negative float",
        ["{run}", *SMS, "--lora-rank", "2", "--lora-alpha", "-1"],
        "--lora-alpha -1.0: give a positive number",
    ),
    (
        "finetune-classifier",
        "malformed list",
        ["{run}", *SMS, "--betas", "0.9"],
        "--betas '0.9': give two numbers in [0, 1)",
    ),
    (
        "finetune-classifier",
        "nan float",
        ["{run}", *SMS, "--split", "0.5,nan,0.1"],
        "--split '0.5,nan,0.1': give three positive fractions",
    ),
    (
        "finetune-classifier",
        "unknown choice",
        ["{run}", *SMS, "--train", "bogus"],
        "argument --train: invalid choice: 'bogus'",
    ),
    (
        "finetune-classifier",
        "unknown choice",
        ["{run}", *SMS, "--lora-rank", "2", "--lora-targets", "bogus"],
        "--lora-targets: 'bogus' matches no linear layer",
    ),
    (
        "finetune-classifier",
        "option without its partner",
        ["{run}", *SMS, "--lora-alpha", "2"],
        "--lora-alpha needs --lora-rank",
    ),
    (
        "finetune-classifier",
        "option that does not apply",
        ["{run}", *SMS, "--text-column", "message"],
        "--text-column message: {sms} is read as label<TAB>text lines, which have no columns",
    ),
    (
        "finetune-classifier",
        "option that does not apply",
        ["{run}", "--data", "{csv}", "--out", "{tmp}/out", "--quoting", "csv"],
        "--quoting csv: applies to a label<TAB>text file; {csv} is read as CSV",
    ),
    ("finetune-classifier", "unknown device", ["{run}", *SMS, "--device", "bogus"], "--device 'bogus':"),
    (
        "finetune-classifier",
        "unknown field",
        ["{run}", *SMS, "--set", "train.lrr=1e-4"],
        "train.lrr: unknown field (did you mean 'lr'?)",
    ),
    (
        "finetune-classifier",
        "negative float",
        ["{run}", *SMS, "--set", "train.lr=-1"],
        "train.lr: give a positive learning rate",
    ),
    (
        "finetune-classifier",
        "unknown choice",
        ["{run}", *SMS, "--set", "data.split_order=random"],
        "data.split_order: Input should be 'shuffled' or 'book'",
    ),
    (
        "finetune-classifier",
        "missing config",
        ["{run}", *SMS, "--config", "{tmp}/nope.toml"],
        "{tmp}/nope.toml: no such config file",
    ),
    (
        "finetune-classifier",
        "malformed config",
        ["{run}", *SMS, "--config", "{bad_toml}"],
        "{bad_toml}: not valid TOML",
    ),
    (
        "finetune-classifier",
        "config that is not a fine-tuning's",
        ["{run}", *SMS, "--config", "{run}"],
        "config.json: not a fine-tuned run's config (it has no 'finetune' table)",
    ),
    (
        "finetune-classifier",
        "no data",
        ["{run}", "--out", "{tmp}/out"],
        "give the data file: --data PATH, or data.path",
    ),
    (
        "finetune-instruct",
        "missing data",
        ["{run}", "--data", "{tmp}/nope.json", "--out", "{tmp}/out"],
        "{tmp}/nope.json: no such data file",
    ),
    (
        "finetune-instruct",
        "folder for a file",
        ["{run}", "--data", "{empty}", "--out", "{tmp}/out"],
        "{empty}: a folder, not a data file",
    ),
    (
        "finetune-instruct",
        "data not UTF-8",
        ["{run}", "--data", "{latin1}", "--out", "{tmp}/out"],
        "{latin1}: not UTF-8 text (byte 3); convert it to UTF-8",
    ),
    (
        "finetune-instruct",
        "malformed data",
        ["{run}", "--data", "{bad_json}", "--out", "{tmp}/out"],
        "{bad_json}, line 2 column 1: not valid JSON",
    ),
    (
        "finetune-instruct",
        "malformed data",
        ["{run}", "--data", "{no_output_json}", "--out", "{tmp}/out"],
        "{no_output_json}, entry 0: missing field 'output'",
    ),
    (
        "finetune-instruct",
        "negative int",
        ["{run}", *INSTRUCTIONS, "--max-new-tokens", "-1"],
        "--max-new-tokens -1: give at least 1",
    ),
    (
        "finetune-instruct",
        "negative int",
        ["{run}", *INSTRUCTIONS, "--limit-test", "-1"],
        "--limit-test -1: give 0 or more test entries",
    ),
    ("finetune-instruct", "zero int", ["{run}", *INSTRUCTIONS, "--epochs", "0"], "--epochs 0: give at least 1"),
    (
        "finetune-instruct",
        "nothing to resume",
        ["{run}", *INSTRUCTIONS, "--resume"],
        "--out {tmp}/out: holds no unfinished fine-tuning to resume (no finetune_state.pt); fine-tune without --resume",
    ),
    (
        "finetune-classifier",
        "nothing to resume",
        ["{run}", *SMS, "--resume"],
        "--out {tmp}/out: holds no unfinished fine-tuning to resume (no finetune_state.pt); fine-tune without --resume",
    ),
    (
        "finetune-instruct",
        "context shorter than every prompt",
        ["{run}", *INSTRUCTIONS],
        "every training prompt is longer than the 16 tokens a sequence may hold (the context of {run}): the shortest is",
    ),
    (
        "finetune-instruct",
        "inf float",
        ["{run}", *INSTRUCTIONS, "--lr", "inf"],
        "--lr inf: give a positive learning rate",
    ),
    (
        "finetune-instruct",
        "unknown field",
        ["{run}", *INSTRUCTIONS, "--set", "test.limt=1"],
        "test.limt: unknown field (did you mean 'limit'?)",
    ),
    (
        "finetune-instruct",
        "zero int",
        ["{run}", *INSTRUCTIONS, "--set", "lora.rank=0"],
        "lora.rank: give at least 1",
    ),
    (
        "finetune-instruct",
        "option without its partner",
        ["{run}", *INSTRUCTIONS, "--set", "lora.alpha=2"],
        "lora.alpha needs --lora-rank",
    ),
    (
        "finetune-instruct",
        "unknown device",
        ["{run}", *INSTRUCTIONS, "--limit-test", "1", "--epochs", "1", "--device", "bogus"],
        "--device 'bogus':",
    ),
    # -- sweeps
    ("ablate", "missing path", ["{tmp}/nope.toml", "--out", "{tmp}/out"], "{tmp}/nope.toml: no such config file"),
    (
        "ablate",
        "unknown preset",
        ["ablations/rop", "--out", "{tmp}/out"],
        "ablations/rop: no such config file, nor a shipped preset; closest presets: ablations/rope",
    ),
    ("ablate", "folder for a file", ["{empty}", "--out", "{tmp}/out"], "{empty}: a folder, not a TOML file"),
    ("ablate", "not UTF-8", ["{latin1_toml}", "--out", "{tmp}/out"], "{latin1_toml}: not UTF-8 text (byte 13)"),
    ("ablate", "malformed content", ["{bad_toml}", "--out", "{tmp}/out"], "{bad_toml}: not valid TOML"),
    (
        "ablate",
        "unknown plugin name",
        ["{sweep_unknown}", "--out", "{tmp}/out"],
        '{sweep_unknown}: [axes] model.norm.name = "scalenorm": invalid config',
    ),
    (
        "ablate",
        "missing path",
        ["{sweep_no_base}", "--out", "{tmp}/out"],
        "{sweep_no_base}: base = 'nowhere.toml' not found",
    ),
    (
        "ablate",
        "folder without a config for a base",
        ["{sweep_folder_base}", "--out", "{tmp}/out"],
        "base = '{empty}' is a folder ({empty}) without a config.json; give a TOML config or a run folder",
    ),
    ("ablate", "zero int", ["{sweep}", "--out", "{tmp}/out", "--workers", "0"], "--workers 0: give 1 or more"),
    (
        "ablate",
        "option without its partner",
        ["{sweep}", "--out", "{tmp}/out", "--address", "127.0.0.1:6379"],
        "--address 127.0.0.1:6379: only with --executor ray",
    ),
    (
        "ablate",
        "option without its partner",
        ["{sweep}", "--out", "{tmp}/out", "--retries", "2"],
        "--retries 2: only with --executor ray",
    ),
    (
        "ablate",
        "negative int",
        ["{sweep}", "--out", "{tmp}/out", "--executor", "ray", "--retries", "-1"],
        "--retries -1: give 0 or more",
    ),
    (
        "ablate",
        "optional extra not installed",
        ["{sweep}", "--out", "{tmp}/out", "--executor", "ray"],
        "--executor ray needs Ray: pip install 'gptzoo[ray]'",
    ),
    # -- imports and exports
    (
        "import-gpt2",
        "missing path",
        ["{tmp}/nope", "--out", "{tmp}/out"],
        "{tmp}/nope: no such folder, and not a GPT-2 size name",
    ),
    (
        "import-gpt2",
        "file for a folder",
        ["{file}", "--out", "{tmp}/out"],
        "{file}: a file, not a folder; give the folder holding config.json and model.safetensors",
    ),
    (
        "import-gpt2",
        "folder of another kind",
        ["{empty}", "--out", "{tmp}/out"],
        "{empty}: missing config.json and model.safetensors",
    ),
    (
        "import-gpt2",
        "checkpoint of another kind",
        ["{run}", "--out", "{tmp}/out"],
        "{run}/config.json: model_type is None, not 'gpt2'",
    ),
    (
        "import-gpt2",
        "unknown choice",
        ["{run}", "--out", "{tmp}/out", "--attention", "bogus"],
        "argument --attention: invalid choice: 'bogus'",
    ),
    (
        "import-hf",
        "missing path",
        ["{tmp}/nope", "--out", "{tmp}/out"],
        "{tmp}/nope: no such folder, and not a Hub id (ORG/NAME[@REVISION]); give a folder in the Hugging Face layout",
    ),
    (
        "import-hf",
        "file for a folder",
        ["{file}", "--out", "{tmp}/out"],
        "{file}: a file, not a folder; give a folder in the Hugging Face layout",
    ),
    (
        "import-hf",
        "neither a folder nor a Hub id",
        ["no-org/bad..name", "--out", "{tmp}/out"],
        "no-org/bad..name: no such folder, and not a Hub id (ORG/NAME[@REVISION])",
    ),
    ("import-hf", "folder of another kind", ["{empty}", "--out", "{tmp}/out"], "{empty}: missing config.json"),
    (
        "import-hf",
        "checkpoint of another kind",
        ["{run}", "--out", "{tmp}/out"],
        "{run}/config.json: model_type = null is not a family gptzoo imports",
    ),
    (
        "import-hf",
        "unknown choice",
        ["{run}", "--out", "{tmp}/out", "--dtype", "float16"],
        "argument --dtype: invalid choice: 'float16'",
    ),
    ("import-book", "missing path", ["{tmp}/nope.pth", "--out", "{tmp}/out"], "{tmp}/nope.pth: no such file"),
    ("import-book", "folder for a file", ["{empty}", "--out", "{tmp}/out"], "{empty}: a folder, not a file"),
    (
        "import-book",
        "malformed content",
        ["{file}", "--out", "{tmp}/out"],
        "{file}: not a torch checkpoint torch.load(weights_only=True) can read",
    ),
    (
        "import-book",
        "checkpoint of another kind",
        ["{run}/train_state.pt", "--out", "{tmp}/out"],
        "{run}/train_state.pt: not a state dict (a dict of tensors)",
    ),
    ("import-book", "zero int", ["{book}", "--out", "{tmp}/out", "--n-heads", "0"], "--n-heads 0: give at least 1"),
    (
        "import-book",
        "nan float",
        ["{book}", "--out", "{tmp}/out", "--dropout", "nan"],
        "--dropout nan: give a probability in [0, 1)",
    ),
    (
        "import-book",
        "float out of range",
        ["{book}", "--out", "{tmp}/out", "--dropout", "1.5"],
        "--dropout 1.5: give a probability in [0, 1)",
    ),
    (
        "import-book",
        "unknown choice",
        ["{book}", "--out", "{tmp}/out", "--attention", "bogus"],
        "argument --attention: invalid choice: 'bogus'",
    ),
    (
        "export-hf",
        "zero float",
        ["{run}", "--out", "{tmp}/out", "--max-shard-gb", "0"],
        "--max-shard-gb 0.0: give a positive size in GiB",
    ),
    (
        "export-hf",
        "nan float",
        ["{run}", "--out", "{tmp}/out", "--max-shard-gb", "nan"],
        "--max-shard-gb nan: give a positive size in GiB",
    ),
    (
        "export-hf",
        "negative float",
        ["{run}", "--out", "{tmp}/out", "--max-shard-gb", "-1"],
        "--max-shard-gb -1.0: give a positive size in GiB",
    ),
    (
        "export-hf",
        "run of another kind",
        ["{config_dir}", "--out", "{tmp}/out"],
        "{config_dir}/config.json: cannot export: no Hugging Face family has this assembly; as gpt2: qkv_bias = false",
    ),
    # -- inspect: a run or a config, a prompt, an --out folder
    (
        "inspect",
        "missing path",
        ["{tmp}/nowhere", "--prompt", "x", "--out", "{tmp}/out"],
        "{tmp}/nowhere: no such run folder or config file",
    ),
    (
        "inspect",
        "folder that is not a run",
        ["{empty}", "--prompt", "x", "--out", "{tmp}/out"],
        "{empty}/config.json: missing; is {empty} a gptzoo run folder?",
    ),
    (
        "inspect",
        "malformed content",
        ["{bad_toml}", "--prompt", "x", "--out", "{tmp}/out"],
        "{bad_toml}: not valid TOML",
    ),
    (
        "inspect",
        "malformed --set",
        ["{config}", "--prompt", "x", "--out", "{tmp}/out", "--set", "x"],
        "override 'x': write it as key=value",
    ),
    (
        "inspect",
        "--set on a run",
        ["{run}", "--prompt", "x", "--out", "{tmp}/out", "--set", "model.d_model=8"],
        "--set changes a config, not a trained run",
    ),
    ("inspect", "empty text", ["{run}", "--prompt", "", "--out", "{tmp}/out"], "--prompt is empty; give some text"),
    (
        "inspect",
        "text too long",
        ["{run}", "--prompt", "x" * 17, "--out", "{tmp}/out"],
        "--prompt is 17 tokens but the model's context holds 16; shorten it",
    ),
    (
        "inspect",
        "zero int",
        ["{run}", "--prompt", "x", "--out", "{tmp}/out", "--top-k", "0"],
        "--top-k 0: must be at least 1",
    ),
    (
        "inspect",
        "negative int",
        ["{run}", "--prompt", "x", "--out", "{tmp}/out", "--top-k", "-3"],
        "--top-k -3: must be at least 1",
    ),
    (
        "inspect",
        "--out that is a file",
        ["{run}", "--prompt", "x", "--out", "{file}"],
        "--out {file} is a file, not a folder; choose another --out",
    ),
    (
        "inspect",
        "--out under a file",
        ["{run}", "--prompt", "x", "--out", "{file}/seen"],
        "--out {file}/seen lies under {file}, which is a file, not a folder; choose another --out",
    ),
    (
        "new-plugin",
        "unknown choice",
        ["scalenorm", "--family", "bogus", "--out", "{tmp}/out"],
        "argument --family: invalid choice: 'bogus'",
    ),
    (
        "new-plugin",
        "malformed name",
        ["1x", "--family", "norm", "--out", "{tmp}/out"],
        "plugin name '1x': use lower-case letters, digits and underscores",
    ),
    (
        "new-plugin",
        "name taken",
        ["layernorm", "--family", "norm", "--out", "{tmp}/out"],
        "an installed plugin already provides the norm 'layernorm'",
    ),
]
BAD_VALUES += [
    (command, kind, [folder, *options], message)
    for command, options in READERS.items()
    for kind, folder, message in NOT_A_RUN
]
BAD_VALUES += [
    (command, kind, [*before, "--out", out], message)
    for command, (before, held) in WRITERS.items()
    for kind, out, message in [
        ("--out that is a file", "{file}", "--out {file} is a file, not a folder; choose another --out"),
        (
            "--out under a file",
            "{file}/run",
            "--out {file}/run lies under {file}, which is a file, not a folder; choose another --out",
        ),
        ("--out that holds something", "{old_run}" if command == "train" else "{full}", held),
    ]
]


@pytest.fixture
def places(tmp_path, shared_data):
    """The files and folders the rows name, in a fresh folder."""
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\tham\n".encode("latin-1"))
    (tmp_path / "latin1.toml").write_bytes(b"[model]\n# caf\xe9\ncontext_length = 16\n")
    (tmp_path / "bad.toml").write_text("not toml [[[\n")
    (tmp_path / "bad.json").write_text('{"x":\n')
    (tmp_path / "sms.csv").write_text("label,text\nham,hi\nspam,win\n")
    (tmp_path / "no_output.json").write_text('[{"instruction": "Say hi.", "input": ""}]')
    (tmp_path / "tiny.json").write_text((RUN / "config.json").read_text())
    shutil.copytree(RUN, tmp_path / "old_run")
    (tmp_path / "config_dir").mkdir()  # a run whose assembly (no qkv bias) no Hugging Face family has
    config = json.loads((RUN / "config.json").read_text())
    config["model"]["qkv_bias"] = False
    (tmp_path / "config_dir" / "config.json").write_text(json.dumps(config))
    base = Path(__file__).resolve().parents[3] / "configs" / "tiny.toml"
    axes = '[axes]\n"model.norm.name" = ["layernorm", "rmsnorm"]\n'
    (tmp_path / "sweep.toml").write_text(f'base = "{base}"\n{axes}')
    (tmp_path / "sweep_unknown.toml").write_text(
        f'base = "{base}"\n[axes]\n"model.norm.name" = ["layernorm", "scalenorm"]\n'
    )
    (tmp_path / "sweep_no_base.toml").write_text(f'base = "nowhere.toml"\n{axes}')
    (tmp_path / "sweep_big_seed.toml").write_text(f'base = "{base}"\nseeds = [{2**64}]\n{axes}')
    (tmp_path / "sweep_folder_base.toml").write_text(f'base = "{tmp_path / "empty"}"\n{axes}')
    import torch

    torch.save({"tok_emb.weight": torch.zeros(4, 8)}, tmp_path / "model.pth")
    flat = {"tok_emb.weight": torch.zeros(4), "pos_emb.weight": torch.zeros(4, 8), "out_head.weight": torch.zeros(4, 8)}
    torch.save(flat, tmp_path / "flat.pth")
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "args.txt").write_text(f'{tmp_path / "tiny.json"}\n--set "model.d_model=\n8"\n')
    from gptzoo.core import GPT
    from gptzoo.recipes.config.schema import RunConfig
    from gptzoo.recipes.runs.folder import build_tokenizer, save_run
    from gptzoo.registry import default_registry

    classifier = json.loads((RUN / "config.json").read_text())["model"]
    classifier |= {"head": {"name": "classifier"}, "tied_head": False, "tokenizer": {"name": "byte"}, "vocab_size": 257}
    classifier = default_registry().model_config(classifier)
    save_run(tmp_path / "classifier", RunConfig(model=classifier), GPT(classifier), classifier.tokenizer.build())
    drafting = json.loads((RUN / "config.json").read_text())["model"] | {"mtp": {"name": "sequential"}}
    drafting = default_registry().model_config(drafting)
    tokenizer = build_tokenizer(RunConfig(model=drafting), RUN)
    save_run(tmp_path / "mtp_run", RunConfig(model=drafting), GPT(drafting), tokenizer)
    return {
        "tmp": tmp_path,
        "run": RUN,
        "config": tmp_path / "tiny.json",
        "config_dir": tmp_path / "config_dir",
        "old_run": tmp_path / "old_run",
        "file": tmp_path / "file.txt",
        "empty": tmp_path / "empty",
        "full": tmp_path / "full",
        "latin1": tmp_path / "latin1.txt",
        "latin1_toml": tmp_path / "latin1.toml",
        "bad_toml": tmp_path / "bad.toml",
        "bad_json": tmp_path / "bad.json",
        "no_output_json": tmp_path / "no_output.json",
        "book": tmp_path / "model.pth",
        "flat_book": tmp_path / "flat.pth",
        "deep_toml": tmp_path / "deep.toml",
        "deep_json": tmp_path / "deep.json",
        "args_file": tmp_path / "args.txt",
        "classifier": tmp_path / "classifier",
        "mtp_run": tmp_path / "mtp_run",
        "csv": tmp_path / "sms.csv",
        "sweep": tmp_path / "sweep.toml",
        "sweep_unknown": tmp_path / "sweep_unknown.toml",
        "sweep_no_base": tmp_path / "sweep_no_base.toml",
        "sweep_big_seed": tmp_path / "sweep_big_seed.toml",
        "sweep_folder_base": tmp_path / "sweep_folder_base.toml",
        "sms": shared_data("SMSSpamCollection"),
        "instructions": shared_data("instruction-data.json"),
    }


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A run whose tokenizer (the hf one, fitted here) carries a chat template that raises, as a checkpoint's may."""
    pytest.importorskip("tokenizers")
    from gptzoo.core import GPT
    from gptzoo.plugins.hf_tokenizer import HFTokenizer, HFTokenizerParams
    from gptzoo.recipes.config.schema import RunConfig
    from gptzoo.recipes.runs.folder import save_run
    from gptzoo.registry import default_registry

    registry = default_registry()
    spec = {"name": "hf", "vocab_size": 300, "chat_template": "{{ raise_exception('roles must alternate') }}"}
    tokenizer = HFTokenizer(HFTokenizerParams(vocab_size=300, chat_template=spec["chat_template"]))
    tokenizer.fit("Say hi. The quick brown fox jumps over the lazy dog. " * 20)
    model = json.loads((RUN / "config.json").read_text())["model"] | {
        "tokenizer": spec,
        "vocab_size": tokenizer.vocab_size,
    }
    config = registry.model_config(model)
    folder = tmp_path_factory.mktemp("chat") / "run"
    save_run(folder, RunConfig(model=config), GPT(config), tokenizer)
    return folder


def snapshot(*folders):
    """Every path under ``folders`` with its bytes; an empty writer's lock file (.gptzoo.lock, which stays) left out."""
    return {
        p: p.read_bytes() if p.is_file() else None
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if not (p.name == LOCK and p.stat().st_size == 0)
    }


@pytest.mark.parametrize(
    "command,kind,argv,message",
    [pytest.param(*row, id=f"{row[0]}: {row[1]}: {' '.join(row[2])}") for row in BAD_VALUES],
)
def test_every_command_names_its_bad_value(command, kind, argv, message, places, capsys, request, monkeypatch):
    if kind == "optional extra not installed":
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray then fails, as without the extra
    if any("{chat_run}" in arg for arg in argv):
        places = places | {"chat_run": request.getfixturevalue("chat_run")}
    before = snapshot(places["tmp"], RUN)
    err = error_of(capsys, [command, *(arg.format(**places) for arg in argv)])
    assert message.format(**places) in err
    assert snapshot(places["tmp"], RUN) == before  # nothing written, nothing overwritten


def test_the_table_covers_every_command():
    assert {row[0] for row in BAD_VALUES} == set(COMMANDS)


def test_evaluate_without_the_eval_extra_says_how_to_install_it(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_harness(name, *args, **kwargs):
        if name.split(".")[0] == "lm_eval":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_harness)
    err = error_of(capsys, ["evaluate", RUN, "--tasks", "hellaswag"])
    assert "gptzoo evaluate needs lm-evaluation-harness: pip install 'gptzoo[eval]'" in err


def test_an_ablation_base_may_be_a_run_folder_read_as_its_config(tmp_path):
    from gptzoo.recipes.research.sweep import load_sweep

    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'base = "{RUN}"\n[axes]\n"model.norm.name" = ["layernorm", "rmsnorm"]\n')
    loaded = load_sweep(sweep)
    assert loaded.base_path == Path(RUN) / "config.json"
    assert (
        loaded.variants[0].config.model.d_model
        == json.loads((Path(RUN) / "config.json").read_text())["model"]["d_model"]
    )


def test_a_damaged_metrics_line_on_resume_names_the_line(tmp_path, capsys):
    run = Path(shutil.copytree(RUN, tmp_path / "run"))  # no manifest: the log itself is read
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "val_loss": \xff}\n')
    config = tmp_path / "config.json"
    config.write_text((run / "config.json").read_text())
    err = error_of(capsys, ["train", config, "--out", run, "--resume", "--set", "train.max_steps=4"])
    assert f"{run / 'metrics.jsonl'}, line 2: not a JSON record (UnicodeDecodeError" in err


def test_a_tokenizer_that_does_not_fit_the_model_is_named(tmp_path, capsys):
    run = Path(shutil.copytree(RUN, tmp_path / "run"))
    state = json.loads((run / "tokenizer.json").read_text())
    state["vocabulary"] = [chr(0x100 + i) for i in range(80)]  # 80 characters and the special ids: 82 for a model of 64
    (run / "tokenizer.json").write_text(json.dumps(state))
    err = error_of(capsys, ["generate", run, "--prompt", "\u0100", "--temperature", "1"])
    assert (
        f"{run / 'tokenizer.json'}: the 'char' tokenizer has 82 tokens but model.vocab_size in {run / 'config.json'} is 64"
        in err
    )


def test_ctrl_c_while_starting_exits_130_quietly(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["plugins"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_the_cli_module_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, gptzoo.recipes.cli; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


@pytest.mark.parametrize(
    "command, target, argv",
    [
        ("export-hf", "gptzoo.recipes.cli.export_hf.export_hf", [RUN, "--out", "{tmp}/out"]),
        ("inspect", "gptzoo.recipes.cli.inspect_run.write_inspection", [RUN, "--prompt", "x", "--out", "{tmp}/out"]),
    ],
)
def test_a_full_disk_names_the_folder_being_written(command, target, argv, tmp_path, monkeypatch, capsys):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it: no file name

    monkeypatch.setattr(target, full)
    err = error_of(capsys, [command, *(str(a).format(tmp=tmp_path) for a in argv)])
    assert f"{tmp_path}/out: no space left on the device; free some space and run again" in err
