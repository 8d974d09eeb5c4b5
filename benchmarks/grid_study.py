"""Why does XDC not beat SDC or scratch on GRID at CPU size? One `xdc benchmark grid` per setting, varying one
thing at a time (crop box, training length and learning rate, clip length, k, encoder size), with the methods
that answer the question. Prints one table over all settings and writes results/grid_study.json.

    python benchmarks/grid_study.py --out /tmp/gridstudy [--only mouth,mouth-long]

Needs ../shared/data/grid-s1. Finished runs are reused when the script is run again with the same --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from common import SHARED_DATA, report, run_script

from xdc.clustering.metrics import agreement
from xdc.grid_benchmark import grid_benchmark

METHODS = ("scratch", "sdc-video", "sdc-audio", "xdc")
# GRID speaker 1's mouth in the 360 x 288 frame (left, top, right, bottom as fractions), read off a few frames.
MOUTH = "data.clip.crop_box=[0.28,0.6,0.62,0.88]"
BASE = ("train.rounds=2", "train.k=16")
LONG = ("train.rounds=8", "train.k=16", "train.lr=0.01")

SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = {
    # name: (overrides on the preset (PRESETS, default tiny), methods, extra XDC k values)
    "base": (BASE, METHODS, ()),
    "mouth": ((*BASE, MOUTH), METHODS, ()),
    "mouth-long": ((*LONG, MOUTH), METHODS, ()),
    "mouth-long-8f": ((*LONG, MOUTH, "data.clip.frames=8", "data.clip.fps=8"), METHODS, ()),
    "mouth-long-k": ((*LONG, MOUTH), ("xdc",), (4, 64)),
    # the small preset: 8 frames at 8 fps, 56x56 crops, encoders of width 32 (ResNet-10 depth)
    "mouth-small": (("train.rounds=4", "train.k=16", MOUTH), METHODS, ()),
}
PRESETS = {"mouth-small": "small"}  # the others: tiny
COLUMNS = ("video/command", "video/color", "video/digit", "audio/command", "audio/color", "audio/digit")


def training_summary(run: Path) -> dict:
    """From the run's log: how well the last round fitted its pseudo-labels (mean logged loss and head accuracy,
    and ln k, the loss of a uniform guess) and the last clustering's largest cluster (fraction of the clips,
    worst label set) and NMI with the round before (lowest label set). Blank for runs that do not cluster."""
    log = run / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    clusters = [r for r in records if r["kind"] == "cluster"]
    if not clusters:
        return {"loss": "-", "ln_k": "-", "pseudo_acc": "-", "largest": "-", "nmi_prev": "-", "xmodal_nmi": "-",
                "chance_nmi": "-"}  # fmt: skip
    last = max(r.get("round", 0) for r in records if r["kind"] == "step")
    steps = [r for r in records if r["kind"] == "step" and r["round"] == last]
    accuracy = [v for r in steps for key, v in r.items() if key.startswith("acc/")]
    cluster = clusters[-1]
    k = next(v for key, v in cluster.items() if key.endswith("/k"))
    fractions = [v for key, v in cluster.items() if key.endswith("/largest_fraction")]
    nmis = [v for key, v in cluster.items() if key.endswith("/nmi_previous")]
    return {
        "loss": round(float(np.mean([r["loss"] for r in steps])), 2), "ln_k": round(math.log(k), 2),
        "pseudo_acc": round(float(np.mean(accuracy)), 2), "largest": round(max(fractions), 2),
        "nmi_prev": round(min(nmis), 2) if nmis else "-", **cross_modal_agreement(run),
    }  # fmt: skip


def cross_modal_agreement(run: Path) -> dict:
    """NMI between the last round's video and audio clusters (XDC's two label sets), and its chance level: the
    mean NMI after shuffling one side (20 draws). XDC's heads can only learn what the other modality's clusters
    share with their own input; at chance level the cross-modal targets are unpredictable."""
    rounds = sorted((run / "labels").glob("round_*.npz"))
    labels = np.load(rounds[-1]) if rounds else {}
    if not {"video", "audio"} <= set(labels):
        return {"xmodal_nmi": "-", "chance_nmi": "-"}
    observed, chance = agreement(labels["video"], labels["audio"])
    return {"xmodal_nmi": round(observed, 3), "chance_nmi": round(chance, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", help="comma-separated setting names (default: all): " + ", ".join(SETTINGS))
    args = parser.parse_args()
    data = SHARED_DATA / "grid-s1"
    if not data.is_dir():
        sys.exit(f"needs {data} (the shared GRID data); not found")
    names = args.only.split(",") if args.only else list(SETTINGS)
    if unknown := [name for name in names if name not in SETTINGS]:
        parser.error(f"--only: no setting {', '.join(unknown)}; the settings: {', '.join(SETTINGS)}")
    rows = []
    for name in names:
        overrides, methods, ks = SETTINGS[name]
        t = time.perf_counter()
        preset = PRESETS.get(name, "tiny")
        result = grid_benchmark(data, args.out / name, preset=preset, methods=methods, ks=ks, overrides=overrides)
        print(f"{name}: {(time.perf_counter() - t) / 60:.1f} min", flush=True)
        for row in result["rows"]:
            run = args.out / name / "runs" / row["method"].replace(" k=", "-k")
            rows.append({"setting": name, "method": row["method"], **{c: row[c] for c in COLUMNS},
                         **training_summary(run), "pretrain_s": row["pretrain_s"]})  # fmt: skip
    report("grid_study", rows, {"settings": {n: [f"preset={PRESETS.get(n, 'tiny')}", *SETTINGS[n][0]] for n in names}})
    return 0


if __name__ == "__main__":
    run_script(main)
