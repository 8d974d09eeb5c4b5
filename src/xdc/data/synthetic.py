"""The built-in synthetic audio-visual dataset: real MP4 clips (H.264 + AAC) of classes with a visual and an
audio signature, written by ``xdc make-synthetic``.

A class is a combination of attributes (shape, colour and motion on screen; pitch, timbre and rhythm in the
sound). Combinations are drawn so that with a few classes every attribute differs, and with many classes no
single attribute names the class. Every clip adds nuisance (background, position, speed, size, brightness,
loudness, noise, pitch jitter) so that neither modality is trivial, and a fraction of clips carries the sound of
another class (off-screen sound). Clip ``i`` depends only on ``(seed, i)``, the class count and the settings:
neither the number of worker processes nor the number of videos changes it.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xdc.atomic import replacing, write_text
from xdc.config import SyntheticConfig
from xdc.data.encode import AAC_SAMPLE_RATES, write_av
from xdc.data.preload import preload_fork_server
from xdc.errors import UserError
from xdc.limits import usable_cpus
from xdc.progress import progress_bar

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")
COLOURS = {  # saturated hues 60 degrees apart, so that they stand out from the greyish backgrounds
    "red": (0.9, 0.1, 0.1),
    "yellow": (0.9, 0.85, 0.1),
    "green": (0.1, 0.8, 0.15),
    "cyan": (0.1, 0.8, 0.85),
    "blue": (0.15, 0.25, 0.95),
    "magenta": (0.85, 0.1, 0.85),
}
MOTIONS = ("horizontal", "vertical", "circular", "diagonal", "bounce", "zoom")
# Fundamentals three semitones apart: far more than the per-clip pitch jitter of +-0.3 semitone.
SETTINGS = "synthetic.json"  # the settings of the clips in the folder: a re-run of them writes nothing
PITCHES_HZ = tuple(220.0 * 2 ** (3 * k / 12) for k in range(8))
TIMBRES = {  # relative amplitudes of harmonics 1, 2, 3, ...
    "pure": (1.0, 0.15),
    "hollow": (1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14),  # odd harmonics, like a clarinet
    "buzzy": tuple(1.0 / k for k in range(1, 9)),  # sawtooth-like
    "bright": (0.3, 0.6, 1.0, 0.7, 0.4, 0.2),  # energy peaks at the third harmonic
}
RHYTHMS = {  # on/off pattern of 8 steps at about 8 steps/s: one cycle per second, so any 1 s window holds it
    "drone": (1, 1, 1, 1, 1, 1, 1, 1),
    "pulse": (1, 0, 1, 0, 1, 0, 1, 0),
    "long": (1, 1, 1, 0, 1, 1, 1, 0),
    "syncopated": (1, 0, 1, 1, 0, 1, 0, 0),
}
# Distinct audio signatures (8 x 4 x 4); there are more visual ones (6 x 6 x 6).
MAX_CLASSES = len(PITCHES_HZ) * len(TIMBRES) * len(RHYTHMS)

SHAPE_REACH = 1.2  # farthest extent of any shape, in object radii (the triangle's apex)
MOTION_HZ = 1.0  # cycles per second of the motion at speed factor 1: about one cycle in any 1 s window
STEPS_PER_S = 8.0
RAMP_S = 0.008  # attack/release of the rhythm gate: avoids clicks
PARTIAL_GLOB = ".*.partial.mp4"  # clips being written; the * is the clip's number
# The names make-synthetic gives the files of videos/ (6 digits, more for a million clips or more). Its other
# temporaries and lock are hidden, as are a desktop's files (.DS_Store), which it leaves be and xdc index skips.
CLIP_NAME = re.compile(r"\d{6,}\.mp4")
LABELS_TMP = "labels.csv.tmp"  # labels.csv being written
COLUMNS = ("path", "label", "audio_label", "offscreen")  # of labels.csv
MAX_SIDE = 16384  # x264's largest frame side: a larger one failed to open the encoder, with a traceback


@dataclass(frozen=True)
class VisualSignature:
    shape: str
    colour: str
    motion: str


@dataclass(frozen=True)
class AudioSignature:
    pitch_hz: float
    timbre: str
    rhythm: str


def class_name(c: int) -> str:
    return f"class{c:02d}"


def visual_signature(c: int) -> VisualSignature:
    """Digits of ``c`` in base 6 mixed by an invertible triangular map: classes 0-5 differ in every attribute,
    and all 216 combinations are reachable, so no one attribute identifies a class once there are more than 6."""
    d0, d1, d2 = c % 6, (c // 6) % 6, (c // 36) % 6
    return VisualSignature(
        shape=SHAPES[d0],
        colour=tuple(COLOURS)[(d0 + d1) % 6],
        motion=MOTIONS[(d0 + 2 * d1 + d2) % 6],
    )


def audio_signature(c: int) -> AudioSignature:
    """Same scheme as :func:`visual_signature` with radices 8, 4, 4: classes 0-3 differ in every attribute."""
    p, q0, q1 = c % 8, (c // 8) % 4, (c // 32) % 4
    return AudioSignature(
        pitch_hz=PITCHES_HZ[p],
        timbre=tuple(TIMBRES)[(p + q0) % 4],
        rhythm=tuple(RHYTHMS)[(p + q0 + q1) % 4],
    )


# --------------------------------------------------------------------------------------------------- video


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to ``shape`` of radius about 1, in object units."""
    au, av_ = np.abs(u), np.abs(v)
    if shape == "disc":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(au, av_) - 0.85
    if shape == "triangle":  # pointing up; the sides' normals (+-sqrt(3), -1) / 2 are unit vectors
        return np.maximum(v - 0.6, (np.sqrt(3.0) * au - v) * 0.5 - 0.6)
    if shape == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.75) - 0.25
    if shape == "cross":
        return np.minimum(np.maximum(au - 0.3, av_ - 1.0), np.maximum(au - 1.0, av_ - 0.3))
    if shape == "bar":
        return np.maximum(au - 1.1, av_ - 0.35)
    raise ValueError(f"unknown shape {shape!r}")


