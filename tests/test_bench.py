"""The benchmark command runs end to end on a tiny shape and writes the documented JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.slow
def test_bench_runs_on_a_tiny_shape(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "--shape",
        "tiny",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--new-tokens",
        "4",
        "--long-tokens",
        "8",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    result = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report) == {"machine", "settings", "cases", "moe_parameters"}
    cases = {(c["case"], c["impl"], c.get("reference")): c for c in report["cases"]}
    for impl in ("gptzoo-sdpa", "gptzoo-fused", "gptzoo-per_head"):
        row = cases[("train tiny float32", impl, "handwritten")]
        assert row["error"] is None and row["tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["reference_tokens_per_s"])
    moe = cases[("train tiny float32 moe vs dense", "gptzoo-moe", "gptzoo-dense")]
    assert moe["error"] is None and moe["ratio"] > 0
    counted = report["moe_parameters"]
    assert (
        counted["active_parameters_per_token"]
        == counted["multiplied_per_token"] + counted["elementwise"]
        < counted["total"]
    )
    long = cases[("decode tiny 8 tokens", "gptzoo-cache", "gptzoo-nocache")]
    assert long["ratio"] > 0 and long["peak_rss_bytes"] > 0
