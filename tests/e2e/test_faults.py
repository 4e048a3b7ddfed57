"""Fault injection on real libvirt: what a nightly job meets when something breaks mid-build.

Each case injects one fault into a real build (the cheapest guest that reaches the
point: the cloud image from disk, or the test installer for the install phase) and
asserts a clear message, a non-zero exit, nothing left running or on disk after
`azbuild gc --yes`, and the failed build's log kept. docs/testing.md lists the faults.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_build import (
    AZBUILD,
    EXAMPLE,
    REPO,
    Outcome,
    assert_failed_build_kept,
    azbuild_domains,
    build_dir,
    validate_manifest,
)
from userenv import user_env

from builder.paths import cache_dir
from builder.run import run

pytestmark = pytest.mark.e2e

DEMO = REPO / "examples" / "demo.toml"
# The requirements whose preparation takes minutes under TCG (agent install, initrd,
# GRUB): skipped where a fault needs a build to reach its export quickly.
QUICK_PREP = """
[azure.skip]
R05 = "fault test: no initrd rebuild"
R07 = "fault test: no GRUB regeneration"
R08 = "fault test: no agent install"
R10 = "fault test: no agent configuration"
"""


def fault_template(path: Path, name: str, body: str) -> Path:
    path.write_text(f'extends = ["{EXAMPLE}"]\nname = "{name}"\n' + body)
    return path


def build_with_fault(
    template: Path,
    tmp: Path,
    args: list[str],
    when: str,
    fault: Callable[[subprocess.Popen[bytes]], None],
    output_dir: Path | None = None,
    settle: float = 600,
) -> Outcome:
    """Start `azbuild build`, call `fault(proc)` once its stderr shows `when`, then wait
    (at most `settle` s) for the build to end. Stderr goes to a file, read as it grows:
    no pipe buffering can hide a line."""
    work_root = tmp / "work"
    work_root.mkdir(exist_ok=True)
    out = output_dir or tmp / "out"
    stderr_file = tmp / "stderr.log"
    started = time.monotonic()
    with stderr_file.open("wb") as stderr:
        proc = subprocess.Popen(
            [*AZBUILD, "build", str(template), *args, "--output-dir", str(out),
             "--no-simulate"],
            stderr=stderr, stdout=subprocess.DEVNULL, cwd=REPO,
            env=user_env(AZBUILD_WORK_DIR=str(work_root)),
        )
    while when not in stderr_file.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"the build ended before {when!r}:\n"
                        f"{stderr_file.read_text(errors='replace')[-4000:]}")
        assert time.monotonic() - started < 1800, f"never saw {when!r}"
        time.sleep(0.2)
    fault(proc)
    injected = time.monotonic()
    try:
        proc.wait(timeout=settle)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the build did not end within {settle:.0f}s of the fault")
    return Outcome(proc.returncode, "", stderr_file.read_text(errors="replace"),
                   build_dir(out), work_root, time.monotonic() - injected)


def gc_yes(work_root: Path) -> str:
    proc = subprocess.run([*AZBUILD, "gc", "--yes"], capture_output=True, text=True,
                          cwd=REPO, env=user_env(AZBUILD_WORK_DIR=str(work_root)),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def assert_no_leak(outcome: Outcome, uri: str) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr[-4000:]
    assert azbuild_domains(uri) == [], "a domain was left behind"
    assert list(outcome.work_root.iterdir()) == [], "a work directory was left behind"


def assert_killed_build_kept(outcome: Outcome, name: str, step: str) -> None:
    """What gc keeps of a killed build: its log and a failed manifest; no image, no
    console (masking one needs the secrets that died with the build)."""
    kept = sorted(p.name for p in outcome.output_dir.iterdir())
    assert kept == ["build.log", "manifest.json"], kept
    manifest = validate_manifest(outcome.output_dir / "manifest.json")
    assert manifest["status"] == "failed" and manifest["template"] == name
    assert manifest["failure"]["step"] == step, manifest["failure"]
    assert "ended without cleaning up" in manifest["failure"]["error"]
    assert "ended without cleaning up" in (outcome.output_dir / "build.log").read_text()


@pytest.fixture
def libvirtd_restarted(libvirt_uri: str) -> Iterator[Callable[[], None]]:
    """A way to restart libvirtd mid-build; it runs again after the test, whatever
    happened."""

    def restart() -> None:
        run(["pkill", "-x", "libvirtd"])
        for _ in range(100):
            if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode:
                break
            time.sleep(0.1)
        run(["libvirtd", "-d"])

    yield restart
    if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode:
        run(["libvirtd", "-d"])
    for _ in range(100):
        if subprocess.run(["virsh", "-c", libvirt_uri, "version"],
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.2)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)


def test_kill_9_during_provisioning_then_gc(cloud_image: Path, tmp_path: Path,
                                            libvirt_uri: str) -> None:
    template = fault_template(tmp_path / "t.toml", "e2e-kill-provision", """
