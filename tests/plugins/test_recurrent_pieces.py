import torch

from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding


def written_out_conv(conv: ShortConv, x: torch.Tensor) -> torch.Tensor:
    """y[t] = sum over the last kernel_size tokens of x[t - (K - 1 - j)] * w[j], plus the bias."""
    K, w, b = conv.kernel_size, conv.conv.weight[:, 0], conv.conv.bias  # (D, K), (D,)
    return torch.stack(
        [sum(x[:, t - (K - 1 - j)] * w[:, j] for j in range(K) if t - (K - 1 - j) >= 0) + b for t in range(x.size(1))],
        dim=1,
    )


def test_short_conv_is_a_causal_sum_over_the_last_kernel_tokens():
    torch.manual_seed(0)
    conv = ShortConv(3, 4, bias=True)
    x = torch.randn(2, 9, 3)
    torch.testing.assert_close(conv(x), written_out_conv(conv, x))


def test_short_conv_decoding_a_few_tokens_at_a_time_is_the_written_out_sum():
    torch.manual_seed(0)
    conv = ShortConv(3, 4, bias=True)
    x = torch.randn(2, 30, 3)
    window = conv.new_window(2, x.device, x.dtype)
    sizes = (1, 2, 1, 3, 1, 20, 1, 1)  # short inputs on both sides of a long one
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pieces = [conv(x[:, s : s + n], window) for s, n in zip(starts, sizes, strict=True)]
    torch.testing.assert_close(torch.cat(pieces, 1), written_out_conv(conv, x))
    torch.testing.assert_close(window, x[:, -3:].transpose(1, 2))


def test_short_conv_in_pieces_through_its_window_equals_one_pass():
    torch.manual_seed(0)
    conv = ShortConv(5, 3)
    x = torch.randn(2, 10, 5)
    window = conv.new_window(2, x.device, x.dtype)
    pieces = [conv(x[:, s : s + n], window) for s, n in ((0, 4), (4, 1), (5, 5))]
    torch.testing.assert_close(torch.cat(pieces, 1), conv(x))


def test_zero_padding_and_cache_bytes():
    x = torch.ones(2, 3, 4)
    valid = torch.tensor([[False, True, True], [True, True, True]])
    assert zero_padding(x, valid)[0, 0].abs().sum() == 0 and zero_padding(x, valid)[0, 1:].sum() == 8
    assert RecurrentCache(a=torch.zeros(2, 3), b=torch.zeros(4, dtype=torch.float16)).nbytes() == 2 * 3 * 4 + 4 * 2
