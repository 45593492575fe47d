"""The multi-node launch of docs/tutorials/distributed.md, with two "nodes" on this machine's loopback:
two torchrun launches of one process each (gloo on the CPU) that meet at one rendezvous and train
one run into a folder both see, as the nodes of a cluster would on a shared file system."""

import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.recipes.training.loop import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="this torch has no gloo backend",
    ),
    pytest.mark.slow,  # two torchrun jobs of two launches
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous(kind: str, node_rank: int, port: int) -> list[str]:
    """The torchrun options the docs give for node ``node_rank`` of 2, with this machine as the head."""
    if kind == "static":
        return ["--master_addr", "127.0.0.1", "--master_port", str(port), "--node_rank", str(node_rank)]
    return ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "tiny-run"]


@pytest.mark.parametrize("kind, parallel", [("static", "ddp"), ("c10d", "fsdp")])
def test_two_nodes_meet_at_a_rendezvous_and_train_like_one_process(tmp_path, tiny_config, torchrun_env, kind, parallel):
    config = tiny_config(tmp_path, n_layers=1, max_steps=6)
    train(load_run_config(config), tmp_path / "one", progress=False, log=lambda text: None)
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                *rendezvous(kind, node_rank, port),
                "-m",
                "gptzoo.recipes",
                "train",
                str(config),
                "--out",
                str(tmp_path / "two-nodes"),
                "--set",
                "train.batch_size=3",  # × grad_accum 2 × 2 processes: one process's 12 windows a step
                "--set",
                f"train.parallel={parallel}",
            ],
            env=torchrun_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node_rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=180)[0])
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(output[-3000:] for output in outputs)
    assert sum(f"2 processes ({parallel})" in output for output in outputs) == 1  # rank 0 speaks, on one node
    record = read_metrics(tmp_path / "two-nodes")[-1]
    assert (record["step"], record["processes"], record["effective_batch_size"]) == (6, 2, 12)
    one, two = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two-nodes" / "model.safetensors")),
    )
    assert sorted(one) == sorted(two)
    for name in one:  # the global batch summed in another order: float32 rounding, as in test_sharded_checkpoints
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)
