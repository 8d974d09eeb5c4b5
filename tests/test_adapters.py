"""Dataset adapters on small fixtures in each official layout (placeholder media: adapters never decode; real media
only where xdc prepare copies a dataset)."""

from __future__ import annotations

import csv
import os
import re
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from xdc.cli import main
from xdc.data.encode import write_av
from xdc.evaluation.adapters import (
    COLUMNS,
    Item,
    classes,
    load_dataset,
    read_table,
    split_items,
    write_table,
)
from xdc.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"xdc")
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _raises(match: str):
    return pytest.raises(UserError, match=match)


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# --- UCF101 --------------------------------------------------------------------------------------------------

UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "YoYo")


def _ucf(root: Path) -> Path:
    """3 classes x 2 groups x 2 clips; group g01 is test, g02 train (as the official lists split by group)."""
    train, test = [], []
    for index, name in enumerate(UCF_CLASSES, 1):
        for group in (1, 2):
            for clip in (1, 2):
                rel = f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi"
                _touch(root / rel)
                (test.append(rel) if group == 1 else train.append(f"{rel} {index}"))
    lists = root / "ucfTrainTestlist"
    # CRLF line endings, as in the official archive.
    _write(lists / "classInd.txt", "".join(f"{i} {n}\r\n" for i, n in enumerate(UCF_CLASSES, 1)))
    _write(lists / "trainlist01.txt", "".join(f"{line}\r\n" for line in train))
    _write(lists / "testlist01.txt", "".join(f"{line}\r\n" for line in test))
    return root


def test_ucf101_labels_and_splits(tmp_path):
    root = _ucf(tmp_path / "UCF-101")
    items = load_dataset("ucf101", root, split=1)
    assert len(items) == 12 and items == sorted(items)
    assert Counter(i.split for i in items) == {"train": 6, "test": 6}
    assert classes(items) == sorted(UCF_CLASSES)
    for item in items:
        assert os.path.isabs(item.path) and os.path.isfile(item.path)
        assert Path(item.path).parent.name == item.label
        assert item.split == ("test" if "_g01_" in item.path else "train")
        assert item.group == item.path and (item.fold, item.start_s, item.end_s) == (0, 0.0, 0.0)
    assert len(split_items(items, "test")) == 6


def test_ucf101_splits_dir_option(tmp_path):
    root = _ucf(tmp_path / "UCF-101")
    moved = tmp_path / "lists"
    (root / "ucfTrainTestlist").rename(moved)
    with _raises("option splits_dir") as e:
        load_dataset("ucf101", root, split=1)
    _one_line(e)
    assert len(load_dataset("ucf101", root, split=1, splits_dir=moved)) == 12


def test_ucf101_missing_videos_one_error_or_skipped(tmp_path):
    root = _ucf(tmp_path / "UCF-101")
    (root / "Archery/v_Archery_g01_c02.avi").unlink()
    (root / "YoYo/v_YoYo_g02_c01.avi").unlink()
    with _raises("2 of 12 files listed in trainlist01.txt and testlist01.txt") as e:
        load_dataset("ucf101", root, split=1)
    assert "v_YoYo_g02_c01.avi" in _one_line(e)  # the first missing one, in list order (train list first)
    with pytest.warns(UserWarning, match="2 of 12 files .* dropped"):
        items = load_dataset("ucf101", root, split=1, missing="skip")
    assert len(items) == 10
    with _raises("missing must be 'error' or 'skip'"):
        load_dataset("ucf101", root, split=1, missing="ignore")


def test_the_files_missing_skip_drops_are_named_with_the_items(tmp_path):
    """A result records them as left out (until 2026-12-03 a warning alone said how many, naming one)."""
    root = _ucf(tmp_path / "UCF-101")
    gone = [root / "YoYo/v_YoYo_g02_c01.avi", root / "Archery/v_Archery_g01_c02.avi"]
    for path in gone:
        path.unlink()
    with pytest.warns(UserWarning, match="2 of 12 files .* dropped"):
        items = load_dataset("ucf101", root, split=1, missing="skip")
    assert len(items) == 10 and items.missing == sorted(str(path.resolve()) for path in gone)
    assert load_dataset("ucf101", _ucf(tmp_path / "whole"), split=1).missing == []


def test_a_listed_name_of_no_media_extension_is_not_read_from_another_file(tmp_path):
    """A typo (a.mp4x for a.mp4, b.wa for b.wav) is a missing file: until 2026-12-03 the lookup of xdc prepare's
    copies (x.avi -> x.mp4) read a.mp4x from a.mp4 unsaid. A media file's name still finds its copy."""
    data = tmp_path / "data"
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.wa.mp4"):
        _touch(data / name)
    table = _write(data / "labels.csv", "path,label\na.mp4x,cat\nb.wa,dog\nc.avi,cat\nd.wa,dog\n")
    with _raises(r"2 of 4 files listed in \S*labels.csv not found, the first 2: \S*a.mp4x, \S*b.wa \(option") as e:
        load_dataset("csv", table)
    _one_line(e)
    with pytest.warns(UserWarning, match="2 of 4 files"):
        items = load_dataset("csv", table, missing="skip")
    assert [Path(item.path).name for item in items] == ["c.mp4", "d.wa.mp4"]  # c.avi's copy, and d.wa's by its name
    assert [Path(path).name for path in items.missing] == ["a.mp4x", "b.wa"]


def test_ucf101_reads_a_copy_made_by_xdc_prepare_with_the_official_lists(tmp_path):
    """The lists name .avi files; xdc prepare's copies are .mp4 (x.avi.mp4 where a source x.mp4 took x.mp4)."""
    root = _ucf(tmp_path / "UCF-101")
    frames = np.zeros((4, 32, 32, 3), np.uint8)
    for path in sorted(root.glob("*/*.avi")):
        write_av(path, frames, 8)  # real media: prepare decodes them
    write_av(root / "YoYo/v_YoYo_g01_c01.mp4", frames, 8)  # not listed, but it takes the name v_YoYo_g01_c01.mp4
    out = tmp_path / "prepared"
    assert main(["prepare", str(root), "--out", str(out), "--workers", "1"]) == 0
    lists = root / "ucfTrainTestlist"
    items = load_dataset("ucf101", out, split=1, splits_dir=lists)
    originals = load_dataset("ucf101", root, split=1)
    assert [(i.label, i.split) for i in items] == [(i.label, i.split) for i in originals]
    for item, original in zip(items, originals):
        assert item.path == item.group and Path(item.path).parent == out.resolve() / item.label
        name = Path(original.path)
        assert Path(item.path).name == (f"{name.name}.mp4" if "YoYo_g01_c01" in name.name else f"{name.stem}.mp4")
    (out / "Archery/v_Archery_g01_c02.mp4").unlink()  # a copy that is not there is still a missing file
    with _raises("1 of 12 files listed") as e:
        load_dataset("ucf101", out, split=1, splits_dir=lists)
    assert _one_line(e).endswith("v_Archery_g01_c02.avi (option missing='skip' drops them)")


@pytest.mark.parametrize("split", [None, 0, 4])
def test_ucf101_needs_split_1_to_3(tmp_path, split):
    with _raises("ucf101 needs split 1, 2 or 3") as e:
        load_dataset("ucf101", _ucf(tmp_path / "UCF-101"), split=split)
    _one_line(e)


def test_ucf101_malformed_lists(tmp_path):
    root = _ucf(tmp_path / "UCF-101")
    lists = root / "ucfTrainTestlist"
    with _raises("trainlist02.txt not found"):
        load_dataset("ucf101", root, split=2)
    _write(lists / "trainlist01.txt", "Archery/v_Archery_g02_c01.avi 9\n")
    with _raises(r"trainlist01.txt line 1: expected"):
        load_dataset("ucf101", root, split=1)
    _write(lists / "trainlist01.txt", "Archery/v_Archery_g02_c01.avi 1\n")  # 1 is ApplyEyeMakeup
    with _raises("not in ApplyEyeMakeup/"):
        load_dataset("ucf101", root, split=1)
    _write(lists / "trainlist01.txt", "")
    _write(lists / "testlist01.txt", "Unknown/v_x.avi\n")
    with _raises(r"testlist01.txt line 1: .*classInd"):
        load_dataset("ucf101", root, split=1)


