"""Speed and memory of the token mixers: training tokens/s against sdpa and against transformers'
own PyTorch path for the same layer, and decoding time per token and cache bytes as the text grows.

    python benchmarks/mixers.py [--mixers gated_deltanet,mamba2] [--lengths 1024,4096]
                                [--decode-lengths 1024,4096,16384] [--reps 3] [--out mixers-bench.json]

- train: forward, backward and AdamW step of a 4-layer × 256 model (4 heads, SwiGLU, RMSNorm;
  rope for mixers that rotate, no positions for the others) on one sequence at each length;
  tokens/s, and each mixer's time per token at the longest length over the shortest (1.0:
  cost linear in the length; softmax attention grows with it);
- layer: one mixer layer's forward and backward at each length against transformers' own
  PyTorch layer holding the same weights (REFERENCES; ratio above 1: gptzoo is faster);
- decode: after a prompt of each decode length, the median time of one greedy step (16 steps on
  each prompt's cache in turns) and the bytes the cache's tensors hold; for bounded caches both
  stay flat as the prompt grows.

Cases of one length are timed in turns (one repetition of each, the order reversed every other
repetition) so a change in the machine's load falls on all alike; figures are medians.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable

import torch
from machine import describe
from turns import in_turns

from gptzoo.core import GPT, Attention, AttentionContext
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
SHAPE = dict(vocab_size=512, d_model=256, n_layers=4, n_heads=4, feed_forward="swiglu", norm="rmsnorm")
SKIPPED = {"none", "per_head", "no_weights", "fused"}  # nothing to mix, or teaching forms of sdpa

# name -> function(our mixer module) -> transformers' layer with its weights, called as f(x) -> y.
# Filled by the mixers' modules that have a transformers twin (see tests/plugins for the copies).
REFERENCES: dict[str, Callable[[Attention], Callable[[torch.Tensor], torch.Tensor]]] = {}


def _minimax_lightning(mixer: Attention) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' MiniMaxLightningAttention (its own block size, 256) holding the weights of ``lightning``
    (the same names; out_proj's bias, which MiniMax's layer has not, is left out)."""
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    dims = mixer.dims
    config = MiniMaxConfig(
        hidden_size=dims.d_model,
        num_attention_heads=dims.n_heads,
        num_key_value_heads=dims.n_heads,
        head_dim=dims.head_size,
        num_hidden_layers=dims.n_layers,
        layer_types=["linear_attention"] * dims.n_layers,
    )
    twin = MiniMaxLightningAttention(config, dims.layer_idx)
    ours = mixer.state_dict()
    twin.load_state_dict({name: ours.get(name, tensor) for name, tensor in twin.state_dict().items()})
    return lambda x: twin(x, position_embeddings=None, attention_mask=None)[0]


REFERENCES["lightning"] = _minimax_lightning


def _with_conv_weights(mixer: Attention) -> dict[str, torch.Tensor]:
    """The state dict of a mixer holding a ShortConv as ``conv1d``, in transformers' names (``conv1d.weight``)."""
    return {name.replace("conv1d.conv.", "conv1d."): tensor for name, tensor in mixer.state_dict().items()}


def _mamba2_mixer(mixer: Attention) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' Mamba2Mixer (its own chunk size, 256) holding the weights of ``mamba2``."""
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    p, dims = mixer.params, mixer.dims
    config = Mamba2Config(
        hidden_size=dims.d_model,
        num_heads=mixer.n_heads,
        head_dim=mixer.head_dim,
        state_size=p.d_state,
        n_groups=p.n_groups,
        expand=p.expand,
        conv_kernel=p.d_conv,
        num_hidden_layers=dims.n_layers,
    )
    twin = Mamba2Mixer(config, dims.layer_idx)
    twin.load_state_dict(_with_conv_weights(mixer))
    return lambda x: twin(x)


def _mamba_mixer(mixer: Attention) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' MambaMixer (its scan token by token, as outside torch.compile) holding the weights of ``mamba``."""
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    p, dims = mixer.params, mixer.dims
    config = MambaConfig(
        hidden_size=dims.d_model,
        state_size=p.d_state,
        expand=p.expand,
        conv_kernel=p.d_conv,
        time_step_rank=mixer.dt_rank,
        num_hidden_layers=dims.n_layers,
    )
    twin = MambaMixer(config, dims.layer_idx)
    twin.load_state_dict(_with_conv_weights(mixer))
    return lambda x: twin(x)


