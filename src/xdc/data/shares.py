"""A collection's files shared out over the ranks of a torchrun job (``xdc index``, ``xdc prepare``): rank 0 lists
the inputs and hands each rank its share of the files, picked by a hash of their paths; each rank keeps its rows in
a side file of its own as it goes, which rank 0 joins at the end. A plain run is rank 0 of 1 and imports no torch
(2 s and 600 MB more in every run)."""

from __future__ import annotations

import contextlib
import csv
import glob
import heapq
import io
import itertools
import json
import os
import zlib
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from xdc.data.manifest import encode_paths, open_text, write_atomic
from xdc.errors import UserError

if TYPE_CHECKING:  # torch, imported under torchrun only
    from xdc.training.distributed import Dist

SHARE_BATCH = 100_000  # entries rank 0 holds before it adds them to the share files (about 11 MB)
ALONE = SimpleNamespace(rank=0, world_size=1, main=True, enabled=False)  # a Dist without torch: one process


def collectives(ctx: Dist | None) -> tuple:
    """(ctx, on_main, broadcast_object, gather_objects): those of xdc.training.distributed under torchrun, their
    one-process forms otherwise."""
    if ctx is not None and ctx.enabled:
        from xdc.training import distributed

        return ctx, distributed.on_main, distributed.broadcast_object, distributed.gather_objects
    return ALONE, (lambda work, _: work()), (lambda obj, _: obj), (lambda obj, _: [obj])


def my_share(
    listing: Callable[[], Iterable[str]], path: Path, ctx: Dist, on_main: Callable, group: Callable[[str], str] = str
) -> list[str]:
    """This rank's entries of the collection's ``listing()`` (paths, a path perhaps more than once), each once, in
    the listing's order. Rank 0 alone lists: a walk of millions of files once, not once per rank on the same
    filesystem. It streams the entries into a hidden file per rank beside ``path``, each to the rank that a hash
    of its ``group(entry)`` picks, and holds none of them: every copy of a path, and every entry of a group (files
    whose outputs could share a name), lands on one rank, which can dedupe and plan them alone. A rank holds its
    share of the listing, never the whole (10 GB on rank 0 at 65M files, when it handed out every W-th)."""
    if not ctx.enabled:
        return list(dict.fromkeys(listing()))

    def write() -> None:
        remove_share_files(path)  # of a run cut short, perhaps with more ranks
        shares: list[list[str]] = [[] for _ in range(ctx.world_size)]
        held, made = 0, not path.parent.exists()
        try:
            for entry in listing():
                shares[owner(group(entry), ctx.world_size)].append(json.dumps(entry) + "\n")
                held += 1
                if held == SHARE_BATCH:
                    _append_shares(path, shares)
                    held = 0
            _append_shares(path, shares)
        except BaseException:  # a listing that fails (a bad argument) leaves no shares of half of it
            remove_share_files(path)
            if made:  # nor the folder made for them (prepare's --out, found to be among the inputs)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            raise

    on_main(write, ctx)
    return list(dict.fromkeys(_entries(share_file(path, ctx.rank), 0)))


def owner(key: str, world_size: int) -> int:
    """The rank that a hash of ``key`` picks: the same on every rank, in every run."""
    return zlib.crc32(os.fsencode(key)) % world_size


def route(path: Path, ctx: Dist, entries: list[str]) -> set[str]:
    """Of every rank's ``entries`` (paths, few), those whose ``owner`` this rank is: each rank writes its entries in
    a hidden file beside ``path`` (``hand_over``) and, once all have (a barrier), reads back its own (``handed``)."""
    if not ctx.enabled:
        return set(entries)
    hand_over(path, ctx.rank, entries)
    gather_objects = collectives(ctx)[3]
    gather_objects(None, ctx)  # a barrier: every rank's file is written before any is read
    return handed(path, ctx)


def hand_over(path: Path, rank: int, entries: list[str]) -> None:
    write_atomic(handover_file(path, rank), lambda f: f.writelines(json.dumps(entry) + "\n" for entry in entries))


