"""The Debian 12 Azure preparation, run for real on a debootstrapped root in a chroot.

The root comes from scripts/make-rootfs.sh (cached); each run works on a copy,
broken on purpose first (quiet on the kernel command line, a swap line in fstab,
`Defaults targetpw`, no agent), with /proc, /sys and /dev bind-mounted and a
policy-rc.d that starts no service. azure-prep.sh must fix everything, change
nothing the second time, azure-check.sh must pass, and deprovision.sh (run in
its own UTS, PID and mount namespaces, so the agent's hostname reset and the
build user's process kill stay inside) must leave no build leftovers but keep
the unit that makes SSH host keys on the first boot (R15): after it, sshd's own
config test fails for want of keys until that unit's command has run.
Needs root, network access to deb.debian.org (the agent package) and about 2 GB.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from expect import assert_waagent_mode

from builder.azure_prep import prep_scripts
from builder.models import Azure
from builder.offline_check.units import parse_unit
from builder.requirements import HOST_KEYGEN_UNIT
from distros import resolve

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mounts need root"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
BUILD_USER = "azbuild"
BUILD_UID = 47011  # unusual, so nothing on the host shares it
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
}
MODULES = ("hv_vmbus", "hv_netvsc", "hv_storvsc")
# Debian: no rootdelay (initramfs-tools' init sleeps it on every boot, R07).
ADDED = ("console=ttyS0", "earlyprintk=ttyS0", "net.ifnames=0")
KEYGEN_UNIT = f"/etc/systemd/system/{HOST_KEYGEN_UNIT}"
KEYGEN_LINK = f"/etc/systemd/system/ssh.service.wants/{HOST_KEYGEN_UNIT}"


@dataclass
class Chroot:
    root: Path

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 1200,
            namespaces: bool = False) -> subprocess.CompletedProcess[str]:
        prefix = ["chroot", str(self.root)]
        if namespaces:
            prefix = ["unshare", "--mount", "--uts", "--pid", "--fork", "--propagation",
                      "private", *prefix]
        return subprocess.run([*prefix, *argv], env={**ENV, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def script(self, name: str, text: str) -> str:
        path = self.path(f"/root/{name}")
        path.write_text(text)
        path.chmod(0o700)
        return f"/root/{name}"


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def base_root() -> Path:
    """The cached root of scripts/make-rootfs.sh (AZBUILD_PREP_ROOTFS: use this root instead)."""
    if os.environ.get("AZBUILD_PREP_ROOTFS"):
        return Path(os.environ["AZBUILD_PREP_ROOTFS"])
    proc = subprocess.run(["bash", str(REPO / "scripts" / "make-rootfs.sh")],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        pytest.fail("scripts/make-rootfs.sh failed:\n" + proc.stderr[-3000:])
    return Path(proc.stdout.strip().splitlines()[-1])


def _break_requirements(root: Path) -> None:
    """Make the fresh root break R04, R07, R08, R11, and leave build leftovers behind."""
    grub = root / "etc/default/grub"
    text = grub.read_text()
    text = re.sub(r'^GRUB_CMDLINE_LINUX_DEFAULT=.*$',
                  'GRUB_CMDLINE_LINUX_DEFAULT="quiet rootdelay=300 net.ifnames=0"',
                  text, flags=re.M)
    text = re.sub(r'^GRUB_CMDLINE_LINUX=.*$', 'GRUB_CMDLINE_LINUX="net.ifnames=0"',
                  text, flags=re.M)
    grub.write_text(text)
    with (root / "etc/fstab").open("a") as fstab:
        fstab.write("/swapfile none swap sw 0 0\n")
    with (root / "etc/sudoers").open("a") as sudoers:
        sudoers.write("Defaults targetpw\n")
    legacy = root / "etc/sudoers.d/legacy"
    legacy.write_text("ALL     ALL=(ALL) ALL   # only with targetpw\n")
    legacy.chmod(0o440)
    assert not (root / "etc/waagent.conf").exists()


def _leave_build_traces(chroot: Chroot) -> None:
    """What a build leaves: its user with key, history and sudo rule, and guest state."""
    for argv in (
        ["groupadd", "-g", str(BUILD_UID), BUILD_USER],
        ["useradd", "-m", "-u", str(BUILD_UID), "-g", str(BUILD_UID), "-s", "/bin/bash",
         BUILD_USER],
    ):
        proc = chroot.run(*argv)
        assert proc.returncode == 0, proc.stderr
    home = chroot.path(f"/home/{BUILD_USER}")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh/authorized_keys").write_text("ssh-ed25519 AAAAC3Nza build-key\n")
    (home / ".bash_history").write_text("sudo cat /etc/shadow\n")
    sudo_rule = chroot.path(f"/etc/sudoers.d/{BUILD_USER}")
    sudo_rule.write_text(f"{BUILD_USER} ALL=(ALL) NOPASSWD: ALL\n")
    sudo_rule.chmod(0o440)
    chroot.path("/root/.ssh").mkdir(mode=0o700, exist_ok=True)
    chroot.path("/root/.ssh/authorized_keys").write_text("ssh-rsa AAAAB3 root-key\n")
    chroot.path("/root/.bash_history").write_text("history\n")
    chroot.path("/etc/ssh/sshd_config.d").mkdir(exist_ok=True)
    chroot.path("/etc/ssh/sshd_config.d/90-azbuild.conf").write_text("PermitRootLogin yes\n")
    for leftover, content in (
        ("/var/lib/cloud/instances/iid-build/user-data.txt", "#cloud-config\n"),
        ("/var/lib/dhcp/dhclient.eth0.leases", "lease {}\n"),
        ("/var/log/installer/syslog", "installer\n"),
        ("/root/anaconda-ks.cfg", "# kickstart\n"),
        ("/var/adm/autoinstall/cache/autoinst.xml", "<profile/>\n"),
        ("/var/log/syslog", "a log line\n"),
        ("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
    ):
        path = chroot.path(leftover)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    link = chroot.path("/var/lib/cloud/instance")
    if not link.is_symlink():
        link.symlink_to("/var/lib/cloud/instances/iid-build")
    if not any(chroot.path("/etc/ssh").glob("ssh_host_*_key")):
        assert chroot.run("ssh-keygen", "-A").returncode == 0


@contextmanager
def _broken_chroot(base_root: Path, work: Path) -> Iterator[Chroot]:
    """A broken copy of the root with /proc, /sys, /dev mounted; always unmounted and removed."""
    root = work / "root"
    mounted: list[Path] = []
    try:
        work.mkdir(parents=True, exist_ok=True)
        _sh("cp", "-a", str(base_root), str(root))
        _break_requirements(root)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# tests: start no service in the chroot\nexit 101\n")
        policy.chmod(0o755)
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)
        for fs in ("proc", "sys", "dev", "dev/pts"):
            target = root / fs
            target.mkdir(exist_ok=True)
            _sh("mount", "--bind", f"/{fs}", str(target))
            mounted.append(target)
        box = Chroot(root)
        _leave_build_traces(box)
        yield box
    finally:
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
        if not any(os.path.ismount(m) for m in mounted):
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def chroot(base_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    with _broken_chroot(base_root, tmp_path_factory.mktemp("prep-chroot")) as box:
        yield box


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    return prep_scripts(resolve("debian", "12"), Azure(), firmware="bios", build_user=BUILD_USER)


def _manifest(root: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, mtime (ns) and mode of /etc, /boot and everything under them."""
    out: dict[str, tuple[str, int, int]] = {}
    for top in ("etc", "boot"):
        for path in [root / top, *sorted((root / top).rglob("*"))]:
            st = path.lstat()
            if path.is_symlink():
                digest = "link:" + os.readlink(path)
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest = "dir"
            out[str(path.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def _grub_value(text: str, key: str) -> str:
    found = re.findall(rf'^{key}="([^"]*)"', text, flags=re.M)
    return found[-1] if found else ""


@pytest.fixture(scope="module")
def first_run(chroot: Chroot, scripts: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = chroot.run("bash", chroot.script("azure-prep.sh", scripts["azure-prep.sh"]))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_prep_fixes_everything(chroot: Chroot, first_run: subprocess.CompletedProcess[str],
                               ) -> None:
    out = first_run.stdout
    for req in ("R04", "R05", "R07", "R08", "R10", "R11", "R15"):
        assert f"azure-prep: {req} " in out, f"{req} reported no change:\n{out}"
    # The host's swap is never switched off from inside the chroot.
    assert "R04 in a chroot (or cannot tell): active swap left alone" in out

    # R07: bootloader defaults, and the generated config when grub-mkconfig could run.
    defaults = chroot.path("/etc/default/grub").read_text()
    value = (_grub_value(defaults, "GRUB_CMDLINE_LINUX") + " "
             + _grub_value(defaults, "GRUB_CMDLINE_LINUX_DEFAULT")).split()
    assert "quiet" not in value and all(value.count(arg) == 1 for arg in ADDED), value
    assert not any(arg.startswith("rootdelay=") for arg in value), value
    cfg = chroot.path("/boot/grub/grub.cfg")
    if "not regenerated" in first_run.stderr:
        pytest.fail("grub-mkconfig did not run in the chroot:\n" + first_run.stderr)
    lines = [line.split() for line in cfg.read_text().splitlines()
             if line.strip().startswith("linux")]
    assert lines, "no kernel lines in the generated grub.cfg"
    for words in lines:
        if "single" in words:
            continue  # Debian's recovery entry carries only GRUB_CMDLINE_LINUX
        assert "quiet" not in words and all(words.count(arg) == 1 for arg in ADDED), words
        assert not any(arg.startswith("rootdelay=") for arg in words), words

    # R05: the evidence for each initrd, the modules file, and the modules really inside
    # every initrd.
    assert re.search(r"azure-prep: R05 initrd\.img-\S+ (holds|lacks)", out), out
    listed = chroot.path("/etc/initramfs-tools/modules").read_text().split()
    assert all(module in listed for module in MODULES)
    initrds = sorted(chroot.path("/boot").glob("initrd.img-*"))
    assert initrds
    for initrd in initrds:
        files = _sh("lsinitramfs", str(initrd)).stdout
        for module in MODULES:
            assert re.search(rf"/{module}\.ko", files), f"{module} not in {initrd.name}"

    # R08, R09: packages and enabled services (systemd's symlinks).
    wants = chroot.path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "walinuxagent.service").is_symlink()
    assert (wants / "ssh.service").is_symlink()
    assert chroot.run("dpkg-query", "-W", "waagent").returncode == 0

    # R15: the unit that makes host keys, enabled by systemctl into ssh.service.wants,
    # and accepted by systemd's own unit checker.
    assert chroot.path(KEYGEN_LINK).readlink() == Path(KEYGEN_UNIT)
    assert parse_unit(chroot.path(KEYGEN_UNIT).read_text())["Unit"]["Before"] == ["ssh.service"]
    assert chroot.run("systemctl", "is-enabled", HOST_KEYGEN_UNIT).stdout.strip() == "enabled"
    verify = chroot.run("systemd-analyze", "verify", KEYGEN_UNIT)
    assert verify.returncode == 0 and HOST_KEYGEN_UNIT not in verify.stderr, verify.stderr

    # R10: every waagent.conf key explicit; cloud-init out of the way.
    assert_waagent_mode(chroot.path("/etc/waagent.conf").read_text())
    assert chroot.path("/etc/cloud/cloud-init.disabled").exists()
    # waagent refuses to provision while cloud-init-local is enabled (R10).
    assert chroot.run("systemctl", "is-enabled", "cloud-init-local.service").stdout.strip() \
        == "disabled"

    # R11: the lines are commented out and sudo still accepts the configuration.
    for name in ("/etc/sudoers", "/etc/sudoers.d/legacy"):
        active = [line for line in chroot.path(name).read_text().splitlines()
                  if not line.lstrip().startswith("#")]
        assert not any("targetpw" in line for line in active), name
        assert not any(re.match(r"\s*ALL\s+ALL\s*=", line) for line in active), name
    assert oct(chroot.path("/etc/sudoers").stat().st_mode & 0o777) == "0o440"
    assert chroot.run("visudo", "-c").returncode == 0

    # R04: no active swap line left.
    active_swap = [line for line in chroot.path("/etc/fstab").read_text().splitlines()
                   if not line.lstrip().startswith("#") and " swap " in f" {line} "]
    assert active_swap == []

    # network
    assert chroot.path("/etc/udev/rules.d/75-persistent-net-generator.rules").readlink() == \
        Path("/dev/null")
    interfaces = chroot.path("/etc/network/interfaces").read_text()
    extra = chroot.path("/etc/network/interfaces.d/eth0")
    assert "iface eth0 inet dhcp" in interfaces + (extra.read_text() if extra.exists() else "")


def test_second_run_changes_nothing(chroot: Chroot, scripts: dict[str, str],
                                    first_run: subprocess.CompletedProcess[str]) -> None:
    before = _manifest(chroot.root)
    proc = chroot.run("bash", "/root/azure-prep.sh")
    assert proc.returncode == 0, proc.stderr
    assert "azure-prep: nothing to change" in proc.stdout, proc.stdout
    after = _manifest(chroot.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == []


def test_check_passes_then_catches_a_regression(
        chroot: Chroot, scripts: dict[str, str], first_run: subprocess.CompletedProcess[str],
) -> None:
    check = chroot.script("azure-check.sh", scripts["azure-check.sh"])
    proc = chroot.run("bash", check)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()
               if re.match(r"R\d\d ", line)}
    assert results == {**{f"R{n:02d}": "pass" for n in range(3, 12)},
                       "R01": "skip", "R02": "skip", "R12": "skip", "R13": "skip",
                       "R14": "skip", "R15": "pass"}  # a BIOS image
    assert (f"R15 pass {HOST_KEYGEN_UNIT} enabled and ordered before ssh.service"
            in proc.stdout), proc.stdout

    # Undo one fix: the check names it, and the prep script repairs it again.
    sudoers = chroot.path("/etc/sudoers")
    with sudoers.open("a") as handle:
        handle.write("Defaults   targetpw\n")
    failed = chroot.run("bash", check)
    assert failed.returncode == 1
    assert "R11 fail" in failed.stdout and "FAILED: R11" in failed.stderr
    fixed = chroot.run("bash", "/root/azure-prep.sh")
    assert fixed.returncode == 0 and "R11 commented out" in fixed.stdout
    assert chroot.run("bash", check).returncode == 0


def test_sudoers_copy_rejected_by_visudo_leaves_the_original(
        chroot: Chroot, first_run: subprocess.CompletedProcess[str]) -> None:
    broken = chroot.path("/etc/sudoers.d/broken")
    text = "Defaults targetpw\nthis is not sudoers syntax\n"
    broken.write_text(text)
    broken.chmod(0o440)
    try:
        proc = chroot.run("bash", "/root/azure-prep.sh")
        assert proc.returncode == 1
        assert "R11 visudo rejects the fixed copy of /etc/sudoers.d/broken" in proc.stderr
        assert broken.read_text() == text
        assert list(chroot.path("/etc/sudoers.d").glob(".azbuild.*")) == []
    finally:
        broken.unlink()
    assert chroot.run("bash", "/root/azure-prep.sh").returncode == 0


@pytest.fixture(scope="module")
def deprovisioned(chroot: Chroot, scripts: dict[str, str],
                  first_run: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """deprovision.sh run once: (its path, its log)."""
    script = chroot.script("deprovision.sh", scripts["deprovision.sh"])
    # The build user's session is still running when the script removes the user.
    driver = (
        "mount -t proc proc /proc; "
        f"chroot --userspec={BUILD_USER} / sleep 600 & session=$!; sleep 1; "
        f"bash {script}; rc=$?; sleep 1; "
        'if kill -0 "$session" 2>/dev/null; then echo SESSION-ALIVE; fi; exit $rc'
    )
    proc = chroot.run("bash", "-c", driver, namespaces=True,
                      env={"AZBUILD_POWEROFF": "true",
                           "AZBUILD_DEPROVISION_LOG": "/root/deprovision.log"})
    log = chroot.path("/root/deprovision.log").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert "SESSION-ALIVE" not in proc.stdout
    return script, log


def test_deprovision_leaves_nothing_of_the_build(chroot: Chroot,
                                                 deprovisioned: tuple[str, str]) -> None:
    script, log = deprovisioned
    assert "powering off" in log

    passwd = chroot.path("/etc/passwd").read_text()
    assert not re.search(rf"^{BUILD_USER}:", passwd, flags=re.M)
    assert not chroot.path(f"/home/{BUILD_USER}").exists()
    assert not chroot.path(f"/etc/sudoers.d/{BUILD_USER}").exists()
    assert chroot.path("/etc/sudoers.d/legacy").exists()  # not the build's
    gone = [
        "/root/.ssh/authorized_keys", "/root/.bash_history",
        "/etc/ssh/sshd_config.d/90-azbuild.conf", "/var/lib/cloud/instance",
        "/var/lib/cloud/instances", "/var/lib/dhcp/dhclient.eth0.leases",
        "/var/log/installer", "/root/anaconda-ks.cfg", "/var/adm/autoinstall", script,
    ]
    assert [p for p in gone if chroot.path(p).exists() or chroot.path(p).is_symlink()] == []
    assert list(chroot.path("/etc/ssh").glob("ssh_host_*")) == []
    assert list(chroot.path("/var/lib/waagent").glob("*")) == []
    shadow = {line.split(":")[0]: line.split(":")[1]
              for line in chroot.path("/etc/shadow").read_text().splitlines()}
    assert shadow["root"].startswith(("!", "*"))
    assert chroot.path("/etc/machine-id").read_text() == ""
    assert chroot.path("/var/log/syslog").stat().st_size == 0
    assert "finished with 0 error(s)" in log, log


def test_cloud_init_mode(base_root: Path, tmp_path: Path) -> None:
    """cloud-init provisioning on a fresh copy: fixed, checked, and idempotent too."""
    scripts = prep_scripts(resolve("debian", "12"), Azure(provisioning="cloud-init"),
                           firmware="bios", build_user=BUILD_USER)
    with _broken_chroot(base_root, tmp_path / "cloud-init") as box:
        (box.root / "etc/cloud/cloud-init.disabled").touch()
        prep = box.script("azure-prep.sh", scripts["azure-prep.sh"])
        first = box.run("bash", prep)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        conf = box.path("/etc/waagent.conf").read_text()
        for line in ("Provisioning.Agent=cloud-init", "ResourceDisk.Format=n",
                     "ResourceDisk.EnableSwap=n"):
            assert re.search(rf"^{re.escape(line)}$", conf, flags=re.M), line
        assert not box.path("/etc/cloud/cloud-init.disabled").exists()
        dropin = box.path("/etc/cloud/cloud.cfg.d/91-azbuild-azure.cfg").read_text()
        assert "datasource_list: [ Azure ]" in dropin and "ssh_deletekeys: true" in dropin
        # cloud-init, not azbuild, writes eth0's configuration on first boot
        assert not box.path("/etc/network/interfaces.d/eth0").exists()

        before = _manifest(box.root)
        second = box.run("bash", prep)
        assert second.returncode == 0 and "azure-prep: nothing to change" in second.stdout
        assert _manifest(box.root) == before

        check = box.run("bash", box.script("azure-check.sh", scripts["azure-check.sh"]))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "R10 pass cloud-init mode" in check.stdout
        # cloud-init makes the keys first on the first boot; the unit stays as a fallback.
        assert f"R15 pass {HOST_KEYGEN_UNIT} enabled" in check.stdout


def test_first_boot_makes_host_keys_before_sshd(chroot: Chroot,
                                                deprovisioned: tuple[str, str]) -> None:
    """R15 after the generalisation: no host key, so sshd's config test (ssh.service's
    ExecStartPre) fails as on Debian's first boot; the unit the deprovisioning kept, still
    enabled, runs its command (its condition holds), and then sshd's test passes."""
    assert list(chroot.path("/etc/ssh").glob("ssh_host_*")) == []
    before = chroot.run("/usr/sbin/sshd", "-t")
    assert before.returncode != 0 and "no hostkeys available" in before.stderr, before.stderr
    assert chroot.path(KEYGEN_LINK).readlink() == Path(KEYGEN_UNIT)
    unit = parse_unit(chroot.path(KEYGEN_UNIT).read_text())
    assert unit["Unit"]["ConditionPathExistsGlob"] == ["!/etc/ssh/ssh_host_*_key"]
    [command] = unit["Service"]["ExecStart"]
    made = chroot.run(*command.split())
    assert made.returncode == 0, made.stderr
    keys = {p.name for p in chroot.path("/etc/ssh").glob("ssh_host_*_key")}
    assert {"ssh_host_ed25519_key", "ssh_host_rsa_key"} <= keys, keys
    chroot.path("/run/sshd").mkdir(parents=True, exist_ok=True)  # ssh.service's RuntimeDirectory
    after = chroot.run("/usr/sbin/sshd", "-t")
    assert after.returncode == 0, after.stderr
