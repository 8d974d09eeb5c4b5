"""Run logs: one JSON object per line (log.jsonl) and the same scalars in TensorBoard."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from xdc.atomic import WriteError, replacing


class RunLog:
    """``records``: how many records log.jsonl holds, those of earlier runs in the folder included. A run that goes
    on from a checkpoint keeps that number in it, and ``keep`` then drops what was logged after the checkpoint,
    which the run logs again."""

    def __init__(self, out: Path, enabled: bool = True):
        self.enabled = enabled
        self.records = 0
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.tb_path = out / "log.jsonl", out / "tb"
        raw = self.path.read_bytes() if self.path.exists() else b""
        records, damaged = _records(raw)
        lines = [line for line, _ in records]
        if raw != "".join(line + "\n" for line in lines).encode():
            self._rewrite(lines)  # a record cut short by a kill: the next would be written onto its end
        _warn_damaged(self.path, raw, damaged)
        self.records = len(lines)
        self.file = open(self.path, "a")
        self.tb = self._writer()

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = strict({"kind": kind, "step": step, "time": time.time(), **values})
        with _writing(self.path):
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()
        self.records += 1
        self._scalars(record)

    def sync(self) -> None:
        """Put log.jsonl's records on the disk (fsync), before a checkpoint that counts them (``records``): a power
        loss after the checkpoint reached the disk would otherwise lose records that its resume does not log again,
        a gap in the log. Until 2026-12-02 they were written, not flushed."""
        if self.enabled:
            with _writing(self.path):
                os.fsync(self.file.fileno())  # ``write`` flushed Python's buffer

    def keep(self, select: Callable[[int, dict], bool]) -> None:
        """Keep only the records for which ``select(number, record)`` holds (numbered from 0, in the order
        written), in log.jsonl and TensorBoard alike: TensorBoard's files are written again from those records, also
        where none is dropped (its writer holds events in memory up to two minutes, which a kill lost)."""
        if not self.enabled:
            return
        records = _records(self.path.read_bytes())[0]
        kept = [(line, record) for number, (line, record) in enumerate(records) if select(number, record)]
        self.close()
        self._rewrite([line for line, _ in kept])
        shutil.rmtree(self.tb_path, ignore_errors=True)
        self.records = len(kept)
        self.file = open(self.path, "a")
        self.tb = self._writer()
        for _, record in kept:
            self._scalars(record)
        with _writing(self.tb_path):
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            try:
                with _writing(self.path):
                    self.file.close()
            finally:
                with _writing(self.tb_path):
                    self.tb.close()

    def _rewrite(self, lines: list[str]) -> None:
        with replacing(self.path, self.path.with_name(self.path.name + ".tmp")) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        _quiet_tensorboard_threads()
        return SummaryWriter(str(self.tb_path))

    def _scalars(self, record: dict) -> None:
        with _writing(self.tb_path):  # TensorBoard's thread writes: its failure is raised at a later scalar
            for key, value in record.items():
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if key not in ("kind", "step", "time") and number:
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"], walltime=record["time"])


def strict(value):
    """``value`` with null for each NaN and infinity: JSON has no word for them, and Python's ``NaN`` and
    ``Infinity`` made a line that strict readers (jq, JavaScript, most JSON libraries) refuse (until 2026-12-03: the
    loss of a run that diverged)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


@contextmanager
def _writing(path: Path):
    """A failure of the machine (a full disk) while writing the log at ``path``: one line that names it, as for
    every file xdc writes (``xdc.atomic``), not an OSError that names none (until 2026-12-02)."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None


_excepthook = threading.excepthook  # the hook before _quiet_tensorboard_threads, which others go to


def _quiet_tensorboard_threads() -> None:
    """Install _quiet_tensorboard_thread as threading's hook, once."""
    global _excepthook
    if threading.excepthook is not _quiet_tensorboard_thread:
        _excepthook, threading.excepthook = threading.excepthook, _quiet_tensorboard_thread


def _quiet_tensorboard_thread(args) -> None:
    """TensorBoard's writer thread keeps the OSError that stopped it (a full disk) and raises it at the run's next
    scalar, which ``_writing`` says in one line: not printed as a traceback of the thread first (until 2026-12-02)."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _excepthook(args)


def lr_text(lr: float, records: list[dict]) -> str:
    """``lr`` (config.yaml's, the last) and, where the run's ``start`` records show it changed on a resume
    (``--resume --set train.lr=``), the earlier ones with the step each ended at: "0.01 (0.05 until step 120)".
    Records without an lr (logged before 2026-12-03, when a resume could not change it) say nothing."""
    spans: list[tuple[float, int]] = []  # (lr, the step it started at), one per change
    for record in records:
        value = record.get("lr")
        if record.get("kind") == "start" and isinstance(value, (int, float)) and (not spans or spans[-1][0] != value):
            spans.append((value, record.get("step")))
    earlier = [f"{value} until step {spans[i + 1][1]}" for i, (value, _) in enumerate(spans[:-1])]
    return f"{lr}" + (f" ({', '.join(earlier)})" if earlier else "")


def read_log(path: Path) -> tuple[list[dict], int]:
    """The records of the log.jsonl at ``path``, and how many of its lines are none (cut short by a kill, or
    damaged): for the commands that read a run's log (report, export), which go on without those lines."""
    records, damaged = _records(path.read_bytes())
    return [record for _, record in records], len(damaged)


def _records(raw: bytes) -> tuple[list[tuple[str, dict]], list[int]]:
    """The whole records of a log.jsonl's bytes ``raw``, each as its line and its value, and the numbers (from 1)
    of the lines that are none: not JSON objects in UTF-8 (a line a kill cut short, or bytes damaged on disk).
    Blank lines are neither. Read as bytes: one damaged byte must not cost the other lines, nor stop a resume."""
    records, damaged = [], []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
            record = json.loads(text)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
            record = None
        if isinstance(record, dict):
            records.append((text, record))
        else:
            damaged.append(number)
    return records, damaged


def _warn_damaged(path: Path, raw: bytes, damaged: list[int]) -> None:
    """Name the damaged lines that RunLog drops from ``path``; not a last line without its newline, which a kill
    cut short (the run goes on from a checkpoint and logs that record again)."""
    cut = len(raw.splitlines()) if raw and not raw.endswith((b"\n", b"\r")) else None
    shown = [number for number in damaged if number != cut]
    if shown:
        print(f"WARNING: {path}: dropped {len(shown)} damaged line(s), not JSON records in UTF-8 (line "
              f"{', '.join(map(str, shown[:5]))}{', ...' if len(shown) > 5 else ''})", file=sys.stderr)  # fmt: skip
