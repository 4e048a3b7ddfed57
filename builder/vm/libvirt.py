"""Domain XML (pure functions of a plain spec) and the running-domain context manager.

Every guest azbuild runs is a transient libvirt domain named
`azbuild-<template>-<short id>`, tagged in `<metadata>` with who started it,
so `azbuild gc` can find what a killed build left behind. The domain stops
being waited on by polling: libvirt lifecycle events (delivered by the default
event loop, run in a daemon thread) set `RunningDomain.stopped_event` the
moment the guest powers off, is destroyed or crashes.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import libvirt

from builder.errors import BuildError, UsageError, indent
from builder.vm.serial import SerialLog
from builder.waits import WaitReporter

log = logging.getLogger(__name__)

KEY_ENTER = 28  # Linux input event code (libvirt's VIR_KEYCODE_SET_LINUX)

SYSTEM_URI = "qemu:///system"
SESSION_URI = "qemu:///session"
DOMAIN_PREFIX = "azbuild-"
METADATA_NS = "https://azbuild.dev/xmlns/libvirt-domain/1"
METADATA_PREFIX = "azbuild"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# The user-mode NIC gets a fixed PCI slot, far from the ones libvirt hands out.
NIC_PCI_SLOT = "0x10"
HOSTFWD_FAILURE = "Could not set up host forwarding rule"

Accelerator = Literal["kvm", "tcg"]
Firmware = Literal["bios", "uefi"]


def connection_uri(explicit: str | None) -> str:
    """The libvirt URI: the explicit one (`--connect`, `vm.connect`), else
    qemu:///system as root and qemu:///session otherwise."""
    if explicit:
        return explicit
    return SYSTEM_URI if os.geteuid() == 0 else SESSION_URI


def domain_name(template: str, short_id: str | None = None) -> str:
    """`azbuild-<template>-<short id>`; the id is 8 random hex digits unless given."""
    return f"{DOMAIN_PREFIX}{template}-{short_id or secrets.token_hex(4)}"


