"""import-hf's SRC read as a Hub id: ORG/NAME[@REVISION] -> the folder of its files in huggingface_hub's cache.

The download is huggingface_hub's own (``snapshot_download``): its cache (HF_HOME, HF_HUB_CACHE), its progress bars,
its offline mode (HF_HUB_OFFLINE) and its token (HF_TOKEN or ``hf auth login``) for gated and private models.
"""

from __future__ import annotations

from pathlib import Path

from gptzoo.core import GptzooError

# What import-hf reads of a checkpoint, and nothing else the repository holds (.bin and .pth copies, GGUF, ONNX).
CHECKPOINT_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]
FOLDER_HINT = "give a folder in the Hugging Face layout (config.json, model.safetensors, tokenizer.json)"


def _repo_id(name: str) -> tuple[str, str | None] | None:
    """(ORG/NAME, REVISION or None) when ``name`` reads as a model's id on the Hub, else None."""
    repo_id, at, revision = name.partition("@")
    if repo_id.count("/") != 1 or (at and not revision):
        return None
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return repo_id, revision or None  # a well-formed ORG/NAME: checkpoint_folder says what to install
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id, revision or None


def checkpoint_folder(src: str | Path) -> Path:
    """``src`` when it exists (import checks it is a checkpoint folder), else the cached snapshot of the Hub id ``src``."""
    path = Path(src)
    if path.exists():
        return path
    parsed = _repo_id(str(src))
    if parsed is None:
        raise GptzooError(f"{src}: no such folder, and not a Hub id (ORG/NAME[@REVISION]); {FOLDER_HINT} or a Hub id")
    repo_id, revision = parsed
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise GptzooError(
            f"{src}: no such folder; reading it as a Hub id needs huggingface_hub: pip install 'gptzoo[hf]'"
        ) from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except GatedRepoError:
        raise GptzooError(
            f"{src}: no such folder, and {repo_id} is a gated model on the Hub; accept its terms on its page and log in (hf auth login, or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise GptzooError(
            f"{src}: no such folder, and no model {repo_id} on the Hub (a private one needs a login: hf auth login, or set HF_TOKEN); {FOLDER_HINT} or a Hub id"
        ) from None
    except RevisionNotFoundError:
        raise GptzooError(
            f"{src}: no revision {revision!r} of {repo_id} on the Hub; give a branch, tag or commit"
        ) from None
    except LocalEntryNotFoundError:
        raise GptzooError(
            f"{src}: no such folder, and {repo_id}{'@' + revision if revision else ''} is not in the Hugging Face cache while the Hub cannot be reached (HF_HUB_OFFLINE, or no connection); download it once online, or {FOLDER_HINT}"
        ) from None
    except HfHubHTTPError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GptzooError(f"{src}: downloading {repo_id} from the Hub failed ({reason}); try again") from None
