"""``xdc prepare``: output geometry, audio, keyframes, A/V sync, reported bad files, resume, labels, errors."""

from __future__ import annotations

import contextlib
import csv
import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import (
    kill_once_rows_are_kept, shared_data, square_geometry, torchrun_command, unwritable_folder, xdc_unable_to_list,
    write_square,
)  # fmt: skip
from xdc.cli import main
from xdc.config import ClipConfig
from xdc.data import prepare
from xdc.data.decode import read_clip
from xdc.data.encode import write_av
from xdc.data.index import build_manifest
from xdc.data.manifest import read_rows

FPS, RATE, FLASH_T = 25, 44100, 1.2
GOP = 8


def _scene(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Dark frames with a bright block in the top-left corner: shows which way is up."""
    frames = np.random.default_rng(seed).integers(0, 40, (n, height, width, 3), dtype=np.uint8)
    frames[:, : height // 3, : width // 3] = 220
    return frames


def _flash_and_click(seconds: float = 2.0) -> tuple[np.ndarray, int, np.ndarray]:
    """Black frames at FPS with one white frame at FLASH_T, and stereo silence with a click at FLASH_T."""
    frames = np.zeros((round(seconds * FPS), 180, 320, 3), np.uint8)
    frames[round(FLASH_T * FPS)] = 255
    audio = np.zeros((2, round(seconds * RATE)), np.float32)
    audio[:, round(FLASH_T * RATE) : round(FLASH_T * RATE) + 200] = 0.9
    return frames, FPS, audio


def _write_wav(path: Path, seconds: float = 1.0, rate: int = RATE) -> None:
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(tone, 2).tobytes())  # interleaved stereo


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    (root / "sub").mkdir()
    write_av(root / "wide.mp4", *_flash_and_click(), RATE)  # the encoder's default (long) GOP
    tone = (0.2 * np.sin(np.linspace(0, 2000, 16000))).astype(np.float32)
    write_av(root / "sub" / "odd.mp4", _scene(30, 146, 202, 1), 30, tone, 16000)  # 128/146 * 202 = 177.1
    write_av(root / "sub" / "rotated.mp4", _scene(25, 144, 192, 2), FPS, tone, 16000, rotation=90)  # a phone
    write_av(root / "silent.mp4", _scene(20, 160, 160, 3), FPS, None)
    _write_wav(root / "silent.wav")  # audio only, and the same stem as silent.mp4
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    write_av(root / "cut.mp4", _scene(50, 128, 128, 4), FPS, tone, 16000)
    cut = (root / "cut.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(cut[: len(cut) // 2])  # an interrupted download: its index (moov) is lost
    # by path, stem and name, and a row that names no file
    (root / "labels.csv").write_text("path,label\nwide.mp4,a\nodd,b\nsilent.wav,c\ngone.mp4,d\n")
    return root


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["prepare", *args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def prepared(sources: Path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("prepared") / "out"
    code, stdout = _run(str(sources), "--out", str(out), "--gop", str(GOP), "--labels", str(sources / "labels.csv"),
                        "--workers", "2")  # fmt: skip
    assert code == 0
    return out, stdout


def _report(out: Path) -> dict[str, dict]:
    with open(out / "prepared.csv", newline="") as f:
        return {Path(r["source"]).name: r for r in csv.DictReader(f)}


def _streams(path: Path) -> dict:
    with av.open(str(path)) as c:
        video = c.streams.video[0] if c.streams.video else None
        audio = c.streams.audio[0] if c.streams.audio else None
        return {
            "size": (video.codec_context.width, video.codec_context.height) if video else None,
            "fps": float(video.average_rate) if video else None,
            "audio": (audio.codec_context.sample_rate, audio.codec_context.channels, audio.codec_context.name)
            if audio else None,
        }  # fmt: skip


def test_report_and_summary(prepared, sources: Path) -> None:
    out, stdout = prepared
    assert stdout.splitlines()[-2:] == ["7 files: 5 prepared (0 already done), 2 skipped, 0 failed",
                                        "3 of 5 prepared files labelled; 1 label row matched no file: "
                                        "gone.mp4"]  # fmt: skip
    rows = _report(out)
    assert {n: (r["status"], r["output"]) for n, r in rows.items()} == {
        "wide.mp4": ("ok", "wide.mp4"), "odd.mp4": ("ok", "sub/odd.mp4"), "rotated.mp4": ("ok", "sub/rotated.mp4"),
        "silent.mp4": ("ok", "silent.mp4"), "silent.wav": ("ok", "silent.wav.mp4"),
        "garbage.mp4": ("skipped", ""), "cut.mp4": ("skipped", ""),
    }  # fmt: skip
    # The reasons are those of xdc index, and the printed lines name the file.
    assert rows["garbage.mp4"]["reason"].startswith("cannot open: Invalid data found")
    assert rows["cut.mp4"]["reason"] == "cannot open: Invalid data found when processing input (moov atom not found)"
    assert f"skipped {sources / 'garbage.mp4'}: cannot open" in stdout
    for r in rows.values():
        assert r["size"] == str(os.path.getsize(r["source"])) and r["settings"].startswith("short_side=128 gop=8")
    assert float(rows["wide.mp4"]["duration_s"]) == pytest.approx(2.0, abs=0.05)
    assert not list(out.rglob("*.partial.mp4"))


def test_video_is_small_upright_and_keeps_its_frame_rate(prepared, sources: Path) -> None:
    out, _ = prepared
    assert _streams(out / "wide.mp4")["size"] == (228, 128)
    assert _streams(out / "sub" / "odd.mp4")["size"] == (178, 128)  # even, aspect kept
    assert _streams(out / "sub" / "rotated.mp4")["size"] == (128, 170)  # displayed 144 x 192: turned upright
    assert _streams(out / "silent.mp4")["size"] == (128, 128)
    assert _streams(out / "sub" / "odd.mp4")["fps"] == pytest.approx(30, abs=0.1)
    assert _streams(out / "wide.mp4")["fps"] == pytest.approx(25, abs=0.1)
    with av.open(str(out / "sub" / "rotated.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 0  # no display rotation left to apply

    spec = ClipConfig(frames=4, fps=8, decode_short_side=64)
    for name in ("sub/rotated.mp4", "sub/odd.mp4"):
        before = read_clip(str(sources / name), 0.2, spec, audio=False).video.astype(float)
        after = read_clip(str(out / name), 0.2, spec, audio=False).video.astype(float)
        assert after.shape == before.shape
        assert np.abs(after - before).mean() < 10  # the same picture the loader showed, the same way up
        assert np.abs(after - before[:, ::-1, ::-1]).mean() > 30  # (upside down, the bright corner would differ)


def test_copies_put_their_index_before_their_media(prepared) -> None:
    # movflags=faststart: a reader opens a copy with one read from its start, no jump to the end and back.
    copies = sorted(prepared[0].rglob("*.mp4"))
    assert len(copies) >= 5  # audio + video, video only, audio only among them
    for copy in copies:
        data, boxes, at = copy.read_bytes(), [], 0
        while at < len(data):
            size = int.from_bytes(data[at : at + 4], "big")
            boxes.append(data[at + 4 : at + 8].decode())
            at += size
        assert boxes.index("moov") < boxes.index("mdat"), (copy.name, boxes)


def test_audio_is_16k_mono_and_kept_only_where_present(prepared) -> None:
    out, _ = prepared
    for name in ("wide.mp4", "sub/odd.mp4", "sub/rotated.mp4", "silent.wav.mp4"):
        assert _streams(out / name)["audio"] == (16000, 1, "aac")
    assert _streams(out / "silent.mp4")["audio"] is None  # no audio stream invented
    wav = _streams(out / "silent.wav.mp4")
    assert wav["size"] is None  # audio only
    clip = read_clip(str(out / "silent.wav.mp4"), 0.25, ClipConfig(frames=4, fps=8), video=False)
    stereo = read_clip(str(Path(_report(out)["silent.wav"]["source"])), 0.25, ClipConfig(frames=4, fps=8), video=False)
    assert np.sqrt(np.mean(clip.audio**2)) == pytest.approx(np.sqrt(np.mean(stereo.audio**2)), rel=0.1)


def test_keyframes_at_most_gop_frames_apart(prepared, sources: Path) -> None:
    out, _ = prepared

    def keyframes(path: Path) -> list[int]:
        with av.open(str(path)) as c:
            packets = [p for p in c.demux(video=0) if p.size]
        return [i for i, p in enumerate(sorted(packets, key=lambda p: p.dts)) if p.is_keyframe]

    assert keyframes(sources / "wide.mp4") == [0]  # the source: one keyframe in 50 frames
    for name in ("wide.mp4", "sub/odd.mp4", "sub/rotated.mp4", "silent.mp4"):
        keys = keyframes(out / name)
        assert keys[0] == 0 and max(np.diff(keys)) <= GOP


def test_flash_and_click_stay_within_one_frame(prepared) -> None:
    out, _ = prepared
    start = 0.8
    clip = read_clip(str(out / "wide.mp4"), start, ClipConfig(frames=25, fps=FPS, decode_short_side=0))
    flash_at = np.argmax(clip.video.reshape(25, -1).mean(axis=1)) / FPS
    click_at = np.argmax(np.abs(clip.audio)) / 16000
    assert abs(flash_at - (FLASH_T - start)) < 1e-6
    assert abs(click_at - flash_at) <= 1 / FPS


def test_prepared_folder_indexes_and_reads_with_its_labels(prepared, tmp_path: Path) -> None:
    out, _ = prepared
    with open(out / "labels.csv", newline="") as f:
        assert sorted(map(tuple, csv.reader(f))) == [("path", "label"), ("silent.wav.mp4", "c"), ("sub/odd.mp4", "b"),
                                                     ("wide.mp4", "a")]  # fmt: skip
    summary = build_manifest([str(out)], tmp_path / "m.csv", labels=out / "labels.csv", workers=2)
    assert summary.line() == "5 files: 5 usable (4 with audio), 0 unusable\n3 of 5 files labelled"
    for row in read_rows(tmp_path / "m.csv"):
        assert row["rotation"] == "0"
        clip = read_clip(row["path"], 0.1, ClipConfig(), video=row["width"] != "0", audio=row["has_audio"] == "1")
        assert clip.video is None or clip.video.shape == (8, int(row["height"]), int(row["width"]), 3)  # no resize


def test_rerun_keeps_done_files_and_redoes_changed_ones(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        write_av(src / f"{i}.mp4", _scene(10, 64, 96, i), FPS, None)
    assert _run(str(src), "--out", str(out), "--workers", "2")[0] == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    report = (out / "prepared.csv").stat().st_mtime_ns
    (out / ".0.mp4.partial.mp4").write_bytes(b"left by an interrupted run")
    (out / "..prepared.csv.next.tmp99999").write_bytes(b"the next report, half written by a run killed in its join")

    code, stdout = _run(str(src), "--out", str(out), "--workers", "2")
    assert code == 0 and stdout.endswith("2 files: 2 prepared (2 already done), 0 skipped, 0 failed\n")
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == first  # not rewritten
    assert (out / "prepared.csv").stat().st_mtime_ns == report  # nor the report (until 2026-12-02 it was)
    assert not (out / ".0.mp4.partial.mp4").exists() and not (out / "..prepared.csv.next.tmp99999").exists()

    write_av(src / "1.mp4", _scene(10, 96, 64, 9), FPS, None)  # changed: now portrait
    code, stdout = _run(str(src), "--out", str(out), "--workers", "2")
    assert stdout.endswith("2 files: 2 prepared (1 already done), 0 skipped, 0 failed\n")
    assert (out / "0.mp4").stat().st_mtime_ns == first["0.mp4"]
    assert (out / "1.mp4").stat().st_mtime_ns != first["1.mp4"] and _streams(out / "1.mp4")["size"] == (64, 96)

    code, stdout = _run(str(src), "--out", str(out), "--workers", "2", "--short-side", "32")  # other settings
    assert stdout.endswith("2 files: 2 prepared (0 already done), 0 skipped, 0 failed\n")
    assert _streams(out / "0.mp4")["size"] == (48, 32)


def test_rerun_keeps_the_verdict_on_unchanged_unusable_files(tmp_path: Path) -> None:
    """Until 2026-12-03 every skipped file was probed again on each re-run (at 1% unusable of 65M files, 650,000
    probes); now only where the file changed, the probe's checks did, or its reason may not hold (a permission)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_av(src / "a.mp4", _scene(10, 64, 96, 0), FPS, None)
    (src / "junk.mp4").write_bytes(b"not a video" * 100)
    assert _run(str(src), "--out", str(out))[0] == 0
    first = _report(out)["junk.mp4"]
    assert first["status"] == "skipped" and first["probe"] == prepare.PROBE_VERSION and first["output"] == ""
    report = (out / "prepared.csv").stat().st_mtime_ns
    code, stdout = _run(str(src), "--out", str(out))
    assert code == 0 and stdout.endswith("2 files: 1 prepared (1 already done), 1 skipped, 0 failed\n")
    assert _report(out)["junk.mp4"] == first and (out / "prepared.csv").stat().st_mtime_ns == report  # not probed

    def edit(**cells) -> None:  # the junk row as an older xdc, or another run, left it
        rows = prepare.read_report(out / "prepared.csv")
        prepare.write_report(out / "prepared.csv", [{**r, **cells} if r["source"].endswith("junk.mp4") else r
                                                    for r in rows])  # fmt: skip

    for cells in ({"probe": "3"}, {"probe": ""}, {"reason": "cannot open: Permission denied", "seconds": "0.5"}):
        edit(**cells)
        assert _run(str(src), "--out", str(out))[0] == 0
        again = _report(out)["junk.mp4"]
        assert again["seconds"] != first["seconds"], cells  # probed again
        assert {**again, "seconds": ""} == {**first, "seconds": ""}
        first = again


def test_copies_of_another_format_are_made_again_and_those_of_none_are_kept_with_a_warning(
    tmp_path: Path, monkeypatch
) -> None:
    """Each copy records the FORMAT of xdc's copies: one of another format (xdc's copies changed, e.g. its even
    sides on 2026-12-01) is made again and counted (until 2026-12-02 kept as "already done"); one of an earlier xdc,
    which recorded none, is kept with a warning that names --redo-unknown-format, which makes it again."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        write_av(src / f"{i}.mp4", _scene(5, 32, 48, i), FPS, None)
    assert _run(str(src), "--out", str(out), "--workers", "1")[0] == 0
    assert {r["format"] for r in _report(out).values()} == {str(prepare.FORMAT)}

    def times() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}

    first = times()
    # an earlier xdc's report: no format column, nor probe (a side file of one is read the same way)
    with open(out / "prepared.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-2:] == ["format", "probe"]
    with open(out / "prepared.csv", "w", newline="") as f:
        csv.writer(f).writerows(row[:-2] for row in rows)
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1")
    assert code == 0 and "2 files: 2 prepared (2 already done), 0 skipped, 0 failed" in stdout
    assert "WARNING: 2 copies kept were made before 2026-12-02, which recorded no format" in stdout
    assert "--redo-unknown-format makes them again" in stdout and "made again" not in stdout
    assert times() == first and {r["format"] for r in _report(out).values()} == {""}  # still unknown
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1", "--redo-unknown-format")
    assert "2 files: 2 prepared (0 already done), 0 skipped, 0 failed\n2 of them made again: their earlier " \
        f"copies were of another format of xdc's copies (now {prepare.FORMAT})" in stdout
    assert "WARNING" not in stdout and all(times()[name] != first[name] for name in first)
    assert {r["format"] for r in _report(out).values()} == {str(prepare.FORMAT)}
    second = times()
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1")
    assert stdout.endswith("2 files: 2 prepared (2 already done), 0 skipped, 0 failed\n") and times() == second
    # xdc's copies change: the next run makes every copy again, and says why
    monkeypatch.setattr(prepare, "FORMAT", prepare.FORMAT + 1)
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1")
    assert code == 0 and "2 prepared (0 already done)" in stdout and "2 of them made again" in stdout
    assert all(times()[name] != second[name] for name in second)
    assert {r["format"] for r in _report(out).values()} == {str(prepare.FORMAT)}


def test_a_rerun_removes_the_copies_of_its_sources_that_are_no_longer_theirs(tmp_path: Path, monkeypatch) -> None:
    """clip.avi is copied as clip.avi.mp4 beside clip.mp4; once clip.mp4 is gone it is copied as clip.mp4, and its
    old copy goes (xdc index of the folder trained on it twice). A source that now fails loses its old copy (of
    another content); a source no longer given keeps its copy, as does one listed but removed (the copy may be all
    that is left). Copies named with a leading dot are said: xdc index of the folder skips them. Until 2026-12-01
    every earlier copy stayed, unsaid."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i, name in enumerate(["clip.avi", "clip.mp4", "broken.mp4", "given.mp4", "removed.mp4", ".hidden.mp4"]):
        write_av(tmp_path / "made.mp4", _scene(10, 64, 96, i), FPS, None)
        (tmp_path / "made.mp4").rename(src / name)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{src / name}\n" for name in ["clip.avi", "clip.mp4", "broken.mp4", "given.mp4",
                                                               "removed.mp4", ".hidden.mp4"]))  # fmt: skip
    code, stdout = _run(str(listed), "--out", str(out), "--workers", "1")
    assert code == 0 and "6 prepared" in stdout
    assert "1 copy named with a leading '.', as its source (xdc index of the folder skips hidden files; list them " \
           "instead): .hidden.mp4" in stdout
    assert {p.name for p in out.glob("*.mp4")} == {"clip.avi.mp4", "clip.mp4", "broken.mp4", "given.mp4",
                                                   "removed.mp4", ".hidden.mp4"}  # fmt: skip
    (src / "clip.mp4").unlink()
    (src / "removed.mp4").unlink()
    (src / "broken.mp4").write_bytes(b"no longer a video")
    listed.write_text("".join(f"{src / name}\n" for name in ["clip.avi", "broken.mp4", "removed.mp4"]))
    def killed(*args) -> None:
        raise SystemExit(9)

    with monkeypatch.context() as m:  # stopped before the new report takes the old one's place: compared again
        m.setattr(prepare, "_reconcile", killed)
        with pytest.raises(SystemExit):
            _run(str(listed), "--out", str(out), "--workers", "1")
    assert (out / prepare.NEXT).exists()
    code, stdout = _run(str(listed), "--out", str(out), "--workers", "1")
    assert code == 0
    assert "removed 2 earlier copies of sources now copied under another name or failed: broken.mp4, " \
           "clip.avi.mp4" in stdout
    assert "3 earlier copies kept whose sources are not given, gone or unreadable now (xdc index of the folder " \
           "takes them): .hidden.mp4, given.mp4, removed.mp4" in stdout
    assert {p.name for p in out.glob("*.mp4")} == {"clip.mp4", "given.mp4", "removed.mp4", ".hidden.mp4"}
    assert not (out / prepare.NEXT).exists()


