"""Typed configuration: dataclass defaults, a YAML file on top, then dotted ``key=value`` overrides.

Every command reads its settings through :func:`load_config`, so one YAML file (or ``--set data.clip.frames=16``)
means the same thing everywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xdc.errors import UserError
from xdc.limits import usable_cpus
from xdc.textfiles import read_text


# Range checks of numeric settings, so that a value out of range is a one-line error at the start rather than a
# traceback (or a crash of faiss: train.pca_dim=0), or a run that silently does nothing (train.accumulate=0), later.
def _at_least(low: float, section: str, obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value >= low:
            raise UserError(f"{section}.{name} must be at least {low}, not {value!r}")


def _above_zero(section: str, obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value > 0:
            raise UserError(f"{section}.{name} must be above 0, not {value!r}")


def _fraction(section: str, obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0 <= value < 1:
            raise UserError(f"{section}.{name} must be at least 0 and below 1, not {value!r}")


@dataclass
class ClipConfig:
    frames: int = 8
    fps: float = 8.0
    # Audio seconds per clip; None means the video clip's own span (frames / fps), as the SPEC asks.
    audio_seconds: float | None = None
    sample_rate: int = 16000
    # Frames are resized while decoding so that their short side is this many pixels (0 keeps the source size):
    # scaling in the decoder is much cheaper than decoding full-size frames and scaling them later.
    decode_short_side: int = 128
    crop: int = 112
    # Region of interest, e.g. a mouth for lip reading: (left, top, right, bottom) as fractions of the displayed
    # frame. The decoder cuts it out before scaling, so decode_short_side and the crops apply to the region.
    crop_box: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _at_least(1, "data.clip", self, "frames", "sample_rate", "crop")
        _at_least(0, "data.clip", self, "decode_short_side")
        _above_zero("data.clip", self, "fps", "audio_seconds")
        if self.crop_box is not None:
            box = self.crop_box
            if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                raise UserError(
                    "data.clip.crop_box must be [left, top, right, bottom] fractions of the frame with "
                    f"0 <= left < right <= 1 and 0 <= top < bottom <= 1, not {list(box)}"
                )

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    @property
    def audio_span(self) -> float:
        return self.seconds if self.audio_seconds is None else self.audio_seconds


@dataclass
class MelConfig:
    n_mels: int = 40
    window_ms: float = 16.0
    hop_ms: float = 10.0
    n_fft: int = 256
    f_min: float = 0.0
    f_max: float | None = None  # None: half the sample rate

    def __post_init__(self) -> None:
        _at_least(1, "data.mel", self, "n_mels", "n_fft")
        _above_zero("data.mel", self, "window_ms", "hop_ms")
        _at_least(0, "data.mel", self, "f_min")
        if self.f_max is not None and not self.f_max > self.f_min:
            raise UserError(f"data.mel.f_max must be above data.mel.f_min ({self.f_min}), not {self.f_max!r}")


@dataclass
class AugmentConfig:
    # Training-time scale jitter: the short side is resized to a random size in [scale_min, scale_max]
    # before the random crop.
    scale_min: int = 128
    scale_max: int = 160
    flip: bool = True
    gain_db: float = 6.0  # random audio gain in [-gain_db, +gain_db]
    time_mask: int = 0  # max width of one SpecAugment time mask, in spectrogram frames (0: off)
    freq_mask: int = 0  # max width of one frequency mask, in mel bands (0: off)

    def __post_init__(self) -> None:
        _at_least(0, "data.augment", self, "gain_db", "time_mask", "freq_mask")


@dataclass
class DataConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)
    mel: MelConfig = field(default_factory=MelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    missing_audio: str = "skip"  # skip: drop videos without audio from audio-visual datasets; zeros: silent audio
    retries: int = 3  # other clips of the same video tried before the video is recorded as failed
    max_fail_fraction: float = 0.05  # stop the run when more than this fraction of items failed
    # A loader worker that reads one clip for longer is hung (a decoder in a loop, a stalled network file system):
    # it is stopped and the file skipped from then on (xdc.data.worker_deaths); 0: wait for ever
    read_timeout_s: float = 120.0
    eval_clips: int = 10  # evenly spaced clips per video for evaluation
    # DataLoader worker processes per process; auto: 2 on a CPU, and on CUDA every core this process may use
    # (shared with the other ranks on the node) but one for the training process
    workers: int | str = "auto"
    # Where training clips are scaled, cropped and flipped: "workers" (the loader's processes), "device" (a batch
    # at a time where it trains: the workers send the part of the frames the crop samples), or auto: device on
    # CUDA where possible (device_crops_possible), else workers.
    crops_on: str = "auto"
    # Where training clips' log-mel spectrograms (and audio masks) are computed: "workers", or "device" (a batch at a
    # time where it trains: the workers send the waveform), or auto: device on CUDA, else workers.
    logmel_on: str = "auto"

    def __post_init__(self) -> None:
        _at_least(0, "data", self, "retries")
        _at_least(1, "data", self, "eval_clips")
        if not 0 <= self.max_fail_fraction <= 1:
            raise UserError(f"data.max_fail_fraction must be between 0 and 1, not {self.max_fail_fraction!r}")
        if self.workers != "auto" and not (type(self.workers) is int and self.workers >= 0):
            raise UserError(f"data.workers must be auto or a whole number >= 0 (0: load in the main process), "
                            f"not {self.workers!r}")  # fmt: skip
        if not self.read_timeout_s >= 0:
            raise UserError(f"data.read_timeout_s must be >= 0 (0: no limit), not {self.read_timeout_s!r}")
        if self.missing_audio not in ("skip", "zeros"):
            raise UserError(f"data.missing_audio must be 'skip' or 'zeros', not {self.missing_audio!r}")
        aug, crop = self.augment, self.clip.crop
        if not crop <= aug.scale_min <= aug.scale_max:
            raise UserError(
                f"need data.clip.crop <= data.augment.scale_min <= data.augment.scale_max (frames are resized to a "
                f"short side in [scale_min, scale_max], then cropped), got {crop}, {aug.scale_min}, {aug.scale_max}"
            )
        self._check_logmel()
        for key in ("crops_on", "logmel_on"):
            if getattr(self, key) not in ("auto", "workers", "device"):
                raise UserError(f"data.{key} must be auto, workers or device, not {getattr(self, key)!r}")
        if self.crops_on == "device" and not self.device_crops_possible:
            raise UserError(
                "data.crops_on=device needs frames that the training resize only enlarges: data.clip.decode_short_side "
                f"between 1 and data.augment.scale_min, got {self.clip.decode_short_side} and {aug.scale_min}"
            )

    def _check_logmel(self) -> None:
        """The log-mel settings in samples of data.clip.sample_rate, as xdc.data.audio.LogMel computes them: out of
        its reach they were a traceback of torch or torchaudio once the run had started (until 2026-12-02)."""
        mel, rate = self.mel, self.clip.sample_rate
        hop, window = round(mel.hop_ms * rate / 1000), round(mel.window_ms * rate / 1000)
        if hop < 1:
            raise UserError(f"data.mel.hop_ms={mel.hop_ms:g} is {hop} samples at data.clip.sample_rate={rate}: it "
                            "must be at least one sample")  # fmt: skip
        if not 1 <= window <= mel.n_fft:
            raise UserError(f"data.mel.window_ms={mel.window_ms:g} is {window} samples at data.clip.sample_rate="
                            f"{rate}: it must be from 1 to data.mel.n_fft={mel.n_fft} samples")  # fmt: skip
        if mel.f_max is not None and mel.f_max > rate / 2:  # bands above it are empty: torchaudio warns, and trains
            raise UserError(f"data.mel.f_max must be at most half data.clip.sample_rate ({rate / 2:g} Hz), not "
                            f"{mel.f_max!r}")  # fmt: skip
        if mel.f_max is None and not mel.f_min < rate / 2:
            raise UserError(f"data.mel.f_min must be below half data.clip.sample_rate ({rate / 2:g} Hz, the top of the "
                            f"mel bands where data.mel.f_max is null), not {mel.f_min!r}")  # fmt: skip
        empty = _empty_mel_bands(mel, rate)
        if empty:  # a band with no frequency bin of the STFT is a constant row: torchaudio warns once, and trains
            top = rate // 2 if mel.f_max is None else mel.f_max
            raise UserError(f"data.mel.n_mels={mel.n_mels} bands from {mel.f_min:g} to {top:g} Hz "
                            f"leave {empty} of them without a frequency bin of data.mel.n_fft={mel.n_fft} at "
                            f"data.clip.sample_rate={rate} ({rate / mel.n_fft:g} Hz apart): use fewer bands, a wider "
                            "range or a larger n_fft")  # fmt: skip
        samples = round(self.clip.audio_span * rate)
        if not samples > max(mel.n_fft // 2, hop - 1):
            raise UserError(f"a clip's audio ({self.clip.audio_span:g} s, {samples} samples at "
                            f"data.clip.sample_rate={rate}) must be longer than half data.mel.n_fft "
                            f"({mel.n_fft // 2} samples) and at least a hop ({hop} samples)")  # fmt: skip

    @property
    def device_crops_possible(self) -> bool:
        """Whether every training resize enlarges the decoded frames (their short side is decode_short_side, at most
        scale_min): there the device's bilinear sampling computes what torchvision's resize does."""
        return 0 < self.clip.decode_short_side <= self.augment.scale_min

    def crops_on_device(self, device_type: str) -> bool:
        """Whether training clips are cropped where they train, on this kind of device ("cuda", "cpu"): auto means
        on CUDA where possible. There the loader's workers skip the resize: 1.17-1.18x the paper-preset clips per
        core (BENCHMARKS.md "Training clips cropped on the device")."""
        return self.crops_on == "device" or (
            self.crops_on == "auto" and device_type == "cuda" and self.device_crops_possible
        )

    def logmel_on_device(self, device_type: str) -> bool:
        """Whether training clips' log-mel spectrograms are computed where they train, on this kind of device: auto
        means on CUDA. In a loader worker, just after decoding, it cost 0.3-0.5 ms of a 3.5 ms paper-preset item
        (BENCHMARKS.md "Log-mel on the device")."""
        return self.logmel_on == "device" or (self.logmel_on == "auto" and device_type == "cuda")

    def workers_on(self, device_type: str) -> int:
        """Loader workers of this process on this kind of device ("cuda", "cpu"). auto: on CUDA, the CPUs this
        process may use (its affinity, or its control group's CPU quota where that is less: xdc.limits) divided
        among the node's ranks (torchrun's LOCAL_WORLD_SIZE), less one for the training process itself: a compiled
        paper-preset step on an H200 took about 16 cores' worth of loading (BENCHMARKS.md "Training step"). On a
        CPU, 2: the workers share the cores with training."""
        if self.workers != "auto":
            return self.workers
        if device_type != "cuda":
            return 2
        return max(1, usable_cpus() // node_ranks() - 1)


def _empty_mel_bands(mel: MelConfig, rate: int) -> int:
    """The mel bands of torchaudio's filter bank (HTK scale, as xdc.data.audio.LogMel makes it) that hold no
    frequency bin of the STFT: band i is above 0 only strictly between the band edges i and i + 2."""
    to_mel, to_hz = (lambda hz: 2595 * math.log10(1 + hz / 700)), (lambda m: 700 * (10 ** (m / 2595) - 1))
    f_max = rate // 2 if mel.f_max is None else mel.f_max  # torchaudio's top where f_max is null
    low, high = to_mel(mel.f_min), to_mel(f_max)
    # the range's own ends as given, not as they come back from the mel scale: a bin on one is in no band
    edges = [mel.f_min, *(to_hz(low + (high - low) * i / (mel.n_mels + 1)) for i in range(1, mel.n_mels + 1)), f_max]
    last = mel.n_fft // 2  # the bins: 0 to `last` steps of `step` Hz, up to half the sample rate
    step = (rate // 2) / max(last, 1)
    above = [math.floor(edge / step) + 1 for edge in edges]  # each edge's first bin above it
    return sum(not (above[i] <= last and above[i] * step < edges[i + 2]) for i in range(mel.n_mels))


# torchrun's variables are read here alone (and by xdc.training.distributed.gpu_index, for the GPU): a value that is
# no number is one line, or no job's, not int()'s traceback (until 2026-12-03 ``RANK=abc`` was one)


def node_ranks() -> int:
    """The processes of this run on this node: torchrun's LOCAL_WORLD_SIZE, 1 without torchrun."""
    value = os.environ.get("LOCAL_WORLD_SIZE") or "1"
    if not value.isdecimal():
        raise UserError(f"LOCAL_WORLD_SIZE={value!r} in the environment is not a number of processes: torchrun sets "
                        "it; unset it to run in one process")  # fmt: skip
    return max(1, int(value))


