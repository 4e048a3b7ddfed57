"""Choosing the accelerator: KVM only when a guest kernel really runs under it, else TCG.

`/dev/kvm` existing proves nothing: a broken KVM can run the firmware and then
hang in the kernel without a word. So `auto` boots a kernel under KVM with
`console=ttyS0` and uses KVM only when the kernel's first line (`Linux version`)
reaches the serial console within a few seconds. The result is cached per process.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from builder.errors import AzbuildError, BuildError
from builder.libvirt import (
    DomainMetadata,
    DomainSpec,
    KernelBoot,
    default_dac_label,
    domain_name,
    running_domain,
)

log = logging.getLogger(__name__)

PROBE_SECONDS = 5.0
PROBE_MEMORY = 256 * 1024**2
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True)
class AccelChoice:
    accelerator: Literal["kvm", "tcg"]
    reason: str


_probe_cache: dict[tuple[str, Path | None], tuple[bool, str]] = {}


def _version_key(path: Path) -> tuple[int | str, ...]:
    version = path.name.removeprefix("vmlinuz-")
    parts: list[int | str] = []
    for piece in version.replace("-", ".").split("."):
        parts.append(int(piece) if piece.isdigit() else -1)
    return tuple(parts)


def host_kernel() -> Path | None:
    """The host's newest readable /boot/vmlinuz-*, if any."""
    candidates = [p for p in Path("/boot").glob("vmlinuz-*") if os.access(p, os.R_OK)]
    return max(candidates, key=_version_key) if candidates else None


def _is_local(uri: str) -> bool:
    # qemu:///system, qemu:///session: no host part means this machine.
    return "://" in uri and uri.split("://", 1)[1].startswith("/")


def probe_kvm(
    uri: str, kernel: Path | None = None, timeout: float = PROBE_SECONDS
) -> tuple[bool, str]:
    """Boot `kernel` (default: the host's newest) under KVM; (usable, reason). Cached."""
    kernel = kernel or host_kernel()
    key = (uri, kernel)
    if key not in _probe_cache:
        _probe_cache[key] = _probe(uri, kernel, timeout)
    return _probe_cache[key]


def _probe(uri: str, kernel: Path | None, timeout: float) -> tuple[bool, str]:
    if _is_local(uri) and not KVM_DEVICE.exists():
        return False, f"{KVM_DEVICE} does not exist"
    session = uri.endswith("/session")
    if _is_local(uri) and session and not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return False, f"{KVM_DEVICE} is not accessible to this user (join the kvm group)"
    if kernel is None:
        return False, "no kernel to probe KVM with (no readable /boot/vmlinuz-*)"
    with tempfile.TemporaryDirectory(prefix="azbuild-kvm-probe-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # qemu:///session or a relabelling libvirt may need to enter
        spec = DomainSpec(
            name=domain_name("kvm-probe"),
            vcpus=1,
            memory=PROBE_MEMORY,
            accelerator="kvm",
            serial_log=work / "serial.log",
            metadata=DomainMetadata.for_this_process("kvm-probe", work),
            kernel_boot=KernelBoot(kernel=kernel, cmdline="console=ttyS0 panic=-1"),
            on_reboot="destroy",
            dac_label=default_dac_label(uri),
        )
        started = time.monotonic()
        try:
            with running_domain(spec, uri) as domain:
                match = domain.serial.wait_for("Linux version", timeout, domain.stopped_event)
                elapsed = time.monotonic() - started
                if match is not None:
                    return True, f"a kernel printed its first line under KVM in {elapsed:.1f}s"
                if domain.stopped_event.is_set():
                    return False, f"the KVM probe guest stopped at once ({domain.stop_reason})"
                if domain.serial.has_output():
                    return False, (
                        f"under KVM the firmware ran but the kernel printed nothing in "
                        f"{timeout:.0f}s"
                    )
                return False, f"under KVM nothing reached the serial console in {timeout:.0f}s"
        except AzbuildError as exc:
            first = str(exc).splitlines()[-1].strip()
            return False, f"a KVM domain failed to start: {first}"


def choose_accelerator(
    requested: Literal["auto", "kvm", "tcg"],
    uri: str,
    kernel: Path | None = None,
    timeout: float = PROBE_SECONDS,
) -> AccelChoice:
    """The accelerator to use and why (logged). `kvm` that does not work is an error."""
    if requested == "tcg":
        choice = AccelChoice("tcg", "accelerator = \"tcg\" in the template")
    else:
        usable, why = probe_kvm(uri, kernel, timeout)
        if usable:
            choice = AccelChoice("kvm", why)
        elif requested == "kvm":
            raise BuildError(
                f"accelerator = \"kvm\" was asked for, but KVM does not work here: {why}",
                hint="use accelerator = \"auto\" (falls back to TCG) or \"tcg\"",
            )
        else:
            choice = AccelChoice("tcg", f"KVM is not usable: {why}")
    log.info("accelerator: %s (%s)", choice.accelerator, choice.reason)
    return choice
