"""Why does XDC not beat SDC or scratch on GRID at CPU size? One `xdc benchmark grid` per setting, varying one
thing at a time (crop box, training length and learning rate, clip length, k), with the methods that answer
the question. Prints one table over all settings and writes results/grid_study.json.

    python benchmarks/grid_study.py --out /tmp/gridstudy [--only mouth,mouth-long]

Needs ../shared/data/grid-s1. Finished runs are reused when the script is run again with the same --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import SHARED_DATA, report

from xdc.grid_benchmark import grid_benchmark

METHODS = ("scratch", "sdc-video", "sdc-audio", "xdc")
# GRID speaker 1's mouth in the 360 x 288 frame (left, top, right, bottom as fractions), read off a few frames.
MOUTH = "data.clip.crop_box=[0.28,0.6,0.62,0.88]"
BASE = ("train.rounds=2", "train.k=16")
LONG = ("train.rounds=8", "train.k=16", "train.lr=0.01")

SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = {
    # name: (overrides on the tiny preset, methods, extra XDC k values)
    "base": (BASE, METHODS, ()),
    "mouth": ((*BASE, MOUTH), METHODS, ()),
    "mouth-long": ((*LONG, MOUTH), METHODS, ()),
    "mouth-long-8f": ((*LONG, MOUTH, "data.clip.frames=8", "data.clip.fps=8"), METHODS, ()),
    "mouth-long-k": ((*LONG, MOUTH), ("xdc",), (4, 64)),
}
COLUMNS = ("video/command", "video/color", "video/digit", "audio/command", "audio/color", "audio/digit")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", help="comma-separated setting names (default: all): " + ", ".join(SETTINGS))
    args = parser.parse_args()
    data = SHARED_DATA / "grid-s1"
    if not data.is_dir():
        sys.exit(f"needs {data} (the shared GRID data); not found")
    names = args.only.split(",") if args.only else list(SETTINGS)
    rows = []
    for name in names:
        overrides, methods, ks = SETTINGS[name]
        t = time.perf_counter()
        result = grid_benchmark(data, args.out / name, preset="tiny", methods=methods, ks=ks, overrides=overrides)
        print(f"{name}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        for row in result["rows"]:
            rows.append({"setting": name, "method": row["method"], **{c: row[c] for c in COLUMNS},
                         "pretrain_s": row["pretrain_s"]})  # fmt: skip
    report("grid_study", rows, {"settings": {n: list(SETTINGS[n][0]) for n in names}, "preset": "tiny"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
