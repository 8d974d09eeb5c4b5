"""``xdc report RESULT.json``: one self-contained HTML page that shows where an encoder fails, from the result of
``xdc eval linear``, ``kfold`` or ``finetune``: a header of its numbers, then for its test videos (kfold: every
fold's together; finetune: each split) a confusion matrix, the per-class accuracies worst first and the pairs of
classes most often confused. Images are base64 PNG data URIs, as xdc.report makes them: no script, no links."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from xdc.data.index import number
from xdc.errors import UserError
from xdc.evaluation.commands import is_result
from xdc.report import check_page_out, figure, figure_uri, write_page

PICTURED = ("eval linear", "eval kfold", "eval finetune")  # results with per_class and confusion
USAGE = "xdc report takes an `xdc pretrain` run folder, or the --out JSON of xdc eval linear, kfold or finetune"
COUNTED = 20  # classes up to which each cell of the confusion matrix shows its count
TICKS = 50  # class names along a side of the matrix at most: between them, the others go unnamed
BARS = 40  # classes in the per-class bars at most: the worst
PAIRS = 10  # rows of the most confused pairs
NAME_CHARS = 24  # a class name in a figure is cut to this (the tables give it whole)


def default_page(result: Path) -> Path:
    """RESULT.html beside RESULT.json (a name without .json keeps it whole: a.v1 and a.v2 get a page each)."""
    return result.with_name(result.name.removesuffix(".json") + ".html")


def load_result(path: Path) -> dict:
    """The result of ``xdc eval`` in the file ``path``; a one-line UserError for any other file."""
    if not is_result(path) or path.stat().st_size == 0:  # told by its start: a big file is not read whole
        raise UserError(f"{path} is not a result of xdc eval: {USAGE}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # a result cut short, or not UTF-8
        raise UserError(f"{path} is not a readable result of xdc eval ({e})") from None
    if record["command"] not in PICTURED:
        raise UserError(f"{path} is a result of xdc {record['command']}, which predicts no classes: {USAGE}")
    if not any("confusion" in part for part in record.get("splits", [record])):  # finetune's, or the result's
        raise UserError(f"{path} is a result of xdc {record['command']} from before per-class results (2026-12-02): "
                        "run the eval again for its page")  # fmt: skip
    return record


def _parts(record: dict) -> list[tuple[str, dict]]:
    """(title, the part with per_class and confusion) for each matrix of the page."""
    if record["command"] == "eval finetune":
        return [("Split " + str(s["split"]) if s["split"] != "-" else "Test videos", s) for s in record["splits"]]
    if record["command"] == "eval kfold":
        return [(f"Test videos of the {len(record['folds'])} folds together", record)]
    return [("Test videos", record)]


def _short(name: str) -> str:
    name = " ".join(name.split())
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "\u2026"


def _num(value) -> str:
    return "\u2013" if value is None else f"{value:.3f}"


def _text(value) -> str:
    return "\u2013" if value is None else str(value)


def plot_confusion(classes: list[str], counts: np.ndarray) -> Figure:
    """Rows: true classes, columns: predicted, as fractions of each row's videos, in the result's (sorted) order;
    the counts in the cells where the classes are few, every n-th name on the sides where they are many."""
    total = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    few = len(classes) <= COUNTED
    side = min(11.0, 2.5 + 0.4 * len(classes))
    fig = figure(side + 1.5, side)
    ax = fig.add_subplot()
    # a square-root scale: one video in 10 or 20 taken for another class still shows among 400 classes
    image = ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class's videos")
    ticks = np.arange(0, len(classes), math.ceil(len(classes) / TICKS))
    names = [_short(classes[i]) for i in ticks]
    size = 8 if few else 6
    ax.set_xticks(ticks, names, rotation=90, fontsize=size, parse_math=False)  # a "$" in a name is no formula
    ax.set_yticks(ticks, names, fontsize=size, parse_math=False)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (each row: one true class's videos)")
    # a pixel per class at least: with fewer, nearest-neighbour drawing drops whole rows and columns (until
    # 2026-12-03 from about 700 classes on: a third of them at 1,000); below half the figure's height there is room
    if len(classes) > fig.get_figheight() * fig.dpi / 2:
        fig.draw_without_rendering()
        have = ax.get_window_extent().height
        if have < len(classes) + 2:  # and the 2 under the frame; the text around keeps its size, so the matrix
            # grows by more than the figure
            fig.set_size_inches(fig.get_size_inches() * (len(classes) + 2) / have)
    if few:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.3 else "black")  # fmt: skip
    return fig


def plot_classes(per_class: dict, top1: float) -> Figure:
    """Top-1 per class, the worst first (ties in the classes' order), each named with its test videos; ``top1``:
    of all of them."""
    worst = sorted(per_class.items(), key=lambda item: item[1]["top1"])[:BARS]
    fig = figure(6.0, 1.0 + 0.2 * len(worst))
    ax = fig.add_subplot()
    y = np.arange(len(worst))
    ax.barh(y, [c["top1"] for _, c in worst], color="C0")
    ax.set_yticks(y, [f"{_short(name)} ({c['n']})" for name, c in worst], fontsize=7, parse_math=False)
    ax.invert_yaxis()  # the worst at the top
    ax.axvline(top1, color="C3", linestyle="--", linewidth=0.8)
    shown = f"the {len(worst)} worst of {len(per_class)}" if len(worst) < len(per_class) else "worst first"
    ax.set(xlim=(0, 1), xlabel=f"top-1 of the class's test videos (dashed: of all, {top1:.3f})",
           title=f"Accuracy per class ({shown}; n in brackets)")
    return fig


def _pairs(classes: list[str], counts: np.ndarray) -> str:
    """The PAIRS largest counts off the diagonal (ties in the matrix's order), as a table."""
    wrong = counts.copy()
    np.fill_diagonal(wrong, 0)
    cells = [np.unravel_index(k, wrong.shape) for k in np.argsort(-wrong, axis=None, kind="stable")[:PAIRS]]
    rows = "".join(f'<tr><td class="text">{html.escape(classes[i])}</td><td class="text">{html.escape(classes[j])}'
                   f"</td><td>{wrong[i, j]}</td><td>{wrong[i, j] / counts[i].sum():.0%}</td></tr>"
                   for i, j in cells if wrong[i, j])  # fmt: skip
    if not rows:
        return '<p class="note">No test video was taken for another class.</p>'
    return ('<table class="summary"><tr><th>true class</th><th>predicted as</th><th>videos</th>'
            f"<th>of the true class's</th></tr>{rows}</table>")


def _section(title: str, part: dict) -> str:
    head = f"<h2>{html.escape(title)}</h2>"
    if "confusion" not in part:  # a finetuning split's result kept from before 2026-12-02
        return head + '<p class="note">No per-class results: this split was tested before 2026-12-02.</p>'
    classes, counts = part["confusion"]["classes"], np.array(part["confusion"]["counts"], dtype=np.int64)
    top1 = np.trace(counts) / counts.sum()  # of these videos: kfold's every fold's together, not the folds' mean
    images = "".join(f'<img class="plot" src="{figure_uri(fig)}" alt="{alt}">' for fig, alt in
                     ((plot_confusion(classes, counts), "confusion matrix"),
                      (plot_classes(part["per_class"], top1), "accuracy per class")))  # fmt: skip
    return f'{head}<div class="plots">{images}</div><h3>Most confused</h3>{_pairs(classes, counts)}'


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(_text(v))}</td>" for v in row) + "</tr>" for row in rows)
    return '<table class="summary"><tr>' + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{cells}</table>"


def _untrained(count: int, lacking: str) -> str | None:
    """The header's line for ``count`` test videos whose class the training lacked, where there are any: scored as
    wrong, they pull top-1 and their classes' bars down with no fault of the encoder (until 2026-12-03 the page did
    not say so, though the command did)."""
    return f"{count} of classes {lacking}: scored as wrong (the classifier cannot predict them)" if count else None


def _header(path: Path, record: dict) -> str:
    command, table = record["command"], ""
    if command == "eval finetune":
        splits = record["splits"]
        items = {"run": f"{record['run']} ({record['source']})", "encoder": splits[0]["encoder"],
                 "data": f"{record['dataset']}: {record['data']}", "mode": record["mode"],
                 "top-1": f"{_num(record['mean_top1'])} (mean of the splits)",
                 "untrained test videos": _untrained(sum(s.get("untrained", 0) for s in splits), "no training "
                                                     "video of its split has"),
                 "seed": record["seed"]}  # fmt: skip
        head, untrained = ["split", "top-1", "top-5", "test videos", "classes"], any(s.get("untrained") for s in splits)
        table = _table(head + ["untrained (classes)"] * untrained, [
            [s["split"], _num(s["top1"]), _num(s["top5"]), s.get("n_test_scored"), s["classes"]]
            + [f"{s.get('untrained', 0)} ({', '.join(map(str, s.get('untrained_classes', [])))})"] * untrained
            for s in splits])  # fmt: skip
    elif command == "eval kfold":
        probe, folds = record["probe"], record["folds"]
        items = {"features": record["features"], "classifier": probe["classifier"],
                 "top-1 / top-5": f"{_num(record['mean_top1'])} \u00b1 {_num(record['std_top1'])} / "
                                  f"{_num(record['mean_top5'])} (mean of the folds)",
                 "test videos": sum(f["n_test_videos"] for f in folds),
                 "untrained test videos": _untrained(sum(f.get("untrained", 0) for f in folds), "the other folds lack"),
                 "never tested": f"{number(record['train_only'], 'clip')} of fold 0 (no fold): trained on in every fold"
                                 if record.get("train_only") else None,
                 "seed": probe["seed"]}  # fmt: skip
        untrained = any(f.get("untrained") for f in folds)
        table = _table(["fold", "top-1", "top-5", "test videos", "C"] + ["untrained"] * untrained, [
            [f["fold"], _num(f["top1"]), _num(f["top5"]), f["n_test_videos"], f["c"]] + [f.get("untrained", 0)]
            * untrained for f in folds])  # fmt: skip
    else:
        probe = record["probe"]
        left = "not of split train" if record["test_features"] else "of neither split train nor test"
        items = {"features": record["features"], "test features": record["test_features"] or None,
                 "classifier": f"{probe['classifier']}, C = {record['c']:g} (chosen on validation: top-1 "
                               f"{_num(record['val_top1'])})",
                 "top-1 / top-5": f"{_num(record['top1'])} / {_num(record['top5'])}",
                 "test videos": record["n_test_videos"],
                 "untrained test videos": _untrained(record.get("untrained", 0), "the training clips lack"),
                 "left out": f"{number(record['left_out'], 'clip')} {left}" if record.get("left_out") else None,
                 "seed": probe["seed"]}  # fmt: skip
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in
                   {"command": f"xdc {command}", **items}.items() if v is not None)  # fmt: skip
    return (f"<h1>XDC result <code>{html.escape(str(path.resolve()))}</code></h1>"
            f'<table class="settings">{rows}</table>{table}')


def write_result_page(result: Path, out: Path | None = None) -> Path:
    """Write the page of the eval result in ``result`` (default ``default_page(result)``); returns its path."""
    record = load_result(Path(result))
    given = out is not None
    out = Path(out) if given else default_page(Path(result))
    check_page_out(out, given)
    try:
        body = [_header(Path(result), record), *(_section(title, part) for title, part in _parts(record))]
    except (KeyError, TypeError) as e:  # a result edited by hand, or cut down by another tool
        raise UserError(f"{result} is not a whole result of xdc {record['command']} ({type(e).__name__}: {e})") \
            from None
    return write_page(out, Path(result).name, body)
