"""The training loop: optimizer groups, learning, resume, checkpoints, divergence, signals."""

import math
import signal

import pytest
import torch
from safetensors import safe_open

from gptzoo.core import CheckpointError, ConfigError, Params, Tokenizer
from gptzoo.recipes.config.schema import TrainConfig, validate_run_config
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.runs.metrics import read_measurements, read_metrics
from gptzoo.recipes.training import loop as train_module
from gptzoo.recipes.training.loop import NonFiniteLossError, train
from gptzoo.recipes.training.optim import build_optimizer, lr_at, total_steps
from gptzoo.recipes.training.step_plan import LOG_EVERY


def tiny(tmp_path, source, registry=None, model=None, **train_fields):
    """A 1-layer, d_model 32 byte-level GPT on ``source``; train fields override the defaults."""
    fields = dict(max_steps=20, batch_size=4, lr=3e-3, eval_interval=10, eval_batches=2, sample_tokens=0, device="cpu")
    data = {
        "model": {
            "context_length": 16,
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "tokenizer": {"name": "byte"},
            **(model or {}),
        },
        "data": {"source": str(source), "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.1},
        "train": fields | train_fields,
    }
    return validate_run_config(data, "test config", registry)


def test_lr_schedule_matches_hand_computed_values():
    cfg = TrainConfig(max_steps=14, lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 14) == pytest.approx(1 / 5)
    assert lr_at(3, cfg, 14) == pytest.approx(4 / 5)
    assert lr_at(4, cfg, 14) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(9, cfg, 14) == pytest.approx(0.1 + 0.5 * 0.9)  # halfway: cos(pi/2) = 0
    assert lr_at(14, cfg, 14) == pytest.approx(0.1)


def test_budgets_become_step_counts():
    assert total_steps(TrainConfig(max_steps=7), 100, 32) == 7
    assert total_steps(TrainConfig(epochs=2, batch_size=8, grad_accum=2), 100, 32) == 13  # ceil(200 / 16)
    assert total_steps(TrainConfig(max_tokens=1000, batch_size=8, grad_accum=2), 100, 32) == 2  # ceil(1000 / 512)


def test_weight_decay_applies_to_matrices_only(tmp_path, shared_data):
    from gptzoo.core import GPT

    config = tiny(tmp_path, shared_data("the-verdict.txt"), model={"vocab_size": 257, "qkv_bias": True})
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.train, torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert {id(p) for p in decayed["params"] + plain["params"]} == {id(p) for p in model.parameters()}
    # layer norms (2 per block + final) have weight and bias, the qkv, projections and MLP have biases
    assert len(plain["params"]) == 2 * 3 + 4
    assert decayed["fused"] is True


def test_weight_decay_on_every_parameter_is_the_books_adamw(tmp_path, shared_data):
    from gptzoo.core import GPT

    book_ch04 = pytest.importorskip(
        "llms_from_scratch.ch04", reason="the book's package (pip install llms-from-scratch) is absent"
    )
    book_config = {
        "vocab_size": 257,
        "context_length": 16,
        "emb_dim": 32,
        "n_heads": 2,
        "n_layers": 1,
        "drop_rate": 0.0,
        "qkv_bias": True,
    }
    book_model = book_ch04.GPTModel(book_config)
    book_groups = torch.optim.AdamW(
        book_model.parameters(), lr=0.0004, weight_decay=0.1
    ).param_groups  # the book's chapter 5

    config = tiny(
        tmp_path,
        shared_data("the-verdict.txt"),
        model={"vocab_size": 257, "qkv_bias": True},
        weight_decay_scope="all",
        lr=0.0004,
    )
    model = GPT(config.model)
    groups = build_optimizer(model, config.train, torch.device("cpu")).param_groups
    assert [(g["weight_decay"], g["lr"], sum(p.numel() for p in g["params"])) for g in groups] == [
        (g["weight_decay"], g["lr"], sum(p.numel() for p in g["params"])) for g in book_groups
    ]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.parameters()}


