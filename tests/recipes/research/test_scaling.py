"""Scaling curves: a size axis, the power-law fit against exact power laws, one sweep through the CLI."""

import math

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.cli import main
from gptzoo.recipes.research.sweep import RunResult, aggregate, load_sweep
from gptzoo.recipes.research.sweep.fits import PowerLaw
from gptzoo.recipes.research.sweep.report import markdown_table

BASE = (
    "[model]\ncontext_length = 16\nd_model = 16\nn_layers = 1\nn_heads = 2\n"
    '[data]\ntask = { name = "induction", vocab_size = 10, val_examples = 8 }\n'
    '[train]\nmax_steps = 2\nbatch_size = 4\neval_interval = 2\neval_batches = 1\nsample_tokens = 0\ndevice = "cpu"\n'
)


def test_the_fit_recovers_an_exact_power_law():
    points = [(c, 7.0 * c**-0.05) for c in (1e6, 1e7, 1e8, 1e9)]
    fit = PowerLaw.fit(points)
    assert fit.a == pytest.approx(7.0) and fit.b == pytest.approx(0.05)
    assert fit(1e10) == pytest.approx(7.0 * 1e10**-0.05)
    # Two points fix the line through them: log(3/2) / log(100) = 0.0880456
    assert PowerLaw.fit([(1e6, 3.0), (1e8, 2.0)]).b == pytest.approx(math.log(1.5) / math.log(100))
    assert PowerLaw.fit([(1e6, 3.0)]) is None


def test_sizes_are_the_slowest_axis_and_the_first_is_the_base(tmp_path, registry):
    (tmp_path / "base.toml").write_text(BASE)
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(
        'base = "base.toml"\n[sizes]\nxs = { "model.d_model" = 8 }\ns = { model = { d_model = 32, n_layers = 2 } }\n'
        '[axes]\n"model.positional.name" = ["learned", "alibi"]\n'
    )
    sweep = load_sweep(sweep_file, registry)
    assert [v.label for v in sweep.variants] == [
        "size=xs, positional=learned",
        "size=xs, positional=alibi",
        "size=s, positional=learned",
        "size=s, positional=alibi",
    ]
    assert [v.is_base for v in sweep.variants] == [True, False, False, False]
    s_alibi = sweep.variants[3]
    assert (s_alibi.size, s_alibi.group) == ("s", "positional=alibi")
    assert (s_alibi.config.model.d_model, s_alibi.config.model.n_layers) == (32, 2)
    sweep_file.write_text('base = "base.toml"\n[sizes]\nxs = { "model.d_model" = 8 }\nbad = { "model.d_model" = 9 }\n')
    with pytest.raises(ConfigError, match=r"\[sizes\] bad"):
        load_sweep(sweep_file, registry)


def test_a_scaling_sweep_through_the_cli(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "sweep.toml").write_text(
        'base = "base.toml"\n[sizes]\nxs = { "model.d_model" = 8 }\ns = { "model.d_model" = 16 }\nm = { "model.d_model" = 32 }\n'
    )
    assert main(["ablate", str(tmp_path / "sweep.toml"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    lines = (tmp_path / "out" / "results.md").read_text().splitlines()
    start = lines.index("| variant | xs | s | m | a | b |")
    row = lines[start + 2].split(" | ")
    assert row[0] == "| base" and len(row) == 6 and float(row[4]) > 0
    assert (tmp_path / "out" / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_with_sizes_each_delta_is_taken_at_its_own_size(tmp_path, registry):
    (tmp_path / "base.toml").write_text(BASE)
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(
        'base = "base.toml"\n[sizes]\nxs = { "model.d_model" = 8 }\ns = { "model.d_model" = 32 }\n'
        '[axes]\n"model.positional.name" = ["learned", "alibi"]\n'
    )
    sweep = load_sweep(sweep_file, registry)
    losses = {  # (size, positional) -> final loss per seed 0, 1
        ("xs", "learned"): (4.0, 4.2),
        ("xs", "alibi"): (3.9, 4.0),
        ("s", "learned"): (3.0, 3.1),
        ("s", "alibi"): (3.2, 3.4),
    }
    results = [
        RunResult(
            v.slug, seed, "done", final_val_loss=losses[v.size, v.config.model.positional.name][seed], best_val_loss=0.0
        )
        for v in sweep.variants
        for seed in (0, 1)
    ]
    rows = {row.variant.label: row for row in aggregate(sweep.variants, results)}
    # against the learned table at the same size: xs (-0.1, -0.2) -> -0.15; s (+0.2, +0.3) -> +0.25
    assert rows["size=xs, positional=alibi"].delta_loss.mean == pytest.approx(-0.15)
    assert rows["size=s, positional=alibi"].delta_loss.mean == pytest.approx(0.25)
    assert rows["size=s, positional=learned"].is_reference and rows["size=s, positional=learned"].delta_loss.mean == 0
    table = markdown_table(sweep, list(rows.values()))
    assert "Δ = variant − base at the same size" in table and "| its size's base |" in table


def test_each_size_may_set_its_own_budget_but_an_axis_may_not(tmp_path, registry):
    (tmp_path / "base.toml").write_text(BASE.replace("max_steps = 2", "max_tokens = 128"))
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(
        'base = "base.toml"\n[sizes]\nxs = { "model.d_model" = 8, "train.max_tokens" = 64 }\n'
        's = { "model.d_model" = 16, "train.max_tokens" = 256, "train.lr" = 1e-3 }\n'
        '[axes]\n"model.positional.name" = ["learned", "alibi"]\n'
    )
    budgets = {
        (v.size, v.config.train.max_tokens, v.config.train.lr) for v in load_sweep(sweep_file, registry).variants
    }
    assert budgets == {("xs", 64, 3e-4), ("s", 256, 1e-3)}  # 3e-4: the default lr, from the base
    sweep_file.write_text(sweep_file.read_text() + '"train.max_tokens" = [64, 128]\n')
    with pytest.raises(ConfigError, match=r"\[axes\] train.max_tokens = 128: changes train.max_tokens"):
        load_sweep(sweep_file, registry)
