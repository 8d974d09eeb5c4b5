"""Clips/s of one XDC training step, model-only and end-to-end from real files, with model FLOPs and MFU.

    python benchmarks/train_step.py                                   # paper preset, bf16 on a GPU
    python benchmarks/train_step.py --preset tiny --device cpu --steps 10
    python benchmarks/train_step.py --preset paper --channels-last --compile --batch 128 --data DIR
    python benchmarks/train_step.py --preset paper --channels-last --compile --profile profile.txt
    python benchmarks/train_step.py --preset paper --channels-last --compile --pad-widths 0
    python benchmarks/train_step.py --preset paper --channels-last --compile-mode max-autotune-no-cudagraphs
    python benchmarks/train_step.py --preset paper --channels-last --compile --cudnn-limit 0 --inductor-tune
    python benchmarks/train_step.py --preset paper --channels-last --compile --s2d-stem

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
Then the same for a round's feature extraction (step 1: the clustered encoders forward in eval mode, no
gradient, as Pretrainer._embed runs them): extraction model-only on random clips on the device, extraction
end-to-end fed by the extraction loader (EvalClips: the centred clip of each video, read over and over), and
extraction one process. Their vs_model_only is against extraction model-only. Forward only, extraction needs
about three times the clips per second of training from the same loader. The last two again with the clips kept
by train.extract_cache (filled first, as the first round does; the file then sits in the page cache, where at
scale it is read from disk).
--pad-widths (auto: 8 on CUDA, as train.pad_widths) runs the video encoder's middle widths at multiples of M (at
width 64, 45, 230, 460 and 921 are not multiples of 8, and cuDNN pads them itself in every step) with channels that
are always zero (xdc.models.padding): the same model up to float rounding; MFU counts the unpadded FLOPs.
The fed measurements first run as many untimed batches as the loader holds in flight (PREFETCH x workers; at
least --warmup): until then its workers start up together and page-locked buffers are still being allocated,
which stalls the device at each allocation. Each measurement also reports wait_ms, the time per step this process
waited for the loader's next batch (near 0 when the loader keeps up and the step itself is slower than
model-only), and cpu_ms, this process's CPU time per step, all its threads (launching the step's kernels, the
loader's page-locked copies): more than ms_per_step means it takes cores from the loader's workers.
Without --data, a synthetic set (xdc make-synthetic) is written to a temporary folder with frames whose short
side is the preset's decode size, at 25 fps (decoding cost grows with the source frame rate), then transcoded by
xdc prepare as the docs advise for pretraining (a keyframe every 16 frames, the preset's clip frame rate, 16 kHz
mono); --unprepared reads the make-synthetic files themselves (one keyframe per file, 44.1 kHz stereo: about half
the clips/s per core).
Two searches for faster kernels, off by default as in PyTorch: --cudnn-limit 0 lets cuDNN's autotuner time every
algorithm it has for each convolution shape (PyTorch's default times the 10 its heuristics rank first), and
--inductor-tune tunes the block sizes of Inductor's Triton kernels (BatchNorm, ReLU and the residual adds fused;
its coordinate-descent search), at the cost of a longer first step.
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
import torch._inductor.config
from torch.utils.data import Subset

from common import report, run_script
from xdc.config import COMPILE_MODES, Config, DataConfig, SyntheticConfig, load_config
from xdc.data.clip_cache import ClipCache
from xdc.data.datasets import PREFETCH, EvalClips, TrainClips, make_loader
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest
from xdc.data.prepare import PrepareOptions, prepare
from xdc.data.synthetic import make_synthetic
from xdc.errors import UserError
from xdc.models.padding import pad_middle_widths
from xdc.models.stem import space_to_depth_stem
from xdc.training.distributed import Dist
from xdc.training.flops import count_flops, mfu, peak_tflops
from xdc.training.pretrain import Pretrainer


CPU_PRESETS = ("tiny", "small")  # the presets a CPU measures in minutes
PAPER_CPU_S_PER_CLIP = 0.8  # a paper preset training step on the 2-core CPU machine, per clip (BENCHMARKS.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES,
                        help="torch.compile's mode (train.compile=MODE), e.g. max-autotune-no-cudagraphs (implies "
                        "--compile; Inductor's Triton templates then compete with cuDNN for the convolutions)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the first one compiles)")
    parser.add_argument("--loader-steps", type=int, default=30,
                        help="timed batches of the loader-only measurement (cheap: no model)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs' dense bf16)")
    parser.add_argument("--workers", type=int,
                        help="loader workers (default: the trainer's data.workers=auto: on CUDA the CPU cores less "
                        "one for the training process, on a CPU 2)")
    parser.add_argument("--data", type=Path, help="folder of video files (default: a generated synthetic set)")
    parser.add_argument("--unprepared", action="store_true", help="the synthetic set without xdc prepare")
    parser.add_argument("--model-only", action="store_true", help="skip the measurements that read files")
    parser.add_argument("--pad-widths", default="auto", metavar="M",
                        help="the video encoder's middle widths at multiples of M (0: off; default: auto, 8 on CUDA)")
    parser.add_argument("--logmel-on", choices=["auto", "workers", "device"], default="auto",
                        help="where training clips' log-mel spectrograms are computed (data.logmel_on; auto: the "
                             "device on CUDA)")
    parser.add_argument("--crops-on", choices=["auto", "workers", "device"], default="auto",
                        help="where training clips are scaled, cropped and flipped (data.crops_on; auto: the device "
                        "on CUDA where the resize only enlarges)")
    parser.add_argument("--s2d-stem", action="store_true",
                        help="the video stem over 2 x 2 pixel blocks (train.s2d_stem; MFU counts the plain stem)")
    parser.add_argument("--cudnn-limit", type=int, metavar="N",
                        help="cuDNN algorithms timed per convolution shape (0: all; default: PyTorch's, 10)")
    parser.add_argument("--inductor-tune", action="store_true",
                        help="tune the block sizes of the compiled step's Triton kernels (implies --compile)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also profile 5 model-only steps: the ops by device time, as a table appended to FILE")
    args = parser.parse_args()
    args.compile = args.compile or bool(args.compile_mode) or args.inductor_tune
    if min(args.warmup, args.steps, args.loader_steps) < 1:
        parser.error("--warmup, --steps and --loader-steps must be at least 1")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.cudnn_limit is not None:  # before any convolution runs: cuDNN keeps its first choice per shape
        torch.backends.cudnn.benchmark_limit = args.cudnn_limit
    if args.inductor_tune:
        torch._inductor.config.coordinate_descent_tuning = True
    workers = args.workers if args.workers is not None else DataConfig().workers_on(device.type)
    fed_warmup = max(args.warmup, PREFETCH * workers)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = load_config(None, [
        f"train.k={args.k}", f"train.batch_size={args.batch}", f"train.precision={precision}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={args.compile_mode or str(args.compile).lower()}",
        f"data.workers={workers}", f"train.pad_widths={args.pad_widths}", f"data.crops_on={args.crops_on}",
        f"data.logmel_on={args.logmel_on}",
        f"train.epoch_size={(fed_warmup + max(args.steps, args.loader_steps)) * args.batch}",
    ], preset=args.preset)  # fmt: skip
    if device.type == "cpu" and args.preset not in CPU_PRESETS:  # --device defaults to the CPU where there is no GPU:
        # BENCHMARKS.md's GPU commands ran there for hours, unsaid
        model_steps = args.warmup + args.steps + (0 if args.model_only else fed_warmup + args.steps)
        hours = model_steps * args.batch * PAPER_CPU_S_PER_CLIP / 3600
        print(f"NOTE: --preset {args.preset} is meant for a GPU: on a CPU a training step takes about "
              f"{PAPER_CPU_S_PER_CLIP} s per clip (2 cores), so these {model_steps} steps of {args.batch} clips take "
              f"roughly {hours:.1f} h; --preset tiny or small measures a CPU in minutes", flush=True)  # fmt: skip
    pad_widths = cfg.train.pad_widths_on(device.type)
    cfg.train.pad_widths = 0  # padded (and the stem changed) below, once the FLOPs of the plain model are counted
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
        videos = [trainer.encoders[e] for e, m in trainer.method.encoders.items() if m == "video"]
        if pad_widths:
            padded = sum(pad_middle_widths(encoder, pad_widths) for encoder in videos)
            print(f"padded the middle widths of {padded} convolution pairs to multiples of {pad_widths}")
        if args.s2d_stem:  # after padding, as the trainer does
            for encoder in videos:
                space_to_depth_stem(encoder, (cfg.data.clip.crop,) * 2)

        def step(batch: dict) -> None:
            trainer._step(trainer.train_model, batch)

        first_s, model_s, model_clips, model_wait, model_cpu = timed(
            step, itertools.repeat(random_batch), args.warmup, args.steps, device
        )

        def row(measure: str, seconds: float, clips: int, steps: int, waited: float = 0.0, cpu: float = 0.0,
                base: float | None = None) -> dict:  # fmt: skip
            r = {"measure": measure, "clips_per_s": clips / seconds, "ms_per_step": 1000 * seconds / steps,
                 "vs_model_only": clips / seconds / (base or model_clips / model_s)}  # fmt: skip
            if "one process" not in measure:  # no loader to wait for ("extraction one process, kept clips" too)
                r["wait_ms"], r["cpu_ms"] = 1000 * waited / steps, 1000 * cpu / steps
            if measure in ("model-only", "end-to-end"):
                r["tflop_per_s"] = flops * steps / seconds / 1e12
                if peak:
                    r["mfu_percent"] = 100 * mfu(flops, seconds / steps, peak)
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
            return r  # printed as it comes: a run stopped later keeps what it measured in its log

        rows = [row("model-only", model_s, model_clips, args.steps, model_wait, model_cpu)]
        if args.profile:
            profile(step, random_batch, device, args.profile, f"{args.preset}, batch {args.batch}, {precision}, "
                    f"channels_last={args.channels_last}, compile={args.compile_mode or args.compile}, "
                    f"pad_widths={args.pad_widths}, s2d_stem={args.s2d_stem}, cudnn_limit={args.cudnn_limit}, "
                    f"inductor_tune={args.inductor_tune}")
        failed = {}
        fed = [("end-to-end", step, args.steps), ("loader only", trainer._inputs, args.loader_steps)]
        for measure, run, steps in [] if args.model_only else fed:
            try:
                seconds, clips, waited, cpu = timed(run, iter(trainer._train_loader()), fed_warmup, steps, device)[1:]
                rows.append(row(measure, seconds, clips, steps, waited, cpu))
            except RuntimeError as e:  # e.g. a loader worker killed (too little shared memory): keep the rest
                print(f"{measure} failed: {e}")
                failed[measure] = str(e)
        if not args.model_only:
            rows.append(row("one process", *read_items(trainer.train_set, n, 2 * args.batch), 2))  # 2 batches
        rows += extraction(trainer, args, device, workers, fed_warmup, row, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    setting = {
        "preset": args.preset, "device": str(device), "device_name": device_name, "precision": precision,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "channels_last": args.channels_last, "compile": args.compile, "compile_mode": args.compile_mode,
        "pad_widths": pad_widths, "s2d_stem": args.s2d_stem,
        "crops_on": "device" if trainer.device_crops else "workers",
        "logmel_on": "device" if trainer.device_logmel else "workers", "cudnn_limit": args.cudnn_limit,
        "inductor_tune": args.inductor_tune,
        "batch": args.batch, "k": args.k, "steps": args.steps,
        "loader_steps": args.loader_steps, "warmup": args.warmup, "fed_warmup": fed_warmup, "workers": workers,
        "videos": n,
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
    transcoded by ``xdc prepare`` at the preset's clip frame rate unless ``prepared`` is false."""
    short = cfg.data.clip.decode_short_side or cfg.data.clip.crop
    span = max(cfg.data.clip.seconds, cfg.data.clip.audio_span)
    synthetic = SyntheticConfig(width=2 * round(short * 2 / 3), height=short, fps=25, seconds=2 * span)
    make_synthetic(out, max(videos, 64), 8, seed=0, cfg=synthetic)
    if not prepared:
        return out / "videos"
    summary = prepare([str(out / "videos")], out / "prepared", PrepareOptions(fps=cfg.data.clip.fps))
    if summary.problems:
        first = summary.problems[0]
        raise UserError(f"xdc prepare failed on the synthetic set: {first['source']}: {first['reason']}")
    return out / "prepared"


