"""``xdc pretrain``: deep-clustering rounds for every method of the XDC family.

A round, as numbered steps:
  1. extract  - features of every usable video (one fixed clip, eval mode, no augmentation), sharded over ranks
                and gathered in dataset order on rank 0 (train.cluster_on=shards: left on their ranks);
  2. cluster  - per label set of the method: PCA-whiten + L2, k-means (or balanced Sinkhorn) with a new seed, on
                rank 0 with labels broadcast (shards: on all ranks together); NMI against the previous round and
                cluster-size statistics logged;
  3. heads    - a fresh linear head per (encoder, label set) with its own optimizer;
  4. train    - epochs of clips drawn uniformly over clusters, cross-entropy against the pseudo-labels, until
                `train.epochs` or (recluster=plateau) until the held-back loss stops improving;
  5. save     - an atomic checkpoint that resumes exactly (also every `train.checkpoint_every` steps).
Which features are clustered and which labels train which head is the method's table (xdc.methods).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from xdc import __version__
from xdc.atomic import WriteError, move, remove_partials
from xdc.clustering.features import preprocess_features
from xdc.clustering.kmeans import LABEL_DTYPE, kmeans
from xdc.clustering.metrics import cluster_stats, collapse_threshold, nmi
from xdc.clustering.sampler import ClusterBalancedSampler
from xdc.clustering.sharded import (
    assemble_labels,
    free_device_memory,
    global_count,
    sharded_kmeans,
    sharded_preprocess_features,
    torch_search,
)
from xdc.clustering.sinkhorn import balance
from xdc.clustering.sinkhorn import memory_bytes as sinkhorn_memory
from xdc.config import (
    Config,
    TrainConfig,
    config_to_dict,
    load_config,
    node_ranks,
    setting,
    settings_of,
    with_settings,
)
from xdc.data.clip_cache import ClipCache
from xdc.data.datasets import PREFETCH, EvalClips, TrainClips, make_loader, with_waits
from xdc.data.failures import FailureLog, TooManyFailures
from xdc.data.index import PROBE_VERSION, OlderProbes, number
from xdc.data.manifest import Manifest, check_manifest_file, first_of_each_path, write_atomic, write_videos
from xdc.data.transforms import DeviceCrops, DeviceLogMel, NormalizeVideo
from xdc.data.worker_deaths import Surviving
from xdc.errors import SharedError, UserError
from xdc.limits import usable_memory_bytes
from xdc.methods import MANIFEST_LABELS, Method, get_method
from xdc.models.device_form import device_form, warn_cudnn_fault
from xdc.models.encoders import LAYOUTS, build_encoder, check_one_clip_trains
from xdc.models.heads import LinearHead
from xdc.progress import progress_bar
from xdc.training import checkpoint
from xdc.training.checkpoint import KeptParts, save_npz
from xdc.training.distributed import (
    FAILURE_CHECK_BATCHES,
    Dist,
    barrier,
    broadcast_buffers,
    broadcast_labels,
    failures_line,
    gather_objects,
    gather_rows,
    judge_failures,
    on_main,
    PER_RANK_SETTINGS,
    same_settings,
)
from xdc.training.runlog import RunLog
from xdc.training.to_host import ToHost


# Settings of how a run goes, not of what it computes (the loader's workers change no weight): a resume takes
# them where given, e.g. to go on past files gone for good after data.max_fail_fraction stopped the run, which
# until 2026-12-01 took a hand edit of config.yaml. And train.lr, which does change the weights: a run that
# diverged goes on from its last checkpoint with a lower one rather than start over. Every other setting is the run's.
RESUME_SETTINGS = ("data.workers", "data.max_fail_fraction", "data.read_timeout_s", "train.checkpoint_every",
                   "train.log_every", "train.lr")  # fmt: skip
PROGRESS_SAVED = ("round", "epoch", "step", "global_step", "best_holdout", "bad_epochs", "times")  # in checkpoints
# what every checkpoint holds, since the first (``Pretrainer._save``)
CHECKPOINT_KEYS = {"method", "encoders", "optimizer", "heads", "head_optimizer", "progress", "labels", "previous",
                   "torch_rng"}  # fmt: skip


class Diverged(SharedError):
    """The training diverged (a loss, the weights or the features not finite): a stop that the log's ``stop`` record
    tells from the others."""


@dataclass
class Progress:
    """Where a run is; with the weights, optimizers and labels, it is everything a resume needs."""

    round: int = 0
    epoch: int = 0  # epoch within the round
    step: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_holdout: float = math.inf
    bad_epochs: int = 0
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # this round's label sets (empty: not clustered)
    previous: dict[str, np.ndarray] = field(default_factory=dict)  # last round's until this round's exist (NMI)
    # this round's seconds in extraction, clustering and training so far, checkpointed: a resumed round's record
    # has them all (until 2026-12-01 it had the training after the resume alone)
    times: dict[str, float] = field(default_factory=dict)


class EncodersWithHeads(nn.Module):
    """Encoders plus this round's heads, as one module so that DDP sees every parameter."""

    def __init__(self, encoders: nn.ModuleDict, method: Method, feature_dims: dict[str, int], sizes: dict[str, int]):
        super().__init__()
        self.encoders = encoders
        self.method = method
        self.heads = nn.ModuleDict(
            {_key(e, s): LinearHead(feature_dims[e], sizes[s]) for e, s in method.heads}
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        used = {e for e, _ in self.method.heads}
        features = {e: self.encoders[e](inputs[self.method.encoders[e]]) for e in used}
        return {_key(e, s): self.heads[_key(e, s)](features[e]) for e, s in self.method.heads}


def _key(encoder: str, label_set: str) -> str:
    return f"{encoder}__{label_set}"


@dataclass
class FeatureShard:
    """This rank's extracted features (train.cluster_on=shards): rows of the videos ``index`` only."""

    index: np.ndarray  # int64 dataset indices of the rows
    rows: dict[str, torch.Tensor]  # per encoder: (len(index), feature dim)


def sinkhorn_device(points: int, cfg: TrainConfig, ctx: Dist, sharded: bool = False) -> torch.device:
    """Where train.assign=sinkhorn balances ``points`` rows: on the rank's CUDA device where its matrix fits in the
    memory free there (about 100 passes of exponentials over the matrix: minutes on a CPU at a million videos), else
    on the CPU. With train.cluster_on=shards (``sharded``) the ranks decide together, the GPU only if every rank's
    share fits on its own: one device kind for all, so that each rank's exponentials round as the others' do, and
    one note, from rank 0. Then a collective: every rank calls it."""
    device = ctx.device
    if device.type != "cuda":
        return device
    need = sinkhorn_memory(points, cfg.k, cfg.pca_dim)
    short = torch.tensor([need - free_device_memory(device)], dtype=torch.float64, device=device)
    if sharded and ctx.enabled:
        torch.distributed.all_reduce(short, op=torch.distributed.ReduceOp.MAX)
    short = short.item()
    if short <= 0:
        return device
    if ctx.main:
        whose = "a rank's share of its matrix" if sharded and ctx.enabled else "its matrix"
        print(f"NOTE: train.assign=sinkhorn balances on the CPU: {whose} needs {short / 2**30:.1f} GiB more than is "
              f"free on the GPU", file=sys.stderr)  # fmt: skip
    return torch.device("cpu")


class Pretrainer:
    def __init__(self, cfg: Config, manifest_path: Path | None, out: Path, ctx: Dist, resume: bool = False):
        if cfg.train.batch_size % ctx.world_size:  # else the ranks would make another batch, and resumes drift
            # a resume cannot change it: until 2026-12-03 the line said nothing of what to do then
            instead = "; a resumed run keeps its batch: resume it on a number of ranks that divides it" * resume
            raise UserError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of the {ctx.world_size} "
                            f"ranks: it is the batch of all ranks together, split evenly{instead}")  # fmt: skip
        self.cfg, self.out, self.ctx = cfg, out, ctx
        self.method = get_method(cfg.train.method)
        modalities = self.method.modalities
        self.videos = self._index_space(manifest_path, resume)
        # uint8 video from the loader, normalised on the device (_inputs): a quarter of the bytes to move; with
        # data.crops_on at device, the training clips are also scaled, cropped and flipped there, and with
        # data.logmel_on at device the log-mel spectrograms of all clips computed there (the training clips' with
        # their masks), extraction's as well: forward only, it waits for its loader more than training does
        logmel = cfg.data.logmel_on_device(ctx.device.type)
        self.train_set = TrainClips(self.videos, cfg.data, modalities=modalities, raw_video=True,
                                    device_crops=cfg.data.crops_on_device(ctx.device.type), device_logmel=logmel)
        self.eval_set = EvalClips(self.videos, cfg.data, clips=1, modalities=modalities, raw_video=True,
                                  device_logmel=logmel)  # fmt: skip
        self.eval_set.crashed = self.train_set.crashed  # a file that killed a loader worker: one set, checkpointed
        if cfg.train.extract_cache and self.method.clustered:
            self.eval_set.cache = self._open_cache(resume)
        self.normalize_video = NormalizeVideo(ctx.device)
        self.device_crops = DeviceCrops(cfg.data.clip.crop, ctx.device) if self.train_set.device_crops else None
        self.device_logmel = DeviceLogMel(cfg.data, ctx.device) if self.train_set.device_logmel else None
        if len(self.videos) < cfg.train.k and self.method.clusters:
            raise UserError(f"{len(self.videos)} usable videos is fewer than train.k={cfg.train.k} clusters")
        if self.method.supervised and (self.videos.labels < 0).all():
            source = manifest_path or out / "videos"  # a resume without --data: the run's own videos
            raise UserError(f"method supervised needs labels in the manifest ({source} has none)")

        if ctx.device.type == "cuda":  # clip shapes are fixed: let cuDNN time its kernels once and keep the fastest
            torch.backends.cudnn.benchmark = True
        self.bf16 = cfg.train.bf16_on(ctx.device.type)
        self.channels_last = cfg.train.channels_last_on(ctx.device.type)
        # k-means' nearest-centroid search: faiss on its GPUs, else torch on this rank's GPU, else faiss on the CPU
        if faiss.get_num_gpus() > 0:
            self.kmeans_on = "faiss-gpu"
        elif torch_search(ctx.device):
            self.kmeans_on = "torch"
        else:
            self.kmeans_on = "faiss-cpu"
        if ctx.device.type == "cuda" and ctx.main and "video" in self.method.encoders.values():
            warn_cudnn_fault(self.bf16)
        if self.bf16 and ctx.device.type == "cpu" and ctx.main:
            print(
                "WARNING: train.precision=bf16 on a CPU: slower than fp32 here, and oneDNN's bf16 convolutions gave "
                "NaN gradients at random and corrupted memory on AVX512-BF16 CPUs (torch 2.14.1). Use "
                "train.precision=fp32 on CPUs.",
                file=sys.stderr,
            )
        per_rank, every = self._batch_per_rank(), cfg.train.accumulate
        if cfg.train.compile_mode() and per_rank % every and per_rank > every and ctx.main:
            smaller = per_rank // every
            print(f"NOTE: train.accumulate={every} does not divide the {per_rank} clips of a batch per rank: the "
                  f"parts of {smaller} clip{'s' * (smaller != 1)} run uncompiled (train.compile compiles for one size)",
                  file=sys.stderr)  # fmt: skip
        if per_rank // every < 2:  # a part of one clip in every batch: refused now, not after the first clustering
            shapes = self.train_set.shapes()
            for modality in sorted({self.method.encoders[name] for name, _ in self.method.heads}):
                check_one_clip_trains(modality, shapes[modality])
        torch.manual_seed(cfg.seed)
        self.encoders = nn.ModuleDict(
            {name: build_encoder(modality, cfg.model) for name, modality in self.method.encoders.items()}
        )
        if cfg.train.init is not None and not resume:  # a resumed run's weights are its checkpoint's
            self._start_from(Path(cfg.train.init))
        self.encoders.to(ctx.device)
        self.pad_widths = cfg.train.pad_widths_on(ctx.device.type)
        self.workers = cfg.data.workers_on(ctx.device.type)  # loader processes of this rank
        self._check_shared_memory()
        for name, modality in self.method.encoders.items():  # the same parameters, faster kernels (see _layout)
            device_form(self.encoders[name], modality, cfg.train, cfg.data.clip.crop, ctx.device.type)
        self.feature_dims = {name: enc.feature_dim for name, enc in self.encoders.items()}
        self.optimizer = self._sgd(self.encoders.parameters())
        self.holdout = self._holdout_mask()
        self.progress = Progress()
        self.model: EncodersWithHeads | None = None
        self.train_model: nn.Module | None = None  # self.model as the training steps call it (_wrap)
        self.head_optimizer: torch.optim.Optimizer | None = None
        self.loader: DataLoader | None = None  # this round's training loader (_train_loader)
        # torch.compile's backend with train.compile; the tests pick "eager" (graph capture without code generation,
        # which takes about a minute per model on a 2-core CPU).
        self.compile_backend = "inductor"
        self.failures = FailureLog(cfg.data.max_fail_fraction, alone=not ctx.enabled)  # under DDP: judge_failures
        self.noted_data_wait = False  # _note_data_wait says it once per run
        self.kept_clips = 0  # of the last extraction, read back from train.extract_cache
        self.log = RunLog(out, enabled=ctx.main)
        self.new = not resume  # checkpoints once begun (run): until 2026-12-01, a kill in round 0 could not resume
        self.training_since: float | None = None  # while a round trains: when its train_s was last counted
        self.saved_step = 0  # the global step of the last checkpoint: the one a diverged run goes on from

    def _start_from(self, init: Path) -> None:
        """train.init: each encoder of ``init`` (a run, an export or the released weights) that has the name, the
        modality and the model settings of one of this run's takes its place; the others stay random."""
        from xdc.evaluation.sources import encoder_sources

        sources = encoder_sources(init)  # a run's encoders.pt read once (until 2026-12-03 once, then per encoder)
        given = {name: source.modality for name, source in sources.items()}
        taken = [name for name, modality in self.method.encoders.items() if given.get(name) == modality]
        if not taken:
            have = ", ".join(f"{name} ({modality})" for name, modality in given.items())
            want = ", ".join(f"{name} ({modality})" for name, modality in self.method.encoders.items())
            raise UserError(f"train.init {init} has none of the encoders of method {self.method.name}, {want}; "
                            f"it has {have}")  # fmt: skip
        for name in taken:
            source = sources[name]
            modality = source.modality
            fields = [f"{modality}_{field}" for field in ("width", "layers", "mid_width", "bn_eps")
                      if hasattr(self.cfg.model, f"{modality}_{field}")]  # fmt: skip
            differ = [f for f in fields if getattr(source.cfg.model, f) != getattr(self.cfg.model, f)]
            if differ:
                sets = " ".join(f"--set model.{f}={_set_value(getattr(source.cfg.model, f))}" for f in differ)
                raise UserError(f"train.init {init}: its {name} encoder is built otherwise than this run's; for its "
                                f"model settings: {sets}")  # fmt: skip
            self.encoders[name].load_state_dict(source.encoder.state_dict())
        if self.ctx.main:
            rest = [name for name in self.method.encoders if name not in taken]
            print(f"encoders from {init}: {', '.join(taken)}" + (f"; from random weights: {', '.join(rest)} (not in "
                  "it)" if rest else ""))  # fmt: skip

    def _index_space(self, manifest_path: Path | None, resume: bool) -> Manifest:
        """The run's videos: row i of every label set is video i. Made once, by rank 0, from the manifest after
        the datasets' policies (audio-only files out of video datasets, data.missing_audio), and saved in the run
        folder (``videos/``; readable copy ``videos.csv``): a resumed run keeps it even if the manifest file has
        changed since. Every rank maps the saved arrays read-only, so the ranks of a node and their loader
        workers share one copy of every path, and only rank 0 pays for parsing the manifest (at 65M videos
        about 2 minutes and 7 GB). A rank that does not see rank 0's run folder (another node without a shared
        file system) makes its own copy afterwards."""
        folder = self.out / "videos"

        def save() -> None:  # by rank 0, for a new run or one started before runs kept videos/
            if resume and folder.exists():
                self._check_relative_paths(self._run_videos(folder))
                return
            kept = self._usable_videos(manifest_path, progress=True)
            self._check_sinkhorn_memory(len(kept))
            self.out.mkdir(parents=True, exist_ok=True)
            write_videos(self.out / "videos.csv", kept, progress=True)  # first: videos/ says both are whole
            kept.save(folder)
            # returning frees kept before the saved copy is mapped below: at 65M videos the paths alone are 4 GB

        on_main(save, self.ctx)  # the other ranks wait for the folder; when rank 0 fails, they stop with its error
        if folder.exists():
            return self._run_videos(folder)
        # until 2026-12-03 unsaid, and the run's checkpoints, on rank 0's disk alone, came to light at its --resume
        print(f"WARNING: rank {self.ctx.rank} does not see {folder}, which rank 0 wrote: its node does not share the "
              "run folder, so it reads the manifest itself, and a --resume of this run will stop; put --out on a "
              "filesystem that every node sees", file=sys.stderr)  # fmt: skip
        return self._usable_videos(manifest_path, progress=False)

    def _run_videos(self, folder: Path) -> Manifest:
        """The run's ``videos/``; one line where a file of it is missing or damaged (a copy of the run folder that
        stopped short), not a traceback from numpy (until 2026-12-03)."""
        try:
            return Manifest.open(folder)
        except (OSError, ValueError) as e:
            reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
            raise UserError(f"cannot read the run's videos ({reason}): {folder} is written once, at the run's "
                            "start; copy it again from the run folder it came from, or start a new run") from None

    def _check_relative_paths(self, videos: Manifest) -> None:
        """A run started before 2026-12-02 on a manifest of relative paths kept them as written, relative to the
        folder it was started in: from another, refuse at the start what would fail every file after a whole
        extraction. Its first video tells (a manifest mixes both kinds rarely, and reading every path of 65M is
        seconds)."""
        first = videos.path(0) if len(videos) else ""
        if first and not os.path.isabs(first) and not os.path.exists(first):
            raise UserError(f"{self.out} keeps its videos' paths relative to the folder it was started in (a "
                            f"manifest of relative paths, before 2026-12-02), and {first} is not in {os.getcwd()}: "
                            "resume it from the folder it was started in")  # fmt: skip

    def _open_cache(self, resume: bool) -> ClipCache | None:
        """train.extract_cache: this rank's file of its extraction clips (videos rank, rank + W, ...) in the run
        folder, kept across a resume; None, with a warning, where its disk cannot hold it."""
        folder, rank, ranks = self.out / "extract_cache", self.ctx.rank, self.ctx.world_size
        run = str(self.out.resolve())
        # runs whose cache folders link to one place (one local SSD) name their files apart: none removes or
        # overwrites another's. A hex tag never starts with "rank": the code before it leaves these files alone too
        tag = hashlib.blake2b(run.encode(), digest_size=4).hexdigest()
        if self.ctx.main:
            _remove_stale_caches(folder, tag, ranks, run)
        # the run's folder too: a record another run wrote in this file (a tag shared by chance) is a miss
        settings = {"clip": asdict(self.cfg.data.clip), "mel": asdict(self.cfg.data.mel), "run": run}
        cache = ClipCache(folder / f"{tag}-rank{rank}of{ranks}", range(rank, len(self.eval_set), ranks),
                          self.eval_set.cache_fields(), settings)  # fmt: skip
        if not resume:  # left by a run started here that never reached a checkpoint: its records are other videos'
            cache.remove()
        why = cache.open(sharers=node_ranks())  # the node's ranks each fill a file like it, likely on one disk
        if why is None:
            return cache
        cache.remove()  # its disk is given back rather than held until the run ends
        print(f"WARNING: {why}: rank {rank} runs without train.extract_cache", file=sys.stderr)
        return None

    @contextlib.contextmanager
    def _cache_pass(self):
        """Around a pass over evaluation clips: what it adds to the extraction cache is on disk when it ends. Where
        its disk fails it (full), the rank goes on without the cache, as where it could not open."""
        cache = self.eval_set.cache
        if cache is not None:
            self._cache_step(cache.begin)
        yield
        if self.eval_set.cache is not None:
            self._cache_step(cache.end)

    def _cache_step(self, step: Callable[[], None]) -> None:
        try:
            step()
        except (OSError, WriteError) as e:  # WriteError: its state file's (xdc.atomic)
            self.eval_set.cache.remove()  # records whose pass did not end are never trusted: none kept
            self.eval_set.cache = None
            why = getattr(e, "strerror", None) or e
            print(f"WARNING: the extraction cache's disk failed ({why}): rank {self.ctx.rank} goes on without "
                  "train.extract_cache", file=sys.stderr)  # fmt: skip

    def _check_sinkhorn_memory(self, videos: int) -> None:
        """train.assign=sinkhorn holds a videos x k float64 matrix on rank 0 (with train.cluster_on=shards, each
        rank its share of the rows), on its GPU where it fits there (sinkhorn_device), else in its host memory:
        refuse at the start what would fit in neither, which would run out of memory at the first clustering,
        after a whole extraction. Checked by rank 0, for its own share."""
        cfg = self.cfg.train
        if cfg.assign != "sinkhorn" or not self.method.clusters:
            return
        ranks = self.ctx.world_size if cfg.cluster_on == "shards" else 1
        need = sinkhorn_memory(-(-videos // ranks), cfg.k, cfg.pca_dim)
        have = usable_memory_bytes()
        gpu = free_device_memory(self.ctx.device) if self.ctx.device.type == "cuda" else 0
        if need > max(have, gpu):
            on_gpu = f" or the {gpu / 2**30:.1f} GiB free on its GPU" if gpu else ""
            where = f"on each of the {ranks} ranks (train.cluster_on=shards)" if ranks > 1 else "on rank 0"
            more = "" if ranks > 1 else ", or train.cluster_on=shards over more ranks"
            raise UserError(f"train.assign=sinkhorn on {videos} videos at train.k={cfg.k} needs about "
                            f"{need / 2**30:.1f} GiB {where} (a videos x k float64 matrix), more than the "
                            f"{have / 2**30:.1f} GiB this process may use (the machine's memory or its cgroup's "
                            f"limit){on_gpu}: use train.assign=kmeans or a smaller train.k{more}")  # fmt: skip

    def _check_shared_memory(self) -> None:
        """Loader workers hand their batches over in shared memory (/dev/shm), for every rank of the node: up to
        PREFETCH batches per worker waiting there on a CPU; on CUDA, where a thread of the training process copies
        each batch into page-locked memory as it comes, about one. A container's default (Docker's is 64 MiB)
        holds far less than a GPU run needs: refuse at the start what would kill the workers with a bus error."""
        try:
            stat = os.statvfs("/dev/shm")
        except OSError:
            return  # not Linux: no such file system to check
        free = stat.f_bavail * stat.f_frsize
        item = self.train_set.item_bytes()
        ranks = node_ranks()
        waiting = 1 if self.ctx.device.type == "cuda" else PREFETCH
        need = ranks * self.workers * waiting * self._batch_per_rank() * item
        if need > free:
            raise UserError(f"the loaders of this node need about {need / 2**20:,.0f} MiB of shared memory ({ranks} "
                            f"rank(s) x data.workers={self.workers} x {waiting} batch(es) of {self._batch_per_rank()} "
                            f"clips) and /dev/shm has {free / 2**20:,.0f} MiB free: give the container more (docker "
                            "run --shm-size=16g) or set fewer data.workers")  # fmt: skip

    def _usable_videos(self, manifest_path: Path | None, progress: bool) -> Manifest:
        """The manifest's videos that the training clips can use (the rest are dropped by TrainClips' policy)."""
        if manifest_path is None:  # resumed without --data
            raise UserError(f"{self.out} was started before runs kept their videos (videos/): resume it with --data "
                            "and the manifest it was started with")  # fmt: skip
        older = OlderProbes() if self.ctx.main else None
        loaded = Manifest.load(manifest_path, progress=progress, chunks=older)
        if older is not None and older.rows:  # until 2026-12-03 trained on as an older xdc index judged them, unsaid
            print(f"WARNING: {manifest_path}: {older.rows} row(s) made by the checks of an older xdc index, which "
                  f"may judge their files differently now (its checks are of version {PROBE_VERSION}); to refresh it, "
                  f"run xdc index on its folders (and --labels) with --out {manifest_path}: it probes only those rows "
                  "again", file=sys.stderr)  # fmt: skip
        once, dropped = first_of_each_path(loaded, manifest_path)
        if len(dropped) and self.ctx.main:  # until 2026-12-02 such a file was trained on twice, unsaid
            print(f"WARNING: {manifest_path}: {len(dropped)} row(s) of a file listed in an earlier row left out "
                  f"(e.g. {loaded.path(int(dropped[0]))})", file=sys.stderr)
        loaded = once
        kept = TrainClips(loaded, self.cfg.data, modalities=self.method.modalities).manifest
        reads = " and ".join(self.method.modalities)
        if not len(kept):  # files without audio (or without pictures) left out: say so, not "0 videos"
            raise UserError(f"{manifest_path}: none of its {len(loaded)} usable files has {reads}, which method "
                            f"{self.cfg.train.method} reads (data.missing_audio={self.cfg.data.missing_audio})")
        if len(kept) < len(loaded) and self.ctx.main:  # until 2026-12-03 left out unsaid
            print(f"{manifest_path}: {len(loaded) - len(kept)} of its {len(loaded)} usable files left out, lacking "
                  f"{' or '.join(self.method.modalities)}, which method {self.cfg.train.method} reads "
                  f"(data.missing_audio={self.cfg.data.missing_audio}); training on {len(kept)}")  # fmt: skip
        return kept

    # --- the run ------------------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg.train
        # what the train settings left at auto became here: the config says auto, the log says what ran
        cudnn = torch.backends.cudnn.version() if self.ctx.device.type == "cuda" else None
        self.log.write("start", self.progress.global_step, device=str(self.ctx.device), ranks=self.ctx.world_size,
                       threads=torch.get_num_threads(), init=cfg.init, xdc=__version__, torch=torch.__version__,
                       cudnn=cudnn, bf16=self.bf16, channels_last=self.channels_last, pad_widths=self.pad_widths,
                       compile=cfg.compile, workers=self.workers, kmeans_search=self.kmeans_on,
                       crops_on="device" if self.device_crops else "workers",
                       logmel_on="device" if self.device_logmel else "workers", s2d_stem=cfg.s2d_stem,
                       extract_cache=self.eval_set.cache is not None, lr=cfg.lr)  # fmt: skip
        rounds = 1 if self.method.supervised else cfg.rounds
        if not self.method.trains:
            self._finish()
            return
        if self.new:  # a checkpoint before the first round: a run killed in its extraction or clustering goes on
            self._save()
        try:
            self._rounds(rounds)
        except TooManyFailures:  # raised on every rank at once (judge_failures): each takes part in the listing
            error = self._listed_failures()
            self._log_stop("failures", error)
            raise error from None
        except SharedError as e:  # xdc's own decision, on every rank: a kill or a bug leaves no record
            self._log_stop("diverged" if isinstance(e, Diverged) else "error", e)
            raise
        self._finish()

    def _log_stop(self, reason: str, error: SharedError) -> None:
        """Log why the run stopped (until 2026-12-03 nothing did: the report took it for a killed run). After the
        last checkpoint, like every stop: a resume drops it with the other records logged since."""
        p = self.progress
        try:
            self.log.write("stop", p.global_step, round=p.round, epoch=p.epoch, reason=reason, line=str(error))
        except WriteError:  # a full disk: the line that stops the run says more than this one would
            pass

    def _listed_failures(self) -> TooManyFailures:
        """The stop of a run whose clips failed too often: every rank's failed files listed in skipped.csv (by rank 0,
        as at the run's end), and the line that says so, the same on every rank. A collective."""

        def line(failures: FailureLog) -> str:
            listed = self._write_skipped(failures)
            return (f"{failures.summary()}; the {len(failures.files)} file(s) that failed are listed in {listed}: "
                    "to go on without them, --resume --set data.max_fail_fraction=HIGHER")  # fmt: skip

        return TooManyFailures(failures_line(self.failures, self.ctx, line))

    def _write_skipped(self, failures: FailureLog) -> Path:
        """Where rank 0 lists every rank's failed files (``failures``) when they stop the run: a line names one file,
        the rest, to mend or remove, are there."""
        listed = self.out / "skipped.csv"
        failures.save(listed)
        return listed

    def _rounds(self, rounds: int) -> None:
        cfg = self.cfg.train
        while self.progress.round < rounds:
            p = self.progress
            times = p.times
            if not p.labels:
                t = time.perf_counter()
                features = self._extract()
                times["extract_s"] = time.perf_counter() - t
                if self.cfg.train.extract_cache:
                    times["extract_kept"] = self.kept_clips
                t = time.perf_counter()
                p.labels = self._cluster(features)  # which frees the features as it goes
                p.previous = {}  # last round's labels were kept only to compare the new ones with
                times["cluster_s"] = time.perf_counter() - t
                self._new_heads()
                self._save()
                self._extraction_parts().clear()  # the round's labels are in the checkpoint
            self.training_since = time.perf_counter()
            epochs = cfg.epochs * (cfg.rounds if self.method.supervised else 1)
            while p.epoch < epochs:
                self._train_epoch()
                p.epoch, p.step = p.epoch + 1, 0
                if cfg.recluster == "plateau" and self._plateaued():
                    break
                self._save()
            self._count_training()
            self.training_since = None
            self.log.write("round", p.round, **times)
            self._end_round()

    def _end_round(self) -> None:
        p = self.progress
        if self.ctx.main:
            labels_dir = self.out / "labels"
            labels_dir.mkdir(exist_ok=True)
            save_npz(labels_dir / f"round_{p.round:03d}.npz", **p.labels)  # a reader never sees half of one
        p.previous = p.labels
        p.labels, p.times = {}, {}
        p.round, p.epoch, p.step = p.round + 1, 0, 0
        p.best_holdout, p.bad_epochs = math.inf, 0
        self.model = self.head_optimizer = self.loader = None  # the loader's workers end with their round
        self._save()

    def _finish(self) -> None:
        if self.eval_set.cache is not None:  # no later round will read it: give its disk back
            self.eval_set.cache.remove()
        if self.ctx.main:  # each rank's parts went with its round; the folder that held them goes too
            shutil.rmtree(self.out / "extract_parts", ignore_errors=True)
        ranks = gather_objects(self.failures.state(), self.ctx)  # every rank's failures: skipped.csv lists them all
        if self.ctx.main:
            folder = self.out / "extract_cache"
            # every rank's cache files are gone (gather_objects waited for them). A link (to a place that other runs'
            # caches may share) stays as made, and a folder that still holds files holds another run's
            with contextlib.suppress(OSError):
                if not folder.is_symlink():
                    folder.rmdir()
            failures = FailureLog(self.cfg.data.max_fail_fraction)
            failures.merge(ranks)
            if failures.files:
                failures.save(self.out / "skipped.csv")
                print(f"{len(failures.files)} file(s) failed to load during the run and were left out, each with its "
                      f"reason in {self.out / 'skipped.csv'}", file=sys.stderr)  # fmt: skip
        self.log.close()  # the run's other files written before encoders.pt: a resume of a finished run writes none
        if self.ctx.main:
            checkpoint.save_atomic(
                {"method": self.method.name, "encoders": {n: e.state_dict() for n, e in self.encoders.items()},
                 "modalities": dict(self.method.encoders), "config": config_to_dict(self.cfg)},
                self.out / "encoders.pt",
            )  # fmt: skip

    # --- 1. extract ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def _extract(self) -> dict[str, torch.Tensor] | FeatureShard:
        """Features of every usable video, gathered in dataset order on rank 0 (NaN rows: failed clips; the other
        ranks get None); with train.cluster_on=shards, only this rank's rows, which never leave it. Each rank keeps
        its rows in parts as it goes (``_extraction_parts``): a run resumed in the middle of an extraction
        computes only what no part holds."""
        clustered = self.method.clustered
        if not clustered:
            return {}
        broadcast_buffers(self.encoders, self.ctx)  # every rank's features from the statistics a checkpoint keeps
        self.encoders.eval()
        kept_parts = self._extraction_parts()
        parts = _leading(kept_parts.load())
        done = sum(part["positions"] for part in parts)  # of this rank's shard: whole batches
        if parts:  # what the run had counted by then, the extraction's failures and files that killed a worker
            self.failures.load_state(parts[-1]["failures"])
            self.train_set.crashed.update(parts[-1]["crashed"])
            if self.ctx.main:
                print(f"round {self.progress.round}: extraction goes on after the parts kept in {kept_parts.folder} "
                      f"({done} of this rank's videos)")  # fmt: skip
        shard = Subset(self.eval_set, range(self.ctx.rank, len(self.eval_set), self.ctx.world_size)[done:])
        pin = self.ctx.device.type == "cuda"
        loader = make_loader(shard, self._batch_per_rank(), self.workers, pin_memory=pin)
        part = _ExtractionPart(clustered, self.feature_dims)
        desc = f"round {self.progress.round}: extract"
        kept = -(-done // self._batch_per_rank())  # a resumed pass's bar counts the batches of its parts too
        bar = progress_bar(Surviving(loader), desc=desc, unit="batch", show=self.ctx.main, leave=False, initial=kept,
                           total=kept + len(loader))  # fmt: skip
        with self._cache_pass():
            for taken, batch in enumerate(bar, 1):
                self.failures.update(batch)
                if taken % FAILURE_CHECK_BATCHES == 0:
                    judge_failures(self.failures, self.ctx)
                part.positions += batch["size"]
                if batch["index"].numel():
                    part.add(batch, self._embed(batch, clustered))
                if time.monotonic() - part.started >= EXTRACTION_PART_S:
                    parts.append(part.kept(self.failures, self.train_set.crashed))
                    kept_parts.add(len(parts) - 1, parts[-1])
                    part = _ExtractionPart(clustered, self.feature_dims)
        judge_failures(self.failures, self.ctx, going=False)
        parts.append(part.kept(self.failures, self.train_set.crashed))
        self.encoders.train()
        if self.cfg.train.extract_cache:  # every rank, whether its own cache could open or not
            cached = sum(p["cached"] for p in parts)
            self.kept_clips = global_count(cached, self.ctx.device)  # clips read back, all ranks: the round's log
        index = _joined([p["index"] for p in parts])
        # one encoder at a time, each one's pieces dropped once joined: never all features twice
        mine = {e: _joined([p["features"].pop(e) for p in parts]) for e in clustered}
        # a diverged encoder's rows would pass for failed clips (NaN) in clustering: "only 0 videos gave features"
        bad = torch.zeros(len(index), dtype=torch.bool)
        for rows in mine.values():  # every encoder's rows are those of ``index``, in its order
            bad |= ~rows.isfinite().all(1)
        bad = global_count(int(bad.sum()), self.ctx.device)
        if bad:
            raise Diverged(f"round {self.progress.round}: the features of {bad} of {len(self.videos)} videos are "
                           f"NaN or infinite: the training diverged; start a new run with a lower train.lr (this "
                           f"run's: {self.cfg.train.lr})")  # fmt: skip
        count = global_count(len(index), self.ctx.device)
        if count < self.cfg.train.k:
            raise SharedError(failures_line(self.failures, self.ctx, partial(self._too_few, count)))
        if self.cfg.train.cluster_on == "shards":
            return FeatureShard(index.numpy(), mine)
        return {e: gather_rows(mine.pop(e), index, len(self.videos), self.ctx) for e in clustered}

    def _too_few(self, count: int, failures: FailureLog) -> str:
        """The stop of a round in which only ``count`` videos, fewer than train.k, gave features: with the files that
        failed to load on every rank (``failures``), which say why (a moved collection: "file not found")."""
        line = f"only {count} of {len(self.videos)} videos gave features, fewer than train.k={self.cfg.train.k}"
        if not failures.files:
            return line
        path, reason = failures.failures[-1]
        listed = self._write_skipped(failures)
        return f"{line}; {len(failures.files)} file(s) failed to load, listed in {listed}, the last {path}: {reason}"

    def _extraction_parts(self) -> KeptParts:
        """Where this rank keeps the parts of this round's extraction (``extract_parts/`` in the run folder), made
        with this round's weights (its global step) and shard (rank, ranks, batch): with other ones, a run starts
        the extraction over."""
        made = (f"round {self.progress.round} step {self.progress.global_step} rank {self.ctx.rank} of "
                f"{self.ctx.world_size} batch {self._batch_per_rank()}")  # fmt: skip
        return KeptParts(self.out / "extract_parts" / f"rank{self.ctx.rank}", made)

    def _embed(self, batch: dict, encoders: list[str]) -> dict[str, torch.Tensor]:
        """Features of a batch of evaluation clips from each of ``encoders`` (in eval mode), on the device: computed
        in train.precision, as training runs, and returned in float32, as they are stored."""
        clips = self._inputs(batch)
        features = {}
        for e in encoders:
            modality = self.method.encoders[e]
            with self._autocast():
                features[e] = self.encoders[e](self._layout(modality, clips[modality])).float()
        return features

    # --- 2. cluster ---------------------------------------------------------------------------------------

    def _cluster(self, features: dict[str, torch.Tensor] | FeatureShard) -> dict[str, np.ndarray]:
        """Every label set's labels of every video. Consumes ``features``: each encoder's rows are dropped after
        the last label set that clusters them (XDC's second set runs without the first set's features)."""
        labels = {}
        rows = features.rows if isinstance(features, FeatureShard) else features
        sets = list(self.method.label_sets.items())
        for i, (name, encoders) in enumerate(sets):
            if name == MANIFEST_LABELS:
                labels[name] = self.videos.labels.astype(LABEL_DTYPE)
            elif isinstance(features, FeatureShard):  # every rank clusters its rows together with the others'
                labels[name] = self._cluster_one(name, encoders, features.rows, features.index, i, sharded=True)
            else:
                everything = np.arange(len(self.videos))
                assigned = on_main(partial(self._cluster_one, name, encoders, features, everything, i), self.ctx)
                labels[name] = broadcast_labels(assigned, self.ctx)
            later = {e for _, needed in sets[i + 1 :] for e in needed}
            for e in [e for e in rows if e not in later]:
                del rows[e]
        return labels

    def _cluster_one(
        self, name: str, encoders: tuple[str, ...], features: dict, index: np.ndarray, seed_offset: int,
        sharded: bool = False,
    ) -> np.ndarray:  # fmt: skip
        """One label set's labels for every video (-1: no features) from the feature rows of videos ``index``:
        all of them (on rank 0), or this rank's share, clustered together with the other ranks' (sharded).

        Both draw the initial centroids from the video indices and the seed, so they start from the same
        videos; see docs/clustering.md "At scale" for when their labels can still differ.
        """
        cfg, p, device = self.cfg.train, self.progress, self.ctx.device
        x = (features[encoders[0]] if len(encoders) == 1 else torch.cat([features[e] for e in encoders], 1)).numpy()
        valid = ~np.isnan(x).any(axis=1)
        if not valid.all():  # copies only when rows are missing: at scale x is the largest array of the step
            x = x[valid]
        ids = index[valid]
        seed = self.cluster_seed(seed_offset)
        # xdc.clustering.sharded's Lloyd k-means: over all ranks (shards), or rank 0 alone for the torch search
        if sharded or self.kmeans_on == "torch":
            search = "torch" if self.kmeans_on == "torch" else "faiss"
            x = sharded_preprocess_features(x, dim=cfg.pca_dim, device=device, alone=not sharded)
            result = sharded_kmeans(x, cfg.k, seed, iters=cfg.kmeans_iters, ids=ids, device=device, search=search,
                                    alone=not sharded)  # fmt: skip
        else:
            x = preprocess_features(x, dim=cfg.pca_dim)
            result = kmeans(x, cfg.k, seed, iters=cfg.kmeans_iters, ids=ids)
        if cfg.assign == "sinkhorn":  # over all ranks (shards), or on rank 0 alone
            on = sinkhorn_device(len(x), cfg, self.ctx, sharded)
            result = balance(x, result, device=on, ids=ids, sharded=sharded, comm_device=device)
        if sharded:
            labels = assemble_labels(result.assignments, ids, len(self.videos), device)
        else:
            labels = np.full(len(self.videos), -1, dtype=LABEL_DTYPE)
            labels[ids] = result.assignments
        if not self.ctx.main:  # the log and the warning are rank 0's
            return labels
        stats = cluster_stats(labels[labels >= 0], cfg.k, collapse_fraction=cfg.collapse_fraction)
        record = {f"{name}/{k}": v for k, v in stats.to_dict().items() if isinstance(v, (int, float))}
        if name in p.previous:
            both = (labels >= 0) & (p.previous[name] >= 0)
            record[f"{name}/nmi_previous"] = nmi(labels[both], p.previous[name][both])
        record[f"{name}/kmeans_loss"] = float(result.loss)
        record[f"{name}/kmeans_iterations"] = result.iterations
        self.log.write("cluster", p.round, **record)
        if stats.collapsed:
            print(
                f"WARNING: clustering collapse in round {p.round}, label set {name!r}: one cluster holds "
                f"{stats.largest_fraction:.0%} of the clips ({stats.non_empty} of {cfg.k} clusters non-empty; "
                f"more than {collapse_threshold(cfg.k, cfg.collapse_fraction):.0%} is a collapse at k = {cfg.k}). "
                "Consider train.assign=sinkhorn, a smaller train.k, or a lower train.lr.",
                file=sys.stderr,
            )
        return labels

    def _failed_here(self) -> str:
        """What failed to load on this rank, for a stop that says why videos are missing (a moved collection: "file
        not found"); empty when nothing did."""
        if not self.failures.files:
            return ""
        path, reason = self.failures.failures[-1]
        return f"; {len(self.failures.files)} file(s) failed to load here, the last {path}: {reason}"

    def cluster_seed(self, label_set_number: int) -> int:
        """A new k-means seed every round (DeepCluster), reproducible from the run's seed."""
        return (self.cfg.seed * 1_000_003 + self.progress.round * 101 + label_set_number) % (2**31)

    # --- 3. heads -----------------------------------------------------------------------------------------

    def _new_heads(self) -> None:
        torch.manual_seed(self.cfg.seed * 7919 + self.progress.round)  # heads differ per round, reproducibly
        sizes = {name: self._classes(name) for name in self.method.label_sets}
        model = EncodersWithHeads(self.encoders, self.method, self.feature_dims, sizes).to(self.ctx.device)
        self.model = model
        self.train_model = self._wrap(model)
        self.head_optimizer = self._sgd(model.heads.parameters())

    def _wrap(self, model: EncodersWithHeads) -> nn.Module:
        """DDP across ranks, then torch.compile (as PyTorch advises, so that compiled graphs split at DDP's
        gradient buckets). Both wrap ``model`` without changing it: checkpoints, which save ``self.encoders`` and
        ``self.model.heads``, keep the plain key names (no ``module.`` or ``_orig_mod.`` prefix). The new heads of
        a later round have the same shapes, so the compiled graph is reused, not compiled again."""
        if self.ctx.enabled:
            cuda = self.ctx.device.type == "cuda"
            model = DistributedDataParallel(model, device_ids=[self.ctx.device.index] if cuda else None)
        mode = self.cfg.train.compile_mode()
        if mode:
            model = torch.compile(model, backend=self.compile_backend, mode=None if mode == "default" else mode)
        return model

    def _classes(self, label_set: str) -> int:
        return len(self.videos.classes) if label_set == MANIFEST_LABELS else self.cfg.train.k

    def _sgd(self, params) -> torch.optim.Optimizer:
        t = self.cfg.train
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    # --- 4. train -----------------------------------------------------------------------------------------

    def _sampler(self) -> ClusterBalancedSampler:
        p = self.progress
        sets = sorted({s for _, s in self.method.heads})
        hide = self.holdout.any()  # a copy of each label set only when videos are held back
        label_sets = [np.where(self.holdout, -1, p.labels[s]) if hide else p.labels[s] for s in sets]
        for name, labels in zip(sets, label_sets):
            if hide and not (labels >= 0).any():  # else the sampler raised: every labelled video is held back
                which = "labelled in the manifest" if name == MANIFEST_LABELS else f"with {name!r} labels"
                # every rank raises it (the labels and the holdout are the same on all): rank 0 says it
                raise SharedError(f"round {p.round}: no video is left to train on: the {(p.labels[name] >= 0).sum()} "
                                  f"{which} are all among the {self.holdout.sum()} of {len(self.videos)} held back by "
                                  f"train.recluster=plateau (train.holdout_fraction={self.cfg.train.holdout_fraction})"
                                  f"{self._failed_here()}")  # fmt: skip
        return ClusterBalancedSampler(
            label_sets, self.cfg.train.epoch_size or len(self.videos), seed=self.cfg.seed,
            rank=self.ctx.rank, world_size=self.ctx.world_size,
        )  # fmt: skip

    def _train_epoch(self) -> None:
        p, cfg = self.progress, self.cfg.train
        model = self.train_model
        model.train()
        desc = f"round {p.round} epoch {p.epoch}"
        batches = Surviving(self._train_loader())  # from step p.step: a resumed epoch's bar counts those before it
        bar = progress_bar(batches, desc=desc, unit="batch", show=self.ctx.main, leave=False, initial=p.step,
                           total=p.step + len(batches))  # fmt: skip
        t, clips = time.perf_counter(), 0
        waited, since = 0.0, None  # the wait for the loader after the epoch's first batch, and since when
        for batch, wait in with_waits(bar):
            if since is None:  # the first batch waits for the workers to start the epoch, not for their pace
                since = time.perf_counter()
            else:
                waited += wait
            self.failures.update(batch)
            if (p.global_step + 1) % FAILURE_CHECK_BATCHES == 0:  # every rank takes the same steps
                judge_failures(self.failures, self.ctx)
            loss, accuracy = self._step(model, batch)
            p.step += 1
            p.global_step += 1
            clips += batch["index"].numel()
            if p.global_step % cfg.log_every == 0:  # .item() waits for the device: only on the steps that log
                now = time.perf_counter()
                rate = clips * self.ctx.world_size / (now - t)
                data_wait = self._slowest(waited / max(now - since, 1e-9))
                loss = loss.item()
                self._stop_if_diverged(loss)
                self.log.write("step", p.global_step, round=p.round, epoch=p.epoch, loss=loss, clips_per_s=rate,
                               data_wait=data_wait, **{key: value.item() for key, value in accuracy.items()})
                bar.set_postfix(loss=f"{loss:.3f}", clips_per_s=f"{rate:.0f}", data_wait=f"{data_wait:.0%}")
            if cfg.checkpoint_every and p.global_step % cfg.checkpoint_every == 0:
                self._save()
        judge_failures(self.failures, self.ctx, going=False)
        share = waited / max(time.perf_counter() - since, 1e-9) if since is not None else 0.0
        self._note_data_wait(self._slowest(share))  # every rank: a collective

    def _stop_if_diverged(self, loss: float) -> None:
        """Stop every rank together where the loss of this step, already on the host to be logged, is NaN or
        infinite on any of them: until 2026-12-03 the run logged NaN losses to the end of the round, saved NaN
        weights over its last good checkpoint, and stopped only at the next extraction. A collective under DDP,
        at the steps that log (the mean of the ranks' losses: what rank 0 says)."""
        if self.ctx.enabled:
            total = torch.tensor([loss], dtype=torch.float64, device=self.ctx.device)
            torch.distributed.all_reduce(total)
            loss = total.item() / self.ctx.world_size
        if not math.isfinite(loss):
            p = self.progress
            raise Diverged(self._diverged(f"round {p.round} epoch {p.epoch}: the loss of step {p.global_step} is "
                                          f"{loss}"))  # fmt: skip

    def _diverged(self, what: str) -> str:
        """The line that stops a run whose training diverged (``what``: what was not finite), worded as eval
        finetune's; the last checkpoint, saved before, is the one to go on from."""
        return (f"{what}: the training diverged; go on from its last checkpoint "
                f"(step {self.saved_step}) with --resume --set train.lr=LOWER (this run's: {self.cfg.train.lr}), "
                "or start a new run with a lower train.lr")  # fmt: skip

    def _finite_weights(self) -> bool:
        """Whether every weight and statistic of the encoders and heads is finite, on every rank (a collective)."""
        tensors = [*self.encoders.state_dict().values()]
        if self.model is not None:
            tensors += self.model.heads.state_dict().values()
        flags = torch.stack([t.isfinite().all() for t in tensors if t.is_floating_point()])
        return not global_count(int(not flags.all().item()), self.ctx.device)

    def _slowest(self, data_wait: float) -> float:
        """The largest of the ranks' ``data_wait``. Under DDP every rank's step waits in the gradient all-reduce for
        the rank whose loader is slowest; the others count that as step time, not as waiting for clips, so rank 0's
        own share would hide a loader that holds every rank up. A collective: every rank calls it at the same
        step."""
        if not self.ctx.enabled:
            return data_wait
        x = torch.tensor([data_wait], dtype=torch.float64, device=self.ctx.device)
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
        return x.item()

    def _note_data_wait(self, data_wait: float) -> None:
        """Say once per run, on a GPU, when an epoch waited for its loader over a tenth of the time (on the slowest
        rank): then the loader, not the GPU, sets the pace (BENCHMARKS.md "Training step"), and what helps is on
        the CPU side."""
        if self.ctx.device.type != "cuda" or not self.ctx.main or self.noted_data_wait or data_wait <= 0.1:
            return
        self.noted_data_wait = True
        who = "the slowest rank" if self.ctx.enabled else "training"
        print(f"NOTE: round {self.progress.round} epoch {self.progress.epoch}: {who} waited for its clips "
              f"{data_wait:.0%} of the time: the loader's {self.workers} worker(s) are the limit, not the GPU. "
              "Transcoding the collection with `xdc prepare` makes clips cheaper to read (docs/prepare.md); "
              "more CPU cores per GPU, or data.workers if it is set below them, add workers.",
              file=sys.stderr)  # fmt: skip

    def head_targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pseudo-labels each head is trained on for these videos: the routing of the method's table."""
        return {_key(e, s): torch.from_numpy(self.progress.labels[s])[index].long() for e, s in self.method.heads}

    def _train_loader(self) -> DataLoader:
        """This round's loader, its sampler at the current epoch and step. One loader per round (the sampler holds
        the round's labels and runs in this process), so its persistent workers serve every epoch of the round
        rather than starting again at each (0.1-0.3 s per epoch with 2-8 workers on a 2-core CPU)."""
        p = self.progress
        if self.loader is None:
            pin = self.ctx.device.type == "cuda"
            self.loader = make_loader(self.train_set, self._batch_per_rank(), self.workers,
                                      sampler=self._sampler(), pin_memory=pin)  # fmt: skip
        self.loader.sampler.set_epoch(p.epoch, round=p.round)
        self.loader.sampler.set_start(p.step * self._batch_per_rank())
        return self.loader

    def _step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step. Returns the loss and each head's pseudo-label accuracy as 0-d device tensors: nothing
        here waits for the device, so the host queues the next batch's work while this one computes."""
        self.optimizer.zero_grad(set_to_none=True)
        self.head_optimizer.zero_grad(set_to_none=True)
        index = batch["index"]
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        if index.numel() == 0:  # every clip of this batch failed
            if not self.ctx.enabled:
                return total, {}  # nothing to learn from: no step
            # Under DDP the other ranks run this step's collectives (buffer broadcast, gradient all-reduce) and
            # step their optimizers: take part with an empty batch (every parameter in the graph, zero gradients)
            # and step alike, so that the ranks stay identical.
            with self._autocast():
                logits = self._for_size(model, 0)(self._empty_inputs())
            (sum(x.float().sum() for x in logits.values()) * 0.0).backward()
            self.optimizer.step()
            self.head_optimizer.step()
            return total, {}
        every = self.cfg.train.accumulate
        parts = range(min(every, len(index)))  # part i: rows i, i + every, ...
        clips = self._inputs(batch)
        batch_targets = self._targets_on_device(index)
        correct = {}
        for i in parts:
            # rows i, i + every, ... as strided views: no index tensor and no gather kernel to queue
            inputs = {m: self._layout(m, x[i::every]) for m, x in clips.items()}
            targets = {k: y[i::every] for k, y in batch_targets.items()}
            net = self._for_size(model, len(index[i::every]))
            # DDP all-reduces the gradients once, in the last part's backward; the parts before add up locally
            sync = not self.ctx.enabled or i == len(parts) - 1
            with contextlib.nullcontext() if sync else net.no_sync():
                with self._autocast():
                    logits = net(inputs)
                    # the loss in float32 whatever the precision of the logits
                    loss = torch.stack(
                        [F.cross_entropy(logits[key].float(), y, ignore_index=-1) for key, y in targets.items()]
                    ).mean() / len(parts)
                loss.backward()
            total += loss.detach()
            for key, y in targets.items():
                correct[key] = correct.get(key, 0) + (logits[key].detach().argmax(1) == y).sum()
        self.optimizer.step()
        self.head_optimizer.step()
        return total, {f"acc/{key}": c.double() / len(index) for key, c in correct.items()}

    def _for_size(self, model: nn.Module, clips: int) -> nn.Module:
        """``model`` for a part of a full batch; its uncompiled form, the same parameters, for a part of any other
        size (a batch that lost clips, an epoch's last, accumulated parts of unequal sizes). Given another size,
        TorchDynamo would compile the model again with a symbolic batch size (about a minute on an H200, while
        the other ranks wait) and serve every later batch from that graph, full ones too: not the one measured."""
        full = -(-self._batch_per_rank() // self.cfg.train.accumulate)
        return model if clips == full else getattr(model, "_orig_mod", model)

    def _empty_inputs(self) -> dict[str, torch.Tensor]:
        """A batch of no clips, shaped like the loader's, on the device."""
        shapes = self.train_set.shapes()
        return {m: self._layout(m, torch.zeros(0, *shape, device=self.ctx.device)) for m, shape in shapes.items()}

    def _targets_on_device(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``head_targets`` on the device without waiting for it, every head's in one copy. A copy from pageable
        memory makes the host wait for all the work queued on the stream (CUDA's memcpy rules), which would stop
        it from queueing the next step while this one computes: page-locked first. One page-locked buffer per
        batch, not one per head and accumulated part: PyTorch reuses a page-locked buffer only once its copy has
        run, else it allocates one, and CUDA lists page-locked allocation among the calls that synchronize."""
        targets = self.head_targets(index)
        stacked = torch.stack(list(targets.values()))
        if self.ctx.device.type == "cuda":
            stacked = stacked.pin_memory()
        return dict(zip(targets, stacked.to(self.ctx.device, non_blocking=True)))

    def _inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch's clips on the device, video normalised there (and cropped, and the waveforms made log-mel
        spectrograms, masked as the workers planned for training clips, where data.crops_on and data.logmel_on say
        so); asynchronous copies (from page-locked memory on CUDA)."""
        clips = {m: batch[m].to(self.ctx.device, non_blocking=True) for m in self.method.modalities}
        if "video_grid" in batch:  # a training batch with data.crops_on at device
            grids = batch["video_grid"].to(self.ctx.device, non_blocking=True)
            clips["video"] = self.device_crops(clips["video"], grids)
        elif "video" in clips:
            clips["video"] = self.normalize_video(clips["video"])
        if "audio" in clips and clips["audio"].dim() == 3:  # waveforms, B x 1 x samples: data.logmel_on
            clips["audio"] = self.device_logmel(clips["audio"], batch.get("audio_masks"))
        return clips

    def _layout(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Clips in channels-last layout when configured, matching the encoders' weights: cuDNN's bf16 convolution
        kernels are written for it (1.65x the clips/s of the default layout on an H200 for video, BENCHMARKS.md
        "Training step"; the log-mel spectrograms too, which cuDNN otherwise transposes at every convolution)."""
        if self.channels_last:
            return x.contiguous(memory_format=LAYOUTS[modality])
        return x.contiguous()  # a strided part of an accumulated batch (_step) made dense: the kernels' own layout

    def _autocast(self) -> torch.autocast:
        """bfloat16 autocast when train.precision says so for this device (weights, gradients and optimizer state
        stay float32)."""
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # --- recluster on plateau ----------------------------------------------------------------------------

    def _holdout_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.videos), dtype=bool)
        if self.cfg.train.recluster == "plateau":
            rng = np.random.default_rng([self.cfg.seed, 17])
            n = max(1, round(self.cfg.train.holdout_fraction * len(self.videos)))
            if n == len(self.videos):  # else the sampler, left no labelled video, raised at the first epoch
                raise UserError(f"train.holdout_fraction={self.cfg.train.holdout_fraction} holds back all "
                                f"{len(self.videos)} usable videos, leaving none to train on: use a smaller fraction")
            mask[rng.choice(len(self.videos), n, replace=False)] = True
        return mask

    @torch.no_grad()
    def _plateaued(self) -> bool:
        """Loss of the current heads on the held-back videos' pseudo-labels; True when it stopped improving."""
        p = self.progress
        broadcast_buffers(self.model, self.ctx)  # as in _extract
        self.model.eval()
        held = np.flatnonzero(self.holdout)
        # each rank the held videos it extracts: those of its extraction cache (train.extract_cache)
        shard = Subset(self.eval_set, held[held % self.ctx.world_size == self.ctx.rank].tolist())
        total = torch.zeros(2, device=self.ctx.device)  # summed loss, labelled clips
        pin = self.ctx.device.type == "cuda"
        with self._cache_pass():
            for batch in Surviving(make_loader(shard, self._batch_per_rank(), self.workers, pin_memory=pin)):
                if batch["index"].numel() == 0:
                    continue
                with self._autocast():
                    logits = self.model({m: self._layout(m, x) for m, x in self._inputs(batch).items()})
                for key, y in self._targets_on_device(batch["index"]).items():
                    total[0] += F.cross_entropy(logits[key].float(), y, ignore_index=-1, reduction="sum")
                    total[1] += (y >= 0).sum()
        self.model.train()
        if self.ctx.enabled:
            torch.distributed.all_reduce(total)
        loss = (total[0] / total[1].clamp(min=1)).item()
        # the epoch just trained, as its steps' records number it (until 2026-12-01 the next one's number)
        self.log.write("holdout", p.global_step, round=p.round, epoch=p.epoch - 1, loss=loss)
        if loss < p.best_holdout * (1 - self.cfg.train.plateau_delta):
            p.best_holdout, p.bad_epochs = loss, 0
            return False
        p.bad_epochs += 1
        return True

    # --- 5. save / resume ---------------------------------------------------------------------------------

    def _batch_per_rank(self) -> int:
        return self.cfg.train.batch_size // self.ctx.world_size  # a multiple: checked at the start

    def _count_training(self) -> None:
        """Add the training since it was last counted to the round's ``train_s`` (checkpointed with it)."""
        if self.training_since is not None:
            now = time.perf_counter()
            times = self.progress.times
            times["train_s"] = times.get("train_s", 0.0) + now - self.training_since
            self.training_since = now

    def _save(self) -> None:
        # weights gone NaN between the steps that log, or after the last one, never replace the last good checkpoint
        if not self._finite_weights():
            what = f"the weights after step {self.progress.global_step} are NaN or infinite"
            raise Diverged(self._diverged(what))
        self._count_training()  # at every checkpoint, mid-epoch ones too: a resumed round's record has it all
        self.saved_step = self.progress.global_step
        ranks = gather_objects({"failures": self.failures.state(), "crashed": self.train_set.crashed}, self.ctx)
        if not self.ctx.main:
            return
        p = self.progress
        state = {
            "method": self.method.name,
            "encoders": self.encoders.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "heads": self.model.heads.state_dict() if self.model is not None else None,
            "head_optimizer": self.head_optimizer.state_dict() if self.head_optimizer is not None else None,
            "progress": {k: getattr(p, k) for k in PROGRESS_SAVED},
            "labels": {k: torch.from_numpy(v) for k, v in p.labels.items()},
            "previous": {k: torch.from_numpy(v) for k, v in p.previous.items()},
            "torch_rng": torch.get_rng_state(),
            "ranks": ranks,  # each rank's failed files, and the files that killed its loader workers
            "threads": torch.get_num_threads(),  # on the CPU the bits depend on it (resume warns)
            "log_records": self.log.records,  # what is logged after this checkpoint a resumed run logs again
        }
        self.log.sync()
        checkpoint.save_atomic(state, self.out / "checkpoints" / "last.pt")

    def resume(self) -> None:
        path = self.out / "checkpoints" / "last.pt"
        state = checkpoint.read(path, "a pretraining checkpoint", f"a run keeps no earlier checkpoint: start it over "
                                f"(remove {self.out}, or choose another --out)")  # fmt: skip
        # another torch file put in its place (a run's encoders.pt, an evaluation's state): until 2026-12-03 a
        # traceback (KeyError 'method'), or a list of every tensor that did not fit
        missing = CHECKPOINT_KEYS - set(state) if isinstance(state, dict) else CHECKPOINT_KEYS
        if missing:
            raise UserError(f"{path} is not a pretraining checkpoint (it has no {', '.join(sorted(missing))}): "
                            "was another file put in its place? Put the run's own back, or start the run over"
                            )  # fmt: skip
        if state["method"] != self.method.name:
            raise UserError(f"{path} is a {state['method']} run, not {self.method.name}")
        self._load(path, lambda: (self.encoders.load_state_dict(state["encoders"]),
                                  self.optimizer.load_state_dict(state["optimizer"])))  # fmt: skip
        p = self.progress
        for k, v in state["progress"].items():
            setattr(p, k, v)
        self.saved_step = p.global_step
        begun = p.round + bool(p.labels or p.epoch or p.step)  # a round has begun once its labels are in
        if self.method.clusters and self.cfg.train.rounds < begun:
            raise UserError(f"{path}: the run has begun {number(begun, 'round')}; train.rounds={self.cfg.train.rounds} "
                            f"cannot end it before them: ask for {begun} or more")  # fmt: skip
        # older checkpoints hold int64
        p.labels = {k: v.numpy().astype(LABEL_DTYPE, copy=False) for k, v in state["labels"].items()}
        p.previous = {k: v.numpy().astype(LABEL_DTYPE, copy=False) for k, v in state["previous"].items()}
        for name, labels in {**p.labels, **p.previous}.items():
            if len(labels) != len(self.videos):  # a run from before runs kept their videos, manifest since changed
                raise UserError(
                    f"{path} has labels for {len(labels)} videos, the manifest now gives {len(self.videos)}: the run "
                    "cannot go on with other videos; index the collection as it was, or start a new run"
                )
        if state["heads"] is not None:
            self._new_heads()
            self._load(path, lambda: (self.model.heads.load_state_dict(state["heads"]),
                                      self.head_optimizer.load_state_dict(state["head_optimizer"])))  # fmt: skip
        # the optimizers' states hold the lr they ran with: a resume given another train.lr (RESUME_SETTINGS) goes
        # on with it
        for optimizer in (self.optimizer, self.head_optimizer):
            for group in optimizer.param_groups if optimizer is not None else ():
                group["lr"] = self.cfg.train.lr
        torch.set_rng_state(state["torch_rng"])
        if "log_records" in state:  # checkpoints before 2026-12-01 have none: their resumes logged twice
            self.log.keep(lambda number, _: number < state["log_records"])
        if self.ctx.main:
            checkpoint.warn_threads(state.get("threads"), self.ctx.device)  # checkpoints before 2026-11-30: none
        ranks = state.get("ranks", [])  # checkpoints before 2026-11-30 have none
        for r in ranks:  # a file that killed a worker of any rank is not read again by any
            self.train_set.crashed.update(r["crashed"])
        if len(ranks) == self.ctx.world_size:
            self.failures.load_state(ranks[self.ctx.rank]["failures"])
        elif ranks and self.ctx.main:  # another number of ranks: rank 0 carries on the count
            self.failures.merge([r["failures"] for r in ranks])
            # what the docs promise of a resume, bit for bit, needs the same number (until 2026-12-03 unsaid)
            print(f"NOTE: {self.out} ran on {len(ranks)} rank(s) and goes on with {self.ctx.world_size}: the same "
                  "batches from the clip it had reached, but each rank's BatchNorm normalises its own share of a "
                  "batch, so its weights will not be those of a run on one number of ranks throughout",
                  file=sys.stderr)  # fmt: skip
        if self.ctx.main:  # until 2026-12-03 a resume did not say where it went on
            print(f"{self.out}: resumed {self._position()}")
        barrier(self.ctx)

    def _position(self) -> str:
        """Where a resumed run goes on, in its progress bars' words (rounds and epochs counted from 0)."""
        p = self.progress
        if self.method.clusters and p.round >= self.cfg.train.rounds:
            return f"after its {number(p.round, 'round')}, to write its encoders"
        if self.method.clusters and not p.labels:
            return f"at round {p.round}, from its extraction and clustering"
        if self.method.clusters and not (p.epoch or p.step):
            return f"at round {p.round}, from the start of its training (its clustering kept)"
        return f"at round {p.round} epoch {p.epoch}, after {number(p.step, 'batch', 'batches')} of it"

    def _load(self, path: Path, load: Callable[[], object]) -> None:
        """``load`` the state of checkpoint ``path`` into the modules and optimizers built from config.yaml; where
        they do not fit (the file edited since: another train.k, model width, ...), one line, not torch's list."""
        try:
            load()
        except (RuntimeError, ValueError) as e:  # load_state_dict's size mismatches and missing keys; an optimizer's
            if isinstance(e, RuntimeError) and "Error(s) in loading state_dict" not in str(e):
                raise  # not a mismatch (a CUDA error, out of memory): as it is
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__).rstrip(".")
            detail = detail if len(detail) <= 200 else detail[:197] + "..."  # a list of every missing key
            raise UserError(f"{path} does not fit the run's settings in {self.out / 'config.yaml'} ({detail}): was it "
                            "edited since? A resume goes on with the settings the run started with: put them back"
                            ) from None  # fmt: skip


# A rank keeps a part of a round's extraction every 5 minutes: at most what a crash costs there. Its batches are
# the same wherever parts end, so the time may cut them. XDC keeps 4 kB per video (two 512-d features): at the
# 2,000 clips/s one GPU's loader decodes, 0.5 GB a minute, written in about a second every 5 minutes.
EXTRACTION_PART_S = 300.0


class _ExtractionPart:
    """What a stretch of a rank's extraction computed: each encoder's features (on the device until kept), the
    videos' indices, the clips read back from train.extract_cache (cached), and the shard's positions it covers."""

    def __init__(self, encoders: list[str], dims: dict[str, int]):
        self.features = {e: ToHost() for e in encoders}  # one wait for the device per group of batches
        self.dims = dims
        self.indices: list[torch.Tensor] = []
        self.cached = self.positions = 0
        self.started = time.monotonic()

    def add(self, batch: dict, features: dict[str, torch.Tensor]) -> None:
        self.indices.append(batch["index"])
        self.cached += int(batch["kept"].sum()) if "kept" in batch else 0
        for e, rows in features.items():
            self.features[e].add(rows)

    def kept(self, failures: FailureLog, crashed: dict[str, str]) -> dict:
        """As a part file holds it (tensors, weights-only), with the run's failures and crashed files by its end."""
        return {
            "features": {e: rows.result(torch.empty(0, self.dims[e])) for e, rows in self.features.items()},
            "index": torch.cat(self.indices) if self.indices else torch.empty(0, dtype=torch.long),
            "cached": self.cached, "positions": self.positions, "failures": failures.state(), "crashed": dict(crashed),
        }  # fmt: skip


def _joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _leading(parts: dict[int, dict]) -> list[dict]:
    """Parts 0, 1, ... up to the first missing one: a rank writes them in order, so there is none after a gap."""
    return list(itertools.takewhile(lambda part: part is not None, (parts.get(n) for n in range(len(parts) + 1))))


def pretrain(cfg: Config, manifest: Path | None, out: Path, resume: bool, ctx: Dist, rounds: int | None = None,
             settings: dict | None = None) -> Path:  # fmt: skip
    """Run (or resume) a pretraining run in ``out``; returns the path of the final encoders. A resumed run keeps the
    configuration it started with, except ``rounds`` where given: more extends the run, finished or not, as if it
    had been planned so from the start; fewer ends it after the round it is in; and ``settings`` (of
    RESUME_SETTINGS), which it takes."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a run folder")
    _same_run_folder(out, ctx)
    last = out / "checkpoints" / "last.pt"
    planned, taken = None, {}
    finished = (out / "encoders.pt").exists()
    if resume:
        # a finished run whose checkpoints were deleted to free their disk is still finished (until 2026-12-03
        # "nothing to resume", exit status 2, for a job run again)
        if not last.exists() and not finished:
            if (out / "config.yaml").exists():  # until 2026-12-03 the line did not say what to do
                raise UserError(f"nothing to resume in {out}: the run started there stopped before its first "
                                "checkpoint; start it again, without --resume")  # fmt: skip
            raise UserError(f"nothing to resume in {out} (no checkpoints/last.pt)")
        cfg = load_config(out / "config.yaml")
        if rounds is not None and rounds != cfg.train.rounds:
            if not get_method(cfg.train.method).clusters:
                raise UserError(f"{out} is a {cfg.train.method} run, which has no rounds to add or drop; start a "
                                "new run for another train.rounds")  # fmt: skip
            if not last.exists():
                raise UserError(f"{out} finished, and its checkpoints/last.pt is gone: its rounds cannot change "
                                f"without it; start a new run from its weights instead (--set train.init={out})")
            planned = cfg.train.rounds
            cfg = load_config(out / "config.yaml", [f"train.rounds={rounds}"])
        taken = {key: value for key, value in (settings or {}).items() if setting(cfg, key) != value}
        if unknown := set(taken) - set(RESUME_SETTINGS):
            raise ValueError(f"a resume takes only {RESUME_SETTINGS}, not {sorted(unknown)}")
        before = {key: setting(cfg, key) for key in taken}
        cfg = with_settings(cfg, taken)
    elif last.exists() or finished:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    elif not (out / "config.yaml").exists() and (found := _run_files(out)):  # seen by every rank before any writes
        # the start of a run writes config.yaml first: without it they are not a run's, and a new run would remove
        # them (_clear_unfinished_start) or log into them (until 2026-12-03 it removed them, "a run's start")
        raise UserError(f"--out {out} holds {', '.join(found)} but no config.yaml, so no xdc run made them: a new "
                        "run would replace them; choose another --out, or move them away")  # fmt: skip
    elif cfg.train.init is not None:  # the run's config.yaml names it wherever the run is resumed from
        init = Path(cfg.train.init).expanduser().resolve()
        _check_init(init)
        cfg = with_settings(cfg, {"train.init": str(init)})
    _same_settings(cfg, ctx)
    if not resume and manifest is not None:  # until 2026-12-03 a mistyped --data left a run folder with config.yaml
        on_main(lambda: check_manifest_file(manifest), ctx)  # rank 0 alone reads it (other nodes need not see it)
    if resume and planned is None and finished:  # seen by every rank before any writes
        if ctx.main:  # a re-run of a finished job: until 2026-12-02 it wrote encoders.pt, the log and tb/ again
            said = f" its {cfg.train.rounds} round(s)" if get_method(cfg.train.method).clusters else ""
            more = " (--rounds N adds rounds)" if said and last.exists() else ""  # which needs the checkpoint
            print(f"{out} finished{said} before: nothing to train{more}")
        return out / "encoders.pt"
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        for folder in ("checkpoints", "labels"):  # what a kill left half written: a checkpoint's size each
            remove_partials(out / folder)
        remove_partials(out, of="videos.csv")  # 4 GB at 65M videos; the run's other files are small
        if not resume:
            _clear_unfinished_start(out)
            _write_config(cfg, out)
    barrier(ctx)
    trainer = Pretrainer(cfg, manifest, out, ctx, resume=resume)
    if resume:
        trainer.resume()  # which refuses fewer rounds than the run has begun
    if taken and ctx.main:
        _write_config(cfg, out)  # and a later --resume goes on with them
        print("the run goes on with " + ", ".join(f"{key}={taken[key]!r} (before: {before[key]!r})" for key in taken))
    if planned is not None and ctx.main:
        done, kept = trainer.progress.round, None
        # encoders.pt means a finished run to export, extract, finetune: moved aside before config.yaml says more
        # rounds, so that a run stopped between the two (killed, the move failed) is not taken for finished with
        # rounds it has not trained (until 2026-12-03 it could be)
        if (out / "encoders.pt").exists():
            kept = checkpoint.earlier_encoders(out, done)
            move(out / "encoders.pt", kept)
        _write_config(cfg, out)  # a later --resume, the report and the model card see the new number
        print(f"the run goes on to {number(cfg.train.rounds, 'round')} ({planned} planned before; {done} done)")
        if kept is not None:
            print(f"its encoders after {number(done, 'round')} are kept as {kept}")
    trainer.run()
    return out / "encoders.pt"


# what tells a new run from a resumed or a finished one in its folder (pretrain), as each rank sees it
RUN_MARKS = ("config.yaml", "checkpoints/last.pt", "encoders.pt")


def _same_run_folder(out: Path, ctx: Dist) -> None:
    """Under torchrun, every rank sees in ``out`` what rank 0 sees of a run there, or every rank stops with one line
    from rank 0. Until 2026-12-03 a rank whose node did not share the folder with rank 0's (node-local disks) stopped
    alone for a wrong reason ("nothing to resume", where rank 0 had the run's checkpoint; "already holds a run", a
    run of its own disk's). A collective, before any rank writes there."""
    if not ctx.enabled:
        return
    views = gather_objects([name for name in RUN_MARKS if (out / name).exists()], ctx)

    def judge() -> None:
        for rank, view in enumerate(views):
            if view != views[0]:
                raise UserError(f"--out {out}: rank 0 sees {', '.join(views[0]) or 'no run'} there, rank {rank} "
                                f"{', '.join(view) or 'no run'}: the ranks' nodes do not share the run folder; put "
                                "it on a filesystem that every node sees, at the same path")  # fmt: skip

    on_main(judge, ctx)


def _same_settings(cfg: Config, ctx: Dist) -> None:
    """Under torchrun, every rank runs with the settings of rank 0, which its config.yaml keeps, or every rank stops
    with one line from rank 0 that names those that differ (same_settings): until 2026-12-03 a node started with
    another train.lr or seed trained on with it, its ranks' weights or clips apart from the others' without a word
    (another train.k: DDP's traceback). A collective."""
    same_settings({k: v for k, v in settings_of(cfg).items() if k not in PER_RANK_SETTINGS}, ctx)


def _check_init(init: Path) -> None:
    """train.init's form (it exists, and is a finished run, an export or a file), before rank 0 reads the manifest
    and writes the run's videos (minutes at 65M videos): until 2026-12-02 a mistyped path was said after that.
    What it holds is checked as it loads (Pretrainer._start_from)."""
    from xdc.evaluation.sources import kind, run_and_encoders

    if kind(init) == "run":
        run_and_encoders(init)


def _clear_unfinished_start(out: Path) -> None:
    """A new run where one started but never reached its first checkpoint: that one's logs and extraction parts
    would pass for this run's (the parts name rows, not videos). Its cached clips go as each rank opens its cache."""
    found = _run_files(out)
    if not found:
        return
    print(f"NOTE: {out} holds the start of a run that never reached a checkpoint; its {', '.join(found)} removed",
          file=sys.stderr)  # fmt: skip
    (out / "log.jsonl").unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)
    shutil.rmtree(out / "extract_parts", ignore_errors=True)


def _run_files(out: Path) -> list[str]:
    """Which of the files that a run writes as it goes, and a new run removes (_clear_unfinished_start), ``out``
    holds."""
    return [name for name in ("log.jsonl", "tb", "extract_parts") if (out / name).exists()]


def _remove_stale_caches(folder: Path, tag: str, ranks: int, run: str) -> None:
    """Extraction cache files in ``folder`` that the run in ``run`` (its files named ``tag``-rank...) cannot use:
    its own of another number of ranks (which shared the videos out otherwise), those of a run that cannot write
    here (the run folder was copied or moved: they name its old path), and those that xdc before 2026-12-03 named
    rank{r}of{W}, unless they are another run's."""
    for stale in folder.glob(f"{tag}-rank*of*"):
        if stale.name.split(".")[0].partition("of")[2] != str(ranks):
            stale.unlink(missing_ok=True)
    here, linked = folder.resolve(), folder.is_symlink()
    for meta in folder.glob("*-rank*of*.json"):
        stem, owner = meta.name.removesuffix(".json"), _cache_owner(meta)
        if stem.startswith(f"{tag}-") or owner in (run, None):
            continue
        try:  # another run shares this folder only through its own extract_cache, a link to it
            theirs = Path(owner) / "extract_cache"
            # in a folder that runs share by links, a run whose path this machine does not see (another node's,
            # its disk mounted elsewhere) may be at work: its files stay (a moved run's stay with them)
            elsewhere = theirs.resolve() != here and (not linked or theirs.exists())
        except (OSError, RuntimeError):  # a link in a loop: keep what cannot be judged
            elsewhere = False
        if elsewhere:  # until 2026-12-03 a copied run kept them, its old path's, to its end and after
            for old in folder.glob(f"{stem}.*"):
                old.unlink(missing_ok=True)
    for stem in {old.name.split(".")[0] for old in folder.glob("rank*of*")}:
        owner = _cache_owner(folder / f"{stem}.json")
        # Another run's stay (it may still run the older code). Those naming no run may be this run's, left forever
        # if kept; removing them costs an older run sharing the folder its cache at most (the older code removed
        # every rank*of* file at each start itself), never data
        if owner in (run, None):
            for old in folder.glob(f"{stem}.*"):
                old.unlink(missing_ok=True)


def _cache_owner(meta: Path) -> str | None:
    """The run folder that an extraction cache's JSON ``meta`` names (since 2026-12-02); None if none, or damaged."""
    try:
        owner = json.loads(meta.read_text())["identity"]["items"].get("run")
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _set_value(value) -> str:
    """A setting's value as --set takes it in a shell: [2,2,2,2] for a tuple."""
    return json.dumps(list(value), separators=(",", ":")) if isinstance(value, (tuple, list)) else str(value)


def _write_config(cfg: Config, out: Path) -> None:
    write_atomic(out / "config.yaml", lambda f: f.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False)))

