"""gptzoo train / eval (and generate after train) through the command line, including every error a person can act on."""

import math
import re
import shutil
from pathlib import Path

import pytest

from gptzoo.recipes.cli import main

CONFIG = """
[model]
context_length = 16
d_model = 32
n_layers = 1
n_heads = 2
tokenizer = {{ name = "byte" }}

[data]
source = "{source}"
cache_dir = "{cache}"

[train]
max_steps = 10
batch_size = 4
lr = 3e-3
eval_interval = 5
eval_batches = 2
device = "cpu"
sample_prompt = "I had"
sample_tokens = 4
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained once through the CLI; tests that damage it work on copies."""
    verdict = Path(__file__).resolve().parents[4] / "shared" / "data" / "the-verdict.txt"
    if not verdict.is_file():
        pytest.skip(f"{verdict} is absent")
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text(CONFIG.format(source=verdict, cache=root / "cache"), encoding="utf-8")
    assert main(["train", str(config), "--out", str(root / "run"), "--set", "train.max_steps=10"]) == 0
    return config, root / "run", verdict


def copy_run(trained, tmp_path):
    return shutil.copytree(trained[1], tmp_path / "run")


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_train_writes_the_run_folder_and_prints_progress(trained, capsys):
    _, run, _ = trained
    # the lock file stays (an OS lock, released when the process ends); no temporary or owner file is left
    assert sorted(p.name for p in run.iterdir()) == [
        ".gptzoo.lock",
        "config.json",
        "manifest.json",
        "measurements.jsonl",
        "metrics.jsonl",
        "model.safetensors",
        "train_state.pt",
    ]
    assert [line.count('"step"') for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]


def test_generate_and_eval_read_the_trained_run(trained, capsys):
    _, run, verdict = trained
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", "8", "--no-stream"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["eval", str(run), "--data", str(verdict), "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    loss, perplexity = map(float, re.search(r"loss ([\d.]+), perplexity ([\d.]+)", out).groups())
    assert perplexity == pytest.approx(math.exp(loss), rel=1e-3)
    assert loss < math.log(257)  # better than uniform over the 257 byte ids
    # 20,479 bytes in windows of 16 (the last target must exist): 1279 windows
    assert "20,464 tokens scored" in out


def test_train_refuses_a_folder_that_holds_a_run(trained, tmp_path, capsys):
    config, _, _ = trained
    run = copy_run(trained, tmp_path)
    before = snapshot(run)
    err = error_of(capsys, ["train", str(config), "--out", str(run)])
    assert f"{run}: already holds a run; pass --resume" in err
    assert snapshot(run) == before


def test_resume_needs_a_checkpoint(trained, tmp_path, capsys):
    config, _, _ = trained
    (tmp_path / "empty").mkdir()
    assert "empty: holds no committed checkpoint to resume" in error_of(
        capsys, ["train", str(config), "--out", str(tmp_path / "empty"), "--resume"]
    )
    assert "no such run folder" in error_of(
        capsys, ["train", str(config), "--out", str(tmp_path / "nowhere"), "--resume"]
    )


def test_resume_with_a_corrupt_training_state_says_so(trained, tmp_path, capsys):
    config, _, _ = trained
    run = copy_run(trained, tmp_path)
    (run / "train_state.pt").write_bytes(b"not a torch file")
    before = snapshot(run)
    err = error_of(capsys, ["train", str(config), "--out", str(run), "--resume", "--set", "train.max_steps=20"])
    assert "train_state.pt: 16 bytes, but manifest.json commits" in err
    (run / "manifest.json").unlink()  # as a folder saved before manifests: torch's own check, without its unsafe advice
    err = error_of(capsys, ["train", str(config), "--out", str(run), "--resume", "--set", "train.max_steps=20"])
    assert (
        "train_state.pt: cannot read the training state" in err
        and "truncated or corrupt" in err
        and "weights_only" not in err
    )
    assert snapshot(run) == {name: data for name, data in before.items() if name != "manifest.json"}


def test_missing_config_and_data_files_are_named(trained, tmp_path, capsys):
    _, run, _ = trained
    assert "nope.toml: no such config file" in error_of(
        capsys, ["train", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out")]
    )
    assert "missing.txt: no such file or folder" in error_of(
        capsys, ["eval", str(run), "--data", str(tmp_path / "missing.txt")]
    )
    assert not (tmp_path / "out").exists()


def test_truncated_weights_are_reported_and_left_alone(trained, tmp_path, capsys):
    _, _, verdict = trained
    run = copy_run(trained, tmp_path)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(run)
    assert f"{weights}: 1,000 bytes, but manifest.json commits" in error_of(
        capsys, ["eval", str(run), "--data", str(verdict)]
    )
    (run / "manifest.json").unlink()  # as a folder saved before manifests: safetensors' own check
    err = error_of(capsys, ["eval", str(run), "--data", str(verdict)])
    assert f"{weights}: cannot read the weights" in err and "truncated or corrupt" in err
    assert snapshot(run) == {name: data for name, data in before.items() if name != "manifest.json"}


def test_weights_that_do_not_match_the_config_name_the_tensors(trained, tmp_path, capsys):
    _, _, verdict = trained
    run = copy_run(trained, tmp_path)
    config = run / "config.json"
    config.write_text(config.read_text().replace('"d_model": 32', '"d_model": 64'))
    assert f"{config}: its sha256 differs from the one in manifest.json" in error_of(
        capsys, ["eval", str(run), "--data", str(verdict)]
    )
    (run / "manifest.json").unlink()  # as a folder saved before manifests
    err = error_of(capsys, ["eval", str(run), "--data", str(verdict)])
    assert "does not match its config" in err and "blocks.0.attn_norm.weight (32,) vs config (64,)" in err