def synthetic_manifest(cfg: Config, folder: Path, videos: int) -> Manifest:
    """The usable videos of ``synthetic_set`` (prepared) in ``folder``, indexed."""
    build_manifest([str(synthetic_set(cfg, folder / "set", videos))], folder / "m.csv")
    return Manifest.load(folder / "m.csv")


def extraction(trainer: Pretrainer, args: argparse.Namespace, device: torch.device, workers: int, warmup: int,
               row: Callable[..., dict], folder: Path) -> list[dict]:
    """The extraction rows: model-only, and unless --model-only end-to-end and one process, decoded and then kept
    in an extraction cache in ``folder`` (module docstring)."""
    clustered = trainer.method.clustered
    trainer.encoders.eval()

    @torch.no_grad()
    def embed(batch: dict) -> None:
        trainer._embed(batch, clustered)

    eval_batch = random_clips(trainer, args.batch, device, trainer.eval_set[0])
    seconds, clips, waited, cpu = timed(embed, itertools.repeat(eval_batch), args.warmup, args.steps, device)[1:]
    rows = [row("extraction model-only", seconds, clips, args.steps, waited, cpu, base=clips / seconds)]
    base = clips / seconds
    if args.model_only:
        return rows
    clips_of = trainer.eval_set
    n = len(clips_of)  # the centred clip of each video, over and over
    repeated = Subset(clips_of, [i % n for i in range((warmup + args.steps) * args.batch)])
    for kept in ("", ", kept clips"):
        if kept:
            clips_of.cache = ClipCache(folder / "extract_cache", range(n), clips_of.cache_fields(), {})
            if clips_of.cache.open() is not None:
                raise UserError(f"no room for the extraction cache in {folder}")
            for i in range(n):
                clips_of[i]
        loader = make_loader(repeated, args.batch, workers, pin_memory=device.type == "cuda")
        seconds, clips, waited, cpu = timed(embed, iter(loader), warmup, args.steps, device)[1:]
        rows.append(row(f"extraction end-to-end{kept}", seconds, clips, args.steps, waited, cpu, base=base))
        del loader  # its workers
        seconds, clips = read_items(clips_of, n, 2 * args.batch)
        rows.append(row(f"extraction one process{kept}", seconds, clips, 2, base=base))
    clips_of.cache = None
    return rows


