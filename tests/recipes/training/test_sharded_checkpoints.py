"""FSDP's sharded checkpoints on CPU processes (gloo, started by torchrun): written by every rank,
committed atomically, resumed on another number of processes, consolidated into model.safetensors.

The reference is one process trained without interruption on the same global batch of 12
windows (batch 6; 3 per rank on two processes, 2 per rank on three). The learning rate is
constant (min_lr_ratio 1, no warmup), so a run of 6 steps resumed to 9 takes exactly the steps
of a run of 9. Runs on different numbers of processes agree to float32 rounding only: the
gradient of a step is summed in another order (over 1, 2 or 3 ranks' micro-batches), and AdamW
carries those last-bit differences along, hence atol 1e-5 on weights of order 0.1.
"""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.runs.manifest import read_manifest
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.recipes.training.loop import train

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this torch has no gloo backend",
    ),
    pytest.mark.slow,  # five torchrun jobs
]

PROBE = Path(__file__).with_name("fsdp_probe.py")
QUIET = dict(progress=False, log=lambda text: None)
FSDP = ["--set", "train.parallel=fsdp"]


def per_rank_batch(nproc: int) -> list[str]:
    return ["--set", f"train.batch_size={6 // nproc}"]  # × grad_accum 2 × nproc = 12 windows


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config, torchrun):
    """one: 9 steps in one process. two: 6 steps on two FSDP processes (gathering the whole model at
    each checkpoint into gathered/), then resumed to 9 on three processes, and on one."""
    folder = tmp_path_factory.mktemp("sharded")
    config = tiny_config(folder)
    train(load_run_config(config), folder / "one", **QUIET)
    two = ["train", str(config), "--out", str(folder / "two"), *per_rank_batch(2), *FSDP, "--set", "train.max_steps=6"]
    stdout = torchrun(2, str(PROBE), str(folder / "gathered"), *two).stdout
    shutil.copytree(folder / "two", folder / "two-then-three")
    shutil.copytree(folder / "two", folder / "two-then-one")
    three = ["train", str(config), "--out", str(folder / "two-then-three"), "--resume", *per_rank_batch(3), *FSDP]
    torchrun(3, "-m", "gptzoo.recipes", *three)
    train(load_run_config(config), folder / "two-then-one", resume=True, **QUIET)
    return folder, stdout


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(first) == sorted(second)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-5, msg=name)


def assert_same_losses(a: Path, b: Path) -> None:
    first, second = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in first] == [r["step"] for r in second] == [3, 6, 9]
    for x, y in zip(first, second, strict=True):
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-5)
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)


def sharded_entries(folder: Path) -> dict[str, dict]:
    return {name: entry for name, entry in read_manifest(folder).files.items() if name.startswith("sharded/")}


def test_every_rank_writes_its_shards_and_the_manifest_commits_each_file(runs):
    folder, _ = runs
    run = folder / "two"
    on_disk = {f"sharded/{p.name}" for p in (run / "sharded").iterdir()}
    # each rank's own file (DCP's __RANK_N.distcp) and the metadata naming which bytes hold which shard
    assert on_disk == set(sharded_entries(run)) == {"sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"}
    manifest = read_manifest(run)
    assert manifest.step == 6
    assert "optimizer" not in torch.load(run / "train_state.pt", weights_only=True)  # AdamW's state is in the shards
    assert not list(run.glob(".*.tmp"))


def test_the_end_of_training_consolidates_into_the_gathered_weights(runs):
    folder, stdout = runs
    assert "consolidated the sharded checkpoint of step 6 into" in stdout
    consolidated = load_file(str(folder / "two" / "model.safetensors"))
    gathered = load_file(str(folder / "gathered" / "step-6.safetensors"))
    assert sorted(consolidated) == sorted(gathered)  # the tied head stored once, under the embedding
    assert "head.weight" not in consolidated
    for name, tensor in gathered.items():
        assert torch.equal(consolidated[name], tensor), name
    assert "model.safetensors" in read_manifest(folder / "two").files


def test_a_sharded_run_resumes_on_three_processes_and_on_one_like_an_uninterrupted_run(runs):
    folder, _ = runs
    for resumed in ("two-then-three", "two-then-one"):
        assert_same_weights(folder / "one", folder / resumed)
        assert_same_losses(folder / "one", folder / resumed)
    assert {name.split("/")[1] for name in sharded_entries(folder / "two-then-three")} == {
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "__2_0.distcp",
    }
    # one process checkpoints whole weights again, and the shards it no longer needs are gone
    assert not sharded_entries(folder / "two-then-one") and not (folder / "two-then-one" / "sharded").exists()
    assert "optimizer" in torch.load(folder / "two-then-one" / "train_state.pt", weights_only=True)


def test_a_kill_during_a_sharded_save_keeps_the_previous_checkpoint_resumable(
    tmp_path, runs, capsys, tiny_config, torchrun
):
    folder, _ = runs
    config = tiny_config(tmp_path)
    run = tmp_path / "killed"
    args = ["train", str(config), "--out", str(run), *per_rank_batch(2), *FSDP]
    result = torchrun(2, str(PROBE), str(tmp_path / "gathered"), "--kill-at", "2", *args, check=False)
    assert result.returncode != 0
    # the job died after every rank wrote its shards of step 6, before the commit
    assert read_manifest(run).step == 3
    assert list(run.glob(".sharded.*.tmp")) and not (run / "model.safetensors").exists()
    # a command that reads the weights consolidates the committed step first, and the leftovers go
    loaded = load_run(run).model.state_dict()
    assert "consolidated the sharded checkpoint of step 3" in capsys.readouterr().err
    for name, tensor in load_file(str(tmp_path / "gathered" / "step-3.safetensors")).items():
        assert torch.equal(loaded[name], tensor), name
    assert not list(run.glob(".*.tmp"))
    train(load_run_config(config), run, resume=True, **QUIET)
    assert_same_weights(folder / "one", run)
    assert_same_losses(folder / "one", run)
