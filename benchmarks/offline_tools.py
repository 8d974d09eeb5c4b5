"""The offline tools on a large run folder: `xdc report`, `xdc eval clusters` and the export card's data line.

Builds a run folder as `xdc pretrain` leaves it, for N videos and R finished rounds of XDC (Kinetics-like paths
of 63 characters, 400 classes; the run's ``videos/`` arrays and ``videos.csv``; ``labels/round_NNN.npz`` with a
``video`` and an ``audio`` set of k clusters, each a noisy function of the class so that the scores are not
those of chance; ``config.yaml``; one ``round`` line per round in ``log.jsonl``), then runs each tool in a
fresh process and reports its wall seconds and peak resident memory (which counts the pages of ``videos/`` a
tool maps and reads). The videos' files do not exist: the report's sample clips are placeholders (decoding
them is the same work at any N: 4 clips for each of 32 clusters per label set).

``--src DIR`` runs the tools from another checkout's ``src`` (e.g. a ``git worktree`` of an older commit) to
compare; the run folder is the same.

    .venv/bin/python benchmarks/offline_tools.py --videos 10000000 --rounds 10
    .venv/bin/python benchmarks/offline_tools.py --videos 65000000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, report, run_script
from xdc.data.manifest import Manifest, write_videos

CLASSES = 400
BLOCK = 1 << 20

# Runs in a fresh process: argv = tool, run folder; prints the tool's seconds (imports excluded) and the process's
# peak RSS (with the imports: about 0.5 GiB) as JSON.
CHILD = """
import json, sys, time
from pathlib import Path
from xdc.evaluation.commands import eval_clusters
from xdc.export import _data_line
from xdc.report import write_report
tool, run = sys.argv[1], Path(sys.argv[2])
t = time.perf_counter()
if tool == "report":
    write_report(run, run / "report.html")
elif tool == "eval clusters":
    eval_clusters(run, run / "clusters.json")
else:
    _data_line(run)
seconds = time.perf_counter() - t
with open("/proc/self/status") as f:  # VmHWM, not ru_maxrss: that keeps the parent's peak across fork and exec
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"s": seconds, "peak_mib": peak / 1024}))
"""
TOOLS = ("report", "eval clusters", "export card data line")


def build_run(run: Path, n: int, rounds: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = tuple(f"class_{c:03d}" for c in range(CLASSES))
    truth = (np.arange(n) % CLASSES).astype(np.int32)
    paths = np.empty(n, dtype="S63")
    for start in range(0, n, BLOCK):
        paths[start : start + BLOCK] = [
            f"/data/kinetics400/train/class_{i % CLASSES:03d}/{i:011d}_000010_000020.mp4".encode()
            for i in range(start, min(n, start + BLOCK))
        ]
    ones = np.ones(n, dtype=bool)
    Manifest(paths, np.full(n, 10.0), np.zeros(n), ones, ones, truth, classes).save(run / "videos")
    write_videos(run / "videos.csv", Manifest.open(run / "videos"))
    (run / "labels").mkdir()
    for r in range(rounds):
        sets = {name: ((truth * 7 + rng.integers(0, spread, n)) % k).astype(np.int32)
                for name, spread in (("video", 40), ("audio", 80))}  # fmt: skip
        np.savez(run / "labels" / f"round_{r:03d}.npz", **sets)
    (run / "config.yaml").write_text(f"train:\n  method: xdc\n  k: {k}\n  rounds: {rounds}\n")
    times = {"extract_s": 60.0, "cluster_s": 30.0, "train_s": 600.0}
    lines = [json.dumps({"kind": "round", "step": r, **times}) for r in range(rounds)]
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")


def run_tool(tool: str, run: Path, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CHILD, tool, str(run)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tool} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10_000_000, help="N, videos in the run")
    parser.add_argument("--rounds", type=int, default=10, help="finished rounds (label files)")
    parser.add_argument("--k", type=int, default=256, help="clusters per label set")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the checkout's src folder to run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        t = time.perf_counter()
        build_run(run, args.videos, args.rounds, args.k, args.seed)
        print(f"built a run of {args.videos:,} videos and {args.rounds} rounds in {time.perf_counter() - t:.0f} s")
        rows = []
        for tool in TOOLS:
            measured = run_tool(tool, run, args.src.resolve())
            rows.append({"tool": tool, "videos": args.videos, "rounds": args.rounds, "k": args.k,
                         "s": round(measured["s"], 2), "peak MiB": round(measured["peak_mib"])})  # fmt: skip
            print(f"{tool}: {measured['s']:.1f} s", flush=True)
    report(f"offline_tools_{args.videos}", rows, {"src": str(args.src)})


if __name__ == "__main__":
    run_script(main)
