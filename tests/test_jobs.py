"""Jobs over files in worker processes (xdc index, xdc prepare): a file that crashes or hangs its process costs that
file only. Real processes, ended by real signals; what makes one crash or hang is the test's job."""

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import still_running, stopped_by_ctrl_c_in_a_fork
from xdc.data.jobs import run_jobs

pytestmark = pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="test jobs reach workers by fork")


def _job(key: tuple[str, str]) -> dict:
    name, action = key
    if action == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)  # as FFmpeg's crash on a damaged file ends the process
    if action == "hang":
        time.sleep(3600)  # as a decoder in a loop
    return {"name": name, "pid": os.getpid()}


def _run(keys, workers=2, limit=60.0) -> dict:
    results = Counter(), {}
    calls, got = results

    def done(key, result):
        calls[key] += 1
        got[key] = result

    run_jobs(keys, _job, workers, done, failed=lambda reason: {"failed": reason}, limit_s=lambda key: limit,
             initializer=lambda: None)  # fmt: skip
    assert set(calls) == set(keys) and set(calls.values()) == {1}  # every key once
    return got


def test_a_crash_costs_its_file_and_the_others_stay_in_a_pool():
    keys = [("a", "ok"), ("b", "crash"), *((f"f{i}", "ok") for i in range(14))]
    got = _run(keys)
    assert got[("b", "crash")] == {"failed": "decoder crashed (SIGSEGV)"}
    ok = [r for k, r in got.items() if k[1] == "ok"]
    assert all(r["name"] == k[0] for k, r in got.items() if k[1] == "ok")
    # The pool's 2 workers before the crash, the 3 files that were in it when it broke (each alone), the new pool's
    # 2: at most 7 processes. Before, every file after a crash had a process of its own (15).
    assert len({r["pid"] for r in ok}) <= 7


def test_a_file_that_hangs_is_ended_after_its_limit_and_the_others_done():
    t = time.monotonic()
    got = _run([("a", "ok"), ("b", "hang"), ("c", "ok"), ("d", "ok")], limit=1.0)
    assert got[("b", "hang")] == {"failed": "hung (over 1 s)"}
    assert all("pid" in r for k, r in got.items() if k[1] == "ok")
    assert time.monotonic() - t < 20  # about 2 s: the limit in the pool, then again alone


