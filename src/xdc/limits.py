"""What of the machine this process may use: its memory and its CPUs, or less where a control group caps them (a
container, a SLURM or Kubernetes job), which the machine's own counts do not show."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_memory_bytes(root: Path = Path("/")) -> int:
    """The least of the machine's physical memory and every memory limit of this process's control groups
    (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``), read under ``root``."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in _limit_files(root, "memory.max", "memory", "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # v2 says "max" for no limit; v1 a number near 2**63
            limits.append(int(text))
    return min(limits)


def usable_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may keep busy: those of its affinity mask, or fewer where a control group gives it a
    CPU quota (:func:`cpu_quota`, rounded up). A Kubernetes limit of 4 CPUs on a 64-core node shows all 64 to
    ``os.sched_getaffinity``, to OpenMP and to PyTorch; counted from there, 63 loader workers and 64-thread k-means
    would share 4 CPUs' worth of time slices."""
    cpus = _affinity_cpus()
    quota = cpu_quota(root)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def _affinity_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one (Linux), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_quota(root: Path = Path("/")) -> float | None:
    """The smallest CPU quota of this process's control groups, in CPUs (quota / period: cgroup v2 ``cpu.max``,
    v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), read under ``root``; None where none is set."""
    quotas = []
    for path in _limit_files(root, "cpu.max", "cpu", "cpu.cfs_quota_us"):
        try:
            if path.name == "cpu.max":  # v2: "QUOTA PERIOD", QUOTA "max" for none
                quota, period = path.read_text().split()[:2]
            else:
                quota, period = path.read_text().strip(), (path.parent / "cpu.cfs_period_us").read_text().strip()
        except (OSError, ValueError):
            continue
        if quota.isdigit() and period.isdigit() and int(period) > 0:  # v1 says -1 for none
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def _limit_files(root: Path, v2_name: str, v1_controller: str, v1_name: str) -> list[Path]:
    """A limit's files in the cgroup roots as this process sees them (a container's own) and in the groups that
    /proc/self/cgroup names (a job's group inside a host's tree) and each of their ancestors, whose limits hold for
    the groups below them (SLURM sets a job's on ``job_N``, its tasks run in ``job_N/step_M/...``): ``v2_name`` in the
    unified tree, ``v1_name`` under the v1 hierarchy of ``v1_controller``."""
    cgroup = root / "sys/fs/cgroup"
    files = [cgroup / v2_name, cgroup / v1_controller / v1_name]
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        fields = line.split(":", 2)  # hierarchy id, controllers, group
        group = fields[2].lstrip("/") if len(fields) == 3 else ""
        if not group:
            continue
        controllers, parts = fields[1], group.split("/")
        groups = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the group and every group above it
        if controllers == "":  # v2: one unified tree
            files += [cgroup / g / v2_name for g in groups]
        elif v1_controller in controllers.split(","):
            files += [cgroup / v1_controller / g / v1_name for g in groups]
    return files


def fit_threads(cpus: int | None = None) -> None:
    """Cap PyTorch's and faiss's thread pools at ``cpus`` (default: :func:`usable_cpus`) where that is fewer than
    they would start, unless OMP_NUM_THREADS chooses (torchrun sets it to 1 for several ranks per node). Both count
    the affinity mask, not a control group's quota."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < _affinity_cpus():
        import faiss
        import torch

        torch.set_num_threads(min(cpus, torch.get_num_threads()))
        faiss.omp_set_num_threads(min(cpus, faiss.omp_get_max_threads()))
