"""`xdc report RESULT.json`: the page of real `xdc eval linear` and `kfold` results, parsed; what it refuses."""

import base64
import csv
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

from conftest import tiny_run
from xdc.cli import main
from xdc.evaluation.adapters import Item, write_table
from xdc.evaluation.result_page import BARS, PAIRS, TICKS, plot_classes, plot_confusion
from xdc.locks import holding
from xdc.report import figure_uri

NAMES = ["<b>&", "a$x$", "cat", "dog", "z\u00e9"]  # HTML's and matplotlib's own characters in class names


class Page(HTMLParser):
    """The tags, the images' bytes, every attribute that names another file, and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[bytes] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name == "src" and value.startswith("data:image/png;base64,"):
                self.images.append(base64.b64decode(value.split(",", 1)[1], validate=True))
            elif name in ("src", "href"):
                self.links.append(value)

    def handle_data(self, data):
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def features(path: Path, names: list[str], per_class: int) -> Path:
    """Clips of overlapping classes, a video (group) each, in 3 folds; every third in the test split."""
    rng = np.random.default_rng(0)
    labels = np.repeat(names, per_class)
    centres = rng.normal(size=(len(names), 8))
    x = np.repeat(centres, per_class, axis=0) + rng.normal(size=(len(labels), 8))
    np.savez(path, features=x.astype(np.float32), label=labels,
             split=np.resize(["train", "train", "test"], len(labels)), fold=np.arange(len(labels)) % 3 + 1,
             group=np.array([f"v{i}" for i in range(len(labels))]))  # fmt: skip
    return path


def page_of(result: Path, capsys) -> tuple[Page, str]:
    capsys.readouterr()
    assert main(["report", str(result)]) == 0
    out = result.with_suffix(".html")
    assert capsys.readouterr().out == f"wrote {out}\n"
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>") and page.tags.count("html") == 1 and page.tags.count("body") == 1
    assert "script" not in page.tags and "link" not in page.tags and not page.links  # it stands alone
    for png in page.images:
        assert Image.open(io.BytesIO(png)).format == "PNG"
    return page, text


def test_a_linear_result_gets_a_page_of_its_confusions_and_classes(tmp_path, capsys):
    result = tmp_path / "linear.json"
    assert main(["eval", "linear", "--features", str(features(tmp_path / "f.npz", NAMES, 9)), "--out",
                 str(result)]) == 0  # fmt: skip
    record = json.loads(result.read_text())
    page, text = page_of(result, capsys)
    assert len(page.images) == 2  # the confusion matrix, and the bars of the classes
    words = page.all_text
    assert f"top-1 / top-5 {record['top1']:.3f} / {record['top5']:.3f}" in words
    assert f"test videos {record['n_test_videos']}" in words and "classifier logreg, C = " in words
    assert "&lt;b&gt;&amp;" in text and "<b>&" not in text and "<b>&" in words  # escaped, and read back as named
    # the most confused pairs: the largest counts off the diagonal of the result's matrix
    classes, counts = record["confusion"]["classes"], np.array(record["confusion"]["counts"])
    np.fill_diagonal(counts, 0)
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    assert counts[i, j] > 0, "the classes overlap too little for a confusion"
    assert f"true class predicted as videos of the true class's {classes[i]} {classes[j]} {counts[i, j]} " in words


def test_a_kfold_result_gets_the_folds_summed_and_each_folds_top1(tmp_path, capsys):
    result = tmp_path / "kfold.json"
    assert main(["eval", "kfold", "--features", str(features(tmp_path / "f.npz", NAMES, 6)), "--out",
                 str(result)]) == 0  # fmt: skip
    record = json.loads(result.read_text())
    page, _ = page_of(result, capsys)
    words = page.all_text
    assert len(page.images) == 2 and "Test videos of the 3 folds together" in words
    for fold in record["folds"]:
        assert f"{fold['fold']} {fold['top1']:.3f} {fold['top5']:.3f} {fold['n_test_videos']} " in words
    assert f"{record['mean_top1']:.3f} \u00b1 {record['std_top1']:.3f}" in words and "test videos 30" in words


def test_test_videos_of_classes_never_trained_on_and_clips_left_out_are_said(tmp_path, capsys):
    """A class absent from the training clips scores 0 (its videos count as wrong) and clips of other splits are
    left out: `xdc eval` said so, its page did not (until 2026-12-03), so a class the probe never saw passed for
    the encoder's worst."""
    path = features(tmp_path / "f.npz", NAMES, 6)
    arrays = dict(np.load(path))
    split, fold = arrays["split"].astype("<U8"), arrays["fold"]
    split[arrays["label"] == "cat"], split[:2] = "test", "val"  # cat: never trained on; 2 clips left out
    fold[arrays["label"] == "dog"] = 1  # dog: in fold 1 alone, so its training folds lack it
    fold[-3:] = 0  # fold 0: trained on in every fold, never tested
    np.savez(path, **{**arrays, "split": split, "fold": fold})
    linear, kfold = tmp_path / "linear.json", tmp_path / "kfold.json"
    assert main(["eval", "linear", "--features", str(path), "--out", str(linear)]) == 0
    record = json.loads(linear.read_text())
    assert record["untrained"] == 6 and record["left_out"] == 2
    words = page_of(linear, capsys)[0].all_text
    assert ("untrained test videos 6 of classes the training clips lack: scored as wrong (the classifier cannot "
            "predict them) left out 2 clips of neither split train nor test") in words, words[:800]
    assert main(["eval", "kfold", "--features", str(path), "--out", str(kfold)]) == 0
    record = json.loads(kfold.read_text())
    assert [f["untrained"] for f in record["folds"]] == [6, 0, 0] and record["train_only"] == 3
    words = page_of(kfold, capsys)[0].all_text
    assert "untrained test videos 6 of classes the other folds lack" in words
    assert "never tested 3 clips of fold 0 (no fold): trained on in every fold" in words
    assert "fold top-1 top-5 test videos C untrained" in words
    first = record["folds"][0]
    assert f"{first['fold']} {first['top1']:.3f} {first['top5']:.3f} {first['n_test_videos']} {first['c']} 6" in words


