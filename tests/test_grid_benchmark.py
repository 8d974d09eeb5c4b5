"""xdc benchmark grid on a small folder in GRID's layout, made from generated media."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from xdc.data.synthetic import make_synthetic
from xdc.errors import UserError
from xdc.evaluation.adapters import load_dataset
from xdc.grid_benchmark import grid_benchmark
from xdc.tables import format_table

DIGITS = ("one", "two", "three")


@pytest.fixture(scope="module")
def grid_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("gridlike")
    labels = make_synthetic(root, 18, 3, seed=2, workers=2)
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    with open(root / "clips.csv", "w", newline="") as f, open(root / "words.csv", "w", newline="") as g:
        clips, words = csv.writer(f), csv.writer(g)
        clips.writerow(["path", "sentence", "command", "color", "digit"])
        words.writerow(["path", "slot", "word", "start_s", "end_s"])
        for i, row in enumerate(rows):
            digit = DIGITS[int(row["label"][-2:])]  # the visual class plays the spoken digit's role
            command, color = ("bin", "lay", "set")[i % 3], ("blue", "red")[i // 3 % 2]
            clips.writerow([row["path"], f"s{i}", command, color, digit])
            for slot, word, start in (("command", command, 0.2), ("color", color, 1.0), ("digit", digit, 1.8)):
                words.writerow([row["path"], slot, word, start, start + 0.5])
    return root


def grid_subset(grid: Path, out: Path, keep) -> Path:
    """A folder in GRID's layout with the clips of ``grid`` whose number ``keep`` takes (copies: other paths)."""
    (out / "videos").mkdir(parents=True)
    with open(grid / "clips.csv", newline="") as f:
        rows = [row for n, row in enumerate(csv.DictReader(f)) if keep(n)]
    for row in rows:
        shutil.copy(grid / row["path"], out / row["path"])
    with open(grid / "words.csv", newline="") as f:
        words = [row for row in csv.DictReader(f) if row["path"] in {r["path"] for r in rows}]
    for name, table in (("clips.csv", rows), ("words.csv", words)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return out


def test_grid_benchmark_table(grid_like, tmp_path, capsys):
    result = grid_benchmark(
        grid_like, tmp_path, preset="tiny", methods=("scratch", "supervised", "xdc"), ks=(2,),
        overrides=("train.rounds=1", "train.k=3", "train.batch_size=6", "data.workers=0"),
    )  # fmt: skip
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["scratch", "supervised (digit)", "xdc", "xdc k=2"]
    for row in rows.values():
        for key in ("video/digit", "audio/digit", "video/color"):
            assert 0 <= row[key] <= 100
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    # each row as it comes, under the header, lined up as the table at the end (until 2026-12-03 no header)
    assert capsys.readouterr().out.count(format_table(result["rows"]) + "\n") == 2


def test_supervised_slot_and_changed_settings(grid_like, tmp_path):
    settings = ("train.rounds=1", "train.k=3", "train.batch_size=6", "data.workers=0")
    result = grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("supervised",), overrides=settings,
                            supervised_slot="color")  # fmt: skip
    assert [r["method"] for r in result["rows"]] == ["supervised (color)"]
    with open(tmp_path / "clip_labels.csv") as f:
        assert {row["label"] for row in csv.DictReader(f)} == {"blue", "red"}
    # The finished run is reused with the same settings, and refused with others rather than silently reused.
    again = grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("supervised",), overrides=settings,
                           supervised_slot="color")  # fmt: skip
    assert again["rows"][0]["pretrain_s"] == result["rows"][0]["pretrain_s"]
    with pytest.raises(UserError, match=r"other settings \(train.k 3, now 4\); choose another --out"):
        grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("supervised",), supervised_slot="color",
                       overrides=(*settings[:1], "train.k=4", *settings[2:]))  # fmt: skip
    with pytest.raises(UserError, match="unknown slot"):
        grid_benchmark(grid_like, tmp_path, supervised_slot="colour")
    # a run finished by xdc pretrain --resume has no timing of its own: reported as unknown, not a failure
    (tmp_path / "runs" / "supervised-color" / "timing.json").unlink()
    again = grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("supervised",), overrides=settings,
                           supervised_slot="color")  # fmt: skip
    assert again["rows"][0]["pretrain_s"] == "-"


def test_a_supervised_slot_without_the_supervised_baseline_is_refused(grid_like, tmp_path, capsys):
    """--supervised-slot names the labels of the supervised run alone: with --methods leaving that run out it was
    taken without a word, and results.json recorded it as if a run had used it (until 2026-12-03)."""
    from xdc.cli import main

    out = tmp_path / "grid"
    assert main(["benchmark", "grid", "--data", str(grid_like), "--out", str(out), "--methods", "scratch,xdc",
                 "--supervised-slot", "color"]) == 2  # fmt: skip
    assert capsys.readouterr().err == ("xdc: error: --supervised-slot is the labels of the supervised baseline, which "
                                       "--methods scratch,xdc leaves out: drop it, or add supervised to --methods\n")
    assert not out.exists()  # refused before anything is written
    # with the baseline among the methods the slot goes through to the benchmark, which checks it
    assert main(["benchmark", "grid", "--data", str(grid_like), "--out", str(out), "--methods", "supervised",
                 "--supervised-slot", "colour"]) == 2  # fmt: skip
    assert "unknown slot 'colour'" in capsys.readouterr().err