def test_a_source_unchanged_but_unreadable_now_keeps_its_copy(tmp_path: Path) -> None:
    """Its size and time unchanged, it fails now (a permission, a flaky mount: here its header made unreadable, its
    size and time put back): the copy is of its content, kept (until 2026-12-01 it was removed)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_av(src / "a.mp4", _scene(10, 64, 96, 0), FPS, None)
    assert _run(str(src), "--out", str(out), "--workers", "1")[0] == 0
    kept = (src / "a.mp4").stat()
    with open(src / "a.mp4", "r+b") as f:
        f.write(bytes(4096))
    os.utime(src / "a.mp4", ns=(kept.st_atime_ns, kept.st_mtime_ns))
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1", "--short-side", "32")  # redone: it fails
    assert code == 0 and "1 skipped" in stdout and (out / "a.mp4").is_file()
    assert "1 earlier copy kept whose sources are not given, gone or unreadable now" in stdout


def test_a_link_to_a_file_elsewhere_is_copied_where_the_link_is(tmp_path: Path) -> None:
    """The copies' names come from the input folder: a link in it to a file outside it (a shared store) must not
    move them all under the folder that holds both (here DIR/<tmp_path>/src/...). A link to a file inside the
    folder is that file, found twice, as xdc index takes it: copied once, under its own name."""
    src, store, out = tmp_path / "src", tmp_path / "store", tmp_path / "out"
    (src / "cats").mkdir(parents=True)
    store.mkdir()
    write_av(src / "cats" / "a.mp4", _scene(10, 64, 96, 0), FPS, None)
    write_av(store / "elsewhere.mp4", _scene(10, 64, 96, 1), FPS, None)
    os.symlink(store / "elsewhere.mp4", src / "b.mp4")
    os.symlink(src / "cats" / "a.mp4", src / "again.mp4")
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1")
    assert code == 0 and stdout.endswith("2 files: 2 prepared (0 already done), 0 skipped, 0 failed\n")
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4"))
    assert made == ["b.mp4", "cats/a.mp4"]
    report = _report(out)
    assert {name: (r["source"], r["output"]) for name, r in report.items()} == {
        "b.mp4": (str(src / "b.mp4"), "b.mp4"), "a.mp4": (str(src / "cats" / "a.mp4"), "cats/a.mp4")}
    assert _streams(out / "b.mp4")["size"] == (96, 64)  # read through the link


def test_a_file_whose_copy_would_be_named_like_a_folder_keeps_its_suffix(tmp_path: Path) -> None:
    """x.avi beside a folder x.mp4: the copies of the folder's files need x.mp4 for their folder, so x.avi's copy is
    x.avi.mp4, whichever is transcoded first (one of them used to fail with IsADirectoryError or FileExistsError).
    A file without a suffix (from a list file), y beside a folder y.mp4, has no other name: it is reported, and its
    copy not made."""
    src, out = tmp_path / "src", tmp_path / "out"
    for folder in ("x.mp4", "y.mp4"):
        (src / folder).mkdir(parents=True)
        write_av(src / folder / "clip.mp4", _scene(10, 64, 96, 0), FPS, None)
    write_av(src / "x.avi", _scene(10, 64, 96, 1), FPS, None)  # an MP4 inside: the name is what matters
    shutil.copy(src / "x.avi", src / "y")
    (tmp_path / "list.txt").write_text(f"{src / 'y'}\n")
    for workers in ("1", "2"):
        shutil.rmtree(out, ignore_errors=True)
        code, stdout = _run(str(src), str(tmp_path / "list.txt"), "--out", str(out), "--workers", workers)
        assert code == 0 and "4 files: 3 prepared (0 already done), 0 skipped, 1 failed" in stdout, stdout
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.mp4") if p.is_file()) == [
            "x.avi.mp4", "x.mp4/clip.mp4", "y.mp4/clip.mp4"]  # fmt: skip
        report = _report(out)
        assert report["x.avi"]["output"] == "x.avi.mp4" and report["x.avi"]["status"] == "ok"
        assert report["y"]["status"] == "error" and report["y"]["reason"] == "output name y.mp4 is taken by a folder"
        assert _streams(out / "x.avi.mp4")["size"] == (96, 64)


def test_a_file_named_with_the_longest_names_the_disk_takes_is_copied(tmp_path: Path) -> None:
    """The copy is written under a hidden name first: with 13 bytes more than its own, a name of 243-255 bytes, which
    xdc index reads, failed with "File name too long"."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    name = "v" * 246 + ".mp4"
    write_av(src / name, _scene(10, 64, 96, 0), FPS, None)
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1")
    assert code == 0 and stdout.endswith("1 file: 1 prepared (0 already done), 0 skipped, 0 failed\n"), stdout
    assert [p.name for p in out.iterdir() if p.suffix == ".mp4"] == [name]


