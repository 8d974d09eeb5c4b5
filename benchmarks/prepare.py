"""What `xdc prepare` buys: training-loader clips/s per core on original files vs prepared copies, and its cost.

    python benchmarks/prepare.py [--videos 3] [--seconds 10] [--sizes 640x360 1280x720] [--gops 8 16 32 64] [--clips 50]
                                 [--fps-caps 8] [--rounds 4]
    python benchmarks/prepare.py --data ../shared/data/grid-s1/videos

Sources are generated to look like user uploads (a camera pan over a textured scene with moving objects,
H.264 with the encoder's default keyframe interval of 250 frames, 44.1 kHz stereo AAC), or taken from --data.
Each item is what TrainClips serves with the default clip settings (8 frames at 8 fps, short side 128, 112
crop, 1 s of 16 kHz audio as a 40 x 100 log-mel), in one process with one thread: clips/s per core. The same
(video, seed) draws are read from every copy. Prepare runs with one worker process, once per --gops value
(on a large --data folder, give one value).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import report, run_script
from xdc.config import DataConfig
from xdc.data.datasets import TrainClips
from xdc.data.encode import write_av
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest
from xdc.data.prepare import PrepareOptions, prepare


def scene_video(seed: int, seconds: float, fps: int, width: int, height: int) -> np.ndarray:
    """A slow pan over a smooth random texture with film grain and two moving discs: compresses and decodes
    like camera footage, unlike pure noise (incompressible) or flat colour (free)."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * fps)
    tex_h, tex_w = height + frames, width + 2 * frames
    spectrum = np.fft.rfft2(rng.standard_normal((tex_h, tex_w)))
    fy, fx = np.fft.fftfreq(tex_h)[:, None], np.fft.rfftfreq(tex_w)[None, :]
    texture = np.fft.irfft2(spectrum / (1e-3 + np.hypot(fy, fx)) ** 1.2, s=(tex_h, tex_w))
    texture = (texture - texture.min()) / np.ptp(texture)
    colour = rng.uniform(0.4, 1.0, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        view = texture[i : i + height, 2 * i : 2 * i + width, None] * colour * 220
        for k in range(2):
            cx = width * (0.5 + 0.35 * np.sin(2 * np.pi * (i / fps) * (0.3 + 0.2 * k) + k))
            cy = height * (0.5 + 0.3 * np.cos(2 * np.pi * (i / fps) * 0.25 + k))
            view = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 < (height / 8) ** 2)[..., None], 40 + 150 * k, view)
        grain = rng.normal(0, 4, (height, width, 1))
        out[i] = np.clip(view + grain, 0, 255).astype(np.uint8)
    return out


