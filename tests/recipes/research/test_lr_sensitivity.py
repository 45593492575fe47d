"""A learning-rate axis reported as curves with Wortsman et al.'s LR sensitivity; the cost columns."""

import math

import pytest

from gptzoo.recipes.research.sweep import RunResult, aggregate, load_sweep
from gptzoo.recipes.research.sweep.lr_sensitivity import lr_curves, lr_sensitivity, lr_table, plot_lr_curves
from gptzoo.recipes.research.sweep.measured import measurements_table
from gptzoo.recipes.research.sweep.report import markdown_table
from tests.recipes.research.test_ablate import write  # noqa: F401 -- the fixture


def test_lr_sensitivity_by_hand_clips_divergent_and_worse_than_initial_losses():
    # ℓ₀ = 4: the divergent run (NaN) and the one ending at 5 count as 4; clipped 3.0, 2.0, 2.5, 4.0, 4.0:
    # mean 15.5 / 5 = 3.1, best 2.0 -> 1.1.
    losses = {1e-4: 3.0, 1e-3: 2.0, 1e-2: 2.5, 3e-2: 5.0, 1e-1: math.nan}
    assert lr_sensitivity(losses, 4.0) == pytest.approx(1.1)
    assert lr_sensitivity({1e-3: 2.0, 1e-2: math.inf}, 4.0) == pytest.approx(1.0)  # (2 + 4) / 2 - 2
    assert lr_sensitivity({1e-3: 2.0, 1e-2: 2.0}, 4.0) == 0.0  # flat: insensitive


SWEEP = """seeds = [0, 1, 2]
[set]
"train.lr" = 0.001
"model.attention" = { name = "sdpa" }
[axes]
"model.attention.qk_norm" = ["none", "per_head"]
"train.lr" = [0.001, 0.01, 0.1]
"""


def results_by_hand(sweep):
    """Without QK-norm: seed s ends at 2.0 + s/10, 1.8 + s/10 and diverges at 0.1 (ℓ₀ = 4); with it: 2.0, 1.9, 2.1 + s/10."""
    slug = {(v.overrides["model.attention.qk_norm"], v.overrides["train.lr"]): v.slug for v in sweep.variants}
    plain = {0.001: 2.0, 0.01: 1.8, 0.1: None}
    normed = {0.001: 2.0, 0.01: 1.9, 0.1: 2.1}
    runs = []
    for seed in (0, 1, 2):
        for norm, finals in (("none", plain), ("per_head", normed)):
            for lr, final in finals.items():
                status = "diverged" if final is None else "done"
                loss = None if final is None else final + seed / 10
                logit = 50.0 if final is None else 5.0
                runs.append(RunResult(slug[norm, lr], seed, status, final_val_loss=loss, initial_val_loss=4.0, max_attention_logit=logit))  # fmt: skip
    return runs


def test_an_lr_axis_gives_one_curve_per_other_variant_with_paired_sensitivities(write, registry):  # noqa: F811
    sweep = load_sweep(write(SWEEP), registry)
    results = results_by_hand(sweep)
    plain, normed = lr_curves(sweep, results)
    assert (plain.label, normed.label) == ("attention.qk_norm=none", "attention.qk_norm=per_head")
    assert plain.losses[0.1] == {0: 4.0, 1: 4.0, 2: 4.0} and plain.diverged[0.1] == 3
    # No QK-norm, seed s: clipped (2.0 + s/10, 1.8 + s/10, 4.0): mean - best = (7.8 + 2s/10)/3 - (1.8 + s/10).
    for s in (0, 1, 2):
        assert plain.sensitivity[s] == pytest.approx((7.8 + 0.2 * s) / 3 - (1.8 + 0.1 * s))
        assert normed.sensitivity[s] == pytest.approx((6.0 + 0.3 * s) / 3 - (1.9 + 0.1 * s))
    # With QK-norm every seed's is 0.1 (mean 2.0 + s/10, best 1.9 + s/10); without, 0.8, 0.766667, 0.733333.
    # Δ per seed -0.7, -0.666667, -0.633333: mean -0.666667, std 0.033333, half width 4.302653 × 0.033333 / √3 = 0.082806.
    assert normed.delta.mean == pytest.approx(-0.666667, abs=1e-6)
    assert normed.delta.low == pytest.approx(-0.749473, abs=1e-5)

    table = lr_table(sweep, results).splitlines()
    assert table[2] == (
        "| variant | lr 0.001 | lr 0.01 | lr 0.1 | best lr | max attention logit at best lr | LR sensitivity | Δ LR sensitivity |"
    )
    # No QK-norm at 0.1: every seed diverged, shown as ℓ₀ = 4 ×3.
    assert table[4] == (
        "| attention.qk_norm=none | 2.1000 ± 0.1000 | 1.9000 ± 0.1000 | 4.0000 ± 0.0000 ×3 | 0.01 | 5.00 "
        "| 0.7667 ± 0.0333 | reference |"
    )
    assert table[5].endswith("| 0.1000 ± 0.0000 | -0.6667 [-0.7495, -0.5839] * |")


def test_the_lr_plot_is_written(write, registry, tmp_path):  # noqa: F811
    sweep = load_sweep(write(SWEEP), registry)
    plot_lr_curves(sweep, results_by_hand(sweep), tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_shows_state_bytes_flops_per_token_and_marks_a_loaded_machine(write, registry):  # noqa: F811
    sweep = load_sweep(write('[axes]\n"model.positional.name" = ["learned", "rope"]\n'), registry)
    learned, rope = (v.slug for v in sweep.variants)
    results = [
        RunResult(learned, 0, "done", final_val_loss=3.0, tokens=1000, flops=6e6, state_bytes=4096, tokens_per_s=50.0),
        RunResult(rope, 0, "done", final_val_loss=3.0, tokens=1000, flops=5e6, state_bytes=2048, tokens_per_s=50.0, load_per_core=1.5),
    ]  # fmt: skip
    rows = aggregate(sweep.variants, results)
    markdown, measured = markdown_table(sweep, rows).splitlines(), measurements_table(rows).splitlines()
    header = markdown[2].split(" | ")
    assert header[header.index("state bytes") + 1] == "FLOPs/token"
    assert "| 4,096 | 6e+03 |" in markdown[4] and "| 50 |" in measured[4]  # 6e6 FLOPs over 1000 tokens
    assert "| 2,048 | 5e+03 |" in markdown[5] and "| 50 ‡ |" in measured[5]
    assert "‡ = measured while the machine had more work than cores" in measured[-1]
