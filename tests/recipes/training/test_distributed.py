"""Training on two processes (gloo on the CPU, started by torchrun) against one process on the same global batch."""

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptzoo.core import ConfigError
from gptzoo.recipes import cli
from gptzoo.recipes.config.schema import TrainConfig, load_run_config
from gptzoo.recipes.data.tokens import WindowSampler
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.recipes.training.distributed import TIMEOUT_ENV, RankSampler, World, eval_batches, shard, timeout
from gptzoo.recipes.training.loop import train
from gptzoo.recipes.training.optim import total_steps
from gptzoo.recipes.training.step_plan import LOG_EVERY

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch has no gloo backend",
)

RANK_FAULT = Path(__file__).with_name("rank_fault.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


# ---- sharding ----------------------------------------------------------------------------


def test_each_rank_takes_a_disjoint_slice_of_the_global_batch():
    batch = np.array([40, 3, 17, 8, 25, 11])
    assert shard(batch, 0, 3).tolist() == [40, 3]
    assert shard(batch, 1, 3).tolist() == [17, 8]
    assert shard(batch, 2, 3).tolist() == [25, 11]
    with pytest.raises(ValueError, match="6 does not split evenly over 4"):
        shard(batch, 0, 4)


def test_two_ranks_together_draw_exactly_the_single_process_batches():
    # 25 draws of 2 × 3 windows run through the 50 windows' order more than twice (epochs 0, 1, 2)
    single = WindowSampler(50, seed=5)
    ranks = [RankSampler(WindowSampler(50, seed=5), World(rank, 2)) for rank in range(2)]
    for _ in range(25):
        parts = [r.take(3) for r in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert np.concatenate(parts).tolist() == single.take(6).tolist()
    assert ranks[0].state() == ranks[1].state() == single.state() == {"epoch": 3, "position": 0}


def test_evaluation_windows_are_shared_out_in_as_many_batches_on_every_rank():
    indices = np.arange(7)
    assert [b.tolist() for b in eval_batches(indices, 2, World(0, 2))] == [[0, 2], [4, 6]]
    assert [b.tolist() for b in eval_batches(indices, 2, World(1, 2))] == [[1, 3], [5]]
    # 3 windows on 2 ranks with batches of 1: rank 1 has one window but runs two forwards too
    assert [b.tolist() for b in eval_batches(np.arange(3), 1, World(1, 2))] == [[1], []]
    assert [b.tolist() for b in eval_batches(indices, 3, World())] == [[0, 1, 2], [3, 4, 5], [6]]


def test_budgets_count_steps_of_the_global_batch():
    # 4 processes × batch 8 × grad_accum 2 = 64 windows of 32 tokens a step
    assert (
        total_steps(TrainConfig(epochs=2, batch_size=8, grad_accum=2), 1000, 32, world_size=4) == 32
    )  # ceil(2000 / 64)
    assert (
        total_steps(TrainConfig(max_tokens=10_000, batch_size=8, grad_accum=2), 1000, 32, world_size=4) == 5
    )  # ceil(10000 / 2048)
    assert total_steps(TrainConfig(max_steps=7, batch_size=8), 1000, 32, world_size=4) == 7


def test_the_collective_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert timeout() == datetime.timedelta(minutes=5)
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert timeout() == datetime.timedelta(seconds=2.5)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}='soon'"):
        timeout()


# ---- two processes -----------------------------------------------------------------------


def write_config(folder: Path) -> Path:
    """A 1-layer byte-level GPT with a tied head on a generated text; 6 steps of 2 micro-batches, evaluated every 3."""
    words = np.random.default_rng(0).choice(["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"], 4000)
    corpus = folder / "corpus.txt"
    corpus.write_text(" ".join(words), encoding="utf-8")
    config = folder / "tiny.toml"
    config.write_text(
        f"""
[model]
context_length = 16
d_model = 32
n_layers = 1
n_heads = 2
dropout = 0.0
tied_head = true
tokenizer = {{ name = "byte" }}

[data]
source = "{corpus.as_posix()}"
cache_dir = "{(folder / "cache").as_posix()}"

[train]
max_steps = 6
batch_size = 4
grad_accum = 2
lr = 3e-3
eval_interval = 3
eval_batches = 2
sample_tokens = 0
device = "cpu"
""",
        encoding="utf-8",
    )
    return config


def launch(command: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", TIMEOUT_ENV: "60"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 4 and two with batch 2 (the same 8 windows a step), 6 steps, then resumed to 9."""
    folder = tmp_path_factory.mktemp("distributed")
    config = write_config(folder)
    quiet = dict(progress=False, log=lambda text: None)
    train(load_run_config(config), folder / "one", **quiet)
    two = succeeded(
        launch(
            [
                sys.executable,
                "-m",
                "gptzoo.recipes",
                "train",
                str(config),
                "--out",
                str(folder / "two"),
                "--set",
                "train.batch_size=2",
                "--nproc",
                "2",
            ]
        )
    )
    fsdp = succeeded(
        launch(
            [
                *TORCHRUN,
                "-m",
                "gptzoo.recipes",
                "train",
                str(config),
                "--out",
                str(folder / "fsdp"),
                "--set",
                "train.batch_size=2",
                "--set",
                "train.parallel=fsdp",
            ]
        )
    )

    for name in ("one", "two", "fsdp"):
        shutil.copytree(folder / name, folder / f"{name}-resumed")
    train(load_run_config(config, ["train.max_steps=9"]), folder / "one-resumed", resume=True, **quiet)
    for name, parallel in (("two", "ddp"), ("fsdp", "fsdp")):
        overrides = ["--set", "train.batch_size=2", "--set", "train.max_steps=9", "--set", f"train.parallel={parallel}"]
        succeeded(
            launch(
                [
                    *TORCHRUN,
                    "-m",
                    "gptzoo.recipes",
                    "train",
                    str(config),
                    "--out",
                    str(folder / f"{name}-resumed"),
                    "--resume",
                    *overrides,
                ]
            )
        )
    return folder, {"two": two.stdout, "fsdp": fsdp.stdout}


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(first) == sorted(second)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-5, msg=name)


def assert_same_losses(a: Path, b: Path, steps: list[int]) -> None:
    first, second = read_metrics(a), read_metrics(b)
    assert (
        [r["step"] for r in first] == [r["step"] for r in second] == steps
    )  # one line per evaluation: rank 0 writes alone
    for x, y in zip(first, second, strict=True):
        assert x["tokens"] == y["tokens"] == x["step"] * 8 * 16  # 8 windows of 16 tokens a step
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-5)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)


