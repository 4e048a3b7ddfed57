"""The image corpus for the offline Azure-readiness checks (R03..R15).

No VM boots. From the cached debootstrapped root (scripts/make-rootfs.sh) one
Azure-ready root is prepared in a chroot (the Debian agent package installed,
waagent.conf written for cloud-init provisioning, kernel command line and
grub.cfg, Hyper-V modules in the initrd, no host keys, root locked, and the unit
azbuild's preparation writes to make host keys before ssh.service, enabled), written
once as a raw disk (`sfdisk` MBR, `mke2fs -d` into the partition at 1 MiB),
and every variant is that disk with exactly one requirement broken, applied at
image-write time with `debugfs -w` on a copy. The variants are then stored as
qcow2 overlays on the correct raw disk (`qemu-img convert -B`), so the corpus
costs one disk of space and also exercises the qcow2 input path. The LVM
variant is laid out inside the libguestfs appliance. The UEFI images are GPT disks with an
EFI system partition (`mkfs.fat` and mtools, at an offset) holding Debian's signed shim and
GRUB (from `apt-get download`, unpacked with `dpkg-deb -x`), in EFI/debian and on the
removable path EFI/BOOT; the broken one lacks EFI/BOOT (R14). Everything is cached under
`cache_dir()/fixtures/check-corpus-<key>/`, keyed by the root's path and this
file's hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.azure_prep import host_keygen_unit
from builder.image.initrd_list import list_initrd, modules_in
from builder.paths import cache_dir
from builder.requirements import HOST_KEYGEN_UNIT, HOST_KEYGEN_UNIT_DIR
from builder.run import run
from builder.vm.appliance import Drive, launch
from distros import resolve

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
DISK_SIZE = 2 * 1024 * MIB
BIG_SIZE = 30 * 1024 * MIB
ROOT_UUID = "3f1b6a52-7d0e-4c3a-9a57-2b8e1f0c6d11"
# Debian: no rootdelay (initramfs-tools sleeps it on every boot, R07).
CMDLINE_DEFAULT = "console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0"
HV_MODULES = ("hv_vmbus", "hv_storvsc", "hv_netvsc")
CLOUD_INIT_WANTS = "/etc/systemd/system/cloud-init.target.wants"
CLOUD_INIT_ENABLED = ("cloud-config.service", "cloud-final.service", "cloud-init-local.service",
                      "cloud-init.service")
ESP_START = MIB
ESP_SIZE = 63 * MIB
UEFI_ROOT_START = 64 * MIB
ESP_SERIAL = "1234ABCD"  # the vfat UUID 1234-ABCD
ESP_GPT_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_GPT_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
EFI_PACKAGES = {  # package -> the signed binary it ships, and its name on the ESP
    "shim-signed": ("usr/lib/shim/shimx64.efi.signed", "shimx64.efi"),
    "grub-efi-amd64-signed": ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                              "grubx64.efi"),
}

WAAGENT_CLOUD_INIT = {
    "Provisioning.Agent": "cloud-init",
    "Provisioning.RegenerateSshHostKeyPair": "n",
    "ResourceDisk.Format": "n",
    "ResourceDisk.EnableSwap": "n",
    "ResourceDisk.Filesystem": "ext4",
    "ResourceDisk.MountPoint": "/mnt/resource",
    "ResourceDisk.SwapSizeMB": "0",
}
WAAGENT_WAAGENT = {
    "Provisioning.Agent": "waagent",
    "Provisioning.RegenerateSshHostKeyPair": "y",
    "ResourceDisk.Format": "y",
    "ResourceDisk.EnableSwap": "y",
    "ResourceDisk.Filesystem": "ext4",
    "ResourceDisk.MountPoint": "/mnt/resource",
    "ResourceDisk.SwapSizeMB": "2048",
}


@dataclass(frozen=True)
class Expect:
    """What the checker must say about a variant: the one failing ID (None: all pass)
    and a fragment its evidence must contain."""

    fails: str | None
    evidence: str = ""
    fmt: str = "qcow2"
    firmware: str = "bios"  # "uefi": a GPT disk with an EFI system partition (R14 judged)


EXPECTED: dict[str, Expect] = {
    "correct": Expect(None, fmt="raw"),
    "correct-vhd": Expect(None, fmt="vpc"),
    "waagent-mode": Expect(None),
    "waagent-cloud-init-local": Expect("R10", "waagent refuses to provision"),
    "big": Expect(None, fmt="raw"),
    "swap-fstab": Expect("R04", "/etc/fstab:3: /swapfile none swap"),
    "lvm-root": Expect("R03", "LVM", fmt="raw"),
    "quiet": Expect("R07", "quiet"),
    "rootdelay": Expect("R07", "every boot on Azure waits 300 s"),
    "no-console": Expect("R07", "console=ttyS0"),
    "no-storvsc": Expect("R05", "(zstd) lacks hv_storvsc"),
    "agent-missing": Expect("R08", "not installed"),
    "agent-disabled": Expect("R08", "walinuxagent"),
    "sshd-disabled": Expect("R09", "not enabled"),
    "resource-disk-contradiction": Expect("R10", "ResourceDisk.Format=y"),
    "targetpw": Expect("R11", "/etc/sudoers.d/build:1"),
    "host-keys": Expect("R12", "/etc/ssh/ssh_host_ed25519_key"),
    "history": Expect("R12", "/root/.bash_history"),
    "cloud-instance": Expect("R12", "/var/lib/cloud/instance"),
    # Today's Debian defect: waagent mode, generalised, nothing makes host keys (R15).
    "ssh-no-keygen": Expect("R15", "nothing makes them before ssh.service starts (cloud-init "
                            "disabled by /etc/cloud/cloud-init.disabled)"),
    "dirty-state": Expect("R13", "not clean"),
    "needs-recovery": Expect("R13", "needs_recovery"),
    "uefi": Expect(None, fmt="raw", firmware="uefi"),
    "uefi-no-fallback": Expect("R14", "no EFI/BOOT/BOOTX64.EFI (EFI/debian only)",
                               firmware="uefi"),
}


def rootfs() -> Path:
    """The cached debootstrapped Debian 12 root (built on first use)."""
    out = run(["bash", REPO / "scripts" / "make-rootfs.sh"], timeout=1800).stdout
    return Path(out.strip().splitlines()[-1])


def corpus_key(root: Path) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(str(root).encode())
    return digest.hexdigest()[:16]


def image_name(name: str) -> str:
    fmt = EXPECTED[name].fmt
    return f"{name}.{ {'raw': 'raw', 'qcow2': 'qcow2', 'vpc': 'vhd'}[fmt] }"


def ensure_corpus() -> Path:
    """The corpus directory, built if it is not cached yet. Holds `<variant>.<ext>` files
    and `timing.txt` (how long the cold build took)."""
    root = rootfs()
    base = cache_dir() / "fixtures"
    out = base / f"check-corpus-{corpus_key(root)}"
    base.mkdir(parents=True, exist_ok=True)
    with (base / f".check-corpus-{corpus_key(root)}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").exists():
            return out
        tmp = base / f".check-corpus-{corpus_key(root)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            started = time.monotonic()
            _build(root, tmp)
            (tmp / "timing.txt").write_text(f"cold build: {time.monotonic() - started:.1f} s\n")
            (tmp / ".complete").touch()
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        finally:
            if tmp.exists():
                _assert_nothing_mounted_under(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------- the prepared root


@contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for src, args in (("proc", ["-t", "proc"]), ("sys", ["-t", "sysfs"]), ("/dev", ["--bind"])):
            target = root / src.strip("/")
            run(["mount", *args, src, target])
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            run(["umount", "-l", target], check=False)
        _assert_nothing_mounted_under(root)


def _assert_nothing_mounted_under(path: Path) -> None:
    """Refuse to go on (and so to delete a tree) while a bind mount lives inside it."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as f:
        inside = [ln.split()[1] for ln in f if ln.split()[1].startswith(prefix)]
    if inside:
        raise RuntimeError(f"still mounted under {path}: {inside}")


