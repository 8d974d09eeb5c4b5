"""Progress of the long steps, on stderr: a tqdm bar on a terminal, and in a Jupyter notebook (whose frontends
apply carriage returns to a cell's output, so a bar redraws in place there too); elsewhere (a batch job's log file,
a scheduler or torchrun capturing the output) a plain line every ``LINE_EVERY_S`` seconds once a step has run that
long, and a last line when it ends. A bar redraws itself with carriage returns, which a log file keeps: a day-long
run would leave one line of megabytes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

LINE_EVERY_S = 60.0
NOTEBOOK_COLUMNS = 100  # a notebook's output has no width to ask for (tqdm would ask the kernel's own terminal)
QUIET_S = 2.0  # steps that only sometimes take long (at tens of millions of files) show nothing for this long
T = TypeVar("T")


class _Lines:
    """A stream for tqdm that writes each redraw of the bar as a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _Bar(tqdm):
    """A bar whose postfix keeps the order given: the first (a loss) is the last that a narrow terminal cuts off.
    tqdm sorts it by name (until 2026-12-03: ``clips_per_s=..., data_wait=..., loss=...``)."""

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        super().set_postfix({**(ordered_dict or {}), **kwargs}, refresh=refresh)


class _AboveBars:
    """Stands for stderr while a terminal bar is open, so that a line printed then (a loader worker's death, a
    warning) goes above the bar: tqdm clears the bars, the line is written, the bars are drawn again. Until
    2026-12-03 it went on the bar's line, after its text."""

    def __init__(self, stream) -> None:
        self.stream, self.pid, self.pending = stream, os.getpid(), ""

    def write(self, text: str) -> int:
        if os.getpid() != self.pid:  # a forked worker's: its copy of the bars is not the one on the screen
            return self.stream.write(text)
        self.pending += text
        if "\n" in self.pending:  # whole lines only: print writes a line's text and its end apart
            lines, _, self.pending = self.pending.rpartition("\n")
            with tqdm.external_write_mode(file=self.stream):
                self.stream.write(lines + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class _TerminalBar(_Bar):
    """A bar on a terminal or in a notebook: stderr goes through ``_AboveBars`` while one is open."""

    _open = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._counted = True
        _TerminalBar._open += 1
        if _TerminalBar._open == 1:
            sys.stderr = _AboveBars(sys.stderr)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if getattr(self, "_counted", False):  # once, whichever of the loop's end, ``with`` and __del__ is first
                self._counted = False
                _TerminalBar._open -= 1
                if _TerminalBar._open == 0 and isinstance(sys.stderr, _AboveBars):
                    sys.stderr, text = sys.stderr.stream, sys.stderr.pending
                    sys.stderr.write(text)


class _LineBar(_Bar):
    """A bar that is drawn only on its schedule: a new postfix or description waits for the next line."""

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def display(self, msg=None, pos=None) -> bool:
        shown = (self.n, self.postfix)
        if self.disable and shown == getattr(self, "_shown", None):  # closing (tqdm disables first): the last line
            return True  # said it all; until 2026-12-03 the step's end printed it twice, only the rate changed
        self._shown = shown
        return super().display(msg, pos)


def progress_bar(
    iterable: Iterable | None = None, *, desc: str, show: bool = True, quiet: bool = False, **options
) -> tqdm:
    """``tqdm(iterable, desc=desc, **options)`` as described above; ``show=False`` (another rank than the first,
    a step too small to be worth a bar) keeps it silent everywhere, ``quiet`` until the step has taken QUIET_S."""
    stream = sys.stderr.stream if isinstance(sys.stderr, _AboveBars) else sys.stderr
    if not show or stream is None:  # None: no stderr at all (pythonw, a service), where tqdm's writes would fail
        return tqdm(iterable, desc=desc, disable=True, **options)
    if _is_notebook(stream):
        # position 0: a notebook draws no cursor moves, which a bar below one left open (by an exception) would use
        options.update(position=0, ncols=NOTEBOOK_COLUMNS)
        return _TerminalBar(iterable, desc=desc, file=stream, delay=QUIET_S if quiet else 0.0, **options)
    if _is_terminal(stream):
        # the width read at each redraw: a terminal made narrower (a window resized, a tmux split) wrapped a bar of
        # the old width, and each redraw then left a line behind (until 2026-12-03)
        return _TerminalBar(iterable, desc=desc, file=stream, delay=QUIET_S if quiet else 0.0, dynamic_ncols=True,
                            **options)  # fmt: skip
    every = LINE_EVERY_S
    # The last line says how the step ended (printed only after a first one). Position 0: a bar still open
    # elsewhere (one left by an exception) would otherwise move this one down with cursor escapes.
    options.update(leave=True, position=0, delay=max(every, QUIET_S if quiet else 0.0))
    return _LineBar(iterable, desc=desc, file=_Lines(stream), ascii=True, mininterval=every, maxinterval=every,
                    **options)  # fmt: skip


def _is_notebook(stream) -> bool:
    """Whether ``stream`` is a Jupyter kernel's output stream (ipykernel's ``OutStream``, which is no terminal):
    until 2026-12-03 a notebook got a timed line a minute instead of a bar. Known by its class, so that ipykernel
    need not be imported (nor installed)."""
    return any(c.__module__ == "ipykernel.iostream" and c.__name__ == "OutStream" for c in type(stream).__mro__)


def _is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal. A stand-in for stderr that an IDE, a notebook or a logging wrapper puts in
    place may have no ``isatty`` (every step stopped with an AttributeError before): it is written to as a log."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # ValueError: a closed file
        return False


def counted(items: Iterable[T], desc: str, total: int | None = None, unit: str = " rows") -> Iterator[T]:
    """``items`` as they go, counted on a bar (``progress_bar``) that shows only once they take over QUIET_S: for
    passes over files of rows, a blink at a thousand rows and many minutes at tens of millions."""
    with progress_bar(desc=desc, total=total, unit=unit, quiet=True) as bar:
        for item in items:
            yield item
            bar.update()
