"""Datasets of aligned audio-visual clips over a manifest.

``TrainClips`` draws one random clip of a video per access (temporal jitter, random augmentation); ``EvalClips``
serves N evenly spaced clips of every video without augmentation. Items are dicts with ``video`` (float C x T x H x
W, normalised; with ``raw_video`` the uint8 pixels, for :class:`xdc.data.transforms.NormalizeVideo` on the
consumer's side; with ``device_crops`` the uint8 part of the frames that the crop samples and its ``video_grid``,
for :class:`xdc.data.transforms.DeviceCrops`), ``audio`` (1 x n_mels x frames; with ``device_logmel`` the 1 x
samples waveform, for :class:`xdc.data.transforms.DeviceLogMel`, and for a training clip its ``audio_masks`` when
masks are set), ``index`` (video index in the manifest), ``start`` (seconds) and ``label`` (-1 when unlabelled). An
item that cannot be read is a failure record ``{"failure": {...}}``, which :func:`collate_clips` takes out of the
batch.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate, get_worker_info

from xdc.config import DataConfig
from xdc.data.clip_cache import ClipCache
from xdc.data.decode import Clip, DecodeError, FileChanged, SoundElsewhere, read_clips
from xdc.data.manifest import Manifest
from xdc.data.preload import preload_fork_server
from xdc.data.transforms import AudioTransform, VideoTransform

MODALITIES = ("video", "audio")
_SEED_SPACE = 2**63 - 1


class _ClipDataset(Dataset):
    def __init__(
        self, manifest: Manifest, cfg: DataConfig, train: bool, modalities: tuple[str, ...] = MODALITIES,
        raw_video: bool = False, device_crops: bool = False, device_logmel: bool = False,
    ):  # fmt: skip
        # the README's `TrainClips(Manifest.load(path), cfg.data)` given a path or the whole Config: an
        # AttributeError of a missing method or setting otherwise
        if not isinstance(manifest, Manifest):
            raise TypeError(f"manifest must be a Manifest (xdc.data.manifest.Manifest.load(path)), not "
                            f"{type(manifest).__name__}")  # fmt: skip
        if not isinstance(cfg, DataConfig):
            raise TypeError(f"cfg must be the data settings, a DataConfig (cfg.data of load_config's Config), not "
                            f"{type(cfg).__name__}")  # fmt: skip
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
        self.video = "video" in modalities
        self.audio = "audio" in modalities
        if self.video:
            manifest = manifest.subset(manifest.has_video)  # audio-only files serve audio-only datasets
        if self.audio and cfg.missing_audio == "skip":
            manifest = manifest.subset(manifest.has_audio)
        self.manifest = manifest
        self.cfg = cfg
        self.span = max(cfg.clip.seconds, cfg.clip.audio_span) if self.video else cfg.clip.audio_span
        self.video_transform = VideoTransform(cfg, train, normalize=not raw_video) if self.video else None
        self.device_crops = device_crops and self.video
        if self.device_crops and not (raw_video and cfg.device_crops_possible):
            raise ValueError("device_crops needs raw_video and frames that the training resize enlarges")
        self.device_logmel = device_logmel and self.audio
        self.audio_transform = AudioTransform(cfg, train, logmel=not self.device_logmel) if self.audio else None
        self.crashed: dict[str, str] = {}  # path -> why: files that killed a loader worker, not read again
        # per loader worker: the video it reads (-1: none, NOT_STARTED) and since when (time.monotonic, ms); watch()
        self.reading: torch.Tensor | None = None

    def watch(self, workers: int) -> None:
        """Give each of up to ``workers`` loader workers a slot in shared memory where it keeps the video it is
        reading and since when, so that the main process can name the file a worker died or hung on
        (:mod:`xdc.data.worker_deaths`). Before the workers start: they inherit the slots."""
        if self.reading is None or len(self.reading) < workers:
            self.reading = torch.full((workers, 2), -1, dtype=torch.int64).share_memory_()

    def started(self, worker: int) -> None:
        """A loader worker's first act (``make_loader``'s worker_init_fn): its slot no longer says NOT_STARTED, so
        the main process can tell a worker that hung in its fork from one that has nothing to read."""
        if self.reading is not None and worker < len(self.reading):
            self.reading[worker, 0] = -1

    def latest_start(self, i):
        """The latest start whose clip fits in video ``i`` (an index or an array of them), 0 for shorter ones.
        Computed when asked rather than kept per video: nothing of size N beyond the manifest itself."""
        return np.maximum(0.0, self.manifest.durations[i] - self.span)

    def _load(self, i: int, start: float) -> dict:
        """The item of video ``i`` at ``start``; raises the clip's DecodeError."""
        (item,) = self._load_all(i, [start])
        if isinstance(item, DecodeError):
            raise item
        return item

    def _load_all(self, i: int, starts: list[float]) -> list[dict | DecodeError]:
        """The items of video ``i`` at ``starts``, its file opened once where that reads the same pictures
        (``read_clips``), or the DecodeError of each clip that failed."""
        if self.crashed and self.manifest.path(i) in self.crashed:
            return [DecodeError(self.crashed[self.manifest.path(i)])] * len(starts)
        worker = get_worker_info() if self.reading is not None else None
        if worker is not None:
            self.reading[worker.id, 1] = int(time.monotonic() * 1000)  # the time first: never a video with an old one
            self.reading[worker.id, 0] = i
        try:
            clips = self._read_clips(i, starts)
        finally:
            if worker is not None:
                self.reading[worker.id, 0] = -1
        return [c if isinstance(c, DecodeError) else self._item(i, start, c) for start, c in zip(starts, clips)]

    def _read_clips(self, i: int, starts: list[float]) -> list[Clip | DecodeError]:
        offset, audio = self.manifest.offsets[i], self.audio and bool(self.manifest.has_audio[i])
        if not (self.video or audio):  # audio alone of a file without sound: its zeros need no reading
            return [Clip(video=None, audio=None, start=offset + start) for start in starts]
        # its size as indexed, checked against the file that is opened: one replaced since fails, not read with the
        # old one's duration and label
        return read_clips(self.manifest.path(i), [offset + start for start in starts], self.cfg.clip, video=self.video,
                          audio=audio, size=int(self.manifest.sizes[i]))  # fmt: skip

    def _item(self, i: int, start: float, clip: Clip) -> dict:
        item = {"index": i, "start": float(start), "label": int(self.manifest.labels[i])}
        if self.device_crops:
            item["video"], item["video_grid"] = self.video_transform.plan(clip.video)
        elif self.video:
            item["video"] = self.video_transform(clip.video)
        if self.audio:
            wave = clip.audio if self.manifest.has_audio[i] else np.zeros(self._audio_samples(), np.float32)
            if self.device_logmel and self.audio_transform.masks:  # a training clip's masks go with its waveform
                item["audio"], item["audio_masks"] = self.audio_transform.plan(wave)
            else:
                item["audio"] = self.audio_transform(wave)
        return item

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each modality's clip as its encoder receives it (after any device crops or log-mel)."""
        clip, shapes = self.cfg.clip, {}
        if self.video:
            shapes["video"] = (3, clip.frames, clip.crop, clip.crop)
        if self.audio:
            shapes["audio"] = (1, self.cfg.mel.n_mels, self.audio_transform.logmel.frames(self._audio_samples()))
        return shapes

    def item_arrays(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype of an item's clips as the loader's workers hand them over (not the crop grid)."""
        shapes, arrays = self.shapes(), {}
        if self.video:
            part = self.video_transform.part
            shape = (self.cfg.clip.frames, part, part, 3) if self.device_crops else shapes["video"]
            arrays["video"] = (shape, "uint8" if self.video_transform.normalize is None else "float32")
        if self.audio:
            arrays["audio"] = ((1, self._audio_samples()) if self.device_logmel else shapes["audio"], "float32")
        return arrays

    def item_bytes(self) -> int:
        """Bytes of an item's clips as the loader's workers hand them over."""
        return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in self.item_arrays().values())

    def _audio_samples(self) -> int:
        return round(self.cfg.clip.audio_span * self.cfg.clip.sample_rate)

    def _failure(self, i: int, start: float, reason: str) -> dict:
        return {"failure": {"index": i, "path": self.manifest.path(i), "start": float(start), "reason": reason}}


class TrainClips(_ClipDataset):
    """One random clip per access. A key is a video index, or ``(index, seed)`` to fix the draw.

    With a seed, the clip's start, the retries and every augmentation depend on the seed alone, so a run is
    reproducible whatever the number of loader workers; a bare index draws its seed from the worker's RNG.
    """

    def __init__(
        self, manifest: Manifest, cfg: DataConfig, modalities: tuple[str, ...] = MODALITIES, raw_video: bool = False,
        device_crops: bool = False, device_logmel: bool = False,
    ):  # fmt: skip
        super().__init__(manifest, cfg, train=True, modalities=modalities, raw_video=raw_video,
                         device_crops=device_crops, device_logmel=device_logmel)  # fmt: skip

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, seed = key if isinstance(key, tuple) else (key, None)
        i = int(i)
        if seed is None:
            seed = int(torch.randint(_SEED_SPACE, ()))
        rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed also queues seeds for CUDA, XPU and MTIA with a formatted
            # stack trace each, about 10% of a small clip's time in a loader worker.
            torch.default_generator.manual_seed(seed % _SEED_SPACE)
            earliest, latest = 0.0, float(self.latest_start(i))
            for _ in range(1 + self.cfg.retries):  # a failed window is retried at other offsets of the same video
                start = rng.uniform(earliest, latest)
                try:
                    return self._load(i, start)
                except FileChanged as e:  # not the file indexed: no other window of it is any better
                    reason = str(e)
                    break
                except SoundElsewhere as e:  # the retries where the sound is (until 2026-12-03 anywhere: of a 5 s
                    # video with 1 s of sound, about a quarter of the items failed all four tries)
                    reason = str(e)
                    offset = float(self.manifest.offsets[i])
                    earliest, latest = _within_sound(e, self.cfg.clip.audio_span, latest, offset)
                except DecodeError as e:
                    reason = str(e)
        return self._failure(i, start, reason)


def _within_sound(sound: SoundElsewhere, span: float, latest: float, offset: float) -> tuple[float, float]:
    """The starts, within [0, ``latest``] from ``offset`` seconds into the file (a segment's), whose ``span``
    seconds of audio lie in the ``sound`` track; where it is shorter than a span, the start of the sound (a clip it
    covers in part, padded with silence). Until 2026-12-03 the sound's times, from the file's start, were taken
    for a segment's: a finetuning clip of a segment that starts 0.8 s into a file whose sound ends at 1 s was
    retried up to 0.5 s into the segment, past the sound."""
    earliest = min(max(sound.begins - offset, 0.0), latest)
    ends = latest if sound.ends is None else sound.ends - offset - span
    return earliest, min(max(ends, earliest), latest)


class EvalClips(_ClipDataset):
    """Deterministic clips without augmentation: ``clips`` evenly spaced clips per video (one centred clip when
    ``clips`` is 1; one for a video no longer than a clip), or, with ``stride`` seconds, a sliding window over each
    video (per-video feature sequences). An evenly spaced clip whose window holds none of the sound (a track that
    ends early or starts late) is read where the sound is (``_in_sound``); a sliding window keeps its time.
    Items also carry ``clip``, the clip's number within its video. With a ``cache`` (:class:`ClipCache`, keyed
    by item number) an item it holds is read from it, and one it lacks is decoded and then kept there; items then
    also carry ``kept``, whether they came from the cache. The clips of a video in one batch share one open of
    its file where only pictures are read (``read_clips``): 1.45x the paper preset's video items per core."""

    def __init__(
        self, manifest: Manifest, cfg: DataConfig, clips: int | None = None, modalities: tuple[str, ...] = MODALITIES,
        stride: float | None = None, raw_video: bool = False, device_logmel: bool = False,
    ):  # fmt: skip
        super().__init__(manifest, cfg, train=False, modalities=modalities, raw_video=raw_video,
                         device_logmel=device_logmel)  # fmt: skip
        self.per_video = clips or cfg.eval_clips  # the same number of clips for every video: item k is arithmetic
        self.cache: ClipCache | None = None
        self.video_of = self.clip_of = None
        self.stride = stride
        counts = None
        if stride is not None:  # a number of clips per video: flat arrays (video, clip number), shared with workers
            if stride <= 0:
                raise ValueError(f"stride must be positive, got {stride}")
            counts = np.floor(self.latest_start(slice(None)) / stride + 1e-9).astype(np.int64) + 1
        elif self.per_video > 1 and (short := self.latest_start(slice(None)) <= 0).any():
            # a video no longer than a clip has one place for it: its clips would be copies of one (until
            # 2026-12-01 FSDD's and GRID words' 1 s windows gave 10 equal clips each, counted 10 times)
            counts = np.where(short, 1, self.per_video)
        if counts is not None:
            self.video_of = np.repeat(np.arange(len(self.manifest)), counts)
            self.clip_of = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.manifest) * self.per_video if self.video_of is None else len(self.video_of)

    def place(self, k: int) -> tuple[int, int, float]:
        """Item ``k``'s video, clip number within it and start (seconds)."""
        if self.video_of is None:
            i, clip = divmod(int(k), self.per_video)
        else:
            i, clip = int(self.video_of[k]), int(self.clip_of[k])
            if self.stride is not None:
                return i, clip, float(clip * self.stride)
        return i, clip, self._spaced(float(self.latest_start(i)), clip)

    def cache_fields(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """What a :class:`ClipCache` of these items keeps: their clips (``item_arrays``) and their start, which
        differs from ``place``'s where the clip was moved into the sound."""
        return {**self.item_arrays(), "start": ((1,), "float64")}

    def _spaced(self, latest: float, clip: int) -> float:
        """Where evenly spaced clip number ``clip`` starts, of starts from 0 to ``latest``."""
        return latest / 2 if self.per_video == 1 else latest * clip / (self.per_video - 1)

    def _in_sound(self, i: int, clip: int, sound: SoundElsewhere) -> float:
        """Where clip ``clip`` of video ``i``, whose window missed the ``sound`` track, starts instead: at the same
        fraction of the starts whose audio lies in the sound (``_within_sound``, as a training clip's retries), so
        the clips of a video with a second of sound are spread over that second, and placed the same every time."""
        earliest, latest = _within_sound(sound, self.cfg.clip.audio_span, float(self.latest_start(i)),
                                         float(self.manifest.offsets[i]))  # fmt: skip
        return earliest + self._spaced(latest - earliest, clip)

    def __getitem__(self, k: int) -> dict:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks: list[int]) -> list[dict]:
        """Items ``ks`` (the DataLoader asks for a batch at once): the clips of a video that come together in it
        are read with one open of its file."""
        places = [self.place(k) for k in ks]
        items: list[dict | None] = [None] * len(ks)
        todo = []  # positions in ks to decode
        for n, (k, (i, clip, start)) in enumerate(zip(ks, places)):
            kept = self.cache.read(k) if self.cache is not None else None
            if kept is None:
                todo.append(n)
            else:
                items[n] = {"index": i, "label": int(self.manifest.labels[i]), **kept, "start": float(kept["start"]),
                            "clip": clip, "kept": True}  # fmt: skip
        for i, run in itertools.groupby(todo, key=lambda n: places[n][0]):
            run = list(run)
            loaded = self._load_all(i, [places[n][2] for n in run])
            # a clip that misses the sound (a sound track shorter than the video, or starting late) is read again
            # where the sound is; a sliding window keeps its time, and fails (until 2026-12-03 every clip did, so a
            # video whose centred clip had no sound was left out of a round's clustering)
            moved = [m for m, item in enumerate(loaded) if isinstance(item, SoundElsewhere) and self.stride is None]
            if moved:
                starts = [self._in_sound(i, places[run[m]][1], loaded[m]) for m in moved]
                for m, start, item in zip(moved, starts, self._load_all(i, starts)):
                    places[run[m]] = (i, places[run[m]][1], start)
                    loaded[m] = item
            for n, item in zip(run, loaded):
                _, clip, start = places[n]
                if isinstance(item, DecodeError):
                    items[n] = self._failure(i, start, str(item))
                    continue
                if self.cache is not None:
                    self.cache.write(ks[n], item)
                    item["kept"] = False
                items[n] = {**item, "clip": clip}
        return items