def _chroot(root: Path, *argv: str, timeout: float = 900) -> str:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C",
        "HOME": "/root",
    }
    return run(["chroot", root, *argv], env=env, timeout=timeout).stdout


def set_keys(text: str, keys: dict[str, str]) -> str:
    """Set `Key=value` lines of a waagent.conf-like file: replace in place, append missing."""
    lines = text.splitlines()
    seen: set[str] = set()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in keys:
            lines[i] = f"{key}={keys[key]}"
            seen.add(key)
    lines += [f"{k}={v}" for k, v in keys.items() if k not in seen]
    return "\n".join(lines) + "\n"


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir())
    assert len(versions) == 1, versions
    return versions[0]


def grub_defaults(cmdline_default: str, cmdline_linux: str = "net.ifnames=0") -> str:
    return (
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=1\n"
        "GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="{cmdline_default}"\n'
        f'GRUB_CMDLINE_LINUX="{cmdline_linux}"\n'
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200"\n'
    )


def grub_cfg(kver: str, cmdline_default: str, cmdline_linux: str = "net.ifnames=0") -> str:
    """What Debian's grub-mkconfig (10_linux) writes for one kernel: a normal entry with
    both command-line variables and a recovery entry with GRUB_CMDLINE_LINUX only."""
    def entry(title: str, args: str) -> str:
        return (
            f"menuentry '{title}' --class debian --class gnu-linux $menuentry_id_option "
            f"'gnulinux-{kver}-{ROOT_UUID}' {{\n"
            "\tload_video\n\tinsmod gzio\n\tinsmod part_msdos\n\tinsmod ext2\n"
            f"\tsearch --no-floppy --fs-uuid --set=root {ROOT_UUID}\n"
            f"\techo\t'Loading Linux {kver} ...'\n"
            f"\tlinux\t/boot/vmlinuz-{kver} root=UUID={ROOT_UUID} ro {args}\n"
            f"\tinitrd\t/boot/initrd.img-{kver}\n}}\n"
        )

    return (
        "# DO NOT EDIT THIS FILE\n# It is automatically generated by grub-mkconfig\n"
        "set default=\"0\"\nserial --speed=115200\nterminal_input console serial\n"
        "terminal_output console serial\nset timeout=1\n"
        "### BEGIN /etc/grub.d/10_linux ###\n"
        + entry("Debian GNU/Linux", f"{cmdline_linux} {cmdline_default}")
        + "submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option "
        f"'gnulinux-advanced-{ROOT_UUID}' {{\n"
        + entry(f"Debian GNU/Linux, with Linux {kver}", f"{cmdline_linux} {cmdline_default}")
        + entry(f"Debian GNU/Linux, with Linux {kver} (recovery mode)", f"single {cmdline_linux}")
        + "}\n### END /etc/grub.d/10_linux ###\n"
    )


