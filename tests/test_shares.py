"""The side files that xdc index and xdc prepare keep as they go (xdc.data.shares), on real files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from xdc.data.manifest import COLUMNS, iter_rows, row_cells, write_rows
from xdc.data.shares import RowLog, earlier_rows, rank_file


def _row(name: str, **cells) -> dict:
    return {"path": f"/videos/{name}", "status": "ok", "duration_s": "2", "has_audio": "1", **cells}


def _paths(path: Path) -> list[str]:
    return [row["path"] for row in iter_rows(path)]


def test_each_row_is_in_the_file_as_soon_as_it_is_added(tmp_path: Path) -> None:
    side = tmp_path / ".manifest.csv.rank0.csv"
    with RowLog(side, COLUMNS, row_cells) as log:
        log.add([_row("b.mp4")])
        assert _paths(side) == ["/videos/b.mp4"]  # read while the log is open: nothing waits in a buffer
        log.add([_row("a.mp4", reason="has, a comma"), _row("c\nd.mp4")])
        rows = list(iter_rows(side))
    assert [r["path"] for r in rows] == ["/videos/b.mp4", "/videos/a.mp4", "/videos/c\nd.mp4"]  # as they came
    assert rows[1]["reason"] == "has, a comma"


def test_rows_of_a_run_cut_short_stay_and_a_half_written_row_does_not_swallow_the_next(tmp_path: Path) -> None:
    side = tmp_path / ".manifest.csv.rank0.csv"
    write_rows(side, [_row("a.mp4"), _row("b.mp4")])
    side.write_bytes(side.read_bytes() + b"/videos/half.mp4,o")  # the machine stopped in the middle of a write
    with RowLog(side, COLUMNS, row_cells) as log:
        log.add([_row("c.mp4")])
    rows = list(iter_rows(side))
    assert [r["path"] for r in rows] == ["/videos/a.mp4", "/videos/b.mp4", "/videos/half.mp4", "/videos/c.mp4"]
    assert rows[2]["status"] == "o" and rows[2]["size"] is None  # a broken row: its file is probed again
    assert rows[3] == {k: row_cells(_row("c.mp4"))[i] for i, k in enumerate(COLUMNS)}


def test_a_side_file_of_another_release_is_carried_over_to_the_columns_of_this_one(tmp_path: Path) -> None:
    side = tmp_path / ".manifest.csv.rank0.csv"
    side.write_text("path,status,duration_s,has_audio,size\n/videos/a.mp4,ok,2,1,10\n")  # fewer columns
    with RowLog(side, COLUMNS, row_cells) as log:
        log.add([_row("b.mp4", size=20)])
    assert side.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [(r["path"], r["size"]) for r in iter_rows(side)] == [("/videos/a.mp4", "10"), ("/videos/b.mp4", "20")]


def test_earlier_rows_are_the_newest_of_the_share_and_those_only_another_rank_of_this_run_keeps(
    tmp_path: Path,
) -> None:  # fmt: skip
    """Rank 1 of 2, after a run cut short with 3 ranks: rank 0 rewrites its side file at its end, so the rows of
    rank 1's share that only that file holds must go into rank 1's own; rank 2's file is read, never rewritten."""
    out = tmp_path / "manifest.csv"
    write_rows(out, [_row("a.mp4", size=1), _row("b.mp4", size=1), _row("c.mp4", size=1), _row("z.mp4", size=1)])
    write_rows(rank_file(out, 0), [_row("a.mp4", size=2), _row("b.mp4", size=2)])
    write_rows(rank_file(out, 1), [_row("b.mp4", size=3)])  # newer than rank 0's: a later file wins
    write_rows(rank_file(out, 2), [_row("c.mp4", size=4), _row("y.mp4", size=4)])
    mine = {f"/videos/{n}" for n in ("a.mp4", "b.mp4", "c.mp4")}
    rows, theirs = earlier_rows(out, _rank(1, of=2), iter_rows, "path", mine, current=lambda row: True)
    assert {p: r["size"] for p, r in rows.items()} == {"/videos/a.mp4": "2", "/videos/b.mp4": "3", "/videos/c.mp4": "4"}
    assert [(r["path"], r["size"]) for r in theirs] == [("/videos/a.mp4", "2")]
    alone = earlier_rows(out, _rank(0, of=1), iter_rows, "path", mine, current=lambda row: True)
    assert alone[0] == rows and alone[1] == []  # no other rank rewrites a file


def test_of_the_earlier_rows_for_a_file_one_that_still_holds_wins(tmp_path: Path) -> None:
    """Side files of runs with different numbers of ranks: the names' order (rank10 before rank2) is not the rows'
    age, so a row that is no longer current must not displace one that is, wherever each is read."""
    out = tmp_path / "manifest.csv"
    write_rows(out, [_row("a.mp4", size=1), _row("b.mp4", size=1), _row("c.mp4", size=1)])
    write_rows(rank_file(out, 10), [_row("a.mp4", size=5), _row("b.mp4", size=2), _row("c.mp4", size=2)])
    write_rows(rank_file(out, 2), [_row("a.mp4", size=2), _row("b.mp4", size=5), _row("c.mp4", size=3)])
    mine = {f"/videos/{n}" for n in ("a.mp4", "b.mp4", "c.mp4")}
    current = {"/videos/a.mp4": "5", "/videos/b.mp4": "5", "/videos/c.mp4": "9"}  # each file's size now
    rows, theirs = earlier_rows(
        out, _rank(0, of=3), iter_rows, "path", mine, current=lambda row: row["size"] == current[row["path"]]
    )
    sizes = {p: r["size"] for p, r in rows.items()}
    assert sizes == {"/videos/a.mp4": "5", "/videos/b.mp4": "5", "/videos/c.mp4": "3"}  # c: none holds, the last
    assert [(r["path"], r["size"]) for r in theirs] == [("/videos/b.mp4", "5"), ("/videos/c.mp4", "3")]  # rank 2's


def _rank(rank: int, of: int) -> SimpleNamespace:  # a Dist's fields, without a process group
    return SimpleNamespace(rank=rank, world_size=of, enabled=False)
