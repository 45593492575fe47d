"""gptzoo ablate: grid expansion, validation before training, fairness, resume, failures, aggregation, outputs."""

import csv
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from gptzoo.core import ConfigError, GptzooError, Norm
from gptzoo.recipes import cli
from gptzoo.recipes.research.sweep import RunResult, aggregate, load_sweep, run_sweep
from gptzoo.recipes.research.sweep.measured import measurements_table
from gptzoo.recipes.research.sweep.plan import expand_grid
from gptzoo.recipes.research.sweep.report import markdown_table
from gptzoo.recipes.research.sweep.results import Stat
from gptzoo.recipes.runs.files import TRAIN_STATE
from gptzoo.recipes.runs.metrics import append_metrics
from gptzoo.recipes.training.loop import NonFiniteLossError

BASE = """
[model]
context_length = 16
d_model = 32
n_layers = 1
n_heads = 2
tokenizer = {{ name = "byte" }}
positional = {{ name = "learned" }}
norm = {{ name = "layernorm" }}

[data]
source = "{source}"
cache_dir = "{cache}"

[train]
max_steps = 6
batch_size = 4
eval_interval = 3
eval_batches = 1
sample_tokens = 0
device = "cpu"
"""


@pytest.fixture
def write(tmp_path):
    """write(sweep_text) -> path of a sweep file beside a tiny base config (byte tokenizer, small text)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    (tmp_path / "base.toml").write_text(BASE.format(source=corpus, cache=tmp_path / "cache"), encoding="utf-8")

    def write_sweep(text: str, name: str = "sweep.toml") -> Path:
        path = tmp_path / name
        path.write_text('base = "base.toml"\n' + text, encoding="utf-8")
        return path

    return write_sweep


class FakeTrainer:
    """Stands in for recipes.train.train: records calls, writes two evaluations, returns a summary.

    Final validation loss = 3 + 0.5 for rope + 0.1 × seed, so aggregates are known by hand.
    """

    def __init__(self, fail: dict | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail or {}  # run folder name -> exception to raise

    def __call__(self, config, out, *, resume=False, registry=None, progress=True, log=print):
        out = Path(out)
        self.calls.append((out.name, resume))
        if out.name in self.fail:
            raise self.fail[out.name]
        final = 3.0 + (0.5 if config.model.positional.name == "rope" else 0.0) + 0.1 * config.train.seed
        out.mkdir(parents=True, exist_ok=True)
        append_metrics(out, {"step": 3, "tokens": 192, "val_loss": final + 1.0})
        append_metrics(out, {"step": 6, "tokens": 384, "val_loss": final})
        return SimpleNamespace(
            steps=6,
            tokens=384,
            final_val_loss=final,
            best_val_loss=final,
            tokens_per_s=1000.0,
            peak_memory_bytes=2**20,
            wall_s=2.0,
            stopped="done",
        )


# ---- grid expansion -----------------------------------------------------------------------


def test_product_grid_varies_the_first_axis_slowest():
    axes = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert expand_grid(axes, "product") == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"},
    ]  # fmt: skip


def test_one_at_a_time_grid_is_the_base_then_each_value_alone():
    axes = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert expand_grid(axes, "one_at_a_time") == [{}, {"a": 1}, {"a": 2}, {"b": "x"}, {"b": "y"}, {"b": "z"}]


def test_product_sweep_resolves_every_variant_and_marks_the_base(write, registry):
    sweep = load_sweep(
        write(
            'seeds = [0, 1]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n"model.norm.name" = ["layernorm", "rmsnorm"]\n'
        ),
        registry,
    )
    assert [v.label for v in sweep.variants] == [
        "positional=learned, norm=layernorm",
        "positional=learned, norm=rmsnorm",
        "positional=rope, norm=layernorm",
        "positional=rope, norm=rmsnorm",
    ]
    assert [v.slug for v in sweep.variants] == [
        "positional-learned_norm-layernorm",
        "positional-learned_norm-rmsnorm",
        "positional-rope_norm-layernorm",
        "positional-rope_norm-rmsnorm",
    ]
    assert [(v.config.model.positional.name, v.config.model.norm.name) for v in sweep.variants] == [
        ("learned", "layernorm"), ("learned", "rmsnorm"), ("rope", "layernorm"), ("rope", "rmsnorm"),
    ]  # fmt: skip
    assert [v.is_base for v in sweep.variants] == [True, False, False, False]
    assert sweep.seeds == [0, 1]


def test_one_at_a_time_sweep_skips_values_equal_to_the_base(write, registry):
    sweep = load_sweep(
        write(
            'mode = "one_at_a_time"\n[axes]\n"model.positional.name" = ["learned", "rope", "alibi"]\n"model.norm.name" = ["rmsnorm"]\n'
        ),
        registry,
    )
    assert [v.label for v in sweep.variants] == ["base", "positional=rope", "positional=alibi", "norm=rmsnorm"]
    assert [(v.config.model.positional.name, v.config.model.norm.name) for v in sweep.variants] == [
        ("learned", "layernorm"), ("rope", "layernorm"), ("alibi", "layernorm"), ("learned", "rmsnorm"),
    ]  # fmt: skip
    assert sweep.seeds == [0]  # the base's train.seed


def test_a_product_grid_without_the_base_runs_the_base_too(write, registry):
    sweep = load_sweep(write('[axes]\n"model.positional.name" = ["rope", "alibi"]\n'), registry)
    assert [(v.label, v.is_base) for v in sweep.variants] == [
        ("base", True),
        ("positional=rope", False),
        ("positional=alibi", False),
    ]


def test_axis_values_may_be_tables_booleans_and_numbers_and_set_applies_to_all(write, registry):
    sweep = load_sweep(
        write(
            '[set]\ntrain.lr = 0.01\n"model.positional" = { name = "rope", base = 500.0 }\n'
            "[axes]\n"
            'model.feed_forward = [{ name = "gelu" }, { name = "swiglu", hidden = 48 }]\n'
            '"model.tied_head" = [false, true]\n'
        ),
        registry,
    )
    got = [
        (v.config.model.feed_forward.name, v.config.model.feed_forward.params.hidden, v.config.model.tied_head)
        for v in sweep.variants
    ]
    assert got == [("gelu", None, False), ("gelu", None, True), ("swiglu", 48, False), ("swiglu", 48, True)]
    for variant in sweep.variants:  # [set]: an unquoted dotted key and a whole component spec
        assert variant.config.train.lr == 0.01
        assert (variant.config.model.positional.name, variant.config.model.positional.params.base) == ("rope", 500.0)
    assert sweep.variants[2].label == "feed_forward=swiglu(hidden=48), tied_head=false"


# ---- validation before anything trains ----------------------------------------------------


@pytest.mark.parametrize(
    "axis, named",
    [
        (
            '"model.positionl.name" = ["learned", "rope"]',
            ["model.positionl.name", "positionl", "did you mean 'positional'"],
        ),
        ('"model.positional.name" = ["learned", "rop"]', ["model.positional.name", "'rop'", "did you mean 'rope'"]),
        ('"model.norm.eps" = [1e-5, "tiny"]', ["model.norm.eps", "tiny"]),
    ],
)
def test_a_typo_in_an_axis_fails_before_any_training_naming_it(write, tmp_path, capsys, axis, named):
    out = tmp_path / "out"
    code = cli.main(["ablate", str(write(f"[axes]\n{axis}\n")), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    for text in named:
        assert text in err
    assert not out.exists()  # nothing ran, nothing was written


@pytest.mark.parametrize(
    "text, named",
    [
        ('[axes]\n"data.seed" = [0, 1]\n', "changes [data]"),
        ('[axes]\n"train.seed" = [0, 1]\n', "seeds = [...]"),
        ('[axes]\n"train.max_steps" = [6, 12]\n', "changes train.max_steps"),
        ('[axes]\n"model.tokenizer.name" = ["byte", "tiktoken"]\n', "tokenizer"),
        ('[axes]\n"train.batch_size" = [4, 8]\n', "train.max_tokens"),
        ('[axes]\n"model.positional.name" = "rope"\n', "list the values"),
        ('[axes]\n"model.positional.name" = ["rope", "rope"]\n', "more than once"),
        ('seeds = [1, 1]\n[axes]\n"model.positional.name" = ["rope"]\n', "repeat a seed"),
        ('colour = "red"\n', "colour"),
    ],
)
def test_unfair_or_malformed_sweeps_are_refused(write, registry, text, named):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(text), registry)
    assert named in str(err.value)


def test_different_batch_sizes_are_fair_with_a_token_budget(write, registry):
    path = write('[axes]\n"train.batch_size" = [4, 8]\n')
    base = path.parent / "base.toml"
    base.write_text(base.read_text().replace("max_steps = 6", "max_tokens = 384"))
    sweep = load_sweep(path, registry)
    assert [v.config.train.batch_size for v in sweep.variants] == [4, 8]
    assert [v.config.train.max_tokens for v in sweep.variants] == [384, 384]


def test_base_is_found_beside_the_sweep_file_first(write, registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    assert load_sweep(write("")).base_path == tmp_path / "base.toml"
    nested = tmp_path / "ablations"
    nested.mkdir()
    (nested / "s.toml").write_text('base = "base.toml"\n')
    monkeypatch.chdir(tmp_path)  # not beside s.toml: found from the current folder
    assert load_sweep(nested / "s.toml", registry).base_path == Path("base.toml")
    (nested / "t.toml").write_text('base = "missing.toml"\n')
    with pytest.raises(ConfigError, match="missing.toml"):
        load_sweep(nested / "t.toml", registry)


# ---- running: resume, failures, the output folder -------------------------------------------


def test_rerunning_skips_finished_runs_and_resumes_unfinished_ones(write, tmp_path, registry):
    sweep = load_sweep(write('seeds = [0, 1]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n'), registry)
    out = tmp_path / "out"
    trainer = FakeTrainer()
    run_sweep(sweep, out, trainer=trainer, registry=registry, progress=False, log=lambda m: None)
    assert sorted(trainer.calls) == [
        ("positional-learned-seed0", False), ("positional-learned-seed1", False),
        ("positional-rope-seed0", False), ("positional-rope-seed1", False),
    ]  # fmt: skip

    again = FakeTrainer()
    run_sweep(sweep, out, trainer=again, registry=registry, progress=False, log=lambda m: None)
    assert again.calls == []

    unfinished = out / "runs" / "positional-rope-seed1"
    (unfinished / "ablation.json").unlink()
    (unfinished / TRAIN_STATE).write_bytes(b"checkpoint")
    third = FakeTrainer()
    run_sweep(sweep, out, trainer=third, registry=registry, progress=False, log=lambda m: None)
    assert third.calls == [("positional-rope-seed1", True)]


def test_failed_and_diverged_runs_are_reported_and_the_others_complete(write, tmp_path, registry):
    sweep = load_sweep(
        write('seeds = [0, 1]\n[axes]\n"model.positional.name" = ["learned", "rope", "alibi"]\n'), registry
    )
    out = tmp_path / "out"
    trainer = FakeTrainer(
        fail={
            "positional-rope-seed1": NonFiniteLossError("loss became NaN"),
            "positional-alibi-seed0": RuntimeError("boom"),
        }
    )
    results = run_sweep(sweep, out, trainer=trainer, registry=registry, progress=False, log=lambda m: None)

    assert len(trainer.calls) == 6
    assert [(r.variant, r.seed, r.status) for r in results] == [
        ("positional-learned", 0, "done"), ("positional-learned", 1, "done"),
        ("positional-rope", 0, "done"), ("positional-rope", 1, "diverged"),
        ("positional-alibi", 0, "failed"), ("positional-alibi", 1, "done"),
    ]  # fmt: skip
    rows = {row["variant"]: row for row in csv.DictReader(open(out / "results.csv", encoding="utf-8"))}
    assert rows["positional-learned"]["status"] == "ok"
    assert rows["positional-rope"]["status"] == "diverged (1/2 seeds)"
    assert rows["positional-alibi"]["status"] == "failed (1/2 seeds): RuntimeError: boom"
    assert float(rows["positional-rope"]["final_val_loss_mean"]) == pytest.approx(3.5)  # the seed that trained
    assert rows["positional-rope"]["seeds_ok"] == "1"
    assert "failed (1/2 seeds): RuntimeError: boom" in (out / "results.md").read_text(encoding="utf-8")

    # The failure is retried on the next run; the divergence is a result and is not.
    retry = FakeTrainer()
    run_sweep(sweep, out, trainer=retry, registry=registry, progress=False, log=lambda m: None)
    assert retry.calls == [("positional-alibi-seed0", False)]


def test_a_folder_holding_another_sweep_or_other_files_is_refused(write, tmp_path, registry):
    out = tmp_path / "out"
    first = load_sweep(write('[axes]\n"model.positional.name" = ["learned", "rope"]\n'), registry)
    run_sweep(first, out, trainer=FakeTrainer(), registry=registry, progress=False, log=lambda m: None)
    other = load_sweep(write('[axes]\n"model.positional.name" = ["learned", "alibi"]\n', "other.toml"), registry)
    with pytest.raises(GptzooError, match="holds a different sweep"):
        run_sweep(other, out, trainer=FakeTrainer(), registry=registry, progress=False)

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(GptzooError, match="not an ablation folder"):
        run_sweep(first, stranger, trainer=FakeTrainer(), registry=registry, progress=False)
    assert (stranger / "notes.txt").read_text() == "mine"


# ---- aggregation and outputs ---------------------------------------------------------------


def test_aggregate_is_mean_and_sample_std_over_seeds(write, registry):
    sweep = load_sweep(write('[axes]\n"model.positional.name" = ["learned", "rope"]\n'), registry)
    learned, rope = (v.slug for v in sweep.variants)

    def run(slug, seed, final, best):
        return RunResult(
            slug,
            seed,
            "done",
            params=100,
            final_val_loss=final,
            best_val_loss=best,
            tokens_per_s=10.0 * (seed + 1),
            peak_memory_bytes=seed + 1,
            wall_s=1.0 + seed,
        )

    results = [
        run(learned, 0, 2.0, 1.9),
        run(learned, 1, 2.4, 2.3),
        run(rope, 0, 2.0, 2.0),
        run(rope, 1, 2.2, 2.1),
        run(rope, 2, 2.6, 2.5),
    ]
    base_row, rope_row = aggregate(sweep.variants, results)

    # By hand: rope final losses 2.0, 2.2, 2.6 -> mean 6.8/3; deviations -0.2667, -0.0667, 0.3333;
    # squares sum 0.18667; / (3 - 1) = 0.093333; sqrt = 0.305505.
    assert rope_row.final_val_loss.mean == pytest.approx(2.266667, abs=1e-6)
    assert rope_row.final_val_loss.std == pytest.approx(0.305505, abs=1e-6)
    # Perplexities e^2.0 = 7.389056, e^2.2 = 9.025013, e^2.6 = 13.463738 averaged (not e^mean).
    assert rope_row.final_perplexity.mean == pytest.approx((7.389056 + 9.025013 + 13.463738) / 3, abs=1e-5)
    assert rope_row.best_val_loss.mean == pytest.approx(2.2, abs=1e-9)
    # learned: 2.0, 2.4 -> mean 2.2, std |2.4 - 2.0| / sqrt(2) = 0.282843
    assert base_row.final_val_loss.std == pytest.approx(0.282843, abs=1e-6)
    # Δ is paired by seed over the seeds both have: (2.0 - 2.0 + 2.2 - 2.4) / 2; two seeds give no interval.
    assert rope_row.delta_final_val_loss == pytest.approx(-0.1, abs=1e-9)
    assert rope_row.delta_loss.n == 2 and rope_row.delta_loss.low is None
    assert base_row.delta_final_val_loss == 0.0
    assert rope_row.tokens_per_s == pytest.approx(20.0)  # mean of 10, 20, 30
    assert rope_row.peak_memory_bytes == 3  # the largest
    assert rope_row.wall_s == pytest.approx(2.0)
    assert Stat.of([2.5]) == Stat(2.5, None)  # one seed: no spread to report


def test_outputs_have_the_documented_columns(write, tmp_path, registry):
    sweep = load_sweep(write('seeds = [0, 1]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n'), registry)
    out = tmp_path / "out"
    run_sweep(sweep, out, trainer=FakeTrainer(), registry=registry, progress=False, log=lambda m: None)

    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "variant", "label", "base", "status", "seeds", "seeds_ok", "params", "tokens", "flops",
        "final_val_loss_mean", "final_val_loss_std", "best_val_loss_mean", "best_val_loss_std",
        "final_val_accuracy_mean", "final_val_accuracy_std", "final_perplexity_mean", "final_perplexity_std", "best_perplexity_mean", "best_perplexity_std",
        "delta_final_val_loss", "delta_final_val_loss_ci95_low", "delta_final_val_loss_ci95_high",
        "delta_final_val_accuracy", "delta_final_val_accuracy_ci95_low", "delta_final_val_accuracy_ci95_high", "paired_seeds",
        "overrides", "flops_per_token", "state_bytes",
    ]  # fmt: skip
    table = dict(zip(rows[0], rows[2], strict=True))
    # FakeTrainer: rope seeds 0 and 1 end at 3.5 and 3.6; learned at 3.0 and 3.1.
    assert float(table["final_val_loss_mean"]) == pytest.approx(3.55)
    assert float(table["final_val_loss_std"]) == pytest.approx(0.1 / math.sqrt(2), rel=1e-5)
    assert float(table["delta_final_val_loss"]) == pytest.approx(0.5)
    assert table["overrides"] == 'model.positional.name="rope"'

    markdown = (out / "results.md").read_text(encoding="utf-8").splitlines()
    assert markdown[2].startswith(
        "| variant | params | tokens | train FLOPs | final val loss | Δ final val loss | best val loss |"
    )
    assert markdown[4].startswith("| **positional=learned** (base) |")
    assert "| 3.5500 ± 0.0707 | +0.5000 |" in markdown[5]  # two seeds: no interval
    assert "no interval is given with fewer than 3 seeds" in markdown[0]
    assert "Noise floor (the base's seed-to-seed std): 0.0707." in markdown[0]
    # what the machine measured (FakeTrainer's 1000 tokens/s, 1 MiB, 2 s), in files of their own
    with open(out / "measurements.csv", encoding="utf-8") as f:
        measured = list(csv.DictReader(f))
    assert list(measured[0]) == [
        "variant",
        "label",
        "tokens_per_s",
        "peak_memory_bytes",
        "wall_s",
        "workers",
        "speed_shared",
    ]
    assert [(m["variant"], m["tokens_per_s"], m["peak_memory_bytes"]) for m in measured] == [
        ("positional-learned", "1000", "1048576"),
        ("positional-rope", "1000", "1048576"),
    ]
    rope_row = (out / "measurements.md").read_text(encoding="utf-8").splitlines()[5]
    assert rope_row.startswith("| positional=rope | 1,000") and rope_row.endswith("| 1.0 MiB | 2.0 s |")  # ‡ if loaded
    assert "tokens/s" not in (out / "runs" / "positional-rope-seed0" / "ablation.json").read_text(encoding="utf-8")

    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spec = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [v["slug"] for v in spec["variants"]] == ["positional-learned", "positional-rope"]
    assert spec["variants"][1]["config"]["model"]["positional"]["name"] == "rope"


def test_table_gives_paired_intervals_from_three_seeds_and_flags_shared_throughput(write, registry):
    sweep = load_sweep(
        write('seeds = [0, 1, 2]\n[axes]\n"model.positional.name" = ["learned", "rope", "alibi"]\n'), registry
    )
    learned, rope, alibi = (v.slug for v in sweep.variants)
    finals = {learned: [3.0, 3.1, 3.3], rope: [2.9, 3.0, 3.15], alibi: [3.1, 3.0, 3.4]}
    results = [
        RunResult(slug, seed, "done", final_val_loss=loss, tokens_per_s=100.0, workers=2 if slug == alibi else 1)
        for slug, losses in finals.items() for seed, loss in enumerate(losses)
    ]  # fmt: skip
    rows = aggregate(sweep.variants, results)
    markdown = markdown_table(sweep, rows).splitlines()
    # rope − learned: -0.1, -0.1, -0.15 -> mean -0.116667, std 0.028868, half width 4.302653 × 0.028868 / √3 = 0.071714
    assert "| -0.1167 [-0.1884, -0.0450] * |" in markdown[5]
    # alibi − learned: 0.1, -0.1, 0.1 -> mean 0.033333, std 0.11547, half width 0.286844: the interval holds 0
    assert "| +0.0333 [-0.2535, +0.3202] |" in markdown[6]
    assert "95% Student-t interval over the seeds in brackets, * where it excludes 0" in markdown[0]
    assert "Noise floor (the base's seed-to-seed std): 0.1528." in markdown[0]  # 3.0, 3.1, 3.3
    measured = measurements_table(rows).splitlines()
    assert "| 100 † |" in measured[6] and "| 100 |" in measured[5]
    assert "† = measured with up to 2 runs training at once (--workers 2): not comparable between rows." in measured[-1]


# ---- end to end ----------------------------------------------------------------------------


def test_a_tiny_sweep_through_the_cli(tmp_path, shared_data, capsys):
    verdict = shared_data("the-verdict.txt")
    (tmp_path / "base.toml").write_text(BASE.format(source=verdict, cache=tmp_path / "cache"), encoding="utf-8")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'base = "base.toml"\nseeds = [0, 1]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n', encoding="utf-8"
    )
    out = tmp_path / "out"

    assert cli.main(["ablate", str(sweep), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    rows = {row["variant"]: row for row in csv.DictReader(open(out / "results.csv", encoding="utf-8"))}
    assert set(rows) == {"positional-learned", "positional-rope"}
    for slug, row in rows.items():
        finals = []
        for seed in (0, 1):
            folder = out / "runs" / f"{slug}-seed{seed}"
            assert (folder / "model.safetensors").is_file()
            metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            assert [m["step"] for m in metrics] == [3, 6]
            finals.append(metrics[-1]["val_loss"])
        assert row["status"] == "ok"
        assert float(row["final_val_loss_mean"]) == pytest.approx((finals[0] + finals[1]) / 2, rel=1e-5)
        assert float(row["final_val_loss_std"]) == pytest.approx(
            abs(finals[0] - finals[1]) / math.sqrt(2), rel=1e-4, abs=1e-9
        )
    # A learned position table has context_length × d_model = 16 × 32 parameters; rope has none.
    assert int(rows["positional-learned"]["params"]) - int(rows["positional-rope"]["params"]) == 16 * 32
    # One layer's keys and values at the context: 2 × 16 tokens × 32 (2 heads of 16) × 4 bytes; each run ran
    # beside another (--workers 2), so its speed is marked shared.
    measured = {row["variant"]: row for row in csv.DictReader(open(out / "measurements.csv", encoding="utf-8"))}
    for slug, row in rows.items():
        assert int(row["state_bytes"]) == 2 * 16 * 32 * 4 and measured[slug]["speed_shared"] == "true"

    capsys.readouterr()
    assert cli.main(["ablate", str(sweep), "--out", str(out), "--no-progress"]) == 0
    assert "4 of 4 runs already finished" in capsys.readouterr().out


class ScaleNorm(Norm):
    """x / ||x|| · g·sqrt(C), one learned scalar (Nguyen & Salazar, 2019): a user's own plugin."""

    def __init__(self, params, dims):
        super().__init__(params, dims)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C)
        return self.gain * math.sqrt(x.size(-1)) * x / x.norm(dim=-1, keepdim=True).clamp(min=1e-5)


