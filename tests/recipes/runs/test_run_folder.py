"""A run folder loads back into a model with the same outputs, whichever attention variant reads it."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from gptzoo.core import GPT, GptzooError
from gptzoo.recipes.config.schema import RunConfig, load_run_config
from gptzoo.recipes.interop.files import read_hf_config
from gptzoo.recipes.runs.folder import load_config, load_run, save_run
from gptzoo.recipes.runs.weights import write_state

SPEC = {
    "vocab_size": 64,
    "context_length": 64,
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "tokenizer": "byte",
    "tied_head": True,
}


def test_load_run_restores_every_attention_layout(tmp_path, registry):
    torch.manual_seed(0)
    source = GPT(registry.model_config(dict(SPEC, attention="sdpa"))).eval()
    idx = torch.randint(0, 64, (2, 12))
    for attention in ("per_head", "fused", "sdpa"):
        config = registry.model_config(dict(SPEC, attention=attention))
        save_run(tmp_path / attention, RunConfig(model=config), source, config.tokenizer.build())
        torch.testing.assert_close(load_run(tmp_path / attention).model(idx), source(idx))


def test_streamed_safetensors_read_back_with_safetensors_in_every_dtype(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.randn(2, 2, 2).half(),
        "steps": torch.arange(4),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    with open(tmp_path / "w.safetensors", "wb") as f:
        write_state(f, tensors, {"format": "pt", "step": "7"})
    back = load_file(str(tmp_path / "w.safetensors"))  # safetensors' own reader is the reference
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "step": "7"}  # transformers refuses files without "format"


def test_every_reader_of_a_json_file_says_where_it_is_broken_in_one_line(tmp_path):
    """One JSON reader (runs.files.read_json): a config given as JSON, a run folder's config.json and a
    Hugging Face folder's config.json name the file, the line and the column alike."""
    file = tmp_path / "config.json"
    file.write_text('{"model": 1,\n "train": }')  # the value after "train" is missing: line 2, column 11
    expected = f"{file}: not valid JSON: Expecting value at line 2 column 11"
    for read in (load_run_config, load_config, read_hf_config):
        with pytest.raises(GptzooError) as err:
            read(file if read is not load_config else tmp_path)
        assert str(err.value) == expected, read.__name__
