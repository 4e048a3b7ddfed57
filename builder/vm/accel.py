"""Choosing the accelerator: KVM only when a guest kernel really runs under it, else TCG.

`/dev/kvm` existing proves nothing: a broken KVM can run the firmware and then
hang in the kernel without a word. So `auto` boots a kernel under KVM with
`console=ttyS0` and uses KVM only when the kernel's first line (`Linux version`)
reaches the serial console within a few seconds.

The answer cannot change until the host reboots or its QEMU or kernel changes, so it
is cached on disk per host boot (keyed by `/proc/sys/kernel/random/boot_id`, the QEMU
binary, the probe kernel and the libvirt URI): the probe costs once per boot, not
once per build, and every user of an accelerator (the build's guests, the libguestfs
appliance of `check`) gets the same decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from builder.errors import AzbuildError, BuildError
from builder.locks import removable_lock
from builder.paths import cache_dir
from builder.vm.libvirt import (
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
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class AccelChoice:
    accelerator: Literal["kvm", "tcg"]
    reason: str


_NOT_LASTING = "a KVM domain failed to start"
# QEMU itself started and then refused or crashed on KVM (an assertion in kvm.c, "failed to
# initialize kvm", no access to the module): a fact about this host, kernel and QEMU, unlike
# libvirtd being down or a file it could not open, which the next build may not meet.
_QEMU_KVM_FAILURE = re.compile(r"qemu-system-\S+:.*\bkvm", re.IGNORECASE)
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
    """Boot `kernel` (default: the host's newest) under KVM; (usable, reason). Cached in
    this process and on disk for this host boot."""
    kernel = kernel or host_kernel()
    key = (uri, kernel)
    if key not in _probe_cache:
        cache_file = _cache_file(uri, kernel)
        with contextlib.ExitStack() as held:
            if cache_file is not None:
                # Builds started together (build T1 T2 --jobs N, or two nightly jobs) wait
                # for the first one's answer instead of each probing: a probe guest takes a
                # core for seconds where KVM hangs. No lock (a read-only cache) costs a probe.
                with contextlib.suppress(OSError):
                    held.enter_context(removable_lock(
                        cache_file.with_name(cache_file.name + ".lock")))
            cached = _read_cached(cache_file) if cache_file is not None else None
            if cached is not None:
                _probe_cache[key] = cached
            else:
                usable, reason = _probe(uri, kernel, timeout)
                _probe_cache[key] = (usable, reason)
                # A domain that could not even start says nothing lasting about KVM
                # (libvirtd down, a permission fixed later): probe again next time.
                if cache_file is not None and not reason.startswith(_NOT_LASTING):
                    _write_cached(cache_file, usable, reason)
    return _probe_cache[key]


def _qemu_binary() -> Path | None:
    found = shutil.which("qemu-system-x86_64")
    return Path(found) if found else None


def _identity(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _cache_file(uri: str, kernel: Path | None) -> Path | None:
    """The probe's cache entry for this boot, QEMU, kernel and URI; None off-host."""
    if not _is_local(uri):
        return None  # a remote hypervisor's KVM is not ours to remember
    try:
        boot_id = BOOT_ID.read_text().strip()
    except OSError:
        return None
    facts = "\n".join([boot_id, _identity(_qemu_binary()), _identity(kernel), uri,
                       os.uname().release, str(os.geteuid())])
    key = hashlib.sha256(facts.encode()).hexdigest()[:24]
    return cache_dir() / "accel" / f"kvm-probe-{key}.json"


def _read_cached(path: Path) -> tuple[bool, str] | None:
    try:
        data = json.loads(path.read_text())
        usable, reason, when = bool(data["usable"]), str(data["reason"]), str(data["probed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return usable, f"{reason} (probed {when} this boot; cached in {path})"


def _write_cached(path: Path, usable: bool, reason: str) -> None:
    """Atomically, and quietly: a cache that cannot be written only costs a probe."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kvm-probe-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"usable": usable, "reason": reason,
                           "probed": datetime.now(UTC).isoformat(timespec="seconds")}, f)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        log.debug("could not cache the KVM probe in %s: %s", path, exc)


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
            return False, start_failure_reason(str(exc))


def start_failure_reason(message: str) -> str:
    """Why the probe domain did not start; remembered only when QEMU failed on KVM itself."""
    last = message.splitlines()[-1].strip() if message.strip() else message
    if _QEMU_KVM_FAILURE.search(last):
        return f"QEMU failed under KVM: {last}"
    return f"{_NOT_LASTING}: {last}"


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
