"""Clip decoding throughput, index rate and loader memory.

(a) xdc's clip reader + log-mel, (b) bare PyAV decoding exactly the same frames and audio samples (the limit
for this decoder), (c) decoding the whole file, then slicing the window. Plus ``xdc index`` files/s (fresh and
cached) and the DataLoader's peak memory (PSS of the main process and its workers) over one epoch.

    python benchmarks/decode.py [--data ../shared/data/grid-s1] [--clips 300] [--workers 2 8]

--data DIR reads DIR/videos (GRID's layout). Without it: ../shared/data/grid-s1 when present, else generated
media, which it says (BENCHMARKS.md's figures are GRID's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import av
import numpy as np
import torch

from common import SHARED_DATA, report, run_script
from xdc.config import DataConfig, SyntheticConfig
from xdc.data.audio import LogMel
from xdc.data.datasets import TrainClips, make_loader
from xdc.data.decode import read_clip
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest
from xdc.data.synthetic import make_synthetic


def bare_pyav(path: str, start: float, frames: int, fps: float, short_side: int, seconds: float) -> tuple:
    """The same frames (by timestamp) and audio samples as read_clip, with nothing but PyAV calls."""
    with av.open(path) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        vs.codec_context.thread_count = 1
        if start > 0:
            c.seek(int(start / vs.time_base), stream=vs, backward=True)
        targets = start + np.arange(frames) / fps
        images, chunks, prev = [], [], None
        end = start + seconds
        video_done = audio_done = False
        for packet in c.demux(vs, aus):
            if packet.stream is vs and not video_done:
                for f in packet.decode():
                    while len(images) < frames and f.time > targets[len(images)] + 1e-3:
                        src = prev if prev is not None else f
                        scale = short_side / min(src.width, src.height)
                        images.append(
                            src.reformat(round(src.width * scale), round(src.height * scale), "rgb24").to_ndarray()
                        )
                    prev = f
                    video_done = len(images) == frames
            elif packet.stream is aus and not audio_done:
                for f in packet.decode():
                    if f.time + f.samples / f.sample_rate < start:
                        continue
                    chunks.append(f.to_ndarray())
                    audio_done = f.time + f.samples / f.sample_rate >= end
            if video_done and audio_done:
                break
        return images, chunks


def whole_file(path: str, start: float, frames: int, fps: float, short_side: int, seconds: float) -> tuple:
    """Decode and convert every frame and audio sample of the file, then slice the window."""
    with av.open(path) as c:
        vs = c.streams.video[0]
        vs.codec_context.thread_count = 1
        decoded = []
        for f in c.decode(video=0):
            scale = short_side / min(f.width, f.height)
            decoded.append((f.time, f.reformat(round(f.width * scale), round(f.height * scale), "rgb24").to_ndarray()))
    with av.open(path) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
        rate = c.streams.audio[0].rate
    times = np.array([t for t, _ in decoded])
    picks = [max(0, np.searchsorted(times, start + i / fps + 1e-3) - 1) for i in range(frames)]
    images = [decoded[p][1] for p in picks]
    return images, audio[:, round(start * rate) : round((start + seconds) * rate)]


def time_method(name: str, fn, clips: list[tuple[str, float]]) -> dict:
    fn(*clips[0])  # warm-up: first open pays for codec initialisation
    t = time.perf_counter()
    for path, start in clips:
        fn(path, start)
    elapsed = time.perf_counter() - t
    return {"method": name, "clips": len(clips), "seconds": elapsed, "clips_per_s": len(clips) / elapsed}


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(pid: int) -> float:
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return sum(pss_kib(p) for p in pids) / 1024


def loader_memory(manifest: Manifest, cfg: DataConfig, workers: int, batch: int) -> dict:
    """Peak and late-epoch PSS of this process and its loader workers over one epoch."""
    samples: list[float] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(tree_pss_mib(os.getpid()))
            time.sleep(0.1)

    dataset = TrainClips(manifest, cfg)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    n = 0
    for b in make_loader(dataset, batch, workers, shuffle=True):
        n += b["size"]
    elapsed = time.perf_counter() - t
    stop.set()
    thread.join()
    quarter = max(1, len(samples) // 4)
    return {
        "workers": workers,
        "clips": n,
        "clips_per_s": n / elapsed,
        "pss_first_quarter_mib": max(samples[:quarter]),
        "pss_last_quarter_mib": max(samples[-quarter:]),
        "pss_peak_mib": max(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder with the videos in DIR/videos (default: "
                        f"{SHARED_DATA / 'grid-s1'} where present, else generated media)")
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    if args.clips < 1:
        parser.error(f"--clips {args.clips}: at least 1")
    # an explicit folder without videos/ (e.g. grid-s1/videos itself) would silently measure generated media
    if args.data is not None and not (args.data / "videos").is_dir():
        parser.error(f"--data {args.data}: no videos/ folder in it (give the folder above videos/, as grid-s1)")
    torch.set_num_threads(1)  # like a loader worker: one clip per core
    # 8 workers on 2 cores is deliberate here: it shows that memory stays flat as workers multiply.
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-"))
    try:
        data = args.data or SHARED_DATA / "grid-s1"
        if (data / "videos").is_dir():
            videos, source = data / "videos", str(data)
        else:
            print(f"{data / 'videos'} not found: measuring generated media instead (not comparable with GRID's)")
            videos, source = tmp / "synthetic", "generated (xdc make-synthetic, 64x64)"
            make_synthetic(videos, 200, 8, seed=0, cfg=SyntheticConfig(), workers=None)
        print(f"data: {source}")

        manifest_path = tmp / "manifest.csv"
        t = time.perf_counter()
        summary = build_manifest([str(videos)], manifest_path)
        fresh = time.perf_counter() - t
        t = time.perf_counter()
        build_manifest([str(videos)], manifest_path)
        cached = time.perf_counter() - t
        index_row = {"files": summary.files, "fresh_s": fresh, "fresh_files_per_s": summary.files / fresh,
                     "cached_s": cached, "cached_files_per_s": summary.files / cached}  # fmt: skip

        cfg = DataConfig()
        cfg.clip.frames, cfg.clip.fps, cfg.clip.decode_short_side = 8, 8.0, 112
        manifest = Manifest.load(manifest_path, require_audio=True)
        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(manifest), args.clips)
        clips = [(manifest.path(i), float(rng.uniform(0, max(0.0, manifest.durations[i] - 1.0)))) for i in picks]
        logmel = LogMel(cfg.mel, cfg.clip.sample_rate)
        spec = cfg.clip

        def reader(path, start):
            clip = read_clip(path, start, spec)
            return logmel(torch.from_numpy(clip.audio))

        rows = [
            time_method("(a) read_clip + log-mel", reader, clips),
            time_method("(b) bare PyAV, same frames+samples", lambda p, s: bare_pyav(p, s, 8, 8.0, 112, 1.0), clips),
            time_method("(c) whole file, then slice", lambda p, s: whole_file(p, s, 8, 8.0, 112, 1.0), clips),
        ]
        ratio = rows[0]["clips_per_s"] / rows[1]["clips_per_s"]
        report("decode", rows, {"data": source, "a_over_b": ratio, "index": index_row})
        print(f"(a)/(b) = {ratio:.2f} (bar: >= 0.8)")
        report("index", [index_row])

        torch.set_num_threads(os.cpu_count() or 1)
        memory = [loader_memory(manifest, cfg, w, args.batch) for w in args.workers]
        report("loader_memory", memory, {"data": source, "videos": len(manifest)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_script(main)
