"""Files replaced whole (xdc.atomic): on a full disk every command says which file it could not write, in one line,
and leaves no temporary file behind; nothing written before is lost."""

import csv
import os
import re
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import tiny_run, write_square
from xdc.errors import UserError
from xdc.training.checkpoint import load, save_atomic

# The disk fills at ``limit`` bytes per file: RLIMIT_FSIZE (SIGXFSZ ignored) makes every write past it fail with
# EFBIG as a full disk fails with ENOSPC, from the same system calls (CI cannot mount a small tmpfs).
LIMITED = """import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from xdc.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("atomic")
    run = tiny_run(root, 24, 4, seed=0, batch=8, k=4)
    with open(root / "data" / "labels.csv", newline="") as f, open(root / "split.csv", "w", newline="") as g:
        writer = csv.writer(g)
        writer.writerow(["path", "label", "split"])
        for n, row in enumerate(csv.DictReader(f)):
            writer.writerow([str(root / "data" / row["path"]), row["label"], "test" if n % 4 == 0 else "train"])
    return root, run


def _on_a_full_disk(limit: int, *args: str) -> str:
    """``xdc ARGS`` where no file can grow past ``limit`` bytes: its stderr, once it has failed as it should."""
    done = subprocess.run([sys.executable, "-c", LIMITED, str(limit), *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_pretraining_on_a_full_disk_names_the_checkpoint_and_keeps_the_last_one(run, tmp_path):
    root, _ = run
    out = tmp_path / "run"
    # 1.5 MB: the round's first checkpoint (1.2 MB) is written, the next, with the heads and optimizer, is not
    err = _on_a_full_disk(1_500_000, "pretrain", "--data", str(root / "manifest.csv"), "--preset", "tiny", "--k", "4",
                          "--rounds", "2", "--set=train.batch_size=8", "--set=data.workers=0", "--out", str(out))
    assert err.splitlines()[-1] == f"xdc: error: cannot write {out / 'checkpoints' / 'last.pt'}: File too large"
    assert not _partials(out)  # a partial checkpoint would keep a full disk full
    assert load(out / "checkpoints" / "last.pt")["method"] == "xdc"  # the run can be resumed from it


def test_extract_eval_export_and_report_on_a_full_disk_name_the_file(run, tmp_path):
    root, run_dir = run
    features = tmp_path / "t.npz"
    extract = ["extract", "--run", str(run_dir), "--encoder", "audio", "--dataset", "csv", "--data",
               str(root / "split.csv"), "--set=data.workers=0", "--out"]  # fmt: skip
    err = _on_a_full_disk(100_000, *extract, str(features))  # the features: 150 kB
    assert err.splitlines()[-1] == f"xdc: error: cannot write {features}: File too large"
    assert (tmp_path / "t.parts").is_dir()  # the clips done: a re-run goes on from them
    err = _on_a_full_disk(100_000, "export", str(run_dir), "--out", str(tmp_path / "exp"))
    assert err.splitlines()[-1] == f"xdc: error: cannot write {tmp_path / 'exp' / 'video.safetensors'}: File too large"
    err = _on_a_full_disk(100_000, "report", str(run_dir), "--out", str(tmp_path / "r.html"))
    assert err.splitlines()[-1] == f"xdc: error: cannot write {tmp_path / 'r.html'}: File too large"
    subprocess.run([sys.executable, "-m", "xdc.cli", *extract, str(features)], check=True, capture_output=True)
    err = _on_a_full_disk(200, "eval", "linear", "--features", str(features), "--out", str(tmp_path / "e.json"))
    assert err.splitlines()[-1] == f"xdc: error: cannot write {tmp_path / 'e.json'}: File too large"
    assert not _partials(tmp_path) and not _partials(run_dir)
    with open(tmp_path / "printed.txt", "w") as printed:  # xdc ... > FILE: the print's OSError names no file
        done = subprocess.run([sys.executable, "-c", LIMITED, "100", "eval", "linear", "--features", str(features)],
                              stdout=printed, stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and done.stderr == "xdc: error: File too large\n", done.stderr[-3000:]


def test_a_write_that_fails_in_the_code_leaves_no_partial_and_keeps_its_error(tmp_path):
    path = tmp_path / "state.pt"
    save_atomic({"step": 1}, path)
    with pytest.raises(Exception) as failed:  # not the disk's: torch's own error, not "cannot write"
        save_atomic({"step": 2, "code": lambda: None}, path)
    assert not isinstance(failed.value, UserError)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"] and load(path)["step"] == 1


def test_only_the_writes_own_failures_are_said_as_cannot_write(tmp_path):
    """A file the block reads that is gone is named as itself, and a Ctrl-C is one (until 2026-12-01 both were
    "cannot write PATH: ...", the first without the name of the file that failed)."""
    from xdc.atomic import replacing

    with pytest.raises(FileNotFoundError, match="gone.csv"):
        with replacing(tmp_path / "out.csv") as tmp:
            tmp.write_text("a row\n")
            (tmp_path / "gone.csv").read_text()
    with pytest.raises(KeyboardInterrupt):
        with replacing(tmp_path / "out.csv") as tmp:
            try:
                (tmp_path / "gone.csv").read_text()
            except OSError:
                raise KeyboardInterrupt from None  # a Ctrl-C while an OSError is handled: the OSError its context
    with pytest.raises(UserError, match=r"^cannot write .*out.csv: File too large$"):
        with replacing(tmp_path / "out.csv") as tmp:
            raise OSError(27, "File too large", str(tmp))  # the write's own: a full disk, a file size limit
    with pytest.raises(UserError, match=r"^cannot write .*videos: No space left on device$"):
        with replacing(tmp_path / "videos", tmp_path / "videos.tmp") as tmp:  # a folder, as a run's videos/
            tmp.mkdir()
            raise OSError(28, "No space left on device", str(tmp / "paths.npy"))
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_is_written_beside_itself_under_a_name_of_this_process(tmp_path):
    """Two processes writing one file (two xdc index given one --out, before they were refused) shared OUT.tmp and
    renamed each other's half-written file into place, or failed at the rename: a name per process."""

    from xdc.data.manifest import write_atomic

    seen = []
    write_atomic(tmp_path / "m.csv", lambda f: seen.append(Path(f.name).name) or f.write("path\n"))
    assert seen == [f".m.csv.tmp{os.getpid()}"] and (tmp_path / "m.csv").read_text() == "path\n"