def process_start_ticks(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (Linux), to tell a
    live owner from a recycled PID; None when the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether `pid` still runs and is the same process (when its start time is known)."""
    ticks = process_start_ticks(pid)
    if ticks is None:
        return False
    return start_ticks is None or ticks == start_ticks


# ---------------------------------------------------------------------------
# The spec and its XML


@dataclass(frozen=True)
class Disk:
    path: Path
    format: Literal["qcow2", "raw"] = "qcow2"
    bus: Literal["virtio", "sata", "scsi"] = "virtio"
    device: Literal["disk", "cdrom"] = "disk"
    readonly: bool = False


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: QEMU loads the kernel and initrd itself (no bootloader)."""

    kernel: Path
    initrd: Path | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class DomainMetadata:
    """What `azbuild gc` needs to know whose a domain is."""

    template: str
    work_dir: Path
    pid: int
    pid_start: int | None
    started: str  # ISO 8601, UTC

    @classmethod
    def for_this_process(cls, template: str, work_dir: Path) -> DomainMetadata:
        pid = os.getpid()
        return cls(
            template=template,
            work_dir=work_dir,
            pid=pid,
            pid_start=process_start_ticks(pid),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )


@dataclass(frozen=True)
class DomainSpec:
    name: str
    vcpus: int
    memory: int  # bytes
    accelerator: Accelerator
    serial_log: Path
    metadata: DomainMetadata
    firmware: Firmware = "bios"
    disks: tuple[Disk, ...] = ()
    kernel_boot: KernelBoot | None = None
    on_reboot: Literal["restart", "destroy"] = "restart"
    ssh_port: int | None = None  # forwarded from 127.0.0.1:PORT to the guest's port 22
    dac_label: str | None = None  # e.g. "+0:+0": QEMU keeps this identity, no relabelling


def default_dac_label(uri: str) -> str | None:
    """With qemu:///system QEMU would run as libvirt-qemu and could not open disks in
    our private work dirs: keep the caller's identity instead (no relabelling)."""
    if uri.startswith(SYSTEM_URI):
        return f"+{os.getuid()}:+{os.getgid()}"
    return None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _target_names(disks: tuple[Disk, ...]) -> list[str]:
    counters = {"vd": 0, "sd": 0}
    names = []
    for disk in disks:
        prefix = "vd" if disk.bus == "virtio" else "sd"
        names.append(prefix + chr(ord("a") + counters[prefix]))
        counters[prefix] += 1
    return names


def _metadata_element(meta: DomainMetadata) -> ET.Element:
    ns = "{" + METADATA_NS + "}"
    build = ET.Element(ns + "build")
    _sub(build, ns + "template", meta.template)
    _sub(build, ns + "workdir", str(meta.work_dir))
    pid = _sub(build, ns + "pid", str(meta.pid))
    if meta.pid_start is not None:
        pid.set("start", str(meta.pid_start))
    _sub(build, ns + "started", meta.started)
    return build


def _user_net_commandline(port: int) -> ET.Element:
    """The ONE place that reaches past libvirt: a QEMU user-mode NIC with the SSH
    port forward (libvirt 9.0 has no passt backend, so `<interface type='user'>`
    cannot forward ports). Replace this function when libvirt can."""
    ns = "{" + QEMU_NS + "}"
    commandline = ET.Element(ns + "commandline")
    for arg in (
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", f"virtio-net-pci,netdev=n0,bus=pci.0,addr={NIC_PCI_SLOT}",
    ):
        _sub(commandline, ns + "arg", value=arg)
    return commandline


def domain_xml(spec: DomainSpec) -> str:
    """The libvirt domain XML for `spec` (a pure function, tested exactly)."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", type="kvm" if spec.accelerator == "kvm" else "qemu")
    _sub(domain, "name", spec.name)
    metadata = _sub(domain, "metadata")
    metadata.append(_metadata_element(spec.metadata))
    _sub(domain, "memory", str(spec.memory // 1024), unit="KiB")
    _sub(domain, "vcpu", str(spec.vcpus))

    os_el = _sub(domain, "os", **({"firmware": "efi"} if spec.firmware == "uefi" else {}))
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    if spec.kernel_boot is not None:
        _sub(os_el, "kernel", str(spec.kernel_boot.kernel))
        if spec.kernel_boot.initrd is not None:
            _sub(os_el, "initrd", str(spec.kernel_boot.initrd))
        _sub(os_el, "cmdline", spec.kernel_boot.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    # ACPI: needed for an ACPI shutdown at all, and required by libvirt with UEFI.
    features = _sub(domain, "features")
    _sub(features, "acpi")
    if spec.accelerator == "kvm":
        _sub(domain, "cpu", mode="host-passthrough")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", spec.on_reboot)
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if any(d.bus == "scsi" for d in spec.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for disk, target in zip(spec.disks, _target_names(spec.disks), strict=True):
        el = _sub(devices, "disk", type="file", device=disk.device)
        _sub(el, "driver", name="qemu", type=disk.format)
        _sub(el, "source", file=str(disk.path))
        _sub(el, "target", dev=target, bus=disk.bus)
        if disk.readonly or disk.device == "cdrom":
            _sub(el, "readonly")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.serial_log))
    _sub(serial, "target", port="0")
    _sub(devices, "memballoon", model="none")
    if spec.dac_label is not None:
        seclabel = _sub(domain, "seclabel", type="static", model="dac", relabel="no")
        _sub(seclabel, "label", spec.dac_label)
    if spec.ssh_port is not None:
        domain.append(_user_net_commandline(spec.ssh_port))
    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode") + "\n"


def read_metadata(xml: str) -> DomainMetadata | None:
    """The azbuild metadata of a domain's XML, or None when it has none."""
    root = ET.fromstring(xml)
    ns = "{" + METADATA_NS + "}"
    build = root.find(f"metadata/{ns}build")
    if build is None:
        return None
    pid = build.find(ns + "pid")
    start = pid.get("start") if pid is not None else None
    return DomainMetadata(
        template=build.findtext(ns + "template") or "",
        work_dir=Path(build.findtext(ns + "workdir") or ""),
        pid=int(pid.text or 0) if pid is not None else 0,
        pid_start=int(start) if start else None,
        started=build.findtext(ns + "started") or "",
    )


# ---------------------------------------------------------------------------
# The event loop and connections

_event_loop_lock = threading.Lock()
_event_loop_started = False


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "a connection error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "libvirtd stopped answering keepalives",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by this client",
}


def _ignore_libvirt_error(_ctx: Any, _error: Any) -> None:
    return None


