"""The benchmark command runs end to end on a tiny shape and writes the documented JSON."""

import json
import math
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


DECODE = BENCH.parent / "decode.py"


@pytest.mark.slow
def test_decode_bench_reports_each_row_against_the_bandwidth_bound(tmp_path):
    out = tmp_path / "decode.json"
    args = ["--shapes", "tiny,qwen3-tiny", "--reps", "1", "--new-tokens", "4", "--threads", "1", "--out", str(out)]
    result = subprocess.run([sys.executable, str(DECODE), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["impl"]: row for row in report["rows"] if row["shape"] == "tiny"}
    assert set(rows) == {
        "gptzoo-fp32",
        "gptzoo-fp32-compiled",
        "gptzoo-bf16",
        "gptzoo-int8",
        "gptzoo-int4",
        "transformers",
    }
    # tiny: 2 layers x 64, vocab 512, tied head; the cache read at the mean length 16 + 4/2 = 18 tokens
    d, v, layers = 64, 512, 2
    block = 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d + 4 * d  # qkv, proj, fc, fc_out, 2 norms
    fp32 = 4 * (layers * block + v * d + 2 * d + d) + 2 * layers * d * 18 * 4  # + head (tied), final norm, one pos row
    assert rows["gptzoo-fp32"]["bytes_per_token"] == fp32
    # the static cache is read whole at every step: all 16 + 4 preallocated positions
    assert rows["gptzoo-fp32-compiled"]["bytes_per_token"] == fp32 + 2 * layers * d * (20 - 18) * 4
    assert rows["gptzoo-int8"]["bytes_per_token"] < rows["gptzoo-bf16"]["bytes_per_token"] < fp32
    # int4: half a byte a number and a bf16 scale and zero point a group of 32 (5/8 of a byte), in place of fp32's
    # 4; a row of the tied embedding's row codes (d / 2 bytes) more; the position table's row in int4 too: its
    # codes and the scale and zero point of its d / 32 groups, in place of d fp32 numbers
    matrices = layers * (3 * d * d + d * d + 4 * d * d + 4 * d * d) + v * d
    position_row = d // 2 + (d // 32) * 4 - 4 * d
    assert rows["gptzoo-int4"]["bytes_per_token"] == fp32 - 4 * matrices + matrices * 5 // 8 + d // 2 + position_row
    qwen3 = {row["impl"]: row for row in report["rows"] if row["shape"] == "qwen3-tiny"}
    assert set(qwen3) == {"gptzoo-fp32", "book", "transformers"}
    # qwen3-tiny: 4 query heads and 2 key-value heads 16 wide, SwiGLU 192 wide, QK-norm, tied head, rotary
    kv, hidden, rotary_half = 2 * 16, 192, 8
    block = d * d + 2 * d * kv + d * d + 2 * 16 + 3 * d * hidden + 2 * d  # q, k and v, o, qk-norms, SwiGLU, 2 norms
    weights = layers * block + v * d + d + 2 * rotary_half  # + head (tied), final norm, one row of cos and of sin
    assert all(row["bytes_per_token"] == 4 * weights + 2 * layers * kv * 18 * 4 for row in qwen3.values())
    assert all(row["first_call_s"] > 0 for row in [*rows.values(), *qwen3.values()])
    for table in (rows, qwen3):
        assert len({row["bandwidth_gb_per_s"] for row in table.values()}) == 1  # one copy timed in turns with the shape
        for row in table.values():
            assert row["bound_ms"] == pytest.approx(1e3 * row["bytes_per_token"] / (row["bandwidth_gb_per_s"] * 1e9))
            assert row["of_bound"] == pytest.approx(row["ms_per_token"] / row["bound_ms"])
            assert row["vs_transformers"] == pytest.approx(table["transformers"]["ms_per_token"] / row["ms_per_token"])
            # a model this small fits in any last-level cache there is: the copy's bound is not its bound
            assert row["fits_last_level_cache"] == (report["meta"]["machine"]["last_level_cache_bytes"] is not None)


@pytest.mark.slow
def test_decode_bench_qwen3_implementations_share_weights_and_greedy_tokens():
    """gptzoo's import, the book's loader and transformers hold one model: the same logits, the same greedy tokens."""
    import importlib.util

    import torch
    from llms_from_scratch.kv_cache.generate import generate_text_simple

    from gptzoo.recipes.generation.generate import generate_ids

    loaded = importlib.util.spec_from_file_location("decode", DECODE)
    decode = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(decode)
    ours, book, hf = decode.qwen3_models(decode.QWEN3_SHAPES["qwen3-tiny"])
    prompt = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(prompt).logits
        torch.testing.assert_close(ours(prompt), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(book(prompt), expected, atol=1e-4, rtol=0)
        tokens = hf.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)[0, 16:]
    assert len(set(tokens.tolist())) > 1  # not one token repeated: the comparison below has something to tell apart
    assert generate_ids(ours, [prompt[0].tolist()], 12) == [tokens.tolist()]
    assert generate_text_simple(book, prompt, 12, use_cache=True)[0, 16:].tolist() == tokens.tolist()


PRODUCTS = BENCH.parent / "products.py"


@pytest.mark.slow
def test_products_bench_reads_each_storage_s_bytes(tmp_path):
    out = tmp_path / "products.json"
    args = ["--shapes", "tiny", "--reps", "1", "--threads", "1", "--out", str(out)]
    result = subprocess.run([sys.executable, str(PRODUCTS), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {(r["matrices"], r["product"]): r for r in json.loads(out.read_text())["rows"]}
    d, v, layers = 64, 512, 2  # tiny
    layer = 3 * d * d + d * d + 4 * d * d + 4 * d * d  # qkv, proj, fc, fc_out: 12 d² numbers
    for which, n in (("head", v * d), ("layers", layers * layer)):
        assert rows[which, "fp32 (N, K)"]["bytes"] == rows[which, "fp32 (K, N)"]["bytes"] == 4 * n
        assert rows[which, "fp32"]["bytes"] == 4 * n
        assert rows[which, "bf16"]["bytes"] == 2 * n
        out_rows = v if which == "head" else layers * (3 * d + d + 4 * d + d)
        assert rows[which, "bf16 (N, K)"]["bytes"] == 2 * n
        # int8 numbers (K a multiple of 16) + a bf16 scale a row
        assert rows[which, "int8"]["bytes"] == n + 2 * out_rows
        # 4-bit codes + a bf16 scale and zero point a group of 32 numbers (every K here a multiple of 32)
        assert rows[which, "int4"]["bytes"] == n // 2 + (n // 32) * 4
        assert rows[which, "copy"]["bytes"] == 2 * 4 * n  # read + write of the fp32 bytes
    for row in rows.values():
        assert row["gb_per_s"] == pytest.approx(row["bytes"] / (row["ms"] / 1e3) / 1e9)


QUALITY = BENCH.parent / "decode_quality.py"


@pytest.mark.slow
def test_decode_quality_scores_the_held_out_text_as_a_plain_forward_does(tmp_path):
    import importlib.util

    import torch
    import torch.nn.functional as F

    from gptzoo.core import GPT
    from gptzoo.recipes.config.schema import RunConfig
    from gptzoo.recipes.runs.folder import save_run
    from gptzoo.registry import make_registry

    spec = {"vocab_size": 257, "context_length": 40, "d_model": 32, "n_layers": 2, "n_heads": 4, "tokenizer": "byte"}
    config = RunConfig.model_validate({"model": spec}, context={"registry": make_registry(entry_points=False)})
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    save_run(tmp_path / "run", config, model, config.model.tokenizer.build())
    text = "To be, or not to be, that is the question: " * 3  # 129 bytes: windows of 41, 41, 41 and 9 ids
    (tmp_path / "held-out.txt").write_text(text)
    loaded = importlib.util.spec_from_file_location("decode_quality", QUALITY)
    quality = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(quality)
    args = [
        str(tmp_path / "run"),
        "--data",
        str(tmp_path / "held-out.txt"),
        "--prompts",
        "2",
        "--out",
        str(tmp_path / "q.json"),
    ]
    assert quality.main(args) == 0
    rows = {row["storage"]: row for row in json.loads((tmp_path / "q.json").read_text())["rows"]}
    ids = torch.tensor(list(text.encode()))
    with torch.inference_mode():  # windows of the context, each scored whole without a cache
        losses = [
            F.cross_entropy(model(ids[None, s : min(s + 40, len(ids) - 1)])[0], ids[s + 1 : s + 41], reduction="sum")
            for s in range(0, len(ids) - 1, 40)
        ]
    assert rows["fp32"]["perplexity"] == pytest.approx(math.exp(sum(losses).item() / (len(ids) - 1)), rel=1e-4)
    assert rows["fp32"]["top1_changed"] == 0 and rows["fp32"]["greedy_identical"] == 1
    assert rows["fp32"]["first_change"] == 40 - 16
    assert set(rows) == {"fp32", "bf16", "int8", "int4"} and all(0 <= r["top1_changed"] <= 1 for r in rows.values())
