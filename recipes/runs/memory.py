"""Memory a model needs before it is built, against what the machine has left: a size typed wrong
in a config (context_length 10^9 makes rope tables of tens of GiB) is refused before anything is allocated."""

from __future__ import annotations

import os

import torch

from gptzoo.core import GPT, ConfigError, ModelConfig


def model_bytes(model: GPT) -> tuple[int, int]:
    """Bytes of ``model``'s weights and of its buffers (rope tables, masks), counted on any device, meta included."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return weights, buffers


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes the machine can still give on ``device``: the GPU's free memory, or the system's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(config: ModelConfig, source: str, device: str | torch.device = "cpu", weights: bool = True) -> None:
    """ConfigError naming the sizes when the model ``config`` describes needs more memory than ``device`` has left
    (``weights`` False: its tables only, for an importer that streams the weights without building the model)."""
    sizes = f"context_length {config.context_length}, d_model {config.d_model}, n_layers {config.n_layers}"
    try:
        with torch.device("meta"):
            weight_bytes, table_bytes = model_bytes(GPT(config))
    except NotImplementedError:  # a component that reads tensor values as it is built has no meta estimate
        return
    except RuntimeError as err:
        if "overflow" in str(err):  # torch's "Storage size calculation overflowed": a tensor past 2^63 bytes
            raise ConfigError(
                f"{source}: this model has a tensor too large for any machine ({sizes}); check those sizes"
            ) from None
        return
    need = table_bytes + weight_bytes * weights
    available = available_memory(device)
    if need > available:
        raise ConfigError(
            f"{source}: this model needs about {gib(need)} ({f'{gib(weight_bytes)} of weights, ' if weights else ''}{gib(table_bytes)} "
            f"of tables for {sizes}) "
            f"but {device} has {gib(available)} available; check those sizes"
        )