OFFICIAL_INDEX = "".join(f"{i} {name}\n" for i, name in enumerate(UCF_CLASSES, 1))


@pytest.mark.parametrize("extra, message", [
    ("1 Archery", "line 4: index 1 is Archery here and ApplyEyeMakeup on line 1"),
    ("4 Archery", "line 4: class Archery has index 4 here and another on line 2"),
])  # fmt: skip
def test_ucf101_class_index_given_twice_is_refused_in_classind(tmp_path, extra, message):
    """No video was mislabelled (labels are checked against the folders), but an index given twice failed naming a
    list's line and a video's folder, not the line at fault, and a class given two indices passed (until
    2026-12-02)."""
    root = _real_media(_ucf(tmp_path / "UCF-101"))
    (root / "ucfTrainTestlist" / "classInd.txt").write_text(f"{OFFICIAL_INDEX}{extra}\n")
    with _raises(f"classInd.txt {message}: one index per class") as e:
        load_dataset("ucf101", root, split=1)
    _one_line(e)


# --- HMDB51 --------------------------------------------------------------------------------------------------


def test_hmdb51_markers(tmp_path):
    root = tmp_path / "hmdb51"
    lists = root / "testTrainMulti_7030_splits"
    for name in ("brush_hair", "ride_bike"):  # underscores in class names
        videos = [f"{name}_{i}.avi" for i in range(6)]
        for video in videos:
            _touch(root / name / video)
        markers = [1, 1, 1, 2, 2, 0]
        _write(lists / f"{name}_test_split1.txt", "".join(f"{v} {m} \n" for v, m in zip(videos, markers)))
        swapped = [3 - m if m else 0 for m in markers]
        _write(lists / f"{name}_test_split2.txt", "".join(f"{v} {m} \n" for v, m in zip(videos, swapped)))
    items = load_dataset("hmdb51", root, split=1)
    assert len(items) == 10  # marker 0 dropped
    assert classes(items) == ["brush_hair", "ride_bike"]
    assert Counter((i.label, i.split) for i in items) == {
        ("brush_hair", "train"): 3, ("brush_hair", "test"): 2, ("ride_bike", "train"): 3, ("ride_bike", "test"): 2
    }  # fmt: skip
    assert all(Path(i.path).parent.name == i.label for i in items)
    assert not any(i.path.endswith("_5.avi") for i in items)
    assert Counter(i.split for i in load_dataset("hmdb51", root, split=2)) == {"train": 4, "test": 6}
    with _raises("no <class>_test_split3.txt split files"):
        load_dataset("hmdb51", root, split=3)
    _write(lists / "ride_bike_test_split1.txt", "ride_bike_0.avi 3\n")
    with _raises(r"ride_bike_test_split1.txt line 1: expected '<video>.avi <0\|1\|2>'"):
        load_dataset("hmdb51", root, split=1)


def test_hidden_files_skipped_by_hmdb51_and_fsdd(tmp_path):
    """macOS leaves ._NAME metadata beside each file copied to a foreign disk: skipped as xdc index and dcase do."""
    apple = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
    root = tmp_path / "hmdb51"
    _touch(root / "brush_hair" / "a.avi")
    _touch(root / "brush_hair" / "b.avi")
    lists = root / "testTrainMulti_7030_splits"
    _write(lists / "brush_hair_test_split1.txt", "a.avi 1 \nb.avi 2 \n")
    (lists / "._brush_hair_test_split1.txt").write_bytes(apple)
    assert [(i.label, i.split) for i in load_dataset("hmdb51", root, split=1)] == [
        ("brush_hair", "train"), ("brush_hair", "test")
    ]  # fmt: skip
    fsdd = tmp_path / "fsdd"
    _touch(fsdd / "recordings" / "0_theo_1.wav")
    (fsdd / "recordings" / "._0_theo_1.wav").write_bytes(apple)
    assert [(i.label, i.split) for i in load_dataset("fsdd", fsdd)] == [("0", "test")]


# --- ESC-50 --------------------------------------------------------------------------------------------------


def _esc50(root: Path) -> Path:
    rows = [("1-100032-A-0.wav", 1, 0, "dog", "True"), ("1-100038-A-14.wav", 1, 14, "chirping_birds", "False"),
            ("2-100648-A-43.wav", 2, 43, "car_horn", "False"), ("3-102583-A-0.wav", 3, 0, "dog", "True"),
            ("5-103415-A-1.wav", 5, 1, "rooster", "True")]  # fmt: skip
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for name, fold, target, category, esc10 in rows:
        _touch(root / "audio" / name)
        lines.append(f"{name},{fold},{target},{category},{esc10},{name.split('-')[1]},A")
    _write(root / "meta" / "esc50.csv", "\n".join(lines) + "\n")
    return root


def test_esc50_folds_and_esc10(tmp_path):
    root = _esc50(tmp_path / "ESC-50")
    items = load_dataset("esc50", root)
    assert len(items) == 5 and {i.split for i in items} == {""}
    assert {Path(i.path).name: (i.label, i.fold) for i in items}["5-103415-A-1.wav"] == ("rooster", 5)
    assert sorted({i.fold for i in items}) == [1, 2, 3, 5]
    assert all(Path(i.path).parent == (root / "audio").resolve() and i.group == i.path for i in items)
    esc10 = load_dataset("esc50", root, esc10=True)
    assert classes(esc10) == ["dog", "rooster"] and len(esc10) == 3
    # As text (--option esc10=...): "False" is false, not a non-empty string.
    assert load_dataset("esc50", root, esc10="False") == items
    assert load_dataset("esc50", root, esc10="true") == esc10
    with _raises("esc50 option esc10: 'no' is not True or False"):
        load_dataset("esc50", root, esc10="no")


def test_esc50_errors(tmp_path):
    root = _esc50(tmp_path / "ESC-50")
    with _raises("ESC-50 not found"):
        load_dataset("esc50", tmp_path / "nope" / "ESC-50")
    with _raises("esc50 has no numbered official splits"):
        load_dataset("esc50", root, split=1)
    meta = root / "meta" / "esc50.csv"
    meta.write_text("filename,target,category\nx.wav,0,dog\n")
    with _raises(r"esc50.csv: missing column\(s\) fold") as e:
        load_dataset("esc50", root)
    _one_line(e)
    meta.write_text("filename,fold,category\n1-100032-A-0.wav,one,dog\n")
    with _raises(r"esc50.csv line 2: fold 'one' is not an integer"):
        load_dataset("esc50", root)
    (root / "meta" / "esc50.csv").unlink()
    with _raises("esc50.csv not found"):
        load_dataset("esc50", root)


# --- DCASE-style class folders -------------------------------------------------------------------------------


def test_dcase_class_folders(tmp_path):
    root = tmp_path / "scenes"
    for name in ("bus/a.wav", "bus/b.flac", "park/c.wav", "park/sub/d.mp4", "park/notes.txt", "park/.e.wav"):
        _touch(root / name)
    _touch(root / "readme.wav")  # not in a class folder: ignored
    items = load_dataset("dcase", root)
    assert [(Path(i.path).name, i.label, i.split) for i in items] == [
        ("a.wav", "bus", ""), ("b.flac", "bus", ""), ("c.wav", "park", ""), ("d.mp4", "park", "")
    ]  # fmt: skip


def test_dcase_links_to_folders_followed_once(tmp_path):
    """A link to a folder elsewhere is followed; a link back up (a loop) neither repeats files nor walks on."""
    root = tmp_path / "scenes"
    _touch(root / "bus" / "a.wav")
    _touch(tmp_path / "elsewhere" / "b.wav")
    (root / "bus" / "more").symlink_to(tmp_path / "elsewhere")
    (root / "bus" / "again").symlink_to(root / "bus")  # e.g. a link to "." or ".."
    items = load_dataset("dcase", root)
    assert sorted((Path(i.path).name, i.label) for i in items) == [("a.wav", "bus"), ("b.wav", "bus")]


