"""Shared bits of the benchmark scripts: where data lives, machine description, table + JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

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
