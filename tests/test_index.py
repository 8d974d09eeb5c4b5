"""``xdc index``: statuses and reasons, summary, cache, labels, list inputs, user errors, crash isolation."""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import wave
from collections import Counter
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from conftest import (
    child_pids, kill_once_rows_are_kept, kill_with_children, segment_parts, still_running, torchrun_command,
    unwritable_folder, xdc_unable_to_list,
)
from xdc.cli import main
from xdc.data import index
from xdc.data.encode import write_av
from xdc.data.index import IndexSummary, build_manifest
from xdc.data.manifest import COLUMNS, iter_rows, read_rows, write_rows
from xdc.data.shares import rank_file
from xdc.errors import UserError

SHARED_MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "media"


def _frames(n: int = 25, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _tone(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _write_wav(path: Path, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((_tone(1.0, rate) * 32767).astype("<i2").tobytes())


def _faststart_copy(src: Path, dst: Path) -> None:
    """Remux with the index (moov) first, as streaming sites serve MP4: a truncated copy then still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A small collection with one file of each kind the index must tell apart."""
    root = tmp_path_factory.mktemp("media")
    (root / "sub").mkdir()
    write_av(root / "good.mp4", _frames(), 25, _tone(), 16000, gop=5)
    write_av(root / "sub" / "video_only.mp4", _frames(seed=1), 25, None)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    (root / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])  # moov atom at the end: cut off
    _faststart_copy(root / "good.mp4", root / "faststart.mp4")
    fast = (root / "faststart.mp4").read_bytes()
    (root / "cut_tail.mp4").write_bytes(fast[: int(len(fast) * 0.6)])  # opens, but its end is missing
    (root / "faststart.mp4").unlink()
    _write_wav(root / "sub" / "tone.wav")
    (root / "notes.txt").write_text("not media: skipped by the folder search\n")
    return root


@pytest.fixture
def collection(media: Path, tmp_path: Path) -> Path:
    """A private copy of ``media`` that a test may change."""
    return Path(shutil.copytree(media, tmp_path / "collection"))


def _rows(manifest: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_rows(manifest)}


def test_statuses_reasons_and_summary(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.csv"
    summary = build_manifest([str(media)], out, workers=2)
    rows = _rows(out)

    assert set(rows) == {
        "good.mp4", "video_only.mp4", "empty.mp4", "text.mp4", "random.mp4", "truncated.mp4", "cut_tail.mp4",
        "tone.wav",
    }  # fmt: skip
    status = {name: r["status"] for name, r in rows.items()}
    assert status == {
        "good.mp4": "ok", "video_only.mp4": "no_audio", "tone.wav": "ok", "empty.mp4": "error",
        "text.mp4": "error", "random.mp4": "error", "truncated.mp4": "error", "cut_tail.mp4": "error",
    }  # fmt: skip
    assert rows["good.mp4"]["reason"] == ""
    assert rows["video_only.mp4"]["reason"] == "no audio stream"
    assert rows["empty.mp4"]["reason"] == "empty file"
    assert rows["text.mp4"]["reason"].startswith("cannot open: Invalid data")
    assert rows["random.mp4"]["reason"].startswith("cannot open: Invalid data")
    moov_missing = "cannot open: Invalid data found when processing input (moov atom not found)"
    assert rows["truncated.mp4"]["reason"] == moov_missing
    assert rows["cut_tail.mp4"]["reason"].startswith("video stream ")
    for r in rows.values():
        assert "\n" not in r["reason"] and str(media) not in r["reason"]

    good = rows["good.mp4"]
    assert (good["width"], good["height"], good["fps"], good["rotation"]) == ("64", "64", "25", "0")
    assert (good["has_audio"], good["sample_rate"], good["channels"]) == ("1", "16000", "1")
    assert float(good["duration_s"]) == pytest.approx(1.0, abs=0.1)
    wav = rows["tone.wav"]  # audio-only: usable, no picture
    assert (wav["width"], wav["height"], wav["fps"], wav["has_audio"]) == ("0", "0", "0", "1")
    assert float(wav["duration_s"]) == pytest.approx(1.0, abs=0.01)
    assert rows["video_only.mp4"]["has_audio"] == "0"

    written = read_rows(out)
    assert [r["path"] for r in written] == sorted(r["path"] for r in written)
    assert all(Path(r["path"]).is_absolute() for r in written)
    assert list(written[0]) == list(COLUMNS)
    problems = [{"path": r["path"], "reason": r["reason"]} for r in written if r["status"] == "error"]  # by path
    assert summary == IndexSummary(files=8, usable=3, with_audio=2, unusable=5, probed=8, problems=problems)
    assert summary.line() == "8 files: 3 usable (2 with audio), 5 unusable"



def test_a_cut_matroska_file_is_unusable_but_not_one_whose_audio_outlasts_its_video(tmp_path: Path) -> None:
    """Matroska states its duration up front, and a seek past the data lands on the last keyframe there, so a
    cut file still decodes "near its end": what gives it away is that no stream reaches its last second. Sound
    going on after the last picture is fine, but clips come only from where there are pictures (they would
    show the last one frozen)."""
    write_av(tmp_path / "whole.mkv", _frames(100), 25, _tone(4.0), 16000, gop=12)
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: int(len(data) * 0.4)])
    (tmp_path / "last_bytes_cut.mkv").write_bytes(data[: int(len(data) * 0.95)])  # within the last second
    write_av(tmp_path / "long_audio.mkv", _frames(60), 25, _tone(4.0), 16000, gop=12)  # sound after the picture
    build_manifest([str(tmp_path)], tmp_path / "manifest.csv")
    rows = _rows(tmp_path / "manifest.csv")
    assert {name: r["status"] for name, r in rows.items()} == {
        "whole.mkv": "ok", "cut.mkv": "error", "last_bytes_cut.mkv": "ok", "long_audio.mkv": "ok",
    }  # fmt: skip
    cut = re.fullmatch(r"video stream ends at (\d+\.\d)s of the 4\.\ds its header states \(truncated\?\)",
                       rows["cut.mkv"]["reason"])  # fmt: skip
    assert cut and float(cut[1]) < 2.5, rows["cut.mkv"]["reason"]
    assert float(rows["long_audio.mkv"]["duration_s"]) == pytest.approx(2.4, abs=0.05)  # 60 frames at 25 fps
    assert float(rows["whole.mkv"]["duration_s"]) == pytest.approx(4.0, abs=0.1)

def _picture(codec: str, pix_fmt: str) -> bytes:
    """One picture's bytes as an image file of ``codec`` (png, mjpeg: a JPEG file) writes them."""
    context = av.CodecContext.create(codec, "w")
    context.width, context.height, context.pix_fmt, context.time_base = 48, 32, pix_fmt, Fraction(1, 25)
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    return b"".join(bytes(p) for p in [*context.encode(frame.reformat(format=pix_fmt)), *context.encode(None)])


def test_a_picture_named_as_a_video_is_unusable_as_a_picture(tmp_path: Path) -> None:
    """A PNG or JPEG renamed .mp4 (a thumbnail saved under the video's name): FFmpeg reads it as a video of one
    frame, and until 2026-12-03 it was a usable 0.04 s video, every clip of it one picture frozen."""
    (tmp_path / "thumb.mp4").write_bytes(_picture("png", "rgb24"))
    (tmp_path / "photo.mov").write_bytes(_picture("mjpeg", "yuvj420p"))
    write_av(tmp_path / "one_frame.mp4", _frames(1), 25, None)  # a video, however short: left as it was
    out = tmp_path / "manifest.csv"
    summary = build_manifest([str(tmp_path)], out, workers=1)
    rows = _rows(out)
    assert {name: (r["status"], r["reason"]) for name, r in rows.items()} == {
        "thumb.mp4": ("error", "a PNG image, not a video"), "photo.mov": ("error", "a JPEG image, not a video"),
        "one_frame.mp4": ("no_audio", "no audio stream"),
    }  # fmt: skip
    assert (summary.usable, summary.unusable) == (1, 2)


def test_rows_of_version_4_are_probed_again_only_where_a_picture_may_hide(tmp_path: Path) -> None:
    """Version 5 tells a picture named as a video from a video of one frame: of version 4's rows, only those of a
    video under a second are probed again (until 2026-12-03 every row of a collection was)."""
    (tmp_path / "thumb.mp4").write_bytes(_picture("png", "rgb24"))
    write_av(tmp_path / "long.mp4", _frames(50), 25, None)
    _write_wav(tmp_path / "sound.wav")
    out = tmp_path / "manifest.csv"
    build_manifest([str(tmp_path)], out, workers=1)
    rows = read_rows(out)
    for row in rows:  # as version 4 made them: the picture a usable video of one frame
        row["probe"] = "4"
        if row["path"].endswith("thumb.mp4"):
            row.update(status="no_audio", reason="no audio stream", duration_s="0.04", fps="25", width="64",
                       height="64")  # fmt: skip
    write_rows(out, rows)
    assert build_manifest([str(tmp_path)], out, workers=1).probed == 1
    assert {name: (r["status"], r["probe"]) for name, r in _rows(out).items()} == {
        "thumb.mp4": ("error", index.PROBE_VERSION), "long.mp4": ("no_audio", "4"), "sound.wav": ("ok", "4"),
    }  # fmt: skip


def test_pictures_too_thin_to_train_on_are_unusable_and_rows_of_such_sizes_are_probed_again(tmp_path: Path) -> None:
    """A 2 x 64 video (one side 32 times the other) fails every clip's read (the decoder refuses it: scaled to the
    short side it is 8 MB a frame); until 2026-12-03 xdc index called it usable. Rows of versions 4 and 5 are
    probed again only where their stored size could be that thin as displayed (a pixel aspect of up to 4:1)."""
    rng = np.random.default_rng(0)
    write_av(tmp_path / "thin.mp4", rng.integers(0, 256, (10, 64, 2, 3), dtype=np.uint8), 25, _tone(0.4))
    write_av(tmp_path / "wide.mp4", rng.integers(0, 256, (10, 8, 64, 3), dtype=np.uint8), 25, _tone(0.4))  # 8:1
    write_av(tmp_path / "square.mp4", _frames(10), 25, _tone(0.4))
    out = tmp_path / "manifest.csv"
    build_manifest([str(tmp_path)], out, workers=1)
    assert {name: (r["status"], r["reason"]) for name, r in _rows(out).items()} == {
        "thin.mp4": ("error", "video stream has pictures of 2 x 64 (as displayed): one side over 16 times the other"),
        "wide.mp4": ("ok", ""), "square.mp4": ("ok", ""),
    }  # fmt: skip
    rows = read_rows(out)
    for row in rows:  # as version 5 made them: the thin video usable
        row["probe"] = "5"
        if row["path"].endswith("thin.mp4"):
            row.update(status="ok", reason="", width="2", height="64")
    write_rows(out, rows)
    assert build_manifest([str(tmp_path)], out, workers=1).probed == 2  # thin and wide (8:1 could be 32:1 shown)
    assert {name: (r["status"], r["probe"]) for name, r in _rows(out).items()} == {
        "thin.mp4": ("error", index.PROBE_VERSION), "wide.mp4": ("ok", index.PROBE_VERSION), "square.mp4": ("ok", "5"),
    }  # fmt: skip


def test_matroska_parts_cut_by_ffmpegs_segment_muxer_are_whole_and_as_long_as_they_are(tmp_path: Path) -> None:
    """FFmpeg's Matroska muxer writes as the Segment's Duration where the last frame ends, timestamps counted from
    0, and its demuxer takes that for the length: a part starting at 3 s and ending at 5 s stated 5 s, so the probe
    found it ended 3 s early (truncated?). Its length is 2 s; one cut short in its bytes is still truncated."""
    write_av(tmp_path / "whole.mkv", _frames(150), 25, _tone(6.0), 16000, gop=25)
    (tmp_path / "parts").mkdir()
    parts = segment_parts(tmp_path / "whole.mkv", tmp_path / "parts" / "part%03d.mkv", 2.0)
    assert len(parts) >= 3
    with av.open(str(parts[-1])) as last:
        assert last.start_time / av.time_base > 3.0  # this test's case: a part whose timestamps start late
    rows = [index.probe_file(str(part)) for part in parts]
    assert [(r["status"], r["reason"], r["has_audio"]) for r in rows] == [("ok", "", 1)] * len(parts)
    assert all(0.5 < r["duration_s"] < 3.5 for r in rows), [r["duration_s"] for r in rows]
    assert sum(r["duration_s"] for r in rows) == pytest.approx(6.0, abs=0.15)  # the whole file's, shared out
    data = parts[1].read_bytes()
    (tmp_path / "cut_part.mkv").write_bytes(data[: int(len(data) * 0.3)])
    cut = index.probe_file(str(tmp_path / "cut_part.mkv"))
    assert cut["status"] == "error" and cut["reason"].endswith("(truncated?)"), cut


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_stream_ends_are_measured_on_the_files_timeline(tmp_path: Path, ext: str) -> None:
    """A video that starts after its sound ends where its last picture does on the file's timeline, not that far
    from its own first picture: pictures from 2 s to 6 s over 6 s of sound got duration 4, and pictures from 2 s
    to 4 s over 6 s of sound got 2 (the end of the pictures taken for the length of the stream)."""
    both_end = tmp_path / f"both_end_at_6.{ext}"
    write_av(both_end, _frames(100), 25, _tone(6.0), 16000, gop=12, times=2 + np.arange(100) / 25)
    sound_outlasts = tmp_path / f"sound_outlasts.{ext}"
    write_av(sound_outlasts, _frames(50), 25, _tone(6.0), 16000, gop=12, times=2 + np.arange(50) / 25)
    for path, duration in ((both_end, 6.0), (sound_outlasts, 4.0)):
        row = index.probe_file(str(path))
        assert (row["status"], row["reason"]) == ("ok", ""), path.name
        assert row["duration_s"] == pytest.approx(duration, abs=0.1), path.name


def test_a_header_duration_from_the_streams_is_where_the_last_one_ends_on_the_files_timeline() -> None:
    """Without the container's duration, the streams' are lengths from their own starts."""
    def stream(start: int | None, duration: int | None) -> SimpleNamespace:
        return SimpleNamespace(start_time=start, duration=duration, time_base=Fraction(1, 1000))

    container = SimpleNamespace(duration=None, start_time=0)
    assert index._header_duration(container, [stream(2000, 4000), stream(0, 5000)], 0.0) == pytest.approx(6.0)
    assert index._header_duration(container, [stream(None, None), stream(None, 5000)], 0.0) == pytest.approx(5.0)
    assert index._header_duration(container, [stream(None, None)], 0.0) is None
    assert index._header_duration(container, [stream(1500, 4000)], 1.5) == pytest.approx(4.0)


def test_inexact_seeks_are_not_reported_as_damage(tmp_path: Path) -> None:
    """MPEG-TS seeks by timestamp, not to keyframes, and a stream cut from a broadcast starts mid-picture:
    neither may make a sound file look broken."""
    ts = tmp_path / "clip.ts"
    write_av(ts, _frames(75), 25, _tone(3.0), 16000, gop=25)
    data = ts.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[(len(data) // 3 // 188 + 3) * 188 :])  # starts at a TS packet inside a GOP
    for path in (ts, cut):
        row = index.probe_file(str(path))
        assert (row["status"], row["reason"], row["has_audio"]) == ("ok", "", 1), path.name


def test_cache_reuses_unchanged_files(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.csv"
    assert build_manifest([str(collection)], out, workers=2).probed == 8
    first = out.read_text()

    stamp = out.stat().st_mtime_ns
    rerun = build_manifest([str(collection)], out, workers=2)
    assert (rerun.probed, rerun.reused) == (0, 8)
    assert out.read_text() == first
    # not written again (until 2026-12-02 it was: `xdc pretrain --resume --data` then took it for a newer one)
    assert out.stat().st_mtime_ns == stamp and not rerun.written

    good = collection / "good.mp4"
    st = good.stat()
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # 1 ms later: still a change
    assert build_manifest([str(collection)], out, workers=2).probed == 1

    (collection / "text.mp4").unlink()
    write_av(collection / "new.mp4", _frames(seed=2), 25, _tone(), 16000)
    summary = build_manifest([str(collection)], out, workers=2)
    assert summary.probed == 1
    rows = _rows(out)
    assert "text.mp4" not in rows and rows["new.mp4"]["status"] == "ok"
    assert summary.line() == (
        "8 files: 4 usable (3 with audio), 4 unusable; 7 unchanged since an earlier run, not probed again"
    )


def test_a_stale_row_read_after_a_current_one_does_not_make_the_file_probed_again(collection, tmp_path) -> None:
    """Runs cut short with 11 ranks, then 3: the side files' names (rank10 before rank2) do not tell which rows are
    older, and rank 2's may hold rows of the files as they were before they changed."""
    out = tmp_path / "manifest.csv"
    build_manifest([str(collection)], out, workers=2)
    first = out.read_text()
    rows = list(iter_rows(out))
    out.unlink()
    write_rows(rank_file(out, 10), rows)
    write_rows(rank_file(out, 2), [{**row, "size": str(int(row["size"]) + 1), "status": "error"} for row in rows])
    summary = build_manifest([str(collection)], out, workers=2)
    assert (summary.probed, summary.reused) == (0, 8) and out.read_text() == first


def test_a_run_cut_short_keeps_what_it_probed(tmp_path: Path) -> None:
    """SIGKILLed while probing: each row probed is in the side file as soon as it is made, and the next run probes
    only the rest, for the manifest of a run straight through."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(24):
        write_av(folder / f"{i:02d}.mp4", _frames(n=10, size=32, seed=i), 25, _tone(0.4), 16000)
    straight, cut = tmp_path / "straight.csv", tmp_path / "cut.csv"
    build_manifest([str(folder)], straight, workers=1)
    driver = "import sys; from xdc.data import index; index.build_manifest([sys.argv[1]], sys.argv[2], workers=1)"
    side = tmp_path / ".cut.csv.rank0.csv"
    kill_once_rows_are_kept([sys.executable, "-c", driver, str(folder), str(cut)], side)
    assert side.exists() and not cut.exists(), "the index ended before it could be killed"
    kept = len(read_rows(side))
    summary = build_manifest([str(folder)], cut, workers=1)
    assert 0 < kept < 24 and summary.probed == 24 - kept
    assert cut.read_text() == straight.read_text() and not side.exists()


@pytest.mark.parametrize("group, sigint", [(False, signal.SIG_DFL), (True, signal.SIG_DFL), (False, signal.SIG_IGN)],
                         ids=["the-process", "its-group", "sigint-ignored"])  # fmt: skip
def test_a_sigterm_stops_the_index_as_a_ctrl_c_does(tmp_path: Path, group: bool, sigint) -> None:
    """SIGTERM (a job scheduler's preemption; SLURM sends it to every process of the job: ``group``) while the
    workers probe: one line, exit status 143, no worker left, the lock file removed, and the rows probed kept for
    the next run; also where SIGINT is ignored (a background job of a shell script, nohup). Until 2026-12-03 its
    default action killed the process where it stood, without a word (status -15), and its lock file stayed."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(12):
        write_av(folder / f"{i:02d}.mp4", _frames(n=10, size=32, seed=i), 25, _tone(0.4), 16000)
    out, side = tmp_path / "m.csv", tmp_path / ".m.csv.rank0.csv"
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, time\nfrom xdc.data import index\nfrom xdc.cli import main\nprobe = index._probe_job\n"
        "def slow(path):  # a file of a real collection takes longer than these\n"
        "    time.sleep(0.3)\n    return probe(path)\n"
        "index._probe_job = slow\nsys.exit(main(sys.argv[1:]))\n"
    )  # fmt: skip
    command = [sys.executable, str(driver), "index", str(folder), "--out", str(out), "--workers", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))  # fmt: skip
    try:
        deadline = time.time() + 60
        while process.poll() is None and time.time() < deadline and not (side.exists() and len(read_rows(side))):
            time.sleep(0.02)
        workers = child_pids(process.pid)
        (os.killpg if group else os.kill)(process.pid, signal.SIGTERM)
        err = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            kill_with_children(process)
    assert process.returncode == 143 and err == "xdc: terminated\n", (process.returncode, err[-2000:])
    assert workers and not any(still_running(pid) for pid in workers)
    assert not out.exists() and not (tmp_path / ".m.csv.lock").exists()
    kept = len(read_rows(side))
    done = subprocess.run(command[:1] + ["-m", "xdc.cli"] + command[2:], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "12 files: 12 usable" in done.stdout and 0 < kept < 12, (kept, done.stderr)


def test_two_gloo_ranks_share_out_the_probes_and_write_one_manifest(media: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes (as 2 nodes would run it): each rank probes its share of the files, rank 0 joins
    the rows, labels them and writes the manifest a single process writes. A file named twice (by its folder and
    by a list) is one row."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ngood.mp4,speech\ntone.wav,beep\n")
    twice = tmp_path / "twice.txt"
    twice.write_text(f"{media / 'good.mp4'}\n")
    single, ddp = tmp_path / "single.csv", tmp_path / "ddp.csv"
    build_manifest([str(media), str(twice)], single, labels=labels, workers=1)
    job = [*torchrun_command(2), "-m", "xdc.cli", "index", str(media), str(twice), "--out", str(ddp), "--labels",
           str(labels), "--workers", "1"]  # fmt: skip
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("8 files: 3 usable (2 with audio), 5 unusable") == 1  # rank 0 says it
    assert "2 of 8 files labelled" in done.stdout
    assert ddp.read_text() == single.read_text()
    assert not list(tmp_path.glob(".*.rank*.csv")) and not list(tmp_path.glob(".*.share*"))


def test_a_rank_reading_slowly_still_finds_its_rows_in_another_ranks_side_file(media: Path, tmp_path: Path) -> None:
    """A run cut short left rows in a side file that is now another rank's (the shares moved: files added, another
    number of ranks). That rank rewrites its side file with its own rows as soon as it saves; a rank still
    reading (rank 0 here, 3 s late, as on a busy network filesystem) must not lose its rows to that rewrite and
    probe them again."""

    out = tmp_path / "manifest.csv"
    build_manifest([str(media)], out, workers=1)
    rank_file(out, 1).write_text(out.read_text())  # every row left in rank 1's side file, none in the manifest
    out.unlink()
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""\
        import sys, time
        from xdc.cli import _as_rank
        from xdc.data import index

        def run(ctx):
            if ctx.rank == 0:
                read = index.iter_rows
                index.iter_rows = lambda *args, **kwargs: (time.sleep(3), read(*args, **kwargs))[1]
            summary = index.build_manifest([sys.argv[1]], sys.argv[2], workers=1, ctx=ctx)
            if summary is not None:
                print("probed", summary.probed)

        _as_rank(run, gpus=False)
    """))
    job = [*torchrun_command(2), str(driver), str(media), str(out)]
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "probed 0" in done.stdout
    assert not list(tmp_path.glob(".*.rank*.csv"))


def test_a_rank_whose_side_file_rank_0_cannot_see_is_a_user_error(tmp_path: Path) -> None:
    """Ranks on machines that do not share --out's folder: rank 0 must not write a manifest without their rows."""
    from types import SimpleNamespace

    from xdc.data.shares import this_run_files

    out = tmp_path / "manifest.csv"
    write_rows(rank_file(out, 0), [])
    with pytest.raises(UserError, match=r"\.manifest\.csv\.rank1\.csv is missing: rank 1 wrote it; are .* on "
                                        r"filesystems every rank sees"):  # fmt: skip
        this_run_files(out, SimpleNamespace(world_size=2))
    write_rows(rank_file(out, 1), [])
    assert this_run_files(out, SimpleNamespace(world_size=2)) == [rank_file(out, 0), rank_file(out, 1)]


def test_rank_0_lists_once_and_hands_each_rank_its_share_in_a_file(tmp_path: Path, monkeypatch) -> None:
    """Under torchrun only rank 0 walks the inputs, streaming them into the ranks' share files in batches. The shares
    are the listing, each entry once (a path named twice included), in its order, split by a hash of each entry's
    group: a group is whole on one rank. Names no text file could hold on a line (a newline, bytes that are not
    UTF-8) come back as they were."""
    from types import SimpleNamespace

    from xdc.data import shares
    from xdc.data.shares import my_share, remove_share_files, share_file

    monkeypatch.setattr(shares, "SHARE_BATCH", 3)  # several batches of a short listing
    out = tmp_path / "manifest[1].csv"  # glob's brackets in the name: left-over share files are still found
    stale = share_file(out, 5)
    stale.write_text('"of a run with 6 ranks"\n')
    odd = ["/v/line\nbreak.mp4", "/v/\udcff.mp4"]
    listed = [f"/v/{n % 7}.{n}.mp4" for n in range(40)] + odd + ["/v/3.3.mp4", "/v/line\nbreak.mp4"]  # twice
    lists = []

    def listing() -> list[str]:
        lists.append(True)
        return iter(listed)

    def rank(n: int) -> SimpleNamespace:
        return SimpleNamespace(rank=n, world_size=3, main=n == 0, enabled=True)

    def only_rank_0_works(work, ctx) -> None:
        if ctx.main:
            work()

    def group(path: str) -> str:
        return path.split(".")[0]

    got = [my_share(listing, out, rank(n), only_rank_0_works, group) for n in range(3)]
    assert len(lists) == 1 and not stale.exists()
    assert sorted(sum(got, [])) == sorted(set(listed))  # each entry on one rank, once
    for share in got:
        assert share == [path for path in dict.fromkeys(listed) if path in share]  # in the listing's order
    assert {group(path): n for n, share in enumerate(got) for path in share} == {  # a group on one rank
        group(path): n for n, share in reversed(list(enumerate(got))) for path in share
    }
    assert all(len(share) >= 5 for share in got)  # the 9 groups spread over the ranks
    remove_share_files(out)
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match=r"share1\.jsonl is missing: rank 0 wrote it; is .* on a filesystem every "
                                        r"rank sees"):  # fmt: skip
        my_share(listing, out, rank(1), only_rank_0_works)


def test_a_listing_that_fails_leaves_no_share_files(tmp_path: Path, monkeypatch) -> None:
    """Rank 0's walk stopped by a bad argument after some batches were written: none of them is left, nor a
    folder made for them."""
    from types import SimpleNamespace

    from xdc.data import shares

    monkeypatch.setattr(shares, "SHARE_BATCH", 2)

    def listing():
        yield from (f"/v/{n}.mp4" for n in range(5))
        raise UserError("not a folder, a media file or a list of files")

    ctx = SimpleNamespace(rank=0, world_size=2, main=True, enabled=True)
    with pytest.raises(UserError, match="not a folder"):
        shares.my_share(listing, tmp_path / "manifest.csv", ctx, lambda work, _: work())
    assert not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="not a folder"):  # nor the folder it made for them (prepare's --out)
        shares.my_share(listing, tmp_path / "out" / "prepared.csv", ctx, lambda work, _: work())
    assert not list(tmp_path.iterdir())


def test_side_files_merge_as_they_stream_the_later_file_winning(tmp_path: Path) -> None:
    from xdc.data.shares import merged

    base, rank0, rank1 = (tmp_path / f"{name}.csv" for name in ("base", "rank0", "rank1"))
    write_rows(base, [{"path": p, "status": "error"} for p in ("a", "b", "c", "e")])
    write_rows(rank0, [{"path": p, "status": "ok"} for p in ("b", "d")])
    write_rows(rank1, [{"path": p, "status": "no_audio"} for p in ("a", "f")])
    rows = list(merged([base, rank0, rank1], iter_rows, "path"))
    assert [(r["path"], r["status"]) for r in rows] == [("a", "no_audio"), ("b", "ok"), ("c", "error"), ("d", "ok"),
                                                         ("e", "error"), ("f", "no_audio")]  # fmt: skip
    write_rows(rank0, [{"path": p, "status": "ok"} for p in ("d", "b")])  # edited by hand
    with pytest.raises(UserError, match=r"rank0\.csv is not sorted by path"):
        list(merged([base, rank0], iter_rows, "path"))


def test_rows_made_by_other_checks_are_probed_again(collection: Path, tmp_path: Path) -> None:
    """The cache must not keep the verdicts of older checks (e.g. a cut Matroska file once passed as ok)."""
    out = tmp_path / "manifest.csv"
    build_manifest([str(collection)], out, workers=2)
    rows = read_rows(out)
    assert {r["probe"] for r in rows} == {index.PROBE_VERSION}
    rows[0]["probe"] = ""  # as a manifest written before the column existed
    write_rows(out, rows)
    assert build_manifest([str(collection)], out, workers=2).probed == 1
    assert {r["probe"] for r in read_rows(out)} == {index.PROBE_VERSION}


def test_labels_matching_rules(collection: Path, tmp_path: Path) -> None:
    labels_dir = tmp_path / "meta"
    labels_dir.mkdir()
    rel_to_csv = os.path.relpath(collection / "good.mp4", labels_dir)
    (collection / "other").mkdir()
    write_av(collection / "other" / "clip.mp4", _frames(seed=3), 25, None)
    write_av(collection / "sub" / "clip.mp4", _frames(seed=4), 25, None)
    (labels_dir / "labels.csv").write_text(
        "path,label\n"
        f"{rel_to_csv},speech\n"  # relative to the labels CSV's folder
        "sub/video_only.mp4,silent\n"  # relative to the indexed folder
        "tone.wav,beep\n"  # unique basename
        "empty,nothing\n"  # unique stem
        "clip.mp4,ambiguous\n"  # two files are called clip.mp4: matches neither
        "missing.mp4,ghost\n"
    )
    out = tmp_path / "manifest.csv"
    summary = build_manifest([str(collection)], out, labels=labels_dir / "labels.csv", workers=2)
    rows = read_rows(out)
    labels = {Path(r["path"]).name: r["label"] for r in rows}
    assert labels["good.mp4"] == "speech"
    assert labels["video_only.mp4"] == "silent"
    assert labels["tone.wav"] == "beep"
    assert labels["empty.mp4"] == "nothing"
    assert [r["label"] for r in rows if Path(r["path"]).name == "clip.mp4"] == ["", ""]
    assert labels["random.mp4"] == ""
    assert summary.labelled == 4
    assert summary.line().splitlines() == [
        "10 files: 5 usable (2 with audio), 5 unusable",
        "4 of 10 files labelled; 2 label rows matched no file: clip.mp4, missing.mp4",
    ]


def test_label_rows_that_match_no_file_are_counted_whichever_way_the_others_match(tmp_path: Path) -> None:
    """A typo in a label row is said: each way of naming a file (path from the CSV's folder, path from the folder
    searched, basename, stem, a path with spaces around it) counts as a match, and only those rows are named."""
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    for name in ("a/one.mp4", "a/two.mp4", "b/three.mp4", "b/four.mp4", "b/five.mp4"):
        write_av(data / name, _frames(seed=1, n=2), 25, None)
    (tmp_path / "labels.csv").write_text(
        "path,label\n"
        "data/a/one.mp4,x\n"  # from the CSV's folder
        "a/two.mp4,x\n"  # from the folder searched
        "three.mp4,x\n"  # basename
        " four ,x\n"  # stem, without the spaces around it
        "b/fiv.mp4,y\nsix.mp4,y\nseven,y\neight.mp4,y\n"  # typos: name no file
        "five.mp4,x\nb/five.mp4,x\n"  # one file named twice: neither row is a typo
    )
    summary = build_manifest([str(data)], tmp_path / "m.csv", labels=tmp_path / "labels.csv", workers=1)
    assert summary.labelled == 5
    assert summary.line().splitlines()[1] == (
        "5 of 5 files labelled; 4 label rows matched no file: b/fiv.mp4, six.mp4, seven and 1 more"
    )


def test_a_labels_csv_is_read_by_its_header_whatever_the_order_of_its_columns(tmp_path: Path) -> None:
    """Columns in any order, a BOM and spaces in the header; rows without a path or a label (short, blank, empty
    cells) are skipped; paths are normalised; each label is kept once however many rows give it."""
    labels = tmp_path / "labels.csv"
    rows = "split, label ,path\ntrain,a,x/./one.mp4\n\ntest,b\n,c,two.mp4\ntrain,,three.mp4\ntest,a,y/../four\n"
    labels.write_bytes(("\ufeff" + rows).encode())
    read = index.LabelIndex.from_csv(labels)
    assert read.labels == ["a", "c"]
    named = ["x/one.mp4", "two.mp4", "four", "three.mp4"]
    folder, elsewhere = str(tmp_path.resolve()), "/elsewhere"
    for paths, roots in (([f"{folder}/{p}" for p in named], []), ([f"{elsewhere}/{p}" for p in named], [elsewhere])):
        twice = read.count_names(paths + paths)  # no name is unique: by the absolute or the relative path alone
        assert read.lookup(paths, [Path(r) for r in roots], twice) == ["a", "c", "a", ""]
    by_name = ["/other/one.mp4", "/other/two.mkv", "/other/four.mp4", "/other/x/one.mkv"]  # basename, stem, stem, -
    assert read.lookup(by_name, [], read.count_names(by_name)) == ["a", "c", "a", ""]


def dict_labels(rows: list[tuple[str, str]], base: str, paths: list[str], roots: list[str]) -> list[str]:
    """The labels rules of docs/index.md on plain dicts of the keys as strings (how LabelIndex held them until
    2026-11-30): the reference for its hashes."""
    tables: dict[str, dict] = {kind: {} for kind in ("abs", "rel", "name", "stem")}
    ambiguous = object()
    for raw, label in rows:
        relative = os.path.normpath(raw)
        keys = (os.path.realpath(os.path.join(base, raw)), relative, *index.name_and_stem(relative))
        for table, key in zip(tables.values(), keys):
            table[key] = label if table.get(key, label) == label else ambiguous
    names = Counter(index.name_and_stem(path)[0] for path in paths)
    stems = Counter(index.name_and_stem(path)[1] for path in paths)
    found = []
    for path in paths:
        name, stem = index.name_and_stem(path)
        candidates = [tables["abs"].get(path)]
        candidates += [tables["rel"].get(path[len(root) + 1 :]) for root in roots if path.startswith(root + "/")]
        candidates += [tables["name"].get(name)] if names[name] == 1 else []
        candidates += [tables["stem"].get(stem)] if stems[stem] == 1 else []
        found.append(next((c for c in candidates if isinstance(c, str)), ""))
    return found


def dict_unmatched(rows: list[tuple[str, str]], base: str, paths: list[str], roots: list[str]) -> list[str]:
    """The label rows that name no file of ``paths`` by those rules, on strings: the reference for
    LabelIndex.unmatched."""
    names = Counter(index.name_and_stem(path)[0] for path in paths)
    stems = Counter(index.name_and_stem(path)[1] for path in paths)
    relative = {path[len(root) + 1 :] for path in paths for root in roots if path.startswith(root + "/")}
    missed = []
    for raw, _ in rows:
        name, stem = index.name_and_stem(os.path.normpath(raw))
        if not (
            os.path.realpath(os.path.join(base, raw)) in paths or os.path.normpath(raw) in relative
            or names[name] == 1 or stems[stem] == 1
        ):
            missed.append(raw)
    return missed


@pytest.mark.parametrize("seed", range(4))
def test_labels_by_hashes_match_the_rules_on_strings(tmp_path: Path, seed: int) -> None:
    """Random label rows (relative to the labels' folder or to a folder searched, absolute, with .. and ./, rows
    that agree and rows that conflict) against random collections in which names and stems repeat."""
    import random

    draw = random.Random(seed)
    base, one, two = (str(tmp_path.resolve() / name) for name in ("labels", "one", "two"))
    os.mkdir(base)
    folders, stems, suffixes = ["", "f/", "g/h/", "f/./", "g/x/../"], ["a1", "b2", "c3", "d4.x", "e5"], [".mp4", ""]
    for trial in range(25):
        def named() -> str:
            return draw.choice(folders) + draw.choice(stems) + draw.choice(suffixes)

        where = ["", "", f"{one}/", f"{two}/", "../one/"]  # the labels' folder, absolute, out of the labels' folder
        rows = [(draw.choice(where) + named(), draw.choice("xyz")) for _ in range(12)]
        paths = sorted({os.path.normpath(f"{draw.choice([one, two, base])}/{named()}") for _ in range(20)})
        labels = Path(base) / "labels.csv"
        labels.write_text("path,label\n" + "".join(f"{raw},{label}\n" for raw, label in rows))
        read = index.LabelIndex.from_csv(labels)
        expected = dict_labels(rows, base, paths, [one, two])
        assert read.lookup(paths, [Path(one), Path(two)], read.count_names(paths)) == expected, (trial, rows, paths)
        missed = dict_unmatched(rows, base, paths, [one, two])
        assert read.unmatched(shown=len(rows)) == (len(missed), missed), (trial, rows, paths)
        common = os.path.commonpath({os.path.dirname(path) for path in paths})  # match_labels' one folder searched
        assert index.match_labels(paths, labels) == dict_labels(rows, base, paths, [common])


def test_keys_whose_first_halves_agree_are_told_apart_by_the_second() -> None:
    from array import array

    hi, lo = np.array([5, 5, 5, 9]), np.array([1, 2, 3, 0])
    keys = index._Keys(hi, lo, np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32))
    asked = np.array([[5, 3], [5, 1], [5, 4], [9, 0], [1, 1], [10, 0], [9, 1]])
    asked_for = []

    def second(ask: np.ndarray) -> np.ndarray:
        asked_for.append(ask.tolist())
        return asked[ask, 1]

    assert keys.positions(asked[:, 0], second).tolist() == [2, 0, -1, 3, -1, -1, -1]
    assert asked_for == [[0, 1, 2, 3, 6]]  # not of the keys whose first half the table lacks
    rows = array("q", asked[[0, 1, 0, 3, 1]].ravel().tolist())
    made = index._Keys.of(rows, np.array([7, 8, 7, 6, 9]), np.zeros(5, np.int8))
    assert made.positions(asked[:, 0], lambda ask: asked[ask, 1]).tolist() == [1, 0, -1, 2, -1, -1, -1]
    assert made.label.tolist() == [index._NONE, 7, 6]  # [5, 1] was given 8 and 9: it matches nothing
    trimmed = index._Keys.of(rows, np.array([7, 8, 7, 6, 9]), np.array([0, 1, 0, 0, 0], np.int8))
    assert trimmed.label.tolist() == [9, 7, 6]  # 8 came from a row's path without its spaces: 9 spells it


def test_a_label_index_is_used_only_by_the_process_that_made_it(tmp_path: Path) -> None:
    """Its keys are hashed with the string hash of the process that made it: one sent to a process with another
    PYTHONHASHSEED would match nothing, or the wrong files, without a word."""
    import dataclasses

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.mp4,x\n")
    made = index.LabelIndex.from_csv(labels)
    assert made.lookup(["/v/a.mp4"], [], made.count_names(["/v/a.mp4"])) == ["x"]
    elsewhere = dataclasses.replace(made, salt=made.salt + 1)  # as another process's hash would make it
    with pytest.raises(RuntimeError, match="another process"):
        elsewhere.count_names(["/v/a.mp4"])


def test_labels_without_path_and_label_columns_is_a_user_error(media: Path, tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("file,class\ngood.mp4,speech\n")
    with pytest.raises(UserError, match="path and label"):
        build_manifest([str(media)], tmp_path / "manifest.csv", labels=bad, workers=1)
    for text in ("path,label\n", "path,label\nfoo.mp4,\n,bar\n"):  # no row to label a file with
        bad.write_text(text)
        with pytest.raises(UserError, match=f"^{re.escape(str(bad))} has no row with both a path and a label$"):
            build_manifest([str(media)], tmp_path / "manifest.csv", labels=bad, workers=1)
    binary = tmp_path / "features.npz"  # a binary file given by mistake: named as such, not dumped as its header
    np.savez(binary, x=np.zeros(3))
    with pytest.raises(UserError, match=f"^{re.escape(str(binary))}: not a text labels CSV \\(a binary file, or "):
        build_manifest([str(media)], tmp_path / "manifest.csv", labels=binary, workers=1)
    listed = tmp_path / "files.txt"
    listed.write_bytes(binary.read_bytes())
    with pytest.raises(UserError, match=f"^{re.escape(str(listed))}: not a text list of files \\("):
        build_manifest([str(listed)], tmp_path / "manifest.csv", workers=1)


def test_list_inputs(media: Path, tmp_path: Path) -> None:
    csv_list = media.parent / "list.csv"  # relative paths resolve against the list's folder
    with open(csv_list, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows([["path", "split"], [f"{media.name}/good.mp4", "train"], ["gone.mp4", "test"]])
    txt_list = tmp_path / "list.txt"
    txt_list.write_text(f"# clips\n{media / 'sub' / 'tone.wav'}\n\n{media / 'good.mp4'}\n")
    out = tmp_path / "manifest.csv"

    summary = build_manifest([str(csv_list), str(txt_list)], out, workers=2)
    rows = _rows(out)
    assert set(rows) == {"good.mp4", "gone.mp4", "tone.wav"}  # good.mp4 is listed twice, indexed once
    assert rows["gone.mp4"]["status"] == "error" and rows["gone.mp4"]["reason"] == "file not found"
    assert summary.line() == "3 files: 2 usable (2 with audio), 1 unusable"
    assert summary.probed == 2


def test_names_with_spaces_around_them_or_form_feeds_are_listed_and_labelled_as_spelled(tmp_path: Path) -> None:
    """A list or labels entry names the file spelled so, spaces around it kept, and a list's lines end at \\n alone
    (``find > files.txt``); an entry typed with stray spaces still names the file without them."""
    folder = tmp_path / "c"
    folder.mkdir()
    names = [" lead.mp4", "trail.mp4 ", "form\x0cfeed.mp4", "para\u2029graph.mp4", "plain.mp4"]
    for i, name in enumerate(names):
        write_av(folder / "made.mp4", _frames(5, 16, seed=i), 25, None)
        (folder / "made.mp4").rename(folder / name)  # FFmpeg tells a format by the name's end
    listed = "".join(f"{folder / name}\n" for name in names[:4]) + f"  {folder}/plain.mp4\r\n"  # typed by hand
    (tmp_path / "files.txt").write_text(listed)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], *[[name, f"L{i}"] for i, name in enumerate(names[:4])],
                                 [" plain.mp4 ", "L4"]])  # fmt: skip
    out = tmp_path / "m.csv"
    summary = build_manifest([str(tmp_path / "files.txt")], out, labels=tmp_path / "labels.csv", workers=1)
    assert summary.line().splitlines()[0] == "5 files: 5 usable (0 with audio), 0 unusable"
    assert {Path(r["path"]).name: r["label"] for r in read_rows(out)} == {n: f"L{i}" for i, n in enumerate(names)}
    write_av(folder / "lead.mp4", _frames(5, 16, seed=9), 25, None)  # beside " lead.mp4", labelled by its own row
    with open(tmp_path / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerow(["lead.mp4", "L9"])
    build_manifest([str(folder)], out, labels=tmp_path / "labels.csv", workers=1)
    labels = {Path(r["path"]).name: r["label"] for r in read_rows(out)}
    assert (labels[" lead.mp4"], labels["lead.mp4"]) == ("L0", "L9")  # the row spelled so wins over a trimmed one


def test_cli_index_prints_the_summary(media: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The unusable files first, by path, with their reasons, as many as index.PROBLEMS, then the counts."""
    out = tmp_path / "m.csv"
    assert main(["index", str(media), "--out", str(out), "--workers", "2"]) == 0
    unusable = [f"  unusable {row['path']}: {row['reason']}" for row in read_rows(out) if row["status"] == "error"]
    assert capsys.readouterr().out.splitlines() == [*unusable, "8 files: 3 usable (2 with audio), 5 unusable"]
    monkeypatch.setattr(index, "PROBLEMS", 2)
    assert main(["index", str(media), "--out", str(out), "--workers", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [*unusable[:2], f"  ... 3 more in {out}",
                                                    "8 files: 3 usable (2 with audio), 5 unusable; 8 unchanged since "
                                                    "an earlier run, not probed again; the manifest is unchanged, "
                                                    "not written"]  # fmt: skip


def test_cli_names_each_unusable_file_on_one_line_whatever_its_name(tmp_path: Path, capsys) -> None:
    """A newline or tab in a name is printed as its escape, as a byte that is not UTF-8 is (until 2026-12-03 a
    newline split the file's line in two)."""
    folder = tmp_path / "names"
    folder.mkdir()
    for name in ("new\nline.mp4", "tab\tbed.mp4", "caf\udce9.mp4"):
        (folder / name).write_bytes(b"not a video")
    assert main(["index", str(folder), "--out", str(tmp_path / "m.csv"), "--workers", "1"]) == 0
    reason = "cannot open: Invalid data found when processing input (moov atom not found)"
    names = ("caf\\udce9.mp4", "new\\nline.mp4", "tab\\tbed.mp4")  # as printed, sorted by the names' bytes
    assert capsys.readouterr().out.splitlines() == [
        *(f"  unusable {folder}/{name}: {reason}" for name in names), "3 files: 0 usable (0 with audio), 3 unusable"]
    assert main(["prepare", str(folder), "--out", str(tmp_path / "copies"), "--workers", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [f"  skipped {folder}/{name}: {reason}" for name in names]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: [str(d / "nope")], "path not found"),
        (lambda d: [str(d / "x.json")], "is not a folder, a media file or a list"),
        (lambda d: [str(d / "empty_dir")], "no media files found"),
        (lambda d: [str(d / "list.csv")], "needs a 'path' column"),
        (lambda d: [str(d / "empty_dir"), "--labels", str(d / "nope.csv")], "labels file not found"),
        (lambda d: [str(d / "empty_dir"), "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, capsys, make_args, message: str) -> None:
    (tmp_path / "x.json").write_text("{}")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "list.csv").write_text("file\na.mp4\n")
    code = main(["index", *make_args(tmp_path), "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("xdc: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.csv").exists()


def test_out_must_be_a_manifest_path(media: Path, tmp_path: Path, capsys) -> None:
    not_manifest = tmp_path / "notes.csv"
    not_manifest.write_text("name,value\na,1\n")
    for out, message in ((tmp_path, "is a folder"), (not_manifest, "is not an xdc manifest")):
        assert main(["index", str(media), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("xdc: error: ") and message in err and err.count("\n") == 1
    assert not_manifest.read_text() == "name,value\na,1\n"


def test_an_unwritable_out_folder_is_said_of_the_out_given(media: Path, tmp_path: Path) -> None:
    """A folder that takes no new file (its permissions here; a read-only mount alike): the error names --out as
    given, before anything is probed. Until 2026-12-03 it named the hidden side file the run failed to write
    (``cannot write locked/.m.csv.rank0.csv``), a name the user never gave."""
    locked = tmp_path / "locked"
    drop = unwritable_folder(locked)
    command = [*drop, sys.executable, "-m", "xdc.cli", "index", str(media), "--out", "locked/m.csv", "--workers", "1"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (
        2, "xdc: error: cannot write in the folder of --out locked/m.csv: Permission denied\n")
    assert list(locked.iterdir()) == []


def test_unreadable_folders_are_counted_in_the_summary_line(media: Path, tmp_path: Path) -> None:
    """A folder that cannot be listed was a warning alone, printed before the probes' output, and the summary
    line counted only the files found (until 2026-12-03): now it names the folders whose files are left out."""
    root = tmp_path / "c"
    for folder in ("a", "b", "ok"):
        (root / folder).mkdir(parents=True)
        shutil.copy(media / "good.mp4", root / folder / "good.mp4")
    done = xdc_unable_to_list([root / "a", root / "b"], ["index", str(root), "--out", "m.csv", "--workers", "1"],
                              tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("WARNING: cannot read the folder") == 2
    assert done.stdout.splitlines()[-1] == (f"1 file: 1 usable (1 with audio), 0 unusable; 2 folders could not be "
                                            f"read, their files left out: {root / 'a'}, {root / 'b'}")  # fmt: skip


def _probe_or_die(path: str) -> dict:
    """Stands in for a decoder that segfaults on one file (the worker process dies without a Python error), loops
    for ever on one while the file ``path + ".stuck"`` exists, or is killed (the out-of-memory killer) while
    ``path + ".killed"`` exists."""
    if "crash" in Path(path).name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if os.path.exists(path + ".killed"):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.path.exists(path + ".stuck"):
        time.sleep(3600)
    return index.probe_file(path)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the stand-in reaches workers by fork")
def test_a_file_that_kills_its_worker_is_reported(media: Path, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("a.mp4", "crash.mp4", "b.mp4", "c.mp4"):
        shutil.copy(media / "good.mp4", folder / name)
    monkeypatch.setattr(index, "_probe_job", _probe_or_die)
    out = tmp_path / "manifest.csv"
    summary = build_manifest([str(folder)], out, workers=2)
    rows = _rows(out)
    assert (rows["crash.mp4"]["status"], rows["crash.mp4"]["reason"]) == ("error", "decoder crashed (SIGSEGV)")
    assert all(rows[n]["status"] == "ok" for n in ("a.mp4", "b.mp4", "c.mp4"))
    assert summary.line() == "4 files: 3 usable (3 with audio), 1 unusable"


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the stand-in reaches workers by fork")
def test_a_file_whose_probe_hangs_or_is_killed_is_reported_and_probed_again_next_time(media, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "h"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(media / "good.mp4", folder / name)
    stuck, killed = tmp_path / "h" / "b.mp4.stuck", tmp_path / "h" / "c.mp4.killed"  # not media files: not indexed
    stuck.touch()
    killed.touch()
    monkeypatch.setattr(index, "_probe_job", _probe_or_die)
    monkeypatch.setattr(index, "PROBE_LIMIT_S", 1.0)
    out = tmp_path / "manifest.csv"
    build_manifest([str(folder)], out, workers=2)
    assert (_rows(out)["b.mp4"]["status"], _rows(out)["b.mp4"]["reason"]) == ("error", "hung (over 1 s)")
    assert _rows(out)["c.mp4"]["reason"] == "worker process died (killed by SIGKILL)"
    stuck.unlink()  # e.g. a network file system that stalled
    killed.unlink()  # memory that another run has (a worker's death was kept as the file's until 2026-12-01)
    summary = build_manifest([str(folder)], out, workers=2)
    assert _rows(out)["b.mp4"]["status"] == _rows(out)["c.mp4"]["status"] == "ok"
    assert summary.probed == 2  # a.mp4 from the cache, b.mp4 and c.mp4 again


def test_a_file_that_could_not_be_read_is_probed_again_once_it_can(media: Path, tmp_path: Path) -> None:
    """``chmod`` changes no size or mtime: a row made without read permission (its stat works, its open fails) is
    not the file's; until 2026-12-03 a re-run kept it, and the file stayed unusable until touched."""
    folder = tmp_path / "p"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(media / "good.mp4", folder / name)
    out = tmp_path / "manifest.csv"
    build_manifest([str(folder)], out, workers=1)
    rows = list(iter_rows(out))  # as a run that could not read b.mp4 wrote it (root reads any file: made here)
    rows[1].update(index._failed("cannot open: Permission denied"))
    write_rows(out, rows)
    summary = build_manifest([str(folder)], out, workers=1)
    assert (summary.probed, summary.reused) == (1, 1) and _rows(out)["b.mp4"]["status"] == "ok"


# What each file of ../shared/data/media really is (checked with a full decode): (status, reason prefix).
SHARED_EXPECTED = {
    "big_buck_bunny_432_433.webm": ("ok", ""),  # vp8 + vorbis
    "bitmap.mp4": ("no_audio", "no audio stream"),  # 1x1 h264
    "chaplin.mp4": ("ok", ""),
    "corrupted.mp4": ("error", "video stream failed to decode at 3.0s: "),  # first 28 frames decode
    "empty.mp4": ("error", "empty file"),
    "fire2.mp4": ("ok", ""),  # rotated by 180 degrees
    "flipping_a_pancake.mkv": ("ok", ""),  # h264 + opus
    "grid_bbaf2n.mpg": ("ok", ""),  # mpeg1 + mp2 in MPEG-PS
    "no_duration.webm": ("ok", ""),  # the container states no duration
    "not_a_video.avi": ("error", "cannot open: Invalid data found"),  # 20 bytes of text
    "random_bytes.mp4": ("error", "cannot open: Invalid data found"),
    "test.avi": ("ok", ""),  # mpeg4 + mp3
    "test.wav": ("ok", ""),  # audio only
    "transparent.webm": ("ok", ""),  # vp9 with alpha + vorbis
    "truncated_chaplin.mp4": ("error", "cannot open: Invalid data found when processing input (moov atom not found)"),
    "video_90.mov": ("no_audio", "no audio stream"),  # rotated by 90 degrees
    "video_with_failing_audio.mp4": ("ok", ""),  # its mp3 track decodes to the end with FFmpeg
}


def test_every_shared_media_file_decodes_or_is_reported(tmp_path: Path) -> None:
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"../shared/data absent: {SHARED_MEDIA} not found (real media robustness test)")
    out = tmp_path / "manifest.csv"
    summary = build_manifest([str(SHARED_MEDIA)], out, workers=2)
    rows = _rows(out)
    on_disk = {p.name for p in SHARED_MEDIA.iterdir() if p.suffix.lower() in index.MEDIA_EXTENSIONS}
    assert set(rows) == on_disk
    for name, row in rows.items():
        assert row["status"] in ("ok", "no_audio", "error")
        assert (row["reason"] == "") == (row["status"] == "ok"), name
        assert "\n" not in row["reason"]
    for name, (status, reason) in SHARED_EXPECTED.items():
        if name in rows:
            assert (rows[name]["status"], rows[name]["reason"][: len(reason)]) == (status, reason), name
    if {"video_90.mov", "fire2.mp4", "no_duration.webm", "test.wav"} <= set(rows):
        assert rows["video_90.mov"]["rotation"] == "90" and rows["fire2.mp4"]["rotation"] == "180"
        assert float(rows["no_duration.webm"]["duration_s"]) == pytest.approx(4.938, abs=0.01)
        assert (rows["test.wav"]["width"], rows["test.wav"]["has_audio"]) == ("0", "1")
    assert summary.files == len(rows) and summary.usable + summary.unusable == summary.files


def test_hidden_files_and_folders_are_not_indexed(collection: Path, tmp_path: Path) -> None:
    (collection / ".000001.partial.mp4").write_bytes((collection / "good.mp4").read_bytes())
    (collection / ".cache").mkdir()
    (collection / ".cache" / "thumb.mp4").write_bytes(b"")
    out = tmp_path / "manifest.csv"
    build_manifest([str(collection)], out, workers=1)
    assert not any(name.startswith(".") or "/.cache/" in row["path"] for name, row in _rows(out).items())
    assert len(_rows(out)) == 8


def test_camcorder_dvd_and_broadcast_files_are_found_by_their_extensions(tmp_path: Path) -> None:
    """AVCHD camcorders write .MTS (.m2ts on the card), DVDs .VOB, professional cameras .mxf: until 2026-12-03 a
    folder of them was left out without a word ("no media files found" where it held nothing else)."""
    folder = tmp_path / "card"
    folder.mkdir()
    write_av(folder / "00001.MTS", _frames(n=5, size=16), 25, _tone(0.2), 16000)  # MPEG-TS, as a camcorder's
    for name in ("00002.m2ts", "VTS_01_1.VOB", "a.mxf", "b.3g2", "c.asf", "d.f4v", "e.aiff", "f.aif", "g.wma"):
        shutil.copy(folder / "00001.MTS", folder / name)  # FFmpeg reads them by their content, whatever the name
    out = tmp_path / "manifest.csv"
    assert build_manifest([str(folder)], out, workers=2).usable == 10
    assert {row["status"] for row in read_rows(out)} == {"ok"}


def test_links_are_followed_to_files_but_not_into_folders_and_a_loop_is_an_error_row(tmp_path: Path, capsys) -> None:
    """The walk resolves only the paths that are links: a link to a file is indexed as its target, a link to a
    folder is not walked (a loop, or files twice), and links that lead nowhere become error rows, not a crash,
    under the link's own name (until 2026-12-03 a broken link's row named its missing target, a name the user's
    folder does not show, with reason "file not found")."""
    root, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    write_av(root / "sub" / "a.mp4", _frames(n=5, size=16), 25, None)
    write_av(elsewhere / "b.mp4", _frames(n=5, size=16), 25, None)
    (root / "b_link.mp4").symlink_to(elsewhere / "b.mp4")
    (root / "folder_link").symlink_to(elsewhere, target_is_directory=True)
    (root / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    out = tmp_path / "manifest.csv"
    build_manifest([str(root)], out, workers=1)
    rows = {row["path"]: row for row in read_rows(out)}
    assert set(rows) == {str(p) for p in (root / "sub" / "a.mp4", elsewhere / "b.mp4", root / "broken.mp4",
                                          root / "loop.mp4")}  # fmt: skip
    assert rows[str(elsewhere / "b.mp4")]["status"] == "no_audio"
    assert rows[str(root / "broken.mp4")]["reason"] == f"broken link: {tmp_path / 'nowhere.mp4'} does not exist"
    listed = tmp_path / "files.txt"  # a list names it so too, spelled with or without a ..
    listed.write_text("videos/broken.mp4\nvideos/sub/../broken.mp4\n")
    build_manifest([str(listed)], tmp_path / "listed.csv", workers=1)
    assert [row["path"] for row in read_rows(tmp_path / "listed.csv")] == [str(root / "broken.mp4")]
    assert rows[str(root / "loop.mp4")]["status"] == "error"
    assert list(index.media_under(str(tmp_path / "gone"))) == []
    assert re.search(r"cannot read the folder .*gone \(No such file or directory\): its files are left out",
                     capsys.readouterr().err)  # fmt: skip


def test_a_link_loop_row_names_the_links_that_go_round(tmp_path: Path) -> None:
    """Until 2026-12-03 the reason was the system's "cannot read: Too many levels of symbolic links", naming no
    link; now each link in turn, as the walk and a list file's entries find them (a loop in a folder on the way
    too)."""
    root = tmp_path / "videos"
    root.mkdir()
    (root / "self.mp4").symlink_to("self.mp4")
    (root / "a.mp4").symlink_to("b.mp4")
    (root / "b.mp4").symlink_to(root / "a.mp4")
    (root / "x").symlink_to("y")
    (root / "y").symlink_to("x")
    (root / "via.mp4").symlink_to(root / "x" / "c.mp4")
    listed = tmp_path / "files.txt"
    listed.write_text("videos/x/d.mp4\n")
    out = tmp_path / "manifest.csv"
    build_manifest([str(root), str(listed)], out, workers=1)
    reasons = {row["path"]: row["reason"] for row in read_rows(out)}
    x, y = root / "x", root / "y"
    assert reasons == {
        f"{root}/self.mp4": f"link loop: {root}/self.mp4 -> {root}/self.mp4",
        f"{root}/a.mp4": f"link loop: {root}/a.mp4 -> {root}/b.mp4 -> {root}/a.mp4",
        f"{root}/b.mp4": f"link loop: {root}/b.mp4 -> {root}/a.mp4 -> {root}/b.mp4",
        f"{root}/via.mp4": f"link loop in the folders of {x}/c.mp4: {x} -> {y} -> {x}",
        f"{x}/d.mp4": f"link loop in the folders of {x}/d.mp4: {x} -> {y} -> {x}",
    }


def test_label_paths_resolve_as_realpath_with_each_folder_resolved_once(tmp_path: Path) -> None:
    """Labels name files by absolute path after links are resolved: the folder cache must give realpath's answer
    for links to folders and files, relative links, .. after a link, loops and paths that lead nowhere, but for a
    link that leads nowhere, which stays the link (in its resolved folder), as xdc index names its row."""
    import random

    root = tmp_path.resolve()
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (root / "a" / "f.mp4").write_bytes(b"")
    (root / "c" / "g.mp4").write_bytes(b"")
    (root / "a" / "to_c").symlink_to(root / "c")
    (root / "a" / "b" / "rel").symlink_to("../../c")
    (root / "a" / "b" / "g_link.mp4").symlink_to(root / "c" / "g.mp4")
    (root / "a" / "b" / "loop.mp4").symlink_to(root / "a" / "b" / "loop.mp4")
    (root / "a" / "broken").symlink_to(root / "nowhere")
    parts = ["a", "b", "c", "to_c", "rel", "broken", "f.mp4", "g.mp4", "g_link.mp4", "loop.mp4", ".", "..", "x", ""]
    draw, resolve = random.Random(0), index._FolderResolver()
    for _ in range(3000):
        path = f"{root}/" + "/".join(draw.choice(parts) for _ in range(draw.randint(1, 5)))
        real, named = os.path.realpath(path), path if ".." in path.split("/") else os.path.normpath(path)
        if os.path.islink(named) and not os.path.exists(real):  # "broken/." included: a name, not a folder
            real = os.path.join(os.path.realpath(os.path.dirname(named)), os.path.basename(named))
        assert resolve(path) == real, path


def test_long_listings_and_passes_over_rows_show_their_progress(media: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Tens of millions of files take minutes to list (hours on a network filesystem) and to write: the files found
    and the rows written so far go to stderr, in a log as timed lines; a quick listing says nothing."""
    from xdc import progress

    listed = tmp_path / "files.txt"
    listed.write_text(f"{media / 'good.mp4'}\n{media / 'sub'}\n")
    list(index.list_media([str(media), str(listed)], []))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    files = list(index.list_media([str(media), str(listed)], []))
    lines = capsys.readouterr().err.splitlines()
    assert (len(files), len(set(files))) == (11, 8) and lines[-1].startswith("listing: 11 files [")  # 3 found twice
    labels = tmp_path / "labels.csv"  # rank 0's passes over every row at the end: 20 minutes at 65M rows
    labels.write_text("path,label\ngood.mp4,speech\n")
    build_manifest([str(media)], tmp_path / "m.csv", labels=labels, workers=1)
    ends = [line.split("|")[0] + line.split("|")[-1].split("[")[0] for line in capsys.readouterr().err.splitlines()
            if "100%" in line]  # fmt: skip
    assert list(dict.fromkeys(ends)) == [f"{step}: 100% 8/8 " for step in ("probing", "matching labels",
                                                                           "writing m.csv")]  # fmt: skip


def test_manifest_rows_round_trip_whatever_their_paths_hold(tmp_path: Path) -> None:
    """Rows are written as lists of cells: a path with commas, quotes, a newline or non-ASCII letters reads back
    as it was; numbers and flags as the manifest spells them; missing cells empty; unknown keys left out."""
    odd = ['/v/a, "b".mp4', "/v/line\nbreak.mp4", "/v/été.mp4"]
    rows = [{"path": p, "status": "ok", "duration_s": 10 / 3, "has_audio": n != 1, "size": 12345, "extra": "x"}
            for n, p in enumerate(odd)]  # fmt: skip
    write_rows(tmp_path / "m.csv", rows)
    back = read_rows(tmp_path / "m.csv")
    assert [r["path"] for r in back] == odd and all(list(r) == list(COLUMNS) for r in back)
    assert [(r["duration_s"], r["has_audio"], r["size"], r["fps"]) for r in back] == [
        ("3.33333", "1", "12345", ""), ("3.33333", "0", "12345", ""), ("3.33333", "1", "12345", "")]


def test_rows_read_back_as_dictreader_gives_them_and_a_share_picks_only_its_own(tmp_path: Path) -> None:
    """Manifests are read with a plain csv.reader (faster) into csv.DictReader's dicts, odd rows included (blank
    lines, missing and extra cells, a quoted newline); a rank's share of an earlier manifest skips the others."""
    text = ("path,status,duration_s,has_audio\r\n/a.mp4,ok,1,1\r\n\r\n/b.mp4,error\r\n/c.mp4,ok,2,0,extra,more\r\n"
            '"/d\nnewline.mp4",no_audio,3,0\r\n/e.mp4,ok,4,1\r\n')  # fmt: skip
    (tmp_path / "m.csv").write_text(text, newline="")
    with open(tmp_path / "m.csv", newline="") as f:
        expected = list(csv.DictReader(f))
    assert list(iter_rows(tmp_path / "m.csv")) == expected and len(expected) == 5
    share = {"/b.mp4", "/d\nnewline.mp4", "/nowhere.mp4"}
    assert list(iter_rows(tmp_path / "m.csv", keep=share)) == [r for r in expected if r["path"] in share]
