"""Disk image inputs verified before use: a truncated or corrupt image is refused, never copied.

An interrupted download of a qcow2 converts without complaint into a disk whose end is
zeros, so every input is checked before anything is written:

- raw: the partition table (MBR or GPT) must fit in the file;
- fixed VHD: the file is exactly the footer's current size plus the 512-byte footer;
- dynamic VHD: every block the BAT allocates must lie inside the file, and
  `qemu-img check` must open it;
- qcow2 and VHDX: `qemu-img check` finds no corruption (leaked clusters only warn).

A failure is a UsageError (exit 2) naming the file and what was found.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from builder.disk import ImageFormat
from builder.errors import UsageError, indent
from builder.qemu_img import check_argv
from builder.run import run
from builder.vhd import FOOTER_SIZE, parse_footer

log = logging.getLogger(__name__)

SECTOR = 512
MBR_SIGNATURE = b"\x55\xaa"
GPT_SIGNATURE = b"EFI PART"
GPT_PROTECTIVE = 0xEE
DYNAMIC_COOKIE = b"cxsparse"
BAT_UNUSED = 0xFFFF_FFFF
# qemu-img check's exit codes (qemu-img(1)).
CHECK_OK = 0
CHECK_CORRUPT = 2
CHECK_LEAKS = 3
CHECK_UNSUPPORTED = 63
_STDERR_LINES = 3
_HINT = ("the file is truncated or damaged (an interrupted download or copy?): "
         "fetch or copy it again, and compare it with its checksum")


@dataclass(frozen=True)
class Extent:
    """What a header says the file must hold: `end` bytes, because of `what`."""

    end: int
    what: str


def verify_image(path: Path, image_format: ImageFormat, *, role: str = "image") -> None:
    """Raise UsageError unless `path` (of `image_format`) is whole: see the module's doc.
    `role` names the input in messages ("source image", "source.disk_image")."""
    length = path.stat().st_size
    name = image_format.name
    if name == "raw":
        _require_extents(path, role, length, raw_extents(_read(path, 0, 34 * SECTOR)))
    elif name == "vhd-fixed":
        footer = parse_footer(_read(path, length - FOOTER_SIZE, FOOTER_SIZE))
        expected = footer.current_size + FOOTER_SIZE
        if length != expected:
            raise UsageError(
                f"{role} {path} is a fixed VHD whose footer says {footer.current_size} bytes "
                f"of disk, so the file should be {expected} bytes, but it is {length}",
                hint=_HINT,
            )
    elif name == "vhd-dynamic":
        _require_extents(path, role, length, dynamic_vhd_extents(path))
        _qemu_img_check(path, image_format, role)
    elif name in ("qcow2", "vhdx", "vhd-differencing"):
        _qemu_img_check(path, image_format, role)
    log.info("verified %s %s (%s)", role, path, name)


# --- raw: the partition table ---------------------------------------------------------------


def raw_extents(head: bytes) -> list[Extent]:
    """What the partition table in the first sectors of a raw disk claims: a GPT's backup
    header and last usable sector, or each MBR partition's end. Nothing without a table."""
    if len(head) < 2 * SECTOR or head[510:512] != MBR_SIGNATURE:
        return []
    if head[SECTOR:SECTOR + 8] == GPT_SIGNATURE:
        alternate, _first, last_usable = struct.unpack_from("<QQQ", head, SECTOR + 32)
        return [
            Extent((alternate + 1) * SECTOR, f"the GPT's backup header at sector {alternate}"),
            Extent((last_usable + 1) * SECTOR, f"the GPT's last usable sector {last_usable}"),
        ]
    extents = []
    for index in range(4):
        entry = 446 + 16 * index
        kind = head[entry + 4]
        start, count = struct.unpack_from("<II", head, entry + 8)
        if kind == 0 or count == 0 or kind == GPT_PROTECTIVE:
            continue
        extents.append(Extent(
            (start + count) * SECTOR,
            f"MBR partition {index + 1} (sectors {start} to {start + count - 1})",
        ))
    return extents


# --- dynamic VHD: the block allocation table ------------------------------------------------


def dynamic_vhd_extents(path: Path) -> list[Extent]:
    """The dynamic header's BAT and the last block it allocates, each plus the footer that
    ends the file (VHD specification: dynamic disk header, block allocation table)."""
    footer = parse_footer(_read(path, 0, FOOTER_SIZE))
    header = _read(path, footer.data_offset, 1024)
    if header[:8] != DYNAMIC_COOKIE:
        raise UsageError(
            f"dynamic VHD {path} has no dynamic disk header ('cxsparse') at offset "
            f"{footer.data_offset}, where its footer points", hint=_HINT,
        )
    table_offset, = struct.unpack_from(">Q", header, 16)
    entries, block_size = struct.unpack_from(">II", header, 28)
    table = _read(path, table_offset, entries * 4)
    extents = [Extent(table_offset + entries * 4 + FOOTER_SIZE,
                      f"the block allocation table ({entries} entries at {table_offset})")]
    bitmap = -(-block_size // SECTOR // 8 // SECTOR) * SECTOR  # rounded up to a sector
    used = [(sector, index) for index, sector in
            enumerate(struct.unpack(f">{len(table) // 4}I", table)) if sector != BAT_UNUSED]
    if used:
        sector, index = max(used)
        extents.append(Extent(
            sector * SECTOR + bitmap + block_size + FOOTER_SIZE,
            f"block {index} of the block allocation table (at sector {sector})",
        ))
    return extents


# --- shared ---------------------------------------------------------------------------------


def _require_extents(path: Path, role: str, length: int, extents: list[Extent]) -> None:
    for extent in extents:
        if extent.end > length:
            raise UsageError(
                f"{role} {path} is truncated: {extent.what} needs the file to hold "
                f"{extent.end} bytes, but it has only {length}",
                hint=_HINT,
            )


def _qemu_img_check(path: Path, image_format: ImageFormat, role: str) -> None:
    proc = run(check_argv(path, image_format.qemu_format), check=False)
    if proc.returncode in (CHECK_OK, CHECK_UNSUPPORTED):
        return
    findings = _findings(proc.stdout)
    if proc.returncode == CHECK_LEAKS:
        log.warning("%s %s: qemu-img check found %s leaked cluster(s); harmless, ignored",
                    role, path, findings.get("leaks", "some"))
        return
    details = [line.removeprefix("qemu-img: ").strip()
               for line in proc.stderr.splitlines() if line.strip()]
    more = [f"... and {len(details) - _STDERR_LINES} more"] if len(details) > _STDERR_LINES else []
    shown = indent([*details[:_STDERR_LINES], *more])
    if proc.returncode == CHECK_CORRUPT:
        what = f"qemu-img check found {findings.get('corruptions', 'some')} corruption(s)"
    else:
        what = f"qemu-img check could not check it (exit code {proc.returncode})"
    raise UsageError(
        f"{role} {path} ({image_format.name}) is corrupt: {what}"
        + (f":\n{shown}" if shown else ""),
        hint=_HINT,
    )


def _findings(stdout: str) -> dict[str, object]:
    try:
        data = json.loads(stdout)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _read(path: Path, offset: int, count: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(count)