def prepare_root(src: Path, root: Path) -> Path:
    """Copy the cached root and make it Azure-ready the way the builder's prep would.
    Returns the path of an initrd built without hv_storvsc, kept outside the root."""
    run(["cp", "-a", src, root], timeout=900)
    (root / ".complete").unlink(missing_ok=True)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    resolv = root / "etc/resolv.conf"
    saved_resolv = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv)
    kver = kernel_version(root)
    with _chroot_mounts(root):
        _chroot(root, "apt-get", "update", "-q")
        # zstd makes initramfs-tools compress with zstd (its bookworm default), the
        # format libguestfs 1.48's own initrd_list cannot read.
        _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                "waagent", "zstd")
        conf = root / "etc/waagent.conf"
        conf.write_text(set_keys(conf.read_text(), WAAGENT_CLOUD_INIT))
        modules = root / "etc/initramfs-tools/modules"
        modules.write_text(modules.read_text() + "".join(f"{m}\n" for m in HV_MODULES))
        _chroot(root, "update-initramfs", "-u", "-k", "all")
        # R15: the unit azure-prep.sh writes on Debian, enabled the way it does it.
        unit = root / HOST_KEYGEN_UNIT_DIR.lstrip("/") / HOST_KEYGEN_UNIT
        unit.write_text(host_keygen_unit(resolve("debian", "12")) or "")
        _chroot(root, "systemctl", "enable", HOST_KEYGEN_UNIT)
        # The same kernel's initrd made without hv_storvsc, for the R05 variant:
        # only the listed modules, as if the image was never prepared for Hyper-V.
        conf_dir = root / "tmp/initramfs-no-storvsc"
        shutil.copytree(root / "etc/initramfs-tools", conf_dir, symlinks=True)
        initramfs_conf = conf_dir / "initramfs.conf"
        initramfs_conf.write_text(
            initramfs_conf.read_text().replace("MODULES=most", "MODULES=list")
        )
        (conf_dir / "modules").write_text("hv_vmbus\nhv_netvsc\n")
        _chroot(root, "mkinitramfs", "-d", "/tmp/initramfs-no-storvsc",
                "-o", "/tmp/initrd-no-storvsc", kver)
        # Debian's signed shim and GRUB for the UEFI images' ESP, not installed in the root.
        _chroot(root, "sh", "-c", "cd /tmp && apt-get download -q "
                + " ".join(EFI_PACKAGES))
        _chroot(root, "apt-get", "clean")
    efi = root.parent / "efi"
    efi.mkdir()
    for package, (member, name) in EFI_PACKAGES.items():
        deb = next((root / "tmp").glob(f"{package}_*.deb"))
        unpacked = root.parent / f"{package}-unpacked"
        run(["dpkg-deb", "-x", deb, unpacked])
        shutil.move(unpacked / member, efi / name)
        shutil.rmtree(unpacked)
        deb.unlink()
    no_storvsc = root.parent / "initrd-no-storvsc"
    shutil.move(root / "tmp/initrd-no-storvsc", no_storvsc)
    shutil.rmtree(conf_dir)
    policy.unlink()
    resolv.unlink()
    if saved_resolv is not None:
        resolv.write_bytes(saved_resolv)
    (root / "etc/default/grub").write_text(grub_defaults(CMDLINE_DEFAULT))
    (root / "boot/grub").mkdir(exist_ok=True)
    (root / "boot/grub/grub.cfg").write_text(grub_cfg(kver, CMDLINE_DEFAULT))
    (root / "etc/fstab").write_text(
        "# /etc/fstab: static file system information.\n"
        f"UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"
    )
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for leftover in ("root/.bash_history", "var/lib/dhcp/dhclient.leases"):
        (root / leftover).unlink(missing_ok=True)
    shutil.rmtree(root / "var/lib/cloud", ignore_errors=True)
    _sanity(root, no_storvsc)
    return no_storvsc