def test_grad_clip_zero_turns_clipping_off(tmp_path, shared_data, monkeypatch):
    assert TrainConfig(max_steps=1, grad_clip=0).grad_clip is None
    assert TrainConfig(max_steps=1).grad_clip == 1.0
    clipped = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: clipped.append(max_norm))
    train(
        tiny(tmp_path, shared_data("the-verdict.txt"), max_steps=3, grad_clip=0),
        tmp_path / "off",
        progress=False,
        log=lambda s: None,
    )
    assert clipped == []
    train(
        tiny(tmp_path, shared_data("the-verdict.txt"), max_steps=3, grad_clip=0.5),
        tmp_path / "on",
        progress=False,
        log=lambda s: None,
    )
    assert clipped == [0.5] * 3


@pytest.mark.parametrize(
    "interval, saved", [(None, [5, 10, 15, 20]), (0, [20]), (10, [10, 20]), (3, [3, 6, 9, 12, 15, 18, 20])]
)
def test_checkpoints_follow_their_own_interval_and_evaluations_theirs(
    tmp_path, shared_data, monkeypatch, interval, saved
):
    saves = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(
        train_module,
        "save_checkpoint",
        lambda out, config, model, tok, opt, at, sampler, *rest: (
            saves.append(at.step) or real_save(out, config, model, tok, opt, at, sampler, *rest)
        ),
    )
    config = tiny(tmp_path, shared_data("the-verdict.txt"), eval_interval=5, checkpoint_interval=interval)
    train(config, tmp_path / "run", progress=False, log=lambda s: None)
    assert saves == saved
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [5, 10, 15, 20]
    assert load_run(tmp_path / "run").config.train.checkpoint_interval == interval


def test_eval_at_start_logs_the_untrained_loss_as_step_0(tmp_path, shared_data):
    from gptzoo.core import GPT
    from gptzoo.recipes.data.tokens import load_tokens, split_windows
    from gptzoo.recipes.training.evaluation import estimate_loss

    config = tiny(tmp_path, shared_data("the-verdict.txt"), eval_at_start=True, seed=3)
    lines = []
    train(config, tmp_path / "run", progress=False, log=lines.append)
    first, *rest = read_metrics(tmp_path / "run")
    assert first["step"] == 0 and first["tokens"] == 0 and [r["step"] for r in rest] == [10, 20]
    assert lines[1].startswith("step 0: train loss")
    # The untrained model, built with the same seed, scored on the same windows.
    torch.manual_seed(3)
    untrained = GPT(config.model.model_copy(update={"vocab_size": 257}))
    _, val = split_windows(load_tokens(config.data, config.model.tokenizer.build()), 16, config.data)
    assert first["val_loss"] == pytest.approx(estimate_loss(untrained, val, 2, 4, torch.device("cpu")), rel=1e-6)
    assert first["val_loss"] == pytest.approx(math.log(257), abs=0.1)  # about uniform over 257 byte ids


def test_loss_falls_on_a_tiny_model(tmp_path, shared_data):
    summary = train(
        tiny(tmp_path, shared_data("the-verdict.txt"), max_steps=40),
        tmp_path / "run",
        progress=False,
        log=lambda s: None,
    )
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert [r["tokens"] for r in records] == [640, 1280, 1920, 2560]  # 4 windows of 16 tokens per step
    # An untrained byte model predicts about uniformly: loss ln(257) = 5.55.
    assert records[-1]["val_loss"] < math.log(257) - 1.5
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.5
    for r in records:
        assert r["perplexity"] == pytest.approx(math.exp(r["val_loss"]))
        assert "lr" in r and not {"tokens_per_s", "elapsed_s", "peak_memory_bytes"} & set(r)  # measurements.jsonl's
    measured = read_measurements(tmp_path / "run")
    assert [m["step"] for m in measured] == [10, 20, 30, 40]
    assert all(m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0 for m in measured)
    assert [m["elapsed_s"] for m in measured] == sorted(m["elapsed_s"] for m in measured)
    assert summary.steps == 40 and summary.tokens == 2560 and summary.stopped == "done"
    assert summary.final_val_loss == records[-1]["val_loss"]
    assert summary.best_val_loss == min(r["val_loss"] for r in records)
    assert summary.peak_memory_bytes > 0 and summary.tokens_per_s > 0


