"""The manifest: one CSV row per media file of a collection, written by ``xdc index``.

Datasets hold it as a few numpy arrays (:class:`Manifest`) rather than a list of Python objects: DataLoader
workers then share those pages with the parent instead of copying them as reference counts change.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import shutil
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from xdc.atomic import replacing
from xdc.errors import UserError
from xdc.progress import progress_bar

COLUMNS = (
    "path", "status", "reason", "duration_s", "fps", "width", "height", "rotation",
    "has_audio", "sample_rate", "channels", "label", "size", "mtime", "probe",
)  # fmt: skip
STATUSES = ("ok", "no_audio", "error")


# A file name is bytes. Python hands the bytes of a name that are not UTF-8 over as lone surrogates (os.fsdecode),
# and "surrogateescape" writes them back as the same bytes: such a file keeps its name through every file that
# holds paths (manifests, reports, side files, a run's videos), which are UTF-8 whatever the locale.
def open_text(path: str | Path, mode: str = "r"):
    """A text file that holds paths, for csv (newline="")."""
    return open(path, mode, newline="", encoding="utf-8", errors="surrogateescape")


def open_paths_file(path: Path, what: str) -> TextIO:
    """A text file of paths that a user gives (a list of files, a labels CSV, a table; open_text is for xdc's
    own), for csv: a BOM skipped, names that are not UTF-8 read as the bytes they are (``find > files.txt`` writes
    them so). A binary file is a UserError naming ``what`` it should have been."""
    f = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    if "\0" in f.read(4096):
        f.close()
        raise UserError(f"{path}: not a text {what} (a binary file, or text in UTF-16: save it as UTF-8)")
    f.seek(0)
    return f


def encode_paths(text: str) -> bytes:
    """Text that holds paths as bytes (a path in the arrays of :class:`Manifest`, rows for a side file)."""
    return text.encode("utf-8", "surrogateescape")


def decode_paths(raw: bytes) -> str:
    """The text of ``encode_paths``."""
    return raw.decode("utf-8", "surrogateescape")


def shown(path: str) -> str:
    """``path`` printed on one line: a newline or tab in a name, and a byte that is not UTF-8, as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


def write_rows(path: str | Path, rows: Iterable[dict], keep_same: bool = False) -> bool:
    """Write manifest rows atomically (a reader never sees half a file); a UserError where it cannot be written.
    With ``keep_same``, a file at ``path`` of the same bytes is kept as it is (``replacing``); returns whether
    ``path`` was written."""

    def write(f) -> None:
        writer = csv.writer(f)  # lists, not csv.DictWriter's dicts: 4 -> 2.2 us a row (rank 0 writes 65M)
        writer.writerow(COLUMNS)
        writer.writerows(map(row_cells, rows))

    return write_atomic(Path(path), write, keep_same)


def row_cells(row: dict) -> list[str]:
    """A manifest row's cells, in the order of COLUMNS."""
    return [_cell(row.get(k)) for k in COLUMNS]


def write_atomic(path: Path, write: Callable, keep_same: bool = False) -> bool:
    """Call ``write`` on a temporary text file beside ``path``, then rename it into place (a reader never sees
    half a file); a UserError where it cannot be written (``replacing``, which ``keep_same`` is passed to). The
    temporary file is this process's (``partial_path``; until 2026-12-01 ``PATH.tmp``, which two processes writing
    one path shared). Returns whether ``path`` was written."""
    before = _identity(path)
    with replacing(path, keep_same=keep_same) as tmp, open_text(tmp, "w") as f:
        write(f)
    return before is None or _identity(path) != before