def test_unreadable_folders_are_counted_in_the_summary_line(tmp_path: Path) -> None:
    """A folder that cannot be listed was a warning alone, printed before the copies' output, and the summary line
    counted only the files found (until 2026-12-03), as xdc index's did: now it names the folders left out."""
    root = tmp_path / "c"
    for folder in ("a", "b", "ok"):
        (root / folder).mkdir(parents=True)
        write_av(root / folder / "v.mp4", _scene(10, 64, 96, 0), FPS, None)
    done = xdc_unable_to_list([root / "a", root / "b"], ["prepare", str(root), "--out", "out", "--workers", "1"],
                              tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("WARNING: cannot read the folder") == 2
    assert done.stdout.splitlines()[-1] == (f"1 file: 1 prepared (0 already done), 0 skipped, 0 failed; 2 folders "
                                            f"could not be read, their files left out: {root / 'a'}, {root / 'b'}")
    assert [p.name for p in (tmp_path / "out").rglob("*.mp4")] == ["v.mp4"]


def test_a_run_killed_keeps_every_copy_it_finished(tmp_path: Path) -> None:
    """SIGKILLed while transcoding: each finished copy's row is in the side file as soon as it is made, so the next
    run redoes none of them, and its report is that of a run straight through."""
    src, out, straight = tmp_path / "src", tmp_path / "out", tmp_path / "straight"
    src.mkdir()
    for i in range(12):
        write_av(src / f"{i:02d}.mp4", _scene(10, 48, 64, i), FPS, None)
    assert _run(str(src), "--out", str(straight), "--workers", "1")[0] == 0
    driver = "import sys; from xdc.cli import main; main(['prepare', *sys.argv[1:]])"
    side = out / ".prepared.csv.rank0.csv"
    kill_once_rows_are_kept([sys.executable, "-c", driver, str(src), "--out", str(out), "--workers", "1"], side)
    assert side.exists() and not (out / "prepared.csv").exists(), "prepare ended before it could be killed"
    done = [row["source"] for row in prepare.read_report(side)]
    mtimes = {s: (out / Path(s).name).stat().st_mtime_ns for s in done}
    code, stdout = _run(str(src), "--out", str(out), "--workers", "1")
    assert code == 0 and 3 <= len(done) < 12
    assert stdout.endswith(f"12 files: 12 prepared ({len(done)} already done), 0 skipped, 0 failed\n")
    assert {s: (out / Path(s).name).stat().st_mtime_ns for s in done} == mtimes  # not made again
    timing = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in timing} for r in prepare.read_report(out / "prepared.csv")] == [
        {k: v for k, v in r.items() if k not in timing} for r in prepare.read_report(straight / "prepared.csv")
    ]
    assert not side.exists()


