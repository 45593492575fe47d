"""gptzoo ablate --executor ray on real Ray: a local instance, and a cluster of nodes started with
`ray start` on loopback in the test (each in its own process group, stopped by that group's id)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gptzoo.recipes import cli
from gptzoo.recipes.research.sweep import load_sweep, run_sweep

ray = pytest.importorskip("ray")

from gptzoo.recipes.research.sweep.ray_executor import RayExecutor, Resources  # noqa: E402

BASE = """
[model]
context_length = 16
d_model = 32
n_layers = 1
n_heads = 2
tokenizer = {{ name = "byte" }}
positional = {{ name = "learned" }}
norm = {{ name = "layernorm" }}

[data]
source = "{source}"
cache_dir = "{cache}"

[train]
max_steps = {steps}
batch_size = 4
eval_interval = {every}
eval_batches = 1
sample_tokens = 0
device = "cpu"
"""
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # a cluster on loopback that lives as long as the test
    # a stopped node is declared dead within about a second, not the default half minute
    "RAY_health_check_period_ms": "300",
    "RAY_health_check_failure_threshold": "2",
    "RAY_health_check_initial_delay_ms": "0",
}


@pytest.fixture
def sweep_file(tmp_path, shared_data):
    def write(axes: str, steps: int = 6, every: int = 3, extra: str = "") -> Path:
        base = BASE.format(source=shared_data("the-verdict.txt"), cache=tmp_path / "cache", steps=steps, every=every)
        (tmp_path / "base.toml").write_text(base, encoding="utf-8")
        sweep = tmp_path / "sweep.toml"
        sweep.write_text(f'base = "base.toml"\nseeds = [0]\n{extra}\n[axes]\n{axes}\n', encoding="utf-8")
        return sweep

    return write


def final_losses(out: Path) -> dict[str, float]:
    return {row["variant"]: float(row["final_val_loss_mean"]) for row in csv.DictReader(open(out / "results.csv"))}


@pytest.mark.slow
def test_without_an_address_a_local_ray_runs_the_sweep(sweep_file, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)
    sweep = sweep_file('"model.positional.name" = ["learned", "rope"]')

    assert cli.main(["ablate", str(sweep), "--out", str(tmp_path / "ray"), "--executor", "ray", "--no-progress"]) == 0
    assert not ray.is_initialized()  # the instance started for the sweep is gone with it
    printed = capsys.readouterr().out
    assert "[positional-learned-seed0] done on " in printed and "[positional-rope-seed0] done on " in printed
    assert cli.main(["ablate", str(sweep), "--out", str(tmp_path / "pool"), "--workers", "2", "--no-progress"]) == 0
    assert final_losses(tmp_path / "ray") == pytest.approx(final_losses(tmp_path / "pool"), rel=1e-6)


class Cluster:
    """A head and worker nodes on 127.0.0.1, each a `ray start --block` in its own process group."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.root = root
        self.nodes: list[subprocess.Popen] = []

    def start(self, *options: str, head: bool = False) -> subprocess.Popen:
        where = (
            ["--head", f"--port={self.port}", "--include-dashboard=false"] if head else [f"--address={self.address}"]
        )
        log = open(self.root / f"node{len(self.nodes)}.log", "w")
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray.scripts.scripts",
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                *where,
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | RAY_ENV,
            start_new_session=True,
        )
        self.nodes.append(node)
        return node

    def wait_for(self, alive: int) -> None:
        deadline = time.monotonic() + 120
        while sum(n["Alive"] for n in ray.nodes()) != alive:
            assert time.monotonic() < deadline, f"the cluster did not reach {alive} nodes: see {self.root}"
            time.sleep(0.2)

    def stop(self, node: subprocess.Popen) -> None:
        os.killpg(node.pid, signal.SIGKILL)  # the node and every worker it started, as a lost machine
        node.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("ray"))
    saved = dict(os.environ)
    os.environ.update(RAY_ENV)  # the driver in this process too
    try:
        cluster.start("--num-cpus=1", head=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
                break
            except ConnectionError:
                assert time.monotonic() < deadline, f"the head did not start: see {cluster.root}"
                time.sleep(0.5)
        cluster.start("--num-cpus=1")
        cluster.wait_for(2)
        yield cluster
    finally:
        ray.shutdown()
        for node in cluster.nodes:
            if node.poll() is None:
                cluster.stop(node)
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_a_sweep_across_two_nodes_equals_the_process_pool(cluster, sweep_file, tmp_path, capsys):
    sweep = sweep_file('"model.positional.name" = ["learned", "rope"]')
    argv = ["ablate", str(sweep), "--no-progress"]

    assert cli.main([*argv, "--out", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address]) == 0
    printed = capsys.readouterr().out
    nodes = {line.split("(node ")[1] for line in printed.splitlines() if "] done on " in line}
    assert len(nodes) == 2  # one CPU a node, one CPU a run: the two runs trained at once, one on each node
    assert cli.main([*argv, "--out", str(tmp_path / "pool"), "--workers", "2"]) == 0
    assert final_losses(tmp_path / "ray") == pytest.approx(final_losses(tmp_path / "pool"), rel=1e-6)


def crash_on_rope(config, out, **kwargs):
    """A trainer whose process dies on the rope variant, as a run that keeps taking its worker down."""
    from gptzoo.recipes.training.loop import train

    if config.model.positional.name == "rope":
        os._exit(1)
    return train(config, out, **kwargs)


@pytest.mark.slow
def test_a_lost_node_is_retried_and_the_run_resumes_from_its_checkpoint(cluster, sweep_file, tmp_path):
    # Only the nodes that say they have a GPU take this sweep's runs: the first one, and after it is stopped, a second.
    sweep = load_sweep(
        sweep_file('"model.positional.name" = ["learned"]', steps=300, every=10, extra="[resources]\ngpus = 1")
    )
    assert sweep.resources.gpus == 1
    first = cluster.start("--num-cpus=1", "--num-gpus=1")
    cluster.wait_for(3)
    out = tmp_path / "out"
    results = []
    sweeping = threading.Thread(
        target=lambda: results.extend(
            run_sweep(sweep, out, progress=False, executor=RayExecutor(cluster.address, Resources(1, 1), retries=2))
        )
    )
    sweeping.start()
    folder = out / "runs" / "positional-learned-seed0"
    deadline = time.monotonic() + 120
    while not ((folder / "train_state.pt").is_file() and len(_lines(folder / "measurements.jsonl")) >= 3):
        assert time.monotonic() < deadline and sweeping.is_alive(), "the run committed no checkpoint"
        time.sleep(0.05)
    cluster.stop(first)
    committed = _lines(folder / "measurements.jsonl")
    cluster.start("--num-cpus=1", "--num-gpus=1")
    sweeping.join(timeout=240)

    assert not sweeping.is_alive()
    (result,) = results
    assert result.status == "done", result.message
    metrics = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(10, 301, 10))
    # A restarted run would have deleted the folder and measured its tokens/s anew: the measurements written
    # before the node was lost are still there, byte for byte.
    measured = _lines(folder / "measurements.jsonl")
    assert 3 <= len(committed) < 30 and measured[: len(committed) - 1] == committed[:-1]


