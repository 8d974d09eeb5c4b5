"""How much a loader worker's items per core depend on the CPU's SIMD extensions: FFmpeg (PyAV's bundled build)
picks its decoding and conversion kernels by the extensions the CPU reports, and a virtual machine's CPU model may
hide some. Each level is measured in its own process with FFmpeg limited to it (av_force_cpu_flags, before any
decoder is opened).

    python benchmarks/simd.py [--videos 4] [--items 300] [--rounds 3]

Items are the paper preset's training items as the trainer's loader makes them on CUDA (crops and log-mel left
to the device, uint8 video), from copies made as in benchmarks/crops.py (640 x 360 H.264 sources, `xdc prepare
--fps 8`), read in one process with one thread, the same (video, seed) draws at every level, in alternating
rounds (the median is reported).
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from common import child_output, report, run_script

# FFmpeg's x86 flags (libavutil/cpu.h); each level keeps those below it
_SSE2 = 0x1 | 0x2 | 0x8 | 0x10 | 0x1000  # MMX, MMXEXT, SSE, SSE2, CMOV
_SSE42 = _SSE2 | 0x40 | 0x80 | 0x100 | 0x200  # SSE3, SSSE3, SSE4.1, SSE4.2
_AVX2 = _SSE42 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x40000  # AVX, AVX2, FMA3, BMI1, BMI2
LEVELS = {"as detected": None, "up to AVX2": _AVX2, "up to SSE4.2": _SSE42, "SSE2 only": _SSE2}


def _avutil() -> ctypes.CDLL:
    """The libavutil that PyAV loaded (a wheel bundles its own, under av.libs or av/.dylibs)."""
    root = Path(av.__file__).parent
    paths = [*root.parent.glob("av.libs/libavutil*"), *root.glob(".dylibs/libavutil*")]
    if not paths:
        raise SystemExit("libavutil of PyAV not found: this benchmark needs PyAV's wheel")
    return ctypes.CDLL(str(paths[0]))


def child(level: str, manifest_path: str, items: int) -> None:
    """Print the items/s of one level (run in its own process: FFmpeg's flags hold for the process)."""
    import torch

    from xdc.config import load_config
    from xdc.data.datasets import TrainClips
    from xdc.data.manifest import Manifest

    util = _avutil()
    detected = util.av_get_cpu_flags()
    if LEVELS[level] is not None:
        util.av_force_cpu_flags(LEVELS[level] & detected)
    torch.set_num_threads(1)  # like one loader worker
    manifest = Manifest.load(manifest_path, require_audio=True)
    dataset = TrainClips(manifest, load_config(None, [], preset="paper").data, raw_video=True, device_crops=True,
                         device_logmel=True)  # fmt: skip
    rng = np.random.default_rng(0)
    draws = [(int(i), s) for s, i in enumerate(rng.integers(0, len(manifest), items))]
    rates = []
    for _ in range(2):  # the first pass also warms the caches of the files and the allocator: the second counts
        t = time.perf_counter()
        for draw in draws:
            if "failure" in dataset[draw]:
                raise SystemExit(f"a clip failed: {dataset[draw]['failure']}")
        rates.append(len(draws) / (time.perf_counter() - t))
    print(f"{rates[-1]} {util.av_get_cpu_flags()} {detected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=300, help="items read per level and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("LEVEL", "MANIFEST", "ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        parser.error("the SIMD levels are FFmpeg's x86 flags: this benchmark runs on x86-64 only")
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))

    from prepare import make_sources
    from xdc.data.index import build_manifest
    from xdc.data.prepare import PrepareOptions, prepare

    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-simd-"))
    try:
        make_sources(tmp / "sources", args.videos, args.seconds, (640, 360), 25, 44100)
        prepare([str(tmp / "sources")], tmp / "prepared", PrepareOptions(fps=8), workers=1)
        manifest = tmp / "prepared.csv"
        build_manifest([str(tmp / "prepared")], manifest, workers=1)
        rates: dict[str, list[float]] = {level: [] for level in LEVELS}
        flags: dict[str, str] = {}
        for _ in range(args.rounds):
            for level in LEVELS:
                out = child_output(f"level {level}", [sys.executable, __file__, "--child", level, str(manifest),
                                                      str(args.items)]).split()  # fmt: skip
                rates[level].append(float(out[0]))
                flags[level], detected = f"{int(out[1]):#x}", f"{int(out[2]):#x}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = float(np.median(rates["as detected"]))
    rows = [{"simd": level, "ffmpeg_flags": flags[level], "items_per_s_per_core": float(np.median(r)),
             "vs_detected": float(np.median(r)) / base, "rounds": ", ".join(f"{x:.0f}" for x in r)}
            for level, r in rates.items()]  # fmt: skip
    report("simd", rows, {"videos": args.videos, "items": args.items, "rounds": args.rounds,
                          "detected_flags": detected, "cpu": _cpu_model(),
                          "data": "640 x 360 generated sources, xdc prepare --fps 8"})  # fmt: skip


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    run_script(main)
