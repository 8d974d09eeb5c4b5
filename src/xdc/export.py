"""``xdc export``: a finished run's encoders as safetensors files with a model card, and ``load_encoder``.

Each encoder becomes DIR/<name>.safetensors: its state dict, plus string metadata (modality, model settings,
the clip and log-mel settings that feed it, the video normalisation) from which ``load_encoder`` rebuilds it
without the run folder or a config file. DIR/README.md is the model card: method, widths, training data,
rounds and k, the last round's cluster statistics, evaluation results passed with ``--metrics``, and how to load.
``load_encoder`` loads an encoder of an export, or of a run itself (the same weights as its export).
On request the encoders are also written as programs that run without this library, for any batch size, with
the same metadata: DIR/<name>.onnx (ONNX, for onnxruntime and other runtimes) and DIR/<name>.pt2
(``torch.export``). The released XDC checkpoints are a different format: load those with
``xdc.models.load_official_xdc``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
import safetensors.torch
from safetensors.torch import load_file
from torch import nn

from xdc import __version__
from xdc.atomic import WriteError, is_partial, move, partial_path, replacing, write_text
from xdc.config import Config, ModelConfig, config_to_dict, load_config
from xdc.data.audio import LogMel
from xdc.data.manifest import decode_paths, run_videos
from xdc.data.transforms import VIDEO_MEAN, VIDEO_STD
from xdc.errors import UserError
from xdc.evaluation.sources import is_run_folder, kind, load_run_encoder, run_and_encoders, run_encoders
from xdc.methods import Method, get_method
from xdc.models.encoders import build_encoder
from xdc.presets import PRESETS
from xdc.textfiles import read_text
from xdc.training import checkpoint
from xdc.training.runlog import lr_text, read_log

RELEASED = "released"  # the metadata's method of the released XDC weights (xdc or fully supervised: not known)
FORMAT = "xdc-encoder"
FORMAT_VERSION = "1"
_JSON_FIELDS = ("model", "data", "input_shape", "video_mean", "video_std")  # metadata values stored as JSON
CARD = "README.md"
PROGRAMS = ("onnx", "pt2")  # the formats --also can add; each file is <name>.<format>
PT2_METADATA = "xdc.json"  # the metadata's entry among a .pt2 file's extra files


# --- loading ------------------------------------------------------------------------------------------------


def load_encoder(path: str | Path, name: str | None = None) -> nn.Module:
    """An encoder of ``xdc export`` or of ``xdc pretrain``, on the CPU, in eval mode with its weights loaded.

    ``path`` is one ``<name>.safetensors`` file, or an export folder with ``name`` choosing the encoder; or a
    finished pretraining run folder (or its ``encoders.pt``) with ``name`` choosing one of its encoders: the
    weights an export of the run holds. ``name`` may be left out when there is one encoder. For the released XDC
    checkpoints use ``xdc.models.load_official_xdc``.
    """
    path = Path(path)
    # kind() also names any other file of a run (config.yaml, checkpoints/last.pt) with what to give instead
    if path.exists() and kind(path) == "run":
        return load_run_encoder(path, name)[0]
    file = encoder_file(path, name)
    meta = read_metadata(file)
    encoder = build_encoder(meta["modality"], _model_config(meta["model"], file))
    try:
        encoder.load_state_dict(load_file(file))
    except RuntimeError as e:  # torch lists the mismatches on the lines after its first
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:])[:500]
        raise UserError(f"{file}: the weights do not fit the {meta['modality']} encoder its metadata describes: "
                        f"{detail}") from None  # fmt: skip
    return encoder.eval()


def read_metadata(path: str | Path, name: str | None = None) -> dict:
    """The metadata of an exported encoder (file, or folder and ``name``), with the JSON values decoded:
    name, modality, method, model, feature_dim, input_shape, data {clip, mel, eval_short_side, augment, eval_clips,
    missing_audio}, and for video video_mean / video_std."""
    file = encoder_file(Path(path), name)
    try:
        with safe_open(file, framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {file} as a safetensors file: {e}; for the released XDC checkpoints use "
                        "xdc.models.load_official_xdc") from None  # fmt: skip
    if raw.get("format") != FORMAT:
        raise UserError(f"{file} was not written by `xdc export` (no {FORMAT!r} metadata); "
                        "for the released XDC checkpoints use xdc.models.load_official_xdc")  # fmt: skip
    if raw.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{file} is export format version {raw.get('format_version')}; this xdc reads "
                        f"version {FORMAT_VERSION}")  # fmt: skip
    meta: dict = {k: json.loads(v) if k in _JSON_FIELDS else v for k, v in raw.items()}
    meta["feature_dim"] = int(meta["feature_dim"])
    return meta


def encoder_file(path: Path, name: str | None) -> Path:
    """The ``.safetensors`` file that ``path`` (the file, or an export folder and ``name``) names."""
    if path.is_file() and checkpoint.is_encoders_file(path) and not is_run_folder(path.parent):
        # exporting it would fail as well: the model to build is in the run's config.yaml
        raise UserError(f"{path} is named as a run's encoders, but its folder is no run (no config.yaml beside it, "
                        "which says the model to build): give it in its run folder")  # fmt: skip
    if (path.is_dir() and is_run_folder(path)) or (path.is_file() and checkpoint.is_encoders_file(path)):
        what = "an `xdc pretrain` run" if path.is_dir() else "the encoders of an `xdc pretrain` run"
        raise UserError(f"{path} is {what}, not an export: write one with `xdc export {path} --out DIR`")
    # another file of a run (checkpoints/last.pt, config.yaml): read as safetensors it was "header too large"
    run = next((r for r in (path.parent, path.parent.parent) if is_run_folder(r)), None)
    if path.is_file() and path.suffix != ".safetensors" and run is not None:
        raise UserError(f"{path} is a file of the `xdc pretrain` run {run}, not an export: write one with "
                        f"`xdc export {run} --out DIR`")  # fmt: skip
    weights = path.with_suffix(".safetensors")
    if path.is_file() and path.suffix[1:] in PROGRAMS and weights.is_file():  # not "header too large; ... official"
        runs = "torch.export.load(path).module()" if path.suffix == ".pt2" else "onnxruntime.InferenceSession(path)"
        raise UserError(f"{path} is a program of an `xdc export`, which runs without xdc ({runs}); "
                        f"xdc.load_encoder reads the encoder's weights, {weights}")  # fmt: skip
    if path.is_file() and path.name == CARD and any(path.parent.glob("*.safetensors")):
        raise UserError(f"{path} is the model card of an `xdc export`: give its folder {path.parent} (and name=) or "
                        "one of its .safetensors files")  # fmt: skip
    if path.is_file():
        if name is not None and path.stem != name:
            raise UserError(f"{path} holds the encoder {path.stem!r}, not {name!r}")
        return path
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder (expected a .safetensors file or an `xdc export` folder)")
    files = sorted(path.glob("*.safetensors"))
    names = [f.stem for f in files]
    if not files:
        raise UserError(f"{path} holds no .safetensors files: is it an `xdc export` folder?")
    if name is None:
        if len(files) > 1:
            raise UserError(f"{path} holds several encoders ({', '.join(names)}): choose one with name=")
        return files[0]
    if name not in names:
        raise UserError(f"{path} has no encoder {name!r}; it has: {', '.join(names)}")
    return path / f"{name}.safetensors"


def _model_config(values: dict, file: Path) -> ModelConfig:
    try:
        return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as e:
        raise UserError(f"{file}: model settings this xdc does not know: {e}") from None


# --- writing ------------------------------------------------------------------------------------------------


def export_run(run: str | Path, out: str | Path, metrics: list[str | Path] | tuple = (),
               also: list[str] | tuple = ()) -> list[Path]:  # fmt: skip
    """Write every encoder of the finished run ``run`` and a model card into ``out``, and each encoder as the
    programs of ``also`` (formats of ``PROGRAMS``); returns the files. ``run`` may also be one of a run's encoders
    files (encoders-N-rounds.pt while more rounds extend it), or a file of the released XDC weights
    (``export_released``)."""
    run, out = Path(run), Path(out)
    # an export, folder or file, is refused there; another file of a run by kind, as extract refuses it
    exported = run.is_dir() and not is_run_folder(run) and any(run.glob("*.safetensors"))
    if exported or (run.is_file() and kind(run) != "run"):
        return export_released(run, out, metrics, also)
    if not run.exists():  # a typo: not "has no encoders.pt", which suggests a folder that is there
        raise UserError(f"{run}: no such file or folder (expected an `xdc pretrain` run folder, one of its encoders "
                        "files, or the released XDC weights)")  # fmt: skip
    given = run
    run, encoders_file = run_and_encoders(run)
    _check_programs(also)  # every input is checked (and the encoders loaded) before anything is written
    results = [_read_result(Path(m)) for m in metrics]
    for result in results:
        _check_evaluated(result, run)
    saved, sources = run_encoders(given)  # one read of the file (until 2026-12-03 one, then one per encoder)
    cfg = load_config(run / "config.yaml")
    encoders = {name: source.encoder for name, source in sources.items()}
    card = model_card(run, get_method(saved["method"]), cfg, encoders, saved["modalities"], results, also,
                      rounds_done=checkpoint.encoders_rounds(encoders_file))  # fmt: skip
    with _staged(out) as stage:
        files = []
        for name, source in sources.items():
            meta = encoder_metadata(name, source.modality, saved["method"], source.encoder, cfg)
            files += _write_encoder(stage, name, meta, source.encoder, also)
        files.append(_write_card(stage, card))
    return [out / f.name for f in files]


def export_released(path: Path, out: Path, metrics: list[str | Path] | tuple = (),
                    also: list[str] | tuple = ()) -> list[Path]:  # fmt: skip
    """The released XDC weights of ``path`` as an export: ``video.safetensors`` (and its programs) with the
    metadata of the paper preset's clips and of their network (per-conv middle widths, BatchNorm eps 1e-3), so
    that ``load_encoder``, ``xdc extract`` and ONNX runtimes take them like a run's; and a model card."""
    from xdc.evaluation.sources import load_source

    if kind(path) != "released":  # before loading: an export's audio.safetensors is no video encoder to load
        raise UserError(f"{path} is an export already: xdc export takes a run folder or the released XDC weights")
    source = load_source(path, "video")  # the file is checked before anything is written
    _check_programs(also)
    results = [_read_result(Path(m)) for m in metrics]
    for result in results:
        _check_evaluated(result, path, RELEASED)
    meta = encoder_metadata("video", "video", RELEASED, source.encoder, source.cfg)
    with _staged(out) as stage:
        files = _write_encoder(stage, "video", meta, source.encoder, also)
        files.append(_write_card(stage, released_card(path, source.encoder, source.cfg, results, also)))
    return [out / f.name for f in files]


