"""Checkpoints from a stranger (issue 28): a tiny random transformers model saved to tmp_path and
then tampered with (a safetensors header rewritten, the index edited, files replaced by links).
Each is refused with one line naming the file, exit 2, before anything is written, and without
opening any file outside the checkpoint's folder: an audit hook sees every file Python opens, and
a guard on safetensors' ``safe_open`` (which opens files in Rust, out of the hook's sight) sees
every weights file.
"""

import json
import os
import shutil
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gptzoo.recipes.cli import main
from gptzoo.recipes.interop import files as interop_files
from gptzoo.recipes.interop.hf.import_ import import_hf

transformers = pytest.importorskip(
    "transformers", reason="the hostile checkpoints are made from transformers' models: pip install -e '.[reference]'"
)

_OPENED: list[list[Path]] = []  # the open recordings, innermost last; the hook records while one is open


def _audit(event, args):
    if event == "open" and _OPENED and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED[-1].append(Path(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # a hook cannot be removed: it records only inside ``opened``


@contextmanager
def opened(monkeypatch):
    """The paths of every file opened inside the block (Python's opens and safetensors')."""
    paths: list[Path] = []
    real_safe_open = interop_files.safe_open

    def watched_safe_open(path, *args, **kwargs):
        paths.append(Path(path))
        return real_safe_open(path, *args, **kwargs)

    monkeypatch.setattr(interop_files, "safe_open", watched_safe_open)
    _OPENED.append(paths)
    try:
        yield paths
    finally:
        _OPENED.pop()


def tiny_llama(folder: Path, **save) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, **save)
    return folder


def tokenizer_files(folder: Path) -> None:
    """A word-level tokenizer.json and the small JSON files beside it, as a checkpoint ships them."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<s>", "</s>", *[f"w{i}" for i in range(62)]])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def read_header(file: Path) -> tuple[dict, bytes]:
    data = file.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def write_header(file: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    file.write_bytes(struct.pack("<Q", len(text)) + text + body)


@pytest.fixture
def places(tmp_path):
    """``src``: a checkpoint to tamper with; ``elsewhere``: another intact one beside it, which no import may open."""
    src = tiny_llama(tmp_path / "src")
    tokenizer_files(src)
    elsewhere = tiny_llama(tmp_path / "elsewhere")
    tokenizer_files(elsewhere)
    (elsewhere / "secret.txt").write_text("a file of this machine the checkpoint must not copy")
    return tmp_path, src, elsewhere


def refused(capsys, monkeypatch, tmp_path, src, elsewhere, command="import-hf"):
    """The one error line of importing ``src``, once nothing was written and nothing in ``elsewhere`` was opened."""
    capsys.readouterr()
    with opened(monkeypatch) as paths:
        code = main([command, str(src), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))
    outside = [p for p in paths if p.resolve().is_relative_to(elsewhere.resolve())]
    assert outside == [], outside
    return err


def shard(src: Path) -> dict:
    """The checkpoint saved again in shards, its index returned."""
    shutil.rmtree(src)
    tiny_llama(src, max_shard_size="4KB")
    tokenizer_files(src)
    return json.loads((src / "model.safetensors.index.json").read_text())


def write_index(src: Path, index: dict) -> None:
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def test_the_guard_sees_the_files_an_import_opens(places, monkeypatch):
    tmp_path, src, _ = places
    with opened(monkeypatch) as paths:
        import_hf(src, tmp_path / "run")
    seen = {p.resolve() for p in paths}
    assert {src.resolve() / name for name in ("config.json", "model.safetensors", "tokenizer.json")} <= seen


# ---- reads outside the folder ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, named",
    [
        ("../elsewhere/model.safetensors", '"../elsewhere/model.safetensors" is not a plain file name'),
        ("{elsewhere}/model.safetensors", '/elsewhere/model.safetensors" is not a plain file name'),
    ],
)
def test_an_index_naming_a_shard_outside_the_folder_is_refused(where, named, places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    moved = next(iter(index["weight_map"]))
    index["weight_map"][moved] = where.format(elsewhere=elsewhere)
    write_index(src, index)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src}: model.safetensors.index.json names the shard" in err and named in err


@pytest.mark.parametrize(
    "name",
    [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ],
)
def test_a_file_of_the_checkpoint_linking_outside_it_is_refused(name, places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    (src / name).unlink()
    target = elsewhere / ("secret.txt" if name == "chat_template.jinja" else name)
    (src / name).symlink_to(target)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src / name}: a link to a file outside {src}" in err


def test_a_shard_linking_outside_the_folder_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    first = sorted(set(index["weight_map"].values()))[0]
    shutil.copy(src / first, elsewhere / first)
    (src / first).unlink()
    (src / first).symlink_to(elsewhere / first)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src / first}: a link to a file outside {src}" in err


def test_import_gpt2_refuses_weights_linking_outside_the_folder(tmp_path, capsys, monkeypatch):
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=50257)
    for name in ("src", "elsewhere"):
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / name)
    (tmp_path / "src" / "model.safetensors").unlink()
    (tmp_path / "src" / "model.safetensors").symlink_to(tmp_path / "elsewhere" / "model.safetensors")
    err = refused(capsys, monkeypatch, tmp_path, tmp_path / "src", tmp_path / "elsewhere", command="import-gpt2")
    assert f"{tmp_path / 'src' / 'model.safetensors'}: a link to a file outside" in err


def test_links_inside_the_folder_and_huggingface_hub_cache_blobs_are_read(tmp_path):
    """huggingface_hub's cache keeps each file once in blobs/ and links snapshots/<revision>/<file> to it."""
    repo = tmp_path / "models--tiny--llama"
    snapshot = tiny_llama(repo / "snapshots" / "abc123")
    tokenizer_files(snapshot)
    (repo / "blobs").mkdir()
    for file in sorted(snapshot.iterdir()):
        blob = repo / "blobs" / f"blob-{file.name}"
        file.rename(blob)
        file.symlink_to(os.path.relpath(blob, snapshot))
    (snapshot / "generation_config.json").unlink()  # and a link to a file inside the folder itself
    (snapshot / "generation_config.json").symlink_to("tokenizer_config.json")
    config = import_hf(snapshot, tmp_path / "run")
    assert config.model.n_layers == 2 and (tmp_path / "run" / "tokenizer.json").is_file()


# ---- silent wrong imports -------------------------------------------------------------------------


def test_a_weight_whose_header_declares_integers_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    header, body = read_header(src / "model.safetensors")
    assert header["model.norm.weight"]["dtype"] == "F32"
    header["model.norm.weight"]["dtype"] = "I32"  # the same 4 bytes a number, read as the integer 1065353216 for 1.0
    write_header(src / "model.safetensors", header, body)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src}: model.norm.weight (I32) not floating point; every llama weight is (F16, BF16, F32 or F64)" in err


