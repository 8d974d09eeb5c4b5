"""What rank 0 pays at the end of ``xdc index`` and ``xdc prepare`` under torchrun: joining the ranks' side files.

    .venv/bin/python benchmarks/rank_joins.py [--rows 500000] [--ranks 2]

Writes --ranks side files of --rows rows each (paths like a collection of 400 folders), then times rank 0's join:
the index's (a sorted merge, labels matched from a labels file, the manifest written) and prepare's (the ranks'
reports merged). Peak memory is the process's maximum resident size after the files were written against after
the join: a join that streams leaves it flat. Then what a rank pays to keep its side file as it goes: a row added
at a time (``RowLog``, a write each), against a rewrite of the whole file (how the side files were kept until
2026-11-30, at most every 5 s and 5% of the time).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from common import report, run_script
from xdc.data.index import LabelIndex, _write_manifest
from xdc.data.manifest import COLUMNS, iter_rows, row_cells, write_rows
from xdc.data.prepare import join_reports, write_report
from xdc.data.shares import RowLog, merged, rank_file

MANIFEST_ROW = dict(status="ok", reason="", duration_s="10", fps="25", width="340", height="256", rotation="0",
                    has_audio="1", sample_rate="44100", channels="2", label="", size="1234567",
                    mtime="1700000000.000000000", probe="2")  # fmt: skip
REPORT_ROW = dict(output="x.mp4", status="ok", reason="", seconds=1.0, duration_s=10.0, size="1234567",
                  mtime="1700000000.000000000", settings="short_side=128 gop=16 sample_rate=16000 crf=23 audio=aac")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paths(rows: int, rank: int) -> list[str]:
    return sorted(f"/data/videos/c{i % 400:03d}/v{i:09d}_{rank}.mp4" for i in range(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xdc-bench-rank-joins-") as tmp:
        out, prepared = Path(tmp) / "manifest.csv", Path(tmp) / "prepared.csv"
        for r in range(args.ranks):
            write_rows(rank_file(out, r), ({**MANIFEST_ROW, "path": p} for p in paths(args.rows, r)))
            write_report(rank_file(prepared, r), ({**REPORT_ROW, "source": p} for p in paths(args.rows, r)))
        labels = Path(tmp) / "labels.csv"
        labels.write_text("path,label\nv000000001_0.mp4,a\nc007/v000000007_1.mp4,b\n")
        files = [rank_file(out, r) for r in range(args.ranks)]

        before, t = peak_mb(), time.perf_counter()
        summary = _write_manifest(out, lambda: merged(files, iter_rows, "path"), LabelIndex.from_csv(labels),
                                  [Path("/data/videos")], args.ranks * args.rows, probed=0, reused=0)  # fmt: skip
        seconds = time.perf_counter() - t
        rows.append({"join": "index: merge, labels, manifest", "rows": summary.files, "s": round(seconds, 1),
                     "rows/s": round(summary.files / seconds), "peak MB before": round(before),
                     "peak MB after": round(peak_mb())})  # fmt: skip

        ranks = [rank_file(prepared, r) for r in range(args.ranks)]
        read = args.ranks * args.rows
        before, t = peak_mb(), time.perf_counter()
        join_reports(prepared, ranks)
        seconds = time.perf_counter() - t
        rows.append({"join": "prepare: ranks' reports", "rows": read, "s": round(seconds, 1),
                     "rows/s": round(read / seconds), "peak MB before": round(before),
                     "peak MB after": round(peak_mb())})  # fmt: skip

        mine = [{**MANIFEST_ROW, "path": p} for p in paths(args.rows, 0)]
        log = Path(tmp) / "log.csv"
        t = time.perf_counter()
        with RowLog(log, COLUMNS, row_cells) as rank_log:
            for row in mine:
                rank_log.add([row])
        added = time.perf_counter() - t
        t = time.perf_counter()
        write_rows(log, mine)
        whole = time.perf_counter() - t
        for how, seconds in (("a row added at a time", added), ("rewritten whole, once", whole)):
            rows.append({"join": f"a rank's side file: {how}", "rows": len(mine), "s": round(seconds, 2),
                         "rows/s": round(len(mine) / seconds)})  # fmt: skip
    report("rank_joins", rows, {"ranks": args.ranks, "rows_per_rank": args.rows})


if __name__ == "__main__":
    run_script(main)