def test_dcase_split_folders(tmp_path):
    root = tmp_path / "dcase2014"
    for name in ("train/bus/a.wav", "train/park/b.wav", "test/bus/c.wav", "test/park/d.wav", "val/bus/e.wav"):
        _touch(root / name)
    items = load_dataset("dcase", root)
    assert Counter(i.split for i in items) == {"train": 2, "test": 2, "val": 1}
    assert {(Path(i.path).stem, i.label, i.split) for i in items} >= {("c", "bus", "test"), ("e", "bus", "val")}
    (root / "test/bus/c.wav").unlink()
    (root / "test/park/d.wav").unlink()
    assert len(load_dataset("dcase", root)) == 3
    for name in ("test/bus", "test/park", "test"):
        (root / name).rmdir()
    with _raises("split folders need both train/ and test/"):
        load_dataset("dcase", root)
    with _raises("dcase: no items found"):
        load_dataset("dcase", _write(tmp_path / "empty" / "bus" / "x.txt", "").parents[1])


def test_dcase_split_folders_named_in_any_case(tmp_path):
    """Train/ and Test/ were two classes named Train and Test on Linux, and the splits on macOS (until 2026-12-02)."""
    root = tmp_path / "scenes"
    for name in ("Train/bus/a.wav", "Train/park/b.wav", "Test/bus/c.wav", "VAL/park/d.wav", "notes/readme.txt"):
        _touch(root / name)
    _real_media(root)
    items = load_dataset("dcase", root)
    assert sorted((Path(i.path).stem, i.label, i.split) for i in items) == [
        ("a", "bus", "train"), ("b", "park", "train"), ("c", "bus", "test"), ("d", "park", "val")
    ]  # fmt: skip
    (root / "train").mkdir()
    with _raises(r"scenes: Train/ and train/ are both split train: keep one") as e:
        load_dataset("dcase", root)
    _one_line(e)


@pytest.mark.parametrize("names, message", [
    (["train/bus/a.wav", "test/bus/b.wav", "validation/bus/c.wav"],  # was left out
     r"scenes/validation/ holds media beside the split folders, but is none of train/, val/, test/"),
    (["train/Bus/a.wav", "train/car/b.wav", "test/bus/c.wav", "test/car/d.wav"],  # test's bus: never trained on
     r"scenes: class folders Bus/ and bus/ differ only in case"),
    (["audio/airport-a.wav", "audio/bus-b.wav", "evaluation_setup/fold1_test.csv"],  # an evaluation set's
     r"scenes/evaluation_setup: needs fold<k>_train and fold<k>_evaluate lists .* \(.*found: fold1_test.csv\)"),
])  # fmt: skip
def test_dcase_layouts_it_would_misread_are_refused(tmp_path, names, message):
    root = tmp_path / "scenes"
    for name in names:
        _touch(root / name)
    _real_media(root)
    with _raises(message) as e:
        load_dataset("dcase", root)
    _one_line(e)


# --- official DCASE archives ---------------------------------------------------------------------------------

DCASE2013_SCENES = ("bus", "park", "tubestation")


def _dcase2013(root: Path, sets: tuple[str, ...] = ("scenes_stereo", "scenes_stereo_testset")) -> Path:
    """DCASE2013 scene folders: <scene><NN>.wav, 3 files a scene in the development set, 2 in the test set."""
    for name in sets:
        for scene in DCASE2013_SCENES:
            for number in ((1, 2, 10) if name == "scenes_stereo" else (1, 3)):
                _touch(root / name / f"{scene}{number:02d}.wav")
    if "scenes_stereo" in sets:
        _write(root / "scenes_stereo" / "readme.txt", "not media\n")  # ignored
    return _real_media(root)


def test_dcase2013_scene_folders_labels_from_file_names_and_splits(tmp_path):
    """Until 2026-12-02 scenes_stereo/ was one class folder: every file of class scenes_stereo."""
    root = _dcase2013(tmp_path / "dcase2013")
    items = load_dataset("dcase", root)
    assert len(items) == 15 and classes(items) == sorted(DCASE2013_SCENES)
    assert Counter((i.label, i.split) for i in items) == {
        **{(scene, "train"): 3 for scene in DCASE2013_SCENES}, **{(scene, "test"): 2 for scene in DCASE2013_SCENES}
    }  # fmt: skip
    named = {(Path(i.path).parent.name, Path(i.path).name): i for i in items}
    assert named[("scenes_stereo", "tubestation10.wav")].label == "tubestation"
    assert named[("scenes_stereo_testset", "bus03.wav")].split == "test"
    assert all(i.fold == 0 and i.group == i.path and os.path.isfile(i.path) for i in items)
    # The development set alone: 5-fold cross-validation has no official folds, so no split and no fold.
    dev = load_dataset("dcase", _dcase2013(tmp_path / "dev", ("scenes_stereo",)))
    assert len(dev) == 9 and {(i.split, i.fold) for i in dev} == {("", 0)} and classes(dev) == classes(items)
    test = load_dataset("dcase", _dcase2013(tmp_path / "test", ("scenes_stereo_testset",)))
    assert len(test) == 6 and {i.split for i in test} == {""}


def test_dcase2013_one_scene_folder_given_as_root(tmp_path, monkeypatch):
    """scenes_stereo/ itself (its files directly in it, no class folders) gave "no items found" until 2026-12-02:
    now the items of that set alone, as a root holding only it gives them, its sibling left out."""
    root = _dcase2013(tmp_path / "dcase2013")
    for name, count in (("scenes_stereo", 9), ("scenes_stereo_testset", 6)):
        alone = load_dataset("dcase", root / name)
        assert len(alone) == count and {(i.split, i.fold) for i in alone} == {("", 0)}
        assert {Path(i.path).parent.name for i in alone} == {name} and classes(alone) == sorted(DCASE2013_SCENES)
    monkeypatch.chdir(root / "scenes_stereo")
    assert len(load_dataset("dcase", ".")) == 9
    _touch(root / "scenes_stereo" / "bus.wav")  # its files' names are checked as in the parent's layout
    with _raises(r"scenes_stereo/bus.wav: not a DCASE2013 scene file name"):
        load_dataset("dcase", root / "scenes_stereo")


@pytest.mark.parametrize("name, message", [
    ("scenes_stereo/bus.wav", r"scenes_stereo/bus.wav: not a DCASE2013 scene file name \(<scene><number>.wav"),
    ("scenes_stereo/bus_01.flac", r"bus_01.flac: not a DCASE2013 scene file name"),
    ("scenes_stereo/more/bus04.wav", r"scenes_stereo/more/ holds media, but DCASE2013's scenes_stereo/ has its files"),
    ("extra/bus05.wav", r"dcase2013/extra/ holds media beside the DCASE2013 folders scenes_stereo, "),
])  # fmt: skip
def test_dcase2013_what_it_would_misread_is_refused(tmp_path, name, message):
    root = _dcase2013(tmp_path / "dcase2013")
    _touch(root / name)
    with _raises(message) as e:
        load_dataset("dcase", root)
    _one_line(e)


TUT_FILES = {  # file -> (scene, fold): two recordings a fold, segments of one recording in one fold
    "a001_0_10.wav": ("residential_area", 1), "a001_10_20.wav": ("residential_area", 1), "b020_0_10.wav": ("beach", 2),
    "c003_20_30.wav": ("cafe/restaurant", 2), "b021_0_10.wav": ("beach", 3), "a002_0_10.wav": ("residential_area", 3),
    "c004_0_10.wav": ("cafe/restaurant", 4), "b022_30_40.wav": ("beach", 4),
}  # fmt: skip


def _tut(root: Path) -> Path:
    """A TUT Acoustic Scenes 2016/2017 development archive: audio/, meta.txt, evaluation_setup/ of 4 folds."""
    for name in TUT_FILES:
        _touch(root / "audio" / name)
    _write(root / "meta.txt", "".join(f"audio/{n}\t{s}\t{n[:4]}\n" for n, (s, _) in TUT_FILES.items()))
    for fold in range(1, 5):
        tested = [(n, s) for n, (s, f) in TUT_FILES.items() if f == fold]
        trained = [(n, s) for n, (s, f) in TUT_FILES.items() if f != fold]
        setup = root / "evaluation_setup"
        _write(setup / f"fold{fold}_train.txt", "".join(f"audio/{n}\t{s}\r\n" for n, s in trained))
        _write(setup / f"fold{fold}_evaluate.txt", "".join(f"audio/{n}\t{s}\r\n" for n, s in tested))
        _write(setup / f"fold{fold}_test.txt", "".join(f"audio/{n}\r\n" for n, _ in tested))
    return _real_media(root)


