"""A model.d_model axis reported as Zoology's accuracy-against-width curves (width.png)."""

import pytest

from gptzoo.recipes.research.sweep import RunResult, aggregate, load_sweep
from gptzoo.recipes.research.sweep.plots import plot_width, width_curves
from gptzoo.recipes.research.sweep.report import write_results
from tests.recipes.research.test_ablate import write  # noqa: F401 -- the fixture

SWEEP = """seeds = [0, 1]
[axes]
"model.positional.name" = ["learned", "rope"]
"model.d_model" = [64, 32]
"""


def results_by_hand(sweep):
    """Final loss 3.0 at width 32, 2.0 at 64, 0.5 more with rope, 0.2 more on seed 1."""
    runs = []
    for variant in sweep.variants:
        if "model.d_model" not in variant.overrides:
            continue  # a base outside the grid
        width, scheme = variant.overrides["model.d_model"], variant.overrides["model.positional.name"]
        for seed in (0, 1):
            loss = (3.0 if width == 32 else 2.0) + (0.5 if scheme == "rope" else 0.0) + 0.2 * seed
            runs.append(RunResult(variant.slug, seed, "done", final_val_loss=loss))
    return runs


def test_a_width_axis_gives_one_curve_per_other_variant_in_increasing_width(write, registry, tmp_path):  # noqa: F811
    sweep = load_sweep(write(SWEEP), registry)
    rows = aggregate(sweep.variants, results_by_hand(sweep))
    curves = width_curves(sweep, rows)
    assert list(curves) == ["positional=learned", "positional=rope"]  # one curve per position scheme
    learned = [(width, stat.mean) for width, stat in curves["positional=learned"]]
    rope = [(width, stat.mean) for width, stat in curves["positional=rope"]]
    # Means over seeds 0 and 1 (+0.0, +0.2): 3.1 at 32 and 2.1 at 64; rope 0.5 above; widths sorted up.
    assert learned == [(32, pytest.approx(3.1)), (64, pytest.approx(2.1))]
    assert rope == [(32, pytest.approx(3.6)), (64, pytest.approx(2.6))]
    # Sample std of (x, x + 0.2): 0.2 / √2.
    assert curves["positional=rope"][0][1].std == pytest.approx(0.141421, abs=1e-6)
    pytest.importorskip("matplotlib")
    plot_width(sweep, rows, tmp_path / "width.png")
    assert (tmp_path / "width.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sweep_writes_width_png_only_with_a_width_axis(write, registry, tmp_path):  # noqa: F811
    pytest.importorskip("matplotlib")
    with_width = load_sweep(write(SWEEP), registry)
    (tmp_path / "a").mkdir()
    write_results(with_width, tmp_path / "a", results_by_hand(with_width), log=lambda _: None)
    assert (tmp_path / "a" / "width.png").exists()
    without = load_sweep(
        write('seeds = [0, 1]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n', "b.toml"), registry
    )
    (tmp_path / "b").mkdir()
    write_results(without, tmp_path / "b", [], log=lambda _: None)
    assert not (tmp_path / "b" / "width.png").exists()
