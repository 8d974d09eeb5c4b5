"""Per-round time split (extract / cluster / train) and training clips/s of `xdc pretrain` at each preset.

    python benchmarks/pretrain.py [--presets tiny small paper] [--videos 64] [--method xdc]

Runs one round of one epoch per preset on the built-in synthetic dataset (64x64 clips), on this machine's CPU
(or GPU when present), and reads the timings from the run's log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import report, run_script
from xdc.config import load_config
from xdc.data.index import build_manifest
from xdc.data.synthetic import make_synthetic
from xdc.training.distributed import init_distributed
from xdc.training.pretrain import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--method", default="xdc")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    overrides = [f"train.method={args.method}", f"train.k={args.k}", "train.rounds=1", "train.epochs=1",
                 f"train.batch_size={args.batch}"]  # fmt: skip
    configs = {preset: load_config(None, overrides, preset=preset) for preset in args.presets}  # before the data

    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-pretrain-"))
    try:
        labels = make_synthetic(tmp / "data", args.videos, 8, seed=0, workers=None)
        build_manifest([str(tmp / "data" / "videos")], tmp / "manifest.csv", labels=labels)
        rows = []
        for preset, cfg in configs.items():
            out = tmp / f"run-{preset}"
            t = time.perf_counter()
            pretrain(cfg, tmp / "manifest.csv", out, resume=False, ctx=init_distributed())
            total = time.perf_counter() - t
            rounds = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
            r = next(x for x in rounds if x["kind"] == "round")
            clips = args.videos
            rows.append({
                "preset": preset, "method": args.method, "clips": clips, "batch": args.batch,
                "extract_s": r["extract_s"], "cluster_s": r["cluster_s"], "train_s": r["train_s"],
                "train_clips_per_s": clips / r["train_s"], "extract_clips_per_s": clips / r["extract_s"],
                "cluster_share": r["cluster_s"] / (r["extract_s"] + r["cluster_s"] + r["train_s"]), "total_s": total,
            })  # fmt: skip
        report("pretrain", rows, {"videos": args.videos, "k": args.k})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
