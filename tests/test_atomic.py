"""Files replaced whole (xdc.atomic): on a full disk every command says which file it could not write, in one line,
and leaves no temporary file behind; nothing written before is lost."""

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_run
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
