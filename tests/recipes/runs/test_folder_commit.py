"""Committing a folder of files (an FSDP run's sharded checkpoint) as one unit with the manifest:
a kill at any file operation leaves the previous checkpoint or the new one, never a mix."""

import hashlib
import os
from pathlib import Path

import pytest

from gptzoo.recipes.runs._journal import Commit, new_temporary_folder
from gptzoo.recipes.runs._lock import run_writer
from gptzoo.recipes.runs.manifest import check_file, read_manifest

# step 1: whole weights and three ranks' shards; step 2: two ranks' shards, which supersede the weights
STEP_1 = {"model.safetensors": b"whole weights", "sharded/.metadata": b"3 ranks", "sharded/__0_0.distcp": b"a1"}
STEP_1 |= {"sharded/__1_0.distcp": b"b1", "sharded/__2_0.distcp": b"c1"}
STEP_2 = {"sharded/.metadata": b"2 ranks", "sharded/__0_0.distcp": b"a2", "sharded/__1_0.distcp": b"b2"}
FILE_OPERATIONS = ("replace", "unlink", "fsync", "rmdir", "mkdir", "rename")


def entry(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def commit_step(folder: Path, step: int, files: dict[str, bytes]) -> None:
    """Commit ``files`` as checkpoint ``step``: the folder sharded/ written whole beside the run, the rest dropped."""
    with run_writer(folder):
        staging = new_temporary_folder(folder, "sharded")
        shards = {name.removeprefix("sharded/"): data for name, data in files.items() if name.startswith("sharded/")}
        for name, data in shards.items():
            (staging / name).write_bytes(data)
        commit = Commit(folder, step)
        commit.stage_folder("sharded", staging, {name: entry(data) for name, data in shards.items()})
        if "model.safetensors" in files:
            with commit.stage("model.safetensors") as f:
                f.write(files["model.safetensors"])
        else:
            commit.drop("model.safetensors")
        commit.commit()


def run_in_child(fn, kill_at: int) -> int:
    """Run ``fn`` in a forked process that dies (os._exit, no clean-up) just before its ``kill_at``-th
    file operation; its exit code (0: it finished first)."""
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


def committed_files(folder: Path) -> dict[str, bytes]:
    """The committed files, each checked against the manifest; nothing else left in the folder."""
    with run_writer(folder):  # what a crashed writer left is finished or removed, as by the next writer
        pass
    manifest = read_manifest(folder)
    for name in manifest.files:
        check_file(folder, manifest, name)
    on_disk = {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".gptzoo")
    }
    assert on_disk == set(manifest.files) | {"manifest.json"}
    return {name: (folder / name).read_bytes() for name in manifest.files}


def test_a_folder_commit_replaces_the_committed_folder_and_drops_the_superseded_file(tmp_path):
    commit_step(tmp_path, 1, STEP_1)
    assert committed_files(tmp_path) == STEP_1
    commit_step(tmp_path, 2, STEP_2)
    assert committed_files(tmp_path) == STEP_2  # rank 2's shard and the whole weights are gone
    assert read_manifest(tmp_path).step == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_kill_at_any_file_operation_leaves_one_checkpoint_or_the_other(tmp_path):
    outcomes = []
    for k in range(1, 200):
        folder = tmp_path / f"killed-{k}"
        commit_step(folder, 1, STEP_1)
        if run_in_child(lambda folder=folder: commit_step(folder, 2, STEP_2), kill_at=k) == 0:
            break
        files = committed_files(folder)
        assert files in (STEP_1, STEP_2), k
        outcomes.append(read_manifest(folder).step)
    assert outcomes.count(1) > 3 and outcomes.count(2) > 3  # killed both before and after the commit was decided