def test_two_ranks_reach_the_weights_of_one_process_on_the_same_global_batch(runs):
    folder, stdout = runs
    assert_same_weights(folder / "one", folder / "two")
    assert_same_losses(folder / "one", folder / "two", [3, 6])
    record = read_metrics(folder / "two")[-1]
    assert (record["processes"], record["effective_batch_size"], record["tokens_per_step"]) == (2, 8, 128)
    assert read_metrics(folder / "one")[-1]["effective_batch_size"] == 8
    # rank 0 alone prints: the batch line, each evaluation and the summary once
    assert (
        stdout["two"].count(
            "effective batch 2 per process × 2 accumulated × 2 processes = 8 windows, 128 tokens per step"
        )
        == 1
    )
    assert stdout["two"].count("step 6: train loss") == 1
    assert stdout["two"].count("done after 6 steps") == 1


def test_a_run_resumes_under_two_ranks(runs):
    folder, _ = runs
    assert_same_weights(folder / "one-resumed", folder / "two-resumed")
    assert_same_losses(folder / "one-resumed", folder / "two-resumed", [3, 6, 9])


def test_fsdp_trains_like_one_process_and_saves_an_ordinary_run(runs):
    folder, stdout = runs
    assert "2 processes (fsdp)" in stdout["fsdp"]
    assert_same_weights(folder / "one", folder / "fsdp")
    assert_same_losses(folder / "one", folder / "fsdp", [3, 6])
    run = load_run(folder / "fsdp")  # the single-file weights, tied head stored once
    assert set(load_file(str(folder / "fsdp" / "model.safetensors"))) == set(
        load_run(folder / "one").model.state_dict()
    ) - {"head.weight"}
    assert run.model.token_embedding.weight.shape == (257, 32)
    # the gathered optimizer state resumes under FSDP as it does in one process
    assert_same_weights(folder / "one-resumed", folder / "fsdp-resumed")
    assert_same_losses(folder / "one-resumed", folder / "fsdp-resumed", [3, 6, 9])


def test_a_failing_rank_brings_the_job_down_with_its_message(tmp_path):
    config = write_config(tmp_path)
    result = launch(
        [
            *TORCHRUN,
            str(RANK_FAULT),
            "raise",
            "train",
            str(config),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "train.batch_size=2",
        ]
    )
    assert result.returncode != 0
    assert "gptzoo: rank 1 of 2 failed: RuntimeError: injected failure on rank 1" in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()  # it failed before the first checkpoint


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    config = write_config(tmp_path)
    overrides = ["--set", "train.batch_size=2", "--set", "train.max_steps=40", "--set", "train.eval_interval=100"]
    result = launch(
        [*TORCHRUN, str(RANK_FAULT), "sigterm", "train", str(config), "--out", str(tmp_path / "run"), *overrides]
    )
    assert result.returncode != 0  # the ranks exit with 130, which torchrun reports as a failure
    # rank 1 got SIGTERM during step 2; the ranks agree at the next progress update, when they sync anyway
    assert f"stopped by a signal to another process at step {LOG_EVERY}" in result.stdout
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == LOG_EVERY


def test_nproc_checks_the_config_and_its_own_value_before_starting_processes(tmp_path, capsys):
    config = write_config(tmp_path)
    assert (
        cli.main(["train", str(config), "--out", str(tmp_path / "run"), "--nproc", "2", "--set", "train.batch_sise=2"])
        == 2
    )
    assert "batch_sise" in capsys.readouterr().err
    assert cli.main(["train", str(config), "--out", str(tmp_path / "run"), "--nproc", "0"]) == 2
    assert "--nproc 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
