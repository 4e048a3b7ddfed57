"""R01 and R02 from the image's bytes: the fixed VHD footer, or what the image is instead."""

from __future__ import annotations

import struct
from pathlib import Path

from builder.errors import BuildError
from builder.image.disk import ImageFormat, detect_image_format
from builder.image.vhd import (
    ALL_ONES_64,
    COOKIE,
    DISK_TYPE_FIXED,
    FOOTER_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    VhdFooter,
    parse_footer,
)
from builder.quoting import shell_join
from builder.report.check_report import CheckResult
from builder.units import MiB, format_size


def verify_vhd(path: Path) -> list[CheckResult]:
    """R01 and R02 of `path`, raising BuildError unless both pass: every VHD azbuild writes
    goes through this before it gets its final name."""
    results = format_checks(path, detect_image_format(path))
    failed = [r for r in results if r.status == "fail"]
    if failed:
        raise BuildError(
            f"{path} is not an Azure fixed VHD: "
            + "; ".join(f"{r.id} {r.evidence}" for r in failed)
        )
    return results


def format_checks(image: Path, image_format: ImageFormat) -> list[CheckResult]:
    """R01 (fixed VHD) and R02 (size) from the bytes of `image`."""
    length = image.stat().st_size
    if image_format.name in ("vhd-fixed", "vhd-unknown"):  # a footer at the end
        footer = _read_footer(image, length - FOOTER_SIZE)
        return [_r01_fixed(footer, image_format, length), _r02_fixed(footer, length)]
    return _not_fixed(image, image_format, length)


def _r01_fixed(footer: VhdFooter, image_format: ImageFormat, length: int) -> CheckResult:
    problems = []
    if footer.cookie != COOKIE:
        problems.append(f"cookie {footer.cookie!r}, expected b'conectix'")
    if footer.disk_type != DISK_TYPE_FIXED:
        problems.append(f"disk type {footer.disk_type} ({footer.disk_type_name}), expected 2")
    if not footer.checksum_ok:
        problems.append(
            f"checksum 0x{footer.checksum:08x} is wrong, the footer sums to "
            f"0x{footer.computed_checksum:08x}"
        )
    if footer.data_offset != ALL_ONES_64:
        problems.append(f"data offset 0x{footer.data_offset:016x}, expected all ones")
    facts = (
        f"{image_format.name}: footer at offset {length - FOOTER_SIZE}, cookie "
        f"{footer.cookie.decode('latin-1')!r}, disk type {footer.disk_type} "
        f"({footer.disk_type_name}), checksum 0x{footer.checksum:08x}"
        f"{' valid' if footer.checksum_ok else ''}, data offset 0x{footer.data_offset:016x}, "
        f"creator {footer.creator_app.decode('latin-1')!r}"
    )
    if problems:
        return CheckResult("R01", "fail", "; ".join(problems) + f" ({facts})")
    return CheckResult("R01", "pass", facts)


def _r02_fixed(footer: VhdFooter, length: int) -> CheckResult:
    size = footer.current_size
    problems = _size_problems(size)
    if length != size + FOOTER_SIZE:
        problems.append(
            f"file length {length} is not current size + 512 = {size + FOOTER_SIZE}"
        )
    # Not an Azure rule, but worth showing: qemu keeps them equal, so do we.
    note = f", original size {footer.original_size}" if footer.original_size != size else ""
    facts = (
        f"current size {size} bytes ({_human(size)}), file length {length} = size + "
        f"{length - size}{note}"
    )
    if problems:
        return CheckResult("R02", "fail", "; ".join(problems) + f" ({facts})")
    return CheckResult("R02", "pass", facts)


def _size_problems(size: int) -> list[str]:
    problems = []
    if size % MiB:
        problems.append(
            f"virtual size {size} is not a whole number of MiB ({size % MiB} bytes over)"
        )
    if size < MIN_SIZE:
        problems.append(f"virtual size {size} is under 20 MiB")
    if size > MAX_SIZE:
        problems.append(f"virtual size {size} is over 2040 GiB")
    return problems


def _not_fixed(image: Path, image_format: ImageFormat, length: int) -> list[CheckResult]:
    target = image.with_suffix(".vhd")
    if target == image:
        target = image.with_name(image.stem + "-fixed.vhd")
    fix = "convert it: " + shell_join(["azbuild", "convert", image, target])
    kind = {
        "raw": "a raw disk, not a VHD",
        "qcow2": "qcow2, which Azure does not accept",
        "vhdx": "VHDX, which Azure refuses",
        "vhd-dynamic": "a dynamic VHD, which Azure refuses",
        "vhd-differencing": "a differencing VHD, which Azure refuses",
    }.get(image_format.name, image_format.name)
    r01 = CheckResult(
        "R01", "fail", f"{image_format.name}: {kind} ({image_format.evidence}); {fix}"
    )
    size = _virtual_size(image, image_format, length)
    if size is None:
        size_text = "virtual size not read"
    else:
        problems = _size_problems(size)
        size_text = f"virtual size {size} bytes ({_human(size)})" + (
            ": " + "; ".join(problems) if problems else ", a whole number of MiB"
        )
    r02 = CheckResult(
        "R02", "fail",
        f"not a fixed VHD, so there is no footer and the file length cannot be size + 512; "
        f"{size_text}; azbuild convert rounds it up to the next MiB",
    )
    return [r01, r02]


def _virtual_size(image: Path, image_format: ImageFormat, length: int) -> int | None:
    if image_format.name == "raw":
        return length
    with open(image, "rb") as f:
        head = f.read(FOOTER_SIZE)
    if image_format.name == "qcow2" and len(head) >= 32:
        size: int = struct.unpack_from(">Q", head, 24)[0]
        return size
    if image_format.name.startswith("vhd-") and head[:8] == COOKIE:
        return parse_footer(head).current_size
    return None


def _read_footer(image: Path, offset: int) -> VhdFooter:
    with open(image, "rb") as f:
        f.seek(offset)
        return parse_footer(f.read(FOOTER_SIZE))


def _human(size: int) -> str:
    return format_size(size) if size % MiB == 0 else f"{size / MiB:.3f} MiB"