def test_dcase_tut_archive_folds_from_the_evaluate_lists(tmp_path):
    """Until 2026-12-02 kind dcase refused the official archives (before that: every file of class audio)."""
    root = _tut(tmp_path / "TUT-acoustic-scenes-2017-development")
    items = load_dataset("dcase", root)
    assert len(items) == 8 and classes(items) == ["beach", "cafe/restaurant", "residential_area"]
    assert {Path(i.path).name: (i.label, i.fold) for i in items} == TUT_FILES
    assert Counter(i.fold for i in items) == {1: 2, 2: 2, 3: 2, 4: 2}
    assert all(i.split == "" and Path(i.path).parent == (root / "audio").resolve() for i in items)
    assert all(i.group == i.path for i in items)


def test_dcase_tut_archive_errors(tmp_path):
    root = _tut(tmp_path / "tut")
    setup = root / "evaluation_setup"
    official = {p.name: p.read_text() for p in [*setup.iterdir(), root / "meta.txt"]}

    def restore() -> None:
        for name, text in official.items():
            (root / name if name == "meta.txt" else setup / name).write_text(text)

    (root / "audio" / "b021_0_10.wav").unlink()
    with _raises(r"1 of 8 files listed in the fold lists of \S*tut/evaluation_setup not found, the first: "
                 r"\S*audio/b021_0_10.wav \(option missing='skip' drops them\)") as e:  # fmt: skip
        load_dataset("dcase", root)
    _one_line(e)
    with pytest.warns(UserWarning, match="1 of 8 files .* dropped"):
        assert len(load_dataset("dcase", root, missing="skip")) == 7
    with _raises("missing must be 'error' or 'skip'"):
        load_dataset("dcase", root, missing="ignore")
    _real_media(_touch(root / "audio" / "b021_0_10.wav").parent)

    a001 = "audio/a001_0_10.wav\tresidential_area\n"
    (setup / "fold2_evaluate.txt").write_text(official["fold2_evaluate.txt"] + a001)
    with _raises(r"audio/a001_0_10.wav appears twice: \S*fold1_evaluate.txt line 1 and \S*fold2_evaluate.txt line 3"):
        load_dataset("dcase", root)
    restore()
    (setup / "fold3_evaluate.txt").write_text("audio/b021_0_10.wav\tbeach\naudio/a002_0_10.wav\n")
    with _raises(r"fold3_evaluate.txt line 2: expected '<audio file><TAB><scene label>', got 'audio/a002_0_10.wav'"):
        load_dataset("dcase", root)
    (setup / "fold3_evaluate.txt").write_text("beach\taudio/b021_0_10.wav\n")  # columns swapped
    with _raises(r"fold3_evaluate.txt line 1: expected"):
        load_dataset("dcase", root)
    restore()
    (setup / "fold1_train.txt").write_text(official["fold1_train.txt"].replace("0.wav\tbeach", "0.wav\tbus", 1))
    with _raises(r"audio/b020_0_10.wav is 'beach' in \S*fold2_evaluate.txt line 1 but 'bus' in \S*fold1_train.txt "
                 r"line 1: one label per file"):  # fmt: skip
        load_dataset("dcase", root)
    restore()
    (root / "meta.txt").write_text(official["meta.txt"].replace("c004_0_10.wav\tcafe/", "c004_0_10.wav\t"))
    with _raises(r"c004_0_10.wav is 'cafe/restaurant' in \S*fold4_evaluate.txt line 1 but 'restaurant' in \S*meta.txt "
                 r"line 7"):  # fmt: skip
        load_dataset("dcase", root)
    restore()
    (setup / "fold1_train.txt").write_text(official["fold1_train.txt"] + a001)
    with _raises(r"fold1_train.txt line 7: audio/a001_0_10.wav is in fold 1's evaluate list too"):
        load_dataset("dcase", root)
    (setup / "fold1_train.txt").write_text(official["fold1_train.txt"].split("\n", 1)[1])
    with _raises(r"fold1_train.txt: leaves out 1 file\(s\) of the other folds' evaluate lists, the first: "
                 r"audio/b020_0_10.wav"):  # fmt: skip
        load_dataset("dcase", root)
    restore()
    (setup / "fold3_evaluate.txt").unlink()
    with _raises(r"needs fold<k>_train and fold<k>_evaluate lists .*found: fold1_evaluate.txt, fold1_test.txt"):
        load_dataset("dcase", root)


TAU_FILES = {  # file -> (scene, split); the last is in neither list (left out, as the official setup does)
    "airport-barcelona-0-0-a.wav": ("airport", "train"), "bus-lyon-1-42-a.wav": ("bus", "train"),
    "airport-helsinki-4-100-a.wav": ("airport", "test"), "bus-prague-10-406-b.wav": ("bus", "test"),
    "bus-lyon-1-43-s2.wav": ("bus", None),
}  # fmt: skip


def _tau(root: Path) -> Path:
    """A TAU Urban Acoustic Scenes 2019/2020 development archive: audio/, meta.csv and one fold, with headers."""
    meta = ["filename\tscene_label\tidentifier\tsource_label"]
    lists = {"train": ["filename\tscene_label"], "test": ["filename\tscene_label"]}
    for name, (scene, split) in TAU_FILES.items():
        _touch(root / "audio" / name)
        meta.append(f"audio/{name}\t{scene}\t{'-'.join(name.split('-')[1:3])}\t{name[-5]}")
        if split:
            lists[split].append(f"audio/{name}\t{scene}")
    _write(root / "meta.csv", "\n".join(meta) + "\n")
    setup = root / "evaluation_setup"
    _write(setup / "fold1_train.csv", "\n".join(lists["train"]) + "\n")
    _write(setup / "fold1_evaluate.csv", "\n".join(lists["test"]) + "\n")
    _write(setup / "fold1_test.csv", "\n".join(["filename"] + [r.split("\t")[0] for r in lists["test"][1:]]) + "\n")
    return _real_media(root)


def test_dcase_tau_archive_one_split(tmp_path):
    root = _tau(tmp_path / "TAU-urban-acoustic-scenes-2020-mobile-development")
    items = load_dataset("dcase", root)
    assert {Path(i.path).name: (i.label, i.split) for i in items} == {
        name: scene_split for name, scene_split in TAU_FILES.items() if scene_split[1]
    }  # fmt: skip
    assert len(items) == 4 and Counter(i.split for i in items) == {"train": 2, "test": 2}
    assert {i.fold for i in items} == {0} and classes(items) == ["airport", "bus"]


def test_dcase_tau_archive_errors(tmp_path):
    root = _tau(tmp_path / "tau")
    setup = root / "evaluation_setup"
    train = (setup / "fold1_train.csv").read_text()
    (setup / "fold1_train.csv").write_text(train + "audio/bus-prague-10-406-b.wav\tbus\n")
    with _raises(r"bus-prague-10-406-b.wav appears twice: \S*fold1_train.csv line 4 and \S*fold1_evaluate.csv "
                 r"line 3"):  # fmt: skip
        load_dataset("dcase", root)
    (setup / "fold1_train.csv").write_text(train.replace("bus-lyon-1-42-a.wav\tbus", "bus-lyon-1-42-a.wav\ttram"))
    with _raises(r"bus-lyon-1-42-a.wav is 'tram' in \S*fold1_train.csv line 3 but 'bus' in \S*meta.csv line 3"):
        load_dataset("dcase", root)
    (setup / "fold1_train.csv").write_text(train.replace("scene_label", "label"))
    with _raises(r"fold1_train.csv line 1: missing column scene_label \(found: filename, label\)"):
        load_dataset("dcase", root)
    (setup / "fold1_train.csv").write_text(train)
    (setup / "fold1_train.txt").write_text(train)
    with _raises(r"evaluation_setup: fold1_train.csv and fold1_train.txt are both the train list of fold 1"):
        load_dataset("dcase", root)
    (setup / "fold1_train.txt").unlink()
    (root / "audio" / "bus-lyon-1-43-s2.wav").unlink()  # in neither list: not missing
    assert len(load_dataset("dcase", root)) == 4


TAU_AV_FILES = {  # recording -> (scene, split); the last is in neither list (left out, as in TAU 2019/2020)
    "airport-lisbon-1175-44106": ("airport", "train"), "bus-lyon-1001-40001": ("bus", "train"),
    "airport-prague-1002-40002": ("airport", "test"), "bus-milan-1003-40003": ("bus", "test"),
    "park-vienna-1004-40004": ("park", None),
}  # fmt: skip
TAU_AV_HEADER = "filename_audio\tfilename_video\tscene_label\tidentifier"


