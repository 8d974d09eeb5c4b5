"""The README's main command, shrunk: every method pretrains, every trained encoder is probed."""

import json
import re

import numpy as np
import pytest

from xdc.config import load_config
from xdc.demo import METHODS, _claim, _nmi, run_demo
from xdc.errors import UserError


def test_demo_runs_every_method_and_writes_the_table(tmp_path, capsys):
    fast = ("train.rounds=1", "train.epochs=1", "train.k=3", "data.workers=0")
    result = run_demo(tmp_path, load_config(), videos=24, classes=3, overrides=fast)
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == list(METHODS)
    assert rows["sdc-video"]["audio_top1"] == "-" and rows["sdc-audio"]["video_top1"] == "-"
    for method in ("scratch", "mdc", "cdc", "xdc"):
        assert 0 <= rows[method]["video_top1"] <= 100 and 0 <= rows[method]["audio_top1"] <= 100
    assert rows["xdc"]["nmi_vs_labels"].startswith("v:") and rows["scratch"]["nmi_vs_labels"] == "-"
    assert json.loads((tmp_path / "demo.json").read_text())["rows"] == result["rows"]
    out = capsys.readouterr().out
    assert "24 files: 24 usable (24 with audio), 0 unusable" in out and "video_top1" in out
    # the rows printed as each method ends line up under the header printed before the first
    lines = out.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("method")))
    live = lines[first : first + 1 + len(METHODS)]
    assert not any(line.startswith(METHODS[0]) for line in lines[:first])
    assert [line.split()[0] for line in live] == ["method", *METHODS]
    assert len({re.match(r"\S+\s+", line).end() for line in live}) == 1
    assert (tmp_path / "runs" / "xdc" / "report.html").stat().st_size > 10_000
    # a re-run with other settings would show the finished runs' results as its own: refused before any work
    with pytest.raises(UserError) as refused:
        run_demo(tmp_path, load_config(), videos=32, classes=3, overrides=(*fast, "train.lr=0.1"))
    assert str(refused.value) == (
        f"{tmp_path} holds a demo made with other settings (videos 24, now 32; train.lr not set, now 0.1): "
        f"choose another --out, or delete {tmp_path}"
    )
    assert len(list((tmp_path / "synthetic" / "videos").iterdir())) == 24
    # files cut short (a full disk, before they were written whole) are named, with what to do, not a traceback
    settings = tmp_path / "demo-settings.json"
    kept = settings.read_text()
    settings.write_text("")
    unreadable = rf"^cannot read {settings} \(the settings of the demo there\): Expecting value"
    with pytest.raises(UserError, match=unreadable):
        run_demo(tmp_path, load_config(), videos=24, classes=3, overrides=fast)
    settings.write_text(kept)
    encoders = tmp_path / "runs" / "scratch" / "encoders.pt"
    with open(encoders, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(UserError, match=rf"^cannot read {encoders} as a run's encoders: .*; remove "
                                        rf"{encoders.parent} and the demo trains it again$"):  # fmt: skip
        run_demo(tmp_path, load_config(), videos=24, classes=3, overrides=fast)


def test_a_demo_of_other_settings_is_refused_saying_each_difference_once(tmp_path):
    """Until 2026-12-03 the seed given by --set was said twice (as the seed and among --set's list), and --set's
    lists were said whole, each unchanged setting twice."""
    _claim(tmp_path, {"videos": 24, "classes": 3, "seed": 0, "set": ["train.k=3", "train.lr=0.1", "train.rounds=1"]})
    now = ("train.lr=0.2", "train.k=3", "seed=1", "data.workers=0")  # train.k moved, train.rounds dropped
    with pytest.raises(UserError) as refused:
        run_demo(tmp_path, load_config(None, now), videos=24, classes=3, overrides=now)
    assert str(refused.value) == (
        f"{tmp_path} holds a demo made with other settings (seed 0, now 1; train.lr 0.1, now 0.2; data.workers not "
        f"set, now 0; train.rounds 1, now not set): choose another --out, or delete {tmp_path}"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo-settings.json"]  # refused before any work


def test_too_few_videos_for_the_probes_is_a_user_error_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--videos must be at least 16, two per class, got 15"):
        run_demo(tmp_path / "demo", load_config(), videos=15, classes=8)
    assert not (tmp_path / "demo").exists()


def test_an_out_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"):  # until 2026-12-01: "File exists"
        run_demo(tmp_path / "notes.txt", load_config(), videos=16, classes=8)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_nmi_column_reads_the_last_round_by_number(tmp_path):
    """By name round_999.npz sorts after round_1000.npz: until 2026-12-01 the table scored round 999."""
    (tmp_path / "videos.csv").write_text("path,label\na.mp4,x\nb.mp4,x\nc.mp4,y\nd.mp4,y\n")
    (tmp_path / "labels").mkdir()
    np.savez(tmp_path / "labels" / "round_999.npz", video=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "labels" / "round_1000.npz", video=np.array([0, 0, 1, 1]))
    assert _nmi(tmp_path) == "v:1.00"