def test_a_finetune_result_gets_its_encoder_and_each_splits_numbers(tmp_path, capsys):
    """Until 2026-12-03 the header did not say which encoder of the run was finetuned: the pages of --encoder video
    and --encoder audio of one run had the same."""
    run = tiny_run(tmp_path, 12, 3, seed=1, batch=8, k=3)
    table, result = tmp_path / "t.csv", tmp_path / "ft.json"
    with open(tmp_path / "data" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    unseen = rows[0]["label"]  # all its videos tested: the page names it among the untrained (until 2026-12-03 not)
    write_table([Item(str(tmp_path / "data" / r["path"]), r["label"],
                      "test" if i % 3 == 0 or r["label"] == unseen else "train") for i, r in enumerate(rows)], table)
    assert main(["eval", "finetune", "--run", str(run), "--encoder", "audio", "--data", str(table), "--out",
                 str(result), "--mode", "fc", "--set", "finetune.epochs=1", "--set", "finetune.batch_size=8"]) == 0
    record = json.loads(result.read_text())
    page, _ = page_of(result, capsys)
    words, split = page.all_text, record["splits"][0]
    n = sum(r["label"] == unseen for r in rows)
    assert split["untrained"] == n and split["untrained_classes"] == [unseen]
    assert (f"run {run} (run) encoder audio data csv: {table} mode fc top-1 {record['mean_top1']:.3f} (mean of the "
            f"splits) untrained test videos {n} of classes no training video of its split has") in words, words[:900]
    assert (f"- {split['top1']:.3f} {split['top5']:.3f} {split['n_test_scored']} {split['classes']} "
            f"{n} ({unseen})") in words
    assert len(page.images) == 2 and "Test videos" in words


def test_many_classes_get_a_matrix_without_numbers_fewer_names_and_the_worst_bars(tmp_path, capsys):
    """120 classes: a count per cell would be unreadable, and so would a name per row or a bar per class."""
    names = [f"class {i:03d}" for i in range(120)]
    result = tmp_path / "many.json"
    assert main(["eval", "linear", "--features", str(features(tmp_path / "f.npz", names, 6)), "--out",
                 str(result)]) == 0  # fmt: skip
    page, text = page_of(result, capsys)
    assert len(page.images) == 2 and text.split("Most confused")[1].count("<tr>") == 1 + PAIRS
    record = json.loads(result.read_text())
    classes, counts = record["confusion"]["classes"], np.array(record["confusion"]["counts"])
    ax = plot_confusion(classes, counts).axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert not ax.texts and len(ticks) <= TICKS and ticks[:2] == ["class 000", "class 003"]
    few = plot_confusion(classes[:5], counts[:5, :5]).axes[0]  # a count in each cell that has one, a name per row
    assert sorted(int(t.get_text()) for t in few.texts) == sorted(counts[:5, :5][counts[:5, :5] > 0].tolist())
    assert [t.get_text() for t in few.get_yticklabels()] == classes[:5]
    bars = [t.get_text() for t in plot_classes(record["per_class"], record["top1"]).axes[0].get_yticklabels()]
    worst = min(record["per_class"].items(), key=lambda item: item[1]["top1"])
    assert len(bars) == BARS and bars[0] == f"{worst[0]} ({worst[1]['n']})"


def test_a_matrix_of_a_thousand_classes_shows_every_confusion(tmp_path):
    """Until 2026-12-03 the matrix had about 750 pixels a side at any number of classes, and drawing 1,000 rows on
    them dropped whole rows and columns: a third of these confusions were not on the page."""
    n = 1000
    counts = np.zeros((n, n), dtype=np.int64)  # one confusion per true class, each in its own row and column, off
    counts[np.arange(1, n - 1), 1 + np.random.default_rng(0).permutation(n - 2)] = 3  # the edges the frame covers
    fig = plot_confusion([f"a class name of some length {i:04d}" for i in range(n)], counts)
    png = base64.b64decode(figure_uri(fig).split(",", 1)[1])
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    box = fig.axes[0].get_window_extent()  # the matrix, not the colour bar beside it
    full = np.round(np.array(colormaps["Blues"](1.0)[:3]) * 255).astype(int)  # a whole row taken for one class
    assert ndimage.label((image[:, int(box.x0) : int(box.x1) + 1] == full).all(axis=2))[1] == n - 2


def test_what_is_no_result_of_eval_linear_kfold_or_finetune_is_refused_in_a_line(tmp_path, capsys):
    feats = features(tmp_path / "f.npz", NAMES, 6)
    result = tmp_path / "r.json"
    assert main(["eval", "linear", "--features", str(feats), "--out", str(result)]) == 0
    record = json.loads(result.read_text())
    old = tmp_path / "old.json"  # as xdc eval wrote it until 2026-12-02
    old.write_text(json.dumps({k: v for k, v in record.items() if k not in ("per_class", "confusion")}, indent=2))
    clusters = tmp_path / "clusters.json"
    clusters.write_text('{"command": "eval clusters", "rounds": []}')
    edited = tmp_path / "edited.json"  # by hand, or by another tool
    edited.write_text(json.dumps({k: v for k, v in record.items() if k != "probe"}, indent=2))
    cut = tmp_path / "cut.json"
    cut.write_text(result.read_text()[:200])
    other = tmp_path / "other.json"
    other.write_text('{"top1": 0.5}')
    empty = tmp_path / "empty.json"
    empty.write_text("")
    for given, said in [
        (feats, f"{feats} is not a result of xdc eval: xdc report takes an `xdc pretrain` run folder, or the --out"),
        (other, f"{other} is not a result of xdc eval"), (empty, f"{empty} is not a result of xdc eval"),
        (cut, f"{cut} is not a readable result of xdc eval ("),
        (clusters, f"{clusters} is a result of xdc eval clusters, which predicts no classes"),
        (edited, f"{edited} is not a whole result of xdc eval linear (KeyError: 'probe')"),
        (old, f"{old} is a result of xdc eval linear from before per-class results (2026-12-02): run the eval again"),
        (tmp_path / "gone.json", f"{tmp_path / 'gone.json'} does not exist (expected an `xdc pretrain` run folder, "
                                 "or the result JSON of an xdc eval for its page)"),
    ]:  # fmt: skip
        capsys.readouterr()
        assert main(["report", str(given)]) == 2, given
        err = capsys.readouterr().err
        assert err.startswith(f"xdc: error: {said}") and err.count("\n") == 1, err
    assert not list(tmp_path.glob("*.html"))  # nothing written, and no lock file left
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]


