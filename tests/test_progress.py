"""Progress output: a redrawn bar on a terminal, plain timed lines in a log."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import sys
import termios
import time

import pytest
from tqdm import tqdm

from xdc import progress


def _run(steps: int, pause: float, **options) -> None:
    bar = progress.progress_bar(range(steps), desc="round 0 epoch 0", unit="batch", **options)
    for i in bar:
        time.sleep(pause)
        bar.set_postfix(loss=f"{i:.3f}")


def test_off_a_terminal_a_short_step_prints_nothing(capsys):
    _run(5, 0.0)
    assert capsys.readouterr().err == ""


def test_off_a_terminal_a_long_step_prints_timed_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.3)
    left_open = tqdm(total=2, file=io.StringIO())  # a bar an exception left open, say
    _run(12, 0.04)
    left_open.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # no redraws, no cursor moves below the open bar
    lines = err.splitlines()
    # a line per 0.3 s, not one per postfix update, and the step's end as the last line
    assert 2 <= len(lines) < 12
    assert all(line.startswith("round 0 epoch 0:") for line in lines)
    assert "12/12" in lines[-1] and "loss=11.000" in lines[-1]
    assert not any("12/12" in line for line in lines[:-1])


def test_hidden_bar_prints_nothing_even_when_long(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.05)
    _run(4, 0.05, show=False)
    assert capsys.readouterr().err == ""


def _columns(fd: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))  # a new pty is 0 columns wide


def _on_a_terminal(monkeypatch, work, columns: int = 100) -> str:
    """What ``work(terminal)`` writes to a pseudo-terminal put in place of stderr."""
    master, slave = os.openpty()
    _columns(slave, columns)
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        work(terminal)
    out = b""
    while select.select([master], [], [], 2.0)[0]:  # a pty hands the writes over in pieces, asynchronously
        try:
            piece = os.read(master, 1 << 16)
        except OSError:  # EIO: read past the end of the closed terminal
            break
        if not piece:
            break
        out += piece
    os.close(master)
    return out.decode()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_the_bar_redraws_in_place(monkeypatch):
    out = _on_a_terminal(monkeypatch, lambda _: _run(3, 0.0, position=0))  # the top line whatever bars others left
    assert out.count("\r") >= 2 and "3/3" in out  # redrawn over itself, not a line per update
    assert out.count("\n") <= 1


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_made_narrower_the_bar_takes_the_new_width(monkeypatch):
    """A bar wider than its terminal wraps, and each redraw then leaves a line behind."""

    def work(terminal) -> None:
        for i in progress.progress_bar(range(4), desc="round 0 epoch 0", unit="batch", position=0, mininterval=0):
            if i == 1:
                terminal.flush()
                _columns(terminal.fileno(), 40)  # the window resized

    drawn = _on_a_terminal(monkeypatch, work).replace("\r\n", "\r").split("\r")
    assert len(max(drawn, key=len)) > 40  # drawn at 100 columns first
    assert 0 < len([line for line in drawn if "4/4" in line][-1]) <= 40


def test_a_quiet_pass_shows_only_once_it_takes_long(capsys, monkeypatch):
    """``counted``: passes over rows that take a blink at a thousand rows and minutes at tens of millions."""
    assert list(progress.counted(range(5), "joining")) == list(range(5))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    assert list(progress.counted(range(5), "joining", total=5)) == list(range(5))
    assert capsys.readouterr().err.splitlines()[-1].startswith("joining: 100%|")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_the_postfix_keeps_the_order_given(capsys, monkeypatch):
    """The loss first, as pretrain gives it: tqdm sorted it by name, and a narrow terminal cut the loss off first."""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)

    def work(_=None) -> None:
        bar = progress.progress_bar(range(2), desc="round 0 epoch 0", unit="batch", position=0)
        for _ in bar:
            bar.set_postfix(loss="0.500", clips_per_s="9")

    work()
    assert capsys.readouterr().err.splitlines()[-1].endswith("loss=0.500, clips_per_s=9]")
    assert "loss=0.500, clips_per_s=9]" in _on_a_terminal(monkeypatch, work)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_a_line_printed_during_a_bar_goes_above_it(monkeypatch):
    """A loader worker's death, a warning: printed as usual to stderr, not after the bar's text on its line."""

    def work(terminal) -> None:
        for i in progress.progress_bar(range(4), desc="round 0 epoch 0", unit="batch", position=0, mininterval=0):
            if i == 2:
                print("WARNING: a loader worker died", file=sys.stderr)
        assert sys.stderr is terminal  # given back once the bar is closed

    out = _on_a_terminal(monkeypatch, work)
    before, _, after = out.partition("WARNING: a loader worker died")
    assert before.rsplit("\r", 1)[-1].strip() == ""  # the bar cleared first
    assert "4/4" in after  # and drawn again below


def test_off_a_terminal_the_last_line_is_not_printed_twice(capsys, monkeypatch):
    """The step's end prints a last line unless the timed line before it already said where the step ended."""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # a line at every update, the last one's included
    _run(2, 0.0)
    lines = capsys.readouterr().err.splitlines()
    assert len([line for line in lines if "2/2" in line]) == 1
    assert "loss=1.000" in lines[-1]


class _Writer:
    """A stand-in for stderr with write and flush only, as IDE consoles and logging wrappers put in place."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_a_stderr_without_isatty_gets_timed_lines_and_none_gets_nothing(monkeypatch):
    """A notebook or IDE may replace stderr by an object without isatty, and pythonw sets it to None: a step goes
    on, with timed lines or none, instead of stopping with an AttributeError."""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.05)
    writer = _Writer()
    monkeypatch.setattr(sys, "stderr", writer)
    _run(4, 0.05)
    assert "4/4" in writer.text.splitlines()[-1] and "\r" not in writer.text
    monkeypatch.setattr(sys, "stderr", None)
    _run(4, 0.05)  # nothing to write to, and no error


class OutStream(_Writer):
    """A stand-in for a Jupyter kernel's stderr, ipykernel.iostream.OutStream (ipykernel is not installed): what
    progress tells a notebook by is the stream's class, and the text written to it."""

    __module__ = "ipykernel.iostream"

    def isatty(self) -> bool:
        return False


def test_in_a_notebook_the_bar_redraws_in_place(monkeypatch):
    """Jupyter applies carriage returns to a cell's output: a bar there, not a line a minute (until 2026-12-03)."""
    notebook = OutStream()
    monkeypatch.setattr(sys, "stderr", notebook)
    for i in progress.progress_bar(range(3), desc="round 0 epoch 0", unit="batch", mininterval=0):
        if i == 1:
            print("WARNING: a loader worker died", file=sys.stderr)
    assert sys.stderr is notebook  # given back once the bar is closed
    before, _, after = notebook.text.partition("WARNING: a loader worker died\n")
    assert before.count("\r") >= 2 and before.rsplit("\r", 1)[-1].strip() == ""  # redrawn, then cleared for the line
    drawn = [part for part in after.split("\r") if part.strip()]
    assert "3/3" in drawn[-1] and "\n" not in "".join(drawn[:-1])  # drawn again below it, in place
    assert {len(part.rstrip("\n")) for part in drawn} == {progress.NOTEBOOK_COLUMNS}  # not the kernel's terminal's
