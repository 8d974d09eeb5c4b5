"""Loader workers that die: real worker processes killed by real signals, as FFmpeg's crashes and the out-of-memory
killer kill them, while they read real files. What makes a worker die on one file is the test's: a decoder crash
cannot be made to order."""

import multiprocessing
import os
import signal
import time

import pytest
import torch
from torch.utils.data import get_worker_info

from conftest import stopped_by_ctrl_c_in_a_fork, synthetic_manifest
from xdc.config import load_config
from xdc.data import worker_deaths
from xdc.data.datasets import EvalClips, TrainClips, _ClipDataset, make_loader
from xdc.data.manifest import Manifest
from xdc.data.worker_deaths import Surviving
from xdc.errors import UserError
from xdc.training import checkpoint
from xdc.training.distributed import Dist
from xdc.training.pretrain import Pretrainer, pretrain


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return synthetic_manifest(tmp_path_factory.mktemp("deaths"), 12, 3, seed=0)


@pytest.fixture
def crash_on(monkeypatch):
    """A worker that reads ``dataset.crash_on`` (a path) dies of SIGSEGV, as a decoder crash kills it (or of
    ``dataset.crash_signal``), once the file ``dataset.crash_when`` exists (from the start when unset); one that
    reads a path of ``dataset.sleep_on`` (path -> seconds) sleeps that long first, as a decoder in a loop would."""
    read = _ClipDataset._read_clips

    def read_clips(self, i, starts):
        when = getattr(self, "crash_when", None)
        if get_worker_info() and self.manifest.path(i) in getattr(self, "sleep_on", {}):
            time.sleep(self.sleep_on[self.manifest.path(i)])
        if get_worker_info() and self.manifest.path(i) == getattr(self, "crash_on", None):
            if when is None or os.path.exists(when):
                os.kill(os.getpid(), getattr(self, "crash_signal", signal.SIGSEGV))
        return read(self, i, starts)

    monkeypatch.setattr(_ClipDataset, "_read_clips", read_clips)


def _clips(manifest, *settings: str) -> EvalClips:
    cfg = load_config(None, list(settings), preset="tiny").data
    return EvalClips(Manifest.load(manifest), cfg, clips=2, raw_video=True)


def _items(batches) -> tuple[list, list]:
    """(index, clip, video) of every item that loaded, in order, and (index, reason) of every failure."""
    loaded, failed = [], []
    for b in batches:
        loaded += [(int(i), int(c), v) for i, c, v in zip(b["index"], b.get("clip", []), b.get("video", []))]
        failed += [(f["index"], f["reason"]) for f in b["failures"]]
    return loaded, failed


def _key(item):
    return item[:2]


@pytest.mark.parametrize("shuffle, crash_pass", [(False, 0), (True, 1)])
def test_a_worker_that_dies_on_a_file_costs_that_file_and_no_other_batch(
    manifest, crash_on, tmp_path, capsys, shuffle, crash_pass
):  # fmt: skip
    # Two passes of a persistent loader; a worker dies reading one file in the first (a new iterator) or the second
    # (a persistent one's next pass; with a shuffled order, which the restart must replay).
    reference = make_loader(_clips(manifest), 4, 2, shuffle=shuffle, seed=3)
    dataset = _clips(manifest)
    victim = 4
    dataset.crash_on = dataset.manifest.path(victim)
    dataset.crash_when = tmp_path / "now"
    loader = make_loader(dataset, 4, 2, shuffle=shuffle, seed=3)
    for n in range(3):
        if n == crash_pass:
            dataset.crash_when.touch()
        expected, _ = _items(reference)
        loaded, failed = _items(Surviving(loader))
        warnings = capsys.readouterr().err
        if n < crash_pass:
            assert not failed and not warnings
        else:  # from the death on, the file's two clips fail without a read, and no other item changes
            assert failed == [(victim, "a loader worker died reading it (killed by SIGSEGV)")] * 2
            assert ("WARNING: a loader worker died (killed by SIGSEGV) reading" in warnings) == (n == crash_pass)
            expected = [x for x in expected if x[0] != victim]
        if shuffle and n > crash_pass:  # new workers after the death: a new iterator draws a base seed first
            loaded, expected = sorted(loaded, key=_key), sorted(expected, key=_key)
        assert [x[:2] for x in loaded] == [x[:2] for x in expected]
        assert all(torch.equal(a[2], b[2]) for a, b in zip(loaded, expected))
    assert dataset.crashed == {dataset.crash_on: "a loader worker died reading it (killed by SIGSEGV)"}


