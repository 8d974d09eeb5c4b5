"""xdc extract and xdc eval on a real (tiny) pretraining run over generated media."""

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import gray_frames, kill_with_children, opens_of, tiny_run, torchrun_command
from xdc.cli import main
from xdc.config import load_config
from xdc.evaluation.adapters import Item, split_items, write_table
from xdc.data.datasets import EvalClips
from xdc.errors import UserError
from xdc.evaluation.extract import extract_features, items_to_manifest


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    return root, tiny_run(root, 24, 3, seed=1, batch=8, k=3)


def items_of(root: Path) -> list[Item]:
    with open(root / "data" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    return [Item(str(root / "data" / r["path"]), r["label"], "test" if i % 3 == 0 else "train", i % 2 + 1)
            for i, r in enumerate(rows)]  # fmt: skip


def test_extract_clips_segments_and_skips(run, tmp_path):
    root, run_dir = run
    items = items_of(root)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"nothing")
    segment = Item(items[0].path, items[0].label, "train", 1, start_s=1.0, end_s=2.0, group="seg")
    late = Item(items[1].path, items[1].label, "train", 1, start_s=50.0, group="late")  # to the end of a 3 s file
    summary = extract_features(run_dir, "video", [*items, segment, late, Item(str(broken), "x")], tmp_path / "f.npz",
                               clips=2)  # fmt: skip
    data = np.load(tmp_path / "f.npz")
    assert data["features"].shape == (2 * 24 + 1, 64)  # 24 files of 2 clips, a 1 s segment of one clip (the tiny
    # preset's are 1 s); tiny video width 8 x 8
    reasons = {skip["path"]: skip["reason"] for skip in summary["skipped"]}
    assert len(summary["skipped"]) == 2 and reasons[str(broken)].startswith("cannot open")
    assert reasons[items[1].path] == "its window starts at 50s, at or after the file's end at 3s"
    seg = data["group"] == "seg"
    assert seg.sum() == 1 and (data["start"][seg] >= 1.0).all() and (data["start"][seg] <= 2.0).all()
    assert set(data["split"]) == {"train", "test"} and data["label"].dtype.kind == "U"


def test_a_window_as_long_as_a_clip_gives_one_clip_whatever_its_float_rounding(run, tmp_path):
    """GRID words' 1 s windows and the tiny preset's 1 s clips: 2.41 - 1.41 is 1.0000000000000002, and a quarter
    of GRID's word windows got --clips copies of one clip, weighted that many times in the probes."""
    root, run_dir = run
    item = items_of(root)[0]
    windows = [Item(item.path, item.label, "train", 1, start_s=s, end_s=s + 1.0, group=str(s)) for s in (1.41, 0.0)]
    assert windows[0].end_s - windows[0].start_s > 1.0
    extract_features(run_dir, "audio", windows, tmp_path / "w.npz", clips=3)
    assert sorted(np.load(tmp_path / "w.npz")["group"]) == ["0.0", "1.41"]


def test_a_window_past_the_files_end_ends_there(run, tmp_path):
    """A CSV's 2.5-5 s window of a 3 s file spread its clips over 2.5 s that are not there: those past the end
    failed, and the file was listed as skipped though some of its clips were in the features."""
    root, run_dir = run
    item = items_of(root)[0]
    windows = [Item(item.path, item.label, "train", 1, start_s=2.5, end_s=5.0, group="past"),
               Item(item.path, item.label, "train", 1, start_s=0.5, end_s=3.0, group="inside")]  # fmt: skip
    summary = extract_features(run_dir, "audio", windows, tmp_path / "p.npz", clips=3)
    data = np.load(tmp_path / "p.npz")
    assert summary["skipped"] == []
    past = data["group"] == "past"  # 0.5 s to the end: no longer than a clip, so one clip, at its start
    np.testing.assert_allclose(data["start"][past], [2.5])
    np.testing.assert_allclose(np.sort(data["start"][~past]), [0.5, 1.25, 2.0])  # a window inside: as before


def test_extract_tells_a_file_partly_kept_from_one_left_out(run, tmp_path, capsys):
    """Windows every 2 s of 5 s videos (1 s of audio each): early.mp4's sound lasts its first second, so its windows
    at 2 and 4 s fail and the one at 0 s is kept; gap.mp4's, from 1.2 to 1.8 s, lies between windows, so none is
    kept. Until 2026-12-03 both were listed alike as skipped, though early.mp4 had a clip in the features. Neither's
    windows past the sound are read as silence, as a file without sound (silent.mp4) is not under
    data.missing_audio=zeros (docs/data.md)."""
    from xdc.data.encode import write_av

    root, run_dir = run
    item = items_of(root)[0]
    tone = 0.1 * np.ones(16000, np.float32)
    write_av(tmp_path / "early.mp4", gray_frames(20, 32, 48), 4, tone, 16000)
    write_av(tmp_path / "gap.mp4", gray_frames(20, 32, 48), 4, tone[:9600], 16000, audio_start=1.2)
    write_av(tmp_path / "silent.mp4", gray_frames(20, 32, 48), 4)
    table, out = tmp_path / "table.csv", tmp_path / "f.npz"
    names = ("early.mp4", "gap.mp4", "silent.mp4")
    write_table([item, *(Item(str(tmp_path / name), item.label) for name in names)], table)
    assert main(["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(table), "--stride", "2",
                 "--out", str(out), "--set=data.workers=0", "--set=data.missing_audio=zeros"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    summary = json.loads(out.with_suffix(".json").read_text())
    early, gap, silent = (str(tmp_path / name) for name in names)
    assert [skip["path"] for skip in summary["skipped"]] == [silent, gap]
    assert summary["skipped"][0]["reason"] == "no audio stream"
    assert summary["skipped"][1]["reason"].startswith("the clip at 4.00s starts after the sound's end at 1.8")
    (partly,) = summary["partly_kept"]
    assert (partly["path"], partly["clips_failed"], partly["clips_kept"]) == (early, 2, 1)
    assert partly["reason"].startswith("the clip at 4.00s starts after the sound's end at ")
    assert sorted(np.load(out)["path"]) == sorted([early, item.path, item.path])  # item: 3 s, windows at 0 and 2 s
    assert "; 2 skipped, 1 partly kept\n" in printed and f"  skipped {gap}: the clip at 4.00s" in printed
    assert f"  partly kept {early}: 2 of its clips failed, 1 kept; the last: the clip at 4.00s" in printed


def test_sliding_window_gives_per_item_sequences(run, tmp_path):
    root, run_dir = run
    extract_features(run_dir, "audio", items_of(root)[:2], tmp_path / "seq.npz", stride=0.5)
    data = np.load(tmp_path / "seq.npz")
    for item in (0, 1):  # 3 s clips, 1 s audio windows every 0.5 s: starts 0, 0.5, ..., 2.0
        np.testing.assert_allclose(np.sort(data["start"][data["item"] == item]), [0, 0.5, 1, 1.5, 2])


def test_eval_commands_write_json(run, tmp_path, capsys):
    root, run_dir = run
    table = tmp_path / "table.csv"
    write_table(items_of(root), table)
    feats = tmp_path / "audio.split1.npz"
    assert main(["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(table), "--clips", "2",
                 "--out", str(tmp_path / "audio.split1")]) == 0  # fmt: skip
    assert f"-> {feats};" in capsys.readouterr().out  # np.savez adds .npz: the line names the file it wrote
    assert json.loads((tmp_path / "audio.split1.json").read_text())["out"] == str(feats)  # OUT.json beside OUT.npz
    assert main(["eval", "linear", "--features", str(feats), "--out", str(tmp_path / "l.json")]) == 0
    linear = json.loads((tmp_path / "l.json").read_text())
    assert 0 <= linear["top1"] <= 1 and linear["n_test_videos"] == 8 and linear["command"] == "eval linear"
    assert main(["eval", "kfold", "--features", str(feats), "--out", str(tmp_path / "k.json")]) == 0
    kfold = json.loads((tmp_path / "k.json").read_text())
    assert len(kfold["folds"]) == 2 and 0 <= kfold["mean_top1"] <= 1
    assert main(["eval", "clusters", "--run", str(run_dir), "--out", str(tmp_path / "c.json")]) == 0
    clusters = json.loads((tmp_path / "c.json").read_text())
    assert {r["label_set"] for r in clusters["rounds"]} == {"video", "audio"}
    assert "nmi" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["extract", "--clips", "1"],
                                     ["eval", "finetune", "--mode", "fc", "--set", "finetune.epochs=1"]])
