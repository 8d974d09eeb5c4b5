"""``xdc prepare``: transcode a collection into a form that is cheap to train on.

Training reads short random clips at low resolution. Typical user files are large frames with a keyframe every
few seconds and 44.1/48 kHz stereo audio, so every clip decodes far more than it uses: all frames since the last
keyframe, at full size, then resamples the audio. A prepared copy (short side 128, a keyframe every few frames,
16 kHz mono AAC) makes each clip cost about what it uses. See docs/prepare.md for the layout, the report and
the measured gain.
"""

from __future__ import annotations

import csv
import filecmp
import hashlib
import heapq
import math
import os
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from xdc.atomic import move, remove_partials
from xdc.data.index import (
    PROBE_VERSION, LabelIndex, check_paths, check_workers, check_writable, chunks, init_worker, list_media,
    name_and_stem, number, probe_file, probe_holds, stat_row, unmatched_text, unread_text,
)  # fmt: skip
from xdc.data.decode import TIMED_DEMUXERS, displayed_width, float_samples, pixel_aspect, sample_position
from xdc.data.encode import AAC_SAMPLE_RATES
from xdc.data.jobs import run_jobs
from xdc.data.manifest import dict_rows, open_text, write_atomic
from xdc.data.shares import (
    RowLog, collectives, earlier_rows, merged, my_share, rank_file, rank_files, remove_share_files, route,
    this_run_files,
)  # fmt: skip
from xdc.errors import UserError
from xdc.progress import counted, progress_bar

if TYPE_CHECKING:  # torch, imported under torchrun only
    from xdc.training.distributed import Dist

REPORT = "prepared.csv"
NEXT = ".prepared.csv.next"  # the new report, until the copies it no longer names are removed
LABELS = "labels.csv"
COLUMNS = (
    "source", "output", "status", "reason", "seconds", "duration_s", "size", "mtime", "settings", "format", "probe",
)  # fmt: skip
OPTIONAL = ("format", "probe")  # columns a report of an earlier xdc lacks (read as empty)
# The format of the copies that this xdc makes, recorded per copy (the report's ``format``): a copy of another
# format is made again, however its settings match. Bump it only when a copy made now would differ from one made
# before with the same settings in what training reads (its frames' size, its samples, their times), not for a
# change of the container's layout that decodes the same (the index placed first, 2026-11-30) or of speed alone.
# 1: 2026-12-02, the first recorded: sides rounded to even with halves up and never enlarged, Matroska sound
#    placed back to back (both fixed 2026-12-01), square pixels at the displayed size (2026-12-02). Copies of
#    before 2026-12-02 record none: kept, with a warning, unless ``redo_unknown`` (docs/prepare.md says why).
FORMAT = 1
PARTIAL_GLOB = ".*.partial.mp4"  # outputs being written; the * is the output's file name
PROBLEMS = 10  # skipped and failed files that the summary names (each rank sends rank 0 its first, not all)
# --audio: the codec of the copies' audio. AAC makes the smallest copies; FLAC (lossless) and 16-bit PCM skip AAC's
# decoder start, paid twice per clip (once by the file's open): 1.09-1.12x and 1.14-1.15x the paper-preset items
# per core (crops and log-mel on the device) for 1.6-2.1x and 2.6x the bytes (BENCHMARKS.md "Audio codec of the
# copies").
AUDIO_CODECS = {"aac": "aac", "flac": "flac", "pcm": "pcm_s16le"}
TIME_BASE = Fraction(1, 90000)  # output video timestamps: fine enough to keep any source's frame times
MAX_BAD_PACKETS = 8  # damaged packets skipped per stream before the file counts as broken (as read_clip does)
REORDER_FRAMES = 4  # frames held back to put mislabelled timestamps in order (more than B-frame depths in use)
# A file's transcoding is taken as hung (a decoder in a loop) after 10 minutes plus a second per 250 kB of source:
# 18x the slowest rate measured (720p: 0.085 s of work per second of a 390 kB/s source) past the 10 minutes. A file
# cut short gets an error row, which the next run of xdc prepare tries again.
PREPARE_LIMIT_S, PREPARE_LIMIT_BYTES_PER_S = 600.0, 250e3


