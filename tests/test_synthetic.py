"""The synthetic dataset: real decodable MP4s, deterministic, class signatures recoverable from the decoded media."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from xdc.cli import main
from xdc.config import SyntheticConfig
from xdc.data import synthetic
from xdc.data.synthetic import (
    COLOURS,
    MAX_CLASSES,
    TIMBRES,
    audio_signature,
    class_name,
    make_synthetic,
    visual_signature,
)
from xdc.errors import UserError

# Short, small clips keep the tests fast where the default size is not the point.
SMALL = SyntheticConfig(width=32, height=32, seconds=1.0)


def _rows(labels: Path) -> list[dict]:
    with open(labels, newline="") as f:
        return list(csv.DictReader(f))


def _decode(path: Path) -> tuple[np.ndarray, float, np.ndarray, int]:
    """Frames (T x H x W x 3), fps, mono audio and its sample rate."""
    with av.open(str(path)) as container:
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        fps, rate = float(vstream.average_rate), astream.sample_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(vstream)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    return frames, fps, audio, rate


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_decodable_clips_and_labels(tmp_path):
    cfg = SyntheticConfig()
    labels = make_synthetic(tmp_path / "d", videos=6, classes=3, seed=0, cfg=cfg, workers=1)
    assert labels == tmp_path / "d" / "labels.csv"
    rows = _rows(labels)
    assert list(rows[0]) == ["path", "label", "audio_label", "offscreen"]
    assert [r["path"] for r in rows] == [f"videos/{i:06d}.mp4" for i in range(6)]
    # Balanced: 6 clips of 3 classes is every class twice.
    assert sorted(r["label"] for r in rows) == ["class00", "class00", "class01", "class01", "class02", "class02"]
    # Nothing but the listed clips is left in videos/ (no temporary files).
    assert sorted(p.name for p in (tmp_path / "d" / "videos").iterdir()) == [f"{i:06d}.mp4" for i in range(6)]
    for row in rows:
        frames, fps, audio, rate = _decode(tmp_path / "d" / row["path"])
        assert frames.shape == (round(cfg.seconds * cfg.fps), cfg.height, cfg.width, 3)
        assert fps == cfg.fps and rate == cfg.sample_rate
        assert abs(len(audio) - cfg.seconds * cfg.sample_rate) <= 1024
        assert np.abs(audio).max() > 0.05  # a sound, not silence
        assert int(row["offscreen"]) == (row["audio_label"] != row["label"])


def test_deterministic_by_seed_whatever_the_workers(tmp_path):
    make_synthetic(tmp_path / "a", videos=8, classes=4, seed=3, cfg=SMALL, workers=1)
    make_synthetic(tmp_path / "b", videos=8, classes=4, seed=3, cfg=SMALL, workers=2)
    make_synthetic(tmp_path / "c", videos=8, classes=4, seed=4, cfg=SMALL, workers=2)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b  # byte-identical files: the MP4s carry no timestamps of their own
    assert a.keys() == c.keys()
    for name in a:
        if name.endswith(".mp4"):
            assert a[name] != c[name]
            assert not np.array_equal(_decode(tmp_path / "a" / name)[0], _decode(tmp_path / "c" / name)[0])


def test_smaller_dataset_is_a_prefix_of_a_larger(tmp_path):
    make_synthetic(tmp_path / "small", videos=3, classes=2, seed=5, cfg=SMALL, workers=1)
    make_synthetic(tmp_path / "large", videos=7, classes=2, seed=5, cfg=SMALL, workers=1)
    assert _rows(tmp_path / "small" / "labels.csv") == _rows(tmp_path / "large" / "labels.csv")[:3]
    for i in range(3):
        name = f"videos/{i:06d}.mp4"
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_offscreen_fraction(tmp_path, fraction):
    cfg = replace(SMALL, offscreen_fraction=fraction)
    rows = _rows(make_synthetic(tmp_path, videos=10, classes=3, seed=1, cfg=cfg, workers=1))
    assert all((r["audio_label"] != r["label"]) == bool(fraction) for r in rows)
    assert all(r["offscreen"] == str(int(fraction)) for r in rows)


def test_offscreen_clip_carries_the_other_class_sound(tmp_path):
    cfg = replace(SMALL, offscreen_fraction=1.0)
    for row in _rows(make_synthetic(tmp_path, videos=4, classes=4, seed=2, cfg=cfg, workers=1)):
        _, _, audio, rate = _decode(tmp_path / row["path"])
        assert _is_sound_of(audio, rate, int(row["audio_label"][5:]))
        assert not _is_sound_of(audio, rate, int(row["label"][5:]))


def _is_sound_of(audio: np.ndarray, rate: int, c: int) -> bool:
    """The strongest frequency is the class's loudest harmonic, within the pitch jitter (+-0.3 semitone)."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak = np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()]
    sig = audio_signature(c)
    expected = sig.pitch_hz * (int(np.argmax(TIMBRES[sig.timbre])) + 1)
    return abs(peak / expected - 1) < 0.025