def test_a_command_reads_the_runs_encoders_once(run, tmp_path, command):
    """The encoder's modality, its weights and their digest (in the identity of kept progress) come from one read
    of encoders.pt (170 MB at the paper's width): until 2026-12-03 three, and seven for eval finetune --split all."""
    root, run_dir = run
    write_table(items_of(root), tmp_path / "t.csv")
    with opens_of(run_dir / "encoders.pt") as opened:
        assert main([*command, "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                     "--out", str(tmp_path / ("f" if command[0] == "extract" else "r.json"))]) == 0  # fmt: skip
    assert len(opened) == 1


def test_eval_clusters_takes_labels_given_after_pretraining(run, tmp_path, capsys):
    """A labels CSV matched to the run's videos as xdc index matches: rows by basename and by path relative to the
    videos' folder. Labels that are a round's own video clusters score NMI and purity 1 for that label set."""
    from xdc.data.manifest import run_videos

    root, run_dir = run
    paths = [path.decode() for path in run_videos(run_dir).paths]
    first = sorted((run_dir / "labels").glob("round_*.npz"))[0]
    with np.load(first) as assigned:
        clusters = assigned["video"]
    folder = os.path.commonpath([os.path.dirname(path) for path in paths])
    names = [os.path.basename(p) if n % 2 else os.path.relpath(p, folder) for n, p in enumerate(paths)]
    labels = tmp_path / "later.csv"
    labels.write_text("path,label\n" + "".join(f"{name},c{c}\n" for name, c in zip(names, clusters)) + "gone.mp4,x\n")
    assert main(["eval", "clusters", "--run", str(run_dir), "--labels", str(labels), "--out",
                 str(tmp_path / "c.json")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["labelled"] == result["videos"] == len(paths) == 24 and result["labels"] == str(labels)
    own = next(r for r in result["rounds"] if r["label_set"] == "video" and r["round"] == int(first.stem.split("_")[1]))
    assert own["nmi"] == pytest.approx(1.0) and own["purity"] == 1.0
    # the row that named no video of the run: said and counted, as xdc index says them (until 2026-12-03 unsaid)
    assert f"24 of 24 videos labelled by {labels}; 1 label row matched no file: gone.mp4\n" in capsys.readouterr().out
    assert (result["unmatched"], result["unmatched_paths"]) == (1, ["gone.mp4"])
    labels.write_text("path,label\nelsewhere/gone.mp4,x\n")
    assert main(["eval", "clusters", "--run", str(run_dir), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xdc: error: no row of") and "names one of the 24 videos" in err and err.count("\n") == 1


def test_eval_clusters_says_a_run_that_is_not_there_or_a_file(run, tmp_path, capsys):
    """Until 2026-12-03 both were "has no videos.csv: is it an `xdc pretrain` run folder?", as if a folder were there
    (a typo in the path, or the run's config.yaml given for its folder)."""
    _, run_dir = run
    assert main(["eval", "clusters", "--run", str(tmp_path / "runz")]) == 2
    assert capsys.readouterr().err == (f"xdc: error: {tmp_path / 'runz'} does not exist: give an `xdc pretrain` run "
                                       "folder\n")  # fmt: skip
    assert main(["eval", "clusters", "--run", str(run_dir / "config.yaml")]) == 2
    assert capsys.readouterr().err == (f"xdc: error: {run_dir / 'config.yaml'} is a file, not a folder: give an `xdc "
                                       "pretrain` run folder\n")  # fmt: skip

def test_eval_clusters_refuses_a_supervised_run(run, tmp_path, capsys):
    """Its labels/ holds the manifest's labels it trained on: scored against themselves they were all 1, and that went
    into model cards as the run's cluster quality (until 2026-12-01)."""
    from xdc.training.distributed import Dist
    from xdc.training.pretrain import pretrain

    root, _ = run
    cfg = load_config(None, ["train.method=supervised", "train.batch_size=8", "train.rounds=1", "data.workers=0"],
                      preset="tiny")  # fmt: skip
    pretrain(cfg, root / "manifest.csv", tmp_path / "supervised", resume=False, ctx=Dist())
    assert main(["eval", "clusters", "--run", str(tmp_path / "supervised"), "--out", str(tmp_path / "c.json")]) == 2
    assert capsys.readouterr().err == (f"xdc: error: {tmp_path / 'supervised'} is a supervised run: its labels/ hold "
                                       "the manifest's labels it trained on, not clusters (their scores against those "
                                       "labels would be 1)\n")  # fmt: skip
    assert not (tmp_path / "c.json").exists()


def test_eval_clusters_skips_an_unreadable_round_and_names_it(run, tmp_path, capsys):
    root, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for number in (1, 2):
        shutil.copy(copy / "labels" / "round_000.npz", copy / "labels" / f"round_00{number}.npz")
    rounds = sorted((copy / "labels").glob("round_*.npz"))
    rounds[0].write_bytes(rounds[0].read_bytes()[:300])  # cut short, as a kill mid-write left it before 2026-12-01
    assert main(["eval", "clusters", "--run", str(copy), "--out", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert {r["round"] for r in result["rounds"]} == {int(path.stem[-3:]) for path in rounds[1:]}
    assert len(result["unreadable"]) == 1 and result["unreadable"][0].startswith(f"labels/{rounds[0].name}: ")
    assert f"skipped labels/{rounds[0].name}: " in capsys.readouterr().err
    sets = dict(np.load(rounds[1]))  # another run's, of other videos: until 2026-12-01 a ValueError's traceback
    np.savez(rounds[1], **{name: assigned[:-1] for name, assigned in sets.items()})
    assert main(["eval", "clusters", "--run", str(copy), "--out", str(tmp_path / "c.json")]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert {r["round"] for r in result["rounds"]} == {int(path.stem[-3:]) for path in rounds[2:]}
    videos = len(next(iter(sets.values())))
    assert result["unreadable"][1:] == [f"labels/{rounds[1].name}: {name} assigns {videos - 1} videos, the run has "
                                        f"{videos} (videos.csv)" for name in sets]  # fmt: skip
    capsys.readouterr()
    np.savez(rounds[2], **{name: assigned.astype(float) for name, assigned in sets.items()})  # not ids: skipped too
    assert main(["eval", "clusters", "--run", str(copy)]) == 2  # until 2026-12-02 float values were scored
    err = capsys.readouterr().err
    assert f"skipped labels/{rounds[2].name}: {list(sets)[0]} holds float64 values, not cluster ids\n" in err
    for path in rounds[1:]:
        path.write_bytes(b"junk")
    assert main(["eval", "clusters", "--run", str(copy)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"xdc: error: no cluster assignments of {copy} can be read (labels/round_*.npz); ")


def test_eval_clusters_says_labelled_videos_without_a_cluster_and_skips_a_round_that_has_none(run, tmp_path, capsys):
    """Videos whose clips failed have no cluster in a round (-1): left out of its scores, and said. A round that
    clusters none of the labelled videos (labels for a few videos, all failed) stopped with a ValueError's traceback
    until 2026-12-03."""
    from xdc.data.manifest import run_videos

    _, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.copy(copy / "labels" / "round_000.npz", copy / "labels" / "round_001.npz")
    sets = dict(np.load(copy / "labels" / "round_000.npz"))
    failed = np.arange(24) < 5  # their clips gave no features in round 0
    np.savez(copy / "labels" / "round_000.npz", **{name: np.where(failed, -1, a) for name, a in sets.items()})
    assert main(["eval", "clusters", "--run", str(copy), "--out", str(tmp_path / "c.json")]) == 0
    assert [(r["round"], r["n"]) for r in json.loads((tmp_path / "c.json").read_text())["rounds"]] == [
        (0, 19), (0, 19), (1, 24), (1, 24)]  # fmt: skip
    assert ("up to 5 of the 24 labelled videos have no cluster in a round (their clips gave no features in it) and "
            "are left out of its scores (n)\n") in capsys.readouterr().out  # fmt: skip
    labels = tmp_path / "few.csv"  # three of the five videos without a cluster in round 0
    labels.write_text("path,label\n" + "".join(f"{os.path.basename(path.decode())},c{i % 2}\n"
                                               for i, path in enumerate(run_videos(copy).paths[:3])))  # fmt: skip
    assert main(["eval", "clusters", "--run", str(copy), "--labels", str(labels), "--out",
                 str(tmp_path / "c.json")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "c.json").read_text())
    assert [(r["round"], r["n"]) for r in result["rounds"]] == [(1, 3), (1, 3)]
    why = [f"labels/round_000.npz: {name} gives a cluster to none of the 3 labelled videos (their clips gave no "
           "features in that round)" for name in sets]  # fmt: skip
    assert result["unreadable"] == why
    assert capsys.readouterr().err == "".join(f"skipped {line}\n" for line in why)


def test_eval_clusters_refuses_a_run_without_rounds_before_reading_the_labels(run, tmp_path, capsys):
    """Matching a labels CSV takes minutes at 65M videos: until 2026-12-03 it came before the refusal."""
    root, run_dir = run
    unclustered = tmp_path / "unclustered"
    shutil.copytree(run_dir, unclustered, ignore=shutil.ignore_patterns("labels"))
    labels = tmp_path / "labels.csv"
    shutil.copy(root / "data" / "labels.csv", labels)
    with opens_of(labels) as opened:
        assert main(["eval", "clusters", "--run", str(unclustered), "--labels", str(labels)]) == 2
    assert "has no cluster assignments (labels/round_*.npz)" in capsys.readouterr().err and not opened


def test_eval_clusters_lists_rounds_in_their_order_from_round_1000_on(run, tmp_path):
    """By name round_1000.npz sorts before round_101.npz (the order until 2026-12-01); a foreign round_x.npz stopped
    the command with a traceback."""
    _, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for number in (101, 1000):
        shutil.copy(copy / "labels" / "round_000.npz", copy / "labels" / f"round_{number}.npz")
    (copy / "labels" / "round_x.npz").write_bytes(b"not a round")
    assert main(["eval", "clusters", "--run", str(copy), "--out", str(tmp_path / "c.json")]) == 0
    rounds = [r["round"] for r in json.loads((tmp_path / "c.json").read_text())["rounds"]]
    assert rounds == sorted(rounds) and rounds[-1] == 1000


def test_kfold_says_the_clips_of_fold_0_were_never_tested(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 15)
    x = (rng.normal(size=(30, 4)) + 3.0 * (labels == "b")[:, None]).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=x, label=labels, split=np.array([""] * 30), fold=np.arange(30) % 3,
             group=np.array([str(i) for i in range(30)]))  # fmt: skip
    assert main(["eval", "kfold", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "k.json")]) == 0
    assert "10 clips of fold 0 (no fold) trained in every fold and were never tested" in capsys.readouterr().out
    result = json.loads((tmp_path / "k.json").read_text())
    assert [f["fold"] for f in result["folds"]] == [1, 2] and result["train_only"] == 10


def test_kfold_deals_folds_to_features_of_ones_own_labels(tmp_path, capsys):
    """A labelled set of one's own (a CSV of path,label) has neither split nor folds: until 2026-12-03 neither probe
    could run on its features. --folds N deals its videos into N folds; a set with folds of its own keeps them."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 20)
    x = (rng.normal(size=(60, 3)) + 4.0 * (labels[:, None] == np.array(["a", "b", "c"]))).astype(np.float32)
    groups = np.array([f"v{i // 2}" for i in range(60)])  # 2 clips a video, 10 videos a class
    mine = tmp_path / "mine.npz"
    np.savez(mine, features=x, label=labels, split=np.array([""] * 60), fold=np.zeros(60, np.int64), group=groups)
    command = ["eval", "kfold", "--features", str(mine)]
    assert main(command) == 2
    assert capsys.readouterr().err.endswith("give --folds N to deal its videos into N folds by class\n")
    assert main(["eval", "linear", "--features", str(mine)]) == 2
    assert "(with --folds N where it has no folds either)" in capsys.readouterr().err
    assert main([*command, "--folds", "3", "--out", str(tmp_path / "k.json")]) == 0
    result = json.loads((tmp_path / "k.json").read_text())
    assert [f["fold"] for f in result["folds"]] == [1, 2, 3] and result["probe"]["dealt_folds"] == 3
    assert [f["n_test_videos"] for f in result["folds"]] == [10, 10, 10] and result["mean_top1"] >= 0.9
    capsys.readouterr()
    assert main([*command, "--folds", "1"]) == 2
    assert capsys.readouterr().err == "xdc: error: --folds 1: k-fold evaluation needs two or more folds\n"
    esc = tmp_path / "esc.npz"
    np.savez(esc, features=x, label=labels, split=np.array([""] * 60), fold=np.arange(60) // 2 % 5 + 1, group=groups)
    assert main(["eval", "kfold", "--features", str(esc), "--folds", "3"]) == 2
    assert capsys.readouterr().err == f"xdc: error: {esc} has folds of its own (1, 2, 3, 4, 5): drop --folds to use " \
                                      "them\n"


def test_linear_probe_on_another_file_of_test_features(tmp_path, capsys):
    """--test-features: train on one file (its train split, or all of it), test on all of another."""
    rng = np.random.default_rng(0)

    def features(path: Path, labels: list[str], split: str) -> Path:
        x = rng.normal(size=(len(labels), 8)) + np.array([[3.0 * (label[-1] == "b")] for label in labels])
        np.savez(path, features=x.astype(np.float32), label=np.array(labels), split=np.array([split] * len(labels)),
                 fold=np.zeros(len(labels), np.int64), group=np.array([f"{path.stem}{i}" for i in range(len(labels))]))
        return path

    train = features(tmp_path / "speakers1.npz", ["a", "b"] * 10, "")
    test = features(tmp_path / "speakers2.npz", ["a", "b"] * 4, "")
    assert main(["eval", "linear", "--features", str(train), "--test-features", str(test), "--out",
                 str(tmp_path / "l.json")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "l.json").read_text())
    assert result["n_test_videos"] == 8 and result["top1"] >= 0.75 and result["test_features"] == str(test)
    other = features(tmp_path / "other.npz", ["xa", "xb"] * 4, "")  # another dataset's labels: all answers wrong
    capsys.readouterr()
    assert main(["eval", "linear", "--features", str(train), "--test-features", str(other)]) == 2
    assert capsys.readouterr().err == (f"xdc: error: no label of {other} is a class of {train}'s training clips: are "
                                       "they features of one dataset's labels?\n")  # fmt: skip


def test_eval_linear_and_kfold_report_each_class_and_a_confusion_matrix(tmp_path, capsys):
    """per_class and confusion count the videos (groups of 2 clips) top1 counts: trace / total is top1 exactly. A test
    class never trained on (z\u00e9) is tested and never predicted; a trained class absent from the test (c) is
    predicted, its features being z\u00e9's."""
    rng = np.random.default_rng(0)
    centres = {"a": 0.0, "b": 2.0, "c": 4.0, "z\u00e9": 4.0, 1: 0.0, 2: 0.5, 10: 1.0}  # 1, 2 and 10 overlap

    def features(path: Path, labels: list, split: str, fold=None) -> Path:
        labels = np.repeat(labels, 2)  # 2 clips per video
        x = rng.normal(size=(len(labels), 4)) + np.array([[centres[label]] for label in labels.tolist()])
        np.savez(path, features=x.astype(np.float32), label=labels, split=np.array([split] * len(labels)),
                 fold=np.zeros(len(labels), np.int64) if fold is None else np.repeat(fold, 2),
                 group=np.repeat([f"{path.stem}{i}" for i in range(len(labels) // 2)], 2))  # fmt: skip
        return path

    train = features(tmp_path / "train.npz", ["a", "b", "c"] * 8, "")
    test = features(tmp_path / "test.npz", ["a", "b", "z\u00e9"] * 4, "")
    out = tmp_path / "l.json"
    assert main(["eval", "linear", "--features", str(train), "--test-features", str(test), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["per_class"]["z\u00e9"] == {"n": 4, "top1": 0.0} and set(result["per_class"]) == {"a", "b", "z\u00e9"}
    assert result["confusion"]["classes"] == ["a", "b", "c", "z\u00e9"]
    counts = np.array(result["confusion"]["counts"])
    assert counts.sum() == result["n_test_videos"] == 12 and counts[2].sum() == 0 and counts[:, 2].sum() >= 3
    assert np.trace(counts) / counts.sum() == result["top1"] and result["probe"]["seed"] == 0
    assert "worst classes: z\u00e9 0.00 (0/4)" in printed and "per_class" not in printed and "confusion" not in printed
    assert '"counts": [\n      [' in out.read_text()  # a row of the matrix to a line, not a number

    # k-fold over labels that are numbers, named in their numeric order; the folds' matrices summed
    folds, out = features(tmp_path / "folds.npz", [1, 2, 10] * 10, "", fold=np.arange(30) % 2 + 1), tmp_path / "k.json"
    assert main(["eval", "kfold", "--features", str(folds), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["confusion"]["classes"] == ["1", "2", "10"] and list(result["per_class"]) == ["1", "2", "10"]
    summed = np.zeros((3, 3), dtype=np.int64)
    for fold in result["folds"]:
        counts = np.array(fold["confusion"]["counts"])
        assert fold["confusion"]["classes"] == ["1", "2", "10"] and np.trace(counts) / counts.sum() == fold["top1"]
        summed += counts
    assert result["confusion"]["counts"] == summed.tolist() and summed.sum() == 30
    assert {name: c["n"] for name, c in result["per_class"].items()} == {"1": 10, "2": 10, "10": 10}
    assert 0 < result["mean_top1"] < 1 and "worst classes over the 2 folds: " in capsys.readouterr().out


def test_eval_says_which_test_classes_were_never_trained_on(tmp_path, capsys):
    """A class whose videos all lie in one fold (or only in the test split) cannot be predicted there: top1 counts
    them wrong, and until 2026-12-03 nothing said why."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 12 + ["c"] * 3)
    x = (rng.normal(size=(27, 4)) + 3.0 * np.unique(labels, return_inverse=True)[1][:, None]).astype(np.float32)
    feats, out = tmp_path / "f.npz", tmp_path / "k.json"
    np.savez(feats, features=x, label=labels, split=np.array(["train"] * 20 + ["test"] * 7),
             fold=np.array([1, 1, 2, 2] * 6 + [2] * 3), group=np.array([f"v{i}" for i in range(27)]))  # fmt: skip
    assert main(["eval", "kfold", "--features", str(feats), "--out", str(out)]) == 0
    assert "fold 2: 3 test videos of classes its training clips lack (c) count as wrong\n" in capsys.readouterr().out
    assert [fold["untrained"] for fold in json.loads(out.read_text())["folds"]] == [0, 3]
    out = tmp_path / "l.json"
    assert main(["eval", "linear", "--features", str(feats), "--out", str(out)]) == 0
    assert "3 test videos of classes the training clips lack (c) count as wrong\n" in capsys.readouterr().out
    assert json.loads(out.read_text())["untrained"] == 3


def test_linear_probe_refuses_a_video_in_both_splits(tmp_path, capsys):
    """A video listed in both splits of a table (or the features file given again as --test-features) was trained
    and tested on, and scored as if unseen (until 2026-12-02); another file's group ids may name other videos."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 10)
    x = (rng.normal(size=(20, 4)) + 3.0 * (labels == "b")[:, None]).astype(np.float32)
    groups = np.array([f"v{i}" for i in range(16)] + ["v0", "v1", "v16", "v17"])  # v0 and v1 also test videos
    split = np.array(["train"] * 16 + ["test"] * 4)
    feats = tmp_path / "f.npz"
    np.savez(feats, features=x, label=labels, split=split, fold=np.zeros(20, np.int64), group=groups)
    assert main(["eval", "linear", "--features", str(feats)]) == 2
    assert capsys.readouterr().err == (f"xdc: error: 2 videos (groups) of {feats}'s test split are in its train split "
                                       "too, e.g. v0: they would be both trained and tested on\n")  # fmt: skip
    np.savez(feats, features=x, label=labels, split=np.array([""] * 20), fold=np.zeros(20, np.int64),
             group=np.array([f"v{i}" for i in range(20)]))  # fmt: skip
    assert main(["eval", "linear", "--features", str(feats), "--test-features", str(feats)]) == 2
    assert "20 videos (groups) of --test-features" in capsys.readouterr().err
    other = tmp_path / "other.npz"  # its own v0..v19: other recordings
    shutil.copy(feats, other)
    assert main(["eval", "linear", "--features", str(feats), "--test-features", str(other)]) == 0


def test_probe_errors_name_the_features_file_the_fold_and_the_group(tmp_path, capsys):
    """Until 2026-12-02 they named none of them: "a group spans several folds", "test features contain NaN or
    infinity" for a clip of a fold, "the training set needs at least two classes" of no fold said."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 10)
    x = (rng.normal(size=(20, 4)) + 3.0 * (labels == "b")[:, None]).astype(np.float32)
    folds, groups = np.arange(20) % 2 + 1, np.array([f"v{i}" for i in range(20)])
    feats = tmp_path / "f.npz"

    def error(command: str, **arrays) -> str:
        columns = {"features": x, "label": labels, "split": np.array([""] * 20), "fold": folds, "group": groups}
        np.savez(feats, **{**columns, **arrays})
        assert main(["eval", command, "--features", str(feats)]) == 2
        return capsys.readouterr().err

    spanning = groups.copy()
    spanning[3] = "v0"  # fold 2's clip, of fold 1's video v0
    assert error("kfold", group=spanning) == (f"xdc: error: {feats}: group 'v0' spans folds 1 and 2: its clips "
                                              "would be both trained and tested on\n")  # fmt: skip
    broken = x.copy()
    broken[[3, 5]] = np.nan
    assert error("kfold", features=broken) == f"xdc: error: {feats}: the features of 2 clips contain NaN or infinity\n"
    assert error("kfold", label=np.where(folds == 1, "a", "b")) == (f"xdc: error: {feats}: fold 1: the training set "
                                                                    "needs at least two classes\n")  # fmt: skip
    split = np.array(["train"] * 16 + ["test"] * 4)
    assert error("linear", split=split, features=broken) == (f"xdc: error: {feats}: train features contain NaN or "
                                                              "infinity\n")  # fmt: skip
    mixed = groups.copy()
    mixed[1] = "v0"  # labels a and b
    assert error("linear", split=split, group=mixed) == (f"xdc: error: {feats}: clips of training group 'v0' have "
                                                          "different labels\n")  # fmt: skip


def test_an_out_of_the_features_read_is_refused_without_telling_to_remove_it(tmp_path, capsys):
    """--out naming --features itself, --test-features, or the summary beside --test-features said "give a new path
    (or remove it)" until 2026-12-02: the features, or what xdc export reads of their source."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", features=rng.normal(size=(8, 4)).astype(np.float32),
                 label=np.array(["x", "y"] * 4), split=np.array([""] * 8), fold=np.zeros(8, np.int64),
                 group=np.array([f"{name}{i}" for i in range(8)]))  # fmt: skip
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    b.with_suffix(".json").write_text('{\n  "out": "b.npz"\n}')  # xdc extract's summary
    for command, out in ((["kfold", "--features", str(a)], a), (["linear", "--features", str(a)], a),
                         (["linear", "--features", str(a), "--test-features", str(b)], b)):  # fmt: skip
        assert main(["eval", *command, "--out", str(out)]) == 2
        assert capsys.readouterr().err == (f"xdc: error: --out {out} is the features file {out} that this command "
                                           f"reads: give the result a .json path, e.g. {out.stem}-result.json\n")
    summary = b.with_suffix(".json")
    assert main(["eval", "linear", "--features", str(a), "--test-features", str(b), "--out", str(summary)]) == 2
    assert capsys.readouterr().err == (f"xdc: error: --out {summary} is the summary that xdc extract wrote beside "
                                       f"{b}, which xdc export reads: give the result another name, e.g. "
                                       "b-result.json\n")  # fmt: skip
    assert a.stat().st_size > 0 and summary.read_text().startswith("{\n  \"out\"")


def test_extract_refuses_an_out_or_summary_it_did_not_write(run, tmp_path, capsys):
    """Until 2026-12-02 xdc extract replaced any file at --out X.npz and at X.json beside it: a run's labels file, or
    the result of an eval given the natural name X.json, was lost unsaid."""
    root, run_dir = run
    write_table(items_of(root)[:2], tmp_path / "t.csv")
    command = ["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"), "--clips",
               "1", "--out"]  # fmt: skip
    labels, result = tmp_path / "round_000.npz", tmp_path / "x.json"
    np.savez(labels, video=np.zeros(4, np.int64))
    result.write_text('{\n  "command": "eval linear",\n  "top1": 0.5\n}')
    assert main([*command, str(labels)]) == 2
    assert capsys.readouterr().err == (f"xdc: error: --out {labels} exists and is not a features file of xdc extract: "
                                       "give a new path (or remove it)\n")  # fmt: skip
    assert main([*command, str(tmp_path / "x.npz")]) == 2
    assert capsys.readouterr().err == (f"xdc: error: {result} exists and is not the summary of an xdc extract, which "
                                       f"--out {tmp_path / 'x.npz'} would write there: give --out another name (or "
                                       "remove it)\n")  # fmt: skip
    assert set(np.load(labels).files) == {"video"} and json.loads(result.read_text())["top1"] == 0.5
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob("*.probe.*"))  # refused before any work
    assert main([*command, str(tmp_path / "y.json")]) == 2  # an eval's name for its result: went to y.json.npz
    assert capsys.readouterr().err == (f"xdc: error: --out {tmp_path / 'y.json'}: xdc extract writes features, an "
                                       ".npz (and its summary, a .json, beside it): give --out "
                                       f"{tmp_path / 'y.npz'}\n")  # fmt: skip
    assert not list(tmp_path.glob("y.*"))
    empty = tmp_path / "e.npz"
    empty.touch()  # as mktemp makes one: taken, and again once it holds features
    for _ in range(2):
        assert main([*command, str(empty)]) == 0
        assert np.load(empty)["features"].shape[0] == 2


def test_extract_takes_a_repeated_csv_row_once_and_says_so(run, tmp_path):
    """A labels CSV with a row twice (two manifests joined): each clip once in the features, and one warning line."""
    root, run_dir = run
    items = items_of(root)[:2]
    write_table([*items, items[0]], tmp_path / "t.csv")
    with pytest.warns(UserWarning, match=r"t.csv: 1 row\(s\) repeating an earlier one .* left out, e.g. \S*t.csv "
                                         r"line 4 \(as \S*t.csv line 2\)") as caught:  # fmt: skip
        assert main(["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                     "--clips", "1", "--out", str(tmp_path / "x.npz")]) == 0  # fmt: skip
    assert len(caught) == 1
    assert sorted(np.load(tmp_path / "x.npz")["path"]) == sorted(item.path for item in items)


def test_extract_says_how_many_windows_it_cut_at_their_files_end(run, tmp_path, capsys):
    """A CSV's windows past their 3 s file's end: taken up to there, counted in one line naming the first, and
    listed in the JSON (until 2026-12-02 unsaid)."""
    root, run_dir = run
    item = items_of(root)[0]
    windows = [Item(item.path, item.label, "train", 1, start_s=s, end_s=e, group=f"{s}-{e}")
               for s, e in ((0.5, 2.5), (2.0, 7.5), (1.0, 4.0))]  # fmt: skip
    write_table(windows, tmp_path / "t.csv")
    assert main(["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                 "--clips", "1", "--out", str(tmp_path / "x.npz")]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "x.json").read_text())
    assert [(w["path"], w["start_s"], w["end_s"]) for w in summary["cut"]] == [(item.path, 1.0, 4.0),
                                                                                 (item.path, 2.0, 7.5)]  # in order
    end = summary["cut"][0]["file_end_s"]
    assert 2.9 < end < 3.1 and summary["skipped"] == []
    assert (f"  2 window(s) past their file's end cut there, e.g. {item.path} from 1 s to 4 s: the file ends at "
            f"{end:g} s\n") in capsys.readouterr().out  # fmt: skip


@pytest.mark.parametrize("command", [["extract"], ["eval", "finetune"]])
def test_a_dataset_with_official_splits_given_without_split_names_the_option(run, tmp_path, capsys, command):
    """Until 2026-12-02: "ucf101 needs split 1, 2 or 3 (its official train/test splits), got None"."""
    root, run_dir = run
    ucf = _ucf_layout(root, tmp_path / "UCF-101")
    assert main([*command, "--run", str(run_dir), "--encoder", "video", "--dataset", "ucf101", "--data", str(ucf),
                 "--out", str(tmp_path / "out.npz")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give one with --split (eval finetune: or --split all)" in err
    assert "None" not in err


def test_eval_linear_refuses_test_features_of_another_encoder(run, tmp_path, capsys):
    """Video features given --test-features of the audio encoder (of the same width at a preset) were scored at
    chance until 2026-12-02, as an accuracy like any other; what the summaries beside them say tells them apart."""
    root, run_dir = run
    items = items_of(root)
    write_table(items[:12], tmp_path / "a.csv")
    write_table([dataclasses.replace(item, split="") for item in items[12:18]], tmp_path / "b.csv")
    made = {}
    for name, encoder, table in (("v", "video", "a"), ("a", "audio", "a"), ("b", "audio", "b")):
        made[name] = tmp_path / f"{name}.npz"
        assert main(["extract", "--run", str(run_dir), "--encoder", encoder, "--data", str(tmp_path / f"{table}.csv"),
                     "--clips", "1", "--out", str(made[name])]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "linear", "--features", str(made["v"]), "--test-features", str(made["b"])]) == 2
    assert capsys.readouterr().err == (f"xdc: error: {made['v']} holds features of the video encoder and {made['b']} "
                                       "of the audio encoder (as the summaries of xdc extract beside them say): a "
                                       "probe trained on the one cannot be tested on the other; extract both with "
                                       "one --encoder\n")  # fmt: skip
    assert main(["eval", "linear", "--features", str(made["a"]), "--test-features", str(made["b"])]) == 0


def test_eval_linear_says_how_many_clips_of_no_split_it_left_out(tmp_path, capsys):
    """Clips of split val, or of a table's row whose split cell was left empty, are neither trained nor tested on;
    until 2026-12-02 they were left out unsaid (eval kfold says so of fold 0)."""
    rng = np.random.default_rng(0)
    split = np.array(["train"] * 8 + ["test"] * 4 + ["val"] * 3 + [""])
    feats, out = tmp_path / "f.npz", tmp_path / "r.json"
    np.savez(feats, features=rng.normal(size=(16, 4)).astype(np.float32), label=np.array(["x", "y"] * 8),
             split=split, fold=np.zeros(16, np.int64), group=np.array([f"v{i}" for i in range(16)]))  # fmt: skip
    assert main(["eval", "linear", "--features", str(feats), "--out", str(out)]) == 0
    assert ("4 clips of split (none) or val were left out: the probe trains on split train (choosing C on a part of "
            "it) and tests on split test\n") in capsys.readouterr().out  # fmt: skip
    record = json.loads(out.read_text())
    assert (record["left_out"], record["n_train"], record["n_test"]) == (4, 8, 4)


def test_eval_linear_with_test_features_says_which_clips_of_the_features_it_left_out(tmp_path, capsys):
    """With --test-features, the clips of --features outside its train split are not trained on: until 2026-12-03
    unsaid, and counted 0 as left_out in the JSON."""
    rng = np.random.default_rng(0)
    split = np.array(["train"] * 8 + ["test"] * 4 + [""] * 2)
    feats, other, out = tmp_path / "f.npz", tmp_path / "g.npz", tmp_path / "r.json"
    for path, n, splits in ((feats, 14, split), (other, 6, np.array([""] * 6))):
        np.savez(path, features=rng.normal(size=(n, 4)).astype(np.float32), label=np.array(["x", "y"] * (n // 2)),
                 split=splits, fold=np.zeros(n, np.int64), group=np.array([f"{path.stem}{i}" for i in range(n)]))
    assert main(["eval", "linear", "--features", str(feats), "--test-features", str(other), "--out", str(out)]) == 0
    assert (f"6 clips of split (none) or test of {feats} were left out: the probe trains on split train (choosing C "
            f"on a part of it) and tests on every clip of {other}\n") in capsys.readouterr().out  # fmt: skip
    record = json.loads(out.read_text())
    assert (record["left_out"], record["n_train"], record["n_test"]) == (6, 8, 6)


def _correlated_features(path: Path) -> Path:
    """Two classes 1 apart along a noise 3 wide that both features share: their difference separates them, which a
    large C finds and a small one (near the difference of the class means) does not."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 30)
    noise = 3.0 * rng.normal(size=60)
    x = np.stack([noise + (labels == "b"), noise + 0.1 * rng.normal(size=60)], axis=1).astype(np.float32)
    np.savez(path, features=x, label=labels, split=np.array(["train"] * 40 + ["test"] * 20),
             fold=np.arange(60) % 3 + 1, group=np.array([f"v{i}" for i in range(60)]))  # fmt: skip
    return path


def test_eval_linear_and_kfold_take_the_grid_of_c(tmp_path, capsys):
    """--cs: the grid of C the probes choose from, recorded in the JSON's probe entry; a C chosen at an end of a grid
    of two or more is said in one line with a wider grid (until 2026-12-03 the grid was always the default)."""
    feats = _correlated_features(tmp_path / "f.npz")

    def chosen(protocol: str, *cs: str) -> tuple[list[float], dict, str]:
        out = tmp_path / f"{protocol}.json"  # a result of another protocol is not replaced
        assert main(["eval", protocol, "--features", str(feats), *cs, "--out", str(out)]) == 0
        record = json.loads(out.read_text())
        cs = [f["c"] for f in record["folds"]] if "folds" in record else [record["c"]]
        return cs, record, capsys.readouterr().out

    for protocol, folds in (("linear", 1), ("kfold", 3)):
        cs, record, printed = chosen(protocol)  # the default grid, its C of 10 inside it
        assert cs == [10.0] * folds and record["probe"]["cs"] == [0.01, 0.1, 1.0, 10.0, 100.0]
        assert "is at an end of the grid" not in printed
        top1 = record.get("top1", record.get("mean_top1"))
        cs, record, printed = chosen(protocol, "--cs", "1e-6,100,1e4")
        assert cs == [100.0] * folds and record["probe"]["cs"] == [1e-6, 100.0, 1e4]
        assert record.get("top1", record.get("mean_top1")) > top1 and "is at an end of the grid" not in printed
        cs, record, printed = chosen(protocol, "--cs", "10,1")  # 10 beats 1: the grid's upper end
        assert cs == [10.0] * folds and record["probe"]["cs"] == [1.0, 10.0]
        where = "10" if protocol == "linear" else "10 in fold 1, 10 in fold 2, 10 in fold 3"
        assert (f"the C chosen on validation ({where}) is at an end of the grid --cs 1,10: a better C may lie "
                "beyond it; widen the grid, e.g. --cs 1,10,100\n") in printed  # fmt: skip
        cs, record, printed = chosen(protocol, "--cs", "100,1000")  # 100 only ties 1000 (ties: the smaller C)
        assert cs == [100.0] * folds and "is at an end" not in printed
        cs, record, printed = chosen(protocol, "--cs", "100")  # a grid of one C has no end to widen
        assert cs == [100.0] * folds and record["probe"]["cs"] == [100.0] and "is at an end" not in printed


def test_a_smallest_c_that_beats_the_next_is_said_to_be_at_the_grids_end(tmp_path, capsys):
    """Weak signal in 50 noisy dimensions: the most regularised C validates best, and a smaller one may do better."""
    rng = np.random.default_rng(1)
    labels = np.array(["a", "b"] * 30)
    x = (rng.normal(size=(60, 50)) + 0.4 * (labels == "b")[:, None]).astype(np.float32)
    feats = tmp_path / "f.npz"
    np.savez(feats, features=x, label=labels, split=np.array(["train"] * 40 + ["test"] * 20),
             fold=np.zeros(60, int), group=np.array([f"v{i}" for i in range(60)]))  # fmt: skip
    assert main(["eval", "linear", "--features", str(feats), "--cs", "0.001,1000"]) == 0
    assert ("the C chosen on validation (0.001) is at an end of the grid --cs 0.001,1000: a better C may lie beyond "
            "it; widen the grid, e.g. --cs 0.0001,0.001,1000\n") in capsys.readouterr().out  # fmt: skip


def test_eval_refuses_a_grid_of_c_that_is_not_one_in_one_line(tmp_path, capsys):
    feats, out = _correlated_features(tmp_path / "f.npz"), tmp_path / "r.json"
    for protocol in ("linear", "kfold"):
        for cs, why in (("", ""), ("0.1,", ""), ("0.1,x", ""), ("1,0", " (0 is not a positive finite number)"),
                        ("-1", " (-1 is not a positive finite number)"), ("inf", " (inf is not a positive finite "
                        "number)"), ("1,nan", " (nan is not a positive finite number)")):  # fmt: skip
            assert main(["eval", protocol, "--features", str(feats), f"--cs={cs}", "--out", str(out)]) == 2
            assert capsys.readouterr().err == (f"xdc: error: --cs takes positive numbers separated by commas, e.g. "
                                               f"0.001,0.01,0.1; got {cs!r}{why}\n")  # fmt: skip
    assert not out.exists()


def test_eval_user_errors_are_one_line(run, tmp_path, capsys, monkeypatch):
    root, run_dir = run
    items = [Item(i.path, i.label) for i in items_of(root)[:6]]  # no split column
    write_table(items, tmp_path / "t.csv")
    feats = tmp_path / "nosplit.npz"
    main(["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"), "--clips", "1",
          "--out", str(feats)])  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "linear", "--features", str(feats)]) == 2
    assert "no train/test split" in capsys.readouterr().err
    summary = feats.with_suffix(".json")  # extract's, which export reads: not to be replaced, nor removed as told
    assert main(["eval", "kfold", "--features", str(feats), "--out", str(summary)]) == 2
    assert capsys.readouterr().err == (f"xdc: error: --out {summary} is the summary that xdc extract wrote beside "
                                       f"{feats}, which xdc export reads: give the result another name, e.g. "
                                       "nosplit-result.json\n")  # fmt: skip
    folder = tmp_path / "folder"
    folder.mkdir()
    table = str(tmp_path / "t.csv")
    for command in (["eval", "linear", "--features", str(feats)], ["eval", "kfold", "--features", str(feats)],
                    ["eval", "clusters", "--run", str(run_dir)],
                    ["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", table]):
        assert main([*command, "--out", str(folder)]) == 2  # before any work (until 2026-12-01: after it)
        assert capsys.readouterr().err == f"xdc: error: --out {folder} is a folder; give the path of a .json file\n"
    clash = tmp_path / "x.finetune"
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", table, "--out",
                 str(clash)]) == 2  # fmt: skip
    assert capsys.readouterr().err == (f"xdc: error: --out {clash} is the name of the folder where eval finetune keeps "
                                       "its progress: give the result another name, e.g. x.json\n")  # fmt: skip
    assert not clash.exists()
    clash.write_text("notes")  # a file where --out x.json keeps its progress
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", table, "--out",
                 str(tmp_path / "x.json")]) == 2  # fmt: skip
    assert capsys.readouterr().err == (f"xdc: error: {clash}, where eval finetune keeps its progress and logs, is a "
                                       "file: remove it, or give another --out\n")  # fmt: skip
    assert clash.read_text() == "notes"
    assert main(["extract", "--run", str(tmp_path), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                 "--out", str(tmp_path / "x.npz")]) == 2  # fmt: skip
    assert "is neither a pretraining run folder (no config.yaml or checkpoints/)" in capsys.readouterr().err
    assert main(["extract", "--run", str(run_dir), "--encoder", "video2", "--data", str(tmp_path / "t.csv"),
                 "--out", str(tmp_path / "x.npz")]) == 2  # fmt: skip
    assert "has no encoder 'video2'" in capsys.readouterr().err
    for flag, value, why in [("--clips", "0", "--clips must be at least 1, got 0"),
                             ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
                             ("--stride", "-1", "--stride must be a finite number of seconds above 0, got -1.0"),
                             # until 2026-12-01 an empty file, every item "skipped" for a start of NaN
                             ("--stride", "inf", "--stride must be a finite number of seconds above 0, got inf"),
                             ("--stride", "1e-9", "--stride must be at least one audio sample (1/16000 s at data.clip."
                              "sample_rate), got 1e-09: closer windows start on the same sample and repeat "
                              "each other")]:
        assert main(["extract", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                     "--out", str(tmp_path / "x.npz"), flag, value]) == 2  # fmt: skip
        assert capsys.readouterr().err == f"xdc: error: {why}\n"
    for command in (["extract"], ["eval", "finetune"]):
        with pytest.raises(SystemExit) as e:  # argparse's own usage error
            main([*command, "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                  "--out", str(tmp_path / "x.npz"), "--option", "missing"])  # fmt: skip
        assert e.value.code == 2 and "argument --option: 'missing' is not KEY=VALUE" in capsys.readouterr().err
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv"),
                 "--out", str(tmp_path / "f.json")]) == 2  # fmt: skip
    assert capsys.readouterr().err == ("xdc: error: finetuning needs items in split 'train' and in split 'test' (their "
                                       "split column); the dataset's splits: none\n")  # fmt: skip
    unclustered = tmp_path / "unclustered"  # a run whose first round did not finish (or a scratch run)
    shutil.copytree(run_dir, unclustered, ignore=shutil.ignore_patterns("labels"))
    assert main(["eval", "clusters", "--run", str(unclustered)]) == 2
    assert capsys.readouterr().err == (f"xdc: error: {unclustered} has no cluster assignments (labels/round_*.npz): "
                                       "no round has finished, or its method clusters nothing\n")  # fmt: skip
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "text.npz").write_text("not numpy at all\n")
    columns = {name: np.zeros(3, int) for name in ("label", "split", "fold", "group")}
    np.savez(tmp_path / "short.npz", features=np.zeros((4, 2)), **columns)
    np.savez(tmp_path / "objects.npz", features=np.zeros((3, 2)), **{**columns, "label": np.array([1, "a", None])})
    for name, why in [("other.npz", "(no features, label, split, fold, group in it)"), ("text.npz", "(not an .npz)"),
                      ("one.npy", "(one array, not an .npz of them)"),
                      ("short.npz", "(it needs features of clips x width and one entry per clip in the others: "
                                    "features (4, 2), label (3,), split (3,), fold (3,), group (3,))"),
                      ("objects.npz", "(Object arrays cannot be loaded when allow_pickle=False)")]:  # fmt: skip
        for protocol in ("linear", "kfold"):
            assert main(["eval", protocol, "--features", str(tmp_path / name)]) == 2
            err = capsys.readouterr().err
            assert err == f"xdc: error: {tmp_path / name} is not a features file of xdc extract {why}\n", err


def test_features_of_text_or_complex_numbers_are_a_one_line_error(tmp_path, capsys):
    """Text features stopped both probes with numpy's TypeError traceback from isfinite until 2026-12-02; complex
    ones printed scikit-learn's error followed by the whole array."""
    columns = {"label": np.array(["a", "b"] * 4), "split": np.array(["train"] * 6 + ["test"] * 2),
               "fold": np.arange(8) % 2 + 1, "group": np.array([str(i) for i in range(8)])}  # fmt: skip
    for name, x in (("text.npz", np.zeros((8, 2)).astype(str)), ("complex.npz", np.zeros((8, 2), complex))):
        np.savez(tmp_path / name, features=x, **columns)
        for protocol in ("linear", "kfold"):
            assert main(["eval", protocol, "--features", str(tmp_path / name)]) == 2
            assert capsys.readouterr().err == (f"xdc: error: {tmp_path / name} is not a features file of xdc extract "
                                               f"(its features are of dtype {x.dtype}, not real numbers)\n")


def test_a_features_file_cut_short_or_damaged_is_a_one_line_error(tmp_path, capsys):
    """A copy cut short, an empty file or damaged bytes: named with the reason, no traceback (until 2026-12-01:
    zipfile.BadZipFile, EOFError)."""
    whole = tmp_path / "whole.npz"
    np.savez(whole, features=np.zeros((500, 64), np.float32), label=np.zeros(500, int), split=np.array([""] * 500),
             fold=np.zeros(500, int), group=np.array(["g"] * 500))  # fmt: skip
    (tmp_path / "cut.npz").write_bytes(whole.read_bytes()[:50_000])
    (tmp_path / "empty.npz").write_bytes(b"")
    damaged = bytearray(whole.read_bytes())
    damaged[2000:6000] = bytes(b ^ 0x55 for b in damaged[2000:6000])  # inside the features' bytes
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    for name, why in [("cut.npz", "File is not a zip file (a truncated or damaged .npz)"),
                      ("empty.npz", "the file is empty"),
                      ("damaged.npz", "Bad CRC-32 for file 'features.npy' (a truncated or damaged .npz)")]:
        for protocol in ("linear", "kfold"):
            assert main(["eval", protocol, "--features", str(tmp_path / name)]) == 2
            assert capsys.readouterr().err == f"xdc: error: cannot read {tmp_path / name} as features: {why}\n"


def test_eval_out_replaces_only_an_earlier_result_of_its_protocol(run, tmp_path, capsys):
    """--out refuses, before any work, a file that is not a result of xdc eval: its own input given by mistake
    became JSON text (until 2026-12-01). An earlier result of the same protocol, old or new, is replaced; one of
    another protocol is refused too (until 2026-12-03 replaced: a finetuning's result by a linear probe's, say)."""
    root, run_dir = run
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * 10)
    feats = tmp_path / "f.npz"
    np.savez(feats, features=rng.normal(size=(20, 4)).astype(np.float32) + 3.0 * (labels == "b")[:, None],
             label=labels, split=np.array(["train"] * 12 + ["test"] * 8), fold=np.arange(20) // 2 % 2 + 1,
             group=np.array([f"g{i}" for i in range(20)]))  # fmt: skip
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')  # JSON, but not a result
    write_table([Item(i.path, i.label) for i in items_of(root)[:6]], tmp_path / "t.csv")
    finetune = ["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", str(tmp_path / "t.csv")]
    for out in (feats, notes):
        before = out.read_bytes()
        for command in (["eval", "linear", "--features", str(feats)], ["eval", "kfold", "--features", str(feats)],
                        ["eval", "clusters", "--run", str(run_dir)], finetune):
            assert main([*command, "--out", str(out)]) == 2
            captured = capsys.readouterr()
            why = ("exists and is not a result of xdc eval: give a new path (or remove it)" if out == notes
                   or command[1] in ("clusters", "finetune") else f"is the features file {feats} that this command "
                   "reads: give the result a .json path, e.g. f-result.json")  # fmt: skip
            assert captured.err == f"xdc: error: --out {out} {why}\n" and captured.out == ""
            assert out.read_bytes() == before and not out.with_name(f"{out.stem}.finetune").exists()
    result = tmp_path / "r.json"
    result.write_text('{"command": "eval linear", "top1": 0.5}')  # compact, as another tool may save one
    for _ in range(2):
        assert main(["eval", "linear", "--features", str(feats), "--out", str(result)]) == 0
        assert json.loads(result.read_text())["command"] == "eval linear"
    capsys.readouterr()
    before = result.read_bytes()
    for command in (["eval", "kfold", "--features", str(feats)], ["eval", "clusters", "--run", str(run_dir)],
                    finetune):
        assert main([*command, "--out", str(result)]) == 2
        assert capsys.readouterr().err == (f"xdc: error: --out {result} holds a result of xdc eval linear, which this "
                                           f"xdc {' '.join(command[:2])} would replace: give it another path (or "
                                           "remove the file)\n")  # fmt: skip
        assert result.read_bytes() == before and not result.with_name("r.finetune").exists()
    result.write_text('{"command": "eval clusters", "nmi": 0.5}')
    assert main(["eval", "clusters", "--run", str(run_dir), "--out", str(result)]) == 0
    empty = tmp_path / "tmp.json"  # mktemp's: nothing to lose
    empty.touch()
    assert main(["eval", "linear", "--features", str(feats), "--out", str(empty)]) == 0
    assert json.loads(empty.read_text())["command"] == "eval linear"
    fifo = tmp_path / "fifo"  # as --out >(cat) is: refused at once, where opening it to look inside waited for ever
    os.mkfifo(fifo)
    assert main(["eval", "linear", "--features", str(feats), "--out", str(fifo)]) == 2
    assert f"--out {fifo} exists and is not a result of xdc eval" in capsys.readouterr().err


def test_finetune_reports_the_test_videos_it_could_not_score(run, tmp_path, capsys):
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    items = items_of(root)  # 8 test videos of 3 s
    late = Item(items[1].path, items[1].label, "test", start_s=5.0, end_s=9.0, group="late")  # after the file's end
    items[4] = dataclasses.replace(items[4], start_s=0.5, end_s=9.0)  # a training window past it: cut, and said
    # a file that fails to read after its probe: its one test clip fails to load, and the video goes unscored
    unreadable = tmp_path / "unreadable.mp4"
    shutil.copy(items[2].path, unreadable)
    long = Item(str(unreadable), items[2].label, "test")
    broken = [tmp_path / f"broken{n}.mp4" for n in range(4)]
    for path in broken:
        path.write_bytes(b"nothing")
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    write_table([*items, late, long, *(Item(str(path), items[0].label, "test") for path in broken)], table)
    items_to_manifest([long], tmp_path / "ft.finetune" / "probe" / "test.probe.csv", "video")  # the command's probe
    _break_after_probe(unreadable)
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "video", "--data", str(table), "--out",
                 str(out), "--mode", "fc", "--set", "finetune.epochs=1", "--set", "finetune.batch_size=8", "--set",
                 "finetune.test_clips=1", "--set", "seed=3"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "... and 1 more skipped (the JSON lists them all)" in printed
    record = json.loads(out.read_text())
    assert [(w["split"], w["path"], w["end_s"]) for w in record["cut"]] == [("-", items[4].path, 9.0)]
    assert f"1 window(s) past their file's end cut there, e.g. {items[4].path} from 0.5 s to 9 s" in printed
    assert record["seed"] == 3
    assert (record["splits"][0]["n_test"], record["splits"][0]["n_test_scored"]) == (9, 8)
    # per class, the 8 test videos scored (the label names of labels.csv), as top1 counts them
    split = record["splits"][0]
    counts = np.array(split["confusion"]["counts"])
    assert set(split["per_class"]) <= set(split["confusion"]["classes"]) <= {item.label for item in items}
    assert counts.sum() == sum(c["n"] for c in split["per_class"].values()) == 8
    assert np.trace(counts) / counts.sum() == split["top1"]
    assert ("worst classes: " in printed) == (split["top1"] < 1) and "per_class" not in printed
    reasons = {skip["path"]: skip["reason"] for skip in record["skipped"]}
    assert len(record["skipped"]) == 6 and set(reasons) == {items[1].path, str(unreadable), *map(str, broken)}
    assert reasons[items[1].path] == "its window starts at 5s, at or after the file's end at 3s"
    assert reasons[str(unreadable)].startswith("InvalidDataError")
    # one group, one prediction: its items must share a label (an error before any training)
    twin = Item(items[3].path, "another", "test", start_s=1.0, group=items[0].group)
    cfg = FinetuneConfig(epochs=1, batch_size=8, test_clips=1)
    with pytest.raises(UserError, match=f"test items of group {items[0].path} have different labels"):
        finetune(run_dir, "video", [*items, twin], "fc", cfg, tmp_path, workers=0)


def test_finetune_tells_a_file_partly_kept_from_one_left_out(run, tmp_path, capsys):
    """Two test windows of early.mp4, whose sound lasts its first second: the one from 0 s is scored, the one from
    3 s has no sound and fails; late.mp4's one window, from 3 s too, fails. Training windows alike of train.mp4:
    each of two epochs trains on the first and fails the second. Until 2026-12-03 all three files were listed alike
    as skipped (as xdc extract listed them), though early.mp4 was scored and train.mp4 trained on."""
    from xdc.data.encode import write_av

    root, run_dir = run
    items = items_of(root)
    tone = 0.1 * np.ones(16000, np.float32)
    early, late, train = (str(tmp_path / name) for name in ("early.mp4", "late.mp4", "train.mp4"))
    for path in (early, late, train):
        write_av(Path(path), gray_frames(20, 32, 48), 4, tone, 16000)  # 5 s of pictures
    label = items[0].label
    windows = [Item(early, label, "test", start_s=0.0, end_s=2.0, group="early from 0 s"),
               Item(early, label, "test", start_s=3.0, end_s=5.0, group="early from 3 s"),
               Item(late, label, "test", start_s=3.0, end_s=5.0, group="late")]  # fmt: skip
    windows += [Item(train, label, "train", start_s=s, end_s=s + 2.0, group=f"train {s}") for s in (0.0, 3.0)]
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    write_table([*items, *windows], table)
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", str(table), "--out",
                 str(out), "--mode", "fc", "--set", "finetune.epochs=2", "--set", "finetune.batch_size=8", "--set",
                 "finetune.test_clips=1", "--set", "data.workers=0", "--set", "data.max_fail_fraction=0.5"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    after = "the clip at 3.00s starts after the sound's end at 1.00s"
    assert record["skipped"] == [{"split": "-", "path": late, "reason": after}]
    assert sorted(record["partly_kept"], key=lambda file: file["path"]) == [
        {"split": "-", "path": early, "clips_failed": 1, "clips_kept": 1, "reason": after},
        {"split": "-", "path": train, "clips_failed": 2, "clips_kept": 2, "reason": after}]  # fmt: skip
    assert "partly_kept" not in record["splits"][0]  # listed once, as skipped is
    assert (record["splits"][0]["n_test"], record["splits"][0]["n_test_scored"]) == (11, 9)  # early from 0 s scored
    assert f"skipped {late}: {after}" in printed
    assert f"partly kept {early}: 1 of its clips failed, 1 kept; the last: {after}" in printed
    assert f"partly kept {train}: 2 of its clips failed, 2 kept; the last: {after}" in printed


def test_a_file_given_twice_to_extract_or_finetune_from_python_is_refused(run, tmp_path):
    """load_dataset refuses a file its lists hold twice; items made in Python (read_table's, two datasets' joined)
    reach extract_features and finetune unchecked, which until 2026-12-02 embedded, trained on or scored the file
    twice, in both splits where it was in both."""
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    items = items_of(root)
    other = "test" if items[1].split == "train" else "train"
    for twice in ([*items, items[0]], [*items, dataclasses.replace(items[1], split=other, group="elsewhere")]):
        again = twice[-1]
        with pytest.raises(UserError) as raised:
            extract_features(run_dir, "audio", twice, tmp_path / "f.npz")
        first = next(i for i, item in enumerate(items) if item.path == again.path)
        assert str(raised.value) == f"{again.path} appears twice: item {first} and item {len(items)} (keep one)"
        assert not (tmp_path / "f.npz").exists()
        with pytest.raises(UserError) as raised:
            finetune(run_dir, "audio", twice, "fc", FinetuneConfig(epochs=1, batch_size=8), tmp_path, workers=0)
        assert str(raised.value) == f"{again.path} appears twice: item {first} and item {len(items)} (keep one)"
    segment = dataclasses.replace(items[0], start_s=1.0, end_s=2.0, group="seg")  # another part of it: no repeat
    assert extract_features(run_dir, "audio", [*items, segment], tmp_path / "f.npz")["items"] == len(items) + 1


def test_items_made_in_python_with_relative_paths_are_the_current_folders_files(run, tmp_path, monkeypatch):
    """A decoder opens a relative path in the current folder; until 2026-12-02 the probes looked for it beside the
    probe file instead, and extract_features said no item had a readable stream (finetune alike)."""
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    items = items_of(root)
    monkeypatch.chdir(root / "data")
    relative = [dataclasses.replace(item, path=os.path.relpath(item.path)) for item in items]
    assert not os.path.isabs(relative[0].path)
    summary = extract_features(run_dir, "audio", relative, tmp_path / "f.npz")
    assert summary["items"] == len(items) and summary["skipped"] == []
    result = finetune(run_dir, "audio", relative, "fc", FinetuneConfig(epochs=1, batch_size=8), tmp_path / "ft",
                      workers=0)  # fmt: skip
    assert result["skipped"] == [] and result["n_test"] == len(split_items(items, "test"))


@pytest.mark.parametrize("mode", ["fc", "full"])
def test_finetune_modes(run, tmp_path, mode):
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    cfg = FinetuneConfig(epochs=2, batch_size=8, lr=0.05, test_clips=2)
    result = finetune(run_dir, "video", items_of(root), mode, cfg, tmp_path, workers=0)
    assert 0 <= result["top1"] <= 1 and result["n_test"] == 8 and result["classes"] == 3
    assert result["top5"] == 1.0  # 3 classes: the true one is always in the top 5
    assert result["first_loss"] > 0 and result["last_loss"] > 0


def test_finetuning_on_batches_of_one_clip_that_batchnorm_cannot_train_on_is_refused(run, tmp_path):
    import shutil

    import yaml

    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    small = tmp_path / "run"  # the run, saved with 16 x 16 crops: layer4 is 1 x 1 x 1 for its 4 frames
    small.mkdir()
    shutil.copy(run_dir / "encoders.pt", small)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["data"]["clip"]["crop"] = 16
    (small / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = FinetuneConfig(epochs=1, batch_size=1, lr=0.05, test_clips=1)
    with pytest.raises(UserError, match=r"one video clip of 3 x 4 x 16 x 16 .* data\.clip\.crop above 16"):
        finetune(small, "video", items_of(root), "full", cfg, tmp_path / "full", workers=0)


def test_finetune_crops_its_training_clips_where_the_runs_data_settings_say(run, tmp_path):
    import shutil

    import yaml

    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    cropping = tmp_path / "run"  # the run, saved with settings whose training resize only enlarges the frames
    cropping.mkdir()
    shutil.copy(run_dir / "encoders.pt", cropping)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["data"]["augment"].update(scale_min=40, scale_max=44)
    saved["data"]["crops_on"] = "device"
    (cropping / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=0.05, test_clips=1)
    result = finetune(cropping, "video", items_of(root), "full", cfg, tmp_path, workers=0)
    assert result["crops_on"] == "device" and result["last_loss"] > 0 and result["n_test"] == 8
    plain = finetune(run_dir, "video", items_of(root), "fc", cfg, tmp_path / "plain", workers=0)
    assert plain["crops_on"] == "workers"  # tiny's resize may shrink (40 -> 36): the workers crop


def test_audio_clips_log_mel_where_the_runs_data_settings_say(run, tmp_path):
    import shutil

    import yaml

    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    items = items_of(root)
    features, summaries, finetuned = {}, {}, {}
    for where in ("workers", "device"):  # data.logmel_on: auto is the device on CUDA
        saved = tmp_path / where  # the run, saved with its log-mel computed where the encoder runs
        saved.mkdir()
        shutil.copy(run_dir / "encoders.pt", saved)
        settings = yaml.safe_load((run_dir / "config.yaml").read_text())
        settings["data"]["logmel_on"] = where
        (saved / "config.yaml").write_text(yaml.safe_dump(settings))
        summaries[where] = extract_features(saved, "audio", items[:6], tmp_path / f"{where}.npz", clips=2, workers=0)
        features[where] = np.load(tmp_path / f"{where}.npz")["features"]
        cfg = FinetuneConfig(epochs=1, batch_size=8, lr=0.05, test_clips=1)
        finetuned[where] = finetune(saved, "audio", items, "full", cfg, tmp_path / f"ft-{where}", workers=0)
    assert summaries["device"]["logmel_on"] == "device" and summaries["workers"]["logmel_on"] == "workers"
    np.testing.assert_allclose(features["device"], features["workers"], rtol=1e-3, atol=1e-4)
    assert finetuned["device"]["logmel_on"] == "device" and finetuned["workers"]["logmel_on"] == "workers"
    # the same training and test clips, no masks in this run: the same losses within float rounding
    assert finetuned["device"]["first_loss"] == pytest.approx(finetuned["workers"]["first_loss"], rel=1e-4)
    assert finetuned["device"]["last_loss"] == pytest.approx(finetuned["workers"]["last_loss"], rel=1e-3)


def test_fc_only_freezes_the_encoder_and_full_updates_it(run, tmp_path, monkeypatch):
    """The wrapper below only keeps a handle on the real encoder that training updates; nothing is faked."""

    from xdc.config import FinetuneConfig
    from xdc.evaluation import finetune as module

    root, run_dir = run
    used = {}
    original = module.load_source

    def keep(run, name, settings):  # keep a handle on the encoder that training updates
        source = original(run, name, settings)
        used["encoder"], used["before"] = source.encoder, {k: v.clone() for k, v in source.encoder.state_dict().items()}
        return source

    monkeypatch.setattr(module, "load_source", keep)
    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=0.05, test_clips=1)
    for mode, changed in (("fc", False), ("full", True)):
        module.finetune(run_dir, "video", items_of(root), mode, cfg, tmp_path / mode, workers=0)
        after = used["encoder"].state_dict()
        same = all(torch.equal(after[k], used["before"][k]) for k in after)
        assert same is not changed, mode


def test_evaluation_runs_where_asked_and_says_so(run, tmp_path, capsys):
    from xdc.evaluation.device import EvalDevice, pick_device
    from xdc.evaluation.sources import load_run_encoder

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name, reason in (("mps", "runs on cpu or cuda"), ("gpu0", "unknown device"), ("cuda:99", "CUDA device")):
        with pytest.raises(UserError, match=reason):
            pick_device(name)
    root, run_dir = run
    items = items_of(root)[:3]
    summary = extract_features(run_dir, "video", items, tmp_path / "f.npz", clips=2, device="cpu")
    assert (summary["device"], summary["bf16"]) == ("cpu", False)
    # A run trained with train.precision=bf16 (on its GPUs) is evaluated on a CPU in float32 all the same.
    assert not EvalDevice(torch.device("cpu"), load_config(None, ["train.precision=bf16"]), "video").bf16
    # The loader now sends uint8 video, normalised after the copy: the features of the dataset's own normalised
    # clips, computed here by hand, come out the same.
    encoder, _, cfg = load_run_encoder(run_dir, "video")
    manifest = items_to_manifest(items, tmp_path / "probe.csv", "video")[0]
    clips = torch.stack([EvalClips(manifest, cfg.data, clips=2, modalities=("video",))[k]["video"] for k in range(6)])
    with torch.no_grad():
        expected = encoder(clips).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "f.npz")["features"], expected, rtol=1e-5, atol=1e-6)
    if not torch.cuda.is_available():
        write_table(items, tmp_path / "t.csv")
        assert main(["extract", "--run", str(run_dir), "--encoder", "video", "--data", str(tmp_path / "t.csv"),
                     "--out", str(tmp_path / "x.npz"), "--device", "cuda"]) == 2  # fmt: skip
        assert "this machine has no CUDA device" in capsys.readouterr().err


def test_finetuning_a_video_encoder_on_audio_files_names_why_nothing_is_read(run, tmp_path):
    """Every file skipped for want of a video stream was told as "needs >= 2 classes in 'train' and a 'test' split
    (0, 0)" until 2026-12-01, naming neither the files nor why."""
    import wave

    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    _, run_dir = run
    items = []
    for n, split in enumerate(("train", "train", "test")):
        path = tmp_path / f"{n}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(bytes(2 * 16000))
        items.append(Item(str(path), "ab"[n % 2], split))
    with pytest.raises(UserError, match="none of the 2 train items has a readable video stream") as error:
        finetune(run_dir, "video", items, "fc", FinetuneConfig(epochs=1), tmp_path)
    assert str(error.value).endswith(f"(the first: {items[0].path}: no video stream)")


def test_finetuning_counts_test_videos_as_groups_not_items(run, tmp_path):
    """Two windows of each test file, one group: n_test said 16 (the items) against 8 scored, as if half the test
    videos had failed to read (until 2026-12-01)."""
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    items = [i for i in items_of(root) if i.split == "train"]
    items += [Item(i.path, i.label, "test", start_s=s, end_s=s + 1.0) for i in items_of(root) if i.split == "test"
              for s in (0.0, 1.0)]  # fmt: skip
    cfg = FinetuneConfig(epochs=1, batch_size=4, test_clips=1)
    result = finetune(run_dir, "audio", items, "fc", cfg, tmp_path)
    assert (result["n_test"], result["n_test_scored"]) == (8, 8)


def test_finetuning_draws_the_same_clips_whatever_the_loader_workers(run, tmp_path):
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    cfg = FinetuneConfig(epochs=2, batch_size=4, lr=0.05, test_clips=1)
    results = [finetune(run_dir, "audio", items_of(root), "full", cfg, tmp_path, workers=w) for w in (0, 2)]
    assert results[0]["epoch_losses"] == results[1]["epoch_losses"]
    assert results[0]["clip_top1"] == results[1]["clip_top1"]


def test_a_diverged_finetuning_is_one_line_naming_the_lr(run, tmp_path, capsys):
    """A loss that turns NaN (a learning rate far too high) passed for a batch whose clips all failed, and the test
    then stopped on NaN scores with a ValueError traceback (until 2026-12-03)."""
    root, run_dir = run
    table, out = tmp_path / "t.csv", tmp_path / "ft.json"
    write_table(items_of(root), table)
    command = [*_finetune_cli(run_dir, table, out, "full"), "--set=finetune.epochs=1", "--set=finetune.lr=1e30"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"xdc: error: train-test: the loss of batch \d+ is (nan|inf|-inf): the finetuning diverged; "
                        r"run it again with a lower finetune.lr \(this one's: 1e\+30\)\n", err), err
    assert not out.exists()


def test_a_result_holds_null_for_nan_which_strict_readers_take(tmp_path):
    """Python's json writes NaN and Infinity, which jq and JavaScript refuse; every eval result goes through
    _write, and reads back (the page of xdc report reads results written before 2026-12-03 with NaN alike)."""
    from xdc.evaluation.commands import _write
    from xdc.evaluation.result_page import load_result

    out = tmp_path / "r.json"
    record = {"command": "eval finetune", "splits": [{"first_loss": float("nan"), "epoch_losses": [1.5, float("inf")],
                                                      "confusion": {"classes": ["a"], "counts": [[1]]}}]}
    _write(record, out)
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    split = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a result"))["splits"][0]
    assert (split["first_loss"], split["epoch_losses"]) == (None, [1.5, None])
    assert load_result(out)["splits"][0]["first_loss"] is None
    out.write_text(text.replace("null", "NaN", 1))  # as written before
    assert np.isnan(load_result(out)["splits"][0]["first_loss"])


def _finetune_cli(run_dir: Path, table: Path, out: Path, mode: str) -> list[str]:
    settings = ["finetune.epochs=6", "finetune.batch_size=4", "finetune.checkpoint_every=1", "finetune.test_clips=1",
                "finetune.lr=0.05"]  # fmt: skip
    return ["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--data", str(table), "--out", str(out),
            "--mode", mode, *(f"--set={s}" for s in settings)]  # fmt: skip


@pytest.mark.parametrize("mode", ["full", "fc"])
def test_finetuning_killed_goes_on_exactly_when_run_again(run, tmp_path, capsys, mode, monkeypatch):
    root, run_dir = run
    table = tmp_path / "table.csv"
    write_table(items_of(root), table)
    straight, killed = tmp_path / "straight.json", tmp_path / "killed.json"
    assert main(_finetune_cli(run_dir, table, straight, mode)) == 0
    checkpoint = tmp_path / "killed.finetune" / "train-test" / "last.pt"
    _start_and_kill([sys.executable, "-m", "xdc.cli", *_finetune_cli(run_dir, table, killed, mode)], checkpoint)
    assert checkpoint.exists() and not killed.exists(), "the finetuning ended before it could be killed"
    from xdc.training.checkpoint import load, save_atomic

    state = load(checkpoint)
    kept = set(state["trained"])  # fc-only keeps the linear layer alone: the encoder is the run's
    assert kept == {"weight", "bias"} if mode == "fc" else len(kept) > 2
    # as if computed with another thread count: said, as not bit-exact on the CPU (here it still is)
    save_atomic({**state, "threads": torch.get_num_threads() + 1}, checkpoint)
    capsys.readouterr()
    monkeypatch.setattr("xdc.progress.LINE_EVERY_S", 0.0)  # each bar's lines from its start
    assert main([*_finetune_cli(run_dir, table, killed, mode), "--set=data.workers=1"]) == 0  # the run's: 0
    out, err = capsys.readouterr()
    assert "train-test: resuming after batch" in out  # another number of workers draws the same clips
    after = int(re.search(r"resuming after batch (\d+)", out)[1])
    bars = re.findall(r"train-test epoch (\d)/6: +\d+%\|[^|]*\| (\d+)/(\d+)", err)
    # the resumed epoch's bar starts at the batches it did before, of its 4 (until 2026-12-03 at 0 of those left)
    assert bars[0] == (str(after // 4 + 1), str(after % 4), "4") and {total for *_, total in bars} == {"4"}, err
    assert f"WARNING: this run computed with {torch.get_num_threads() + 1} CPU threads and goes on with" in err
    a, b = (json.loads(path.read_text())["splits"][0] for path in (straight, killed))
    assert len(a["epoch_losses"]) == 6 and a["epoch_losses"] == b["epoch_losses"]  # every batch's loss, bit for bit
    assert (a["top1"], a["clip_top1"]) == (b["top1"], b["clip_top1"])
    # Once the result is written only the logs stay: each batch's loss, and the test's accuracy.
    folder = tmp_path / "killed.finetune"
    assert sorted(p.name for p in folder.iterdir()) == ["log.jsonl", "probe", "tb"]
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    batches = [r["step"] for r in records if r["kind"] == "train-test"]
    assert batches == list(range(1, 4 * 6 + 1))  # 16 training items in batches of 4, 6 epochs; each once
    assert [r["kind"] for r in records].count("train-test_test") == 1


def test_a_finished_finetuning_is_kept_for_the_same_settings_only(run, tmp_path, capsys):
    import dataclasses

    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    from xdc.training.runlog import RunLog

    root, run_dir = run
    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=0.05, test_clips=1)
    state, log = tmp_path / "state", RunLog(tmp_path / "logs")
    first = finetune(run_dir, "audio", items_of(root), "full", cfg, tmp_path, workers=0, state=state, log=log)
    assert [p.name for p in state.iterdir()] == ["result.pt"]
    capsys.readouterr()
    again = finetune(run_dir, "audio", items_of(root), "full", cfg, tmp_path, workers=0, state=state, log=log)
    assert again == first and "finished before with the same settings" in capsys.readouterr().out
    other = dataclasses.replace(cfg, lr=0.01)
    changed = finetune(run_dir, "audio", items_of(root), "full", other, tmp_path, workers=0, state=state, log=log)
    assert "made with other settings" in capsys.readouterr().err
    assert changed["epoch_losses"] != first["epoch_losses"]
    log.close()  # started over, it logged alone: the first start's records went (kept until 2026-12-01)
    records = [json.loads(line) for line in (tmp_path / "logs" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "finetune"]
    assert steps == list(range(1, len(steps) + 1)) and max(r.get("lr", 0) for r in records) == 0.01  # cosine from it
    assert [r["kind"] for r in records].count("finetune_test") == 1
    fewer = items_of(root)[:-1]  # other items: started over too
    finetune(run_dir, "audio", fewer, "full", other, tmp_path, workers=0, state=state)
    assert "made with other settings" in capsys.readouterr().err


def _copied_media(root: Path, folder: Path) -> list[Item]:
    """The run fixture's items, their files copied into ``folder``: a test may change them in place."""
    folder.mkdir()
    items = []
    for item in items_of(root):
        shutil.copy2(item.path, folder / Path(item.path).name)
        items.append(dataclasses.replace(item, path=str(folder / Path(item.path).name)))
    return items


class _Interrupted(Exception):
    pass


def test_a_finetuning_resumed_after_a_file_changed_in_place_starts_over(run, tmp_path, capsys):
    """A training file re-encoded under its name between an interrupted finetuning and its resume: the kept
    checkpoint trained on the old content, so the finetuning starts over with a note naming the files (until
    2026-12-02 it went on, mixing the old file's training with the new's), and ends as a straight run on the new
    files does."""
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune
    from xdc.training.runlog import RunLog

    class StopAt(RunLog):  # an interruption (as Ctrl-C would) after the checkpoint of batch 2
        def write(self, kind: str, step: int, **values) -> None:
            if step == 3:
                raise _Interrupted
            super().write(kind, step, **values)

    root, run_dir = run
    items = _copied_media(root, tmp_path / "media")
    cfg = FinetuneConfig(epochs=1, batch_size=4, lr=0.05, test_clips=1, checkpoint_every=1)
    state = tmp_path / "state"
    with pytest.raises(_Interrupted):
        finetune(run_dir, "audio", items, "full", cfg, tmp_path / "work", workers=0, state=state,
                 log=StopAt(tmp_path / "logs"))  # fmt: skip
    assert (state / "last.pt").exists()
    train = [item.path for item in items if item.split == "train"]
    shutil.copyfile(train[1], train[0])  # another sound under the first's name (and label)
    capsys.readouterr()
    resumed = finetune(run_dir, "audio", items, "full", cfg, tmp_path / "work", workers=0, state=state)
    out, err = capsys.readouterr()
    assert "resuming after batch" not in out
    assert f"NOTE: {state / 'last.pt'} was made with other settings (what differs: the items' files as probed: " \
           "size, mtime or status (one changed in place)); starting over" in err
    straight = finetune(run_dir, "audio", items, "full", cfg, tmp_path / "work", workers=0)
    assert resumed["epoch_losses"] == straight["epoch_losses"] and resumed["clip_top1"] == straight["clip_top1"]
    # finished with the same files: kept as it is
    assert finetune(run_dir, "audio", items, "full", cfg, tmp_path / "work", workers=0, state=state) == resumed
    assert "finished before with the same settings" in capsys.readouterr().out


def _as_they_are(*paths: Path) -> list[tuple[int, bytes]]:
    return [(path.stat().st_mtime_ns, path.read_bytes()) for path in paths]


def test_eval_finetune_run_again_when_finished_writes_nothing(run, tmp_path, capsys):
    """A finished eval finetune run again with the same weights, items, files and settings finetunes nothing and
    writes nothing, its result and logs left as they are (until 2026-12-02 it finetuned again, its logs started
    over); with another setting or a file changed in place it finetunes again, as before."""
    root, run_dir = run
    items = _copied_media(root, tmp_path / "media")
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    write_table(items, table)
    command = [*_finetune_cli(run_dir, table, out, "fc"), "--set=finetune.epochs=1", "--set=finetune.batch_size=8"]
    assert main(command) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    logs = tmp_path / "ft.finetune" / "log.jsonl"
    before = _as_they_are(out, logs)
    assert main(command) == 0
    said = capsys.readouterr().out
    assert said == (f"{out} already holds these results (the same weights, items, files and settings): nothing to "
                    f"do; remove {out} to run again\n")  # fmt: skip
    assert _as_they_are(out, logs) == before
    assert sorted(p.name for p in (tmp_path / "ft.finetune").iterdir()) == ["log.jsonl", "probe", "tb"]
    # another number of loader workers draws the same clips, and another checkpoint_every keeps progress at other
    # batches: kept (until 2026-12-03 finetuned again, the second from the start, as its checkpoints were gone)
    for other in ("--set=data.workers=1", "--set=finetune.checkpoint_every=2"):
        assert main([*command, other]) == 0
        assert "already holds these results" in capsys.readouterr().out and _as_they_are(out, logs) == before
    assert json.loads(out.read_text())["config"]["checkpoint_every"] == 1  # the one it was made with
    # another setting: finetuned again and written again
    assert main([*command, "--set=finetune.lr=0.02"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    after = _as_they_are(out)
    assert json.loads(after[0][1])["made_with"] != json.loads(before[0][1])["made_with"]
    # a test file changed in place (the same name, label and group): finetuned again
    test = [item.path for item in items if item.split == "test"]
    shutil.copyfile(test[1], test[0])
    assert main([*command, "--set=finetune.lr=0.02"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _as_they_are(out)[0][0] != after[0][0]
    # a record of another finetuning in --out (or one of before 2026-12-02, with no made_with): finetuned again
    out.write_text(json.dumps({**json.loads(out.read_text()), "made_with": "another"}))
    assert main([*command, "--set=finetune.lr=0.02"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out


def test_eval_finetune_says_which_test_classes_it_never_trained_on(run, tmp_path, capsys):
    """A test video of a class no training video has (a class of the test split alone, or whose training files are
    all unreadable) counts as wrong: said in a line and counted in the JSON, as eval linear and kfold do (until
    2026-12-03 unsaid: only a lower top1 told)."""
    root, run_dir = run
    items = items_of(root)
    tests = [i for i, item in enumerate(items) if item.split == "test"]
    items[tests[0]] = dataclasses.replace(items[tests[0]], label="newclass")
    items[tests[1]] = dataclasses.replace(items[tests[1]], label="ghost")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"nothing")
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    write_table([*items, Item(str(broken), "ghost", "train")], table)
    assert main([*_finetune_cli(run_dir, table, out, "fc"), "--set=finetune.epochs=1", "--set=finetune.batch_size=8",
                 "--set=data.workers=0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 test videos of classes no readable training video has (ghost, newclass) count as wrong\n" in printed
    split = json.loads(out.read_text())["splits"][0]
    assert (split["untrained"], split["untrained_classes"], split["classes"]) == (2, ["ghost", "newclass"], 3)
    assert split["per_class"]["ghost"] == {"n": 1, "top1": 0.0}


def test_eval_finetune_records_the_datasets_options(run, tmp_path):
    """--option changes what is finetuned on (missing=skip drops files the table lists): the result says which were
    given (until 2026-12-03 it did not)."""
    root, run_dir = run
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    write_table([*items_of(root), Item(str(tmp_path / "gone.mp4"), "class00", "train")], table)
    with pytest.warns(UserWarning, match="1 of 25 files listed in .* not found"):
        assert main([*_finetune_cli(run_dir, table, out, "fc"), "--set=finetune.epochs=1",
                     "--set=finetune.batch_size=8", "--option", "missing=skip"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["options"] == {"missing": "skip"}


def _finetuned_once(run_dir: Path, root: Path, table: Path, out: Path) -> tuple[list[str], Path, bytes]:
    """A finished fc finetuning on the whole dataset into ``out``: its command, its log and the log's bytes."""
    write_table(items_of(root), table)
    command = [*_finetune_cli(run_dir, table, out, "fc"), "--set=finetune.epochs=1", "--set=finetune.batch_size=8"]
    assert main(command) == 0
    logs = out.with_suffix(".finetune") / "log.jsonl"
    return command, logs, logs.read_bytes()


def test_eval_finetune_refused_for_its_data_writes_no_folder(run, tmp_path, capsys):
    """A mistake in what to finetune on (a table without splits, --split of a CSV) is one line, and leaves no
    OUT.finetune folder of empty logs behind (until 2026-12-03 it did); nor does one in --device remove the logs of
    a finished finetuning."""
    root, run_dir = run
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    write_table([dataclasses.replace(item, split="") for item in items_of(root)], table)
    for extra, error in (([], "finetuning needs items in split 'train' and in split 'test' (their split column); "
                               "the dataset's splits: none"),
                         (["--split", "all"], "csv has no numbered official splits; leave split out (items carry "
                                              "their split or fold)")):  # fmt: skip
        assert main([*_finetune_cli(run_dir, table, out, "fc"), *extra]) == 2
        assert capsys.readouterr().err == f"xdc: error: {error}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    # a device this machine lacks, given to run again with other settings: refused before the first finetuning's
    # logs went (until 2026-12-03 after)
    command, logs, before = _finetuned_once(run_dir, root, table, out)
    capsys.readouterr()
    assert main([*command, "--set=seed=1", "--device", "cuda:64"]) == 2
    assert capsys.readouterr().err.startswith("xdc: error: device 'cuda:64': this machine has ")
    assert logs.read_bytes() == before and (tmp_path / "ft.finetune" / "tb").is_dir()
    # nor do a table's training items of one class
    one = items_of(root)[0].label
    write_table([item for item in items_of(root) if item.split == "test" or item.label == one], table)
    assert main(command) == 2
    assert capsys.readouterr().err == ("xdc: error: finetuning needs >= 2 classes among the readable training items, "
                                       "found 1\n")  # fmt: skip
    assert logs.read_bytes() == before


def test_eval_finetune_refused_with_no_result_to_compare_keeps_the_earlier_logs(run, tmp_path, capsys):
    """Where --out holds no result to compare with (removed to run again, as the command says), training items of
    one class and a batch size the torchrun ranks cannot share out are refused before the earlier finetuning's logs
    go (until 2026-12-03 after)."""
    from xdc.config import Config, FinetuneConfig
    from xdc.evaluation.commands import eval_finetune
    from xdc.training.distributed import Dist

    root, run_dir = run
    table, out = tmp_path / "table.csv", tmp_path / "ft.json"
    command, logs, before = _finetuned_once(run_dir, root, table, out)
    out.unlink()
    one = items_of(root)[0].label
    write_table([item for item in items_of(root) if item.split == "test" or item.label == one], table)
    capsys.readouterr()
    assert main(command) == 2
    assert capsys.readouterr().err == ("xdc: error: finetuning needs >= 2 classes among the readable training items, "
                                       "found 1\n")  # fmt: skip
    assert logs.read_bytes() == before
    write_table(items_of(root), table)
    cfg = Config(finetune=FinetuneConfig(epochs=1, batch_size=5))  # rank 0 of 2, as torchrun's first rank runs it
    with pytest.raises(UserError, match=r"^finetune.batch_size \(5\) must be a multiple of the 2 ranks$"):
        eval_finetune(run_dir, "audio", "csv", table, None, "fc", cfg, out, {}, ctx=Dist(rank=0, world_size=2))
    assert logs.read_bytes() == before and (tmp_path / "ft.finetune" / "tb").is_dir()


def _break_after_probe(path: Path) -> None:
    """Its header gone, every read of ``path`` fails; its size and time are kept, so its cached probe stands."""
    kept = path.stat()
    with open(path, "r+b") as f:
        f.write(bytes(4096))
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))


@pytest.mark.parametrize("mode", ["fc", "full"])
def test_finetuning_on_two_gloo_ranks(run, tmp_path, mode):
    """torchrun with 2 processes: each rank takes every other clip of each batch, DDP averages the gradients, the
    test clips are shared out and gathered. fc-only matches one process (the frozen encoder is in eval mode, so two
    half-batches' mean gradient is the batch's): the same losses within float rounding, the same accuracy."""
    from xdc.evaluation.extract import items_to_manifest

    root, run_dir = run
    items = items_of(root)
    if mode == "fc":  # a 17th training file, which fails to read after its probe: the ranks have draws 9 and 8,
        # and the clips of each step that survive fall unevenly on them
        broken = tmp_path / "broken.mp4"
        shutil.copy(items[1].path, broken)
        items.append(Item(str(broken), items[1].label, "train", 1))
        for run_name in ("single", "ddp"):  # each command's probes, beside its logs
            probes = tmp_path / f"{run_name}.finetune" / "probe" / "train.probe.csv"
            items_to_manifest(split_items(items, "train"), probes, "audio")
        _break_after_probe(broken)
    table = tmp_path / "table.csv"
    write_table(items, table)
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    tolerant = ["--set=data.max_fail_fraction=0.5"]
    assert main([*_finetune_cli(run_dir, table, single, mode), *tolerant]) == 0
    # "--": torchrun's parser would take --run for an abbreviation of its own --run-path (docs/evaluation.md)
    job = [*torchrun_command(2), "-m", "--", "xdc.cli", *_finetune_cli(run_dir, table, ddp, mode), *tolerant]
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"wrote {ddp}") == 1  # rank 0 alone writes
    a, b = (json.loads(path.read_text())["splits"][0] for path in (single, ddp))
    assert (a["ranks"], b["ranks"], b["n_test"]) == (1, 2, a["n_test"])
    assert len(b["epoch_losses"]) == 6 and all(np.isfinite(b["epoch_losses"]))
    if mode == "fc":  # listed once, though both ranks failed to read it (until 2026-12-01: once per rank)
        listed = [[skip["path"] for skip in json.loads(path.read_text())["skipped"]] for path in (single, ddp)]
        assert listed == [[str(broken)], [str(broken)]]
        assert done.stdout.count(f"skipped {broken}") == 1
    if mode == "fc":
        np.testing.assert_allclose(b["epoch_losses"], a["epoch_losses"], rtol=1e-5)
        assert (b["top1"], b["clip_top1"]) == (a["top1"], a["clip_top1"])
    assert sorted(p.name for p in (tmp_path / "ddp.finetune").iterdir()) == ["log.jsonl", "probe", "tb"]


def test_finetuning_ranks_started_with_other_settings_stop_before_it_starts(run, tmp_path):
    """Each node's torchrun gives its ranks that node's command line: until 2026-12-03 a rank started with another
    finetune.lr or seed trained on with it, apart from the others, without a word. Now rank 0 names what differs,
    before any probe or log is written; data.workers, which fits each node's cores, may differ."""
    root, run_dir = run
    table, out = tmp_path / "table.csv", tmp_path / "ddp.json"
    write_table(items_of(root), table)
    driver = tmp_path / "driver.py"  # rank 1 as a node started with another command line
    driver.write_text("import os, sys\nfrom xdc.cli import main\nargs = sys.argv[1:]\nif os.environ['RANK'] == '1':\n"
                      "    args += ['--set=finetune.lr=0.5', '--set=seed=3', '--set=data.workers=1']\n"
                      "sys.exit(main(args))\n")  # fmt: skip
    job = [*torchrun_command(2), "--", str(driver), *_finetune_cli(run_dir, table, out, "full")]
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    said = ("xdc: error: rank 1 was started with other settings than rank 0: seed=3 (rank 0: 0), finetune.lr=0.5 "
            "(rank 0: 0.05); start every node with the same command line and --config\n")  # fmt: skip
    assert done.returncode != 0 and done.stderr.count("xdc: error") == 1 and said in done.stderr, done.stderr[-3000:]
    assert not out.exists() and not (tmp_path / "ddp.finetune" / "probe").exists()


def test_finetuning_on_two_ranks_judges_their_failed_clips_together(run, tmp_path):
    """Two of the 16 training files fail to read after their probe: 2 failed clips of 16 an epoch, 8 of each rank's.
    Judged on every rank's counts together at the end of the first epoch (16 clips, 2 failed: more than
    data.max_fail_fraction=0.05), both ranks stop there with one line; until 2026-12-03 only after 4 epochs, once the
    50 clips needed before a judgement within a pass were there. Until 2026-12-02 each rank judged its own 48 clips of
    6 epochs, never enough to judge, and the run went on to the end (and where one rank crossed the fraction alone,
    it stopped alone while the other waited in the next step)."""
    root, run_dir = run
    items = items_of(root)
    train = split_items(items, "train")
    broken = sorted(item.path for item in train[:2])
    copies = []
    for item in items:  # copies: the run fixture's files stay whole for the other tests
        copy = tmp_path / "media" / Path(item.path).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(item.path, copy)
        copies.append(Item(str(copy), item.label, item.split, item.fold))
    items_to_manifest(split_items(copies, "train"), tmp_path / "ddp.finetune" / "probe" / "train.probe.csv", "audio")
    for path in broken:
        _break_after_probe(tmp_path / "media" / Path(path).name)
    table = tmp_path / "table.csv"
    write_table(copies, table)
    ddp = tmp_path / "ddp.json"
    job = [*torchrun_command(2), "-m", "--", "xdc.cli", *_finetune_cli(run_dir, table, ddp, "fc")]
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode != 0 and not ddp.exists(), done.stderr[-3000:]
    # said once, by rank 0, for both ranks (until 2026-12-02 by each), naming a broken file
    stop = "xdc: error: 2 of 16 clips failed to load (12.5%, more than data.max_fail_fraction=0.05); last: "
    named = re.findall(re.escape(stop) + r"(.+?\.mp4): ", done.stderr)
    assert len(named) == 1 and done.stderr.count("xdc: error:") == 1, done.stderr[-3000:]
    assert named[0] in [str(tmp_path / "media" / Path(path).name) for path in broken]


def test_finetuning_refuses_a_video_in_both_splits(run, tmp_path):
    """Until 2026-12-02 a file listed in both splits was trained on and then scored as unseen."""
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    items = items_of(root)
    test = split_items(items, "test")[0]
    leaked = [*items, Item(test.path, test.label, "train")]
    with pytest.raises(UserError, match=f"^1 test videos \\(groups\\) are in split 'train' too, e.g. {test.path}: "):
        finetune(run_dir, "audio", leaked, "full", FinetuneConfig(), tmp_path)
    windows = [*items, Item(test.path, test.label, "train", end_s=1.0, group=f"{test.path}#start")]  # its own group
    assert finetune(run_dir, "audio", windows, "fc", FinetuneConfig(epochs=1), tmp_path, workers=0)["n_train"] == 17


def test_finetuning_batches_must_share_out_evenly_over_the_ranks(run, tmp_path):
    from xdc.config import FinetuneConfig
    from xdc.evaluation.finetune import finetune
    from xdc.training.distributed import Dist

    root, run_dir = run
    cfg = FinetuneConfig(batch_size=5)
    with pytest.raises(UserError, match=r"batch_size \(5\) must be a multiple of the 2 ranks"):
        finetune(run_dir, "audio", items_of(root), "full", cfg, tmp_path, ctx=Dist(rank=0, world_size=2))


def _start_and_kill(command: list[str], kept: Path, env: dict | None = None) -> list[int]:
    """Start ``command``; once a file matching ``kept`` (a glob pattern in its folder) exists, SIGKILL it and its
    child processes (``kill_with_children``). Returns the children's pids."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or {**os.environ})
    deadline = time.time() + 300
    while not list(kept.parent.glob(kept.name)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    return kill_with_children(proc)


@pytest.mark.parametrize("first,then,mode", [(2, 1, "fc"), (1, 2, "fc"), (2, 2, "full")])
def test_a_finetuning_killed_goes_on_with_another_number_of_ranks(run, tmp_path, first, then, mode):
    """The checkpoint counts batches of the whole job: another number of ranks takes it up at the same clip (fc-only,
    where 2 ranks train as one process does); and full finetuning killed on 2 ranks goes on on 2 exactly as the
    same job straight through (every rank's BatchNorm normalising its own clips, and testing with rank 0's
    statistics)."""
    from xdc.training.checkpoint import load

    root, run_dir = run
    table = tmp_path / "table.csv"
    write_table(items_of(root), table)
    straight, killed = tmp_path / "straight.json", tmp_path / "killed.json"

    def launch(ranks: int, out: Path) -> list[str]:
        if ranks == 1:
            return [sys.executable, "-m", "xdc.cli", *_finetune_cli(run_dir, table, out, mode)]
        return [*torchrun_command(ranks), "-m", "--", "xdc.cli", *_finetune_cli(run_dir, table, out, mode)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch(1 if mode == "fc" else then, straight), capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "killed.finetune" / "train-test" / "last.pt"
    killed_too = _start_and_kill(launch(first, killed), checkpoint, env)
    assert checkpoint.exists() and not killed.exists(), "the finetuning ended before it could be killed"
    assert len(killed_too) == (first if first > 1 else 0)  # torchrun's ranks
    assert len(load(checkpoint)["failures"]) == first  # each rank's count of failed clips
    resumed = subprocess.run(launch(then, killed), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming after batch") == 1  # rank 0 says it
    a, b = (json.loads(path.read_text())["splits"][0] for path in (straight, killed))
    if mode == "full":  # the same ranks: every loss to the bit
        assert b["epoch_losses"] == a["epoch_losses"]
    np.testing.assert_allclose(b["epoch_losses"], a["epoch_losses"], rtol=1e-5)
    assert (b["top1"], b["clip_top1"], b["ranks"]) == (a["top1"], a["clip_top1"], then)


def _extract_cli(run_dir: Path, table: Path, out: Path) -> list[str]:
    return ["extract", "--run", str(run_dir), "--encoder", "video", "--data", str(table), "--clips", "4",
            "--batch-size", "4", "--out", str(out)]  # fmt: skip


def _extract_launch(tmp_path: Path, ranks: int, arguments: list[str], wait: bool = False,
                    block: bool = False) -> list[str]:  # fmt: skip
    """``xdc extract`` with a part per batch (a real part keeps 16 to 256), in one process or under torchrun; to
    ``wait`` a minute once a rank kept its first part, where the test kills it (not a race with its end); to
    ``block`` the summary's write with a folder made in its place once the features are written."""
    driver = tmp_path / "driver.py"
    driver.write_text("import sys, time\nfrom xdc.evaluation import extract\nfrom xdc.training import checkpoint\n"
                      "from xdc.cli import main\nextract.PART_BATCHES = 1\nadd = checkpoint.KeptParts.add\n"
                      "def add_then_wait(self, number, part):\n    add(self, number, part)\n    time.sleep(60)\n"
                      f"if {wait}:\n    checkpoint.KeptParts.add = add_then_wait\n"
                      "write = extract._write\ndef write_then_block(out, *args):\n    written = write(out, *args)\n"
                      "    out.with_suffix('.json').mkdir()\n    return written\n"
                      f"if {block}:\n    extract._write = write_then_block\n"
                      "sys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    if ranks == 1:
        return [sys.executable, str(driver), *arguments]
    return [*torchrun_command(ranks), "--", str(driver), *arguments]


def _same_features(a: Path, b: Path) -> None:
    a, b = np.load(a), np.load(b)
    assert a["features"].shape == (96, 64) and a.files == b.files
    for name in a.files:  # the same batches; the ranks run their convolutions on one thread, the test process on two
        if name == "made_with":  # what made them: the same, but the parts' size (_extract_launch's PART_BATCHES)
            continue
        if name == "features":
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_an_extraction_killed_on_two_ranks_goes_on_in_one_process(run, tmp_path, capsys, monkeypatch):
    """The parts are numbered by their clips, not by rank: what 2 ranks kept before a SIGKILL, one process finishes,
    with the same arrays as one process straight through."""

    from xdc.evaluation import extract

    root, run_dir = run
    items = items_of(root)
    table = tmp_path / "table.csv"
    write_table(items, table)
    monkeypatch.setattr(extract, "PART_BATCHES", 1)
    extract.extract_features(run_dir, "video", items, tmp_path / "straight.npz", clips=4, batch_size=4, workers=0)
    assert not (tmp_path / "straight.parts").exists()
    killed, parts = tmp_path / "killed.npz", tmp_path / "killed.parts"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = _start_and_kill(_extract_launch(tmp_path, 2, _extract_cli(run_dir, table, killed), wait=True),
                            parts / "part-*.pt", env)  # fmt: skip
    assert len(ranks) == 2 and list(parts.glob("part-*.pt")), "the extraction ended before it could be killed"
    assert not killed.exists()
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the ranks computed with one thread: said, as not bit-exact on the CPU
    try:
        assert main(_extract_cli(run_dir, table, killed)) == 0
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert "parts kept in" in out
    assert "WARNING: this run computed with 1 CPU thread and goes on with 2" in err
    _same_features(tmp_path / "straight.npz", killed)
    assert not parts.exists()
    # parts made with other settings are not mixed in: the folder starts over (of an extraction not finished: a
    # finished one with these settings would be kept as it is)
    killed.unlink()
    parts.mkdir()
    torch.save({"identity": "other settings"}, parts / "part-00000.pt")
    assert main(_extract_cli(run_dir, table, killed)) == 0
    assert "made with other settings" in capsys.readouterr().err
    _same_features(tmp_path / "straight.npz", killed)


def test_extraction_parts_of_another_batch_size_are_not_mixed_in(run, tmp_path, monkeypatch, capsys):
    """Parts of 8 clips whether batches hold 4 or 2: the batch size changes the kernels' rounding, so a part kept
    at one size is not joined to parts computed at the other."""
    from xdc.evaluation import extract

    root, run_dir = run
    items, out = items_of(root)[:6], tmp_path / "f.npz"
    monkeypatch.setattr(extract, "_part_batches", lambda batches: 8 // (-(-24 // batches)))  # 24 clips: 4 per item
    embed = extract._embed

    def one_part_then_stop(*args):
        yield next(embed(*args))
        raise KeyboardInterrupt

    monkeypatch.setattr(extract, "_embed", one_part_then_stop)
    with pytest.raises(KeyboardInterrupt):
        extract.extract_features(run_dir, "video", items, out, clips=4, batch_size=4, workers=0)
    assert len(list((tmp_path / "f.parts").glob("part-*.pt"))) == 1
    monkeypatch.setattr(extract, "_embed", embed)
    capsys.readouterr()
    extract.extract_features(run_dir, "video", items, out, clips=4, batch_size=2, workers=0)
    assert "made with other settings" in capsys.readouterr().err


def test_extraction_on_two_gloo_ranks_matches_one_process(run, tmp_path, monkeypatch):
    """torchrun with 2 processes: the ranks share out the parts, rank 0 joins them (the other's from its files) and
    alone writes the features and the summary."""
    root, run_dir = run
    table = tmp_path / "table.csv"
    write_table(items_of(root), table)
    single, ddp = tmp_path / "single.npz", tmp_path / "ddp.npz"
    assert main(_extract_cli(run_dir, table, single)) == 0
    done = subprocess.run(_extract_launch(tmp_path, 2, _extract_cli(run_dir, table, ddp)), capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"-> {ddp}") == 1  # rank 0 alone says it and writes
    _same_features(single, ddp)
    assert json.loads(ddp.with_suffix(".json").read_text())["ranks"] == 2
    assert not (tmp_path / "ddp.parts").exists()
    # the same again under torchrun: every rank takes rank 0's word that the files are done, and none writes
    before = _files_as_they_are(ddp)
    again = subprocess.run(_extract_launch(tmp_path, 2, _extract_cli(run_dir, table, ddp)), capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already hold these features") == 1 and "clips of" not in again.stdout
    assert _files_as_they_are(ddp) == before
    # rank 0 failing to write the summary (a folder made in its place after the check before any work, which
    # refuses one): every rank stops, rank 0 says why. Its table repeats a row and lists a file that is not there
    # (option missing=skip): each warned of once, by rank 0 (until 2026-12-02 by each rank)
    blocked, repeating = tmp_path / "blocked.npz", tmp_path / "repeating.csv"
    items = items_of(root)
    write_table([*items, items[0], Item(str(tmp_path / "gone.mp4"), items[0].label)], repeating)
    command = [*_extract_cli(run_dir, repeating, blocked), "--option", "missing=skip"]
    done = subprocess.run(_extract_launch(tmp_path, 2, command, block=True), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert done.returncode != 0 and "[rank1]: Traceback" not in done.stderr, done.stderr[-3000:]  # (torchrun's
    # report of its failed ranks has a traceback of its own)
    assert f"xdc: error: cannot write {blocked.with_suffix('.json')}" in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("xdc: error:") == 1, done.stderr[-3000:]
    assert done.stderr.count("WARNING: ") == 2, done.stderr[-3000:]
    assert done.stderr.count("1 row(s) repeating an earlier one") == 1 and done.stderr.count("not found") == 1


def test_extraction_ranks_started_with_other_settings_stop_before_it_starts(run, tmp_path):
    """Each node's torchrun gives its ranks that node's command line: until 2026-12-03 a rank started with another
    --clips or data.clip.frames computed its parts, and rank 0, joining them at the end, asked whether the folder was
    on a filesystem every rank sees. Now rank 0 names what differs before any probe or part is written;
    data.workers, which fits each node's cores, may differ."""
    root, run_dir = run
    table, out = tmp_path / "table.csv", tmp_path / "ddp.npz"
    write_table(items_of(root)[:4], table)
    driver = tmp_path / "driver.py"  # rank 1 as a node started with another command line
    driver.write_text("import os, sys\nfrom xdc.cli import main\nargs = sys.argv[1:]\nif os.environ['RANK'] == '1':\n"
                      "    args += ['--clips=2', '--set=data.clip.frames=2', '--set=data.workers=1']\n"
                      "sys.exit(main(args))\n")  # fmt: skip
    job = [*torchrun_command(2), "--", str(driver), *_extract_cli(run_dir, table, out)]
    done = subprocess.run(job, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    said = ("xdc: error: rank 1 was started with other settings than rank 0: --clips=2 (rank 0: 4), "
            "data.clip.frames=2 (rank 0: 4); start every node with the same command line and --config\n")
    assert done.returncode != 0 and done.stderr.count("xdc: error") == 1 and said in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["driver.py", "table.csv"]  # no probe, part or features


def _files_as_they_are(npz: Path) -> list[tuple[int, bytes]]:
    """The modification time and bytes of an extraction's features and summary."""
    return [(path.stat().st_mtime_ns, path.read_bytes()) for path in (npz, npz.with_suffix(".json"))]


def test_extract_again_with_the_same_settings_keeps_its_files(run, tmp_path, capsys):
    """A finished extraction run again with the same weights, items, files and settings computes nothing and
    writes nothing (until 2026-12-02 it computed every feature again and replaced both files); with another setting
    or a file changed in place it extracts again, as before."""
    root, run_dir = run
    media = tmp_path / "media"
    media.mkdir()
    items = []
    for item in items_of(root)[:4]:
        shutil.copy2(item.path, media / Path(item.path).name)
        items.append(Item(str(media / Path(item.path).name), item.label, item.split, item.fold))
    table, out = tmp_path / "table.csv", tmp_path / "f.npz"
    write_table(items, table)
    assert main(_extract_cli(run_dir, table, out)) == 0
    assert f"-> {out}" in capsys.readouterr().out
    before = _files_as_they_are(out)
    assert main(_extract_cli(run_dir, table, out)) == 0
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and f"{out} and its .json already hold these features" in said
    assert f"remove {out} to extract them again" in said
    assert _files_as_they_are(out) == before and not (tmp_path / "f.parts").exists()
    # another batch size: extracted again and replaced, as before
    assert main([*_extract_cli(run_dir, table, out), "--batch-size", "2"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    after = _files_as_they_are(out)
    assert after[0][0] != before[0][0] and json.loads(after[1][1])["made_with"] != json.loads(before[1][1])["made_with"]
    # a file changed in place (same name, label and window): its features may differ, so they are made again
    os.utime(items[0].path, ns=(time.time_ns(), time.time_ns()))
    assert main([*_extract_cli(run_dir, table, out), "--batch-size", "2"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    assert _files_as_they_are(out)[0][0] != after[0][0]
    # a summary of another extraction beside the features (one killed between its two writes): extracted again
    summary = out.with_suffix(".json")
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "made_with": "another"}))
    assert main([*_extract_cli(run_dir, table, out), "--batch-size", "2"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    assert main([*_extract_cli(run_dir, table, out), "--batch-size", "2"]) == 0
    assert "already hold these features" in capsys.readouterr().out


def _ucf_layout(root: Path, folder: Path) -> Path:
    """The run fixture's 24 generated videos in UCF101's layout: class folders, classInd.txt and 3 official splits
    (split k tests group k of 4)."""
    import shutil

    with open(root / "data" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    seen, train, test = {}, {1: [], 2: [], 3: []}, {1: [], 2: [], 3: []}
    for r in rows:
        n = seen[r["label"]] = seen.get(r["label"], 0) + 1
        group, clip = (n - 1) // 2 + 1, (n - 1) % 2 + 1
        rel = f"{r['label']}/v_{r['label']}_g{group:02d}_c{clip:02d}.mp4"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "data" / r["path"], folder / rel)
        number = classes.index(r["label"]) + 1
        for split in (1, 2, 3):
            (test[split].append(rel) if group == split else train[split].append(f"{rel} {number}"))
    lists = folder / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    for split in (1, 2, 3):
        (lists / f"trainlist0{split}.txt").write_text("".join(f"{x}\n" for x in train[split]))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{x}\n" for x in test[split]))
    return folder


def test_finetuning_each_split_names_its_split_in_the_files_it_skipped(run, tmp_path, capsys):
    """With --split all, a file that cannot be read is skipped in every split that lists it, and each line says which
    split (until 2026-12-03 three lines alike)."""
    root, run_dir = run
    ucf = _ucf_layout(root, tmp_path / "UCF-101")
    broken = sorted(ucf.glob("*/*_g01_c01.mp4"))[0]  # tested in split 1, trained on in 2 and 3
    broken.write_bytes(b"nothing")
    out = tmp_path / "ft.json"
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--dataset", "ucf101", "--data",
                 str(ucf), "--split", "all", "--out", str(out), "--mode", "fc", "--set=finetune.epochs=1",
                 "--set=finetune.batch_size=8", "--set=finetune.test_clips=1",
                 "--set=data.workers=0"]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert [line.split(": skipped ")[0] for line in lines] == ["split 1", "split 2", "split 3"]
    assert all(f"skipped {broken.resolve()}: cannot open" in line for line in lines)
    assert [skip["split"] for skip in json.loads(out.read_text())["skipped"]] == [1, 2, 3]


def test_files_that_option_missing_skip_drops_are_in_the_results_skipped(run, tmp_path, capsys):
    """Listed files not found under --data, dropped by --option missing=skip: until 2026-12-03 a warning alone
    said so, and the JSON's skipped left them out."""
    root, run_dir = run
    ucf = _ucf_layout(root, tmp_path / "UCF-101")
    gone = sorted(ucf.glob("*/*_g01_c01.mp4"))[0]  # tested in split 1, trained on in 2 and 3
    gone.unlink()
    reason = "not found (listed, and dropped by option missing='skip')"
    dataset = ["--dataset", "ucf101", "--data", str(ucf), "--option", "missing=skip"]
    with pytest.warns(UserWarning, match="1 of 24 files .* not found"):
        assert main(["extract", "--run", str(run_dir), "--encoder", "audio", *dataset, "--split", "1", "--clips", "1",
                     "--out", str(tmp_path / "f")]) == 0  # fmt: skip
    assert "23 items -> " in capsys.readouterr().out
    summary = json.loads((tmp_path / "f.json").read_text())
    assert summary["skipped"] == [{"path": str(gone.resolve()), "reason": reason}]
    out = tmp_path / "ft.json"
    command = ["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", *dataset, "--split", "all", "--out",
               str(out), "--mode", "fc", "--set=finetune.epochs=1", "--set=finetune.batch_size=8",
               "--set=finetune.test_clips=1", "--set=data.workers=0"]  # fmt: skip
    with pytest.warns(UserWarning, match="1 of 24 files .* not found"):
        assert main(command) == 0
    record = json.loads(out.read_text())
    assert record["skipped"] == [{"split": n, "path": str(gone.resolve()), "reason": reason} for n in (1, 2, 3)]
    assert [row["n_train"] + row["n_test"] for row in record["splits"]] == [23, 23, 23]
    # the same command again keeps the result, and lists them as a new one would, where the result kept lists
    # none (written before 2026-12-03, when a kept result was left as it was): nothing finetuned, the logs as they are
    out.write_text(json.dumps({**record, "skipped": []}))
    logs = (tmp_path / "ft.finetune" / "log.jsonl").read_bytes()
    capsys.readouterr()
    with pytest.warns(UserWarning, match="1 of 24 files .* not found"):
        assert main(command) == 0
    assert capsys.readouterr().out == (f"{out} already holds these results (the same weights, items, files and "
                                       "settings): nothing finetuned; its list of the files not found (skipped) "
                                       f"brought up to date; remove {out} to run again\n")  # fmt: skip
    assert json.loads(out.read_text()) == record and (tmp_path / "ft.finetune" / "log.jsonl").read_bytes() == logs


def test_a_kept_finetuning_lists_the_files_not_found_as_its_items_now_say(run, tmp_path, capsys):
    """A split's result kept from an earlier run (the same weights, items and settings) lists the files that its
    items' lists name and are not there now, as a new result would (until 2026-12-03 those of the earlier run)."""
    from xdc.config import FinetuneConfig
    from xdc.evaluation.adapters import Items
    from xdc.evaluation.finetune import finetune

    root, run_dir = run
    cfg, state, gone = FinetuneConfig(epochs=1, batch_size=8, test_clips=1), tmp_path / "state", tmp_path / "gone.mp4"
    first = finetune(run_dir, "audio", Items(items_of(root)), "fc", cfg, tmp_path, workers=0, state=state)
    assert first["skipped"] == []
    capsys.readouterr()
    kept = finetune(run_dir, "audio", Items(items_of(root), [str(gone)]), "fc", cfg, tmp_path, workers=0, state=state)
    assert "finished before with the same settings" in capsys.readouterr().out
    reason = "not found (listed, and dropped by option missing='skip')"
    assert kept == {**first, "skipped": [{"path": str(gone), "reason": reason}]}


def test_all_three_splits_killed_in_the_second_go_on_with_the_first_kept(run, tmp_path, capsys):
    root, run_dir = run
    ucf = _ucf_layout(root, tmp_path / "UCF-101")
    settings = ["finetune.epochs=6", "finetune.batch_size=4", "finetune.test_clips=1", "finetune.lr=0.05"]

    def command(out: Path) -> list[str]:
        return ["eval", "finetune", "--run", str(run_dir), "--encoder", "audio", "--dataset", "ucf101", "--data",
                str(ucf), "--split", "all", "--out", str(out), *(f"--set={s}" for s in settings)]  # fmt: skip

    straight, killed = tmp_path / "straight.json", tmp_path / "killed.json"
    assert main(command(straight)) == 0
    second = tmp_path / "killed.finetune" / "split2" / "last.pt"
    _start_and_kill([sys.executable, "-m", "xdc.cli", *command(killed)], second)
    assert second.exists() and not killed.exists(), "the finetuning ended before it could be killed in split 2"
    assert (tmp_path / "killed.finetune" / "split1" / "result.pt").exists()
    capsys.readouterr()
    assert main(command(killed)) == 0
    said = capsys.readouterr().out
    assert "split1: finished before with the same settings" in said and "split2: resuming after batch" in said
    a, b = (json.loads(path.read_text()) for path in (straight, killed))
    assert [s["split"] for s in b["splits"]] == [1, 2, 3] and b["mean_top1"] == a["mean_top1"]
    assert ("worst classes of split 3: " in said) == (b["splits"][2]["top1"] < 1)
    # each split's classes, the first's kept in its result.pt
    assert [s["confusion"] for s in a["splits"]] == [s["confusion"] for s in b["splits"]]
    for split in b["splits"]:
        counts = np.array(split["confusion"]["counts"])
        assert np.trace(counts) / counts.sum() == split["top1"] and counts.sum() == split["n_test_scored"]
    assert [s["epoch_losses"] for s in a["splits"]] == [s["epoch_losses"] for s in b["splits"]]
    # xdc report's page of the result: a section of each split's; one without per-class results says so
    del b["splits"][1]["per_class"], b["splits"][1]["confusion"]  # as a split kept from before 2026-12-02
    killed.write_text(json.dumps(b))
    assert main(["report", str(straight)]) == 0 and main(["report", str(killed)]) == 0
    whole, older = (path.with_suffix(".html").read_text() for path in (straight, killed))
    assert [whole.count(f"<h2>Split {n}</h2>") for n in (1, 2, 3)] == [1, 1, 1] and whole.count("<img ") == 6
    assert f"{a['mean_top1']:.3f} (mean of the splits)" in whole
    assert older.count("<img ") == 4 and "No per-class results: this split was tested before 2026-12-02" in older


def _tau_av_archive(folder: Path) -> Path:
    """A TAU Urban Audio-Visual Scenes 2021 development archive of real files: audio/*.wav (48 kHz stereo, as
    the archive's), video/*.mp4 (H.264, no sound), meta.csv and evaluation_setup/fold1_{train,evaluate,test}.csv."""
    import wave

    from xdc.data.encode import write_av

    header = "filename_audio\tfilename_video\tscene_label\tidentifier"
    lists: dict[str, list[str]] = {"train": [header], "evaluate": [header]}
    rng = np.random.default_rng(0)
    for n, (scene, role) in enumerate([("airport", "train"), ("bus", "train"), ("airport", "train"),
                                       ("bus", "evaluate"), ("airport", "evaluate")]):  # fmt: skip
        name = f"{scene}-lisbon-{1000 + n}-{40000 + n}"
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        (folder / "video").mkdir(exist_ok=True)
        with wave.open(str(folder / "audio" / f"{name}.wav"), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(48000)
            w.writeframes((rng.standard_normal(2 * 72000) * 3000).astype("<i2").tobytes())  # 1.5 s
        write_av(folder / "video" / f"{name}.mp4", rng.integers(0, 255, (8, 48, 64, 3), dtype=np.uint8), 4)  # 2 s
        lists[role].append(f"audio/{name}.wav\tvideo/{name}.mp4\t{scene}\tlisbon-{1000 + n}")
    setup = folder / "evaluation_setup"
    setup.mkdir()
    (folder / "meta.csv").write_text("\n".join([header, *lists["train"][1:], *lists["evaluate"][1:]]) + "\n")
    for role, rows in lists.items():
        (setup / f"fold1_{role}.csv").write_text("\n".join(rows) + "\n")
    tested = ["\t".join(row.split("\t")[:2]) for row in lists["evaluate"][1:]]
    (setup / "fold1_test.csv").write_text("\n".join(["filename_audio\tfilename_video", *tested]) + "\n")
    return folder


def test_both_encoders_of_a_run_on_tau_urban_audio_visual_scenes(run, tmp_path, capsys):
    """Kind dcase refused TAU Urban Audio-Visual Scenes 2021 until 2026-12-02. Now each encoder reads its own file
    of every line: the audio encoder the .wav (the official audio), the video encoder the .mp4."""
    _, run_dir = run
    data = _tau_av_archive(tmp_path / "TAU-urban-audio-visual-scenes-2021-development")
    for encoder, suffix in (("audio", ".wav"), ("video", ".mp4")):
        out = tmp_path / f"{encoder}.npz"
        assert main(["extract", "--run", str(run_dir), "--encoder", encoder, "--dataset", "dcase", "--data", str(data),
                     "--clips", "1", "--out", str(out)]) == 0  # fmt: skip
        assert "5 clips of 5 items" in capsys.readouterr().out
        with np.load(out) as features:
            assert {Path(p).parent.name for p in features["path"]} == {encoder}
            assert all(p.endswith(suffix) for p in features["path"])
            assert sorted(zip(features["split"], features["label"])) == [
                ("test", "airport"), ("test", "bus"), ("train", "airport"), ("train", "airport"), ("train", "bus")
            ]  # fmt: skip
    result = tmp_path / "ft.json"
    assert main(["eval", "finetune", "--run", str(run_dir), "--encoder", "video", "--dataset", "dcase", "--data",
                 str(data), "--out", str(result), "--mode", "fc", "--set", "finetune.epochs=1", "--set",
                 "finetune.batch_size=3", "--set", "finetune.test_clips=1"]) == 0  # fmt: skip
    split = json.loads(result.read_text())["splits"][0]
    assert (split["n_test"], split["n_test_scored"]) == (2, 2)
    # the two keyword arguments the commands give themselves: one line each (until 2026-12-02 --option split=1 was a
    # traceback, "got multiple values for keyword argument 'split'")
    for option, why in (("modality=audio", "--option modality: the encoder's modality (--encoder) is the one loaded"),
                        ("split=1", "--option split: give the official split with --split")):  # fmt: skip
        for command in (["extract"], ["eval", "finetune"]):
            assert main([*command, "--run", str(run_dir), "--encoder", "video", "--dataset", "dcase", "--data",
                         str(data), "--out", str(tmp_path / "x.json"), "--option", option]) == 2  # fmt: skip
            err = capsys.readouterr().err
            assert err.startswith(f"xdc: error: {why}") and err.count("\n") == 1, err
