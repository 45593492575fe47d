"""benchmarks/machine.py: the processor and its last-level cache, read from files laid out as Linux's."""

from pathlib import Path

import pytest


@pytest.fixture
def machine(benchmark_module):
    return benchmark_module("machine")


def sysfs_caches(root: Path, caches: list[tuple[int, str, str]]) -> Path:
    for i, (level, kind, size) in enumerate(caches):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
    return root


def test_the_last_level_cache_is_the_highest_data_or_unified_level(machine, tmp_path):
    # A Sapphire Rapids core as one of these machines' sysfs showed it: 48K L1d, 64K L1i, 2M L2, 480M L3.
    caches = sysfs_caches(
        tmp_path, [(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"), (3, "Unified", "491520K")]
    )
    assert machine.last_level_cache_bytes(caches) == 491520 * 1024


def test_an_instruction_cache_is_never_the_last_level(machine, tmp_path):
    caches = sysfs_caches(tmp_path, [(1, "Data", "32K"), (2, "Instruction", "1M")])
    assert machine.last_level_cache_bytes(caches) == 32 * 1024


def test_no_cache_directories_say_unknown(machine, tmp_path):
    assert machine.last_level_cache_bytes(tmp_path / "absent") is None


def test_the_cpu_is_named_by_its_model_name_line(machine, tmp_path):
    cpu_info = tmp_path / "cpuinfo"
    cpu_info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: avx2\n"
    )
    assert machine.cpu_name(cpu_info) == "Intel(R) Xeon(R) Processor"


def test_describe_reads_the_threads_when_called_not_when_imported(machine):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        described = machine.describe()
    finally:
        torch.set_num_threads(before)
    assert described["threads"] == 3
    assert set(described) == {
        "cpu", "cpu_capability", "native_bf16", "last_level_cache_bytes", "cores", "threads", "platform", "torch"
    }  # fmt: skip