@dataclass(frozen=True)
class PrepareOptions:
    short_side: int = 128  # pixels of the output's shorter displayed side (smaller sources are not enlarged)
    gop: int = 16  # the most frames between two keyframes
    fps: float | None = None  # cap on the frame rate; None keeps the source's
    sample_rate: int = 16000
    crf: int = 23  # x264 quality (lower: better and larger)
    audio: str = "aac"  # a key of AUDIO_CODECS

    def check(self) -> None:
        if self.short_side < 16 or self.short_side % 2:
            raise UserError(f"--short-side must be an even number of pixels, at least 16, got {self.short_side}")
        if self.gop < 1:
            raise UserError(f"--gop must be at least 1 frame, got {self.gop}")
        # the cap is a fraction of denominator at most 1001 (NTSC's): below a frame per 2002 s it rounded to 0, and
        # every file failed with a ZeroDivisionError (until 2026-12-01)
        if self.fps is not None and not 0.001 <= self.fps < math.inf:
            raise UserError(f"--fps must be a finite number of frames per second, at least 0.001, got {self.fps}")
        if self.sample_rate not in AAC_SAMPLE_RATES:
            rates = ", ".join(map(str, AAC_SAMPLE_RATES))
            raise UserError(f"--sample-rate must be one of AAC's rates ({rates}), got {self.sample_rate}")
        if not 0 <= self.crf <= 51:
            raise UserError(f"--crf must be between 0 and 51, got {self.crf}")
        if self.audio not in AUDIO_CODECS:
            raise UserError(f"--audio must be one of {', '.join(AUDIO_CODECS)}, got {self.audio!r}")

    def key(self) -> str:
        """The settings as one string, stored per file: a re-run with other settings redoes the file."""
        fps = "source" if self.fps is None else f"{self.fps:g}"
        audio = "" if self.audio == "aac" else f" audio={self.audio}"  # copies made before --audio existed stay done
        return (f"short_side={self.short_side} gop={self.gop} fps={fps} sample_rate={self.sample_rate} crf={self.crf}"
                f"{audio}")


@dataclass
class PrepareSummary:
    files: int
    prepared: int  # outputs in place: transcoded this run or kept from an earlier one
    kept: int  # of which were kept from an earlier run (source and settings unchanged)
    skipped: int  # unusable sources (the probe's reason, as in xdc index)
    failed: int  # usable sources whose transcoding failed
    reformatted: int = 0  # of the prepared: made again as their earlier copies were of another FORMAT
    unknown: int = 0  # of the kept: copies of before 2026-12-02, which record no format
    labelled: int | None = None  # None when no labels file was given
    unmatched: tuple[int, list[str]] = (0, [])  # label rows that named no file, and the first few as written
    problems: list[dict] = field(default_factory=list)  # the first PROBLEMS skipped and failed rows, by source
    copies: Copies | None = None  # what the output folder holds besides this run's copies (rank 0's: _reconcile)
    unread_folders: list[str] = field(default_factory=list)  # folders of the inputs that could not be listed

    def line(self) -> str:
        text = f"{number(self.files, 'file')}: {self.prepared} prepared ({self.kept} already done), {self.skipped} "
        text += f"skipped, {self.failed} failed" + unread_text(self.unread_folders)
        if self.reformatted:
            text += (f"\n{self.reformatted} of them made again: their earlier copies were of another format of xdc's "
                     f"copies (now {FORMAT})")  # fmt: skip
        if self.unknown:
            text += (f"\nWARNING: {self.unknown} copies kept were made before 2026-12-02, which recorded no format: "
                     "those made before 2026-12-01 may have an odd side one pixel off or Matroska sound spliced, and "
                     "those of sources with non-square pixels are stretched; --redo-unknown-format makes them again")
        if self.labelled is not None:
            text += f"\n{self.labelled} of {number(self.prepared, 'prepared file')} labelled"
            text += unmatched_text(*self.unmatched)
        if self.copies is not None:
            text += self.copies.lines()
        return text


