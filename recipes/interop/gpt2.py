"""OpenAI's GPT-2 in and out of gptzoo: the Hugging Face layout <-> a gptzoo run folder.

Hugging Face stores GPT-2 as ``config.json`` plus ``model.safetensors`` with GPT-2's own names
(``h.{i}.attn.c_attn.weight``, ...) and its Conv1D orientation: weights stored (in, out), the
transpose of ``nn.Linear``'s (out, in). gptzoo's shared attention layout keeps query, key and
value rows stacked in ``qkv.weight``, which is exactly ``c_attn.weight.T``.

Both directions stream: tensors are read one at a time from the source file and written one at
a time into the destination, so converting gpt2-xl (6 GiB) needs memory for one tensor, not
for the model. Every destination folder is written beside its final name and renamed into
place at the end, so an error leaves nothing half-written.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from tqdm import tqdm

from gptzoo.core import CheckpointError, ConfigError, GptzooError
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.interop.files import (
    checkpoint_file,
    new_folder,
    not_floating_point,
    open_safetensors,
    read_hf_config,
    refuse_existing,
    weight_shapes,
    write_imported_run,
)
from gptzoo.recipes.interop.hf.convert import model_table, normalise
from gptzoo.recipes.interop.hf.families import GPT2, weight_plan
from gptzoo.recipes.interop.hf.import_ import check_layers
from gptzoo.recipes.runs.files import CONFIG, WEIGHTS, atomic_path
from gptzoo.recipes.runs.weights import describe_mismatch
from gptzoo.registry import Registry, default_registry

SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HF_FILES = (CONFIG, WEIGHTS)  # Hugging Face uses the same two file names as a run folder
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"
HF_TREE = "https://huggingface.co/{name}/tree/main"
CACHE_ENV = "GPTZOO_CACHE"  # the same cache root as the token cache
TIMEOUT_S = 10
ATTENTION = ("sdpa", "fused", "per_head")  # the built-in variants; all compute GPT-2's attention
GPT2_TOKENIZER = {"name": "tiktoken", "encoding": "gpt2"}  # the published checkpoints' BPE

HF_PREFIX = GPT2.prefix  # GPT2LMHeadModel's prefix; the published files (GPT2Model) have none
HF_SKIPPED = re.compile(rf"{GPT2.ignored}|lm_head\.weight")  # causal-mask buffers; the tied head


def hf_names(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, bool]]:
    """gptzoo weight name -> (GPT-2 name without prefix, whether GPT-2 stores it transposed), from the gpt2 family's table."""
    return {
        name: (theirs[0].removeprefix(HF_PREFIX), weight.layout == "transposed")
        for name, (weight, theirs) in weight_plan(GPT2, shapes).items()
    }


# ---- configs ------------------------------------------------------------------------------


def model_config_data(hf: dict, attention: str, source: str) -> dict:
    """A Hugging Face GPT-2 config.json -> the gptzoo [model] table of the same model, read through the
    gpt2 family's table as import-hf reads it, with GPT-2's tiktoken tokenizer.

    Raises ConfigError naming the setting when the config describes something that is not
    GPT-2 (another model type, another activation, untied head, ...).
    """
    if hf.get("model_type") != "gpt2":
        raise ConfigError(
            f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'; import-gpt2 reads GPT-2 checkpoints "
            "(GPT2LMHeadModel / GPT2Model) only"
        )
    return model_table(GPT2, normalise(hf), source, attention, GPT2_TOKENIZER)


# ---- finding the files: a local folder, the cache, or a download ---------------------------


def cache_folder(name: str) -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gptzoo") / "hf" / name


def resolve_source(src: str, out: Path) -> Path:
    """The folder holding GPT-2's config.json and model.safetensors for ``src`` (a folder or a size name).

    ``out`` is only named in the message that says what to do without network access.
    """
    path = Path(src)
    if path.is_dir():
        missing = [f for f in HF_FILES if not checkpoint_file(path, f).is_file()]
        if missing:
            raise CheckpointError(
                f"{path}: missing {' and '.join(missing)}; a GPT-2 folder in the Hugging Face layout holds "
                f"{' and '.join(HF_FILES)} (from https://huggingface.co/gpt2/tree/main or the -medium, -large, -xl pages)"
            )
        return path
    if Path(src).is_file():
        raise GptzooError(
            f"{src}: a file, not a folder; give the folder holding {' and '.join(HF_FILES)}, or one of {', '.join(SIZES)}"
        )
    if src not in SIZES:
        close = difflib.get_close_matches(src, SIZES, n=1, cutoff=0.8)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise GptzooError(
            f"{src}: no such folder, and not a GPT-2 size name{hint}; give a folder or one of {', '.join(SIZES)}"
        )
    folder = cache_folder(src)
    if all((folder / f).is_file() for f in HF_FILES):
        return folder
    try:
        sha256 = lfs_sha256(HF_URL.format(name=src, file=WEIGHTS))
        download(HF_URL.format(name=src, file=CONFIG), folder / CONFIG)
        download(HF_URL.format(name=src, file=WEIGHTS), folder / WEIGHTS, sha256)
    except OSError as err:  # urllib's URLError and HTTPError, timeouts, refused connections
        raise GptzooError(
            f"cannot download {src} from huggingface.co ({getattr(err, 'reason', None) or err}). Without network access, "
            f"download {' and '.join(HF_FILES)} from {HF_TREE.format(name=src)} into {folder} "
            f"(or any folder) and run: gptzoo import-gpt2 {folder} --out {out}"
        ) from None
    return folder


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # surface the 3xx itself: its headers carry the checksum