REFERENCES["mamba2"] = _mamba2_mixer
REFERENCES["mamba"] = _mamba_mixer


def _olmo_hybrid_gated_deltanet(mixer: Attention) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' OlmoHybridGatedDeltaNet (torch_chunk_gated_delta_rule, chunks of 64; the same
    names but o_proj) holding the weights of ``gated_deltanet``."""
    from transformers import OlmoHybridConfig
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet

    p, dims = mixer.params, mixer.dims
    config = OlmoHybridConfig(
        hidden_size=dims.d_model,
        num_attention_heads=dims.n_heads,
        linear_num_key_heads=mixer.n_k_heads,
        linear_num_value_heads=mixer.n_v_heads,
        linear_key_head_dim=mixer.head_k_dim,
        linear_value_head_dim=mixer.head_v_dim,
        linear_conv_kernel_dim=p.conv_size,
        linear_allow_neg_eigval=p.allow_neg_eigval,
        num_hidden_layers=max(2, dims.n_layers),
    )
    twin = OlmoHybridGatedDeltaNet(config, 0)
    twin.o_norm.variance_epsilon = p.norm_eps  # OLMo Hybrid's is FLA's 1e-5
    state = {name.replace("out_proj.", "o_proj."): t for name, t in _with_conv_weights(mixer).items()}
    twin.load_state_dict(state)
    return lambda x: twin(x)


REFERENCES["gated_deltanet"] = _olmo_hybrid_gated_deltanet


def _lfm2_short_conv(mixer: Attention) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' Lfm2ShortConv (its PyTorch path: causal_conv1d is not installed) holding the weights of
    ``short_conv`` (in_proj, the depthwise convolution, out_proj)."""
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    dims = mixer.dims
    config = Lfm2Config(
        hidden_size=dims.d_model,
        num_hidden_layers=1,
        layer_types=["conv"],
        num_attention_heads=dims.n_heads,
        conv_L_cache=mixer.params.kernel_size,
    )
    twin = Lfm2ShortConv(config, layer_idx=0)
    with torch.no_grad():
        twin.in_proj.weight.copy_(mixer.in_proj.weight)
        twin.conv.weight.copy_(mixer.conv.conv.weight)
        twin.out_proj.weight.copy_(mixer.out_proj.weight)
    return lambda x: twin(x)


REFERENCES["short_conv"] = _lfm2_short_conv


def _kimi_linear_delta_attention(mixer: Attention) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' KimiLinearDeltaAttention (chunk_kimi_delta_attention, chunks of 64) holding the
    weights of ``kimi_delta`` (the same names but o_proj, and the forget gate's under forget_gate.)."""
    from transformers import KimiLinearConfig
    from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearDeltaAttention

    p, dims = mixer.params, mixer.dims
    config = KimiLinearConfig(
        hidden_size=dims.d_model,
        linear_num_heads=mixer.n_v_heads,
        linear_head_dim=mixer.head_k_dim,
        linear_conv_kernel_dim=p.conv_size,
        rms_norm_eps=p.norm_eps,
        num_hidden_layers=dims.n_layers,
    )
    twin = KimiLinearDeltaAttention(config, 0)
    forget_gate = ("f_a_proj.", "f_b_proj.", "dt_bias", "A_log")
    state = {
        ("forget_gate." if name.startswith(forget_gate) else "") + name.replace("out_proj.", "o_proj."): t
        for name, t in _with_conv_weights(mixer).items()
    }
    state["forget_gate.A_log"] = state["forget_gate.A_log"].view(1, 1, -1, 1)
    twin.load_state_dict(state)
    return lambda x: twin(x)


REFERENCES["kimi_delta"] = _kimi_linear_delta_attention


def model(name: str, context_length: int) -> GPT:
    impl = REGISTRY.resolve("attention", name)
    positional = "rope" if "rotate" in impl.position_hooks else "none"
    torch.manual_seed(0)
    config = REGISTRY.model_config(
        {**SHAPE, "context_length": context_length, "attention": name, "positional": positional}
    )
    return GPT(config)


def train_step(m: GPT, T: int) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-4)
    idx = torch.randint(0, SHAPE["vocab_size"], (1, T))
    m.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def layer_pass(fn: Callable[[torch.Tensor], torch.Tensor], T: int) -> Callable[[], None]:
    x = torch.randn(1, T, SHAPE["d_model"], requires_grad=True)

    def run() -> None:
        fn(x).square().mean().backward()

    return run


