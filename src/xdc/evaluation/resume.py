"""Where an evaluation that trains (finetuning) keeps its progress, so that running the same command again after a
crash continues it: a folder with the checkpoint of the last kept step (``last.pt``) and, once the test is done,
the result (``result.pt``). Both carry the settings that made them (:func:`identity`); a folder made with other
settings is started over, with a note. Files are written atomically and read weights-only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
import sys
from pathlib import Path

from xdc.config import Config, FinetuneConfig, config_to_dict
from xdc.evaluation.adapters import Item
from xdc.training import checkpoint

# Settings that change how often progress is kept, not what is computed: a resume may change them.
NOT_IDENTITY = ("checkpoint_every",)


def identity(run: Path, encoder: str, mode: str, cfg: FinetuneConfig, seed: int, run_cfg: Config,
             items: list[Item]) -> str:  # fmt: skip
    """What a finetuning's numbers depend on: the run's weights (their file's digest) and settings, the encoder, the
    mode, the finetune.* settings, the seed and every item (path, label, split, window). Not the device or the
    number of loader workers: every draw comes from (seed, epoch, position)."""
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_IDENTITY}
    return json.dumps({
        "weights": _digest(Path(run) / "encoders.pt"), "run": config_to_dict(run_cfg), "encoder": encoder,
        "mode": mode, "finetune": settings, "seed": seed,
        "items": hashlib.sha256(json.dumps([dataclasses.astuple(i) for i in items]).encode()).hexdigest(),
    }, sort_keys=True)  # fmt: skip


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


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

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _load(self, path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            saved = checkpoint.load(path)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:  # not a whole checkpoint: start over
            self._note(f"{path} cannot be read ({type(e).__name__}: {e}); starting over")
            return None
        if saved.get("identity") != self.identity:
            self._note(f"{path} was made with other settings (run, data, mode, finetune.* or seed); starting over")
            return None
        return saved

    def _note(self, message: str) -> None:
        if not self.quiet:
            print(f"NOTE: {message}", file=sys.stderr)