def scene_audio(seed: int, seconds: float, rate: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    tone = 0.2 * np.sin(2 * np.pi * rng.uniform(200, 800) * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    noise = 0.05 * rng.standard_normal((2, len(t)))
    return (tone + noise).astype(np.float32)


def make_sources(folder: Path, videos: int, seconds: float, size: tuple[int, int], fps: int, rate: int) -> None:
    folder.mkdir(parents=True)
    for i in range(videos):
        frames = scene_video(i, seconds, fps, *size)
        write_av(folder / f"{i:03d}.mp4", frames, fps, scene_audio(i, seconds, rate), rate, crf=23)


def clips_per_s(manifest_path: Path, draws: list[tuple[int, int]]) -> float:
    dataset = TrainClips(Manifest.load(manifest_path, require_audio=True), DataConfig())
    dataset[draws[0]]  # warm-up: the first open pays for codec initialisation
    t = time.perf_counter()
    for key in draws:
        item = dataset[key]
        if "failure" in item:
            raise RuntimeError(f"clip failed: {item['failure']}")
    return len(draws) / (time.perf_counter() - t)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.mp4"))


def measure(sources: Path, tmp: Path, gops: list[int], clips: int, fps_caps: list[float], rounds: int) -> list[dict]:
    """Rows for the originals in ``sources`` and for a prepared copy at each keyframe interval, at the source's
    frame rate, then at each of ``fps_caps``. The prepared copies are read in ``rounds`` alternating rounds (the
    median is reported): a machine whose speed drifts by 10% over minutes would otherwise favour one copy."""
    summary = build_manifest([str(sources)], tmp / "sources.csv", workers=1)
    manifest = Manifest.load(tmp / "sources.csv", require_audio=True)
    source_seconds = float(manifest.durations.sum())
    rng = np.random.default_rng(0)
    draws = [(int(i), int(s)) for i, s in zip(rng.integers(0, len(manifest), clips), rng.integers(0, 2**62, clips))]
    original = clips_per_s(tmp / "sources.csv", draws)
    rows = [{"files": "original", "prepare_s_per_source_s": 0.0,
             "kb_per_source_s": folder_bytes(sources) / 1000 / source_seconds, "clips_per_s": original,
             "speedup": 1.0}]  # fmt: skip
    copies = []
    for fps in [None, *fps_caps]:
        for gop in gops:
            name = f"gop {gop}" + (f", fps {fps:g}" if fps else "")
            out = tmp / name.replace(" ", "").replace(",", "-")
            t = time.perf_counter()
            result = prepare([str(sources)], out, PrepareOptions(gop=gop, fps=fps), workers=1)
            cost = time.perf_counter() - t
            if result.prepared != summary.usable:
                raise RuntimeError(f"prepare left files out: {result.problems}")
            build_manifest([str(out)], out.with_suffix(".csv"), workers=1)
            copies.append((name, out, cost))
    rates = [[clips_per_s(out.with_suffix(".csv"), draws) for _, out, _ in copies] for _ in range(rounds)]
    for i, (name, out, cost) in enumerate(copies):
        rate = float(np.median([r[i] for r in rates]))
        rows.append({"files": f"prepared, {name}", "prepare_s_per_source_s": cost / source_seconds,
                     "kb_per_source_s": folder_bytes(out) / 1000 / source_seconds, "clips_per_s": rate,
                     "speedup": rate / original, "rounds": ", ".join(f"{r[i]:.0f}" for r in rates)})  # fmt: skip
    return rows


def frame_size(text: str) -> tuple[int, int]:
    """--sizes' WIDTHxHEIGHT, e.g. 640x360."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 640x360)")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder of media files to use instead of generated ones")
    parser.add_argument("--videos", type=int, default=3, help="generated sources per size")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", nargs="+", type=frame_size, default=[(640, 360), (1280, 720)],
                        help="WIDTHxHEIGHT of generated sources")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--rate", type=int, default=44100, help="audio sample rate of generated sources")
    parser.add_argument("--gops", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--clips", type=int, default=50, help="clips read from each copy")
    parser.add_argument("--fps-caps", type=float, nargs="*", default=[], help="also prepare at these frame rates")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds over the prepared copies (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # like one loader worker: one clip at a time on one core

    rows = []
    datasets = [(str(args.data), None)] if args.data is not None else [(f"{w}x{h}", (w, h)) for w, h in args.sizes]
    for name, size in datasets:
        tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-prepare-"))
        try:
            if args.data is not None:
                sources = args.data.resolve()
            else:
                sources = tmp / "sources"
                make_sources(sources, args.videos, args.seconds, size, args.fps, args.rate)
            rows += [{"sources": name, **row} for row in measure(sources, tmp, args.gops, args.clips, args.fps_caps,
                                                                   args.rounds)]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    generated = (f"{args.videos} files of {args.seconds:g} s per size, H.264 at {args.fps} fps with the encoder's "
                 f"default GOP (250 frames), {args.rate} Hz stereo AAC")  # fmt: skip
    report("prepare", rows, {"data": str(args.data) if args.data else generated, "clips": args.clips,
                             "rounds": args.rounds,
                             "clip": "TrainClips, default DataConfig: 8 frames at 8 fps, short side 128, crop 112, "
                                     "1 s log-mel; one process, one thread"})  # fmt: skip


if __name__ == "__main__":
    run_script(main)
