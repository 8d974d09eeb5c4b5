"""``xdc report RUN``: one self-contained HTML page that describes a pretraining run.

The page reads what the run folder holds (config.yaml, videos/ or videos.csv, labels/round_*.npz, log.jsonl,
skipped.csv) and says what is missing instead of failing. In order: the run's settings, a summary table per
round and label set, plots (loss, pseudo-label accuracy, NMI across rounds, cluster sizes, time per round),
then galleries of the last round's clusters: sample clips as frame strips (a log-mel image for audio-only runs)
with their audio. Images are base64 PNG data URIs and audio base64 WAV data URIs: the file stands alone (no
scripts, no links). It holds the labels of two rounds at a time, so that a run of tens of millions of videos
and many rounds fits in memory.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from xdc.atomic import write_text
from xdc.clustering.metrics import agreement, collapse_threshold, nmi
from xdc.config import Config, load_config
from xdc.data.audio import LogMel
from xdc.data.decode import Clip, DecodeError, open_media, read_clip
from xdc.data.index import number, stated_duration
from xdc.data.manifest import NO_VIDEOS, Videos, open_text, run_videos
from xdc.errors import UserError
from xdc.evaluation.metrics import cluster_metrics
from xdc.methods import MANIFEST_LABELS, Method, get_method
from xdc.progress import progress_bar
from xdc.training.runlog import lr_text, read_log

MAX_FRAMES = 8  # frames per strip
MAX_WIDTH = 480  # pixels: strips and mel images are downscaled to this width
DISPLAY_HEIGHT = 96  # pixels: small images are shown enlarged (nearest neighbour) to about this height
# Shuffles for the chance-level NMI: 20, fewer above 1M videos (at least 2): one draw's spread falls with the number
# of videos (standard deviation 4e-5 to 6e-5 at 1M, k = 256 to 1,024), and each draw costs about 0.5 s per 10M.
CHANCE_POINTS = 20_000_000
ROUND_LABELS = 8  # round numbers on the loss and accuracy plots at most
ROUND_LINES = 40  # rounds up to which each start has its line

Round = tuple[int, dict[str, np.ndarray]]  # a finished round: its number, its label sets (name -> cluster per video)


# --- the run folder ---------------------------------------------------------------------------------------------


@dataclass
class RunData:
    folder: Path
    cfg: Config
    method: Method | None
    videos: Videos = field(default_factory=lambda: NO_VIDEOS)
    label_files: list[tuple[int, Path]] = field(default_factory=list)  # (round, labels/round_NNN.npz)
    log: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what the folder lacks, in words

    @property
    def classes(self) -> tuple[str, ...]:
        return self.videos.classes

    @property
    def truth(self) -> np.ndarray | None:
        """Class index per video (-1: unlabelled), or None when the run has no labels."""
        return self.videos.labels if self.classes else None

    def records(self, kind: str) -> list[dict]:
        return [r for r in self.log if r.get("kind") == kind]

    def label_sets(self) -> Iterator[Round]:
        """Each round's label sets (name -> cluster per video, -1: none), read one round at a time (XDC at 65M
        videos: 0.5 GB a round); an unreadable file is noted in ``missing`` and passed over."""
        show = len(self.label_files) >= 2 and len(self.videos) >= 1_000_000
        for r, path in progress_bar(self.label_files, desc="reading rounds", unit="round", show=show, leave=False):
            try:
                with np.load(path) as arrays:  # a supervised run's manifest labels are no clusters
                    sets = {k: arrays[k] for k in arrays.files if k != MANIFEST_LABELS}
            except Exception as e:  # a truncated or foreign file: report it, keep the rest
                self.missing.append(f"labels/{path.name} unreadable ({_reason(e)})")
                continue
            odd = [k for k, a in sets.items() if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer)]
            if odd:  # not xdc's (int32 ids): NMI and the scores refuse it, with a traceback until 2026-12-02
                a = sets[odd[0]]
                self.missing.append(f"labels/{path.name}: {odd[0]} holds {a.dtype} values of shape {a.shape}, not "
                                    "cluster ids")  # fmt: skip
                continue
            yield r, sets


# videos/ by its arrays: a data folder's videos/ holds the clips themselves (make-synthetic's, GRID's layout)
_RUN_FILES = ("config.yaml", "videos/paths.npy", "videos.csv", "log.jsonl", "labels", "checkpoints")
_TITLE = "<title>XDC report: "  # what tells a report written here from any other file


def check_run_folder(folder: Path) -> None:
    """A one-line error where ``folder`` is not a run folder: absent, or a data folder, which would get a page of
    defaults."""
    if not folder.is_dir():
        said = "is not a folder" if folder.exists() else "does not exist"  # until 2026-12-02 both: "not a folder"
        raise UserError(f"{folder} {said} (expected an `xdc pretrain` run folder, or the result JSON of an xdc eval "
                        "for its page)")  # fmt: skip
    if not any((folder / name).exists() for name in _RUN_FILES):
        raise UserError(f"{folder} is not an `xdc pretrain` run folder (none of {', '.join(_RUN_FILES)} in it)")


def load_run(folder: Path) -> RunData:
    folder = Path(folder)
    check_run_folder(folder)
    missing: list[str] = []
    cfg = _load_config(folder / "config.yaml", missing)
    try:
        method = get_method(cfg.train.method)
    except UserError as e:
        method = None
        missing.append(str(e))
    return RunData(
        folder, cfg, method,
        videos=_read_videos(folder, missing),
        label_files=_label_files(folder / "labels", missing),
        log=_read_log(folder / "log.jsonl", missing),
        skipped=_read_csv(folder / "skipped.csv", None),
        missing=missing,
    )  # fmt: skip


def _load_config(path: Path, missing: list[str]) -> Config:
    if not path.exists():
        missing.append("no config.yaml: default settings assumed")
        return Config()
    try:
        return load_config(path)
    except UserError as e:
        missing.append(f"config.yaml unreadable ({e}): default settings assumed")
        return Config()


def _read_videos(folder: Path, missing: list[str]) -> Videos:
    videos = run_videos(folder)
    if videos is None:
        missing.append("no videos.csv")
        return NO_VIDEOS
    return videos


def _read_csv(path: Path, missing: list[str] | None) -> list[dict]:
    if not path.exists():
        if missing is not None:
            missing.append(f"no {path.name}")
        return []
    with open_text(path) as f:
        return list(csv.DictReader(f))


def _label_files(folder: Path, missing: list[str]) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(folder.glob("round_*.npz")):
        try:
            files.append((int(path.stem.split("_")[1]), path))
        except ValueError:
            missing.append(f"labels/{path.name}: not a round's labels (expected round_NNN.npz)")
    if not files:
        missing.append("no labels/round_*.npz: no round has finished, or the method clusters nothing")
    return sorted(files)  # by round: from round 1000 on, the names' order puts round_1000 before round_101


def _read_log(path: Path, missing: list[str]) -> list[dict]:
    if not path.exists():
        missing.append("no log.jsonl")
        return []
    records, bad = read_log(path)  # bad: e.g. the half-written last line of a running run, or a damaged byte
    if bad:
        missing.append(f"log.jsonl: {bad} unreadable line(s) skipped")
    if not records:
        missing.append("log.jsonl has no lines yet")
    return records


# --- numbers ----------------------------------------------------------------------------------------------------


@dataclass
class Rounds:
    """What the page shows of the label files, from one pass over them."""

    rows: list[dict]  # per (round, label set): cluster counts, NMI with the previous round, scores against labels
    agreement: list[tuple[int, str, str, float]]  # per round and pair of clustered label sets: their NMI
    last: Round | None  # the last readable round
    finished: int  # readable rounds


def read_rounds(data: RunData) -> Rounds:
    """One pass over the label files, holding two rounds at a time (this one, and the previous for its NMI)."""
    rows, pairs, previous, last, finished, truth = [], [], {}, None, 0, data.truth
    for r, sets in data.label_sets():
        if last is not None and last[0] != r - 1:  # the round before is unreadable: nothing to compare with
            previous = {}
        finished += 1
        last = (r, sets) if sets else None
        names = sorted(sets)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = (sets[a] >= 0) & (sets[b] >= 0)
                pairs.append((r, a, b, nmi(sets[a][both], sets[b][both])))
        for name, assigned in sets.items():
            valid = assigned >= 0
            sizes = np.bincount(assigned[valid]) if valid.any() else np.zeros(0, dtype=np.int64)
            row = {"round": r, "set": name, "non_empty": int((sizes > 0).sum()),
                   "largest_fraction": sizes.max() / valid.sum() if valid.any() else None}  # fmt: skip
            before = previous.get(name)
            if before is not None and len(before) == len(assigned):
                both = valid & (before >= 0)
                row["nmi_previous"] = nmi(assigned[both], before[both]) if both.any() else None
            if truth is not None and len(truth) == len(assigned):
                try:
                    row["vs_labels"] = cluster_metrics(assigned, truth)
                except ValueError:  # no video has both a label and a cluster
                    pass
            rows.append(row)
        previous = sets
    return Rounds(rows, pairs, last, finished)


# --- plots ------------------------------------------------------------------------------------------------------


def figure(width: float = 6.0, height: float = 2.6) -> Figure:
    return Figure(figsize=(width, height), dpi=80, layout="constrained")


def figure_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _values(records: list[dict], key: str) -> np.ndarray:
    """``key``'s values as floats, NaN where not finite: log.jsonl writes null for NaN and infinity (before
    2026-12-03, NaN and Infinity)."""
    y = np.array([r[key] if r[key] is not None else np.nan for r in records], dtype=float)
    y[~np.isfinite(y)] = np.nan
    return y


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing mean over about 1/25 of the points (per-batch values are noisy), of the finite ones: until
    2026-12-03 one NaN made the rest of the line NaN, and it vanished."""
    w = max(1, len(y) // 25)
    finite = np.isfinite(y)
    c = np.cumsum(np.insert(np.where(finite, y, 0.0), 0, 0.0))
    n = np.cumsum(np.insert(finite, 0, False))
    hi = np.arange(1, len(y) + 1)
    lo = np.maximum(0, hi - w)
    counted = n[hi] - n[lo]
    return np.divide(c[hi] - c[lo], counted, out=np.full(len(y), np.nan), where=counted > 0)


def _round_lines(ax, steps: list[dict]) -> None:
    """A dashed line where each round starts, and its number at ROUND_LABELS of them at most (every n-th: until
    2026-12-03 each had one, and from about 15 rounds on they ran into one another); above ROUND_LINES rounds, only
    the numbered ones have a line."""
    starts = [rec for prev, rec in zip(steps, steps[1:]) if rec.get("round") != prev.get("round")]
    every = math.ceil(len(starts) / ROUND_LABELS)
    for i, rec in enumerate(starts):
        named = i % every == every - 1  # the last of each n: from round n on, as a round 0 needs no line
        if named or len(starts) <= ROUND_LINES:
            ax.axvline(rec["step"], color="0.6", linestyle="--", linewidth=0.8)
        if named:
            ax.text(rec["step"], 1.0, f" round {rec['round']}", transform=ax.get_xaxis_transform(), va="top",
                    fontsize=7, color="0.4")  # fmt: skip


def _not_finite(ax, x: np.ndarray, y: np.ndarray, what: str) -> None:
    """A red cross at the top of the plot at each step whose ``y`` is not finite (a diverged loss), which a line
    cannot show: until 2026-12-03 such steps were left out, and the plot ended before them."""
    bad = ~np.isfinite(y)
    if bad.any():
        ax.plot(x[bad], np.full(int(bad.sum()), 0.97), "x", color="C3", transform=ax.get_xaxis_transform(),
                label=f"{what} not finite (diverged), from step {x[bad][0]}")  # fmt: skip


def plot_loss(data: RunData) -> Figure | None:
    steps = [r for r in data.records("step") if "loss" in r]
    if not steps:
        return None
    fig = figure()
    ax = fig.add_subplot()
    x, y = np.array([r["step"] for r in steps]), _values(steps, "loss")
    ax.plot(x, y, color="C0", alpha=0.3, linewidth=0.8)
    ax.plot(x, _smooth(y), color="C0", label="training loss")
    _not_finite(ax, x, y, "training loss")
    holdout = [r for r in data.records("holdout") if "loss" in r]
    if holdout:
        hx, hy = np.array([r["step"] for r in holdout]), _values(holdout, "loss")
        ax.plot(hx, hy, "o", color="C3", label="held-back loss")
        _not_finite(ax, hx, hy, "held-back loss")
    _round_lines(ax, steps)
    ax.set(xlabel="step", ylabel="cross-entropy", title="Loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def plot_accuracy(data: RunData) -> Figure | None:
    steps = data.records("step")
    keys = sorted({k for r in steps for k in r if k.startswith("acc/")})
    if not keys:
        return None
    fig = figure()
    ax = fig.add_subplot()
    for i, key in enumerate(keys):
        rows = [r for r in steps if key in r]
        x, y = np.array([r["step"] for r in rows]), _values(rows, key)
        ax.plot(x, y, color=f"C{i}", alpha=0.2, linewidth=0.8)
        ax.plot(x, _smooth(y), color=f"C{i}", label=_head_name(key))
    _round_lines(ax, steps)
    # a supervised run's heads predict the manifest's labels: no pseudo-labels (until 2026-12-03 called so)
    what = "Accuracy on the labels" if data.method is not None and data.method.supervised else "Pseudo-label accuracy"
    ax.set(xlabel="step", ylabel="accuracy", title=f"{what} per head (encoder \u2190 label set)", ylim=(0, 1.02))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _head_name(key: str) -> str:
    encoder, _, label_set = key.removeprefix("acc/").partition("__")
    return f"{encoder} \u2190 {label_set}"


def plot_nmi(rows: list[dict]) -> Figure | None:
    lines = {}
    for row in rows:
        if row.get("nmi_previous") is not None:
            lines.setdefault((row["set"], "previous round"), []).append((row["round"], row["nmi_previous"]))
        if "vs_labels" in row:
            lines.setdefault((row["set"], "labels"), []).append((row["round"], row["vs_labels"]["nmi"]))
    if not lines:
        return None
    fig = figure()
    ax = fig.add_subplot()
    colours = {s: f"C{i}" for i, s in enumerate(sorted({s for s, _ in lines}))}
    for (label_set, against), points in sorted(lines.items()):
        r, v = zip(*points)
        ax.plot(r, v, "o-" if against == "previous round" else "s--", color=colours[label_set],
                label=f"{label_set} vs {against}")  # fmt: skip
    ax.set(xlabel="round", ylabel="NMI", ylim=(0, 1.02), title="NMI across rounds")
    _round_ticks(ax, [row["round"] for row in rows])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _round_ticks(ax, rounds) -> None:
    """Integer round ticks, and room around a single round's point or bar."""
    rounds = sorted(set(int(r) for r in rounds))
    if len(rounds) <= 12:
        ax.set_xticks(rounds)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(rounds[0] - 0.6, rounds[-1] + 0.6)


def plot_sizes(data: RunData, last: Round | None) -> Figure | None:
    if last is None:
        return None
    r, sets = last
    fig = figure(min(9.0, 3.2 * len(sets)) if len(sets) > 1 else 6.0)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, (name, assigned) in zip(axes, sets.items()):
        valid = assigned[assigned >= 0]
        sizes = np.sort(np.bincount(valid, minlength=data.cfg.train.k))[::-1] if len(valid) else np.zeros(1)
        if len(sizes) > 256:  # one outline, not a bar per cluster: 50,000 bars took a minute to draw
            ax.stairs(sizes, np.arange(len(sizes) + 1) + 0.5, fill=True, color="C0")
        else:
            ax.bar(np.arange(1, len(sizes) + 1), sizes, width=1.0 if len(sizes) > 40 else 0.8, color="C0")
        ax.axhline(len(valid) / len(sizes), color="C3", linestyle="--", linewidth=0.8, label="equal sizes")
        # ranks from 1, named so: until 2026-12-03 "cluster (by size)" over 0, 1, 2, ... read as the galleries'
        # cluster numbers, which they are not
        ax.set(xlabel="rank by size (1: largest)", ylabel="videos", title=f"{name}: round {r}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)  # videos: 2.5 of them was a tick of a small run
        ax.legend(fontsize=7)
    fig.suptitle("Cluster sizes, last round", fontsize=10)
    return fig


def plot_times(data: RunData) -> Figure | None:
    parts = ("extract_s", "cluster_s", "train_s")
    times: dict[int, np.ndarray] = {}  # round -> seconds per part, summed (a resumed round logs twice)
    for r in data.records("round"):
        times[r["step"]] = times.get(r["step"], 0) + np.array([r.get(part, 0.0) for part in parts])
    if not times:
        return None
    fig = figure()
    ax = fig.add_subplot()
    x, bottom = np.array(sorted(times)), np.zeros(len(times))
    for i, part in enumerate(parts):
        seconds = np.array([times[r][i] for r in x])
        ax.bar(x, seconds, bottom=bottom, color=f"C{i}", label=part.removesuffix("_s"))
        bottom += seconds
    ax.set(xlabel="round", ylabel="seconds", title="Time per round")
    _round_ticks(ax, x)
    ax.legend(fontsize=7)
    return fig


# --- sample clips -----------------------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    if isinstance(e, DecodeError):
        return text[0] if text else "decode error"
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def decode_sample(path: str, cfg: Config, want_video: bool) -> Clip:
    """The clip at the centre of the file: frames (when wanted and present) and audio (when present)."""
    with open_media(path) as container:  # its reasons, FFmpeg's exception names until 2026-12-03
        duration = stated_duration(container)  # from the file's start, where read_clip's starts count from
        has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
    if not (has_audio or (want_video and has_video)):
        raise DecodeError("no stream to show")
    spec = cfg.data.clip
    start = max(0.0, (duration - max(spec.seconds, spec.audio_span)) / 2)
    return read_clip(path, start, spec, video=want_video and has_video, audio=has_audio)


def frame_strip(video: np.ndarray) -> np.ndarray:
    """Up to MAX_FRAMES evenly spaced frames side by side, 2 white pixels apart."""
    picks = np.unique(np.linspace(0, len(video) - 1, min(MAX_FRAMES, len(video))).round().astype(int))
    gap = np.full((video.shape[1], 2, 3), 255, dtype=np.uint8)
    parts = [p for i in picks for p in (video[i], gap)][:-1]
    return np.concatenate(parts, axis=1)


def mel_image(audio: np.ndarray, cfg: Config) -> np.ndarray:
    """Log-mel spectrogram as an RGB image, low frequencies at the bottom."""
    with torch.inference_mode():
        mel = LogMel(cfg.data.mel, cfg.data.clip.sample_rate)(torch.from_numpy(audio)).numpy()
    span = mel.max() - mel.min()
    scaled = (mel - mel.min()) / span if span > 0 else np.zeros_like(mel)
    return (matplotlib.colormaps["magma"](scaled[::-1])[..., :3] * 255).astype(np.uint8)


def _image_tag(rgb: np.ndarray, alt: str) -> str:
    image = Image.fromarray(rgb)
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, max(1, round(image.height * MAX_WIDTH / image.width))), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    zoom = max(1, min(DISPLAY_HEIGHT // image.height, MAX_WIDTH // image.width))
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="{uri}" width="{image.width * zoom}" height="{image.height * zoom}" '
            f'alt="{html.escape(alt)}">')  # fmt: skip


def wav_uri(audio: np.ndarray, rate: int) -> str:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def sample_html(data: RunData, i: int) -> str:
    """A figure for video i: its frame strip (or log-mel) and audio player, or a placeholder with the reason."""
    if i >= len(data.videos):
        return _placeholder(f"video {i}", f"no row {i} in videos.csv")
    path, label = data.videos.path(i), data.videos.label(i)
    name = Path(path).name
    caption = html.escape(name + (f" ({label})" if label else ""))
    want_video = data.method is None or "video" in data.method.modalities
    try:
        clip = decode_sample(path, data.cfg, want_video)
        parts = []
        if clip.video is not None:
            parts.append(_image_tag(frame_strip(clip.video), f"frames of {name}"))
        elif clip.audio is not None:
            parts.append(_image_tag(mel_image(clip.audio, data.cfg), f"log-mel of {name}"))
        if clip.audio is not None:
            parts.append(f'<audio controls src="{wav_uri(clip.audio, data.cfg.data.clip.sample_rate)}">'
                         "</audio>")  # fmt: skip
        else:
            parts.append('<p class="note">no audio stream</p>')
    except Exception as e:  # any broken file becomes a placeholder, never a failed report
        return _placeholder(caption, _reason(e))
    return f'<figure class="sample">{"".join(parts)}<figcaption>{caption}</figcaption></figure>'


def _placeholder(caption: str, reason: str) -> str:
    return (f'<figure class="sample failed"><div class="placeholder">could not show this clip:<br>'
            f"{html.escape(reason)}</div><figcaption>{caption}</figcaption></figure>")  # fmt: skip


# --- galleries --------------------------------------------------------------------------------------------------


def gallery_html(data: RunData, label_set: str, assigned: np.ndarray, samples: int, max_clusters: int) -> str:
    valid = assigned >= 0
    sizes = np.bincount(assigned[valid]) if valid.any() else np.zeros(0, dtype=np.int64)
    order = sorted(np.flatnonzero(sizes), key=lambda c: (-sizes[c], c))
    notes = [f"{number(len(order), 'non-empty cluster')} of {number(int(valid.sum()), 'video')}"]
    if len(order) > max_clusters:
        notes.append(f"the {max_clusters} largest shown")
    if (~valid).any():
        notes.append(f"{number(int((~valid).sum()), 'video')} without a cluster (their clip failed)")
    parts = [f'<section class="label-set" data-label-set="{html.escape(label_set)}">',
             f"<h3>Label set <code>{html.escape(label_set)}</code></h3><p>{'; '.join(notes)}.</p>"]  # fmt: skip
    for c in order[:max_clusters]:
        parts.append(_cluster_html(data, label_set, int(c), np.flatnonzero(assigned == c), int(valid.sum()), samples))
    parts.append("</section>")
    return "\n".join(parts)


def _cluster_html(data: RunData, label_set: str, c: int, members: np.ndarray, total: int, samples: int) -> str:
    rng = np.random.default_rng(c)  # the same clips on every report of the run
    chosen = np.sort(rng.choice(members, size=min(samples, len(members)), replace=False))
    head = f"Cluster {c}: {number(len(members), 'video')} ({len(members) / total:.0%})"
    composition = _composition(data, members)
    return "\n".join([
        f'<section class="cluster" data-label-set="{html.escape(label_set)}" data-cluster="{c}">',
        f"<h4>{head}</h4>",
        f'<p class="composition">{composition}</p>' if composition else "",
        '<div class="samples">', *(sample_html(data, int(i)) for i in chosen), "</div>", "</section>",
    ])  # fmt: skip


def _composition(data: RunData, members: np.ndarray) -> str:
    """Top 3 labels of the cluster's videos with their share, when the run has labels."""
    if not data.classes:
        return ""
    counts = np.bincount(data.videos.labels[members[members < len(data.videos)]] + 1, minlength=len(data.classes) + 1)
    names = ("(unlabelled)", *data.classes)  # code -1 + 1
    top = [f"{html.escape(names[c])} {counts[c] / len(members):.0%}"
           for c in sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))[:3]]  # fmt: skip
    return "labels: " + " \u00b7 ".join(top)


# --- the page ---------------------------------------------------------------------------------------------------


def _header(data: RunData, rounds: Rounds) -> str:
    cfg, method = data.cfg, data.method
    clip, train, model = cfg.data.clip, cfg.train, cfg.model
    supervised, trains = method is not None and method.supervised, method is None or method.trains
    modalities = method.modalities if method is not None else ("video", "audio")
    labelled = int((data.videos.labels >= 0).sum())
    if not trains:
        k = assignment = "none: the method trains nothing"
    elif supervised:  # one round of epochs x rounds
        k = f"none: the {len(data.classes)} classes of the manifest"
        assignment = f"none: {train.epochs * train.rounds} epoch(s) on the manifest's labels"
    else:
        # plateau: train.epochs is a round's most (until 2026-12-03 said as every round's number)
        most = "at most " if train.recluster == "plateau" else ""
        k = train.k
        assignment = f"{train.assign}, re-cluster on {train.recluster}, {most}{train.epochs} epoch(s) per round"
    clip_parts = [f"{clip.frames} frames at {clip.fps:g} fps" * ("video" in modalities),
                  f"{clip.audio_span:g} s of audio at {clip.sample_rate} Hz" * ("audio" in modalities)]  # fmt: skip
    items = {
        "method": f"{train.method}" + (f" ({method.description})" if method else ""),
        "k (clusters per label set)": k,
        "rounds": f"{rounds.finished} finished of {1 if supervised else train.rounds}" if trains
                  else "none: the method trains nothing",
        "stopped": _stopped(data.log),
        "assignment": assignment,
        "batch / lr": f"{train.batch_size} / {lr_text(train.lr, data.log)}",
        "clip": ", ".join(filter(None, clip_parts)),
        "frames": f"short side {clip.decode_short_side}, crop {clip.crop}" if "video" in modalities else None,
        "encoders": ", ".join(f"{m} width {getattr(model, f'{m}_width')}" for m in modalities)
                    + (f"; initial weights from {train.init}" if train.init is not None else ""),
        "data": f"{number(len(data.videos), 'video')}, {labelled} labelled, "
                f"{number(len(data.classes), 'class', 'classes')}, {len(data.skipped)} skipped",
        "run started": _run_date(data),
        "report written": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items.items()
                   if v is not None)  # fmt: skip
    title = f"<h1>XDC run <code>{html.escape(str(data.folder.resolve()))}</code></h1>"
    page = f'{title}<table class="settings">{rows}</table>'
    if data.missing:
        missing = "".join(f"<li>{html.escape(m)}</li>" for m in data.missing)
        page += f'<div class="missing"><b>Missing from this run folder:</b><ul>{missing}</ul></div>'
    return page


def _stopped(log: list[dict]) -> str | None:
    """Why xdc stopped the run, where the log ends with its ``stop`` record (the line it said); None for a run that
    goes on, finished or was killed, and for one stopped before 2026-12-03, whose log has no such record."""
    last = log[-1] if log else {}
    if last.get("kind") != "stop":
        return None
    return f"at step {last.get('step')} (round {last.get('round')}): {last.get('line')}"


def _run_date(data: RunData) -> str:
    times = [r["time"] for r in data.log if isinstance(r.get("time"), (int, float))]
    config = data.folder / "config.yaml"
    stamp = min(times) if times else config.stat().st_mtime if config.exists() else None
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M") if stamp else "unknown"


def _summary(data: RunData, rows: list[dict]) -> str:
    if not rows:
        return f'<h2>Summary</h2><p class="note">{_no_clusters(data)}</p>'
    labelled = any("vs_labels" in r for r in rows)
    head = ["round", "label set", "clusters non-empty", "largest fraction", "NMI with previous round"]
    if labelled:
        head += ["NMI vs labels", "purity", "ARI", "Hungarian accuracy"]
    body, k = [], data.cfg.train.k
    collapse = collapse_threshold(k, data.cfg.train.collapse_fraction)
    for r in rows:
        collapsed = (r["largest_fraction"] or 0) > collapse
        cells = [(r["round"], ""), (r["set"], "text"), (f"{r['non_empty']} of {k}", ""),
                 (_num(r["largest_fraction"]), "collapsed" if collapsed else ""), (_num(r.get("nmi_previous")), "")]
        if labelled:
            scores = r.get("vs_labels", {})
            cells += [(_num(scores.get(s)), "") for s in ("nmi", "purity", "ari", "hungarian_accuracy")]
        body.append("<tr>" + "".join(f'<td class="{c}">{html.escape(str(v))}</td>' for v, c in cells) + "</tr>")
    fraction = data.cfg.train.collapse_fraction
    note = (f"Largest fractions in red are a collapse: more than train.collapse_fraction={fraction:g} of the way from "
            f"an even split to one cluster holding all ({collapse_threshold(data.cfg.train.k, fraction):.3g} at "
            f"k = {data.cfg.train.k}).")
    if not labelled:
        note += " No labels in videos.csv: purity and the scores against labels are not available."
    return ('<h2>Summary</h2><table class="summary"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(body) + f'</table><p class="note">{note}</p>')  # fmt: skip


def _agreement(rounds: Rounds) -> str:
    """NMI between the label sets of each round (XDC, MDC: video and audio clusters) and its chance level."""
    if not rounds.agreement:
        return ""
    rows = "".join('<tr><td>{}</td><td class="text">{}</td><td>{}</td></tr>'.format(r, html.escape(f"{a} ~ {b}"),
                   _num(value)) for r, a, b, value in rounds.agreement)  # fmt: skip
    r, a, b, _ = rounds.agreement[-1]
    x, y = rounds.last[1][a], rounds.last[1][b]
    draws = min(20, max(2, CHANCE_POINTS // len(x)))
    chance = agreement(x, y, shuffles=draws)[1]
    note = (f"Chance level: {_num(chance)} (round {r}'s {html.escape(b)} clusters shuffled against its "
            f"{html.escape(a)} clusters, mean of {draws} draws). XDC trains each encoder to predict the other "
            "modality's clusters: at the chance level those targets are unpredictable, and its pseudo-label loss "
            "cannot fall below ln k (RESULTS.md, GRID study).")
    return ('<h2>Agreement between label sets</h2><table class="summary"><tr><th>round</th><th>label sets</th>'
            f'<th>NMI</th></tr>{rows}</table><p class="note">{note}</p>')  # fmt: skip


def _num(value) -> str:
    return "\u2013" if value is None else f"{value:.3f}"


def _no_clusters(data: RunData) -> str:
    if data.method is not None and data.method.supervised:
        return f"There are no clusters: method {data.method.name} trains on the manifest's labels."
    if data.method is not None and not data.method.label_sets:
        return f"There are no clusters: method {data.method.name} clusters nothing."
    return "There are no clusters yet: no round has finished (labels/round_*.npz is absent)."


def _plots(data: RunData, rounds: Rounds) -> str:
    plots = [
        (plot_loss(data), f"no training steps in log.jsonl (one line every train.log_every="
                          f"{data.cfg.train.log_every} steps)"),
        (plot_accuracy(data), "no pseudo-label accuracy in log.jsonl"),
        (plot_nmi(rounds.rows), "NMI needs two finished rounds or labels"),
        (plot_sizes(data, rounds.last), "no cluster sizes: " + _no_clusters(data)),
        (plot_times(data), "no finished round in log.jsonl: no times"),
    ]
    images = "".join(f'<img class="plot" src="{figure_uri(fig)}" alt="plot">' for fig, _ in plots if fig is not None)
    notes = "".join(f"<li>{html.escape(missing)}</li>" for fig, missing in plots if fig is None)
    return (f'<h2>Plots</h2><div class="plots">{images}</div>'
            + (f'<ul class="note plot-missing">{notes}</ul>' if notes else ""))  # fmt: skip


def _galleries(data: RunData, last: Round | None, samples: int, max_clusters: int) -> str:
    if last is None:
        return f"<h2>Clusters</h2><p class=\"note\">{_no_clusters(data)}</p>"
    r, sets = last
    intro = (f"<h2>Clusters of round {r}</h2><p>Clusters sorted by size; {samples} sample clip(s) each, taken at "
             "the centre of the file.</p>")  # fmt: skip
    return intro + "\n".join(gallery_html(data, name, a, samples, max_clusters) for name, a in sets.items())


def _skipped(data: RunData) -> str:
    if not data.skipped:
        return ""
    columns = ("path", "failures", "reason")
    cells = ("".join(f"<td>{html.escape(str(row.get(k, '')))}</td>" for k in columns) for row in data.skipped)
    rows = "".join(f"<tr>{c}</tr>" for c in cells)
    return (f"<h2>Skipped files</h2><details><summary>{len(data.skipped)} file(s) failed to decode during the run"
            f"</summary><table><tr><th>path</th><th>failures</th><th>reason</th></tr>{rows}</table></details>")


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f3f3f3; text-align: left; } .summary td { text-align: right; } .summary td.text { text-align: left; }
.summary td.collapsed { color: #b00; font-weight: bold; }
.missing { background: #fff4e0; border: 1px solid #e0b060; padding: 0.3em 1em; margin: 1em 0; }
.note { color: #666; font-style: italic; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; } .plot { border: 1px solid #ddd; }
.cluster { border-top: 1px solid #ddd; margin: 0.5em 0; } .cluster h4 { margin: 0.4em 0 0.1em; }
.composition { margin: 0 0 0.3em; color: #444; }
.samples { display: flex; flex-wrap: wrap; gap: 10px; }
.sample { margin: 0; display: flex; flex-direction: column; align-items: flex-start; gap: 3px; }
.sample img { image-rendering: pixelated; } .sample audio { height: 28px; width: 220px; }
.sample figcaption { font-size: 12px; color: #555; }
.placeholder { width: 220px; min-height: 60px; padding: 6px; background: #fbe9e9; border: 1px dashed #c66;
               font-size: 12px; color: #833; }
"""


def _is_report(path: Path) -> bool:
    """Told by the file's start; only a regular file is opened: a pipe or FIFO would wait for a writer forever."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return _TITLE in f.read(300).decode("utf-8", "replace")


def check_page_out(out: Path, given: bool = True) -> None:
    """A one-line error where ``out`` is a folder, or a file that is not a page of ``xdc report`` (which it
    replaces): of a run's, or of an eval result's (xdc.evaluation.result_page). ``given``: named by --out, else
    the default page (until 2026-12-03 its error said "--out" too, to a user who had given none)."""
    name, give = (f"--out {out}", "give") if given else (f"{out} (the default page)", "give --out")
    if out.is_dir():
        raise UserError(f"{name} is a folder; {give} the path of an .html file")
    if out.exists() and not _is_report(out):
        raise UserError(f"{name} exists and is not a report of xdc: {give} a new path (or remove it)")


def write_page(out: Path, title: str, body: list[str]) -> Path:
    """The page of ``body``'s sections, under a title that tells it for a report (``_is_report``), in ``out``."""
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{_TITLE}{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, page)
    return out


def write_report(run: Path, out: Path | None = None, samples_per_cluster: int = 4, max_clusters: int = 32) -> Path:
    """Write the run's report as one self-contained HTML file (default ``run/report.html``); returns its path."""
    data = load_run(Path(run))
    given = out is not None
    out = Path(out) if given else data.folder / "report.html"
    check_page_out(out, given)
    rounds = read_rounds(data)  # first: it notes unreadable label files for the header
    body = [_header(data, rounds), _summary(data, rounds.rows), _agreement(rounds), _plots(data, rounds),
            _galleries(data, rounds.last, samples_per_cluster, max_clusters), _skipped(data)]  # fmt: skip
    return write_page(out, data.folder.resolve().name, body)