def _lines(file: Path) -> list[str]:
    return file.read_text().splitlines() if file.is_file() else []


@pytest.mark.slow
def test_a_run_that_keeps_failing_is_reported_while_the_others_finish(cluster, sweep_file, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the nodes cannot import this test module
    sweep = load_sweep(sweep_file('"model.positional.name" = ["learned", "rope"]'))
    executor = RayExecutor(cluster.address, Resources(1, 0), retries=1)

    results = run_sweep(sweep, tmp_path / "out", trainer=crash_on_rope, progress=False, executor=executor)

    status = {r.variant: (r.status, r.message) for r in results}
    assert status["positional-learned"][0] == "done"
    assert status["positional-rope"][0] == "failed" and "WorkerCrashedError" in status["positional-rope"][1], status
    rows = {row["variant"]: row for row in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert rows["positional-learned"]["status"] == "ok"
    assert rows["positional-rope"]["status"].startswith("failed: WorkerCrashedError")
    assert rows["positional-rope"]["status"] in (tmp_path / "out" / "results.md").read_text()


def test_the_writability_probe_names_why_a_folder_cannot_be_written(tmp_path):
    from gptzoo.recipes.research.sweep.ray_executor import _probe_writable

    assert _probe_writable(str(tmp_path / "shared")) == ""
    assert list((tmp_path / "shared").iterdir()) == []  # the probe file is gone again
    (tmp_path / "file").write_text("not a folder")
    assert "Not a directory" in _probe_writable(str(tmp_path / "file" / "out"))
