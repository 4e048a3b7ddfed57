"""Builds as an ordinary user in the libvirt and kvm groups, as CI runners run them.

The user's environment is empty but for HOME, PATH and USER (what a login gives): no
LIBGUESTFS_* and no AZBUILD_* variable, so this is the default path a user takes:
qemu:///session, work and cache directories under the user's XDG directories, the
libguestfs appliance on the KVM probe's answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_build import EXAMPLE, REPO, build_dir

from builder.run import run

pytestmark = pytest.mark.e2e

USER = "azbuild-e2e"  # in the libvirt and kvm groups
OUTSIDER = "azbuild-e2e-nogroups"  # in neither


def ensure_user(name: str, groups: list[str]) -> Path:
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        run(["useradd", "--create-home", "--shell", "/bin/bash", name])
    if groups:
        run(["usermod", "-aG", ",".join(groups), name])
    return Path(f"/home/{name}")


def as_user(
    name: str, home: Path, argv: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    env = ["env", "-i", f"HOME={home}", f"USER={name}", f"LOGNAME={name}",
           "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]
    return subprocess.run(["runuser", "-u", name, "--", *env, *argv], capture_output=True,
                          text=True, timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def traversable_repo() -> Iterator[None]:
    """The users may enter the checkout (a CI clone may sit in a private directory): an
    ACL entry granting them traversal only, removed afterwards."""
    granted = []
    for directory in [REPO, *REPO.parents]:
        if directory.stat().st_mode & 0o001 == 0:
            for user in (USER, OUTSIDER):
                run(["setfacl", "-m", f"u:{user}:x", directory])
            granted.append(directory)
    yield
    for directory in granted:
        for user in (USER, OUTSIDER):
            run(["setfacl", "-x", f"u:{user}", directory])


@pytest.fixture(scope="module")
def users(traversable_repo: None) -> dict[str, Path]:
    return {USER: ensure_user(USER, ["libvirt", "kvm"]), OUTSIDER: ensure_user(OUTSIDER, [])}


@pytest.fixture
def user_dir(users: dict[str, Path]) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="azbuild-user-"))
    shutil.chown(path, USER, USER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_cloud_image_build_as_a_user_in_the_libvirt_and_kvm_groups(
    cloud_image: Path, users: dict[str, Path], user_dir: Path
) -> None:
    """The bundled cloud-image example in cloud-init mode (the shipped `cloud-init` layer),
    so that its simulated first boot proves cloud-init with the Azure datasource on an
    image azbuild built, as the shared builds prove waagent mode."""
    home = users[USER]
    out = user_dir / "out"
    template = user_dir / "cloud-image-cloud-init.toml"
    template.write_text(f'extends = ["{EXAMPLE}", "cloud-init"]\n')
    shutil.chown(template, USER, USER)
    proc = as_user(USER, home, [str(REPO / ".venv" / "bin" / "azbuild"), "build",
                                str(template), "--var", f"image={cloud_image}",
                                "--output-dir", str(out)], timeout=3600)
    out = build_dir(out)  # out/<name>/
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "qemu:///session" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ready"] is True
    # The first boot as Azure gives it: cloud-init reported Ready from the Azure
    # datasource, then the agent; cloud-init finished every stage without an error.
    simulation = manifest["simulation"]
    verdicts = {a["id"]: a["status"] for a in simulation["assertions"]}
    assert simulation["status"] == "passed", json.dumps(simulation, indent=1)
    assert verdicts["cloud-init"] == "pass" and verdicts["goal-state:cloud-init"] == "pass"
    assert any(a.startswith("Cloud-Init/") for a in simulation["agents"]), simulation
    assert {a["file"] for a in manifest["artifacts"]} >= {"debian-12-cloud.vhd"}
    for path in out.iterdir():
        assert path.stat().st_uid == int(run(["id", "-u", USER]).stdout), path
    # Work and cache under the user's XDG directories; the work directory is gone.
    work = home / ".local" / "state" / "azbuild" / "work"
    assert work.is_dir() and list(work.iterdir()) == []
    assert (home / ".cache" / "azbuild" / "accel").is_dir()
    domains = as_user(USER, home, ["virsh", "-c", "qemu:///session", "list", "--all",
                                   "--name"], timeout=60)
    assert [d for d in domains.stdout.split() if d.startswith("azbuild-")] == []
    # A standalone check by the same user, with nothing set.
    check = as_user(USER, home, [str(REPO / ".venv" / "bin" / "azbuild"), "check",
                                 str(out / "debian-12-cloud.vhd")], timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr


def test_system_libvirt_without_the_libvirt_group_is_named(
    cloud_image: Path, users: dict[str, Path]
) -> None:
    home = users[OUTSIDER]
    with tempfile.TemporaryDirectory(prefix="azbuild-outsider-") as tmp:
        shutil.chown(tmp, OUTSIDER, OUTSIDER)
        proc = as_user(OUTSIDER, home, [
            str(REPO / ".venv" / "bin" / "azbuild"), "build", str(EXAMPLE),
            "--var", f"image={cloud_image}", "--connect", "qemu:///system",
            "--output-dir", f"{tmp}/out"], timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "cannot connect to libvirt at qemu:///system" in proc.stderr
    assert "libvirt group" in proc.stderr
    assert "Traceback" not in proc.stderr