def test_an_out_that_is_no_page_is_kept_and_a_page_is_replaced(tmp_path, capsys):
    result = tmp_path / "r.json"
    assert main(["eval", "linear", "--features", str(features(tmp_path / "f.npz", NAMES, 6)), "--out",
                 str(result)]) == 0  # fmt: skip
    kept = result.read_text()
    notes = tmp_path / "notes.html"
    notes.write_text("<html>mine</html>")
    capsys.readouterr()
    for out, said in [(result, "exists and is not a report of xdc"), (notes, "exists and is not a report of xdc"),
                      (tmp_path, "is a folder; give the path of an .html file")]:  # fmt: skip
        assert main(["report", str(result), "--out", str(out)]) == 2
        assert f"xdc: error: --out {out} {said}" in capsys.readouterr().err
    assert result.read_text() == kept and notes.read_text() == "<html>mine</html>"
    page = tmp_path / "pages" / "p.html"  # a folder that is not there yet is made
    assert main(["report", str(result), "--out", str(page)]) == 0
    first = page.read_text()
    assert main(["report", str(result), "--out", str(page)]) == 0 and page.read_text() == first  # replaced
    with holding(result.with_suffix(".html"), "report"):  # the default page, being written by another report
        capsys.readouterr()
        assert main(["report", str(result)]) == 2
        assert f"is in use by another xdc process (report, pid {os.getpid()})" in capsys.readouterr().err


