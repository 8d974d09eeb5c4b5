"""Bookkeeping of files that fail while a run reads them.

Datasets never swap a failed item for another one: they return a failure record, the collate function moves
it out of the batch, and the run's :class:`FailureLog` counts it, stops the run when too many fail, and saves
the list with the run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from xdc.atomic import replacing
from xdc.data.manifest import open_text
from xdc.errors import SharedError


class TooManyFailures(SharedError):
    """Too many clips failed: under torchrun raised by every rank at once, judged on all their counts
    (``xdc.training.distributed.judge_failures``)."""


class FailureLog:
    """Failed items counted per file: its memory grows with the files that fail, not with the epochs that meet
    them again."""

    def __init__(self, max_fraction: float, min_items: int = 50, alone: bool = True):
        self.max_fraction = max_fraction
        self.min_items = min_items  # a few early failures must not stop a run before the fraction means anything
        # False: one rank's log of a run under DDP, whose ranks judge their counts together (too_many); it only counts
        self.alone = alone
        self.items = 0
        self.failed = 0  # failed items
        self.files: dict[str, list] = {}  # path -> [failed items, last reason]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(path, last reason) of each file that failed."""
        return [(path, reason) for path, (_, reason) in self.files.items()]

    def update(self, batch: dict) -> None:
        """Count a collated batch (see ``collate_clips``) and, alone, stop the run when too many items failed."""
        self.items += batch["size"]
        for f in batch["failures"]:
            self._add(f["path"], 1, f["reason"])
        if self.alone and self.too_many(self.items, self.failed):
            raise TooManyFailures(self.summary())

    def too_many(self, items: int, failed: int, whole_pass: bool = False) -> bool:
        """Whether ``failed`` of ``items`` (this log's, or all ranks' together) are too many to go on. Counts of
        ``whole_pass`` over the data are judged however few they are (until 2026-12-03 a collection of fewer than
        ``min_items`` clips was never judged in its first pass: 20 of 24 files failing, its training went on)."""
        return (items >= self.min_items or whole_pass) and failed / max(1, items) > self.max_fraction

    def end_pass(self) -> None:
        """At the end of a pass over the data, alone: judge its counts however few (``too_many``)."""
        if self.alone and self.too_many(self.items, self.failed, whole_pass=True):
            raise TooManyFailures(self.summary())

    def summary(self) -> str:
        """The stop's line: counts, fraction, the last file to fail and why."""
        path, reason = self.failures[-1]
        return (f"{self.failed} of {self.items} clips failed to load ({self.failed / max(1, self.items):.1%}, more "
                f"than data.max_fail_fraction={self.max_fraction}); last: {path}: {reason}")  # fmt: skip

    def _add(self, path: str, count: int, reason: str) -> None:
        self.failed += count
        entry = self.files.pop(path, [0, reason])  # popped and put back: the last to fail comes last
        self.files[path] = [entry[0] + count, reason]

    def state(self) -> dict:
        """What a checkpoint keeps, so that a resumed run counts and lists what failed before."""
        return {"items": self.items, "failed": self.failed, "files": dict(self.files)}

    def load_state(self, state: dict) -> None:
        self.items, self.failed, self.files = state["items"], state["failed"], dict(state["files"])

    def merge(self, states: list[dict]) -> None:
        """Add other logs' counts (other ranks')."""
        for other in states:
            self.items += other["items"]
            for path, (count, reason) in other["files"].items():
                self._add(path, count, reason)

    def save(self, path: str | Path) -> None:
        """Write one row per failed file: path, times it failed, last reason."""
        path = Path(path)
        with replacing(path, path.with_name(path.name + ".tmp")) as tmp, open_text(tmp, "w") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "failures", "reason"])
            for p in sorted(self.files):
                writer.writerow([p, *self.files[p]])