def test_classes_are_recoverable_from_colour_and_pitch(tmp_path):
    rows = _rows(make_synthetic(tmp_path, videos=8, classes=8, seed=0, cfg=replace(SMALL, offscreen_fraction=0.0)))
    palette = np.array(list(COLOURS.values()))
    for row in rows:
        frames, _, audio, rate = _decode(tmp_path / row["path"])
        c = int(row["label"][5:])
        # The object is the only saturated thing in the frame: its mean colour names the class's colour.
        pixels = frames.reshape(-1, 3).astype(np.float64)
        saturated = pixels[pixels.max(axis=1) - pixels.min(axis=1) > 100]
        assert len(saturated) > 0.01 * len(pixels)
        # Compared as chromaticity (each colour divided by its sum): brightness varies from clip to clip.
        mean = saturated.mean(axis=0)
        distance = ((palette / palette.sum(1, keepdims=True) - mean / mean.sum()) ** 2).sum(1)
        nearest = list(COLOURS)[int(np.argmin(distance))]
        assert nearest == visual_signature(c).colour
        assert _is_sound_of(audio, rate, c)


def test_signatures_distinct_but_no_single_attribute_names_a_class():
    visual = [visual_signature(c) for c in range(MAX_CLASSES)]
    audio = [audio_signature(c) for c in range(MAX_CLASSES)]
    assert len(set(visual)) == MAX_CLASSES and len(set(audio)) == MAX_CLASSES
    # A few classes differ in every attribute...
    for attr in ("shape", "colour", "motion"):
        assert len({getattr(s, attr) for s in visual[:6]}) == 6
    for attr in ("pitch_hz", "timbre", "rhythm"):
        assert len({getattr(s, attr) for s in audio[:4]}) == 4
    # ...while among 32 classes every value of every attribute is shared by several classes.
    for sigs, attrs in ((visual[:32], ("shape", "colour", "motion")), (audio[:32], ("pitch_hz", "timbre", "rhythm"))):
        for attr in attrs:
            values = [getattr(s, attr) for s in sigs]
            assert min(values.count(v) for v in set(values)) >= 2


def test_interrupted_write_leaves_no_finished_looking_files(tmp_path, monkeypatch):
    def failing_write(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / ".000007.partial.mp4").write_bytes(b"left by a killed run")
    make_synthetic(tmp_path, videos=2, classes=2, seed=0, cfg=SMALL, workers=1)
    before = _files(tmp_path / "videos")
    assert list(before) == ["000000.mp4", "000001.mp4"]
    monkeypatch.setattr(synthetic, "write_av", failing_write)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path, videos=2, classes=2, seed=1, cfg=SMALL, workers=1)
    assert _files(tmp_path / "videos") == before  # the earlier clips are intact, no partial file is left
    # The earlier run's labels.csv is gone: it would not describe a half-rewritten folder.
    assert not (tmp_path / "labels.csv").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"videos": 0},
        {"classes": 0},
        {"classes": MAX_CLASSES + 1},
        {"seed": -1},
        {"workers": 0},
        {"classes": 1},  # off-screen sound (default fraction) needs a second class
        {"cfg": replace(SMALL, width=33)},
        {"cfg": replace(SMALL, height=16386)},  # larger than x264 takes: its encoder failed with a traceback
        {"cfg": replace(SMALL, offscreen_fraction=1.5)},
        {"cfg": replace(SMALL, audio_noise=-0.1)},
        {"cfg": replace(SMALL, sample_rate=9000)},  # not one of AAC's: its encoder failed in every worker
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    args = {"videos": 2, "classes": 2, "seed": 0, "cfg": SMALL, "workers": 1} | kwargs
    with pytest.raises(UserError):
        make_synthetic(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="not a folder"):
        make_synthetic(tmp_path / "f", videos=1, classes=2, seed=0, cfg=SMALL, workers=1)


