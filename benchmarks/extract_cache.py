"""Extraction items per core with train.extract_cache (xdc.data.clip_cache): decoded as without the cache, decoded
and kept (a run's first round: each record written, the file synced at the end), and read back (later rounds).

    .venv/bin/python benchmarks/extract_cache.py [--preset paper] [--videos 200] [--rounds 3]

One process with one thread, as a loader worker runs; the centred clip of each of --videos prepared synthetic
videos at the preset's decode size (train_step.py's set), once per pass, passes alternating over --rounds, the
median. The read-back pass reads from the page cache: at scale the file comes from disk.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import report, run_script
from train_step import synthetic_manifest
from xdc.config import load_config
from xdc.data.clip_cache import ClipCache
from xdc.data.datasets import EvalClips


def read_all(clips: EvalClips) -> float:
    """Seconds to read every item once."""
    t = time.perf_counter()
    for k in range(len(clips)):
        clips[k]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, preset=args.preset)
    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-extract-cache-"))
    rows = []
    try:
        manifest = synthetic_manifest(cfg, tmp, args.videos)  # at least 64 made: the first --videos read
        manifest = manifest.subset(np.arange(len(manifest)) < args.videos)
        for logmel_on in ("device", "workers"):
            clips = EvalClips(manifest, cfg.data, clips=1, raw_video=True, device_logmel=logmel_on == "device")
            clips[0]
            times: dict[str, list[float]] = {"decoded": [], "decoded and kept": [], "kept": []}
            for r in range(args.rounds):
                clips.cache = None
                times["decoded"].append(read_all(clips))
                clips.cache = ClipCache(tmp / f"cache-{logmel_on}-{r}", range(len(clips)), clips.cache_fields(), {})
                if clips.cache.open() is not None:
                    raise SystemExit(f"no room for the cache in {tmp}")
                clips.cache.begin()
                t = time.perf_counter()
                read_all(clips)
                clips.cache.end()  # the records on disk, as at the end of a round's extraction
                times["decoded and kept"].append(time.perf_counter() - t)
                times["kept"].append(read_all(clips))
                clips.cache.remove()
            base = len(clips) / statistics.median(times["decoded"])
            for name, seconds in times.items():
                rates = [len(clips) / s for s in seconds]
                rows.append({
                    "preset": args.preset, "logmel_on": logmel_on, "record kB": round(clips.cache.record / 1000),
                    "pass": name, "items/s per core": round(statistics.median(rates)),
                    "vs decoded": round(statistics.median(rates) / base, 2),
                    "rounds": ", ".join(f"{x:.0f}" for x in rates),
                })  # fmt: skip
        report("extract_cache", rows, {"videos": len(manifest), "rounds": args.rounds})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