def _trajectory(motion: str, t: np.ndarray, amp: float, phase: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (dx, dy) from the start position and the size factor per frame; ``t`` already includes speed."""
    w = 2 * np.pi * MOTION_HZ * t + phase
    zero, one = np.zeros_like(t), np.ones_like(t)
    if motion == "horizontal":
        return amp * np.sin(w), zero, one
    if motion == "vertical":
        return zero, amp * np.sin(w), one
    if motion == "circular":
        return amp * np.cos(w), amp * np.sin(w), one
    if motion == "diagonal":
        return amp * 0.7 * np.sin(w), amp * 0.7 * np.sin(w), one
    if motion == "bounce":  # a ball bouncing on the floor: fast at the bottom, slow at the top
        return zero, amp * (1 - 2 * np.abs(np.sin(0.5 * w))), one
    if motion == "zoom":
        return zero, zero, 1 + 0.4 * np.sin(w)
    raise ValueError(f"unknown motion {motion!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A greyish tinted background with a random gradient and a smooth static texture (H x W x 3, float)."""
    grey = rng.uniform(0.2, 0.75)
    tint = rng.uniform(-0.08, 0.08, size=3)
    yy = np.linspace(-1, 1, height)[:, None]
    xx = np.linspace(-1, 1, width)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0, 0.15) * (np.cos(angle) * xx + np.sin(angle) * yy)
    # Bilinear upsampling of coarse noise, as two small matrix products.
    cells = 6
    coarse = rng.standard_normal((cells, cells))
    texture = _interp_matrix(height, cells) @ coarse @ _interp_matrix(width, cells).T
    texture *= rng.uniform(0.0, 0.08)
    base = grey + gradient + texture
    return np.clip(base[:, :, None] + tint, 0.0, 1.0)


def _interp_matrix(n: int, cells: int) -> np.ndarray:
    pos = np.linspace(0, cells - 1, n)
    return np.maximum(0.0, 1 - np.abs(pos[:, None] - np.arange(cells)[None, :]))


