"""Training draws every random number from its seeds (train.seed: initialisation, dropout; data.seed: the
window order): the same command twice gives the same run folder, byte for byte but for the files that hold
what the machine measured (how fast, in how much memory, how long), whatever the process drew before; so does a
sweep. Folders written before those files existed still read their measurements."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.research.sweep.results import read_result
from gptzoo.recipes.runs.metrics import read_measurements, read_metrics
from gptzoo.recipes.training.loop import train

# The only files two runs of one command may differ in: a run's measurements.jsonl, a sweep's measurements.csv
# and measurements.md (none of them named in a manifest).
MEASUREMENT_FILES = {"measurements.jsonl", "measurements.csv", "measurements.md"}
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "runs-v0.1"


def folder_contents(folder: Path) -> dict[str, bytes]:
    """The bytes of every file under ``folder`` but those holding measurements."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in MEASUREMENT_FILES
    }


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
    assert (tmp_path / "first" / "measurements.jsonl").is_file()  # the measurements went there
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
    assert {
        "results.csv",
        "results.md",
        "loss_curves.png",
        "runs/positional-rope-seed0/model.safetensors",
        "runs/positional-rope-seed0/ablation.json",
        "runs/positional-rope-seed0/manifest.json",
    } <= set(first)
    assert first == second
    assert (tmp_path / "first" / "measurements.md").is_file()
    result = read_result(tmp_path / "first" / "runs" / "positional-rope-seed0")  # its measurements read back
    assert result.tokens_per_s > 0 and result.peak_memory_bytes > 0 and result.wall_s > 0


def test_a_run_folder_of_an_earlier_version_keeps_its_measurements_through_a_resume(tmp_path):
    """gptzoo 0.1 logged the measurements in metrics.jsonl and its training time in train_state.pt."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "gpt2-pre", run)
    old_line = (run / "metrics.jsonl").read_text().splitlines()[0]
    config = json.loads((run / "config.json").read_text())
    if not Path(config["data"]["source"]).is_file():  # a resume trains on the run's own data
        pytest.skip(f"the fixture's training data {config['data']['source']} is absent")
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    config["train"] |= {"max_steps": 4, "device": "cpu"}
    assert read_measurements(run) == [
        {"step": 2, "tokens_per_s": 922.6, "peak_memory_bytes": 349495296, "elapsed_s": 0.073}
    ]

    train(validate_run_config(config, "test config"), run, resume=True, progress=False, log=lambda s: None)
    assert (run / "metrics.jsonl").read_text().splitlines()[0] == old_line  # the old record as it was
    assert [r["step"] for r in read_metrics(run)] == [2, 4]
    assert "tokens_per_s" not in read_metrics(run)[1]
    step2, step4 = read_measurements(run)
    assert step2 == {"step": 2, "tokens_per_s": 922.6, "peak_memory_bytes": 349495296, "elapsed_s": 0.073}
    assert step4["step"] == 4 and step4["tokens_per_s"] > 0 and step4["peak_memory_bytes"] > 0
    assert step4["elapsed_s"] > 0.0734  # counted on from the 0.0735 s train_state.pt held
    assert "elapsed_s" not in torch.load(run / "train_state.pt", weights_only=True)


def test_a_sweep_result_of_an_earlier_version_keeps_its_measurements(tmp_path):
    """ablation.json held the measured fields before measurements.jsonl did."""
    fields = {"tokens_per_s": 1234.5, "peak_memory_bytes": 2**20, "wall_s": 3.5, "load_per_core": 0.25}
    (tmp_path / "ablation.json").write_text(json.dumps({"variant": "base", "seed": 0, "status": "done", **fields}))
    result = read_result(tmp_path)
    assert (result.tokens_per_s, result.peak_memory_bytes, result.wall_s, result.load_per_core) == tuple(
        fields.values()
    )
    assert result.status == "done" and result.seed == 0
