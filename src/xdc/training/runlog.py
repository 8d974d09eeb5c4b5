"""Run logs: one JSON object per line (log.jsonl) and the same scalars in TensorBoard."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path


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
        text = self.path.read_text() if self.path.exists() else ""
        lines = [line for line, _ in _records(text)]
        if text != "".join(line + "\n" for line in lines):
            self._rewrite(lines)  # a record cut short by a kill: the next would be written onto its end
        self.records = len(lines)
        self.file = open(self.path, "a")
        self.tb = self._writer()

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.records += 1
        self._scalars(record)

    def keep(self, select: Callable[[int, dict], bool]) -> None:
        """Keep only the records for which ``select(number, record)`` holds (numbered from 0, in the order
        written), in log.jsonl and TensorBoard alike: TensorBoard's files are written again from those records."""
        if not self.enabled:
            return
        records = _records(self.path.read_text())
        kept = [(line, record) for number, (line, record) in enumerate(records) if select(number, record)]
        if len(kept) == len(records):
            return
        self.file.close()
        self.tb.close()
        self._rewrite([line for line, _ in kept])
        shutil.rmtree(self.tb_path, ignore_errors=True)
        self.records = len(kept)
        self.file = open(self.path, "a")
        self.tb = self._writer()
        for _, record in kept:
            self._scalars(record)
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()

    def _rewrite(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(self.path)

    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        return SummaryWriter(str(self.tb_path))

    def _scalars(self, record: dict) -> None:
        for key, value in record.items():
            if key not in ("kind", "step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"], walltime=record["time"])


def _records(text: str) -> list[tuple[str, dict]]:
    """The whole records of a log.jsonl's ``text``, each as its line and its value: not a line that a kill cut
    short."""
    records = []
    for line in text.splitlines():
        try:
            records.append((line, json.loads(line)))
        except ValueError:
            continue
    return records