def _tau_av(root: Path, video: bool = True) -> Path:
    """A TAU Urban Audio-Visual Scenes 2021 development archive: audio/*.wav, video/*.mp4 (or, with ``video``
    false, its audio download only), meta.csv and one fold; lists with a header, a file of each modality a line."""
    rows = {"train": [TAU_AV_HEADER], "test": [TAU_AV_HEADER]}
    meta = [TAU_AV_HEADER]
    for name, (scene, split) in TAU_AV_FILES.items():
        _touch(root / "audio" / f"{name}.wav")
        if video:
            _touch(root / "video" / f"{name}.mp4")
        row = f"audio/{name}.wav\tvideo/{name}.mp4\t{scene}\t{'-'.join(name.split('-')[1:3])}"
        meta.append(row)
        if split:
            rows[split].append(row)
    _write(root / "meta.csv", "\n".join(meta) + "\n")
    setup = root / "evaluation_setup"
    _write(setup / "fold1_train.csv", "\n".join(rows["train"]) + "\n")
    _write(setup / "fold1_evaluate.csv", "\n".join(rows["test"]) + "\n")
    tested = ["\t".join(r.split("\t")[:2]) for r in rows["test"]]  # filenames only
    _write(setup / "fold1_test.csv", "\n".join(["filename_audio\tfilename_video", *tested[1:]]) + "\n")
    return _real_media(root)


def test_dcase_tau_audio_visual_archive_gives_the_files_of_the_encoders_modality(tmp_path):
    """Until 2026-12-02 refused ("expected '<audio file><TAB><scene label>'" on the header): the audio encoder is
    scored on filename_audio, the video encoder on filename_video, with the labels and split of each line."""
    root = _tau_av(tmp_path / "TAU-urban-audio-visual-scenes-2021-development")
    listed = {name: scene_split for name, scene_split in TAU_AV_FILES.items() if scene_split[1]}
    for modality, folder, suffix in (("audio", "audio", ".wav"), ("video", "video", ".mp4")):
        items = load_dataset("dcase", root, modality=modality)
        assert {Path(i.path).stem: (i.label, i.split) for i in items} == listed
        assert all(Path(i.path).parent == (root / folder).resolve() and i.path.endswith(suffix) for i in items)
        assert {(i.fold, i.start_s, i.end_s) for i in items} == {(0, 0.0, 0.0)}
        assert all(i.group == i.path for i in items)
        assert Counter(i.split for i in items) == {"train": 2, "test": 2} and classes(items) == ["airport", "bus"]
    with _raises(r"fold1_evaluate.csv lists a file of each modality \(filename_audio, filename_video\): give "
                 r"modality='audio' or 'video' to say which the items are") as e:  # fmt: skip
        load_dataset("dcase", root)
    _one_line(e)
    with _raises("modality must be 'video' or 'audio', got 'sound'"):
        load_dataset("dcase", root, modality="sound")


def test_dcase_tau_audio_visual_archive_checks_the_files_of_one_modality(tmp_path):
    """The audio and the video come as separate downloads: the audio encoder needs no video/ (and the reverse)."""
    root = _tau_av(tmp_path / "tau-av", video=False)
    assert len(load_dataset("dcase", root, modality="audio")) == 4
    with _raises(r"4 of 4 files listed in the fold lists of \S*tau-av/evaluation_setup not found, the first 3: "
                 r"\S*tau-av/video/airport-lisbon-1175-44106.mp4, .*: \S*tau-av/video/ is not there: ") as e:
        load_dataset("dcase", root, modality="video")
    _one_line(e)
    _real_media(_touch(root / "video" / "bus-milan-1003-40003.mp4").parent)
    with pytest.warns(UserWarning, match="3 of 4 files .* dropped"):
        items = load_dataset("dcase", root, modality="video", missing="skip")
    assert [(Path(i.path).name, i.split) for i in items] == [("bus-milan-1003-40003.mp4", "test")]


def test_dcase_tau_audio_visual_archive_errors(tmp_path):
    root = _tau_av(tmp_path / "tau-av")
    setup = root / "evaluation_setup"
    train = (setup / "fold1_train.csv").read_text()
    lines = train.splitlines()
    for bad, message in [
        (f"{TAU_AV_HEADER}\n{lines[1]}\naudio/a.wav\t\tbus\tlyon-1\n",  # no video file
         r"fold1_train.csv line 3: expected a media file under filename_video and a scene_label, got "
         r"'audio/a.wav\\t\\tbus\\tlyon-1'"),
        (f"{TAU_AV_HEADER}\n{lines[1]}\naudio/a.wav\tvideo/a.mp4\n",  # no label
         r"fold1_train.csv line 3: expected a media file under filename_video and a scene_label"),
        ("airport-lisbon.wav\tairport\n",  # no header: read as TUT's file-label lines, the others are not
         r"fold1_evaluate.csv lists a file of each modality \(filename_audio, filename_video\) but \S*fold1_train.csv "
         r"one file a line: the lists of one archive are alike"),
    ]:  # fmt: skip
        (setup / "fold1_train.csv").write_text(bad)
        with _raises(message) as e:
            load_dataset("dcase", root, modality="video")
        _one_line(e)
    (setup / "fold1_train.csv").write_text(train.replace("filename_video", "video", 1))
    with _raises(r"fold1_train.csv line 1: missing column filename_video \(found: filename_audio, video, "
                 r"scene_label, identifier\)"):  # fmt: skip
        load_dataset("dcase", root, modality="video")
    assert len(load_dataset("dcase", root, modality="audio")) == 4  # its column is there
    (setup / "fold1_train.csv").write_text(train.replace("mp4\tbus", "mp4\ttram"))
    with _raises(r"video/bus-lyon-1001-40001.mp4 is 'tram' in \S*fold1_train.csv line 3 but 'bus' in \S*meta.csv "
                 r"line 3: one label per file"):  # fmt: skip
        load_dataset("dcase", root, modality="video")


def test_dcase_evaluation_set_archives_stay_refused(tmp_path):
    """An evaluation set's lists have no labels (TAU 2021 audio-visual: fold1_test.csv of filenames only)."""
    root = tmp_path / "TAU-urban-audio-visual-scenes-2021-evaluation"
    _write(root / "evaluation_setup" / "fold1_test.csv", "filename_audio\tfilename_video\naudio/0.wav\tvideo/0.mp4\n")
    _real_media(_touch(root / "audio" / "0.wav").parent)
    for modality in ("audio", "video", None):
        with _raises(r"TAU-.*-evaluation/evaluation_setup: needs fold<k>_train and fold<k>_evaluate lists .*"
                     r"found: fold1_test.csv\): an evaluation set's archive has no labelled lists: write its "
                     r"labels as a CSV \(path,label\) for kind csv") as e:  # fmt: skip
            load_dataset("dcase", root, modality=modality)
        _one_line(e)


# --- FSDD ----------------------------------------------------------------------------------------------------


def test_fsdd_labels_and_official_split(tmp_path):
    root = tmp_path / "fsdd"
    for digit in (3, 7):
        for index in (0, 4, 5, 49):
            _touch(root / "recordings" / f"{digit}_jackson_{index}.wav")
    items = load_dataset("fsdd", root)
    assert len(items) == 8 and classes(items) == ["3", "7"]
    assert {Path(i.path).stem: i.split for i in items if i.label == "3"} == {
        "3_jackson_0": "test", "3_jackson_4": "test", "3_jackson_5": "train", "3_jackson_49": "train"
    }  # fmt: skip
    flat = tmp_path / "flat"  # the recordings directly in root
    _touch(flat / "0_theo_1.wav")
    assert [(i.label, i.split) for i in load_dataset("fsdd", flat)] == [("0", "test")]
    _touch(flat / "hello.wav")
    with _raises(r"hello.wav: not an FSDD file name"):
        load_dataset("fsdd", flat)


# --- GRID word clips -----------------------------------------------------------------------------------------


