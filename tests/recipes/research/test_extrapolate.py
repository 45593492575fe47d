"""Length extrapolation: learned positions refuse with their reason, the others score longer
contexts per position, and sweeps report a table at multiples of the trained context."""

import json

import pytest
import torch
import torch.nn.functional as F

from gptzoo.recipes.cli import main
from gptzoo.recipes.data.tokens import load_tokens
from gptzoo.recipes.runs.folder import load_run

T = 16
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}.\n" for i in range(120))


@pytest.fixture
def config(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    path = tmp_path / "base.toml"
    path.write_text(
        f'[model]\ncontext_length = {T}\nd_model = 16\nn_layers = 1\nn_heads = 2\ntokenizer = {{ name = "byte" }}\n'
        f'[data]\nsource = "{corpus}"\ncache_dir = "{tmp_path / "cache"}"\nval_fraction = 0.2\n'
        '[train]\nmax_steps = 3\nbatch_size = 4\neval_interval = 3\neval_batches = 1\nsample_tokens = 0\ndevice = "cpu"\n'
    )
    return path


def trained(config, tmp_path, positional):
    out = tmp_path / positional
    assert main(["train", str(config), "--out", str(out), "--set", f"model.positional.name={positional}"]) == 0
    return out


def test_learned_positions_refuse_past_their_context_and_say_why(config, tmp_path, capsys):
    run = trained(config, tmp_path, "learned")
    capsys.readouterr()
    assert main(["eval", str(run), "--context", str(T), str(2 * T)]) == 2
    err = capsys.readouterr().err
    assert (
        f"positional 'learned' cannot score {2 * T} tokens, past the trained context of {T}: its table holds one trained vector per position"
        in err
    )
    assert not (run / "extrapolation.json").exists()
    assert main(["eval", str(run), "--context", str(T)]) == 0  # its own length is fine


@pytest.mark.parametrize("positional", ["rope", "alibi", "none", "sinusoidal"])
def test_longer_contexts_score_per_position(config, tmp_path, positional):
    run = trained(config, tmp_path, positional)
    assert main(["eval", str(run), "--context", str(T), str(2 * T)]) == 0
    report = json.loads((run / "extrapolation.json").read_text())
    assert report["trained_context"] == T and report["positional"] == positional
    one, two = report["contexts"]
    assert (one["context"], two["context"]) == (T, 2 * T) and len(two["per_position"]["loss"]) == 2 * T
    assert (run / "extrapolation.png").read_bytes()[:4] == b"\x89PNG"

    # Independently: the validation split in non-overlapping windows of 2T, each scored by a plain forward.
    loaded = load_run(run)
    tokens = torch.from_numpy(load_tokens(loaded.config.data, loaded.tokenizer).astype("int64"))
    val = tokens[int(len(tokens) * 0.8) :]
    windows = torch.stack([val[s : s + 2 * T + 1] for s in range(0, len(val) - 2 * T, 2 * T)])  # (W, 2T+1)
    assert two["windows"] == len(windows)
    if positional in ("alibi", "none"):  # nothing sized by the context: the trained model runs at 2T as it is
        with torch.no_grad():
            logits = loaded.model(windows[:, :-1])  # (W, 2T, V)
        per_position = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(0)  # (2T,)
        torch.testing.assert_close(torch.tensor(two["per_position"]["loss"]), per_position, rtol=1e-5, atol=1e-5)
    # Causal: the first T positions of a 2T window are what a T-token window at its start scores.
    with torch.no_grad():
        logits = loaded.model(windows[:, :T])  # (W, T, V), at the trained context
    first_half = F.cross_entropy(logits.transpose(1, 2), windows[:, 1 : T + 1], reduction="none").mean(0)
    torch.testing.assert_close(torch.tensor(two["per_position"]["loss"][:T]), first_half, rtol=1e-5, atol=1e-5)


def test_a_task_run_extrapolates_on_longer_examples(tmp_path, capsys):
    config = tmp_path / "task.toml"
    config.write_text(
        f'[model]\ncontext_length = {T}\nd_model = 16\nn_layers = 1\nn_heads = 2\npositional = {{ name = "alibi" }}\n'
        '[data]\ntask = { name = "induction", vocab_size = 10, val_examples = 8 }\n'
        '[train]\nmax_steps = 2\nbatch_size = 4\neval_interval = 2\neval_batches = 1\nsample_tokens = 0\ndevice = "cpu"\n'
    )
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", str(tmp_path / "run"), "--context", str(4 * T)]) == 0
    report = json.loads((tmp_path / "run" / "extrapolation.json").read_text())
    (result,) = report["contexts"]
    scored = result["per_position"]["scored"]
    assert report["metric"] == "accuracy on answers"
    assert scored[: 2 * T] == [0] * 2 * T and scored[2 * T : 4 * T] == [8] * 2 * T  # the second copy of each example
    assert result["per_position"]["accuracy"][0] is None and 0 <= result["accuracy"] <= 1


def test_a_sweep_tabulates_extrapolation_and_refuses_learned(config, tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'base = "base.toml"\nextrapolate = [1, 2]\n[axes]\n"model.positional.name" = ["learned", "rope"]\n'
    )
    assert main(["ablate", str(sweep), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    lines = (tmp_path / "out" / "results.md").read_text().splitlines()
    start = lines.index(f"| variant | 1× ({T}) | 2× ({2 * T}) |")
    learned, rope = lines[start + 2], lines[start + 3]
    assert learned.startswith("| positional=learned |") and learned.endswith("| refused |")
    assert rope.startswith("| positional=rope |") and "refused" not in rope
    assert any("positional 'learned' says its table holds one trained vector per position" in line for line in lines)
    assert (tmp_path / "out" / "extrapolation.png").is_file()


def test_a_shorter_context_is_scored_by_the_model_as_trained(config, tmp_path):
    """A learned table has T trained rows: a shorter window uses its first ones, not a smaller table."""
    run = trained(config, tmp_path, "learned")
    half = T // 2
    assert main(["eval", str(run), "--context", str(half)]) == 0
    [scored] = json.loads((run / "extrapolation.json").read_text())["contexts"]
    loaded = load_run(run)
    tokens = torch.from_numpy(load_tokens(loaded.config.data, loaded.tokenizer).astype("int64"))
    val = tokens[int(len(tokens) * 0.8) :]
    windows = torch.stack([val[s : s + half + 1] for s in range(0, len(val) - half, half)])  # (W, T/2+1)
    with torch.no_grad():
        logits = loaded.model(windows[:, :-1])
    per_position = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(0)
    assert scored["windows"] == len(windows)
    torch.testing.assert_close(torch.tensor(scored["per_position"]["loss"]), per_position, rtol=1e-5, atol=1e-5)
