"""A collection's files shared out over the ranks of a torchrun job (``xdc index``, ``xdc prepare``): rank 0 lists
the inputs and hands every rank every W-th file; each keeps its rows in a side file of its own as it goes, which
rank 0 joins at the end. A plain run is rank 0 of 1 and imports no torch (2 s and 600 MB more in every run)."""

from __future__ import annotations

import glob
import heapq
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from xdc.data.manifest import write_atomic
from xdc.errors import UserError

if TYPE_CHECKING:  # torch, imported under torchrun only
    from xdc.training.distributed import Dist

ALONE = SimpleNamespace(rank=0, world_size=1, main=True, enabled=False)  # a Dist without torch: one process
SAVE_EVERY_S = 5.0  # the side files are rewritten this often at most ...
SAVE_SHARE = 0.05  # ... and then only when that leaves at least 95% of the time to the work (big collections)


def collectives(ctx: Dist | None) -> tuple:
    """(ctx, on_main, broadcast_object, gather_objects): those of xdc.training.distributed under torchrun, their
    one-process forms otherwise."""
    if ctx is not None and ctx.enabled:
        from xdc.training import distributed

        return ctx, distributed.on_main, distributed.broadcast_object, distributed.gather_objects
    return ALONE, (lambda work, _: work()), (lambda obj, _: obj), (lambda obj, _: [obj])


def my_share(listing: Callable[[], list], path: Path, ctx: Dist, on_main: Callable) -> list:
    """This rank's entries of the collection's ``listing()`` (JSON values, e.g. paths): every W-th, starting at its
    rank. Rank 0 alone lists: a walk of millions of files once, not once per rank on the same filesystem, and
    every rank shares out the same list. It writes each rank's share to a hidden file beside ``path``, which that
    rank reads back, so no other rank holds more than its share of the listing."""
    if not ctx.enabled:
        return listing()

    def write() -> None:
        remove_share_files(path)  # of a run cut short, perhaps with more ranks
        entries = listing()
        for rank in range(ctx.world_size):
            share = entries[rank :: ctx.world_size]  # JSON lines: ASCII, whatever bytes a name holds
            write_atomic(share_file(path, rank), lambda f: f.writelines(json.dumps(entry) + "\n" for entry in share))

    on_main(write, ctx)
    mine = share_file(path, ctx.rank)
    try:
        with open(mine, encoding="ascii") as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        raise UserError(f"{mine} is missing: rank 0 wrote it; is {path.parent} on a filesystem every rank "
                        "sees?") from None  # fmt: skip


def share_file(path: Path, rank: int | str) -> Path:
    """The file in which rank 0 hands a rank its share of the listing (hidden, as the side files)."""
    return path.with_name(f".{path.name}.share{rank}.jsonl")


def remove_share_files(path: Path) -> None:
    for file in _of_every_rank(path, share_file):
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


class Every:
    """Calls ``save()`` when asked (``maybe``) at most every SAVE_EVERY_S, and no more often than keeps its own
    time under SAVE_SHARE of the total: rewriting millions of rows takes seconds."""

    def __init__(self, save: Callable[[], None]):
        self.save = save
        self.last = time.monotonic()
        self.took = 0.0

    def maybe(self) -> None:
        now = time.monotonic()
        if now - self.last > max(SAVE_EVERY_S, self.took / SAVE_SHARE):
            self.save()
            self.last = time.monotonic()
            self.took = self.last - now