def test_a_worker_death_replays_the_training_clips_of_its_pass(manifest, crash_on, tmp_path, capsys):
    """A loader of training clips without a sampler (SeededPasses, whose clips follow from the seed and the pass): a
    worker dies in the second pass, and the restart draws that pass's clips again, not the next pass's."""
    cfg = load_config(None, [], preset="tiny").data
    reference = make_loader(TrainClips(Manifest.load(manifest), cfg, raw_video=True), 4, 2, shuffle=True, seed=3)
    dataset = TrainClips(Manifest.load(manifest), cfg, raw_video=True)
    victim = 4
    dataset.crash_on, dataset.crash_when = dataset.manifest.path(victim), tmp_path / "now"
    loader = make_loader(dataset, 4, 2, shuffle=True, seed=3)

    def drawn(batches) -> list[tuple[int, float]]:
        return [(int(i), float(s)) for b in batches for i, s in zip(b["index"], b["start"])]

    for n in range(3):
        if n == 1:
            dataset.crash_when.touch()
        expected, loaded = drawn(reference), drawn(Surviving(loader))
        assert loaded == [x for x in expected if n < 1 or x[0] != victim]
    assert "WARNING: a loader worker died (killed by SIGSEGV) reading" in capsys.readouterr().err


def _kill_an_idle_worker(batches, sig=signal.SIGKILL) -> None:
    """Kill a worker of the pass that ``batches`` (a :class:`Surviving` iteration) is in, once none of them reads
    (all have their batches ready), as the out-of-memory killer may."""
    pass_ = batches.gi_frame.f_locals["it"]
    reading = pass_._dataset.reading
    for _ in range(200):
        if (reading[:, 0] < 0).all():
            time.sleep(0.2)  # between items a slot is clear for a moment; idle, it stays clear
            if (reading[:, 0] < 0).all():
                os.kill(pass_._workers[0].pid, sig)
                return
        time.sleep(0.05)
    raise AssertionError("the workers never went idle")


def _until_restarted(batches, loader) -> list:
    """The batches up to the first of a restarted pass."""
    got = []
    while batches.gi_frame.f_locals["current"] is loader:
        got.append(next(batches))
    return got


def test_a_worker_killed_between_files_blames_none_and_too_many_such_deaths_stop_with_a_message(
    manifest, monkeypatch, capsys
):  # fmt: skip
    monkeypatch.setattr(worker_deaths, "UNEXPLAINED_DEATHS", 2)
    expected, _ = _items(make_loader(_clips(manifest), 4, 0))
    loader = make_loader(_clips(manifest), 4, 2)
    batches = iter(Surviving(loader))
    got = [next(batches)]
    _kill_an_idle_worker(batches)
    got += list(batches)  # the live worker's batches, then the dead one's again from new workers
    loaded, failed = _items(got)
    assert not failed and not loader.dataset.crashed
    assert [x[:2] for x in loaded] == [x[:2] for x in expected]
    assert "WARNING: a loader worker died (killed by SIGKILL) between files; going on from batch" in (
        capsys.readouterr().err
    )  # fmt: skip

    batches = iter(Surviving(loader))  # the loader's next pass, with new workers
    next(batches)
    _kill_an_idle_worker(batches)
    _until_restarted(batches, loader)
    _kill_an_idle_worker(batches)
    with pytest.raises(UserError, match="loader workers died 2 times in this pass without a file to blame"):
        list(batches)


