"""The attention benchmark runs end to end on small sizes and reports what docs/design/performance.md quotes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_bench.py"


@pytest.mark.slow
def test_attention_bench_reports_cache_bytes_and_speeds(tmp_path):
    out = tmp_path / "attention.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--reps", "1", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["cases"]
    window = [r["cache_tensor_bytes"] for r in rows if r["impl"] == "sliding_window" and "cache_tensor_bytes" in r]
    full = [r["cache_tensor_bytes"] for r in rows if r["impl"] == "sdpa" and "cache_tensor_bytes" in r]
    assert len(set(window)) == 1 and window[0] == full[0]  # after 1, 2, 4 windows: one window's worth
    assert full == [full[0], 2 * full[0], 4 * full[0]]  # sdpa's grows with the tokens
    assert all(r["tokens_per_s"] > 0 for r in rows if "tokens_per_s" in r)
    sinks = {r["impl"] for r in rows if r["case"].startswith("train with sinks")}
    assert sinks == {"sdpa", "sdpa_sinks", "fused_sinks"}  # SDPA's sink form against the explicit one, in turns
    (latent,) = [r for r in rows if r["impl"] == "latent" and "bytes_per_token" in r]
    assert latent["bytes_per_token"] == (latent["kv_lora_rank"] + latent["rope_dim"]) * 4 * 12  # fp32, 12 layers
    sparse = {(r["case"].split(",")[0], r["impl"]) for r in rows if "top 16 keys" in r["case"]}
    assert sparse == {(w, i) for w in ("forward", "prefill and 4 greedy tokens") for i in ("latent", "sparse_latent")}
    assert all(r["ratio_to_latent"] > 0 for r in rows if "top 16 keys" in r["case"])