def torchrun_rank(name: str = "RANK") -> int:
    """``name``, RANK (this process's place in its torchrun job) or LOCAL_RANK (its place on its node), as torchrun
    set it; 0 in a process alone (WORLD_SIZE unset or 1), whatever a shell left there (until 2026-12-03 a leftover
    RANK=1 kept a lone process's warnings unsaid), and where it is no number (job_ranks says so as the job starts).
    Never raises: it also names the rank in the line of an error."""
    world, value = os.environ.get("WORLD_SIZE", ""), os.environ.get(name, "")
    return int(value) if world.isdecimal() and int(world) > 1 and value.isdecimal() else 0


def job_ranks(env: Mapping[str, str] | None = None) -> int:
    """The processes of this job: torchrun's WORLD_SIZE in ``env`` (default: this process's environment), 1 without
    torchrun (or where it is empty). Where it names several but the rest of what joining them takes is missing (a
    WORLD_SIZE left in a shell or set by a scheduler, no torchrun), one line before the command starts, not c10d's
    traceback (until 2026-12-03)."""
    env = os.environ if env is None else env
    world = env.get("WORLD_SIZE") or "1"
    ranks = int(world) if world.isdecimal() else 0
    if ranks < 1:
        raise UserError(f"WORLD_SIZE={world!r} in the environment is not a number of processes: torchrun sets it; "
                        "unset it to run in one process")  # fmt: skip
    if ranks == 1:
        return 1
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} in the environment, but not {', '.join(missing)}: a job of several "
                        f"processes is started by torchrun (torchrun --nproc_per_node {ranks} -m xdc.cli ...), which "
                        "sets them all; unset WORLD_SIZE to run in one process")  # fmt: skip
    rank = env["RANK"]
    if not rank.isdecimal() or int(rank) >= ranks:  # (isdigit takes "²", which int() refuses)
        raise UserError(f"RANK={rank!r} in the environment is not one of the WORLD_SIZE={world} processes' ranks "
                        f"(0 to {ranks - 1})")  # fmt: skip
    return ranks


