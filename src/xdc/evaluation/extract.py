"""``xdc extract``: features of a trained encoder for every clip of a labelled dataset.

Items (from a dataset adapter, a standard table or a manifest) are probed once with ``xdc index``'s machinery
(cached next to the output), turned into manifest rows (a segment row where the item is a window of its file),
and embedded clip by clip in eval mode: N evenly spaced clips per item, or a sliding window with ``stride``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Subset

from xdc.atomic import write_text
from xdc.config import config_to_dict, settings_of
from xdc.data.datasets import EvalClips, make_loader
from xdc.data.failures import FailureLog
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest, open_text, read_rows
from xdc.data.worker_deaths import Surviving
from xdc.errors import UserError
from xdc.evaluation.adapters import Item, not_found, refuse_repeats
from xdc.evaluation.device import EvalDevice, pick_device
from xdc.evaluation.resume import identity
from xdc.evaluation.sources import Source, load_source
from xdc.progress import progress_bar
from xdc.training.checkpoint import KeptParts, save_npz, warn_threads
from xdc.training.distributed import (
    PER_RANK_SETTINGS,
    Dist,
    broadcast_object,
    gather_objects,
    on_main,
    same_settings,
)
from xdc.training.to_host import ToHost


def evaluation_inputs(source: Source, items: Iterable[Item]) -> dict[str, Any]:
    """What the torchrun ranks of an evaluation compare (``same_settings``) besides its own options: the data settings
    of the encoder's run (but those a rank may have of its own), a digest of its weights and one of the items."""
    listed = json.dumps([dataclasses.astuple(item) for item in items]).encode()
    data = {k: v for k, v in settings_of(source.cfg).items() if k.startswith("data.") and k not in PER_RANK_SETTINGS}
    return {**data, "--run's weights (sha256)": source.weights_digest(),
            "--data's items (sha256)": hashlib.sha256(listed).hexdigest()}


def items_to_manifest(
    items: list[Item], probe_cache: Path, modality: str, ctx: Dist | None = None
) -> tuple[Manifest, np.ndarray, list]:
    """Manifest rows for the items that ``modality`` can read; returns (manifest, item index per row, skipped).
    Under torchrun (``ctx``) the ranks share out the probes (``xdc index``'s way) and every rank gets the result."""
    return probed_items(items, probe_cache, modality, ctx)[:3]


def probed_items(items: list[Item], probe_cache: Path, modality: str, ctx: Dist | None = None):
    """``items_to_manifest``'s result, the windows cut at their file's end (``cut_line``) and the digest of the
    items' files as probed (``_files``), which the identities of extract's and finetune's kept progress carry. A
    relative path (an item made in Python) is the current folder's file, as a decoder would open it: until
    2026-12-02 the probes looked for it beside ``probe_cache`` and found none of them ("no readable stream")."""
    ctx = ctx or Dist()
    items = [item if os.path.isabs(item.path) else dataclasses.replace(item, path=os.path.abspath(item.path))
             for item in items]  # fmt: skip
    listing = probe_cache.with_suffix(".txt")

    def write_listing() -> None:
        text = "\n".join(sorted({item.path for item in items})) + "\n"
        if listing.exists():  # the same list again is not written again (a re-run that does nothing changes nothing)
            with open_text(listing) as f:
                if f.read() == text:
                    return
        probe_cache.parent.mkdir(parents=True, exist_ok=True)
        with open_text(listing, "w") as f:
            f.write(text)

    on_main(write_listing, ctx)
    build_manifest([str(listing)], probe_cache, ctx=ctx)
    return broadcast_object(on_main(lambda: _usable(items, probe_cache, modality), ctx), ctx)


def _files(items: list[Item], probes: dict[str, dict]) -> str:
    """The digest of every item's file as probed (size, mtime, status): a file changed in place under the same name
    changes it, where the items (names, labels, windows) stay the same."""
    seen = [[path, *(probes.get(path, {}).get(k) for k in ("size", "mtime", "status"))]
            for path in sorted({item.path for item in items})]  # fmt: skip
    return hashlib.sha256(json.dumps(seen).encode("utf-8", "surrogateescape")).hexdigest()


