"""``xdc extract``: features of a trained encoder for every clip of a labelled dataset.

Items (from a dataset adapter, a standard table or a manifest) are probed once with ``xdc index``'s machinery
(cached next to the output), turned into manifest rows (a segment row where the item is a window of its file),
and embedded clip by clip in eval mode: N evenly spaced clips per item, or a sliding window with ``stride``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from xdc.config import Config, config_to_dict, load_config
from xdc.data.datasets import EvalClips, make_loader
from xdc.data.failures import FailureLog
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest, read_rows
from xdc.data.worker_deaths import Surviving
from xdc.errors import UserError
from xdc.evaluation.adapters import Item
from xdc.evaluation.device import EvalDevice, pick_device
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
    summary."""
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
    loader = make_loader(dataset, batch_size, cfg.data.workers_on(place.device.type) if workers is None else workers,
                         pin_memory=place.pin_memory)  # fmt: skip
    failures = FailureLog(max_fraction=1.0)  # evaluation records every failed clip but never stops
    features, rows, clip_numbers, starts = ToHost(), [], [], []  # features: one wait for the device per 32 batches
    for batch in progress_bar(Surviving(loader), desc=f"extract {encoder_name}", unit="batch"):
        failures.update(batch)
        if batch["index"].numel() == 0:
            continue
        with place.autocast():
            features.add(encoder(place.inputs(batch)).float())
        rows.append(batch["index"].numpy())
        clip_numbers.append(batch["clip"].numpy())
        starts.append(batch["start"].numpy())
    row = np.concatenate(rows)
    item = item_of_row[row]
    np.savez(
        out,
        features=features.result(torch.empty(0, encoder.feature_dim)).numpy(),
        item=item,
        clip=np.concatenate(clip_numbers),
        start=np.concatenate(starts) + manifest.offsets[row],  # seconds from the start of the file
        label=np.array([items[i].label for i in item]),
        split=np.array([items[i].split for i in item]),
        fold=np.array([items[i].fold for i in item], dtype=np.int64),
        group=np.array([items[i].group for i in item]),
        path=np.array([items[i].path for i in item]),
    )  # fmt: skip
    skipped += failures.failures
    return {"out": str(out), "run": str(run), "clips": int(len(item)), "items": len(items), "encoder": encoder_name,
            "modality": modality, "clips_per_item": clips, "stride": stride, "device": str(place.device),
            "bf16": place.bf16, **({"logmel_on": "device" if place.device_logmel else "workers"}
                                   if modality == "audio" else {}), "data": config_to_dict(cfg.data),
            "skipped": [{"path": p, "reason": r} for p, r in skipped]}  # fmt: skip
