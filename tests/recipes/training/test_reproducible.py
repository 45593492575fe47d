"""Training draws every random number from its seeds (train.seed: initialisation, dropout; data.seed: the
window order): the same command twice gives the same run folder, byte for byte but for what the machine
measured (how fast and in how much memory it went), whatever the process drew before; so does a sweep."""

import csv
import json
from pathlib import Path

import torch

from gptzoo.recipes.cli import main

# Measured by the machine, not drawn from the seeds: the only fields two runs of one command may differ in
# (the JSON fields and results.csv's columns, then results.md's columns).
MEASURED = {"tokens_per_s", "peak_memory_bytes", "elapsed_s", "wall_s", "load_per_core", "speed_shared"}
MEASURED |= {"tokens/s", "peak memory", "wall"}
# The files holding them: JSON Lines and JSON with measured fields, the training state, the manifest's hashes.
HOLDING_MEASUREMENTS = {
    "metrics.jsonl",
    "train_state.pt",
    "manifest.json",
    "ablation.json",
    "results.csv",
    "results.md",
}


def folder_contents(folder: Path) -> dict[str, object]:
    """Every file under ``folder``: its bytes, or for a file that holds measurements what it says without them."""
    contents: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        contents[name] = _unmeasured(path) if path.name in HOLDING_MEASUREMENTS else path.read_bytes()
    return contents


def _unmeasured(path: Path) -> object:
    if path.name == "metrics.jsonl":
        return [_drop(json.loads(line)) for line in path.read_text().splitlines()]
    if path.name == "ablation.json":
        return _drop(json.loads(path.read_text()))
    if path.name == "train_state.pt":
        return _tensor_bytes(_drop(torch.load(path, weights_only=True)))
    if path.name == "manifest.json":
        manifest = json.loads(path.read_text())
        files = {name: entry for name, entry in manifest["files"].items() if name not in HOLDING_MEASUREMENTS}
        return manifest | {"files": files}
    if path.name == "results.csv":
        return [_drop(row) for row in csv.DictReader(path.read_text().splitlines())]
    lines = path.read_text().splitlines()  # results.md: its table without the measured columns
    header = next(i for i, line in enumerate(lines) if line.startswith("| variant"))
    names = [cell.strip() for cell in lines[header].strip("|").split("|")]
    table = [
        dict(zip(names, line.strip("|").split("|"), strict=True)) for line in lines[header:] if line.startswith("|")
    ]
    return lines[:header] + [_drop(row) for row in table]  # the notes below the table say how loaded the machine was


def _drop(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in MEASURED}


def _tensor_bytes(value: object) -> object:
    """``value`` with its tensors as bytes, so that two states compare with ==."""
    if isinstance(value, torch.Tensor):
        return value.numpy().tobytes()
    if isinstance(value, dict):
        return {k: _tensor_bytes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensor_bytes(v) for v in value]
    return value


CONFIG = """
[model]
context_length = 16
d_model = 32
n_layers = 1
n_heads = 2
dropout = 0.1
tokenizer = {{ name = "bpe", vocab_size = 300 }}

[data]
source = "{source}"

[train]
max_steps = 4
batch_size = 4
eval_interval = 2
eval_batches = 1
sample_tokens = 4
device = "cpu"
"""


def test_train_twice_with_the_same_seed_gives_the_same_run_folder(tmp_path, shared_data, capsys, monkeypatch):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.format(source=shared_data("the-verdict.txt")))
    monkeypatch.setenv("GPTZOO_CACHE", str(tmp_path / "cache1"))  # each run fits its tokenizer and cuts its windows
    torch.manual_seed(1)
    assert main(["train", str(config), "--out", str(tmp_path / "first")]) == 0
    torch.rand(1000)  # whatever the process drew before does not matter
    monkeypatch.setenv("GPTZOO_CACHE", str(tmp_path / "cache2"))
    assert main(["train", str(config), "--out", str(tmp_path / "second")]) == 0
    first, second = folder_contents(tmp_path / "first"), folder_contents(tmp_path / "second")
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.jsonl",
        "manifest.json",
        "train_state.pt",
    } <= set(first)
    assert first == second
    metrics = (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [2, 4]  # the comparison saw both evaluations

    assert main(["train", str(config), "--out", str(tmp_path / "seed7"), "--set", "train.seed=7"]) == 0
    other = folder_contents(tmp_path / "seed7")
    assert other["model.safetensors"] != first["model.safetensors"]  # the seed is what decides them
    assert json.loads((tmp_path / "seed7" / "config.json").read_text())["train"]["seed"] == 7  # recorded in the run


SWEEP = 'base = "tiny.toml"\nseeds = [0]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n'


def test_ablate_twice_gives_the_same_results_and_run_folders(tmp_path, shared_data, capsys, monkeypatch):
    config = CONFIG.replace("max_steps = 4", "max_steps = 2").replace("sample_tokens = 4", "sample_tokens = 0")
    (tmp_path / "tiny.toml").write_text(config.format(source=shared_data("the-verdict.txt")))
    monkeypatch.setenv("GPTZOO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "sweep.toml").write_text(SWEEP)
    for out in ("first", "second"):
        assert main(["ablate", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / out), "--no-progress"]) == 0
    first, second = folder_contents(tmp_path / "first"), folder_contents(tmp_path / "second")
    assert {"results.csv", "results.md", "loss_curves.png", "runs/positional-rope-seed0/model.safetensors"} <= set(
        first
    )
    assert first == second
