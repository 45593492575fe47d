"""A run's weights as safetensors: the state dict in the shared layout (a tied weight once),
streamed writes, loading with every mismatch named, and copying the tensors two models share."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from gptzoo.core import GPT, CheckpointError
from gptzoo.recipes.runs.files import WEIGHTS, atomic_path
from gptzoo.recipes.runs.manifest import Manifest, check_file


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP wrappers, so saved names carry no prefixes."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def _aliases(state: dict[str, torch.Tensor]) -> set[str]:
    """Names whose tensor is the same storage as an earlier name's (a tied head's weight)."""
    seen, aliases = set(), set()
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            aliases.add(name)
        seen.add(key)
    return aliases


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in the shared layout, a tied weight stored once (under the embedding)."""
    state = unwrap(model).state_dict()
    aliases = _aliases(state)
    return {name: t.detach().contiguous().cpu() for name, t in state.items() if name not in aliases}


SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(
    f: BinaryIO,
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
    read: Callable[[str], torch.Tensor],
    metadata: dict[str, str],
    progress: Callable = iter,
) -> None:
    """Write a safetensors file to ``f`` tensor by tensor, asking ``read(name)`` for each in turn.

    safetensors.torch.save_file needs every tensor in memory at once (and copies each to
    bytes); the format is simple enough to stream: an 8-byte header length, a JSON header of
    names, dtypes, shapes and byte offsets, then the raw little-endian data in that order. So
    the bytes pass through ``f`` once (a HashingFile hashes them on the way) and are never copied.
    """
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, (dtype, shape) in specs.items():
        size = torch.empty((), dtype=dtype).element_size() * math.prod(shape)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in progress(specs):
        dtype, shape = specs[name]
        tensor = read(name).to("cpu", dtype).contiguous()
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"weight '{name}' has shape {tuple(tensor.shape)}, its config says {shape}")
        f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)  # a view of the tensor's memory, no copy


def write_state(f: BinaryIO, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a state dict (tensors on the CPU) as safetensors."""
    write_safetensors(f, {name: (t.dtype, tuple(t.shape)) for name, t in state.items()}, state.__getitem__, metadata)


def save_weights(model: nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_state(f, model_state(model), {"format": "pt", "producer": "gptzoo"})


def load_weights(model: GPT, path: Path) -> None:
    """Load safetensors weights into ``model``, naming any mismatch."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no weights file; is this a gptzoo run folder?")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weights ({err}); the file is truncated or corrupt") from None
    expected = model.state_dict()
    tied = _aliases(expected)
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(n for n in set(state) & set(expected) if state[n].shape != expected[n].shape)
    if missing or unexpected or wrong:
        wrong = [f"{n} {tuple(state[n].shape)} vs config {tuple(expected[n].shape)}" for n in wrong]
        raise CheckpointError(f"{path} does not match its config: {describe_mismatch(missing, unexpected, wrong)}")
    model.load_state_dict(state, strict=False)


def load_matching_weights(model: GPT, folder: Path, manifest: Manifest | None = None) -> str:
    """Copy the weights of the run in ``folder`` into ``model`` wherever both have a tensor of
    that name (train.init_from); a shape that differs is refused, naming the tensor. Returns
    what was copied, what kept its initialisation and what was left behind."""
    path = folder / WEIGHTS
    if manifest is not None:
        check_file(folder, manifest, WEIGHTS)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weights ({err}); is this a gptzoo run folder?") from None
    ours = model.state_dict()
    shared = sorted(set(state) & set(ours))
    for name in shared:
        if state[name].shape != ours[name].shape:
            raise CheckpointError(
                f"train.init_from: {path} holds {name} as {tuple(state[name].shape)} but this config makes it {tuple(ours[name].shape)}; only components without weights of that name may change"
            )
    if not shared:
        raise CheckpointError(
            f"train.init_from: {path} shares no tensor name with this config's model; start from a run of the same architecture"
        )
    model.load_state_dict({name: state[name] for name in shared}, strict=False)
    fresh = sorted(set(ours) - set(state) - _aliases(ours))
    left = sorted(set(state) - set(ours))
    return f"started from {folder}: {len(shared)} tensors copied" + "".join(
        f"; {what}: {few(names)}" for what, names in (("freshly initialised", fresh), ("left behind", left)) if names
    )


def weights_step(path: Path) -> int | None:
    """The training step recorded in a weights file's metadata, if any."""
    try:
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
    except (SafetensorError, OSError):
        return None
    return int(step) if step is not None and step.isdigit() else None


def few(names: list[str], n: int = 5) -> str:
    """At most ``n`` names, then how many more."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str] = ()) -> str:
    """'missing a, b; unexpected c; wrong shape d', naming at most five tensors of each kind."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
    return "; ".join(f"{kind} {few(names)}" for kind, names in kinds if names)
