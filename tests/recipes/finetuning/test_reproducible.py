"""Fine-tuning draws every random number from train.seed (the new head, LoRA's A, dropout, the shuffled
order): the same command twice gives byte-identical run folders, whatever the process drew before."""

import json

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