def _grid(root: Path, stems: list[str]) -> Path:
    words = ["path,slot,word,start_s,end_s"]
    clips = ["path,sentence,command,color,preposition,letter,digit,adverb"]
    for n, stem in enumerate(stems):
        _touch(root / "videos" / f"{stem}.mp4")
        clips.append(f"videos/{stem}.mp4,bin blue at f two now,bin,blue,at,f,two,now")
        spans = [("command", "bin", 0.1, 0.3), ("color", "blue", 0.3, 0.5), ("preposition", "at", 1.0, 1.2),
                 ("letter", "f", 1.2, 1.4), ("digit", ("two", "nine")[n % 2], 1.4, 1.6),
                 ("adverb", "now", 2.7, 2.95)]  # fmt: skip
        words += [f"videos/{stem}.mp4,{slot},{word},{a:.3f},{b:.3f}" for slot, word, a, b in spans]
    _write(root / "clips.csv", "\n".join(clips) + "\n")
    _write(root / "words.csv", "\n".join(words) + "\n")
    return root


def test_grid_words_windows_and_clamping(tmp_path):
    root = _grid(tmp_path / "grid", ["bbaf2n", "bbaf9a"])
    digits = load_dataset("grid-words", root, slot="digit")
    assert [(i.label, i.start_s, i.end_s) for i in digits] == [("two", 1.0, 2.0), ("nine", 1.0, 2.0)]
    assert [i.group for i in digits] == [f"{i.path}#digit" for i in digits]
    # Near the edges the window slides inside [0, duration], keeping its length.
    assert {(i.start_s, i.end_s) for i in load_dataset("grid-words", root, slot="command")} == {(0.0, 1.0)}
    assert {(i.start_s, i.end_s) for i in load_dataset("grid-words", root, slot="adverb")} == {(2.0, 3.0)}
    wide = load_dataset("grid-words", root, slot="adverb", window_s=0.5, duration_s=2.9)
    assert {(i.start_s, i.end_s) for i in wide} == {(2.4, 2.9)}
    assert {(i.start_s, i.end_s) for i in load_dataset("grid-words", root, slot="digit", window_s=5.0)} == {(0.0, 3.0)}
    assert {i.split for i in load_dataset("grid-words", root, slot="digit", split_by="none")} == {""}
    # As text (--option window_s=0.5): numbers.
    assert load_dataset("grid-words", root, slot="adverb", window_s="0.5", duration_s="2.9") == wide
    with _raises("grid-words option window_s: value 'half' is not a number"):
        load_dataset("grid-words", root, slot="digit", window_s="half")


def test_grid_words_sentence_split_is_per_video(tmp_path):
    stems = [f"s{n:03d}" for n in range(200)]
    root = _grid(tmp_path / "grid", stems)
    items = [i for slot in ("command", "digit", "adverb") for i in load_dataset("grid-words", root, slot=slot)]
    splits = {}
    for item in items:
        splits.setdefault(item.path, set()).add(item.split)
    assert all(len(s) == 1 for s in splits.values())  # no video in both splits, whatever the slot
    test = sum(s == {"test"} for s in splits.values())
    assert 25 <= test <= 55  # about 20% of 200
    again = _grid(tmp_path / "copy", stems)  # the same sentence ids elsewhere get the same splits
    assert [i.split for i in load_dataset("grid-words", again, slot="digit")] == [
        i.split for i in load_dataset("grid-words", root, slot="digit")
    ]


def test_grid_words_sentence_split_by_listed_name_not_link_target(tmp_path):
    """Videos that are links to files named otherwise (git-annex, DVC) split by the listed stem, as documented."""
    stems = [f"s{n:03d}" for n in range(40)]
    plain = load_dataset("grid-words", _grid(tmp_path / "plain", stems), slot="digit")
    root = _grid(tmp_path / "annex", stems)
    for n, stem in enumerate(stems):
        video = root / "videos" / f"{stem}.mp4"
        video.rename(_touch(tmp_path / "store" / f"SHA256E-s3--{n:064x}.mp4"))
        video.symlink_to(tmp_path / "store" / f"SHA256E-s3--{n:064x}.mp4")
    linked = load_dataset("grid-words", root, slot="digit")
    assert {Path(i.path).parent.name for i in linked} == {"store"}  # paths resolved, as everywhere
    by_stem = {Path(i.path).stem: i.split for i in plain}
    assert sorted(i.split for i in linked) == sorted(by_stem.values()) and "test" in by_stem.values()
    targets = {f"SHA256E-s3--{n:064x}": stem for n, stem in enumerate(stems)}
    assert {targets[Path(i.path).stem]: i.split for i in linked} == by_stem


def test_grid_words_errors(tmp_path):
    root = _grid(tmp_path / "grid", ["bbaf2n"])
    with _raises(r"needs --option slot=NAME; the slots of .*: command, color, preposition, letter, digit, adverb") as e:
        load_dataset("grid-words", root)
    _one_line(e)
    with _raises("has no slot 'digits'; the slots of"):
        load_dataset("grid-words", root, slot="digits")
    with _raises("split_by must be"):
        load_dataset("grid-words", root, slot="digit", split_by="speaker")
    with _raises("window_s and duration_s must be positive"):
        load_dataset("grid-words", root, slot="digit", window_s=0)
    with _raises(r"unknown option\(s\) slots for grid-words; options: slot, window_s"):
        load_dataset("grid-words", root, slots="digit")
    (root / "videos" / "bbaf2n.mp4").unlink()
    with _raises("1 of 1 files listed in .*words.csv not found"):
        load_dataset("grid-words", root, slot="digit")


# --- a dataset as unpacked: its root one level off, archives left packed, names spelled otherwise --------------


def test_ucf101_and_hmdb51_find_their_split_folder_beside_the_root(tmp_path):
    """The split archives unpack where they are unpacked, beside the videos' folder as often as in it: until
    2026-12-03 only in it was found (`split folder .../UCF-101/ucfTrainTestlist not found`)."""
    ucf = _ucf(tmp_path / "UCF-101")
    (ucf / "ucfTrainTestlist").rename(tmp_path / "ucfTrainTestlist")
    assert len(load_dataset("ucf101", ucf, split=1)) == 12
    hmdb = tmp_path / "hmdb51"
    for name in ("a.avi", "b.avi"):
        _touch(hmdb / "brush_hair" / name)
    _write(tmp_path / "testTrainMulti_7030_splits" / "brush_hair_test_split1.txt", "a.avi 1 \r\nb.avi 2 \r\n")
    assert [i.split for i in load_dataset("hmdb51", hmdb, split=1)] == ["train", "test"]


def test_a_root_one_level_off_names_the_folder_to_give(tmp_path):
    """The unzip folder given for the dataset's, or a folder of it: until 2026-12-03 every listed file was `not
    found` (and option missing='skip', which that offered, left no items), meta/esc50.csv or words.csv `not found`,
    FSDD had `no items`, and a DCASE archive was read as one class named after its folder."""
    ucf = _ucf(tmp_path / "ucf" / "UCF-101")
    (ucf / "ucfTrainTestlist").rename(ucf.parent / "ucfTrainTestlist")
    for missing in ("error", "skip"):
        with _raises(rf"12 of 12 files .* not found, the first 3: .*: they are in {re.escape(str(ucf))}: give") as e:
            load_dataset("ucf101", ucf.parent, split=1, missing=missing)
        _one_line(e)
    esc = _esc50(tmp_path / "esc" / "ESC-50-master")
    for given in (esc.parent, esc / "audio"):
        with _raises(rf"esc50: \S*meta/esc50.csv not found: it is in {re.escape(str(esc))}, give that folder"):
            load_dataset("esc50", given)
    grid = _grid(tmp_path / "grid" / "grid-s1", ["bbaf2n"])
    with _raises(rf"grid-words: \S*words.csv not found: it is in {re.escape(str(grid))}, give that folder"):
        load_dataset("grid-words", grid.parent, slot="digit")
    fsdd = tmp_path / "fsdd" / "free-spoken-digit-dataset"
    _touch(fsdd / "recordings" / "0_theo_1.wav")
    with _raises(rf"fsdd: no recordings in \S*, but {re.escape(str(fsdd))} holds recordings/: give that folder"):
        load_dataset("fsdd", fsdd.parent)
    for archive, inner in ((_tau(tmp_path / "tau" / "TAU-dev"), "evaluation_setup"),
                           (_dcase2013(tmp_path / "d13" / "dcase2013"), "scenes_stereo")):  # fmt: skip
        with _raises(rf"{re.escape(str(archive))}/ is a DCASE archive \(it holds {inner}/\), not a class folder"):
            load_dataset("dcase", archive.parent)


