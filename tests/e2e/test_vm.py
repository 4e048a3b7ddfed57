"""The VM layer against real libvirt and QEMU (TCG here): boot, SSH banner with the
pinned host key, the start watchdog, stop detection, the port-taken retry, gc."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import paramiko
import pytest

from builder.errors import BuildError
from builder.housekeeping.gc import OWNER_FILE, claim_work_dir, collect_garbage
from builder.run import run
from builder.vm.accel import choose_accelerator, host_kernel
from builder.vm.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    KernelBoot,
    RunningDomain,
    default_dac_label,
    domain_name,
    free_port,
    running_domain,
)
from builder.vm.seed import write_seed

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)


def _domain_names(uri: str) -> list[str]:
    out = run(["virsh", "-c", uri, "list", "--all", "--name"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


@pytest.fixture
def started_names(libvirt_uri: str) -> Iterator[list[str]]:
    """Names of the domains a test started; after the test none may exist any more."""
    names: list[str] = []
    yield names
    leftover = set(names) & set(_domain_names(libvirt_uri))
    assert not leftover, f"domains left behind: {leftover}"


def _spec(work: Path, uri: str, template: str, **kw: Any) -> DomainSpec:
    kw.setdefault("vcpus", 1)
    kw.setdefault("memory", 512 * 1024**2)
    kw.setdefault("accelerator", "tcg")
    return DomainSpec(
        name=domain_name(template),
        serial_log=work / "serial.log",
        metadata=kw.pop("metadata", None) or DomainMetadata.for_this_process(template, work),
        dac_label=default_dac_label(uri),
        **kw,
    )


def _kernel_boot(cmdline: str = "console=ttyS0 panic=-1") -> KernelBoot:
    kernel = host_kernel()
    if kernel is None:
        pytest.skip("needs a readable /boot/vmlinuz-*")
    return KernelBoot(kernel=kernel, cmdline=cmdline)


def _wait_banner(port: int, timeout: float, stop: threading.Event) -> str:
    """The first line sshd sends; a forwarded port accepts connections before sshd
    runs (they then hang), so only the banner means sshd is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(3)
                data = s.recv(256)
                if data.startswith(b"SSH-"):
                    return data.split(b"\r\n")[0].decode("ascii", "replace")
        except OSError:
            pass
        stop.wait(0.5)
    return ""


