"""Fine-tuning draws every random number from train.seed (the new head, LoRA's A, dropout, the shuffled
order): the same command twice gives byte-identical run folders, whatever the process drew before."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.runs.folder import load_run, save_run
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A base with dropout, so training draws dropout masks besides the initialisations."""
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    spec = {"vocab_size": 257, "context_length": 192, "d_model": 32, "n_layers": 2, "n_heads": 2, "tokenizer": "byte"}
    model = GPT(REGISTRY.model_config(spec | {"dropout": 0.1}))
    save_run(folder, RunConfig(model=model.config), model, model.config.tokenizer.build())
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    sms = "".join(f"ham\thello number {i}\nspam\tWIN {i} now\n" for i in range(12))
    (folder / "sms.tsv").write_text(sms, encoding="utf-8")
    entries = [{"instruction": f"Count to {i}.", "output": " ".join(map(str, range(i)))} for i in range(1, 21)]
    (folder / "d.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


COMMANDS = {
    "classifier": ["finetune-classifier", "--data", "sms.tsv", "--epochs", "2", "--batch-size", "4"],
    "classifier-lora": ["finetune-classifier", "--data", "sms.tsv", "--epochs", "2", "--lora-rank", "2"],
    "instruct": ["finetune-instruct", "--data", "d.json", "--epochs", "2", "--set", "test.limit=2"],
    "instruct-lora": ["finetune-instruct", "--data", "d.json", "--lora-rank", "2", "--set", "test.limit=1"],
}


@pytest.mark.parametrize("name", COMMANDS)
def test_the_same_command_twice_gives_byte_identical_run_folders(name, base_dir, data, tmp_path, capsys):
    command, *options = COMMANDS[name]
    argv = [command, str(base_dir), *(str(data / o) if o.endswith((".tsv", ".json")) else o for o in options)]
    argv += ["--set", "test.max_new_tokens=3"] if command == "finetune-instruct" else []
    torch.manual_seed(1)
    assert main([*argv, "--out", str(tmp_path / "first")]) == 0
    torch.rand(1000)  # whatever the process drew before does not matter
    assert main([*argv, "--out", str(tmp_path / "second")]) == 0
    first, second = folder_bytes(tmp_path / "first"), folder_bytes(tmp_path / "second")
    assert {"model.safetensors", "config.json", "metrics.jsonl", "manifest.json"} <= set(first)
    assert first == second
    assert main([*argv, "--seed", "7", "--out", str(tmp_path / "seed7")]) == 0
    other = folder_bytes(tmp_path / "seed7")
    assert other["model.safetensors"] != first["model.safetensors"]  # the seed is what decides them
    assert json.loads(other["config.json"])["finetune"]["config"]["train"]["seed"] == 7  # recorded in the run


def test_the_new_head_is_drawn_from_the_seed(base_dir, data, tmp_path, capsys):
    """With nothing training but the LoRA adapters, the head stays as drawn: two seeds, two heads."""
    argv = ["finetune-classifier", str(base_dir), "--data", str(data / "sms.tsv"), "--lora-rank", "1"]
    argv += ["--lora-targets", "qkv", "--train", "none", "--epochs", "1"]
    for seed in ("1", "1", "2"):
        assert (
            main([*argv, "--seed", seed, "--out", str(tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}")]) == 0
        )
    heads = [load_run(folder).model.head.state_dict() for folder in sorted(tmp_path.iterdir())]
    assert all(torch.equal(t, heads[1][name]) for name, t in heads[0].items())
    assert not all(torch.equal(t, heads[2][name]) for name, t in heads[0].items())


# ---- resuming -----------------------------------------------------------------------------


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Stop fine-tuning as a Ctrl-C would, just before optimizer step ``step`` (counted from 1)."""
    from gptzoo.recipes.finetuning import loop

    steps = iter(range(1, 10**6))

    def step_or_stop(*args, **kwargs):
        if next(steps) == step:
            raise KeyboardInterrupt
        return clip_and_step(*args, **kwargs)

    clip_and_step = loop.clip_and_step
    monkeypatch.setattr(loop, "clip_and_step", step_or_stop)


@pytest.mark.parametrize("name", ["classifier", "classifier-lora", "instruct"])
def test_a_stopped_fine_tuning_resumed_equals_the_uninterrupted_one(
    name, base_dir, data, tmp_path, capsys, monkeypatch
):
    command, *options = COMMANDS[name]
    argv = [command, str(base_dir), *(str(data / o) if o.endswith((".tsv", ".json")) else o for o in options)]
    argv += ["--epochs", "3"] + (["--set", "test.max_new_tokens=3"] if command == "finetune-instruct" else [])
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    steps_per_epoch = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[0])["step"]
    assert steps_per_epoch >= 2

    with monkeypatch.context() as patch:
        interrupt_at_step(patch, steps_per_epoch + 2)  # in the second epoch
        assert main([*argv, "--out", str(tmp_path / "stopped")]) == 130
    assert (tmp_path / "stopped" / "finetune_state.pt").is_file()
    assert not (tmp_path / "stopped" / "model.safetensors").exists()
    assert "pass --resume to continue it" in error_line(capsys, main([*argv, "--out", str(tmp_path / "stopped")]))

    torch.rand(1000)  # the resumed process draws from the state it saved, not from its own
    assert main([*argv, "--out", str(tmp_path / "stopped"), "--resume"]) == 0
    assert folder_bytes(tmp_path / "stopped") == folder_bytes(tmp_path / "whole")  # finetune_state.pt gone too


def error_line(capsys, code: int) -> str:
    assert code == 2
    return capsys.readouterr().err


def test_resume_refuses_other_settings_and_a_folder_with_nothing_to_resume(
    base_dir, data, tmp_path, capsys, monkeypatch
):
    argv = ["finetune-classifier", str(base_dir), "--data", str(data / "sms.tsv"), "--epochs", "2"]
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 4)
        assert main([*argv, "--out", str(out)]) == 130
    err = error_line(capsys, main([*argv, "--lr", "1e-3", "--seed", "5", "--out", str(out), "--resume"]))
    assert (
        f"--out {out}: the fine-tuning there was made with other settings (config.train.lr, config.train.seed)" in err
    )
    err = error_line(capsys, main([*argv, "--out", str(tmp_path / "new"), "--resume"]))
    assert f"--out {tmp_path / 'new'}: holds no unfinished fine-tuning to resume (no finetune_state.pt)" in err
    assert not (tmp_path / "new").exists()


def test_a_killed_fine_tuning_resumed_equals_the_uninterrupted_one(base_dir, tmp_path, capsys):
    """SIGKILL: no cleanup runs, the writer lock is left to a dead process, the state file may be mid-write."""
    sms = "".join(f"ham\thello number {i} how are you\nspam\tWIN {i} cash now call\n" for i in range(100))
    (tmp_path / "sms.tsv").write_text(sms, encoding="utf-8")
    argv = ["finetune-classifier", str(base_dir), "--data", str(tmp_path / "sms.tsv"), "--epochs", "30"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    gptzoo = [sys.executable, "-c", "import sys; from gptzoo.recipes.cli import main; sys.exit(main())"]
    process = subprocess.Popen([*gptzoo, *argv, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL)
    state = tmp_path / "killed" / "finetune_state.pt"
    while not state.exists() and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    assert process.wait() == -signal.SIGKILL  # killed while it trained, not after it finished
    assert main([*argv, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert folder_bytes(tmp_path / "killed") == folder_bytes(tmp_path / "whole")