def test_two_gloo_ranks_share_out_the_files_and_make_one_report(prepared, sources: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes (as 2 nodes would run it): each rank transcodes every other file, rank 0 joins the
    ranks' reports into one and writes the labels; the same report, labels and copies as one process."""
    out = tmp_path / "out"
    job = [*torchrun_command(2), "-m", "--", "xdc.cli", "prepare", str(sources), "--out", str(out), "--gop", str(GOP),
           "--labels", str(sources / "labels.csv"), "--workers", "1"]  # fmt: skip
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    single, said = prepared
    assert done.stdout.count("7 files: 5 prepared (0 already done), 2 skipped, 0 failed") == 1  # rank 0 says it
    assert done.stdout.splitlines()[-3:] == said.splitlines()[-3:]
    timing = ("seconds",)  # each transcode's own time

    def rows(folder: Path) -> dict:
        return {n: {k: v for k, v in r.items() if k not in timing} for n, r in _report(folder).items()}

    assert rows(out) == rows(single)
    assert (out / "labels.csv").read_text() == (single / "labels.csv").read_text()
    assert not list(out.glob(".prepared.csv.*")) and not list(out.rglob("*.partial.mp4"))
    for name in ("wide.mp4", "sub/odd.mp4", "silent.wav.mp4"):
        assert _streams(out / name) == _streams(single / name)


def test_the_reports_of_ranks_cut_short_are_taken_by_the_next_run(prepared, sources: Path, tmp_path: Path) -> None:
    """A torchrun job killed before rank 0 joined the reports leaves each rank's: the next run, with any number of
    ranks, takes the files they list as done."""
    single = prepared[0]
    out = tmp_path / "out"
    shutil.copytree(single, out)
    rows = prepare.read_report(out / "prepared.csv")
    (out / "prepared.csv").unlink()  # rank 0 never got to write it
    prepare.write_report(out / ".prepared.csv.rank0.csv", rows[::2])
    prepare.write_report(out / ".prepared.csv.rank1.csv", rows[1::2])
    code, stdout = _run(str(sources), "--out", str(out), "--gop", str(GOP))
    assert code == 0 and stdout.endswith("7 files: 5 prepared (5 already done), 2 skipped, 0 failed\n")
    assert not list(out.glob(".prepared.csv.rank*")) and len(_report(out)) == 7


def test_each_rank_plans_the_names_of_its_share_as_the_whole_collection_would(tmp_path: Path) -> None:
    """Copies that would share a name (clip.avi and clip.mp4) land on one rank, which plans them alone; a source
    whose own name another's renamed copy takes (clip.avi.mp4) learns it from the rank of that source. With any
    number of ranks the plans of the shares are the plan of the whole collection, and files whose names have
    dots in them (dates) are spread over the ranks."""
    from types import SimpleNamespace

    from xdc.data.shares import hand_over, handed, my_share, remove_share_files

    sources = [f"/in/{folder}/{name}" for folder in ("a", "b", "a/c") for name in (
        "clip.avi", "clip.mp4", "clip.avi.mp4", "x.wav", "x.mkv", "y.mp4", "noext", "noext.mp4", "v.1.avi", "v.1.mp4",
    )] + [f"/in/talks/2021.03.{day:02d}.mp4" for day in range(1, 31)]  # fmt: skip

    def plans(ranks: int) -> tuple[dict, list[int]]:
        report = tmp_path / "prepared.csv"
        ctx = [SimpleNamespace(rank=r, world_size=ranks, main=r == 0, enabled=True) for r in range(ranks)]
        run_once = [(lambda work, ctx: work())] + [(lambda work, ctx: None)] * (ranks - 1)
        group = prepare.name_group
        shares = [my_share(lambda: iter(sources), report, ctx[r], run_once[r], group) for r in range(ranks)]
        planned = [prepare.plan_outputs(share, "/in") for share in shares]
        for r in range(ranks):  # every rank writes before any reads, as route's barrier makes them
            hand_over(report, r, [source for source, _, moved in planned[r] if moved])
        whole = {}
        for r in range(ranks):
            renamed = handed(report, ctx[r])
            whole.update({s: (out, not moved and prepare.name_group(s) in renamed) for s, out, moved in planned[r]})
        remove_share_files(report)
        assert not list(tmp_path.iterdir())
        return whole, [sum("/talks/" in source for source in share) for share in shares]

    whole, _ = plans(1)
    assert whole["/in/a/clip.avi"] == ("a/clip.avi.mp4", False) and whole["/in/a/clip.mp4"] == ("a/clip.mp4", False)
    assert whole["/in/a/clip.avi.mp4"] == ("a/clip.avi.mp4", True)  # never overwritten
    assert whole["/in/b/noext"] == ("b/noext.mp4", False) and whole["/in/b/noext.mp4"] == ("b/noext.mp4", True)
    assert whole["/in/a/v.1.avi"] == ("a/v.1.avi.mp4", False) and whole["/in/talks/2021.03.07.mp4"][1] is False
    assert sum(taken for _, taken in whole.values()) == 6
    for ranks in range(2, 8):
        planned, sizes = plans(ranks)
        assert planned == whole, ranks
        assert max(sizes) <= 15, sizes  # the 30 dated files spread over the ranks, not all on one


def test_the_folder_that_holds_the_inputs_is_found_as_they_are_listed() -> None:
    folders = ["/data/a/x", "/data/a/x", "/data/a/x/y", "/data/ab", "/data/a"]
    for n in range(1, len(folders) + 1):
        assert prepare._common_folder(None, *folders[:n]) == os.path.commonpath(folders[:n])
    assert prepare._common_folder("/data", "/other") == "/" and prepare._common_folder("/", "/data") == "/"


def test_the_summary_names_the_first_ten_problems_and_counts_the_rest(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for n in range(12):
        (tmp_path / "src" / f"bad{n:02d}.mp4").write_bytes(b"not a video")
    code, stdout = _run(str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1")
    lines = stdout.splitlines()
    assert code == 0 and lines[-1] == "12 files: 0 prepared (0 already done), 12 skipped, 0 failed"
    assert [line.split(":")[0] for line in lines[-12:-2]] == [
        f"  skipped {tmp_path / 'src'}/bad{n:02d}.mp4" for n in range(10)
    ]
    assert lines[-2] == f"  ... 2 more in {tmp_path / 'out' / 'prepared.csv'}"


def test_fps_cap_keeps_sync(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    write_av(tmp_path / "src" / "a.mp4", *_flash_and_click(), RATE)
    assert _run(str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--fps", "10", "--workers", "1")[0] == 0
    with av.open(str(tmp_path / "out" / "a.mp4")) as c:
        times = [f.time for f in c.decode(video=0)]
    # At most one frame per 0.1 s, each the first source frame (0.04 s apart) of its 0.1 s slot.
    assert len(times) == 20 and np.diff(times).min() >= 0.08 - 1e-3 and np.diff(times).max() <= 0.12 + 1e-3
    clip = read_clip(str(tmp_path / "out" / "a.mp4"), 0.8, ClipConfig(frames=10, fps=10))
    flash_at = np.argmax(clip.video.reshape(10, -1).mean(axis=1)) / 10
    assert abs(np.argmax(np.abs(clip.audio)) / 16000 - flash_at) <= 1 / 10


def test_the_fps_cap_skips_decoding_pictures_it_drops_and_the_copy_is_the_same(tmp_path: Path, monkeypatch) -> None:
    """With --fps, a picture that the cap drops and that no other picture is predicted from is not decoded (x264's
    B-frames): fewer pictures leave the decoder, and the copy is byte for byte the one made decoding them all."""
    frames = np.random.default_rng(0).integers(0, 60, (75, 96, 160, 3), dtype=np.uint8)
    for n in range(len(frames)):  # a block moving across a textured scene: x264 predicts it with B-frames
        frames[n, 30:60, 2 * n : 2 * n + 30] = 230
    write_av(tmp_path / "moving.mp4", frames, FPS, None)
    decoded = []
    add = prepare._VideoTrack.add
    monkeypatch.setattr(prepare._VideoTrack, "add", lambda track, frame: decoded.append(frame.pts) or add(track, frame))
    copies = {}
    for skipping in (True, False):
        if not skipping:  # as for a container whose packets do not carry their pictures' times
            monkeypatch.setattr(prepare, "TIMED_DEMUXERS", frozenset())
        decoded.clear()
        out = tmp_path / f"skipping-{skipping}.mp4"
        assert prepare.prepare_file(str(tmp_path / "moving.mp4"), out, prepare.PrepareOptions(fps=8))["status"] == "ok"
        copies[skipping] = (len(decoded), out.read_bytes())
    assert copies[False][0] == 75 and copies[True][0] < 60
    assert copies[True][1] == copies[False][1]


def test_flac_and_pcm_audio_hold_the_same_samples_and_keep_sync(tmp_path: Path) -> None:
    # --audio flac or pcm: faster to read than AAC, larger. Both store the same 16-bit samples (lossless), the AAC
    # copy the same sound; the click stays on the flash; a re-run with another codec redoes the file.
    (tmp_path / "src").mkdir()
    write_av(tmp_path / "src" / "a.mp4", *_flash_and_click(), RATE)
    clips = {}
    for audio in ("aac", "flac", "pcm"):
        out = tmp_path / audio
        assert _run(str(tmp_path / "src"), "--out", str(out), "--audio", audio, "--workers", "1")[0] == 0
        assert _streams(out / "a.mp4")["audio"] == (16000, 1, prepare.AUDIO_CODECS[audio])
        clips[audio] = read_clip(str(out / "a.mp4"), 0.8, ClipConfig(frames=10, fps=10))
        flash_at = np.argmax(clips[audio].video.reshape(10, -1).mean(axis=1)) / 10
        assert abs(np.argmax(np.abs(clips[audio].audio)) / 16000 - flash_at) <= 1 / 10
    np.testing.assert_array_equal(clips["flac"].audio, clips["pcm"].audio)
    assert np.corrcoef(clips["flac"].audio, clips["aac"].audio)[0, 1] > 0.9
    code, stdout = _run(str(tmp_path / "src"), "--out", str(tmp_path / "pcm"), "--audio", "flac", "--workers", "1")
    assert code == 0 and "(0 already done)" in stdout and _streams(tmp_path / "pcm" / "a.mp4")["audio"][2] == "flac"


def _write_7_1(path: Path, seconds: float = 2.0, rate: int = 48000) -> None:
    """H.264 + 7.1 AAC with a tone of amplitude 0.4 in the last channel alone and silence in the rest."""
    tone = (0.4 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate)).astype(np.float32)
    channels = np.zeros((8, len(tone)), np.float32)
    channels[7] = tone
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = c.add_stream("aac", rate=rate)
        audio.layout = "7.1"
        for image in _scene(round(seconds * FPS), 48, 64, seed=0):
            c.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        c.mux(video.encode())
        for start in range(0, len(tone), 1024):  # packed: PyAV fills a planar frame by frame.planes, miscounted
            piece = np.ascontiguousarray(channels[:, start : start + 1024].T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="7.1")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            c.mux(audio.encode(frame))
        c.mux(audio.encode())


def test_eight_channel_sound_is_read_and_prepared(tmp_path: Path) -> None:
    """7.1 sound is mixed down to mono, its last channel too. PyAV's to_ndarray read past a frame's 8 planes: the
    reader ended its process (SIGSEGV), and prepare reported "decoder crashed"."""
    (tmp_path / "src").mkdir()
    _write_7_1(tmp_path / "src" / "a.mp4")
    spec = ClipConfig(frames=8, fps=8, sample_rate=16000)
    original = read_clip(str(tmp_path / "src" / "a.mp4"), 0.5, spec)
    assert abs(np.abs(original.audio).max() - 0.4 / 8) < 0.01  # the tone, in one of 8 channels averaged
    assert _run(str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1")[0] == 0
    assert _streams(tmp_path / "out" / "a.mp4")["audio"] == (16000, 1, "aac")
    copy = read_clip(str(tmp_path / "out" / "a.mp4"), 0.5, spec)
    assert np.corrcoef(original.audio, copy.audio)[0, 1] > 0.99


def test_sound_in_matroska_is_copied_back_to_back_whatever_its_millisecond_times(tmp_path: Path) -> None:
    """Matroska rounds times to 1 ms, and 44.1 kHz AAC frames last 23.2 ms: placed by those times, the copy's frames
    overlapped or left gaps (until 2026-12-01), which read_clip then spliced. The copy's sound is the original's."""
    (tmp_path / "src").mkdir()
    t = np.arange(3 * 44100) / 44100
    write_av(tmp_path / "src" / "tone.mkv", _scene(48, 48, 64, 0), 16, (0.3 * np.sin(2 * np.pi * 440 * t)), 44100)
    assert _run(str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "1")[0] == 0
    spec = ClipConfig(frames=8, fps=8, sample_rate=16000)
    original = read_clip(str(tmp_path / "src" / "tone.mkv"), 0.5, spec).audio
    copy = read_clip(str(tmp_path / "out" / "tone.mp4"), 0.5, spec).audio
    assert np.corrcoef(original, copy)[0, 1] > 0.99


def test_damaged_packets_are_skipped_up_to_a_limit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_av(src / "clean.mp4", _scene(100, 64, 64, 5), FPS, None, gop=5)
    data = (src / "clean.mp4").read_bytes()
    with av.open(str(src / "clean.mp4")) as c:
        starts = [p.pos for p in c.demux(video=0) if p.size]
    for name, count in (("few.mp4", 2), ("many.mp4", 12)):
        damaged = bytearray(data)
        # Zeroed NAL length fields in frames 30-63: packets that fail to decode between the parts the probe reads.
        for k in range(count):
            damaged[starts[30 + 3 * k] : starts[30 + 3 * k] + 16] = bytes(16)
        (src / name).write_bytes(damaged)
    summary = prepare.prepare([str(src)], tmp_path / "out", workers=2)
    rows = _report(tmp_path / "out")
    assert (rows["clean.mp4"]["status"], rows["clean.mp4"]["reason"]) == ("ok", "")
    assert (rows["few.mp4"]["status"], rows["few.mp4"]["reason"]) == ("ok", "2 damaged packets skipped")
    assert rows["many.mp4"]["status"] == "error"
    assert rows["many.mp4"]["reason"].startswith("video stream has more than 8 damaged packets (the first at 1.2s: ")
    assert summary.failed == 1 and not (tmp_path / "out" / "many.mp4").exists()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: [str(d / "nope"), "--out", str(d / "o")], "path not found"),
        (lambda d: [str(d / "in"), "--out", str(d / "in" / "o")], "is inside the input folder"),
        (lambda d: [str(d / "in"), "--out", str(d)], "is inside --out"),
        (lambda d: [str(d / "in" / "a.mp4"), "--out", str(d / "in")], "the input file"),
        (lambda d: [str(d / "in"), "--out", str(d / "in" / "a.mp4")], "is a file"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--short-side", "127"], "--short-side must be an even"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--sample-rate", "16001"], "--sample-rate must be one"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--gop", "0"], "--gop must be at least 1"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--fps", "1e-9"], "--fps must be a finite number of frames"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--fps", "inf"], "--fps must be a finite number of frames"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--audio", "mp3"], "--audio must be one of aac, flac, pcm"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--workers", "0"], "--workers must be at least 1"),
        (lambda d: [str(d / "in"), "--out", str(d / "bad")], "is not an xdc prepare report"),
        (lambda d: [str(d / "bad"), "--out", str(d / "o")], "no media files found"),
        (lambda d: [str(d / "in"), "--out", str(d / "o"), "--labels", str(d / "nope.csv")], "labels file not found"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, capsys, make_args, message: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.mp4").write_bytes(b"not checked before the arguments are")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "prepared.csv").write_text("name,value\n")
    code = main(["prepare", *make_args(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("xdc: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_an_unwritable_out_folder_is_said_of_the_out_given(tmp_path: Path) -> None:
    """An --out that takes no new file (its permissions here; a read-only mount alike): the error names --out, before
    the inputs are listed. Until 2026-12-03 it named the hidden side file the run failed to write
    (``cannot write .../locked/.prepared.csv.rank0.csv``), a name the user never gave."""
    (tmp_path / "in").mkdir()
    write_av(tmp_path / "in" / "a.mp4", _scene(5, 32, 32, 0), FPS, None)
    locked = tmp_path / "locked"
    drop = unwritable_folder(locked)
    command = [*drop, sys.executable, "-m", "xdc.cli", "prepare", "in", "--out", "locked", "--workers", "1"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    said = f"xdc: error: cannot write in --out {locked.resolve()}: Permission denied\n"  # prepare resolves --out
    assert (done.returncode, done.stderr) == (2, said)
    assert list(locked.iterdir()) == []


_PREPARE_JOB = prepare.prepare_job


def _prepare_or_die(source: str, output: str, options) -> dict:
    """Stands in for a decoder that segfaults on one file (the worker process dies without a Python error), or
    loops for ever on one."""
    if "crash" in Path(source).name:
        os.kill(os.getpid(), signal.SIGSEGV)
    if "stuck" in Path(source).name:
        time.sleep(3600)
    return _PREPARE_JOB(source, output, options)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the stand-in reaches workers by fork")
def test_a_file_that_kills_its_worker_is_reported(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.mp4", "crash.mp4", "b.mp4"):
        write_av(src / name, _scene(5, 32, 32, 0), FPS, None)
    monkeypatch.setattr(prepare, "prepare_job", _prepare_or_die)
    summary = prepare.prepare([str(src)], tmp_path / "out", workers=2)
    rows = _report(tmp_path / "out")
    assert (rows["crash.mp4"]["status"], rows["crash.mp4"]["reason"]) == ("error", "decoder crashed (SIGSEGV)")
    assert rows["a.mp4"]["status"] == rows["b.mp4"]["status"] == "ok"
    assert summary.line() == "3 files: 2 prepared (0 already done), 0 skipped, 1 failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "b.mp4", "prepared.csv"]


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the stand-in reaches workers by fork")
def test_a_file_that_hangs_its_transcode_is_reported(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.mp4", "stuck.mp4"):
        write_av(src / name, _scene(5, 32, 32, 0), FPS, None)
    monkeypatch.setattr(prepare, "prepare_job", _prepare_or_die)
    monkeypatch.setattr(prepare, "PREPARE_LIMIT_S", 1.0)
    monkeypatch.setattr(prepare, "PREPARE_LIMIT_BYTES_PER_S", 1e12)
    summary = prepare.prepare([str(src)], tmp_path / "out", workers=2)
    rows = _report(tmp_path / "out")
    assert (rows["stuck.mp4"]["status"], rows["stuck.mp4"]["reason"]) == ("error", "hung (over 1 s)")
    assert rows["a.mp4"]["status"] == "ok"
    assert summary.line() == "2 files: 1 prepared (0 already done), 0 skipped, 1 failed"


def test_shared_media_rotations_shuffled_timestamps_and_damage(tmp_path: Path) -> None:
    """Real files: a 180-degree phone video, a 90-degree one, an AVI whose frames carry shuffled timestamps
    (packed B-frames), and a file damaged in the middle (skipped with the reason xdc index gives)."""
    media = shared_data("media")
    names = ("fire2.mp4", "video_90.mov", "test.avi", "corrupted.mp4")
    (tmp_path / "list.txt").write_text("\n".join(str(media / n) for n in names))
    assert _run(str(tmp_path / "list.txt"), "--out", str(tmp_path / "out"), "--workers", "2")[0] == 0
    rows = _report(tmp_path / "out")
    assert rows["corrupted.mp4"]["status"] == "skipped"
    assert rows["corrupted.mp4"]["reason"].startswith("video stream failed to decode at 3.0s")
    spec = ClipConfig(frames=4, fps=4, decode_short_side=64)
    for name in names[:3]:
        output = tmp_path / "out" / rows[name]["output"]
        before = read_clip(str(media / name), 0.0, spec, audio=False).video.astype(float)
        after = read_clip(str(output), 0.0, spec, audio=False).video.astype(float)
        assert np.abs(after - before).mean() < 6, name
    with av.open(str(tmp_path / "out" / "test.mp4")) as c:
        assert float(c.streams.video[0].average_rate) == pytest.approx(25, abs=0.1)  # no frame lost


@pytest.mark.parametrize("rotation, size", [(0, (64, 32)), (90, (32, 64))])
def test_a_copy_of_non_square_pixels_has_square_ones_at_the_displayed_size(tmp_path: Path, rotation, size) -> None:
    """Until 2026-12-02 a copy kept the coded size and dropped the source's pixel aspect: a DVD's circles became
    ellipses, for good."""
    source, copy = tmp_path / "anamorphic.mp4", tmp_path / "copy.mp4"
    write_square(source, 96, 64, Fraction(4, 3), 32, rotation=rotation)  # shown 128 x 64 (turned: 64 x 128)
    assert prepare.prepare_file(str(source), copy, prepare.PrepareOptions(short_side=32))["status"] == "ok"
    with av.open(str(copy)) as c:
        stream = c.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == size
        assert stream.sample_aspect_ratio in (None, 1)  # square pixels: the copy states no other aspect
    spec = ClipConfig(frames=2, fps=8, decode_short_side=0)
    video = read_clip(str(copy), 0.0, spec, audio=False).video
    assert video.shape == (2, size[1], size[0], 3)
    w, h, x, y = square_geometry(video[0])
    assert abs(w - 16) < 0.75 and abs(h - 16) < 0.75, (w, h)  # square, as shown
    assert abs(x - (size[0] - 1) / 2) < 1 and abs(y - (size[1] - 1) / 2) < 1
    before = read_clip(str(source), 0.0, ClipConfig(frames=2, fps=8, decode_short_side=32), audio=False).video
    assert np.abs(video.astype(float) - before).mean() < 6  # the picture the loader shows of the source


def test_output_sizes_are_even_and_keep_the_aspect_of_small_sources() -> None:
    assert prepare.output_size(1920, 1080, 128) == (228, 128)
    assert prepare.output_size(640, 480, 128) == (170, 128)
    assert prepare.output_size(5, 3, 128) == (4, 2)  # never enlarged: odd sides lose a pixel (was 4 x 4)
    assert prepare.output_size(641, 361, 720) == (640, 360)  # was 642 x 362
    assert prepare.output_size(1, 1, 128) == (2, 2)  # the least x264 takes
    assert prepare.output_size(90, 64, 128) == (90, 64)  # smaller sources keep their size
