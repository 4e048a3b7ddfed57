"""Plain-text tables for the terminal: `azbuild check`, `diff` and `cache list`."""

from __future__ import annotations

from collections.abc import Sequence


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """`rows` (a header first) as lines: columns two spaces apart, each padded to its
    widest cell but the last, which is free text and gets no trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
            + "  " + row[-1] for row in rows]
