"""The KVM probe's answer is cached on disk for one host boot, QEMU and kernel."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.vm import accel


@pytest.fixture
def boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("11111111-2222-3333-4444-555555555555\n")
    monkeypatch.setattr(accel, "BOOT_ID", boot_id)
    monkeypatch.setenv("AZBUILD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(accel, "_probe_cache", {})
    return boot_id


def test_cache_entry_depends_on_boot_kernel_and_uri(boot: Path, tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-6.1.0-1-amd64"
    kernel.write_bytes(b"kernel")
    first = accel._cache_file("qemu:///system", kernel)
    assert first is not None
    assert first.parent == tmp_path / "cache" / "accel"
    assert accel._cache_file("qemu:///system", kernel) == first
    assert accel._cache_file("qemu:///session", kernel) != first
    kernel.write_bytes(b"another kernel")
    assert accel._cache_file("qemu:///system", kernel) != first
    boot.write_text("66666666-2222-3333-4444-555555555555\n")
    assert accel._cache_file("qemu:///system", kernel) not in (None, first)


def test_remote_hypervisors_are_not_cached(boot: Path) -> None:
    assert accel._cache_file("qemu+ssh://host/system", None) is None


def test_written_answer_is_read_back_with_where_it_came_from(boot: Path,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "cache" / "accel" / "entry.json"
    accel._write_cached(path, False, "under KVM nothing reached the serial console in 5s")
    assert json.loads(path.read_text())["usable"] is False
    usable, reason = accel._read_cached(path) or (True, "")
    assert usable is False
    assert reason.startswith("under KVM nothing reached the serial console in 5s (probed ")
    assert f"cached in {path}" in reason
    assert [p.name for p in path.parent.iterdir()] == ["entry.json"], "no temp file left"


def test_a_corrupt_entry_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "entry.json"
    path.write_text("{not json")
    assert accel._read_cached(path) is None


def test_probe_uses_the_answer_cached_this_boot(boot: Path, tmp_path: Path) -> None:
    """No libvirt is touched: the cached answer stands for this boot."""
    kernel = tmp_path / "vmlinuz-6.1.0-1-amd64"
    kernel.write_bytes(b"kernel")
    uri = "qemu:///nonexistent-driver"
    path = accel._cache_file(uri, kernel)
    assert path is not None
    accel._write_cached(path, True, "a kernel printed its first line under KVM in 0.4s")
    choice = accel.choose_accelerator("auto", uri, kernel)
    assert choice.accelerator == "kvm"
    assert "cached in" in choice.reason


def test_a_probe_that_could_not_start_a_domain_is_not_remembered(
    boot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirtd down is no lasting fact about KVM: the next build probes again."""
    device = tmp_path / "kvm"
    device.touch()
    monkeypatch.setattr(accel, "KVM_DEVICE", device)  # as on a host with /dev/kvm
    kernel = tmp_path / "vmlinuz-6.1.0-1-amd64"
    kernel.write_bytes(b"kernel")
    uri = "qemu:///nonexistent-driver"
    usable, reason = accel.probe_kvm(uri, kernel, timeout=1)
    assert not usable
    assert reason.startswith("a KVM domain failed to start"), reason
    path = accel._cache_file(uri, kernel)
    assert path is not None and not path.exists(), reason


KVM_ASSERTION = (
    "libvirt: QEMU Driver error : internal error: process exited while connecting to "
    "monitor: 2026-12-01T14:34:31.123Z\nqemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: "
    "kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed."
)


@pytest.mark.parametrize("message", [
    KVM_ASSERTION,
    "qemu-system-x86_64: Could not access KVM kernel module: Permission denied\n"
    "qemu-system-x86_64: failed to initialize kvm: Permission denied",
])
def test_qemu_failing_on_kvm_itself_is_a_lasting_answer(message: str) -> None:
    """Seen on this machine kind: QEMU starts and dies in kvm.c every time; probing again
    on every build would cost a domain start and never change the answer."""
    reason = accel.start_failure_reason(message)
    assert reason.startswith("QEMU failed under KVM: qemu-system-x86_64:"), reason
    assert not reason.startswith(accel._NOT_LASTING)


@pytest.mark.parametrize("message", [
    "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
    "Cannot access storage file '/tmp/x/vmlinuz': Permission denied",
])
def test_libvirt_failing_before_qemu_ran_is_not_lasting(message: str) -> None:
    assert accel.start_failure_reason(message).startswith(accel._NOT_LASTING)


def test_a_qemu_kvm_failure_is_remembered_for_this_boot(
    boot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = tmp_path / "vmlinuz-6.1.0-1-amd64"
    kernel.write_bytes(b"kernel")
    uri = "qemu:///system"
    probes: list[str] = []

    def crashing_probe(uri: str, kernel: Path | None, timeout: float) -> tuple[bool, str]:
        probes.append(uri)
        return False, accel.start_failure_reason(KVM_ASSERTION)

    monkeypatch.setattr(accel, "_probe", crashing_probe)
    assert accel.choose_accelerator("auto", uri, kernel).accelerator == "tcg"
    monkeypatch.setattr(accel, "_probe_cache", {})  # a new process, the same boot
    again = accel.choose_accelerator("auto", uri, kernel)
    assert again.accelerator == "tcg" and "cached in" in again.reason, again.reason
    assert probes == [uri]


def test_builds_started_together_probe_once(
    boot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build T1 T2 --jobs 2` on a fresh boot: the second build waits for the first one's
    probe and reads its answer, instead of a second probe guest competing for the CPU."""
    kernel = tmp_path / "vmlinuz-6.1.0-1-amd64"
    kernel.write_bytes(b"kernel")
    probes: list[str] = []

    def slow_probe(uri: str, kernel: Path | None, timeout: float) -> tuple[bool, str]:
        probes.append(uri)
        time.sleep(0.5)
        return False, "under KVM nothing reached the serial console in 5s"

    monkeypatch.setattr(accel, "_probe", slow_probe)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: accel.probe_kvm("qemu:///system", kernel),
                                range(2)))
    assert probes == ["qemu:///system"]
    assert all(usable is False for usable, _ in answers)
    path = accel._cache_file("qemu:///system", kernel)
    assert path is not None and sorted(p.name for p in path.parent.iterdir()) == [path.name]
