"""What data.crops_on=device and data.logmel_on=device buy: a loader worker's training items per second when it
leaves the scale jitter, crop and flip, and then also the log-mel, to the device, and what the device pays for them
per batch; and its feature-extraction items (a round's step 1, one centred clip per video) with and without the
log-mel on the device.

    python benchmarks/crops.py [--videos 4] [--items 300] [--rounds 4] [--batch 128] [--device cuda]
                               [--audio aac flac pcm]

Sources are generated as in benchmarks/prepare.py (640 x 360 camera-like H.264, 44.1 kHz stereo AAC), then
prepared as the docs advise for the paper preset (`xdc prepare --fps 8`: short side 128, a keyframe every 16
frames, 16 kHz mono). Items are the paper preset's training (and extraction) items as the trainer's loader makes
them (uint8 video), read in one process with one thread (what one worker makes per core), the same (video, seed)
draws for every setting, in alternating rounds (the median is reported). The device's cost is DeviceCrops and
DeviceLogMel (the extraction rows: DeviceLogMel alone) on a batch of those items, already on the device. With more
than one --audio codec, copies are also made with the others and read with the crops and log-mel on the device (the
CUDA defaults).
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
from prepare import make_sources
from xdc.config import load_config
from xdc.data.datasets import EvalClips, TrainClips, collate_clips
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest
from xdc.data.prepare import AUDIO_CODECS, PrepareOptions, prepare
from xdc.data.transforms import DeviceCrops, DeviceLogMel


# What the device does -> the dataset and its flags
SETTINGS = {
    "nothing": (TrainClips, {}),
    "crops": (TrainClips, {"device_crops": True}),
    "crops, log-mel": (TrainClips, {"device_crops": True, "device_logmel": True}),
    "extraction: nothing": (EvalClips, {}),
    "extraction: log-mel": (EvalClips, {"device_logmel": True}),
}


def keys(dataset: TrainClips | EvalClips, draws: list[tuple[int, int]]) -> list:
    """The draws as ``dataset``'s keys: (video, seed) for training items, the video's centred clip for extraction."""
    return draws if isinstance(dataset, TrainClips) else [i for i, _ in draws]


def items_per_s(dataset: TrainClips | EvalClips, draws: list[tuple[int, int]]) -> float:
    t = time.perf_counter()
    for key in keys(dataset, draws):
        if "failure" in dataset[key]:
            raise RuntimeError(f"a clip failed: {dataset[key]['failure']}")
    return len(draws) / (time.perf_counter() - t)


def device_ms(dataset: TrainClips | EvalClips, draws: list[tuple[int, int]], batch: int, device: torch.device
              ) -> float:  # fmt: skip
    """Milliseconds of what ``dataset`` leaves to the device (DeviceCrops, DeviceLogMel) on one batch already
    there."""
    draws = keys(dataset, draws)
    items = collate_clips([dataset[draws[i % len(draws)]] for i in range(batch)])
    steps = []
    if dataset.device_crops:
        crops = DeviceCrops(dataset.cfg.clip.crop, device)
        parts, grids = items["video"].to(device), items["video_grid"].to(device)
        steps.append(lambda: crops(parts, grids))
    if dataset.device_logmel:
        logmel, waves = DeviceLogMel(dataset.cfg, device), items["audio"].to(device)
        masks = items["audio_masks"].to(device) if "audio_masks" in items else None  # training clips, masks set
        steps.append(lambda: logmel(waves, masks))

    def work() -> None:
        for step in steps:
            step()

    for _ in range(3):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, reps = time.perf_counter(), 20 if device.type == "cuda" else 3
    for _ in range(reps):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - t) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=300, help="items read per setting and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--audio", nargs="+", default=["aac"], choices=list(AUDIO_CODECS),
                        help="copies' audio codecs (xdc prepare --audio): every setting on the first, the CUDA "
                             "defaults (crops and log-mel on the device) on the others")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # before minutes of preparing and reading
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    torch.set_num_threads(1)  # like one loader worker
    cfg = load_config(None, [], preset="paper").data
    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-crops-"))
    try:
        make_sources(tmp / "sources", args.videos, args.seconds, (640, 360), 25, 44100)
        first = args.audio[0]
        datasets, kb_per_s = {}, {}  # keyed by (what the device does, audio codec)
        for audio in args.audio:
            out = tmp / f"prepared-{audio}"
            prepare([str(tmp / "sources")], out, PrepareOptions(fps=cfg.clip.fps, audio=audio), workers=1)
            build_manifest([str(out)], out.with_suffix(".csv"), workers=1)
            manifest = Manifest.load(out.with_suffix(".csv"), require_audio=True)
            kb_per_s[audio] = sum(p.stat().st_size for p in out.glob("*.mp4")) / 1000 / manifest.durations.sum()
            for where, (kind, flags) in SETTINGS.items():
                if audio == first or where == "crops, log-mel":
                    datasets[where, audio] = kind(manifest, cfg, raw_video=True, **flags)
        rng = np.random.default_rng(0)
        draws = [(int(i), int(s)) for i, s in zip(rng.integers(0, len(manifest), args.items), range(args.items))]
        for dataset in datasets.values():
            dataset[keys(dataset, draws)[0]]  # codec initialisation
        rates = {key: [] for key in datasets}
        for r in range(args.rounds):
            for key, dataset in datasets.items():
                rates[key].append(items_per_s(dataset, draws))
            # as it goes: a run stopped at its limit (gpu_check.sh step crops) keeps the rounds it finished
            print(f"round {r + 1} items/s per core: " + ", ".join(f"{where} ({audio}) {rate[-1]:.0f}"
                                                             for (where, audio), rate in rates.items()), flush=True)
        ms = {}
        try:
            for where in ("crops", "crops, log-mel", "extraction: log-mel"):
                ms[where, first] = device_ms(datasets[where, first], draws, args.batch, device)
        except RuntimeError as e:  # the device's part failed: the rows of the workers still stand
            print(f"the device's part failed: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    median = {key: float(np.median(r)) for key, r in rates.items()}
    base = {kind: median[where, first] for where, (kind, flags) in SETTINGS.items() if not flags}
    # vs_workers: against the first codec with nothing on the device; vs_first_audio: against the first codec with
    # the same setting (BENCHMARKS.md's "vs AAC")
    rows = [{"on_device": where, "audio": audio, "items_per_s_per_core": median[where, audio],
             "vs_workers": median[where, audio] / base[SETTINGS[where][0]],
             "vs_first_audio": median[where, audio] / median[where, first], "rounds": ", ".join(f"{x:.0f}" for x in r),
             "kb_per_source_s": kb_per_s[audio], "bytes_per_item": datasets[where, audio].item_bytes(),
             "device_ms_per_batch": 0.0 if not SETTINGS[where][1] else ms.get((where, audio))}  # None: not measured
            for (where, audio), r in rates.items()]  # fmt: skip
    report("crops", rows, {"videos": args.videos, "items": args.items, "rounds": args.rounds, "batch": args.batch,
                           "device": str(device), "device_name": torch.cuda.get_device_name(device)
                           if device.type == "cuda" else "cpu",
                           "data": "640 x 360 generated sources, xdc prepare --fps 8"})  # fmt: skip


if __name__ == "__main__":
    run_script(main)
