"""The offline Azure-readiness checker. R01 and R02 are judged here from the image's bytes.

R03..R14 look inside the guest and live in builder/guest_checks.py; run_check marks
the one place they join the report.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, Literal

from builder.disk import ImageFormat, detect_image_format
from builder.errors import BuildError, UsageError
from builder.guest_checks import KernelLine, guest_checks
from builder.inputs import verify_image
from builder.inventory import Inventory, read_inventory
from builder.quoting import shell_join
from builder.report import CheckResult, Report
from builder.requirements import GUEST_IDS, TITLES
from builder.units import MiB, format_size
from builder.vhd import (
    ALL_ONES_64,
    COOKIE,
    DISK_TYPE_FIXED,
    FOOTER_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    VhdFooter,
    parse_footer,
)

_ID = re.compile(r"^R(\d{1,2})$")


def run_check(
    image: Path, skip: list[str], accelerator: Literal["kvm", "tcg"] | None = None,
    inventory: bool = False,
) -> Report:
    """Check `image` offline; the IDs in `skip` are reported with status "skip". The
    guest checks' appliance runs on `accelerator` (a build's), else on the KVM probe's.
    `inventory`: also read what the image holds (report.inventory), in the same launch."""
    skipped = _skip_ids(skip)
    _require_readable(image)
    image_format = detect_image_format(image)
    if image_format.name != "vhd-fixed":  # a fixed VHD's length is judged by R01/R02
        verify_image(image, image_format)
    results = format_checks(image, image_format)
    found: list[Inventory] = []

    def read(g: Any, kernel_lines: list[KernelLine]) -> None:
        found.append(read_inventory(g, kernel_lines))

    if inventory or not set(GUEST_IDS) <= set(skipped):  # one appliance launch for R03..R14
        results += guest_checks(image, image_format.qemu_format, accelerator,
                                visit=read if inventory else None)
    report = _report(image, results, skipped)
    report.inventory = found[0] if found else None
    return report


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


# --- fixed VHD ----------------------------------------------------------------------------


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


# --- everything else ----------------------------------------------------------------------


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


# --- helpers ------------------------------------------------------------------------------


def _read_footer(image: Path, offset: int) -> VhdFooter:
    with open(image, "rb") as f:
        f.seek(offset)
        return parse_footer(f.read(FOOTER_SIZE))


def _human(size: int) -> str:
    return format_size(size) if size % MiB == 0 else f"{size / MiB:.3f} MiB"


def _require_readable(image: Path) -> None:
    if not image.exists():
        raise UsageError(f"image {image} does not exist")
    if image.is_dir():
        raise UsageError(f"{image} is a directory, not an image file")
    try:
        with open(image, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot read image {image}: {exc.strerror}") from None


def _skip_ids(skip: list[str]) -> list[str]:
    ids = []
    for item in skip:
        for part in item.split(","):
            match = _ID.match(part.strip().upper())
            ident = f"R{int(match.group(1)):02d}" if match else part.strip()
            if ident not in TITLES:
                raise UsageError(
                    f"unknown requirement ID {part.strip()!r} for --skip",
                    hint="use the IDs R01..R14",
                )
            ids.append(ident)
    return ids


def _report(image: Path, results: list[CheckResult], skipped: list[str]) -> Report:
    checks = [
        CheckResult(r.id, "skip", "skipped on request (--skip)")
        if r.id in skipped else r
        for r in results
    ]
    seen = {c.id for c in checks}
    checks += [
        CheckResult(i, "skip", "skipped on request (--skip)")
        for i in sorted(set(skipped) - seen)
    ]
    order = {ident: n for n, ident in enumerate(TITLES)}
    checks.sort(key=lambda c: order.get(c.id, len(order)))
    return Report(image=str(image), checks=checks)

