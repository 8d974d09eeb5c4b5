"""A loader worker that dies or hangs costs its file, not the run.

FFmpeg can crash the process that decodes a damaged file, and the kernel kills a worker that runs out of memory.
PyTorch's DataLoader then raises in the main process, from its SIGCHLD handler, wherever that process is: in the
middle of a training step or of a checkpoint write. A resumed run meets the same file at the same step and dies
again. A decoder can also loop for ever on a file (or a network file system stall), and then the run waits for
ever. :class:`Surviving` turns both into a skipped file:

1. the death surfaces only where the next batch is awaited (a SIGCHLD handler of this module's own in place of the
   DataLoader's, which raised anywhere);
2. each worker keeps the video it is reading in a shared slot (the dataset's ``watch``), so the dead worker's
   slot names the file; the dataset marks it, and every later read of it is a failure record, counted by the
   run's FailureLog like any other, without decoding it again;
3. a worker whose slot shows one clip read for over ``data.read_timeout_s`` is hung: it is killed and its file
   marked in the same way (the DataLoader, given a timeout, hands control back while it waits);
4. the pass goes on with new workers from the first batch not yet yielded, in the same order, so every batch is
   what it would have been (a marked file's items aside).

A worker of ``make_loader`` that has not started within START_LIMIT_S of its fork (a fork can leave the child
waiting for good on a lock another thread held: CPython before 3.11.8, gh-112275) is killed too, blaming no file,
and the pass goes on with new workers in the same way; its slot says NOT_STARTED until the worker's first act.

A death that blames no file (between items, or not a crash: the out-of-memory killer's SIGKILL) is retried a few
times per pass, then ends the run with a message.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Subset

from xdc.data.datasets import NOT_STARTED, worker_started
from xdc.data.jobs import CRASHES, START_LIMIT_S, exit_reason, held_interrupts
from xdc.errors import UserError

UNEXPLAINED_DEATHS = 3  # per pass: deaths that blame no file; the run ends at this many
START_FAILURES = 3  # per pass: starts of workers that hung; the run ends at this many
_TORCH_SIGCHLD = "torch.utils.data._utils.signal_handling"
CHECK_S = 5.0  # the DataLoader's own interval between checks of its workers while it waits (MP_STATUS_CHECK_INTERVAL)


class Surviving:
    """The batches of one pass over ``loader``, as ``iter(loader)`` gives them, through the deaths of its workers;
    as long as the loader. The loader stays usable: a persistent one starts new workers at its next pass."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        return _surviving(self.loader)


