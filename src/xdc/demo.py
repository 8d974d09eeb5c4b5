"""``xdc demo``: the built-in job a new user runs first, on generated data, in a few minutes on a CPU.

1. write the synthetic audio-visual dataset and index it;
2. pretrain every method of the family (scratch as the lower bound) without labels, with the tiny preset;
3. linear-probe each trained encoder on held-out videos (the labels are used only here);
4. print a paper-style table, write it as JSON, and write the HTML report of the XDC run.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from xdc.atomic import read_json, write_text
from xdc.config import Config, config_to_dict, load_config
from xdc.data.index import build_manifest
from xdc.data.synthetic import make_synthetic
from xdc.errors import UserError
from xdc.evaluation.adapters import Item, write_table
from xdc.evaluation.commands import run_label_ids
from xdc.evaluation.extract import extract_features
from xdc.evaluation.metrics import cluster_metrics
from xdc.evaluation.probe import linear_probe
from xdc.locks import holding
from xdc.report import write_report
from xdc.tables import format_table
from xdc.training.distributed import Dist
from xdc.training.pretrain import pretrain

METHODS = ("scratch", "sdc-video", "sdc-audio", "mdc", "cdc", "xdc")
DEMO_SETTINGS = ("train.k=8", "train.rounds=3", "train.epochs=2", "train.batch_size=16", "train.lr=0.05")
SETTINGS_FILE = "demo-settings.json"  # in --out: what the demo there was made with


def run_demo(out: Path, cfg: Config, videos: int = 128, classes: int = 8, overrides: tuple[str, ...] = ()) -> dict:
    if videos < 2 * classes:  # the probes train and test on videos of every class
        raise UserError(f"--videos must be at least {2 * classes}, two per class, got {videos}")
    _claim(out, {"videos": videos, "classes": classes, "seed": cfg.seed, "set": list(overrides)})
    started = time.perf_counter()
    data = out / "synthetic"
    labels = make_synthetic(data, videos, classes, seed=cfg.seed, cfg=cfg.synthetic, workers=None)
    manifest = out / "manifest.csv"
    print(build_manifest([str(data / "videos")], manifest, labels=labels).line())
    table = _probe_table(labels, out / "probe.csv")

    rows = []
    columns = ("method", "video_top1", "audio_top1", "nmi_vs_labels", "seconds")
    widths = {"method": max(map(len, METHODS)), "nmi_vs_labels": len("v:0.00 a:0.00"), "seconds": 6}
    print(format_table([dict.fromkeys(columns, "")], widths).splitlines()[0])
    for method in METHODS:
        method_cfg = load_config(None, [*DEMO_SETTINGS, f"train.method={method}", f"seed={cfg.seed}", *overrides],
                                 preset="tiny")  # fmt: skip
        run = out / "runs" / method
        t = time.perf_counter()
        if not (run / "encoders.pt").exists():  # a re-run of the demo continues where it stopped
            with holding(run, "demo", folder=True):  # the run's own lock too: `xdc pretrain --resume` of it is refused
                pretrain(method_cfg, manifest, run, resume=(run / "checkpoints" / "last.pt").exists(), ctx=Dist())
        row = {"method": method, "video_top1": "-", "audio_top1": "-", "nmi_vs_labels": _nmi(run)}
        for encoder in ("video", "audio"):
            if encoder in _encoders(run):
                row[f"{encoder}_top1"] = _probe(run, encoder, table, out / "features" / f"{method}-{encoder}.npz")
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(format_table([row], widths).splitlines()[-1], flush=True)

    print()
    print(format_table(rows))
    report = write_report(out / "runs" / "xdc")
    result = {"rows": rows, "videos": videos, "classes": classes, "seconds": time.perf_counter() - started,
              "settings": list(DEMO_SETTINGS), "report": str(report),
              "config": config_to_dict(cfg)}  # fmt: skip
    write_text(out / "demo.json", json.dumps(result, indent=2))
    print(f"\n{time.perf_counter() - started:.0f} s. Wrote {out / 'demo.json'} and {report}")
    return result


def _claim(out: Path, settings: dict) -> None:
    """Make ``out`` this demo's folder, or check that it is: a re-run goes on with the runs that finished (they are
    not trained again), so one with other settings would print their results as the new settings' (and fewer
    --videos would leave the earlier clips beside the new ones). Refused, naming what differs."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    path = out / SETTINGS_FILE
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(settings))
        return
    before = _by_key(read_json(path, "the settings of the demo there", f"choose another --out, or delete {out}"))
    now = _by_key(settings)
    changed = [f"{key} {before.get(key, 'not set')}, now {now.get(key, 'not set')}"
               for key in dict.fromkeys([*now, *before]) if before.get(key) != now.get(key)]  # fmt: skip
    if changed:
        raise UserError(f"{out} holds a demo made with other settings ({'; '.join(changed)}): choose another --out, "
                        f"or delete {out}")  # fmt: skip


def _by_key(settings: dict) -> dict[str, str]:
    """A demo's settings, the ``--set`` and ``--config`` ones each by its key, as text: a setting that has a key of
    its own (the seed) is said once, and one changed is said by its values (until 2026-12-03 the whole lists were
    said, and the seed also among them)."""
    flat = {key: str(value) for key, value in settings.items() if key != "set"}
    for entry in settings.get("set", []):
        key, _, value = entry.partition("=")
        if key.strip() not in settings:  # the seed's own entry is the seed the demo ran with
            flat[key.strip()] = value.strip()  # the last of a key, as load_config applies them
    return flat


def _probe_table(labels: Path, path: Path) -> list[Item]:
    """Every 4th video is held out for testing the probes; pretraining never sees any label."""
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    items = [Item(str((labels.parent / r["path"]).resolve()), r["label"], "test" if n % 4 == 0 else "train")
             for n, r in enumerate(rows)]  # fmt: skip
    write_table(items, path)
    return items


def _encoders(run: Path) -> list[str]:
    from xdc.training.checkpoint import read

    return list(read(run / "encoders.pt", "a run's encoders", f"remove {run} and the demo trains it again")["encoders"])


def _probe(run: Path, encoder: str, items: list[Item], out: Path) -> float:
    out.parent.mkdir(parents=True, exist_ok=True)
    extract_features(run, encoder, items, out, clips=2)
    d = np.load(out)
    train, test = d["split"] == "train", d["split"] == "test"
    result = linear_probe(d["features"][train], d["label"][train], d["features"][test], d["label"][test],
                          test_groups=d["group"][test], train_groups=d["group"][train])  # fmt: skip
    return round(100 * result.top1, 1)


def _nmi(run: Path) -> str:
    """NMI of the last round's clusters with the (never used) labels, per label set."""
    rounds = list((run / "labels").glob("round_*.npz"))
    if not rounds:
        return "-"
    ids = run_label_ids(run)
    # the last by number: by name, round_999 comes after round_1000
    with np.load(max(rounds, key=lambda path: int(path.stem.removeprefix("round_")))) as assigned:
        return " ".join(f"{k[0]}:{cluster_metrics(assigned[k], ids)['nmi']:.2f}" for k in assigned.files)

