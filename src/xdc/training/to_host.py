"""Per-batch results of a device brought to the host a group of batches at a time.

A copy to the host waits for everything queued on the device; one per batch would leave a GPU idle while the host
fetches the next batch and launches its work. Feature extraction (a round's step 1, ``xdc extract``) and
finetuning's test scores keep their batches' results on the device and copy them ``every`` batches at once.
"""

from __future__ import annotations

import torch

EVERY = 32  # batches per copy: 32 x 128 x 512 float32 features = 8 MB on the device


class ToHost:
    """Collects tensors (one per batch, same trailing shape) on their device; :meth:`result` is their
    concatenation on the host."""

    def __init__(self, every: int | None = None):
        self.every = EVERY if every is None else every
        self.pending: list[torch.Tensor] = []  # on the device
        self.done: list[torch.Tensor] = []  # on the host

    def add(self, t: torch.Tensor) -> None:
        self.pending.append(t)
        if len(self.pending) >= self.every:
            self._copy()

    def result(self, empty: torch.Tensor) -> torch.Tensor:
        """Everything added, on the host, in order (``empty`` when nothing was); the pieces are dropped once
        joined, so the results are never held twice for long."""
        self._copy()
        done, self.done = self.done, []
        return torch.cat(done) if done else empty

    def _copy(self) -> None:
        if self.pending:
            self.done.append(torch.cat(self.pending).cpu())
            self.pending.clear()
