"""The token mixers' benchmark runs end to end on small sizes and reports what docs/design/performance.md quotes."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "mixers.py"


def test_mixers_bench_reports_growth_and_flat_state_against_growing_keys_and_values(tmp_path):
    out = tmp_path / "mixers.json"
    args = ["--mixers", "short_conv,sdpa", "--lengths", "32,64", "--decode-lengths", "32,64", "--reps", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCH), *args, "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    growth = {r["mixer"] for r in rows if r["case"] == "train_growth" and r["per_token_ratio"] > 0}
    assert growth == {"short_conv", "sdpa"}
    decode = {(r["mixer"], r["prompt"]): r["cache_bytes"] for r in rows if r["case"] == "decode"}
    assert (
        decode[("short_conv", 32)] == decode[("short_conv", 64)] == 4 * 256 * 2 * 4
    )  # 4 layers: the last 2 inputs of 256 float32 channels
    assert decode[("sdpa", 64)] > decode[("sdpa", 32)]  # keys and values grow with the prompt
