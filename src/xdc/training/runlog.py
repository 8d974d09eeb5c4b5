"""Run logs: one JSON object per line (log.jsonl) and the same scalars in TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path


class RunLog:
    def __init__(self, out: Path, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / "log.jsonl", "a")
        self.tb = SummaryWriter(str(out / "tb"))

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()