def test_a_tensor_stored_in_two_shards_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    name = "model.norm.weight"
    home = index["weight_map"][name]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != home)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / other))
    tensors[name] = torch.full_like(load_file(str(src / home))[name], 7.0)
    save_file(tensors, str(src / other), metadata={"format": "pt"})
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    first, second = sorted([home, other])
    assert (
        f"{src}: tensor {name} is stored twice, in {first} and in {second}; keep one copy (the index names {home})"
        in err
    )


def test_an_index_placing_a_tensor_in_the_wrong_shard_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    name = "model.norm.weight"
    home = index["weight_map"][name]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != home)
    index["weight_map"][name] = other
    write_index(src, index)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"does not match the shards: it places {name} in {other} (found {home})" in err


def test_an_index_leaving_a_stored_tensor_out_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    home = index["weight_map"].pop("model.norm.weight")
    write_index(src, index)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"does not match the shards: it does not list model.norm.weight (in {home})" in err


def test_a_shard_the_index_names_that_is_absent_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"
    write_index(src, index)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src / 'model-00009-of-00009.safetensors'}: no such weights file" in err


def test_a_tensor_the_index_lists_but_no_shard_holds_is_refused(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    home = index["weight_map"]["model.norm.weight"]
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / home))
    del tensors["model.norm.weight"]
    save_file(tensors, str(src / home), metadata={"format": "pt"})
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"does not match the shards: it places model.norm.weight in {home} (found in no shard)" in err


