"""End-to-end builds through the real CLI: libvirt, QEMU under TCG, SSH, qemu-img, libguestfs.

One successful build is shared by the tests that inspect it; the failure cases use
short timeouts. Every case checks the promise made to users: the right message and
exit code, no domain left behind, no work directory left, no output written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder.libvirt import (
    Disk,
    DomainMetadata,
    DomainSpec,
    default_dac_label,
    domain_name,
    running_domain,
)
from builder.run import run

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AZBUILD = [sys.executable, "-m", "builder"]
EXAMPLE = REPO / "examples" / "cloud-image.toml"


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    output_dir: Path
    work_root: Path
    seconds: float


def azbuild_build(
    template: Path, image: Path, tmp: Path, *extra: str, env: dict[str, str] | None = None
) -> Outcome:
    output_dir = tmp / "out"
    work_root = tmp / "work"
    work_root.mkdir(exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        [*AZBUILD, "build", str(template), "--var", f"image={image}",
         "--output-dir", str(output_dir), *extra],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "AZBUILD_WORK_DIR": str(work_root), **(env or {})},
        timeout=3600,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, output_dir, work_root,
                   time.monotonic() - started)


def azbuild_domains(uri: str) -> list[str]:
    names = run(["virsh", "-c", uri, "list", "--all", "--name"]).stdout.split()
    return [n for n in names if n.startswith("azbuild-")]


def assert_nothing_left(outcome: Outcome, uri: str) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert azbuild_domains(uri) == [], "a domain was left behind"
    assert list(outcome.work_root.iterdir()) == [], "a work directory was left behind"
    leftovers = list(outcome.output_dir.iterdir()) if outcome.output_dir.exists() else []
    assert leftovers == [], f"output was written: {leftovers}"


def write_template(path: Path, body: str) -> Path:
    path.write_text(f'extends = ["{EXAMPLE}"]\n' + body)
    return path


# --- one successful build, shared ----------------------------------------------------------


@pytest.fixture(scope="session")
def built(cloud_image: Path, tmp_path_factory: pytest.TempPathFactory,
          libvirt_uri: str) -> Outcome:
    tmp = tmp_path_factory.mktemp("build")
    payload = tmp / "payload.txt"
    payload.write_text("uploaded by the file provisioner\n")
    template = write_template(tmp / "e2e.toml", f"""
name = "e2e-debian"

[output]
formats = ["vhd", "raw"]

[[provision]]
type = "shell"
inline = ["echo azbuild-e2e-marker > /etc/azbuild-e2e", "test \\"$GREETING\\" = hello"]
env = {{ GREETING = "hello" }}

[[provision]]
type = "file"
source = "{payload}"
destination = "/opt/azbuild-e2e/payload.txt"
mode = "0640"
""")
    outcome = azbuild_build(template, cloud_image, tmp)
    assert outcome.returncode == 0, outcome.stderr[-6000:]
    return outcome


@pytest.fixture(scope="session")
def guest_files(built: Outcome) -> Iterator[Any]:
    """The exported RAW opened read-only with libguestfs."""
    import guestfs

    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(built.output_dir / "e2e-debian.raw"), format="raw", readonly=True)
    g.launch()
    roots = g.inspect_os()
    assert roots, "no operating system found in the exported image"
    g.mount_ro(roots[0], "/")
    yield g
    g.close()


def test_build_writes_image_manifest_and_log(built: Outcome, libvirt_uri: str) -> None:
    out = built.output_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "build.log", "e2e-debian.raw", "e2e-debian.vhd", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["template"] == "e2e-debian"
    assert manifest["ready"] is True
    assert manifest["distro"]["name"] == "debian"
    assert manifest["accelerator"]["used"] in ("kvm", "tcg")
    assert len(manifest["template_sha256"]) == 64
    by_file = {a["file"]: a for a in manifest["artifacts"]}
    raw, vhd = by_file["e2e-debian.raw"], by_file["e2e-debian.vhd"]
    assert raw["size"] == 4 * 1024**3
    assert vhd["size"] == raw["size"] + 512
    assert raw["allocated"] < raw["size"], "the RAW export is not sparse"
    for step in ("prepare", "boot", "connect", "provision", "shutdown", "export", "check"):
        assert step in manifest["steps"]
    assert manifest["time"]["waiting_on_guest_seconds"] > 0
    # The timing table is logged at the end.
    assert "total" in built.stderr
    assert_nothing_left_but_outputs(built, libvirt_uri)


def assert_nothing_left_but_outputs(outcome: Outcome, uri: str) -> None:
    assert azbuild_domains(uri) == []
    assert list(outcome.work_root.iterdir()) == []


def test_provisioners_effects_are_in_the_image(guest_files: Any) -> None:
    g = guest_files
    assert g.cat("/etc/azbuild-e2e").strip() == "azbuild-e2e-marker"
    assert g.cat("/opt/azbuild-e2e/payload.txt") == "uploaded by the file provisioner\n"
    assert g.stat("/opt/azbuild-e2e/payload.txt")["mode"] & 0o777 == 0o640
    motd = (REPO / "examples" / "files" / "motd").read_text()
    assert g.cat("/etc/motd") == motd


def test_vhd_passes_check(built: Outcome) -> None:
    proc = subprocess.run(
        [*AZBUILD, "check", str(built.output_dir / "e2e-debian.vhd"), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout
    assert report["ready"] is True
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses["R01"] == "pass" and statuses["R02"] == "pass"


def test_exported_image_boots_by_itself(built: Outcome, tmp_path: Path,
                                        libvirt_uri: str) -> None:
    """Through its own bootloader (no direct kernel boot) to a login prompt."""
    overlay = tmp_path / "overlay.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b",
         built.output_dir / "e2e-debian.raw", overlay])
    spec = DomainSpec(
        name=domain_name("e2e-boot"),
        vcpus=1,
        memory=1024**3,
        accelerator="tcg",
        serial_log=tmp_path / "serial.log",
        metadata=DomainMetadata.for_this_process("e2e-boot", tmp_path),
        disks=(Disk(overlay, format="qcow2"),),
        dac_label=default_dac_label(libvirt_uri),
    )
    with running_domain(spec, libvirt_uri) as domain:
        domain.wait_for_serial(r"login:", 300, "booting the exported image")
        assert "Linux version" in domain.serial.text()
    assert azbuild_domains(libvirt_uri) == []


# --- failures --------------------------------------------------------------------------------


def test_failing_provisioner(cloud_image: Path, tmp_path: Path, libvirt_uri: str) -> None:
    template = write_template(tmp_path / "fail.toml", """