def test_hmdb51_class_archives_not_unpacked_are_named(tmp_path):
    """hmdb51_org.rar holds a .rar per class: until 2026-12-03 their videos were `not found`, the .rar unsaid."""
    root = tmp_path / "hmdb51"
    lists = root / "testTrainMulti_7030_splits"
    for name in ("brush_hair", "cartwheel", "ride_bike"):
        _touch(root / f"{name}.rar")
        _write(lists / f"{name}_test_split1.txt", f"{name}_0.avi 1 \n{name}_1.avi 2 \n")
    _touch(root / "ride_bike" / "ride_bike_0.avi")  # this one unpacked
    _touch(root / "ride_bike" / "ride_bike_1.avi")
    with _raises(r"hmdb51: 2 class\(es\) still packed in their .rar, e.g. brush_hair.rar: unpack each there") as e:
        load_dataset("hmdb51", root, split=1)
    _one_line(e)
    for name in ("brush_hair", "cartwheel", "ride_bike"):  # each unpacked into a folder of its name: not the root
        (root / f"{name}.rar").unlink()
        for n in (0, 1):
            _touch(root / name / name / f"{name}_{n}.avi")
    (root / "ride_bike" / "ride_bike_0.avi").unlink()
    (root / "ride_bike" / "ride_bike_1.avi").unlink()
    with _raises(r"6 of 6 files .*: is \S*hmdb51 the dataset's root folder \(--data\)\?$"):
        load_dataset("hmdb51", root, split=1)


def test_files_not_found_name_a_few_and_a_name_spelled_otherwise(tmp_path):
    """A few, so that a class gone shows from scattered files (until 2026-12-03 one); a folder whose name differs
    only in case, or in Unicode form (é decomposed, as macOS writes names), is named: Linux finds neither."""
    root = _ucf(tmp_path / "UCF-101")
    for name in ("v_YoYo_g02_c01.avi", "v_YoYo_g02_c02.avi", "v_YoYo_g01_c01.avi"):
        (root / "YoYo" / name).unlink()
    with _raises(r"3 of 12 files .* not found, the first 3: \S*v_YoYo_g02_c01.avi, \S*v_YoYo_g02_c02.avi, "
                 r"\S*v_YoYo_g01_c01.avi \(option missing"):  # fmt: skip
        load_dataset("ucf101", root, split=1)
    _ucf(root)
    (root / "YoYo").rename(root / "yoyo")
    with _raises(r"4 of 12 files .*; \S*UCF-101 holds 'yoyo', which differs from the listed 'YoYo' only in case "
                 r"or Unicode form: rename one \(option missing"):  # fmt: skip
        load_dataset("ucf101", root, split=1)
    cafe = tmp_path / "caf\u00e9"
    _touch(cafe / "Cafe\u0301" / "v_1.avi")  # decomposed
    _write(cafe / "ucfTrainTestlist" / "classInd.txt", "1 Caf\u00e9\n")
    _write(cafe / "ucfTrainTestlist" / "trainlist01.txt", "Caf\u00e9/v_1.avi 1\n")
    _write(cafe / "ucfTrainTestlist" / "testlist01.txt", "")
    with _raises(r"1 of 1 files .* holds 'Cafe\\u0301', which differs from the listed 'Caf\\xe9' only") as e:
        load_dataset("ucf101", cafe, split=1)
    _one_line(e)


def test_split_lists_in_utf16_or_of_latin1_names(tmp_path):
    """A list saved as UTF-16 (Windows' "Unicode") is refused saying so, and one of Latin-1 names (those of a file
    system of Latin-1 names) names its files as the bytes they are: until 2026-12-03 both were a codec's error."""
    root = _ucf(tmp_path / "UCF-101")
    train = root / "ucfTrainTestlist" / "trainlist01.txt"
    text = train.read_text()
    train.write_text(text, encoding="utf-16")
    with _raises(r"trainlist01.txt: not a text list \(a binary file, or text in UTF-16: save it as UTF-8\)") as e:
        load_dataset("ucf101", root, split=1)
    _one_line(e)
    (root / os.fsdecode(b"YoYo/v_Y\xf6Yo_g03_c01.avi")).write_bytes(b"xdc")
    train.write_bytes(text.encode() + b"YoYo/v_Y\xf6Yo_g03_c01.avi 3\r\n")
    items = load_dataset("ucf101", root, split=1)
    assert len(items) == 13 and os.fsencode(items[-1].path).endswith(b"/YoYo/v_Y\xf6Yo_g03_c01.avi")


# --- generic CSV and the standard table ----------------------------------------------------------------------


def test_generic_csv_relative_paths_and_optional_columns(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for name in ("a.wav", "b.mp4", "sub/c.flac"):
        _touch(data / name)
    _touch(tmp_path / "elsewhere.wav")
    _write(data / "labels.csv", "path,label,split,fold,start_s,end_s,group\n"
                   "a.wav,cat,train,2,,,\n"
                   "b.mp4, dog ,test,,1.5,2.5,rec1\n"
                   f"{tmp_path / 'elsewhere.wav'},cat,,,,,\n"
                   "sub/c.flac,dog,val,,,,\n")  # fmt: skip
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the CSV's folder, not the working directory
    items = {Path(i.path).name: i for i in load_dataset("csv", "data/labels.csv")}
    a = str((data / "a.wav").resolve())
    assert items["a.wav"] == Item(a, "cat", "train", 2, 0.0, 0.0, a)
    assert items["b.mp4"] == Item(str((data / "b.mp4").resolve()), "dog", "test", 0, 1.5, 2.5, "rec1")
    assert items["elsewhere.wav"].split == "" and items["c.flac"].split == "val"
    minimal = _write(data / "minimal.csv", "label,path\ncat,a.wav\n")
    assert load_dataset("csv", minimal) == [Item(a, "cat")]
    with _raises("is a folder; give the CSV file"):
        load_dataset("csv", data)


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,split\na.wav,train\n", r"missing column\(s\) label"),
        ("path,label,split\na.wav,cat,dev\n", "line 2: split 'dev' is not train, test, val or empty"),
        ("path,label\na.wav,\n", "line 2: empty path or label"),
        ("path,label,fold\na.wav,cat,x\n", "line 2: fold 'x' is not an integer"),
        ("path,label,start_s,end_s\na.wav,cat,2,1\n", "line 2: needs fold >= 0, start_s >= 0"),
        ("path,label\nnope.wav,cat\n", "1 of 1 files listed in .* not found"),
        ("PK\x03\x04\x00\x00binary", r"t.csv: not a text CSV \(a binary file"),  # a features .npz given by mistake
    ],
)
def test_generic_csv_errors(tmp_path, text, message):
    _touch(tmp_path / "a.wav")
    with _raises(message) as e:
        load_dataset("csv", _write(tmp_path / "t.csv", text))
    assert "t.csv" in _one_line(e)


# --- a file listed twice -------------------------------------------------------------------------------------


def _real_media(root: Path) -> Path:
    """The placeholders under ``root`` made real media (video: H.264; .wav: PCM), as a downloaded dataset's."""
    for path in root.rglob("*"):
        if path.suffix in (".avi", ".mp4"):
            write_av(path, np.zeros((4, 32, 32, 3), np.uint8), 8)
        elif path.suffix == ".wav":
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(bytes(2 * 1600))
    return root


