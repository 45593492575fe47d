"""Every command's bad values and damaged inputs: one line naming the value or file, exit code 2,
no traceback, nothing written (issue 11's list of tracebacks and vague messages)."""

import json
import shutil
from pathlib import Path

import pytest

from gptzoo.recipes import cli
from gptzoo.recipes.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runs-v0.1"
RUN = FIXTURES / "gpt2-pre"  # a small language-model run folder (saved by gptzoo 0.1)


def error_of(capsys, argv):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def latin1(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\tham\n".encode("latin-1"))
    return path


def test_a_config_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "model.toml"
    config.write_bytes(b"[model]\n# caf\xe9\ncontext_length = 16\n")
    for command in (["describe", config], ["train", config, "--out", tmp_path / "run"]):
        assert f"{config}: not UTF-8 text (byte 13); save the config as UTF-8" in error_of(capsys, command)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["finetune-classifier", "finetune-instruct"])
def test_fine_tuning_data_that_is_not_utf8_is_named(command, latin1, tmp_path, capsys):
    assert f"{latin1}: not UTF-8 text (byte 3); convert it to UTF-8" in error_of(capsys, [command, RUN, "--data", latin1, "--out", tmp_path / "out"])
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_or_lies_under_one_is_refused(tmp_path, capsys):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    config = tmp_path / "tiny.json"
    config.write_text((RUN / "config.json").read_text())
    for out, where in ((file, "is a file"), (file / "run", f"lies under {file}, which is a file")):
        for command in (
            ["train", config, "--out", out],
            ["finetune-instruct", RUN, "--data", file, "--out", out],
            ["import-gpt2", RUN, "--out", out],
            ["export-hf", RUN, "--out", out],
        ):
            assert f"--out {out} {where}, not a folder; choose another --out" in error_of(capsys, command)
    assert file.read_text() == "mine"


@pytest.mark.parametrize("option,value,message", [
    ("--temperature", "nan", "--temperature nan: must be 0 (greedy) or a positive number"),
    ("--temperature", "inf", "--temperature inf: must be 0 (greedy) or a positive number"),
    ("--temperature", "-1", "--temperature -1.0: must be 0 (greedy) or a positive number"),
    ("--max-new-tokens", "0", "--max-new-tokens 0: give at least 1"),
    ("--top-k", "0", "--top-k 0: must be at least 1"),
    ("--top-p", "nan", "--top-p nan: must be in (0, 1]"),
    ("--top-p", "1.5", "--top-p 1.5: must be in (0, 1]"),
])
def test_generate_names_the_bad_value(option, value, message, capsys):
    assert message in error_of(capsys, ["generate", RUN, "--prompt", "I had", option, value])


@pytest.mark.parametrize("option,value,message", [
    ("--batch-size", "0", "--batch-size 0: give at least 1"),
    ("--batch-size", "-1", "--batch-size -1: give at least 1"),
    ("--device", "bogus", "--device 'bogus':"),
])
def test_eval_names_the_bad_value(option, value, message, capsys, shared_data):
    line = error_of(capsys, ["eval", RUN, "--data", shared_data("the-verdict.txt"), option, value])
    assert message in line and "train.device" not in line


@pytest.mark.parametrize("option,value,message", [
    ("--max-new-tokens", "-1", "--max-new-tokens -1: give at least 1"),
    ("--temperature", "-0.5", "--temperature -0.5: must be 0 (greedy) or a positive number"),
    ("--temperature", "nan", "--temperature nan: must be 0 (greedy) or a positive number"),
])
def test_chat_names_the_bad_value(option, value, message, capsys):
    assert message in error_of(capsys, ["chat", RUN, "--instruction", "Say hi.", option, value])


@pytest.mark.parametrize("option,value,message", [
    ("--max-new-tokens", "-1", "--max-new-tokens -1: give at least 1"),
    ("--limit-test", "-1", "--limit-test -1: give 0 or more test entries"),
    ("--device", "bogus", "--device 'bogus':"),
])
def test_finetune_instruct_names_the_bad_value(option, value, message, capsys, shared_data, tmp_path):
    line = error_of(capsys, ["finetune-instruct", RUN, "--data", shared_data("instruction-data.json"), "--out", tmp_path / "out", "--limit-test", "1", "--epochs", "1", option, value])
    assert message in line and "train.device" not in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_finetune_classifier_names_a_bad_device(capsys, shared_data, tmp_path):
    line = error_of(capsys, ["finetune-classifier", RUN, "--data", shared_data("SMSSpamCollection"), "--out", tmp_path / "out", "--device", "bogus"])
    assert "--device 'bogus':" in line and "train.device" not in line