def test_resume_after_sigterm_gives_the_losses_of_an_uninterrupted_run(tmp_path, shared_data, monkeypatch):
    # dropout makes the check cover the restored random state too
    config = tiny(
        tmp_path, shared_data("the-verdict.txt"), model={"dropout": 0.1}, max_steps=20, eval_interval=5, warmup_steps=3
    )
    train(config, tmp_path / "straight", progress=False, log=lambda s: None)

    real_step, calls = train_module.train_step, []

    def step_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            signal.raise_signal(signal.SIGTERM)  # arrives mid-step; the loop stops after it
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step_then_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    stopped = train(config, tmp_path / "split", progress=False, log=lambda s: None)
    assert stopped.stopped == "interrupted" and stopped.steps == 7
    assert signal.getsignal(signal.SIGTERM) is handler_before
    state = torch.load(tmp_path / "split" / "train_state.pt", weights_only=True)
    assert state["step"] == 7 and state["tokens"] == 7 * 4 * 16
    monkeypatch.setattr(train_module, "train_step", real_step)

    resumed = train(config, tmp_path / "split", resume=True, progress=False, log=lambda s: None)
    assert resumed.stopped == "done" and resumed.steps == 20
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == [5, 10, 15, 20]
    for a, b in zip(straight, split, strict=True):
        assert (a["train_loss"], a["val_loss"], a["lr"], a["tokens"]) == (
            b["train_loss"],
            b["val_loss"],
            b["lr"],
            b["tokens"],
        )
    # the same bytes: what the machine measured is kept apart, in measurements.jsonl
    for name in ("metrics.jsonl", "model.safetensors", "train_state.pt", "manifest.json"):
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "split" / name).read_bytes(), name
    measured = read_measurements(tmp_path / "split")
    assert [m["step"] for m in measured] == [5, 7, 10, 15, 20]  # step 7: the checkpoint the signal asked for
    assert [m["elapsed_s"] for m in measured] == sorted(m["elapsed_s"] for m in measured)  # counted across the resume
    final_straight, final_split = load_run(tmp_path / "straight"), load_run(tmp_path / "split")
    for (name, a), (_, b) in zip(
        final_straight.model.state_dict().items(), final_split.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_ctrl_c_saves_a_checkpoint_and_restores_the_handler(tmp_path, shared_data, monkeypatch):
    real_step, calls = train_module.train_step, []

    def step_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step_then_ctrl_c)
    handler_before = signal.getsignal(signal.SIGINT)
    summary = train(
        tiny(tmp_path, shared_data("the-verdict.txt")), tmp_path / "run", progress=False, log=lambda s: None
    )
    assert summary.stopped == "interrupted" and summary.steps == 3
    assert signal.getsignal(signal.SIGINT) is handler_before
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "3"
    assert load_run(tmp_path / "run").config.model.vocab_size == 257


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, shared_data, monkeypatch):
    real_loss, training_calls = train_module.lm_loss, []

    def poisoned_after_step_12(model, inputs, targets, z_loss_weight=0.0):
        loss, z = real_loss(model, inputs, targets, z_loss_weight)
        if model.training:
            training_calls.append(1)
            if len(training_calls) > 12:
                return loss * float("nan"), z
        return loss, z

    monkeypatch.setattr(train_module, "lm_loss", poisoned_after_step_12)
    run = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError, match=r"NaN or infinite between steps 10 and 20.*step 10\) is kept.*train.lr"
    ):
        train(tiny(tmp_path, shared_data("the-verdict.txt"), max_steps=30), run, progress=False, log=lambda s: None)
    assert [r["step"] for r in read_metrics(run)] == [10]
    assert torch.load(run / "train_state.pt", weights_only=True)["step"] == 10
    weights = load_run(run).model.state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())


