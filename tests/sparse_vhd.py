"""Synthetic sparse fixed VHDs for the publish tests and bench/bench_publish.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

from builder.image.vhd import build_footer
from builder.units import MiB

CHUNK = 4 * MiB


def make_sparse_vhd(path: Path, size: int, data: int, *, extent: int = 64 * MiB,
                    zero_extent: int = 8 * MiB, seed: int = 1) -> int:
    """A fixed VHD of virtual size `size` holding `data` bytes of non-zero data in
    `extent`-sized runs spread evenly over the disk, each followed by `zero_extent` bytes
    written as zeros (allocated, all-zero pages), the rest holes. Returns the data bytes
    written (non-zero)."""
    rng = random.Random(seed)
    block = bytearray(rng.randbytes(CHUNK))
    zeros = bytes(CHUNK)
    count = max(1, data // extent)
    stride = (size // count) // MiB * MiB
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size + 512)
        for i in range(count):
            offset = i * stride
            for j in range(0, extent, CHUNK):
                block[:16] = (i * extent + j).to_bytes(16, "little")  # every chunk differs
                os.pwrite(fd, block, offset + j)
                written += CHUNK
            for j in range(0, zero_extent, CHUNK):
                os.pwrite(fd, zeros[:min(CHUNK, zero_extent - j)], offset + extent + j)
        os.pwrite(fd, build_footer(size), size)
    finally:
        os.close(fd)
    return written