@dataclass
class ModelConfig:
    # Channels of the first stage; stages are width, 2w, 4w, 8w (torchvision's R(2+1)D-18 / ResNet-18: 64).
    video_width: int = 64
    audio_width: int = 64
    video_layers: tuple[int, ...] = (2, 2, 2, 2)  # residual blocks per stage (ResNet-18: 2 each)
    audio_layers: tuple[int, ...] = (2, 2, 2, 2)
    # The (2+1)D convs' middle widths: "block" (torchvision's, one per block) or "per_conv" (each its own, as in the
    # released XDC weights, whose BatchNorms also use eps 1e-3: xdc.models.official)
    video_mid_width: str = "block"
    video_bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("video_width", "audio_width"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be a positive integer, not {getattr(self, name)}")
        if self.video_mid_width not in ("block", "per_conv"):
            raise UserError(f"model.video_mid_width must be 'block' or 'per_conv', not {self.video_mid_width!r}")
        if not self.video_bn_eps > 0:
            raise UserError(f"model.video_bn_eps must be above 0, not {self.video_bn_eps!r}")
        for name in ("video_layers", "audio_layers"):
            layers = getattr(self, name)
            if len(layers) != 4 or min(layers) < 1:
                raise UserError(f"model.{name} must be 4 positive block counts, e.g. [2, 2, 2, 2], not {layers}")


@dataclass
class SyntheticConfig:
    width: int = 64
    height: int = 64
    fps: int = 16
    seconds: float = 3.0
    sample_rate: int = 16000
    offscreen_fraction: float = 0.1  # clips whose sound comes from another class (off-screen sound)
    audio_noise: float = 0.05  # largest RMS of the background noise (full scale 1); each clip draws below it
    pixel_noise: float = 0.02  # largest std of per-pixel noise (pixel range 1); each clip draws below it
    # (checked by make_synthetic, which takes a SyntheticConfig of its own too)


# torch.compile's modes: reduce-overhead replays each step's kernels as CUDA graphs; max-autotune also times Triton
# kernels against cuDNN's for each convolution (minutes)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    method: str = "xdc"
    k: int = 64  # clusters per label set
    rounds: int = 5  # cluster-then-train rounds
    epochs: int = 1  # epochs per round (with recluster=plateau: the most epochs per round)
    epoch_size: int = 0  # clips drawn per epoch; 0: one per usable video
    batch_size: int = 32  # global batch (split across ranks)
    # Split each batch into this many interleaved parts with one backward each (gradient accumulation). One
    # process with accumulate=W makes the same parameter updates as W DDP ranks (BatchNorm statistics included).
    accumulate: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    recluster: str = "epochs"  # epochs: after `epochs` epochs; plateau: when the held-back loss stops improving
    holdout_fraction: float = 0.1  # videos held back to watch the pseudo-label loss (recluster=plateau)
    plateau_delta: float = 0.001  # relative decrease of the held-back loss that counts as an improvement
    assign: str = "kmeans"  # kmeans: nearest centroid; sinkhorn: balanced assignment
    pca_dim: int = 256
    kmeans_iters: int = 20
    # rank0: features gathered, clustered on rank 0; shards: each rank keeps its rows, PCA and k-means all-reduce
    cluster_on: str = "rank0"
    collapse_fraction: float = 0.5  # warn above this share of the way from an even split to one cluster
    # keep each video's extraction clip on disk (RUN/extract_cache) after the first round reads it: later rounds'
    # extraction reads it back instead of decoding (docs/pretrain.md "Extraction cache")
    extract_cache: bool = False
    checkpoint_every: int = 0  # also checkpoint every N training steps (0: after each round only)
    log_every: int = 10  # steps between log lines
    # Device path (docs/pretrain.md "On GPUs"); auto: the measured fast path on CUDA, CPU runs as before.
    precision: str = "auto"  # auto (bf16 on CUDA, else fp32), fp32, or bf16: forward and loss under bfloat16 autocast
    channels_last: bool | str = "auto"  # auto (on CUDA), true or false: channels-last layout of encoders and inputs
    # torch.compile the training model (the first step of each process compiles it): true (Inductor's default
    # mode), false, or one of COMPILE_MODES
    compile: bool | str = False
    # auto (8 on CUDA, else 0) or N: video middle widths run at multiples of N with zero channels (xdc.models.padding)
    pad_widths: int | str = "auto"
    # the video stem's 7 x 7 stride-2 convolution computed over 2 x 2 pixel blocks: same model (xdc.models.stem)
    s2d_stem: bool = False
    # start the encoders from these weights instead of random ones: a run folder, an `xdc export`, or the released
    # XDC weights (xdc.evaluation.sources); each encoder the file has of the same name, modality and model settings
    init: str | None = None

    def __post_init__(self) -> None:
        if self.recluster not in ("epochs", "plateau"):
            raise UserError(f"train.recluster must be 'epochs' or 'plateau', not {self.recluster!r}")
        if self.assign not in ("kmeans", "sinkhorn"):
            raise UserError(f"train.assign must be 'kmeans' or 'sinkhorn', not {self.assign!r}")
        if self.cluster_on not in ("rank0", "shards"):
            raise UserError(f"train.cluster_on must be 'rank0' or 'shards', not {self.cluster_on!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"train.precision must be 'auto', 'fp32' or 'bf16', not {self.precision!r}")
        if self.compile not in (True, False, *COMPILE_MODES):
            raise UserError(f"train.compile must be true, false or a mode ({', '.join(COMPILE_MODES)}), "
                            f"not {self.compile!r}")
        if self.channels_last not in (True, False, "auto"):
            raise UserError(f"train.channels_last must be true, false or auto, not {self.channels_last!r}")
        if self.pad_widths != "auto" and not (type(self.pad_widths) is int and self.pad_widths >= 0):
            raise UserError(f"train.pad_widths must be auto or a whole number >= 0 (0: off), not {self.pad_widths!r}")
        if self.init is not None and not self.init.strip():  # Path("") is ".": the current folder was read as weights
            raise UserError("train.init is empty: give the path of the weights to start from, or null for random ones")
        _at_least(2, "train", self, "k")
        _at_least(1, "train", self, "rounds", "epochs", "batch_size", "accumulate", "pca_dim", "kmeans_iters",
                  "log_every")  # fmt: skip
        _at_least(0, "train", self, "lr", "epoch_size", "weight_decay", "plateau_delta", "checkpoint_every")
        _fraction("train", self, "momentum", "holdout_fraction", "collapse_fraction")

    def bf16_on(self, device_type: str) -> bool:
        """Whether steps run under bfloat16 autocast on this kind of device ("cuda", "cpu"): auto means on CUDA."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def compile_mode(self) -> str | None:
        """torch.compile's mode for the training model; None: not compiled."""
        return "default" if self.compile is True else self.compile or None

    def channels_last_on(self, device_type: str) -> bool:
        """Whether the encoders and their inputs are channels-last on this kind of device: auto means on CUDA,
        where it measured 1.65x the clips/s of the default layout for video (BENCHMARKS.md "Training step")."""
        return self.channels_last is True or (self.channels_last == "auto" and device_type == "cuda")

    def pad_widths_on(self, device_type: str) -> int:
        """The multiple the video encoders' middle widths run at on this kind of device (0: as they are): auto
        means 8 on CUDA, where widened middle widths gave 1.11x the clips/s of a compiled step (BENCHMARKS.md
        "Training step")."""
        if self.pad_widths == "auto":
            return 8 if device_type == "cuda" else 0
        return self.pad_widths


@dataclass
class FinetuneConfig:
    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine: cosine decay to 0 over all steps; constant: no decay
    test_clips: int = 10  # evenly spaced clips per test video, softmax averaged
    checkpoint_every: int = 0  # with a state folder (the CLI's): also keep progress every N batches (0: each epoch)

    def __post_init__(self) -> None:
        _at_least(1, "finetune", self, "epochs", "batch_size", "test_clips")
        _at_least(0, "finetune", self, "lr", "weight_decay", "checkpoint_every")
        _fraction("finetune", self, "momentum")
        if self.schedule not in ("cosine", "constant"):
            raise UserError(f"finetune.schedule must be 'cosine' or 'constant', not {self.schedule!r}")


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        # numpy's seed sequences refuse negative seeds and torch's generator 64-bit overflows (the heads' seed is
        # seed * 7919 + round): both a traceback in the middle of a run
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be a whole number from 0 to {2**32 - 1}, not {self.seed!r}")
        if self.train.s2d_stem and self.data.clip.crop % 2:  # crop + the stem's padding of 3 on each side
            raise UserError(f"train.s2d_stem needs an even data.clip.crop (2 x 2 blocks), not {self.data.clip.crop}")


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), preset: str | None = None,
    mapping: dict | None = None,
) -> Config:  # fmt: skip
    """Defaults, then a named preset, then ``mapping`` (nested settings, as in a YAML file), then the YAML file at
    ``path``, then ``key.sub=value`` overrides (values parsed as YAML)."""
    if isinstance(overrides, str):  # taken character by character it was "override 'd' is not of the form key=value"
        raise TypeError(f"overrides is a list of 'key=value' strings, e.g. [{overrides!r}], not a string")
    cfg = _unchecked(path, overrides, preset, mapping)
    _revalidate(cfg)
    return cfg