DRIVER = """
import time
from xdc.data.jobs import run_jobs


def job(key):
    time.sleep(3600)


run_jobs([1, 2], job, 2, done=print, failed=print, limit_s=lambda key: 0, initializer=lambda: None)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="finds the workers in Linux's /proc")
def test_workers_end_with_a_process_killed_with_sigkill(tmp_path):
    """A pool's workers wait on its queue; killed with the process that started them (prctl), not left running."""
    from conftest import child_pids

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver)])
    deadline = time.time() + 60
    while len(workers := child_pids(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2, "the pool did not start its workers"
    time.sleep(0.5)  # their initializer has run: each is in its job
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while any(still_running(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if still_running(pid)]  # (a zombie has ended: an init that reaps late keeps it)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the workers outlived the process that started them"


def test_a_ctrl_c_while_the_workers_fork_stops_the_jobs():
    """Raised in the at-fork hooks, it was printed as ignored and the jobs went on (until 2026-12-01)."""
    work = "import json\nfrom xdc.data.jobs import run_jobs\n"
    stopped_by_ctrl_c_in_a_fork(work + "run_jobs(['{}'] * 4, json.loads, 2, print, lambda why: {}, lambda k: 0, int)")


def test_a_double_ctrl_c_stops_the_jobs_at_once(tmp_path):
    """Two Ctrl-Cs to the process group, as a second press or ``timeout -s INT`` (which signals the process, then its
    group) send: the pool's graceful shutdown, cut short, left a worker waiting on the pool's queue or a future's
    lock taken, and the exit waited for good (9 of 10 tries of this test, until 2026-12-01)."""
    script = (
        "import sys, time\n"
        "from xdc.data.jobs import run_jobs\n"
        "keys = [0.2 + n * 1e-6 for n in range(200)]  # 0.2 s each\n"
        "try:\n"
        "    run_jobs(keys, time.sleep, 2, lambda key, result: print(key, flush=True), dict, lambda key: 0, int)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(7)\n"
    )
    for n, gap in enumerate([0.0, 0.0, 0.05, 0.2]):
        log = tmp_path / f"stderr{n}"
        with log.open("w") as stderr:
            process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr,
                                       text=True, start_new_session=True)  # fmt: skip
        assert process.stdout.readline(), log.read_text()  # a job done: the workers are at work
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(gap)
        with contextlib.suppress(ProcessLookupError):  # all gone already
            os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"still running 30 s after two Ctrl-Cs {gap} s apart")
        process.stdout.close()
        # 7: the KeyboardInterrupt reached the caller; -SIGINT: the second came as Python ended (its default action)
        assert code in (7, -signal.SIGINT), log.read_text()[-2000:]
        assert "Process ForkProcess" not in log.read_text()  # no traceback of a worker: they are the parent's to end


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_of_other_start_methods_do_their_jobs(method, tmp_path):
    """Python 3.14's default on Linux (forkserver) and macOS's (spawn): a forkserver worker's parent is the fork
    server, not the pool's process, and each such worker took that for its parent's death and exited, so that every
    file was "worker process died" (until 2026-12-01)."""
    script = tmp_path / "jobs.py"
    script.write_text(
        "import multiprocessing, sys\n"
        "from xdc.data.jobs import run_jobs\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method(sys.argv[1])\n"
        "    got = {}\n"
        "    run_jobs(['ab', 'cd', 'ef'], dict.fromkeys, 2, got.__setitem__, lambda reason: {'failed': reason},\n"
        "             lambda key: 60.0, int)\n"
        "    print(sorted(got.items()))\n"
    )
    done = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([(k, dict.fromkeys(k)) for k in ("ab", "cd", "ef")])


_HANGING_START = """
import os, signal, sys, time
from xdc.data import jobs

jobs.START_LIMIT_S = 2.0
marker = sys.argv[1]


def start():  # the next process to start after the marker is made hangs, as a fork that inherited a taken lock
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return
    time.sleep(3600)


def job(key):
    if key == "crash":
        open(marker, "w").close()  # the first process of the files run alone after this crash hangs in its start
        os.kill(os.getpid(), signal.SIGSEGV)
    return {"key": key}


if __name__ == "__main__":
    if sys.argv[2] == "pool":
        open(marker, "w").close()
    got = {}
    jobs.run_jobs(sys.argv[3:], job, 1, got.__setitem__, lambda reason: {"failed": reason}, lambda key: 60.0, start)
    print(sorted(got.items()))
"""


@pytest.mark.parametrize("where", ["pool", "alone"])
def test_a_worker_that_hangs_before_it_starts_is_killed_and_its_files_run_again(where, tmp_path):
    """A fork can hang the child before its first line of Python (CPython before 3.11.8, gh-112275: a lock another
    thread held at the fork), where no alarm of its own ends it: a torchrun xdc prepare test waited for its one
    worker until killed, on 2026-12-02. A worker of the pool, or a file's own process after a crash, that has not
    started within START_LIMIT_S is killed, and its files are run again; a file is not failed for it."""
    script = tmp_path / "jobs.py"
    script.write_text(_HANGING_START)
    keys = ["a", "b", "c"] if where == "pool" else ["crash", "a", "b", "c"]
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "hang"), where, *keys], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {key: {"key": key} for key in ("a", "b", "c")}
    if where == "alone":
        expected["crash"] = {"failed": "decoder crashed (SIGSEGV)"}
    assert done.stdout.strip() == str(sorted(expected.items()))