def _uniform_or_middle(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi], or the middle where the range is empty (an object too large to move freely)."""
    mid = (lo + hi) / 2
    return rng.uniform(min(lo, mid), max(hi, mid))


def render_video(sig: VisualSignature, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Frames (T x H x W x 3, uint8) of one clip of the class with signature ``sig``, nuisance drawn from ``rng``."""
    n_frames = max(1, round(cfg.seconds * cfg.fps))
    h, w = cfg.height, cfg.width
    scale = min(h, w)
    size = 0.14 * scale * rng.uniform(0.8, 1.2)  # object radius in pixels
    amp = 0.22 * scale
    speed = rng.uniform(0.7, 1.3)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(n_frames) / cfg.fps * speed
    dx, dy, zoom = _trajectory(sig.motion, t, amp, phase)
    # The start position is random within the range that keeps the whole object inside the frame all clip long.
    reach = SHAPE_REACH * size * zoom.max() + 1  # + the anti-aliased edge
    cx0 = _uniform_or_middle(rng, reach - dx.min(), w - reach - dx.max())
    cy0 = _uniform_or_middle(rng, reach - dy.min(), h - reach - dy.max())
    brightness = rng.uniform(0.75, 1.1)
    background = _background(rng, h, w)

    # float32 per-frame columns broadcast against pixel rows: the T x H x W work stays in float32.
    radius = (size * zoom).astype(np.float32)[:, None, None]
    cx = (cx0 + dx).astype(np.float32)[:, None, None]
    cy = (cy0 + dy).astype(np.float32)[:, None, None]
    ys = np.arange(h, dtype=np.float32)[None, :, None]
    xs = np.arange(w, dtype=np.float32)[None, None, :]
    u = (xs - cx) / radius
    v = (ys - cy) / radius
    # Signed distance in pixels -> coverage in [0, 1]: one pixel of anti-aliasing, so motion is smooth.
    alpha = np.clip(0.5 - _sdf(sig.shape, u, v) * radius, 0.0, 1.0)[..., None]
    # Brightness, the 0..255 range and the rounding offset go into the small arrays before compositing, so the
    # T x H x W x 3 array sees only one blend, one add and one clip.
    gain = np.float32(255 * brightness)
    bg = background.astype(np.float32) * gain + np.float32(0.5)
    fg = np.asarray(COLOURS[sig.colour], dtype=np.float32) * gain + np.float32(0.5)
    frames = bg + alpha * (fg - bg)
    # Grain in brightness only (one draw per pixel, not per channel): a third of the cost of colour noise.
    grain = rng.standard_normal((n_frames, h, w, 1), dtype=np.float32)
    frames += grain * np.float32(255 * rng.uniform(0, cfg.pixel_noise))
    return np.clip(frames, 0, 255, out=frames).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- audio


