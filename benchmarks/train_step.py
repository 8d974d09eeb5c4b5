"""Clips/s of one XDC training step, model-only and end-to-end from real files, with model FLOPs and MFU.

    python benchmarks/train_step.py                                   # paper preset, bf16 on a GPU
    python benchmarks/train_step.py --preset tiny --device cpu --steps 10
    python benchmarks/train_step.py --preset paper --channels-last --compile --batch 128 --data DIR
    python benchmarks/train_step.py --preset paper --channels-last --compile --profile profile.txt
    python benchmarks/train_step.py --preset paper --channels-last --compile --pad-widths 8
    python benchmarks/train_step.py --preset paper --channels-last --compile-mode max-autotune-no-cudagraphs

The step is the Pretrainer's own (xdc.training.pretrain): both encoders, the two cross-modal heads (k clusters),
cross-entropy against pseudo-labels, backward, and the SGD steps of encoders and heads, under the configured
precision, memory layout and torch.compile. Three measurements:
  model-only   random clips already on the device: the compute ceiling; FLOPs of a step (forward + backward,
               torch.utils.flop_counter) give TFLOP/s and MFU against the device's dense bf16 peak;
  end-to-end   the same step fed by the training loader (TrainClips over real video files through make_loader,
               the cluster-balanced sampler, --workers processes; page-locked batches on CUDA);
  loader only  the same loader with no model (batches copied to the device): what the files can supply;
               --loader-steps batches (it is cheap: more than the model steps, for a steadier rate);
  one process  the loader's items read one after another in this process with one thread, no loader: what
               one core makes, so that loader only / (workers x this) shows what the loader's processes cost.
--pad-widths M widens the video encoder's middle widths to multiples of M (at width 64, 45, 230, 460 and 921 are
not multiples of 8; cuDNN pads them itself in every step) with channels that stay exactly zero: zero filters in,
zero BatchNorm shift, zero weights out. The same function up to float rounding; MFU counts the unpadded FLOPs.
Without --data, a synthetic set (xdc make-synthetic) is written to a temporary folder with frames whose short
side is the preset's decode size, at 25 fps (decoding cost grows with the source frame rate), then transcoded by
xdc prepare as the docs advise for training (a keyframe every 16 frames, 16 kHz mono); --unprepared reads the
make-synthetic files themselves (one keyframe per file, 44.1 kHz stereo: about half the clips/s per core).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import report
from xdc.config import Config, SyntheticConfig, load_config
from xdc.data.datasets import TrainClips
from xdc.data.index import build_manifest
from xdc.data.prepare import prepare
from xdc.data.synthetic import make_synthetic
from xdc.errors import UserError
from xdc.training.distributed import Dist
from xdc.training.flops import count_flops, mfu, peak_tflops
from xdc.training.pretrain import Pretrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", help="torch.compile's mode, e.g. max-autotune-no-cudagraphs (implies "
                        "--compile; Inductor's Triton templates then compete with cuDNN for the convolutions)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the first one compiles)")
    parser.add_argument("--loader-steps", type=int, default=30,
                        help="timed batches of the loader-only measurement (cheap: no model)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' dense bf16)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="default: CPU cores")
    parser.add_argument("--data", type=Path, help="folder of video files (default: a generated synthetic set)")
    parser.add_argument("--unprepared", action="store_true", help="the synthetic set without xdc prepare")
    parser.add_argument("--model-only", action="store_true", help="skip the measurements that read files")
    parser.add_argument("--pad-widths", type=int, default=0, metavar="M",
                        help="widen the video encoder's middle widths to multiples of M with zero channels")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also profile 5 model-only steps: the ops by device time, as a table appended to FILE")
    args = parser.parse_args()
    args.compile = args.compile or bool(args.compile_mode)
    if min(args.warmup, args.steps, args.loader_steps) < 1:
        parser.error("--warmup, --steps and --loader-steps must be at least 1")

    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = load_config(None, [
        f"train.k={args.k}", f"train.batch_size={args.batch}", f"train.precision={precision}",
        f"train.channels_last={str(args.channels_last).lower()}", f"train.compile={str(args.compile).lower()}",
        f"data.workers={args.workers}",
        f"train.epoch_size={(args.warmup + max(args.steps, args.loader_steps)) * args.batch}",
    ], preset=args.preset)  # fmt: skip
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(device_name) if precision == "bf16" else None)

    tmp = Path(tempfile.mkdtemp(prefix="xdc-bench-train-step-"))
    try:
        manifest = tmp / "manifest.csv"
        data = args.data or synthetic_set(cfg, tmp / "data", args.k, prepared=not args.unprepared)
        build_manifest([str(data)], manifest)
        trainer = Pretrainer(cfg, manifest, tmp / "run", Dist(device=device))
        n = len(trainer.videos)
        # Balanced pseudo-labels (all k clusters occupied), as after a round's clustering.
        trainer.progress.labels = {s: np.random.default_rng(i).permutation(n) % args.k
                                   for i, s in enumerate(trainer.method.label_sets)}  # fmt: skip
        trainer._new_heads()
        trainer.train_model.train()
        random_batch = random_clips(trainer, args.batch, device)
        flops = count_flops(lambda: trainer._step(trainer.model, random_batch))  # uncompiled: the counter sees ops
        if args.pad_widths:
            videos = [trainer.encoders[e] for e, m in trainer.method.encoders.items() if m == "video"]
            padded = sum(pad_middle_widths(encoder, args.pad_widths) for encoder in videos)
            print(f"padded the middle widths of {padded} convolution pairs to multiples of {args.pad_widths}")
            for encoder in videos if trainer.channels_last else []:
                encoder.to(memory_format=torch.channels_last_3d)  # the new weights too, as the trainer does
            trainer.optimizer = trainer._sgd(trainer.encoders.parameters())  # the new parameters
        if args.compile_mode:  # the trainer's own wrapper compiles in the default mode; it has not run yet
            trainer.train_model = torch.compile(trainer.model, mode=args.compile_mode)

        def step(batch: dict) -> None:
            trainer._step(trainer.train_model, batch)

        first_s, model_s, model_clips = timed(step, itertools.repeat(random_batch), args.warmup, args.steps, device)

        def row(measure: str, seconds: float, clips: int, steps: int) -> dict:
            r = {"measure": measure, "clips_per_s": clips / seconds, "ms_per_step": 1000 * seconds / steps,
                 "vs_model_only": clips / seconds / (model_clips / model_s)}  # fmt: skip
            if measure in ("model-only", "end-to-end"):
                r["tflop_per_s"] = flops * steps / seconds / 1e12
                if peak:
                    r["mfu_percent"] = 100 * mfu(flops, seconds / steps, peak)
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
            return r  # printed as it comes: a run stopped later keeps what it measured in its log

        rows = [row("model-only", model_s, model_clips, args.steps)]
        if args.profile:
            profile(step, random_batch, device, args.profile, f"{args.preset}, batch {args.batch}, {precision}, "
                    f"channels_last={args.channels_last}, compile={args.compile_mode or args.compile}, "
                    f"pad_widths={args.pad_widths}")
        failed = {}
        fed = [("end-to-end", step, args.steps), ("loader only", trainer._inputs, args.loader_steps)]
        for measure, run, steps in [] if args.model_only else fed:
            try:
                seconds, clips = timed(run, iter(trainer._train_loader()), args.warmup, steps, device)[1:]
                rows.append(row(measure, seconds, clips, steps))
            except RuntimeError as e:  # e.g. a loader worker killed (too little shared memory): keep the rest
                print(f"{measure} failed: {e}")
                failed[measure] = str(e)
        if not args.model_only:
            rows.append(row("one process", *read_items(trainer.train_set, n, 2 * args.batch), 2))  # 2 batches
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    setting = {
        "preset": args.preset, "device": str(device), "device_name": device_name, "precision": precision,
        "channels_last": args.channels_last, "compile": args.compile, "compile_mode": args.compile_mode,
        "pad_widths": args.pad_widths, "batch": args.batch, "k": args.k, "steps": args.steps,
        "loader_steps": args.loader_steps, "warmup": args.warmup, "workers": args.workers, "videos": n,
        "data": str(args.data) if args.data else "synthetic" if args.unprepared else "synthetic, prepared",
        "gflop_per_step": flops / 1e9,
        "first_step_s": first_s, "peak_tflops": peak, "load_average_1m": os.getloadavg()[0], "failed": failed,
    }  # fmt: skip
    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items()))
    if peak is None:
        print("MFU: no peak known for this device and precision (pass --peak-tflops)")
    report("train_step", rows, setting)


def synthetic_set(cfg: Config, out: Path, videos: int, prepared: bool = True) -> Path:
    """At least ``videos`` clips whose frames have the preset's decode size (4:3), twice a clip's span long,
    transcoded by ``xdc prepare`` (its defaults) unless ``prepared`` is false."""
    short = cfg.data.clip.decode_short_side or cfg.data.clip.crop
    span = max(cfg.data.clip.seconds, cfg.data.clip.audio_span)
    synthetic = SyntheticConfig(width=2 * round(short * 2 / 3), height=short, fps=25, seconds=2 * span)
    make_synthetic(out, max(videos, 64), 8, seed=0, cfg=synthetic)
    if not prepared:
        return out / "videos"
    summary = prepare([str(out / "videos")], out / "prepared")
    if summary.problems:
        first = summary.problems[0]
        raise UserError(f"xdc prepare failed on the synthetic set: {first['source']}: {first['reason']}")
    return out / "prepared"


def pad_middle_widths(encoder: nn.Module, multiple: int) -> int:
    """Widen every conv -> BatchNorm -> ReLU -> conv chain whose middle width is not a multiple of ``multiple`` (the
    (2+1)D convs and the stem) with channels that are zero and stay zero under SGD: their filters and BatchNorm
    shift are zero, so they normalise to 0 and ReLU passes 0 with zero gradient, and the next conv's weights on
    them are zero and receive none. Returns the number of chains widened."""
    widened = 0
    for chain in [m for m in encoder.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(chain) - 3):
            first, norm, relu, second = (chain[i + j] for j in range(4))
            kinds = (nn.Conv3d, nn.BatchNorm3d, nn.ReLU, nn.Conv3d)
            if not all(isinstance(m, kind) for m, kind in zip((first, norm, relu, second), kinds)):
                continue
            mid = first.out_channels
            wide = -(-mid // multiple) * multiple
            if wide == mid:
                continue
            chain[i] = _widened_conv(first, first.in_channels, wide)
            chain[i + 1] = _widened_norm(norm, wide)
            chain[i + 3] = _widened_conv(second, wide, second.out_channels)
            widened += 1
    return widened


def _widened_conv(conv: nn.Conv3d, cin: int, cout: int) -> nn.Conv3d:
    wide = nn.Conv3d(cin, cout, conv.kernel_size, conv.stride, conv.padding, bias=False)
    wide = wide.to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[: conv.out_channels, : conv.in_channels] = conv.weight
    return wide


def _widened_norm(norm: nn.BatchNorm3d, width: int) -> nn.BatchNorm3d:
    wide = nn.BatchNorm3d(width, eps=norm.eps, momentum=norm.momentum).to(norm.weight.device)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(wide, name)[: norm.num_features] = getattr(norm, name)
    return wide  # new channels: scale 1, shift 0, running mean 0 and variance 1


def random_clips(trainer: Pretrainer, batch: int, device: torch.device) -> dict:
    """A batch shaped like the loader's (shapes read from one real item), generated on the device."""
    item = trainer.train_set[(0, 0)]
    if "failure" in item:
        raise UserError(f"cannot read a clip of {item['failure']['path']}: {item['failure']['reason']}")
    clips = {m: torch.randn(batch, *item[m].shape, device=device) if item[m].is_floating_point()
             else torch.randint(0, 256, (batch, *item[m].shape), dtype=item[m].dtype, device=device)
             for m in trainer.method.modalities}  # fmt: skip
    return {"index": torch.arange(batch) % len(trainer.videos), **clips}


