"""``xdc benchmark grid``: every method pretrained on GRID videos without labels, then linear probes of the
frozen video (lip motion) and audio (speech) encoders on spoken-word windows, per slot, and on FSDD.

1. index DIR/videos (labels: each clip's word of ``supervised_slot``, used only by the supervised baseline);
2. pretrain each method (and XDC at each k of the sweep) with the chosen preset;
3. per slot, extract one clip per word window with each trained encoder; probe on DIR's sentence split, or
   train on DIR and test on --test-data;
4. with --fsdd, probe every audio encoder on FSDD's official split;
5. write results.json and RESULTS.md-ready markdown.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from xdc.atomic import write_text
from xdc.config import Config, config_differences, load_config
from xdc.data.datasets import TrainClips
from xdc.data.index import build_manifest
from xdc.data.manifest import Manifest, run_videos
from xdc.errors import UserError
from xdc.evaluation.adapters import load_dataset, split_items
from xdc.evaluation.extract import extract_features, write_summary
from xdc.evaluation.probe import linear_probe
from xdc.locks import holding
from xdc.methods import get_method
from xdc.tables import format_table
from xdc.training.checkpoint import read
from xdc.training.distributed import Dist
from xdc.training.pretrain import pretrain

METHODS = ("scratch", "supervised", "sdc-video", "sdc-audio", "mdc", "cdc", "xdc")
SLOTS = ("command", "color", "digit")
ALL_SLOTS = ("command", "color", "preposition", "letter", "digit", "adverb")


def grid_benchmark(
    data: Path, out: Path, test_data: Path | None = None, fsdd: Path | None = None, preset: str = "small",
    ks: tuple[int, ...] = (), overrides: tuple[str, ...] = (), methods: tuple[str, ...] = METHODS,
    supervised_slot: str = "digit",
) -> dict:  # fmt: skip
    if not (data / "videos").is_dir() or not (data / "words.csv").exists():
        raise UserError(f"{data} does not have the GRID layout (videos/, clips.csv, words.csv)")
    if out.exists() and not out.is_dir():  # until 2026-12-03 "OUT: File exists", after the probes' items were read
        raise UserError(f"--out {out} is a file, not a folder")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if supervised_slot not in ALL_SLOTS:
        raise UserError(f"unknown slot {supervised_slot!r}; choose from {', '.join(ALL_SLOTS)}")
    # the probes' items before any training: a wrong --test-data or --fsdd is said at once, not after hours
    probes = {slot: _slot_items(data, test_data, slot) for slot in SLOTS}
    fsdd_items = load_dataset("fsdd", fsdd) if fsdd is not None else None
    # every run's settings, and then its folder, checked before the first trains: a bad --k, or a run folder of other
    # settings or data, is said at once, not after the runs before it
    plan = {}  # name -> (run folder, settings)
    for m in methods:
        name, folder = (m, m)
        if m == "supervised":
            name, folder = f"supervised ({supervised_slot})", f"supervised-{supervised_slot}"
        plan[name] = out / "runs" / folder, load_config(None, [f"train.method={m}", *overrides], preset=preset)
    for k in ks:
        settings = ["train.method=xdc", *overrides, f"train.k={k}"]
        plan[f"xdc k={k}"] = out / "runs" / f"xdc-k{k}", load_config(None, settings, preset=preset)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = _manifest(data, out, supervised_slot)
    for run, cfg in plan.values():
        _check_run(run, manifest, cfg)
    runs = {name: _pretrain(manifest, run, cfg) for name, (run, cfg) in plan.items()}

    rows = []
    for name, run in runs.items():
        saved = read(run / "encoders.pt", "a run's encoders", f"remove {run} and the benchmark trains it again")
        encoders = list(saved["encoders"])
        row = {"method": name}
        tasks = [(e, slot, *probes[slot]) for e in ("video", "audio") for slot in SLOTS]
        if fsdd_items is not None:
            tasks.append(("audio", "fsdd", split_items(fsdd_items, "train"), split_items(fsdd_items, "test")))
        for encoder, task, train, test in tasks:
            stem = out / "features" / f"{run.name}-{encoder}-{task}"
            row[f"{encoder}/{task}"] = _probe(run, encoder, train, test, stem) if encoder in encoders else "-"
        row["pretrain_s"] = _seconds(run)
        rows.append(row)
        # under one header, lined up (until 2026-12-03 rows of numbers alone, each as wide as its method's name)
        lines = format_table([row], {"method": max(map(len, runs))}).splitlines()
        print("\n".join(lines if len(rows) == 1 else lines[1:]), flush=True)

    result = {"rows": rows, "data": str(data), "test_data": str(test_data or ""), "fsdd": str(fsdd or ""),
              "preset": preset, "overrides": list(overrides), "ks": list(ks), "supervised_slot": supervised_slot,
              "seconds": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    write_text(out / "results.json", json.dumps(result, indent=2))
    write_text(out / "results.md", _markdown(rows))
    print()
    print(format_table(rows))
    print(f"\n{result['seconds'] / 60:.1f} min. Wrote {out / 'results.json'} and {out / 'results.md'}")
    return result


def _manifest(data: Path, out: Path, slot: str) -> Path:
    """Index the videos; each clip's word of ``slot`` is its label (only the supervised baseline trains on it)."""
    labels = out / "clip_labels.csv"
    with open(data / "clips.csv", newline="") as f, open(labels, "w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["path", "label"])
        for row in csv.DictReader(f):
            writer.writerow([str((data / row["path"]).resolve()), row[slot]])
    manifest = out / "manifest.csv"
    print(build_manifest([str(data / "videos")], manifest, labels=labels).line())
    return manifest


def _check_run(run: Path, manifest: Path, cfg: Config) -> None:
    """Refuse a run folder made with other settings or on other videos than ``cfg`` and ``manifest``'s."""
    if (run / "config.yaml").exists() and (changed := config_differences(load_config(run / "config.yaml"), cfg)):
        raise UserError(f"{run} was pretrained with other settings ({'; '.join(changed)}); choose another --out for "
                        "this benchmark")  # fmt: skip
    _check_videos(run, manifest, cfg)


def _pretrain(manifest: Path, run: Path, cfg: Config) -> Path:
    """Pretrain into ``run``, resuming an interrupted run and reusing a finished one (checked by _check_run)."""
    if not (run / "encoders.pt").exists():
        t = time.perf_counter()
        with holding(run, "benchmark grid", folder=True):  # its own lock: `xdc pretrain --resume` of it is refused
            pretrain(cfg, manifest, run, resume=(run / "checkpoints" / "last.pt").exists(), ctx=Dist())
        write_text(run / "timing.json", json.dumps({"seconds": time.perf_counter() - t}))
    return run


def _check_videos(run: Path, manifest: Path, cfg: Config) -> None:
    """Refuse a run (finished or not) that trained on other videos than ``manifest``'s: its config does not record
    the data, so another --data into the same --out would report the encoders of the first as trained on the
    second. Videos are told by their paths: the same data moved is other videos (GRID's speakers have files of the
    same names). (A run too old to keep its videos cannot be checked.)"""
    videos = run_videos(run)
    if videos is None:
        return
    had = set(videos.paths.tolist())
    now = set(TrainClips(Manifest.load(manifest), cfg.data, modalities=get_method(cfg.train.method).modalities)
              .manifest.paths.tolist())  # fmt: skip
    if had != now:
        raise UserError(f"{run} was pretrained on other videos than --data's, by their paths ({len(had - now)} of its "
                        f"{len(had)} are not among them, {len(now - had)} of --data's not among its; data moved since "
                        "counts as other); choose another --out for this benchmark")  # fmt: skip


def _seconds(run: Path) -> float | str:
    """The run's pretraining time that timing.json keeps; "-" where it has none (a run finished by xdc pretrain
    --resume) or it cannot be read (it is only a record: noted, and the table goes on)."""
    timing = run / "timing.json"
    if not timing.exists():
        return "-"
    try:
        return round(float(json.loads(timing.read_text())["seconds"]), 1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"NOTE: {timing} cannot be read ({type(e).__name__}: {e}); its run's time is shown as -", file=sys.stderr)
        return "-"


def _slot_items(data: Path, test_data: Path | None, slot: str) -> tuple[list, list]:
    if test_data is None:
        items = load_dataset("grid-words", data, slot=slot)
        train, test = split_items(items, "train"), split_items(items, "test")
        if not (train and test):  # before any training (the probe of it failed after all of it)
            raise UserError(f"the sentence split of {data / 'words.csv'} puts all {len(items)} {slot} words in "
                            f"{'train' if train else 'test'}: the probes need both; give more clips, or --test-data")
        return train, test
    return load_dataset("grid-words", data, slot=slot), load_dataset("grid-words", test_data, slot=slot)


def _probe(run: Path, encoder: str, train: list, test: list, stem: Path) -> float | str:
    stem.parent.mkdir(parents=True, exist_ok=True)
    for part, items in (("train", train), ("test", test)):
        # the summary beside the features is what lets a re-run keep them, as xdc extract's (until 2026-12-03 none)
        write_summary(extract_features(run, encoder, items, stem.with_name(f"{stem.name}-{part}.npz"), clips=1))
    a, b = np.load(stem.with_name(stem.name + "-train.npz")), np.load(stem.with_name(stem.name + "-test.npz"))
    try:
        result = linear_probe(a["features"], a["label"], b["features"], b["label"], test_groups=b["group"],
                              train_groups=a["group"])  # fmt: skip
    except ValueError as e:  # e.g. a slot with one word in this data: nothing to classify
        print(f"no probe for {stem.name}: {e}")
        return "-"
    return round(100 * result.top1, 1)


def _markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