class FittedChars(Tokenizer):
    """A minimal corpus-fitted tokenizer: the corpus's characters, then end-of-text."""

    needs_fit = True

    def __init__(self, params: Params):
        super().__init__(params)
        self.chars: list[str] | None = None

    @property
    def is_fitted(self):
        return self.chars is not None

    def fit(self, text):
        self.chars = sorted(set(text))

    @property
    def vocab_size(self):
        return len(self.chars) + 1

    @property
    def eot_id(self):
        return len(self.chars)

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] if i < len(self.chars) else self.EOT for i in ids)

    def state(self):
        return {"chars": self.chars}

    def load_state(self, state):
        self.chars = state["chars"]


def test_a_fitted_tokenizer_is_fitted_on_the_corpus_and_saved(tmp_path, registry):
    registry.component("tokenizer", "fitted_chars")(FittedChars)
    corpus = tmp_path / "corpus.txt"
    text = "the cat sat on the mat. " * 40
    corpus.write_text(text, encoding="utf-8")
    config = tiny(
        tmp_path, corpus, registry, model={"tokenizer": {"name": "fitted_chars"}}, max_steps=2, eval_interval=2
    )
    train(config, tmp_path / "run", registry=registry, progress=False, log=lambda s: None)
    run = load_run(tmp_path / "run", registry)
    assert run.config.model.vocab_size == len(set(text)) + 1 == 12  # " .acehmnost" + end-of-text
    assert run.tokenizer.chars == sorted(set(text))
    with pytest.raises(ConfigError, match="vocab_size = 5 is smaller than .* vocabulary of 12"):
        train(
            config.model_copy(update={"model": config.model.model_copy(update={"vocab_size": 5})}),
            tmp_path / "other",
            registry=registry,
            progress=False,
            log=lambda s: None,
        )
    assert not (tmp_path / "other").exists()


def test_resume_refuses_another_model_and_an_existing_run_needs_resume(tmp_path, shared_data):
    config = tiny(tmp_path, shared_data("the-verdict.txt"), max_steps=2, eval_interval=2)
    train(config, tmp_path / "run", progress=False, log=lambda s: None)
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        train(config, tmp_path / "run", progress=False, log=lambda s: None)
    wider = tiny(tmp_path, shared_data("the-verdict.txt"), model={"d_model": 64}, max_steps=4)
    with pytest.raises(CheckpointError, match="model.d_model: 32 in the run, 64 now"):
        train(wider, tmp_path / "run", resume=True, progress=False, log=lambda s: None)
    # [train] may change: more steps continue the run
    longer = train(
        config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 4})}),
        tmp_path / "run",
        resume=True,
        progress=False,
        log=lambda s: None,
    )
    assert longer.steps == 4 and [r["step"] for r in read_metrics(tmp_path / "run")] == [2, 4]


def test_bfloat16_autocast_trains_on_the_cpu(tmp_path, shared_data):
    summary = train(
        tiny(tmp_path, shared_data("the-verdict.txt"), dtype="bfloat16", max_steps=10),
        tmp_path / "run",
        progress=False,
        log=lambda s: None,
    )
    assert summary.stopped == "done" and summary.final_val_loss < math.log(257)
    assert all(
        t.dtype == torch.float32 for t in load_run(tmp_path / "run").model.state_dict().values()
    )  # autocast keeps fp32 weights


def test_steps_between_progress_updates_do_not_read_values_back(tmp_path, shared_data, monkeypatch):
    real_item, calls = torch.Tensor.item, []

    def counted_item(self):
        calls.append(1)
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    config = tiny(tmp_path, shared_data("the-verdict.txt"), max_steps=30, eval_interval=1000, eval_batches=2)
    train(config, tmp_path / "run", progress=False, log=lambda s: None)
    # 30 steps: the progress updates every LOG_EVERY steps read the divergence flag and the loss;
    # the final evaluation reads its sums back once per split, without .item().
    assert len(calls) == 2 * (30 // LOG_EVERY)
