"""``xdc index``: find the media files of a collection, probe each one with PyAV and write the manifest.

Every file found gets one row, usable or not, so a collection's problems are visible in one place instead of
surfacing as crashes during training. See docs/index.md for the columns, statuses, caching and label rules.
"""

from __future__ import annotations

import csv
import errno
import itertools
import logging
import os
import stat
import sys
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from xdc.atomic import remove_partials
from xdc.config import node_ranks
from xdc.data.decode import aspect_problem, displayed_width, file_origin, may_be_too_thin, pixel_aspect
from xdc.data.jobs import run_jobs
from xdc.data.manifest import COLUMNS, iter_rows, open_paths_file, row_cells, shown, write_rows
from xdc.data.shares import (
    RowLog, collectives, earlier_rows, merged, my_share, rank_file, rank_files, remove_share_files, this_run_files,
)  # fmt: skip
from xdc.errors import UserError
from xdc.limits import usable_cpus
from xdc.progress import counted, progress_bar

if TYPE_CHECKING:  # torch, imported under torchrun only
    from xdc.training.distributed import Dist

VIDEO_EXTENSIONS = frozenset(  # .mts/.m2ts: AVCHD camcorders, .vob: DVDs, .mxf: professional cameras
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .flv .wmv .ts .mts .m2ts .vob .mxf .3gp .3g2 .asf .f4v .ogv".split()
)  # fmt: skip
AUDIO_EXTENSIONS = frozenset(".wav .flac .mp3 .ogg .m4a .aac .opus .aif .aiff .wma".split())
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS
LIST_EXTENSIONS = frozenset({".csv", ".txt", ".lst"})

# The tail check decodes from the keyframe before the last TAIL_SECONDS to the end: damage and truncation
# usually show there (a single-GOP file is then parsed whole). The packet cap bounds the cost of huge GOPs.
TAIL_SECONDS = 1.0
TAIL_MAX_PACKETS = 1500
# The checks' version, written in every probed row: a cached row made by other checks is probed again.
# 2: a cut Matroska file is an error; duration_s ends with the pictures when sound goes on after them.
# 3: streams' ends on the file's timeline, not from their own starts (a video starting after its sound got less).
# 4: a Matroska file's stated duration less its start: parts cut by FFmpeg's segment muxer were "truncated".
# 5: a picture (a PNG or JPEG named .mp4) is an error, not a video of one frame.
# 6: pictures with one side over MAX_ASPECT times the other (1 x 240) are an error, as the decoder refuses them.
PROBE_VERSION = "6"
# A probe decodes a few packets at a handful of points (807 GRID files: 340 a second on 2 cores). One that takes over
# two minutes is hung (a decoder in a loop, a stalled network file system); its file gets an error row.
PROBE_LIMIT_S = 120.0
# FFmpeg's words for EACCES and EPERM at the open: the file's access, not its content
_NOT_ALLOWED = ("cannot open: Permission denied", "cannot open: Operation not permitted")
PROBLEMS = 10  # unusable files that the summary names, with their reasons (the manifest has them all)


@dataclass
class IndexSummary:
    """Counts of one ``xdc index`` run; ``with_audio`` counts the ok rows (usable audio, audio-only included)."""

    files: int
    usable: int
    with_audio: int
    unusable: int
    probed: int  # files opened with PyAV this run (the rest came from the cache or do not exist)
    reused: int = 0  # rows of an earlier run (the manifest, or the side files of a run cut short) still current
    labelled: int | None = None  # None when no labels file was given
    unmatched: int = 0  # label rows that named no file of the collection
    unmatched_paths: list[str] = field(default_factory=list)  # the first few of them, as written
    problems: list[dict] = field(default_factory=list)  # the first PROBLEMS unusable rows, by path
    written: bool = True  # False where the manifest had these bytes already: kept as it was, time and all
    unread_folders: list[str] = field(default_factory=list)  # folders of the collection that could not be listed

    def line(self) -> str:
        text = (f"{number(self.files, 'file')}: {self.usable} usable ({self.with_audio} with audio), {self.unusable} "
                "unusable")
        if self.reused:  # a re-run: say how much of it was not probed again
            text += f"; {self.reused} unchanged since an earlier run, not probed again"
        if not self.written:
            text += "; the manifest is unchanged, not written"
        text += unread_text(self.unread_folders)
        if self.labelled is not None:
            text += f"\n{self.labelled} of {number(self.files, 'file')} labelled"
        text += unmatched_text(self.unmatched, self.unmatched_paths)
        return text


