"""Datasets over generated media: clip sampling, missing-audio policy, failure handling through a real loader."""

import csv
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import gray_frames, synthetic_manifest
from xdc.config import DataConfig, load_config
from xdc.data.datasets import EvalClips, TrainClips, collate_clips, make_loader, with_waits
from xdc.data.encode import write_av
from xdc.data.failures import FailureLog, TooManyFailures
from xdc.data.manifest import Manifest, read_rows, read_videos, run_videos, write_rows, write_videos
from xdc.data.transforms import VIDEO_STD, DeviceCrops, NormalizeVideo
from xdc.errors import UserError


def small_cfg(**kw) -> DataConfig:
    cfg = DataConfig(**kw)
    cfg.clip.frames, cfg.clip.fps, cfg.clip.crop, cfg.clip.decode_short_side = 4, 8.0, 24, 32
    cfg.augment.scale_min, cfg.augment.scale_max = 32, 40
    return cfg


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Three good audio-visual files, one without audio, one that is garbage."""
    root = tmp_path_factory.mktemp("media")
    rows = []
    for i in range(3):
        path = root / f"av{i}.mp4"
        write_av(path, gray_frames(48, 32, 48), 16, 0.1 * np.ones(48000, np.float32), 16000)
        rows.append(dict(path=str(path), status="ok", duration_s="3.0", has_audio="1", label=f"c{i % 2}"))
    silent = root / "silent.mp4"
    write_av(silent, gray_frames(48, 32, 48), 16, None)
    rows.append(dict(path=str(silent), status="no_audio", duration_s="3.0", has_audio="0", label="c0"))
    junk = root / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    rows.append(dict(path=str(junk), status="ok", duration_s="3.0", has_audio="1", label="c1"))  # lies: broke later
    return rows


def test_train_item_shapes_and_seeded_draws_are_reproducible(collection):
    ds = TrainClips(Manifest.from_rows(collection[:3]), small_cfg())
    a, b, c = ds[(1, 7)], ds[(1, 7)], ds[(1, 8)]
    assert a["video"].shape == (3, 4, 24, 24) and a["audio"].shape == (1, 40, 50)
    assert a["index"] == 1 and a["label"] == 1 and 0 <= a["start"] <= 3.0 - 0.5
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"]) and a["start"] == b["start"]
    assert a["start"] != c["start"]


def test_a_training_clip_is_retried_where_the_sound_is(tmp_path):
    """A 5 s video whose sound lasts its first second or its last (xdc index takes the pictures' length): a window
    without sound is retried where the sound is, so every draw gives a clip with sound. Until 2026-12-03 the
    retries went anywhere, and about a quarter of the items failed all four tries."""
    tone = 0.1 * np.ones(16000, np.float32)
    write_av(tmp_path / "early.mp4", gray_frames(80, 32, 48), 16, tone, 16000)  # the sound's first second only
    write_av(tmp_path / "late.mp4", gray_frames(80, 32, 48), 16, tone, 16000, audio_start=4.0)  # its last
    rows = [dict(path=str(tmp_path / name), status="ok", duration_s="5.0", has_audio="1") for name in
            ("early.mp4", "late.mp4")]  # fmt: skip
    cfg = small_cfg(retries=3)
    ds = TrainClips(Manifest.from_rows(rows), cfg)
    span = cfg.clip.audio_span  # 0.5 s
    for i, sound in ((0, (0.0, 1.0)), (1, (4.0, 5.0))):
        items = [ds[(i, seed)] for seed in range(40)]
        assert not [item["failure"]["reason"] for item in items if "failure" in item]
        assert all(sound[0] - span < item["start"] < sound[1] for item in items)  # each clip holds some sound
        assert all(item["audio"].std() > 0 for item in items)
    assert ds[(0, 3)]["start"] == ds[(0, 3)]["start"]  # the retries are the seed's too


def sound_at_one_end(folder: Path) -> list[dict]:
    """Rows of two 5 s videos whose sound lasts their first second (early.mp4) or their last (late.mp4), and one whose
    sound covers them (whole.mp4); xdc index takes the pictures' length."""
    tone = 0.1 * np.ones(16000, np.float32)
    write_av(folder / "early.mp4", gray_frames(80, 32, 48), 16, tone, 16000)
    write_av(folder / "late.mp4", gray_frames(80, 32, 48), 16, tone, 16000, audio_start=4.0)
    write_av(folder / "whole.mp4", gray_frames(80, 32, 48), 16, 0.1 * np.ones(80000, np.float32), 16000)
    return [dict(path=str(folder / name), status="ok", duration_s="5.0", has_audio="1") for name in
            ("early.mp4", "late.mp4", "whole.mp4")]  # fmt: skip


@pytest.mark.parametrize("modalities", [("video", "audio"), ("audio",)], ids=["audio-visual", "audio"])
def test_eval_clips_that_miss_the_sound_are_placed_within_it(tmp_path, modalities):
    """Evaluation clips of a video whose sound ends early or starts late are read where the sound is, spread over
    it, as a training clip's retries are: until 2026-12-03 they failed, so the centred clip of each such video, its
    one clip in a pretraining round's extraction, left it out of the clustering."""
    cfg = small_cfg()
    manifest = Manifest.from_rows(sound_at_one_end(tmp_path))
    span = cfg.clip.audio_span  # 0.5 s; the latest start is 4.5 s
    for clips in (1, 5):
        ds = EvalClips(manifest, cfg, clips=clips, modalities=modalities)
        batches = list(make_loader(ds, 4, 0))  # the clips of a video together, as a loader asks for them
        assert not [f["reason"] for batch in batches for f in batch["failures"]]
        starts = torch.cat([batch["start"] for batch in batches]).view(3, clips).numpy()
        assert all(batch["audio"].std(dim=(1, 2, 3)).min() > 0 for batch in batches)  # every clip holds sound
        assert starts[0].max() <= 1.0 - span + 1e-6 and starts[1].min() >= 4.0 - 0.1  # AAC's priming: 64 ms
        if clips == 5:  # spread over the sound: evenly, where the first (or last) clip lay in it already
            np.testing.assert_allclose(starts[0], np.linspace(0, 1.0 - span, 5), atol=1e-6)
            np.testing.assert_allclose(np.diff(starts[1]), np.diff(starts[1]).mean(), atol=1e-6)
            assert starts[1][-1] == pytest.approx(4.5)
        np.testing.assert_allclose(starts[2], [2.25] if clips == 1 else np.linspace(0, 4.5, 5))  # as before
        again = EvalClips(manifest, cfg, clips=clips, modalities=modalities)
        assert [again[k]["start"] for k in range(len(again))] == starts.ravel().tolist()  # placed the same each time


def test_clips_of_a_segment_go_where_the_sound_is_in_the_segment(tmp_path):
    """A segment 0.8-2.8 s of a file whose sound ends at 1 s (a CSV's window, finetuned on): its clips' starts count
    from the segment's start, the sound's from the file's. Until 2026-12-03 a training clip's retries went up to
    0.5 s into the segment (the sound's end less a span, taken from the file's start), past the sound, and failed
    there."""
    manifest = Manifest.from_rows(sound_at_one_end(tmp_path)[:1])
    manifest.offsets[0], manifest.durations[0] = 0.8, 2.0
    cfg = small_cfg(retries=3)
    train = TrainClips(manifest, cfg, modalities=("audio",))
    items = [train[(0, seed)] for seed in range(40)]
    assert not [item["failure"]["reason"] for item in items if "failure" in item]
    assert all(item["start"] < 0.2 for item in items)  # each holds some of the sound's last 0.2 s
    for clips in (1, 3):
        ds = EvalClips(manifest, cfg, clips=clips, modalities=("audio",))
        assert [ds[k]["start"] for k in range(clips)] == [0.0] * clips  # a span longer than the sound: its start


def test_sliding_windows_that_miss_the_sound_keep_their_time_and_fail(tmp_path):
    """A window of a sequence stands for its time: one past the sound's end is not moved onto the sound."""
    ds = EvalClips(Manifest.from_rows(sound_at_one_end(tmp_path)[:1]), small_cfg(), stride=1.0, modalities=("audio",))
    items = [ds[k] for k in range(len(ds))]
    assert [item["start"] for item in items[:2]] == [0.0, 1.0]  # the second holds the end of the sound's last frame
    assert [item["failure"]["reason"] for item in items[2:]] == [
        f"the clip at {t}.00s starts after the sound's end at 1.00s" for t in (2, 3, 4)]


def test_raw_video_is_the_same_clip_normalised_later(collection):
    # The training loop ships uint8 clips and normalises them on its device: the same numbers as normalising here.
    manifest = Manifest.from_rows(collection[:3])
    for dataset, key in [(TrainClips, (2, 11)), (EvalClips, 2)]:
        raw, ready = dataset(manifest, small_cfg(), raw_video=True)[key], dataset(manifest, small_cfg())[key]
        assert raw["video"].dtype == torch.uint8 and raw["video"].shape == ready["video"].shape == (3, 4, 24, 24)
        assert raw["video"].float().std() > 0  # not a blank clip: the comparison means something
        assert torch.equal(NormalizeVideo()(raw["video"]), ready["video"])
        assert torch.equal(raw["audio"], ready["audio"]) and raw["start"] == ready["start"]
    batch = collate_clips([TrainClips(manifest, small_cfg(), raw_video=True)[(i, 3)] for i in range(3)])
    ready = collate_clips([TrainClips(manifest, small_cfg())[(i, 3)] for i in range(3)])
    assert torch.equal(NormalizeVideo()(batch["video"]), ready["video"])  # batches too (B x C x T x H x W)


def test_device_crops_serve_the_clips_the_workers_crop(tmp_path):
    # data.crops_on=device: workers send the part of the frames a crop samples, the consumer crops a batch at once.
    yy, xx = np.mgrid[0:32, 0:48]
    pattern = np.stack([4 * xx + 2 * yy, 255 - 5 * xx, 7 * yy], axis=-1)  # smooth in space: survives H.264
    frames = np.stack([(pattern + 8 * t) % 256 for t in range(24)]).astype(np.uint8)
    write_av(tmp_path / "a.mp4", frames, 8, 0.1 * np.ones(48000, np.float32), 16000, crf=10)
    manifest = Manifest.from_rows([dict(path=str(tmp_path / "a.mp4"), status="ok", duration_s="3.0", has_audio="1")])
    cfg = small_cfg()  # frames decoded at short side 32 = scale_min: every resize enlarges
    on_device = TrainClips(manifest, cfg, raw_video=True, device_crops=True)
    in_workers = TrainClips(manifest, cfg, raw_video=True)
    keys = [(0, seed) for seed in range(12)]
    parts, cropped = collate_clips([on_device[k] for k in keys]), collate_clips([in_workers[k] for k in keys])
    assert parts["video"].shape == (12, 4, 26, 26, 3) and parts["video_grid"].shape == (12, 4)
    assert torch.equal(parts["audio"], cropped["audio"]) and torch.equal(parts["start"], cropped["start"])
    got, want = DeviceCrops(24)(parts["video"], parts["video_grid"]), NormalizeVideo()(cropped["video"])
    torch.testing.assert_close(got, want, rtol=0, atol=1.01 / 255 / min(VIDEO_STD))  # the workers' uint8 rounding
    assert len({round(float(x), 3) for x in got.sum((1, 2, 3, 4))}) > 6  # the draws differ: scales, crops, flips
    audio = 40 * 50 * 4
    assert (on_device.item_bytes(), in_workers.item_bytes()) == (4 * 26 * 26 * 3 + audio, 3 * 4 * 24 * 24 + audio)
    with pytest.raises(ValueError, match="device_crops needs"):
        TrainClips(manifest, cfg, device_crops=True)  # normalised float clips


def test_a_manifest_path_or_the_whole_config_is_a_type_error_naming_what_to_give(collection, tmp_path):
    # (an AttributeError: 'str' object has no attribute 'subset', 'Config' object has no attribute 'missing_audio')
    manifest = Manifest.from_rows(collection[:3])
    manifest.save(tmp_path / "manifest.csv")
    with pytest.raises(TypeError, match=r"manifest must be a Manifest \(.*Manifest.load\(path\)\), not str"):
        TrainClips(str(tmp_path / "manifest.csv"), small_cfg())
    with pytest.raises(TypeError, match=r"cfg must be the data settings, a DataConfig \(cfg.data of .*\), not Config"):
        EvalClips(manifest, load_config(None, preset="tiny"), clips=1)


def test_eval_clips_are_evenly_spaced_and_cover_every_video(collection):
    ds = EvalClips(Manifest.from_rows(collection[:3]), small_cfg(), clips=5)
    assert len(ds) == 15
    starts = [ds[k]["start"] for k in range(5)]
    np.testing.assert_allclose(starts, np.linspace(0, 2.5, 5))
    assert [ds[k]["index"] for k in range(0, 15, 5)] == [0, 1, 2]
    assert EvalClips(Manifest.from_rows(collection[:1]), small_cfg(), clips=1)[0]["start"] == pytest.approx(1.25)


def test_a_video_no_longer_than_a_clip_gives_one_clip_not_copies_of_one(collection):
    """A 1 s spoken word, a 1 s clip: its N clips were N copies, counted N times (until 2026-12-01)."""
    manifest = Manifest.from_rows(collection[:3])
    manifest.durations[1] = 0.5  # the span of small_cfg's clips (4 frames at 8 fps): one place for a clip
    ds = EvalClips(manifest, small_cfg(), clips=4)
    assert len(ds) == 9 and [ds[k]["index"] for k in range(9)] == [0, 0, 0, 0, 1, 2, 2, 2, 2]
    assert [ds[k]["start"] for k in range(9)] == pytest.approx([0, 2.5 / 3, 5 / 3, 2.5, 0, 0, 2.5 / 3, 5 / 3, 2.5])
    assert [ds[k]["clip"] for k in range(5)] == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_a_batch_of_eval_clips_opens_each_video_once_where_that_reads_the_same(collection, modality, monkeypatch):
    """The DataLoader asks for a batch at once: a video's clips in it share one open of its file when only pictures
    are read (read_clips), and the items are those read one by one, the broken file's failures included."""
    from xdc.data import decode

    opened = []
    real_open = decode._open
    monkeypatch.setattr(decode, "_open", lambda path: opened.append(path) or real_open(path))
    ds = EvalClips(Manifest.from_rows(collection), small_cfg(missing_audio="zeros"), clips=3, modalities=(modality,))
    alone = [ds[k] for k in range(len(ds))]
    opened.clear()
    batch = ds.__getitems__(list(range(len(ds))))
    # junk.mp4 fails to open, once for all its clips; the silent file's sound is zeros, never read
    assert len(opened) == (4 + 1 if modality == "video" else 3 * 3 + 1)
    assert [sorted(b) for b in batch] == [sorted(a) for a in alone]
    for a, b in zip(alone, batch):
        for key, value in a.items():
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key
    assert sum("failure" in b for b in batch) == 3  # junk.mp4's clips


def test_missing_audio_policy(collection):
    manifest = Manifest.from_rows(collection[:4])
    skip = TrainClips(manifest, small_cfg(missing_audio="skip"))
    assert len(skip) == 3
    zeros = TrainClips(manifest, small_cfg(missing_audio="zeros"))
    assert len(zeros) == 4
    item = zeros[(3, 0)]
    assert torch.all(item["audio"] == item["audio"].min())  # log of the floor: silence
    assert len(TrainClips(manifest, small_cfg(), modalities=("video",))) == 4  # video-only methods keep it


def test_a_broken_file_is_retried_then_reported_never_substituted(collection):
    manifest = Manifest.from_rows(collection)
    ds = TrainClips(manifest, small_cfg(missing_audio="zeros", retries=2))
    junk = len(manifest) - 1
    item = ds[(junk, 3)]
    assert set(item) == {"failure"}
    assert item["failure"]["path"].endswith("junk.mp4") and item["failure"]["reason"]

    batches = list(make_loader(ds, batch_size=5, workers=2, shuffle=False))
    assert len(batches) == 1
    batch = batches[0]
    assert batch["size"] == 5 and batch["video"].shape[0] == 4
    assert sorted(batch["index"].tolist()) == [0, 1, 2, 3]  # the junk file is absent, not replaced
    assert [f["path"] for f in batch["failures"]] == [manifest.path(junk)]


def test_failure_log_stops_the_run_and_saves_the_list(collection, tmp_path):
    manifest = Manifest.from_rows(collection)
    ds = TrainClips(manifest, small_cfg(missing_audio="zeros", retries=0))
    junk = len(manifest) - 1
    log = FailureLog(max_fraction=0.25, min_items=5)
    log.update(collate_clips([ds[(i, 0)] for i in range(5)]))  # 1 of 5 failed: 20%, tolerated
    log.save(tmp_path / "skipped.csv")
    rows = list(csv.DictReader(open(tmp_path / "skipped.csv")))
    assert [(r["path"], r["failures"]) for r in rows] == [(manifest.path(junk), "1")]
    with pytest.raises(TooManyFailures, match="2 of 7 clips failed"):
        log.update(collate_clips([ds[(junk, 1)], ds[(0, 1)]]))


def test_all_failed_batch_still_collates(collection):
    ds = TrainClips(Manifest.from_rows(collection[4:]), small_cfg(retries=0))
    batch = collate_clips([ds[(0, 0)], ds[(0, 1)]])
    assert batch["index"].numel() == 0 and len(batch["failures"]) == 2 and "video" not in batch


def test_audio_only_files_serve_audio_datasets_only(tmp_path):
    import wave

    path = tmp_path / "tone.wav"
    samples = (0.5 * np.sin(2 * np.pi * 440 * np.arange(12000) / 8000) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:  # 8 kHz 16-bit, like FSDD
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(samples.tobytes())
    manifest = Manifest.from_rows([dict(path=str(path), status="ok", duration_s="1.5", has_audio="1", width="0")])
    audio = TrainClips(manifest, small_cfg(), modalities=("audio",))
    item = audio[(0, 0)]
    assert item["audio"].shape == (1, 40, 50)
    peak_band = item["audio"][0].mean(dim=1).argmax().item()
    assert 3 <= peak_band <= 12  # 440 Hz sits low among 40 mel bands up to 8 kHz
    assert len(TrainClips(manifest, small_cfg())) == 0  # no pictures to decode


def test_sliding_window_and_segments(collection):
    manifest = Manifest.from_rows(collection[:2])
    windows = EvalClips(manifest, small_cfg(), stride=1.0)  # 3 s files, 0.5 s clips: starts 0, 1, 2
    assert len(windows) == 6
    assert [windows[k]["start"] for k in range(3)] == [0.0, 1.0, 2.0] and windows[4]["clip"] == 1

    # A row standing for a segment (e.g. a word): clips come from inside [offset, offset + duration).
    segment = manifest.subset(np.array([True, False]))
    segment.offsets[:] = 2.0
    segment.durations[:] = 1.0
    whole = EvalClips(manifest.subset(np.array([True, False])), small_cfg(missing_audio="zeros"), clips=1)
    inside = EvalClips(segment, small_cfg(missing_audio="zeros"), clips=1)
    assert inside[0]["start"] == pytest.approx(0.25)  # relative to the segment
    # The gray level encodes the frame index: the segment's clip shows later frames than the file's centre.
    assert inside[0]["video"].mean() != whole[0]["video"].mean()


def test_a_manifest_is_read_in_chunks_as_one(tmp_path, monkeypatch):
    """Manifest.load reads a few rows at a time (65M rows as dicts would not fit in memory): labels first seen in
    later chunks and blocks, classes sorted across all of them, unusable rows and short rows anywhere."""
    monkeypatch.setattr("xdc.data.manifest._CHUNK_ROWS", 2)
    monkeypatch.setattr("xdc.data.manifest._CHUNKS_PER_BLOCK", 3)  # 4 chunks: a block of 3, then 1
    path = tmp_path / "videos.csv"
    path.write_text(
        "path,status,reason,duration_s,has_audio,width,label\n"
        "b.mp4,ok,,2.5,1,64,zebra\n"
        '"c, d.mp4",no_audio,"no audio stream",1,0,64,\n'  # a comma in a quoted path; no label
        "e.mp4,error,broken,0,0,0,yak\n"  # unusable: its label is not a class
        "f.wav,ok,,3,1,0,ant\n"  # audio only
        "g.mp4,ok,,0,1,64,ant\n"  # zero duration: unusable
        "h.mp4,ok,,4,True,64,zebra\n"
        "i.mp4,ok\n"  # a short row: no duration, unusable
        "path,status,reason,duration_s,has_audio,width,label\n"  # a second manifest joined whole: its header is
        "j.mp4,error,cannot open,,0,,\n"  # unusable, as are the numbers of unusable rows
    )
    monkeypatch.chdir(tmp_path)  # relative paths are taken against the current folder, and kept absolute
    m = Manifest.load(path)
    assert m.paths.tolist() == [f"{tmp_path}/{name}".encode() for name in ("b.mp4", "c, d.mp4", "f.wav", "h.mp4")]
    assert m.classes == ("ant", "zebra") and m.labels.tolist() == [1, -1, 0, 1]
    assert m.durations.tolist() == [2.5, 1.0, 3.0, 4.0] and m.offsets.tolist() == [0.0] * 4
    assert m.has_audio.tolist() == [True, False, True, True] and m.has_video.tolist() == [True, True, False, True]
    with_audio = Manifest.load(path, require_audio=True)
    assert with_audio.paths.tolist() == m.paths[[0, 2, 3]].tolist() and with_audio.labels.tolist() == [1, 0, 1]
    lines = path.read_text().splitlines()
    lines[6] = "h.mp4,ok,,4 s,True,64,zebra"  # a hand edit in a usable row: named with its line, in the third chunk
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"^{path} line 7: duration_s '4 s' is not a finite number$"):
        Manifest.load(path)
    lines[6] = "h.mp4,ok,,4,True,wide,zebra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"^{path} line 7: width 'wide' is not a finite number$"):
        Manifest.load(path)
    for duration in ("inf", "nan"):  # until 2026-12-01: the sampler's OverflowError; the row dropped
        lines[6] = f"h.mp4,ok,,{duration},True,64,zebra"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(UserError, match=f"^{path} line 7: duration_s '{duration}' is not a finite number$"):
            Manifest.load(path)
    for flag, audio in (("TRUE", True), ("1.0", True), (" false", False)):  # pandas' True; 1.0 in a float column
        lines[6] = f"h.mp4,ok,,4,{flag},64,zebra"
        path.write_text("\n".join(lines) + "\n")
        assert Manifest.load(path).has_audio[-1] == audio
    lines[6] = "h.mp4,ok,,4,yes,64,zebra"  # until 2026-12-02: read as no audio, dropped from audio runs unsaid
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"^{path} line 7: has_audio 'yes' is not 1/0 or true/false$"):
        Manifest.load(path)
    path.write_text("path,status,duration_s\nb.mp4,ok,2\n")
    with pytest.raises(UserError, match="missing columns: has_audio"):
        Manifest.load(path)


