import torch

from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding


def test_short_conv_is_a_causal_sum_over_the_last_kernel_tokens():
    torch.manual_seed(0)
    conv = ShortConv(3, 4, bias=True)
    x = torch.randn(2, 9, 3)
    w, b = conv.conv.weight[:, 0], conv.conv.bias  # (D, K), (D,)
    expected = torch.stack(
        [
            sum(x[:, t - (3 - j)] * w[:, j] for j in range(4) if t - (3 - j) >= 0) + b  # taps on t-3 .. t
            for t in range(9)
        ],
        dim=1,
    )
    torch.testing.assert_close(conv(x), expected)


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
