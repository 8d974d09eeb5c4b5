"""A run's encoders.pt as an evaluation reads it: the load (``checkpoint.read``), the digest of its bytes that kept
progress carries (``checkpoint.file_digest``), and both from one open (``checkpoint.read_hashed``, which
``xdc extract`` and ``xdc eval finetune`` use since 2026-12-03; until then they read the file 3 to 7 times).

    .venv/bin/python benchmarks/encoder_reads.py [--preset paper] [--repeats 5] [--folder DIR]

The encoders are the preset's video and audio encoders as built (their weights do not change the timings), saved
as pretraining saves them, in --folder (default: a temporary folder; give one on a network filesystem to time
that). Each read is timed --repeats times after one untimed read; the median and the fastest. The file is in the
page cache from the second read on: a first read from a network filesystem costs more.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import report, run_script
from xdc.config import load_config
from xdc.models.encoders import build_encoder
from xdc.training import checkpoint


def timed(what: str, read: Callable[[], object], repeats: int) -> dict:
    read()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        seconds.append(time.perf_counter() - start)
    return {"read": what, "median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.folder is not None and not args.folder.is_dir():
        parser.error(f"--folder {args.folder}: not a folder")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1")
    cfg = load_config(preset=args.preset)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "encoders.pt"
        modalities = {"video": "video", "audio": "audio"}
        checkpoint.save_atomic({"method": "xdc", "modalities": modalities,
                                "encoders": {m: build_encoder(m, cfg.model).state_dict() for m in modalities}}, path)
        rows = [timed("load (checkpoint.read)", lambda: checkpoint.read(path, "encoders"), args.repeats),
                timed("digest (file_digest)", lambda: checkpoint.file_digest(path), args.repeats),
                timed("load + digest, one open (read_hashed)", lambda: checkpoint.read_hashed(path, "encoders"),
                      args.repeats)]  # fmt: skip
        size = path.stat().st_size
    report("encoder_reads", rows, {"preset": args.preset, "file_mb": round(size / 1e6, 1),
                                   "torch_threads": torch.get_num_threads()})  # fmt: skip


if __name__ == "__main__":
    run_script(main)
