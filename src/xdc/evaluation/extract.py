"""``xdc extract``: features of a trained encoder for every clip of a labelled dataset.

Items (from a dataset adapter, a standard table or a manifest) are probed once with ``xdc index``'s machinery
(cached next to the output), turned into manifest rows (a segment row where the item is a window of its file),
and embedded clip by clip in eval mode: N evenly spaced clips per item, or a sliding window with ``stride``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from xdc.config import Config, config_to_dict, load_config
from xdc.data.datasets import EvalClips, make_loader
from xdc.data.failures import FailureLog
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest, read_rows
from xdc.data.worker_deaths import Surviving
from xdc.errors import UserError
from xdc.evaluation.adapters import Item
from xdc.evaluation.device import EvalDevice, pick_device
from xdc.evaluation.resume import KeptParts, identity
from xdc.models.encoders import build_encoder
from xdc.progress import progress_bar
from xdc.training import checkpoint
from xdc.training.to_host import ToHost


def load_run_encoder(run: str | Path, name: str) -> tuple[nn.Module, str, Config]:
    """The encoder ``name`` of a pretraining run (eval mode), its modality and the run's configuration."""
    run = Path(run)
    path = run / "encoders.pt"
    if not path.exists():
        raise UserError(f"{run} has no encoders.pt: is it a finished `xdc pretrain` run?")
    saved = checkpoint.load(path)
    if name not in saved["encoders"]:
        raise UserError(f"{run} has no encoder {name!r}; it has: {', '.join(saved['encoders'])}")
    cfg = load_config(run / "config.yaml")
    modality = saved["modalities"][name]
    encoder = build_encoder(modality, cfg.model)
    encoder.load_state_dict(saved["encoders"][name])
    return encoder.eval(), modality, cfg


def items_to_manifest(items: list[Item], probe_cache: Path, modality: str) -> tuple[Manifest, np.ndarray, list]:
    """Manifest rows for the items that ``modality`` can read; returns (manifest, item index per row, skipped)."""
    paths = sorted({item.path for item in items})
    probe_cache.parent.mkdir(parents=True, exist_ok=True)
    listing = probe_cache.with_suffix(".txt")
    listing.write_text("\n".join(paths) + "\n")
    build_manifest([str(listing)], probe_cache)
    probes = {row["path"]: row for row in read_rows(probe_cache)}
    rows, kept, skipped = [], [], []
    for i, item in enumerate(items):
        row = probes.get(item.path, {"status": "error", "reason": "not probed"})
        usable = row["status"] in ("ok", "no_audio")
        readable = usable and (float(row["width"] or 0) > 0 if modality == "video" else row["has_audio"] == "1")
        if not readable:
            skipped.append((item.path, row.get("reason") or f"no {modality} stream"))
            continue
        end = item.end_s or float(row["duration_s"])
        rows.append({**row, "duration_s": str(end - item.start_s), "label": item.label})
        kept.append(i)
    manifest = Manifest.from_rows(rows)
    manifest.offsets[:] = [items[i].start_s for i in kept]
    return manifest, np.array(kept, dtype=np.int64), skipped