def _unchecked(
    path: str | Path | None, overrides: list[str] | tuple[str, ...], preset: str | None = None,
    mapping: dict | None = None,
) -> Config:  # fmt: skip
    """load_config's settings, each of its type, not yet checked against their ranges and each other."""
    cfg = Config()
    if preset is not None:
        from xdc.presets import preset_path

        _apply_mapping(cfg, yaml.safe_load(preset_path(preset).read_text()) or {}, prefix="")
    if mapping is not None:
        _apply_mapping(cfg, mapping, prefix="")
    if path is not None:
        _apply_mapping(cfg, _read_yaml(path), prefix="")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key=value (e.g. data.clip.frames=16)")
        try:
            value = _load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: the value is not valid YAML ({_yaml_error(e)})") from None
        _set_dotted(cfg, key.strip(), value, text=raw.strip())
    return cfg


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping, which YAML does not allow: PyYAML keeps the
    last, so a second ``train:`` section of a config file would drop the first one's settings without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice (first at line {first[key].line + 1})", key_node.start_mark
                    )
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads a plain 010 as the octal number 8 and 1:30 as the base-60 number 90, which no setting means (a
# frame count of 8 for 010, unsaid, until 2026-12-03): such a scalar stays text here, which a number setting refuses
# (_coerce) and a text setting takes as written; 0x10, 0b10 and 1_000 are still numbers.
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_UniqueKeys.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeys.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|0|[1-9][0-9_]*)$"), list("-+0123456789")
)
_UniqueKeys.add_implicit_resolver(
    _FLOAT, re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789.")
)
# a number written with a leading zero, or in base 60: left as text by _UniqueKeys
_NOT_DECIMAL = re.compile(r"[-+]?(?:0[0-9_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)")


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeys)