def test_a_worker_killed_by_sigkill_while_reading_blames_no_file(manifest, crash_on, monkeypatch, capsys):
    # SIGKILL is the out-of-memory killer's: the memory of all the processes, not the file. So the file is read
    # again, and here, where it kills its reader each time, the deaths end the pass.
    monkeypatch.setattr(worker_deaths, "UNEXPLAINED_DEATHS", 2)
    dataset = _clips(manifest)
    dataset.crash_on, dataset.crash_signal = dataset.manifest.path(4), signal.SIGKILL
    with pytest.raises(UserError, match="died 2 times in this pass without a file to blame .last: killed by SIGKILL"):
        list(Surviving(make_loader(dataset, 4, 2)))
    assert not dataset.crashed
    assert f"died (killed by SIGKILL) reading {dataset.crash_on}, not a crash; going on" in capsys.readouterr().err


def test_a_worker_that_hangs_on_a_file_is_stopped_and_the_file_skipped_but_a_slow_one_waited_for(
    manifest, crash_on, capsys
):  # fmt: skip
    # data.read_timeout_s=6: the DataLoader hands control back every 3 s without a batch. Video 2's clips take 3 s
    # each (slow, read on), video 4's for ever (hung: killed after 6-9 s).
    expected, _ = _items(make_loader(_clips(manifest), 4, 0))
    dataset = _clips(manifest, "data.read_timeout_s=6")
    slow, hung = dataset.manifest.path(2), dataset.manifest.path(4)
    dataset.sleep_on = {slow: 3, hung: 3600}
    t = time.monotonic()
    loaded, failed = _items(Surviving(make_loader(dataset, 4, 2)))
    assert time.monotonic() - t < 60  # about 12 s of it fixed: the checks' interval, the slow reads, the hang
    assert failed == [(4, "a loader worker hung reading it (over data.read_timeout_s=6 s)")] * 2
    expected = [x for x in expected if x[0] != 4]
    assert [x[:2] for x in loaded] == [x[:2] for x in expected]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(loaded, expected))
    assert list(dataset.crashed) == [hung]
    assert f"WARNING: a loader worker hung reading {hung} (over data.read_timeout_s=6 s): stopped" in (
        capsys.readouterr().err
    )  # fmt: skip


_hang_in_fork: tuple | None = None  # (marker, once): see hung_start


def _hang_if_marked() -> None:
    if _hang_in_fork is None:
        return
    marker, once = _hang_in_fork
    try:
        marker.unlink() if once else marker.stat()  # unlink: one child only, however close their forks
    except FileNotFoundError:
        return
    time.sleep(3600)


os.register_at_fork(after_in_child=_hang_if_marked)  # for good: a hook cannot be taken back


@pytest.fixture
def hung_start(monkeypatch, tmp_path):
    """``hung_start(once)``: forked children hang before they run anything, as one whose fork hung on a lock does;
    the first one only, or all. The check is at 2 s, not 120."""
    global _hang_in_fork

    def hang(once: bool) -> None:
        global _hang_in_fork
        marker = tmp_path / "hang"
        marker.touch()
        _hang_in_fork = (marker, once)

    monkeypatch.setattr(worker_deaths, "START_LIMIT_S", 2.0)
    yield hang
    _hang_in_fork = None


@pytest.mark.parametrize("read_timeout", [0, 6])
def test_a_worker_whose_start_hangs_is_replaced_and_costs_no_batch(manifest, hung_start, capsys, read_timeout):
    # Until 2026-12-02 the pass waited for its first batch for good (without data.read_timeout_s; with it, the
    # hung worker read no file, so none was found hung).
    expected, _ = _items(make_loader(_clips(manifest), 4, 0))
    dataset = _clips(manifest, f"data.read_timeout_s={read_timeout}")
    hung_start(once=True)
    t = time.monotonic()
    loaded, failed = _items(Surviving(make_loader(dataset, 4, 2)))
    assert time.monotonic() - t < 60  # a check after 5 s without a batch, then the pass again from batch 0
    assert not failed and not dataset.crashed
    assert [x[:2] for x in loaded] == [x[:2] for x in expected]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(loaded, expected))
    assert capsys.readouterr().err.splitlines() == [
        "WARNING: 1 loader worker(s) did not start within 2 s (a fork that hung): stopped; going on from batch 0 with "
        "new workers"
    ]  # its end is not taken for a death on top


