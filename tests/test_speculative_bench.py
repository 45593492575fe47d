"""The speculative-decoding benchmark runs end to end on small sizes and reports what docs/design/performance.md quotes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "speculative.py"


@pytest.mark.slow
def test_speculative_bench_reports_acceptance_and_speeds(tmp_path):
    out = tmp_path / "speculative.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--reps", "1", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {(r["case"], r["impl"]): r for r in json.loads(out.read_text())["cases"]}
    cases = ("as drafted", "all accepted", "all rejected")
    assert set(rows) == {(c, i) for c in cases for i in ("plain", "speculative")}
    assert rows["all accepted", "speculative"]["acceptance_rate"] == 1.0
    assert rows["all rejected", "speculative"]["acceptance_rate"] == 0.0
    # Accepted drafts give two tokens a forward: about half plain decoding's forwards after each prompt.
    accepted = rows["all accepted", "speculative"]["model_forwards"]
    assert accepted <= rows["all accepted", "plain"]["model_forwards"] // 2 + 2
    assert rows["all rejected", "speculative"]["model_forwards"] == rows["all rejected", "plain"]["model_forwards"]
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
