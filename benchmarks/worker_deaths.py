"""What a loader worker's death costs a pass (xdc.data.worker_deaths): the same pass of training items with no
death, and with one worker killed by SIGKILL (as the out-of-memory killer does) after a few batches; the extra
seconds are new workers and the batches they had in flight made again (the death itself is seen at once).

    .venv/bin/python benchmarks/worker_deaths.py [--workers 2] [--batches 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from common import report, run_script

from xdc.config import load_config
from xdc.data.datasets import TrainClips, make_loader
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest
from xdc.data.synthetic import make_synthetic
from xdc.data.worker_deaths import Surviving


def one_pass(dataset: TrainClips, keys: list, batch: int, workers: int, kill_after: int | None) -> float:
    loader = make_loader(dataset, batch, workers, sampler=keys)
    t = time.perf_counter()
    batches = iter(Surviving(loader))
    for n, _ in enumerate(batches):
        if n == kill_after:
            pass_ = batches.gi_frame.f_locals["it"]  # the pass's DataLoader iterator
            os.kill(pass_._workers[0].pid, signal.SIGKILL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=40, help="batches per pass")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--kill-after", type=int, default=5, help="kill a worker after this many batches")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not 0 <= args.kill_after < args.batches:  # else the "one SIGKILL" pass kills nothing
        ap.error(f"--kill-after ({args.kill_after}) must be below --batches ({args.batches})")
    cfg = load_config(None, preset="tiny")
    with tempfile.TemporaryDirectory() as tmp:
        labels = make_synthetic(Path(tmp), 64, 4, seed=0, cfg=cfg.synthetic, workers=None)
        build_manifest([str(Path(tmp) / "videos")], Path(tmp) / "m.csv", labels=labels)
        dataset = TrainClips(Manifest.load(Path(tmp) / "m.csv"), cfg.data)
        keys = [(i % 64, i) for i in range(args.batches * args.batch)]
        times: dict[str, list[float]] = {"no death": [], "one SIGKILL": []}
        for _ in range(args.rounds):  # alternating, so drift of the machine's speed hits both alike
            times["no death"].append(one_pass(dataset, keys, args.batch, args.workers, None))
            times["one SIGKILL"].append(one_pass(dataset, keys, args.batch, args.workers, args.kill_after))
    base = statistics.median(times["no death"])
    rows = [{"pass": name, "s (median)": round(statistics.median(t), 2), "extra s": round(statistics.median(t) - base, 2),
             "rounds": ", ".join(f"{x:.2f}" for x in t)} for name, t in times.items()]  # fmt: skip
    report("worker_deaths", rows, {"args": vars(args)})


if __name__ == "__main__":
    run_script(main)