def test_a_file_listed_twice_is_refused_naming_both_lines(tmp_path):
    """A repeated line (lists concatenated, a row pasted twice) made an item twice: trained on twice an epoch, or
    scored twice (until 2026-12-02). Now one line names the file and both places, in one split or two."""
    ucf = _real_media(_ucf(tmp_path / "UCF-101"))
    lists = ucf / "ucfTrainTestlist"
    official = {name: (lists / name).read_text() for name in ("trainlist01.txt", "testlist01.txt")}
    assert len(load_dataset("ucf101", ucf, split=1)) == 12
    (lists / "trainlist01.txt").write_text(official["trainlist01.txt"] + "YoYo/v_YoYo_g02_c01.avi 3\r\n")
    twice = r"YoYo/v_YoYo_g02_c01.avi appears twice: \S*trainlist01.txt line 5 and \S*trainlist01.txt line 7 \(keep"
    with _raises(twice) as e:
        load_dataset("ucf101", ucf, split=1)
    _one_line(e)
    (lists / "trainlist01.txt").write_text(official["trainlist01.txt"])
    (lists / "testlist01.txt").write_text(official["testlist01.txt"] + "YoYo/v_YoYo_g02_c01.avi\r\n")
    with _raises(r"appears twice: \S*trainlist01.txt line 5 and \S*testlist01.txt line 7"):
        load_dataset("ucf101", ucf, split=1)

    hmdb = tmp_path / "hmdb51"
    _touch(hmdb / "brush_hair" / "a.avi")
    _touch(hmdb / "brush_hair" / "b.avi")
    split1 = _write(hmdb / "testTrainMulti_7030_splits" / "brush_hair_test_split1.txt", "a.avi 1\nb.avi 2\na.avi 1\n")
    _real_media(hmdb)
    with _raises(r"brush_hair/a.avi appears twice: \S*split1.txt line 1 and \S*split1.txt line 3"):
        load_dataset("hmdb51", hmdb, split=1)
    split1.write_text("a.avi 1\nb.avi 2\na.avi 0\n")  # 0: in neither split, not an item
    assert len(load_dataset("hmdb51", hmdb, split=1)) == 2

    esc = _real_media(_esc50(tmp_path / "ESC-50"))
    meta = esc / "meta" / "esc50.csv"
    meta.write_text(meta.read_text() + "1-100032-A-0.wav,2,0,dog,True,100032,A\n")  # another fold: in test and train
    with _raises(r"1-100032-A-0.wav appears twice: \S*esc50.csv line 2 and \S*esc50.csv line 7"):
        load_dataset("esc50", esc)

    grid = _real_media(_grid(tmp_path / "grid", ["bbaf2n", "bbaf9a"]))
    words = grid / "words.csv"
    words.write_text(words.read_text() + "videos/bbaf9a.mp4,digit,nine,1.400,1.600\n")
    with _raises(r"bbaf9a.mp4 from 1 s to 2 s appears twice: \S*words.csv line 12 and \S*words.csv line 14"):
        load_dataset("grid-words", grid, slot="digit")
    assert len(load_dataset("grid-words", grid, slot="color")) == 2  # other slots read as before

    table = tmp_path / "table"
    for name in ("a.wav", "b.wav"):
        _touch(table / name)
    _real_media(table)
    labels = _write(table / "labels.csv", "path,label,start_s,end_s\na.wav,cat,,\nb.wav,dog,,\na.wav,cat,0.5,\n")
    assert len(load_dataset("csv", labels)) == 3  # another part of a.wav: another item
    labels.write_text(labels.read_text() + "a.wav,dog,0.5,\n")
    with _raises(r"a.wav from 0.5 s to its end is listed twice with label 'cat' and 'dog': \S*labels.csv line 4 and "
                 r"\S*labels.csv line 5 \(keep the row with the right one\)"):
        load_dataset("csv", labels)


def test_a_csv_row_repeated_whole_is_left_out_with_a_warning(tmp_path):
    """A labels CSV (or a manifest: two joined whole) with a row twice, all alike: kept once, as a pretraining
    manifest's repeated file is, with one warning (until 2026-12-02 refused); a repeat that differs in label,
    split, fold or group is refused, naming the file, both lines and the values."""
    for name in ("a.wav", "b.wav", "c.avi.mp4"):
        _touch(tmp_path / name)
    _real_media(tmp_path)
    rows = "path,label,split,start_s,end_s\na.wav,cat,train,,\nb.wav,dog,test,1,2\n"
    labels = _write(tmp_path / "labels.csv", rows + "a.wav,cat,train,,\nb.wav,dog,test,1.0,2\n./a.wav,cat,train,0,\n")
    with pytest.warns(UserWarning, match=r"labels.csv: 3 row\(s\) repeating an earlier one \(the same part of a "
                                         r"file, label, split, fold and group\) left out, e.g. \S*labels.csv line 4 "
                                         r"\(as \S*labels.csv line 2\)") as caught:  # fmt: skip
        items = load_dataset("csv", labels)
    assert len(caught) == 1
    assert [(Path(i.path).name, i.label, i.split, i.start_s, i.end_s) for i in items] == \
        [("a.wav", "cat", "train", 0.0, 0.0), ("b.wav", "dog", "test", 1.0, 2.0)]  # fmt: skip
    labels.write_text(rows + "b.wav,dog,train,1,2\n")  # in both splits: trained and tested on
    with _raises(r"b.wav from 1 s to 2 s is listed twice with split 'test' and 'train': \S*labels.csv line 3 and "
                 r"\S*labels.csv line 4") as e:  # fmt: skip
        load_dataset("csv", labels)
    _one_line(e)
    # c.avi read from its copy by xdc prepare, which is listed too: the same file (until 2026-12-02 two items)
    labels.write_text("path,label\nc.avi,cat\nc.avi.mp4,dog\n")
    with _raises(r"c.avi.mp4 is listed twice with label 'cat' and 'dog': \S*labels.csv line 2 and \S*labels.csv "
                 "line 3"):  # fmt: skip
        load_dataset("csv", labels)


def test_a_file_found_twice_in_class_folders_is_refused(tmp_path):
    """A link to a file of another class (or two links to one file) made one file two items."""
    root = tmp_path / "scenes"
    for name in ("bus/a.wav", "park/b.wav"):
        _touch(root / name)
    _real_media(root)
    (root / "park" / "c.wav").symlink_to(root / "bus" / "a.wav")
    with _raises(r"bus/a.wav appears twice: \S*scenes/bus/a.wav and \S*scenes/park/c.wav \(keep one\)") as e:
        load_dataset("dcase", root)
    _one_line(e)


def test_table_round_trip(tmp_path):
    items = [
        Item("/data/x y/a,b.mp4", 'say "hi"', "train", 3, 0.1 + 0.2, 1 / 3, "/data/x y/a,b.mp4#digit"),
        Item("/data/b.wav", "dog", "", 0, 0.0, 0.0),
        Item("/data/c.wav", " spaced label ", "val", 0, 1e-7, 2.5, "rec"),
    ]
    path = tmp_path / "table.csv"
    write_table(items, path)
    with open(path, newline="") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    assert read_table(path) == items
    write_table([], path)
    assert read_table(path) == []
    with _raises("cannot write table"):
        write_table(items, tmp_path / "no" / "table.csv")
    _write(path, "path,label,split,fold,start_s,end_s,group\nrel.wav,a,,0,0,0,\n")
    with _raises("line 2: path 'rel.wav' is not absolute"):
        read_table(path)


def test_helpers_and_unknown_kind(tmp_path):
    items = [Item("/b", "z", "train"), Item("/a", "y", "test"), Item("/c", "z")]
    assert [i.path for i in split_items(items, "train")] == ["/b"]
    assert [i.path for i in split_items(items, "")] == ["/c"]
    assert classes(items) == ["y", "z"]
    with _raises("unknown split 'dev'"):
        split_items(items, "dev")
    with _raises("unknown dataset kind 'kinetics'; kinds: ucf101, hmdb51, esc50, dcase, fsdd, grid-words, csv"):
        load_dataset("kinetics", tmp_path)


# --- real data (../shared/data) ------------------------------------------------------------------------------


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is absent (real-data test; the fixtures above cover the adapters)")
    return path


def test_real_fsdd_and_grid_digits():
    fsdd = load_dataset("fsdd", _shared("fsdd"))
    assert len(fsdd) == 3000 and len(split_items(fsdd, "test")) == 300
    assert classes(fsdd) == [str(d) for d in range(10)]
    grid = _shared("grid-s1")
    digits = load_dataset("grid-words", grid, slot="digit")
    with open(grid / "clips.csv", newline="") as f:
        clips = list(csv.DictReader(f))
    assert len(digits) == len(clips) and len({i.path for i in digits}) == len(clips)
    assert classes(digits) == sorted("zero one two three four five six seven eight nine".split())
    by_path = {Path(i.path).name: i.label for i in digits}
    assert all(by_path[Path(c["path"]).name] == c["digit"] for c in clips)
    assert all(abs(i.end_s - i.start_s - 1.0) < 1e-6 and 0 <= i.start_s and i.end_s <= 3.0 for i in digits)
    assert 0.1 < len(split_items(digits, "test")) / len(digits) < 0.3