def test_a_dataset_keeps_the_manifest_itself_when_it_drops_no_row(collection):
    """No copy of every path per dataset (5.5 GB at 65M videos): a copy only where rows are dropped."""
    everything = Manifest.from_rows(collection[:3])  # audio and video in every row
    assert TrainClips(everything, small_cfg()).manifest is everything
    assert EvalClips(everything, small_cfg(), clips=1).manifest is everything
    mixed = Manifest.from_rows(collection[:4])  # one without audio, dropped by missing_audio=skip
    kept = TrainClips(mixed, small_cfg(missing_audio="skip")).manifest
    assert kept is not mixed and kept.paths.tolist() == mixed.paths[:3].tolist()
    assert EvalClips(kept, small_cfg(missing_audio="skip"), clips=1).manifest is kept


def test_a_saved_manifest_opens_memory_mapped_and_equal(collection, tmp_path):
    manifest = Manifest.from_rows(collection)
    manifest.save(tmp_path / "videos")
    manifest.save(tmp_path / "videos")  # replaces the folder whole
    opened = Manifest.open(tmp_path / "videos")
    assert opened.classes == manifest.classes == ("c0", "c1")
    for name in ("paths", "durations", "offsets", "has_audio", "has_video", "labels"):
        saved, read = getattr(manifest, name), getattr(opened, name)
        assert isinstance(read, np.memmap) and read.dtype == saved.dtype and (read == saved).all()
    assert not (tmp_path / "videos.tmp").exists()