@dataclass
class Tally:
    """How many copies, and the first few by name."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, name: str, examples: int = 3) -> None:
        self.count += 1
        if len(self.examples) < examples:
            self.examples.append(name)

    def copies(self, kind: str = "") -> str:
        return f"{self.count} {kind}cop{'ies' if self.count > 1 else 'y'}"

    def named(self) -> str:
        return f": {', '.join(self.examples)}"


@dataclass
class Copies:
    """The output folder's copies that are not this run's: earlier copies of sources now copied under another name,
    or changed and failing (removed: ``xdc index OUT`` would train on old versions, or twice on one source), copies
    of sources not given, gone or unreadable now (kept: the sources may have been removed once copied), and this
    run's copies whose names are hidden (a source's name starts with "."), which ``xdc index OUT`` skips. With a few
    paths of each."""

    removed: Tally = field(default_factory=Tally)
    orphans: Tally = field(default_factory=Tally)
    hidden: Tally = field(default_factory=Tally)

    def lines(self) -> str:
        text = ""
        if self.removed.count:
            text += f"\nremoved {self.removed.copies('earlier ')} of sources now copied under another name or failed"
            text += self.removed.named()
        if self.orphans.count:
            text += (f"\n{self.orphans.copies('earlier ')} kept whose sources are not given, gone or unreadable now "
                     f"(xdc index of the folder takes them)")  # fmt: skip
            text += self.orphans.named()
        if self.hidden.count:
            sources = "their sources" if self.hidden.count > 1 else "its source"
            text += (f"\n{self.hidden.copies()} named with a leading '.', as {sources} (xdc index of the folder skips "
                     "hidden files; list them instead)")  # fmt: skip
            text += self.hidden.named()
        return text


def prepare(
    paths: list[str], out: Path, options: PrepareOptions | None = None, labels: Path | None = None,
    workers: int | None = None, ctx: Dist | None = None, redo_unknown: bool = False,
) -> PrepareSummary | None:  # fmt: skip
    """Transcode every media file under ``paths`` (folders, lists of files or files) into the folder ``out``,
    keeping each file's path relative to the inputs' common folder, and write ``out/prepared.csv``.
    Files whose source size, mtime and settings match an ``ok`` row of an earlier report are not redone, unless
    its copy is of another ``FORMAT``, or records none and ``redo_unknown``.
    Each row is added to a side file (``.prepared.csv.rank0.csv``) as its copy is made, so that a run cut short
    loses no finished copy: the next run reads those rows as it reads the report's.

    Under torchrun (``ctx``, e.g. one rank per node) rank 0 lists the inputs and every rank takes its share of the
    files (``my_share``: those whose copies could share a name on one rank), plans their copies' names and keeps its
    own side file (``.prepared.csv.rankN.csv``), which rank 0 joins into ``prepared.csv`` at the end.
    Rank 0 writes the labels and returns the summary, the other ranks None. ``out`` and the inputs must be on
    filesystems every rank sees."""
    ctx, on_main, broadcast_object, gather_objects = collectives(ctx)
    options = options or PrepareOptions()
    options.check()
    workers = check_workers(workers)
    out = Path(out).expanduser().resolve()
    report = out / REPORT
    check_paths(paths)  # on every rank: rank 0 alone lists what is under them
    label_index, roots, common, unread = None, [], None, []  # rank 0's, made as it lists

    def listing() -> Iterator[str]:
        nonlocal label_index, common
        label_index = LabelIndex.from_csv(Path(labels)) if labels is not None else None
        _check_out(out)
        inside = str(out).rstrip("/") + "/"  # a string test: a path object per source took 5 us (5 minutes at 65M)
        checked = 0
        for source in list_media(paths, roots, outside_links="keep", unread=unread):  # a link's copy goes where it is
            if len(roots) > checked:  # a folder reached: checked before any file of it is shared out
                _check_roots(out, roots[checked:])
                checked = len(roots)
            if source.startswith(inside) or source == str(out):
                raise UserError(f"the input file {source} is inside --out {out}; choose another --out")
            common = _common_folder(common, os.path.dirname(source))
            yield source
        _check_roots(out, roots[checked:])
        _start(out)

    sources = my_share(listing, report, ctx, on_main, group=name_group)
    common = broadcast_object(common, ctx)
    root = _common_folder(common, *map(str, broadcast_object(roots, ctx)))
    plan = plan_outputs(sources, root)
    # of every rank's renamed sources, those whose copies' names a source here could have: its name_group
    renamed = route(report, ctx, [source for source, _, moved in plan if moved])
    share = [(source, output, not moved and name_group(source) in renamed) for source, output, moved in plan]
    settings = options.key()
    found = {source: (output, stat_row(source)) for source, output, _ in share}

    formats = {str(FORMAT)} if redo_unknown else {str(FORMAT), ""}  # "": a copy of before 2026-12-02

    def current(old: dict) -> bool:  # whether an earlier row still holds for its source, with these options
        if old["status"] == "skipped":  # the probe's verdict, whatever the options (until 2026-12-03 probed again)
            return probe_holds(old, found[old["source"]][1])
        return same_source(old) and (old.get("format") or "") in formats

    def same_source(old: dict) -> bool:  # ... but for the format of its copy
        output, stat = found[old["source"]]
        return (
            old["status"] == "ok" and "status" not in stat and old["settings"] == settings
            and (old["output"], old["size"], old["mtime"]) == (output, str(stat["size"]), stat["mtime"])
        )  # fmt: skip

    # this rank's share of the earlier rows: every rank holding every row would not scale
    previous, theirs = earlier_rows(report, ctx, iter_report, "source", found, current)
    rows: dict[str, dict] = {}
    todo: list[str] = []
    for source, output, taken in share:
        row = {"source": source, "output": output, "settings": settings, "seconds": 0.0, "duration_s": 0.0,
               "format": FORMAT}  # fmt: skip
        stat = found[source][1]
        if "status" in stat:  # missing or unreadable: what xdc index reports for it
            rows[source] = {**row, "status": "skipped", "reason": stat["reason"], "size": "", "mtime": ""}
            continue
        row.update(size=str(stat["size"]), mtime=stat["mtime"])
        old = previous.get(source)
        if taken:
            rows[source] = {**row, "status": "error", "reason": f"output name {output} is taken by another file"}
        elif not source.endswith("/" + output) and _input_folder(root, output):  # a.mp4 of a file a, folder a.mp4/
            rows[source] = {**row, "status": "error", "reason": f"output name {output} is taken by a folder"}
        elif old is not None and old["status"] == "skipped" and current(old):
            rows[source] = old
        elif old is not None and current(old) and (out / output).is_file():
            rows[source] = {**old, "kept": True}
        else:
            # a copy in place but of another format: made again, and counted (until 2026-12-02 kept without a word)
            rows[source] = {**row, "reformat": old is not None and same_source(old) and (out / output).is_file()}
            todo.append(source)

    side = rank_file(report, ctx.rank)
    if todo or theirs:  # each copy's row kept in the side file as it comes, for the next run should this one not end
        with RowLog(side, COLUMNS, _report_cells) as log:
            log.add(theirs)
            _run_jobs(todo, rows, out, options, workers, log, show=ctx.main)
    if ctx.enabled:  # every row of the share, sorted, for rank 0's join (alone, the rows are at hand)
        write_report(side, [rows[s] for s in sorted(rows)])
    summaries = gather_objects(_summarise(list(rows.values())), ctx)

    def finish() -> PrepareSummary:
        new = out / NEXT
        if ctx.enabled:  # every rank's rows, of the files listed now
            join_reports(new, this_run_files(report, ctx))
        else:
            write_report(new, [rows[s] for s in sorted(rows)])
        summary = _add(summaries)
        summary.unread_folders = unread  # until 2026-12-03 a warning alone, before the copies' output
        # before the new report takes the old one's place: a run killed meanwhile leaves the old, and the next
        # run compares again
        summary.copies = _reconcile(out, report, new)
        if report.is_file() and filecmp.cmp(new, report, False):  # a re-run that did nothing: the report keeps its time
            new.unlink()
        else:
            move(new, report)
        for path in rank_files(report):  # this run's, and any of a run cut short (their rows were read)
            path.unlink()
        remove_share_files(report)
        if label_index is not None:  # from the whole report, as it streams, where the ranks made it
            every = (lambda: iter_report(report)) if ctx.enabled else (lambda: (rows[s] for s in sorted(rows)))
            summary.labelled = _write_labels(out / LABELS, every, label_index, roots, summary.files)
            summary.unmatched = label_index.unmatched()  # until 2026-12-03 unsaid, as xdc index's
        return summary

    return on_main(finish, ctx)


def join_reports(report: Path, files: list[Path]) -> None:
    """Write the rows of ``files`` (the ranks' side files, each sorted) as ``report``, merged as they stream: rank 0
    holds one row of each file at a time, however many rows there are."""
    write_report(report, counted(merged(files, iter_report, "source"), f"joining {REPORT}"))


def _check_out(out: Path) -> None:
    """Outputs must never land among the inputs: a later index of the input folder would find them, and an output
    path could be an input file. Checked before the inputs are listed, then as they are (``_check_roots``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if out.is_dir():  # said before the inputs are listed (minutes, at 65M files); a new folder takes files
        check_writable(out, f"--out {out}")


def _check_roots(out: Path, roots: list[Path]) -> None:
    """``out`` and the folders searched must not hold one another."""
    for root in roots:
        if out.is_relative_to(root):
            raise UserError(f"--out {out} is inside the input folder {root}; choose a folder outside it")
        if root.is_relative_to(out):
            raise UserError(f"the input folder {root} is inside --out {out}; choose another --out")


def _start(out: Path) -> None:
    """Once the inputs are listed, before any rank starts: create ``out`` and remove the outputs that a run cut
    short left half written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror or e}") from None
    for leftover in out.rglob(PARTIAL_GLOB):
        leftover.unlink(missing_ok=True)
    for name in (REPORT, NEXT, LABELS):  # a killed run's, half written: as large as whole ones
        remove_partials(out, of=name)
    (out / NEXT).unlink(missing_ok=True)  # the report of a run killed before it took the old one's place


def _reconcile(out: Path, earlier: Path, report: Path) -> Copies:
    """Compare the ``earlier`` report (absent on a first run) with this run's ``report``, both sorted by source, as
    they stream, a row of each at a time, and remove the copies that are no longer their sources' (``Copies``).
    Holds a hash of each copy of this run: 8 bytes, 0.5 GB for 65M."""
    copies = Copies()
    outputs = array("q")
    for row in iter_report(report):
        if row["status"] == "ok":
            outputs.append(hash(row["output"]))
            if any(part.startswith(".") for part in row["output"].split("/")):
                copies.hidden.add(row["output"])
    if not earlier.exists():
        return copies
    hashes = np.sort(np.frombuffer(outputs, dtype=np.int64))
    del outputs

    def taken(output: str) -> bool:  # a copy of this run has the name (a hash collision keeps a file, not the reverse)
        key = hash(output)
        at = np.searchsorted(hashes, key)
        return bool(at < len(hashes) and hashes[at] == key)

    current = iter_report(report)
    now = next(current, None)
    for old in iter_report(earlier):
        if old["status"] != "ok":
            continue
        while now is not None and now["source"] < old["source"]:
            now = next(current, None)
        if taken(old["output"]):
            continue
        given = now is not None and now["source"] == old["source"]
        renamed = given and now["status"] == "ok" and now["output"] != old["output"]
        changed = (given and now["status"] != "ok" and now["size"] != ""  # no size: not there, or not readable
                   and (now["size"], now["mtime"]) != (old["size"], old["mtime"]))  # fmt: skip
        if renamed or changed:  # copied under another name now, or changed and no longer copied: not its copy
            if (out / old["output"]).is_file():
                (out / old["output"]).unlink()
                copies.removed.add(old["output"])
        elif not given or now["status"] != "ok":  # not given, gone, or unreadable now (a mount gone, a permission):
            copies.orphans.add(old["output"])  # the copy may be all that is left of its source, kept
    return copies


def _common_folder(common: str | None, *folders: str) -> str | None:
    """The folder that holds ``common`` and ``folders`` (absolute, normalised); only where one is outside it does it
    take ``commonpath``, which is slow: a file's folder is most often the one before it."""
    for folder in folders:
        if common is None:
            common = folder
        elif folder != common and not folder.startswith(common.rstrip("/") + "/"):
            common = os.path.commonpath([common, folder])
    return common


def name_group(source: str) -> str:
    """``source`` without its suffix: sources whose copies would have the same name (clip.avi and clip.mp4, both
    clip.mp4) share it, so they land on one rank, which plans their names alone. A copy whose name the rank cannot
    see taken is the one of a source with its suffix in its name (clip.avi.mp4, once clip.avi has taken that
    name): its name_group is that source, which ``route`` hands its rank."""
    return source[: len(source) - len(_suffix(source))]


def plan_outputs(sources: list[str], root: str) -> list[tuple[str, str, bool]]:
    """(source, output, renamed) of each of ``sources`` (absolute, normalised, each once), in their order. The
    output path (relative to the output folder, POSIX) is the source's path relative to ``root``, the folder that
    holds all inputs, with the suffix .mp4; two sources that would share a name (clip.avi and clip.mp4) keep their
    suffix in it: clip.mp4 stays clip.mp4, clip.avi becomes clip.avi.mp4 (``renamed``), as does a clip.avi beside
    a folder clip.mp4 of the inputs, whose copies need that name for their folder. A source named like such a
    copy (clip.avi.mp4) finds its name taken and is not copied (never overwritten: ``name_group``, ``route``). The
    plan of every ``name_group`` is whole in ``sources`` or absent: then a rank's share plans as the whole collection
    would. Done on strings: path objects took 17 us and, at the peak, 500 bytes a file (19 minutes and 33 GB at 65M
    files)."""
    start = len(root.rstrip("/")) + 1  # the sources' paths are under root, or root is "/"
    claims = Counter(_as_mp4(source[start:]) for source in sources)
    plan = []
    for source in sources:
        relative = source[start:]
        output = _as_mp4(relative)
        clash = claims[output] > 1 or (output != relative and _input_folder(root, output))
        renamed = clash and _suffix(relative) != ".mp4"
        plan.append((source, relative + ".mp4" if renamed else output, renamed))
    return plan


def _input_folder(root: str, output: str) -> bool:
    """Whether the inputs have a folder where ``output`` would be (a.mp4/ beside a.avi): the copies of the files in
    it need that name for their folder. Asked only of sources whose suffix changes, so most collections of .mp4
    files cost no call."""
    return os.path.isdir(os.path.join(root, output))


def _suffix(path: str) -> str:
    """PurePath(path).suffix."""
    name, stem = name_and_stem(path)
    return name[len(stem) :]


def _as_mp4(path: str) -> str:
    """PurePath(path).with_suffix(".mp4")."""
    return path[: len(path) - len(_suffix(path))] + ".mp4"


# --- the report --------------------------------------------------------------------------------------------


def write_report(path: Path, rows: Iterable[dict]) -> None:
    """Write the report atomically (a reader never sees half a file)."""

    def write(f) -> None:
        writer = csv.writer(f)  # lists, not csv.DictWriter's dicts: rank 0 writes millions of rows
        writer.writerow(COLUMNS)
        writer.writerows(map(_report_cells, rows))

    write_atomic(path, write)


def _report_cells(row: dict) -> list[str]:
    ok = row["status"] == "ok"  # else nothing was written for it: no output, no format
    return [_cell(row.get(k)) if ok or k not in ("output", "format") else "" for k in COLUMNS]  # probe: of skipped


def read_report(path: Path) -> list[dict]:
    return list(iter_report(path))


def iter_report(path: Path, keep: Container[str] | None = None) -> Iterator[dict]:
    """The rows of a report one at a time: a reader holds one row, however long the file. With ``keep``, only
    those whose source is in it (``dict_rows``)."""
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, [])
            missing = set(COLUMNS) - set(header) - set(OPTIONAL)  # a report of an earlier xdc is read as it is
            if missing:
                raise UserError(f"{path} is not an xdc prepare report (missing columns: {', '.join(sorted(missing))})")
            yield from dict_rows(reader, header, "source", keep)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def _cell(value) -> str:
    if type(value) is str:  # most cells: rows read back from a report
        return value
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _summarise(rows: list[dict]) -> PrepareSummary:
    statuses = Counter(row["status"] for row in rows)
    return PrepareSummary(
        files=len(rows),
        prepared=statuses["ok"],
        kept=sum(1 for row in rows if row.get("kept")),
        skipped=statuses["skipped"],
        failed=statuses["error"],
        reformatted=sum(1 for row in rows if row.get("reformat") and row["status"] == "ok"),
        unknown=sum(1 for row in rows if row.get("kept") and not row.get("format")),
        problems=heapq.nsmallest(PROBLEMS, (row for row in rows if row["status"] != "ok"), key=lambda r: r["source"]),
    )


def _add(summaries: list[PrepareSummary]) -> PrepareSummary:
    """The ranks' summaries as one."""
    total = PrepareSummary(**{name: sum(getattr(s, name) for s in summaries) for name in (
        "files", "prepared", "kept", "skipped", "failed", "reformatted", "unknown")})  # fmt: skip
    total.problems = sorted((row for s in summaries for row in s.problems), key=lambda r: r["source"])[:PROBLEMS]
    return total


def _write_labels(
    path: Path, rows: Callable[[], Iterator[dict]], label_index: LabelIndex, roots: list[Path], total: int
) -> int:
    """Label the prepared files by their sources (the rules of xdc index) and write them with paths relative
    to the output folder: ``xdc index OUT --labels OUT/labels.csv`` then matches every one. ``rows()``: the report's
    rows, sorted by source (called twice: once to count the names and stems the labels use), ``total`` of them;
    ``roots``: the folders searched (for relative label paths)."""
    counts = label_index.count_names(row["source"] for row in counted(rows(), "matching labels", total))
    labelled = 0

    def labelled_rows() -> Iterator[tuple[str, str]]:  # written as they come: 65M (path, label) pairs are 10 GB
        nonlocal labelled
        yield "path", "label"
        for chunk in chunks(counted(rows(), f"labelling {path.name}", total)):
            for row, label in zip(chunk, label_index.lookup([row["source"] for row in chunk], roots, counts)):
                if row["status"] == "ok" and label:
                    labelled += 1
                    yield row["output"], label

    write_atomic(path, lambda f: csv.writer(f).writerows(labelled_rows()), keep_same=True)
    return labelled


# --- running the jobs --------------------------------------------------------------------------------------


def _run_jobs(
    todo: list[str], rows: dict[str, dict], out: Path, options: PrepareOptions, workers: int, log: RowLog, show: bool
) -> None:
    """Transcode in worker processes, each row added to ``log`` as it comes; a file that crashes or hangs its
    process gets an error row (:mod:`xdc.data.jobs`), and the others go on."""
    if not todo:
        return

    def finish(pair: tuple[str, str], result: dict) -> None:
        rows[pair[0]].update(result)
        log.add([rows[pair[0]]])
        progress.update()

    with progress_bar(total=len(todo), desc="preparing", unit="file", show=show) as progress:
        run_jobs(
            [(s, str(out / rows[s]["output"])) for s in todo], partial(_prepare_pair, options), workers, finish,
            failed=lambda reason: {"status": "error", "reason": reason},
            limit_s=lambda pair: PREPARE_LIMIT_S + int(rows[pair[0]]["size"]) / PREPARE_LIMIT_BYTES_PER_S,
            initializer=init_worker,
        )  # fmt: skip


def _prepare_pair(options: PrepareOptions, pair: tuple[str, str]) -> dict:
    return prepare_job(*pair, options)


def prepare_job(source: str, output: str, options: PrepareOptions) -> dict:
    """Worker entry point: one bad file must become a row, never an exception that ends the run."""
    start = time.perf_counter()
    try:
        result = prepare_file(source, Path(output), options)
    except Exception as e:  # noqa: BLE001 - recorded as the file's reason
        lines = str(e).strip().splitlines()
        result = {"status": "error", "reason": f"transcoding failed: {type(e).__name__}: {lines[0] if lines else ''}"}
    result["seconds"] = time.perf_counter() - start
    return result


# --- transcoding one file ----------------------------------------------------------------------------------


class _Broken(Exception):
    """A stream has too many damaged packets; the message is the reason."""


def prepare_file(source: str, output: Path, options: PrepareOptions) -> dict:
    """Probe ``source`` as xdc index does, then transcode its usable streams into ``output`` (written under a
    hidden temporary name, then renamed). Returns status, reason and duration_s."""
    probe = probe_file(source)
    if probe["status"] == "error":
        return {"status": "skipped", "reason": probe["reason"], "duration_s": probe["duration_s"],
                "probe": PROBE_VERSION}  # fmt: skip
    has_video, has_audio = probe["width"] > 0, bool(probe["has_audio"])
    # A video whose audio fails to decode keeps its pictures; the loss is said in the reason.
    note = f"audio dropped: {probe['reason']}" if not has_audio and probe["reason"] != "no audio stream" else ""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(_partial_name(output.name))
    try:
        skipped = _transcode(source, tmp, probe, options, has_video, has_audio)
        move(tmp, output)
    except _Broken as e:
        return {"status": "error", "reason": str(e), "duration_s": probe["duration_s"]}
    finally:
        tmp.unlink(missing_ok=True)
    if skipped:
        note = "; ".join(filter(None, [note, f"{skipped} damaged packet{'s' * (skipped > 1)} skipped"]))
    return {"status": "ok", "reason": note, "duration_s": probe["duration_s"]}


def _partial_name(name: str) -> str:
    """The hidden name a copy is written under, matched by PARTIAL_GLOB: the copy's own where it fits in a file
    name's 255 bytes, else a hash of it (a source named with 243-255 bytes got "File name too long")."""
    partial = PARTIAL_GLOB.replace("*", name)
    if len(os.fsencode(partial)) <= 255:
        return partial
    return PARTIAL_GLOB.replace("*", hashlib.sha1(os.fsencode(name)).hexdigest())


def _transcode(source: str, dest: Path, probe: dict, options: PrepareOptions, has_video: bool, has_audio: bool) -> int:
    """Decode once, encode both streams into ``dest``; returns the number of damaged packets skipped."""
    # faststart: the index (moov) before the media, so a reader's open takes one read from the start of the file
    # instead of a jump to its end and back (2.5 reads and 82 kB per paper clip instead of 4.5 and 119 kB)
    with av.open(source) as src, av.open(str(dest), mode="w", format="mp4", options={"movflags": "+faststart"}) as dst:
        attached = av.stream.Disposition.attached_pic  # the same streams as the probe picked
        vin = next(s for s in src.streams.video if not s.disposition & attached) if has_video else None
        ain = src.streams.audio[0] if has_audio else None
        # Both tracks are shifted by the same origin, so their relative timing (the A/V sync) is unchanged.
        origin = src.start_time / av.time_base if src.start_time is not None else 0.0
        tracks = {}
        if vin is not None:
            timed = not TIMED_DEMUXERS.isdisjoint(src.format.name.split(","))
            tracks[vin.index] = _VideoTrack(vin, dst, probe, options, origin, timed)
        if ain is not None:
            tracks[ain.index] = _AudioTrack(ain, dst, options, origin)
        for packet in src.demux([s for s in (vin, ain) if s is not None]):
            track = tracks[packet.stream.index]
            track.before_decode(packet)
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as e:
                track.damaged(packet, e)
                continue
            track.decoded(packet)
            for frame in frames:
                track.add(frame)
        for track in tracks.values():
            track.close()
        return sum(track.bad for track in tracks.values())


class _Track:
    kind = ""

    def __init__(self, stream, container, origin: float):
        stream.codec_context.thread_count = 1  # parallelism is across files
        self.out = None  # set by subclasses
        self.container = container
        self.origin = origin
        self.bad = 0
        self.first_error = ""

    def damaged(self, packet, error: Exception) -> None:
        # Players skip a damaged packet; so does read_clip, up to the same limit.
        self.bad += 1
        if not self.first_error:
            seconds = float(packet.pts * packet.time_base) - self.origin if packet.pts is not None else 0.0
            self.first_error = f"at {seconds:.1f}s: {error.strerror or error}"
        if self.bad > MAX_BAD_PACKETS:
            more = f"more than {MAX_BAD_PACKETS} damaged packets"
            raise _Broken(f"{self.kind} stream has {more} (the first {self.first_error})")

    def encode(self, frame) -> None:
        self.container.mux(self.out.encode(frame))

    def before_decode(self, packet) -> None:
        pass

    def decoded(self, packet) -> None:
        pass


class _VideoTrack(_Track):
    """Scales each frame to square pixels (and turns it upright), keeps its timestamp, and drops frames beyond the fps
    cap."""

    kind = "video"

    def __init__(self, stream, container, probe: dict, options: PrepareOptions, origin: float, timed: bool):
        super().__init__(stream, container, origin)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        self.slot = 0.0  # with an fps cap: keep the first frame of each 1/fps slot of time
        if options.fps is not None and rate > options.fps:
            rate, self.slot = Fraction(options.fps).limit_denominator(1001), 1.0 / options.fps
        # With the cap, pictures that it drops need no decoding where nothing is predicted from them (skip_frame):
        # known before decoding only where each packet carries its picture's time (timed containers).
        self.codec, self.time_base = stream.codec_context, stream.time_base
        self.may_skip, self.skipping = bool(self.slot) and timed, False
        self.first_in_slot: dict[int, int] = {}  # slot -> the earliest pts decoded in it so far
        # The copy has square pixels (it states no aspect, which players take as square) at the displayed size: the
        # source's pixel aspect applies to its coded picture, before it is turned upright.
        shown = displayed_width(probe["width"], pixel_aspect(stream)), probe["height"]
        sideways = probe["rotation"] in (90, 270)
        width, height = output_size(*(shown[::-1] if sideways else shown), options.short_side)
        self.size = (height, width) if sideways else (width, height)  # before turning upright
        self.out = container.add_stream("libx264", rate=rate)
        self.out.width, self.out.height, self.out.pix_fmt = width, height, "yuv420p"
        self.out.codec_context.time_base = self.out.time_base = TIME_BASE
        self.out.options = {"crf": str(options.crf), "preset": "veryfast", "tune": "fastdecode", "g": str(options.gop),
                            "x264-params": "cpu-independent=1"}  # the same bytes on every CPU (see data/encode.py)
        self.out.codec_context.thread_count = 1
        # Reused converters: frame.reformat would set up a new scaling context for every frame (most of its cost).
        self.scaler, self.to_yuv = VideoReformatter(), VideoReformatter()
        self.period = 1.0 / float(rate)
        self.last_time: float | None = None
        self.held: deque = deque()  # decoded frames not yet encoded, oldest first
        self.times: list[float] = []  # heap of their timestamps
        self.last_pts = -1
        self.last_slot = -1

    def before_decode(self, packet) -> None:
        """Let the decoder drop this packet's picture when an earlier one of its slot was decoded: the cap keeps
        only a slot's earliest picture. The decoder drops only pictures that no other is predicted from (x264's
        default B-frames: 2 of every 4 pictures), so the copy is the same, byte for byte."""
        dropped = False
        if self.may_skip and packet.pts is not None:
            first = self.first_in_slot.get(self._slot_of(packet.pts))
            dropped = first is not None and first < packet.pts
        if dropped != self.skipping:
            self.codec.skip_frame = "NONREF" if dropped else "DEFAULT"
            self.skipping = dropped

    def decoded(self, packet) -> None:
        # after the decode, so that a damaged packet, whose picture never comes, takes no slot
        if self.may_skip and packet.pts is not None:
            slot = self._slot_of(packet.pts)
            self.first_in_slot[slot] = min(packet.pts, self.first_in_slot.get(slot, packet.pts))

    def _slot_of(self, pts: int) -> int:
        t = float(pts) * self.time_base.numerator / self.time_base.denominator  # as PyAV's frame.time, to the bit
        return math.floor(max(0.0, t - self.origin) / self.slot + 1e-6)

    def add(self, frame) -> None:
        t = frame.time
        if t is None:  # no timestamp: assume the nominal rate after the previous frame
            t = self.last_time + self.period if self.last_time is not None else self.origin
        self.last_time = t
        # Frames come out of the decoder in display order, but some containers label them with shuffled times
        # (AVI with packed B-frames: 1, 2, 4, 3, ...): the held-back frames take the smallest pending times.
        heapq.heappush(self.times, t)
        self.held.append(frame)
        if len(self.held) > REORDER_FRAMES:
            self._emit(self.held.popleft(), heapq.heappop(self.times))

    def _emit(self, frame, t: float) -> None:
        t = max(0.0, t - self.origin)
        if self.slot:
            slot = math.floor(t / self.slot + 1e-6)  # as _slot_of
            if slot <= self.last_slot:
                return
            self.last_slot = slot
        pts = round(t / TIME_BASE)
        if pts <= self.last_pts:  # a repeated timestamp shows nothing new (and the encoder needs them increasing)
            return
        self.last_pts = pts
        width, height = self.size
        turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # as read_clip turns frames upright
        if turns:
            image = self.scaler.reformat(frame, width=width, height=height, format="rgb24", threads=1).to_ndarray()
            upright = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(image, turns)), format="rgb24")
            scaled = self.to_yuv.reformat(upright, format="yuv420p", threads=1)
        else:
            scaled = self.scaler.reformat(frame, width=width, height=height, format="yuv420p", threads=1)
        scaled.pts, scaled.time_base = pts, TIME_BASE
        self.encode(scaled)

    def close(self) -> None:
        while self.held:
            self._emit(self.held.popleft(), heapq.heappop(self.times))
        self.encode(None)


