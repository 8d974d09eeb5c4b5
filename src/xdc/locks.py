"""One xdc process per output: each command that writes an output holds an exclusive kernel lock on it
(``flock``) from before its startup checks until it ends, and a second process given the same output is refused
in one line. Without it both passed the checks ("already holds a run", "not empty", ...) and then removed or
overwrote each other's files. A kernel lock ends with its process: a killed run (SIGKILL, a node lost) leaves
none that would block the next. On a platform without ``fcntl`` (Windows) nothing is locked.

A folder's lock is a hidden file in it (``DIR/.xdc.lock``); a file's is a hidden file beside it (``.NAME.lock``),
so that two outputs in one folder do not block each other. The lock file goes when its holder ends, with the
folders that were made for it alone (a command refused by its own checks leaves nothing).

A forked child shares its parent's lock (flock's belongs to the open file, which a fork copies): a worker of a
run killed with SIGKILL would hold the lock until it noticed, and refuse the next run. Children close it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from xdc.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FOLDER_LOCK = ".xdc.lock"
ATTEMPTS = 20  # a lock file removed by its holder as another opened it: opened again, at most this often
HOLDER_READS = 20  # read again every 10 ms while the lock file does not say who holds it yet
_held: set[int] = set()  # the descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _held:
        os.close(fd)  # the parent's lock stays: it lets go only once every descriptor of the file is closed
    _held.clear()


if fcntl is not None:
    os.register_at_fork(after_in_child=_close_in_child)


def lock_path(out: Path, folder: bool) -> Path:
    """Where the lock of the output ``out`` lives: inside it for a ``folder``, beside it for a file, or beside the
    file a link names (or for a folder given as ``.``, ``..``: by its own name)."""
    if folder:
        return out / FOLDER_LOCK
    out = Path(os.path.realpath(out))  # a link to a file held elsewhere is that file: its one lock
    return out.with_name(f".{out.name}.lock")


@contextmanager
def holding(out: str | Path, command: str, folder: bool = False, choose: str = "--out") -> Iterator[None]:
    """Hold the lock of the output ``out`` (a ``folder`` or a file) while the block runs; a UserError naming the
    other process's ``command`` where one holds it (``choose``: what the user would give instead). Where the lock
    file cannot be made (``out`` a file given for a folder, a folder that cannot be written) the block runs without
    it: the command's own checks and writes say what is wrong there."""
    out = Path(out)
    if fcntl is None or (folder and out.exists() and not out.is_dir()) or os.path.realpath(out) == "/":
        yield  # (realpath: a loop of links is no error here, where resolve() raised one)
        return
    path = lock_path(out, folder)
    made = _missing_folders(path.parent)
    fd = _acquire(path, out, command, choose)
    try:
        yield
    finally:
        _release(fd, path, made)


def _acquire(path: Path, out: Path, command: str, choose: str) -> int | None:
    """The descriptor of ``path``, locked by this process, with ``command`` written in it; None where the file
    cannot be made or locked there (``holding``)."""
    for _ in range(ATTEMPTS):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():  # a copy's (cp -rs of a folder a killed run left locked): not the lock of this one
                path.unlink(missing_ok=True)
            fd = _open(path)
        except FileNotFoundError:  # a folder removed by a holder that made it, as it ended: made again
            continue
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            for _ in range(HOLDER_READS):  # a holder that has just taken it writes who it is right after
                if holder:
                    break
                time.sleep(0.01)
                holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{out} is in use by another xdc process{holder}: wait for it to end, or choose another "
                            f"{choose}") from None  # fmt: skip
        except OSError:  # a filesystem without locks (ENOLCK)
            os.close(fd)
            return None
        if _same_file(fd, path):  # else a holder removed the file before it let go: this lock guards nothing
            with suppress(OSError):  # who holds it, for the refusal's message; a file another user left: read only
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{command}\n{os.getpid()}\n".encode(), 0)
            _held.add(fd)
            return fd
        os.close(fd)
    return None


def _open(path: Path) -> int:
    """The lock file, made writable by the group (a team's shared folder), or opened to read where another user's
    is there (a lock needs no write access: without it, a second user's process went on unlocked)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _release(fd: int | None, path: Path, made: list[Path]) -> None:
    """Remove the lock file while it is still held (one who opens it meanwhile sees it gone: ``_same_file``), then
    the folders made for it that nothing else went into, then let go."""
    if fd not in _held:  # none, or a forked child's, closed as it started
        return
    _held.discard(fd)
    try:
        path.unlink(missing_ok=True)
        for folder in made:
            folder.rmdir()
    except OSError:  # a folder the command wrote into: kept
        pass
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """`` (COMMAND, pid N)`` of the process that holds the lock of ``fd``, as it wrote it; empty before it has."""
    try:
        command, pid = os.pread(fd, 200, 0).decode().splitlines()
    except (OSError, UnicodeDecodeError, ValueError):
        return ""
    return f" ({command}, pid {pid})"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet, innermost first."""
    missing = []
    for each in (folder, *folder.parents):
        if each.exists():
            break
        missing.append(each)
    return missing
