"""Per-layer measurements a mixer declares (the largest attention logit), and training logging them."""

import math

import pytest
import torch

from gptzoo.core import GPT, GptzooError, Meter, Recorder
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.recipes.training.loop import train
from gptzoo.registry import make_registry
from tests.recipes.training.test_train import tiny

REGISTRY = make_registry(entry_points=False)
TINY = {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_heads": 4}


def model(**fields) -> GPT:
    torch.manual_seed(0)
    return GPT(REGISTRY.model_config({**TINY, **fields})).eval()


def logits_by_hand(block, x: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Layer input x (B, T, C) -> its largest q·k/√hs over causal pairs, from the block's weights (no positions)."""
    B, T, C = x.shape
    hs = C // n_heads
    h = block.attn_norm(x)
    q, k, _ = (h @ block.attention.qkv.weight.T).split([n_heads * hs, n_kv_heads * hs, n_kv_heads * hs], dim=-1)
    best = -math.inf
    for b in range(B):
        for head in range(n_heads):
            kv = head // (n_heads // n_kv_heads)
            for i in range(T):
                for j in range(i + 1):
                    qi = q[b, i, head * hs : (head + 1) * hs]
                    kj = k[b, j, kv * hs : (kv + 1) * hs]
                    best = max(best, float(qi @ kj) / math.sqrt(hs))
    return torch.tensor(best)


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_max_logit_per_layer_is_the_largest_scaled_q_dot_k_over_causal_pairs(n_kv_heads):
    m = model(n_layers=2, n_kv_heads=n_kv_heads, positional="none")
    with torch.no_grad():
        m.blocks[1].attention.qkv.weight.mul_(5.0)  # a layer whose logits are larger than the other's
    idx = torch.randint(0, 50, (2, 9))
    recorder, meter = Recorder(), Meter()
    with torch.no_grad():
        m(idx, recorder=recorder)
        m(idx, meter=meter)
        expected = [logits_by_hand(m.blocks[i], recorder.residuals[i], 4, n_kv_heads) for i in range(2)]
    got = meter.values("max_logit")
    torch.testing.assert_close(torch.tensor(got), torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert got[1] > got[0]


def test_a_layer_whose_mixer_declares_no_measurement_reports_none():
    m = model(
        n_layers=2,
        positional="none",
        layer_kinds={"recurrent": {"attention": "gated_deltanet"}, "softmax": {"attention": "sdpa"}},
        layer_pattern=["recurrent", "softmax"],
    )
    meter = Meter()
    with torch.no_grad():
        m(torch.randint(0, 50, (1, 8)), meter=meter)
    values = meter.values("max_logit")
    assert values[0] is None and isinstance(values[1], float)


def test_a_mixer_that_declares_a_measurement_and_does_not_report_it_is_named():
    m = model(n_layers=1, positional="none")
    meter = Meter()  # a forward that never ran the mixer: nothing reported
    with pytest.raises(
        GptzooError, match=r"SDPAAttention in layer 0 declares measurements \['max_logit'\] and reported \[\]"
    ):
        meter.layer_done(m.blocks[0])


def test_a_meter_refuses_a_cache():
    m = model(n_layers=1)
    with pytest.raises(ValueError, match="a meter measures one whole forward"):
        m(torch.zeros(1, 2, dtype=torch.long), cache=m.new_cache(1, 4), meter=Meter())


def test_training_logs_each_layers_max_logit_at_every_evaluation(tmp_path, shared_data):
    config = tiny(tmp_path, shared_data("the-verdict.txt"), model={"n_layers": 2})
    train(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [10, 20]
    for record in records:
        logits = record["max_attention_logit"]
        assert len(logits) == 2 and all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in logits)


def test_a_layer_reading_an_earlier_layers_keys_measures_its_queries_against_them():
    m = model(n_layers=2, positional="none", kv_shared_layers=1)  # layer 1 attends with layer 0's keys
    idx = torch.randint(0, 50, (2, 9))
    recorder, meter = Recorder(), Meter()
    with torch.no_grad():
        m(idx, recorder=recorder)
        m(idx, meter=meter)
        x0, x1 = recorder.residuals[0], recorder.residuals[1]
        hs = 8
        k = (m.blocks[0].attn_norm(x0) @ m.blocks[0].attention.qkv.weight.T)[..., 4 * hs : 8 * hs]  # layer 0's keys
        q = m.blocks[1].attn_norm(x1) @ m.blocks[1].attention.qkv.weight.T  # layer 1's queries alone
        q, k = q.view(2, 9, 4, hs).transpose(1, 2), k.view(2, 9, 4, hs).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        expected = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -math.inf).amax()
    assert meter.values("max_logit")[1] == pytest.approx(float(expected), rel=1e-5)