def _surviving(loader: DataLoader) -> Iterator[dict]:
    global _waiting
    dataset = _clips(loader.dataset)
    if loader.num_workers == 0 or dataset is None:
        with held_interrupts():  # where it starts workers: a Ctrl-C there was lost (jobs.held_interrupts)
            it = iter(loader)
        yield from it
        return
    dataset.watch(loader.num_workers)
    # A shuffled order comes from the loader's generator: a restart puts it back as it was before the pass. A new
    # iterator first draws its workers' base seed from it, a persistent loader's next pass does not; nor does a
    # restart of such a pass.
    order = loader.generator.get_state() if loader.generator is not None else None
    passes = getattr(loader.sampler, "passes", None)  # SeededPasses counts its own: set back too
    fresh = not (loader.persistent_workers and getattr(loader, "_iterator", None) is not None)
    # With a timeout the DataLoader gives control back after that many seconds without a batch, to look for a hung
    # worker; it then checks for dead ones only at the timeout too, so the timeout is its usual check interval.
    limit = dataset.cfg.read_timeout_s
    starts = loader.worker_init_fn is worker_started  # its workers say when they run: a hung start can be seen
    if (limit or starts) and not loader.timeout:
        loader.timeout = min(limit, CHECK_S) if limit else CHECK_S
    main = threading.current_thread() is threading.main_thread()  # where signal handlers run
    current, done, unexplained, hung_starts = loader, 0, 0, 0
    while True:
        it = None
        try:
            if starts and not (current.persistent_workers and getattr(current, "_iterator", None) is not None):
                dataset.reading[:, 1] = int(time.monotonic() * 1000)  # iter() below starts new workers
                dataset.reading[:, 0] = NOT_STARTED
            with held_interrupts():  # it starts the workers (a Ctrl-C in their fork was lost)
                it = iter(current)  # persistent workers that died while idle surface here
            _own_sigchld(it._workers)
            while True:
                _waiting = main
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except RuntimeError as e:
                    _waiting = False  # the end of a worker _stop_hung kills must not raise in its bookkeeping
                    if not (current.timeout and "timed out" in str(e)):
                        raise
                    hung = bool(limit) and _stop_hung(dataset, it._workers, limit, done)
                    late = _stop_unstarted(dataset, it._workers, done)
                    hung_starts += late
                    if hung_starts >= START_FAILURES:
                        raise UserError(
                            f"loader workers did not start within {START_LIMIT_S:g} s {hung_starts} times in this "
                            "pass: a machine too loaded to start them, or forks that hang (CPython before 3.11.8, "
                            "gh-112275; a newer Python mends that)"
                        )  # fmt: skip
                    if hung or late:
                        break  # their files marked, or their starts hung: new workers below
                    continue  # slow, not stuck: wait on
                finally:
                    _waiting = False
                yield batch
                done += 1
        except UserError:
            raise
        except (Exception, _ChildEnded) as e:  # the DataLoader's RuntimeError, OSError for a batch whose sender died
            if it is None:  # iter() itself raised: the persistent loader keeps the iterator
                it = getattr(current, "_iterator", None)
            dead = _dead(getattr(it, "_workers", []), wait=0.0 if isinstance(e, RuntimeError) else 2.0)
            if not dead:
                raise
            unexplained += not _blame(dataset, dead, done)
            if unexplained >= UNEXPLAINED_DEATHS:
                raise UserError(
                    f"loader workers died {unexplained} times in this pass without a file to blame (last: "
                    f"{exit_reason(dead[-1][1])}; the out-of-memory killer sends SIGKILL): try fewer data.workers, or more "
                    "memory"
                )  # fmt: skip
        _stop(current, it)
        if order is not None:
            loader.generator.set_state(order)
        if passes is not None:
            loader.sampler.passes = passes
        current = _from_batch(loader, done, seeds=loader.generator if fresh else torch.Generator())


def _blame(dataset, dead: list[tuple[int, int]], done: int) -> bool:
    """Mark the files that crashed the ``dead`` workers (number, exit code); whether any was."""
    blamed = False
    for worker, code in dead:
        why = exit_reason(code)
        video = int(dataset.reading[worker, 0])
        dataset.reading[worker, 0] = -1
        if video >= 0 and code is not None and -code in CRASHES:
            path = dataset.manifest.path(video)
            dataset.crashed[path] = f"a loader worker died reading it ({why})"
            blamed = True
            print(f"WARNING: a loader worker died ({why}) reading {path}: the run skips that file from now on and "
                  f"goes on from batch {done} with new workers", file=sys.stderr)  # fmt: skip
        else:
            where = "between files" if video < 0 else f"reading {dataset.manifest.path(video)}, not a crash"
            print(f"WARNING: a loader worker died ({why}) {where}; going on from batch {done} with new workers",
                  file=sys.stderr)  # fmt: skip
    return blamed


def _stop_hung(dataset, workers: list, limit: float, done: int) -> bool:
    """Kill the workers that have read one clip for over ``limit`` seconds and mark their files; whether any."""
    since = time.monotonic() * 1000 - limit * 1000  # a read that began before this, in ms, is hung
    hung = [(i, w) for i, w in enumerate(workers) if w.is_alive() and 0 <= dataset.reading[i, 0]
            and dataset.reading[i, 1] < since]  # fmt: skip
    for i, w in hung:
        path = dataset.manifest.path(int(dataset.reading[i, 0]))
        dataset.crashed[path] = f"a loader worker hung reading it (over data.read_timeout_s={limit:g} s)"
        w.kill()
        dataset.reading[i, 0] = -1
        print(f"WARNING: a loader worker hung reading {path} (over data.read_timeout_s={limit:g} s): stopped; the "
              f"run skips that file from now on and goes on from batch {done} with new workers", file=sys.stderr)
    return bool(hung)