def _yaml_error(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its message spans several, with a caret drawing)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _read_yaml(path: str | Path) -> dict:
    try:
        loaded = _load_yaml(read_text(path, "config"))
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {_yaml_error(e)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"config {path} must be a mapping of settings, got {type(loaded).__name__}")
    tree = _empty_sections(loaded or {}, Config())
    keys = list(_leaf_keys(tree))
    twice = next((key for n, key in enumerate(keys) if key in keys[:n]), None)
    if twice is not None:  # YAML's own check sees two keys, `train.k` and `train`: the later one's value was taken
        raise UserError(f"config {path} gives {twice} twice: as a dotted key and in its section; give it once")
    return tree


def _leaf_keys(tree: dict, prefix: str = "") -> Iterator[str]:
    """The dotted keys of ``tree``, each as often as it is given (a dotted key and its section both give one)."""
    for key, value in tree.items():
        yield from _leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]


def _empty_sections(tree: dict, obj: Any) -> dict:
    """``tree`` with each section that YAML read as null (``train:`` with its keys commented out) as one that sets
    nothing: until 2026-12-03 it was refused as a value given to a section."""
    filled = {}
    for key, value in tree.items():
        section = getattr(obj, str(key), None)
        if dataclasses.is_dataclass(section) and (value is None or isinstance(value, dict)):
            value = _empty_sections(value or {}, section)
        filled[key] = value
    return filled


