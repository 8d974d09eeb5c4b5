"""What listing a collection costs under torchrun (``xdc index``, ``xdc prepare``): rank 0 walks the inputs and
streams each rank its share into a file; every rank reads only its own.

    .venv/bin/python benchmarks/listing.py [--files 200000] [--ranks 8]

Makes a tree of --files empty .mp4 files in 400 folders, then times and weighs (tracemalloc: the Python objects
still held after the step, and at its peak) each step: the walk into one list (a plain run's ``my_share``), rank
0's walk streamed into the share files (by path, as index; by path without its suffix, as prepare), a rank's share
read back, prepare's plan of output names for a share and for the whole collection, a list of the files as input,
a labels file of a row per file, and that file matched to the collection (what rank 0 holds at the end). The last columns scale the numbers to 65M files.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

from common import report, run_script
from xdc.data.index import LabelIndex, list_media, match_labels
from xdc.data.prepare import name_group, plan_outputs
from xdc.data.shares import ALONE, my_share

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

    scale = PAPER_FILES / args.files

    def row(step: str, who: str, seconds: float, held: float, peak: float, linear: bool = True) -> None:
        """``linear``: the memory grows with the files; rank 0's streaming holds a batch, whatever their number."""
        at_65m = {"at 65M: GB held": round(held * scale / 1024, 1), "at 65M: GB peak": round(peak * scale / 1024, 1)}
        rows.append({"step": step, "who": who, "files": args.files, "s": round(seconds, 2), "MB held": round(held),
                     "MB peak": round(peak), "at 65M: s": round(seconds * scale),
                     **(at_65m if linear else dict.fromkeys(at_65m, ""))})  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="xdc-bench-listing-") as tmp:
        root, out = Path(tmp) / "videos", Path(tmp) / "manifest.csv"
        root.mkdir()
        make_tree(root, args.files)
        def one_list(path: Path) -> list[str]:  # a plain run's listing: each file once
            return my_share(lambda: list_media([str(path)], []), out, ALONE, lambda work, _: work())

        files, *measures = measured(lambda: one_list(root))
        row("walk the inputs into one list", "a plain run (before: rank 0)", *measures)

        def rank(n: int) -> SimpleNamespace:
            return SimpleNamespace(rank=n, world_size=args.ranks, main=n == 0, enabled=True)

        def rank_0(group=str) -> list[str]:
            return my_share(lambda: list_media([str(root)], []), out, rank(0), lambda work, _: work(), group)

        _, *streamed = measured(rank_0)
        row(f"walk, stream {args.ranks} shares by path, read its own", "rank 0 (index)", *streamed, linear=False)
        share, *measures = measured(lambda: rank_0(name_group))
        row(f"walk, stream {args.ranks} shares by path without suffix, read its own", "rank 0 (prepare)", *measures,
            linear=False)  # fmt: skip
        _, *read = measured(lambda: my_share(lambda: [], out, rank(1), lambda work, _: None))
        row("read a rank's share", "ranks 1..W-1", *read)
        batch = streamed[2] - read[2]  # rank 0's peak less its share's: the batch it streams, a fixed size
        rows.append({"step": "rank 0 at 65M: a batch and its share", "who": "rank 0 (index)",
                     "at 65M: GB peak": round((batch + read[2] * scale) / 1024, 1)})  # fmt: skip
        _, *measures = measured(lambda: plan_outputs(share, str(root)))
        row("prepare's output names, of a share", "every rank", *measures)
        _, *measures = measured(lambda: plan_outputs(files, str(root)))
        row("prepare's output names, of the whole collection", "a plain run (before: rank 0)", *measures)
        listed = Path(tmp) / "files.txt"
        listed.write_text("".join(f"{Path(p).relative_to(tmp)}\n" for p in files))
        _, *measures = measured(lambda: one_list(listed))
        row("read a list of the files (.txt) into one list", "a plain run (before: rank 0)", *measures)
        labels = Path(tmp) / "labels.csv"
        labels.write_text("path,label\n" + "".join(f"{Path(p).relative_to(root)},c{n % 400}\n"
                                                  for n, p in enumerate(files)))  # fmt: skip
        _, *measures = measured(lambda: LabelIndex.from_csv(labels))
        row("read --labels (a row per file)", "rank 0", *measures)
        _, *measures = measured(lambda: match_labels(files, labels))
        row("read --labels, count names and stems, label every file", "rank 0", *measures)
    report("listing", rows, {"ranks": args.ranks})


if __name__ == "__main__":
    run_script(main)
