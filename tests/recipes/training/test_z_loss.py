"""The z-loss on the output logits (PaLM; Wortsman et al., 2023): train.z_loss × log(Z)² averaged over the
tokens joins the loss being minimised, metrics.jsonl logs log(Z)², and evaluation reports the language-model
loss alone."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import ConfigError
from gptzoo.recipes.config.schema import TrainConfig, validate_run_config
from gptzoo.recipes.data.tokens import TokenWindows, WindowSampler, load_tokens, split_windows
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training.evaluation import estimate_loss
from gptzoo.recipes.training.loop import train, train_step, z_loss
from gptzoo.testing import build, tiny_config

WEIGHT = 0.3  # far above PaLM's 1e-4, so that two steps with and without it differ well beyond rounding


def test_z_loss_is_the_squared_log_normaliser_averaged_over_tokens():
    # Token 1: logits 0, 0, 0, 0 -> Z = 4. Token 2: logits ln 1, ln 2, ln 3, ln 4 -> Z = 1 + 2 + 3 + 4 = 10.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(1), math.log(2), math.log(3), math.log(4)]]])
    by_hand = (math.log(4) ** 2 + math.log(10) ** 2) / 2  # 3.6118...
    assert z_loss(logits).item() == pytest.approx(by_hand, rel=1e-6)
    # shifting every logit by c shifts log Z by c: a softmax-invariant change the z-loss does see
    assert z_loss(torch.zeros(1, 1, 8) + 2.0).item() == pytest.approx((math.log(8) + 2.0) ** 2, rel=1e-6)


def _two_sgd_steps(config, windows, z_weight):
    model = build(config).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sums = {}
    cfg = TrainConfig(max_steps=2, batch_size=4, grad_clip=0, z_loss=z_weight)
    for _ in range(2):
        train_step(model, optimizer, windows, WindowSampler(len(windows), 0), cfg, 0.1, torch.device("cpu"), sums)
    return model, sums


def test_two_steps_minimise_cross_entropy_plus_weighted_z_loss(registry):
    config = tiny_config(registry, n_layers=2)
    tokens = torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0))
    windows = TokenWindows(tokens.numpy(), 16, 16)
    model, sums = _two_sgd_steps(config, windows, WEIGHT)

    by_hand = build(config).train()
    sgd = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    logged = 0.0
    for _ in range(2):
        inputs, targets = windows.batch(WindowSampler(len(windows), 0).take(4))
        logits = by_hand(inputs)  # (B, T, V)
        log_z = logits.exp().sum(dim=-1).log()  # the normaliser's log, summed directly
        z_term = log_z.square().sum() / log_z.numel()
        (F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + WEIGHT * z_term).backward()
        sgd.step()
        sgd.zero_grad()
        logged += z_term.item()

    for (name, got), expected in zip(model.state_dict().items(), by_hand.state_dict().values(), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=name)
    assert set(sums) == {"z_loss"} and sums["z_loss"].item() == pytest.approx(logged, rel=1e-5)

    without, no_sums = _two_sgd_steps(config, windows, 0.0)
    assert no_sums == {}
    moved = [(a - b).abs().max().item() for a, b in zip(model.parameters(), without.parameters(), strict=True)]
    assert max(moved) > 1e-4  # the z-loss changed the update


def test_training_logs_log_z_squared_and_evaluates_the_lm_loss_alone(tmp_path, shared_data):
    def run(name, z_weight):
        data = {
            "model": {"context_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 4, "tokenizer": "char"},
            "data": {"source": str(shared_data("the-verdict.txt")), "cache_dir": str(tmp_path / "cache")},
            "train": {"max_steps": 2, "batch_size": 4, "eval_interval": 2, "eval_batches": 2, "sample_tokens": 0}
            | ({"z_loss": z_weight} if z_weight is not None else {}),
        }
        train(validate_run_config(data, "test"), tmp_path / name, progress=False, log=lambda s: None)
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    (on,) = run("on", WEIGHT)
    (off,) = run("off", None)
    # log(Z)² of a char model near initialisation: log Z is about log V plus a little
    assert on["aux_z_loss"] > 1.0 and "aux_z_loss" not in off

    trained = load_run(tmp_path / "on")
    _, val = split_windows(load_tokens(trained.config.data, trained.tokenizer), 16, trained.config.data)
    cross_entropy_only = estimate_loss(trained.model, val, 2, 4, torch.device("cpu"))
    assert on["val_loss"] == pytest.approx(cross_entropy_only, rel=1e-6)


def test_a_negative_weight_is_refused():
    with pytest.raises(ConfigError, match="z_loss"):
        validate_run_config({"model": {}, "train": {"max_steps": 1, "z_loss": -1e-4}}, "bad.toml")
