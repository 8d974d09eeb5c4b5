"""What rank 0 pays at the end of ``xdc index`` and ``xdc prepare`` under torchrun: joining the ranks' side files.

    .venv/bin/python benchmarks/rank_joins.py [--rows 500000] [--ranks 2]

Writes --ranks side files of --rows rows each (paths like a collection of 400 folders), then times rank 0's join:
the index's (a sorted merge, labels matched from a labels file, the manifest written) and prepare's (the earlier
report merged with the ranks' reports). Peak memory is the process's maximum resident size after the files were
written against after the join: a join that streams leaves it flat.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from common import report
from xdc.data.index import Collection, LabelIndex, _write_manifest
from xdc.data.manifest import iter_rows, write_rows
from xdc.data.prepare import _join_rank_reports, write_report
from xdc.data.shares import merged, rank_file

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
            write_report(rank_file(prepared, r), ({**REPORT_ROW, "source": p} for p in paths(args.rows, r)[::2]))
        earlier = sorted(p for r in range(args.ranks) for p in paths(args.rows, r))
        write_report(prepared, ({**REPORT_ROW, "source": p} for p in earlier))
        labels = Path(tmp) / "labels.csv"
        labels.write_text("path,label\nv000000001_0.mp4,a\nc007/v000000007_1.mp4,b\n")
        files = [rank_file(out, r) for r in range(args.ranks)]

        before, t = peak_mb(), time.perf_counter()
        summary = _write_manifest(out, lambda: merged(files, iter_rows, "path"), LabelIndex.from_csv(labels),
                                  Collection(roots=[Path("/data/videos")]), probed=0)  # fmt: skip
        seconds = time.perf_counter() - t
        rows.append({"join": "index: merge, labels, manifest", "rows": summary.files, "s": round(seconds, 1),
                     "rows/s": round(summary.files / seconds), "peak MB before": round(before),
                     "peak MB after": round(peak_mb())})  # fmt: skip

        ranks = [rank_file(prepared, r) for r in range(args.ranks)]
        read = len(earlier) + sum(len(paths(args.rows, r)[::2]) for r in range(args.ranks))
        before, t = peak_mb(), time.perf_counter()
        _join_rank_reports(prepared, ranks, with_base=True)
        seconds = time.perf_counter() - t
        rows.append({"join": "prepare: earlier report + ranks' reports", "rows": read, "s": round(seconds, 1),
                     "rows/s": round(read / seconds), "peak MB before": round(before),
                     "peak MB after": round(peak_mb())})  # fmt: skip
    report("rank_joins", rows, {"ranks": args.ranks, "rows_per_rank": args.rows})


if __name__ == "__main__":
    main()