def timed(
    step: Callable[[dict], object], batches: Iterator[dict], warmup: int, steps: int, device: torch.device
) -> tuple[float, float, int]:
    """Seconds of the first step, then seconds and clips of ``steps`` steps after ``warmup`` untimed ones."""
    t = time.perf_counter()
    step(next(batches))
    sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        step(next(batches))
    sync(device)
    t, clips = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        step(batch)
        clips += batch["index"].numel()
    sync(device)
    return first, time.perf_counter() - t, clips


def read_items(dataset: TrainClips, videos: int, items: int) -> tuple[float, int]:
    """Seconds and clips of reading ``items`` training items in this process with one thread, as a loader worker
    does (a worker's torch also runs one thread), after one untimed item."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[(0, 0)]
        t = time.perf_counter()
        for i in range(items):
            dataset[(i % videos, i + 1)]
        return time.perf_counter() - t, items
    finally:
        torch.set_num_threads(threads)


def profile(
    step: Callable[[dict], object], batch: dict, device: torch.device, path: Path, title: str, steps: int = 5
) -> None:
    """Profile ``steps`` steps on ``batch``; append the ops sorted by their own device time (CPU time on a CPU) to
    ``path`` under ``title``, and print the top of it: where a step's time goes, for the MFU gap."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60)
    with path.open("a") as f:
        f.write(f"== {title}: {steps} model-only steps\n{table}\n")
    print("\n".join(table.splitlines()[:18]))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: its kernels run asynchronously to the host."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        raise SystemExit(f"train_step: error: {e}") from None
