"""One job per file in worker processes, where a file may crash or hang its process (FFmpeg on a damaged file),
for ``xdc index`` and ``xdc prepare``.

A crash breaks a ``ProcessPoolExecutor``: every job not yet done fails with it. The files that were in its workers
are the first ones not done (the pool hands out jobs in order, at most one more than it has workers), so those
are run again one per process, where a death is that file's alone, and the rest go on in a new pool. A job that
runs over its time limit is ended by an alarm in its process (the default action of SIGALRM: it ends the process
even inside FFmpeg's C code) and becomes a crash of its own kind: ``hung``.

A worker that has not started within START_LIMIT_S is killed too, which breaks its pool as a crash does: a fork
can leave the child waiting for good on a lock that another thread held at that instant (CPython before 3.11.8,
gh-112275; seen once in a torchrun ``xdc prepare`` test, which then waited for its worker until killed), and no
alarm of its own can end it, as none is set before its first line of Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import EXTRA_QUEUED_CALLS, BrokenProcessPool
from typing import TypeVar

from xdc.data.preload import preload_fork_server

K = TypeVar("K", bound=Hashable)
# How long a worker may take to start (its initializer included): a fork is at once, a spawn imports the modules
START_LIMIT_S = 120.0
START_TRIES = 3  # starts of a file's own process that hung before it counts as failed
# What a crash of the process sends. SIGKILL is the out-of-memory killer's (or a person's): a process earns it by the
# memory of all the processes, not by the file it reads.
CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}


@contextlib.contextmanager
def held_interrupts() -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) held back while this process forks workers, and raised once it has: one that arrives in a
    fork is raised in the at-fork hooks (logging's), which print it as ignored and go on, so the run went on to its
    end (2 of 4 early Ctrl-Cs of a pretraining, until 2026-12-01). A handler that only notes the signal stands in
    meanwhile: masking it would not do, as the kernel then hands it to another thread (tqdm's, TensorBoard's),
    and Python raises it in the main thread all the same. The children start with that handler. Yields the signals
    held back so far (SIGTERM's number for a SIGTERM: xdc.cli passes it on to the SIGINT handler)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers are set and run there only
        yield caught
        return
    before = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, before)
        if signal.SIGTERM in caught:  # passed on by xdc.cli, which stops on it whatever SIGINT's handler
            raise KeyboardInterrupt
        if caught and callable(before):
            before(signal.SIGINT, None)  # Python's default: KeyboardInterrupt, here
        elif caught and before == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def run_jobs(
    keys: list[K], job: Callable[[K], dict], workers: int, done: Callable[[K, dict], None],
    failed: Callable[[str], dict], limit_s: Callable[[K], float], initializer: Callable[[], None],
) -> None:  # fmt: skip
    """``done(key, job(key))`` for every key, as results come, with ``job`` run in up to ``workers`` processes
    (each started with ``initializer``) and ended after ``limit_s(key)`` seconds; a key whose process dies gets
    ``failed(reason)`` as its result. ``job`` must be picklable (a module-level function, or a partial of one)."""
    preload_fork_server()
    started = multiprocessing.SimpleQueue()  # the pid of each worker that has started
    initializer = functools.partial(_start_worker, initializer, os.getpid(), multiprocessing.get_start_method(),
                                    started)  # fmt: skip
    left = list(keys)
    while left:
        finished = _in_pool(left, job, workers, done, limit_s, initializer, started)
        left = [k for k in left if k not in finished]
        suspects, left = left[: workers + EXTRA_QUEUED_CALLS], left[workers + EXTRA_QUEUED_CALLS :]
        for key in suspects:  # the pool broke with these in it: each alone, so a death names its file
            done(key, _isolated(key, job, limit_s(key), initializer, started, failed))


def _in_pool(keys, job, workers, done, limit_s, initializer, started) -> set:
    """Run ``keys`` in a pool until all are done or it breaks (a worker that has not put its pid in ``started``
    within START_LIMIT_S is killed: see above); the keys done.

    Ctrl-C is held back all the while and acted on between waits: raised anywhere, it could land in a future's
    lock (``with f._condition`` in ``as_completed``, the pool's own), which then stayed taken, and the pool's shutdown
    waited for it for good; one cut short by a second Ctrl-C left a worker waiting on the pool's queue, and the
    exit waited on that worker (most double Ctrl-Cs of an ``xdc prepare``, until 2026-12-01)."""
    finished = set()
    pool = ProcessPoolExecutor(max(1, min(workers, len(keys))), initializer=initializer)
    failed = False
    with held_interrupts() as interrupted:
        try:
            futures = {pool.submit(_timed, job, key, limit_s(key)): key for key in keys}
            order = {future: n for n, future in enumerate(futures)}
            pending, broken, since, up = set(futures), False, time.monotonic(), set()
            while pending and not interrupted and not broken:
                ready, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                up |= _drained(started)
                if len(up) < len(pool._processes or ()) and time.monotonic() - since > START_LIMIT_S:
                    for pid, process in list((pool._processes or {}).items()):
                        if pid not in up:  # its jobs' files are run again, each alone, as after a crash
                            process.kill()
                for future in sorted(ready, key=order.get):
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        broken = True
                    elif error is not None:
                        raise error
                    else:  # taken even after a Ctrl-C: it is done
                        done(futures[future], future.result())
                        finished.add(futures[future])
            if broken:
                for future, key in futures.items():  # done before the break, not yet taken
                    if key not in finished and future.done() and not future.cancelled() and future.exception() is None:
                        done(key, future.result())
                        finished.add(key)
        except BaseException:
            failed = True
            raise
        finally:
            if interrupted or failed:  # its workers are killed: a graceful shutdown waits for the jobs in them
                for process in list((pool._processes or {}).values()):  # Python 3.14 has pool.kill_workers()
                    process.kill()
            pool.shutdown(cancel_futures=True)  # broken: the jobs still queued are run again by the caller
    return finished


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _drained(started) -> set[int]:
    """The pids in the queue ``started``, which it leaves empty."""
    pids = set()
    while not started.empty():
        pids.add(started.get())
    return pids


def _start_worker(initializer: Callable[[], None], parent: int, method: str, started) -> None:
    """A worker's start: on Linux it is killed with the process that started it. Otherwise a parent killed with
    SIGKILL (the out-of-memory killer, a job scheduler) would leave its pool's workers waiting on the pool's queue
    for good, each with the modules and memory of a worker (over 300 MB with torch imported)."""
    # Ctrl-C is the parent's to act on: it kills its workers. Theirs printed a traceback each, or two when a second
    # one came as the worker took its next job. So is SIGTERM, which a job scheduler sends every process of the job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":  # the process that started it: the pool's (``method`` fork, spawn), or the fork
        # server (forkserver, Python 3.14's default), which ends with the pool's process
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # whether it died before the call: the worker is another's child now (a forkserver worker's parent is the
        # fork server from the start: each took that for a death and exited, every file "worker process died",
        # until 2026-12-01)
        orphaned = os.getppid() == 1 if method == "forkserver" else os.getppid() != parent
        if orphaned:
            os._exit(1)
    initializer()
    started.put(os.getpid())


def _timed(job, key, limit: float) -> dict:
    """``job(key)`` in a worker, which SIGALRM's default action ends after ``limit`` seconds (0, or no SIGALRM on
    this system: no limit)."""
    alarm = getattr(signal, "alarm", lambda seconds: None)
    alarm(math.ceil(limit) if limit > 0 else 0)
    try:
        return job(key)
    finally:
        alarm(0)


def _isolated(key, job, limit: float, initializer, started, failed) -> dict:
    """``job(key)`` in a process of its own; a death becomes ``failed(reason)``. A process that has not started
    within START_LIMIT_S is killed and another started: that is not the file's doing (START_TRIES in all)."""
    for _ in range(START_TRIES):
        result = _alone(key, job, limit, initializer, started, failed)
        if result is not None:
            return result
    return failed(f"its process hung before it started, {START_TRIES} times")


