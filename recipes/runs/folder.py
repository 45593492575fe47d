"""The run folder, the unit every command reads and writes.

    DIR/config.json        the resolved RunConfig (vocab_size filled in)
    DIR/model.safetensors  the weights, in the attention-agnostic layout
    DIR/tokenizer.json     the tokenizer's state, when it has one (bpe, char, word)
    DIR/metrics.jsonl      one JSON object per evaluation
    DIR/train_state.pt     optimizer, scheduler, step and RNG states (tensors only) for --resume
    DIR/manifest.json      every committed file's size and sha256, the step, each component's plugin

Files are committed together through the manifest (gptzoo.recipes.runs.manifest): a crash or a full
disk leaves the previous checkpoint whole, and every reader checks what it reads against it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from gptzoo.core import GPT, CheckpointError, GptzooError, Tokenizer
from gptzoo.recipes.config.schema import RunConfig, validate_run_config
from gptzoo.recipes.runs.manifest import MANIFEST, Commit, Manifest, check_file, components_of, disk_full_error, is_disk_full, missing_components, new_temporary, note, read_manifest, run_writer
from gptzoo.registry import Registry, default_registry

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.jsonl"
TRAIN_STATE = "train_state.pt"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary(path.parent, path.name)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png(fig, path: Path) -> None:
    """Lay out a matplotlib figure, write it to ``path`` atomically, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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


SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def write_safetensors(
    f: BinaryIO, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], read: Callable[[str], torch.Tensor], metadata: dict[str, str], progress: Callable = iter
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
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
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
            raise CheckpointError(f"train.init_from: {path} holds {name} as {tuple(state[name].shape)} but this config makes it {tuple(ours[name].shape)}; only components without weights of that name may change")
    if not shared:
        raise CheckpointError(f"train.init_from: {path} shares no tensor name with this config's model; start from a run of the same architecture")
    model.load_state_dict({name: state[name] for name in shared}, strict=False)
    fresh = sorted(set(ours) - set(state) - _aliases(ours))
    left = sorted(set(state) - set(ours))
    return f"started from {folder}: {len(shared)} tensors copied" + "".join(
        f"; {what}: {few(names)}" for what, names in (("freshly initialised", fresh), ("left behind", left)) if names
    )


def few(names: list[str], n: int = 5) -> str:
    """At most ``n`` names, then how many more."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str] = ()) -> str:
    """'missing a, b; unexpected c; wrong shape d', naming at most five tensors of each kind."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
    return "; ".join(f"{kind} {few(names)}" for kind, names in kinds if names)


