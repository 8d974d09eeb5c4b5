"""What listing a collection costs under torchrun (``xdc index``, ``xdc prepare``): rank 0 walks the inputs and
hands each rank its share in a file; the other ranks read only that.

    .venv/bin/python benchmarks/listing.py [--files 200000] [--ranks 8]

Makes a tree of --files empty .mp4 files in 400 folders, then times and weighs (tracemalloc: the Python objects
still held after the step) each step: the walk (``find_media``), prepare's plan of output names, a list of the files
as input, a labels file of a row per file, the share files written for --ranks ranks, and one rank's share read
back. The last columns scale the numbers to 65M files.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

from common import report
from xdc.data.index import LabelIndex, find_media
from xdc.data.prepare import plan_outputs
from xdc.data.shares import my_share

PAPER_FILES = 65_000_000


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"c{i % 400:03d}"
        if i < 400:
            folder.mkdir()
        os.close(os.open(folder / f"v{i:09d}.mp4", os.O_CREAT | os.O_WRONLY))


def measured(step):
    """(result, seconds, MB held afterwards, MB at the peak): seconds of a plain run, memory of a traced one."""
    t = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - t
    del result
    tracemalloc.start()
    result = step()
    held, peak = (mb / 2**20 for mb in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    return result, seconds, held, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--ranks", type=int, default=8)
    args = ap.parse_args()
    rows = []

    def row(step: str, who: str, seconds: float, held: float, peak: float) -> None:
        scale = PAPER_FILES / args.files
        rows.append({"step": step, "who": who, "files": args.files, "s": round(seconds, 2), "MB held": round(held),
                     "MB peak": round(peak), "at 65M: s": round(seconds * scale),
                     "at 65M: GB held": round(held * scale / 1024, 1),
                     "at 65M: GB peak": round(peak * scale / 1024, 1)})  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="xdc-bench-listing-") as tmp:
        root, out = Path(tmp) / "videos", Path(tmp) / "manifest.csv"
        root.mkdir()
        make_tree(root, args.files)
        collection, *measures = measured(lambda: find_media([str(root)]))
        row("walk the inputs (find_media)", "before: every rank; now: rank 0", *measures)
        plan, *measures = measured(lambda: plan_outputs(collection))
        row("prepare's output names (plan)", "before: every rank; now: rank 0", *measures)
        del plan
        listed = Path(tmp) / "files.txt"
        listed.write_text("".join(f"{Path(p).relative_to(tmp)}\n" for p in collection.files))
        _, *measures = measured(lambda: find_media([str(listed)]))
        row("read a list of the files (.txt)", "before: every rank; now: rank 0", *measures)
        labels = Path(tmp) / "labels.csv"
        labels.write_text("path,label\n" + "".join(f"{Path(p).relative_to(root)},c{n % 400}\n"
                                                  for n, p in enumerate(collection.files)))  # fmt: skip
        _, *measures = measured(lambda: LabelIndex.from_csv(labels))
        row("read --labels (a row per file)", "before: every rank; now: rank 0", *measures)

        def rank(n: int) -> SimpleNamespace:
            return SimpleNamespace(rank=n, world_size=args.ranks, main=n == 0, enabled=True)

        listing = list(collection.files)
        t = time.perf_counter()
        my_share(lambda: listing, out, rank(0), lambda work, _: work())
        row(f"write {args.ranks} share files", "now: rank 0", time.perf_counter() - t, 0, 0)
        _, *measures = measured(lambda: my_share(lambda: listing, out, rank(1), lambda work, _: None))
        row("read a rank's share", "now: ranks 1..W-1", *measures)
    report("listing", rows, {"ranks": args.ranks})


if __name__ == "__main__":
    main()