def _ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and run it in a
    daemon thread; must happen before a connection is opened."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors reach us as exceptions; keep libvirt from also printing them to stderr.
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def open_connection(uri: str) -> Any:
    """A libvirt connection to `uri` (with the event loop running), or a clear error."""
    _ensure_event_loop()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise BuildError(f"cannot connect to libvirt at {uri}: {exc}",
                         hint=connection_hint(uri, str(exc), os.geteuid())) from None
    try:
        conn.setKeepAlive(5, 3)
    except libvirt.libvirtError as exc:
        # In-process drivers (test:///default, which the unit tests use) have no link
        # to keep alive; any daemon connection supports it.
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise
    return conn


@contextmanager
def connected(uri: str) -> Iterator[Any]:
    """`open_connection(uri)` for the block, closed after it."""
    conn = open_connection(uri)
    try:
        yield conn
    finally:
        conn.close()


def refuse_unsupported_uri(uri: str, euid: int) -> None:
    """Root on qemu:///session: its QEMU cannot open the build's disks (measured), and
    qemu:///system is there for root."""
    if euid == 0 and uri.startswith(SESSION_URI):
        raise UsageError(
            "qemu:///session as root is not supported: its QEMU cannot open the build's disks",
            hint="use qemu:///system (the default for root), or build as another user",
        )


def connection_hint(uri: str, error: str, euid: int) -> str:
    """What to do about a connection that failed with `error`."""
    if uri.startswith(SYSTEM_URI) and euid != 0:
        polkit = "system bus" in error.lower() or "polkit" in error.lower()
        return ("this user may not use qemu:///system: join the libvirt group "
                "(`usermod -aG libvirt USER`, then log in again)"
                + (", and since libvirtd asks polkit (over the system D-Bus) to authorise "
                   "users, set unix_sock_group = \"libvirt\" and auth_unix_rw = \"none\" in "
                   "/etc/libvirt/libvirtd.conf" if polkit else "")
                + "; or build on qemu:///session (the default for users other than root)")
    if uri.startswith(SESSION_URI):
        return ("qemu:///session starts a libvirtd of this user's own: check that "
                "libvirt-daemon-system is installed and that $HOME is writable")
    return "is libvirtd running? (scripts/setup.sh starts virtlogd and libvirtd)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (another process may still take
    it before QEMU binds it: `running_domain` retries then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_STOP_REASONS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "the guest powered off",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "the domain was destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "the guest crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "the domain was migrated away",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "the domain was saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "the hypervisor failed (QEMU exited)",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "the domain was reverted to a snapshot",
}


