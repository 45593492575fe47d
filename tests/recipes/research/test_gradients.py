"""gptzoo gradients: the mean |gradient| per block, and the book's section 4.4 lesson."""

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import GPT
from gptzoo.recipes.cli import main
from gptzoo.recipes.cli.gradients import layer_gradients

CONFIG = """
[model]
vocab_size = 257
context_length = 16
d_model = 16
n_layers = 3
n_heads = 2
tokenizer = { name = "byte" }
"""


def test_layer_gradients_are_each_blocks_mean_absolute_matrix_gradient(registry):
    torch.manual_seed(0)
    model = GPT(
        registry.model_config(
            {"vocab_size": 257, "context_length": 16, "d_model": 16, "n_layers": 3, "n_heads": 2, "tokenizer": "byte"}
        )
    )
    ids = list(b"shortcut connections")[:17]
    means = layer_gradients(model, ids)
    # By hand: autograd for each block's 2-D weights, the mean over all their entries.
    tokens = torch.tensor([ids])
    loss = F.cross_entropy(model(tokens[:, :-1])[0], tokens[0, 1:])
    for i, block in enumerate(model.blocks):
        matrices = [p for p in block.parameters() if p.dim() == 2]
        grads = torch.autograd.grad(loss, matrices, retain_graph=True)
        expected = sum(g.abs().sum() for g in grads) / sum(g.numel() for g in grads)
        assert means[i] == pytest.approx(expected.item(), rel=1e-5)


def test_the_command_prints_a_row_per_layer_and_plots(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG, encoding="utf-8")
    argv = [
        "gradients",
        str(config),
        "--text",
        "shortcut connections",
        "--compare",
        "model.norm.name=rmsnorm",
        "--plot",
        str(tmp_path / "g.png"),
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["layer", "c", "model.norm.name=rmsnorm"]  # the config file's name, then each variant
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    assert all(float(v) > 0 for line in lines[2:5] for v in line.split()[1:])
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_text_of_one_token_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG, encoding="utf-8")
    assert main(["gradients", str(config), "--text", "x"]) == 2
    assert "give at least two" in capsys.readouterr().err


def test_a_huge_text_gives_the_gradients_of_its_first_context_tokens(tmp_path, capsys, monkeypatch):
    from gptzoo.plugins.tokenizers import ByteTokenizer

    config = tmp_path / "c.toml"
    config.write_text(CONFIG, encoding="utf-8")
    encoded = []
    real_encode = ByteTokenizer.encode
    monkeypatch.setattr(
        ByteTokenizer, "encode", lambda self, text: encoded.append(len(text)) or real_encode(self, text)
    )
    assert main(["gradients", str(config), "--text", "shortcut connections " * 500_000]) == 0
    huge = capsys.readouterr().out
    assert sum(encoded) < 10_000  # of 10.5 million characters
    assert main(["gradients", str(config), "--text", "shortcut connections"[:17]]) == 0  # its 17 = context + 1 bytes
    assert huge == capsys.readouterr().out
