"""`xdc report`: the HTML page of a real tiny run, parsed; broken clips and runs with missing pieces."""

import base64
import csv
import dataclasses
import io
import json
import os
import re
import shutil
import threading
import wave
from html.parser import HTMLParser
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import segment_parts, synthetic_manifest
from xdc.clustering.metrics import nmi
from xdc.config import load_config
from xdc.data.encode import write_av
from xdc.data.manifest import Manifest
from xdc.errors import UserError
from xdc.report import decode_sample, write_report
from xdc.training.distributed import Dist
from xdc.training.pretrain import pretrain

TINY = ["train.batch_size=8", "train.k=3", "train.rounds=2", "data.workers=0", "train.log_every=1"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(manifest, run folder of a 2-round XDC run)."""
    root = tmp_path_factory.mktemp("report")
    synthetic_manifest(root, 24, 3, seed=0)
    pretrain(load_config(None, TINY, preset="tiny"), root / "manifest.csv", root / "run", resume=False, ctx=Dist())
    return root / "manifest.csv", root / "run"


class Page(HTMLParser):
    """Cluster sections with the media of each sample figure; plots; all text."""

    def __init__(self, text: str):
        super().__init__()
        self.clusters: dict[tuple[str, int], list[dict]] = {}
        self.plots: list[str] = []
        self.text: list[str] = []
        self._cluster = self._sample = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section" and "cluster" in classes:
            self._cluster = self.clusters.setdefault((a["data-label-set"], int(a["data-cluster"])), [])
        elif tag == "figure" and self._cluster is not None:
            self._sample = {"img": [], "audio": [], "failed": "failed" in classes}
            self._cluster.append(self._sample)
        elif tag == "img" and "plot" in classes:
            self.plots.append(a["src"])
        elif tag in ("img", "audio") and self._sample is not None:
            self._sample[tag].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self._sample = None
        elif tag == "section":
            self._cluster = None  # cluster sections hold no nested sections

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def payload(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri[len(prefix) :], validate=True)


def assert_png(uri: str) -> None:
    assert payload(uri, "image/png").startswith(b"\x89PNG\r\n\x1a\n")


def assert_wav(uri: str, rate: int) -> None:
    data = payload(uri, "audio/wav")
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
        assert w.getnframes() == rate  # tiny preset: 1 s of audio per clip


def last_round(run: Path) -> dict[str, np.ndarray]:
    with np.load(sorted((run / "labels").glob("round_*.npz"))[-1]) as f:
        return {k: f[k] for k in f.files}


def test_galleries_plots_and_scores(built):
    _, run = built
    path = write_report(run, samples_per_cluster=2)
    assert path == run / "report.html"
    page = Page(path.read_text())
    expected = {(name, int(c)) for name, a in last_round(run).items() for c in np.unique(a[a >= 0])}
    assert set(page.clusters) == expected and {s for s, _ in expected} == {"video", "audio"}
    for samples in page.clusters.values():
        assert 1 <= len(samples) <= 2
        for sample in samples:
            assert not sample["failed"] and len(sample["img"]) == 1 and len(sample["audio"]) == 1
            assert_png(sample["img"][0])
            assert_wav(sample["audio"][0], 16000)
    assert len(page.plots) == 5  # loss, accuracy, NMI, sizes, times
    for uri in page.plots:
        assert_png(uri)
    text = page.all_text
    assert "purity" in text and "Hungarian accuracy" in text
    videos = Manifest.open(run / "videos")
    for name, assigned in last_round(run).items():  # each cluster's top labels, counted here from the arrays
        for c in np.unique(assigned[assigned >= 0]):
            members = videos.labels[assigned == c]
            counts = sorted(((-np.sum(members == i), i) for i in np.unique(members)))[:3]
            top = " \u00b7 ".join(f"{videos.classes[i]} {-n / len(members):.0%}" for n, i in counts)
            assert f"labels: {top}" in text, (name, c)
    # XDC's two label sets: their NMI per round, and the chance level of the last round
    rounds = sorted((run / "labels").glob("round_*.npz"))
    assert text.count("audio ~ video") == len(rounds) >= 2
    video, audio = last_round(run)["video"], last_round(run)["audio"]
    both = (audio >= 0) & (video >= 0)
    assert f"{nmi(audio[both], video[both]):.3f}" in text and "Chance level: " in text
    assert "<script" not in path.read_text()


def test_choice_of_samples_is_deterministic(built, tmp_path):
    _, run = built
    a = Page(write_report(run, tmp_path / "a.html", samples_per_cluster=1).read_text())
    b = Page(write_report(run, tmp_path / "b.html", samples_per_cluster=1).read_text())
    assert a.clusters == b.clusters


def copy_run(run: Path, copy: Path, edit) -> Path:
    """A copy of the run folder whose videos (rows of videos.csv: path, label) went through ``edit(rows)``, in
    both places the run keeps them: the arrays of ``videos/`` (what the report reads) and ``videos.csv``."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "tb", "encoders.pt"))
    with open(copy / "videos.csv", newline="") as f:
        rows = edit(list(csv.DictReader(f)))
    with open(copy / "videos.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    classes = sorted({r["label"] for r in rows} - {""})
    edited = dataclasses.replace(
        Manifest.open(copy / "videos"), paths=np.array([r["path"].encode() for r in rows]),
        labels=np.array([classes.index(r["label"]) if r["label"] else -1 for r in rows], dtype=np.int32),
        classes=tuple(classes),
    )  # fmt: skip
    edited.save(copy / "videos")
    return copy


def test_broken_clip_is_a_placeholder(built, tmp_path):
    _, run = built
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")

    def break_two(rows):
        rows[0]["path"], rows[1]["path"] = str(tmp_path / "gone.mp4"), str(tmp_path / "junk.mp4")
        return rows

    copy = copy_run(run, tmp_path / "run", break_two)
    (copy / "skipped.csv").write_text(f"path,failures,reason\n{tmp_path / 'junk.mp4'},4,InvalidDataError\n")
    page = Page(write_report(copy, max_clusters=1, samples_per_cluster=100).read_text())  # every member shown
    failed = [s for samples in page.clusters.values() for s in samples if s["failed"]]
    assert len(page.clusters) == 2 and failed  # one cluster per label set
    assert all(not s["img"] and not s["audio"] for s in failed)
    text = page.all_text
    assert "could not show this clip: file not found (removed since xdc index?) " in text  # FileNotFoundError: ...
    assert "could not show this clip: InvalidDataError: Invalid data found when processing input " in text
    assert "1 file(s) failed to decode during the run" in text


def test_a_collapse_is_red_by_the_runs_k(built, tmp_path):
    # k = 3: a collapse is more than 2/3 of the clips in one cluster (half-way from an even split to all in one)
    _, run = built
    copy = copy_run(run, tmp_path / "run", lambda rows: rows)
    last = sorted((copy / "labels").glob("round_*.npz"))[-1]
    n = len(last_round(run)["video"])
    most = n * 5 // 8  # over half (red at a bare 0.5), under 2/3
    video = np.array([0] * most + [1] * (n - most), dtype=np.int32)
    audio = np.array([2] * (n - 2) + [0, 1], dtype=np.int32)
    np.savez(last, video=video, audio=audio)
    html = write_report(copy, samples_per_cluster=1).read_text()
    round_ = f'<td class="">{last.stem.removeprefix("round_").lstrip("0") or 0}</td>'
    cell = '<td class="([^"]*)">([^<]*)<'  # the largest fraction's: its class and its text
    largest = {name: re.search(f'{round_}<td class="text">{name}</td><td class="">[^<]*</td>{cell}', html).groups()
               for name in ("video", "audio")}  # fmt: skip
    assert 0.5 < most / n < 2 / 3 and largest["video"] == ("", f"{most / n:.3f}")
    assert largest["audio"] == ("collapsed", f"{(n - 2) / n:.3f}")
    assert "(0.667 at k = 3)" in Page(html).all_text


def test_without_labels_there_is_no_purity(built, tmp_path):
    _, run = built
    copy = copy_run(run, tmp_path / "run", lambda rows: [{"path": r["path"], "label": ""} for r in rows])
    page = Page(write_report(copy, samples_per_cluster=1).read_text())
    text = page.all_text
    assert page.clusters and "No labels in videos.csv" in text
    assert "Hungarian accuracy" not in text and "labels: " not in text  # no score columns, no composition


def test_videos_come_from_the_arrays_and_bad_label_files_are_named(built, tmp_path):
    _, run = built
    copy = copy_run(run, tmp_path / "run", lambda rows: rows)
    (copy / "videos.csv").unlink()  # the readable copy: the page needs only videos/
    good = sorted((copy / "labels").glob("round_*.npz"))
    (copy / "labels" / "round_007.npz").write_bytes(good[-1].read_bytes()[:100])  # cut short
    (copy / "labels" / "round_x.npz").write_bytes(good[-1].read_bytes())
    page = Page(write_report(copy, samples_per_cluster=1).read_text())
    text = page.all_text
    assert "no videos.csv" not in text and f"{len(Manifest.open(copy / 'videos'))} videos, 24 labelled" in text
    assert "labels/round_007.npz unreadable" in text and "labels/round_x.npz: not a round's labels" in text
    assert f"rounds {len(good)} finished of 2" in text
    expected = {(name, int(c)) for name, a in last_round(run).items() for c in np.unique(a[a >= 0])}
    assert set(page.clusters) == expected  # the last readable round's clusters


def test_a_round_after_an_unreadable_one_has_no_nmi_with_the_previous(built, tmp_path):
    """Its "previous" round is unreadable: until 2026-12-01 the round before that stood in for it, unsaid."""
    from xdc.report import load_run, read_rounds

    _, run = built
    copy = copy_run(run, tmp_path / "run", lambda rows: rows)
    shutil.copy(copy / "labels" / "round_000.npz", copy / "labels" / "round_002.npz")
    (copy / "labels" / "round_001.npz").write_bytes(b"not an npz")
    rows = read_rounds(load_run(copy)).rows
    assert [r["round"] for r in rows if "nmi_previous" in r] == []
    assert {r["round"] for r in rows} == {0, 2}
    rows = read_rounds(load_run(run)).rows  # both rounds readable: the second is compared with the first
    assert {r["round"] for r in rows if r.get("nmi_previous") is not None} == {1}


def test_rounds_from_1000_on_are_read_in_their_order(tmp_path):
    """By name round_1000.npz sorts before round_101.npz: until 2026-12-01 round 999 was shown as the last round,
    and rounds 1000 and 999 were compared with no round or the wrong one."""
    from xdc.report import load_run, read_rounds

    (tmp_path / "labels").mkdir()
    for r, video in ((998, [0, 0, 1, 1]), (999, [0, 1, 0, 1]), (1000, [0, 1, 1, 1])):
        np.savez(tmp_path / "labels" / f"round_{r:03d}.npz", video=np.array(video))
    np.savez(tmp_path / "labels" / "round_1001.npz", video=np.array([0.0, 1, 1, 1]))  # not xdc's: float ids
    run = load_run(tmp_path)
    rounds = read_rounds(run)
    assert "labels/round_1001.npz: video holds float64 values of shape (4,), not cluster ids" in run.missing
    assert rounds.last[0] == 1000
    assert [(row["round"], row["nmi_previous"]) for row in rounds.rows[1:]] == [
        (999, nmi(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))),
        (1000, nmi(np.array([0, 1, 1, 1]), np.array([0, 1, 0, 1]))),
    ]


def test_scratch_run_has_no_clusters(built, tmp_path):
    manifest, _ = built
    cfg = load_config(None, [*TINY, "train.method=scratch"], preset="tiny")
    pretrain(cfg, manifest, tmp_path / "scratch", resume=False, ctx=Dist())
    page = Page(write_report(tmp_path / "scratch").read_text())
    assert not page.clusters and not page.plots
    assert "There are no clusters: method scratch clusters nothing" in page.all_text


def test_a_supervised_run_has_no_clusters_and_says_how_long_it_trained(built, tmp_path):
    """Its labels/ holds the manifest's labels it trained on: no clusters, no galleries, no scores against themselves
    (all 1, until 2026-12-01); one round of train.epochs x train.rounds epochs."""
    manifest, _ = built
    cfg = load_config(None, [*TINY, "train.method=supervised"], preset="tiny")
    pretrain(cfg, manifest, tmp_path / "supervised", resume=False, ctx=Dist())
    page = Page(write_report(tmp_path / "supervised").read_text())
    assert not page.clusters and "Clusters of round" not in page.all_text
    assert "There are no clusters: method supervised trains on the manifest's labels" in page.all_text
    assert "assignment none: 2 epoch(s) on the manifest's labels" in page.all_text
    assert "rounds 1 finished of 1" in page.all_text and "NMI vs labels" not in page.all_text
    from xdc.report import load_run, plot_accuracy

    accuracy = plot_accuracy(load_run(tmp_path / "supervised")).axes[0]  # no pseudo-labels (until 2026-12-03 said)
    assert accuracy.get_title() == "Accuracy on the labels per head (encoder \u2190 label set)"
    assert [line.get_label() for line in accuracy.get_lines() if not line.get_label().startswith("_")] == [
        "audio \u2190 labels", "video \u2190 labels"]


def test_the_header_names_only_the_methods_modalities(built, tmp_path):
    manifest, _ = built
    cfg = load_config(None, [*TINY, "train.method=sdc-audio", "train.rounds=1"], preset="tiny")
    pretrain(cfg, manifest, tmp_path / "audio", resume=False, ctx=Dist())
    text = Page(write_report(tmp_path / "audio").read_text()).all_text
    assert "clip 1 s of audio at 16000 Hz encoders audio width" in text, text[:600]
    assert "frames short side" not in text and "video width" not in text


def test_the_header_says_the_earlier_lr_of_a_run_resumed_with_a_lower_one(built, tmp_path):
    """After --resume --set train.lr=LOWER the header showed config.yaml's lr alone (until 2026-12-03), as if the
    whole run had trained at it."""
    manifest, _ = built
    out = tmp_path / "lowered"
    cfg = load_config(None, [*TINY, "train.rounds=1", "train.lr=0.05"], preset="tiny")
    pretrain(cfg, manifest, out, resume=False, ctx=Dist())
    pretrain(cfg, None, out, resume=True, ctx=Dist(), rounds=2, settings={"train.lr": 0.01})
    starts = [r for r in map(json.loads, (out / "log.jsonl").open()) if r["kind"] == "start"]
    assert [r["lr"] for r in starts] == [0.05, 0.01] and starts[1]["step"] > 0
    text = Page(write_report(out).read_text()).all_text
    assert f"batch / lr 8 / 0.01 (0.05 until step {starts[1]['step']})" in text, text[:600]


def test_an_out_that_is_a_folder_is_a_user_error(built, tmp_path):
    _, run = built
    with pytest.raises(UserError, match="is a folder; give the path of an .html file"):
        write_report(run, tmp_path)
    assert not list(tmp_path.iterdir())  # no temporary file left beside it


def test_a_run_folder_with_pieces_missing_says_which(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    page = Page(write_report(tmp_path).read_text())
    text = page.all_text
    assert "no config.yaml" in text and "no videos.csv" in text
    assert "There are no clusters yet" in text


def test_a_log_with_a_line_that_is_not_utf8_costs_that_line_only(tmp_path):
    """Until 2026-12-01 one byte that is not UTF-8 anywhere in log.jsonl was a UnicodeDecodeError traceback."""
    record = '{"kind": "round", "step": 0, "time": 1.0, "extract_s": 1.0, "cluster_s": 1.0, "train_s": 1.0}\n'
    (tmp_path / "log.jsonl").write_bytes(record.encode() + b'{"note": "r\xe9"}\n' + record.encode() + b"\xff")
    text = Page(write_report(tmp_path).read_text()).all_text
    assert "log.jsonl: 2 unreadable line(s) skipped" in text and "log.jsonl has no lines yet" not in text


def test_a_data_folder_with_a_videos_folder_of_clips_is_no_run(tmp_path):
    """make-synthetic's and GRID's layout has videos/ of clips, which until 2026-12-01 passed for a run's videos/
    arrays: `xdc report data/synth` wrote a page of default settings into the data folder."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "000000.mp4").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("path,label\nvideos/000000.mp4,a\n")
    with pytest.raises(UserError, match="is not an `xdc pretrain` run folder"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_a_folder_that_is_no_run_and_an_out_that_is_no_report_are_refused(built, tmp_path):
    """Until 2026-12-01 a data folder got a page of default settings, and --out replaced any file."""
    _, run = built
    with pytest.raises(UserError, match="is not an `xdc pretrain` run folder"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.mp4,x\n")
    with pytest.raises(UserError, match="exists and is not a report of xdc"):
        write_report(run, out=labels, samples_per_cluster=1)
    assert labels.read_text() == "path,label\na.mp4,x\n"
    page = write_report(run, out=tmp_path / "r.html", samples_per_cluster=1)
    assert write_report(run, out=page, samples_per_cluster=1) == page  # a report of xdc is written over
    from xdc.cli import main  # a run that is not there: said as such, and not made by the report's lock

    assert main(["report", str(tmp_path / "nowhere")]) == 2 and not (tmp_path / "nowhere").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_an_out_that_is_a_pipe_is_refused_rather_than_waited_on(built, tmp_path):
    """Until 2026-12-01 the check of whether --out was a report read a FIFO's first bytes: it hung for good."""
    _, run = built
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    raised = []

    def report() -> None:
        try:
            write_report(run, out=fifo, samples_per_cluster=1)
        except UserError as e:
            raised.append(str(e))

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    thread.join(timeout=20)  # the refusal takes well under a second
    hung = thread.is_alive()
    if hung:  # waiting on the FIFO: a writer that closes at once lets it go on
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
    assert not hung and raised and "exists and is not a report of xdc" in raised[0]


def test_the_sizes_of_many_clusters_are_one_outline_not_a_bar_each(built):
    """k = 50,000: a bar per cluster took a minute to draw (until 2026-12-01); the sizes are one outline now."""
    from xdc.config import with_settings
    from xdc.report import load_run, plot_sizes

    _, run = built
    data = load_run(run)
    big = dataclasses.replace(data, cfg=with_settings(data.cfg, {"train.k": 50_000}))
    assigned = np.random.default_rng(0).integers(0, 50_000, 2000).astype(np.int32)
    axes = plot_sizes(big, (3, {"video": assigned})).axes
    assert len(axes[0].patches) == 1 and axes[0].patches[0].get_data().values.sum() == 2000
    small = plot_sizes(data, (3, {"video": assigned % 3})).axes  # the run's k = 3: a bar each
    assert len(small[0].patches) == 3


def test_a_sample_is_the_clip_at_the_centre_of_a_matroska_part_whose_timestamps_start_late(tmp_path: Path) -> None:
    """A part cut by FFmpeg's segment muxer states as its duration where it ends counted from 0: its centre, taken
    from that, lay after its end (a placeholder "the clip ... starts after the video's end")."""
    frames = np.random.default_rng(0).integers(0, 256, (150, 32, 32, 3), dtype=np.uint8)
    write_av(tmp_path / "whole.mkv", frames, 25, np.zeros(6 * 16000, np.float32), 16000, gop=25)
    (tmp_path / "parts").mkdir()
    part = segment_parts(tmp_path / "whole.mkv", tmp_path / "parts" / "part%03d.mkv", 2.0)[1]
    with av.open(str(part)) as c:
        start, end = c.start_time / av.time_base, c.duration / av.time_base  # about 3 s and 5 s
    clip = decode_sample(str(part), load_config(None, TINY, preset="tiny"), want_video=True)
    span = len(clip.video) / load_config(None, TINY, preset="tiny").data.clip.fps
    assert clip.start == pytest.approx((end - start - span) / 2, abs=0.01)
    assert clip.video_padded == 0 and clip.audio_padded == 0


def steps_log(folder: Path, rounds: int, per_round: int, loss=lambda step: 2.0) -> Path:
    """A run folder whose log.jsonl holds ``rounds`` rounds of ``per_round`` step records each, losses ``loss(step)``
    (None: as log.jsonl writes a NaN)."""
    folder.mkdir()
    steps = range(1, rounds * per_round + 1)
    records = [{"kind": "step", "step": s, "time": 1.0, "round": (s - 1) // per_round, "epoch": 0, "loss": loss(s),
                "acc/video__audio": 0.5} for s in steps]  # fmt: skip
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_a_loss_that_is_not_finite_is_marked_where_it_happened(tmp_path):
    """Until 2026-12-03 a step whose loss was null or NaN (a diverged run) was left off the plot, which ended before
    it as if all was well, and one NaN made the running mean NaN to the end of the plot."""
    from xdc.report import load_run, plot_loss

    run = steps_log(tmp_path / "run", 2, 40, loss=lambda s: None if s in (30, 60) else float("nan") if s == 70 else 2.0)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"kind": "holdout", "step": 40, "time": 1.0, "round": 0, "epoch": 0, "loss": NaN}\n')
    lines = {line.get_label(): line for line in plot_loss(load_run(run)).axes[0].get_lines()}
    crosses = lines["training loss not finite (diverged), from step 30"]
    assert list(crosses.get_xdata()) == [30, 60, 70]
    assert list(lines["held-back loss not finite (diverged), from step 40"].get_xdata()) == [40]
    mean = np.asarray(lines["training loss"].get_ydata())
    assert np.isfinite(mean).all() and np.allclose(mean, 2.0)  # the finite losses' mean, after a NaN too


def test_many_rounds_number_a_few_of_their_lines_on_the_plots(tmp_path):
    """Until 2026-12-03 every round's start had its number on the loss and accuracy plots: from about 15 rounds on
    they were one smudge of overlapping text."""
    from xdc.report import load_run, plot_accuracy, plot_loss

    data = load_run(steps_log(tmp_path / "run", 25, 2))
    for fig in (plot_loss(data), plot_accuracy(data)):
        ax = fig.axes[0]
        named = [text.get_text() for text in ax.texts]
        assert named == [f" round {r}" for r in range(3, 25, 3)]  # 8 at most
        assert len([line for line in ax.get_lines() if line.get_linestyle() == "--"]) == 24  # each start's line
    many = plot_loss(load_run(steps_log(tmp_path / "many", 60, 1))).axes[0]
    dashed = [x for x in many.get_lines() if x.get_linestyle() == "--"]  # above 40 rounds, the numbered ones'
    assert 5 <= len(many.texts) <= 8 and len(dashed) == len(many.texts)


def test_the_sizes_are_ranked_from_1_and_counted_in_whole_videos(built):
    """Until 2026-12-03 the bars stood over 0, 1, 2, ... under "cluster (by size)", read as the galleries' cluster
    numbers, and a small run's axis counted 2.5 videos."""
    from xdc.report import load_run, plot_sizes

    _, run = built
    ax = plot_sizes(load_run(run), (1, {"video": np.array([2] * 5 + [0] * 2 + [1] * 3, dtype=np.int32)})).axes[0]
    assert [(bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in ax.patches] == [(1, 5), (2, 3), (3, 2)]
    assert ax.get_xlabel() == "rank by size (1: largest)"
    ax.figure.draw_without_rendering()
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_plateau_run_says_its_epochs_are_a_rounds_most(built, tmp_path):
    """With train.recluster=plateau a round ends when the held-back loss stops falling: train.epochs is its most,
    which the header gave as every round's number until 2026-12-03."""
    _, run = built
    copy = copy_run(run, tmp_path / "plateau", lambda rows: rows)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("recluster: epochs", "recluster: plateau"))
    text = Page(write_report(copy).read_text()).all_text
    assert "re-cluster on plateau, at most 1 epoch(s) per round" in text, text[:700]
    plain = Page(write_report(run, tmp_path / "r.html").read_text()).all_text
    assert "re-cluster on epochs, 1 epoch(s) per round" in plain


def test_a_run_that_diverged_says_so_and_a_resume_drops_the_stop(built, tmp_path):
    """Until 2026-12-03 a run that xdc stopped (the loss NaN) logged nothing of it: the report said "0 finished of
    2" as of a killed run, and nothing in the folder said why. Its log now ends with a ``stop`` record, strict JSON,
    which the header shows; a resume from the checkpoint before drops it, and a log without one shows none."""
    manifest, _ = built
    run = tmp_path / "run"
    with pytest.raises(UserError, match="the training diverged") as stop:
        pretrain(load_config(None, [*TINY, "train.lr=1e30"], preset="tiny"), manifest, run, resume=False, ctx=Dist())
    lines = (run / "log.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert {k: last[k] for k in ("kind", "round", "epoch", "reason", "line")} == {
        "kind": "stop", "round": 0, "epoch": 0, "reason": "diverged", "line": str(stop.value)}
    step = last["step"]
    assert f"the loss of step {step} is nan" in last["line"]
    text = Page(write_report(run, samples_per_cluster=1).read_text()).all_text
    assert f"stopped at step {step} (round 0): round 0 epoch 0: the loss of step {step} is nan: the training " \
           "diverged" in text and "rounds 0 finished of 2" in text  # fmt: skip

    (run / "log.jsonl").write_text("".join(line + "\n" for line in lines[:-1]))  # as a run before 2026-12-03 left it
    text = Page(write_report(run, samples_per_cluster=1).read_text()).all_text
    assert "rounds 0 finished of 2" in text and "stopped" not in text

    (run / "log.jsonl").write_text("".join(line + "\n" for line in lines))
    pretrain(None, None, run, resume=True, ctx=Dist(), settings={"train.lr": 0.01})
    kinds = [json.loads(line)["kind"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert "stop" not in kinds and kinds[-1] == "round"
    assert "stopped" not in Page(write_report(run, samples_per_cluster=1).read_text()).all_text


def test_one_of_a_thing_is_not_said_as_many(built, tmp_path):
    """Until 2026-12-03 the header of a one-video run said "1 videos, 1 labelled, 1 classes", and a cluster of one
    video "1 videos"."""
    from xdc.report import gallery_html, load_run

    _, run = built
    copy = copy_run(run, tmp_path / "run", lambda rows: rows[:1])
    text = Page(write_report(copy, samples_per_cluster=1).read_text()).all_text
    assert "data 1 video, 1 labelled, 1 class, 0 skipped" in text
    page = Page(gallery_html(load_run(run), "video", np.array([0, 1, 1, -1]), samples=0, max_clusters=4))
    assert "2 non-empty clusters of 3 videos; 1 video without a cluster (their clip failed)." in page.all_text
    assert "Cluster 0: 1 video (33%)" in page.all_text and "Cluster 1: 2 videos (67%)" in page.all_text
