"""`azbuild check`: R01 and R02 from the image's bytes (image.py), R03..R15 from one
appliance launch (guest_checks.py), in one report in requirement order."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from builder.errors import UsageError
from builder.image.disk import detect_image_format
from builder.image.inputs import verify_image
from builder.inventory import Inventory, read_inventory
from builder.offline_check.guest_checks import guest_checks
from builder.offline_check.image import format_checks
from builder.offline_check.parsers import KernelLine
from builder.report.check_report import CheckResult, Report
from builder.requirements import GUEST_IDS, ID_RANGE, TITLES

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

    if inventory or not set(GUEST_IDS) <= set(skipped):  # one appliance launch for R03..R15
        results += guest_checks(image, image_format.qemu_format, accelerator,
                                visit=read if inventory else None)
    report = _report(image, results, skipped)
    report.inventory = found[0] if found else None
    return report


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
                    hint=f"use the IDs {ID_RANGE}",
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