def _alone(key, job, limit: float, initializer, started, failed) -> dict | None:
    """One try of _isolated: None where the process did not start in time."""
    receive, send = multiprocessing.Pipe(duplex=False)
    process = multiprocessing.Process(target=_child, args=(send, job, key, limit, initializer), daemon=True)
    with held_interrupts():
        process.start()
    send.close()
    try:
        hung = not receive.poll(START_LIMIT_S)  # a child says at once that it has started (_child)
        if hung:
            process.kill()
        result = receive.recv() if receive.recv() == "started" else None
    except EOFError:  # it died before sending
        result = None
    except BaseException:  # Ctrl-C: it is not waited for
        with held_interrupts():
            process.kill()
            process.join()
        raise
    process.join()
    _drained(started)  # its pid: the queue is a pipe, which would fill
    if result is not None:
        return result
    if hung:
        return None
    code = process.exitcode
    if hasattr(signal, "SIGALRM") and code == -signal.SIGALRM:
        return failed(f"hung (over {limit:g} s)")
    if code is not None and -code in CRASHES:
        return failed(f"decoder crashed ({signal.Signals(-code).name})")
    return failed(f"worker process died ({exit_reason(code)})")


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, from its exit code: 'killed by SIGSEGV', 'exit code 1'."""
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def _child(send, job, key, limit: float, initializer) -> None:
    initializer()
    send.send("started")  # within START_LIMIT_S, or _isolated ends it; then the job, which its alarm ends
    send.send(_timed(job, key, limit))
