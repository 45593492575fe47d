"""The library entry points: finetune_classifier and finetune_instruct write a run folder whose config
holds the whole fine-tuning config, from which the same run is made again; earlier runs without it load."""

import json

import pytest
import torch

from gptzoo.core import GPT, GptzooError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.finetune import ClassifierConfig, InstructConfig
from gptzoo.recipes.config.finetune_files import load_finetune_config
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.finetuning import finetune_classifier, finetune_instruct
from gptzoo.recipes.finetuning.classifier import LABELS, classifier_config, classifier_from
from gptzoo.recipes.runs.folder import commit_files, load_config, load_run, save_run
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    spec = {"vocab_size": 257, "context_length": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "tokenizer": "byte"}
    model = GPT(REGISTRY.model_config(spec))
    save_run(folder, RunConfig(model=model.config), model, model.config.tokenizer.build())
    return folder


@pytest.fixture
def sms(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text("".join(f"ham\thello number {i}\nspam\tWIN {i} now\n" for i in range(10)), encoding="utf-8")
    return path


def test_finetune_classifier_writes_its_config_into_the_run(base_dir, sms, tmp_path):
    config = load_finetune_config(
        ClassifierConfig, None, [f"data.path={json.dumps(str(sms))}", "train.epochs=1", "train.eval_batches=1"]
    )
    record = finetune_classifier(config, base_dir, tmp_path / "spam")
    assert set(record) == {"test_loss", "test_acc"} and read_metrics(tmp_path / "spam")[-1] == record
    saved = json.loads((tmp_path / "spam" / "config.json").read_text())["finetune"]
    assert saved["base"] == str(base_dir)
    assert saved["config"]["data"] | {"path": "-"} == {
        "path": "-",
        "split": [0.7, 0.1, 0.2],
        "split_order": "shuffled",
        "max_length": None,
        "text_column": "text",
        "label_column": "label",
        "balance": False,
        "quoting": "none",
        "pad_to": "batch",
    }
    assert saved["config"]["train"]["trainable"] == "last-block"  # the default, written out
    assert load_config(tmp_path / "spam").finetune.config == config


def test_the_run_folder_repeats_itself(base_dir, sms, tmp_path, capsys):
    argv = ["finetune-classifier", base_dir, "--data", sms, "--epochs", "1", "--lora-rank", "2", "--balance"]
    assert main([str(a) for a in [*argv, "--out", tmp_path / "first"]]) == 0
    again = ["finetune-classifier", base_dir, "--config", tmp_path / "first", "--out", tmp_path / "again"]
    assert main([str(a) for a in again]) == 0
    first, second = (load_run(tmp_path / name) for name in ("first", "again"))
    assert second.config.finetune == first.config.finetune and second.config.finetune.config.lora.rank == 2
    state = second.model.state_dict()
    assert all(torch.equal(t, state[name]) for name, t in first.model.state_dict().items())


def test_finetune_classifier_from_a_preset_as_initialised(sms, tmp_path):
    config = load_finetune_config(ClassifierConfig, None, [f'data.path="{sms}"', "train.epochs=1"])
    record = finetune_classifier(config, "tiny", tmp_path / "tuned")
    assert set(record) == {"test_loss", "test_acc"}
    run = load_run(tmp_path / "tuned")
    assert run.config.finetune.base == "tiny" and run.config.model.d_model == 128  # configs/tiny.toml's


def test_finetune_instruct_refuses_a_preset_whose_context_cannot_hold_a_prompt(tmp_path):
    """configs/tiny.toml's 64 tokens hold no Alpaca prompt (the shortest here is 82 of its BPE's tokens)."""
    entries = [{"instruction": f"Count to {i}.", "output": " ".join(map(str, range(i)))} for i in range(1, 21)]
    (tmp_path / "d.json").write_text(json.dumps(entries), encoding="utf-8")
    config = load_finetune_config(InstructConfig, None, [f'data.path="{tmp_path / "d.json"}"'])
    with pytest.raises(GptzooError, match=r"longer than the 64 tokens a sequence may hold \(the context of tiny\)"):
        finetune_instruct(config, "tiny", tmp_path / "tuned")
    assert not (tmp_path / "tuned").exists()  # nothing written


def test_a_classifier_saved_without_its_finetune_config_still_loads(base_dir, tmp_path, capsys):
    """Runs fine-tuned before the config was recorded have no "finetune" in config.json."""
    base = load_run(base_dir)
    model = classifier_from(base.model, classifier_config(base.config.model, 2, REGISTRY))
    save_run(tmp_path / "old", RunConfig(model=model.config), model, base.tokenizer)
    commit_files(tmp_path / "old", {LABELS: json.dumps({"labels": ["ham", "spam"], "max_length": 32, "pad_to": None})})
    assert load_config(tmp_path / "old").finetune is None
    assert main(["classify", str(tmp_path / "old"), "--text", "hello"]) == 0
    assert capsys.readouterr().out.split()[0] in ("ham", "spam")
