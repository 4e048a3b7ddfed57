"""Partition tables and ext superblocks as the offline check reads them: raw bytes
(`pread_device`), so that nothing mounts a filesystem before R13 has looked at it."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

SWAP_GPT_TYPE = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
SWAP_MBR_TYPES = ("0x82",)
LVM_MBR_TYPES = ("0x8e",)
LVM_GPT_TYPE = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_MBR_TYPES = ("0xef",)
EXT_MAGIC = 0xEF53
EXT_STATE_VALID = 0x0001
EXT_STATE_ERROR = 0x0002
EXT_INCOMPAT_RECOVER = 0x0004
EXT_COMPAT_HAS_JOURNAL = 0x0004


@dataclass(frozen=True)
class Partition:
    number: int  # as Linux numbers them: MBR primaries 1-4, logical 5+; GPT entry index + 1
    type: str  # MBR "0x83"; GPT type GUID in upper case
    start: int  # bytes
    size: int  # bytes

    @property
    def extended(self) -> bool:
        return self.type in ("0x05", "0x0f", "0x85")


SECTOR = 512


def parse_mbr(sector0: bytes) -> tuple[str, list[Partition]]:
    """("msdos", primary partitions) / ("gpt", []) for a protective MBR / ("none", [])."""
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        return "none", []
    parts = []
    for i in range(4):
        entry = sector0[446 + 16 * i : 462 + 16 * i]
        ptype = entry[4]
        lba, count = struct.unpack_from("<II", entry, 8)
        if ptype == 0xEE:
            return "gpt", []
        if ptype and count:
            parts.append(Partition(i + 1, f"0x{ptype:02x}", lba * SECTOR, count * SECTOR))
    if not parts and not any(sector0[446:510]):
        return "none", []  # a boot sector signature but no table (e.g. a filesystem's)
    return "msdos", parts


def parse_ebr(ebr: bytes, ebr_lba: int, extended_lba: int, number: int
              ) -> tuple[Partition | None, int | None]:
    """One extended boot record: its logical partition and the LBA of the next EBR."""
    if len(ebr) < SECTOR or ebr[510:512] != b"\x55\xaa":
        return None, None
    first, second = ebr[446:462], ebr[462:478]
    part = None
    if first[4]:
        lba, count = struct.unpack_from("<II", first, 8)
        part = Partition(number, f"0x{first[4]:02x}", (ebr_lba + lba) * SECTOR, count * SECTOR)
    nxt = None
    if second[4] in (0x05, 0x0F, 0x85):
        nxt = extended_lba + struct.unpack_from("<I", second, 8)[0]
    return part, nxt


def parse_gpt_header(header: bytes) -> tuple[int, int, int] | None:
    """(entries LBA, number of entries, entry size) of a GPT header, or None."""
    if header[:8] != b"EFI PART":
        return None
    lba, count, size = struct.unpack_from("<QII", header, 72)
    return lba, count, size


def parse_gpt_entries(data: bytes, count: int, size: int) -> list[Partition]:
    parts = []
    for i in range(count):
        entry = data[i * size : (i + 1) * size]
        if len(entry) < 56 or not any(entry[:16]):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        guid = str(uuid.UUID(bytes_le=bytes(entry[:16]))).upper()
        parts.append(Partition(i + 1, guid, first * SECTOR, (last - first + 1) * SECTOR))
    return parts


def superblock_state(sb: bytes) -> tuple[bool, str]:
    """R13 for ext2/3/4 from the 1024-byte superblock: (clean, description)."""
    if len(sb) < 0x64 or struct.unpack_from("<H", sb, 0x38)[0] != EXT_MAGIC:
        return False, "no ext2/3/4 superblock"
    state = struct.unpack_from("<H", sb, 0x3A)[0]
    compat, incompat = struct.unpack_from("<II", sb, 0x5C)
    problems = []
    if incompat & EXT_INCOMPAT_RECOVER:
        problems.append("needs_recovery (journal not replayed)")
    if not state & EXT_STATE_VALID:
        problems.append(f"not clean (s_state=0x{state:04x})")
    if state & EXT_STATE_ERROR:
        problems.append(f"has errors (s_state=0x{state:04x})")
    if problems:
        return False, ", ".join(problems)
    journal = "journal clean" if compat & EXT_COMPAT_HAS_JOURNAL else "no journal"
    return True, f"clean (s_state=0x{state:04x}, {journal})"