def _sanity(root: Path, no_storvsc: Path) -> None:
    """The prepared root is what the corpus claims it is."""
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "walinuxagent.service").is_symlink(), "walinuxagent is not enabled"
    assert (wants / "ssh.service").is_symlink(), "ssh is not enabled"
    keygen = root / "etc/systemd/system/ssh.service.wants" / HOST_KEYGEN_UNIT
    assert keygen.is_symlink(), f"{HOST_KEYGEN_UNIT} is not enabled"
    shadow_root = (root / "etc/shadow").read_text().splitlines()[0].split(":")
    assert shadow_root[0] == "root" and shadow_root[1][:1] in ("*", "!"), "root is not locked"
    kver = kernel_version(root)
    good = modules_in(list_initrd((root / f"boot/initrd.img-{kver}").read_bytes()))
    assert set(HV_MODULES) <= good, good
    bad = modules_in(list_initrd(no_storvsc.read_bytes()))
    assert "hv_storvsc" not in bad and "hv_vmbus" in bad, bad
    assert b"UEFI SHIM" in (root.parent / "efi/shimx64.efi").read_bytes(), "not a shim"
    assert (root.parent / "efi/grubx64.efi").read_bytes()[:2] == b"MZ", "not an EFI binary"


# ---------------------------------------------------------------- disks


