"""usable_memory_bytes and usable_cpus: the machine's memory and CPUs, or a control group's limit below them, read
from cgroup files laid out as Linux lays them out (v2 unified tree, v1 memory and cpu controllers; a container's root
or a job's group)."""

import os
import subprocess
import sys
from pathlib import Path

from xdc.limits import cpu_quota, usable_cpus, usable_memory_bytes

PHYSICAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
GIB = 2**30
AFFINITY = len(os.sched_getaffinity(0))


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


def test_no_cpu_quota_means_the_affinity_mask(tmp_path):
    root = tree(tmp_path, {
        "sys/fs/cgroup/cpu.max": "max 100000\n",  # v2: no quota
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",  # v1
    })  # fmt: skip
    assert cpu_quota(root) is None and cpu_quota(tmp_path / "nothing") is None
    assert usable_cpus(root) == AFFINITY
    assert usable_cpus() <= AFFINITY  # this machine, whatever its cgroups say


def test_without_an_affinity_mask_the_machines_cpus_count(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    assert usable_cpus(tmp_path) == os.cpu_count()
    half = tree(tmp_path / "half", {"sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert usable_cpus(half) == 1


def test_a_cpu_quota_is_counted_in_cpus_and_rounded_up(tmp_path):
    v2 = tree(tmp_path / "v2", {"sys/fs/cgroup/cpu.max": "250000 100000\n", "proc/self/cgroup": "0::/\n"})
    assert cpu_quota(v2) == 2.5 and usable_cpus(v2) == min(3, AFFINITY)
    half = tree(tmp_path / "half", {"sys/fs/cgroup/cpu.max": "50000 100000\n"})  # a Kubernetes limit of 500m
    assert cpu_quota(half) == 0.5 and usable_cpus(half) == 1
    v1 = tree(tmp_path / "v1", {
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cpu_quota(v1) == 1.0 and usable_cpus(v1) == 1


def test_a_jobs_cpu_quota_is_found_through_proc_self_cgroup(tmp_path):
    v2 = tree(tmp_path / "v2", {
        "proc/self/cgroup": "0::/kubepods.slice/pod_3/container_9\n",
        "sys/fs/cgroup/cpu.max": "max 100000\n",
        "sys/fs/cgroup/kubepods.slice/pod_3/container_9/cpu.max": "150000 50000\n",
    })  # fmt: skip
    assert cpu_quota(v2) == 3.0
    v1 = tree(tmp_path / "v1", {
        "proc/self/cgroup": "5:cpu,cpuacct:/slurm/job_7\n4:memory:/slurm/job_7\n",
        "sys/fs/cgroup/cpu/slurm/job_7/cpu.cfs_quota_us": "40000\n",
        "sys/fs/cgroup/cpu/slurm/job_7/cpu.cfs_period_us": "100000\n",
    })  # fmt: skip
    assert cpu_quota(v1) == 0.4 and usable_cpus(v1) == 1
    odd = tree(tmp_path / "odd", {"proc/self/cgroup": "garbage\n\n0::/a\n", "sys/fs/cgroup/a/cpu.max": "100000 100000"})
    assert cpu_quota(odd) == 1.0  # lines not of the id:controllers:group form are passed over


def test_a_limit_on_a_group_above_the_process_holds_too(tmp_path):
    """SLURM under cgroup v2 puts the job's limits on job_N and runs its tasks in groups below it."""
    slurm = tree(tmp_path / "v2", {
        "proc/self/cgroup": "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n",
        "sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/memory.max": f"{GIB}\n",
        "sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/cpu.max": "200000 100000\n",
        "sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/step_0/user/task_0/memory.max": "max\n",
        "sys/fs/cgroup/system.slice/slurmstepd.scope/job_7/step_0/user/task_0/cpu.max": "max 100000\n",
    })  # fmt: skip
    assert usable_memory_bytes(slurm) == min(GIB, PHYSICAL) and cpu_quota(slurm) == 2.0
    v1 = tree(tmp_path / "v1", {
        "proc/self/cgroup": "4:memory:/slurm/uid_0/job_7/step_0\n",
        "sys/fs/cgroup/memory/slurm/uid_0/job_7/memory.limit_in_bytes": f"{GIB // 2}\n",
    })  # fmt: skip
    assert usable_memory_bytes(v1) == min(GIB // 2, PHYSICAL)


FIT = """
import sys, faiss, torch
from xdc.limits import fit_threads
fit_threads(int(sys.argv[1]))
print(torch.get_num_threads(), faiss.omp_get_max_threads())
"""


def test_thread_pools_are_fitted_to_a_quota_unless_omp_num_threads_chooses():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}

    def pools(cpus: int, **extra: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", FIT, str(cpus)], env={**env, **extra}, capture_output=True,
                             text=True, check=True)  # fmt: skip
        return [int(n) for n in out.stdout.split()]

    free = pools(AFFINITY)  # no quota below the mask: the pools as they start
    assert pools(1) == [1, 1]
    if AFFINITY > 1:
        assert free != [1, 1]
        assert pools(1, OMP_NUM_THREADS=str(AFFINITY)) == [AFFINITY, AFFINITY]  # the user's choice stands
