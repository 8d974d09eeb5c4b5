"""One xdc process per output (xdc.locks): a second command given an output that another holds is refused in one
line before it checks or cleans anything there, with real kernel locks, held by this process (a lock's second
open is refused as another process's is) or by a real command in another process."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import torchrun_command
from xdc.cli import main
from xdc.data.encode import write_av
from xdc.errors import UserError
from xdc.locks import FOLDER_LOCK, holding, lock_path

IN_USE = "is in use by another xdc process"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Six 3-second 16 fps videos with sound, of noise: a few seconds of transcoding in all."""
    root = tmp_path_factory.mktemp("videos")
    tone = (0.1 * np.sin(np.arange(48000) / 5)).astype(np.float32)
    for i in range(6):
        frames = np.random.default_rng(i).integers(0, 255, (48, 120, 160, 3), dtype=np.uint8)
        write_av(root / f"v{i}.mp4", frames, 16, tone, 16000)
    return root


def _refused(argv: list[str], capsys) -> str:
    """``xdc ARGV``'s one-line refusal, checked to be one (exit code 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and IN_USE in err, err
    return err


def _xdc(*args: str) -> list[str]:
    return [sys.executable, "-m", "xdc.cli", *args]


def test_the_lock_is_refused_while_held_and_leaves_nothing_once_let_go(tmp_path: Path) -> None:
    run = tmp_path / "new" / "runs" / "p2"
    with holding(run, "pretrain", folder=True):
        assert (run / FOLDER_LOCK).read_text() == f"pretrain\n{os.getpid()}\n"
        with pytest.raises(Exception, match=rf"^{run} {IN_USE} \(pretrain, pid {os.getpid()}\): wait for it to "
                                            "end, or choose another --out$"):  # fmt: skip
            with holding(run, "pretrain --resume", folder=True):
                pass
    assert not (tmp_path / "new").exists()  # the folders made for the lock alone go with it
    with holding(run, "pretrain", folder=True):
        (run / "config.yaml").write_text("a run's file\n")
    assert [p.name for p in run.iterdir()] == ["config.yaml"]  # a folder written into stays; the lock file goes
    with holding(tmp_path / "a.csv", "index"), holding(tmp_path / "b.csv", "index"):  # two files of one folder
        assert lock_path(tmp_path / "a.csv", folder=False).exists()


def test_a_folder_copied_as_links_has_a_lock_of_its_own(tmp_path: Path) -> None:
    """A run folder that a killed run left with its lock file, copied as links (cp -rs) and resumed while the run it
    was copied from is resumed too: the copy's lock is a file of its own, not the other's through the link (until
    2026-12-03 refused as in use, and its pid written into the other's lock file)."""
    run, copy = tmp_path / "run", tmp_path / "copy"
    run.mkdir()
    copy.mkdir()
    (run / FOLDER_LOCK).write_text("pretrain\n99999\n")  # a killed holder's
    (copy / FOLDER_LOCK).symlink_to(run / FOLDER_LOCK)
    with holding(run, "pretrain", folder=True), holding(copy, "pretrain --resume", folder=True):
        assert (run / FOLDER_LOCK).read_text() == f"pretrain\n{os.getpid()}\n"
        assert not (copy / FOLDER_LOCK).is_symlink()
    assert not (run / FOLDER_LOCK).exists() and not (copy / FOLDER_LOCK).exists()


def test_the_refusal_names_a_holder_that_writes_its_name_just_after_it_took_the_lock(tmp_path: Path) -> None:
    """A holder takes the lock, then writes who it is: one refused in between (two commands started together)
    waits a moment for the name rather than saying less."""
    import fcntl
    import threading

    path = lock_path(tmp_path / "m.csv", folder=False)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, nothing written yet
    writer = threading.Timer(0.05, os.pwrite, (fd, b"index\n4242\n", 0))
    writer.start()
    try:
        with pytest.raises(UserError, match=rf"{IN_USE} \(index, pid 4242\): wait"):
            with holding(tmp_path / "m.csv", "index"):
                pass
    finally:
        writer.join()
        os.close(fd)


@pytest.mark.parametrize("command, held, folder", [
    ("pretrain --data m.csv --out run", "run", True),
    ("pretrain --out run --resume", "run", True),
    ("make-synthetic synth --videos 4", "synth", True),
    ("extract --run r --encoder video --data d.csv --out ex/r", "ex/r.npz", False),
    ("eval linear --features f.npz --out res.json", "res.json", False),
    ("eval kfold --features f.npz --out res.json", "res.json", False),
    ("eval clusters --run r --out res.json", "res.json", False),
    ("eval finetune --run r --encoder video --data d.csv --out ft.json", "ft.json", False),
    ("eval finetune --run r --encoder video --data d.csv --out ft.json", "ft.finetune", True),
    ("export r --out exx", "exx", False),
    ("report r --out page.html", "page.html", False),
    ("demo --out demo", "demo", True),
    ("benchmark grid --data g --out grid", "grid", True),
])  # fmt: skip
def test_every_command_that_writes_an_output_is_refused_while_another_holds_it(
    command: str, held: str, folder: bool, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Refused first, before the command's own checks (the inputs here do not exist) and clean-ups."""
    monkeypatch.chdir(tmp_path)
    with holding(held, "other", folder=folder):
        assert f"{held} {IN_USE} (other, pid {os.getpid()})" in _refused(command.split(), capsys)


def test_pretrain_and_resume_touch_nothing_of_a_run_in_use(tmp_path: Path, capsys) -> None:
    """A --resume typed while the run is alive: the run's files, and the checkpoint it is writing, stay as they are
    (pretrain's start removes what a killed run left half written)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    writing = run / "checkpoints" / f".last.pt.tmp{os.getpid()}"
    writing.write_bytes(b"being written")
    (run / "config.yaml").write_text("train:\n  rounds: 4\n")
    with holding(run, "pretrain", folder=True):
        _refused(["pretrain", "--out", str(run), "--resume", "--rounds", "2"], capsys)
        _refused(["pretrain", "--data", str(tmp_path / "m.csv"), "--out", str(run)], capsys)
    assert writing.read_bytes() == b"being written"
    assert (run / "config.yaml").read_text() == "train:\n  rounds: 4\n"


def test_a_lock_file_this_user_cannot_write_still_locks(tmp_path: Path, monkeypatch) -> None:
    """A team's shared folder: the lock file is another user's, which this one may not open for writing (the test
    runs as root, whom no mode stops: the refusal stands in for it). A lock needs no write access; until 2026-12-01
    the second user's process went on without one."""
    import xdc.locks

    out = tmp_path / "run"
    real_open = os.open

    def others_file(path, flags, *mode):
        if flags & os.O_RDWR and Path(path).exists():
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    with holding(out, "pretrain", folder=True):
        monkeypatch.setattr(xdc.locks.os, "open", others_file)
        with pytest.raises(UserError, match=IN_USE):
            with holding(out, "pretrain", folder=True):
                pass


def test_a_run_the_demo_trains_is_refused_to_a_resume(tmp_path: Path, capsys) -> None:
    """The demo (and the GRID benchmark) train runs in folders of their own output: each run's own lock is held
    too, so that `xdc pretrain --resume` of one is refused (it trained beside the demo until 2026-12-01)."""
    demo = subprocess.Popen(_xdc("demo", "--out", str(tmp_path / "d"), "--videos", "16", "--set", "train.rounds=100"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    run = tmp_path / "d" / "runs" / "sdc-video"
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.pt").exists() and demo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run / "checkpoints" / "last.pt").exists(), demo.stderr.read() if demo.poll() is not None else ""
        _refused(["pretrain", "--out", str(run), "--resume"], capsys)
    finally:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()


def test_prepare_in_use_keeps_the_copies_being_written(videos: Path, tmp_path: Path, capsys) -> None:
    """A second prepare into a folder in use must not remove the first's copies being written, nor its report."""
    out = tmp_path / "pp"
    out.mkdir()
    partial = out / ".v0.mp4.partial.mp4"
    partial.write_bytes(b"half a copy")
    (out / "prepared.csv").write_text("the first run's report\n")
    with holding(out, "prepare", folder=True):
        _refused(["prepare", str(videos), "--out", str(out)], capsys)
    assert partial.read_bytes() == b"half a copy"
    assert (out / "prepared.csv").read_text() == "the first run's report\n"


def test_two_manifests_in_one_folder_do_not_block_each_other(videos: Path, tmp_path: Path, capsys) -> None:
    with holding(tmp_path / "a.csv", "index"):
        assert main(["index", str(videos), "--out", str(tmp_path / "b.csv"), "--workers", "1"]) == 0
        assert "6 files: 6 usable" in capsys.readouterr().out
        _refused(["index", str(videos), "--out", str(tmp_path / "a.csv")], capsys)
        (tmp_path / "link.csv").symlink_to(tmp_path / "a.csv")  # the file it names: held
        _refused(["index", str(videos), "--out", str(tmp_path / "link.csv")], capsys)
        (tmp_path / "link.csv").unlink()
    assert not (tmp_path / "a.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]  # no lock file, nor temporary one, left


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_two_prepares_started_together_on_one_folder_one_refused(videos: Path, tmp_path: Path) -> None:
    """Two terminals, the same --out, other --fps: exactly one runs, and its report describes the copies there
    (the second's start had removed the first's copies being written, and its report named other settings)."""
    out = tmp_path / "pp"
    fps8 = subprocess.Popen(_xdc("prepare", str(videos), "--out", str(out), "--fps", "8", "--workers", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    source = subprocess.Popen(_xdc("prepare", str(videos), "--out", str(out), "--workers", "1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    results = [(p.wait(timeout=300), *p.communicate()) for p in (fps8, source)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refusal = next(err for code, _, err in results if code == 2)
    assert refusal.count("\n") == 1 and f"{out} {IN_USE} (prepare, pid " in refusal
    fps = "8" if results[0][0] == 0 else "source"
    with open(out / "prepared.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["status"] == "ok" and f"fps={fps} " in r["settings"] for r in rows), rows
    assert {_frames(out / r["output"]) for r in rows} == {24 if fps == "8" else 48}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no partial, no lock left


HOLDER = """import multiprocessing, sys, time
from xdc.locks import holding
with holding(sys.argv[1], "index"):
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,))
    worker.start()  # a forked worker, which a SIGKILL of its parent leaves running a while
    print(worker.pid, flush=True)
    time.sleep(300)
"""


def test_a_killed_holder_does_not_block_the_next_run(videos: Path, tmp_path: Path) -> None:
    """A run SIGKILLed (its lock file left behind) blocks nothing: the kernel let go of its lock with it; its
    forked workers, still running, do not hold it (a fork shares the parent's flock: they close it)."""
    out = tmp_path / "m.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    worker = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert lock_path(out, folder=False).exists()
        done = subprocess.run(_xdc("index", str(videos), "--out", str(out), "--workers", "1"), capture_output=True,
                              text=True, env=ENV, timeout=300)  # fmt: skip
    finally:
        os.kill(worker, signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    assert not lock_path(out, folder=False).exists()


def test_torchrun_pretrain_into_a_run_in_use_stops_every_rank_with_the_refusal(tmp_path: Path) -> None:
    """Rank 0 takes the lock; its refusal reaches rank 1 (which would otherwise wait for it at the first
    collective) and the job ends with the one line, without a hang, said once by rank 0 before either rank ends
    (torchrun ends the other rank once one has: until 2026-12-02 each rank said it, and the line came once or twice
    as the other rank was ended before or after saying it)."""
    run = tmp_path / "run"
    job = [*torchrun_command(2), "-m", "xdc.cli", "pretrain", "--data", str(tmp_path / "m.csv"), "--out", str(run)]
    with holding(run, "pretrain", folder=True):
        started = time.monotonic()
        done = subprocess.run(job, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    assert f"xdc: error: {run} {IN_USE} (pretrain, pid {os.getpid()}): wait for it to end, or choose another --out\n" \
        in done.stderr, done.stderr[-3000:]  # fmt: skip
    assert done.stderr.count("xdc: error:") == 1, done.stderr[-3000:]
    assert "exitcode  : 2" in done.stderr  # in torchrun's report of its failed ranks
    assert f"{os.sep}xdc{os.sep}" not in done.stderr  # no traceback of xdc's (torchrun's report has one of its own)
    assert time.monotonic() - started < 240
    assert not run.exists()
