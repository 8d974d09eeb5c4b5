"""Shared bits of the benchmark scripts: where data lives, machine description, table + JSON output, a port, how a
script and its child processes end on an error."""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from xdc.errors import UserError
from xdc.tables import format_table

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# where report() writes; tests/test_benchmarks.py points it at a temporary folder
RESULTS = Path(os.environ.get("XDC_BENCHMARK_RESULTS", ROOT / "benchmarks" / "results"))


def machine() -> dict:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def report(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Print ``rows`` as a table and write them with the machine description to results/NAME.json."""
    print(format_table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows, **(extra or {})}, indent=2))
    print(f"wrote {out}")
    return out


def free_port() -> int:
    """A port for a process group, free now, drawn below the ephemeral ports (where Linux, from 32768, and macOS,
    from 49152, give connections their own ends, which could take it before the group binds it); the tests'
    too (tests/conftest.py). Fixed ports until 2026-12-02: two runs on one host took each other's."""
    draw = random.Random()  # from the system's entropy: a seeded run would draw the same ports as another
    while True:
        port = draw.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def run_script(main: Callable[[], int | None]) -> None:
    """Run a script's ``main``: a user's mistake that the library reports (a path not found, an unknown preset)
    ends it with one line naming the script, as argparse's errors do, instead of a traceback."""
    try:
        code = main()
    except UserError as e:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {e}")
    sys.exit(code)


def child_output(what: str, command: list[str]) -> str:
    """The standard output of ``command``, a measurement in a fresh process. Where it fails, the script ends
    naming ``what`` and the child's last line of error output (its exception), which capturing the output would
    otherwise hide."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no error output"]
        sys.exit(f"{Path(sys.argv[0]).name}: {what} failed: {lines[-1]}")
    return done.stdout