def test_a_plugin_registered_in_code_can_be_a_variant(write, tmp_path, registry):
    path = write(
        '[set]\n"train.max_steps" = 2\n"train.eval_interval" = 2\n[axes]\n"model.norm.name" = ["layernorm", "scalenorm"]\n'
    )
    with pytest.raises(ConfigError, match="unknown norm 'scalenorm'"):
        load_sweep(path, registry)

    registry.add("norm", "scalenorm", ScaleNorm)
    sweep = load_sweep(path, registry)
    out = tmp_path / "out"
    results = run_sweep(sweep, out, registry=registry, progress=False, log=lambda m: None)
    assert [(r.variant, r.status) for r in results] == [("norm-layernorm", "done"), ("norm-scalenorm", "done")]
    saved = json.loads((out / "runs" / "norm-scalenorm-seed0" / "config.json").read_text())
    assert saved["model"]["norm"] == {"name": "scalenorm"}
    # ScaleNorm has one scalar per norm (2 in the block, 1 final); LayerNorm 2 × 32 each.
    assert results[0].params - results[1].params == 3 * (2 * 32 - 1)
    with pytest.raises(GptzooError, match="registry built in code"):
        run_sweep(sweep, tmp_path / "parallel", registry=registry, workers=2, progress=False)


def test_a_layer_pattern_is_an_axis(write, registry):
    sweep = load_sweep(
        write(
            '[set]\n"model.positional" = { name = "rope" }\n"model.n_layers" = 2\n'
            '"model.layer_kinds" = { local = {}, global = { positional = { name = "rope", base = 1e6 } } }\n'
            "[axes]\n"
            '"model.layer_pattern" = [["local"], ["local", "global"]]\n'
        ),
        registry,
    )
    bases = [[layer.positional.params.base for layer in v.config.model.layers()] for v in sweep.variants]
    assert bases == [[1e4, 1e4], [1e4, 1e4], [1e4, 1e6]]  # the base (no pattern), then each value
    assert sweep.variants[2].label == 'layer_pattern=["local", "global"]'


