"""The text files a user gives (settings, results) read as UTF-8, or a one-line error that names the file."""

from __future__ import annotations

from pathlib import Path

from xdc.errors import UserError


def read_text(path: str | Path, what: str) -> str:
    """The text of ``path``, a ``what`` ("config", "metrics") in UTF-8, a BOM skipped (Windows tools write one).
    UTF-16 (what Windows PowerShell's ``>`` writes), a binary file or a byte that is not UTF-8 (a Latin-1 editor)
    is a UserError that says so, as a labels CSV's is (xdc.data.manifest.open_paths_file)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if b"\0" in raw[:4096]:
        raise UserError(f"{what} {path} is not UTF-8 text (a binary file, or text in UTF-16: save it as UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = e.object  # past a BOM, where there is one: e.start counts from there
        line = bad[: e.start].count(b"\n") + 1
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{bad[e.start]:02x} on line {line}): save it as "
                        "UTF-8") from None  # fmt: skip