def test_an_out_that_is_a_file_is_said_as_such(grid_like, tmp_path):
    """Until 2026-12-03 "OUT: File exists", once the probes' items had been read."""
    (tmp_path / "results.csv").write_text("mine\n")
    with pytest.raises(UserError, match=r"^--out \S*results.csv is a file, not a folder$"):
        grid_benchmark(grid_like, tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text() == "mine\n"

def test_a_run_on_other_data_or_with_unreadable_files_is_refused_or_noted(grid_like, tmp_path, capsys):
    settings = ("train.rounds=1", "train.k=3", "train.batch_size=6", "data.workers=0")
    grid_a = grid_subset(grid_like, tmp_path / "gridA", lambda n: n % 2 == 0)
    grid_b = grid_subset(grid_like, tmp_path / "gridB", lambda n: n % 2 == 1)
    out, run = tmp_path / "bench", tmp_path / "bench" / "runs" / "scratch"
    grid_benchmark(grid_a, out, preset="tiny", methods=("scratch",), overrides=settings)
    # a timing is only a record: one that cannot be read (cut short by a full disk) is noted and shown as -
    (run / "timing.json").write_text("")
    again = grid_benchmark(grid_a, out, preset="tiny", methods=("scratch",), overrides=settings)
    assert again["rows"][0]["pretrain_s"] == "-"
    assert f"NOTE: {run / 'timing.json'} cannot be read (JSONDecodeError: " in capsys.readouterr().err
    # the encoders of gridA are not reported as trained on gridB: refused as for other settings
    with pytest.raises(UserError) as refused:
        grid_benchmark(grid_b, out, preset="tiny", methods=("scratch",), overrides=settings)
    assert str(refused.value) == (f"{run} was pretrained on other videos than --data's, by their paths (9 of its 9 are "
                                  "not among them, 9 of --data's not among its; data moved since counts as other); "
                                  "choose another --out for this benchmark")  # fmt: skip
    with open(run / "encoders.pt", "r+b") as f:  # cut short
        f.truncate(1000)
    with pytest.raises(UserError, match=rf"^cannot read {run / 'encoders.pt'} as a run's encoders: .*; remove {run} "
                                        "and the benchmark trains it again$"):  # fmt: skip
        grid_benchmark(grid_a, out, preset="tiny", methods=("scratch",), overrides=settings)


def test_benchmark_command_errors(grid_like, tmp_path, capsys):
    from xdc.cli import main

    command = ["benchmark", "grid", "--data", str(grid_like), "--out", str(tmp_path), "--preset", "tiny"]
    assert main([*command, "--k", "16,x"]) == 2
    assert capsys.readouterr().err == "xdc: error: --k takes whole numbers separated by commas, e.g. 16,64; got '16,x'\n"
    assert main([*command, "--fsdd", str(tmp_path / "nowhere")]) == 2  # before any training
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_every_run_is_checked_before_the_first_trains(grid_like, tmp_path):
    """Until 2026-12-01 a bad k of the sweep, or a later method's folder of other settings, was refused only after
    every run before it had trained (hours with the small preset)."""
    settings = ("train.rounds=1", "train.k=3", "train.batch_size=6", "data.workers=0")
    with pytest.raises(UserError, match="train.k must be at least 2"):
        grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("scratch",), ks=(1,), overrides=settings)
    assert not (tmp_path / "runs").exists()
    other = tmp_path / "runs" / "cdc"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("train:\n  method: cdc\n  k: 5\n")
    with pytest.raises(UserError, match=r"cdc was pretrained with other settings \(.*train.k 5, now 3"):
        grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("scratch", "cdc"), overrides=settings)
    assert not (tmp_path / "runs" / "scratch").exists()


def test_a_folder_without_grid_layout_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not have the GRID layout"):
        grid_benchmark(tmp_path, tmp_path / "out")


def test_a_rerun_keeps_the_probes_features(grid_like, tmp_path):
    """Until 2026-12-03 a re-run extracted every probe's features again (minutes per run), though the same."""
    settings = ("train.rounds=1", "train.k=3", "train.batch_size=6", "data.workers=0")
    first = grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("scratch",), overrides=settings)
    features = sorted((tmp_path / "features").glob("*.npz"))
    assert len(features) == 12 and all(f.with_suffix(".json").exists() for f in features)
    made = {f: f.stat().st_mtime_ns for f in features}
    again = grid_benchmark(grid_like, tmp_path, preset="tiny", methods=("scratch",), overrides=settings)
    assert again["rows"] == first["rows"]
    assert {f: f.stat().st_mtime_ns for f in features} == made


def test_data_whose_sentence_split_has_no_test_part_is_refused_before_training(grid_like, tmp_path):
    """Until 2026-12-03 every method trained first, and then the probe failed naming an internal file."""
    split = {Path(i.path).name: i.split for i in load_dataset("grid-words", grid_like, slot="digit")}
    with open(grid_like / "clips.csv", newline="") as f:
        train = [split[Path(row["path"]).name] == "train" for row in csv.DictReader(f)]
    assert not all(train)
    few = grid_subset(grid_like, tmp_path / "few", lambda n: train[n])
    with pytest.raises(UserError) as refused:
        grid_benchmark(few, tmp_path / "out", preset="tiny", methods=("scratch",), overrides=("data.workers=0",))
    assert str(refused.value) == (f"the sentence split of {few / 'words.csv'} puts all {sum(train)} command words in "
                                  "train: the probes need both; give more clips, or --test-data")  # fmt: skip
    assert not (tmp_path / "out" / "runs").exists()