def test_a_file_of_the_same_bytes_is_kept_where_asked_and_a_link_still_replaced(tmp_path):
    """keep_same: a re-run's manifest that changed nothing keeps its time (xdc index); no leftovers either way."""
    from xdc.data.manifest import write_atomic

    path, target, link = tmp_path / "m.csv", tmp_path / "target.csv", tmp_path / "link.csv"
    path.write_text("path\n")
    target.write_text("path\n")
    link.symlink_to(target)
    stamp = path.stat().st_mtime_ns - 10**9
    os.utime(path, ns=(stamp, stamp))
    assert not write_atomic(path, lambda f: f.write("path\n"), keep_same=True) and path.stat().st_mtime_ns == stamp
    assert write_atomic(path, lambda f: f.write("path\n"))  # not asked: written
    assert write_atomic(path, lambda f: f.write("path,x\n"), keep_same=True) and path.read_text() == "path,x\n"
    assert write_atomic(link, lambda f: f.write("path\n"), keep_same=True) and not link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "m.csv", "target.csv"]


def test_a_files_leftovers_are_removed_without_those_of_the_files_beside_it(tmp_path):
    """A killed index's half-written manifest goes when the next index of that --out starts; another output's in
    the same folder may be another process's, being written now (xdc.locks locks outputs, not folders)."""
    from xdc.atomic import remove_partials

    for name in (".m.csv.tmp41", ".m.csv.tmp42", ".other.csv.tmp43", ".m.csv.lock", "m.csv.tmp"):
        (tmp_path / name).write_text("x")
    remove_partials(tmp_path, of="m.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.csv.lock", ".other.csv.tmp43", "m.csv.tmp"]


def test_a_file_replaced_keeps_its_mode_and_a_link_is_replaced_not_followed(tmp_path):
    """A mode the user set stays, as the writes in place before them kept it (extract's OUT.json, the demo's and the
    grid benchmark's JSON). A link is replaced, not the file it names: a run copied as links and resumed would
    otherwise write into the run it was copied from."""
    from xdc.atomic import write_text

    (tmp_path / "keep").mkdir()
    mine, target, link = tmp_path / "mine.json", tmp_path / "keep" / "f.json", tmp_path / "f.json"
    for path in (mine, target):
        path.write_text("old")
        path.chmod(0o640)
    link.symlink_to(target)
    write_text(mine, "new")
    write_text(link, "new")
    assert mine.read_text() == "new" and stat.S_IMODE(mine.stat().st_mode) == 0o640
    assert not link.is_symlink() and link.read_text() == "new" and target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.json", "f.json", "keep", "mine.json"]  # no leftovers