def test_a_runs_videos_csv_cut_short_by_a_kill_is_not_left_half_written(collection, tmp_path, monkeypatch):
    """4 GB at 65M videos, written in place until 2026-12-01: a kill in it left half a list, which a resume (its
    videos/ already whole) kept."""
    import xdc.data.manifest as manifest_module

    def killed(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest_module, "decode_paths", killed)  # after the header, before the first row
    with pytest.raises(KeyboardInterrupt):
        write_videos(tmp_path / "videos.csv", Manifest.from_rows(collection))
    assert list(tmp_path.iterdir()) == []


def test_a_runs_videos_are_its_arrays_else_its_csv(collection, tmp_path):
    assert run_videos(tmp_path) is None  # not a run folder
    manifest = Manifest.from_rows(collection)
    write_videos(tmp_path / "videos.csv", manifest)
    from_csv = run_videos(tmp_path)  # a run from before runs kept videos/
    assert not isinstance(from_csv.paths, np.memmap) and from_csv.paths.tolist() == manifest.paths.tolist()
    manifest.save(tmp_path / "videos")
    mapped = run_videos(tmp_path)
    assert isinstance(mapped.paths, np.memmap) and isinstance(mapped.labels, np.memmap)
    for videos in (from_csv, mapped):
        assert videos.classes == manifest.classes and videos.labels.tolist() == manifest.labels.tolist()
    (tmp_path / "videos" / "classes.json").write_text("{not json")  # damaged: the readable copy says the same
    assert run_videos(tmp_path).labels.tolist() == manifest.labels.tolist()