# ---- stale results ---------------------------------------------------------------------------


def test_runs_record_their_plugins_and_retrain_when_a_plugin_changed(write, tmp_path, registry):
    sweep = load_sweep(write('[axes]\n"model.positional.name" = ["learned", "rope"]\n'), registry)
    out, trainer, logged = tmp_path / "out", FakeTrainer(), []
    run_sweep(sweep, out, trainer=trainer, registry=registry, progress=False, log=logged.append)
    record_file = out / "runs" / "positional-rope-seed0" / "ablation.json"
    record = json.loads(record_file.read_text())
    rope = record["components"]["model.positional"]
    entry = registry.get("positional", "rope")
    assert (rope["name"], rope["distribution"], rope["version"]) == ("rope", entry.distribution, entry.version)
    assert len(rope["code"]) == 16 and "model.attention" in record["components"]
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["variants"][1]["components"]["model.positional"] == rope

    # The same sweep again: nothing is stale, nothing trains.
    trainer.calls.clear()
    run_sweep(sweep, out, trainer=trainer, registry=registry, progress=False, log=logged.append)
    assert trainer.calls == []

    # A run recorded under another version of its plugin, one under other code: both train again.
    record["components"]["model.positional"]["version"] = "0.0.1"
    record_file.write_text(json.dumps(record))
    learned_file = out / "runs" / "positional-learned-seed0" / "ablation.json"
    learned = json.loads(learned_file.read_text())
    learned["components"]["model.feed_forward"]["code"] = "0" * 16
    learned_file.write_text(json.dumps(learned))
    logged.clear()
    run_sweep(sweep, out, trainer=trainer, registry=registry, progress=False, log=logged.append)
    assert sorted(name for name, _ in trainer.calls) == ["positional-learned-seed0", "positional-rope-seed0"]
    assert any(
        f"model.positional 'rope' from {entry.distribution} 0.0.1 then, {entry.distribution} {entry.version} now" in m
        for m in logged
    )
    assert any("model.feed_forward 'gelu': the code of" in m and "changed" in m for m in logged)
    assert json.loads(record_file.read_text())["components"]["model.positional"]["version"] == entry.version


