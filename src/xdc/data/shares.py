"""A collection's files shared out over the ranks of a torchrun job (``xdc index``, ``xdc prepare``): every rank
lists the inputs and takes every W-th file; each keeps its rows in a side file of its own as it goes, which rank 0
joins at the end. A plain run is rank 0 of 1 and imports no torch (2 s and 600 MB more in every run)."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

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


def my_share(files: list[str] | dict[str, None], ctx: Dist, broadcast_object: Callable) -> set[str]:
    """This rank's files: every W-th of ``files``, starting at its rank. Every rank must share out the same list:
    one that listed other files (a file added meanwhile, another mount) would do some twice and others never."""
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    if broadcast_object(digest, ctx) != digest:
        raise UserError(f"rank {ctx.rank} found other input files than rank 0 ({len(files)} files): are the inputs "
                        "on a filesystem every rank sees, and unchanged during the run?")  # fmt: skip
    return {path for n, path in enumerate(files) if n % ctx.world_size == ctx.rank}


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
    return sorted(path.parent.glob(rank_file(path, "*").name))


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