def _write_encoder(out: Path, name: str, meta: dict[str, str], encoder: nn.Module, also: list[str] | tuple
                   ) -> list[Path]:  # fmt: skip
    """``out/<name>.safetensors`` (atomically, with ``meta``), then the programs of ``also``; returns the files."""
    path = out / f"{name}.safetensors"
    with replacing(path) as tmp:  # written by Python, not safetensors' writer: the OS's error if it fails, and the
        # mode the umask gives (safetensors' own files are readable by their owner only: not by the export's readers)
        state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
        tmp.write_bytes(_in_key_order(safetensors.torch.save(state, meta)))
    return [path, *(write_program(encoder, meta, out / f"{name}.{fmt}") for fmt in dict.fromkeys(also))]


def _in_key_order(data: bytes) -> bytes:
    """A safetensors file's bytes with its header's entries (the metadata's too) in key order: its writer keeps the
    metadata in a hash map, whose order changes from one save to the next, so two exports of a run differed in
    their bytes. The header stays a multiple of 8 bytes long (safetensors pads it with spaces for the tensors'
    alignment); the tensors' offsets count from its end, so they are unchanged."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header = {k: dict(sorted(v.items())) if k == "__metadata__" else v for k, v in sorted(header.items())}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def _write_card(out: Path, card: str) -> Path:
    write_text(out / CARD, card)
    return out / CARD


def _check_programs(formats: list[str] | tuple) -> None:
    unknown = sorted(set(formats) - set(PROGRAMS))
    if unknown:
        raise UserError(f"unknown export format {', '.join(unknown)}: choose from {', '.join(PROGRAMS)}")
    missing = [m for m in ("onnx", "onnxscript") if "onnx" in formats and importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs the package(s) {' and '.join(missing)}: pip install 'xdc[onnx]'")


def write_program(encoder: nn.Module, meta: dict[str, str], path: Path) -> Path:
    """The encoder (in eval mode) as a program for any batch size, with ``meta`` (as ``encoder_metadata`` makes
    it) attached: ONNX for ``.onnx`` (input ``clips``, output ``features``), ``torch.export`` for ``.pt2``."""
    example = (torch.zeros(2, *json.loads(meta["input_shape"])),)  # 2: a batch of 1 would be fixed as 1
    shapes = ({0: torch.export.Dim("batch")},)
    if path.suffix == ".onnx":
        program = torch.onnx.export(encoder, example, dynamo=True, input_names=["clips"], output_names=["features"],
                                    dynamic_shapes=shapes, verbose=False)  # fmt: skip
        program.model.metadata_props.update(meta)
        with replacing(path) as tmp:
            program.save(tmp)
    else:
        program = torch.export.export(encoder, example, dynamic_shapes=shapes)
        buffer = io.BytesIO()  # torch.export.save wants a buffer or a name ending in .pt2, not the temporary name
        torch.export.save(program, buffer, extra_files={PT2_METADATA: json.dumps(meta)})
        with replacing(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    return path


def encoder_metadata(name: str, modality: str, method: str, encoder: nn.Module, cfg: Config) -> dict[str, str]:
    """safetensors metadata (strings only) that is enough to rebuild the encoder and feed it."""
    data = {"clip": config_to_dict(cfg.data.clip), "mel": config_to_dict(cfg.data.mel),
            "eval_short_side": cfg.data.augment.scale_min, "augment": config_to_dict(cfg.data.augment),
            "eval_clips": cfg.data.eval_clips, "missing_audio": cfg.data.missing_audio}  # fmt: skip
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "xdc_version": __version__, "name": name,
            "modality": modality, "method": method, "feature_dim": str(encoder.feature_dim),
            "model": config_to_dict(cfg.model), "data": data, "input_shape": input_shape(modality, cfg)}  # fmt: skip
    if modality == "video":
        meta.update(video_mean=list(VIDEO_MEAN), video_std=list(VIDEO_STD))
    return {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in meta.items()}


def input_shape(modality: str, cfg: Config) -> list[int]:
    """One clip's input: C x T x H x W for video, 1 x n_mels x frames for audio."""
    clip = cfg.data.clip
    if modality == "video":
        return [3, clip.frames, clip.crop, clip.crop]
    frames = LogMel(cfg.data.mel, clip.sample_rate).frames(round(clip.audio_span * clip.sample_rate))
    return [1, cfg.data.mel.n_mels, frames]


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A hidden folder in ``out`` for the block to write the export's files in, which then replace ``out``'s: a
    previous export stays whole until every new file is written (an ONNX export can fail on a model, a disk can
    fill, Ctrl-C), and none of its files lingers after (an encoder or a program the new export lacks).
    ``out`` may be new, empty, or a previous export; anything else is refused."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not all(is_partial(e) for e in out.iterdir()) and not is_export(out):
            raise UserError(f"--out {out} is not empty and not a previous `xdc export`: choose a new folder")
        for entry in out.iterdir():  # what killed exports left: ours (is_export)
            if is_partial(entry):
                _remove(entry)
    out.mkdir(parents=True, exist_ok=True)
    stage = partial_path(out / "export")
    stage.mkdir()
    try:
        try:
            yield stage
        except WriteError as e:  # named as the file it was to be: "cannot write OUT/video.safetensors: ..."
            raise WriteError(str(e).replace(str(stage), str(out), 1)) from None
        written = {entry.name for entry in stage.iterdir()}
        for name in written:
            move(stage / name, out / name)
        for entry in out.iterdir():
            if entry.name not in written and entry != stage:  # only our own files are here (is_export)
                _remove(entry)
    finally:
        _remove(stage)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def is_export(folder: Path) -> bool:
    """True when ``folder`` holds only a model card, encoder files written by ``xdc export`` and programs of
    those encoders."""
    entries = [e for e in folder.iterdir() if not is_partial(e)]  # a killed export's leftovers: ours
    encoders = [e for e in entries if e.suffix == ".safetensors"]
    ours = {CARD, *(e.name for e in encoders), *(f"{e.stem}.{fmt}" for e in encoders for fmt in PROGRAMS)}
    if not encoders or any(e.name not in ours for e in entries):
        return False
    try:
        return all(e.is_file() and read_metadata(e) for e in encoders)
    except UserError:
        return False