def _usable(items: list[Item], probe_cache: Path, modality: str) -> tuple[Manifest, np.ndarray, list, list, str]:
    probes = {row["path"]: row for row in read_rows(probe_cache)}
    rows, kept, skipped, cut, windows_cut = [], [], [], [], []
    for i, item in enumerate(items):
        row = probes.get(item.path, {"status": "error", "reason": "not probed"})
        usable = row["status"] in ("ok", "no_audio")
        readable = usable and (float(row["width"] or 0) > 0 if modality == "video" else row["has_audio"] == "1")
        if not readable:
            skipped.append((item.path, row.get("reason") or f"no {modality} stream"))
            continue
        duration = float(row["duration_s"])
        if item.start_s >= duration:  # no clip of it can be read (and no row may have a duration of 0 or less)
            skipped.append((item.path, f"its window starts at {item.start_s:g}s, at or after the file's end at "
                                       f"{duration:g}s"))  # fmt: skip
            continue
        # a window that runs past the file's end ends there: its clips were spread over time that is not there, and
        # those past the end failed (until 2026-12-02)
        end = min(item.end_s or duration, duration)
        if item.end_s > duration:
            cut.append(i)
            windows_cut.append({"path": item.path, "start_s": item.start_s, "end_s": item.end_s,
                                "file_end_s": duration})  # fmt: skip
        # to the microsecond of the adapters' windows (and above 0): 2.41 - 1.41 is 1.0000000000000002, which left
        # a 1 s window room for a second, equal 1 s clip (until 2026-12-01: data.eval_clips copies of one)
        span = max(round(end - item.start_s, 6), 1e-6)
        rows.append({**row, "duration_s": str(span), "label": item.label})
        kept.append(i)
    manifest = Manifest.from_rows(rows)
    manifest.offsets[:] = [items[i].start_s for i in kept]
    files = _files(items, probes)
    if cut:  # kept features or progress of before the cut, whose clips were others, are not taken as these
        files = hashlib.sha256(json.dumps([files, "windows cut at the end", cut]).encode()).hexdigest()
    return manifest, np.array(kept, dtype=np.int64), skipped, windows_cut, files


def cut_line(cut: list[dict]) -> str | None:
    """The one line that says how many windows ran past their file's end (taken up to there), naming the first;
    None where none did. Until 2026-12-02 they were cut unsaid."""
    if not cut:
        return None
    first = cut[0]
    return (f"{len(cut)} window(s) past their file's end cut there, e.g. {first['path']} from {first['start_s']:g} s "
            f"to {first['end_s']:g} s: the file ends at {first['file_end_s']:g} s")  # fmt: skip