@pytest.mark.parametrize("value", [7, None, ["model-00001-of-00002.safetensors"]])
def test_an_index_whose_shard_is_not_a_string_is_refused(value, places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    index = shard(src)
    index["weight_map"]["model.norm.weight"] = value
    write_index(src, index)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f'weight_map["model.norm.weight"] = {json.dumps(value)} is not a shard file name (a string)' in err


@pytest.mark.parametrize(
    "lie",
    [
        lambda h: h["model.norm.weight"].__setitem__("data_offsets", [0, 10**9]),  # past the file's end
        lambda h: h["model.norm.weight"].__setitem__("shape", [17]),  # 17 floats in 16 floats' bytes
    ],
    ids=["offsets", "shape"],
)
def test_a_header_lying_about_offsets_or_shape_is_refused(lie, places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    header, body = read_header(src / "model.safetensors")
    lie(header)
    write_header(src / "model.safetensors", header, body)
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src / 'model.safetensors'}: cannot read the weights" in err


def test_a_tokenizer_json_that_is_not_a_tokenizer_is_refused_at_import(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    (src / "tokenizer.json").write_text(json.dumps({"model": {"type": "nonsense"}}))
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src / 'tokenizer.json'}: not a tokenizer the tokenizers library reads" in err


# ---- unbounded resources --------------------------------------------------------------------------


def test_more_layers_declared_than_stored_are_refused_before_the_model_is_built(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 10**6}))
    built = []
    monkeypatch.setattr("gptzoo.recipes.interop.hf.import_.weight_shapes", lambda *a: built.append(a))
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert f"{src / 'config.json'}: num_hidden_layers = 1000000 but the weights hold 2 layer(s)" in err
    assert built == []


def test_more_experts_declared_than_stored_are_refused_before_the_model_is_built(places, capsys, monkeypatch):
    tmp_path, _, elsewhere = places
    src = tmp_path / "moe"
    config = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(src)
    (src / "config.json").write_text(
        json.dumps(json.loads((src / "config.json").read_text()) | {"num_local_experts": 10**6})
    )
    built = []  # a million experts in each layer: building even on the meta device would take hours
    monkeypatch.setattr("gptzoo.recipes.interop.hf.import_.check_fits", lambda *a, **k: built.append(a))
    monkeypatch.setattr("gptzoo.recipes.interop.hf.import_.weight_shapes", lambda *a: built.append(a))
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    missing = ", ".join(f"model.layers.0.block_sparse_moe.experts.4.w{n}.weight" for n in (1, 2, 3))
    assert (
        f"{src / 'config.json'}: num_local_experts = 1000000 but the weights hold 4 expert(s) (missing {missing})"
        in err
    )
    assert built == []


def test_a_size_making_a_tensor_past_any_machine_is_refused_at_import(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    config = json.loads((src / "config.json").read_text())
    # a feed-forward weight of 10^10 by 10^10 elements: more than a tensor can count
    (src / "config.json").write_text(json.dumps(config | {"hidden_size": 10**10, "intermediate_size": 10**10}))
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert (
        f"{src / 'config.json'}: this model has a tensor too large for any machine (context_length 32, d_model 10000000000"
        in err
    )


def test_a_context_whose_tables_exceed_the_machine_is_refused_at_import(places, capsys, monkeypatch):
    tmp_path, src, elsewhere = places
    config = json.loads((src / "config.json").read_text())
    # rope's cos and sin tables: 10^13 positions x 4 frequencies x 2 x 4 bytes, far beyond any machine
    (src / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 10**13}))
    err = refused(capsys, monkeypatch, tmp_path, src, elsewhere)
    assert (
        f"{src / 'config.json'}: this model needs about 298023.2 GiB (298023.2 GiB of tables for context_length" in err
    )


def test_a_run_too_large_for_the_machine_is_refused_before_it_is_built(tmp_path, capsys):
    from gptzoo.recipes.runs.memory import check_fits

    config = import_hf(tiny_llama(tmp_path / "src"), tmp_path / "run")
    big = config.model.model_copy(update={"context_length": 10**13})
    with pytest.raises(
        Exception, match=r"x: this model needs about 298023\.\d GiB \(\d+\.\d GiB of weights, 298023\.2 GiB"
    ):
        check_fits(big, "x")
    check_fits(config.model, "x")  # the real one fits


