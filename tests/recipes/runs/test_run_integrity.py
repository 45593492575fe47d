"""Run folders under crashes, full disks, concurrent writers and bit rot (issue 11).

Every case must give the exact result (a resume equal to an uninterrupted run) or a one-line
error naming the file, and lose nothing committed.
"""

import errno
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from gptzoo.core import FAMILIES, CheckpointError
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.runs import _journal as journal_module
from gptzoo.recipes.runs import metrics as run_module
from gptzoo.recipes.runs._journal import DiskFullError
from gptzoo.recipes.runs._lock import RunLock, RunLockedError
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.recipes.training.loop import train

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "runs-v0.1"
QUIET = dict(progress=False, log=lambda text: None)


def tiny(tmp_path, source, **train_fields):
    """A 1-layer char-level GPT (so the run has a tokenizer.json), checkpointed every 2 steps."""
    data = {
        "model": {"context_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 2, "tokenizer": {"name": "char"}},
        "data": {"source": str(source), "cache_dir": str(tmp_path / "cache")},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "lr": 3e-3,
            "eval_interval": 2,
            "eval_batches": 2,
            "sample_tokens": 0,
            "device": "cpu",
        }
        | train_fields,
    }
    return validate_run_config(data, "test config")


def losses(folder):
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(folder)]


def weights(folder):
    return load_run(folder).model.state_dict()


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.fixture
def straight(tmp_path, shared_data):
    """The config and an uninterrupted run of it: the result every interrupted run must reach."""
    config = tiny(tmp_path, shared_data("the-verdict.txt"))
    train(config, tmp_path / "straight", **QUIET)
    return config, tmp_path / "straight"


def finish(config, folder):
    """Continue an interrupted run: resume it, or start it over when nothing was committed."""
    try:
        train(config, folder, resume=True, **QUIET)
    except CheckpointError as err:
        assert "holds no committed checkpoint to resume" in str(err)
        train(config, folder, **QUIET)


def assert_same_run(folder, reference):
    assert losses(folder) == losses(reference)
    for name, tensor in weights(reference).items():
        assert torch.equal(weights(folder)[name], tensor), name


# ---- the manifest ---------------------------------------------------------------------------


def test_the_manifest_names_each_file_with_its_size_hash_step_and_providers(straight):
    _, run = straight
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["step"] == 4
    assert set(manifest["files"]) == {
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "train_state.pt",
        "metrics.jsonl",
    }
    for name, entry in manifest["files"].items():
        data = (run / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    version = md.version("gptzoo")
    assert manifest["components"]["model.attention"] == {
        "family": "attention",
        "name": "sdpa",
        "plugin": "gptzoo.plugins.attention",
        "distribution": "gptzoo",
        "version": version,
    }
    assert manifest["components"]["model.tokenizer"]["name"] == "char"
    # Every family the config holds, new ones included (this model has no multi-token prediction).
    assert {c["family"] for c in manifest["components"].values()} == set(FAMILIES) - {"mtp"}


@pytest.mark.parametrize(
    "name", ["config.json", "tokenizer.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "manifest.json"]
)
def test_a_flipped_byte_in_any_run_file_is_detected(straight, tmp_path, name, capsys):
    config, reference = straight
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    data = bytearray((run / name).read_bytes())
    at = len(data) // 2
    if name == "manifest.json":  # the space before a key, as the middle once was: a plugin's version is not checked
        at = data.index(b'"plugin"', at) - 1
    data[at] ^= 0x01
    (run / name).write_bytes(bytes(data))
    before = files(run)
    with pytest.raises(CheckpointError) as caught:
        train(
            config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 6})}),
            run,
            resume=True,
            **QUIET,
        )
    message = str(caught.value)
    assert name in message and (
        "sha256 differs" in message or "unreadable manifest" in message or "not valid JSON" in message
    )
    if name not in ("train_state.pt", "metrics.jsonl"):  # what generate and eval read
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            load_run(run)
        assert main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", "4"]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert files(run) == before


# ---- crashes --------------------------------------------------------------------------------

FILE_OPERATIONS = ("replace", "unlink", "fsync", "truncate")


