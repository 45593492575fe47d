"""A third-party task, installed the way pip would leave it (a package beside its .dist-info), is
found through the ``register_tasks`` hook of its entry point and trains like a built-in task."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gptzoo.core import ConfigError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.research.tasks import IGNORE, TaskExamples
from gptzoo.recipes.training.evaluation import estimate_metrics
from gptzoo.registry import PLUGINS_ENV, default_registry, make_registry

HERE = Path(__file__).resolve().parent
MODEL = {"context_length": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}


@pytest.fixture
def installed(monkeypatch):
    """Put the task plugin and its dist-info on sys.path, as an installed distribution."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    default_registry.cache_clear()
    yield make_registry()
    default_registry.cache_clear()


def test_found_through_its_entry_point(installed):
    (entry,) = [t for t in installed.tasks() if t.name == "copy"]
    assert (entry.plugin, entry.distribution, entry.version) == ("copytask", "gptzoo_copytask", "0.1.0")
    assert installed.task_names()[:3] == ["mqar", "induction", "selective_copy"]


def test_not_there_when_not_installed():
    with pytest.raises(
        ConfigError, match="unknown task 'copy'; registered tasks: 'mqar', 'induction', 'selective_copy'"
    ):
        validate_run_config({"model": MODEL, "data": {"task": {"name": "copy"}}}, "t", make_registry())


def test_its_fields_are_validated_with_their_paths(installed):
    with pytest.raises(ConfigError, match=r"data\.task\.n_tokens: Input should be greater than 0"):
        validate_run_config({"model": MODEL, "data": {"task": {"name": "copy", "n_tokens": 0}}}, "t", installed)
    with pytest.raises(ConfigError, match="n_tokens = 9 needs context_length"):
        validate_run_config({"model": MODEL, "data": {"task": {"name": "copy", "n_tokens": 9}}}, "t", installed)


class CopyOracle(nn.Module):
    """Predicts, at position t, the input n positions back (the copy's answer from n on), else id 0."""

    def __init__(self, n, vocab, shift=0):
        super().__init__()
        self.n, self.vocab, self.shift = n, vocab, shift

    def forward(self, idx):
        guess = torch.zeros_like(idx)
        guess[:, self.n :] = (idx[:, : -self.n] + self.shift) % self.vocab
        return 10.0 * nn.functional.one_hot(guess, self.vocab).float()


def test_accuracy_scores_only_the_answers(installed):
    config = validate_run_config(
        {"model": MODEL, "data": {"task": {"name": "copy", "vocab_size": 10, "n_tokens": 4}}}, "t", installed
    )
    split = TaskExamples(config.data.task, 16, seed=0, split="val")
    inputs, targets = split.batch(range(8))
    for row_inputs, row_targets in zip(inputs.numpy(), targets.numpy(), strict=True):
        data = row_inputs[:4]
        assert row_inputs[4] == 0 and (row_inputs[5:8] == data[:3]).all() and (data > 0).all()
        expected = np.full(16, IGNORE)
        expected[4:8] = data
        np.testing.assert_array_equal(row_targets, expected)
    cpu = torch.device("cpu")
    # right at every answer and wrong nearly everywhere else: only the answers count
    _, accuracy = estimate_metrics(CopyOracle(4, 10), split, n_batches=2, batch_size=4, device=cpu)
    assert accuracy == 1.0
    _, accuracy = estimate_metrics(CopyOracle(4, 10, shift=1), split, n_batches=2, batch_size=4, device=cpu)
    assert accuracy == 0.0


def test_a_config_trains_on_it_for_two_steps(installed, tmp_path):
    config = tmp_path / "copy.toml"
    config.write_text(
        "[model]\ncontext_length = 16\nd_model = 16\nn_layers = 1\nn_heads = 2\n"
        '[data]\ntask = { name = "copy" }\n'
        "[train]\nmax_steps = 2\neval_interval = 2\neval_batches = 1\nbatch_size = 4\nsample_tokens = 0\n"
    )
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--set", "train.device=cpu"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 2 and 0 <= record["val_accuracy"] <= 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["task"] == {
        "name": "copy",
        "vocab_size": 10,
        "n_tokens": 4,
        "train_examples": 100_000,
        "val_examples": 1_000,
    }


def test_plugins_lists_the_tasks_with_their_providers(installed, capsys):
    assert main(["plugins", "--json"]) == 0
    tasks = {e["name"]: e for e in json.loads(capsys.readouterr().out) if e["family"] == "task"}
    assert list(tasks) == ["mqar", "induction", "selective_copy", "copy"]
    assert (tasks["mqar"]["plugin"], tasks["mqar"]["distribution"]) == ("gptzoo.plugins.tasks", "gptzoo")
    assert tasks["mqar"]["params"]["n_pairs"] == {"type": "int", "default": 8, "required": False}
    assert (tasks["copy"]["plugin"], tasks["copy"]["distribution"]) == ("copytask", "gptzoo_copytask")
    assert set(tasks["copy"]["params"]) == {"vocab_size", "n_tokens", "train_examples", "val_examples"}
    assert main(["plugins"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["task", "copy"]]
    assert "n_tokens=4" in row and "copytask (gptzoo_copytask 0.1.0)" in row
