"""Evaluation items per core: a video's clips read with one open of its file (``EvalClips.__getitems__``, as the
DataLoader asks for a batch) against one open per clip (each item alone), for ``xdc extract`` and finetuning's test.

    .venv/bin/python benchmarks/eval_clips.py [--preset paper] [--videos 100] [--clips 10] [--rounds 3]

One process with one thread, as a loader worker runs; --clips evenly spaced clips of each of --videos prepared
synthetic videos at the preset's decode size (train_step.py's set), in batches of 32, passes alternating over
--rounds, the median. Video alone (a video encoder's extraction), and audio alone, whose clips still open the file
each (``read_clips``: AAC's decoder keeps state through a seek).
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

from common import report
from train_step import synthetic_set
from xdc.config import load_config
from xdc.data.datasets import EvalClips
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest

BATCH = 32


def read_all(clips: EvalClips, batched: bool) -> float:
    """Seconds to read every item once, a batch at a time or an item at a time."""
    t = time.perf_counter()
    for first in range(0, len(clips), BATCH):
        ks = list(range(first, min(first + BATCH, len(clips))))
        if batched:
            clips.__getitems__(ks)
        else:
            for k in ks:
                clips[k]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, preset=args.preset)
    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-eval-clips-"))
    rows = []
    try:
        folder = synthetic_set(cfg, tmp / "set", args.videos)
        build_manifest([str(folder)], tmp / "m.csv")
        manifest = Manifest.load(tmp / "m.csv")
        manifest = manifest.subset(manifest.has_video)
        manifest = manifest.subset(np.arange(len(manifest)) < args.videos)
        for modality in ("video", "audio"):
            clips = EvalClips(manifest, cfg.data, clips=args.clips, modalities=(modality,), raw_video=True,
                              device_logmel=True)  # fmt: skip
            read_all(clips, True)  # warm: page cache, converters
            times: dict[str, list[float]] = {"an open per clip": [], "an open per video and batch": []}
            for _ in range(args.rounds):
                times["an open per clip"].append(read_all(clips, batched=False))
                times["an open per video and batch"].append(read_all(clips, batched=True))
            base = len(clips) / statistics.median(times["an open per clip"])
            for name, seconds in times.items():
                rates = [len(clips) / s for s in seconds]
                rows.append({
                    "preset": args.preset, "modality": modality, "reading": name,
                    "items/s per core": round(statistics.median(rates)),
                    "ms per item": round(1000 / statistics.median(rates), 2),
                    "vs an open per clip": round(statistics.median(rates) / base, 2),
                    "rounds": ", ".join(f"{x:.0f}" for x in rates),
                })  # fmt: skip
        report("eval_clips", rows, {"videos": len(manifest), "clips": args.clips, "rounds": args.rounds})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
