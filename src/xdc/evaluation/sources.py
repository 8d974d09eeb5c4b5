"""What ``--run`` of ``xdc extract`` and ``xdc eval finetune``, and pretraining's ``train.init``, may name: an
encoder, with the settings that make its clips and place it on a device.

- a pretraining run folder: the encoder of its ``encoders.pt``, with the run's ``config.yaml``; or one of the run's
  encoders files, e.g. ``encoders-1-rounds.pt`` while more rounds extend it;
- an ``xdc export`` folder or one of its ``.safetensors`` files: the settings in the file's metadata;
- a file of the released XDC weights (``.pth``, ``.pt``): the video encoder, with the paper preset's settings
  (8 frames at 8 fps, 112 x 112 crops of frames scaled to a short side of 128), which ``data.*`` settings change
  (the paper finetunes on 32 frames: ``data.clip.frames=32``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from xdc.config import Config, load_config, with_settings
from xdc.errors import UserError
from xdc.models.encoders import build_encoder
from xdc.training import checkpoint

KINDS = ("run", "export", "released")


@dataclass
class Source:
    encoder: nn.Module  # in eval mode
    modality: str
    cfg: Config  # data: the clips it is fed; train: how it runs on a GPU (precision, layout)
    weights: Path  # the file whose digest says, in kept progress, which weights made it
    kind: str  # one of KINDS
    digest: str | None = None  # of ``weights``, where the read that loaded them took it (a run's)

    def weights_digest(self) -> str:
        """The sha256 of ``weights``: a run's as its encoders were read, another's hashed on first use."""
        if self.digest is None:
            self.digest = checkpoint.file_digest(self.weights)
        return self.digest


def load_source(path: str | Path, name: str, settings: dict[str, Any] | None = None) -> Source:
    """The encoder ``name`` of ``path`` (a run folder, an export or the released weights; see the module), with its
    settings, then ``settings`` (dotted keys: values) over them."""
    path = Path(path)
    source = {"run": _run, "export": _export, "released": _released}[kind(path)](path, name)
    if settings:
        source.cfg = with_settings(source.cfg, settings)
    return source


def load_run_encoder(run: str | Path, name: str | None = None) -> tuple[nn.Module, str, Config]:
    """The encoder ``name`` of a pretraining run (eval mode), its modality and the run's configuration; ``name``
    may be left out when the run has one encoder (sdc-video, sdc-audio)."""
    run, weights = run_and_encoders(Path(run))
    saved = checkpoint.read(weights, "a run's encoders")
    if name is None:
        if len(saved["encoders"]) > 1:
            raise UserError(f"{run} holds several encoders ({', '.join(saved['encoders'])}): choose one with name=")
        name = next(iter(saved["encoders"]))
    source = _run_encoder(run, weights, saved, name)  # no digest needed
    return source.encoder, source.modality, source.cfg


def encoder_sources(path: str | Path) -> dict[str, Source]:
    """Every encoder of ``path`` (as for load_source), a run's from one read of its encoders file, not hashed:
    what a pretraining started from it needs."""
    path = Path(path)
    if kind(path) == "run":
        return run_encoders(path)[1]
    return {name: load_source(path, name) for name in encoder_modalities(path)}


def encoder_modalities(path: str | Path) -> dict[str, str]:
    """The encoders that ``path`` (as for load_source) holds: name -> modality."""
    path = Path(path)
    found = kind(path)
    if found == "run":
        return dict(checkpoint.read(run_and_encoders(path)[1], "a run's encoders")["modalities"])
    if found == "export":
        from xdc.export import read_metadata

        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        return {file.stem: read_metadata(file)["modality"] for file in files}
    return {"video": "video"}


def kind(path: Path) -> str:
    """Which of KINDS ``path`` is, by its form (what is in it is checked as it loads)."""
    if path.is_dir():
        if is_run_folder(path):
            return "run"
        if any(path.glob("*.safetensors")):
            return "export"
        raise UserError(f"{path} is neither a pretraining run folder (no config.yaml or checkpoints/) nor an `xdc "
                        "export` folder (no .safetensors files)")  # fmt: skip
    if path.suffix == ".safetensors":
        return "export"
    if path.is_file() and is_run_folder(path.parent):
        if checkpoint.is_encoders_file(path):  # encoders-N-rounds.pt: the encoders before an extension's rounds
            return "run"
        raise UserError(f"{path} is a file of the run {path.parent}: give the run's folder or its encoders.pt")
    if path.is_file() and path.parent.name == "checkpoints" and is_run_folder(path.parent.parent):
        # a training checkpoint (last.pt): read as the released weights, it was "holds no state dict" (until
        # 2026-12-03)
        raise UserError(f"{path} is a file of the run {path.parent.parent}: give the run's folder or its encoders.pt")
    if path.is_file():
        return "released"
    raise UserError(f"{path}: no such file or folder (a pretraining run folder, an `xdc export` folder or file, or "
                    "the released XDC weights)")  # fmt: skip


def is_run_folder(folder: Path) -> bool:
    return (folder / "config.yaml").exists() or (folder / "checkpoints").is_dir()


def run_and_encoders(path: Path) -> tuple[Path, Path]:
    """The run folder and encoders file of ``path``: a run folder (its finished encoders.pt) or one of a run's
    encoders files (``checkpoint.is_encoders_file``)."""
    if path.is_file():
        return path.parent, path
    return path, checkpoint.finished_encoders(path)


def _run(path: Path, name: str) -> Source:
    run, weights = run_and_encoders(path)
    saved, digest = checkpoint.read_hashed(weights, "a run's encoders")
    return _run_encoder(run, weights, saved, name, digest)


def run_encoders(path: str | Path) -> tuple[dict, dict[str, Source]]:
    """What a pretraining run's encoders file holds (method, modalities, ...) and each of its encoders, from one
    read of the file, not hashed (``Source.weights_digest`` reads it again): what an export and a pretraining's
    ``train.init`` need."""
    run, weights = run_and_encoders(Path(path))
    saved = checkpoint.read(weights, "a run's encoders")
    return saved, {name: _run_encoder(run, weights, saved, name) for name in saved["encoders"]}


def _run_encoder(run: Path, weights: Path, saved: dict, name: str, digest: str | None = None) -> Source:
    if name not in saved["encoders"]:
        raise UserError(f"{run} has no encoder {name!r}; it has: {', '.join(saved['encoders'])}")
    cfg = load_config(run / "config.yaml")
    modality = saved["modalities"][name]
    encoder = build_encoder(modality, cfg.model)
    try:
        encoder.load_state_dict(saved["encoders"][name])
    except RuntimeError as e:  # torch lists the mismatches on the lines after its first
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])[:500]
        raise UserError(f"{weights}: the encoder {name!r} does not fit the model that {run / 'config.yaml'} "
                        f"describes: {detail}") from None  # fmt: skip
    return Source(encoder.eval(), modality, cfg, weights, "run", digest)


def _export(path: Path, name: str) -> Source:
    from xdc.export import encoder_file, load_encoder, read_metadata

    file = encoder_file(path, name)
    meta = read_metadata(file)
    data = meta["data"]
    # Exports before 2026-11-30 lack the training jitter: the short side clips are scaled to, then up to 1.25x it
    # (the paper preset's 128-160), which finetuning's training clips draw from.
    short = data["eval_short_side"]
    augment = data.get("augment", {"scale_min": short, "scale_max": round(short * 1.25)})
    # and those before 2026-12-01 the run's clips per video and missing-audio policy: the defaults stand in
    kept = {key: data[key] for key in ("eval_clips", "missing_audio") if key in data}
    data = {"clip": data["clip"], "mel": data["mel"], "augment": augment, **kept}
    cfg = load_config(mapping={"model": meta["model"], "data": data})
    return Source(load_encoder(file), meta["modality"], cfg, file, "export")


def _released(path: Path, name: str) -> Source:
    from xdc.models.official import RELEASED_MODEL, load_official_xdc

    if name != "video":
        raise UserError(f"{path}: the released XDC weights are a video encoder: use --encoder video, not {name!r}")
    return Source(load_official_xdc(path), "video", load_config(preset="paper", mapping={"model": RELEASED_MODEL}),
                  path, "released")  # fmt: skip