def number(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, plural (``plural``, else ``noun`` + s) but for one: a summary of one file said
    "1 files" (until 2026-12-03)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def unread_text(folders: list[str]) -> str:
    """What follows a summary line where ``folders`` of the collection could not be listed: they were warned of as
    they were met, before the probes' or the copies' output, and are said again here, the first three by name."""
    if not folders:
        return ""
    more = len(folders) - 3
    return (f"; {number(len(folders), 'folder')} could not be read, their files left out: "
            + ", ".join(map(shown, folders[:3])) + (f" and {more} more" if more > 0 else ""))


def unmatched_text(count: int, paths: list[str]) -> str:
    """What follows "N files labelled" where ``count`` label rows matched no file, the first ``paths`` of them as
    written: a typo in a label row shows there, not only as a file fewer labelled."""
    if not count:
        return ""
    more = count - len(paths)
    listed = ", ".join(paths) + (f" and {more} more" if more else "")
    return f"; {number(count, 'label row')} matched no file: {listed}"


def build_manifest(
    paths: list[str], out: Path, labels: Path | None = None, workers: int | None = None, ctx: Dist | None = None
) -> IndexSummary | None:
    """Probe every media file under ``paths`` (folders or lists of files) and write the manifest ``out``.
    Rows of an existing ``out`` whose (path, size, mtime) still match are reused without opening the file.

    Each row probed is added to a side file (``.OUT.rank0.csv``) as it comes, so that a run cut short loses no
    probe made: the next run reuses those rows as it reuses ``out``'s. Under torchrun (``ctx``) rank 0 lists the
    inputs, every rank probes its share of the files (``my_share``) and keeps its own side file; rank 0 joins them,
    labels the rows, writes ``out`` and returns the summary (the other ranks None)."""
    ctx, on_main, _, gather_objects = collectives(ctx)
    out = Path(out)
    workers = check_workers(workers)
    check_paths(paths)  # on every rank: rank 0 alone lists what is under them
    label_index, roots, unread = None, [], []  # rank 0's, made as it lists

    def listing() -> Iterator[str]:
        nonlocal label_index
        label_index = LabelIndex.from_csv(Path(labels)) if labels is not None else None
        _check_out(out)
        remove_partials(out.parent, of=out.name)  # a killed run's manifest, half written: as large as a whole one
        return list_media(paths, roots, unread=unread)

    share = my_share(listing, out, ctx, on_main)
    stats = {path: stat_row(path) for path in share}
    cache, theirs = earlier_rows(  # of this rank's share: not every row
        out, ctx, iter_rows, "path", stats, lambda row: probe_holds(row, stats[row["path"]])
    )
    rows: dict[str, dict] = {}
    todo: dict[str, dict] = {}
    reused = 0
    for path, row in stats.items():
        cached = cache.get(path)
        if "status" in row:
            rows[path] = row
        elif cached is not None and probe_holds(cached, row):
            rows[path] = dict(cached)
            reused += 1
        else:
            todo[path] = row
    side = rank_file(out, ctx.rank)
    if todo or theirs:  # each probe kept in the side file as it comes, for the next run should this one not end
        with RowLog(side, COLUMNS, row_cells) as log:
            log.add(theirs)

            def probed(path: str, probe: dict) -> None:
                rows[path] = {**todo[path], **probe, "probe": PROBE_VERSION}
                log.add([rows[path]])

            probe_files(list(todo), workers, probed, show=ctx.main)
    if ctx.enabled:  # every row of the share, sorted, for rank 0's join (alone, the rows are at hand)
        write_rows(side, [rows[p] for p in sorted(rows)])
    counts = gather_objects((len(stats), len(todo), reused), ctx)

    def finish() -> IndexSummary:
        # this run's side files (one of a run with more ranks may be left, and be older), merged as they stream:
        # rank 0 never holds more than its own share of rows
        files = this_run_files(out, ctx) if ctx.enabled else []
        every = (lambda: merged(files, iter_rows, "path")) if files else (lambda: (rows[p] for p in sorted(rows)))
        listed, probed, reused = (sum(column) for column in zip(*counts))  # over the ranks
        summary = _write_manifest(out, every, label_index, roots, listed, probed, reused)
        summary.unread_folders = unread
        for path in rank_files(out):
            path.unlink()
        remove_share_files(out)
        return summary

    return on_main(finish, ctx)


def probe_holds(cached: dict, stat: dict) -> bool:
    """Whether the probe's verdict ``cached`` (a row of an earlier run: its ``size``, ``mtime``, ``probe`` version
    and ``reason``) still holds for its file, whose ``stat_row`` is ``stat``: the same size and mtime, probed by
    these checks, and not cut short as hung (a stall of the disk, perhaps), by its worker's death (the out-of-memory
    killer, perhaps) or by a permission (``chmod`` changes no mtime), which another run may not meet."""
    reason = cached.get("reason", "")
    return (
        "status" not in stat
        and (cached.get("size"), cached.get("mtime")) == (str(stat["size"]), stat["mtime"])
        and _checks_current(cached)
        and not reason.startswith(("hung", "worker process died", *_NOT_ALLOWED))
    )


def _checks_current(cached: dict) -> bool:
    """Whether the checks that made the row ``cached`` give today's verdict. Versions 4 and 5 differ only for
    pictures whose stored size could be too thin as displayed (``may_be_too_thin``), and version 4 also
    for a picture named as a video, which it took for a video of one frame: of their rows, those of such sizes and
    of a video under a second are probed again, not a whole collection (at 340 files a second on 2 cores, half an
    hour for Kinetics' 650,000)."""
    probe = cached.get("probe")
    if probe == PROBE_VERSION:
        return True
    width = _number(cached.get("width"))
    if probe not in ("4", "5") or may_be_too_thin(width, _number(cached.get("height"))):
        return False
    return probe == "5" or not (width > 0 and _number(cached.get("duration_s")) < 1.0)


class OlderProbes:
    """The count of a manifest's rows (any status) that ``xdc index`` would probe again for the version of the
    checks that made them alone (``_checks_current``), as ``Manifest.load``'s ``chunks``: a run trained on them
    unsaid. A row without a version (added by hand) is not counted: no checks of xdc made it."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, rows: list[list[str]], header: list[str]) -> None:
        if "probe" not in header:
            return
        at = header.index("probe")
        for row in rows:
            probe = row[at] if at < len(row) else ""
            if probe and probe != PROBE_VERSION and not _checks_current(dict(zip(header, row))):
                self.rows += 1


def _number(cell: str | None) -> float:
    """A manifest cell as a number, 0 where empty."""
    try:
        return float(cell or 0)
    except ValueError:
        return 0.0


def _write_manifest(
    out: Path, rows: Callable[[], Iterator[dict]], label_index: LabelIndex | None, roots: list[Path], files: int,
    probed: int, reused: int,
) -> IndexSummary:
    """Write the manifest of ``rows()`` (sorted by path; called twice where labels are matched: once to count the
    collection's names and stems), labelled, one row at a time: as many as the collection's ``files``. ``roots``:
    the folders searched (for relative label paths)."""
    counts, total = None, files or None
    if label_index is not None:
        counts = label_index.count_names(row["path"] for row in counted(rows(), "matching labels", total))
    statuses: Counter = Counter()
    labelled = 0
    problems: list[dict] = []  # the rows come sorted by path: the first are the first by path

    def labelled_rows() -> Iterator[dict]:
        nonlocal labelled
        for chunk in chunks(counted(rows(), f"writing {out.name}", total)):
            paths = [row["path"] for row in chunk]
            found = [""] * len(chunk) if label_index is None else label_index.lookup(paths, roots, counts)
            for row, label in zip(chunk, found):
                row["label"] = label
                labelled += bool(label)
                statuses[row["status"]] += 1
                if row["status"] == "error" and len(problems) < PROBLEMS:
                    problems.append({"path": row["path"], "reason": row["reason"]})
                yield row

    # the same bytes keep their file: a re-run of a chain (index, then pretrain) must not make it look newer
    written = write_rows(out, labelled_rows(), keep_same=True)
    unmatched, unmatched_paths = label_index.unmatched() if label_index is not None else (0, [])
    return IndexSummary(
        files=sum(statuses.values()),
        usable=statuses["ok"] + statuses["no_audio"],
        with_audio=statuses["ok"],
        unusable=statuses["error"],
        probed=probed,
        reused=reused,
        labelled=labelled if label_index is not None else None,
        unmatched=unmatched,
        unmatched_paths=unmatched_paths,
        problems=problems,
        written=written,
    )


def check_workers(workers: int | None) -> int:
    """The worker processes of ``--workers``; by default the usable CPUs, shared among the node's torchrun ranks."""
    if workers is None:
        return max(1, usable_cpus() // node_ranks())
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    return workers


def _check_out(out: Path) -> None:
    """Fail before probing (which can take long) when the manifest could not be written anyway."""
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a CSV file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of --out {out}: {e.strerror or e}") from None
    # the manifest, even one unchanged (compared as a new file), and the side files are written there
    check_writable(out.parent, f"the folder of --out {out}")


def check_writable(folder: Path, what: str) -> None:
    """Fail where no new file can be written in ``folder`` (its permissions, a read-only mount), in words of
    ``what`` the user gave: without this, the first to fail was a hidden side file (.m.csv.rank0.csv), a name the
    user never gave."""
    try:
        with tempfile.TemporaryFile(dir=folder):  # unnamed where the file system can: nothing left behind
            pass
    except OSError as e:
        raise UserError(f"cannot write in {what}: {e.strerror or e}") from None


# --- finding the files -------------------------------------------------------------------------------------


def media_under(
    folder: str, found: Callable[[int], object] = lambda n: None, outside_links: str = "resolve",
    unread: list[str] | None = None,
) -> Iterator[str]:
    """The media files under the resolved ``folder``, in os.walk's order: a folder's files by name, then each of
    its subfolders' in name order. Hidden entries are skipped: they are tools' partial writes and metadata, not
    the collection; so are links to folders (a loop, or files counted twice). Only links need resolving: the
    folders walked are real, and resolving every path (22 us a file) made listing 9 times slower. A link to a
    file outside ``folder`` stays the link's own path where ``outside_links`` is "keep" (xdc prepare names its
    copy by where it is found, not by a folder elsewhere). ``found(n)`` after each folder: its n media files (for
    a progress bar: tens of millions of files take minutes). A folder that cannot be listed is a warning, and is
    added to ``unread`` where given."""
    inside = folder.rstrip("/") + "/"
    folders = [folder]
    while folders:
        current = folders.pop()
        try:
            with os.scandir(current) as listed:
                entries = sorted((e for e in listed if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:
            print(f"WARNING: cannot read the folder {shown(current)} ({e.strerror or e}): its files are left out",
                  file=sys.stderr)  # fmt: skip
            if unread is not None:
                unread.append(current)
            continue
        subfolders, media = [], 0
        for entry in entries:
            if _is_folder(entry):
                if not entry.is_symlink():
                    subfolders.append(entry.path)
            elif Path(entry.name).suffix.lower() in MEDIA_EXTENSIONS:
                media += 1
                if not entry.is_symlink():
                    yield entry.path
                    continue
                real = followed(entry.path)
                yield entry.path if outside_links == "keep" and not real.startswith(inside) else real
        found(media)
        folders.extend(reversed(subfolders))


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # as os.walk: what cannot be looked at is not walked into
        return False


def list_media(paths: list[str], roots: list[Path], outside_links: str = "resolve",
               unread: list[str] | None = None) -> Iterator[str]:  # fmt: skip
    """The media files under PATH arguments, as found, holding none: a folder is searched recursively for media
    files, a .csv/.txt/.lst file lists files (which need not have a media extension, and need not exist: missing
    ones become error rows). A file named twice (its folder and a list) comes twice. Each folder searched is added
    to ``roots`` (for relative label paths) as it is reached. Paths are absolute, links resolved, except links in
    a folder to files outside it with ``outside_links="keep"`` (``media_under``). Progress on stderr once that
    takes over a few seconds; a UserError at the end when there was none. ``unread``: see ``media_under``."""
    check_paths(paths)
    found = 0
    with progress_bar(desc="listing", unit=" files", quiet=True) as bar:

        def under(folder: Path) -> Iterator[str]:
            roots.append(folder)
            yield from media_under(str(folder), bar.update, outside_links, unread)

        for arg in paths:
            path = Path(arg).expanduser().resolve()
            if path.is_dir():
                files: Iterable[str] = under(path)
            elif path.suffix.lower() in LIST_EXTENSIONS:
                files = _listed(path, under, bar.update)
            elif path.suffix.lower() in MEDIA_EXTENSIONS:
                files = [str(path)]
            else:
                raise UserError(f"{arg} is not a folder, a media file or a list of files (.csv, .txt, .lst)")
            for file in files:
                found += 1
                yield file
    if not found:
        extensions = " ".join(sorted(MEDIA_EXTENSIONS))
        raise UserError(f"no media files found in {', '.join(paths)} (extensions: {extensions})")


def _listed(path: Path, under: Callable[[Path], Iterator[str]], listed: Callable[[], object]) -> Iterator[str]:
    """The files a list file names: each entry, or the media under it where it is a folder."""
    for entry in read_file_list(path):
        if os.path.isdir(entry):
            yield from under(Path(entry))
        else:
            listed()
            yield entry


def check_paths(paths: list[str]) -> None:
    for arg in paths:
        if not Path(arg).expanduser().exists():
            raise UserError(f"path not found: {arg}")


def read_file_list(path: Path) -> Iterator[str]:
    """Entries of a list file, resolved (relative entries against the list's folder)."""
    try:
        with open_paths_file(path, "list of files") as f:
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or ()):
                    raise UserError(f"{path}: a CSV list of files needs a 'path' column")
                entries = [row["path"] or "" for row in reader]
            else:
                # lines end at \n (or \r\n) alone: str.splitlines also splits at form feeds, U+2028 ..., which
                # a name may hold
                lines = (line.removesuffix("\r") for line in f.read().split("\n"))
                entries = [line for line in lines if not line.lstrip().startswith("#")]
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    # as realpath, not Path.resolve: a link in a loop stays as it is (an error row) rather than raise
    base, resolve = str(path.parent), _FolderResolver()
    return (resolve(spelled(base, e)) for e in entries if e.strip())


def spelled(base: str, entry: str) -> str:
    """The path a list's or labels CSV's ``entry`` names, taken against the folder ``base``: as written where
    that exists, so that a name may start or end with spaces, else without the spaces around it (typed by hand)."""
    path = os.path.join(base, os.path.expanduser(entry))
    if entry != entry.strip() and not os.path.lexists(path):
        return os.path.join(base, os.path.expanduser(entry.strip()))
    return path


# --- probing -----------------------------------------------------------------------------------------------


def stat_row(path: str) -> dict:
    """The file's cache key (size, mtime), or an error row (with a status) when it cannot be probed at all."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):  # the row names the link: say where it leads
            return {"path": path, **_failed(f"broken link: {os.path.realpath(path)} does not exist")}
        return {"path": path, **_failed("file not found")}
    except OSError as e:
        if e.errno == errno.ELOOP:  # until 2026-12-03 "cannot read: Too many levels of symbolic links"
            return {"path": path, **_failed(link_loop(path))}
        return {"path": path, **_failed(f"cannot read: {e.strerror or e}")}
    if not stat.S_ISREG(st.st_mode):
        return {"path": path, **_failed("not a regular file")}  # a FIFO or device would block the probe
    # Exact decimal seconds: a float printed by the manifest writer would round and defeat the cache.
    mtime = f"{st.st_mtime_ns // 1_000_000_000}.{st.st_mtime_ns % 1_000_000_000:09d}"
    return {"path": path, "size": st.st_size, "mtime": mtime}


def link_loop(path: str) -> str:
    """The reason of a path that the system refused for too many links on its way (ELOOP): the links in turn, back
    to the first seen again, where they go round in a loop; where that is in a folder on the way (a list file's
    entry, or a link's target), that folder's."""
    chain, end = _links_from(path)
    if chain[-1] in chain[:-1]:
        return "link loop: " + " -> ".join(chain)
    parts = end.split("/")
    for stop in range(2, len(parts)):
        folder = _links_from("/".join(parts[:stop]))[0]
        if folder[-1] in folder[:-1]:
            return f"link loop in the folders of {end}: " + " -> ".join(folder)
    return "too many links on its way (over 40 in a row)"


def _links_from(path: str) -> tuple[list[str], str]:
    """The links followed from ``path``, up to the first one seen again or one that is no link, and that last."""
    chain = [path]
    while os.path.islink(chain[-1]) and len(chain) <= 40:  # Linux gives up after 40 links too
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), os.readlink(chain[-1]))))
        if chain[-1] in chain[:-1]:
            break
    return chain, chain[-1]


def probe_files(paths: list[str], workers: int, done: Callable[[str, dict], None], show: bool = True) -> None:
    """Probe files in worker processes, calling ``done(path, row)`` for each; a file that crashes or hangs its
    process gets an error row (:mod:`xdc.data.jobs`), and the others go on."""
    if not paths:
        return
    with progress_bar(total=len(paths), desc="probing", unit="file", show=show) as progress:

        def finished(path: str, row: dict) -> None:
            done(path, row)
            progress.update()

        run_jobs(paths, _probe_job, workers, finished, failed=_failed, limit_s=lambda path: PROBE_LIMIT_S,
                 initializer=init_worker)  # fmt: skip


def init_worker() -> None:
    # At ERROR level PyAV keeps FFmpeg's last message on the exception (e.g. "moov atom not found"), which makes
    # reasons precise; the log lines themselves are dropped so they do not clutter the terminal.
    av.logging.set_level(av.logging.ERROR)
    logger = logging.getLogger("libav")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _probe_job(path: str) -> dict:
    """Worker entry point: one bad file must become a row, never an exception that ends the run."""
    try:
        return probe_file(path)
    except Exception as e:  # noqa: BLE001 - recorded as the file's reason
        return _failed(f"probe failed: {type(e).__name__}: {_first_line(e)}")


def probe_file(path: str) -> dict:
    """Open ``path``, read its metadata and prove that its streams decode. Returns the manifest fields
    status, reason, duration_s, fps, width, height, rotation, has_audio, sample_rate, channels."""
    if os.path.getsize(path) == 0:
        return _failed("empty file")
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        return _failed(f"cannot open: {_describe(e)}")
    with container:
        return _probe_container(container)


def _probe_container(container) -> dict:
    image = _image_kind(container)
    if image:  # FFmpeg reads it as a 0.04 s video at 25 fps: every clip of it would be that picture, frozen
        return _failed(f"a {image} image, not a video")
    attached = av.stream.Disposition.attached_pic  # cover art of music files is not a video
    video = next((s for s in container.streams.video if not s.disposition & attached), None)
    audio = next(iter(container.streams.audio), None)
    streams = [s for s in (video, audio) if s is not None]
    if not streams:
        return _failed("no video or audio stream")
    for s in streams:
        if s.codec_context is not None:
            s.codec_context.thread_count = 1  # parallelism is across files; threads only delay the first frame

    # Times are on the file's timeline, from its start (the earliest stream's), where read_clip's clip starts are:
    # a stream may begin later than another (a video 2 s after its sound) and end where that one does.
    origin = file_origin(container)
    duration = _header_duration(container, streams, origin)
    first, errors, scanned = _decode_first_frames(container, streams, scan_to_end=duration is None, origin=origin)
    if duration is None:
        duration = scanned
    if video is not None and video.index in first and video.index not in errors:  # as every read of a clip would
        frame = first[video.index]
        if thin := aspect_problem(displayed_width(frame.width, pixel_aspect(video)), frame.height):
            errors[video.index] = f"has {thin}"
    if duration > 0:
        tail, ends = _tail_errors(container, [s for s in streams if s.index not in errors], duration, origin)
        for index, reason in tail.items():
            errors.setdefault(index, reason)
        picture_end = ends.get(video.index, 0.0) if video is not None and video.index not in errors else 0.0
        if 0 < picture_end < duration - TAIL_SECONDS:  # sound goes on after the last picture: clips where both are
            duration = picture_end
    usable = {s.index for s in streams} - set(errors)

    result = _failed("")
    result["duration_s"] = duration
    if video is not None and video.index in first:
        frame = first[video.index]
        rate = video.average_rate or video.guessed_rate
        result.update(
            fps=float(rate) if rate else 0.0,
            width=frame.width,
            height=frame.height,
            rotation=round(-frame.rotation) % 360,  # clockwise degrees to turn the frame for display
        )
    if audio is not None and audio.index in usable:
        frame = first[audio.index]
        result.update(has_audio=1, sample_rate=frame.sample_rate, channels=frame.layout.nb_channels)

    if video is not None and video.index not in usable:
        result["reason"] = f"video stream {errors[video.index]}"
    elif video is None and audio.index not in usable:
        result["reason"] = f"audio stream {errors[audio.index]}"
    elif duration <= 0:
        result["reason"] = "zero duration"
    elif audio is None:
        result.update(status="no_audio", reason="no audio stream")
    elif audio.index not in usable:
        result.update(status="no_audio", reason=f"audio stream {errors[audio.index]}")
    else:
        result.update(status="ok", reason="")
    return result


def _image_kind(container) -> str:
    """The kind of picture (PNG, JPEG, ...) where FFmpeg opened the file with one of its image readers (each named
    KIND_pipe), which take a still image for a video stream; "" otherwise. (Its image2 reader goes by the name's
    extension: not chosen for a media file's.)"""
    name = container.format.name
    return name.removesuffix("_pipe").upper() if name.endswith("_pipe") else ""


def stated_duration(container) -> float:
    """The length the header of the open ``container`` states, in seconds from its start (as ``duration_s``, before
    the probe checks it against the data); 0.0 where it states none."""
    streams = [*container.streams.video, *container.streams.audio]
    return _header_duration(container, streams, file_origin(container)) or 0.0


def _header_duration(container, streams, origin: float) -> float | None:
    """The duration the header states: the container's, else where the last stream with a duration ends on the
    file's timeline (a stream's duration counts from its own start, ``origin`` is the file's); None if none.
    FFmpeg's Matroska muxer writes as the Segment's Duration where the last frame ends, timestamps counted from 0,
    and its demuxer reports that as the duration: a file whose timestamps start later (a part cut by FFmpeg's
    segment muxer, which keeps them) is that much shorter, and it seemed cut short where it ends."""
    if container.duration:
        duration = container.duration / av.time_base
        return duration - origin if "matroska" in container.format.name.split(",") else duration

    def end(s) -> float:
        start = float(s.start_time * s.time_base) if s.start_time is not None else origin
        return start + float(s.duration * s.time_base) - origin

    ends = [end(s) for s in streams if s.duration]
    return max(ends) if ends else None


class _Decoding:
    """One stream's decoding during one pass over the file. A pass can start inside a frame (after a seek in
    MPEG-PS, which has no exact index, or in a TS cut from a broadcast), so an error before the stream's first
    packet that decodes is held back: it only counts when nothing decodes after it."""

    def __init__(self, origin: float) -> None:
        self.origin = origin  # the file's start (seconds): times in reasons are from there
        self.first = None  # first decoded frame
        self.frames = 0
        self.packets = 0  # packets with data decoded without error
        self.early = ""
        self.error = ""

    def feed(self, packet) -> None:
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            reason = f"failed to decode at {_packet_time(packet, self.origin):.1f}s: {_describe(e)}"
            if self.packets:
                self.error = reason
            else:
                self.early = self.early or reason
            return
        self.packets += packet.size > 0  # not the empty packet that flushes the decoder at the end
        self.frames += len(frames)
        if self.first is None and frames:
            self.first = frames[0]

    def failure(self, nothing: str, frames_required: bool = True) -> str:
        """Why the stream is unusable ("" when it is not); ``nothing`` is the reason when nothing decoded.
        Without ``frames_required``, packets that decode without error suffice."""
        if self.error:
            return self.error
        return "" if (self.frames if frames_required else self.packets) else self.early or nothing


def _decode_first_frames(container, streams, scan_to_end: bool, origin: float) -> tuple[dict, dict, float]:
    """Decode the first frame of each stream. Returns (first frame by stream index, failure by stream index,
    end of the last packet seen in seconds from the file's start ``origin``). With ``scan_to_end`` it goes on
    demuxing (not decoding) to the end of the file, for containers that do not state their duration."""
    decoding = {s.index: _Decoding(origin) for s in streams}
    pending = set(decoding)
    end = 0.0
    try:
        for packet in container.demux(streams):
            end = max(end, _packet_end(packet, origin))
            index = packet.stream.index
            if index in pending:
                decoding[index].feed(packet)
                if decoding[index].first is not None or decoding[index].error:
                    pending.discard(index)
            if not pending and not scan_to_end:
                break
    except av.FFmpegError as e:
        for index in pending:
            decoding[index].error = f"failed to read: {_describe(e)}"
    first = {i: d.first for i, d in decoding.items() if d.first is not None}
    errors = {i: reason for i, d in decoding.items() if (reason := d.failure("has no decodable frame"))}
    return first, errors, end


def _tail_errors(container, streams, duration: float, origin: float) -> tuple[dict[int, str], dict[int, float]]:
    """Decode the end of each stream; a stream that fails there, or yields nothing, is broken for clips sampled
    near its end. So is every stream when none reaches the last second (a truncated file whose header promises
    more than is there: Matroska states its duration first, and a seek past the data lands on the last
    keyframe that is there). Video is decoded with non-key pictures skipped: FFmpeg still parses every packet,
    which is where damaged streams fail (h264 conceals errors inside pictures rather than raising), at a
    fraction of the cost. Returns each broken stream's reason, and where each stream's data ends (seconds from
    the file's start ``origin``, as ``duration``; empty when the pass stopped before the end of the file)."""
    if not streams:
        return {}, {}
    for s in streams:
        if s.type == "video" and s.codec_context is not None:
            s.codec_context.skip_frame = "NONKEY"
    anchor = streams[0]
    target = int((origin + max(duration - TAIL_SECONDS, 0)) / anchor.time_base)
    decoding = {s.index: _Decoding(origin) for s in streams}
    ends = dict.fromkeys(decoding, 0.0)
    read_to_end = True
    try:
        container.seek(target, stream=anchor, backward=True)
        for n, packet in enumerate(container.demux(streams)):
            if n >= TAIL_MAX_PACKETS:
                read_to_end = False
                break
            ends[packet.stream.index] = max(ends[packet.stream.index], _packet_end(packet, origin))
            if not decoding[packet.stream.index].error:
                decoding[packet.stream.index].feed(packet)
    except av.FFmpegError as e:
        for d in decoding.values():
            d.error = d.error or f"failed to read near the end: {_describe(e)}"
    # A seek may land after the last keyframe (MPEG-TS seeks by timestamp only): packets that decode without
    # error then yield no picture, which is fine; no packet at all means the data stops before the end.
    nothing = f"has no data in its last {TAIL_SECONDS:g}s (truncated?)"
    end = max(ends.values())
    if read_to_end and 0 < end < duration - TAIL_SECONDS:  # 0: no packet had a timestamp, nothing to compare
        nothing = f"ends at {end:.1f}s of the {duration:.1f}s its header states (truncated?)"
        for d in decoding.values():
            d.error = d.error or nothing
    errors = {i: reason for i, d in decoding.items() if (reason := d.failure(nothing, frames_required=False))}
    return errors, ends if read_to_end else {}


def _packet_end(packet, origin: float) -> float:
    """Where the packet ends, in seconds from the file's start ``origin``: not from its stream's own start, which
    may be later (a video that begins 2 s after its sound and ends with it ended 2 s early)."""
    if packet.pts is None or packet.time_base is None:
        return 0.0
    return float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin


def _packet_time(packet, origin: float) -> float:
    if packet.pts is None or packet.time_base is None:
        return 0.0
    return float(packet.pts * packet.time_base) - origin


def _failed(reason: str) -> dict:
    return {
        "status": "error", "reason": reason, "duration_s": 0.0, "fps": 0.0, "width": 0, "height": 0,
        "rotation": 0, "has_audio": 0, "sample_rate": 0, "channels": 0,
    }  # fmt: skip


def _describe(e: av.FFmpegError) -> str:
    """FFmpeg's error text without the file name, plus its last log message when it says more."""
    text = e.strerror or _first_line(e)
    log = getattr(e, "log", None)
    detail = log[2].strip() if log else ""
    return f"{text} ({detail})" if detail and detail not in text else text


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# --- labels ------------------------------------------------------------------------------------------------

# The ways a label row names a file, in the order a file's label is looked for: its absolute path (after links),
# its path relative to a folder searched, its basename and its stem (those two where unique in the collection).
_KINDS = ("abs", "rel", "name", "stem")
_NONE = -1  # the label id of a key that no row gives, or that rows give different labels: it matches nothing
_CHUNK = 4096  # paths labelled at a time: a chunk's keys are looked up together


def _second_half(key: str) -> int:
    """A key's 128 bits are hash(key) and this. Python's string hash is SipHash under a secret drawn per process:
    the two halves are as good as independent, and fast (a third of a blake2b digest's time), and the tables
    never leave the process that made them. The chance that two of 100M keys share both halves is about 10^-23."""
    return hash(key + "\0")


@dataclass
class _Keys:
    """The keys of one kind as their two 64-bit halves, sorted, each with its label id."""

    hi: np.ndarray  # int64
    lo: np.ndarray  # int64
    label: np.ndarray  # int32; _NONE where rows give the key different labels
    of_row: np.ndarray  # int32: the position of the key of each label spelling, in the CSV's order

    @classmethod
    def of(cls, halves: array, labels: np.ndarray, trimmed: np.ndarray) -> _Keys:
        """The table of ``halves`` (hi, lo of each row's key), row i labelled ``labels[i]``; a key of several rows
        keeps their label where they all give the same one, counting only the rows that spell it as written where
        any does (``trimmed``: the rows whose key is their path without the spaces around it)."""
        pairs = np.frombuffer(halves, dtype=np.int64).reshape(-1, 2)
        order = np.lexsort((trimmed, pairs[:, 1], pairs[:, 0]))
        hi, lo, labels, trimmed = pairs[order, 0], pairs[order, 1], labels[order], trimmed[order]
        new = np.ones(len(hi), dtype=bool)
        new[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        of_row = np.empty(len(order), dtype=np.int32)  # each key keeps its first row below: positions hold
        of_row[order] = np.cumsum(new) - 1
        keep = trimmed <= trimmed[np.flatnonzero(new)][np.cumsum(new) - 1]  # as its key's first row (the least)
        hi, lo, labels, new = hi[keep], lo[keep], labels[keep], new[keep]
        starts = np.flatnonzero(new)
        if not len(starts):
            return cls(hi, lo, labels.astype(np.int32), of_row)
        agree = np.minimum.reduceat(labels, starts) == np.maximum.reduceat(labels, starts)
        return cls(hi[starts], lo[starts], np.where(agree, labels[starts], _NONE).astype(np.int32), of_row)

    def find(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(position in the table, label id) of each of ``keys``: -1 and _NONE where the table does not have it."""

        def second(ask: np.ndarray) -> np.ndarray:
            return np.fromiter((_second_half(keys[i]) for i in ask), dtype=np.int64, count=len(ask))

        at = self.positions(np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys)), second)
        return at, np.where(at >= 0, self.label[np.maximum(at, 0)] if len(self.label) else _NONE, _NONE)

    def positions(self, hi: np.ndarray, second: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The position in the table of each key with the first half ``hi``, -1 where it is not there.
        ``second(i)``: the second halves of the keys ``i``, asked only of keys whose first half is in the table."""
        if not len(self.hi):
            return np.full(len(hi), -1)
        at = np.searchsorted(self.hi, hi)  # the first of the table's keys with that first half, if any
        ask = np.flatnonzero((at < len(self.hi)) & (self.hi[np.minimum(at, len(self.hi) - 1)] == hi))
        lo = second(ask)
        found = np.zeros(len(hi), dtype=bool)
        found[ask] = self.lo[at[ask]] == lo
        for i, low in zip(ask[~found[ask]], lo[~found[ask]]):  # keys whose first halves agree: look along their run
            j = at[i] + 1
            while j < len(self.hi) and self.hi[j] == hi[i] and self.lo[j] != low:
                j += 1
            if j < len(self.hi) and self.hi[j] == hi[i]:
                at[i], found[i] = j, True
        return np.where(found, at, -1)


@dataclass
class NameCounts:
    """How many files of the collection have each basename and each stem that a label row names, by the
    positions of LabelIndex.keys["name"] and ["stem"]: only a basename or stem unique in the collection names a
    file."""

    name: np.ndarray  # int32
    stem: np.ndarray


@dataclass
class LabelIndex:
    """Label rows indexed by each way a row can name a file (see docs/index.md, "Labels"), the keys kept as
    128-bit hashes in sorted arrays: 80 bytes a row, 21 to tell the rows that named no file, and 8 for the counts of
    names and stems. Dicts of the strings took 430, and the counts' Counters up to 200 more: at 65M rows, 27 GB
    and 39 at the peak of matching, where these take 6.1 and 9.8 (BENCHMARKS.md, "Listing a collection")."""

    labels: list[str]  # by id
    keys: dict[str, _Keys]  # by kind
    trimmed: np.ndarray  # int8 by label spelling: 1 for a row's path without the spaces around it (after it)
    source: Path  # the labels CSV, read again to name the first of its rows that matched no file
    named: dict[str, np.ndarray]  # by kind: whether each key has named a file that lookup was asked of
    # The string hash of this process: another process (another PYTHONHASHSEED) would hash the keys otherwise and
    # match nothing, or the wrong files. The index is made and used by one process; this makes sure of it.
    salt: int = field(default_factory=lambda: hash("xdc labels"))

    def _check_process(self) -> None:
        if hash("xdc labels") != self.salt:
            raise RuntimeError("a LabelIndex is used by another process than the one that made it (its keys are "
                               "hashed with that process's string hash)")  # fmt: skip

    @classmethod
    def from_csv(cls, path: Path) -> LabelIndex:
        """The rows of the labels CSV ``path``, read one at a time."""
        base, resolve = path.resolve().parent, _FolderResolver()
        ids: dict[str, int] = {}
        halves = {kind: array("q") for kind in _KINDS}
        label_ids, trimmed = array("i"), array("b")
        for raw, label in read_label_rows(path):
            # a path with spaces around it names the file spelled so, or, typed by hand, the one without them
            for spelling in dict.fromkeys((raw, raw.strip())):
                label_ids.append(ids.setdefault(label, len(ids)))
                trimmed.append(spelling != raw)
                relative = os.path.normpath(spelling)  # a row naming a folder ("a/..") names no file either way
                name, stem = name_and_stem(relative)
                absolute = resolve(os.path.join(base, os.path.expanduser(spelling)))
                for kind, key in zip(_KINDS, (absolute, relative, name, stem)):
                    halves[kind].extend((hash(key), _second_half(key)))
        if not label_ids:  # before any file is probed or copied with no label to give it
            raise UserError(f"{path} has no row with both a path and a label")
        rows = np.frombuffer(label_ids, dtype=np.intc)  # array("i") holds C ints
        trims = np.frombuffer(trimmed, dtype=np.int8)
        keys = {kind: _Keys.of(halves.pop(kind), rows, trims) for kind in _KINDS}  # each freed once sorted
        named = {kind: np.zeros(len(keys[kind].hi), dtype=bool) for kind in _KINDS}
        return cls(list(ids), keys, trims, path, named)

    def count_names(self, paths: Iterable[str]) -> NameCounts:
        """NameCounts of the collection ``paths``: only of the names and stems label rows give, so that the counts
        take the labels' memory, not the collection's."""
        self._check_process()
        counts = NameCounts(*(np.zeros(len(self.keys[kind].hi), dtype=np.int32) for kind in ("name", "stem")))
        for chunk in chunks(paths):
            names = [name_and_stem(path) for path in chunk]
            for i, kind in enumerate(("name", "stem")):
                at, _ = self.keys[kind].find([named[i] for named in names])
                np.add.at(getattr(counts, kind), at[at >= 0], 1)
        return counts

    def lookup(self, paths: list[str], roots: list[Path], counts: NameCounts) -> list[str]:
        """The label of each of the absolute, normalised ``paths`` ("" for none): that of the first way of naming
        it (_KINDS; relative to each of the ``roots`` in turn) that one label alone gives."""
        self._check_process()
        found = np.full(len(paths), _NONE, dtype=np.int32)
        every = np.arange(len(paths))

        def take(rows: np.ndarray, label: np.ndarray) -> None:  # rows not yet labelled get ``label``'s labels
            free = (found[rows] == _NONE) & (label != _NONE)
            found[rows[free]] = label[free]

        at, label = self.keys["abs"].find(paths)
        self.named["abs"][at[at >= 0]] = True
        take(every, label)
        for root in roots:
            inside = str(root).rstrip("/") + "/"
            rows = np.array([i for i, path in enumerate(paths) if path.startswith(inside)], dtype=np.int64)
            at, label = self.keys["rel"].find([paths[i][len(inside) :] for i in rows])
            self.named["rel"][at[at >= 0]] = True
            take(rows, label)
        names = [name_and_stem(path) for path in paths]
        for i, kind in enumerate(("name", "stem")):
            at, label = self.keys[kind].find([named[i] for named in names])
            unique = (at >= 0) & (getattr(counts, kind)[np.maximum(at, 0)] == 1)
            self.named[kind][at[unique]] = True  # a name that several files have names none of them
            take(every, np.where(unique, label, _NONE))
        return [self.labels[i] if i != _NONE else "" for i in found.tolist()]

    def unmatched(self, shown: int = 3) -> tuple[int, list[str]]:
        """How many rows of the labels CSV named none of the files that lookup was asked of, in any way, and the
        paths of the first ``shown`` of them as written (the CSV read again up to them)."""
        hit = np.zeros(len(self.trimmed), dtype=bool)
        for kind in _KINDS:
            hit |= self.named[kind][self.keys[kind].of_row]
        row = np.cumsum(self.trimmed == 0, dtype=np.int64) - 1  # a path without its spaces follows it, as trimmed
        missed = np.flatnonzero(np.bincount(row[hit], minlength=int(row[-1]) + 1) == 0)
        if not len(missed):
            return 0, []
        wanted = set(missed[:shown].tolist())
        read = itertools.islice(read_label_rows(self.source), max(wanted) + 1)
        return len(missed), [raw for i, (raw, _) in enumerate(read) if i in wanted]


def match_labels(paths: list[str], labels: Path | LabelIndex) -> list[str]:
    """The label of each of ``paths`` (absolute, normalised: a manifest's) by the rows of the labels CSV ``labels``
    (or its LabelIndex, whose ``unmatched`` then tells the rows that named none of them) and xdc index's rules, a
    relative row taken against the labels file's folder or the folder that holds every one of ``paths`` (for a
    manifest of one folder, the folder searched); "" where no row matches."""
    label_index = labels if isinstance(labels, LabelIndex) else LabelIndex.from_csv(labels)
    roots = [Path(os.path.commonpath({os.path.dirname(path) for path in paths}))] if paths else []
    counts = label_index.count_names(paths)
    return [label for chunk in chunks(paths) for label in label_index.lookup(chunk, roots, counts)]


def chunks(items: Iterable, size: int = _CHUNK) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def name_and_stem(path: str) -> tuple[str, str]:
    """PurePath(path).name and .stem of a normalised path (no trailing /, no . parts), without the path object:
    the stem drops the name's last dot and what follows, where the dot neither starts nor ends the name."""
    name = path[path.rfind("/") + 1 :]
    dot = name.rfind(".")
    return name, name[:dot] if 0 < dot < len(name) - 1 else name


class _FolderResolver:
    """os.path.realpath of many absolute paths in few folders, each folder resolved once: then a path needs only
    a look at whether its name is a link, where realpath looks at every component (21 us a label row before).
    As realpath, a link in a loop stays as it is rather than raise (Path.resolve); so does a link that leads
    nowhere (``followed``)."""

    def __init__(self) -> None:
        self.folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if ".." in path.split("/"):  # realpath resolves what comes before a .. first: normpath would not
            real = os.path.realpath(path)
            if os.path.exists(real) or not os.path.islink(path):
                return real
            return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        folder, name = os.path.split(os.path.normpath(path))
        real = self.folders.get(folder)
        if real is None:
            real = self.folders[folder] = os.path.realpath(folder)
        path = os.path.join(real, name)
        return followed(path) if os.path.islink(path) else path


def followed(link: str) -> str:
    """Where the link ``link`` (in a resolved folder) leads, or the link itself where that is nowhere (a missing
    file, a loop): its error row then names the file the user has, not a name nothing in the collection shows."""
    real = os.path.realpath(link)
    return real if os.path.exists(real) else link


def read_label_rows(path: Path) -> Iterator[tuple[str, str]]:
    """(path, label) of each row of the labels CSV ``path`` that has both, one row at a time: the path as written
    (spaces around it kept), the label without spaces around it."""
    try:
        with open_paths_file(path, "labels CSV") as f:
            reader = csv.reader(f)
            columns = [c.strip() for c in next(reader, [])]
            if not {"path", "label"} <= set(columns):
                found = ", ".join(columns) or "nothing"
                raise UserError(f"{path}: a labels CSV needs a header with columns path and label (found: {found})")
            where = columns.index("path"), columns.index("label")
            for row in reader:
                raw, label = (row[i] if i < len(row) else "" for i in where)
                if raw.strip() and label.strip():
                    yield raw, label.strip()
    except FileNotFoundError:
        raise UserError(f"labels file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read labels {path}: {e.strerror or e}") from None