LOOPING_TRAINER = '''
import time
from pathlib import Path
from types import SimpleNamespace

from gptzoo.recipes.training.loop import StopSignals


def trainer(config, out, *, resume=False, registry=None, progress=True, log=print):
    """Trains until a signal stops it, as train does: then says so in its folder and returns interrupted."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with StopSignals() as stop:
        (out / "started").write_text("")
        while stop.received is None:
            time.sleep(0.02)
    (out / "stopped").write_text("")
    return SimpleNamespace(stopped="interrupted")
'''


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (read from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_sweep_signalled_alone_stops_its_runs_and_starts_no_more(write, tmp_path):
    """SIGTERM to a sweep's own process (a scheduler's, or kill PID) with two workers: both running runs get it
    too and stop as train does (with a checkpoint), none of the four queued starts, and no worker outlives it."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "looping.py").write_text(LOOPING_TRAINER, encoding="utf-8")
    sweep = write('seeds = [0, 1, 2]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n')
    out = tmp_path / "out"
    script = (
        "import sys\n"
        "from gptzoo.recipes.research.sweep import load_sweep, run_sweep\n"
        "import looping\n"
        "try:\n"
        f"    run_sweep(load_sweep({str(sweep)!r}), {str(out)!r}, trainer=looping.trainer, workers=2, progress=False)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("runs/*/started"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode == 130, err
    started = sorted(p.parent.name for p in out.glob("runs/*/started"))
    stopped = sorted(p.parent.name for p in out.glob("runs/*/stopped"))
    assert len(started) == 2 and stopped == started, (started, stopped)
    deadline = time.monotonic() + 30  # multiprocessing's resource tracker ends a moment after its parent
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and not [pid for pid in workers if _alive(pid)], "a worker outlived the sweep"