def build_tokenizer(config: RunConfig, folder: Path | None = None, manifest: Manifest | None = None) -> Tokenizer:
    """The config's tokenizer, with its saved state from ``folder`` when it has one."""
    tokenizer = config.model.tokenizer.build()
    if tokenizer.needs_fit and folder is not None:
        file = folder / TOKENIZER
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; the '{config.model.tokenizer.name}' tokenizer's vocabulary is saved there")
        if manifest is not None:
            check_file(folder, manifest, TOKENIZER)
        try:
            tokenizer.load_state(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{file}: unreadable tokenizer state ({err})") from None
        size = config.model.vocab_size
        if size is not None and tokenizer.vocab_size > size:
            raise CheckpointError(
                f"{file}: the '{config.model.tokenizer.name}' tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size "
                f"in {folder / CONFIG} is {size}; the two files are not from the same run"
            )
    return tokenizer


def save_config(config: RunConfig, folder: Path) -> None:
    write_text_atomic(folder / CONFIG, config.model_dump_json(indent=2) + "\n")


def run_commit(folder: Path, config: RunConfig, step: int | None = None, registry: Registry | None = None) -> Commit:
    """A commit of ``folder`` recording who provided each component of ``config``."""
    return Commit(folder, step, components_of(config, registry or default_registry()))


def stage_run(commit: Commit, config: RunConfig, weights: dict[str, torch.Tensor], tokenizer: Tokenizer, metadata: dict[str, str] | None = None) -> None:
    """Stage config, tokenizer state and weights into ``commit``."""
    commit.stage_text(CONFIG, config.model_dump_json(indent=2) + "\n")
    state = tokenizer.state()
    if state is not None:
        commit.stage_text(TOKENIZER, json.dumps(state, ensure_ascii=False))
    with commit.stage(WEIGHTS) as f:
        write_state(f, weights, {"format": "pt", "producer": "gptzoo"} | (metadata or {}))


def save_run(folder: str | Path, config: RunConfig, model: nn.Module, tokenizer: Tokenizer, registry: Registry | None = None) -> None:
    """Commit config, tokenizer and weights to ``folder`` together (with its manifest)."""
    folder = Path(folder)
    check_out_folder(folder)
    with run_writer(folder):
        commit = run_commit(folder, config, registry=registry)
        stage_run(commit, config, model_state(model), tokenizer)
        commit.commit()


def commit_files(folder: str | Path, files: dict[str, str]) -> None:
    """Write text files into the run ``folder`` and commit them, keeping the rest of its manifest."""
    folder = Path(folder)
    with run_writer(folder):
        commit = Commit(folder)
        for name, text in files.items():
            commit.stage_text(name, text)
        commit.commit()


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """Refuse an output path that is a file or lies under one, before anything is written."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under {path}, which is a file"
                raise GptzooError(f"{flag} {out} {where}, not a folder; choose another {flag}")
            return


@dataclass
class Run:
    folder: Path
    config: RunConfig
    model: GPT
    tokenizer: Tokenizer
    manifest: Manifest | None = None  # what the folder committed; None for a run built in memory or saved before manifests


def open_run(folder: str | Path) -> Manifest | None:
    """The run folder's manifest (None for a folder saved before manifests, with a note saying so)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such run folder" if not folder.exists() else f"{folder}: a file, not a run folder")
    manifest = read_manifest(folder)
    if manifest is None and (folder / CONFIG).is_file():
        note(f"{folder} has no {MANIFEST} (saved before gptzoo checked its run folders), so damage to its files cannot be detected")
    return manifest


UNREAD: Any = object()  # load_config's default manifest: read the folder's own (None is "it has none")


def load_config(folder: str | Path, registry: Registry | None = None, manifest: Manifest | None = UNREAD) -> RunConfig:
    """The run's config.json, validated (checked against ``manifest`` when given; else the folder's own is read)."""
    folder = Path(folder)
    if manifest is UNREAD:
        manifest = open_run(folder)
    file = folder / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; is {folder} a gptzoo run folder?")
    if manifest is not None:
        check_file(folder, manifest, CONFIG)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    registry = registry or default_registry()
    missing = missing_components(manifest, registry, file)
    if missing:
        raise CheckpointError(missing)
    return validate_run_config(data, str(file), registry)


def load_run(folder: str | Path, registry: Registry | None = None, device: str | torch.device = "cpu") -> Run:
    """Read a run folder back: config, tokenizer and model with its weights (in eval mode), each file checked."""
    folder = Path(folder)
    manifest = open_run(folder)
    config = load_config(folder, registry, manifest)
    tokenizer = build_tokenizer(config, folder, manifest)
    with ThreadPoolExecutor(1) as pool:  # hash the weights while the model is built (both release the GIL)
        checked = pool.submit(check_file, folder, manifest, WEIGHTS) if manifest is not None and (folder / WEIGHTS).is_file() else None
        model = GPT(config.model)
        if checked is not None:
            checked.result()
    load_weights(model, folder / WEIGHTS)
    return Run(folder, config, model.to(device).eval(), tokenizer, manifest)


def weights_step(path: Path) -> int | None:
    """The training step recorded in a weights file's metadata, if any."""
    try:
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
    except (SafetensorError, OSError):
        return None
    return int(step) if step is not None and step.isdigit() else None


def append_metrics(folder: Path, record: dict) -> None:
    try:
        with open(folder / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # a line cut short is dropped on --resume: the manifest commits the log up to the checkpoint
        if is_disk_full(err):
            raise disk_full_error(folder, f"{METRICS} (step {record.get('step')})") from None
        raise


def read_metrics(folder: Path) -> list[dict]:
    file = Path(folder) / METRICS
    if not file.is_file():
        return []
    records = []
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{file}, line {number}: not a JSON record ({type(err).__name__}: {err}); the file is damaged") from None
            if not isinstance(record, dict):
                raise CheckpointError(f"{file}, line {number}: not a JSON object; the file is damaged")
            records.append(record)
    return records
