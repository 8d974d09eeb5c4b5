"""A file whose name is not UTF-8 (as a Latin-1 system writes "café") keeps its name through every file that holds
paths: manifests, side files, lists, labels, prepare's report, a run's videos, tables, the report and model card."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from xdc.cli import main
from xdc.config import load_config
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest, iter_rows
from xdc.data.prepare import prepare
from xdc.data.synthetic import make_synthetic
from xdc.evaluation.adapters import Item, load_dataset, read_table, write_table
from xdc.export import export_run
from xdc.report import write_report
from xdc.training.distributed import Dist
from xdc.training.pretrain import pretrain

LATIN_1 = b"caf\xe9.mp4"  # "café.mp4" in Latin-1: the byte 0xe9 alone is not UTF-8


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, str]:
    """(folder of 8 synthetic videos, the path of the one renamed to LATIN_1, as Python names it)."""
    root = tmp_path_factory.mktemp("names")
    make_synthetic(root / "data", 8, 2, seed=0, workers=2)
    folder = root / "data" / "videos"
    first = sorted(folder.iterdir())[0]
    try:
        os.rename(first, os.path.join(os.fsencode(folder), LATIN_1))
    except OSError as e:  # a filesystem that takes only UTF-8 names (macOS)
        pytest.skip(f"this filesystem refuses a name that is not UTF-8: {e}")
    return folder, os.fsdecode(os.path.join(os.fsencode(folder.resolve()), LATIN_1))


def labels_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # as a script would write it
        csv.writer(f).writerows([("path", "label"), *rows])
    return path


def test_index_lists_labels_and_reuses_the_file(videos, tmp_path: Path) -> None:
    folder, odd = videos
    labels = labels_file(tmp_path / "labels.csv", [(os.path.basename(odd), "cafe")])
    out = tmp_path / "manifest.csv"
    summary = build_manifest([str(folder)], out, labels=labels, workers=2)
    rows = {row["path"]: row for row in iter_rows(out)}
    assert rows[odd]["status"] == "ok" and rows[odd]["label"] == "cafe" and summary.labelled == 1
    assert LATIN_1 in out.read_bytes()  # the name's own bytes, not an escape
    assert build_manifest([str(folder)], out, labels=labels, workers=2).probed == 0  # the row is found again
    listed = tmp_path / "files.txt"
    listed.write_bytes(os.fsencode(odd) + b"\n")  # as `find > files.txt` writes it
    build_manifest([str(listed)], tmp_path / "one.csv", workers=1)
    assert [(row["path"], row["status"]) for row in iter_rows(tmp_path / "one.csv")] == [(odd, "ok")]


def test_prepare_copies_the_file_under_its_name(videos, tmp_path: Path) -> None:
    folder, odd = videos
    labels = labels_file(tmp_path / "labels.csv", [(os.path.basename(odd), "cafe")])
    out = tmp_path / "prepared"
    summary = prepare([str(folder)], out, labels=labels, workers=2)
    assert (summary.prepared, summary.failed) == (8, 0) and summary.labelled == 1
    assert os.path.exists(os.path.join(os.fsencode(out), LATIN_1))
    with open(out / "labels.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        assert [row for row in csv.DictReader(f)] == [{"path": os.path.basename(odd), "label": "cafe"}]
    assert prepare([str(folder)], out, labels=labels, workers=2).kept == 8  # the report's row is found again


def test_a_run_its_report_and_its_card_hold_the_file(videos, tmp_path: Path) -> None:
    folder, odd = videos
    manifest = tmp_path / "manifest.csv"
    build_manifest([str(folder)], manifest, workers=2)
    cfg = load_config(None, ["train.batch_size=4", "train.k=2", "train.rounds=1", "data.workers=0"], preset="tiny")
    run = tmp_path / "run"
    pretrain(cfg, manifest, run, resume=False, ctx=Dist())
    videos_ = Manifest.open(run / "videos")
    assert odd in [videos_.path(i) for i in range(len(videos_))]
    assert LATIN_1 in (run / "videos.csv").read_bytes()
    assert "caf\\udce9.mp4" in write_report(run, samples_per_cluster=8).read_text()  # shown as its escape
    export_run(run, tmp_path / "export")
    assert (tmp_path / "export" / "README.md").read_text()
    assert main(["eval", "clusters", "--run", str(run), "--labels",
                 str(labels_file(tmp_path / "l.csv", [(odd, "a")]))]) == 0  # fmt: skip


def test_tables_keep_the_name(videos, tmp_path: Path) -> None:
    _, odd = videos
    table = tmp_path / "table.csv"
    write_table([Item(odd, "cafe")], table)
    assert read_table(table) == [Item(odd, "cafe")]
    assert [item.path for item in load_dataset("csv", table)] == [odd]
