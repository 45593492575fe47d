"""A padded vocabulary changes shapes for speed, never the model's probabilities or loss."""

import torch
import torch.nn.functional as F

from gptzoo.core import GPT

BASE = dict(vocab_size=50, context_length=16, d_model=32, n_layers=1, n_heads=4, tokenizer="byte")


def _pair(registry, tied):
    torch.manual_seed(0)
    plain = GPT(registry.model_config(dict(BASE, tied_head=tied)))
    padded = GPT(registry.model_config(dict(BASE, tied_head=tied, vocab_multiple=64)))
    state = plain.state_dict()
    padded_state = padded.state_dict()
    for name, tensor in state.items():
        if tensor.shape != padded_state[name].shape:  # the (vocab, C) tables: real rows first
            padded_state[name].zero_()[: tensor.size(0)] = tensor
        else:
            padded_state[name] = tensor
    padded.load_state_dict(padded_state)
    return plain.eval(), padded.eval()


def test_rows_are_rounded_up_to_the_multiple(registry):
    _, padded = _pair(registry, tied=True)
    assert padded.token_embedding.weight.shape == (64, 32)
    assert padded.head.weight is padded.token_embedding.weight


def test_logits_over_the_real_vocabulary_and_loss_are_exact(registry):
    for tied in (True, False):
        plain, padded = _pair(registry, tied)
        idx = torch.randint(0, 50, (2, 12))
        targets = torch.randint(0, 50, (2, 12))
        a, b = plain(idx), padded(idx)
        assert b.shape == (2, 12, 64)
        torch.testing.assert_close(b[..., :50], a)
        assert torch.isneginf(b[..., 50:]).all()
        torch.testing.assert_close(F.softmax(b, -1)[..., :50], F.softmax(a, -1))
        torch.testing.assert_close(
            F.cross_entropy(b.flatten(0, 1), targets.flatten()), F.cross_entropy(a.flatten(0, 1), targets.flatten())
        )


def test_padding_ids_get_no_gradient(registry):
    _, padded = _pair(registry, tied=False)
    padded.train()
    idx = torch.randint(0, 50, (2, 12))
    F.cross_entropy(padded(idx).flatten(0, 1), idx.flatten()).backward()
    grad = padded.head.weight.grad
    assert torch.count_nonzero(grad[50:]) == 0 and torch.count_nonzero(grad[:50]) > 0