def write_disk(root: Path, disk: Path, size: int) -> None:
    """MBR with one Linux partition at 1 MiB holding an ext4 made from `root`."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(size)
    run(["sfdisk", "-q", disk], input=b"label: dos\nstart=2048, type=83, bootable\n")
    run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-U", ROOT_UUID, "-L", "root", "-d", root,
         "-E", f"offset={MIB}", disk, f"{(size - MIB) // 1024}k"],
        timeout=1800,
    )


def _mtools(tool: str, disk: Path, *args: str) -> None:
    """An mtools command on the FAT of the ESP at ESP_START of `disk` (no mount, no loop)."""
    run([tool, "-i", f"{disk}@@{ESP_START}", *args], env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def write_uefi_disk(root: Path, work: Path, disk: Path, size: int) -> None:
    """GPT with an EFI system partition at 1 MiB (FAT, Debian's shim and GRUB in EFI/debian
    and on the removable path EFI/BOOT, as d-i's force-efi-extra-removable leaves them)
    and the root at 64 MiB, mounting the ESP at /boot/efi."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(size)
    root_size = size - UEFI_ROOT_START - MIB  # the backup GPT lives in the last MiB
    run(["sfdisk", "-q", disk], input=(
        "label: gpt\n"
        f"start={ESP_START // 512}, size={ESP_SIZE // 512}, type={ESP_GPT_TYPE}\n"
        f"start={UEFI_ROOT_START // 512}, size={root_size // 512}, type={LINUX_GPT_TYPE}\n"
    ).encode())
    # FAT16: mkfs.fat would pick FAT32 from the whole disk's size, too big for 63 MiB.
    run(["mkfs.fat", "-F", "16", f"--offset={ESP_START // 512}", "-i", ESP_SERIAL, "-n", "ESP",
         disk, str(ESP_SIZE // 1024)])
    efi = work / "efi"
    stub = work / "efi-grub.cfg"
    stub.write_text(f"search.fs_uuid {ROOT_UUID} root\nset prefix=($root)'/boot/grub'\n"
                    "configfile $prefix/grub.cfg\n")
    _mtools("mmd", disk, "::/EFI", "::/EFI/debian", "::/EFI/BOOT")
    _mtools("mcopy", disk, str(efi / "shimx64.efi"), str(efi / "grubx64.efi"),
            "::/EFI/debian/")
    _mtools("mcopy", disk, str(stub), "::/EFI/debian/grub.cfg")
    _mtools("mcopy", disk, str(efi / "shimx64.efi"), "::/EFI/BOOT/BOOTX64.EFI")
    _mtools("mcopy", disk, str(efi / "grubx64.efi"), "::/EFI/BOOT/grubx64.efi")
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-U", ROOT_UUID, "-L", "root", "-d", root,
         "-E", f"offset={UEFI_ROOT_START}", disk, f"{root_size // 1024}k"], timeout=1800)
    fstab = (root / "etc/fstab").read_text() + (
        f"UUID={ESP_SERIAL[:4]}-{ESP_SERIAL[4:]} /boot/efi vfat umask=0077 0 1\n")
    debugfs(disk, ["mkdir /boot/efi", *_put(work, "/etc/fstab", fstab)], UEFI_ROOT_START)


def debugfs(disk: Path, commands: list[str], offset: int = MIB) -> None:
    """Apply debugfs commands to the ext4 at `offset` of a disk (no mount, no loop)."""
    script = disk.parent / f"{disk.name}.debugfs"
    script.write_text("\n".join(commands) + "\n")
    target = f"{disk}?offset={offset}" if offset else str(disk)
    proc = run(["debugfs", "-w", "-f", script, target])
    script.unlink()
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("debugfs ")]
    if errors:
        raise RuntimeError(f"debugfs on {disk}: {errors}")


_PIECES = itertools.count()


def _put(
    work: Path, name: str, text: str | bytes, mode: int = 0o644, *, new: bool = False
) -> list[str]:
    """debugfs commands writing guest file `name` (replacing it unless `new`)."""
    local = work / "files" / f"{next(_PIECES)}-{PurePosixPath(name).name}"  # one per variant
    local.parent.mkdir(exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    local.write_bytes(text)
    local.chmod(mode)
    return [f"write {local} {name}"] if new else [f"rm {name}", f"write {local} {name}"]


def _variant_commands(root: Path, work: Path, no_storvsc: Path) -> dict[str, list[str]]:
    kver = kernel_version(root)
    waagent_conf = (root / "etc/waagent.conf").read_text()
    status = (root / "var/lib/dpkg/status").read_text()
    stanzas = status.split("\n\n")
    for i, stanza in enumerate(stanzas):
        if stanza.startswith("Package: waagent\n"):
            stanzas[i] = stanza.replace(
                "Status: install ok installed", "Status: deinstall ok config-files"
            )
    removed_status = "\n\n".join(stanzas)
    assert removed_status != status
    quiet = f"quiet {CMDLINE_DEFAULT}"
    rootdelay = f"{CMDLINE_DEFAULT} rootdelay=300"
    no_console = CMDLINE_DEFAULT.replace("console=ttyS0,115200n8 ", "")
    hostkey = work / "hostkey"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", hostkey])
    wants = "/etc/systemd/system/multi-user.target.wants"
    fstab = (root / "etc/fstab").read_text()
    return {
        # waagent mode as the preparation leaves it: cloud-init disabled and its units too.
        "waagent-mode": [
            *_put(work, "/etc/waagent.conf", set_keys(waagent_conf, WAAGENT_WAAGENT)),
            "write /dev/null /etc/cloud/cloud-init.disabled",
            *[f"rm {CLOUD_INIT_WANTS}/{unit}" for unit in CLOUD_INIT_ENABLED],
        ],
        # Disabled by cloud-init.disabled only: waagent still refuses to provision.
        "waagent-cloud-init-local": [
            *_put(work, "/etc/waagent.conf", set_keys(waagent_conf, WAAGENT_WAAGENT)),
            "write /dev/null /etc/cloud/cloud-init.disabled",
        ],
        "swap-fstab": _put(work, "/etc/fstab", fstab + "/swapfile none swap sw 0 0\n"),
        "quiet": [
            *_put(work, "/etc/default/grub", grub_defaults(quiet)),
            *_put(work, "/boot/grub/grub.cfg", grub_cfg(kver, quiet)),
        ],
        "rootdelay": [
            *_put(work, "/etc/default/grub", grub_defaults(rootdelay)),
            *_put(work, "/boot/grub/grub.cfg", grub_cfg(kver, rootdelay)),
        ],
        "no-console": [
            *_put(work, "/etc/default/grub", grub_defaults(no_console)),
            *_put(work, "/boot/grub/grub.cfg", grub_cfg(kver, no_console)),
        ],
        "no-storvsc": [
            f"rm /boot/initrd.img-{kver}",
            f"write {no_storvsc} /boot/initrd.img-{kver}",
        ],
        "agent-missing": [
            *_put(work, "/var/lib/dpkg/status", removed_status),
            "rm /usr/sbin/waagent",
            f"rm {wants}/walinuxagent.service",
            "rm /lib/systemd/system/walinuxagent.service",
        ],
        "agent-disabled": [f"rm {wants}/walinuxagent.service"],
        "sshd-disabled": [f"rm {wants}/ssh.service", "rm /etc/systemd/system/sshd.service"],
        "resource-disk-contradiction": _put(
            work, "/etc/waagent.conf", set_keys(waagent_conf, {"ResourceDisk.Format": "y"})
        ),
        "targetpw": _put(work, "/etc/sudoers.d/build", "Defaults targetpw\n", 0o440, new=True),
        "host-keys": [
            f"write {hostkey} /etc/ssh/ssh_host_ed25519_key",
            f"write {hostkey}.pub /etc/ssh/ssh_host_ed25519_key.pub",
        ],
        "history": _put(work, "/root/.bash_history", "sudo apt-get install waagent\n", 0o600,
                        new=True),
        "cloud-instance": [
            "mkdir /var/lib/cloud",
            "mkdir /var/lib/cloud/instances",
            "mkdir /var/lib/cloud/instances/iid-corpus",
            *_put(work, "/var/lib/cloud/instances/iid-corpus/user-data.txt", "#cloud-config\n",
                  new=True),
            "symlink /var/lib/cloud/instance /var/lib/cloud/instances/iid-corpus",
        ],
        "ssh-no-keygen": [
            *_put(work, "/etc/waagent.conf", set_keys(waagent_conf, WAAGENT_WAAGENT)),
            "write /dev/null /etc/cloud/cloud-init.disabled",
            *[f"rm {CLOUD_INIT_WANTS}/{unit}" for unit in CLOUD_INIT_ENABLED],
            f"rm /etc/systemd/system/ssh.service.wants/{HOST_KEYGEN_UNIT}",
            "rmdir /etc/systemd/system/ssh.service.wants",
            f"rm {HOST_KEYGEN_UNIT_DIR}/{HOST_KEYGEN_UNIT}",
        ],
        "dirty-state": ["ssv state 0"],
        "needs-recovery": ["feature needs_recovery"],
    }


def _lvm_disk(root: Path, work: Path, disk: Path) -> None:
    """Root on an LVM logical volume (one PV partition, type 8e), laid out in the appliance:
    one launch creates the PV, VG and LV; the ext4 is made from the root on the host at the
    LV's size, then a second launch copies it into the LV."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(DISK_SIZE)
    g = launch([Drive(disk, "raw", readonly=False)])
    try:
        g.part_init("/dev/sda", "msdos")
        g.part_add("/dev/sda", "p", 2048, -1)
        g.part_set_mbr_id("/dev/sda", 1, 0x8E)
        g.pvcreate("/dev/sda1")
        g.vgcreate("vgroot", ["/dev/sda1"])
        g.lvcreate_free("root", "vgroot", 100)
        lv_size = int(g.blockdev_getsize64("/dev/vgroot/root"))
        g.shutdown()
    finally:
        g.close()
    fs_image = work / "lvm-root.ext4"
    with fs_image.open("wb") as f:
        f.truncate(lv_size)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-U", ROOT_UUID, "-d", root, fs_image],
        timeout=1800)
    debugfs(fs_image, _put(work, "/etc/fstab",
                           "/dev/mapper/vgroot-root / ext4 errors=remount-ro 0 1\n"), 0)
    g = launch([Drive(disk, "raw", readonly=False), Drive(fs_image, "raw")])
    try:
        g.vg_activate_all(True)
        g.copy_device_to_device("/dev/sdb", "/dev/vgroot/root", sparse=True)
        g.vg_activate_all(False)
        g.shutdown()
    finally:
        g.close()
    fs_image.unlink()


def _data_chunks(fd: int, chunk: int) -> Iterator[int]:
    """Offsets (multiples of `chunk`) of the chunks of a sparse file that hold data."""
    end = os.fstat(fd).st_size
    pos = 0
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        first = max(pos, data - data % chunk)
        yield from range(first, hole, chunk)
        pos = first + -(-(hole - first) // chunk) * chunk  # the next chunk not yet given


def _diff_overlay(variant: Path, base: Path, out: Path, chunk: int = MIB) -> int:
    """Store `variant` (a raw copy of `base` with a few blocks changed) as a qcow2 overlay of
    `base` holding only the changed 4 KiB blocks. (`qemu-img convert -B` copies every
    allocated block of a raw input.) Returns the number of bytes that differ."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw", out])
    runs: list[tuple[int, bytes]] = []
    with variant.open("rb") as fv, base.open("rb") as fb:
        for offset in _data_chunks(fv.fileno(), chunk):  # debugfs punches no holes
            fv.seek(offset)
            fb.seek(offset)
            a, b = fv.read(chunk), fb.read(chunk)
            if a != b:
                for k in range(0, len(a), 4096):
                    if a[k : k + 4096] != b[k : k + 4096]:
                        start = offset + k
                        if runs and runs[-1][0] + len(runs[-1][1]) == start:
                            runs[-1] = (runs[-1][0], runs[-1][1] + a[k : k + 4096])
                        else:
                            runs.append((start, a[k : k + 4096]))
    commands: list[str] = []
    for n, (start, data) in enumerate(runs):
        piece = variant.parent / f"{variant.name}.{n}"
        piece.write_bytes(data)
        commands += ["-c", f"write -q -s {piece} {start} {len(data)}"]
    if commands:
        run(["qemu-io", "-f", "qcow2", *commands, out], timeout=600)
    for n in range(len(runs)):
        (variant.parent / f"{variant.name}.{n}").unlink()
    variant.unlink()
    return sum(len(d) for _, d in runs)