def _read_result(path: Path) -> dict:
    try:
        record = json.loads(read_text(path, "metrics"))
    except json.JSONDecodeError as e:
        raise UserError(f"metrics {path} is not JSON: {e}") from None
    if not isinstance(record, dict) or not str(record.get("command", "")).startswith("eval "):
        raise UserError(f"metrics {path} is not a result file of `xdc eval ... --out` (no 'command' field)")
    return {"file": path.name, **record}


def _check_evaluated(result: dict, exported: Path, source: str = "run") -> None:
    """A result of another encoder would be cited in the card as the exported one's: refused where the result names
    what it evaluated (eval clusters and finetune; eval linear and kfold through their features' summary) and that
    is another run, or another file of the released weights, than ``exported`` (a run folder, or such a file for
    ``source`` RELEASED). An export's results pass: its file does not say which run it came from."""
    named, summary = result.get("run"), None
    if named is None and os.path.isabs(result.get("features") or ""):  # features.json beside them: their source
        try:
            summary = json.loads(Path(result["features"]).with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        named = summary.get("run") if isinstance(summary, dict) else None
    evaluated_source = (summary or result).get("source", "run")
    if not named or evaluated_source == "export":
        return
    evaluated = Path(named)
    if not evaluated.is_absolute():  # as typed, by an xdc before 2026-12-01: relative to a folder not recorded
        return
    if evaluated_source == "run" and checkpoint.is_encoders_file(evaluated):  # given as --run
        evaluated = evaluated.parent
    if evaluated_source != source or evaluated.resolve() != exported.resolve():
        what = "the run" if evaluated_source == "run" else "the released weights"
        mine = "this run's" if source == "run" else "these weights'"
        raise UserError(f"metrics {result['file']} evaluated {what} {evaluated}, not {exported}: give {mine} results")


# --- the model card -----------------------------------------------------------------------------------------


def model_card(run: Path, method: Method, cfg: Config, encoders: dict[str, nn.Module], modalities: dict[str, str],
               results: list[dict], programs: list[str] | tuple = (),
               rounds_done: int | None = None) -> str:  # fmt: skip
    """The README.md of an export: what the encoders are, how they were trained and evaluated, how to feed them.
    ``rounds_done``: the rounds of encoders kept while more extend the run (else its finished rounds' label files)."""
    train = cfg.train
    lines = [
        f"# {method.name} encoders from `{run.name}`",
        "",
        f"{_kind_of_encoders(method)} with `xdc pretrain` (xdc {__version__}), method **{method.name}**: "
        f"{method.description}. Exported with `xdc export` from `{run}`.",
        "",
        *_load_lines(encoders, programs),
        "",
        *_encoder_lines(encoders, modalities, cfg),
    ]
    lines += ["", f"Preset: {_preset(cfg)}.", "", "## Training", "", f"- data: {_data_line(run)}"]
    if rounds_done is None:
        rounds_done = len(list((run / "labels").glob("round_*.npz")))
    if not method.trains:
        lines.append(f"- rounds: none (method {method.name} trains nothing)")
    else:
        k = "" if method.supervised else f"; k = {train.k} clusters per label set"
        clustering = "" if method.supervised else f", re-cluster on {train.recluster}, assignment {train.assign}"
        if method.supervised:
            epochs = f"{train.epochs * train.rounds} epoch(s) (train.epochs x train.rounds)"
        elif train.recluster == "plateau":  # a round ends when the held-back loss stops improving: epochs is a cap
            epochs = f"up to {train.epochs} epoch(s)"
        else:
            epochs = f"{train.epochs} epoch(s)"
        lines += [f"- rounds: {rounds_done} of {1 if method.supervised else train.rounds}{k}",
                  f"- per round: {epochs} of {_epoch(train.epoch_size)}{clustering}",
                  f"- optimiser: SGD lr {_lr(run, train.lr)}, momentum {train.momentum}, weight decay "
                  f"{train.weight_decay}, batch {train.batch_size}; seed {cfg.seed}"]  # fmt: skip
    if train.init is not None:
        lines.append(f"- initial weights: `{train.init}` (train.init; an encoder it does not hold started at random)")
    lines += ["", "### Last round's clusters", "", *_cluster_lines(run, method, rounds_done)]
    lines += ["", "## Evaluation", "", *_metric_lines(results)]
    lines += ["", "## Input", "", *_input_lines(cfg, set(modalities.values()))]
    return "\n".join(lines) + "\n"


def _lr(run: Path, lr: float) -> str:
    """``lr`` with the run's earlier ones where a resume changed it (``lr_text``); the lr alone without a log."""
    try:
        return lr_text(lr, read_log(run / "log.jsonl")[0])
    except OSError:  # the cluster lines say the log is missing
        return f"{lr}"


def _kind_of_encoders(method: Method) -> str:
    if not method.trains:
        return "Untrained encoders (random weights, a baseline) made"
    return "Encoders trained on the manifest's labels" if method.supervised else "Self-supervised encoders trained"


def released_card(path: Path, encoder: nn.Module, cfg: Config, results: list[dict],
                  programs: list[str] | tuple = ()) -> str:  # fmt: skip
    """The README.md of an export of the released XDC weights."""
    return "\n".join([
        f"# The released XDC video encoder `{path.name}`",
        "",
        "R(2+1)D-18 weights released by the authors of *Self-Supervised Learning by Cross-Modal Audio-Video "
        "Clustering* (Alwassel et al., NeurIPS 2020), not trained by this library: the file does not say how they "
        f"were trained (XDC or fully supervised; see its name). Exported with `xdc export` (xdc {__version__}) from "
        f"`{path}`, in the layout of those files (each (2+1)D convolution with its own middle width, BatchNorm eps "
        "1e-3).",
        "",
        *_load_lines({"video": encoder}, programs),
        "",
        *_encoder_lines({"video": encoder}, {"video": "video"}, cfg),
        "",
        "## Evaluation",
        "",
        *_metric_lines(results),
        "",
        "## Input",
        "",
        "The paper preset's clips, the usual pretraining setting (the authors finetuned on 32 frames; any number "
        "works).",
        "",
        *_input_lines(cfg, {"video"}),
    ]) + "\n"


def _load_lines(encoders: dict[str, nn.Module], programs: list[str] | tuple) -> list[str]:
    """How to load the export's encoders: with xdc, then (the first one) as the programs of ``programs``."""
    return ["## Load", "", "```python", "import xdc", "",
            *(f'{name} = xdc.load_encoder("{name}.safetensors")  # this folder\'s file; eval mode, B x '
              f"{encoder.feature_dim} features" for name, encoder in encoders.items()),
            "```", *_program_lines(list(encoders)[0], programs)]  # fmt: skip


def _encoder_lines(encoders: dict[str, nn.Module], modalities: dict[str, str], cfg: Config) -> list[str]:
    lines = ["## Encoders", "",
             "| name | modality | file | network | blocks per stage | input per clip | feature | parameters |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, encoder in encoders.items():
        modality = modalities[name]
        width, layers = getattr(cfg.model, f"{modality}_width"), getattr(cfg.model, f"{modality}_layers")
        network = "R(2+1)D" if modality == "video" else "ResNet on log-mel"
        if modality == "video" and cfg.model.video_mid_width == "per_conv":
            network += f" (per-conv middle widths, BatchNorm eps {cfg.model.video_bn_eps:g})"
        params = sum(p.numel() for p in encoder.parameters())
        lines.append(f"| {name} | {modality} | `{name}.safetensors` | {network}, width {width} | "
                     f"{', '.join(map(str, layers))} | {' x '.join(map(str, input_shape(modality, cfg)))} | "
                     f"{encoder.feature_dim} | {params / 1e6:.3f} M |")  # fmt: skip
    return lines


def _program_lines(name: str, programs: list[str] | tuple) -> list[str]:
    """How to run the .onnx / .pt2 copies, which need neither this library nor the network's code."""
    lines = []
    if "onnx" in programs:
        lines += ["", "Without xdc, with onnxruntime (input `clips`, output `features`, any batch size):", "",
                  "```python", "import onnxruntime", "",
                  f'session = onnxruntime.InferenceSession("{name}.onnx")',
                  'features = session.run(["features"], {"clips": clips})[0]  # clips: a float32 numpy array',
                  "```"]  # fmt: skip
    if "pt2" in programs:
        lines += ["", "Without xdc, with PyTorch alone (`torch.export`, any batch size):", "", "```python",
                  "import torch", "", f'{name} = torch.export.load("{name}.pt2").module()', "```"]  # fmt: skip
    return lines


def _epoch(size: int) -> str:
    return f"{size} clips" if size else "one clip per video"


def _preset(cfg: Config) -> str:
    """The preset whose model and clip settings the run uses, if any."""
    for name in PRESETS:
        preset = load_config(None, preset=name)
        if preset.model == cfg.model and preset.data.clip == cfg.data.clip:
            return f"`{name}` (model and clip settings as in the preset)"
    return "none (custom model or clip settings)"


def _data_line(run: Path) -> str:
    videos = run_videos(run)
    if videos is None:
        return "not recorded (the run has no videos.csv)"
    where = f", under `{_common_folder(videos.paths)}`" if len(videos) else ""
    return f"{len(videos)} videos (listed in the run's videos.csv{where})"


def _common_folder(paths: np.ndarray) -> str:
    """The folder of the longest prefix that all ``paths`` (fixed-width bytes) share, compared as byte columns a
    block of rows at a time (65M paths as Python strings would be several GB)."""
    width = paths.dtype.itemsize
    first = np.ascontiguousarray(paths[:1]).view(np.uint8)
    differs = np.zeros(width, dtype=bool)
    for start in range(0, len(paths), 65536):
        block = np.ascontiguousarray(paths[start : start + 65536]).view(np.uint8).reshape(-1, width)
        differs |= (block != first).any(axis=0)
    shared = int(np.argmax(differs)) if differs.any() else width
    return os.path.dirname(decode_paths(first[:shared].tobytes().rstrip(b"\0")))  # cut at a slash: whole characters


def _cluster_lines(run: Path, method: Method, rounds_done: int) -> list[str]:
    """The clusters of the last of the exported encoders' ``rounds_done`` rounds (step rounds_done - 1): the log of
    a run being extended also holds those of rounds after them (until 2026-12-03 the card cited the latest)."""
    if not method.trains or method.supervised:
        return [f"None: method {method.name} does not cluster."]
    try:
        records = read_log(run / "log.jsonl")[0]  # a damaged line costs that line only
    except OSError:
        return ["Not available (log.jsonl is missing or unreadable)."]
    clusters = [r for r in records if r.get("kind") == "cluster" and r["step"] < rounds_done]
    if not clusters:
        return ["Not available (log.jsonl has no cluster records)."]
    last = max(r["step"] for r in clusters)
    merged = {k: v for r in clusters if r["step"] == last for k, v in r.items()}
    lines = [f"Round {last} (log.jsonl).", "",
             "| label set | non-empty clusters | largest | size entropy / log k | NMI with previous round | collapsed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in method.label_sets:
        if f"{name}/k" not in merged:
            continue
        nmi = merged.get(f"{name}/nmi_previous")
        lines.append(f"| {name} | {merged[f'{name}/non_empty']} of {merged[f'{name}/k']} | "
                     f"{merged[f'{name}/largest_fraction']:.1%} | {merged[f'{name}/entropy_ratio']:.3f} | "
                     f"{'-' if nmi is None else f'{nmi:.3f}'} | {'yes' if merged[f'{name}/collapsed'] else 'no'} |")
    return lines


def _metric_lines(results: list[dict]) -> list[str]:
    if not results:
        return ["No results were given (`xdc export RUN --out DIR --metrics result.json`, from `xdc eval ... --out`)."]
    lines = ["| file | command | evaluated | results |", "|---|---|---|---|"]
    for r in results:
        subject = r.get("dataset") or r.get("features") or r.get("run") or ""
        if r["command"] == "eval finetune":  # the dataset kind alone said nothing of the data or what was trained
            encoder = (r.get("splits") or [{}])[0].get("encoder", "?")
            subject = f"{subject} {r.get('data', '')}, {encoder} encoder, --mode {r.get('mode', '?')}"
        numbers = _accuracies(r)
        lines.append(f"| `{r['file']}` | {r['command']} | `{subject}` | "
                     f"{', '.join(f'{k} {v:.4g}' for k, v in numbers.items()) or '-'} |")  # fmt: skip
    return lines


def _accuracies(record: dict) -> dict[str, float]:
    """The headline numbers of an `xdc eval` result: top-level accuracies, or the last round's cluster scores."""
    if record["command"] == "eval clusters" and record.get("rounds"):
        last = max(row["round"] for row in record["rounds"])
        return {f"{key} ({row['label_set']})": row[key] for row in record["rounds"] if row["round"] == last
                for key in ("nmi", "purity", "hungarian_accuracy") if key in row}  # fmt: skip
    return {k: v for k, v in record.items()
            if ("top" in k or "accuracy" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip


def _input_lines(cfg: Config, modalities: set[str]) -> list[str]:
    clip, mel = cfg.data.clip, cfg.data.mel
    lines = []
    if "video" in modalities:
        box = f", cut to the region {list(clip.crop_box)} (left, top, right, bottom fractions)" if clip.crop_box else ""
        lines.append(f"- video: {clip.frames} RGB frames at {clip.fps:g} fps{box}; short side resized to "
                     f"{cfg.data.augment.scale_min} px, centre crop {clip.crop} x {clip.crop}; values in [0, 1], "
                     f"normalised with mean {list(VIDEO_MEAN)} and std {list(VIDEO_STD)} "
                     "(`xdc.data.transforms.VideoTransform`), as a B x 3 x T x H x W tensor.")  # fmt: skip
    if "audio" in modalities:
        f_max = mel.f_max if mel.f_max is not None else clip.sample_rate / 2
        lines.append(f"- audio: {clip.audio_span:g} s of mono audio at {clip.sample_rate} Hz as a log-mel spectrogram: "
                     f"{mel.n_mels} mel bands ({mel.f_min:g}-{f_max:g} Hz), {mel.window_ms:g} ms Hann window, "
                     f"{mel.n_fft}-point FFT, {mel.hop_ms:g} ms hop (`xdc.data.transforms.AudioTransform`), as a "
                     "B x 1 x mels x frames tensor; no further normalisation (the encoder's input BatchNorm does it).")
    lines += ["", "The same settings are in each file's metadata: `xdc.export.read_metadata(path)`."]
    return lines
