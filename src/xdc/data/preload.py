"""What the fork server imports before it forks workers.

Under forkserver (Python 3.14's default on Linux) every worker, of a loader or of a job pool, is forked from one
server process, which by default has imported ``__main__`` alone: each worker then imported torch and xdc again,
about 2 s for each loader on a 2-core CPU, and a round starts two loaders (`xdc demo` took 134 s, against fork's
37). The server imports them once instead (46 s; BENCHMARKS.md). Nothing changes under fork or spawn."""

from __future__ import annotations

import multiprocessing
import sys

MODULES = ("torch", "xdc.data.datasets")  # what a worker imports anyway, to unpickle a dataset and run it


def preload_fork_server() -> None:
    """Add :data:`MODULES` to the fork server's preload list (kept: ``__main__``, or a user's own list). It acts
    on a server started afterwards: call it before the first workers start."""
    if sys.platform == "win32":  # no fork server
        return
    from multiprocessing import forkserver

    preload = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))  # its own default
    missing = [name for name in MODULES if name not in preload]
    if missing:
        multiprocessing.set_forkserver_preload([*preload, *missing])