def handed(path: Path, ctx: Dist) -> set[str]:
    """The entries of this run's hand-over files (one per rank) whose ``owner`` this rank is."""
    every = (_entries(handover_file(path, rank), rank) for rank in range(ctx.world_size))
    return {entry for entry in itertools.chain.from_iterable(every) if owner(entry, ctx.world_size) == ctx.rank}


def _entries(file: Path, writer: int) -> Iterator[str]:
    """The JSON lines of ``file``, which rank ``writer`` wrote, one at a time."""
    try:
        with open(file, encoding="ascii") as f:
            yield from map(json.loads, f)
    except FileNotFoundError:
        raise UserError(f"{file} is missing: rank {writer} wrote it; is {file.parent} on a filesystem every rank "
                        "sees?") from None  # fmt: skip


def _append_shares(path: Path, shares: list[list[str]]) -> None:
    """Add each rank's entries (JSON lines: ASCII, whatever bytes a name holds) to its share file, and empty them.
    Every file is opened for a batch and closed: thousands of ranks would run out of file descriptors."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # prepare makes its output folder once the inputs are listed
    except OSError as e:
        raise UserError(f"cannot create {path.parent}: {e.strerror or e}") from None
    for rank, lines in enumerate(shares):
        file = share_file(path, rank)
        try:
            with open(file, "a", encoding="ascii") as f:
                f.writelines(lines)
        except OSError as e:
            raise UserError(f"cannot write {file}: {e.strerror or e}") from None
        lines.clear()


def share_file(path: Path, rank: int | str) -> Path:
    """The file in which rank 0 hands a rank its share of the listing (hidden, as the side files)."""
    return path.with_name(f".{path.name}.share{rank}.jsonl")


def handover_file(path: Path, rank: int | str) -> Path:
    """The file in which a rank hands the other ranks entries of theirs (``route``)."""
    return path.with_name(f".{path.name}.handover{rank}.jsonl")


def remove_share_files(path: Path) -> None:
    """The share and hand-over files of ``path``, of any rank."""
    for file in _of_every_rank(path, share_file) + _of_every_rank(path, handover_file):
        file.unlink()


def rank_file(path: Path, rank: int | str) -> Path:
    """The side file in which a rank keeps its rows of ``path`` (hidden: ``xdc index`` of the folder skips it)."""
    return path.with_name(f".{path.name}.rank{rank}.csv")


def this_run_files(path: Path, ctx: Dist) -> list[Path]:
    """Every rank's side file of ``path`` in this run, for rank 0 to join; a UserError where one is missing."""
    files = [rank_file(path, rank) for rank in range(ctx.world_size)]
    for file in files:
        if not file.exists():
            raise UserError(f"{file} is missing: rank {files.index(file)} wrote it; are {path.parent} and the inputs "
                            "on filesystems every rank sees?")  # fmt: skip
    return files


def rank_files(path: Path) -> list[Path]:
    """Every rank's side file of ``path`` there is, of this run or of one cut short."""
    return _of_every_rank(path, rank_file)


def _of_every_rank(path: Path, name: Callable[[Path, str], Path]) -> list[Path]:
    """The files ``name(path, rank)`` there are, of any rank (``path``'s name may hold glob's [ ] * ?)."""
    before, after = name(path, "\0").name.split("\0")
    return sorted(path.parent.glob(glob.escape(before) + "*" + glob.escape(after)))


def merged(files: list[Path], read: Callable[[Path], Iterator[dict]], key: str) -> Iterator[dict]:
    """The rows of ``files`` (each sorted by ``key``, as xdc writes them) in one sorted stream, one row of each
    file held at a time; of rows with the same key the one from the later file. A file out of order (edited by
    hand) is a UserError rather than a join with rows twice."""

    def ordered(n: int, path: Path) -> Iterator[tuple[str, int, dict]]:
        last = None
        for row in read(path):
            if last is not None and row[key] < last:
                raise UserError(f"{path} is not sorted by {key} (edited?): sort it, or delete it to start over")
            last = row[key]
            yield row[key], n, row

    rows = heapq.merge(*(ordered(n, path) for n, path in enumerate(files)))
    for _, group in itertools.groupby(rows, key=lambda item: item[0]):
        *_, (_, _, row) = group
        yield row


