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
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import report, run_script
from train_step import synthetic_manifest
from xdc.config import Config, load_config
from xdc.data.datasets import EvalClips
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


def measure(manifest: Manifest, cfg: Config, modality: str, args: argparse.Namespace) -> list[dict]:
    """One row per way of reading: every item of ``modality``'s evaluation clips, passes alternating."""
    clips = EvalClips(manifest, cfg.data, clips=args.clips, modalities=(modality,), raw_video=True,
                      device_logmel=True)  # fmt: skip
    read_all(clips, True)  # warm: page cache, converters
    times: dict[str, list[float]] = {"an open per clip": [], "an open per video and batch": []}
    for _ in range(args.rounds):
        times["an open per clip"].append(read_all(clips, batched=False))
        times["an open per video and batch"].append(read_all(clips, batched=True))
    base = len(clips) / statistics.median(times["an open per clip"])
    rows = []
    for name, seconds in times.items():
        rates = [len(clips) / s for s in seconds]
        rows.append({
            "preset": args.preset, "modality": modality, "reading": name,
            "items/s per core": round(statistics.median(rates)),
            "ms per item": round(1000 / statistics.median(rates), 2),
            "vs an open per clip": round(statistics.median(rates) / base, 2),
            "rounds": ", ".join(f"{x:.0f}" for x in rates),
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, default in (("--preset", "paper"), ("--videos", 100), ("--clips", 10), ("--rounds", 3)):
        ap.add_argument(option, default=default, type=type(default))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, preset=args.preset)
    with tempfile.TemporaryDirectory(prefix="xdc-bench-eval-clips-") as tmp:
        manifest = synthetic_manifest(cfg, Path(tmp), args.videos)
        videos = manifest.subset(manifest.has_video)
        videos = videos.subset(np.arange(len(videos)) < args.videos)
        rows = [row for modality in ("video", "audio") for row in measure(videos, cfg, modality, args)]
    report("eval_clips", rows, {"videos": len(videos), "clips": args.clips, "rounds": args.rounds})


if __name__ == "__main__":
    run_script(main)