def test_workers_whose_starts_hang_again_and_again_stop_the_pass_with_a_message(
    manifest, hung_start, monkeypatch, capsys
):  # fmt: skip
    monkeypatch.setattr(worker_deaths, "START_FAILURES", 2)
    hung_start(once=False)
    with pytest.raises(UserError, match=r"loader workers did not start within 2 s 2 times in this pass: .*gh-112275"):
        list(Surviving(make_loader(_clips(manifest), 4, 2)))
    assert capsys.readouterr().err.count("did not start") == 2


def test_a_worker_end_interrupts_a_wait_once_and_past_generic_exception_handlers():
    """Two workers end with an error while a batch is awaited: the first end interrupts the wait, through the
    DataLoader's ``except Exception`` (which would otherwise run its open-files check, there to be interrupted by the
    second end), and the second end interrupts nothing, however soon it comes."""
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    workers = [ctx.Process(target=lambda: (go.wait(), os._exit(3))) for _ in range(2)]
    for w in workers:
        w.start()
    before = signal.signal(signal.SIGCHLD, worker_deaths._on_sigchld)
    worker_deaths._watched, worker_deaths._waiting = tuple(w.pid for w in workers), True
    try:
        with pytest.raises(worker_deaths._ChildEnded):
            try:
                go.set()
                time.sleep(30)
            except Exception:
                pytest.fail("an `except Exception` took the end of a worker")
        assert not worker_deaths._waiting
        for w in workers:
            w.join(10)  # the second end's signal comes in here or before; it must raise nothing
        assert [w.exitcode for w in workers] == [3, 3]
    finally:
        signal.signal(signal.SIGCHLD, before)
        worker_deaths._watched, worker_deaths._waiting = (), False


def test_a_pretraining_run_goes_on_past_a_file_that_kills_its_worker_and_a_resume_keeps_it_skipped(
    manifest, crash_on, tmp_path, capsys
):  # fmt: skip
    cfg = load_config(None, ["train.batch_size=8", "train.k=3", "train.rounds=2", "train.epochs=1",
                             "data.workers=2", "train.method=xdc",
                             "data.max_fail_fraction=0.1"], preset="tiny")  # 1 of 12 videos: 8%  # fmt: skip
    victim = Manifest.load(manifest).path(5)
    _ClipDataset.crash_on = victim  # every dataset of the run: extraction's and training's
    try:
        pretrain(cfg, manifest, tmp_path / "run", resume=False, ctx=Dist())
    finally:
        del _ClipDataset.crash_on
    assert "WARNING: a loader worker died (killed by SIGSEGV) reading" in capsys.readouterr().err
    rows = (tmp_path / "run" / "skipped.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(victim) and "killed by SIGSEGV" in rows[1]
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    crashed = {victim: "a loader worker died reading it (killed by SIGSEGV)"}
    assert state["ranks"][0]["crashed"] == crashed and list(state["ranks"][0]["failures"]["files"]) == [victim]
    again = Pretrainer(cfg, manifest, tmp_path / "run", Dist(), resume=True)
    again.resume()  # the file stays skipped: read again, it would kill another worker at the same step
    assert again.train_set.crashed == crashed and again.eval_set.crashed is again.train_set.crashed
    assert again.failures.files == state["ranks"][0]["failures"]["files"]  # skipped.csv keeps them after a resume


def test_a_ctrl_c_while_the_loader_forks_its_workers_stops_the_pass():
    """Raised in the at-fork hooks, it was printed as ignored and the run went on to its end (until 2026-12-01)."""
    work = "from torch.utils.data import DataLoader\nfrom xdc.data.worker_deaths import Surviving\n"
    stopped_by_ctrl_c_in_a_fork(work + "for _ in Surviving(DataLoader(list(range(8)), batch_size=2, num_workers=1)):\n"
                                "    pass")