def lfs_sha256(url: str) -> str:
    """The sha256 Hugging Face publishes for a large (LFS) file: the ETag of a HEAD request.

    The answer to ``resolve/main/FILE`` redirects to a CDN whose own ETag means something else,
    so redirects are not followed blindly: X-Linked-Etag on the 3xx is the checksum; a redirect
    within huggingface.co (a renamed repository) is followed.
    """
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(5):
        try:
            headers = opener.open(urllib.request.Request(url, method="HEAD"), timeout=TIMEOUT_S).headers
        except urllib.error.HTTPError as err:
            if err.code not in (301, 302, 303, 307, 308):
                raise
            headers = err.headers
        etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            return etag
        location = headers.get("Location")
        if not location or urllib.parse.urlparse(location).netloc not in ("", urllib.parse.urlparse(url).netloc):
            break
        url = urllib.parse.urljoin(url, location)
    raise GptzooError(
        f"{url}: huggingface.co did not give the file's sha256 (ETag {etag!r}); cannot check the download"
    )


def download(url: str, path: Path, sha256: str | None = None) -> None:
    """Fetch ``url`` to ``path`` with a progress bar; with ``sha256``, keep it only if it matches."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_path(path) as tmp, open(tmp, "wb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {path.name}") as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if sha256 is not None and digest.hexdigest() != sha256:
            raise GptzooError(
                f"{url}: the download's sha256 {digest.hexdigest()} is not the published {sha256}; nothing was kept, try again"
            )


# ---- the two directions -------------------------------------------------------------------


def import_gpt2(src: str, out: str | Path, attention: str = "sdpa", registry: Registry | None = None) -> RunConfig:
    """Convert GPT-2 (a Hugging Face folder or a size name) into the run folder ``out``."""
    out = Path(out)
    refuse_existing(out)  # before downloading anything
    folder = resolve_source(src, out)
    source = folder / CONFIG
    model_data = model_config_data(read_hf_config(source), attention, str(source))
    weights = folder / WEIGHTS
    with open_safetensors(weights) as f:
        # before validating every layer; named as GPT2Model names them, as the messages below do
        check_layers(dict.fromkeys(k.removeprefix(HF_PREFIX) for k in f.keys()), GPT2, model_data, source)
        config = RunConfig(model=(registry or default_registry()).model_config(model_data, str(source)))
        shapes = weight_shapes(config.model)
        # Accept GPT2LMHeadModel's "transformer." names and GPT2Model's bare ones.
        stored = {key.removeprefix(HF_PREFIX): key for key in f.keys()}
        names = hf_names(shapes)
        wanted = {hf: name for name, (hf, _) in names.items()}
        missing = sorted(set(wanted) - set(stored))
        unexpected = sorted(k for k in set(stored) - set(wanted) if not HF_SKIPPED.fullmatch(k))
        wrong = []
        for hf, name in wanted.items():
            expected = shapes[name][::-1] if names[name][1] else shapes[name]
            if hf in stored and (shape := tuple(f.get_slice(stored[hf]).get_shape())) != expected:
                wrong.append(f"{stored[hf]} {shape} vs {expected} for this config")
        if missing or unexpected or wrong:
            raise CheckpointError(f"{weights} does not match {source}: {describe_mismatch(missing, unexpected, wrong)}")
        integers = not_floating_point(f, [stored[hf] for hf in wanted])
        if integers:
            raise CheckpointError(
                f"{weights}: {', '.join(integers[:3])} not floating point; every GPT-2 weight is (F16, BF16, F32 or F64), so the file's header is wrong"
            )

        def read(name: str) -> torch.Tensor:
            hf, conv1d = names[name]
            tensor = f.get_tensor(stored[hf])
            return tensor.T if conv1d else tensor  # Conv1D (in, out) -> Linear (out, in)

        with new_folder(out) as tmp:
            write_imported_run(tmp, config, shapes, read, f"import {src}", registry)
    return config