def given_keys(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The dotted keys that the YAML file at ``path`` and the ``key=value`` overrides set, in that order, once each
    (what a user asked for, whether or not it differs from the defaults)."""
    keys = list(_flat(_read_yaml(path))) if path is not None else []
    return list(dict.fromkeys(keys + [item.partition("=")[0].strip() for item in overrides]))


def given_settings(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The settings that the YAML file at ``path`` and the ``key=value`` overrides set (``given_keys``), with their
    values typed as load_config types them, to lay over another config with ``with_settings``, which checks them
    there: not against the defaults (a tiny run's data.augment.scale_min=34 is below the default crop, not its own)."""
    cfg = _unchecked(path, overrides)
    return {key: setting(cfg, key) for key in given_keys(path, overrides)}


def setting(cfg: Any, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg``."""
    return functools.reduce(getattr, key.split("."), cfg)


def with_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with each dotted key of ``settings`` set to its value, checked as load_config checks."""
    cfg = copy.deepcopy(cfg)
    for key, value in settings.items():
        _set_dotted(cfg, key, value)
    _revalidate(cfg)
    return cfg


def _flat(tree: dict, prefix: str = "") -> dict:
    items = {}
    for key, value in tree.items():
        items.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return items


def config_to_dict(cfg: Any) -> dict:
    """Plain dicts, lists and scalars (safe for YAML and JSON)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def settings_of(cfg: Config) -> dict[str, Any]:
    """Every setting of ``cfg`` by its dotted key, in the order of the config, as config.yaml writes its value."""
    return _flat(config_to_dict(cfg))


def config_differences(before: Config, now: Config) -> list[str]:
    """``key before, now value`` for each setting that differs, dotted keys in the order of the config."""
    old, new = settings_of(before), settings_of(now)
    return [f"{key} {old.get(key)!r}, now {new[key]!r}" for key in new if old.get(key) != new[key]]


def _apply_mapping(obj: Any, mapping: dict, prefix: str) -> None:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(obj, str(key), None)):
            _apply_mapping(getattr(obj, key), value, prefix=dotted + ".")
        else:
            _set_dotted(obj, str(key), value, shown=dotted)


def _set_dotted(root: Any, key: str, value: Any, shown: str | None = None, text: str | None = None) -> None:
    """Set the dotted ``key`` to ``value``, of its type; ``text``: the value as typed in an override."""
    shown = shown or key
    *parents, leaf = key.split(".")
    obj = root
    for part in parents:
        child = getattr(obj, part, None)
        if not dataclasses.is_dataclass(child):
            raise UserError(f"unknown setting {shown!r}{_choices(obj)}{_meant(shown)}")
        obj = child
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if leaf not in fields:
        raise UserError(f"unknown setting {shown!r}{_choices(obj)}{_meant(shown)}")
    hint = typing.get_type_hints(type(obj))[leaf]
    if dataclasses.is_dataclass(getattr(obj, leaf)):
        raise UserError(f"{shown!r} is a section; set one of its keys, e.g. {shown}.<key>=...")
    if text is not None and hint in (str, str | None) and not isinstance(value, (str, list, dict, type(None))):
        value = text  # YAML's number or date would change a name: train.init=001 (a folder) reads as 1
    setattr(obj, leaf, _coerce(value, hint, shown))


def _choices(obj: Any) -> str:
    return "; valid keys here: " + ", ".join(f.name for f in dataclasses.fields(obj))


def _meant(shown: str) -> str:
    """The setting a key given in the wrong section names (`rounds:` at the top of a YAML file is train.rounds),
    or where a preset is chosen: the valid keys of the section alone did not say (until 2026-12-03)."""
    if shown == "preset":
        return " (a preset is chosen with the command's --preset, not in a config)"
    name = shown.rsplit(".", 1)[-1]
    keys = [key for key in _flat(config_to_dict(Config())) if key.rsplit(".", 1)[-1] == name]
    return f" (did you mean {' or '.join(keys)}?)" if keys else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [v if item is Any else _coerce(v, item, key) for v in value]
        return origin(items)
    if hint in (int, float) and isinstance(value, str) and _NOT_DECIMAL.fullmatch(value):
        raise UserError(f"{key}: {value} is not a plain decimal number (YAML 1.1 reads a leading zero as octal, 010 as "
                        "8, and 1:30 as base 60, 90): write it without the leading zero or colon")  # fmt: skip
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key} must be an integer, not {value!r}")
    if hint is float:
        # text too: YAML 1.1 reads 1e-5 (no dot) as text. Finite: YAML's .inf and .nan passed range checks written
        # as comparisons (train.lr=.inf, data.clip.fps=.nan)
        number = _decimal(str(value)) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
        if number is None:
            raise UserError(f"{key} must be a finite number, not {value!r}")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key} must be a string, not {value!r}")
    return value


def _decimal(text: str) -> float | None:
    """The finite number ``text`` writes (1e-5, 2E3), or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _revalidate(obj: Any) -> None:
    """Run ``__post_init__`` checks again after values were set by attribute."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _revalidate(child)
    post = getattr(obj, "__post_init__", None)
    if post is not None:
        post()