@dataclass
class RunningDomain:
    """A transient domain that runs while the `running_domain` block runs."""

    spec: DomainSpec
    uri: str
    conn: Any
    dom: Any = None
    stopped_event: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None
    # Set when the connection to libvirtd drops (a restart, a crash): the guest's state
    # can no longer be watched, so the build must stop trusting it.
    lost_event: threading.Event = field(default_factory=threading.Event)
    lost_reason: str | None = None
    # Set on either: what a long wait on the guest stops for.
    attention: threading.Event = field(default_factory=threading.Event)
    _callback_id: int | None = None
    _destroyed: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ssh_port(self) -> int | None:
        return self.spec.ssh_port

    @property
    def serial(self) -> SerialLog:
        return SerialLog(self.spec.serial_log)

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        if dom.name() != self.spec.name:
            return
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            reason = _STOP_REASONS.get(detail, f"the domain stopped (detail {detail})")
        elif event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
            reason = "the guest crashed (kernel panic)"
        elif event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            reason = self.stop_reason or "the domain was undefined"
        else:
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        log.debug("domain %s: %s", self.spec.name, reason)
        self.stopped_event.set()
        self.attention.set()

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self.lost_reason = _CLOSE_REASONS.get(reason, f"closed (reason {reason})")
        log.warning("lost the connection to libvirt at %s: %s", self.uri, self.lost_reason)
        self.lost_event.set()
        self.attention.set()

    def check_connection(self) -> None:
        """Raise BuildError once the connection to libvirtd is lost."""
        if self.lost_event.is_set():
            raise BuildError(
                f"lost the connection to libvirt at {self.uri} while domain {self.name} "
                f"was running ({self.lost_reason}); the build can no longer watch its guest",
                hint="libvirtd was restarted or stopped during the build: build again once "
                "it runs steadily; `azbuild gc --yes` removes anything left",
            )

    def is_running(self) -> bool:
        if self.stopped_event.is_set() or self.dom is None:
            return False
        try:
            return bool(self.dom.isActive())
        except libvirt.libvirtError:
            return False

    def press_enter(self) -> bool:
        """Press Enter on the guest's keyboard; False when the domain cannot take the key
        (it stopped, or libvirt refused)."""
        try:
            self.dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 0, [KEY_ENTER], 1, 0)
        except libvirt.libvirtError as exc:
            log.debug("domain %s: could not press Enter: %s", self.name, exc)
            return False
        return True

    def shutdown(self) -> None:
        """Ask the guest to power off (ACPI power button); returns at once."""
        try:
            self.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except libvirt.libvirtError as exc:
            if self.is_running():
                raise BuildError(f"cannot shut down domain {self.name}: {exc}") from None

    def wait_stopped(self, timeout: float, what: str = "the guest to power off") -> bool:
        """Wait on lifecycle events up to `timeout` s, saying so while it lasts; True if
        it stopped."""
        reporter = WaitReporter(f"{what} ({self.name})", timeout)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if self.stopped_event.wait(min(1.0, remaining)):
                return True
            self.check_connection()
            reporter.tick()
        # Belt and braces: an event lost with a dropped connection must not hang a build.
        return not self.is_running()

    def destroy(self) -> None:
        """Stop the domain now; idempotent, and quiet when it is already gone. When the
        connection was lost, a new one is opened to reach the domain."""
        if self.dom is None or self._destroyed:
            return
        self._destroyed = True
        dom = self.dom if not self.lost_event.is_set() else _reconnect_domain(self)
        try:
            if dom is not None:
                dom.destroy()
                log.debug("destroyed domain %s", self.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (
                libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID
            ):
                log.warning("could not destroy domain %s: %s; `azbuild gc --yes` removes "
                            "it", self.name, exc)
        if self.stop_reason is None:
            self.stop_reason = "the domain was destroyed"
        self.stopped_event.set()
        self.attention.set()

    def stopped_error(self, doing: str, tail_lines: int = 30) -> BuildError:
        tail = self.serial.tail(tail_lines) or "(the serial console is empty)"
        reason = self.stop_reason or "the domain stopped"
        return BuildError(
            f"{reason} while {doing}; the end of the serial console "
            f"({self.spec.serial_log}):\n{indent(tail)}"
        )

    def wait_started(self, timeout: float) -> None:
        """The start watchdog: within `timeout` s the guest must print something on its
        serial console besides firmware messages; fails at once when the firmware says
        it found nothing to boot, or when the domain stops."""
        match = self.serial.wait_for(_STARTED_OR_NO_BOOT, timeout, stop=self.attention,
                                     what="the guest to start")
        self.check_connection()
        hint = (
            "check the firmware (bios/uefi) matches the image, and if the accelerator is "
            "kvm, try accelerator = \"tcg\": a broken KVM can run the firmware but not the kernel"
        )
        if match is not None and match.lastgroup == "os":
            return
        if match is not None:
            raise BuildError(
                "the guest did not start: the firmware found no bootable device; "
                f"the end of the serial console:\n{indent(self.serial.tail())}",
                hint=hint,
            )
        if self.stopped_event.is_set():
            raise self.stopped_error("waiting for the guest to start")
        if not self.serial.has_output():
            raise BuildError(
                f"the guest did not start: no output on the serial console within "
                f"{timeout:.0f}s",
                hint=hint,
            )
        raise BuildError(
            f"the guest did not start: only firmware output on the serial console within "
            f"{timeout:.0f}s:\n{indent(self.serial.tail())}",
            hint=hint,
        )


# Firmware lines (SeaBIOS, iPXE, OVMF and its shell) are not the guest's OS starting.
_FIRMWARE_LINE = (
    r"\s*(?:SeaBIOS|iPXE|Machine UUID|Booting from|Boot failed|No bootable device|Press |"
    r"BdsDxe|UEFI|EDK II|Shell>|Mapping table|(?:FS|BLK)\d+:|Start PXE|PXE-|>>|"
    r"Retrying|ESC|Select boot|startup\.nsh|$)"
)
_NO_BOOT_DEVICE = (
    r"No bootable device|Boot failed: not a bootable disk|No bootable option|"
    r"starting Boot\d+ \"EFI Internal Shell\""
)
# Whichever comes first: the firmware giving up, or a line of the OS (or its bootloader).
# Only a whole line counts as the OS's: under TCG the console is written a few
# characters at a time, and a firmware line caught half-written ("Bds", "Shel") is
# not yet recognisable as firmware.
_STARTED_OR_NO_BOOT = re.compile(
    rf"(?m)(?P<noboot>{_NO_BOOT_DEVICE})|(?P<os>^(?!{_FIRMWARE_LINE})[^\n]*\S[^\n]*\n)"
)



def _is_hostfwd_failure(exc: Exception) -> bool:
    return HOSTFWD_FAILURE in str(exc)


@contextmanager
def running_domain(
    spec: DomainSpec, uri: str, *, port_attempts: int = 5
) -> Iterator[RunningDomain]:
    """Create the transient domain for `spec` and yield it; on exit always destroy it.

    When QEMU cannot bind the forwarded SSH port (taken by another build after
    all), the domain is created again with another free port, up to
    `port_attempts` times; the port used is `RunningDomain.ssh_port`.
    """
    conn = open_connection(uri)
    running = RunningDomain(spec=spec, uri=uri, conn=conn)
    conn.registerCloseCallback(running._on_close, None)
    try:
        # Register before creating, for every domain, so no stop can be missed.
        running._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, running._on_lifecycle, None
        )
        for attempt in range(1, port_attempts + 1):
            xml = domain_xml(running.spec)
            log.debug("domain XML for %s:\n%s", running.spec.name, xml)
            try:
                running.dom = conn.createXML(xml, 0)
                break
            except libvirt.libvirtError as exc:
                retry = attempt < port_attempts and _is_hostfwd_failure(exc)
                if running.spec.ssh_port is not None and retry:
                    new_port = free_port()
                    log.info("port %d is taken; retrying with port %d",
                             running.spec.ssh_port, new_port)
                    running.spec = replace(running.spec, ssh_port=new_port)
                    continue
                raise BuildError(
                    f"libvirt could not start domain {running.spec.name}: {exc}"
                ) from None
        log.info("started domain %s (%s%s)", running.name, running.spec.accelerator,
                 f", ssh on 127.0.0.1:{running.ssh_port}" if running.ssh_port else "")
        yield running
    finally:
        _cleanup(running, conn)