def _stop_unstarted(dataset, workers: list, done: int) -> bool:
    """Kill the workers that have not started within START_LIMIT_S of their fork; whether any. No file is theirs."""
    since = time.monotonic() * 1000 - START_LIMIT_S * 1000
    late = [w for i, w in enumerate(workers) if w.is_alive() and dataset.reading[i, 0] == NOT_STARTED
            and dataset.reading[i, 1] < since]  # fmt: skip
    for w in late:
        w.kill()
    if late:
        print(f"WARNING: {len(late)} loader worker(s) did not start within {START_LIMIT_S:g} s (a fork that hung): "
              f"stopped; going on from batch {done} with new workers", file=sys.stderr)  # fmt: skip
    return bool(late)


def _clips(dataset):
    """The clip dataset under any ``Subset``s, or None for another kind."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if hasattr(dataset, "watch") else None


def _dead(workers: list, wait: float) -> list[tuple[int, int]]:
    """(number, exit code) of the workers that ended, waiting up to ``wait`` s for one: a batch can fail to arrive
    (its tensors' sender gone) a moment before its worker's end is seen."""
    deadline = time.monotonic() + wait
    while True:
        dead = [(i, w.exitcode) for i, w in enumerate(workers) if not w.is_alive()]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.02)


class _ChildEnded(BaseException):
    """A child process ended while the main thread waited for a batch (:func:`_on_sigchld`). Raised from a signal
    handler anywhere in the DataLoader's code, so, like KeyboardInterrupt, not an Exception: the DataLoader's
    ``except Exception`` would take it for a failed read and run its open-files check (ten temporary files), where
    the next worker's end could interrupt it half-way."""


_waiting = False  # the main thread is in a Surviving loader's next()
_watched: tuple[int, ...] = ()  # the pids of that loader's workers


def _on_sigchld(signum, frame) -> None:
    """Raise while a batch is awaited and one of its workers ended by a signal or an error: that batch may never
    come. Workers that end normally (at the end of a pass) do not count."""
    global _waiting
    if not _waiting:
        return
    for pid in _watched:
        try:  # WNOWAIT: the DataLoader's own checks still see the worker end
            ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped: the DataLoader has seen it
            continue
        if ended is not None and (ended.si_code != os.CLD_EXITED or ended.si_status != 0):
            _waiting = False  # once per wait: the other workers' ends must not interrupt what this starts
            raise _ChildEnded()


def _own_sigchld(workers: list) -> None:
    """Handle SIGCHLD here rather than as the DataLoader does. Its handler raises in the main thread at any point,
    mid-step or mid-checkpoint; this one only while the main thread waits for a batch, where :class:`Surviving`
    acts at once. Without it (no ``os.waitid``: macOS before Python 3.13) the DataLoader's is set back to the
    default and still finds a dead worker at its next check, within 5 s."""
    global _watched
    _watched = tuple(w.pid for w in workers)
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGCHLD)
    if handler in (signal.SIG_DFL, None) or getattr(handler, "__module__", None) == _TORCH_SIGCHLD:
        signal.signal(signal.SIGCHLD, _on_sigchld if hasattr(os, "waitid") else signal.SIG_DFL)


def _stop(loader: DataLoader, it) -> None:
    """End the workers left of a pass that lost one; a persistent loader starts new ones at its next pass."""
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    if getattr(loader, "_iterator", None) is it:
        loader._iterator = None


class _Skip:
    """A batch sampler's batches from number ``start`` on."""

    def __init__(self, batches, start: int):
        self.batches, self.start = batches, start

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)


def _from_batch(loader: DataLoader, start: int, seeds: torch.Generator | None) -> DataLoader:
    """A loader like ``loader`` for one pass that begins at its batch ``start``, drawing its workers' base seed from
    ``seeds`` (None: torch's global generator, as a loader without a generator does)."""
    return DataLoader(
        loader.dataset, batch_sampler=_Skip(loader.batch_sampler, start), num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, prefetch_factor=loader.prefetch_factor,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        generator=seeds, timeout=loader.timeout,
    )  # fmt: skip
