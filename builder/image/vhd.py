"""The fixed VHD footer: built and parsed from the VHD specification, pure functions only.

A fixed VHD is the raw disk followed by one 512-byte footer (big-endian fields).
azbuild writes the exact virtual size in both size fields and the maximum CHS
geometry 65535/16/255, which tells every reader that knows the convention (qemu,
Hyper-V, Azure) to use the size fields, not the geometry. See docs/vhd.md.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from builder.errors import UsageError
from builder.units import GiB, MiB

FOOTER_SIZE = 512
COOKIE = b"conectix"
FEATURES = 0x00000002  # "reserved" bit, always set
FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFF_FFFF_FFFF_FFFF
CREATOR_APP = b"azbd"
CREATOR_VERSION = 0x00000001  # azbuild 0.1: major << 16 | minor
CREATOR_HOST_OS = b"Wi2k"
MAX_GEOMETRY = (65535, 16, 255)

DISK_TYPE_FIXED = 2
DISK_TYPE_DYNAMIC = 3
DISK_TYPE_DIFFERENCING = 4
DISK_TYPE_NAMES = {0: "none", 1: "reserved (1)", 2: "fixed", 3: "dynamic", 4: "differencing"}

MIN_SIZE = 20 * MiB
MAX_SIZE = 2040 * GiB

VHD_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ALL_ONES_64 = FIXED_DATA_OFFSET

# cookie, features, version, data offset, timestamp, creator app, creator version,
# creator host OS, original size, current size, cylinders, heads, sectors per track,
# disk type, checksum, unique id, saved state; then 427 reserved bytes.
_LAYOUT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
assert _LAYOUT.size == 85
_CHECKSUM_OFFSET = 64


@dataclass(frozen=True)
class VhdFooter:
    """Every field of a VHD footer as found in the bytes, unvalidated."""

    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_host_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    computed_checksum: int

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.computed_checksum

    @property
    def cookie_ok(self) -> bool:
        return self.cookie == COOKIE

    @property
    def disk_type_name(self) -> str:
        return DISK_TYPE_NAMES.get(self.disk_type, f"unknown ({self.disk_type})")

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(VHD_EPOCH.timestamp() + self.timestamp, tz=UTC)


def aligned_size(size: int) -> int:
    """Round up to the next MiB only when `size` is not already a whole number of MiB."""
    if size < 0:
        raise ValueError(f"a disk size cannot be negative, found {size}")
    return -(-size // MiB) * MiB


def check_size(size: int) -> None:
    """Refuse a virtual size Azure cannot take: not a whole MiB, under 20 MiB, over 2040 GiB."""
    if size % MiB:
        raise UsageError(f"virtual size {size} bytes is not a whole number of MiB")
    if size < MIN_SIZE:
        raise UsageError(
            f"virtual size {size} bytes ({size / MiB:g} MiB) is under Azure's minimum of 20 MiB",
            hint="grow the disk (qemu-img resize IMAGE 20M) before converting",
        )
    if size > MAX_SIZE:
        raise UsageError(
            f"virtual size {size} bytes ({size / GiB:g} GiB) is over the maximum of 2040 GiB",
            hint="shrink the disk below 2040 GiB; Gen1 MBR disks can use only 2 TiB anyway",
        )


def footer_checksum(footer: bytes) -> int:
    """One's complement of the byte sum of the footer, the checksum field counted as zero."""
    if len(footer) != FOOTER_SIZE:
        raise ValueError(f"a VHD footer is {FOOTER_SIZE} bytes, found {len(footer)}")
    total = sum(footer) - sum(footer[_CHECKSUM_OFFSET:_CHECKSUM_OFFSET + 4])
    return ~total & 0xFFFF_FFFF


def vhd_timestamp(when: datetime) -> int:
    """Seconds since 2000-01-01 00:00:00 UTC, as the footer stores them."""
    if when.tzinfo is None:
        raise ValueError("the VHD timestamp needs a timezone-aware datetime")
    seconds = int((when - VHD_EPOCH).total_seconds())
    if not 0 <= seconds <= 0xFFFF_FFFF:
        raise ValueError(f"{when.isoformat()} cannot be stored in a VHD footer (2000..2136)")
    return seconds


def build_footer(
    size: int, *, timestamp: datetime | None = None, unique_id: bytes | None = None
) -> bytes:
    """The 512-byte footer of a fixed VHD whose virtual size is exactly `size` bytes.

    `size` must already be valid for Azure (see check_size); `timestamp` defaults to now
    and `unique_id` to a random UUID (16 bytes)."""
    check_size(size)
    if unique_id is None:
        unique_id = uuid.uuid4().bytes
    if len(unique_id) != 16:
        raise ValueError(f"the unique id is 16 bytes, found {len(unique_id)}")
    stamp = vhd_timestamp(timestamp or datetime.now(UTC))
    cylinders, heads, sectors = MAX_GEOMETRY
    head = _LAYOUT.pack(
        COOKIE, FEATURES, FORMAT_VERSION, FIXED_DATA_OFFSET, stamp,
        CREATOR_APP, CREATOR_VERSION, CREATOR_HOST_OS,
        size, size, cylinders, heads, sectors,
        DISK_TYPE_FIXED, 0, unique_id, 0,
    )
    footer = bytearray(head.ljust(FOOTER_SIZE, b"\0"))
    struct.pack_into(">I", footer, _CHECKSUM_OFFSET, footer_checksum(bytes(footer)))
    return bytes(footer)


def parse_footer(data: bytes) -> VhdFooter:
    """Every field of a 512-byte footer; judging them is the caller's business."""
    if len(data) != FOOTER_SIZE:
        raise ValueError(f"a VHD footer is {FOOTER_SIZE} bytes, found {len(data)}")
    (cookie, features, version, data_offset, timestamp, app, app_version, host_os,
     original, current, cylinders, heads, sectors, disk_type, checksum, unique_id,
     saved_state) = _LAYOUT.unpack_from(data)
    return VhdFooter(
        cookie=cookie, features=features, format_version=version, data_offset=data_offset,
        timestamp=timestamp, creator_app=app, creator_version=app_version,
        creator_host_os=host_os, original_size=original, current_size=current,
        cylinders=cylinders, heads=heads, sectors=sectors, disk_type=disk_type,
        checksum=checksum, unique_id=unique_id, saved_state=saved_state,
        computed_checksum=footer_checksum(data),
    )