class _AudioTrack(_Track):
    """Resamples to the target rate, mixes down to mono by averaging channels (as read_clip does), keeps the
    timestamps (the resampler carries them through), and encodes AAC, FLAC or PCM (``options.audio``)."""

    kind = "audio"

    def __init__(self, stream, container, options: PrepareOptions, origin: float):
        super().__init__(stream, container, origin)
        self.rate = options.sample_rate
        self.out = container.add_stream(AUDIO_CODECS[options.audio], rate=self.rate)
        self.out.layout = "mono"
        if options.audio == "aac":
            self.out.bit_rate = 3 * self.rate  # 48 kb/s at 16 kHz: transparent for log-mel features
        self.resampler = av.AudioResampler(format="fltp", rate=self.rate)  # keeps the channels: mixed below
        self.time_base = float(stream.time_base)
        self.next_pts: int | None = None  # the sample after the last frame, at the source's rate

    def add(self, frame) -> None:
        rate = frame.sample_rate
        pts = sample_position(frame.time, self.origin, rate, self.next_pts, self.time_base)  # as read_clip places it
        self.next_pts = pts + frame.samples
        frame.pts, frame.time_base = pts, Fraction(1, rate)
        for resampled in self.resampler.resample(frame):
            self._mix_and_encode(resampled)

    def _mix_and_encode(self, frame) -> None:
        samples = float_samples(frame)
        mono = samples.mean(axis=0, keepdims=True) if samples.shape[0] > 1 else samples
        out = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono, dtype=np.float32), format="fltp", layout="mono")
        out.sample_rate, out.pts, out.time_base = self.rate, frame.pts, Fraction(1, self.rate)
        self.encode(out)

    def close(self) -> None:
        for resampled in self.resampler.resample(None):
            self._mix_and_encode(resampled)
        self.encode(None)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Displayed size scaled so that the short side is ``short_side``, both sides even: a scaled side rounded to the
    nearest even number, halves up; a source no larger kept, an odd side one pixel less (never enlarged, but to 2).
    Until 2026-12-01 Python's round took halves to even: a 5 x 3 source became 4 x 4, 641 x 361 became 642 x 362."""
    scale = short_side / min(width, height)

    def even(side: int) -> int:
        return max(2, 2 * math.floor(side * scale / 2 + 0.5) if scale < 1 else side - side % 2)

    return even(width), even(height)
