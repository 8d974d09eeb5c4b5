"""``xdc demo``: the built-in job a new user runs first.

For now it exercises the data layer end to end: write the synthetic dataset, index it, and stream one epoch of
training clips through the real loader. Pretraining and evaluation join it as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from xdc.config import Config, config_to_dict
from xdc.data.datasets import TrainClips, make_loader
from xdc.data.failures import FailureLog
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest
from xdc.data.synthetic import make_synthetic


def run_demo(out: Path, cfg: Config, videos: int = 96, classes: int = 8) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t = time.perf_counter()
    data = out / "synthetic"
    labels = make_synthetic(data, videos, classes, seed=cfg.seed, cfg=cfg.synthetic, workers=None)
    timings["make_synthetic_s"] = time.perf_counter() - t

    t = time.perf_counter()
    manifest_path = out / "manifest.csv"
    summary = build_manifest([str(data / "videos")], manifest_path, labels=labels)
    timings["index_s"] = time.perf_counter() - t
    print(summary.line())

    t = time.perf_counter()
    dataset = TrainClips(Manifest.load(manifest_path), cfg.data)
    failures = FailureLog(cfg.data.max_fail_fraction)
    shapes = {}
    for batch in make_loader(dataset, batch_size=16, workers=cfg.data.workers, shuffle=True, seed=cfg.seed):
        failures.update(batch)
        shapes = {k: list(batch[k].shape[1:]) for k in ("video", "audio") if k in batch}
    timings["epoch_s"] = time.perf_counter() - t
    failures.save(out / "skipped.csv")

    result = {
        "videos": len(dataset),
        "classes": list(dataset.manifest.classes),
        "clip_shapes": shapes,
        "failed_clips": len(failures.failures),
        "clips_per_s": len(dataset) / timings["epoch_s"],
        "timings": timings,
        "config": config_to_dict(cfg),
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    print(
        f"one epoch of {len(dataset)} clips ({result['clips_per_s']:.0f} clips/s): video {shapes.get('video')}, "
        f"audio log-mel {shapes.get('audio')}; {result['failed_clips']} failed. Wrote {out / 'demo.json'}"
    )
    return result