@pytest.fixture
def flushes(monkeypatch) -> list[tuple[str, ...]]:
    """The process's fsyncs and renames, in their order: ("fsync", the file or folder synced) and ("rename", from,
    to), paths as Linux names them (resolved). The real calls are made."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd to name a descriptor's file")
    events: list[tuple[str, ...]] = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_replace(src, dst, **kwargs) -> None:
        events.append(("rename", str(Path(src).resolve()), str(Path(dst).resolve())))
        replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    return events


def test_a_file_is_on_the_disk_before_it_is_renamed_and_its_folder_after(tmp_path, flushes):
    """A power loss after a rename that reached the disk before the data left an empty checkpoint (ext4, xfs), or
    lost the rename (its folder never flushed); until 2026-12-02 only checkpoints were flushed, before the rename."""
    from xdc.atomic import write_text
    from xdc.data.manifest import write_atomic

    folder = tmp_path.resolve()
    tmp = str(folder / f".last.pt.tmp{os.getpid()}")
    save_atomic({"step": 1}, folder / "last.pt")
    assert flushes == [("fsync", tmp), ("rename", tmp, str(folder / "last.pt")), ("fsync", str(folder))]
    flushes.clear()
    write_text(folder / "r.json", "{}")
    tmp = str(folder / f".r.json.tmp{os.getpid()}")
    assert flushes == [("fsync", tmp), ("rename", tmp, str(folder / "r.json")), ("fsync", str(folder))]
    flushes.clear()
    assert not write_atomic(folder / "r.json", lambda f: f.write("{}"), keep_same=True)  # kept: nothing to flush
    assert flushes == []


def test_a_folder_written_whole_has_each_file_on_the_disk_before_it_is_renamed(tmp_path, flushes):
    """A run's videos/ (Manifest.save): every file in it and its folders flushed, not a file it links to."""
    from xdc.atomic import replacing

    folder = tmp_path.resolve()
    (folder / "elsewhere.txt").write_text("not ours")
    with replacing(folder / "videos", folder / "videos.tmp") as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "paths.npy").write_bytes(b"x" * 100)
        (tmp / "sub" / "classes.json").write_text("[]")
        (tmp / "link").symlink_to(folder / "elsewhere.txt")
    tmp = folder / "videos.tmp"
    rename = flushes.index(("rename", str(tmp), str(folder / "videos")))
    assert sorted(flushes[:rename]) == [("fsync", str(p)) for p in (tmp, tmp / "paths.npy", tmp / "sub",
                                                                     tmp / "sub" / "classes.json")]  # fmt: skip
    assert flushes[rename + 1 :] == [("fsync", str(folder))]


def test_a_flush_that_fails_is_the_writes_failure_but_a_folder_the_file_system_cannot_flush_is_not(
        tmp_path, monkeypatch):  # fmt: skip
    """EIO (or ENOSPC) as the data is flushed: the file never reached the disk whole, the old one stays. A network
    or FUSE file system that cannot flush a folder (EINVAL) has the file written all the same."""
    import errno

    from xdc.atomic import write_text

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc/self/fd to name a descriptor's file")
    path = tmp_path / "results.json"
    path.write_text("old")
    fsync, refused = os.fsync, {}  # the path synced -> the error its fsync raises

    def refusing(fd: int) -> None:
        error = refused.get(os.readlink(f"/proc/self/fd/{fd}"))
        if error is not None:
            raise OSError(error, os.strerror(error))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", refusing)
    folder = tmp_path.resolve()
    refused = {str(folder / f".results.json.tmp{os.getpid()}"): errno.EIO}
    with pytest.raises(UserError, match=rf"^cannot write {re.escape(str(path))}: Input/output error$"):
        write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    refused = {str(folder): errno.EIO}  # after the rename: the new file is in place, but may not stay there
    with pytest.raises(UserError, match=rf"^cannot write {re.escape(str(path))}: Input/output error$"):
        write_text(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    refused = {str(folder): errno.EINVAL}
    write_text(path, "newer")
    assert path.read_text() == "newer" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _moved_to_stay(flushes: list[tuple[str, ...]], dst: Path) -> None:
    """``dst`` was renamed into place with its data flushed before (under the name it had) and its folder after."""
    dst = dst.resolve()
    rename = next(n for n, event in enumerate(flushes) if event[0] == "rename" and event[2] == str(dst))
    assert ("fsync", flushes[rename][1]) in flushes[:rename], flushes
    assert ("fsync", str(dst.parent)) in flushes[rename + 1 :], flushes


def test_an_exports_files_and_a_transcoded_copy_are_on_the_disk_before_they_are_moved_into_place(
        run, tmp_path, flushes):  # fmt: skip
    """Files written elsewhere, then renamed into place (a staged export's, each copy of xdc prepare) are made to
    last as replacing's: until 2026-12-02 none was flushed."""
    from xdc.data import prepare
    from xdc.export import export_run

    files = export_run(run[1], tmp_path / "exp")
    assert len(files) == 3  # video and audio encoders, the model card
    for file in files:
        _moved_to_stay(flushes, file)
    source, copy = tmp_path / "source.mp4", tmp_path / "copies" / "copy.mp4"
    write_square(source, 64, 64, Fraction(1), 32)
    flushes.clear()
    assert prepare.prepare_file(str(source), copy, prepare.PrepareOptions(short_side=32))["status"] == "ok"
    _moved_to_stay(flushes, copy)
