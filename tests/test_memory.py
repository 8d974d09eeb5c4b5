"""usable_memory_bytes: the machine's memory, or a control group's limit below it, read from cgroup files laid out
as Linux lays them out (v2 unified tree, v1 memory controller; a container's root or a job's group)."""

import os
from pathlib import Path

from xdc.training.memory import usable_memory_bytes

PHYSICAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
GIB = 2**30


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_no_cgroup_files_means_the_machine(tmp_path):
    assert usable_memory_bytes(tmp_path) == PHYSICAL
    assert usable_memory_bytes() <= PHYSICAL  # this machine, whatever its cgroups say


def test_a_container_limit_below_the_machine_counts(tmp_path):
    v2 = tree(tmp_path / "v2", {"sys/fs/cgroup/memory.max": f"{GIB}\n", "proc/self/cgroup": "0::/\n"})
    assert usable_memory_bytes(v2) == min(GIB, PHYSICAL)
    v1 = tree(tmp_path / "v1", {"sys/fs/cgroup/memory/memory.limit_in_bytes": f"{2 * GIB}\n"})
    assert usable_memory_bytes(v1) == min(2 * GIB, PHYSICAL)


def test_no_limit_reads_as_none(tmp_path):
    root = tree(tmp_path, {
        "sys/fs/cgroup/memory.max": "max\n",  # v2
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1: "unlimited", near 2**63
    })  # fmt: skip
    assert usable_memory_bytes(root) == PHYSICAL


def test_a_jobs_own_group_is_found_through_proc_self_cgroup(tmp_path):
    # A SLURM job under cgroup v2 inside the host's tree, and the same under v1 with the memory controller.
    v2 = tree(tmp_path / "v2", {
        "proc/self/cgroup": "0::/system.slice/slurmstepd.scope/job_42\n",
        "sys/fs/cgroup/memory.max": "max\n",
        "sys/fs/cgroup/system.slice/slurmstepd.scope/job_42/memory.max": f"{3 * GIB}\n",
    })  # fmt: skip
    assert usable_memory_bytes(v2) == min(3 * GIB, PHYSICAL)
    v1 = tree(tmp_path / "v1", {
        "proc/self/cgroup": "5:cpu,cpuacct:/slurm/job_7\n4:memory:/slurm/job_7\n1:name=systemd:/\n",
        "sys/fs/cgroup/memory/slurm/job_7/memory.limit_in_bytes": f"{GIB // 2}\n",
    })  # fmt: skip
    assert usable_memory_bytes(v1) == min(GIB // 2, PHYSICAL)