def test_the_runs_videos_are_read_as_arrays_across_chunks(tmp_path, monkeypatch):
    """videos.csv of a large run (65M rows as dicts would be about 20 GB): labels first seen in later chunks,
    classes sorted across all of them, unlabelled rows and short rows."""
    monkeypatch.setattr("xdc.data.manifest._CHUNK_ROWS", 3000)
    monkeypatch.setattr("xdc.data.manifest._CHUNKS_PER_BLOCK", 1)
    path = tmp_path / "videos.csv"
    names = ["b", "", "a", "c, d"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([f"/v/{i}.mp4", names[i % 4] if i < 9000 else "late"] for i in range(10_000))
        f.write("/v/short.mp4\n")  # no label cell
    videos = read_videos(path)
    assert len(videos) == 10_001 and videos.classes == ("a", "b", "c, d", "late")
    assert [videos.label(i) for i in range(4)] == ["b", "", "a", "c, d"] and videos.label(9_999) == "late"
    assert videos.path(9_999) == "/v/9999.mp4" and videos.label(10_000) == "" and videos.labels.dtype == np.int32
    again = tmp_path / "again.csv"
    write_videos(again, videos)  # what it reads, it writes back
    assert again.read_text() == path.read_text().replace("/v/short.mp4\n", "/v/short.mp4,\n")


def test_datasets_keep_nothing_per_video_beyond_the_manifest():
    """At 65M videos every 8-byte array per video is 520 MB per rank (per-video latest starts, per-clip video
    numbers and starts were five of them)."""
    n = 200_000
    manifest = Manifest(
        paths=np.full(n, b"/v/x.mp4"), durations=np.linspace(0.5, 20, n), offsets=np.zeros(n),
        has_audio=np.ones(n, bool), has_video=np.ones(n, bool), labels=np.full(n, -1, np.int32), classes=(),
    )  # fmt: skip
    tracemalloc.start()
    datasets = TrainClips(manifest, small_cfg()), EvalClips(manifest, small_cfg(), clips=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n, f"{peak} bytes for {n} videos"  # under a byte per video
    assert len(datasets[1]) == n and datasets[1].latest_start(n - 1) == pytest.approx(20 - 0.5)


def test_with_waits_gives_the_time_spent_waiting_for_each_batch():
    def batches():
        yield "ready"
        time.sleep(0.5)  # a loader that has not finished the next batch
        yield "late"

    got = list(with_waits(batches()))
    assert [batch for batch, _ in got] == ["ready", "late"]
    assert got[0][1] < 0.25 and got[1][1] >= 0.5  # (0.25: room for a loaded machine's pause)


FORK_SERVER = """
import multiprocessing, os, sys
from pathlib import Path
import torch
from xdc.data.datasets import make_loader
multiprocessing.set_start_method("forkserver")
batches = iter(make_loader(torch.utils.data.TensorDataset(torch.arange(4)), 2, 1))  # starts the fork server
children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "stat").read_text().rsplit(")", 1)[1]
            .split()[1] == str(os.getpid())]
server = next(p for p in children if b"forkserver" in (p / "cmdline").read_bytes())
maps = (server / "maps").read_text()
print("libtorch" in maps, "libavcodec" in maps)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the fork server's memory map in /proc")
def test_the_fork_server_has_imported_torch_and_the_decoder_before_it_forks_loader_workers():
    """Python 3.14's default on Linux: each worker imported torch and xdc again, 2 s a loader on a 2-core CPU,
    where it is forked from a server that has (BENCHMARKS.md: xdc demo 134 s, against fork's 37; now 46)."""
    done = subprocess.run([sys.executable, "-c", FORK_SERVER], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


def _clips(manifest: Manifest, log: FailureLog | None = None) -> tuple[dict, list]:
    """A pass of two clips per video through a loader: the clips' pictures by (video, clip) and the failure records;
    the batches counted into ``log``."""
    loader = make_loader(EvalClips(manifest, small_cfg(), clips=2), batch_size=4, workers=0)
    clips, failures = {}, []
    for batch in loader:
        if log is not None:
            log.update(batch)
        failures += batch["failures"]
        if "clip" in batch:
            places = zip(batch["index"].tolist(), batch["clip"].tolist())
            clips.update({place: video for place, video in zip(places, batch["video"])})
    return clips, failures


def test_a_file_replaced_since_indexing_fails_with_a_reason_and_is_listed(tmp_path, monkeypatch):
    """A file replaced in place after xdc index (another clip, of another class, as make-synthetic writes into the
    same folder with other settings) was read with the indexed file's duration and label, unsaid, until
    2026-12-02: now its size, unlike the indexed one, fails its items, and the other files read as before."""
    from xdc.data import decode

    manifest = Manifest.load(synthetic_manifest(tmp_path, 6, 2, seed=0))
    assert manifest.sizes.dtype == np.int64 and (manifest.sizes > 0).all()
    before, _ = _clips(manifest)
    replaced, other = manifest.path(2), manifest.path(3)
    old, new = os.path.getsize(replaced), os.path.getsize(other)
    assert old == manifest.sizes[2] and old != new
    with open(replaced, "r+b") as f:  # in place: the same file (inode), other bytes
        f.truncate(0)
        f.write(Path(other).read_bytes())
    reason = f"its size changed since xdc index ({old} -> {new} bytes): run xdc index again"
    log = FailureLog(max_fraction=0.5, min_items=1)
    after, failures = _clips(manifest, log)
    assert [(f["index"], f["path"], f["reason"]) for f in failures] == [(2, replaced, reason)] * 2
    assert after.keys() == before.keys() - {(2, 0), (2, 1)}
    assert all(torch.equal(after[key], before[key]) for key in after)  # the other files' clips as before
    log.save(tmp_path / "skipped.csv")
    assert list(csv.reader(open(tmp_path / "skipped.csv"))) == [["path", "failures", "reason"], [replaced, "2", reason]]
    opened = []
    real_open = decode._open
    monkeypatch.setattr(decode, "_open", lambda path: opened.append(path) or real_open(path))
    item = TrainClips(manifest, small_cfg(retries=3))[(2, 5)]  # a training item: no other window of it is tried
    assert item["failure"]["reason"] == reason and opened == [replaced]


def test_a_file_cut_short_since_indexing_so_that_it_no_longer_opens_fails_with_its_change(tmp_path):
    """A copy interrupted, a download cut: the file no longer opens, and its reason says it changed (until
    2026-12-03 it was FFmpeg's "Invalid data found when processing input", and every retry opened it again)."""
    from xdc.data import decode

    manifest = Manifest.load(synthetic_manifest(tmp_path, 4, 2, seed=0))
    cut = manifest.path(1)
    os.truncate(cut, 1000)
    reason = f"its size changed since xdc index ({manifest.sizes[1]} -> 1000 bytes): run xdc index again"
    with pytest.raises(decode.DecodeError, match="Invalid data"):  # unchecked, it does not open
        decode.read_clip(cut, 0.0, small_cfg().clip)
    item = TrainClips(manifest, small_cfg(retries=3))[(1, 5)]
    assert item["failure"]["reason"] == reason
    assert [str(e) for e in decode.read_clips(cut, [0.0, 0.5], small_cfg().clip, size=int(manifest.sizes[1]))] == [
        reason, reason]  # fmt: skip


def test_a_file_removed_since_indexing_fails_with_a_reason_in_xdc_index_words(tmp_path, monkeypatch):
    """Deleted after xdc index: its reason reads as the others (until 2026-12-03 it was the exception's
    "FileNotFoundError: No such file or directory"), and, as a file replaced, no other window of it is tried."""
    from xdc.data import decode

    manifest = Manifest.load(synthetic_manifest(tmp_path, 4, 2, seed=0))
    gone = manifest.path(1)
    os.remove(gone)
    reason = "file not found (removed since xdc index?)"
    opened = []
    real_open = decode._open
    monkeypatch.setattr(decode, "_open", lambda path: opened.append(path) or real_open(path))
    item = TrainClips(manifest, small_cfg(retries=3))[(1, 5)]
    assert item["failure"]["reason"] == reason and opened == [gone]
    assert [str(e) for e in decode.read_clips(gone, [0.0, 0.5], small_cfg().clip)] == [reason, reason]


def test_a_collection_copied_with_new_mtimes_reads_as_before(tmp_path):
    """cp or rsync without -t (to node-local scratch, another machine) gives every file a new mtime and the same
    bytes: no file fails, as it would if the check compared mtimes."""
    path = synthetic_manifest(tmp_path, 6, 2, seed=0)
    manifest = Manifest.load(path)
    before, _ = _clips(manifest)
    data = tmp_path / "data"
    shutil.copytree(data, tmp_path / "copy", copy_function=shutil.copyfile)  # new files, mtimes of now
    shutil.rmtree(data)
    (tmp_path / "copy").rename(data)
    later = time.time() + 86_400
    for i in range(len(manifest)):
        os.utime(manifest.path(i), (later, later))
    assert all(int(r["mtime"].replace(".", "")) != os.stat(r["path"]).st_mtime_ns for r in read_rows(path))
    log = FailureLog(max_fraction=0.0, min_items=1)
    after, failures = _clips(manifest, log)
    assert failures == [] and log.failed == 0 and after.keys() == before.keys()
    assert all(torch.equal(after[key], clip) for key, clip in before.items())


def test_a_manifest_without_sizes_reads_the_files_unchecked(tmp_path):
    """Manifests written before the size column, rows whose size is empty, and runs whose videos/ were saved before
    2026-12-02 are not checked; a size that is not a whole number of bytes is named."""
    path = synthetic_manifest(tmp_path, 3, 2, seed=0)
    rows = read_rows(path)
    rows[1]["size"] = ""
    rows[2]["size"] = rows[2]["size"] + ".0"  # pandas' way with a column that has gaps
    write_rows(path, rows)
    manifest = Manifest.load(path)
    assert manifest.sizes.tolist() == [int(rows[0]["size"]), -1, int(rows[2]["size"][:-2])]
    with open(manifest.path(1), "ab") as f:
        f.write(b"\0" * 100)  # trailing bytes: the file still decodes
    assert _clips(manifest)[1] == []
    old = tmp_path / "old.csv"
    old.write_text("\n".join(",".join(line.split(",")[:12]) for line in path.read_text().splitlines()) + "\n")
    assert (Manifest.load(old).sizes == -1).all()
    manifest.save(tmp_path / "videos")
    (tmp_path / "videos" / "sizes.npy").unlink()  # a run's videos/ saved before sizes were kept
    opened = Manifest.open(tmp_path / "videos")
    assert opened.sizes.tolist() == [-1, -1, -1] and opened.paths.tolist() == manifest.paths.tolist()
    assert run_videos(tmp_path) is not None
    rows[0]["size"] = "12kB"
    write_rows(path, rows)
    with pytest.raises(UserError, match=r"line 2: size '12kB' is not a whole number of bytes"):
        Manifest.load(path)
    rows[0]["size"], rows[2]["size"] = "", "-5"
    write_rows(path, rows)
    with pytest.raises(UserError, match=r"line 4: size '-5' is not a whole number of bytes"):
        Manifest.load(path)


def test_a_loader_without_a_sampler_draws_training_clips_from_its_seed_whatever_the_workers(collection):
    """The README's loop: make_loader(TrainClips, ..., shuffle=True). Until 2026-12-03 a bare index drew its clip
    from torch's global RNG without workers (two loaders of one seed differed), and from the RNG of the worker that
    read it (the clips changed with the number of workers)."""
    ds = TrainClips(Manifest.from_rows(collection[:3]), small_cfg())

    def two_passes(workers: int, seed: int = 0) -> list[tuple[int, float, torch.Tensor]]:
        loader = make_loader(ds, 2, workers, shuffle=True, seed=seed)
        return [(int(i), float(s), v) for _ in range(2) for b in loader
                for i, s, v in zip(b["index"], b["start"], b["video"])]  # fmt: skip

    first = two_passes(0)
    for other in (two_passes(0), two_passes(2)):
        assert [x[:2] for x in other] == [x[:2] for x in first]
        assert all(torch.equal(a[2], b[2]) for a, b in zip(other, first))
    assert [x[1] for x in first[:3]] != [x[1] for x in first[3:]]  # each pass draws anew
    assert [x[:2] for x in two_passes(0, seed=1)] != [x[:2] for x in first]