@torch.no_grad()
def extract_features(
    run: str | Path, encoder_name: str, items: list[Item], out: str | Path, clips: int | None = None,
    stride: float | None = None, workers: int | None = None, batch_size: int = 32,
    settings: dict[str, Any] | None = None, device: str = "auto", ctx: Dist | None = None,
    source: Source | None = None,
) -> dict | None:  # fmt: skip
    """Embed every clip of ``items`` with the encoder ``encoder_name`` of ``run`` (a run folder, an export or the
    released weights: xdc.evaluation.sources, with ``settings`` over its own) on ``device``
    (xdc.evaluation.device); writes ``out`` (.npz) and returns a summary. The clips are cut into parts
    (``_part_batches``) kept in ``OUT.parts/`` as they are done: the same call made again after a crash computes
    only the missing parts, and the folder goes once ``out`` is written. Where ``out`` and the summary beside it
    (``OUT.json``, which ``xdc extract`` writes) were both made with the same weights, items, files and settings
    (``made_with``), nothing is computed or written: the summary is returned with ``"kept": True``. Under
    torchrun (``ctx``) the ranks share out the probes and the parts; rank 0 joins the parts, writes and returns
    the summary (None on the others); ``out`` must be on a filesystem all ranks see, as a pretraining run's is.
    ``source``: that encoder, loaded already with ``settings`` (``xdc extract`` needs its modality first, to list
    the items): its file is read once."""
    ctx = ctx or Dist()
    out = features_path(out)
    for flag, value in (("--batch-size", batch_size), ("--clips", clips)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if stride is not None and not 0 < stride < math.inf:  # inf: every clip's start 0 * inf, NaN, failed
        raise UserError(f"--stride must be a finite number of seconds above 0, got {stride}")
    on_main(lambda: check_out(out), ctx)  # under torchrun a refusal is rank 0's line alone
    on_main(lambda: refuse_repeats(items), ctx)  # load_dataset's items pass; a list made in Python may not
    source = source or load_source(run, encoder_name, settings)
    encoder, modality, cfg = source.encoder, source.modality, source.cfg
    # every rank with rank 0's weights, items and settings before anything is probed or computed: until 2026-12-03 a
    # node started with another --clips or data.clip.frames computed its parts for nothing, refused only when rank 0
    # joined them, as if the ranks did not share a filesystem
    same_settings({"--encoder": encoder_name, "--clips": clips, "--stride": stride, "--batch-size": batch_size,
                   "--out": str(out), **evaluation_inputs(source, items)}, ctx)  # fmt: skip
    if stride is not None and stride * cfg.data.clip.sample_rate < 1:  # until 2026-12-01 a MemoryError's traceback
        raise UserError(f"--stride must be at least one audio sample (1/{cfg.data.clip.sample_rate} s at "
                        f"data.clip.sample_rate), got {stride}: closer windows start on the same sample and repeat "
                        "each other")  # fmt: skip
    place = EvalDevice(ctx.device if ctx.enabled else pick_device(device), cfg, modality)
    encoder = place.module(encoder)
    probe_cache = out.with_name(out.stem + ".probe.csv")
    manifest, item_of_row, skipped, cut, files = probed_items(items, probe_cache, modality, ctx)
    if len(manifest) == 0:
        raise UserError(f"none of the {len(items)} items has a readable {modality} stream")
    dataset = EvalClips(manifest, cfg.data, clips=clips, stride=stride, modalities=(modality,), raw_video=True,
                        device_logmel=place.device_logmel)  # fmt: skip
    # Whole batches, so that every batch holds the same clips however the parts are shared out: the features do
    # not depend on the number of ranks or on where a run was cut short.
    per_part = batch_size * _part_batches(-(-len(dataset) // batch_size))
    spans = [range(start, min(start + per_part, len(dataset))) for start in range(0, len(dataset), per_part)]
    # the device and precision too: parts from a GPU in bf16 and from a CPU in float32 would not make one file; and
    # the batch size, which changes the kernels' rounding (per_part alone is the same for several sizes); and the
    # files as probed (a file changed in place)
    made = identity(source.weights_digest(), cfg, items, encoder=encoder_name, clips=clips, stride=stride,
                    device=place.device.type, bf16=place.bf16, part_clips=per_part, batch_size=batch_size,
                    files=files)  # fmt: skip
    made_with = hashlib.sha256(made.encode("utf-8", "surrogateescape")).hexdigest()
    # decided by rank 0 for all: a finished extraction with all the same is left as it is (until 2026-12-02
    # computed again and written again)
    earlier = broadcast_object(on_main(lambda: _finished(out, made_with), ctx), ctx)
    if earlier is not None:
        return {**earlier, "out": str(out), "kept": True} if ctx.main else None
    kept = KeptParts(out.with_name(out.stem + ".parts"), made)
    parts = on_main(kept.load, ctx) or {}
    done = broadcast_object(sorted(parts), ctx)
    if done and ctx.main:
        print(f"extract {encoder_name}: {len(done)} of {len(spans)} parts kept in {kept.folder}; computing the rest")
        now = torch.get_num_threads()
        other = [t for part in parts.values() if (t := part.get("threads")) not in (None, now)]  # None: older parts
        warn_threads(other[0] if other else None, place.device)
    todo = sorted(set(range(len(spans))) - set(done))
    mine = todo[ctx.rank :: ctx.world_size]
    work = [spans[j] for j in mine]
    for number, part in _embed(encoder, place, dataset, work, batch_size, cfg, workers, f"extract {encoder_name}", ctx):
        kept.add(mine[number], part)
        if ctx.main:
            parts[mine[number]] = part
    others = gather_objects(mine, ctx)  # waits for every rank's parts

    def write() -> dict:
        for j in (j for rank in others[1:] for j in rank):
            parts[j] = kept.read(j)
        written, lost, partly = _write(out, [parts[j] for j in range(len(spans))], manifest, item_of_row, items,
                                       made_with)  # fmt: skip
        kept.clear()
        return {"out": str(out), "run": os.path.abspath(run), "source": source.kind, "clips": written, "items": len(items),
                "encoder": encoder_name, "modality": modality, "stride": stride,
                "clips_per_item": None if stride else dataset.per_video,  # at most: one for an item no longer than one
                "device": str(place.device), "ranks": ctx.world_size, "bf16": place.bf16,
                **({"logmel_on": "device" if place.device_logmel else "workers"} if modality == "audio" else {}),
                "data": config_to_dict(cfg.data),
                "skipped": [*({"path": p, "reason": r} for p, r in [*skipped, *lost]), *not_found(items)],
                "partly_kept": partly, "cut": cut, "made_with": made_with}  # fmt: skip

    return on_main(write, ctx)  # the other ranks wait as long as it takes (a barrier under NCCL would time out)


def features_path(out: str | Path) -> Path:
    """The file that ``xdc extract --out OUT`` writes: OUT, with ``.npz`` added as np.savez would add it, said so.
    An OUT.json is refused: it is the name of the summary or of an eval result (until 2026-12-03 the features went
    to OUT.json.npz and the summary to OUT.json.json)."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        raise UserError(f"--out {out}: xdc extract writes features, an .npz (and its summary, a .json, beside it): "
                        f"give --out {out.with_suffix('.npz')}")  # fmt: skip
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def write_summary(summary: dict) -> None:
    """OUT.json beside OUT.npz (``summary["out"]``), which a later ``extract_features`` of the same work needs to
    keep the features made already; a ``kept`` summary's file is as it would be written."""
    if not summary.get("kept"):
        write_text(Path(summary["out"]).with_suffix(".json"), json.dumps(summary, indent=2))


_SUMMARY_START = re.compile(rb'\s*\{\s*"out":')  # how every summary of xdc extract begins, since the first


def check_out(out: Path) -> None:
    """Before any work: ``out`` (.npz) or the summary beside it (``OUT.json``) that is there and not of xdc extract
    (an eval result, a run's file, notes) is refused rather than replaced (until 2026-12-02 both were, unsaid). An
    empty file (``mktemp``'s) is taken."""
    summary = out.with_suffix(".json")
    if out.exists() and not _ours(out, lambda f: "features.npy" in zipfile.ZipFile(f).namelist()):
        raise UserError(f"--out {out} exists and is not a features file of xdc extract: give a new path (or remove it)")
    if summary.exists() and not _ours(summary, lambda f: _SUMMARY_START.match(f.read(4096)) is not None):
        raise UserError(f"{summary} exists and is not the summary of an xdc extract, which --out {out} would write "
                        "there: give --out another name (or remove it)")  # fmt: skip


def _ours(path: Path, test: Callable[[BinaryIO], bool]) -> bool:
    """Whether ``path`` is a regular file that is empty or passes ``test`` (of the open file); a pipe is not opened."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            if not f.read(1):
                return True
            f.seek(0)
            return test(f)
    except (OSError, zipfile.BadZipFile):
        return False


def _finished(out: Path, made_with: str) -> dict | None:
    """The summary (``OUT.json``) of a finished extraction into ``out`` made with ``made_with``, where the features
    and the summary both say so; else None. Either of another extraction (one killed between the two writes, a
    summary or features of before 2026-12-02, which record none) is no match."""
    summary = out.with_suffix(".json")
    try:
        with np.load(out, allow_pickle=False) as data:
            if "made_with" not in data.files or str(data["made_with"]) != made_with:
                return None
        saved = json.loads(summary.read_text(encoding="utf-8", errors="surrogateescape"))
    except Exception:  # missing, unreadable, or not ours: extracted again, as before 2026-12-02
        return None
    return saved if isinstance(saved, dict) and saved.get("made_with") == made_with else None


def _write(out: Path, parts: list[dict], manifest: Manifest, item_of_row: np.ndarray, items: list[Item],
           made_with: str):  # fmt: skip
    """Join the parts into ``out``, with ``made_with`` (the digest of what made them); returns the clips it holds,
    the (path, last reason) of each file whose clips all failed, and the files of which some clips failed and some
    are in ``out`` (``partly_kept``: path, clips failed and kept, last reason). Until 2026-12-03 both kinds were
    listed alike, as skipped."""
    failures = FailureLog(max_fraction=1.0)
    failures.merge([part["failures"] for part in parts])
    row = torch.cat([p["rows"] for p in parts]).numpy()
    item = item_of_row[row]
    path = np.array([items[i].path for i in item])
    held = dict(zip(*np.unique(path, return_counts=True)))
    lost, partly = [], []
    for name, (failed, reason) in failures.files.items():
        if name in held:
            partly.append({"path": name, "clips_failed": failed, "clips_kept": int(held[name]), "reason": reason})
        else:
            lost.append((name, reason))
    save_npz(
        out,
        features=torch.cat([p["features"] for p in parts]).numpy(),
        item=item,
        clip=torch.cat([p["clips"] for p in parts]).numpy(),
        start=torch.cat([p["starts"] for p in parts]).numpy() + manifest.offsets[row],  # seconds from the file's start
        label=np.array([items[i].label for i in item]),
        split=np.array([items[i].split for i in item]),
        fold=np.array([items[i].fold for i in item], dtype=np.int64),
        group=np.array([items[i].group for i in item]),
        path=path,
        made_with=np.array(made_with),
    )  # fmt: skip
    return int(len(item)), lost, partly


PART_BATCHES = 256  # the most batches of a part: at most what a crash costs


def _part_batches(batches: int) -> int:
    """Batches per part of an extraction of ``batches``: a 64th of them, for even shares over many GPUs; at least
    16, so that a small extraction writes few files; at most PART_BATCHES."""
    return min(PART_BATCHES, max(16, -(-batches // 64)))


def _embed(encoder, place, dataset, spans, batch_size, cfg, workers, desc, ctx) -> Iterator[tuple[int, dict]]:
    """(number, part) for each of ``spans`` (ranges of the dataset's clips, whole batches), in order, through one
    loader: each part's features, video rows, clip numbers and starts, and its failed clips."""
    if not spans:
        return
    loader = make_loader(Subset(dataset, [i for span in spans for i in span]), batch_size,
                         cfg.data.workers_on(place.device.type) if workers is None else workers,
                         pin_memory=place.pin_memory)  # fmt: skip
    number, part = 0, _Part(encoder.feature_dim)
    for batch in progress_bar(Surviving(loader), desc=desc, unit="batch", show=ctx.main):
        part.failures.update(batch)
        if batch["index"].numel():
            with place.autocast():
                part.features.add(encoder(place.inputs(batch)).float())
            part.add(batch)
        if part.failures.items == len(spans[number]):
            yield number, part.kept()
            number, part = number + 1, _Part(encoder.feature_dim)


class _Part:
    """What a part of an extraction computed: its features (on the device until kept), video rows, clip numbers
    and starts, and its failed clips."""

    def __init__(self, dim: int):
        self.features = ToHost()  # one wait for the device per 32 batches
        self.dim = dim
        self.rows, self.clips, self.starts = [], [], []
        self.failures = FailureLog(max_fraction=1.0)  # evaluation records every failed clip but never stops

    def add(self, batch: dict) -> None:
        self.rows.append(batch["index"])
        self.clips.append(batch["clip"])
        self.starts.append(batch["start"])

    def kept(self) -> dict:
        """As a part file holds it (tensors, weights-only)."""
        return {"features": self.features.result(torch.empty(0, self.dim)), "rows": _cat(self.rows, torch.int64),
                "clips": _cat(self.clips, torch.int64), "starts": _cat(self.starts, torch.float64),
                "failures": self.failures.state()}  # fmt: skip


def _cat(pieces: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(pieces).to(dtype) if pieces else torch.zeros(0, dtype=dtype)
