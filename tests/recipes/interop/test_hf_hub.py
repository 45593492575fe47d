"""import-hf ORG/NAME[@REVISION]: the checkpoint comes from huggingface_hub's cache.

These machines cannot reach the Hub, so the cache is laid out here as huggingface_hub writes it
(its "Understand caching" guide: HF_HOME/hub/models--ORG--NAME/ with blobs/ named by their hash,
snapshots/<commit>/ of relative links to them, refs/main naming the commit) and the command runs
in a fresh process with HF_HOME there and HF_HUB_OFFLINE=1, so huggingface_hub's own
snapshot_download finds it: no part of the library is replaced.
"""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

from gptzoo.recipes.runs.folder import load_run

transformers = pytest.importorskip(
    "transformers", reason="the checkpoint is transformers' own model: pip install -e '.[reference]'"
)
pytest.importorskip("huggingface_hub", reason="the Hub's cache is read by huggingface_hub: pip install -e '.[hf]'")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def blob_name(file):
    """The name huggingface_hub gives a file's blob: an LFS file's sha256, else its git blob sha1."""
    data = file.read_bytes()
    if file.suffix == ".safetensors":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_repo(hf_home, repo_id, folder):
    """Lay ``folder``'s files into the Hub cache under ``hf_home`` as the snapshot of ``repo_id`` at main."""
    storage = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (storage / "blobs").mkdir(parents=True)
    (storage / "snapshots" / COMMIT).mkdir(parents=True)
    (storage / "refs").mkdir()
    for file in folder.iterdir():
        blob = blob_name(file)
        (storage / "blobs" / blob).write_bytes(file.read_bytes())
        os.symlink(f"../../blobs/{blob}", storage / "snapshots" / COMMIT / file.name)
    (storage / "refs" / "main").write_text(COMMIT)  # written without a newline, as huggingface_hub does


def gptzoo(args, hf_home):
    """Run the gptzoo CLI in a new process (huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, on import)."""
    env = os.environ | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = "import sys; from gptzoo.recipes.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A tiny random Qwen3 checkpoint cached as the Hub's tiny-org/tiny-qwen3; (HF_HOME, transformers' model)."""
    config = transformers.Qwen3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms start at 1: randomise every tensor so each one's mapping shows
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    hf_home = tmp_path_factory.mktemp("hf_home")
    cache_repo(hf_home, "tiny-org/tiny-qwen3", folder)
    return hf_home, model


@pytest.mark.parametrize("name", ["tiny-org/tiny-qwen3", f"tiny-org/tiny-qwen3@{COMMIT}"])
def test_a_hub_id_imports_from_the_cache_with_transformers_logits(hub, name, tmp_path):
    hf_home, model = hub
    result = gptzoo(["import-hf", name, "--out", tmp_path / "run"], hf_home)
    assert result.returncode == 0, result.stderr
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 96, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    with torch.no_grad():
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        expected = model(input_ids=idx, attention_mask=mask.long(), position_ids=positions).logits
        ours = load_run(tmp_path / "run").model(idx, pad_mask=mask)
    torch.testing.assert_close(ours[mask], expected[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "tiny-org/not-cached",
            "tiny-org/not-cached: no such folder, and tiny-org/not-cached is not in the Hugging Face cache while the Hub cannot be reached",
        ),
        (
            "tiny-org/tiny-qwen3@v9",
            "tiny-org/tiny-qwen3@v9: no such folder, and tiny-org/tiny-qwen3@v9 is not in the Hugging Face cache",
        ),
    ],
)
def test_a_hub_id_missing_from_the_offline_cache_is_refused_in_one_line(hub, name, message, tmp_path):
    result = gptzoo(["import-hf", name, "--out", tmp_path / "run"], hub[0])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