name = "e2e-fail"
[[provision]]
type = "shell"
inline = ["echo about to fail", "exit 1"]
""")
    outcome = azbuild_build(template, cloud_image, tmp_path)
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "provision" in outcome.stderr and "about to fail" in outcome.stderr
    assert_nothing_left(outcome, libvirt_uri)


def test_sigterm_during_provisioning(cloud_image: Path, tmp_path: Path,
                                     libvirt_uri: str) -> None:
    template = write_template(tmp_path / "slow.toml", """
name = "e2e-sigterm"
[[provision]]
type = "shell"
inline = ["echo provisioning-started", "sleep 600"]
""")
    work_root = tmp_path / "work"
    work_root.mkdir()
    proc = subprocess.Popen(
        [*AZBUILD, "build", str(template), "--var", f"image={cloud_image}",
         "--output-dir", str(tmp_path / "out")],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "AZBUILD_WORK_DIR": str(work_root)},
    )
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 900
    for line in proc.stderr:
        seen.append(line)
        if "provisioning-started" in line:
            break
        assert time.monotonic() < deadline, "provisioning never started"
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    outcome = Outcome(proc.returncode, "", "".join(seen) + rest, tmp_path / "out",
                      work_root, 0)
    assert outcome.returncode == 143, outcome.stderr[-3000:]
    assert "SIGTERM" in outcome.stderr
    assert_nothing_left(outcome, libvirt_uri)


def test_guest_that_never_boots(tmp_path: Path, libvirt_uri: str) -> None:
    empty = tmp_path / "empty.raw"
    with open(empty, "wb") as f:
        f.truncate(64 * 1024**2)
    template = write_template(tmp_path / "noboot.toml", """
name = "e2e-noboot"
[vm]
accelerator = "tcg"
""")
    outcome = azbuild_build(template, empty, tmp_path)
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "did not start" in outcome.stderr
    assert "no bootable device" in outcome.stderr
    assert_nothing_left(outcome, libvirt_uri)


def test_wrong_host_key(cloud_image: Path, tmp_path: Path, libvirt_uri: str) -> None:
    """Pinning a key the guest does not have: the guest's own key is refused at once."""
    from builder.keys import KeyPair

    pinned = KeyPair.generate("pinned")
    pinned.write_public(tmp_path / "host.pub")
    template = write_template(tmp_path / "wrongkey.toml", f"""
name = "e2e-wrongkey"
[communicator]
timeout = "10m"
host_key_file = "{tmp_path / 'host.pub'}"
""")
    outcome = azbuild_build(template, cloud_image, tmp_path)
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert pinned.fingerprint in outcome.stderr
    assert outcome.stderr.count("SHA256:") >= 2, "both fingerprints must be named"
    assert_nothing_left(outcome, libvirt_uri)


def test_ssh_never_answers(cloud_image: Path, tmp_path: Path, libvirt_uri: str) -> None:
    """A guest that boots but whose sshd never starts (masked in a copy of the image)."""
    import guestfs

    image = tmp_path / "nossh.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", cloud_image, image])
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    os.environ.setdefault("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(str(image), format="qcow2")
    g.launch()
    g.mount(g.inspect_os()[0], "/")
    g.ln_sf("/dev/null", "/etc/systemd/system/ssh.service")
    g.umount_all()
    g.shutdown()
    g.close()
    template = write_template(tmp_path / "nossh.toml", """
name = "e2e-nossh"
[communicator]
timeout = "75s"
""")
    outcome = azbuild_build(template, image, tmp_path)
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert "75s" in outcome.stderr or "timed out" in outcome.stderr
    assert "serial console" in outcome.stderr
    assert_nothing_left(outcome, libvirt_uri)
