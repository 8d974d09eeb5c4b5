"""A disk cache of evaluation clips as the loader's workers hand them over (``train.extract_cache``).

A round's feature extraction reads the same clip of every video in every round (and ``train.recluster=plateau``
the held-back videos' after every epoch). Forward only, that pass waits for its loader's decoding on a GPU. With
the cache the items of the first pass are kept, and later passes read each one back with a single ``pread``.

One file holds the items of one set of keys (a rank's share of the videos: keys rank, rank + W, ...) as
fixed-size records: each array's bytes in a fixed order, then the cache's 8-byte mark once the record is whole.
Workers write records with ``pwrite``, so a full disk is an error the cache survives (a mapped file would raise
SIGBUS in the worker), and a worker killed while writing leaves a record without its mark: a miss. The mark is a
hash of what the records hold, the run's folder among it: a record of another run whose cache folder is a link to
the same place (``ln -s``) is a miss too, not another video's clip. A JSON file beside it says what the records
hold and whether the last pass ended with the records on disk; a cache that does not match, or that a machine
restart may have cut short, starts empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from xdc.atomic import replacing
_VERSION = 3  # 2: 2026-12-02, clips of non-square-pixel videos at their displayed size; 3: the 8-byte mark
_MARK = 8  # bytes of a record's mark, written last
ROOM = 0.9  # of a disk's free space, the most that caches may take: the rest is left for checkpoints and logs


def boot_id() -> str:
    """This boot of the machine ("" where unknown): written pages outlive a process, not a restart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class ClipCache:
    """Records of ``fields`` (name -> (shape, dtype)) for the keys of ``keys``, in the files ``stem``.bin/.json.

    ``describe`` is anything JSON that the items depend on besides the fields (the clip settings, the run): a
    cache made for other items is emptied, and their records are misses. Reading and writing work in any process
    (loader workers open the file for themselves); :meth:`begin` and :meth:`end`, around each pass that may write,
    belong to the main process.
    """

    def __init__(self, stem: Path, keys: range, fields: dict[str, tuple[tuple[int, ...], str]], describe: dict):
        self.data, self.meta = stem.with_suffix(".bin"), stem.with_suffix(".json")
        self.keys = keys
        self.fields = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in fields.items()}
        # the widest dtype first: every array then starts aligned in the buffer a record is read into
        self.order = sorted(self.fields, key=lambda name: -self.fields[name][1].itemsize)
        self.offsets, at = {}, 0
        for name in self.order:
            shape, dtype = self.fields[name]
            self.offsets[name] = at
            at += int(np.prod(shape)) * dtype.itemsize
        self.record = at + _MARK
        self.identity = {
            "version": _VERSION, "keys": [keys.start, keys.stop, keys.step], "record": self.record,
            "fields": {name: [list(shape), dtype.str] for name, (shape, dtype) in self.fields.items()},
            "items": describe,
        }  # fmt: skip
        self.mark = hashlib.blake2b(json.dumps(self.identity, sort_keys=True).encode(), digest_size=_MARK).digest()
        self._fd, self._pid = None, None
        self._write_failed = False

    @property
    def size(self) -> int:
        """Bytes of the file once every key has its record."""
        return len(self.keys) * self.record

    # --- main process ---------------------------------------------------------------------------------------

    def open(self, sharers: int = 1) -> str | None:
        """Keep what a previous pass left when it still holds, else start empty. Returns why the cache cannot be
        used, or None: the caches of ``sharers`` ranks (this one's size each) would take more than ROOM of the
        disk's free space, which checkpoints need too."""
        self.data.parent.mkdir(parents=True, exist_ok=True)
        keep = self._readable()
        if not keep:
            self.data.open("wb").close()
        # what each of the node's ranks still has to write (a resumed run's files hold their records already)
        more = max(0, self.size - self.data.stat().st_blocks * 512) if keep else self.size
        room, need = shutil.disk_usage(self.data.parent).free, more * sharers
        if need > ROOM * room:
            ranks = f" ({sharers} ranks x {more / 1e9:.1f} GB)" if sharers > 1 else ""
            return (f"the extraction cache needs {need / 1e9:.1f} GB more{ranks} at {self.data.parent}, more than "
                    f"{ROOM:.0%} of its {room / 1e9:.1f} GB free")  # fmt: skip
        return None

    def _readable(self) -> bool:
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return False
        if meta.get("identity") != self.identity or not self.data.exists():
            return False
        # records written during a pass that did not end are whole if the machine has not restarted since
        return meta.get("synced", False) or (meta.get("boot") == boot_id() != "")

    def begin(self) -> None:
        """Before a pass that may write records: until :meth:`end`, the file may hold records not yet on disk."""
        self._mark(synced=False)

    def end(self) -> None:
        """After the pass: the records on disk, then said so."""
        fd = os.open(self.data, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._mark(synced=True)

    def remove(self) -> None:
        """Delete the files (a finished run has no more use for them)."""
        self.data.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _mark(self, synced: bool) -> None:
        with replacing(self.meta, self.meta.with_suffix(".json.tmp")) as tmp:
            tmp.write_text(json.dumps({"identity": self.identity, "synced": synced, "boot": boot_id()}))

    # --- any process ----------------------------------------------------------------------------------------

    def _file(self) -> int:
        if self._pid != os.getpid():  # a loader worker opens its own (a spawned one gets no descriptor)
            self._fd, self._pid = os.open(self.data, os.O_RDWR), os.getpid()
        return self._fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def read(self, key: int) -> dict[str, torch.Tensor] | None:
        """The arrays of ``key``'s record, or None when it has none (not yet written, or another rank's key)."""
        if key not in self.keys:
            return None
        buffer = bytearray(self.record)
        try:
            got = os.preadv(self._file(), [buffer], self.keys.index(key) * self.record)
        except OSError:
            return None
        if got != self.record or buffer[-_MARK:] != self.mark:
            return None
        return {
            name: torch.from_numpy(np.frombuffer(buffer, dtype, int(np.prod(shape)), self.offsets[name]).reshape(shape))
            for name, (shape, dtype) in self.fields.items()
        }

    def write(self, key: int, item: dict) -> None:
        """Keep ``item``'s arrays as ``key``'s record. A failed write (a full disk) warns once and is a miss."""
        if key not in self.keys or self._write_failed:
            return
        parts = []  # the arrays' own memory, in record order, then the mark: written with no copy of ours
        for name in self.order:
            shape, dtype = self.fields[name]
            array = np.ascontiguousarray(item[name])
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"{name} is {array.dtype}{list(array.shape)}, the cache holds {dtype}{list(shape)}")
            parts.append(memoryview(array).cast("B"))
        parts.append(self.mark)
        try:
            written = os.pwritev(self._file(), parts, self.keys.index(key) * self.record)
            why = None if written == self.record else f"wrote {written} of a record's {self.record} bytes"
        except OSError as e:
            why = e.strerror or str(e)
        if why is not None:  # a record cut short has no mark: a miss, like a record never written
            self._write_failed = True
            warnings.warn(f"extraction cache {self.data}: {why}; this process stops writing to it")