def collate_clips(items: list[dict]) -> dict:
    """Stack the items that loaded; list the failures under ``failures``; ``size`` counts both."""
    ok = [x for x in items if "failure" not in x]
    batch = default_collate(ok) if ok else {"index": torch.empty(0, dtype=torch.long)}
    batch["failures"] = [x["failure"] for x in items if "failure" in x]
    batch["size"] = len(items)
    return batch


PREFETCH = 4  # batches each loader worker prepares ahead
NOT_STARTED = -2  # a watched slot's video until its worker runs (set by the main process before it starts them)


def worker_started(worker: int) -> None:
    """``make_loader``'s worker_init_fn: tell the clip dataset under any Subsets that this worker runs."""
    dataset = get_worker_info().dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "started"):
        dataset.started(worker)


class SeededPasses(Sampler[tuple[int, int]]):
    """Every item once a pass as an ``(index, draw seed)`` key, in order or shuffled: what :func:`make_loader` gives a
    :class:`TrainClips` without a sampler. The order and every item's seed follow from ``(seed, pass)`` alone, not
    from torch's global RNG or the RNG of the worker that reads the item, nor from the loader's generator (a new
    iterator draws its workers' base seed from it, a persistent loader's next pass does not). ``passes`` counts the
    passes begun; a worker death's restart (:mod:`xdc.data.worker_deaths`) sets it back to replay its pass."""

    def __init__(self, n: int, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.passes = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed % 2**64, self.passes])
        self.passes += 1
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(_SEED_SPACE, size=self.n)
        for start in range(0, self.n, 65536):  # Python ints a chunk at a time, not a whole pass of them at once
            yield from zip(order[start : start + 65536].tolist(), seeds[start : start + 65536].tolist())


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, shuffle: bool = False, seed: int = 0, sampler=None,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of :func:`collate_clips`. ``pin_memory`` (for a CUDA consumer) puts them in page-locked memory, so
    that ``.to(device, non_blocking=True)`` copies asynchronously while the device computes. A :class:`TrainClips`
    without a ``sampler`` gets :class:`SeededPasses`: its clips follow from ``seed`` whatever the ``workers``."""
    generator = torch.Generator().manual_seed(seed)
    if sampler is None and isinstance(dataset, TrainClips):
        sampler = SeededPasses(len(dataset), shuffle, seed)
    if workers > 0:
        preload_fork_server()
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, collate_fn=collate_clips, generator=generator, pin_memory=pin_memory,
        persistent_workers=workers > 0, prefetch_factor=PREFETCH if workers > 0 else None,
        worker_init_fn=worker_started if workers > 0 else None,
    )  # fmt: skip


def with_waits(batches: Iterable) -> Iterator[tuple[object, float]]:
    """Each of ``batches`` with the seconds its consumer waited for it: the time in the loader's ``next``. A
    training loop on a GPU queues its work without waiting for the device, so that is time the loader kept it
    (and, once the queued work ran out, the GPU) waiting."""
    batches = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.perf_counter() - t
