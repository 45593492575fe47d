"""Each script in examples/ runs as a user would run it (a fresh interpreter), at tiny sizes."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def counts(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in stdout.splitlines() if line.strip()}


def test_count_parameters_gives_gpt2_smalls_published_count():
    out = counts(run_example("count_parameters.py"))
    assert out["total"] == "124,439,808"  # GPT-2 small with its tied head, as published
    assert out["kv_cache_bytes"] == "75,497,472"  # 12 layers × (k, v) × 12 heads × 64 × 1024 tokens × 4 bytes


def test_count_parameters_with_grouped_query_attention():
    out = counts(run_example("count_parameters.py", "--kv-heads", "4"))
    # 8 fewer key and 8 fewer value heads of 64: 12 layers × 2 × 512 × (768 weights + 1 bias)
    assert out["total"] == f"{124_439_808 - 12 * 2 * 512 * 769:,}"
    assert out["kv_cache_bytes"] == f"{75_497_472 // 3:,}"


def test_check_a_plugin_passes_the_kit():
    assert "passes the conformance kit" in run_example("check_a_plugin.py", "--window", "3")


def test_train_and_generate(tmp_path):
    out = tmp_path / "run"
    overrides = ["train.max_steps=3", "train.batch_size=2", "train.eval_batches=1", "model.tokenizer.vocab_size=300"]
    stdout = run_example("train_and_generate.py", "--out", str(out), "--set", *overrides, "--prompt", "The")
    assert "trained 3 steps (384 tokens)" in stdout  # 3 steps × 2 windows × 64 tokens
    assert stdout.splitlines()[-1].startswith("The")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
