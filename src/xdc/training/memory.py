"""How much memory this process may use: the machine's, or less where a control group caps it (a container, a
SLURM or Kubernetes job), which the machine's own count does not show."""

from __future__ import annotations

import os
from pathlib import Path


def usable_memory_bytes(root: Path = Path("/")) -> int:
    """The least of the machine's physical memory and every memory limit of this process's control groups
    (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``), read under ``root``."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    for path in _limit_files(root):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # v2 says "max" for no limit; v1 a number near 2**63
            limits.append(int(text))
    return min(limits)


def _limit_files(root: Path) -> list[Path]:
    """The limit files of the cgroup roots as this process sees them (a container's own) and of the groups that
    /proc/self/cgroup names (a job's group inside a host's tree)."""
    cgroup = root / "sys/fs/cgroup"
    files = [cgroup / "memory.max", cgroup / "memory/memory.limit_in_bytes"]
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, group = line.split(":", 2)
        group = group.lstrip("/")
        if not group:
            continue
        if controllers == "":  # v2: one unified tree
            files.append(cgroup / group / "memory.max")
        elif "memory" in controllers.split(","):
            files.append(cgroup / "memory" / group / "memory.limit_in_bytes")
    return files