def test_a_default_page_that_is_no_page_is_refused_without_naming_an_out_not_given(tmp_path, capsys):
    """Until 2026-12-03 the refusal said "--out X" and "give a new path" to a user who had given no --out."""
    result = tmp_path / "r.json"
    assert main(["eval", "linear", "--features", str(features(tmp_path / "f.npz", NAMES, 6)), "--out",
                 str(result)]) == 0  # fmt: skip
    run = tmp_path / "run"  # a log.jsonl, even empty, makes a run folder
    run.mkdir()
    (run / "log.jsonl").write_text("")
    for given, page in [(result, result.with_suffix(".html")), (run, run / "report.html")]:
        page.write_text("<html>mine</html>")
        capsys.readouterr()
        assert main(["report", str(given)]) == 2 and page.read_text() == "<html>mine</html>"
        assert capsys.readouterr().err == (f"xdc: error: {page} (the default page) exists and is not a report of "
                                           "xdc: give --out a new path (or remove it)\n")


@pytest.mark.parametrize("name, page", [("a.v1", "a.v1.html"), ("b.json", "b.html")])
def test_the_default_page_is_beside_the_result(name, page, tmp_path, capsys):
    result = tmp_path / name
    assert main(["eval", "kfold", "--features", str(features(tmp_path / "f.npz", NAMES, 6)), "--out",
                 str(result)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["report", str(result)]) == 0 and (tmp_path / page).exists()