def random_clips(trainer: Pretrainer, batch: int, device: torch.device, item: dict | None = None) -> dict:
    """A batch shaped like the loader's (shapes read from one real item: by default a training item), generated on
    the device."""
    item = item or trainer.train_set[(0, 0)]
    if "failure" in item:
        raise UserError(f"cannot read a clip of {item['failure']['path']}: {item['failure']['reason']}")
    clips = {m: torch.randn(batch, *item[m].shape, device=device) if item[m].is_floating_point()
             else torch.randint(0, 256, (batch, *item[m].shape), dtype=item[m].dtype, device=device)
             for m in trainer.method.modalities}  # fmt: skip
    if "video_grid" in item:  # data.crops_on at device: the step crops the clips (all with this item's geometry)
        clips["video_grid"] = item["video_grid"].expand(batch, -1).to(device)
    return {"index": torch.arange(batch) % len(trainer.videos), **clips}


def timed(
    step: Callable[[dict], object], batches: Iterator[dict], warmup: int, steps: int, device: torch.device
) -> tuple[float, float, int, float, float]:
    """Seconds of the first step, then seconds and clips of ``steps`` steps after ``warmup`` untimed ones, the
    seconds of those spent waiting for ``batches``, and this process's CPU seconds over them (all its threads)."""
    t = time.perf_counter()
    step(next(batches))
    sync(device)
    first = time.perf_counter() - t
    for _ in range(warmup - 1):
        step(next(batches))
    sync(device)
    t, cpu, clips, waited = time.perf_counter(), time.process_time(), 0, 0.0
    for _ in range(steps):
        asked = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - asked
        step(batch)
        clips += batch["index"].numel()
    sync(device)
    return first, time.perf_counter() - t, clips, waited, time.process_time() - cpu


def read_items(dataset: TrainClips | EvalClips, videos: int, items: int) -> tuple[float, int]:
    """Seconds and clips of reading ``items`` items in this process with one thread, as a loader worker does (a
    worker's torch also runs one thread), after one untimed item: training items of drawn clips, or evaluation
    items (the centred clip of each video)."""
    def key(i: int):
        return (i % videos, i) if isinstance(dataset, TrainClips) else i % videos

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[key(0)]
        t = time.perf_counter()
        for i in range(items):
            dataset[key(i + 1)]
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
    run_script(main)
