"""Plain-text tables for command output and benchmark scripts."""

from __future__ import annotations


def format_table(rows: list[dict], min_widths: dict[str, int] | None = None) -> str:
    """Columns as wide as their widest cell, or `min_widths[column]`: rows printed one at a time as results come
    then line up under one header."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), (min_widths or {}).get(c, 0), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
