"""Where a long evaluation keeps its progress, so that running the same command again after a crash continues it.
Finetuning (:class:`SavedProgress`): a folder with the checkpoint of the last kept step (``last.pt``) and, once the
test is done, the result (``result.pt``). Extraction (:class:`xdc.training.checkpoint.KeptParts`): a folder of the
parts computed so far. Every file carries the settings that made it (:func:`identity`); a folder made with other
settings is started over, with a note. Files are written atomically and read weights-only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from xdc.config import Config, config_to_dict
from xdc.evaluation.adapters import Item
from xdc.training import checkpoint
from xdc.training.checkpoint import read_made_with


def identity(weights: str, run_cfg: Config, items: list[Item], **settings) -> str:
    """What a pass over ``items`` with an encoder computes depends on: its weights (``weights``, the digest of
    their file: ``Source.weights_digest``) and settings, every item (path, label, split, window), and ``settings``
    (JSON-able: the encoder, the mode, ...). Not the number of loader workers (``data.workers``): every draw comes
    from (seed, epoch, position)."""
    run = config_to_dict(run_cfg)
    run["data"].pop("workers")
    return json.dumps({
        "weights": weights, "run": run,
        "items": hashlib.sha256(json.dumps([dataclasses.astuple(i) for i in items]).encode()).hexdigest(),
        **settings,
    }, sort_keys=True)  # fmt: skip


class SavedProgress:
    def __init__(self, folder: Path, identity: str, quiet: bool = False):
        """``quiet``: say nothing of a folder started over (ranks other than 0 under torchrun)."""
        self.folder = Path(folder)
        self.identity = identity
        self.quiet = quiet
        self.checkpoint_path = self.folder / "last.pt"
        self.result_path = self.folder / "result.pt"

    def result(self) -> dict | None:
        """The result kept by an earlier run with the same settings, or None."""
        saved = self._load(self.result_path)
        return saved["result"] if saved is not None else None

    def checkpoint(self) -> dict | None:
        """The checkpoint kept by an earlier run with the same settings, or None."""
        return self._load(self.checkpoint_path)

    def save_checkpoint(self, state: dict) -> None:
        checkpoint.save_atomic({**state, "identity": self.identity}, self.checkpoint_path)

    def save_result(self, result: dict) -> None:
        """Keep the result; the checkpoint has served its purpose."""
        checkpoint.save_atomic({"result": result, "identity": self.identity}, self.result_path)
        self.checkpoint_path.unlink(missing_ok=True)

    def _load(self, path: Path) -> dict | None:
        saved, why = read_made_with(path, self.identity)
        if why and not self.quiet:
            print(f"NOTE: {why}; starting over", file=sys.stderr)
        return saved
