"""Auxiliary losses: a component's extra loss joins training with its weight, is logged by name,
and stays out of evaluation."""

import json

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import AuxiliaryLoss
from gptzoo.plugins.feed_forward import GELUFeedForward
from gptzoo.recipes.config.schema import TrainConfig, validate_run_config
from gptzoo.recipes.data.tokens import TokenWindows, WindowSampler
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training.evaluation import estimate_loss
from gptzoo.recipes.training.loop import train, train_step
from gptzoo.testing import build, tiny_config

WEIGHT = 0.5


class PenalisedMLP(GELUFeedForward):
    """Reports the mean squared hidden activation, a stand-in for a router's balance loss."""

    def forward(self, x):
        hidden = self.activation(self.in_proj(x))
        self.penalty = hidden.square().mean()
        return self.out_proj(hidden)

    def auxiliary_losses(self):
        return {"activation_l2": AuxiliaryLoss(self.penalty, WEIGHT)}


@pytest.fixture
def aux_registry(registry):
    registry.add("feed_forward", "penalised", PenalisedMLP)
    return registry


def test_two_steps_minimise_lm_loss_plus_weighted_aux(aux_registry):
    config = tiny_config(aux_registry, feed_forward="penalised", n_layers=2)
    tokens = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0))
    windows = TokenWindows(tokens.numpy(), 16, 16)
    cfg = TrainConfig(max_steps=2, batch_size=4, grad_clip=0)

    model = build(config).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sums = {}
    for _ in range(2):
        train_step(model, optimizer, windows, WindowSampler(len(windows), 0), cfg, 0.1, torch.device("cpu"), sums)

    by_hand = build(config).train()
    sgd = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    expected_aux = 0.0
    for _ in range(2):
        inputs, targets = windows.batch(WindowSampler(len(windows), 0).take(4))
        logits = by_hand(inputs)
        penalties = [block.feed_forward.penalty for block in by_hand.blocks]
        aux = sum(penalties) / len(penalties)  # averaged over the layers reporting it
        (F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + WEIGHT * aux).backward()
        sgd.step()
        sgd.zero_grad()
        expected_aux += aux.item()

    for (name, got), expected in zip(model.state_dict().items(), by_hand.state_dict().values(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
    assert set(sums) == {"activation_l2"} and sums["activation_l2"].item() == pytest.approx(expected_aux, rel=1e-5)


def test_training_logs_each_aux_loss_and_evaluates_the_lm_loss_alone(aux_registry, tmp_path, shared_data):
    data = {
        "model": {
            "context_length": 16,
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "tokenizer": "char",
            "feed_forward": "penalised",
        },
        "data": {"source": str(shared_data("the-verdict.txt")), "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 4, "batch_size": 4, "eval_interval": 2, "eval_batches": 2, "sample_tokens": 0},
    }
    train(validate_run_config(data, "test", aux_registry), tmp_path / "run", registry=aux_registry, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["aux_activation_l2"] > 0 for r in records)

    run = load_run(tmp_path / "run", aux_registry)
    from gptzoo.recipes.data.tokens import load_tokens, split_windows

    _, val = split_windows(load_tokens(run.config.data, run.tokenizer), 16, run.config.data)
    lm_only = estimate_loss(run.model, val, 2, 4, torch.device("cpu"))
    assert records[-1]["val_loss"] == pytest.approx(lm_only, rel=1e-6)
