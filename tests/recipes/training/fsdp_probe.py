"""``gptzoo train`` under torchrun, watched from inside; test_sharded_checkpoints runs it:

    python fsdp_probe.py GATHERED [--kill-at N] train CONFIG --out DIR ...

After every checkpoint, the ranks gather the whole model the way checkpoints were made before
they were sharded (FSDP's full state dict onto rank 0), and rank 0 writes it to
GATHERED/step-S.safetensors: the weights a consolidation must equal. With ``--kill-at N``,
every rank dies (os._exit, no clean-up: the job is killed) in the N-th sharded save, after
writing its shards and before anything is committed.
"""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from gptzoo.recipes import cli
from gptzoo.recipes.training import distributed
from gptzoo.recipes.training import loop as train_module
from gptzoo.recipes.training import sharded as sharded_module

gathered = Path(sys.argv[1])
args = sys.argv[2:]
kill_at = None
if args[0] == "--kill-at":
    kill_at, args = int(args[1]), args[2:]

real_checkpoint, real_entries, saves = train_module.checkpoint, sharded_module.shard_entries, []


def checkpoint_then_gather(run, state):
    real_checkpoint(run, state)
    weights = distributed.full_model_state(run.model)
    if run.world.is_main:
        gathered.mkdir(parents=True, exist_ok=True)
        save_file(weights, gathered / f"step-{state.at.step}.safetensors")


def entries_or_die(folder, rank):
    saves.append(1)
    if len(saves) == kill_at:
        os._exit(137)
    return real_entries(folder, rank)


train_module.checkpoint = checkpoint_then_gather
sharded_module.shard_entries = entries_or_die
raise SystemExit(cli.main(args))
