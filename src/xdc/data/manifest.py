"""The manifest: one CSV row per media file of a collection, written by ``xdc index``.

Datasets hold it as a few numpy arrays (:class:`Manifest`) rather than a list of Python objects: DataLoader
workers then share those pages with the parent instead of copying them as reference counts change.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xdc.errors import UserError

COLUMNS = (
    "path", "status", "reason", "duration_s", "fps", "width", "height", "rotation",
    "has_audio", "sample_rate", "channels", "label", "size", "mtime",
)  # fmt: skip
STATUSES = ("ok", "no_audio", "error")


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Write manifest rows atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    tmp.replace(path)


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"path", "status", "duration_s", "has_audio"} - set(reader.fieldnames or ())
            if missing:
                raise UserError(f"{path} is not an xdc manifest (missing columns: {', '.join(sorted(missing))})")
            return list(reader)
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@dataclass
class Manifest:
    """The usable files of a manifest as flat arrays (index i is video i everywhere).

    A row may stand for a segment of its file (e.g. a window around a spoken word): clips are then drawn from
    ``[offsets[i], offsets[i] + durations[i])``; for whole files the offset is 0.
    """

    paths: np.ndarray  # bytes, fixed width ('S'): no per-item Python objects
    durations: np.ndarray  # float64 seconds (of the segment)
    offsets: np.ndarray  # float64 seconds from the start of the file
    has_audio: np.ndarray  # bool
    has_video: np.ndarray  # bool: False for audio-only files (wav, flac, ...)
    labels: np.ndarray  # int64 index into ``classes``, -1 where unlabelled
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        return self.paths[i].decode()

    def subset(self, mask: np.ndarray) -> Manifest:
        arrays = {f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self) if f.name != "classes"}
        return dataclasses.replace(self, **arrays)

    @classmethod
    def from_rows(cls, rows: list[dict], require_audio: bool = False) -> Manifest:
        """Keep the usable rows (status ok, or no_audio unless ``require_audio``)."""
        allowed = ("ok",) if require_audio else ("ok", "no_audio")
        kept = [r for r in rows if r["status"] in allowed and float(r["duration_s"] or 0) > 0]
        classes = tuple(sorted({r.get("label") or "" for r in kept} - {""}))
        index = {c: i for i, c in enumerate(classes)}
        return cls(
            paths=np.array([r["path"].encode() for r in kept], dtype="S") if kept else np.array([], dtype="S1"),
            durations=np.array([float(r["duration_s"]) for r in kept], dtype=np.float64),
            offsets=np.zeros(len(kept), dtype=np.float64),
            has_audio=np.array([r["has_audio"] in ("1", "True", "true") for r in kept], dtype=bool),
            has_video=np.array([float(r.get("width") or 1) > 0 for r in kept], dtype=bool),
            labels=np.array([index.get(r.get("label") or "", -1) for r in kept], dtype=np.int64),
            classes=classes,
        )

    @classmethod
    def load(cls, path: str | Path, require_audio: bool = False) -> Manifest:
        manifest = cls.from_rows(read_rows(path), require_audio=require_audio)
        if len(manifest) == 0:
            raise UserError(f"{path}: no usable files" + (" with audio" if require_audio else ""))
        return manifest
