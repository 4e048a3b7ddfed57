"""Disk image inputs verified before use: a truncated or corrupt image is refused, never copied.

An interrupted download of a qcow2 converts without complaint into a disk whose end is
zeros, so every input is checked before anything is written:

- raw: the partition table (MBR or GPT) must fit in the file;
- qcow2: the tables its header points to (L1, refcount, snapshots) must lie in the file;
- fixed VHD: the file is exactly the footer's current size plus the 512-byte footer;
- dynamic VHD: every block the BAT allocates must lie inside the file, and
  `qemu-img check` must open it;
- qcow2 and VHDX: `qemu-img check` finds no corruption (leaked clusters only warn).

A source disk image (`source.disk_image`) must moreover be a disk image at all:
`verify_source_image`, which the build's source-disk step and `azbuild validate` both
run, refuses a file taken for raw that holds no partition table, and says what it looks
like instead (an HTML page, random bytes, zeros, text, a compressed file, an ISO).

A failure is a UsageError (exit 2) naming the file and what was found.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UsageError, indent
from builder.image.digest import Stamp
from builder.image.disk import ImageFormat, foreign_format
from builder.image.vhd import FOOTER_SIZE, parse_footer
from builder.run import run
from builder.vm.qemu_img import check_argv

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
_NO_DISK_HINT = ("give a raw (with a partition table), qcow2, VHD or VHDX disk image; if it "
                 "was downloaded, download it again and compare it with its checksum")
QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQII")
SAMPLE = 64 * 1024  # what the look of a file is judged on
RANDOM_BITS = 7.5  # bits of entropy per byte above which bytes look random
_HTML = re.compile(rb"<(!doctype\s+html|html|head|body|title)\b")


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
    elif name == "qcow2":
        _require_extents(path, role, length, qcow2_extents(path, _read(path, 0, 72)))
        _qemu_img_check(path, image_format, role)
    elif name in ("vhdx", "vhd-differencing"):
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


# --- qcow2: the tables the header points to -------------------------------------------------


def qcow2_extents(path: Path, header: bytes) -> list[Extent]:
    """What a qcow2 header claims the file holds: its L1 table, its refcount table and
    its snapshot table (qcow2 specification, the header's first 72 bytes)."""
    if len(header) < QCOW2_HEADER.size:
        raise UsageError(f"{path} is truncated: it ends inside its qcow2 header "
                         f"({len(header)} of {QCOW2_HEADER.size} bytes)", hint=_HINT)
    (_magic, version, _backing, _backing_size, cluster_bits, _size, _crypt, l1_size,
     l1_offset, refcount_offset, refcount_clusters, snapshots) = QCOW2_HEADER.unpack(
        header[:QCOW2_HEADER.size])
    if version not in (2, 3) or not 9 <= cluster_bits <= 21:
        raise UsageError(f"{path} has a damaged qcow2 header (version {version}, "
                         f"cluster_bits {cluster_bits})", hint=_HINT)
    extents = [
        Extent(l1_offset + 8 * l1_size, f"the qcow2 L1 table ({l1_size} entries at {l1_offset})"),
        Extent(refcount_offset + (refcount_clusters << cluster_bits),
               f"the qcow2 refcount table ({refcount_clusters} clusters at {refcount_offset})"),
    ]
    if snapshots:
        offset, = struct.unpack_from(">Q", header, QCOW2_HEADER.size)
        extents.append(Extent(offset + 1, f"the qcow2 snapshot table at {offset}"))
    return extents


# --- source images: a disk at all -----------------------------------------------------------


def verify_source_image(path: Path, image_format: ImageFormat, *, role: str) -> None:
    """The build's checks of a source disk image, and validate's: a disk image at all (a
    file taken for raw must hold a partition table), then whole (`verify_image`). Judged
    once per process while the file is unchanged: validate, the plan and the build ask."""
    problem = _source_problem(path, Stamp.of(path), image_format, role)
    if problem is not None:
        raise UsageError(*problem)


@functools.lru_cache(maxsize=16)
def _source_problem(path: Path, stamp: Stamp, image_format: ImageFormat,
                    role: str) -> tuple[str, str | None] | None:
    try:
        if image_format.name == "raw":
            _require_a_disk(path, role)
        verify_image(path, image_format, role=role)
    except UsageError as exc:
        return exc.message, exc.hint
    return None


def _require_a_disk(path: Path, role: str) -> None:
    foreign = foreign_format(path)
    if foreign is not None:
        what, fix = foreign
        raise UsageError(f"{role} {path} is {what}, not a disk image azbuild starts from "
                         f"(raw, qcow2, VHD or VHDX)", hint=fix)
    head = _read(path, 0, SAMPLE)
    if len(head) >= 2 * SECTOR and head[510:512] == MBR_SIGNATURE:
        return  # a partition table (an MBR, or a GPT's protective MBR)
    raise UsageError(f"{role} {path} is no disk image: it looks like {looks_like(head)}, "
                     "with no partition table and no qcow2, VHD or VHDX header",
                     hint=_NO_DISK_HINT)


def looks_like(head: bytes) -> str:
    """In words, what the first bytes of a file that is no disk image look like."""
    if not head:
        return "an empty file"
    first = head[:SECTOR]
    if not first.strip(b"\0"):
        return (f"zeros (its first {len(first)} bytes are all zero, where a partition table "
                "or an image header belongs: a zeroed or wiped header?)")
    if _HTML.search(head[:4096].lower()):
        return "an HTML page (a web server's answer saved under the image's name?)"
    sample = head[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        line = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"a text file (its first line: {line!r})"
    if _entropy(head) >= RANDOM_BITS:
        return (f"random bytes ({_entropy(head):.2f} bits per byte in its first "
                f"{len(head)} bytes: encrypted, compressed by an unknown tool, or garbage)")
    return "unknown data"


def _entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte: 8 for random bytes, far less for any structure."""
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in Counter(data).values())


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