@dataclass(frozen=True)
class FoundDomain:
    """An azbuild domain as `azbuild gc` finds it."""

    name: str
    metadata: DomainMetadata | None  # None: it carries no azbuild metadata
    handle: Any  # the libvirt domain, for remove_domain


def list_azbuild_domains(conn: Any) -> list[FoundDomain]:
    """Every domain named `azbuild-...` on `conn`, with the azbuild metadata it carries;
    one that vanishes while being listed is left out."""
    found: list[FoundDomain] = []
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if not name.startswith(DOMAIN_PREFIX):
            continue
        try:
            found.append(FoundDomain(name, read_metadata(dom.XMLDesc(0)), dom))
        except libvirt.libvirtError:
            continue  # gone meanwhile
    return found


def remove_domain(domain: FoundDomain) -> None:
    """Destroy the domain if it runs and undefine it if it is persistent; one already
    gone is fine."""
    dom = domain.handle
    try:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


RECONNECT_SECONDS = 30.0


def _reconnect_domain(running: RunningDomain) -> Any:
    """The domain through a new connection, waiting for a restarting libvirtd; None when
    it cannot be reached (gc finds it later: it carries this process's metadata)."""
    deadline = time.monotonic() + RECONNECT_SECONDS
    while True:
        try:
            conn = libvirt.open(running.uri)
            running.conn = conn
            return conn.lookupByName(running.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            if time.monotonic() >= deadline:
                log.warning("cannot reach libvirt at %s to destroy domain %s: %s; "
                            "`azbuild gc --yes` removes it", running.uri, running.name, exc)
                return None
            time.sleep(1.0)


def _cleanup(running: RunningDomain, conn: Any) -> None:
    try:
        running.destroy()
    finally:
        try:
            if running._callback_id is not None:
                conn.domainEventDeregisterAny(running._callback_id)
        except libvirt.libvirtError as exc:
            log.debug("deregistering the event callback: %s", exc)
        if not running.lost_event.is_set():
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError as exc:
                log.debug("unregistering the close callback: %s", exc)
        # The original connection, and the one a lost connection was replaced by.
        for each in {id(conn): conn, id(running.conn): running.conn}.values():
            try:
                each.close()
            except libvirt.libvirtError as exc:
                log.debug("closing the libvirt connection: %s", exc)