def test_one_class_without_offscreen_sound(tmp_path):
    rows = _rows(make_synthetic(tmp_path, 2, 1, seed=0, cfg=replace(SMALL, offscreen_fraction=0.0), workers=1))
    assert {r["label"] for r in rows} == {r["audio_label"] for r in rows} == {class_name(0)}


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["make-synthetic", str(out), "--videos", "4", "--classes", "2", "--seed", "1",
                 "--set", "train.k=3", "--set", "synthetic.fps=8"]) == 0  # fmt: skip
    assert len(_rows(out / "labels.csv")) == 4
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"{i:06d}.mp4" for i in range(4)]
    printed = capsys.readouterr()
    assert "labels.csv" in printed.out
    assert printed.err == "WARNING: xdc make-synthetic reads only synthetic.* settings; not used: train.k\n"
    assert main(["make-synthetic", str(out), "--videos", "0"]) == 2
    assert "--videos" in capsys.readouterr().err
    # the same command again (until 2026-12-02 every clip was written again: new times, which xdc index re-probed)
    stamps = {p.name: p.stat().st_mtime_ns for p in [*out.iterdir(), *(out / "videos").iterdir()]}
    assert main(["make-synthetic", str(out), "--videos", "4", "--classes", "2", "--seed", "1",
                 "--set", "synthetic.fps=8", "--workers", "1"]) == 0  # fmt: skip
    assert capsys.readouterr().out == (f"{out} holds the 4 clips of these settings and {out / 'labels.csv'} already: "
                                       "nothing written (remove the folder to write them again)\n")  # fmt: skip
    assert {p.name: p.stat().st_mtime_ns for p in [*out.iterdir(), *(out / "videos").iterdir()]} == stamps
    (out / "videos" / "000003.mp4").unlink()  # a clip gone: all written again
    assert main(["make-synthetic", str(out), "--videos", "4", "--classes", "2", "--seed", "1",
                 "--set", "synthetic.fps=8"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("wrote 4 clips") and (out / "videos" / "000003.mp4").is_file()
    # fewer clips into the same folder: the earlier run's others stay, and index would take them in (a warning)
    assert main(["make-synthetic", str(out), "--videos", "2", "--classes", "2", "--set", "synthetic.fps=8"]) == 0
    assert len(_rows(out / "labels.csv")) == 2 and len(list((out / "videos").iterdir())) == 4
    assert capsys.readouterr().err == (
        f"WARNING: replaced the earlier dataset of other settings (videos 4 -> 2, seed 1 -> 0) in {out}: a manifest "
        f"or run made from its clips no longer matches them (xdc index it again; start runs anew)\n"
        f"WARNING: {out / 'videos'} also holds 2 file(s) this run did not write, which labels.csv does not list "
        f"(e.g. 000002.mp4); xdc index of the folder would take them: use a fresh folder\n")  # fmt: skip


def test_make_synthetic_in_python_says_what_the_command_says(tmp_path, capsys):
    """Until 2026-12-02 the function replaced a dataset of other settings, and left an earlier run's clips beside its
    own, without a word: only xdc make-synthetic said so."""
    out = tmp_path / "data"
    make_synthetic(out, videos=3, classes=2, seed=1, cfg=SMALL, workers=1)
    make_synthetic(out, videos=3, classes=2, seed=1, cfg=SMALL, workers=1)  # the same again: no news
    assert capsys.readouterr().err == ""
    make_synthetic(out, videos=2, classes=2, seed=0, cfg=SMALL, workers=1)
    assert capsys.readouterr().err == (
        f"WARNING: replaced the earlier dataset of other settings (videos 3 -> 2, seed 1 -> 0) in {out}: a manifest "
        f"or run made from its clips no longer matches them (xdc index it again; start runs anew)\n"
        f"WARNING: {out / 'videos'} also holds 1 file(s) this run did not write, which labels.csv does not list "
        f"(e.g. 000002.mp4); xdc index of the folder would take them: use a fresh folder\n")  # fmt: skip


def test_cli_says_it_replaced_a_dataset_of_other_settings(tmp_path, capsys):
    """Until 2026-12-02 a make-synthetic of other settings into a folder holding a dataset (a mistyped OUT, say)
    replaced its clips without a word; the same settings again, or the clips of a folder that lost one, are no news."""
    out = tmp_path / "data"
    base = ["make-synthetic", str(out), "--videos", "2", "--classes", "2", "--workers", "1"]
    assert main([*base, "--seed", "1"]) == 0
    (out / "videos" / "000001.mp4").unlink()
    assert main([*base, "--seed", "1"]) == 0  # written again: the same clips
    assert capsys.readouterr().err == ""
    assert main([*base, "--seed", "2", "--set", "synthetic.fps=8", "--set", "synthetic.pixel_noise=0"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("wrote 2 clips")
    assert printed.err == (
        f"WARNING: replaced the earlier dataset of other settings (seed 1 -> 2, synthetic.fps 16 -> 8, "
        f"synthetic.pixel_noise 0.02 -> 0.0) in {out}: a manifest or run made from its clips no longer matches them "
        f"(xdc index it again; start runs anew)\n")  # fmt: skip
    assert main([*base, "--seed", "2", "--set", "synthetic.fps=8", "--set", "synthetic.pixel_noise=0"]) == 0
    assert capsys.readouterr().err == ""  # the same again: nothing written, nothing replaced


def _user_dataset(out: Path) -> dict[str, bytes]:
    """A user's own dataset, in the layout make-synthetic writes: its files, by path."""
    (out / "videos").mkdir(parents=True)
    (out / "labels.csv").write_text("path,label\nvideos/000000.mp4,cat\n")
    (out / "videos" / "000000.mp4").write_bytes(b"the user's own clip")
    return _files(out)


@pytest.mark.parametrize("folder", ["labels.csv", "settings", "stray", "short name", "other entry"])
def test_refuses_a_folder_of_files_it_did_not_write(tmp_path, folder):
    """Until 2026-12-03 a user's labels.csv was deleted and the clips of make-synthetic's names written over."""
    out = tmp_path / "mine"
    _user_dataset(out)
    offender = {"labels.csv": "labels.csv", "settings": "synthetic.json", "stray": "videos/notes.txt",
                "short name": "videos/0001.mp4", "other entry": "README.md"}[folder]  # fmt: skip
    if folder == "settings":  # a file of that name, but not make-synthetic's settings: labels.csv is not its either
        (out / "synthetic.json").write_text('{"source": "my camera"}')
    elif folder == "other entry":  # clips alone would be a killed run's; beside another file they are a user's
        (out / "labels.csv").unlink()
        (out / offender).write_text("mine")
    elif folder != "labels.csv":  # the columns of make-synthetic's labels.csv: only the other file is foreign
        (out / "labels.csv").write_text("path,label,audio_label,offscreen\r\n")
        (out / offender).write_text("mine")
    before = _files(out)
    with pytest.raises(UserError) as refused:
        make_synthetic(out, videos=2, classes=2, seed=0, cfg=SMALL, workers=1)
    assert str(refused.value) == (f"{out} holds {out / offender}, which xdc make-synthetic did not write (it replaces "
                                  f"labels.csv and videos/NNNNNN.mp4 there): give a fresh or empty output folder")
    assert _files(out) == before  # byte for byte, and nothing written beside them


def test_cli_refuses_a_users_dataset_in_one_line(tmp_path, capsys):
    out = tmp_path / "myvideos"
    before = _user_dataset(out)
    assert main(["make-synthetic", str(out), "--videos", "2", "--classes", "2", "--workers", "1"]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == (f"xdc: error: {out} holds {out / 'labels.csv'}, which xdc make-synthetic did not write (it "
                           f"replaces labels.csv and videos/NNNNNN.mp4 there): give a fresh or empty output folder\n")
    assert _files(out) == before and sorted(p.name for p in out.iterdir()) == ["labels.csv", "videos"]  # no lock left


def test_writes_again_into_a_folder_it_wrote_before_synthetic_json(tmp_path, capsys):
    """A folder written before 2026-12-02 has no synthetic.json, but its labels.csv has make-synthetic's columns."""
    out = tmp_path / "old"
    make_synthetic(out, videos=2, classes=2, seed=0, cfg=SMALL, workers=1)
    (out / "synthetic.json").unlink()
    before = _files(out)
    assert main(["make-synthetic", str(out), "--videos", "2", "--classes", "2", "--seed", "1", "--workers", "1",
                 "--set", "synthetic.width=32", "--set", "synthetic.height=32", "--set", "synthetic.seconds=1"]) == 0
    assert capsys.readouterr().out.startswith("wrote 2 clips")
    after = _files(out)
    assert after.keys() == before.keys() | {"synthetic.json"}
    assert after["videos/000000.mp4"] != before["videos/000000.mp4"]  # the clips of the new seed


def test_writes_into_a_killed_runs_folder(tmp_path, capsys):
    """Clips, partial clips and temporaries without labels.csv: a killed run's, which the next run may replace.
    (A user's folder of clips of these names alone looks the same: no file says whose they are.) A desktop's
    hidden .DS_Store, which xdc index skips, is neither foreign nor unlisted, and stays."""
    out = tmp_path / "killed"
    (out / "videos").mkdir(parents=True)
    (out / ".DS_Store").write_bytes(b"Finder")
    (out / "videos" / ".DS_Store").write_bytes(b"Finder")
    (out / "videos" / "000000.mp4").write_bytes(b"a clip written before the kill")
    (out / "videos" / ".000001.partial.mp4").write_bytes(b"half a clip")
    (out / "labels.csv.tmp").write_text("path,label,audio_label,offscreen\r\nvideos/000000.mp4")
    (out / ".synthetic.json.tmp4242").write_text("{")
    labels = make_synthetic(out, videos=2, classes=2, seed=0, cfg=SMALL, workers=1)
    assert [r["path"] for r in _rows(labels)] == ["videos/000000.mp4", "videos/000001.mp4"]
    assert sorted(p.name for p in (out / "videos").iterdir()) == [".DS_Store", "000000.mp4", "000001.mp4"]
    assert _decode(out / "videos" / "000000.mp4")[0].shape == (16, 32, 32, 3)
    assert (out / ".DS_Store").read_bytes() == b"Finder" and capsys.readouterr().err == ""


def test_rerun_beside_the_manifest_of_readmes_quick_start(tmp_path, capsys):
    """README's quick start writes the manifest into make-synthetic's folder: a re-run there is no user's folder."""
    out = tmp_path / "synth"
    run = ["make-synthetic", str(out), "--videos", "2", "--classes", "2", "--workers", "1",
           "--set", "synthetic.width=32", "--set", "synthetic.height=32", "--set", "synthetic.seconds=1"]  # fmt: skip
    assert main(run) == 0
    assert main(["index", str(out / "videos"), "--labels", str(out / "labels.csv"), "--out", str(out / "manifest.csv"),
                 "--workers", "1"]) == 0  # fmt: skip
    manifest = (out / "manifest.csv").read_bytes()
    assert main(run) == 0
    assert main([*run, "--seed", "1"]) == 0
    assert capsys.readouterr().out.endswith(f"wrote 2 clips of 2 classes and {out / 'labels.csv'}\n")
    assert (out / "manifest.csv").read_bytes() == manifest
