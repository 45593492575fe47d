"""The run folder, the unit every command reads and writes.

    DIR/config.json        the resolved RunConfig (vocab_size filled in)
    DIR/model.safetensors  the weights, in the attention-agnostic layout
    DIR/tokenizer.json     the tokenizer's state, when it has one (bpe, char, word)
    DIR/metrics.jsonl      one JSON object per evaluation
    DIR/train_state.pt     optimizer, scheduler, step and RNG states (tensors only) for --resume

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gptzoo.core import GPT, CheckpointError, Tokenizer
from gptzoo.recipes.config import RunConfig, validate_run_config
from gptzoo.registry import Registry

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
TRAIN_STATE = "train_state.pt"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def save_weights(model: nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(model_state(model), str(tmp), metadata={"format": "pt", "producer": "gptzoo"})


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


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str] = ()) -> str:
    """'missing a, b; unexpected c; wrong shape d', naming at most five tensors of each kind."""
    def few(names: list[str], n: int = 5) -> str:
        return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

    kinds = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
    return "; ".join(f"{kind} {few(names)}" for kind, names in kinds if names)


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    state = tokenizer.state()
    if state is not None:
        write_text_atomic(folder / TOKENIZER, json.dumps(state, ensure_ascii=False))


def build_tokenizer(config: RunConfig, folder: Path | None = None) -> Tokenizer:
    """The config's tokenizer, with its saved state from ``folder`` when it has one."""
    tokenizer = config.model.tokenizer.build()
    if tokenizer.needs_fit and folder is not None:
        file = folder / TOKENIZER
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the '{config.model.tokenizer.name}' tokenizer's vocabulary is saved there")
        try:
            tokenizer.load_state(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{file}: unreadable tokenizer state ({err})") from None
    return tokenizer


def save_config(config: RunConfig, folder: Path) -> None:
    write_text_atomic(folder / CONFIG, config.model_dump_json(indent=2) + "\n")


def save_run(folder: str | Path, config: RunConfig, model: nn.Module, tokenizer: Tokenizer) -> None:
    """Write config, tokenizer and weights (weights last: a folder with weights is complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config, folder)
    save_tokenizer(tokenizer, folder)
    save_weights(model, folder / WEIGHTS)


@dataclass
class Run:
    folder: Path
    config: RunConfig
    model: GPT
    tokenizer: Tokenizer


def load_config(folder: str | Path, registry: Registry | None = None) -> RunConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such run folder")
    file = folder / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; is {folder} a gptzoo run folder?")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    return validate_run_config(data, str(file), registry)


def load_run(folder: str | Path, registry: Registry | None = None, device: str | torch.device = "cpu") -> Run:
    """Read a run folder back: config, tokenizer and model with its weights (in eval mode)."""
    folder = Path(folder)
    config = load_config(folder, registry)
    tokenizer = build_tokenizer(config, folder)
    model = GPT(config.model)
    load_weights(model, folder / WEIGHTS)
    return Run(folder, config, model.to(device).eval(), tokenizer)


def append_metrics(folder: Path, record: dict) -> None:
    with open(folder / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(folder: Path) -> list[dict]:
    file = Path(folder) / METRICS
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