def render_audio(sig: AudioSignature, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Mono float32 audio in [-1, 1] of ``cfg.seconds`` for the class with signature ``sig``."""
    sr = cfg.sample_rate
    n = max(1, round(cfg.seconds * sr))
    t = np.arange(n) / sr
    pitch = sig.pitch_hz * 2 ** (rng.uniform(-0.3, 0.3) / 12)
    weights = np.asarray(TIMBRES[sig.timbre])
    k = np.arange(1, len(weights) + 1)
    keep = k * pitch < 0.45 * sr  # no harmonic above Nyquist (it would alias to a misleading pitch)
    k, weights = k[keep], weights[keep]
    phases = rng.uniform(0, 2 * np.pi, size=len(k))
    # The phase is reduced to one cycle in float64 first; the K x n sines then run in float32 without losing
    # precision (a few radians, not 1e5).
    cycle = ((pitch * t) % 1.0).astype(np.float32)
    angles = np.float32(2 * np.pi) * k[:, None].astype(np.float32) * cycle + phases[:, None].astype(np.float32)
    tone = weights.astype(np.float32) @ np.sin(angles)
    tone /= np.abs(tone).max() + 1e-9
    # Rhythm: the class's on/off pattern, with random tempo jitter and start step, smoothed against clicks.
    steps = t * STEPS_PER_S * rng.uniform(0.92, 1.08) + rng.uniform(0, 8)
    gate = np.asarray(RHYTHMS[sig.rhythm], dtype=np.float64)[np.floor(steps).astype(np.int64) % 8]
    tone *= _smooth(gate, max(1, round(RAMP_S * sr)))
    loudness = 10 ** (rng.uniform(-14, -2) / 20)
    audio = loudness * tone + _noise(rng, n, sr) * rng.uniform(0.1, 1.0) * cfg.audio_noise
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average of ``width`` samples (via a cumulative sum: cheap for any width)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(len(x)) + 1
    lo = np.maximum(idx - width, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Unit-RMS noise with a random spectral tilt between white and nearly brown."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum *= np.maximum(freqs, 20.0) ** (-rng.uniform(0.0, 0.8))
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


# --------------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Job:
    out: Path
    index: int
    name: str  # file name under out/videos
    label: int
    classes: int
    seed: int
    cfg: SyntheticConfig


def clip_label(seed: int, index: int, classes: int) -> int:
    """Visual class of clip ``index``: each run of ``classes`` consecutive clips holds every class once, in a
    seeded order. Balanced, and independent of the number of videos (a smaller dataset is a prefix of a larger)."""
    block, slot = divmod(index, classes)
    # Three seed words, where clips use two: the label stream never coincides with a clip's stream.
    return int(np.random.default_rng([seed, block, 1]).permutation(classes)[slot])


def render_clip(
    seed: int, index: int, label: int, classes: int, cfg: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """Frames, audio and audio class of clip ``index``: a function of ``(seed, index)`` and the arguments only."""
    rng = np.random.default_rng([seed, index])
    audio_label = label
    if rng.random() < cfg.offscreen_fraction:
        audio_label = (label + int(rng.integers(1, classes))) % classes
    frames = render_video(visual_signature(label), rng, cfg)
    audio = render_audio(audio_signature(audio_label), rng, cfg)
    return frames, audio, audio_label


def _write_clip(job: _Job) -> dict:
    frames, audio, audio_label = render_clip(job.seed, job.index, job.label, job.classes, job.cfg)
    final = job.out / "videos" / job.name
    # The temporary name still ends in .mp4 (PyAV picks the container from it) but starts with a dot, and an
    # interrupted write is removed: no half-written file looks like a finished clip.
    with replacing(final, final.with_name(PARTIAL_GLOB.replace("*", final.stem))) as tmp:
        write_av(tmp, frames, job.cfg.fps, audio, job.cfg.sample_rate)
    return {
        "path": f"videos/{job.name}",
        "label": class_name(job.label),
        "audio_label": class_name(audio_label),
        "offscreen": int(audio_label != job.label),
    }


def _check(out: Path, videos: int, classes: int, seed: int, cfg: SyntheticConfig, workers: int) -> None:
    if videos < 1:
        raise UserError(f"--videos must be at least 1, not {videos}")
    if not 1 <= classes <= MAX_CLASSES:
        raise UserError(f"--classes must be between 1 and {MAX_CLASSES} (the distinct signatures), not {classes}")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, not {seed}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if not (16 <= cfg.width <= MAX_SIDE and 16 <= cfg.height <= MAX_SIDE) or cfg.width % 2 or cfg.height % 2:
        raise UserError(f"synthetic.width and .height must be even and from 16 to {MAX_SIDE}, not "
                        f"{cfg.width}x{cfg.height}")
    if cfg.fps <= 0 or cfg.seconds <= 0:
        raise UserError("synthetic.fps and synthetic.seconds must be positive")
    if cfg.sample_rate not in AAC_SAMPLE_RATES:
        rates = ", ".join(map(str, AAC_SAMPLE_RATES))
        raise UserError(f"synthetic.sample_rate must be one of AAC's rates ({rates}), not {cfg.sample_rate}")
    if not 0.0 <= cfg.offscreen_fraction <= 1.0:
        raise UserError(f"synthetic.offscreen_fraction must be in [0, 1], not {cfg.offscreen_fraction}")
    if cfg.offscreen_fraction > 0 and classes < 2:
        raise UserError("off-screen sound needs a second class: use --classes 2+ or synthetic.offscreen_fraction=0")
    if cfg.audio_noise < 0 or cfg.pixel_noise < 0:
        raise UserError("synthetic.audio_noise and synthetic.pixel_noise must not be negative")


def make_synthetic(
    out: Path,
    videos: int,
    classes: int,
    seed: int = 0,
    cfg: SyntheticConfig | None = None,
    workers: int | None = None,
) -> Path:
    """Write ``videos`` clips of ``classes`` balanced classes to ``out/videos/`` and ``out/labels.csv`` (columns
    path,label,audio_label,offscreen; paths relative to ``out``). Returns the path of labels.csv. An ``out`` that
    holds files it did not write is refused (``foreign_file``). A warning on stderr says where it replaced a
    dataset of other settings, and where ``out/videos/`` holds clips that labels.csv does not list (for ``xdc
    make-synthetic`` and a caller in Python alike: until 2026-12-02 the command alone said so)."""
    out = Path(out)
    cfg = cfg or SyntheticConfig()
    workers = workers if workers is not None else usable_cpus()
    _check(out, videos, classes, seed, cfg, workers)
    foreign = foreign_file(out)
    if foreign is not None:  # until 2026-12-03 a user's labels.csv was deleted and clips of the same names replaced
        raise UserError(f"{out} holds {foreign}, which xdc make-synthetic did not write (it replaces labels.csv and "
                        f"videos/NNNNNN.mp4 there): give a fresh or empty output folder")  # fmt: skip
    if holds_dataset(out, videos, classes, seed, cfg):  # a re-run: the same bytes again, but new times (xdc index
        _warn_unlisted(out / "labels.csv")  # and prepare, keyed on them, would redo every file)
        return out / "labels.csv"
    replaced = replaced_settings(out, videos, classes, seed, cfg)  # before this run replaces them
    (out / "videos").mkdir(parents=True, exist_ok=True)
    # A labels.csv left by an earlier run would describe clips this run is about to overwrite; partial files
    # survive only a killed run (SIGKILL), and would otherwise be picked up by `xdc index`.
    (out / "labels.csv").unlink(missing_ok=True)
    for partial in (out / "videos").glob(PARTIAL_GLOB):
        partial.unlink()
    digits = max(6, len(str(videos - 1)))
    jobs = [
        _Job(out, i, f"{i:0{digits}d}.mp4", clip_label(seed, i, classes), classes, seed, cfg) for i in range(videos)
    ]
    bar = dict(total=videos, unit="clip", desc="make-synthetic")
    workers = min(workers, videos)
    if workers == 1:
        rows = [_write_clip(job) for job in progress_bar(jobs, **bar)]
    else:
        preload_fork_server()
        with ProcessPoolExecutor(max_workers=workers) as pool:
            try:
                rows = list(progress_bar(pool.map(_write_clip, jobs, chunksize=4), **bar))
            except BaseException:
                # Ctrl-C or a failed clip: drop the queued clips rather than wait for all of them to be written.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    write_text(out / SETTINGS, json.dumps(_settings(videos, classes, seed, cfg), indent=2))  # before labels.csv
    labels = _write_labels(out / "labels.csv", rows)
    if replaced:  # until 2026-12-02 without a word: perhaps a mistyped OUT, whose clips a manifest or run still names
        print(f"WARNING: replaced the earlier dataset of other settings ({', '.join(replaced)}) in {out}: a "
              f"manifest or run made from its clips no longer matches them (xdc index it again; start runs anew)",
              file=sys.stderr)  # fmt: skip
    _warn_unlisted(labels)
    return labels


def foreign_file(out: Path) -> Path | None:
    """A file in ``out`` that make-synthetic did not write, which a run there would delete or replace (a user's
    labels.csv, clips of the same names), or leave beside its clips for xdc index to take in; None where there is
    none. It writes ``videos/`` of clip names (``CLIP_NAME``), ``SETTINGS``, its own temporaries, and labels.csv:
    one beside its ``SETTINGS``, or of its columns (a folder it wrote before 2026-12-02 has no ``SETTINGS``).
    Other files beside those of its own (the manifest that README's quick start writes there) it leaves be; beside
    clips alone they say the folder is a user's. Clips alone are taken for a killed run's: no file says whose.
    Hidden files are never foreign: its partial clips, temporaries and lock, a desktop's .DS_Store."""
    if not out.is_dir():
        return None
    settings, labels, videos = out / SETTINGS, out / "labels.csv", out / "videos"
    if settings.exists() and not _is_settings(settings):
        return settings
    if labels.exists() and not settings.exists() and not _has_columns(labels):
        return labels
    if videos.is_dir():
        foreign = min((p for p in videos.iterdir() if not (_hidden(p) or CLIP_NAME.fullmatch(p.name))), default=None)
        if foreign is not None:
            return foreign
    elif videos.exists():
        return videos
    if settings.exists() or labels.exists():  # make-synthetic's folder
        return None
    return min((e for e in out.iterdir() if e.name not in ("videos", LABELS_TMP) and not _hidden(e)), default=None)


def _hidden(path: Path) -> bool:
    """A hidden file: a partial clip, xdc.atomic's temporary or the lock of a run, a desktop's .DS_Store."""
    return path.name.startswith(".")


def _is_settings(path: Path) -> bool:
    """Whether ``path`` holds settings as make-synthetic writes them (``_settings``)."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a folder, or not JSON (UnicodeDecodeError is a ValueError)
        return False
    return isinstance(settings, dict) and {"videos", "classes", "seed", "synthetic"} <= settings.keys()


def _has_columns(labels: Path) -> bool:
    """Whether the first line of ``labels`` is the header of make-synthetic's labels.csv."""
    try:
        with open(labels, "rb") as f:
            first = f.readline(200)  # not the whole of a large file without line breaks
    except OSError:  # a folder
        return False
    return first.rstrip(b"\r\n") == ",".join(COLUMNS).encode()


def _warn_unlisted(labels: Path) -> None:
    """A warning naming the files of the dataset's videos/ that ``labels`` does not list: an earlier, larger run's
    clips, or a killed run's, which xdc index of the folder would take in, unlabelled."""
    videos = labels.parent / "videos"
    with open(labels, newline="") as f:
        listed = {row["path"] for row in csv.DictReader(f)}
    others = sorted(p.name for p in videos.iterdir() if f"videos/{p.name}" not in listed and not _hidden(p))
    if others:
        print(f"WARNING: {videos} also holds {len(others)} file(s) this run did not write, which labels.csv does "
              f"not list (e.g. {others[0]}); xdc index of the folder would take them: use a fresh folder",
              file=sys.stderr)  # fmt: skip


def holds_dataset(out: Path, videos: int, classes: int, seed: int, cfg: SyntheticConfig) -> bool:
    """Whether ``out`` holds the whole dataset of these settings: a labels.csv (written last), the settings that
    wrote it (``SETTINGS``, written by runs since 2026-12-02) and every clip it lists."""
    try:
        if json.loads((out / SETTINGS).read_text(encoding="utf-8")) != _settings(videos, classes, seed, cfg):
            return False
        with open(out / "labels.csv", newline="") as f:
            listed = [row["path"] for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, TypeError):  # none, or damaged: written again
        return False
    return len(listed) == videos and all((out / path).is_file() for path in listed)


def replaced_settings(out: Path, videos: int, classes: int, seed: int, cfg: SyntheticConfig) -> list[str]:
    """How the settings of the dataset in ``out`` (its ``SETTINGS``) differ from these, which would replace it:
    ``["seed 0 -> 1", "synthetic.fps 16 -> 8"]``; ``[]`` where they are the same or unknown (no ``SETTINGS``, as
    runs before 2026-12-02 left it, or a damaged one). Read it before the run replaces it."""
    try:
        earlier = dict(_flat(json.loads((out / SETTINGS).read_text(encoding="utf-8"))))
    except (OSError, ValueError, AttributeError):  # none, or damaged (AttributeError: JSON but not an object)
        return []
    now = _flat(_settings(videos, classes, seed, cfg))
    return [f"{key} {earlier.get(key, '?')} -> {value}" for key, value in now if earlier.get(key) != value]


def _flat(settings: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(``synthetic.fps``, 16), ... of nested settings."""
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _settings(videos: int, classes: int, seed: int, cfg: SyntheticConfig) -> dict:
    """What the clips depend on (not the workers), as JSON reads it back."""
    return json.loads(json.dumps({"videos": videos, "classes": classes, "seed": seed, "synthetic": asdict(cfg)}))


def _write_labels(path: Path, rows: list[dict]) -> Path:
    """Written last and atomically: a labels.csv means every clip it lists is complete."""
    with replacing(path, path.with_name(LABELS_TMP)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path
