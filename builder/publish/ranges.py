"""Which bytes of a local image hold data, as page-aligned pieces a Put Page can carry.

Pure functions over offsets, plus the two that ask the file system (SEEK_DATA/SEEK_HOLE)
and read a piece. Holes are never read; within data, all-zero blocks are dropped, since a
page blob reads zeros wherever nothing was written.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from builder.image.disk import data_ranges as data_ranges  # re-exported for the uploader

PAGE = 512  # a page blob's unit: every write starts and ends on it
MAX_PUT = 4 * 1024 * 1024  # the most one Put Page request may carry
# Zeros are detected per file-system block: finer would split data into many tiny requests.
ZERO_BLOCK = 4096

Range = tuple[int, int]  # [start, end): end exclusive

_ZEROS = bytes(MAX_PUT)


@dataclass(frozen=True)
class Piece:
    """One Put Page: `length` bytes at `offset`, both multiples of PAGE, at most MAX_PUT."""

    offset: int
    length: int


def align(ranges: Sequence[Range], size: int) -> list[Range]:
    """Widen each range to whole pages and merge those that then touch."""
    merged: list[Range] = []
    for start, end in ranges:
        a = start - start % PAGE
        b = min(size, -(-end // PAGE) * PAGE)
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def chunks(ranges: Sequence[Range], chunk: int = MAX_PUT) -> Iterator[Range]:
    """Cut ranges on a fixed grid of `chunk` bytes, so the same file always gives the same
    pieces (a resumed upload asks for exactly what the first run would have)."""
    for start, end in ranges:
        offset = start
        while offset < end:
            stop = min(end, (offset // chunk + 1) * chunk)
            yield offset, stop
            offset = stop


def nonzero_runs(data: bytes | memoryview, base: int, block: int = ZERO_BLOCK) -> list[Range]:
    """The runs of `data` (which starts at file offset `base`) that are not all zeros, at
    `block` granularity, as absolute ranges. `base` and len(data) are multiples of PAGE."""
    view = memoryview(data)
    length = len(view)
    if view == _ZEROS[:length] if length <= MAX_PUT else bytes(view) == bytes(length):
        return []
    runs: list[Range] = []
    zero_block = _ZEROS[:block]
    run_start: int | None = None
    # Blocks follow the file's grid, so a piece that starts mid-block checks a short first one.
    offset = 0
    while offset < length:
        step = min(block - (base + offset) % block, length - offset)
        is_zero = view[offset:offset + step] == zero_block[:step]
        if not is_zero and run_start is None:
            run_start = offset
        elif is_zero and run_start is not None:
            runs.append((base + run_start, base + offset))
            run_start = None
        offset += step
    if run_start is not None:
        runs.append((base + run_start, base + length))
    return runs


def subtract(runs: Sequence[Range], present: Sequence[Range]) -> list[Range]:
    """`runs` minus the sorted, non-overlapping `present` ranges (what the blob already has)."""
    if not present:
        return list(runs)
    starts = [p[0] for p in present]
    left: list[Range] = []
    for start, end in runs:
        cursor = start
        i = max(0, bisect.bisect_right(starts, start) - 1)
        while cursor < end and i < len(present):
            p_start, p_end = present[i]
            if p_end <= cursor:
                i += 1
                continue
            if p_start >= end:
                break
            if p_start > cursor:
                left.append((cursor, p_start))
            cursor = max(cursor, p_end)
            i += 1
        if cursor < end:
            left.append((cursor, end))
    return left


def merge(ranges: Sequence[Range]) -> list[Range]:
    """Sort and merge overlapping or touching ranges (a service may list them split)."""
    merged: list[Range] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def total(ranges: Sequence[Range]) -> int:
    return sum(end - start for start, end in ranges)


def read_exact(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(errno.EIO, f"short read at offset {offset}: {len(data)} of {length} bytes")
    return data