@pytest.mark.parametrize("max_new", [10**12, 10**18])
def test_generate_refuses_more_new_tokens_than_memory_holds_up_front(max_new, tmp_path, capsys):
    # The whole text is kept to print it at the end (streaming, a model that crops keeps only its window).
    import_hf(tiny_llama(tmp_path / "src"), tmp_path / "run")
    capsys.readouterr()
    argv = ["generate", str(tmp_path / "run"), "--prompt", "x", "--no-stream", "--max-new-tokens", str(max_new)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--max-new-tokens {max_new}: 1 text(s) of {max_new + 1} tokens need about" in err and "Traceback" not in err


def test_a_long_prompt_is_refused_after_tokenizing_a_few_times_the_context():
    from gptzoo.recipes.generation.text import encode_within

    encoded = []

    class Characters:
        def encode(self, text):
            encoded.append(len(text))
            return [ord(c) for c in text]

    ids, whole = encode_within(Characters(), "x" * 10_000_000, 16)
    assert not whole and len(ids) > 16 and max(encoded) <= 4 * 4 * 17
    assert encode_within(Characters(), "x" * 100, 16) == ([120] * 68, False)  # 4 x 17 characters already tell
    assert encode_within(Characters(), "y" * 10, 16) == ([ord("y")] * 10, True)


# ---- chat templates -------------------------------------------------------------------------------


def render(template: str, **content):
    from gptzoo.plugins.hf_tokenizer import HFTokenizer, HFTokenizerParams

    tokenizer = HFTokenizer(HFTokenizerParams(chat_template=template))
    return tokenizer.render_chat([{"role": "user", "content": content.get("content", "hi")}])


@pytest.mark.parametrize(
    "template, named",
    [
        ("{{ raise_exception('only user and assistant roles') }}", "it says: only user and assistant roles"),
        ("{{ nothing.here }}", "UndefinedError: 'nothing' is undefined"),
        ("{{ messages.append(1) }}", "SecurityError: access to attribute 'append' of 'list' object is unsafe"),
        ("{{ 'x' * 10**9 }}", "SecurityError: a sequence repeated 1000000000 times is too long"),
        ("{{ 2 ** 100000000 }}", "SecurityError: the power 100000000 is too large"),
        ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
        # Memory: each of these would allocate gigabytes in one step, or by doubling.
        ("{{ 'x'.ljust(10**10) }}", "SecurityError: str.ljust to a width of 10000000000 is too long"),
        ("{{ 'x' | center(10**10) }}", "SecurityError: padding to a width of 10000000000 is too long"),
        ("{{ '%10000000000s' % 'x' }}", "SecurityError: a format's width is too large"),
        ("{{ '{:>10000000000}'.format('x') }}", "SecurityError: a format's width is too large"),
        ("{{ ('ab' * 1000).replace('a', 'a' * 100000) }}", "SecurityError: str.replace would write too long a string"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "SecurityError: a value set in a namespace (s) is too long",
        ),
        (
            "{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
            "SecurityError: a sequence joined with + is too long",
        ),
        (
            "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ d('ab', 60) }}",
            "SecurityError: a value given to a call is too long",
        ),
    ],
)
def test_a_chat_template_that_fails_names_why(template, named):
    from gptzoo.core import GptzooError

    with pytest.raises(GptzooError) as refused:
        render(template)
    assert f"the checkpoint's chat template failed on this conversation ({named}" in str(refused.value)


def test_a_chat_template_writing_without_end_is_cut_at_its_output_limit(monkeypatch):
    from gptzoo.core import GptzooError
    from gptzoo.plugins import hf_tokenizer

    monkeypatch.setattr(hf_tokenizer, "TEMPLATE_CHARS", 10_000)
    with pytest.raises(GptzooError, match="wrote more than 10000 characters for one conversation"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}xy{% endfor %}{% endfor %}")
    assert render("{% for i in range(1000) %}xy{% endfor %}") == "xy" * 1000  # under the limit: whole


def test_a_chat_template_looping_without_output_is_stopped_at_its_time_limit(monkeypatch):
    from gptzoo.core import GptzooError
    from gptzoo.plugins import hf_tokenizer

    monkeypatch.setattr(hf_tokenizer, "TEMPLATE_SECONDS", 0.2)
    with pytest.raises(GptzooError, match=r"ran longer than 0\.2 s on one conversation"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")


def test_import_gpt2_refuses_more_layers_declared_than_stored(tmp_path, capsys, monkeypatch):
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=50257)
    for name in ("src", "elsewhere"):
        transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / name)
    hf = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf | {"n_layer": 10**6}))
    err = refused(capsys, monkeypatch, tmp_path, tmp_path / "src", tmp_path / "elsewhere", command="import-gpt2")
    assert f"{tmp_path / 'src' / 'config.json'}: n_layer = 1000000 but the weights hold 1 layer(s)" in err