def train_rows(names: list[str], lengths: list[int], reps: int) -> list[dict]:
    rows = []
    per_token: dict[str, dict[int, float]] = {name: {} for name in names}
    for T in lengths:
        seconds = in_turns({name: train_step(model(name, T), T) for name in names}, reps).seconds
        for name, s in seconds.items():
            per_token[name][T] = s / T
            rows.append({"case": "train", "mixer": name, "length": T, "tokens_per_s": T / s})
    for name in names:
        first, last = per_token[name][lengths[0]], per_token[name][lengths[-1]]
        rows.append(
            {
                "case": "train_growth",
                "mixer": name,
                "lengths": [lengths[0], lengths[-1]],
                "per_token_ratio": last / first,
            }
        )
    return rows


def layer_rows(names: list[str], lengths: list[int], reps: int) -> list[dict]:
    rows = []
    for name in (n for n in names if n in REFERENCES):
        for T in lengths:
            m = model(name, T)
            mixer = m.blocks[0].attention
            positions = torch.arange(T)[None]
            ctx = AttentionContext(m.positional, positions, positions)
            ours = functools.partial(mixer, ctx=ctx)
            twin = REFERENCES[name](mixer)
            seconds = in_turns({"gptzoo": layer_pass(ours, T), "transformers": layer_pass(twin, T)}, reps).seconds
            rows.append(
                {
                    "case": "layer",
                    "mixer": name,
                    "length": T,
                    "seconds": seconds,
                    "speedup": seconds["transformers"] / seconds["gptzoo"],
                }
            )
    return rows


def greedy_steps(m: GPT, cache, steps: int) -> Callable[[], None]:
    """A function that decodes ``steps`` greedy tokens through ``cache`` each time it is called."""
    token = [torch.zeros(1, 1, dtype=torch.long)]

    def run() -> None:
        for _ in range(steps):
            token[0] = m(token[0], cache=cache)[:, -1:].argmax(-1)

    return run


def decode_rows(names: list[str], lengths: list[int], reps: int, steps: int = 16) -> list[dict]:
    rows = []
    for name in names:
        m = model(name, max(lengths)).eval()
        caches = {}
        with torch.inference_mode():
            for T in lengths:  # a cache per prompt length, prefilled before any timing
                caches[T] = m.new_cache(1, None if m.extension_refusal() is None else T + steps * (reps + 2) + 1)
                prompt = torch.randint(0, SHAPE["vocab_size"], (1, T))
                for start in range(0, T, 1024):  # prefill in pieces: softmax attention's scores stay small
                    m(prompt[:, start : start + 1024], cache=caches[T])
            seconds = in_turns({T: greedy_steps(m, caches[T], steps) for T in lengths}, reps).seconds
        for T in lengths:
            rows.append(
                {
                    "case": "decode",
                    "mixer": name,
                    "prompt": T,
                    "ms_per_token": 1e3 * seconds[T] / steps,
                    "cache_bytes": _cache_bytes(caches[T]),
                }
            )
    return rows


def _cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for value in vars(layer).values():
            tensors = value if isinstance(value, (list, tuple)) else [value]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mixers", default=None, help="comma-separated mixer names (default: every registered one, and sdpa)"
    )
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--decode-lengths", default="1024,4096,16384")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="mixers-bench.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.mixers.split(",") if args.mixers else [n for n in REGISTRY.names("attention") if n not in SKIPPED]
    lengths = [int(n) for n in args.lengths.split(",")]
    decode_lengths = [int(n) for n in args.decode_lengths.split(",")]
    rows = []
    for part in (
        train_rows(names, lengths, args.reps),
        layer_rows(names, lengths, args.reps),
        decode_rows(names, decode_lengths, args.reps),
    ):
        for row in part:
            print(json.dumps(row))
        rows += part
    meta = {
        "machine": describe(),
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
