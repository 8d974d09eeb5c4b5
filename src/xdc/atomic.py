"""Files replaced whole: written beside their place, then renamed into it. A reader, or the next run after a crash
or a full disk, finds the old file or the new one, never part of one; a write that fails leaves no temporary file
(as large as what it was writing, it would keep a full disk full) and says which file it could not write, and why.
Every writer of xdc that replaces a file goes through ``replacing``, or ``move`` for one written elsewhere.

That holds after a power loss or a kernel crash too: the new file's data is flushed to disk (fsync) before the
rename, and its folder after it, so the rename cannot reach the disk before the data (an empty file under the
name, on ext4 and xfs) or be lost. Until 2026-12-02 only checkpoints and the clip cache's state were flushed,
and only before the rename. Files appended to as a run goes (``log.jsonl``, the side files of rows) are not
renamed: a power loss can lose their last lines, or cut one short, as a kill can, which their readers allow for
(``log.jsonl`` is flushed before each checkpoint, whose resume logs again what came after it)."""

from __future__ import annotations

import errno
import filecmp
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xdc.errors import UserError


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place; left behind only by a process killed meanwhile."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


class WriteError(UserError):
    """A file that the machine could not write (a full disk, ...): a UserError, which the command line says in one
    line, that code which can go on without the file (a cache) catches as it would the OSError."""


def is_partial(entry: Path) -> bool:
    """Whether ``entry`` is named as a ``partial_path``."""
    return entry.name.startswith(".") and ".tmp" in entry.name and entry.name.rsplit(".tmp", 1)[1].isdigit()


def remove_partials(folder: Path, of: str | None = None) -> None:
    """The files in ``folder`` that killed writers left (``partial_path``): each as large as what it was writing.
    With ``of``, only those of the file of that name: the other files of the folder may be another process's to
    write (a process holds the lock of its output alone: ``xdc.locks``)."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if is_partial(entry) and (of is None or entry.name.rsplit(".tmp", 1)[0] == f".{of}"):
                entry.unlink(missing_ok=True)


@contextmanager
def replacing(path: str | Path, tmp: Path | None = None, keep_same: bool = False) -> Iterator[Path]:
    """Yield the temporary path (``tmp``, else ``partial_path(path)``) for the block to write, file or folder; then
    rename it onto ``path`` (with ``keep_same``, not where the file at ``path`` has the same bytes: it keeps its
    time, by which a re-run's output that changed nothing does not pass for new). Where the block or the rename
    fails the temporary file is removed, and a failure of the machine (a full disk, a file too large, an I/O
    error as the data is flushed, ...) is a WriteError naming ``path`` and the reason. The data reaches the disk
    before the rename, the rename after it (``flush``): neither a power loss nor a kernel crash undoes it (a file
    of the same bytes kept is not flushed). It keeps the mode of a file it replaces, as a write in place would.
    A link at ``path`` is replaced, not the file it names: a run copied as links (``cp -rs``) and resumed must not
    write into the run it was copied from."""
    path = Path(path)
    tmp = partial_path(path) if tmp is None else tmp
    try:
        yield tmp
        if keep_same and tmp.is_file() and path.is_file() and not path.is_symlink() and filecmp.cmp(tmp, path, False):
            tmp.unlink()
            return
        flush(tmp)  # before the mode is set: one that its owner may not read (0o200) could not be opened after
        if tmp.is_file() and path.is_file():
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        _rename(tmp, path)
    except BaseException as e:
        _remove(tmp)
        cause = _os_error(e)
        # not the write's: Ctrl-C (while an OSError was handled), or a file the block read (which it names)
        if cause is None or isinstance(e, UserError) or not isinstance(e, Exception) or not _written(cause, tmp, path):
            raise
        raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from None


def move(src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` for a file or folder written elsewhere than by ``replacing`` (a staged export's
    files, a transcoded copy, a kept file under its new name), made to last as ``replacing``'s renames are: its
    data flushed before, ``dst``'s folder after. A failure is a WriteError naming ``dst``."""
    try:
        flush(src)
        _rename(src, dst)
    except OSError as e:
        raise WriteError(f"cannot write {dst}: {e.strerror or e}") from None


def flush(path: Path) -> None:
    """Put ``path``'s data on the disk (fsync): a file's bytes, or a folder's, each file in it and its own entries.
    Without it, a rename may reach the disk before the data, and a power loss leave an empty file under the name."""
    if not path.is_dir() or path.is_symlink():
        _sync(path)
        return
    for root, _, names in os.walk(path):
        for name in names:
            if stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode):  # not a link: the file it names is not ours
                _sync(Path(root, name))
        _sync(Path(root), folder=True)


def write_text(path: str | Path, text: str) -> None:
    """``text`` as ``path``'s whole content (UTF-8; a file name that is not, shown as its escapes)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


def read_json(path: Path, what: str, then: str = "") -> dict:
    """The JSON object in ``path``, a file xdc wrote; where it cannot be read (cut short by a full disk before
    writes were atomic, emptied, edited), a one-line UserError naming it, ``what`` it is, and ``then`` (what to do)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        return saved
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise UserError(f"cannot read {path} ({what}): {reason}" + (f"; {then}" if then else "")) from None


def _os_error(error: BaseException) -> OSError | None:
    """``error`` if an OSError, else the OSError behind a writer's error of another kind (torch.save's
    RuntimeError "unexpected pos" after its write failed); None if none."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _written(error: OSError, tmp: Path, path: Path) -> bool:
    """Whether ``error`` is the write's own: it names no file (a write to an open one), or the temporary file (or
    one in the temporary folder), or ``path``."""
    if not isinstance(error.filename, (str, bytes, os.PathLike)):
        return True
    named = Path(os.fsdecode(error.filename))
    return named == path or tmp in (named, *named.parents)


def _rename(tmp: Path, path: Path) -> None:
    """``os.replace``, then its folder flushed: the rename itself on the disk. (Where ``tmp`` was in another folder,
    a power loss may leave it there too: a partial, removed as any.)"""
    os.replace(tmp, path)
    _sync(path.parent, folder=True)


# Windows flushes a file through a handle that may write (its _commit); a folder it does not open at all
_FILE_FLAGS = os.O_RDWR if os.name == "nt" else os.O_RDONLY
# a file system that cannot flush a folder (some network and FUSE ones) says so with these; the data was flushed
_CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _sync(path: Path, folder: bool = False) -> None:
    """fsync ``path``; a folder that cannot be opened (Windows) or flushed (``_CANNOT_SYNC``) is left as it is."""
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if folder else _FILE_FLAGS)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not folder or e.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    except OSError:  # the error that stopped the write says more than this one would
        pass