def run_in_child(fn, kill_at: int) -> int:
    """Run ``fn`` in a forked process that dies (os._exit, no cleanup) just before its
    ``kill_at``-th file operation; returns the child's exit code (0: it finished first)."""
    pid = os.fork()
    if pid == 0:
        calls = [0]
        for name in FILE_OPERATIONS:
            real = getattr(os, name)

            def dying(*args, _real=real, **kwargs):
                calls[0] += 1
                if calls[0] == kill_at:
                    os._exit(137)
                return _real(*args, **kwargs)

            setattr(os, name, dying)
        try:
            fn()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.slow
def test_a_kill_before_any_file_operation_of_training_resumes_exactly(straight, tmp_path):
    config, reference = straight
    killed = 0
    for k in range(1, 500):
        folder = tmp_path / f"killed-{k}"
        if run_in_child(lambda folder=folder: train(config, folder, **QUIET), kill_at=k) == 0:
            break
        killed += 1
        finish(config, folder)
        assert_same_run(folder, reference)
        assert not list(folder.glob(".*.tmp")) and not (folder / ".manifest.pending.json").exists()
    assert killed > 30  # two checkpoints' writes, renames, syncs and clean-ups were each interrupted


def test_a_failing_rename_leaves_a_run_that_resumes_exactly(straight, tmp_path, monkeypatch):
    config, reference = straight
    real_replace = os.replace
    # each checkpoint renames 6 times: the journal, the 4 files, the manifest
    for k in (1, 2, 6, 7, 9, 12):
        calls = [0]

        def failing(*args, calls=calls, k=k, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise OSError(errno.EIO, "Input/output error")
            return real_replace(*args, **kwargs)

        monkeypatch.setattr(os, "replace", failing)
        folder = tmp_path / f"failed-{k}"
        with pytest.raises(OSError, match="Input/output error"):
            train(config, folder, **QUIET)
        monkeypatch.setattr(os, "replace", real_replace)
        finish(config, folder)
        assert_same_run(folder, reference)


@pytest.mark.parametrize("full_at", ["model.safetensors", "train_state.pt"])
def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_last_one(
    straight, tmp_path, monkeypatch, capsys, full_at
):
    config, reference = straight
    run = tmp_path / "run"
    real_stage, real_write, commits, writing = (
        journal_module.Commit.stage,
        journal_module.HashingFile.write,
        [],
        [None],
    )

    def stage(self, name):
        writing[0] = name
        return real_stage(self, name)

    def write(self, data):
        if (
            writing[0] == full_at and len(commits) == 1 and self.size > 0
        ):  # partway through the second checkpoint's file
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error
        return real_write(self, data)

    real_commit = journal_module.Commit.commit
    monkeypatch.setattr(journal_module.Commit, "stage", stage)
    monkeypatch.setattr(journal_module.HashingFile, "write", write)
    monkeypatch.setattr(journal_module.Commit, "commit", lambda self: commits.append(1) or real_commit(self))
    config_file = tmp_path / "tiny.json"
    config_file.write_text(config.model_dump_json())
    capsys.readouterr()
    assert main(["train", str(config_file), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "error" in line]) == 1
    assert (
        f"{run}: no space left on the device while writing {full_at} of step 4; nothing was replaced and the committed checkpoint of step 2 is intact"
        in err
    )
    assert json.loads((run / "manifest.json").read_text())["step"] == 2
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    finish(config, run)
    assert_same_run(run, reference)


def test_a_full_disk_while_logging_metrics_says_so_and_keeps_the_last_checkpoint(
    straight, tmp_path, monkeypatch, capsys
):
    config, reference = straight
    run, appended = tmp_path / "run", []

    def full_on_the_second_log(file, mode="r", *args, **kwargs):
        if Path(file).name == "metrics.jsonl" and mode == "a":
            appended.append(1)
            if len(appended) == 2:  # step 4's line, after step 2's checkpoint
                raise OSError(errno.ENOSPC, "No space left on device")
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(
        run_module, "open", full_on_the_second_log, raising=False
    )  # the module's open, before the builtin
    config_file = tmp_path / "tiny.json"
    config_file.write_text(config.model_dump_json())
    capsys.readouterr()
    assert main(["train", str(config_file), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        f"{run}: no space left on the device while writing metrics.jsonl (step 4); nothing was replaced and the committed checkpoint of step 2 is intact"
        in err
    )
    monkeypatch.undo()
    finish(config, run)
    assert_same_run(run, reference)


def test_a_disk_too_full_for_the_lock_holder_refuses_before_writing(tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == ".gptzoo.owner.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(
        DiskFullError,
        match=rf"{tmp_path / 'new'}: no space left on the device, not even for .gptzoo.owner.json; nothing was changed",
    ):
        with RunLock(tmp_path / "new"):
            pass
    assert not (tmp_path / "new").exists()  # the folder it had created is gone again


def test_the_lock_file_stays_in_a_folder_that_holds_something_and_a_new_empty_folder_goes(straight, tmp_path):
    _, reference = straight
    assert (reference / ".gptzoo.lock").read_bytes() == b"" and not (reference / ".gptzoo.owner.json").exists()
    with RunLock(tmp_path / "unused"):
        assert (tmp_path / "unused" / ".gptzoo.lock").exists()
    assert not (tmp_path / "unused").exists()
    (tmp_path / "mine").mkdir()
    with RunLock(tmp_path / "mine"):
        pass
    assert [p.name for p in (tmp_path / "mine").iterdir()] == [".gptzoo.lock"]  # a folder it did not create stays


def test_run_files_get_the_permissions_of_any_new_file(straight):
    _, reference = straight
    umask = os.umask(0)
    os.umask(umask)
    for path in reference.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def test_files_written_atomically_get_the_permissions_of_any_new_file(tmp_path):
    """Plots, JSON and text outputs (save_png, write_text_atomic) as well as checkpoints."""
    from gptzoo.recipes.runs.files import write_text_atomic

    umask = os.umask(0)
    os.umask(umask)
    write_text_atomic(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left


# ---- writers --------------------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_naming_the_holder(straight, tmp_path, capsys):
    config, reference = straight
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the first writer: holds the lock until told to stop
        with RunLock(reference):
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        before = files(reference)
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"{reference}: being written by PID {pid} on "):
            train(
                config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 6})}),
                reference,
                resume=True,
                **QUIET,
            )
        assert time.monotonic() - started < 5  # refused at once, not after waiting
        assert files(reference) == before
    finally:
        os.write(done_w, b"1")
        os.waitpid(pid, 0)
    # the holder has gone: the lock is free again
    train(
        config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 6})}),
        reference,
        resume=True,
        **QUIET,
    )
    assert [r["step"] for r in read_metrics(reference)] == [2, 4, 6]


