"""Offline Azure-readiness checks R03..R15 of a Linux disk image, from one libguestfs launch.

The image is added read-only (libguestfs puts a throw-away overlay in front of
it). The filesystems' clean/dirty state (R13) is read from the raw superblocks
first, before anything mounts them, because mounting an ext4 that needs
recovery replays its journal into the overlay and would hide the problem. Then
the OS is mounted read-only (facts.py), and the rules (rules_*.py) read its files
through the adapter (adapter.py), parse them (parsers.py) and judge them (judge.py).
Initrds are downloaded and listed on the host by builder/image/initrd_list.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from builder.errors import CommandError, UsageError
from builder.offline_check.adapter import Guest
from builder.offline_check.facts import Facts, gather, mount_os, scan_block_devices
from builder.offline_check.parsers import KernelLine
from builder.offline_check.rules_disk import (
    check_clean,
    check_fallback_loader,
    check_partitions,
    check_swap,
)
from builder.offline_check.rules_kernel import check_cmdline, check_initrds, check_kernels
from builder.offline_check.rules_system import (
    check_agent,
    check_generalised,
    check_host_keys,
    check_ssh,
    check_sudoers,
    check_waagent_conf,
    cloud_init_state,
)
from builder.report.check_report import CheckResult
from builder.run import run
from builder.vm.appliance import Drive, launch
from builder.vm.qemu_img import info_argv

log = logging.getLogger(__name__)
IMAGE_FORMATS = ("raw", "qcow2", "vpc", "vhdx")
# Called with the handle and the kernel lines while the guest's OS is mounted read-only.
MountedVisitor = Callable[[Any, "list[KernelLine]"], None]


def guest_checks(
    image: Path, image_format: str, accelerator: Literal["kvm", "tcg"] | None = None,
    visit: MountedVisitor | None = None,
) -> list[CheckResult]:
    """One CheckResult for each of R03..R15 (in that order), then extra warnings (W-*).
    The appliance runs on `accelerator`, else on the KVM probe's answer. `visit` reads
    more from the mounted guest in the same launch (builder/inventory.py)."""
    if image_format not in IMAGE_FORMATS:
        raise UsageError(
            f"unknown image format {image_format!r}", hint=f"one of {', '.join(IMAGE_FORMATS)}"
        )
    if not image.is_file() or not os.access(image, os.R_OK):
        raise UsageError(f"cannot read {image}: not a readable file")
    try:  # the input's fault, told apart from an appliance that cannot start
        run(info_argv(image, image_format), timeout=120)
    except CommandError as exc:
        raise UsageError(
            f"cannot open {image} as a {image_format} disk image: "
            f"{(exc.stderr or exc.stdout).strip()}",
            hint="check the file and its format; `qemu-img info` shows what it holds",
        ) from None
    started = time.monotonic()
    g = launch([Drive(image, image_format)], accelerator)
    try:
        with tempfile.TemporaryDirectory(prefix="azbuild-check-") as tmp:
            results = _run_checks(g, Guest(g, Path(tmp)), image, visit)
        with contextlib.suppress(RuntimeError):
            g.shutdown()
    finally:
        g.close()
    log.info("guest checks of %s took %.1f s", image, time.monotonic() - started)
    return results


def _run_checks(g: Any, guest: Guest, image: Path,
                visit: MountedVisitor | None = None) -> list[CheckResult]:
    facts = Facts()
    scan_block_devices(g, facts)
    r13 = check_clean(g, facts.filesystems)  # before anything mounts a filesystem
    mount_os(g, guest, facts, image)
    gather(g, guest, facts)
    if visit is not None:
        started = time.monotonic()
        visit(g, facts.kernel_lines)
        log.info("reading more from the guest took %.1f s", time.monotonic() - started)
    r03, extras = check_partitions(facts)
    cloud_init = cloud_init_state(guest, facts)
    results = [
        r03,
        check_swap(facts),
        check_initrds(guest),
        check_kernels(guest, facts),
        check_cmdline(guest, facts),
        check_agent(guest, facts),
        check_ssh(guest, facts),
        check_waagent_conf(guest, cloud_init),
        check_sudoers(guest),
        check_generalised(guest),
        r13,
        check_fallback_loader(g, guest, facts),
        check_host_keys(guest, facts, cloud_init),
    ]
    if facts.unmounted:
        extras.append(CheckResult(
            "W-MOUNT", "warn", "could not mount " + "; ".join(facts.unmounted),
            "every filesystem of the OS mounts"))
    return results + extras