[[provision]]
type = "shell"
inline = ["echo fault-point-reached", "sleep 600"]
""")
    outcome = build_with_fault(template, tmp_path, ["--var", f"image={cloud_image}"],
                               "shell] fault-point-reached", kill_9, settle=30)
    assert outcome.returncode == -signal.SIGKILL
    # A killed build cannot clean up: its domain and work directory are left for gc.
    assert azbuild_domains(libvirt_uri), "the killed build's domain should still run"
    report = gc_yes(outcome.work_root)
    assert "e2e-kill-provision" in report, report
    assert_no_leak(outcome, libvirt_uri)
    # gc keeps what the build had logged, beside its outputs, with a failed manifest.
    assert "kept its build.log" in report, report
    assert_killed_build_kept(outcome, "e2e-kill-provision", "provision")
    assert "fault-point-reached" in (outcome.output_dir / "build.log").read_text()


def test_kill_9_during_install_then_gc(test_installer_iso: Path, tmp_path: Path,
                                       libvirt_uri: str) -> None:
    iso = test_installer_iso.parent / "azbuild-test-installer.iso"
    template = tmp_path / "t.toml"
    template.write_text(f'extends = ["{DEMO}"]\nname = "e2e-kill-install"\n')
    args = ["--var", f"iso={iso}", "--var", f"checksum=file:{iso.parent / 'SHA256SUMS'}"]
    outcome = build_with_fault(template, tmp_path, args, "installer to finish", kill_9,
                               settle=30)
    assert outcome.returncode == -signal.SIGKILL
    gc_yes(outcome.work_root)
    assert_no_leak(outcome, libvirt_uri)
    # The install was writing its stage-cache entry: gc removes the half-made disk too.
    assert not list((cache_dir() / "stages").glob(".*.tmp")), "a half-made cache entry was left"
    assert_killed_build_kept(outcome, "e2e-kill-install", "install")


def test_libvirtd_restarted_mid_build(cloud_image: Path, tmp_path: Path, libvirt_uri: str,
                                      libvirtd_restarted: Callable[[], None]) -> None:
    template = fault_template(tmp_path / "t.toml", "e2e-libvirtd", """
[[provision]]
type = "shell"
inline = ["echo fault-point-reached", "sleep 600"]
""")
    outcome = build_with_fault(template, tmp_path, ["--var", f"image={cloud_image}"],
                               "shell] fault-point-reached", lambda _proc: libvirtd_restarted(),
                               settle=120)
    assert outcome.returncode == 1, outcome.stderr[-4000:]
    assert outcome.seconds < 60, f"the build took {outcome.seconds:.0f}s to fail"
    assert "lost the connection to libvirt" in outcome.stderr, outcome.stderr[-3000:]
    assert "hint:" in outcome.stderr
    assert_failed_build_kept(outcome, libvirt_uri, "e2e-libvirtd", "provision")


def test_guest_sshd_killed_mid_provisioner(cloud_image: Path, tmp_path: Path,
                                           libvirt_uri: str) -> None:
    template = fault_template(tmp_path / "t.toml", "e2e-sshd-killed", """
[[provision]]
type = "shell"
inline = [
  "nohup sh -c 'sleep 3; pkill -9 -x sshd' >/dev/null 2>&1 &",
  "echo fault-point-reached",
  "sleep 600",
]
""")
    outcome = build_with_fault(template, tmp_path, ["--var", f"image={cloud_image}"],
                               "shell] fault-point-reached", lambda _proc: None, settle=180)
    assert outcome.returncode == 1, outcome.stderr[-4000:]
    assert "connection to 127.0.0.1:" in outcome.stderr and "lost" in outcome.stderr
    assert "error: provisioner 3/3" in outcome.stderr, "the message names the provisioner"
    assert_failed_build_kept(outcome, libvirt_uri, "e2e-sshd-killed", "provision")


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB ext4 filesystem, loop-mounted: room for logs, not for an image."""
    backing = tmp_path / "small.img"
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    with open(backing, "wb") as f:
        f.truncate(48 * 1024**2)
    run(["mkfs.ext4", "-q", "-F", backing])
    run(["mount", "-o", "loop", backing, mountpoint])
    try:
        yield mountpoint
    finally:
        run(["umount", mountpoint])


def test_output_filesystem_fills_up_during_export(cloud_image: Path, tmp_path: Path,
                                                  libvirt_uri: str,
                                                  small_filesystem: Path) -> None:
    template = fault_template(tmp_path / "t.toml", "e2e-full", QUICK_PREP)
    out = small_filesystem / "out"
    outcome = build_with_fault(template, tmp_path, ["--var", f"image={cloud_image}"],
                               "==> export", lambda _proc: None, output_dir=out,
                               settle=1800)
    assert outcome.returncode == 1, outcome.stderr[-4000:]
    assert "no space left" in outcome.stderr.lower()
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr
    assert_failed_build_kept(outcome, libvirt_uri, "e2e-full", "export")
