"""Atomic checkpoint writes and weights-only loads, and the parts a long pass keeps as it goes."""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from xdc.atomic import replacing
from xdc.errors import UserError


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a crash leaves either the
    old checkpoint or the new one, never half of one; a full disk, the old one and a one-line error (``replacing``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # which flushes it to disk once closed
        torch.save(obj, f)


def save_npz(file: Path, /, **arrays) -> None:
    """``np.savez`` through a temporary file and a rename: a crash leaves the old file or the new one. (Any
    array name may be given, "path" and "file" too.)"""
    with replacing(file) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load(file: str | Path | BinaryIO) -> dict:
    # weights_only: a checkpoint is data, never code to run.
    return torch.load(file, map_location="cpu", weights_only=True)


def read(path: str | Path, what: str, then: str = "") -> dict:
    """``load``, for a file that a user names (or that a run keeps for them): any failure to read it is a one-line
    error naming the file and ``what`` it should be, and ``then`` (what to do about a damaged file) where given. A
    failure of the machine (permission, I/O) gets no ``then``: a whole file may be behind it (remove nothing)."""
    return _reading(path, what, then, lambda: _load_checked(path))


def _load_checked(path: str | Path) -> dict:
    """``load``, each record of the file checked against its checksum first (``_check_sums``)."""
    with open(path, "rb") as f:
        _check_sums(f)
        return load(f)


def read_hashed(path: str | Path, what: str, then: str = "") -> tuple[dict, str]:
    """``read``, and the sha256 of the file (``file_digest``'s), from one open of it: hashed as its bytes come in,
    then loaded from the page cache. An evaluation needs both of a run's encoders (170 MB at the paper's width),
    and read them three to seven times until 2026-12-03. (torch loads an open file as it loads its path.)"""

    def load_and_hash() -> tuple[dict, str]:
        with open(path, "rb") as f:
            digest = _digest(f)
            _check_sums(f)
            return load(f), digest

    return _reading(path, what, then, load_and_hash)


def _reading(path: str | Path, what: str, then: str, reading: Callable[[], Any]) -> Any:
    try:
        return reading()
    except Exception as e:  # torch's unpickler raises many kinds (KeyError, IndexError, ...) on a file of another kind
        damaged = then and (not isinstance(e, OSError) or _cut_short(e))
        raise UserError(f"cannot read {path} as {what}: {_why_unreadable(e)}" + (f"; {then}" if damaged else "")) \
            from None  # fmt: skip


class DamagedRecord(ValueError):
    """A record of a torch file whose bytes no longer match the checksum that torch.save wrote with them."""


def _check_sums(f: BinaryIO) -> None:
    """Check each record of the torch file ``f`` against its CRC-32, which torch.save writes and torch's reader
    does not check: a byte damaged on the disk inside a whole file loaded as if sound (until 2026-12-03 a resume
    trained on). 0.15 s for 400 MB on the 2-core machine, read from the page cache. ``f`` is left at its start."""
    f.seek(0)
    try:
        archive = zipfile.ZipFile(f)
    except Exception:  # not an archive zipfile reads (torch's legacy format, a file cut short): torch's reader says
        f.seek(0)
        return
    with archive:
        for record in archive.infolist():
            if not record.CRC:  # saved without sums (torch.serialization.set_crc32_options(False))
                continue
            try:
                with archive.open(record) as data:
                    while data.read(1 << 24):  # zipfile checks the CRC as the last bytes come in
                        pass
            except zipfile.BadZipFile:
                raise DamagedRecord(f"damaged: the bytes of its record {record.filename} do not match their "
                                    "checksum") from None  # fmt: skip
    f.seek(0)


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return _digest(f)


def _digest(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while block := f.read(1 << 22):
        h.update(block)
    return h.hexdigest()


def _why_unreadable(error: Exception) -> str:
    """What torch's message says is wrong: the line after its "WeightsUnpickler error:" if any (the lines before
    it advise weights_only=False, which would run a file's code), else its first line, less that advice where it
    has it. Errors that torch's reader does not word (a KeyError of a byte value, ...) come from a file that
    torch.save did not write."""
    if _cut_short(error):
        return f"cut short or damaged (torch's reader: {error.strerror})"
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif not isinstance(error, (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError)):
        return f"not a file that torch.save writes ({type(error).__name__}: {text})"
    line = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    # a file of zeros "saved in the legacy .tar format": the advice on one line with it goes too
    head, advice, _ = line.partition(" In PyTorch 2.6, we changed")
    return head.rstrip(".") if advice else line


def _cut_short(error: Exception) -> bool:
    """Whether ``error`` is the OSError (EINVAL, no file named) that torch's zip reader raises where a file was cut
    short (at 5 kB to 50 kB of a 2 MB checkpoint: a seek before its start), not a failure of the machine."""
    return isinstance(error, OSError) and error.errno == errno.EINVAL and error.filename is None


def warn_threads(before: int | None, device: torch.device) -> None:
    """Warn that a pass resumed on the CPU with another thread count than the ``before`` its checkpoint recorded
    (None: an older checkpoint) no longer matches a pass straight through. The thread count sets how the CPU splits
    a float sum, so the last bits of every step; over a pretraining's rounds they can move a clip to another
    cluster. (On a GPU, cuDNN's kernels already vary the last bits: docs/pretrain.md.)"""
    now = torch.get_num_threads()
    if device.type == "cpu" and before is not None and before != now:
        threads = f"{before} CPU thread" + "s" * (before != 1)
        print(f"WARNING: this run computed with {threads} and goes on with {now}: its results will differ in the last "
              f"bits from a run with one thread count throughout (OMP_NUM_THREADS={before} keeps them)",
              file=sys.stderr)  # fmt: skip


def earlier_encoders(run: Path, rounds: int) -> Path:
    """Where a finished run that more rounds extend keeps the encoders of its first ``rounds`` rounds."""
    return run / f"encoders-{rounds}-rounds.pt"


def encoders_rounds(path: Path) -> int | None:
    """The N of an ``earlier_encoders`` file's name (encoders-N-rounds.pt); None for any other name."""
    name, prefix, suffix = path.name, "encoders-", "-rounds.pt"
    middle = name[len(prefix) : -len(suffix)]
    return int(middle) if name.startswith(prefix) and name.endswith(suffix) and middle.isdigit() else None


def is_encoders_file(path: Path) -> bool:
    """Whether ``path`` is named as a run's encoders are: encoders.pt, or earlier_encoders' encoders-N-rounds.pt."""
    return path.name == "encoders.pt" or encoders_rounds(path) is not None


def finished_encoders(run: Path) -> Path:
    """The encoders.pt of the finished pretraining run ``run``; else a UserError that says what the folder is."""
    path = run / "encoders.pt"
    if path.exists():
        return path
    rounds = [r for p in run.glob("encoders-*-rounds.pt") if (r := encoders_rounds(p)) is not None]
    if rounds:
        raise UserError(f"{run} is being extended by more rounds and has no encoders.pt until they end; its encoders "
                        f"before them are in {earlier_encoders(run, max(rounds))} (give that file as the run)")
    if (run / "checkpoints" / "last.pt").exists():
        raise UserError(f"{run} has not finished (no encoders.pt yet): go on with `xdc pretrain --resume --out {run}`")
    raise UserError(f"{run} has no encoders.pt: is it an `xdc pretrain` run folder?")


def read_made_with(path: Path, identity: str) -> tuple[dict | None, str | None]:
    """A file's contents if it exists, is whole and was made with ``identity`` (its ``identity`` key); else None,
    and why when it exists."""
    if not path.exists():
        return None, None
    try:
        saved = _load_checked(path)  # a part damaged on the disk is made again (until 2026-12-03 its rows were taken)
    except Exception as e:  # not a whole file: torch's unpickler raises many kinds
        return None, f"{path} cannot be read ({type(e).__name__}: {_why_unreadable(e)})"
    if saved.get("identity") != identity:
        return None, f"{path} was made with other settings ({_what_differs(saved.get('identity'), identity)})"
    return saved, None


# what the parts of an identity (xdc.evaluation.resume.identity) stand for, where a note names them
_PARTS = {"weights": "the run's weights", "run": "the run's settings", "items": "the items",
          "files": "the items' files as probed: size, mtime or status (one changed in place)"}  # fmt: skip


def _what_differs(saved, identity: str) -> str:
    """The parts of two identities (JSON objects, as xdc.evaluation.resume makes them) that differ; for others (or
    a file of before 2026-12-02 that recorded no files), what may have."""
    try:
        a, b = json.loads(saved), json.loads(identity)
    except (TypeError, ValueError):
        a = b = None
    if not (isinstance(a, dict) and isinstance(b, dict)) or "files" not in a:
        return "run, data, items or command options"
    return "what differs: " + ", ".join(_PARTS.get(k, k) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))


class KeptParts:
    """The parts of a long pass, kept as they are done (``xdc extract``, a pretraining round's extraction):
    ``part-00000.pt``, ``part-00001.pt``, ... in a folder, each a dict of tensors and lists, numbered by their place
    in the pass (not the order they were done), each tagged with the settings that made it."""

    def __init__(self, folder: Path, identity: str):
        self.folder = Path(folder)
        self.identity = identity

    def load(self) -> dict[int, dict]:
        """The parts an earlier run with the same settings kept, by number; a folder with any other is emptied."""
        parts = {}
        for path in sorted(self.folder.glob("part-*.pt")):
            saved, why = read_made_with(path, self.identity)
            if why:
                print(f"NOTE: {why}; starting over", file=sys.stderr)
                self.clear()
                return {}
            parts[int(path.stem.split("-")[1])] = saved
        return parts

    def add(self, number: int, part: dict) -> None:
        save_atomic({**part, "identity": self.identity, "threads": torch.get_num_threads()}, self._path(number))

    def read(self, number: int) -> dict:
        """A part that this run added (another rank, under torchrun)."""
        saved, why = read_made_with(self._path(number), self.identity)
        if saved is None:  # the ranks' machines do not share the folder, or something else writes there
            raise UserError(f"{why or f'{self._path(number)} is missing'}: another rank wrote it; is {self.folder} "
                            "on a filesystem every rank sees, and used by this command alone?")  # fmt: skip
        return saved

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, number: int) -> Path:
        return self.folder / f"part-{number:05d}.pt"
