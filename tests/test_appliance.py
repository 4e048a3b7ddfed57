"""The libguestfs appliance runs on azbuild's accelerator decision, with a bounded launch."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builder.vm.appliance import _LaunchWatchdog, _qemu_children, backend_settings


def test_settings_follow_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBGUESTFS_BACKEND_SETTINGS", raising=False)
    assert backend_settings("tcg") == ["force_tcg"]
    assert backend_settings("kvm") == []


def test_the_users_own_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg:gdb")
    assert backend_settings("kvm") == ["force_tcg", "gdb"]


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Path:
    """A real program whose process name starts like QEMU's (a copy of sleep)."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    program = tmp_path / "qemu-system-x86_64"
    shutil.copy(sleep, program)
    return program


def test_qemu_children_finds_only_this_process_s_qemu(fake_qemu: Path) -> None:
    child = subprocess.Popen([fake_qemu, "30"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        found = _qemu_children(os.getpid())
        assert child.pid in found
        assert other.pid not in found
    finally:
        for proc in (child, other):
            proc.kill()
            proc.wait()


def test_watchdog_kills_the_appliance_after_its_bound(fake_qemu: Path) -> None:
    child = subprocess.Popen([fake_qemu, "30"])
    started = time.monotonic()
    with _LaunchWatchdog(0.3) as watchdog:
        status = child.wait(timeout=10)
    assert watchdog.fired
    assert status == -9
    assert time.monotonic() - started < 5


def test_watchdog_leaves_a_launch_within_its_bound_alone(fake_qemu: Path) -> None:
    child = subprocess.Popen([fake_qemu, "30"])
    try:
        with _LaunchWatchdog(30) as watchdog:
            time.sleep(0.2)
        assert not watchdog.fired
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