def test_an_ablation_base_that_is_a_run_folder_says_so(tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'base = "{RUN}"\n[axes]\n"model.norm.name" = ["layernorm", "rmsnorm"]\n')
    line = error_of(capsys, ["ablate", sweep, "--out", tmp_path / "out"])
    assert f"base = '{RUN}' is a run folder ({RUN}), not a TOML config" in line


def test_a_damaged_metrics_line_on_resume_names_the_line(tmp_path, capsys):
    run = Path(shutil.copytree(RUN, tmp_path / "run"))  # no manifest: the log itself is read
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "val_loss": \xff}\n')
    config = tmp_path / "config.json"
    config.write_text((run / "config.json").read_text())
    line = error_of(capsys, ["train", config, "--out", run, "--resume", "--set", "train.max_steps=4"])
    assert f"{run / 'metrics.jsonl'}, line 2: not a JSON record (UnicodeDecodeError" in line


def test_a_tokenizer_that_does_not_fit_the_model_is_named(tmp_path, capsys):
    run = Path(shutil.copytree(RUN, tmp_path / "run"))
    state = json.loads((run / "tokenizer.json").read_text())
    state["vocabulary"] = [chr(0x100 + i) for i in range(80)]  # 80 characters and the special ids: 82 for a model of 64
    (run / "tokenizer.json").write_text(json.dumps(state))
    line = error_of(capsys, ["generate", run, "--prompt", "\u0100", "--temperature", "1"])
    assert f"{run / 'tokenizer.json'}: the 'char' tokenizer has 82 tokens but model.vocab_size in {run / 'config.json'} is 64" in line


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
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


# Each command that reads a run folder: the folder missing, empty (not a run) or a file.
READERS = {
    "eval": ["--data", "builtin:pydoc"],
    "generate": ["--prompt", "x"],
    "classify": ["--text", "x"],
    "chat": ["--instruction", "x"],
    "export-hf": ["--out", "{tmp}/hf"],
    "finetune-classifier": ["--data", "{sms}", "--out", "{tmp}/out"],
    "finetune-instruct": ["--data", "{instructions}", "--out", "{tmp}/out"],
}


@pytest.mark.parametrize("command", sorted(READERS))
@pytest.mark.parametrize("kind,message", [
    ("missing", "{folder}: no such run folder"),
    ("empty", "{folder}/config.json: missing; is {folder} a gptzoo run folder?"),
    ("file", "{folder}: a file, not a run folder"),
])
def test_every_command_that_reads_a_run_names_a_folder_that_is_not_one(command, kind, message, tmp_path, capsys, shared_data):
    (tmp_path / "file.txt").write_text("mine")
    folder = {"missing": tmp_path / "nowhere", "empty": tmp_path / "empty", "file": tmp_path / "file.txt"}[kind]
    if kind == "empty":
        folder.mkdir()
    data = {"sms": shared_data("SMSSpamCollection"), "instructions": shared_data("instruction-data.json")}
    options = [arg.format(tmp=tmp_path, **data) for arg in READERS[command]]
    assert message.format(folder=folder) in error_of(capsys, [command, folder, *options])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["file.txt", *(["empty"] if kind == "empty" else [])])


@pytest.mark.parametrize("argv,message", [
    (["train", "{config}", "--out", "{tmp}/run", "--nproc", "0"], "--nproc 0: give a number of processes of at least 1"),
    (["train", "{config}", "--out", "{tmp}/run", "--set", "train.max_steps=0"], "invalid config"),
    (["train", "{config}", "--out", "{tmp}/run", "--set", "nonsense"], "override 'nonsense': write it as key=value"),
    (["describe", "{tmp}/nope.toml"], "nope.toml: no such config file"),
    (["describe", "{config}", "--set", "model.d_model=-1"], "invalid config"),
    (["tokenize", "{tmp}/nope.toml", "--text", "hi"], "nope.toml: no such config file"),
    (["import-gpt2", "{tmp}/nope", "--out", "{tmp}/run"], "nope: no such folder, and not a GPT-2 size name"),
    (["import-book", "{tmp}/nope.pth", "--out", "{tmp}/run"], "nope.pth: no such file"),
    (["ablate", "{tmp}/nope.toml", "--out", "{tmp}/sweep"], "nope.toml: no such config file"),
])
def test_other_commands_name_their_bad_value(argv, message, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text((RUN / "config.json").read_text())
    line = error_of(capsys, [arg.format(tmp=tmp_path, config=config) for arg in argv])
    assert message in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
