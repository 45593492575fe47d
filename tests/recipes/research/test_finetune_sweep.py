"""A sweep over a fine-tuning config: two learning rates of a classifier fine-tuning on a tiny base."""

import csv
import json
import re

import pytest
import torch

from gptzoo.core import GPT, ConfigError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.research.sweep import RESULTS_CSV, RUNS, load_sweep, run_sweep
from gptzoo.recipes.runs.folder import load_config, save_run
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)

FINETUNING = """
kind = "classifier"
[data]
split = [0.6, 0.2, 0.2]
[train]
epochs = 1
batch_size = 4
eval_batches = 1
"""


@pytest.fixture
def sweep_folder(tmp_path):
    torch.manual_seed(0)
    spec = {"vocab_size": 257, "context_length": 16, "d_model": 16, "n_layers": 1, "n_heads": 2, "tokenizer": "byte"}
    model = GPT(REGISTRY.model_config(spec))
    save_run(tmp_path / "base", RunConfig(model=model.config), model, model.config.tokenizer.build())
    (tmp_path / "sms.tsv").write_text("".join(f"ham\thi {i}\nspam\tWIN {i}\n" for i in range(10)), encoding="utf-8")
    (tmp_path / "spam.toml").write_text(FINETUNING, encoding="utf-8")
    return tmp_path


def write_sweep(folder, extra=""):
    (folder / "sweep.toml").write_text(
        f'base = "spam.toml"\nfinetune_from = "base"\nseeds = [1]\n{extra}\n'
        '[set]\n"data.path" = "' + str(folder / "sms.tsv") + '"\n"train.lr" = 1e-3\n'
        '[axes]\n"train.lr" = [1e-3, 1e-2]\n',
        encoding="utf-8",
    )
    return folder / "sweep.toml"


def test_a_two_point_finetuning_sweep(sweep_folder):
    sweep = load_sweep(write_sweep(sweep_folder))
    assert [v.label for v in sweep.variants] == ["lr=0.001", "lr=0.01"] and sweep.variants[0].is_base
    results = run_sweep(sweep, sweep_folder / "out", progress=False)
    assert [(r.status, r.steps) for r in results] == [("done", 3), ("done", 3)]  # 12 training examples in 4s
    assert all(0 <= r.final_val_accuracy <= 1 and r.final_val_loss > 0 for r in results)
    for variant, lr in zip(sweep.variants, (1e-3, 1e-2), strict=True):
        saved = load_config(sweep_folder / "out" / RUNS / variant.run_name(1)).finetune
        assert saved.base == str(sweep_folder / "base") and saved.config.train.lr == lr
        assert saved.config.train.seed == 1  # the sweep's seed
    rows = list(csv.DictReader((sweep_folder / "out" / RESULTS_CSV).open(encoding="utf-8")))
    assert [row["variant"] for row in rows] == ["lr-0.001", "lr-0.01"]  # the slugs
    recorded = json.loads((sweep_folder / "out" / "sweep.json").read_text())
    assert recorded["finetune_from"] == str(sweep_folder / "base")


def test_the_ablate_command_runs_it_and_reuses_finished_runs(sweep_folder, capsys):
    argv = ["ablate", str(write_sweep(sweep_folder)), "--out", str(sweep_folder / "out"), "--no-progress"]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "2 of 2 runs already finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, axis, message",
    [
        ("", '"train.epochs" = [1, 2]', "changes train.epochs; every fine-tuning in a sweep has the same"),
        ("", '"data.balance" = [true, false]', "changes data; every fine-tuning in a sweep has the same"),
        ("", '"train.lrr" = [1, 2]', "train.lrr: unknown field (did you mean 'lr'?)"),
        ("extrapolate = [2]", '"train.lr" = [1e-3]', "extrapolate applies to pretraining sweeps"),
    ],
)
def test_a_bad_finetuning_sweep_is_refused_before_anything_runs(sweep_folder, extra, axis, message):
    path = write_sweep(sweep_folder, extra)
    path.write_text(path.read_text().replace('"train.lr" = [1e-3, 1e-2]', axis))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_sweep(path)