class RowLog:
    """A rank's side file kept as it goes: each row appended in one write as soon as it is made (4 us), so a run cut
    short loses none of the rows made. (Rewriting the whole file as the work went, at 2 s a million rows, had to
    space the rewrites minutes apart at millions of rows, and a crash lost the rows since the last one.) Rows of a
    run cut short already in the file stay. The rows are in the order they came; rank 0's join needs them sorted,
    which the rank's rewrite at its end provides. ``cells(row)``: the row's cells in the order of ``columns``."""

    def __init__(self, path: Path, columns: tuple[str, ...], cells: Callable[[dict], list[str]]):
        self.path, self.cells = path, cells
        try:
            header = _header(path)
            if header is not None and header != list(columns):  # left by another release of xdc
                with open_text(path) as f:
                    rows = [dict(zip(header, row)) for row in itertools.islice(csv.reader(f), 1, None)]
                write_atomic(path, lambda f: csv.writer(f).writerows([columns, *map(cells, rows)]))
            self.file = open(path, "ab", buffering=0)
            if self.file.tell() == 0:
                self._write([list(columns)])
            elif not _ends_a_line(path):  # a write cut short (the machine stopped): the next row on a line of its own
                self.file.write(b"\n")
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None

    def add(self, rows: Iterable[dict]) -> None:
        self._write([self.cells(row) for row in rows])

    def _write(self, rows: list[list[str]]) -> None:
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        data = encode_paths(text.getvalue())
        try:
            while data:  # one write for whole rows, so a process killed between writes leaves no half row
                data = data[self.file.write(data) :]
        except OSError as e:
            raise UserError(f"cannot write {self.path}: {e.strerror or e}") from None

    def __enter__(self) -> RowLog:
        return self

    def __exit__(self, *_) -> None:
        self.file.close()


def _header(path: Path) -> list[str] | None:
    """The first row of the CSV file ``path``; None where it is missing or empty."""
    try:
        with open_text(path) as f:
            return next(csv.reader(f), None)
    except FileNotFoundError:
        return None


def _ends_a_line(path: Path) -> bool:
    """Whether the last byte of ``path`` (not empty) is a newline."""
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def earlier_rows(
    path: Path, ctx: Dist, read: Callable[..., Iterator[dict]], key: str, mine: Container, current: Callable[[dict], bool]
) -> tuple[dict, list]:
    """The rows of this rank's share (``mine``: the values of ``key``) that ``path`` and the side files of runs cut
    short hold, and those of them that only the side file of another rank of this run holds: that rank rewrites its
    file with its own rows at its end, so this rank must keep them in its own. Every rank reads before any goes on
    (a barrier): no rank rewrites a file another reads.

    Of the rows for one key, a side file's win over ``path``'s (a side file is newer), and one that is
    ``current(row)`` (it still holds for its file) over one that is not: after runs with different numbers of
    ranks, several side files may hold rows for the same file, and the order of their names is not their age."""
    rows: dict[str, dict] = {}
    elsewhere: set[str] = set()  # the keys whose chosen row is in the side file of another rank of this run
    others = {rank_file(path, rank) for rank in range(ctx.world_size) if rank != ctx.rank}
    for file in [path, *rank_files(path)] if path.exists() else rank_files(path):
        theirs = file in others
        for row in read(file, keep=mine):
            chosen = rows.get(row[key])
            if chosen is not None and current(chosen) and not current(row):
                continue  # a stale row read later: the file would be done again for nothing
            rows[row[key]] = row
            if theirs:
                elsewhere.add(row[key])
            else:
                elsewhere.discard(row[key])
    gather_objects = collectives(ctx)[3]
    gather_objects(None, ctx)  # a barrier, in the group that waits as long as a rank may take to read
    return rows, [rows[k] for k in sorted(elsewhere)]