@torch.no_grad()
def extract_features(
    run: str | Path, encoder_name: str, items: list[Item], out: str | Path, clips: int | None = None,
    stride: float | None = None, workers: int | None = None, batch_size: int = 32, cfg: Config | None = None,
    device: str = "auto",
) -> dict:  # fmt: skip
    """Embed every clip of ``items`` on ``device`` (xdc.evaluation.device); writes ``out`` (.npz) and returns a
    summary. A long extraction keeps its parts in ``OUT.parts/`` as it goes (every PART_BATCHES batches): the same
    call made again after a crash goes on after the last part, and the folder goes once ``out`` is written."""
    out = Path(out)
    encoder, modality, run_cfg = load_run_encoder(run, encoder_name)
    cfg = cfg or run_cfg
    place = EvalDevice(pick_device(device), cfg, modality)
    encoder = place.module(encoder)
    manifest, item_of_row, skipped = items_to_manifest(items, out.with_name(out.stem + ".probe.csv"), modality)
    if len(manifest) == 0:
        raise UserError(f"none of the {len(items)} items has a readable {modality} stream")
    dataset = EvalClips(manifest, cfg.data, clips=clips, stride=stride, modalities=(modality,), raw_video=True,
                        device_logmel=place.device_logmel)  # fmt: skip
    # the device and precision too: parts from a GPU in bf16 and from a CPU in float32 would not make one file
    made = identity(run, cfg, items, encoder=encoder_name, clips=clips, stride=stride, device=place.device.type,
                    bf16=place.bf16)  # fmt: skip
    kept = KeptParts(out.with_name(out.stem + ".parts"), made)
    parts = kept.load()
    start = sum(part["items"] for part in parts)  # the dataset's clips the kept parts cover
    failures = FailureLog(max_fraction=1.0)  # evaluation records every failed clip but never stops
    if parts:
        failures.load_state(parts[-1]["failures"])
        print(f"extract {encoder_name}: going on after the {start} of {len(dataset)} clips kept in {kept.folder}")
    todo = Subset(dataset, range(start, len(dataset))) if start else dataset
    loader = make_loader(todo, batch_size, cfg.data.workers_on(place.device.type) if workers is None else workers,
                         pin_memory=place.pin_memory)  # fmt: skip
    part = _Part(encoder.feature_dim)
    for batch in progress_bar(Surviving(loader), desc=f"extract {encoder_name}", unit="batch"):
        failures.update(batch)
        part.items += batch["size"]
        if batch["index"].numel():
            with place.autocast():
                part.features.add(encoder(place.inputs(batch)).float())
            part.add(batch)
        part.batches += 1
        if part.batches == PART_BATCHES:
            parts.append(part.kept(failures))
            kept.add(len(parts) - 1, parts[-1])
            part = _Part(encoder.feature_dim)
    parts.append(part.kept(failures))
    row = torch.cat([p["rows"] for p in parts]).numpy()
    item = item_of_row[row]
    _save_npz(
        out,
        features=torch.cat([p["features"] for p in parts]).numpy(),
        item=item,
        clip=torch.cat([p["clips"] for p in parts]).numpy(),
        start=torch.cat([p["starts"] for p in parts]).numpy() + manifest.offsets[row],  # seconds from the file's start
        label=np.array([items[i].label for i in item]),
        split=np.array([items[i].split for i in item]),
        fold=np.array([items[i].fold for i in item], dtype=np.int64),
        group=np.array([items[i].group for i in item]),
        path=np.array([items[i].path for i in item]),
    )  # fmt: skip
    kept.clear()
    skipped += failures.failures
    return {"out": str(out), "run": str(run), "clips": int(len(item)), "items": len(items), "encoder": encoder_name,
            "modality": modality, "clips_per_item": clips, "stride": stride, "device": str(place.device),
            "bf16": place.bf16, **({"logmel_on": "device" if place.device_logmel else "workers"}
                                   if modality == "audio" else {}), "data": config_to_dict(cfg.data),
            "skipped": [{"path": p, "reason": r} for p, r in skipped]}  # fmt: skip


PART_BATCHES = 256  # batches of a kept part of an extraction: at most what a crash costs


class _Part:
    """What a stretch of an extraction computed: its features (on the device until kept), video rows, clip numbers
    and starts, and how many of the dataset's clips it covers (those that failed too)."""

    def __init__(self, dim: int):
        self.features = ToHost()  # one wait for the device per 32 batches
        self.dim = dim
        self.rows, self.clips, self.starts = [], [], []
        self.items = self.batches = 0

    def add(self, batch: dict) -> None:
        self.rows.append(batch["index"])
        self.clips.append(batch["clip"])
        self.starts.append(batch["start"])

    def kept(self, failures: FailureLog) -> dict:
        """As a part file holds it (tensors, weights-only), with the failures counted up to its end."""
        return {"items": self.items, "features": self.features.result(torch.empty(0, self.dim)),
                "rows": _cat(self.rows, torch.int64), "clips": _cat(self.clips, torch.int64),
                "starts": _cat(self.starts, torch.float64), "failures": failures.state()}  # fmt: skip


def _cat(pieces: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(pieces).to(dtype) if pieces else torch.zeros(0, dtype=dtype)


def _save_npz(out: Path, **arrays) -> None:
    """``np.savez`` through a temporary file and a rename: a crash leaves the old file or the new one."""
    out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")  # where np.savez would write
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, out)