def _host_key(port: int, only: str | None) -> tuple[str, str]:
    """The host key the guest's sshd proves it holds, negotiating only key type `only`
    (default: any); raises paramiko.SSHException when it has no key of that type."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = 120
    if only is not None:
        preferred = transport.get_security_options().key_types
        transport.get_security_options().key_types = [t for t in preferred if t == only]
    try:
        transport.start_client(timeout=120)
        key = transport.get_remote_server_key()
        return key.get_name(), key.get_base64()
    finally:
        transport.close()


def _ssh_keygen(path: Path) -> tuple[str, str]:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path])
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def test_cloud_image_boots_through_grub_to_ssh_with_the_pinned_host_key(
    cloud_image: Path, libvirt_uri: str, tmp_path: Path, started_names: list[str]
) -> None:
    overlay = tmp_path / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
         "-b", cloud_image.resolve(), overlay, "4G"])
    host_private, host_public = _ssh_keygen(tmp_path / "host_ed25519")
    _client_private, client_public = _ssh_keygen(tmp_path / "client_ed25519")
    write_seed(tmp_path / "seed.iso", username="azbuild", authorized_key=client_public,
               host_key_private=host_private, host_key_public=host_public)
    accel = choose_accelerator("auto", libvirt_uri)
    spec = _spec(
        tmp_path, libvirt_uri, "e2e-cloud", accelerator=accel.accelerator,
        memory=1024**3,
        disks=(Disk(overlay), Disk(tmp_path / "seed.iso", format="raw", readonly=True)),
        ssh_port=free_port(),
    )
    started = time.monotonic()
    with running_domain(spec, libvirt_uri) as domain:
        started_names.append(domain.name)
        domain.wait_started(60)
        first_output = time.monotonic() - started
        assert domain.ssh_port is not None
        banner = _wait_banner(domain.ssh_port, 900, domain.stopped_event)
        if not banner:
            if domain.stopped_event.is_set():
                raise domain.stopped_error("waiting for the SSH banner")
            pytest.fail("no SSH banner in 900s; serial:\n" + domain.serial.tail())
        to_banner = time.monotonic() - started
        assert banner.startswith("SSH-2.0-OpenSSH")

        pinned = host_public.split()[1]
        assert _host_key(domain.ssh_port, None) == ("ssh-ed25519", pinned)
        logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)  # expected failures
        for other in ("rsa-sha2-512", "ecdsa-sha2-nistp256"):  # and it offers no other key
            with pytest.raises(paramiko.SSHException):
                _host_key(domain.ssh_port, other)

        # It booted through its own bootloader (no kernel_boot in the spec) to a login.
        assert domain.serial.wait_for(r"login: ?$|login:", 120, stop=domain.stopped_event), \
            domain.serial.tail()
        text = domain.serial.text()
        assert spec.kernel_boot is None
        assert "GRUB" in text or "Booting `Debian" in text, text[:2000]
        assert "Linux version" in text

        domain.shutdown()
        assert domain.wait_stopped(300), "no poweroff 300s after an ACPI shutdown"
        stopped = time.monotonic() - started
        assert domain.stop_reason == "the guest powered off"
        assert not domain.is_running()
    log.info("cloud image (%s): first OS output %.1fs, SSH banner %.1fs, powered off %.1fs",
             accel.accelerator, first_output, to_banner, stopped)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_watchdog_reports_a_guest_that_never_boots(
    firmware: Literal["bios", "uefi"], libvirt_uri: str, tmp_path: Path,
    started_names: list[str],
) -> None:
    if firmware == "uefi" and not Path("/usr/share/OVMF").is_dir():
        pytest.skip("needs the ovmf package")
    empty = tmp_path / "empty.raw"
    run(["truncate", "-s", "64M", empty])
    spec = _spec(tmp_path, libvirt_uri, "e2e-empty", firmware=firmware,
                 disks=(Disk(empty, format="raw"),))
    started = time.monotonic()
    with running_domain(spec, libvirt_uri) as domain:
        started_names.append(domain.name)
        with pytest.raises(BuildError) as caught:
            domain.wait_started(20)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert caught.value.hint is not None and "kvm" in caught.value.hint.lower()
    if firmware == "bios":
        # SeaBIOS prints nothing on the serial console without a video device.
        assert message == "the guest did not start: no output on the serial console within 20s"
        assert 19 < elapsed < 60
    else:
        # OVMF says it fell back to its shell: that is reported at once, with its words.
        assert message.startswith(
            "the guest did not start: the firmware found no bootable device"), message
        assert "EFI Internal Shell" in message
        assert elapsed < 170


def test_a_domain_that_stops_fails_the_wait_at_once_quoting_the_serial_log(
    libvirt_uri: str, tmp_path: Path, started_names: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The host kernel without an initrd cannot mount a root: it panics and reboots,
    # and on_reboot=destroy turns that into a stop.
    caplog.set_level(logging.INFO, logger=__name__)  # whatever earlier tests configured
    spec = _spec(tmp_path, libvirt_uri, "e2e-panic", kernel_boot=_kernel_boot(),
                 on_reboot="destroy", memory=256 * 1024**2)
    started = time.monotonic()
    with running_domain(spec, libvirt_uri) as domain, \
            domain.serial.streaming(log, logging.INFO):
        started_names.append(domain.name)
        # As the install step waits: the serial console, stopped by the domain's stop.
        assert domain.serial.wait_for("login:", 600, stop=domain.attention) is None
        elapsed = time.monotonic() - started
        assert domain.stopped_event.is_set()
        assert not domain.is_running()
        message = str(domain.stopped_error("waiting for the login prompt"))
    assert "while waiting for the login prompt" in message
    assert "Kernel panic" in message, message
    assert elapsed < 120, f"the stop was noticed only after {elapsed:.0f}s"
    streamed = [r.getMessage() for r in caplog.records if r.name == __name__]
    assert any(m.startswith("serial: ") and "Linux version" in m for m in streamed)
    assert not any("\x1b" in m for m in streamed)


def test_port_taken_retries_with_another_port(
    libvirt_uri: str, tmp_path: Path, started_names: list[str]
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        spec = _spec(tmp_path, libvirt_uri, "e2e-port",
                     kernel_boot=_kernel_boot(), on_reboot="destroy",
                     memory=256 * 1024**2, ssh_port=taken)
        with running_domain(spec, libvirt_uri) as domain:
            started_names.append(domain.name)
            assert domain.ssh_port is not None and domain.ssh_port != taken
            assert domain.serial.wait_for("Linux version", 30, domain.stopped_event)
            # The new port is QEMU's now: connecting succeeds (nothing to answer yet).
            with socket.create_connection(("127.0.0.1", domain.ssh_port), timeout=5):
                pass


def test_context_manager_destroys_on_error(
    libvirt_uri: str, tmp_path: Path, started_names: list[str]
) -> None:
    spec = _spec(tmp_path, libvirt_uri, "e2e-error", kernel_boot=_kernel_boot(),
                 memory=256 * 1024**2)
    seen: list[RunningDomain] = []
    with pytest.raises(RuntimeError, match="the original error"), \
            running_domain(spec, libvirt_uri) as domain:
        started_names.append(domain.name)
        seen.append(domain)
        assert domain.is_running()
        raise RuntimeError("the original error")
    assert seen[0].stopped_event.is_set()
    assert spec.name not in _domain_names(libvirt_uri)
    seen[0].destroy()  # idempotent


def test_gc_finds_and_removes_what_a_dead_build_left(
    libvirt_uri: str, tmp_path: Path, started_names: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    work_root = tmp_path / "work"
    orphan, alive = work_root / "orphan", work_root / "alive"
    for path in (orphan, alive):
        path.mkdir(parents=True)
    claim_work_dir(orphan, dead.pid)
    claim_work_dir(alive)
    assert (alive / OWNER_FILE).read_text().split()[0] == str(os.getpid())
    monkeypatch.setenv("AZBUILD_WORK_DIR", str(work_root))

    meta = DomainMetadata("e2e-gc", orphan, dead.pid, None, "2026-01-01T00:00:00+00:00")
    spec = _spec(orphan, libvirt_uri, "e2e-gc", kernel_boot=_kernel_boot("console=ttyS0"),
                 memory=256 * 1024**2, metadata=meta)
    with running_domain(spec, libvirt_uri) as domain:
        started_names.append(domain.name)
        listed = collect_garbage(remove=False, connect=libvirt_uri)
        assert any(re.match(rf"domain {domain.name} \(pid {dead.pid} gone", line)
                   for line in listed), listed
        assert f"work dir {orphan} (pid {dead.pid} gone): leftover" in listed
        assert not any(str(alive) in line for line in listed)
        assert domain.is_running()

        removed = collect_garbage(remove=True, connect=libvirt_uri)
        assert any(line.startswith(f"domain {domain.name} ") and line.endswith("destroyed")
                   for line in removed), removed
        assert domain.wait_stopped(30)
        assert domain.stop_reason == "the domain was destroyed"
    assert not orphan.exists()
    assert alive.is_dir()


def test_accelerator_choice_is_probed_once_and_explained(libvirt_uri: str) -> None:
    started = time.monotonic()
    choice = choose_accelerator("auto", libvirt_uri)
    first = time.monotonic() - started
    assert choice.accelerator in ("kvm", "tcg") and choice.reason
    log.info("accelerator auto -> %s (%s) in %.1fs", choice.accelerator, choice.reason, first)
    started = time.monotonic()
    assert choose_accelerator("auto", libvirt_uri) == choice
    assert time.monotonic() - started < 0.5  # cached per process
    assert choose_accelerator("tcg", libvirt_uri).accelerator == "tcg"
    if choice.accelerator == "tcg":
        with pytest.raises(BuildError, match='accelerator = "kvm" was asked for'):
            choose_accelerator("kvm", libvirt_uri)
    else:
        assert choose_accelerator("kvm", libvirt_uri).accelerator == "kvm"
