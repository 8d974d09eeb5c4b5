"""A short pretraining run under each way Python starts worker processes: fork (Linux's default up to Python 3.13),
forkserver (Linux's from 3.14), spawn (macOS's). A round starts two loaders (extraction, training), and what a
worker imports before its first item is paid at each start; forkserver is also run without the fork server's
preload (xdc.data.preload), to show what it saves.

    .venv/bin/python benchmarks/start_methods.py [--videos 32] [--rounds 3] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import child_output, report, run_script

from xdc.config import load_config
from xdc.data.index import build_manifest
from xdc.data.synthetic import make_synthetic

# Runs `xdc ARGS` under a start method; "off" stubs the preload, as before xdc.data.preload. The guard: spawn and
# forkserver workers import this script as their __main__.
DRIVER = """
import multiprocessing, sys
if __name__ == "__main__":
    method, preload = sys.argv[1], sys.argv[2]
    multiprocessing.set_start_method(method)
    if preload == "off":
        import xdc.cli, xdc.data.datasets, xdc.data.jobs, xdc.data.synthetic
        for module in (xdc.cli, xdc.data.datasets, xdc.data.jobs, xdc.data.synthetic):
            module.preload_fork_server = lambda: None
    from xdc.cli import main
    sys.exit(main(sys.argv[3:]))
"""
CASES = [("fork", "on"), ("forkserver", "on"), ("forkserver", "off"), ("spawn", "on")]
METHODS = ["fork", "forkserver", "spawn"]


def run(tmp: Path, method: str, preload: str, manifest: Path, args: argparse.Namespace) -> float:
    out = tmp / f"run-{method}-{preload}"
    command = [sys.executable, str(tmp / "driver.py"), method, preload, "pretrain", "--data", str(manifest),
               "--out", str(out), "--preset", "tiny", "--k", "4", "--rounds", str(args.rounds),
               f"--set=data.workers={args.workers}"]  # fmt: skip
    t = time.perf_counter()
    child_output(f"xdc pretrain under {method} (preload {preload})", command)
    took = time.perf_counter() - t
    shutil.rmtree(out)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="loader workers (data.workers)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args = ap.parse_args()
    cases = [case for case in CASES if case[0] in args.methods]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "driver.py").write_text(DRIVER)
        labels = make_synthetic(tmp / "data", args.videos, 4, seed=0, cfg=load_config(None, preset="tiny").synthetic,
                                workers=None)  # fmt: skip
        build_manifest([str(tmp / "data" / "videos")], tmp / "m.csv", labels=labels)
        times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for _ in range(args.repeats):  # alternating, so drift of the machine's speed hits every case alike
            for case in cases:
                times[case].append(run(tmp, *case, tmp / "m.csv", args))
    base = statistics.median(times[cases[0]])
    rows = [{"start method": method, "fork server preload": preload if method == "forkserver" else "",
             "s (median)": round(statistics.median(t), 1), f"vs {cases[0][0]}": round(statistics.median(t) / base, 2),
             "runs": ", ".join(f"{x:.1f}" for x in t)} for (method, preload), t in times.items()]  # fmt: skip
    report("start_methods", rows, {"args": vars(args)})


if __name__ == "__main__":
    run_script(main)