def _identity(path: Path) -> tuple[int, int, int] | None:
    """The file at ``path`` (device, inode and time), which a file renamed onto it does not share; None if none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def read_rows(path: str | Path) -> list[dict]:
    return list(iter_rows(path))


def iter_rows(path: str | Path, keep: Container[str] | None = None) -> Iterator[dict]:
    """The rows of a manifest one at a time: a reader holds one row, however long the file. With ``keep``, only
    those whose path is in it (``dict_rows``)."""
    path = Path(path)
    try:
        with open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, [])
            missing = {"path", "status", "duration_s", "has_audio"} - set(header)
            if missing:
                raise UserError(f"{path} is not an xdc manifest (missing columns: {', '.join(sorted(missing))})")
            yield from dict_rows(reader, header, "path", keep)
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None


def dict_rows(rows: Iterator[list[str]], header: list[str], key: str, keep: Container[str] | None) -> Iterator[dict]:
    """``rows`` (a csv.reader past ``header``) as csv.DictReader gives them: blank lines skipped, missing cells
    None, extra ones in a list under None. With ``keep``, only the rows whose ``key`` cell is in it: the others
    are never made into dicts, so a rank that picks its share of an earlier manifest reads it 2.2x faster."""
    n, at = len(header), header.index(key)
    for row in rows:
        if not row or (keep is not None and (row[at] if at < len(row) else None) not in keep):
            continue
        if len(row) == n:
            yield dict(zip(header, row))
        else:
            cells = dict(zip(header, row + [None] * (n - len(row))))
            if len(row) > n:
                cells[None] = row[n:]
            yield cells


def _cell(value) -> str:
    if type(value) is str:  # most cells: rows read back from a manifest
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@dataclass
class Manifest:
    """The usable files of a manifest as flat arrays (index i is video i everywhere).

    A row may stand for a segment of its file (e.g. a window around a spoken word): clips are then drawn from
    ``[offsets[i], offsets[i] + durations[i])``; for whole files the offset is 0.
    """

    paths: np.ndarray  # bytes, fixed width ('S'): no per-item Python objects
    durations: np.ndarray  # float64 seconds (of the segment)
    offsets: np.ndarray  # float64 seconds from the start of the file
    has_audio: np.ndarray  # bool
    has_video: np.ndarray  # bool: False for audio-only files (wav, flac, ...)
    labels: np.ndarray  # int32 index into ``classes``, -1 where unlabelled
    classes: tuple[str, ...]
    # int64 bytes of each file as indexed, -1 where unknown (a manifest without the column, an empty cell, a run's
    # videos/ saved before 2026-12-02): the readers compare it with the file they open (``read_clips``' size).
    # None: unknown for every row, as one read-only -1 that holds no memory per video.
    sizes: np.ndarray | None = None

    def __post_init__(self):
        if self.sizes is None:
            self.sizes = unknown_sizes(len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        return decode_paths(self.paths[i])

    def subset(self, mask: np.ndarray) -> Manifest:
        """The rows where ``mask`` (bool) is True; ``self`` itself, not a copy, when that is every row."""
        if mask.dtype == bool and mask.all():
            return self
        arrays = {field: getattr(self, field)[mask] for field in _ARRAYS}
        return dataclasses.replace(self, **arrays)

    def save(self, folder: str | Path) -> None:
        """Write the arrays as ``.npy`` files and the classes as ``classes.json`` into ``folder`` (replaced whole:
        written beside it, then renamed into place)."""
        folder = Path(folder)
        with replacing(folder, folder.with_name(folder.name + ".tmp")) as tmp:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for field in _ARRAYS:
                np.save(tmp / f"{field}.npy", getattr(self, field))
            (tmp / "classes.json").write_text(json.dumps(list(self.classes)))
            shutil.rmtree(folder, ignore_errors=True)  # a folder is renamed onto an empty place only

    @classmethod
    def open(cls, folder: str | Path) -> Manifest:
        """A manifest written by :meth:`save`, its arrays memory-mapped read-only: every process that opens the
        folder (the ranks of a node, their loader workers) shares one copy in the page cache."""
        folder = Path(folder)

        def read(name: str, load: Callable):
            try:
                return load(folder / name)
            except ValueError as e:  # a file cut short or damaged (a copy that stopped): say which
                raise ValueError(f"{folder / name}: {e}") from None

        def array(path: Path) -> np.ndarray:
            return np.load(path, mmap_mode="r")

        arrays = {field: read(f"{field}.npy", array) for field in _ARRAYS if field != "sizes"}
        try:
            arrays["sizes"] = read("sizes.npy", array)
        except FileNotFoundError:  # saved before 2026-12-02: the files are not checked
            pass
        lengths = {field: len(values) for field, values in arrays.items()}
        if len(set(lengths.values())) > 1:  # row i is no longer video i in every array
            raise ValueError(f"{folder}: its arrays are of different lengths ({lengths})")
        classes = read("classes.json", lambda path: json.loads(path.read_text(encoding="utf-8")))
        return cls(**arrays, classes=tuple(classes))

    @classmethod
    def from_rows(cls, rows: list[dict], require_audio: bool = False) -> Manifest:
        """Keep the usable rows (status ok, or no_audio unless ``require_audio``)."""
        columns = {name: i for i, name in enumerate(_READ)}
        cells = [[r.get(name) or "" for name in _READ] for r in rows]
        codes: dict[str, int] = {}
        return _join([_parse(cells, columns, _allowed(require_audio), codes)], codes)

    @classmethod
    def load(
        cls, path: str | Path, require_audio: bool = False, progress: bool = False,
        chunks: Callable[[list[list[str]], list[str]], None] | None = None,
    ) -> Manifest:
        """The usable rows of the manifest file ``path``, read a chunk of rows at a time: at tens of millions
        of rows, a list of every row as a dict (about 1 KB each) would not fit in memory. With ``progress``,
        progress on stderr (:mod:`xdc.progress`) for files of ``_PROGRESS_BYTES`` or more (65M rows take about two
        minutes). ``chunks``, where given, is called with each chunk of rows (every status, as lists of cells) and
        the header: for what the arrays do not keep, in the same single read of the file."""
        path = Path(path)
        codes: dict[str, int] = {}
        blocks, parts = [], []
        with _said_as_manifest(path):
            size = path.stat().st_size
            show = progress and size >= _PROGRESS_BYTES
            with open_text(path) as f, progress_bar(
                total=size, desc=f"reading {path.name}", unit="B", unit_scale=True, show=show, leave=False
            ) as bar:
                reader = csv.reader(_counted(f, bar))
                header = next(reader, [])
                columns = _columns(path, header)
                while chunk := list(itertools.islice(reader, _CHUNK_ROWS)):
                    if chunks is not None:
                        chunks(chunk, header)
                    try:
                        parts.append(_parse(chunk, columns, _allowed(require_audio), codes))
                    except _NotANumber as e:  # a hand edit, or files joined with their headers (docs/index.md)
                        line = reader.line_num - (len(chunk) - 1 - e.row)
                        raise UserError(f"{path} line {line}: {e}") from None
                    if len(parts) == _CHUNKS_PER_BLOCK:
                        blocks.append(_concat(parts))
                        parts = []
        manifest = _join(blocks + parts, codes)
        if len(manifest) == 0:
            raise UserError(f"{path}: no usable files" + (" with audio" if require_audio else ""))
        return manifest


def first_of_each_path(manifest: Manifest, source: str | Path) -> tuple[Manifest, np.ndarray]:
    """``manifest`` with only the first row of each path, and the rows left out (ascending): a file listed twice (two
    manifests joined whole, say) would be trained on twice and clustered as two videos. Rows of one path with
    different labels are a UserError naming ``source``: which label is right is the user's to say. Hashes of the
    paths find the candidates (at 65M rows, sorting the paths themselves takes minutes); only rows whose hash
    recurs are compared whole."""
    hashes = _path_hashes(manifest.paths)
    ordered = np.sort(hashes)
    recurring = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(recurring):
        return manifest, np.array([], dtype=np.int64)
    rows = np.flatnonzero(np.isin(hashes, recurring))  # ascending: the first row of a path comes first
    _, first, group = np.unique(manifest.paths[rows], return_index=True, return_inverse=True)
    firsts = rows[first][group.reshape(-1)]  # for each candidate row, the first row of its path
    later = firsts != rows
    if not later.any():  # hashes alike, paths not
        return manifest, np.array([], dtype=np.int64)
    later, firsts = rows[later], firsts[later]
    labels = manifest.labels
    differ = np.flatnonzero(labels[later] != labels[firsts])
    if len(differ):
        row, first_row = int(later[differ[0]]), int(firsts[differ[0]])
        names = [manifest.classes[labels[i]] if labels[i] >= 0 else "(none)" for i in (first_row, row)]
        raise UserError(f"{source}: {manifest.path(row)} is listed twice, with labels {names[0]} and {names[1]}: "
                        "keep the row with the right one")  # fmt: skip
    keep = np.ones(len(manifest), dtype=bool)
    keep[later] = False
    return manifest.subset(keep), np.sort(later)


def _path_hashes(paths: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
    """A 64-bit hash of each path ('S' array), a block of ``rows`` at a time: the paths as 8-byte words, each
    mixed in with a multiply and a shift (as MurmurHash3's finalizer), with no Python object per path."""
    width = paths.dtype.itemsize
    words = -(-width // 8)
    out = np.empty(len(paths), dtype=np.uint64)
    k1, k2, shift = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)
    for start in range(0, len(paths), rows):
        block = np.ascontiguousarray(paths[start : start + rows])
        padded = np.zeros((len(block), words * 8), dtype=np.uint8)
        padded[:, :width] = block.view(np.uint8).reshape(len(block), width)
        h = np.zeros(len(block), dtype=np.uint64)
        for word in padded.view(np.uint64).T:
            h = (h ^ word) * k1
            h ^= h >> shift
        h *= k2
        out[start : start + len(block)] = h ^ (h >> shift)
    return out


_ARRAYS = ("paths", "durations", "offsets", "has_audio", "has_video", "labels", "sizes")
_READ = ("path", "status", "duration_s", "has_audio", "width", "label", "size")  # what a Manifest keeps of a row
_REQUIRED = ("path", "status", "duration_s", "has_audio")
_CHUNK_ROWS = 1024  # rows parsed at a time: small lists stay in cache (1.3 s per million rows here; 2.5 s at 65,536)
# Parsed chunks are joined into blocks of megabytes, which the allocator maps and unmaps whole: the heap that
# holds a chunk's small arrays is reused by the next chunk instead of growing with the manifest, and the
# blocks are handed back to the system as they are joined into the result.
_CHUNKS_PER_BLOCK = 64
_PROGRESS_BYTES = 64 * 2**20  # about half a million rows


def _counted(lines, bar):
    """The lines, counting their characters into ``bar`` (a tqdm in bytes: equal for ASCII paths)."""
    for count, line in enumerate(lines, 1):
        bar.n += len(line)
        if count % 65536 == 0:
            bar.refresh()
        yield line
    bar.n = bar.total
    bar.refresh()


def unknown_sizes(n: int) -> np.ndarray:
    """``n`` sizes of -1 (unknown: not checked), read-only, in the memory of one."""
    return np.broadcast_to(np.int64(-1), (n,))


def check_manifest_file(path: str | Path) -> None:
    """The one-line error of Manifest.load where ``path`` is no manifest (not there, a folder, other columns), from
    its first line alone: for a command to say before it writes anything (a run folder for a mistyped --data)."""
    path = Path(path)
    with _said_as_manifest(path), open_text(path) as f:
        _columns(path, next(csv.reader(f), []))


@contextmanager
def _said_as_manifest(path: Path) -> Iterator[None]:
    """A manifest ``path`` that is not there, or is a folder, as a one-line UserError."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"manifest not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a manifest: make one with `xdc index {path} --out "
                        f"manifest.csv`") from None  # fmt: skip


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """Position of each column of _READ in ``header``; width, label and size may be absent (then read as "")."""
    missing = set(_REQUIRED) - set(header)
    if missing:
        raise UserError(f"{path} is not an xdc manifest (missing columns: {', '.join(sorted(missing))})")
    return {name: header.index(name) for name in _READ if name in header}


def _allowed(require_audio: bool) -> tuple[str, ...]:
    return ("ok",) if require_audio else ("ok", "no_audio")


def _parse(rows: list[list[str]], columns: dict[str, int], allowed: tuple[str, ...], codes: dict[str, int]) -> Manifest:
    """The usable rows of ``rows`` (lists of cells; a short row's missing cells are empty); labels as codes in
    order of first appearance in ``codes``. A relative path (a manifest written by hand: ``xdc index`` writes
    absolute ones) is made absolute against the current folder, which a reader opened it from before too: a run
    keeps its videos as read here (until 2026-12-02 as written, and a resume from another folder found none)."""

    def column(name: str, default: str) -> list[str]:
        i = columns.get(name)
        if i is None:
            return [default] * len(rows)
        return [(row[i] if i < len(row) else "") or default for row in rows]

    usable = np.flatnonzero(np.isin(np.array(column("status", "")), allowed))  # the numbers of others are not read
    durations = _numbers(column("duration_s", "0"), usable, "duration_s")
    keep = usable[durations > 0]
    pick = keep.tolist()
    paths, labels = column("path", ""), column("label", "")
    return Manifest(
        paths=np.array([encode_paths(p if p[:1] == "/" else _absolute(p)) for p in map(paths.__getitem__, pick)],
                       dtype="S") if pick else np.array([], dtype="S1"),
        durations=durations[durations > 0],
        offsets=np.zeros(keep.size, dtype=np.float64),
        has_audio=_flags(column("has_audio", "0"), keep, "has_audio"),
        has_video=_numbers(column("width", "1"), keep, "width") > 0,
        labels=np.array([codes.setdefault(labels[i], len(codes)) if labels[i] else -1 for i in pick], dtype=np.int32),
        classes=(),
        sizes=_sizes(column("size", ""), keep),
    )


def _absolute(path: str) -> str:
    """``path`` made absolute as os.path.abspath makes it; an empty one stays empty (it names no file either way)."""
    return path if not path or os.path.isabs(path) else os.path.abspath(path)


class _NotANumber(ValueError):
    """A usable row's cell that should hold a number: its column, its row in the parsed rows and its text."""

    def __init__(self, column: str, row: int, cell: str, meant: str = "a finite number"):
        super().__init__(f"{column} {cell!r} is not {meant}")
        self.row, self.cell = row, cell


_TRUE, _FALSE = ("1", "true", "True", "TRUE", "1.0"), ("0", "false", "False", "FALSE", "0.0")


def _flags(cells: list[str], rows: np.ndarray, column: str) -> np.ndarray:
    """The cells of ``rows`` as booleans: 1/0 or true/false (pandas writes True, and 1.0 where the column held a
    gap). Other text is named: until 2026-12-02 it read as 0, and "yes" dropped the file from runs that need audio."""
    picked = np.char.strip(np.array([cells[i] for i in rows.tolist()], dtype=str))  # as float() takes " 1"
    true, false = np.isin(picked, _TRUE), np.isin(picked, _FALSE)
    if not (true | false).all():
        first = int(np.flatnonzero(~(true | false))[0])
        raise _NotANumber(column, int(rows[first]), cells[int(rows[first])], "1/0 or true/false")
    return true


def _numbers(cells: list[str], rows: np.ndarray, column: str) -> np.ndarray:
    """The cells of ``rows`` as float64; _NotANumber names the first that is not one, or not finite (a duration of
    inf stopped the clip sampler with an OverflowError; one of nan dropped its row unsaid: until 2026-12-01)."""
    picked = cells if len(rows) == len(cells) else [cells[i] for i in rows.tolist()]  # most often every row
    try:
        numbers = np.array(picked, dtype=np.float64)
    except ValueError:
        for i, cell in zip(rows.tolist(), picked):
            try:
                float(cell)
            except ValueError:
                raise _NotANumber(column, i, cell) from None
        raise
    if not np.isfinite(numbers).all():
        first = int(np.flatnonzero(~np.isfinite(numbers))[0])
        raise _NotANumber(column, int(rows[first]), picked[first])
    return numbers


def _sizes(cells: list[str], rows: np.ndarray) -> np.ndarray:
    """The cells of ``rows`` as int64 bytes, -1 where empty (not checked); _NotANumber names one that is not a
    whole number of bytes (pandas writes 1234.0 for a column with gaps: taken)."""
    picked = cells if len(rows) == len(cells) else [cells[i] for i in rows.tolist()]
    where = rows if all(picked) else rows[np.array([bool(c) for c in picked], dtype=bool)]  # most often every row
    sizes = np.full(len(picked), -1, dtype=np.int64)
    try:
        numbers = _numbers(cells, where, "size")
    except _NotANumber as e:
        raise _NotANumber("size", e.row, e.cell, "a whole number of bytes") from None
    bad = (numbers < 0) | (numbers != np.floor(numbers)) | (numbers >= 2.0**63)
    if bad.any():
        first = int(where[np.flatnonzero(bad)[0]])
        raise _NotANumber("size", first, cells[first], "a whole number of bytes")
    sizes[np.searchsorted(rows, where)] = numbers.astype(np.int64)
    return sizes


def _join(parts: list[Manifest], codes: dict[str, int]) -> Manifest:
    """One manifest of the parts, with the classes sorted by name (label codes renumbered accordingly)."""
    classes = tuple(sorted(codes))
    joined = _concat(parts or [_parse([], {}, (), {})])
    joined.labels = _sorted_codes(codes, classes)[joined.labels]
    joined.classes = classes
    return joined


def _sorted_codes(codes: dict[str, int], classes: tuple[str, ...]) -> np.ndarray:
    """Lookup from codes in order of first appearance (and -1, unlabelled, as the last entry) to class indices."""
    rank = np.full(len(codes) + 1, -1, dtype=np.int32)
    rank[[codes[c] for c in classes]] = np.arange(len(classes), dtype=np.int32)
    return rank


def _concat(parts: list[Manifest]) -> Manifest:
    """The parts one after the other (classes left out). Each part's array is dropped as soon as it is copied:
    the peak is the result and one part, not two copies of everything."""
    arrays = {}
    for field in _ARRAYS:
        size = sum(len(getattr(p, field)) for p in parts)
        out = np.empty(size, dtype=np.result_type(*(getattr(p, field) for p in parts)))
        start = 0
        for p in parts:
            piece = getattr(p, field)
            setattr(p, field, None)
            out[start : start + len(piece)] = piece
            start += len(piece)
        arrays[field] = out
    return Manifest(**arrays, classes=())


@dataclass
class Videos:
    """A run's videos (its ``videos.csv``: path, label) as arrays, not one dict per row (65M rows as dicts:
    about 20 GB)."""

    paths: np.ndarray  # bytes ('S')
    labels: np.ndarray  # int32 index into ``classes``, -1 where unlabelled
    classes: tuple[str, ...]  # sorted

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        return decode_paths(self.paths[i])

    def label(self, i: int) -> str:
        return self.classes[self.labels[i]] if self.labels[i] >= 0 else ""


NO_VIDEOS = Videos(np.array([], dtype="S1"), np.array([], dtype=np.int32), ())


def write_videos(path: str | Path, videos: Manifest | Videos, progress: bool = False) -> None:
    """A run's ``videos.csv``: the path and label of each of ``videos``, in order (what :func:`read_videos`
    reads), renamed into place once whole (4 GB at 65M videos: a kill left half of it). With ``progress``,
    progress on stderr (:mod:`xdc.progress`) from half a million videos on."""
    names = [*videos.classes, ""]  # label -1 (none) picks the last
    rows = _CHUNK_ROWS * _CHUNKS_PER_BLOCK
    show = progress and len(videos) >= 500_000
    with replacing(path) as tmp, open_text(tmp, "w") as f, progress_bar(
        total=len(videos), desc=f"writing {Path(path).name}", unit="video", show=show, leave=False
    ) as bar:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for start in range(0, len(videos), rows):
            paths = [decode_paths(p) for p in videos.paths[start : start + rows].tolist()]
            writer.writerows(zip(paths, (names[c] for c in videos.labels[start : start + rows].tolist())))
            bar.update(len(paths))


def run_videos(run: str | Path) -> Videos | None:
    """A run's videos: its ``videos/`` arrays memory-mapped (under a second at 65M videos) where it has them, else
    its ``videos.csv`` (runs started before the arrays; reading it takes about 5 us a row), else None."""
    run = Path(run)
    try:
        mapped = Manifest.open(run / "videos")
        return Videos(mapped.paths, mapped.labels, mapped.classes)
    except (OSError, ValueError):  # absent, or damaged: the CSV says the same
        pass
    return read_videos(run / "videos.csv") if (run / "videos.csv").exists() else None


def read_videos(path: str | Path) -> Videos:
    """A run's ``videos.csv``, read in chunks of rows whose arrays are large enough to go back to the system once
    joined (see ``_CHUNKS_PER_BLOCK``)."""
    paths, labels, codes = [], [], {}
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, [])
        where = [header.index(name) if name in header else None for name in ("path", "label")]
        for chunk in iter(lambda: list(itertools.islice(reader, _CHUNK_ROWS * _CHUNKS_PER_BLOCK)), []):
            rows = [[row[i] if i is not None and i < len(row) else "" for i in where] for row in chunk]
            paths.append(np.array([encode_paths(p) for p, _ in rows], dtype="S"))
            labels.append(np.array([codes.setdefault(c, len(codes)) if c else -1 for _, c in rows], dtype=np.int32))
    if not paths:
        return NO_VIDEOS
    classes = tuple(sorted(codes))
    return Videos(np.concatenate(paths), _sorted_codes(codes, classes)[np.concatenate(labels)], classes)
