"""GPT-2 import/export: parity with Hugging Face transformers' GPT2LMHeadModel, round trips, errors.

The reference for logits and greedy tokens is transformers' own GPT-2 (an optional test
dependency: pip install -e '.[reference]'); the layout tests write GPT-2's published
tensor names and Conv1D shapes by hand.
"""

import hashlib
import http.server
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptzoo.core import ConfigError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.interop import gpt2
from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.runs.folder import load_config, load_run

ROOT = Path(__file__).resolve().parents[3]
ATTENTION = ["sdpa", "fused", "per_head"]

# config.json of the four published checkpoints, the fields that differ between them.
PUBLISHED = {
    "gpt2-124m": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-355m": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-774m": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-1558m": dict(n_embd=1600, n_layer=48, n_head=25),
}


def hf_config(**fields) -> dict:
    """A Hugging Face GPT-2 config.json as published (gpt2's values unless overridden)."""
    config = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "vocab_size": 50257,
    }
    return config | fields


def hf_shapes(
    n_layer: int, n_embd: int, vocab_size: int, n_positions: int, n_inner: int | None = None
) -> dict[str, tuple[int, ...]]:
    """GPT-2's tensor names and shapes; Conv1D weights are stored (in, out)."""
    C, H = n_embd, n_inner or 4 * n_embd
    shapes = {"wte.weight": (vocab_size, C), "wpe.weight": (n_positions, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(n_layer):
        shapes |= {
            f"h.{i}.ln_1.weight": (C,),
            f"h.{i}.ln_1.bias": (C,),
            f"h.{i}.attn.c_attn.weight": (C, 3 * C),
            f"h.{i}.attn.c_attn.bias": (3 * C,),
            f"h.{i}.attn.c_proj.weight": (C, C),
            f"h.{i}.attn.c_proj.bias": (C,),
            f"h.{i}.ln_2.weight": (C,),
            f"h.{i}.ln_2.bias": (C,),
            f"h.{i}.mlp.c_fc.weight": (C, H),
            f"h.{i}.mlp.c_fc.bias": (H,),
            f"h.{i}.mlp.c_proj.weight": (H, C),
            f"h.{i}.mlp.c_proj.bias": (C,),
        }
    return shapes


def write_random_gpt2(
    folder: Path, n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32, prefix="transformer.", n_inner=None
) -> Path:
    """A GPT-2 folder in the Hugging Face layout with random weights, written without transformers."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    shapes = hf_shapes(n_layer, n_embd, vocab_size, n_positions, n_inner)
    save_file(
        {prefix + k: torch.randn(s, generator=generator) * 0.1 for k, s in shapes.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = hf_config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size, n_positions=n_positions, n_ctx=n_positions
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# ---- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("size", PUBLISHED)
def test_imported_config_equals_the_repo_config_of_that_size(size, attention, registry):
    expected = load_run_config(ROOT / "configs" / f"{size}.toml", [f"model.attention.name={attention}"], registry).model
    data = gpt2.model_config_data(hf_config(**PUBLISHED[size]), attention, "config.json")
    assert registry.model_config(data) == expected


@pytest.mark.parametrize(
    "fields, accepted",
    [
        ({}, True),
        ({"n_inner": 80}, True),  # an MLP 80 wide, not 4 × 64: the gelu feed-forward's hidden
        ({"n_inner": None}, True),  # transformers' default, 4 × n_embd
        ({"activation_function": "gelu_pytorch_tanh"}, True),
        ({"activation_function": "relu"}, False),
        ({"tie_word_embeddings": False}, False),
        ({"scale_attn_weights": False}, False),
        ({"add_cross_attention": True}, False),
        ({"n_head": None}, False),
    ],
)
def test_import_gpt2_and_import_hf_accept_and_refuse_the_same_configs(fields, accepted, tmp_path, capsys):
    """One GPT-2 mapping (the gpt2 family's table): both importers read a config.json alike."""
    n_inner = fields.get("n_inner") or 4 * 64
    src = write_random_gpt2(tmp_path / "src", n_embd=64, n_inner=n_inner)
    config = json.loads((src / "config.json").read_text()) | fields
    (src / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    codes = [main([command, str(src), "--out", str(tmp_path / command)]) for command in ("import-gpt2", "import-hf")]
    assert codes == ([0, 0] if accepted else [2, 2]), capsys.readouterr().err
    if accepted:
        for command in ("import-gpt2", "import-hf"):
            hidden = load_config(tmp_path / command).model.feed_forward.params.hidden
            assert (hidden or 4 * 64) == n_inner  # None: the gelu plugin's 4 × d_model


# ---- parity with transformers --------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A small random GPT2LMHeadModel saved in the Hugging Face layout: (model, folder)."""
    transformers = pytest.importorskip(
        "transformers", reason="the parity tests compare with transformers' GPT-2: pip install -e '.[reference]'"
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=50257, attn_implementation="eager"
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with (
        torch.no_grad()
    ):  # Hugging Face initialises biases to 0 and norms to 1: randomise all, so every tensor's mapping shows
        for name, p in model.named_parameters():
            p.copy_(
                1 + 0.1 * torch.randn_like(p)
                if ".ln_" in name and name.endswith("weight")
                else 0.3 * torch.randn_like(p)
            )
    folder = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by hand over the Hugging Face model: argmax of the last position, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def hf_reference(hf_model):
    """What transformers computes, once for all variants: (token ids, their logits, a prompt, its greedy continuation)."""
    model, _ = hf_model
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(idx).logits
    prompt = idx[0, :8].tolist()
    return idx, logits, prompt, hf_greedy(model, prompt, 20)


@pytest.mark.parametrize("attention", ATTENTION)
def test_logits_and_greedy_tokens_equal_transformers(hf_model, hf_reference, attention, tmp_path):
    from gptzoo.recipes.generation.generate import generate_ids

    _, folder = hf_model
    idx, hf_logits, prompt, hf_tokens = hf_reference
    gpt2.import_gpt2(str(folder), tmp_path / "run", attention=attention)
    run = load_run(tmp_path / "run")
    assert run.config.model.attention.name == attention
    with torch.no_grad():
        torch.testing.assert_close(run.model(idx), hf_logits, atol=1e-4, rtol=1e-4)
    [ours] = generate_ids(run.model, [prompt], len(hf_tokens), temperature=0.0)
    assert ours == hf_tokens


def test_gptzoo_generate_command_continues_like_transformers(hf_model, tmp_path, capsys):
    model, folder = hf_model
    assert main(["import-gpt2", str(folder), "--out", str(tmp_path / "run")]) == 0
    tokenizer = load_run(tmp_path / "run").tokenizer  # tiktoken's gpt2, as every imported run
    assert tokenizer.vocab_size == 50257 and tokenizer.eot_id == 50256
    capsys.readouterr()
    assert (
        main(["generate", str(tmp_path / "run"), "--prompt", "Hello, I am", "--max-new-tokens", "12", "--no-stream"])
        == 0
    )
    expected = hf_greedy(model, tokenizer.encode("Hello, I am"), 12)
    if tokenizer.eot_id in expected:  # generation stops at end-of-text
        expected = expected[: expected.index(tokenizer.eot_id)]
    assert capsys.readouterr().out == "Hello, I am" + tokenizer.decode(expected) + "\n"


def test_published_layout_without_prefix_and_with_mask_buffers_imports_the_same(hf_model, tmp_path):
    """The files on the Hub are GPT2Model's: no "transformer." prefix, and older ones keep the mask buffers."""
    model, folder = hf_model
    published = tmp_path / "published"
    published.mkdir()
    (published / "config.json").write_text((folder / "config.json").read_text())
    state = {k.removeprefix("transformer."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(published / "model.safetensors"), metadata={"format": "pt"})

    gpt2.import_gpt2(str(published), tmp_path / "run", attention="per_head")
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(load_run(tmp_path / "run").model(idx), model(idx).logits, atol=1e-4, rtol=1e-4)


def test_import_then_export_gives_back_the_same_tensors_and_logits(hf_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, folder = hf_model
    gpt2.import_gpt2(str(folder), tmp_path / "run", attention="fused")
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0

    original, exported = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(tmp_path / "hf" / "model.safetensors")),
    )
    assert sorted(exported) == sorted(original)
    for name in original:
        assert torch.equal(exported[name], original[name]), name
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    idx = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, model(idx).logits, atol=0, rtol=0)


# ---- layout, without transformers ----------------------------------------------------------


def test_import_maps_each_tensor_and_transposes_conv1d(tmp_path):
    src = write_random_gpt2(tmp_path / "src", n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16)
    gpt2.import_gpt2(str(src), tmp_path / "run")
    hf = {k.removeprefix("transformer."): v for k, v in load_file(str(src / "model.safetensors")).items()}
    ours = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(ours["token_embedding.weight"], hf["wte.weight"])
    assert torch.equal(ours["positional.table.weight"], hf["wpe.weight"])
    assert torch.equal(ours["blocks.1.attention.qkv.weight"], hf["h.1.attn.c_attn.weight"].T)  # rows [q | k | v]
    assert torch.equal(ours["blocks.1.attention.qkv.bias"], hf["h.1.attn.c_attn.bias"])
    assert torch.equal(ours["blocks.0.attention.out_proj.weight"], hf["h.0.attn.c_proj.weight"].T)
    assert torch.equal(ours["blocks.0.feed_forward.in_proj.weight"], hf["h.0.mlp.c_fc.weight"].T)
    assert torch.equal(ours["blocks.0.feed_forward.out_proj.weight"], hf["h.0.mlp.c_proj.weight"].T)
    assert torch.equal(ours["blocks.1.ffn_norm.bias"], hf["h.1.ln_2.bias"])
    assert torch.equal(ours["final_norm.weight"], hf["ln_f.weight"])
    assert len(ours) == len(hf)  # the head is tied: stored once, as the embedding
    run = load_run(tmp_path / "run")
    assert run.model.head.weight is run.model.token_embedding.weight
    assert (tmp_path / "run" / "config.json").is_file() and not list((tmp_path).glob(".run.*"))


def test_peak_memory_of_an_import_stays_below_twice_the_weights(tmp_path, peak_rss_growth):
    src = write_random_gpt2(tmp_path / "src", n_layer=8, n_embd=512, n_head=8, vocab_size=50257, n_positions=1024)
    size = (src / "model.safetensors").stat().st_size
    growth = peak_rss_growth("gptzoo.recipes.interop.gpt2:import_gpt2", src, tmp_path / "run")
    assert growth < 2 * size + 64 * 2**20, (
        f"peak RSS grew by {growth / 2**20:.0f} MiB for {size / 2**20:.0f} MiB of weights"
    )


# ---- export refusals -----------------------------------------------------------------------


def write_run_config(folder: Path, overrides: list[str], registry) -> None:
    config = load_run_config(ROOT / "configs" / "tiny.toml", ["model.tokenizer.name=byte", *overrides], registry)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(config.model_dump_json())


def test_export_names_each_setting_the_nearest_family_lacks(tmp_path, registry, capsys):
    # Llama's assembly but for a soft-capped head (the output projection's bias, this test's first
    # choice, now exports as seed_oss, which reads it apart from the q/k/v biases).
    write_run_config(
        tmp_path / "run",
        [
            "model.positional.name=rope",
            "model.norm.name=rmsnorm",
            "model.feed_forward.name=swiglu",
            "model.n_kv_heads=2",
            "model.attn_out_bias=false",
            "model.head.softcap=30",
        ],
        registry,
    )
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert (
        "no Hugging Face family has this assembly; as llama: head 'lm' with softcap = 30.0 has no llama counterpart "
        "(llama: null)" in err
    )
    assert "Traceback" not in err and not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.tied_head=false", "tied_head = false"),
        ("model.norm_placement=post", "block 'post_norm'"),
        ("model.block.name=parallel", "block 'parallel'"),
        ("model.attn_out_bias=false", "attn_out_bias = false"),
        ("model.head_dim=16", "head_dim = 16"),
        ("model.norm.bias=false", "norm 'layernorm' with bias = false"),
        ("model.feed_forward.name=relu", "feed_forward 'relu'"),
    ],
)
def test_export_refuses_each_non_gpt2_setting(override, named, tmp_path, registry):
    write_run_config(tmp_path / "run", ["model.qkv_bias=true", override], registry)
    with pytest.raises(ConfigError, match="as gpt2: .* has no gpt2 counterpart") as err:
        export_hf(tmp_path / "run", tmp_path / "hf", registry)
    as_gpt2 = (
        str(err.value).split("as gpt2: ")[1].split(" | ")[0]
    )  # other families may be as near (GPT-NeoX, but for its rotary)
    assert named in as_gpt2 and "positional" not in as_gpt2


def test_export_refuses_a_non_empty_destination(tmp_path, capsys):
    src = write_random_gpt2(tmp_path / "src")
    gpt2.import_gpt2(str(src), tmp_path / "run")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    assert main(["export-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"] and (
        tmp_path / "hf" / "keep.txt"
    ).read_text() == "mine"


# ---- import errors -------------------------------------------------------------------------


def test_import_error_for_a_missing_folder_or_an_unknown_size(tmp_path, capsys):
    assert main(["import-gpt2", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'nowhere'}: no such folder, and not a GPT-2 size name" in err
        and "gpt2, gpt2-medium, gpt2-large, gpt2-xl" in err
    )
    assert main(["import-gpt2", "gpt2-larg", "--out", str(tmp_path / "run")]) == 2
    assert (
        "gpt2-larg: no such folder, and not a GPT-2 size name (did you mean 'gpt2-large'?)" in capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


def test_import_error_for_missing_files(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf_config()))
    assert main(["import-gpt2", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    assert "missing model.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"model_type": "llama"}, "model_type is 'llama', not 'gpt2'"),
        ({"activation_function": "relu"}, 'activation_function = "relu"'),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx = true"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings = false"),
        ({"n_embd": None}, "n_embd missing"),
    ],
)
def test_import_error_for_a_config_that_is_not_gpt2(fields, named, tmp_path, capsys):
    src = write_random_gpt2(tmp_path / "src")
    config = json.loads((src / "config.json").read_text()) | fields
    (src / "config.json").write_text(json.dumps(config))
    assert main(["import-gpt2", str(src), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"n_layer": 3}, "missing h.2.attn.c_attn.bias, h.2.attn.c_attn.weight"),
        ({"n_positions": 64}, "wrong shape transformer.wpe.weight (32, 64) vs (64, 64) for this config"),
    ],
)
def test_import_error_for_weights_that_do_not_match_the_config(fields, named, tmp_path, capsys):
    src = write_random_gpt2(tmp_path / "src", n_layer=2, n_embd=64, n_positions=32)
    config = json.loads((src / "config.json").read_text()) | fields
    (src / "config.json").write_text(json.dumps(config))
    assert main(["import-gpt2", str(src), "--out", str(tmp_path / "run")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_import_refuses_a_non_empty_out_folder(tmp_path, capsys):
    src = write_random_gpt2(tmp_path / "src")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert main(["import-gpt2", str(src), "--out", str(tmp_path / "run")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


# ---- downloading ---------------------------------------------------------------------------


def test_offline_import_says_which_files_to_place_where(tmp_path, monkeypatch, capsys):
    def unreachable(self, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", unreachable)  # every urllib request, no real call
    monkeypatch.setenv("GPTZOO_CACHE", str(tmp_path / "cache"))
    assert main(["import-gpt2", "gpt2-medium", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    cache = tmp_path / "cache" / "hf" / "gpt2-medium"
    assert "network is unreachable" in err
    assert (
        f"download config.json and model.safetensors from https://huggingface.co/gpt2-medium/tree/main into {cache}"
        in err
    )
    assert f"gptzoo import-gpt2 {cache} --out {tmp_path / 'run'}" in err
    assert not (tmp_path / "run").exists() and not (cache / "model.safetensors").exists()


class FakeHub(http.server.BaseHTTPRequestHandler):
    """huggingface.co's answers: resolve/main/FILE redirects (an LFS file's sha256 in X-Linked-Etag) to the bytes."""

    files: dict[str, bytes] = {}
    sha256: dict[str, str] = {}
    requests: list[str] = []

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        self.requests.append(f"{self.command} {self.path}")
        name = self.path.rsplit("/", 1)[-1]
        if "/resolve/main/" in self.path and name in self.files:
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}")
            if name in self.sha256:
                self.send_header("X-Linked-Etag", f'"{self.sha256[name]}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/cdn/") and name in self.files:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.files[name])))
            self.end_headers()
            if body:
                self.wfile.write(self.files[name])
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    src = write_random_gpt2(tmp_path / "published", prefix="")
    files = {name: (src / name).read_bytes() for name in ("config.json", "model.safetensors")}
    FakeHub.files, FakeHub.requests = files, []
    FakeHub.sha256 = {"model.safetensors": hashlib.sha256(files["model.safetensors"]).hexdigest()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(gpt2, "HF_URL", f"http://127.0.0.1:{server.server_port}/{{name}}/resolve/main/{{file}}")
    monkeypatch.setenv("GPTZOO_CACHE", str(tmp_path / "cache"))
    yield FakeHub
    server.shutdown()
    server.server_close()


def test_size_name_downloads_checks_and_caches(fake_hub, tmp_path):
    gpt2.import_gpt2("gpt2", tmp_path / "run")
    cache = tmp_path / "cache" / "hf" / "gpt2"
    assert (cache / "model.safetensors").read_bytes() == fake_hub.files["model.safetensors"]
    assert "HEAD /gpt2/resolve/main/model.safetensors" in fake_hub.requests
    assert load_config(tmp_path / "run").model.vocab_size == 300

    fake_hub.requests.clear()
    gpt2.import_gpt2("gpt2", tmp_path / "again")  # from the cache
    assert fake_hub.requests == []


def test_a_download_with_the_wrong_checksum_is_not_kept(fake_hub, tmp_path, capsys):
    fake_hub.sha256 = {"model.safetensors": "0" * 64}
    assert main(["import-gpt2", "gpt2-large", "--out", str(tmp_path / "run")]) == 2
    assert f"is not the published {'0' * 64}" in capsys.readouterr().err
    cache = tmp_path / "cache" / "hf" / "gpt2-large"
    assert not (cache / "model.safetensors").exists() and list(cache.glob("*.tmp")) == []
    assert not (tmp_path / "run").exists()


def test_imported_gpt2_fine_tunes_and_exports_back(hf_model, tmp_path):
    """The whole path: import, fine-tune with gptzoo, export; transformers then computes the fine-tuned model's logits."""
    transformers = pytest.importorskip("transformers")
    _, folder = hf_model
    entries = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1}"} for i in range(8)]
    (tmp_path / "data.json").write_text(json.dumps(entries))
    assert main(["import-gpt2", str(folder), "--out", str(tmp_path / "base")]) == 0
    assert (
        main(
            [
                "finetune-instruct",
                str(tmp_path / "base"),
                "--data",
                str(tmp_path / "data.json"),
                "--out",
                str(tmp_path / "tuned"),
                "--epochs",
                "1",
                "--split",
                "0.75,0.125,0.125",
                "--batch-size",
                "6",
                "--eval-batches",
                "1",
                "--lr",
                "1e-3",
                "--max-length",
                "48",
                "--limit-test",
                "1",
                "--max-new-tokens",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["export-hf", str(tmp_path / "tuned"), "--out", str(tmp_path / "hf")]) == 0

    tuned, base = load_run(tmp_path / "tuned").model, load_run(tmp_path / "base").model
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(tuned(idx), base(idx), atol=1e-3)  # fine-tuning changed the model...
        torch.testing.assert_close(
            exported(idx).logits, tuned(idx), atol=1e-4, rtol=1e-4
        )  # ...and the export carries it