def test_stale_temporary_files_are_removed_by_the_next_write(straight, tmp_path):
    config, reference = straight
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    for stale in (".model.safetensors.abc123.tmp", ".train_state.pt.x.tmp"):
        (run / stale).write_bytes(b"left by a crash")
    (run / "notes.txt").write_text("mine")
    load_run(run)  # readers leave the folder alone
    assert (run / ".model.safetensors.abc123.tmp").exists()
    train(
        config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 6})}), run, resume=True, **QUIET
    )
    assert not list(run.glob(".*.tmp")) and (run / "notes.txt").read_text() == "mine"


def test_a_folder_without_a_committed_checkpoint_starts_over_and_a_committed_one_is_kept(straight, tmp_path):
    config, reference = straight
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 2, "train_loss": 9.0}\n{"step"')  # an evaluation, then a crash
    (run / ".model.safetensors.x.tmp").write_bytes(b"half")
    logged = []
    train(config, run, progress=False, log=logged.append)
    assert any("holds no committed checkpoint" in line and "starting over" in line for line in logged)
    assert_same_run(run, reference)
    before = files(reference)
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        train(config, reference, **QUIET)
    assert files(reference) == before


# ---- folders saved before manifests, and where components come from -------------------------


@pytest.mark.parametrize("name", ["gpt2-pre", "post-rope"])
def test_a_run_saved_by_gptzoo_0_1_loads_with_a_note(name, capsys):
    expected = json.loads((FIXTURES / name / "expected_logits.json").read_text())
    run = load_run(FIXTURES / name)
    assert (
        capsys.readouterr().err.count("has no manifest.json (saved before gptzoo checked its run folders)") == 1
    )  # once, not per file read
    with torch.no_grad():
        logits = run.model(torch.tensor(expected["ids"]))[0, -1]
    torch.testing.assert_close(logits, torch.tensor(expected["logits_last"]), rtol=1e-5, atol=1e-5)
    assert main(["generate", str(FIXTURES / name), "--prompt", "I had", "--max-new-tokens", "4"]) == 0


def test_an_old_run_with_weights_and_state_from_different_steps_is_refused(tmp_path, shared_data):
    run = Path(shutil.copytree(FIXTURES / "gpt2-pre", tmp_path / "run"))
    state = torch.load(run / "train_state.pt", weights_only=True)
    state["step"] += 1  # as if the crash fell between the two renames of gptzoo 0.1's checkpoint
    torch.save(state, run / "train_state.pt")
    config = load_run(run).config
    config = config.model_copy(update={"train": config.train.model_copy(update={"max_steps": 10})})
    with pytest.raises(CheckpointError, match=r"model.safetensors is from step 2 but train_state.pt from step 3"):
        train(config, run, resume=True, **QUIET)


def test_a_run_whose_plugin_is_gone_says_which_distribution_to_install(straight, tmp_path):
    _, reference = straight
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    manifest = json.loads((run / "manifest.json").read_text())
    config = json.loads((run / "config.json").read_text())
    config["model"]["norm"] = {"name": "scalenorm"}
    manifest["components"]["model.norm"] = {
        "family": "norm",
        "name": "scalenorm",
        "plugin": "my_norms",
        "distribution": "my-norms",
        "version": "0.3",
    }
    text = json.dumps(config)
    (run / "config.json").write_text(text)
    manifest["files"]["config.json"] = {"size": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError,
        match=r"model.norm = 'scalenorm' comes from plugin 'my_norms' of my-norms 0.3, not installed: pip install 'my-norms==0.3'",
    ):
        load_run(run)


def test_a_training_state_holding_python_objects_is_refused_without_unsafe_advice(tmp_path, capsys):
    run = Path(shutil.copytree(FIXTURES / "gpt2-pre", tmp_path / "run"))
    state = torch.load(run / "train_state.pt", weights_only=True)
    state["payload"] = Path("anything")  # unpickling it would import and call code
    torch.save(state, run / "train_state.pt")
    config = tmp_path / "config.json"
    config.write_text((run / "config.json").read_text())
    assert main(["train", str(config), "--out", str(run), "--resume", "--set", "train.max_steps=10"]) == 2
    err = capsys.readouterr().err
    assert (
        "train_state.pt: holds Python objects other than tensors and plain values; gptzoo does not unpickle those"
        in err
    )
    assert "weights_only" not in err and "Traceback" not in err


def holding_lock(folder):
    """Fork a process that holds ``folder``'s writer lock; returns (pid, release)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        with RunLock(folder):
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        os._exit(0)
    os.read(ready_r, 1)

    def release():
        os.write(done_w, b"1")
        os.waitpid(pid, 0)

    return pid, release


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune-instruct", str(FIXTURES / "gpt2-pre"), "--data", "{instructions}", "--out", "{out}"],
        ["finetune-classifier", str(FIXTURES / "gpt2-pre"), "--data", "{sms}", "--out", "{out}"],
        [
            "ablate",
            str(Path(__file__).resolve().parents[3] / "configs" / "ablations" / "positions.toml"),
            "--out",
            "{out}",
        ],
    ],
)
def test_other_writers_are_refused_while_a_folder_is_being_written(argv, tmp_path, capsys, shared_data):
    out = tmp_path / "out"
    pid, release = holding_lock(out)
    try:
        data = {"instructions": shared_data("instruction-data.json"), "sms": shared_data("SMSSpamCollection")}
        assert main([arg.format(out=out, **data) for arg in argv]) == 2
        err = capsys.readouterr().err
        assert f"{out}: being written by PID {pid} on " in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [".gptzoo.lock", ".gptzoo.owner.json"]
    finally:
        release()