# ---- what a killed import leaves ------------------------------------------------------------------


def test_the_next_import_removes_what_a_killed_one_left_but_not_a_live_ones(tmp_path):
    import fcntl

    src = tiny_llama(tmp_path / "src")
    killed = tmp_path / ".run.k1ll3d.tmp"  # as new_folder names them
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    live = tmp_path / ".run.l1v3.tmp"
    live.mkdir()
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another importer at work
    try:
        import_hf(src, tmp_path / "run")
    finally:
        os.close(held)
    assert not killed.exists() and live.is_dir() and (tmp_path / "run" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.l1v3.tmp", "run", "src"]


def test_importing_twice_gives_byte_identical_run_folders(places):
    tmp_path, src, _ = places
    for name in ("one", "two"):
        import_hf(src, tmp_path / name)
    one = {p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    two = {p.relative_to(tmp_path / "two"): p.read_bytes() for p in (tmp_path / "two").rglob("*") if p.is_file()}
    assert {Path("config.json"), Path("model.safetensors"), Path("tokenizer.json")} <= set(one) and one == two


def folder_bytes(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_exporting_twice_gives_byte_identical_folders(places):
    from gptzoo.recipes.interop.hf.export import export_hf

    tmp_path, src, _ = places
    import_hf(src, tmp_path / "run")
    for name in ("one", "two"):
        export_hf(tmp_path / "run", tmp_path / name)
    one, two = folder_bytes(tmp_path / "one"), folder_bytes(tmp_path / "two")
    assert {Path("config.json"), Path("model.safetensors")} <= set(one) and one == two


def test_import_gpt2_and_import_book_twice_give_byte_identical_run_folders(tmp_path):
    from gptzoo.recipes.interop.book import import_book
    from gptzoo.recipes.interop.gpt2 import import_gpt2

    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    shapes = {"tok_emb.weight": (50257, 16), "pos_emb.weight": (8, 16), "out_head.weight": (50257, 16)}
    shapes |= {"final_norm.scale": (16,), "final_norm.shift": (16,)}
    shapes |= {f"trf_blocks.0.att.{w}.weight": (16, 16) for w in ("W_query", "W_key", "W_value", "out_proj")}
    shapes |= {"trf_blocks.0.att.out_proj.bias": (16,), "trf_blocks.0.ff.layers.0.weight": (64, 16)}
    shapes |= {"trf_blocks.0.ff.layers.0.bias": (64,), "trf_blocks.0.ff.layers.2.weight": (16, 64)}
    shapes |= {"trf_blocks.0.ff.layers.2.bias": (16,)}
    shapes |= {f"trf_blocks.0.norm{n}.{p}": (16,) for n in (1, 2) for p in ("scale", "shift")}
    book = {name: torch.randn(shape) for name, shape in shapes.items()}  # the book's GPTModel, one block
    torch.save(book, tmp_path / "book.pth")
    for name in ("one", "two"):
        import_gpt2(tmp_path / "gpt2", tmp_path / f"gpt2-{name}")
        import_book(tmp_path / "book.pth", tmp_path / f"book-{name}", n_heads=2)
    for kind in ("gpt2", "book"):
        one, two = folder_bytes(tmp_path / f"{kind}-one"), folder_bytes(tmp_path / f"{kind}-two")
        assert Path("model.safetensors") in one and one == two, kind
