"""Diagnostic tasks: generators against the tasks' definitions, answers determined by the
inputs, accuracy only on answer positions, config validation, and a run through the CLI."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from gptzoo.core import ConfigError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.research.tasks import IGNORE, MQAR, Induction, SelectiveCopy, TaskExamples, task_splits
from gptzoo.recipes.training.evaluation import estimate_metrics

MODEL = {"context_length": 32, "d_model": 16, "n_layers": 1, "n_heads": 2}


def examples(task, length=32, n=50):
    split = TaskExamples(task, length, seed=0, split="train")
    return [split.example(i) for i in range(n)]


# ---- each task's answers follow from its inputs alone (an oracle that reads only the inputs) ----


def mqar_oracle(inputs, n_pairs):
    pairs = dict(zip(inputs[0 : 2 * n_pairs : 2].tolist(), inputs[1 : 2 * n_pairs : 2].tolist(), strict=True))
    answers = np.full(len(inputs), IGNORE)
    for p in range(2 * n_pairs, len(inputs)):
        if inputs[p] in pairs:
            answers[p] = pairs[inputs[p]]
    return answers


def test_mqar_pairs_then_each_key_queried_once():
    task = MQAR(name="mqar", vocab_size=40, n_pairs=6)
    for inputs, targets in examples(task):
        keys, values = inputs[0:12:2], inputs[1:12:2]
        assert len(set(keys.tolist())) == 6 and ((1 <= keys) & (keys < 20)).all()
        assert ((20 <= values) & (values < 40)).all()
        answered = np.flatnonzero(targets != IGNORE)
        assert len(answered) == 6 and sorted(inputs[answered].tolist()) == sorted(keys.tolist())  # every key once
        np.testing.assert_array_equal(targets, mqar_oracle(inputs, 6))
        # after the pairs, only the queried keys and filler 0: no value is shown again, so no
        # query can be answered by elimination
        rest = np.ones(len(inputs), bool)
        rest[:12] = False
        rest[answered] = False
        assert (inputs[rest] == 0).all()
        assert all((inputs == v).sum() == 1 for v in values)


def test_induction_answers_are_the_second_copy():
    task = Induction(name="induction", vocab_size=10)
    for inputs, targets in examples(task, length=9):  # odd length: 4 tokens, separator, 4 again
        m = 4
        assert inputs[m] == 0 and (inputs[:m] > 0).all()
        np.testing.assert_array_equal(inputs[m + 1 : 2 * m + 1], inputs[:m])
        np.testing.assert_array_equal(targets[m : 2 * m], inputs[:m])
        assert (targets[:m] == IGNORE).all() and (targets[2 * m :] == IGNORE).all()


def test_selective_copy_answers_are_the_data_tokens_in_order():
    task = SelectiveCopy(name="selective_copy", vocab_size=12, n_tokens=5)
    for inputs, targets in examples(task, length=20):
        body, markers = inputs[:15], inputs[15:]
        assert (markers == 1).all() and (targets[:15] == IGNORE).all()
        data = body[body != 0]  # the tokens among the noise, in order
        assert len(data) == 5 and (data >= 2).all()
        np.testing.assert_array_equal(targets[15:], data)


def test_splits_differ_by_seed_and_examples_rebuild_alike():
    task = Induction(name="induction", vocab_size=50, train_examples=10, val_examples=4)
    train, val = task_splits(task, 16, seed=3)
    assert (len(train), len(val)) == (10, 4)
    assert not np.array_equal(train.example(0)[0], val.example(0)[0])
    np.testing.assert_array_equal(train.example(7)[0], TaskExamples(task, 16, 3, "train").example(7)[0])
    assert not np.array_equal(train.example(7)[0], TaskExamples(task, 16, 4, "train").example(7)[0])
    inputs, targets = train.batch([7, 2])
    assert inputs.shape == targets.shape == (2, 16) and inputs.dtype == torch.int64
    assert inputs[0].tolist() == train.example(7)[0].tolist()
    with pytest.raises(IndexError):
        train.example(10)


# ---- accuracy and loss count answers only -------------------------------------------------


class EchoModel(nn.Module):
    """Predicts the current input token with logit 10, every other id with 0."""

    def forward(self, idx):
        return 10.0 * nn.functional.one_hot(idx, 4).float()  # (B, T, V=4)


class FixedWindows:
    def __init__(self, inputs, targets):
        self.inputs, self.targets = torch.tensor(inputs), torch.tensor(targets)

    def __len__(self):
        return len(self.inputs)

    def batch(self, indices):
        return self.inputs[list(indices)], self.targets[list(indices)]


def test_accuracy_and_loss_on_answer_positions_only():
    windows = FixedWindows([[0, 1, 2], [3, 3, 0]], [[IGNORE, 1, 3], [IGNORE, IGNORE, 0]])
    # answers: (row 0, pos 1) target 1 = input (right), (0, 2) target 3 ≠ input 2 (wrong), (1, 2) target 0 = input (right)
    loss, accuracy = estimate_metrics(EchoModel(), windows, n_batches=1, batch_size=2, device=torch.device("cpu"))
    assert accuracy == pytest.approx(2 / 3)
    right = -torch.log_softmax(torch.tensor([10.0, 0, 0, 0]), 0)[0].item()  # loss where the echo is the answer
    wrong = -torch.log_softmax(torch.tensor([10.0, 0, 0, 0]), 0)[1].item()
    assert loss == pytest.approx((2 * right + wrong) / 3)


# ---- config ---------------------------------------------------------------------------------


def test_task_config_defaults_an_integer_tokenizer(registry):
    config = validate_run_config(
        {"model": MODEL, "data": {"task": {"name": "mqar", "vocab_size": 30, "n_pairs": 4}}}, "t", registry
    )
    assert (
        config.model.tokenizer.name == "integers" and config.model.tokenizer.build().vocab_size == 32
    )  # 30 ids, eot, unk
    again = validate_run_config(json.loads(config.model_dump_json()), "t", registry)  # config.json round trip
    assert again == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"task": {"name": "mqar", "n_pairs": 9}}, "n_pairs = 9 needs 4 × n_pairs = 36 tokens"),
        ({"task": {"name": "mqar", "n_pair": 2}}, "n_pair"),
        ({"task": {"name": "copying"}}, "'mqar', 'induction', 'selective_copy'"),
        ({"task": {"name": "induction"}, "source": "x.txt"}, "data.source = 'x.txt' and data.task: give one"),
        (
            {"task": {"name": "selective_copy", "n_tokens": 17}},
            "n_tokens = 17 needs context_length ≥ 2 × n_tokens = 34",
        ),
    ],
)
def test_task_config_errors_name_the_field(registry, data, message):
    with pytest.raises(ConfigError, match="data") as err:
        validate_run_config({"model": MODEL, "data": data}, "cfg.toml", registry)
    assert message in str(err.value)


def test_task_with_a_too_small_tokenizer_is_refused(registry):
    model = {**MODEL, "tokenizer": {"name": "integers", "vocab_size": 10}}
    with pytest.raises(ConfigError, match="model.tokenizer must have a fixed vocabulary covering them"):
        validate_run_config({"model": model, "data": {"task": {"name": "induction", "vocab_size": 20}}}, "t", registry)


# ---- through the CLI ----------------------------------------------------------------------


def test_train_and_eval_a_task_through_the_cli(tmp_path, capsys):
    config = tmp_path / "task.toml"
    config.write_text(
        '[model]\ncontext_length = 16\nd_model = 16\nn_layers = 1\nn_heads = 2\npositional = { name = "rope" }\n'
        '[data]\ntask = { name = "induction", vocab_size = 12, val_examples = 16 }\n'
        '[train]\nmax_steps = 4\neval_interval = 2\neval_batches = 1\nbatch_size = 4\nsample_tokens = 4\nsample_prompt = "3 5"\n'
    )
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--set", "train.device=cpu"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(0 <= r["val_accuracy"] <= 1 for r in records)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "validation split (16 induction examples)" in out and "answer accuracy" in out


def test_a_sweep_over_a_task_reports_answer_accuracy(tmp_path, capsys):
    (tmp_path / "base.toml").write_text(
        "[model]\ncontext_length = 16\nd_model = 16\nn_layers = 1\nn_heads = 2\n"
        '[data]\ntask = { name = "mqar", vocab_size = 16, n_pairs = 2, val_examples = 8 }\n'
        '[train]\nmax_steps = 2\neval_interval = 2\neval_batches = 1\nbatch_size = 4\nsample_tokens = 0\ndevice = "cpu"\n'
    )
    (tmp_path / "sweep.toml").write_text('base = "base.toml"\n[axes]\n"model.positional.name" = ["learned", "alibi"]\n')
    assert main(["ablate", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    header, _, base, alibi = (tmp_path / "out" / "results.md").read_text().splitlines()[2:6]
    assert "| final val accuracy |" in header
    column = header.split(" | ").index("final val accuracy")
    accuracies = [float(row.split(" | ")[column]) for row in (base, alibi)]
    assert all(0 <= a <= 1 for a in accuracies)
