"""Bookkeeping of files that fail while a run reads them.

Datasets never swap a failed item for another one: they return a failure record, the collate function moves
it out of the batch, and the run's :class:`FailureLog` counts it, stops the run when too many fail, and saves
the list with the run.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from xdc.errors import UserError


class TooManyFailures(UserError):
    pass


class FailureLog:
    def __init__(self, max_fraction: float, min_items: int = 50):
        self.max_fraction = max_fraction
        self.min_items = min_items  # a few early failures must not stop a run before the fraction means anything
        self.items = 0
        self.failures: list[tuple[str, str]] = []  # (path, reason), one per failed item

    def update(self, batch: dict) -> None:
        """Count a collated batch (see ``collate_clips``) and stop the run when too many items failed."""
        self.items += batch["size"]
        self.failures.extend((f["path"], f["reason"]) for f in batch["failures"])
        fraction = len(self.failures) / max(1, self.items)
        if self.items >= self.min_items and fraction > self.max_fraction:
            path, reason = self.failures[-1]
            raise TooManyFailures(
                f"{len(self.failures)} of {self.items} clips failed to load ({fraction:.1%}, more than "
                f"data.max_fail_fraction={self.max_fraction}); last: {path}: {reason}"
            )

    def save(self, path: str | Path) -> None:
        """Write one row per failed file: path, times it failed, last reason."""
        counts = Counter(p for p, _ in self.failures)
        last = dict(self.failures)
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "failures", "reason"])
            for p in sorted(counts):
                writer.writerow([p, counts[p], last[p]])
        tmp.replace(path)