def _build(src_root: Path, out: Path) -> None:
    work = out / "work"
    work.mkdir()
    root = work / "root"
    t0 = time.monotonic()
    no_storvsc = prepare_root(src_root, root)
    log.info("corpus: prepared root in %.0f s", time.monotonic() - t0)
    uefi = out / image_name("uefi")
    write_uefi_disk(root, work, uefi, DISK_SIZE)
    broken = work / "uefi-no-fallback.raw"
    run(["cp", "--sparse=always", uefi, broken], timeout=900)
    _mtools("mdeltree", broken, "::/EFI/BOOT")
    changed = _diff_overlay(broken, uefi, out / image_name("uefi-no-fallback"))
    log.info("corpus: uefi-no-fallback differs from the uefi image in %d bytes", changed)
    correct = out / image_name("correct")
    write_disk(root, correct, DISK_SIZE)
    for name, commands in _variant_commands(root, work, no_storvsc).items():
        variant_raw = work / f"{name}.raw"
        run(["cp", "--sparse=always", correct, variant_raw], timeout=900)
        debugfs(variant_raw, commands)
        changed = _diff_overlay(variant_raw, correct, out / image_name(name))
        log.info("corpus: %s differs from the correct image in %d bytes", name, changed)
    run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size",
         correct, out / image_name("correct-vhd")], timeout=1800)
    _lvm_disk(root, work, out / image_name("lvm-root"))
    write_disk(root, out / image_name("big"), BIG_SIZE)
    shutil.rmtree(work)
    for img in out.iterdir():
        os.chmod(img, 0o444)

